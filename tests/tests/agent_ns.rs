//! `ark enter` through guest-init's agent in ns and fly pods (issue 12): exit codes, separate
//! streams, stdin, --user/--env/--workdir, concurrent enters, killing an enter, a real terminal;
//! and a hostile agent (a fake one on the pod's agent socket) that lies about lengths, sends
//! garbage, floods, never answers or drops the connection: `ark enter` prints one line and
//! exits 125, in bounded time and memory.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ark_pod_spec::agent::{AgentFrame, Reply, AGENT_PROTOCOL_VERSION};
use ark_tests::agent::{self, RunningPod};
use ark_tests::pods::{pods_unavailable, wait_child};
use ark_tests::skip;

macro_rules! need_pods {
    () => {
        if let Some(why) = pods_unavailable() {
            skip!("{why}");
        }
    };
}

#[test]
fn enter_in_ns() {
    need_pods!();
    let pod = RunningPod::start("ns");
    agent::exec_basics(&pod);
    agent::concurrent_and_killed(&pod);
    let scratch = tempfile::tempdir().unwrap();
    agent::terminal(&pod, scratch.path());
    pod.stop();
}

#[test]
fn enter_in_fly() {
    need_pods!();
    let pod = RunningPod::start("fly");
    agent::exec_basics(&pod);
    agent::concurrent_and_killed(&pod);
    pod.stop();
}

/// The agent's socket is reachable by root only: its directory is 0700.
#[test]
fn agent_socket_is_root_only() {
    need_pods!();
    use std::os::unix::fs::PermissionsExt;
    let pod = RunningPod::start("ns");
    let dir = pod.app_root().join("../../../ark/agent");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    pod.stop();
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
}

/// What the fake agent does with its one connection.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    LiesAboutLength,
    GarbageBytes,
    GarbageMessage,
    DropsAfterHello,
    NeverAnswers,
    WrongVersion,
    StdinFrameFromAgent,
    ExitCodeOutOfRange,
    FloodsThenDrops,
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    ark_pod_spec::agent::encode(kind, body, &mut v);
    v
}

fn reply(r: Reply) -> Vec<u8> {
    let mut v = Vec::new();
    AgentFrame::Message(r).encode(&mut v);
    v
}

/// Reads one frame the (real, trusted here) client sent.
fn read_frame(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

fn handshake(s: &mut UnixStream) {
    read_frame(s).unwrap();
    s.write_all(&reply(Reply::Hello {
        version: AGENT_PROTOCOL_VERSION,
    }))
    .unwrap();
    read_frame(s).unwrap();
    s.write_all(&reply(Reply::Started { pid: 42 })).unwrap();
}

/// Plays `how` on one connection; returns how many output bytes it got to write.
fn play(mut s: UnixStream, how: Hostile) -> usize {
    let hold = |s: UnixStream| {
        std::thread::sleep(Duration::from_secs(40));
        drop(s);
    };
    match how {
        Hostile::LiesAboutLength => {
            read_frame(&mut s).unwrap();
            s.write_all(&u32::MAX.to_be_bytes()).unwrap();
            hold(s);
        }
        Hostile::GarbageBytes => {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            hold(s);
        }
        Hostile::GarbageMessage => {
            read_frame(&mut s).unwrap();
            s.write_all(&frame(0, b"\xff\xfe{not json")).unwrap();
            hold(s);
        }
        Hostile::DropsAfterHello => {
            read_frame(&mut s).unwrap();
        }
        Hostile::NeverAnswers => hold(s),
        Hostile::WrongVersion => {
            read_frame(&mut s).unwrap();
            s.write_all(&reply(Reply::Hello { version: 99 })).unwrap();
            hold(s);
        }
        Hostile::StdinFrameFromAgent => {
            handshake(&mut s);
            s.write_all(&frame(ark_pod_spec::agent::KIND_STDIN, b"x"))
                .unwrap();
            hold(s);
        }
        Hostile::ExitCodeOutOfRange => {
            handshake(&mut s);
            s.write_all(&frame(0, br#"{"op":"exited","status":{"code":999}}"#))
                .unwrap();
            hold(s);
        }
        Hostile::FloodsThenDrops => {
            handshake(&mut s);
            let chunk = frame(ark_pod_spec::agent::KIND_STDOUT, &vec![b'x'; 65536]);
            let mut sent = 0;
            // 256 MiB, then the connection drops with no exit status.
            while sent < 256 << 20 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
                sent += 65536;
            }
            return sent;
        }
    }
    0
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `ark enter` against a fake agent playing `how`; returns (exit code, stderr, seconds,
/// the highest RSS seen in KiB, output bytes the agent wrote).
fn enter_against(
    pod: &RunningPod,
    listener: &UnixListener,
    how: Hostile,
    stdout: Stdio,
) -> (Option<i32>, String, f64, u64, usize) {
    let l = listener.try_clone().unwrap();
    let agent = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        play(s, how)
    });
    let start = Instant::now();
    let mut child = pod
        .enter_cmd(&["true"])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut max_rss = 0;
    let deadline = start + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        max_rss = max_rss.max(rss_kib(child.id()).unwrap_or(0));
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{how:?}: ark enter hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let secs = start.elapsed().as_secs_f64();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    // The holding agents sleep on; their result does not matter.
    let sent = if matches!(how, Hostile::FloodsThenDrops | Hostile::DropsAfterHello) {
        agent.join().unwrap()
    } else {
        0
    };
    (status.code(), err, secs, max_rss, sent)
}

#[test]
fn a_hostile_agent_ends_enter_with_one_line() {
    need_pods!();
    let pod = RunningPod::start("ns");
    // The fake agent takes the real one's place on the socket.
    let dir = std::fs::File::open(pod.app_root().join("../../../ark/agent")).unwrap();
    // Through the directory's descriptor: the pod path is too long for sun_path.
    let sock = format!("/proc/self/fd/{}/agent.sock", dir.as_raw_fd());
    std::fs::remove_file(&sock).unwrap();
    let listener = UnixListener::bind(&sock).unwrap();
    for (how, needle, max_secs) in [
        (Hostile::LiesAboutLength, "frame length 4294967295", 5.0),
        (Hostile::GarbageBytes, "frame length", 5.0),
        (Hostile::GarbageMessage, "bad message", 5.0),
        (Hostile::DropsAfterHello, "closed the connection", 5.0),
        (Hostile::WrongVersion, "protocol version 99", 5.0),
        (
            Hostile::StdinFrameFromAgent,
            "not allowed in this direction",
            5.0,
        ),
        (Hostile::ExitCodeOutOfRange, "invalid exit code", 5.0),
        (Hostile::NeverAnswers, "did not answer", 30.0),
    ] {
        let (code, err, secs, _, _) = enter_against(&pod, &listener, how, Stdio::null());
        assert_eq!(code, Some(125), "{how:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{how:?}: want one line, got {err}");
        assert!(lines[0].starts_with("ark: "), "{how:?}: {err}");
        assert!(
            lines[0].contains(needle),
            "{how:?}: want {needle:?} in {err}"
        );
        assert!(secs < max_secs, "{how:?}: took {secs:.1} s");
    }
    // A flood is written out at the pace our stdout takes it, never buffered: memory stays
    // flat over 256 MiB, and the dropped connection is still one line.
    let (code, err, _, max_rss, sent) =
        enter_against(&pod, &listener, Hostile::FloodsThenDrops, Stdio::null());
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("closed the connection before"), "{err}");
    assert_eq!(sent, 256 << 20);
    assert!(max_rss < 32 * 1024, "ark enter grew to {max_rss} KiB");
    // A reader that never reads: the flood stops at the pipe and the socket buffers.
    let l = listener.try_clone().unwrap();
    let agent = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        play(s, Hostile::FloodsThenDrops)
    });
    let mut child = pod
        .enter_cmd(&["true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sent = agent.join().unwrap();
    let rss = rss_kib(child.id()).unwrap_or(0);
    child.kill().unwrap();
    wait_child(&mut child, Duration::from_secs(10));
    assert!(
        sent < 8 << 20,
        "the agent got {sent} bytes into a client whose stdout is full"
    );
    assert!(rss < 32 * 1024, "ark enter grew to {rss} KiB");
    drop(listener);
    pod.stop();
}
