//! What a trust call can fail with: a signature refused, no such key, a bad key or prefix, I/O.
//! Every kind keeps the whole chain of context (its `Display` is the message `ark` prints).

crate::error::declare! {
    /// What a trust call failed at.
    pub enum ErrorKind {
        /// No signature from a key trusted for the name, or one that does not cover what it must.
        Refused,
        /// No trusted key has that fingerprint.
        NotFound,
        /// Reading or writing the key store, a key file or a signature.
        Io,
        /// Anything else: not a public key, a revoked key, a bad prefix...
        Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_is_not_found_and_a_bad_one_is_not_io() {
        let dir = tempfile::tempdir().unwrap();
        let e = crate::trust::keys::remove(dir.path(), &"AB".repeat(20)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e:?}");
        assert!(
            format!("{e:#}").starts_with("no trusted key has fingerprint"),
            "{e:#}"
        );
        let e = crate::trust::keys::add(dir.path(), crate::trust::keys::Scope::Root, b"not a key")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Other, "{e:?}");
    }
}
