//! A loop device attached to a temp file: the only host block device the hostile tests touch.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `losetup --find --show FILE`, detached on drop (also when the test panics).
#[derive(Debug)]
pub struct LoopDevice {
    pub dev: PathBuf,
    pub major: u32,
    pub minor: u32,
}

impl LoopDevice {
    /// Attaches `file`; `Err` says why the host cannot (no losetup, no loop module...).
    pub fn attach(file: &Path) -> Result<Self, String> {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        // The guard first, so an error below still detaches.
        let mut guard = LoopDevice {
            dev,
            major: 0,
            minor: 0,
        };
        let meta =
            std::fs::metadata(&guard.dev).map_err(|e| format!("{}: {e}", guard.dev.display()))?;
        if !meta.file_type().is_block_device() {
            return Err(format!("{} is not a block device", guard.dev.display()));
        }
        let out_of_range = |_| format!("{}: device number out of range", guard.dev.display());
        guard.major = u32::try_from(nix::sys::stat::major(meta.rdev())).map_err(out_of_range)?;
        guard.minor = u32::try_from(nix::sys::stat::minor(meta.rdev())).map_err(out_of_range)?;
        Ok(guard)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}
