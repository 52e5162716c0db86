//! The apps' output end to end, the same checks for every flavor (tests/tests/logs_ns.rs,
//! tests/tests/output_kvm.rs): separate stdout and stderr, binary-safe, backpressure with a
//! slow reader, `ark logs` and `ark logs -f`, rotation at the default cap.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::images::sha256_hex;
use crate::pods::PodEnv;

/// Bytes of random output the app writes.
pub const RANDOM_BYTES: usize = 16 << 20;

/// The app: a line on each stream, a pause (for the test to attach `ark logs -f` and whatever
/// `during` does), then 16 MiB of random bytes (made by the test, in a volume: cheap for a
/// slow guest) on stdout, and a marker on stderr.
pub const SCRIPT: &str = "echo out; echo err >&2; sleep 8; cat /data/r; echo MARKER >&2";

/// A stream read on a thread into a shared buffer.
#[derive(Debug)]
pub struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Collector {
    pub fn new(mut r: impl Read + Send + 'static) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let thread = std::thread::spawn(move || {
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Collector { buf, thread }
    }

    pub fn contains(&self, needle: &[u8]) -> bool {
        self.buf
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }

    pub fn wait_for(&self, needle: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// What arrived so far, for a failure message.
    pub fn snapshot(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    /// Everything, once the stream ended.
    pub fn finish(self) -> Vec<u8> {
        self.thread.join().unwrap();
        Arc::try_unwrap(self.buf).unwrap().into_inner().unwrap()
    }
}

/// The pod's directory, wherever its state put it.
pub fn pod_dir(env: &PodEnv, uuid: &str) -> PathBuf {
    env.pod_dirs()
        .into_iter()
        .find(|d| d.file_name().is_some_and(|n| n == uuid))
        .unwrap_or_else(|| panic!("no directory for pod {uuid}"))
}

/// Total bytes of the files in `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// What [`streams_end_to_end`] saw.
#[derive(Debug)]
pub struct Seen {
    pub uuid: String,
    /// `ark run`'s stderr.
    pub run_stderr: String,
}

/// Runs [`SCRIPT`] in a pod of `flavor` and checks everything about its output; `during` runs
/// while the app pauses (kvm: hostile connections). `boot` bounds the wait for the pod to start.
pub fn streams_end_to_end(
    env: &PodEnv,
    flavor: &str,
    boot: Duration,
    during: impl FnOnce(&Path),
) -> Seen {
    // Beside ark's data directory, not in it.
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path();
    let mut random = vec![0u8; RANDOM_BYTES];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut random)
        .unwrap();
    let sha = sha256_hex(&random);
    std::fs::write(data_dir.join("r"), &random).unwrap();
    drop(random);
    let mut run: Child = env
        .ark()
        .args([
            "run",
            &format!("--stage1={flavor}"),
            &format!(
                "--volume=data,kind=host,source={},readOnly=true",
                data_dir.display()
            ),
            &env.image,
            "--mount=volume=data,target=/data",
            "--",
            "sh",
            "-c",
            SCRIPT,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ark run");
    let mut run_stdout: ChildStdout = run.stdout.take().unwrap();
    let run_stderr = Collector::new(run.stderr.take().unwrap());
    assert!(
        run_stderr.wait_for(b"err\n", boot),
        "the pod did not start: {}",
        run_stderr.snapshot()
    );
    let uuid = env.only_pod().expect("the pod");
    let dir = pod_dir(env, &uuid);

    // `ark logs -f` attached while the app pauses: what it prints next is written later.
    let mut follow = env
        .ark()
        .args(["logs", "-f", &uuid])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ark logs -f");
    let follow_out = Collector::new(follow.stdout.take().unwrap());
    let follow_err = Collector::new(follow.stderr.take().unwrap());
    assert!(follow_out.wait_for(b"out\n", Duration::from_secs(30)));
    assert!(
        dir_bytes(&dir.join("logs")) < 1000,
        "the app went on before `ark logs -f` was attached; the test cannot tell"
    );
    during(&dir);

    // A slow reader: nobody reads `ark run`'s stdout for a while. The app stalls on its
    // pipe; nothing buffers the 16 MiB on the way, and the log is no further than the reader.
    let deadline = Instant::now() + Duration::from_secs(300);
    while dir_bytes(&dir.join("logs")) < 4096 {
        assert!(
            Instant::now() < deadline,
            "the random bytes did not start: {}",
            run_stderr.snapshot()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let logged = dir_bytes(&dir.join("logs"));
    assert!(
        logged < 4 << 20,
        "{logged} bytes logged while the reader read nothing: output is buffered, not held back"
    );
    assert!(
        !run_stderr.contains(b"MARKER"),
        "the app did not wait for the reader"
    );

    let mut stdout = Vec::new();
    run_stdout.read_to_end(&mut stdout).unwrap();
    let status = run.wait().unwrap();
    let stderr = String::from_utf8_lossy(&run_stderr.finish()).into_owned();
    assert!(status.success(), "{status:?}: {stderr}");

    // Separate, exact streams: stdout is "out\n" and the random bytes, nothing added.
    assert_eq!(stdout.len(), 4 + RANDOM_BYTES, "stderr: {stderr}");
    assert_eq!(&stdout[..4], b"out\n");
    assert_eq!(sha256_hex(&stdout[4..]), sha);
    let app_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("ark-stage1-kvm: output channel"))
        .collect();
    assert_eq!(app_lines, ["err", "MARKER"], "stderr: {stderr}");

    // `ark logs -f` ended with the pod and printed the same streams.
    let deadline = Instant::now() + Duration::from_secs(60);
    while follow.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "ark logs -f did not end with the pod"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(follow.wait().unwrap().success());
    check_logged(&follow_out.finish(), &follow_err.finish(), &sha);

    // The log rotated at the default cap (8 MiB, 3 files) and still holds everything.
    let logs = dir.join("logs");
    assert!(logs.join("busybox.log.1").exists());
    assert!(dir_bytes(&logs) <= 3 * (8 << 20) + 64 * 1024);
    let out = env.ark().args(["logs", &uuid]).output().unwrap();
    assert!(out.status.success());
    check_logged(&out.stdout, &out.stderr, &sha);
    Seen {
        uuid,
        run_stderr: stderr,
    }
}

fn check_logged(stdout: &[u8], stderr: &[u8], sha: &str) {
    assert_eq!(stdout.len(), 4 + RANDOM_BYTES);
    assert_eq!(&stdout[..4], b"out\n");
    assert_eq!(sha256_hex(&stdout[4..]), sha);
    assert_eq!(String::from_utf8_lossy(stderr), "err\nMARKER\n");
}
