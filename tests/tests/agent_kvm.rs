//! `ark enter` into a kvm pod through guest-init's agent on its vsock port (issue 12), reached
//! through the VMM's hybrid vsock socket (`CONNECT <port>`). One VM for every check: a slow
//! guest (kvm_pvm) boots once.

use ark_tests::agent::{self, RunningPod};
use ark_tests::pods::pods_unavailable;
use ark_tests::{guest_kernel, kvm_unavailable, skip};

#[test]
fn enter_in_kvm() {
    if let Some(why) = pods_unavailable().or_else(kvm_unavailable) {
        skip!("{why}");
    }
    if guest_kernel().is_none() {
        skip!("no guest kernel: set ARK_KERNEL (kernel-config/build.sh)");
    }
    let pod = RunningPod::start("kvm");
    agent::exec_basics(&pod);
    agent::concurrent_and_killed(&pod);
    let scratch = tempfile::tempdir().unwrap();
    agent::terminal(&pod, scratch.path());
    pod.stop();
}
