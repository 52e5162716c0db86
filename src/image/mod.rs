//! The image half of stage0: content-addressed store, fetch, trust, render.
//!
//! Public facade used by the pod half (`crate::pod`): open the store, make sure an image is
//! present (fetching it if needed), read its config, and get its rendered rootfs.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use ark::image::{FetchOptions, ImageStore};
//! let ctx = ark::Context::new("/var/lib/ark");
//! let store = ImageStore::open(&ctx.dir)?;             // <dir>/images
//! let id = store.fetch("oci-layout:/tmp/img:latest", &FetchOptions::from_context(&ctx))?;
//! let config = store.image_config(&id)?;               // entrypoint, cmd, env, user, ...
//! let rootfs = store.render(&id)?;                     // cached, read-only: copy or overlay it
//! let hold = store.hold(&id)?;                         // rm/gc keep the tree while held
//! hold.keep_across_exec()?;                            // ... for the pod's whole life
//! # Ok(()) }
//! ```

mod aci;
mod digest;
mod docker_archive;
pub mod error;
pub mod escape;
mod extract;
mod fsutil;
mod limits;
mod oci_layout;
pub mod privsep;
mod progress;
mod record;
mod reference;
pub mod registry;
mod render;
mod staging;
mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Kind as _;
use serde::{Deserialize, Serialize};

pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
pub use store::{ImageInfo, ImageKind, ImageStore, RenderHold};

/// An image's identity: the sha256 of its manifest (OCI/Docker) or of the ACI file itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ImageId(pub Digest);

impl ImageId {
    /// 12 hex digits, enough to name an image on the command line.
    pub fn short(&self) -> &str {
        self.0.short()
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ImageId {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(ImageId(s.parse()?))
    }
}

/// What a pod needs from an image to run its app, whatever the image format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// OCI `Entrypoint`; for an ACI, `app.exec`.
    pub entrypoint: Vec<String>,
    /// OCI `Cmd` (arguments appended to the entrypoint unless the user gives their own).
    pub cmd: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// `user[:group]`, names or numbers, as the image gives it; None = root.
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// Ports the image says it listens on (`80/tcp`).
    pub exposed_ports: Vec<String>,
    /// An ACI's port names (`http` → `80/tcp`), for `--port=NAME:...`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_names: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    /// OCI config labels; for an ACI, its labels (version, os, arch, ...).
    pub labels: BTreeMap<String, String>,
    /// OCI manifest annotations; for an ACI, its annotations.
    pub annotations: BTreeMap<String, String>,
}

/// How to fetch: which checks to skip, which platform to pick, where signatures and keys live.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Skip signature verification (`--insecure-options=image`).
    pub insecure_image: bool,
    /// Accept any TLS certificate (`--insecure-options=tls`).
    pub insecure_tls: bool,
    /// Allow plain http to non-loopback registries (`--insecure-options=http`).
    pub insecure_http: bool,
    /// `os/arch[/variant]` to pick from an image index; None = linux/amd64.
    pub platform: Option<String>,
    /// Lookaside directory of simple-signing signatures (`REPO@sha256=DIGEST/signature-N`).
    pub signature_dir: Option<PathBuf>,
    /// Where `ark trust` keeps trusted keys (`<dir>/trust`).
    pub trust_dir: PathBuf,
}

impl FetchOptions {
    /// The checks `ctx` keeps, and its trusted keys; the default platform, no signature dir.
    pub fn from_context(ctx: &crate::Context) -> Self {
        FetchOptions {
            insecure_image: ctx.insecure.image,
            insecure_tls: ctx.insecure.tls,
            insecure_http: ctx.insecure.http,
            platform: None,
            signature_dir: None,
            trust_dir: crate::trust::trust_dir(&ctx.dir),
        }
    }
}

/// Signature policy for local OCI/Docker sources: verification is on unless
/// `--insecure-options=image`; an image with nothing to verify is refused. `identity` is the
/// `HOST[:PORT]/REPO[:TAG]` the signatures must name (and whose prefix the key must be trusted
/// for); `name` is how the image is called in messages.
fn verify_local_signature(
    name: Option<&str>,
    identity: Option<&str>,
    manifest_digest: &Digest,
    opts: &FetchOptions,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if opts.insecure_image {
        return Ok(());
    }
    let name = name.unwrap_or("<unnamed>");
    let refuse = |msg: String| Err(ErrorKind::SignatureRefused.marked(msg).into());
    let Some(dir) = &opts.signature_dir else {
        return refuse(format!(
            "image {name:?} ({manifest_digest}) has no signature to verify: pass --signature-dir DIR \
             with simple-signing signatures from a key trusted with `ark trust`, or \
             --insecure-options=image to skip verification"
        ));
    };
    let Some(identity) = identity else {
        return refuse(format!(
            "image {name:?} ({manifest_digest}) names no registry reference (HOST/REPO:TAG) that a \
             signature could be checked against; pass --insecure-options=image to skip verification"
        ));
    };
    let fingerprint = crate::trust::verify_simple_signing(
        &opts.trust_dir,
        identity,
        &manifest_digest.to_string(),
        dir,
    )
    .map_err(one_line)
    .with_context(|| format!("verifying the signature of {identity:?}"))?;
    tracing::info!("{identity:?} ({manifest_digest}) is signed by trusted key {fingerprint}");
    Ok(())
}

/// Errors from the OpenPGP library can span lines; ark's errors are one line. The kind of
/// error (a refused signature, ...) is kept.
pub(crate) fn one_line(e: crate::trust::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if !text.contains('\n') {
        return e.into();
    }
    let flat = anyhow::anyhow!(text.split_whitespace().collect::<Vec<_>>().join(" "));
    e.with_chain(flat).into()
}
