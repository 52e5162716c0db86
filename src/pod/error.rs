//! What a pod call can fail with, as a front end needs to tell it apart: no such pod, a pod in
//! the wrong state or held by another process, a bad request, I/O, the image half, the stage1.
//! Every variant keeps the whole chain of context (its `Display` is the message `ark` prints).

use super::store::StoreError;

/// The result of a pod call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No pod matches the id (or it matches several).
    #[error(transparent)]
    NotFound(anyhow::Error),
    /// The pod is in the wrong state for the call, or another ark process holds it.
    #[error(transparent)]
    InUse(anyhow::Error),
    /// The request is wrong (flags, volumes, apps, users...); nothing was made.
    #[error(transparent)]
    Invalid(anyhow::Error),
    /// An image could not be fetched, verified or rendered.
    #[error(transparent)]
    Image(anyhow::Error),
    /// The stage1 could not be started.
    #[error(transparent)]
    Stage1(anyhow::Error),
    /// Reading or writing the pod store or a pod directory.
    #[error(transparent)]
    Io(anyhow::Error),
    #[error(transparent)]
    Other(anyhow::Error),
}

/// A request refused before anything was made: marks the error as [`Error::Invalid`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<anyhow::Error> for Error {
    /// Sorts an error by the first cause in its chain that says what it is.
    fn from(e: anyhow::Error) -> Error {
        for cause in e.chain() {
            if let Some(s) = cause.downcast_ref::<StoreError>() {
                return match s {
                    StoreError::NotFound(_) | StoreError::Ambiguous(..) => Error::NotFound(e),
                    StoreError::WrongState { .. } | StoreError::Busy(_) => Error::InUse(e),
                    StoreError::Io { .. } => Error::Io(e),
                };
            }
            if cause.is::<Invalid>() {
                return Error::Invalid(e);
            }
            if cause.is::<crate::image::Error>() {
                return Error::Image(e);
            }
            if cause.is::<std::io::Error>() {
                return Error::Io(e);
            }
        }
        Error::Other(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        anyhow::Error::from(e).into()
    }
}

pub(crate) use crate::error::typed;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_a_front_end_can_match_with_the_messages_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::Context::new(dir.path());
        let e = crate::pod::info::status(&ctx, "feedface", false).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        assert_eq!(format!("{e:#}"), r#"no pod matches "feedface""#);
        let e =
            crate::pod::stop::stop(&ctx, "feedface", true, std::time::Duration::ZERO).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        // A marked cause deep in a context chain still sorts the error.
        let e: Error = anyhow::Error::from(Invalid("bad --volume".into()))
            .context("pod request")
            .into();
        assert!(matches!(e, Error::Invalid(_)), "{e:?}");
        assert_eq!(format!("{e:#}"), "pod request: bad --volume");
        let image_error: crate::image::Error = anyhow::anyhow!("registry said no").into();
        let e: Error = anyhow::Error::from(image_error).context("image x").into();
        assert!(matches!(e, Error::Image(_)), "{e:?}");
    }
}
