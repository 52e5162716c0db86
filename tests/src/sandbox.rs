//! Helpers for the `ark app` tests (`app_ns.rs`, `app_kvm.rs`): a sandbox running in the
//! background and the checks every flavor shares (apps added, started, stopped alone, removed,
//! added again; bad requests refused with one line and nothing changed; `ark stop` ending all).

use std::path::PathBuf;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use crate::pods::{wait_child, PodEnv};

/// A sandbox started with `ark app sandbox` in the background.
#[derive(Debug)]
pub struct Sandbox {
    pub env: PodEnv,
    pub uuid: String,
    pub flavor: String,
    run: Child,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Sandbox {
    /// How long things may take in this flavor (a kvm guest boots and spawns slowly).
    pub fn slow(&self) -> Duration {
        Duration::from_secs(if self.flavor == "kvm" { 600 } else { 60 })
    }

    /// Starts the sandbox and waits until it runs with no app.
    pub fn start(flavor: &str) -> Self {
        let env = PodEnv::new();
        let uuid_file = env.path().join("uuid");
        // fly shares the host's network; the others get none (loopback only).
        let net = if flavor == "fly" {
            "--net=host"
        } else {
            "--net=none"
        };
        let run = env.spawn(&[
            "app",
            "sandbox",
            &format!("--stage1={flavor}"),
            net,
            &format!("--uuid-file-save={}", uuid_file.display()),
        ]);
        let mut sb = Sandbox {
            env,
            uuid: String::new(),
            flavor: flavor.into(),
            run,
        };
        sb.uuid = sb.env.wait_pod(sb.slow());
        sb.env
            .wait_status(&sb.uuid, sb.slow(), "the sandbox running", |s| {
                s.get("state").map(String::as_str) == Some("running")
            });
        sb
    }

    pub fn ark(&self, args: &[&str]) -> Output {
        self.env.output(args)
    }

    /// `ark app ARGS...`, asserting success; stdout.
    pub fn app_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["app"];
        all.extend_from_slice(args);
        self.env.ok(&all)
    }

    /// `ark app ARGS...`, asserting the one-line refusal (exit 125); the line.
    pub fn app_err(&self, args: &[&str]) -> String {
        let mut all = vec!["app"];
        all.extend_from_slice(args);
        let out = self.env.output(&all);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "ark {all:?}: {out:?}");
        assert_eq!(err.lines().count(), 1, "ark {all:?}: one line: {err}");
        assert!(err.starts_with("ark: "), "{err}");
        err
    }

    /// `ark app list`: (name, state) per app.
    pub fn apps(&self) -> Vec<(String, String)> {
        self.app_ok(&["list", &self.uuid])
            .lines()
            .map(|l| {
                let mut w = l.split('\t');
                (
                    w.next().unwrap_or_default().to_string(),
                    w.next().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    pub fn state_of(&self, app: &str) -> Option<String> {
        self.apps()
            .into_iter()
            .find(|(n, _)| n == app)
            .map(|(_, s)| s)
    }

    /// Waits until `app`'s state satisfies `pred`.
    pub fn wait_state(&self, app: &str, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + self.slow();
        loop {
            let s = self.state_of(app);
            if s.as_deref().is_some_and(&pred) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "app {app}: timed out waiting for {what}; last: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `app`'s log contains `needle`.
    pub fn wait_log(&self, app: &str, needle: &str) {
        let deadline = Instant::now() + self.slow();
        loop {
            let log = self.env.app_log(&self.uuid, app);
            if log.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "app {app}: {needle:?} never logged; log: {log:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pod_dir(&self) -> PathBuf {
        self.env.path().join("pods/run").join(&self.uuid)
    }

    pub fn manifest_bytes(&self) -> Vec<u8> {
        std::fs::read(self.pod_dir().join("pod-manifest.json")).expect("read the manifest")
    }

    pub fn app_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.pod_dir().join("stage1/rootfs/apps"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `ark stop`, then waits for `ark app sandbox` to end; returns its exit code.
    pub fn stop(mut self) -> (PodEnv, String) {
        let out = self.env.output(&["stop", &self.uuid]);
        assert!(out.status.success(), "ark stop: {out:?}");
        let slow = self.slow();
        wait_child(&mut self.run, slow);
        (self.env, self.uuid)
    }
}

/// The whole `ark app` lifecycle on one sandbox.
pub fn lifecycle(sb: &Sandbox) {
    let u = sb.uuid.as_str();
    let img = sb.env.image.clone();
    assert!(sb.apps().is_empty(), "a sandbox starts with no app");
    // It stays running with no app.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sb.env.status(u)["state"], "running");

    // Two apps of the same image, different names; created, not running.
    let one = sb.app_ok(&[
        "add",
        u,
        &img,
        "--name=one",
        "--",
        "sh",
        "-c",
        "echo one-up; exec sleep 3600",
    ]);
    assert_eq!(one.trim(), "one");
    sb.app_ok(&[
        "add",
        u,
        &img,
        "--name=two",
        "--",
        "sh",
        "-c",
        "trap 'echo two-term; exit 7' TERM; echo two-up; while :; do sleep 1; done",
    ]);
    assert_eq!(sb.state_of("one").as_deref(), Some("created"));
    assert_eq!(sb.state_of("two").as_deref(), Some("created"));

    sb.app_ok(&["start", u, "--app=one"]);
    sb.app_ok(&["start", u, "--app=two"]);
    sb.wait_log("one", "one-up");
    sb.wait_log("two", "two-up");
    assert_eq!(sb.state_of("one").as_deref(), Some("running"));
    assert_eq!(sb.state_of("two").as_deref(), Some("running"));

    // Bad requests: one line, exit 125, nothing changed.
    let before = sb.manifest_bytes();
    let dirs = sb.app_dirs();
    assert!(sb
        .app_err(&["start", u, "--app=one"])
        .contains("already running"));
    assert!(sb
        .app_err(&["add", u, &img, "--name=one"])
        .contains("already has an app"));
    assert!(sb
        .app_err(&["add", u, &img, "--name=../x"])
        .contains("../x"));
    assert!(sb.app_err(&["add", u, &img, "--name=a/b"]).contains("a/b"));
    assert!(sb.app_err(&["start", u, "--app=nope"]).contains("no app"));
    assert!(sb.app_err(&["stop", u, "--app=nope"]).contains("no app"));
    assert!(sb.app_err(&["rm", u, "--app=one"]).contains("running"));
    assert!(sb
        .app_err(&["start", "0000dead", "--app=one"])
        .contains("no pod"));
    assert!(sb.app_err(&["add", "0000dead", &img]).contains("no pod"));
    assert_eq!(sb.manifest_bytes(), before, "manifest unchanged");
    assert_eq!(sb.app_dirs(), dirs, "no root left behind");

    // Stopping one leaves the other running; its exit code is recorded. The grace is long
    // enough for the trap to run in a slow guest (a SIGKILL after it would record signal 9).
    let grace = if sb.flavor == "kvm" {
        "--timeout=300s"
    } else {
        "--timeout=20s"
    };
    sb.app_ok(&["stop", u, "--app=two", grace]);
    assert_eq!(sb.state_of("two").as_deref(), Some("exited(7)"));
    sb.wait_log("two", "two-term");
    assert_eq!(sb.state_of("one").as_deref(), Some("running"));
    assert!(sb
        .app_err(&["start", u, "--app=two"])
        .contains("has exited"));

    // Removed: its root, entry and logs go; the name is free again.
    sb.app_ok(&["rm", u, "--app=two"]);
    assert_eq!(sb.state_of("two"), None);
    assert_eq!(sb.app_dirs(), ["one"]);
    assert!(!sb.pod_dir().join("status/two.json").exists());
    sb.app_ok(&[
        "add",
        u,
        &img,
        "--name=two",
        "--",
        "sh",
        "-c",
        "echo two-again; exec sleep 3600",
    ]);
    sb.app_ok(&["start", u, "--app=two"]);
    sb.wait_log("two", "two-again");
    assert!(
        !sb.env.app_log(u, "two").contains("two-up"),
        "the new app's log starts empty"
    );
    assert_eq!(sb.state_of("one").as_deref(), Some("running"));

    // A created app that never starts.
    sb.app_ok(&["add", u, &img, "--name=idle", "--", "true"]);
    assert_eq!(sb.state_of("idle").as_deref(), Some("created"));
}

/// After `ark stop` of the sandbox: every app ended and has its final status.
pub fn stopped(env: &PodEnv, uuid: &str) {
    let s = env.status(uuid);
    assert_eq!(s["state"], "exited", "{s:?}");
    // SIGTERMed by the stop.
    assert_eq!(s["app-one"], "143", "{s:?}");
    assert_eq!(s["app-two"], "143", "{s:?}");
    assert!(s.contains_key("app-idle"), "{s:?}");
    let out = env.ok(&["app", "list", uuid]);
    assert!(
        out.lines().any(|l| l.starts_with("one\texited(signal 15)")),
        "{out}"
    );
}
