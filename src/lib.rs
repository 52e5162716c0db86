//! ark stage0 as a library: the image store, trust, and the pod lifecycle, for any front end
//! (the `ark` command line in `src/cli/`, later an OCI runtime or a containerd shim).
//!
//! Every entry point takes a plain [`Context`] (and plain option structs), never command-line
//! types; the front end maps the typed errors ([`image::Error`], [`pod::Error`],
//! [`trust::Error`]) to its exit codes and messages. A front end that supervises its pods
//! starts the stage1 as its child:
//!
//! ```no_run
//! # fn main() -> Result<(), ark::pod::Error> {
//! use ark::pod::args::{AppOptions, AppSpec};
//! use ark::pod::lifecycle::{prepare, spawn_stage1, Durability, PrepareRequest};
//! let ctx = ark::Context::new("/var/lib/ark");
//! let request = PrepareRequest {
//!     flavor: ark_pod_spec::Flavor::Ns,
//!     kvm_root: Default::default(),
//!     volumes: vec![],
//!     hostname: None,
//!     interactive: false,
//!     tty: false,
//!     uuid_file_save: None,
//!     net: Some(ark_pod_spec::NetMode::None),
//!     network: Default::default(),
//!     annotations: vec![],
//!     log_max_size: None,
//!     apps: vec![AppSpec {
//!         image: "docker://registry.example/app:1".into(),
//!         flags: AppOptions::default(),
//!         args: None,
//!     }],
//! };
//! let mut pod = spawn_stage1(&ctx, prepare(&ctx, &request, Durability::Synced)?, false)?;
//! println!("pod {} runs as pid {}", pod.uuid, pod.pid());
//! let exit_code = pod.wait()?;
//! # Ok(()) }
//! ```

pub mod data_dir;
pub mod error;
pub mod image;
pub mod pod;
pub mod trust;

use std::path::PathBuf;

/// What every library call needs to know about the invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// ark's data directory (image store, pods, trusted keys).
    pub dir: PathBuf,
    /// Which checks are switched off.
    pub insecure: Insecure,
    /// Verbose logs, passed on to the stage1 (for kvm pods, the guest kernel's messages).
    pub debug: bool,
}

/// The checks `--insecure-options` can switch off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Insecure {
    /// Signature verification.
    pub image: bool,
    /// TLS certificate checks.
    pub tls: bool,
    /// The refusal of plain http to non-loopback registries.
    pub http: bool,
}

impl Context {
    /// A context with every check on and no debug output.
    pub fn new(dir: impl Into<PathBuf>) -> Context {
        Context {
            dir: dir.into(),
            insecure: Insecure::default(),
            debug: false,
        }
    }
}
