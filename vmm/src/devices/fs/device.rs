//! The virtio-fs device: the FUSE server over the shared directory, its tag in config space,
//! and its queues served through [`super::request`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::{
    request, CacheMode, Error, FuseServer, GuestFs, CONFIG_LEN, NUM_QUEUES, QUEUE_SIZE, TAG_LEN,
};
use crate::virtio::{device_type, VirtioState, WithVirtioState, VIRTIO_F_VERSION_1};

pub struct Fs {
    server: Arc<FuseServer>,
    shared_dir: PathBuf,
    read_only: bool,
    pub(super) state: VirtioState,
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
