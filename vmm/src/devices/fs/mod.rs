//! virtio-fs: a FUSE server inside the VMM sharing one host directory.
//!
//! fuse-backend-rs' `PassthroughFs` serves the directory: every inode is an `O_PATH |
//! O_NOFOLLOW` fd opened relative to its parent's fd with a single-component name, so the guest
//! cannot name anything outside the share (no '/', "..", absolute symlink or /proc path is ever
//! resolved by the host; LOOKUP("..") at the root is answered with the root itself), and only
//! regular files and directories are ever re-opened for I/O (device nodes never are).
//! [`filter::GuestFs`] sits in front of it for name checks, read-only enforcement, and what a
//! hostile guest kernel could leave in the host directory for the host to honour: no device
//! nodes but 0:0 whiteouts (type checked after the guest's umask), no setuid/setgid files
//! (stripped from every guest mode, cleared when a guest changes a file's data), no loosening
//! of existing device nodes, no O_PATH/O_TMPFILE opens, no `security.*`/`trusted.*` xattrs.
//!
//! Identity: no uid/gid mapping, guest ids are host ids inside the share (the share is the
//! pod's own root filesystem). Creating files switches the serving thread's fsuid/fsgid to
//! the caller's, so the VMM needs CAP_SETUID/CAP_SETGID when it is not already that user.
//! File handles (`open_by_handle_at`, CAP_DAC_READ_SEARCH) are not used: inodes are kept as
//! O_PATH fds, which is why `Fs::new` raises RLIMIT_NOFILE to its hard limit. Extended
//! attributes are off in the backend (and refused by name in the filter besides: a guest
//! setting `security.capability` or `trusted.*` on host files is not wanted), and no DAX window
//! is offered.
//!
//! Note: PassthroughFs sets the process umask to 0 on FUSE INIT (the guest applies its own
//! umask before sending modes); anything else the VMM creates should pass explicit modes.

mod device;
mod event_handler;
pub mod filter;
pub mod request;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;

pub use device::{build_server, encode_tag, Fs};
pub use filter::GuestFs;

/// Size of the `tag` field of `struct virtio_fs_config`.
pub const TAG_LEN: usize = 36;
/// `tag` + `num_request_queues`.
pub const CONFIG_LEN: usize = TAG_LEN + 4;
/// hiprio (FORGET, INTERRUPT) + one request queue.
pub const NUM_QUEUES: usize = 2;
pub const QUEUE_SIZE: u16 = 256;

/// The FUSE server as the device runs it.
pub type FuseServer = Server<GuestFs<PassthroughFs<()>>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("virtio-fs tag must be 1 to {TAG_LEN} bytes without NUL, got {0:?}")]
    BadTag(String),
    #[error("shared directory {path}: {source}")]
    SharedDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shared directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("shared directory {0} is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    #[error("passthrough filesystem for {path}: {source}")]
    Passthrough {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("virtio-fs eventfd: {0}")]
    EventFd(std::io::Error),
}

/// How much the guest may cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Only this guest changes the directory (a pod root): cache data and metadata for long,
    /// which saves most FUSE round trips (each one is a guest exit).
    Exclusive,
    /// The host or other guests may change the directory: short timeouts, no kept page cache.
    Shared,
}
