//! `ark run -t` / `ark attach` / `--detach-keys` / `ark run -i` in ns and fly pods (issue 12):
//! the app's pty is made inside the pod, driven from a real terminal (tmux).

use std::time::Duration;

use ark_tests::pods::{pods_unavailable, PodEnv};
use ark_tests::{skip, tty};

macro_rules! need_pods {
    () => {
        if let Some(why) = pods_unavailable() {
            skip!("{why}");
        }
        if std::process::Command::new("tmux")
            .arg("-V")
            .output()
            .is_err()
        {
            skip!("no tmux");
        }
    };
}

#[test]
fn tty_in_ns() {
    need_pods!();
    tty::run_tty_and_attach("ns", Duration::from_secs(60));
}

#[test]
fn tty_in_fly() {
    need_pods!();
    tty::run_tty_and_attach("fly", Duration::from_secs(60));
}

#[test]
fn interactive_stdin_is_binary_safe_in_ns_and_fly() {
    need_pods!();
    tty::stdin_is_binary_safe("ns", Duration::from_secs(120));
    tty::stdin_is_binary_safe("fly", Duration::from_secs(120));
}

/// A bad --detach-keys is one line and 125, before any pod is made; a short tty app's output
/// and exit code still reach `ark run -t`; `ark attach` to a pod whose app has no tty is one
/// line and 125.
#[test]
fn tty_edges() {
    need_pods!();
    let env = PodEnv::new();
    for bad in ["ctrl-1", "ctrl-P", "xy", "ctrl-p,"] {
        let out = env.output(&[
            "run",
            "-it",
            "--stage1=ns",
            &format!("--detach-keys={bad}"),
            &env.image,
            "--",
            "true",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{bad}: {err}");
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(err.contains("detach-keys"), "{err}");
    }
    assert_eq!(
        env.only_pod(),
        None,
        "a pod was made for a bad --detach-keys"
    );

    let out = env.output(&[
        "run",
        "-t",
        "--stage1=ns",
        &env.image,
        "--",
        "sh",
        "-c",
        "echo short-$((1+1)); exit 3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("short-2"), "{stdout}");

    let pod = ark_tests::agent::RunningPod::start("ns");
    let out = pod.env.output(&["attach", &pod.uuid]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    pod.stop();
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("has a tty (run it with -t)"), "{err}");
}
