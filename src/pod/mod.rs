//! The pod half of stage0: prepare a pod directory, hand it to a stage1, track its state.
//!
//! - [`store`]: `<dir>/pods/<state>/<uuid>/` and the locks telling live pods from dead ones.
//! - [`args`], [`plan`]: a pod request and image configs → a validated pod manifest.
//! - [`rootfs`]: app roots from the render cache (overlay or copy), block images, unmounting.
//! - [`lifecycle`]: prepare, run-prepared (exec of the stage1 with the lock held).
//! - [`info`], [`stop`], [`gc`], [`enter`], [`logs`]: the commands on existing pods.
//! - [`attach`]: `ark run -t` and `ark attach`, a tty app's pty through the agent.

pub mod agent_client;
pub mod app;
pub mod args;
pub mod attach;
pub mod enter;
pub mod error;
pub mod gc;
pub mod images;
pub mod info;
pub mod lifecycle;
pub mod logs;
pub mod names;
pub mod net;
pub mod plan;
pub mod rootfs;
pub mod stop;
pub mod store;
pub mod units;

use std::path::PathBuf;

use anyhow::Context;

pub use error::{Error, ErrorKind, Result};

/// The pods tree of this data directory.
pub fn open_store(ctx: &crate::Context) -> anyhow::Result<store::PodStore> {
    std::fs::create_dir_all(&ctx.dir).with_context(|| format!("create {}", ctx.dir.display()))?;
    // Absolute, so the stage1 and mountinfo see the same paths whatever our cwd.
    let dir = std::fs::canonicalize(&ctx.dir).with_context(|| format!("{}", ctx.dir.display()))?;
    Ok(store::PodStore::open(&dir)?)
}

/// Where the stage1s and `ark-init` live: `$ARK_LIBEXEC_DIR`, else `<ark's dir>/../libexec/ark`.
pub fn libexec_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("ARK_LIBEXEC_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("find the ark executable")?;
    let bin_dir = exe.parent().context("ark executable has no directory")?;
    Ok(bin_dir.join("../libexec/ark"))
}
