//! What an image call can fail with, as a front end needs to tell it apart: no such image, a
//! signature refused, a bad reference or hostile image, I/O. Every kind keeps the whole chain
//! of context (its `Display` is the message `ark` prints).

crate::error::declare! {
    /// What an image call failed at.
    pub enum ErrorKind {
        /// No stored image has that name or ID (or it names several).
        NotFound,
        /// The image's signature is missing, or not from a key trusted for its name.
        SignatureRefused,
        /// Reading or writing the store, or the source.
        Io,
        /// Anything else: a bad reference, a hostile or broken image, a registry's refusal...
        Other,
    }
    sorted_by trust_refusal;
}

/// A trust call's refusal is a refused signature here.
fn trust_refusal(cause: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    let trust = cause.downcast_ref::<crate::trust::Error>()?;
    (trust.kind() == crate::trust::ErrorKind::Refused).then_some(ErrorKind::SignatureRefused)
}

pub(crate) use crate::error::typed;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{FetchOptions, ImageStore};

    #[test]
    fn kinds_a_front_end_can_match_with_the_messages_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let e = store.resolve("nosuch:1").unwrap_err();
        assert!(e.kind() == ErrorKind::NotFound, "{e:?}");
        assert_eq!(
            format!("{e:#}"),
            r#"no image "nosuch:1" in the store (see `ark image list`)"#
        );
        // A local layout with nothing to verify is refused as a signature matter, its context kept.
        let layout = dir.path().join("layout");
        std::fs::create_dir(&layout).unwrap();
        let opts = FetchOptions {
            trust_dir: dir.path().join("trust"),
            ..FetchOptions::default()
        };
        let e = crate::image::verify_local_signature(
            Some("x"),
            None,
            &crate::image::Digest::of_bytes(b"m"),
            &opts,
        )
        .map_err(Error::from)
        .unwrap_err();
        assert!(e.kind() == ErrorKind::SignatureRefused, "{e:?}");
        assert!(
            format!("{e:#}").contains("has no signature to verify"),
            "{e:#}"
        );
        // Missing source files are I/O.
        let e = store
            .fetch(
                &format!("oci-layout:{}/missing", dir.path().display()),
                &opts,
            )
            .unwrap_err();
        assert!(
            format!("{e:#}").starts_with("fetching oci-layout:"),
            "{e:#}"
        );
    }
}
