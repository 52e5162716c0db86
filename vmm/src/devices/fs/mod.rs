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

pub mod filter;
pub mod request;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::virtio::{device_type, Event, VirtioState, WithVirtioState, VIRTIO_F_VERSION_1};
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

pub struct Fs {
    server: Arc<FuseServer>,
    shared_dir: PathBuf,
    read_only: bool,
    state: VirtioState,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("shared_dir", &self.shared_dir)
            .field("read_only", &self.read_only)
            .field("active", &self.state.active.is_some())
            .finish()
    }
}

/// Checks a virtio-fs tag and returns it NUL-padded.
pub fn encode_tag(tag: &str) -> Result<[u8; TAG_LEN], Error> {
    if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
        return Err(Error::BadTag(tag.to_string()));
    }
    let mut out = [0u8; TAG_LEN];
    out[..tag.len()].copy_from_slice(tag.as_bytes());
    Ok(out)
}

/// Builds the FUSE server for `shared_dir` (exposed for the fuzz targets and tests).
pub fn build_server(
    shared_dir: &Path,
    read_only: bool,
    cache: CacheMode,
) -> Result<(FuseServer, PathBuf), Error> {
    let dir = shared_dir
        .canonicalize()
        .map_err(|source| Error::SharedDir {
            path: shared_dir.to_path_buf(),
            source,
        })?;
    let meta = std::fs::metadata(&dir).map_err(|source| Error::SharedDir {
        path: dir.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory(dir));
    }
    let root_dir = dir
        .to_str()
        .ok_or_else(|| Error::NonUtf8Path(dir.clone()))?
        .to_string();
    let (cache_policy, timeout) = match cache {
        CacheMode::Exclusive => (CachePolicy::Always, Duration::from_secs(86400)),
        CacheMode::Shared => (CachePolicy::Auto, Duration::from_secs(1)),
    };
    let cfg = Config {
        root_dir,
        do_import: true,
        xattr: false,
        writeback: false,
        cache_policy,
        entry_timeout: timeout,
        attr_timeout: timeout,
        inode_file_handles: false,
        ..Default::default()
    };
    let passthrough = PassthroughFs::<()>::new(cfg).map_err(|source| Error::Passthrough {
        path: dir.clone(),
        source,
    })?;
    Ok((Server::new(GuestFs::new(passthrough, read_only)), dir))
}

/// Every inode the guest has looked up holds an O_PATH fd.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

impl Fs {
    /// A device sharing `shared_dir` under `tag`, caching as for a directory only this guest
    /// changes (the pod root).
    pub fn new(tag: &str, shared_dir: &Path, read_only: bool) -> Result<Fs, Error> {
        Self::with_cache(tag, shared_dir, read_only, CacheMode::Exclusive)
    }

    pub fn with_cache(
        tag: &str,
        shared_dir: &Path,
        read_only: bool,
        cache: CacheMode,
    ) -> Result<Fs, Error> {
        let tag = encode_tag(tag)?;
        let (server, shared_dir) = build_server(shared_dir, read_only, cache)?;
        raise_nofile_limit();
        let mut config = [0u8; CONFIG_LEN];
        config[..TAG_LEN].copy_from_slice(&tag);
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let state = VirtioState::new(
            "virtio-fs",
            device_type::FS,
            VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC,
            vec![QUEUE_SIZE; NUM_QUEUES],
            config.to_vec(),
        )
        .map_err(Error::EventFd)?;
        Ok(Fs {
            server: Arc::new(server),
            shared_dir,
            read_only,
            state,
        })
    }

    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Serves every available chain of queue `index`, then signals the guest if it asked to be.
    pub fn process_queue(&mut self, index: usize) {
        if let Some(active) = self.state.active.as_mut() {
            let server = &self.server;
            active.serve("virtio-fs", index, |mem, chain| {
                request::handle_chain(server, mem, chain)
            });
        }
    }
}

/// Reset drops only queue state: open files and looked-up inodes stay until the next FUSE
/// INIT/DESTROY from the new driver instance. The config space is read-only.
impl WithVirtioState for Fs {
    crate::virtio_state_accessors!();
}

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.state.queue_events.process(&events, ops).event {
            // The driver may have queued requests before we were listening.
            Event::Activate => (0..NUM_QUEUES).for_each(|index| self.process_queue(index)),
            Event::Queue(index) => self.process_queue(index),
            Event::Stale | Event::Other => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.state.queue_events.init(ops);
    }
}
