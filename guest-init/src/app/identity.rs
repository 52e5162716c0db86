//! The app's identity, through the logic shared with `ark enter` (`ark_os::identity`): this
//! is guest-init's only use of it, so where that logic lives is this one import.

use std::os::fd::BorrowedFd;

use anyhow::{anyhow, Context, Result};

use super::plan::AppPlan;
use crate::os::identity::{self as shared, Identity};

/// User, group and supplementary groups, resolved in the app's own `/etc/passwd` and
/// `/etc/group` (read inside `root`, regular files only).
pub fn resolve(root: BorrowedFd, plan: &AppPlan) -> Result<Identity> {
    let (passwd, group) = shared::account_files(root);
    shared::resolve(
        &plan.user,
        &plan.group,
        &plan.supplementary_groups,
        passwd.as_deref(),
        group.as_deref(),
    )
    .map_err(|e| anyhow!(e))
}

/// The rlimits, then the app's identity and capabilities (shared with `ark enter`, which sets
/// no_new_privs too), then a death signal.
pub fn apply(id: &Identity, plan: &AppPlan) -> Result<()> {
    shared::set_rlimits(&plan.rlimits)?;
    let caps = shared::capability_sets(id.uid, &plan.caps_keep, plan.caps_explicit);
    shared::switch_to(id, &caps)?;
    // After the uid change (which clears it): if guest-init dies, so does the app. Matters for
    // fly, where no pid namespace takes the apps down with their init.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).context("pdeathsig")?;
    Ok(())
}
