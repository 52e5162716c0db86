//! What an image call can fail with, as a front end needs to tell it apart: no such image, a
//! signature refused, a bad reference or hostile image, I/O. Every variant keeps the whole chain
//! of context (its `Display` is the message `ark` prints).

/// The result of an image call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No stored image has that name or ID (or it names several).
    #[error(transparent)]
    NotFound(anyhow::Error),
    /// The image's signature is missing, or not from a key trusted for its name.
    #[error(transparent)]
    SignatureRefused(anyhow::Error),
    /// Reading or writing the store, or the source.
    #[error(transparent)]
    Io(anyhow::Error),
    /// Anything else: a bad reference, a hostile or broken image, a registry's refusal...
    #[error(transparent)]
    Other(anyhow::Error),
}

/// Marks an error as [`Error::NotFound`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotInStore(pub String);

/// Marks an error as [`Error::SignatureRefused`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unverified(pub String);

impl From<anyhow::Error> for Error {
    /// Sorts an error by the first cause in its chain that says what it is.
    fn from(e: anyhow::Error) -> Error {
        for cause in e.chain() {
            if cause.is::<NotInStore>() {
                return Error::NotFound(e);
            }
            if cause.is::<Unverified>()
                || matches!(
                    cause.downcast_ref::<crate::trust::Error>(),
                    Some(crate::trust::Error::Refused(_))
                )
            {
                return Error::SignatureRefused(e);
            }
            if cause.is::<std::io::Error>() {
                return Error::Io(e);
            }
        }
        Error::Other(e)
    }
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
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
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
        assert!(matches!(e, Error::SignatureRefused(_)), "{e:?}");
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
