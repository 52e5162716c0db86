//! The apps' output and `ark logs` for ns pods (and fly, which shares the code path): stdout
//! and stderr apart and exact, backpressure, logs on the host side of the pod, rotation at
//! `--log-max-size`, `ark logs -f` across rotations, garbage in a log refused in one line.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ark_tests::output::{dir_bytes, pod_dir, streams_end_to_end, Collector};
use ark_tests::pods::{pods_unavailable, PodEnv};
use ark_tests::skip;

/// 16 MiB of random bytes and a marker: same sha256, the marker only on stderr, a slow
/// reader loses nothing, `ark logs -f` sees what came after it, the log rotates (8 MiB cap).
#[test]
fn ns_streams_are_separate_exact_and_logged() {
    if let Some(why) = pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    let seen = streams_end_to_end(&env, "ns", Duration::from_secs(60), |_| {});
    assert_eq!(seen.run_stderr.lines().count(), 2, "{}", seen.run_stderr);
    // The log lives beside the pod's root, not in it: no app root holds it.
    let dir = pod_dir(&env, &seen.uuid);
    assert!(dir.join("logs/busybox.log").is_file());
    assert!(!dir.join("stage1/rootfs/ark/logs/busybox.log").exists());
}

/// `--log-max-size 64KiB`: the log rotates (3 files kept), disk use stays bounded, `ark logs
/// -f` started before the rotations prints every line in order and ends with the pod;
/// `--since`, `--timestamps`, `--app`; a log with garbage in it fails with one line.
#[test]
fn ns_logs_rotate_follow_and_refuse_garbage() {
    if let Some(why) = pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    // 10 batches of 500 numbered lines (~25 KB each), paced so `-f` sees each rotation.
    let script = "echo first; sleep 3; b=0; while [ $b -lt 10 ]; do i=0; \
        while [ $i -lt 500 ]; do echo line-$b-$i; i=$((i+1)); done; b=$((b+1)); sleep 0.5; done";
    let mut run = env.spawn(&[
        "run",
        "--stage1=ns",
        "--log-max-size=64KiB",
        &env.image,
        "--",
        "sh",
        "-c",
        script,
    ]);
    let run_out = Collector::new(run.stdout.take().unwrap());
    assert!(run_out.wait_for(b"first\n", Duration::from_secs(60)));
    let uuid = env.only_pod().unwrap();
    let mut follow = env
        .ark()
        .args(["logs", "--follow", &uuid])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let follow_out = Collector::new(follow.stdout.take().unwrap());
    assert!(follow_out.wait_for(b"first\n", Duration::from_secs(10)));
    assert!(
        !run_out.contains(b"line-0-0"),
        "the app went on before `ark logs -f` was attached"
    );
    assert!(run.wait().unwrap().success());
    let all = String::from_utf8(run_out.finish()).unwrap();
    assert_eq!(all.lines().count(), 5001);
    let deadline = Instant::now() + Duration::from_secs(30);
    while follow.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "ark logs -f did not end with the pod"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let followed = String::from_utf8(follow_out.finish()).unwrap();
    assert!(
        followed == all,
        "`ark logs -f` printed {} of {} bytes, ending {:?}",
        followed.len(),
        all.len(),
        &followed[followed.len().saturating_sub(60)..]
    );

    // Bounded: the live file and two rotated ones, each at most the cap.
    let logs = pod_dir(&env, &uuid).join("logs");
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["busybox.log", "busybox.log.1", "busybox.log.2"]);
    assert!(dir_bytes(&logs) <= 3 * 64 * 1024, "{}", dir_bytes(&logs));

    // What is left is the tail, whole lines in order, up to the last one.
    let tail = env.ok(&["logs", &uuid]);
    assert!(
        tail.len() < all.len() && all.ends_with(&tail),
        "{} bytes",
        tail.len()
    );
    let since = env.ok(&["logs", "--since=1h", &uuid]);
    assert_eq!(since, tail);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(env.ok(&["logs", "--since=10ms", &uuid]), "");
    let stamped = env.ok(&["logs", "--timestamps", &uuid]);
    let first = stamped.lines().next().unwrap();
    let (ts, line) = first.split_once(' ').unwrap();
    assert_eq!(
        (ts.len(), ts.as_bytes()[10], ts.as_bytes()[29]),
        (30, b'T', b'Z')
    );
    assert_eq!(line, tail.lines().next().unwrap());
    let e = ark_tests::images::ark_err(env.path(), &["logs", "--app=nope", &uuid]);
    assert!(e.contains("no app \"nope\""), "{e}");

    // Garbage (a truncated record, control bytes) in a log file: one line, exit 125.
    std::fs::write(
        logs.join("busybox.log"),
        b"2026-01-01 \x1b[31mnot a record\n",
    )
    .unwrap();
    let out = env.output(&["logs", &uuid]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("busybox.log: line 1: not a log record"),
        "{err}"
    );
}
