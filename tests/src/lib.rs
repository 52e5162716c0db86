//! Shared helpers for ark integration tests: they run the real binaries (built by `./build.sh`)
//! against real components. Each area keeps its own helpers in its own module.

pub mod agent;
pub mod fixtures;
pub mod images;
pub mod loopdev;
pub mod net;
pub mod output;
pub mod pods;
pub mod registry;
pub mod sandbox;
pub mod tty;
pub mod vm;

use std::path::{Path, PathBuf};

/// A spawned child's pid as nix takes it (Linux pids are at most 2^22, so they fit in pid_t).
pub fn child_pid(child: &std::process::Child) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in pid_t"))
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent")
        .to_path_buf()
}

/// The cargo target directory in use (CARGO_TARGET_DIR or `<root>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The install tree `./build.sh` lays out.
pub fn install_dir() -> PathBuf {
    target_dir().join("ark")
}

/// The `ark` binary under test: `$ARK_BIN`, else the one `./build.sh` made.
pub fn ark_bin() -> PathBuf {
    let bin = std::env::var_os("ARK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| install_dir().join("bin/ark"));
    assert!(
        bin.exists(),
        "{} missing: run ./build.sh first (or set ARK_BIN)",
        bin.display()
    );
    bin
}

/// A binary from the install tree's libexec directory (stage1s, ark-vmm, ark-init).
pub fn libexec_bin(name: &str) -> PathBuf {
    let bin = ark_bin()
        .parent()
        .and_then(Path::parent)
        .expect("ark is in <prefix>/bin")
        .join("libexec/ark")
        .join(name);
    assert!(
        bin.exists(),
        "{} missing: run ./build.sh first",
        bin.display()
    );
    bin
}

/// Prints why a test is skipped (so a skip is visible in the log) and returns from the test.
#[macro_export]
macro_rules! skip {
    ($($why:tt)*) => {{
        eprintln!("SKIPPED {}: {}", module_path!(), format!($($why)*));
        return;
    }};
}

/// Why this host cannot run KVM guests, if it cannot.
pub fn kvm_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm: {e}")),
    }
}

/// The guest kernel built by `kernel-config/build.sh` (`$ARK_KERNEL`), if any.
pub fn guest_kernel() -> Option<PathBuf> {
    std::env::var_os("ARK_KERNEL")
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

/// Whether the process runs as root (many real-component tests need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
