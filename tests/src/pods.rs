//! Helpers for the pods integration tests: a fresh `--dir` per test, the real busybox image
//! through the image store, and what a test needs to look at a pod from outside (status,
//! mounts, cgroups, processes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The busybox OCI layout, built once per test binary (umoci), as `oci-layout:PATH:latest`.
pub fn busybox_image() -> String {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    let path = LAYOUT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let name = exe
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        // Named `busybox` so apps get the name `busybox`.
        let dir = crate::target_dir()
            .join("pods-test-images")
            .join(name)
            .join("busybox");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.parent().expect("parent")).expect("create image dir");
        crate::images::busybox_oci_layout(&dir)
    });
    format!("oci-layout:{}:latest", path.display())
}

/// Why pod tests cannot run here, if they cannot.
/// Why kvm pods cannot run here, if they cannot: pods, `/dev/kvm`, or the guest kernel missing.
pub fn kvm_pods_unavailable() -> Option<String> {
    if let Some(why) = pods_unavailable() {
        return Some(why);
    }
    if let Some(why) = crate::kvm_unavailable() {
        return Some(why);
    }
    if crate::guest_kernel().is_none() {
        return Some(
            "no guest kernel: set ARK_KERNEL to kernel-config/build.sh's output (./test.sh does)"
                .into(),
        );
    }
    None
}

pub fn pods_unavailable() -> Option<String> {
    if !crate::is_root() {
        return Some("pods need root (mounts, namespaces, cgroups)".into());
    }
    None
}

/// One test's ark data directory and the commands on it.
#[derive(Debug)]
pub struct PodEnv {
    pub dir: tempfile::TempDir,
    pub image: String,
}

impl Default for PodEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl PodEnv {
    pub fn new() -> Self {
        PodEnv {
            dir: tempfile::Builder::new()
                .prefix("ark-pods-")
                .tempdir()
                .expect("temp dir"),
            image: busybox_image(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `ark --dir DIR --insecure-options=image ...`
    pub fn ark(&self) -> Command {
        let mut c = Command::new(crate::ark_bin());
        c.arg("--dir")
            .arg(self.dir.path())
            .arg("--insecure-options=image");
        c
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.ark()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ark")
    }

    /// Runs ark and returns stdout, asserting success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "ark {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts ark in the background (stdout/stderr piped), e.g. `ark run ... sleep 600`.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.ark()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ark")
    }

    /// `ark status UUID` as a key → value map.
    pub fn status(&self, uuid: &str) -> BTreeMap<String, String> {
        parse_status(&self.ok(&["status", uuid]))
    }

    /// The only pod's UUID (for pods started by `ark run`, whose UUID is not printed).
    pub fn only_pod(&self) -> Option<String> {
        let out = self.ok(&["list", "--format=json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("list json");
        let pods = v.as_array().expect("array");
        assert!(pods.len() <= 1, "more than one pod: {out}");
        pods.first()
            .map(|p| p["uuid"].as_str().expect("uuid").to_string())
    }

    /// Waits until `pred(status)` holds (or panics after `timeout`, showing the last status).
    pub fn wait_status(
        &self,
        uuid: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> BTreeMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(uuid);
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "pod {uuid}: timed out waiting for {what}; last status: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `ark run` started with [`PodEnv::spawn`] to create its pod; returns the UUID.
    pub fn wait_pod(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.only_pod() {
                return u;
            }
            assert!(Instant::now() < deadline, "no pod appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Mount points under this test's data dir still in the host's mount table.
    pub fn mounts_left(&self) -> Vec<String> {
        mounts_under(self.dir.path())
    }

    /// The app's output (stdout and stderr as they interleaved) as recorded in the pod's logs.
    pub fn app_log(&self, uuid: &str, app: &str) -> String {
        let (all, _, _) = self.app_log_streams(uuid, app);
        String::from_utf8_lossy(&all).into_owned()
    }

    /// The app's recorded output: (both streams in order, stdout, stderr), decoded from the
    /// k8s-file records of every file of its log.
    pub fn app_log_streams(&self, uuid: &str, app: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let dir = self
            .pod_dirs()
            .into_iter()
            .find(|d| d.file_name().is_some_and(|n| n == uuid))
            .unwrap_or_else(|| panic!("no directory for pod {uuid}"));
        let logs = ark_pod_spec::PodLayout::new(dir).logs_dir();
        let (mut all, mut out, mut err) = (Vec::new(), Vec::new(), Vec::new());
        ark_os::applog::read_all(&logs, app, ark_pod_spec::logs::MAX_MAX_FILES, |r| {
            all.extend(r.output());
            match r.stream {
                ark_pod_spec::logs::Stream::Stdout => out.extend(r.output()),
                ark_pod_spec::logs::Stream::Stderr => err.extend(r.output()),
            }
        })
        .unwrap_or_else(|e| panic!("{}: {e}", logs.display()));
        (all, out, err)
    }

    /// Pod directories in any state.
    pub fn pod_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for state in ["prepare", "prepared", "run", "exited-garbage", "garbage"] {
            if let Ok(rd) = std::fs::read_dir(self.dir.path().join("pods").join(state)) {
                out.extend(rd.flatten().map(|e| e.path()));
            }
        }
        out
    }
}

impl Drop for PodEnv {
    /// Best effort: never leave a test's pods running or mounted.
    fn drop(&mut self) {
        // Not ark_bin(): it asserts, and a panic while a failed test unwinds would abort.
        let bin = std::env::var_os("ARK_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::install_dir().join("bin/ark"));
        if bin.exists() {
            if let Ok(rd) = std::fs::read_dir(self.dir.path().join("pods/run")) {
                for e in rd.flatten() {
                    let _ = Command::new(&bin)
                        .arg("--dir")
                        .arg(self.dir.path())
                        .args(["stop", "--force"])
                        .arg(e.file_name())
                        .output();
                }
            }
            let _ = Command::new(&bin)
                .arg("--dir")
                .arg(self.dir.path())
                .args(["gc", "--grace-period=0s", "--expire-prepared=0s"])
                .output();
        }
        for m in mounts_under(self.dir.path()) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

pub fn parse_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Mount points at or under `dir` (canonicalized: mountinfo has real paths), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    ark_os::mountinfo::mounts_under(&dir)
        .unwrap_or_default()
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

/// Cgroup directories named after pod `uuid` in any mounted hierarchy.
pub fn pod_cgroups(uuid: &str) -> Vec<PathBuf> {
    ark_os::mountinfo::read()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.fs_type.starts_with("cgroup"))
        .map(|m| m.mount_point.join("ark").join(uuid))
        .filter(|d| d.exists())
        .collect()
}

/// Waits for a child to exit within `timeout`; kills it and panics otherwise.
pub fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// stderr of a failed command must be one clear line starting with `ark: `.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(125),
        "want exit 125, got {:?}; stderr: {err}",
        out.status
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line, got: {err}");
    assert!(lines[0].starts_with("ark: "), "{err}");
    assert!(lines[0].contains(needle), "want {needle:?} in: {err}");
}

/// One `#[test]` per named [`scenarios`] function for a stage1 flavor, each skipped (with the
/// reason) where pods cannot run here: `flavor_scenarios!("ns"; run_then_gc, kill9_then_gc);`.
#[macro_export]
macro_rules! flavor_scenarios {
    ($flavor:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[test]
            fn $scenario() {
                if let Some(why) = $crate::pods::pods_unavailable() {
                    $crate::skip!("{why}");
                }
                $crate::pods::scenarios::stage1_installed($flavor);
                $crate::pods::scenarios::$scenario($flavor);
            }
        )+
    };
}

/// Pod scenarios shared by the stage1 flavors' tests (`stage1_ns.rs`, `stage1_fly.rs`).
pub mod scenarios {
    use std::fs;
    use std::time::Duration;

    use super::{pod_cgroups, wait_child, PodEnv};

    /// How long a pod may take to start, stop or report. A kvm pod boots a guest kernel, which on
    /// a kvm_pvm host runs in KVM's instruction emulator (tens of seconds per boot, more under
    /// load); the other flavors start in well under a second.
    fn slow(flavor: &str) -> Duration {
        Duration::from_secs(if flavor == "kvm" { 300 } else { 60 })
    }

    /// `ark stop --timeout` for `flavor`: long enough for stage2 to stop the apps and report.
    fn stop_timeout(flavor: &str) -> &'static str {
        if flavor == "kvm" {
            "--timeout=180s"
        } else {
            "--timeout=20s"
        }
    }

    fn flag(flavor: &str) -> String {
        format!("--stage1={flavor}")
    }

    /// Panics unless the stage1 binary for `flavor` is installed.
    pub fn stage1_installed(flavor: &str) {
        let _ = crate::libexec_bin(&format!("ark-stage1-{flavor}"));
        let _ = crate::libexec_bin("ark-init");
    }

    /// `ark run IMG -- sh -c 'echo hi; exit 3'` prints hi and exits 3; status says so.
    pub fn run_prints_and_exits_with_the_apps_code(flavor: &str) {
        let env = PodEnv::new();
        let out = env.output(&[
            "run",
            &flag(flavor),
            &env.image,
            "--",
            "sh",
            "-c",
            "echo hi; exit 3",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(3),
            "stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.lines().any(|l| l == "hi"), "stdout: {stdout}");
        let uuid = env.only_pod().expect("the pod stays until gc");
        let s = env.status(&uuid);
        assert_eq!(s["state"], "exited", "{s:?}");
        assert_eq!(s["exit-code"], "3", "{s:?}");
        assert_eq!(s.get("app-busybox").map(String::as_str), Some("3"), "{s:?}");
        assert!(s.contains_key("finished"), "{s:?}");
        assert_eq!(env.app_log(&uuid, "busybox"), "hi\n");
    }

    /// Two apps: both statuses recorded; `ark run` exits with the first non-zero.
    pub fn two_apps_both_statuses(flavor: &str) {
        two_apps_both_statuses_with(flavor, &[]);
    }

    /// [`two_apps_both_statuses`] with extra pod flags (before the first image); returns the
    /// test's env and the pod's UUID for more assertions.
    pub fn two_apps_both_statuses_with(flavor: &str, pod_flags: &[&str]) -> (PodEnv, String) {
        let env = PodEnv::new();
        let flavor_flag = flag(flavor);
        let mut args = vec!["run", flavor_flag.as_str()];
        args.extend_from_slice(pod_flags);
        args.extend_from_slice(&[
            &env.image,
            "--name=ok",
            "--",
            "sh",
            "-c",
            "echo from-ok",
            "---",
            &env.image,
            "--name=bad",
            "--",
            "sh",
            "-c",
            "sleep 0.3; echo from-bad; exit 4",
        ]);
        let out = env.output(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("from-ok") && stdout.contains("from-bad"),
            "{stdout}"
        );
        let uuid = env.only_pod().unwrap();
        let s = env.status(&uuid);
        assert_eq!(s["app-ok"], "0", "{s:?}");
        assert_eq!(s["app-bad"], "4", "{s:?}");
        assert!(s.contains_key("app-ok-finished") && s.contains_key("app-bad-finished"));
        let json: serde_json::Value =
            serde_json::from_str(&env.ok(&["status", "--format=json", &uuid])).unwrap();
        assert_eq!(json["apps"].as_array().unwrap().len(), 2);
        (env, uuid)
    }

    /// --set-env, --user, --working-dir and a host volume reach the app.
    pub fn env_user_cwd_volume(flavor: &str) {
        let env = PodEnv::new();
        let host = env.path().join("shared");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("in"), "from-host\n").unwrap();
        // The app runs as uid 1000: let it write the result.
        std::os::unix::fs::chown(&host, Some(1000), Some(1000)).unwrap();
        let out = env.output(&[
            "run",
            &flag(flavor),
            &format!("--volume=data,kind=host,source={}", host.display()),
            &env.image,
            "--set-env=GREETING=hello world",
            "--user=app",
            "--working-dir=/tmp",
            "--mount=volume=data,target=/data",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; id -u; id -g; pwd; cat /data/in; echo from-app > /data/out",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines,
            ["hello world", "1000", "1000", "/tmp", "from-host"],
            "{stdout}"
        );
        assert_eq!(fs::read_to_string(host.join("out")).unwrap(), "from-app\n");
    }

    /// A read-only volume cannot be written.
    pub fn read_only_volume(flavor: &str) {
        let env = PodEnv::new();
        let host = env.path().join("ro");
        fs::create_dir(&host).unwrap();
        let out = env.output(&[
            "run",
            &flag(flavor),
            &format!(
                "--volume=data,kind=host,source={},readOnly=true",
                host.display()
            ),
            &env.image,
            "--mount=volume=data,target=/data",
            "--",
            "sh",
            "-c",
            "touch /data/x",
        ]);
        assert_ne!(out.status.code(), Some(0));
        assert!(!host.join("x").exists());
    }

    /// `ark stop` of a sleeping pod ends it (SIGTERM through stage2), promptly.
    pub fn stop_a_sleeping_pod(flavor: &str) {
        let env = PodEnv::new();
        let mut run = env.spawn(&["run", &flag(flavor), &env.image, "--", "sleep", "600"]);
        let uuid = env.wait_pod(slow(flavor));
        env.wait_status(&uuid, slow(flavor), "the app running", |s| {
            s.get("app-busybox").map(String::as_str) == Some("running")
        });
        assert_eq!(env.status(&uuid)["state"], "running");
        // A running pod is neither removable nor garbage.
        super::assert_one_line_error(&env.output(&["rm", &uuid]), "running");
        env.ok(&["gc", "--grace-period=0s", "--expire-prepared=0s"]);
        assert_eq!(env.status(&uuid)["state"], "running");
        // `status --wait` blocks while the pod runs and returns once it has exited.
        let mut waiter = env.spawn(&["status", "--wait", &uuid]);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            waiter.try_wait().unwrap().is_none(),
            "status --wait returned early"
        );
        env.ok(&["stop", stop_timeout(flavor), &uuid]);
        let st = wait_child(&mut run, slow(flavor));
        assert!(wait_child(&mut waiter, slow(flavor)).success());
        let mut waited = String::new();
        std::io::Read::read_to_string(waiter.stdout.as_mut().unwrap(), &mut waited).unwrap();
        assert!(waited.lines().any(|l| l == "state=exited"), "{waited}");
        // sleep dies of SIGTERM: 128 + 15.
        assert_eq!(st.code(), Some(143), "{st:?}");
        let s = env.status(&uuid);
        assert_eq!(s["state"], "exited", "{s:?}");
        assert_eq!(s["app-busybox"], "143", "{s:?}");
    }

    /// `ark enter` runs a command inside the running app (its root, its hostname for ns).
    pub fn enter_runs_inside(flavor: &str) {
        let env = PodEnv::new();
        let mut run = env.spawn(&[
            "run",
            &flag(flavor),
            "--hostname=inside",
            &env.image,
            "--",
            "sh",
            "-c",
            "echo marker > /tmp/marker; exec sleep 600",
            "---",
            &env.image,
            "--name=side",
            "--",
            "sleep",
            "600",
        ]);
        let uuid = env.wait_pod(slow(flavor));
        env.wait_status(&uuid, slow(flavor), "the app running", |s| {
            s.get("app-busybox").map(String::as_str) == Some("running")
        });
        let pod_root = env
            .path()
            .join("pods/run")
            .join(&uuid)
            .join("stage1/rootfs/apps/busybox/rootfs");
        // The marker is written by the app; wait for it through the host view.
        for _ in 0..100 {
            if pod_root.join("tmp/marker").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Two apps: which one must be said.
        super::assert_one_line_error(&env.output(&["enter", &uuid, "true"]), "--app");
        let out = env.ok(&[
            "enter",
            "--app=busybox",
            &uuid,
            "sh",
            "-c",
            "cat /tmp/marker; hostname; echo $ARK_APP_NAME",
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "marker", "{out}");
        if flavor == "ns" {
            assert_eq!(lines[1], "inside", "{out}");
        }
        assert_eq!(lines[2], "busybox", "{out}");
        // Exit codes pass through.
        assert_eq!(
            env.output(&["enter", "--app=side", &uuid, "sh", "-c", "exit 7"])
                .status
                .code(),
            Some(7)
        );
        env.ok(&["stop", "--force", &uuid]);
        wait_child(&mut run, slow(flavor));
    }

    /// `kill -9` of `ark run` (= of the stage1, which ark exec'd): the pod shows exited, the
    /// apps are gone, and gc leaves no mount and no cgroup.
    pub fn kill9_then_gc(flavor: &str) {
        let env = PodEnv::new();
        let mut run = env.spawn(&["run", &flag(flavor), &env.image, "--", "sleep", "600"]);
        let uuid = env.wait_pod(slow(flavor));
        env.wait_status(&uuid, slow(flavor), "the app running", |s| {
            s.get("app-busybox").map(String::as_str) == Some("running")
        });
        run.kill().unwrap(); // SIGKILL
        run.wait().unwrap();
        // Apps are killed with it (pdeathsig / pid namespace), the lock goes with them.
        let s = env.wait_status(&uuid, slow(flavor), "exited after kill -9", |s| {
            s["state"] == "exited"
        });
        assert!(
            s.contains_key("reason") || s.contains_key("exit-code"),
            "{s:?}"
        );
        gc_cleans_everything(&env, &uuid);
    }

    /// After a pod ran: `ark gc --grace-period=0s` leaves no mount, no cgroup, no directory.
    pub fn gc_cleans_everything(env: &PodEnv, uuid: &str) {
        let out = env.ok(&["gc", "--grace-period=0s"]);
        assert!(out.contains(uuid), "gc did not report {uuid}: {out}");
        assert!(
            env.mounts_left().is_empty(),
            "mounts left: {:?}",
            env.mounts_left()
        );
        assert!(
            pod_cgroups(uuid).is_empty(),
            "cgroups left: {:?}",
            pod_cgroups(uuid)
        );
        assert!(
            env.pod_dirs().is_empty(),
            "pod dirs left: {:?}",
            env.pod_dirs()
        );
        // No process of the pod survives.
        let survivors: Vec<String> = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| fs::read(e.path().join("environ")).ok())
            .filter(|env| {
                env.split(|b| *b == 0)
                    .any(|kv| kv == format!("ARK_POD_UUID={uuid}").as_bytes())
            })
            .map(|e| String::from_utf8_lossy(&e).into_owned())
            .collect();
        assert!(survivors.is_empty(), "pod processes left: {survivors:?}");
    }

    /// A pod that ran and exited normally is cleaned by gc too.
    pub fn run_then_gc(flavor: &str) {
        let env = PodEnv::new();
        let out = env.output(&["run", &flag(flavor), &env.image, "--", "true"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let uuid = env.only_pod().unwrap();
        // Within the grace period nothing goes.
        env.ok(&["gc"]);
        assert_eq!(env.status(&uuid)["state"], "exited");
        gc_cleans_everything(&env, &uuid);
    }

    /// prepare + run-prepared: same as run; a second run-prepared is refused.
    pub fn prepare_then_run_prepared(flavor: &str) {
        let env = PodEnv::new();
        let uuid = env
            .ok(&[
                "prepare",
                &flag(flavor),
                &env.image,
                "--",
                "sh",
                "-c",
                "exit 5",
            ])
            .trim()
            .to_string();
        let out = env.output(&["run-prepared", &uuid]);
        assert_eq!(
            out.status.code(),
            Some(5),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let again = env.output(&["run-prepared", &uuid]);
        super::assert_one_line_error(&again, "not prepared");
    }

    /// `--interactive` gives the app ark's stdin; without it the app's stdin is empty.
    pub fn interactive_stdin(flavor: &str) {
        use std::io::Write;
        let env = PodEnv::new();
        for (interactive, want) in [(true, "typed-in\n"), (false, "")] {
            let mut args = vec!["run".to_string(), flag(flavor)];
            if interactive {
                args.push("--interactive".into());
            }
            args.extend([env.image.clone(), "--".into(), "cat".into()]);
            let mut child = env
                .ark()
                .args(&args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"typed-in\n")
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                want,
                "interactive={interactive}"
            );
        }
    }
}
