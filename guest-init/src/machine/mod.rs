//! Machine set-up: what guest-init does once for the whole pod, as PID 1 (or fly's
//! subreaper), before any app starts — stdio on the console, a writable root, the pseudo
//! filesystems of its own root, the hostname, the network in a VM (`lo`, the NICs), the stage2
//! config's mounts, app cgroups in a VM —
//! and how the pod ends (exit, or sync and reset the VM).

mod cgroups;
mod console;
mod mounts;
mod network;
pub mod pseudo_fs;
mod root;

use std::path::Path;

use anyhow::{Context, Result};
use ark_pod_spec::{OnExit, Stage2Config};
use nix::mount::{mount, MsFlags};

pub use cgroups::{added_app_cgroup, app_cgroups};
pub use console::{ensure_console, plain_output};

/// Step 2 of stage2 (docs/stages.md), up to the app cgroups: the root, the pseudo filesystems,
/// the hostname, the network (in a VM) and the stage2 config's mounts.
pub fn set_up(cfg: &Stage2Config) -> Result<()> {
    if cfg.on_exit == OnExit::Reboot {
        // Only in a VM: there the root is ours alone (ns/fly roots are host directories).
        root::make_root_writable().context("writable root")?;
        // A read-only root without /dev/console could not give us stdio before.
        ensure_console();
    }
    if cfg.mount_pseudo_fs {
        pseudo_fs::mount_pseudo_fs(cfg.on_exit == OnExit::Reboot).context("pseudo filesystems")?;
    }
    if let Some(h) = &cfg.hostname {
        nix::unistd::sethostname(h).context("sethostname")?;
    }
    // A VM's kernel is a network namespace of its own with `lo` down; ns pods with a namespace
    // of their own get `lo` up from stage1-ns (fly shares the host's).
    if cfg.on_exit == OnExit::Reboot || cfg.network.is_some() {
        network::set_up(cfg.network.as_ref()).context("network")?;
    }
    mounts::do_mounts(&cfg.mounts).context("stage2 mounts")
}

/// In a VM, a panic (built with panic=abort) still syncs and resets the VM instead of leaving
/// a hung guest or a kernel panic behind.
pub fn power_off_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("ark-init: panic: {info}");
        power_off();
    }));
}

/// The pod's end: the code for `main` to exit with (ns/fly), or power the VM off (kvm, never
/// returns). No host-wide sync() for ns/fly: the statuses are fsynced as written, the logs as
/// each app's output ends (`OutputPipe::sync_log`). A VM syncs its own disks in power_off.
pub fn end(on_exit: OnExit, ok: bool) -> i32 {
    match on_exit {
        OnExit::Reboot => power_off(),
        OnExit::Exit => i32::from(!ok),
    }
}

/// Ends the VM: with `reboot=k` the reset reaches the VMM, which stops. Never returns.
// PID 1's last resort, also called from the panic hook, where there is no main to return to.
#[allow(clippy::exit)]
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reached without CAP_SYS_BOOT; nothing else left to do.
    std::process::exit(1)
}

/// mkdir -p the target, then mount(2) onto it.
fn mount_fs(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("mkdir {}", target.display()))?;
    mount(Some(src), target, Some(fstype), flags, data)
        .with_context(|| format!("mount {fstype} on {}", target.display()))
}
