//! ark stage0 as a library: the image store, trust, and the pod lifecycle, for any front end
//! (the `ark` command line in `src/cli/`, later an OCI runtime or a containerd shim).
//!
//! Every entry point takes a plain [`Context`] (and plain option structs), never command-line
//! types; the front end maps the typed errors to its exit codes and messages.

pub mod data_dir;
mod error;
pub mod image;
pub mod mountinfo;
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
