//! The VM's writable root.

use std::path::Path;

use anyhow::{Context, Result};
use ark_pod_spec::guest;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd;

/// A read-only pod root (kvm on an erofs image) becomes writable: an overlay with the image as
/// its lower layer and a tmpfs as the upper one, pivoted to as the new `/`. Apps then write
/// into memory as in any container, and guest-init can make its mount points. A no-op on a
/// writable root.
pub fn make_root_writable() -> Result<()> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let st = statvfs("/").context("statvfs /")?;
    if !st.flags().contains(FsFlags::ST_RDONLY) {
        return Ok(());
    }
    // /ark exists in every stage1 root; the manifest in it has been read already.
    let base = Path::new(guest::ARK_DIR);
    mount(
        Some("tmpfs"),
        base,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .context("tmpfs for the writable root")?;
    for d in ["upper", "work", "root"] {
        std::fs::create_dir(base.join(d)).with_context(|| format!("mkdir /ark/{d}"))?;
    }
    let new_root = base.join("root");
    mount(
        Some("overlay"),
        &new_root,
        Some("overlay"),
        MsFlags::empty(),
        Some("lowerdir=/,upperdir=/ark/upper,workdir=/ark/work"),
    )
    .context("overlay over the read-only root")?;
    unistd::chdir(&new_root).context("chdir to the new root")?;
    unistd::pivot_root(".", ".").context("pivot_root to the writable root")?;
    // The old root stays alive underneath the overlay; only its mount is detached.
    umount2(".", MntFlags::MNT_DETACH).context("detach the read-only root")?;
    unistd::chdir("/").context("chdir /")?;
    Ok(())
}
