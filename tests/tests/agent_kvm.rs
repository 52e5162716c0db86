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
    agent::vm_checks(&pod);
    agent::vm_terminal(&pod);
    pod.stop();
}

/// Regression (issue 12): `echo ... | ark run --stage1=kvm --interactive IMG -- /bin/sh` failed
/// with `take the terminal: ENOTTY`, exit 125: the VM's console, the app's stdin, was nobody's
/// controlling terminal. Now the app takes it (setsid + TIOCSCTTY) and the shell runs.
#[test]
fn interactive_run_takes_the_console() {
    if let Some(why) = pods_unavailable().or_else(kvm_unavailable) {
        skip!("{why}");
    }
    if guest_kernel().is_none() {
        skip!("no guest kernel: set ARK_KERNEL (kernel-config/build.sh)");
    }
    use std::io::Write;
    use std::process::Stdio;
    let env = ark_tests::pods::PodEnv::new();
    let mut child = env
        .ark()
        .args([
            "run",
            "--stage1=kvm",
            "--interactive",
            &env.image,
            "--",
            "/bin/sh",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written long before the guest's shell reads it: the console may lose the first bytes
    // (they arrive while nothing reads the serial port yet), so blanks go first.
    let mut line = vec![b' '; 64];
    line.extend_from_slice(b"echo hi-from-$((6*7)); exit 5\n");
    child.stdin.take().unwrap().write_all(&line).unwrap();
    let st = ark_tests::pods::wait_child(&mut child, std::time::Duration::from_secs(600));
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stderr.contains("ENOTTY"), "{stderr}");
    assert_eq!(st.code(), Some(5), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("hi-from-42"), "stdout: {stdout}");
}
