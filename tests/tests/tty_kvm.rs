//! `ark run -t` / `ark attach` / `--detach-keys` in a kvm pod (issue 12): the app's pty is
//! made inside the VM by guest-init, reached over vsock through the VMM's socket. One VM for
//! every tty check (a kvm_pvm guest boots slowly).

use std::time::Duration;

use ark_tests::pods::pods_unavailable;
use ark_tests::{guest_kernel, kvm_unavailable, skip, tty};

#[test]
fn tty_in_kvm() {
    if let Some(why) = pods_unavailable().or_else(kvm_unavailable) {
        skip!("{why}");
    }
    if guest_kernel().is_none() {
        skip!("no guest kernel: set ARK_KERNEL (kernel-config/build.sh)");
    }
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
        skip!("no tmux");
    }
    tty::run_tty_and_attach("kvm", Duration::from_secs(600));
}
