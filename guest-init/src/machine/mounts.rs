//! The stage2 config's mounts.

use std::path::Path;

use anyhow::{Context, Result};
use ark_pod_spec::Stage2Mount;
use nix::mount::{mount, MsFlags};

use super::mount_fs;

/// The stage2 config's mounts (kvm: virtio-fs volumes), in order.
pub fn do_mounts(mounts: &[Stage2Mount]) -> Result<()> {
    for m in mounts {
        let target = Path::new(&m.target);
        if m.fstype == "bind" {
            mount_fs(
                &m.source,
                target,
                "none",
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            if m.read_only {
                remount_ro(target)?;
            }
        } else {
            let mut flags = MsFlags::empty();
            if m.read_only {
                flags |= MsFlags::MS_RDONLY;
            }
            mount_fs(&m.source, target, &m.fstype, flags, m.data.as_deref())?;
        }
    }
    Ok(())
}

fn remount_ro(target: &Path) -> Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("remount {} read-only", target.display()))
}
