//! Helpers for the agent tests (`agent_ns.rs`, `agent_kvm.rs`): one long-running pod, `ark
//! enter` against it, and the checks both flavors share (exit codes, streams, identity
//! overrides, concurrent enters, killing an enter, a real terminal through tmux).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::pods::{wait_child, PodEnv};

/// A pod running `sleep 3600` (app `busybox`) in the background.
#[derive(Debug)]
pub struct RunningPod {
    pub env: PodEnv,
    pub uuid: String,
    pub flavor: String,
    run: Child,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl RunningPod {
    /// How long things may take in this flavor (a kvm guest spawns slowly).
    pub fn slow(&self) -> Duration {
        Duration::from_secs(if self.flavor == "kvm" { 600 } else { 60 })
    }

    /// Starts the pod and waits until its app runs and `ark enter` reaches the agent.
    pub fn start(flavor: &str) -> Self {
        let env = PodEnv::new();
        let run = env.spawn(&[
            "run",
            &format!("--stage1={flavor}"),
            "--hostname=agentpod",
            &env.image,
            "--",
            "sleep",
            "3600",
        ]);
        let mut pod = RunningPod {
            uuid: String::new(),
            env,
            flavor: flavor.into(),
            run,
        };
        pod.uuid = pod.env.wait_pod(pod.slow());
        pod.env
            .wait_status(&pod.uuid, pod.slow(), "the app running", |s| {
                s.get("app-busybox").map(String::as_str) == Some("running")
            });
        let deadline = Instant::now() + pod.slow();
        loop {
            let out = pod.enter(&["true"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agent never answered: {}",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        pod
    }

    /// `ark enter [args]` with the UUID placed after the flags: `args` = flags, then "--",
    /// then the command; without "--", all of it is the command.
    pub fn enter_cmd(&self, args: &[&str]) -> Command {
        let (flags, cmd) = match args.iter().position(|a| *a == "--") {
            Some(i) => (&args[..i], &args[i + 1..]),
            None => (&args[..0], args),
        };
        let mut c = self.env.ark();
        c.arg("enter").args(flags).arg(&self.uuid).args(cmd);
        c
    }

    pub fn enter(&self, args: &[&str]) -> Output {
        self.enter_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ark enter")
    }

    /// stdout of a successful enter.
    pub fn enter_ok(&self, args: &[&str]) -> String {
        let out = self.enter(args);
        assert!(
            out.status.success(),
            "ark enter {args:?}: {:?}: {}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    pub fn stop(mut self) {
        let _ = self.env.output(&["stop", "--force", &self.uuid]);
        let slow = self.slow();
        wait_child(&mut self.run, slow);
    }

    /// The app's root as the host sees it (ns/fly only: a kvm root may be an image).
    pub fn app_root(&self) -> PathBuf {
        self.env
            .path()
            .join("pods/run")
            .join(&self.uuid)
            .join("stage1/rootfs/apps/busybox/rootfs")
    }
}

/// The pod's hostname, exit codes (the process's; 127 missing, 126 not executable), stdout and
/// stderr kept apart, stdin only with -i, and --user/--env/--workdir.
pub fn exec_basics(pod: &RunningPod) {
    let out = pod.enter(&["cat", "/etc/hostname"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // fly shares the host's UTS namespace and leaves /etc/hostname alone.
    if pod.flavor != "fly" {
        assert_eq!(text(&out.stdout), "agentpod\n");
    }

    assert_eq!(pod.enter(&["sh", "-c", "exit 9"]).status.code(), Some(9));
    let missing = pod.enter(&["no-such-program"]);
    assert_eq!(
        missing.status.code(),
        Some(127),
        "{}",
        text(&missing.stderr)
    );
    let err = text(&missing.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no-such-program"), "{err}");
    assert_eq!(pod.enter(&["/etc/hostname"]).status.code(), Some(126));

    let out = pod.enter(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "out\n", "LF stays LF, stderr stays out");
    assert_eq!(text(&out.stderr), "err\n");

    // Without -i the command's stdin is /dev/null; with -i it is ours.
    let mut c = pod.enter_cmd(&["cat"]);
    let out = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = feed(out, b"ignored\n");
    assert_eq!(text(&out.stdout), "");
    let mut c = pod.enter_cmd(&["-i", "--", "cat"]);
    let child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let out = feed(child, &payload);
    assert!(out.status.success());
    assert!(
        out.stdout == payload,
        "stdin came back altered ({} bytes)",
        out.stdout.len()
    );

    let out = pod.enter_ok(&[
        "--user=65534",
        "--env=GREETING=hello there",
        "--workdir=/tmp",
        "--",
        "sh",
        "-c",
        "id -u; echo \"$GREETING\"; pwd; echo $ARK_APP_NAME",
    ]);
    assert_eq!(out, "65534\nhello there\n/tmp\nbusybox\n");
}

fn feed(mut child: Child, input: &[u8]) -> Output {
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Two enters at once; killing `ark enter` (SIGKILL: its connection drops) kills its process
/// in the pod, and a SIGTERM to it reaches the process.
pub fn concurrent_and_killed(pod: &RunningPod) {
    let mut first = pod
        .enter_cmd(&["sh", "-c", "echo $$ > /tmp/enter-first.pid; exec sleep 600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + pod.slow();
    let pid = loop {
        let out = pod.enter(&["cat", "/tmp/enter-first.pid"]);
        let t = text(&out.stdout);
        if out.status.success() && !t.trim().is_empty() {
            break t.trim().to_string();
        }
        assert!(Instant::now() < deadline, "the first enter never ran");
        std::thread::sleep(Duration::from_millis(200));
    };
    // While the first still runs, a second sees its process.
    assert!(
        pod.enter(&["sh", "-c", &format!("kill -0 {pid}")])
            .status
            .success(),
        "two enters at once"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pod
        .enter(&["sh", "-c", &format!("kill -0 {pid}")])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "killing ark enter left its process {pid} running in the pod"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut term = pod
        .enter_cmd(&["sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Give the process time to start, then ask ark enter to end.
    std::thread::sleep(if pod.flavor == "kvm" {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(2)
    });
    nix::sys::signal::kill(crate::child_pid(&term), nix::sys::signal::Signal::SIGTERM).unwrap();
    let st = wait_child(&mut term, Duration::from_secs(60));
    assert_eq!(st.code(), Some(128 + 15), "SIGTERM reaches the process");
}

/// The checks in as few enters as a slow guest allows (a kvm_pvm guest under load takes tens
/// of seconds per process): hostname and exit code, separate streams and 127, two enters at
/// once, and a killed enter's process gone (both seen from a second enter, which polls inside
/// the guest).
pub fn vm_checks(pod: &RunningPod) {
    let out = pod.enter(&["cat", "/etc/hostname"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "agentpod\n");
    let out = pod.enter(&["sh", "-c", "echo out; echo err >&2; exit 9"]);
    assert_eq!(out.status.code(), Some(9), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n", "LF stays LF, stderr stays out");
    assert_eq!(text(&out.stderr), "err\n");
    let missing = pod.enter(&["no-such-program"]);
    assert_eq!(
        missing.status.code(),
        Some(127),
        "{}",
        text(&missing.stderr)
    );

    let mut first = pod
        .enter_cmd(&[
            "sh",
            "-c",
            "echo $$ > /tmp/enter-first.pid; exec sleep 3000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The second enter waits (inside the guest) for the first's process, reports it alive,
    // then waits for the host to kill the first `ark enter` and reports the process gone.
    let mut second = pod
        .enter_cmd(&[
            "sh",
            "-c",
            "for i in $(seq 300); do [ -s /tmp/enter-first.pid ] && break; sleep 1; done; \
             p=$(cat /tmp/enter-first.pid); kill -0 $p && echo alive; \
             for i in $(seq 300); do kill -0 $p 2>/dev/null || { echo gone; exit 0; }; \
             sleep 1; done; exit 1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Polling through a third enter would cost another slow spawn: read the second's output.
    let mut stdout = second.stdout.take().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + pod.slow();
    while !String::from_utf8_lossy(&seen).contains("alive") {
        use std::io::Read;
        let mut buf = [0u8; 64];
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0 && Instant::now() < deadline,
            "the second enter never saw the first: {}",
            text(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let st = wait_child(&mut second, pod.slow());
    let mut rest = String::new();
    use std::io::Read;
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(
        st.code(),
        Some(0),
        "killing ark enter left its process running: {rest}"
    );
    assert!(rest.contains("gone"), "{rest}");
}

/// `ark enter -ti` in tmux, once: the pty is the pod's, its size the window's.
pub fn vm_terminal(pod: &RunningPod) {
    let cmd = format!(
        "{ark} --dir {dir} enter -ti {uuid} sh; echo ENTER-EXIT=$?; sleep 600",
        ark = crate::ark_bin().display(),
        dir = pod.env.path().display(),
        uuid = pod.uuid,
    );
    let t = Tmux::start(&cmd);
    t.keys(&["tty; stty size; exit 4", "Enter"]);
    let screen = t.wait_for("ENTER-EXIT=4", pod.slow());
    assert!(screen.contains("/dev/pts/"), "tty is no pty:\n{screen}");
    assert!(screen.contains("\n24 80"), "stty size:\n{screen}");
}

/// A tmux session (its own server socket) running one command in an 80x24 window.
#[derive(Debug)]
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn start(command: &str) -> Self {
        // One server per session: tests of one binary may run at once.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("ark-agent-{}-{n}", std::process::id());
        let t = Tmux { socket };
        let st = t
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                "80",
                "-y",
                "24",
                command,
            ])
            .status()
            .expect("tmux");
        assert!(st.success(), "tmux new-session");
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    pub fn keys(&self, keys: &[&str]) {
        let st = self
            .cmd()
            .args(["send-keys", "-t", "t"])
            .args(keys)
            .status()
            .unwrap();
        assert!(st.success());
    }

    pub fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "t", "-S", "-200"])
            .output()
            .unwrap();
        text(&out.stdout)
    }

    /// Waits until the screen shows `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "screen never showed {needle:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        let st = self
            .cmd()
            .args(["resize-window", "-t", "t", "-x"])
            .arg(cols.to_string())
            .arg("-y")
            .arg(rows.to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// `ark enter -ti UUID sh` under a real terminal: `tty` is a pty of the pod, `stty size` follows
/// the window, ^C interrupts `sleep`, the exit code comes back and our terminal's settings are
/// restored afterwards.
pub fn terminal(pod: &RunningPod, scratch: &Path) {
    let before = scratch.join("stty.before");
    let after = scratch.join("stty.after");
    let cmd = format!(
        "stty -g > {b}; {ark} --dir {dir} enter -ti {uuid} sh; echo ENTER-EXIT=$?; stty -g > {a}; sleep 600",
        b = before.display(),
        a = after.display(),
        ark = crate::ark_bin().display(),
        dir = pod.env.path().display(),
        uuid = pod.uuid,
    );
    let t = Tmux::start(&cmd);
    let slow = pod.slow();
    t.keys(&["tty; stty size; echo READY-1", "Enter"]);
    let screen = t.wait_for("\nREADY-1", slow);
    assert!(screen.contains("/dev/pts/"), "tty is no pty:\n{screen}");
    assert!(screen.contains("\n24 80"), "stty size:\n{screen}");
    t.resize(120, 40);
    std::thread::sleep(Duration::from_secs(1));
    t.keys(&["stty size; echo READY-2", "Enter"]);
    let screen = t.wait_for("\nREADY-2", slow);
    assert!(
        screen.contains("\n40 120"),
        "stty size after the resize:\n{screen}"
    );
    t.keys(&["sleep 600; echo SLEPT", "Enter"]);
    std::thread::sleep(if pod.flavor == "kvm" {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(2)
    });
    t.keys(&["C-c"]);
    t.keys(&["echo INTR-$?", "Enter"]);
    let screen = t.wait_for("INTR-1", slow);
    assert!(!screen.contains("\nSLEPT"), "{screen}");
    t.keys(&["exit 4", "Enter"]);
    t.wait_for("ENTER-EXIT=4", slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !after.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(&before).unwrap(),
        std::fs::read_to_string(&after).unwrap(),
        "the terminal's settings were not restored"
    );
}
