//! Everyday use of the CLI as podman and rkt users expect it (issue 16): one-line usage errors
//! with suggestions and exit 125, a closed stdout ending ark quietly, one `--format`
//! vocabulary, names, `--rm`, podman's short flags, `image rm` of an image in use, `enter`'s
//! 126/127, and a forced stop recording the apps' real end (killed by signal 9, 137).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ark_tests::pods::{assert_one_line_error, parse_status, wait_child, PodEnv};
use ark_tests::skip;

const SLOW: Duration = Duration::from_secs(60);

macro_rules! need_pods {
    ($flavor:expr) => {
        if let Some(why) = ark_tests::pods::pods_unavailable() {
            skip!("{why}");
        }
        ark_tests::pods::scenarios::stage1_installed($flavor);
    };
}

fn ark_in(dir: &std::path::Path, args: &[&str]) -> Output {
    ark_tests::images::ark(dir, args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every kind of usage error: one `ark: ` line holding `needle`, exit 125; nothing made.
#[test]
fn usage_errors_are_one_line_with_suggestions_and_exit_125() {
    let dir = tempfile::tempdir().unwrap();
    let rel = "rel:/data";
    let cases: &[(&[&str], &str)] = &[
        (&["lsit"], "a similar subcommand exists: 'list'"),
        (&["image", "lsit"], "'list'"),
        // A pod flag misspelt before the image: clap's suggestion, not "expected an image".
        (
            &["run", "--memroy=64M", "img"],
            "a similar argument exists: '--memory'",
        ),
        (
            &["prepare", "--stage1=ns", "--hostnme=x", "img"],
            "'--hostname'",
        ),
        // After the image: the app's flags, with the suggestion too.
        (
            &["run", "img", "--memroy=1"],
            "app img: unexpected argument '--memroy'",
        ),
        (
            &["run", "--stage1=vm", "img"],
            "possible values: kvm, ns, fly",
        ),
        (&["list", "--bogus"], "unexpected argument '--bogus'"),
        (&["list", "--format=yaml"], "want table, json or a template"),
        (&["list", "--format={{.UUID"], "without"),
        (&["gc", "--grace-period=soon"], "soon"),
        (&["stop"], "required"),
        (&[], "a command is missing"),
        (&["prepare", "--rm", "img"], "--rm is for `ark run`"),
        (&["run", "-v", rel, "img"], "must be an absolute path"),
        (&["run", "--name=-x", "img"], "pod name"),
    ];
    for (args, needle) in cases {
        let out = ark_in(dir.path(), args);
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(125),
            "ark {args:?}: want 125, got {:?}: {err}",
            out.status
        );
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "ark {args:?}: want one line, got: {err}");
        assert!(lines[0].starts_with("ark: "), "ark {args:?}: {err}");
        assert!(
            lines[0].contains(needle),
            "ark {args:?}: want {needle:?} in {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "ark {args:?} printed {:?}",
            text(&out.stdout)
        );
    }
    // No pod was made by any of them.
    let pods = dir.path().join("pods");
    for state in ["prepare", "prepared", "run"] {
        let n = std::fs::read_dir(pods.join(state)).map_or(0, |d| d.count());
        assert_eq!(n, 0, "a pod was left in {state}/");
    }
    // Help and version still succeed.
    for args in [
        &["--help"][..],
        &["--version"],
        &["run", "--help"],
        &["image", "rm", "--help"],
    ] {
        let out = ark_in(dir.path(), args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "ark {args:?}: {}",
            text(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "ark {args:?} printed nothing");
    }
}

/// `ark CMD | head -0`: the reader is gone before ark writes. Each command ends quietly (by
/// SIGPIPE, as Go programs such as podman do), never with a panic (abort, 134).
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[&[&str]] = &[
        &["list"],
        &["list", "--format=json"],
        &["image", "list"],
        &["image", "list", "--format=json"],
        &["completion", "bash"],
        &["--help"],
    ];
    for args in cases {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = Command::new(ark_tests::ark_bin())
            .arg("--dir")
            .arg(dir.path())
            .args(*args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(err.is_empty(), "ark {args:?} wrote to stderr: {err}");
        // `list` with JSON of no pods prints `[]`: still a write into the closed pipe.
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "ark {args:?}: {:?}",
            out.status
        );
    }
}

/// Template output and its one-line error for an unknown field.
fn check_formats(env: &PodEnv, uuid: &str) {
    let line = env.ok(&["list", "--format={{.UUID}} {{.Name}} {{.State}}"]);
    assert_eq!(line.trim(), format!("{uuid} web running"));
    let line = env.ok(&["status", "--format={{.Name}}:{{.Flavor}}", "web"]);
    assert_eq!(line.trim(), "web:ns");
    assert_one_line_error(
        &env.output(&["list", "--format={{.Nope}}"]),
        "no field .Nope",
    );
    // `text` stays an alias of `table`, for list and image list alike.
    assert_eq!(
        env.ok(&["list", "--format=text"]),
        env.ok(&["list", "--format=table"])
    );
    assert_eq!(
        env.ok(&["image", "list", "--format=text"]),
        env.ok(&["image", "list"])
    );
    let images: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "list", "--format=json"])).unwrap();
    let id = images[0]["id"].as_str().unwrap();
    assert_eq!(
        env.ok(&["image", "list", "--format={{.Id}}"]).trim(),
        id,
        "image list template"
    );
}

/// One ns pod, named: addressed by name, listed with it, the name refused to a second live
/// pod; its image cannot be removed while it runs; `enter` says 127/126; `stop --force`
/// records the app killed by signal 9 (137) and `list` shows the exit code; then the name is
/// free again and `run --rm` leaves no pod behind.
#[test]
fn ns_named_pod_in_everyday_use() {
    need_pods!("ns");
    let env = PodEnv::new();
    let mut run = env.spawn(&[
        "run",
        "--stage1=ns",
        "--name=web",
        &env.image,
        "--",
        "sleep",
        "3600",
    ]);
    let uuid = env.wait_pod(SLOW);
    env.wait_status("web", SLOW, "the app running", |s| {
        s.get("app-busybox").map(String::as_str) == Some("running")
    });
    assert_eq!(env.status("web")["uuid"], uuid);
    assert_eq!(env.status("web")["name"], "web");
    let table = env.ok(&["list"]);
    assert!(
        table.lines().next().unwrap().contains("NAME"),
        "no NAME column: {table}"
    );
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .any(|w| w == "web"),
        "{table}"
    );
    check_formats(&env, &uuid);

    // The name is taken while the pod lives: one line naming the pod, nothing made.
    let clash = env.output(&["run", "--stage1=ns", "--name=web", &env.image, "--", "true"]);
    assert_one_line_error(&clash, &uuid);
    assert!(
        text(&clash.stderr).contains("already in use"),
        "{}",
        text(&clash.stderr)
    );
    assert_eq!(env.pod_dirs().len(), 1, "{:?}", env.pod_dirs());

    // Its image is in use: refused, exit 2 as podman's rmi, one line naming the pod.
    let images: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "list", "--format=json"])).unwrap();
    let id = images[0]["id"].as_str().unwrap().to_string();
    let rm = env.output(&["image", "rm", &id]);
    let err = text(&rm.stderr);
    assert_eq!(rm.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ark: ") && err.contains(&uuid) && err.contains("--force"),
        "{err}"
    );
    assert!(
        env.ok(&["image", "list"]).contains(&id[7..19]),
        "the image went"
    );

    // enter: a missing program is 127, a non-executable one 126, each with one line.
    for (cmd, code, needle) in [("/nosuch", 127, "nosuch"), ("/etc/passwd", 126, "passwd")] {
        let out = env.output(&["enter", "web", cmd]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "enter {cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("ark: ") && err.contains(needle), "{err}");
    }

    // A forced stop: the app's real end is recorded, not "the stage1 ended without...".
    env.ok(&["stop", "--force", "web"]);
    let st = wait_child(&mut run, SLOW);
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    let s = env.status(&uuid);
    assert_eq!(s["state"], "exited", "{s:?}");
    assert_eq!(s["exit-code"], "137", "{s:?}");
    assert_eq!(s["app-busybox"], "137", "{s:?}");
    assert_eq!(s["app-busybox-signal"], "9", "{s:?}");
    assert!(s.contains_key("app-busybox-finished"), "{s:?}");
    let table = env.ok(&["list", "--no-legend"]);
    let row: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert!(row.contains(&"exited") && row.contains(&"137"), "{table}");

    // The name is free once the pod exited; --rm removes the pod whatever its exit code.
    let out = env.output(&[
        "run",
        "--stage1=ns",
        "--rm",
        "--name=web",
        &env.image,
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        env.pod_dirs().len(),
        1,
        "--rm left its pod: {:?}",
        env.pod_dirs()
    );
    // The old, exited pod still answers to the name.
    assert_eq!(env.status("web")["uuid"], uuid);
    // Not in use by a live pod any more: image rm goes through.
    env.ok(&["image", "rm", &id]);
}

/// `--timeout` on an app that ignores SIGTERM: stop SIGKILLs the pod after it, and the app's
/// end is recorded as killed by signal 9.
#[test]
fn ns_stop_timeout_on_an_app_ignoring_sigterm_records_137() {
    need_pods!("ns");
    stop_records_sigkill("ns", &["--timeout=1s"]);
}

/// fly: the stage1 and ark-init are ordinary host processes; a forced stop is recorded too.
#[test]
fn fly_forced_stop_records_137() {
    need_pods!("fly");
    stop_records_sigkill("fly", &["--force"]);
}

fn stop_records_sigkill(flavor: &str, stop_flags: &[&str]) {
    let env = PodEnv::new();
    let mut run = env.spawn(&[
        "run",
        &format!("--stage1={flavor}"),
        &env.image,
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 1; done",
    ]);
    let uuid = env.wait_pod(SLOW);
    env.wait_status(&uuid, SLOW, "the app running", |s| {
        s.get("app-busybox").map(String::as_str) == Some("running")
    });
    // The trap is set once it printed.
    assert!(
        ark_tests::fixtures::wait_for(30, || text(&env.output(&["logs", &uuid]).stdout)
            .contains("ready")),
        "the app never said ready"
    );
    let mut args = vec!["stop"];
    args.extend_from_slice(stop_flags);
    args.push(&uuid);
    env.ok(&args);
    wait_child(&mut run, SLOW);
    let s = parse_status(&env.ok(&["status", &uuid]));
    assert_eq!(s["exit-code"], "137", "{s:?}");
    assert_eq!(s["app-busybox"], "137", "{s:?}");
    assert_eq!(s["app-busybox-signal"], "9", "{s:?}");
    assert!(s["reason"].contains("ark stop"), "{s:?}");
}

/// podman's short forms: `-v HOSTDIR:PATH[:ro]`, `-e`, `-w`, `-u USER:GROUP`.
#[test]
fn ns_podman_short_flags() {
    need_pods!("ns");
    let env = PodEnv::new();
    let ro = env.path().join("ro");
    let rw = env.path().join("rw");
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    std::fs::write(ro.join("f"), "from-host\n").unwrap();
    std::fs::set_permissions(&rw, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = env.output(&[
        "run",
        "--stage1=ns",
        "-v",
        &format!("{}:/ro:ro", ro.display()),
        "-v",
        &format!("{}:/rw", rw.display()),
        "-e",
        "GREETING=hello",
        "-w",
        "/tmp",
        "-u",
        "1000:1001",
        &env.image,
        "--",
        "sh",
        "-c",
        "echo $GREETING; pwd; id -u; id -g; cat /ro/f; echo x > /rw/out; touch /ro/x",
    ]);
    let stdout = text(&out.stdout);
    // touch on the read-only volume fails: busybox touch exits 1.
    assert_eq!(out.status.code(), Some(1), "{stdout} {}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["hello", "/tmp", "1000", "1001", "from-host"],
        "{stdout}"
    );
    assert_eq!(std::fs::read_to_string(rw.join("out")).unwrap(), "x\n");
    assert!(!ro.join("x").exists(), "wrote into a read-only volume");
}

/// kvm: `--memory=256M --cpus=2` is not what the VM gets (the guest's base memory on top; one
/// vCPU with the pvm-compat kernel): one line on stderr and `vm-resources` in `ark status`
/// say what it got. Then a forced stop of the VM records the app killed by signal 9.
#[test]
fn kvm_says_what_the_vm_got_and_a_forced_stop_is_recorded() {
    if let Some(why) = ark_tests::pods::kvm_pods_unavailable() {
        skip!("{why}");
    }
    ark_tests::pods::scenarios::stage1_installed("kvm");
    let slow = Duration::from_secs(600);
    let env = PodEnv::new();
    let mut run = env.spawn(&[
        "run",
        "--stage1=kvm",
        "--net=none",
        "--memory=256M",
        "--cpus=2",
        &env.image,
        "--",
        "sleep",
        "3600",
    ]);
    let uuid = env.wait_pod(slow);
    let s = env.wait_status(&uuid, slow, "the app running", |s| {
        s.get("app-busybox").map(String::as_str) == Some("running")
    });
    let got = s.get("vm-resources").cloned().unwrap_or_default();
    assert!(
        got.starts_with("the VM got ") && got.contains("MiB of memory (256 MiB asked + "),
        "{s:?}"
    );
    let pvm = std::env::var("ARK_KERNEL_PROFILE").is_ok_and(|p| p == "pvm-compat");
    if pvm {
        assert!(got.contains("1 vCPU (2 CPUs asked; "), "{got}");
    }
    env.ok(&["stop", "--force", &uuid]);
    wait_child(&mut run, slow);
    let mut stderr = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("the VM got"))
        .collect();
    assert_eq!(said, [format!("ark-stage1-kvm: {got}")], "{stderr}");
    let s = env.status(&uuid);
    assert_eq!(s["exit-code"], "137", "{s:?}");
    assert_eq!(s["app-busybox"], "137", "{s:?}");
    assert_eq!(s["vm-resources"], got, "{s:?}");
}
