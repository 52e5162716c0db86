//! What a pod call can fail with, as a front end needs to tell it apart: no such pod, a pod in
//! the wrong state or held by another process, a bad request, I/O, the image half, the stage1.
//! Every kind keeps the whole chain of context (its `Display` is the message `ark` prints).

use super::store::StoreError;

crate::error::declare! {
    /// What a pod call failed at.
    pub enum ErrorKind {
        /// No pod matches the id (or it matches several).
        NotFound,
        /// The pod is in the wrong state for the call, or another ark process holds it.
        InUse,
        /// The request is wrong (flags, volumes, apps, users...); nothing was made.
        Invalid,
        /// An image could not be fetched, verified or rendered.
        Image,
        /// The stage1 could not be started.
        Stage1,
        /// Reading or writing the pod store or a pod directory.
        Io,
        /// Anything else.
        Other,
    }
    sorted_by store_or_image;
}

/// The pod store says which pod failure it is; any image failure is an image failure here.
fn store_or_image(cause: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    if let Some(s) = cause.downcast_ref::<StoreError>() {
        return Some(match s {
            StoreError::NotFound(_) | StoreError::Ambiguous(..) => ErrorKind::NotFound,
            StoreError::WrongState { .. } | StoreError::Busy(_) => ErrorKind::InUse,
            StoreError::Io { .. } => ErrorKind::Io,
        });
    }
    cause
        .is::<crate::image::Error>()
        .then_some(ErrorKind::Image)
}

/// A request refused before anything was made: marks the error as [`ErrorKind::Invalid`].
pub fn invalid(message: String) -> crate::error::Marked<ErrorKind> {
    crate::error::Kind::marked(ErrorKind::Invalid, message)
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
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e:?}");
        assert_eq!(format!("{e:#}"), r#"no pod matches "feedface""#);
        let e =
            crate::pod::stop::stop(&ctx, "feedface", true, std::time::Duration::ZERO).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e:?}");
        // A marked cause deep in a context chain still sorts the error.
        let e: Error = anyhow::Error::from(invalid("bad --volume".into()))
            .context("pod request")
            .into();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e:?}");
        assert_eq!(format!("{e:#}"), "pod request: bad --volume");
        let image_error: crate::image::Error = anyhow::anyhow!("registry said no").into();
        let e: Error = anyhow::Error::from(image_error).context("image x").into();
        assert_eq!(e.kind(), ErrorKind::Image, "{e:?}");
    }
}
