//! What a trust call can fail with: a signature refused, no such key, a bad key or prefix, I/O.
//! Every variant keeps the whole chain of context (its `Display` is the message `ark` prints).

/// The result of a trust call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No signature from a key trusted for the name, or one that does not cover what it must.
    #[error(transparent)]
    Refused(anyhow::Error),
    /// No trusted key has that fingerprint.
    #[error(transparent)]
    NotFound(anyhow::Error),
    /// Reading or writing the key store, a key file or a signature.
    #[error(transparent)]
    Io(anyhow::Error),
    /// Anything else: not a public key, a revoked key, a bad prefix...
    #[error(transparent)]
    Other(anyhow::Error),
}

/// Marks an error as [`Error::NotFound`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NoSuchKey(pub String);

impl Error {
    /// The same kind of error, with `inner` as its message and causes.
    pub fn with_inner(self, inner: anyhow::Error) -> Error {
        match self {
            Error::Refused(_) => Error::Refused(inner),
            Error::NotFound(_) => Error::NotFound(inner),
            Error::Io(_) => Error::Io(inner),
            Error::Other(_) => Error::Other(inner),
        }
    }
}

impl From<anyhow::Error> for Error {
    /// Sorts an error by the first cause in its chain that says what it is.
    fn from(e: anyhow::Error) -> Error {
        for cause in e.chain() {
            if cause.is::<NoSuchKey>() {
                return Error::NotFound(e);
            }
            if cause.is::<std::io::Error>() {
                return Error::Io(e);
            }
        }
        Error::Other(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_is_not_found_and_a_bad_one_is_not_io() {
        let dir = tempfile::tempdir().unwrap();
        let e = crate::trust::keys::remove(dir.path(), &"AB".repeat(20)).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        assert!(
            format!("{e:#}").starts_with("no trusted key has fingerprint"),
            "{e:#}"
        );
        let e = crate::trust::keys::add(dir.path(), crate::trust::keys::Scope::Root, b"not a key")
            .unwrap_err();
        assert!(matches!(e, Error::Other(_)), "{e:?}");
    }
}
