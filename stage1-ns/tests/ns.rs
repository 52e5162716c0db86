//! ark-stage1-ns for real: hand-built pod directories run with the static ark-init as PID 1 of
//! the pod's namespaces. Needs root and busybox-static.

use std::path::Path;
use std::time::Duration;

use ark_pod_spec::AppState;
use ark_tests::fixtures::{pod, stderr, stdout, wait_for};
use ark_tests::skip_unless_able;
use serde_json::json;

/// The pid of a child this test spawned, for kill(2).
fn pid_of(child: &std::process::Child) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in pid_t"))
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ark-stage1-ns"))
}

#[test]
fn exit_code_output_and_status() {
    skip_unless_able!();
    let p = pod(
        "ns",
        json!({ "apps": [{ "name": "main", "exec": ["sh", "-c", "echo hi; exit 3"] }] }),
    );
    let out = p.run(bin());
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "hi\n");
    let st = p.status().read_app("main").unwrap();
    assert_eq!(
        (st.state, st.exit_code, st.signal),
        (AppState::Exited, Some(3), None)
    );
    assert!(st.started_at.is_some() && st.finished_at >= st.started_at);
    let pod_exit = p.status().read_pod().unwrap();
    assert_eq!((pod_exit.exit_code, pod_exit.reason), (3, None));
    assert!(!p.layout.stage2_pid_file().exists());
    assert!(p.cgroups_left().is_empty(), "{:?}", p.cgroups_left());
    assert!(p.mounts_left().is_empty(), "{:?}", p.mounts_left());
}

#[test]
fn two_apps_first_nonzero_wins() {
    skip_unless_able!();
    let p = pod(
        "ns",
        json!({ "apps": [
            { "name": "ok", "exec": ["true"] },
            { "name": "bad", "exec": ["sh", "-c", "sleep 0.2; exit 5"] },
            { "name": "worse", "exec": ["sh", "-c", "exit 7"] },
        ] }),
    );
    let out = p.run(bin());
    assert_eq!(out.status.code(), Some(5));
    let s = p.status();
    assert_eq!(s.read_app("ok").unwrap().exit_code, Some(0));
    assert_eq!(s.read_app("bad").unwrap().exit_code, Some(5));
    assert_eq!(s.read_app("worse").unwrap().exit_code, Some(7));
}

#[test]
fn isolation_env_user_cwd_and_volumes() {
    skip_unless_able!();
    let vols = tempfile::tempdir().unwrap();
    let ro = vols.path().join("ro");
    let rw = vols.path().join("rw");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("in"), "from-host\n").unwrap();
    std::fs::set_permissions(&rw, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let script = r#"
        echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
        echo "cwd=$(pwd) home=$HOME"
        echo "env=$GREETING $ARK_APP_NAME ${#ARK_POD_UUID}"
        echo "host=$(hostname)"
        echo "etc=$(cat /etc/hostname) $(grep -c podhost /etc/hosts)"
        echo "pid1=$(cat /proc/1/cmdline)"
        cat /data/in
        echo written > /out/file && echo rw-ok
        touch /data/x 2>/dev/null || echo ro-denied
        grep CapEff /proc/self/status
    "#;
    let p = pod(
        "ns",
        json!({
            "hostname": "podhost",
            "net": "none",
            "apps": [{
                "name": "app", "exec": ["sh", "-c", script],
                "env": [{ "name": "GREETING", "value": "hello" }],
                "user": "alice", "group": "users", "supplementary_groups": [42],
                "working_dir": "/work/dir",
                "capabilities_keep": ["CAP_NET_BIND_SERVICE"], "capabilities_explicit": true,
                "mounts": [{ "volume": "ro", "target": "/data" }, { "volume": "rw", "target": "/out" }]
            }],
            "volumes": [
                { "name": "ro", "kind": "host", "source": ro, "read_only": true },
                { "name": "rw", "kind": "host", "source": rw }
            ]
        }),
    );
    let out = p.run(bin());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let o = stdout(&out);
    assert!(o.contains("uid=1000 gid=100 groups=100 10 42\n"), "{o}");
    assert!(o.contains("cwd=/work/dir home=/home/alice\n"), "{o}");
    assert!(o.contains("env=hello app 36\n"), "{o}");
    assert!(o.contains("host=podhost\n"), "{o}");
    assert!(o.contains("etc=podhost 1\n"), "{o}");
    assert!(o.contains("pid1=/init\n"), "{o}");
    assert!(o.contains("from-host\nrw-ok\nro-denied\n"), "{o}");
    // Non-root keeps exactly CAP_NET_BIND_SERVICE (bit 10) through exec, via the ambient set.
    assert!(o.contains("CapEff:\t0000000000000400"), "{o}");
    assert_eq!(
        std::fs::read_to_string(rw.join("file")).unwrap(),
        "written\n"
    );
    assert!(p.mounts_left().is_empty());
}

#[test]
fn unknown_user_and_missing_command_are_reported() {
    skip_unless_able!();
    let p = pod(
        "ns",
        json!({ "apps": [
            { "name": "nouser", "exec": ["true"], "user": "mallory" },
            { "name": "nocmd", "exec": ["no-such-program"] },
        ] }),
    );
    let out = p.run(bin());
    // The first non-zero in manifest order: the bad user's 125.
    assert_eq!(out.status.code(), Some(125));
    let nouser = p.status().read_app("nouser").unwrap();
    assert!(
        nouser
            .error
            .as_deref()
            .unwrap()
            .contains("user \"mallory\" not found"),
        "{nouser:?}"
    );
    let nocmd = p.status().read_app("nocmd").unwrap();
    assert_eq!(nocmd.exit_code, Some(127));
    assert!(
        nocmd
            .error
            .as_deref()
            .unwrap()
            .contains("not found in $PATH"),
        "{nocmd:?}"
    );
    assert!(stderr(&out).contains("mallory"));
}

#[test]
fn memory_limit_oom_kill_is_reported() {
    skip_unless_able!();
    let p = pod(
        "ns",
        json!({ "apps": [{
            "name": "hog",
            "exec": ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            "limits": { "memory_bytes": 16777216 }
        }] }),
    );
    let out = p.run(bin());
    assert_eq!(out.status.code(), Some(137));
    let st = p.status().read_app("hog").unwrap();
    assert_eq!(st.signal, Some(9));
    assert!(st.oom_killed, "{st:?}");
    assert!(p.cgroups_left().is_empty(), "{:?}", p.cgroups_left());
}

#[test]
fn sigterm_stops_the_pod_gracefully() {
    skip_unless_able!();
    let p = pod(
        "ns",
        json!({ "apps": [
            { "name": "trapper", "exec": ["sh", "-c", "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done"] },
            { "name": "sleeper", "exec": ["sleep", "1000"] },
        ] }),
    );
    let child = p
        .command(bin())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for(20, || p
        .status()
        .read_app("sleeper")
        .is_some_and(|s| s.state == AppState::Running)));
    assert!(wait_for(5, || p.layout.stage2_pid_file().exists()));
    assert!(!p.cgroups_left().is_empty());
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(pid_of(&child), nix::sys::signal::Signal::SIGTERM).unwrap();
    let t = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(stdout(&out).contains("got-term"), "{}", stdout(&out));
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(p.status().read_app("trapper").unwrap().exit_code, Some(42));
    assert_eq!(p.status().read_app("sleeper").unwrap().signal, Some(15));
    assert_eq!(p.status().read_pod().unwrap().exit_code, 42);
    assert!(p.cgroups_left().is_empty(), "{:?}", p.cgroups_left());
    assert!(p.mounts_left().is_empty());
}

#[test]
fn sigkill_of_stage1_takes_the_pod_down() {
    skip_unless_able!();
    let p = pod(
        "ns",
        json!({ "apps": [{ "name": "sleeper", "exec": ["sleep", "1000"] }] }),
    );
    let mut child = p.command(bin()).spawn().unwrap();
    assert!(wait_for(20, || p.status().read_app("sleeper").is_some()));
    let init: i32 = std::fs::read_to_string(p.layout.stage2_pid_file())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_for(5, || !Path::new(&format!("/proc/{init}")).exists()),
        "guest-init survived"
    );
    // What gc does for such a pod: the cgroups are left, and removable.
    let cg = ark_os::cgroup::Cgroups::detect();
    cg.remove_pod(&p.manifest.uuid).unwrap();
    assert!(p.cgroups_left().is_empty());
}

#[test]
fn bad_pods_fail_with_one_line_and_leave_nothing() {
    skip_unless_able!();
    let p = pod(
        "ns",
        json!({
            "apps": [{ "name": "a", "exec": ["true"], "mounts": [{ "volume": "v", "target": "/v" }] }],
            "volumes": [{ "name": "v", "kind": "host", "source": "/nonexistent/ark-volume" }]
        }),
    );
    let out = p.run(bin());
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/ark-volume does not exist"),
        "{err}"
    );
    assert!(p.cgroups_left().is_empty());

    let out = std::process::Command::new(bin())
        .args(["run", "--pod-dir", "/nonexistent/pod"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("does not exist"));
}

#[test]
fn a_stop_right_at_start_is_not_lost() {
    skip_unless_able!();
    for delay_ms in [0, 5, 20] {
        let p = pod(
            "ns",
            json!({ "apps": [{ "name": "s", "exec": ["sleep", "1000"] }] }),
        );
        let mut cmd = p.command(bin());
        // As stage0 does: exec the stage1 with the stop signals blocked, so even a SIGTERM
        // before its main() runs stays pending.
        // SAFETY: only sigprocmask between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                let mut set = nix::sys::signal::SigSet::empty();
                set.add(nix::sys::signal::Signal::SIGTERM);
                set.thread_block().map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let pid = pid_of(&child);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let ended = wait_for(15, || child.try_wait().unwrap().is_some());
        if !ended {
            let _ = child.kill();
        }
        assert!(
            ended,
            "pod ignored a SIGTERM sent {delay_ms} ms after start"
        );
        let exit = p.status().read_pod().unwrap();
        assert_ne!(exit.exit_code, 0);
        assert_eq!(p.status().read_app("s").unwrap().state, AppState::Exited);
        assert!(p.cgroups_left().is_empty());
    }
}
