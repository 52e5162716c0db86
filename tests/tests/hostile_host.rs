//! What ark leaks to the host and takes from it: inherited file descriptors (no process ark
//! starts gets one it was not meant to have), the data directory (no other host user reaches
//! the store's setuid files or the pods), ambiguous command lines (a key given twice) and
//! corrupt state files (one escaped line naming the file). Real binaries, real pods.

use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ark_tests::images::{snapshot, tar_bytes, Entry, LayoutBuilder};
use ark_tests::pods::{assert_one_line_error, pods_unavailable, wait_child, PodEnv};
use ark_tests::registry::{FakeRegistry, Lie};
use ark_tests::skip;

/// Where the stray descriptors sit: 7 as in `7</` from a shell, 100 as a supervisor's leftover.
const STRAY_DIR_FD: RawFd = 7;
const STRAY_FILE_FD: RawFd = 100;
const SENTINEL: &str = "host-secret-4f1c";

/// A host directory with a sentinel file, and the two descriptors a careless parent leaves
/// open (not close-on-exec) for every command the test runs.
struct StrayFds {
    dir: tempfile::TempDir,
    dir_fd: fs::File,
    file_fd: fs::File,
}

impl StrayFds {
    fn new() -> StrayFds {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("sentinel"), SENTINEL).unwrap();
        let dir_fd = fs::File::open(dir.path()).unwrap();
        let file_fd = fs::File::open(dir.path().join("sentinel")).unwrap();
        StrayFds {
            dir,
            dir_fd,
            file_fd,
        }
    }

    /// Makes `cmd` start with the directory on fd 7 and the file on fd 100.
    fn give_to(&self, cmd: &mut Command) {
        let (d, f) = (self.dir_fd.as_raw_fd(), self.file_fd.as_raw_fd());
        // SAFETY: dup2 is async-signal-safe; the copies it makes are not close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                for (from, to) in [(d, STRAY_DIR_FD), (f, STRAY_FILE_FD)] {
                    if libc::dup2(from, to) != to {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// Whether `target` (a `/proc/PID/fd/N` link) is one of the stray descriptors.
    fn is_stray(&self, target: &Path) -> bool {
        target == self.dir.path() || target == self.dir.path().join("sentinel")
    }

    /// The stray descriptors `pid` holds, as `fd -> target`.
    fn held_by(&self, pid: u32) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
            if let Ok(target) = fs::read_link(e.path()) {
                if self.is_stray(&target) {
                    out.push(format!(
                        "{} -> {}",
                        e.file_name().to_string_lossy(),
                        target.display()
                    ));
                }
            }
        }
        out
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ark run` of an app that lists its fds and reads the sentinel through fd 7.
fn app_sees_no_stray_fd(flavor: &str) {
    if let Some(why) = pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    let stray = StrayFds::new();
    let mut cmd = env.ark();
    cmd.args([
        "run",
        &format!("--stage1={flavor}"),
        &env.image,
        "--",
        "sh",
        "-c",
        "ls /proc/self/fd; echo =====; sleep 3; echo =====; \
         cat /proc/self/fd/7/sentinel /proc/self/fd/100",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    stray.give_to(&mut cmd);
    let child = cmd.spawn().unwrap();
    // Its parent, ark-init, holds none either: looked at from the host while the app sleeps,
    // by where each fd leads (ark-init's own fds — agent socket, output pipes, logs — may take
    // any number, 7 included).
    let uuid = env.wait_pod(Duration::from_secs(60));
    let dir = env
        .pod_dirs()
        .into_iter()
        .find(|d| d.ends_with(&uuid))
        .expect("the pod's directory");
    let pid_file = ark_pod_spec::PodLayout::new(&dir).stage2_pid_file();
    let deadline = Instant::now() + Duration::from_secs(60);
    let init_pid: u32 = loop {
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "{flavor}: no {}",
            pid_file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let held = stray.held_by(init_pid);
    assert!(
        held.is_empty(),
        "{flavor}: ark-init holds a stray fd: {held:?}"
    );
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let parts: Vec<&str> = stdout.split("=====").collect();
    let [listing, _, _] = parts[..] else {
        panic!("the app ran: {stdout}\nstderr: {stderr}");
    };
    let fds: Vec<&str> = listing.split_whitespace().collect();
    // Its stdio and the directory `ls` itself opened: nothing from the caller, nor from ark.
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "{flavor}: the app inherited fds it was not meant to have"
    );
    assert!(
        !stdout.contains(SENTINEL),
        "{flavor}: the app read the host file through an inherited fd: {stdout}"
    );
    // cat failed: the fds are not there.
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

#[test]
fn ns_app_gets_no_inherited_fd() {
    app_sees_no_stray_fd("ns");
}

#[test]
fn fly_app_gets_no_inherited_fd() {
    app_sees_no_stray_fd("fly");
}

/// `ark enter` with stray fds: the command it runs in the pod gets stdio only.
#[test]
fn enter_gets_no_inherited_fd() {
    if let Some(why) = pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    let mut run = env.spawn(&["run", "--stage1=ns", &env.image, "--", "sleep", "600"]);
    let uuid = env.wait_pod(Duration::from_secs(60));
    env.wait_status(&uuid, Duration::from_secs(60), "the app running", |s| {
        s.get("app-busybox").map(String::as_str) == Some("running")
    });
    let stray = StrayFds::new();
    let mut cmd = env.ark();
    cmd.args(["enter", &uuid, "ls", "/proc/self/fd"])
        .stdin(Stdio::null());
    stray.give_to(&mut cmd);
    let out = cmd.output().unwrap();
    let _ = env.output(&["stop", "--force", &uuid]);
    wait_child(&mut run, Duration::from_secs(60));
    let listing = text(&out.stdout);
    assert!(out.status.success(), "enter: {}", text(&out.stderr));
    let fds: Vec<&str> = listing.split_whitespace().collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "the entered command inherited fds"
    );
}

/// (pid, uid) of the processes whose parent is `ppid`.
fn children_of(ppid: u32) -> Vec<(u32, Option<u32>)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|v| v.parse::<u32>().ok())
        };
        if field("PPid:") == Some(ppid) {
            out.push((pid, field("Uid:")));
        }
    }
    out
}

/// The unprivileged fetch child, caught while it waits on a registry that never answers,
/// holds its pipes and its socket, not what ark's caller leaked.
#[test]
fn fetch_child_gets_no_inherited_fd() {
    if !ark_tests::is_root() {
        skip!("the fetch child exists only when ark runs as root");
    }
    let fake = FakeRegistry::start(Lie::StallAtStart);
    let dir = tempfile::tempdir().unwrap();
    let stray = StrayFds::new();
    let mut cmd = Command::new(ark_tests::ark_bin());
    cmd.arg("--dir")
        .arg(dir.path())
        .args(["--insecure-options=image", "fetch"])
        .arg(format!("docker://{}/test/lies:latest", fake.addr))
        .env("ARK_REGISTRY_TIMEOUT", "120")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    stray.give_to(&mut cmd);
    let mut ark = cmd.spawn().unwrap();
    // The parent itself holds them (close-on-exec); the child must not.
    let deadline = Instant::now() + Duration::from_secs(30);
    let kid = loop {
        let running = children_of(ark.id())
            .into_iter()
            .find(|(pid, uid)| *uid == Some(65534) && has_socket(*pid));
        if let Some((pid, _)) = running {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no fetch child talking to the registry"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let held = stray.held_by(kid);
    let _ = ark.kill();
    let _ = ark.wait();
    assert!(held.is_empty(), "the fetch child inherited: {held:?}");
}

fn has_socket(pid: u32) -> bool {
    fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
    })
}

/// A kvm pod's stage1 (the VMM process) holds its lock and its devices, nothing the caller
/// leaked. One boot: the fds are looked at once the app has started.
#[test]
fn kvm_vmm_gets_no_inherited_fd() {
    if let Some(why) = pods_unavailable()
        .or_else(ark_tests::kvm_unavailable)
        .or_else(|| {
            ark_tests::guest_kernel()
                .is_none()
                .then(|| "no guest kernel: set ARK_KERNEL".to_string())
        })
    {
        skip!("{why}");
    }
    let env = PodEnv::new();
    let stray = StrayFds::new();
    let mut cmd = env.ark();
    cmd.args([
        "run",
        "--stage1=kvm",
        &env.image,
        "--",
        "sh",
        "-c",
        "echo booted; sleep 600",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    stray.give_to(&mut cmd);
    let mut pod = cmd.spawn().unwrap();
    let pid = pod.id();
    // ark execs the stage1 in place: same pid. Wait for the app's first line.
    let mut stdout = std::io::BufReader::new(pod.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let held = stray.held_by(pid);
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let uuid = env.only_pod().expect("a pod");
    let _ = env.output(&["stop", "--force", &uuid]);
    wait_child(&mut pod, Duration::from_secs(120));
    assert_eq!(line.trim(), "booted", "the guest ran the app");
    assert!(
        exe.ends_with("ark-stage1-kvm"),
        "pid {pid} is the stage1: {}",
        exe.display()
    );
    assert!(fds > 3, "the VMM has its own fds");
    assert!(held.is_empty(), "the VMM process inherited: {held:?}");
}

/// `ark --dir DIR ARGS` with nothing else inherited.
fn ark_at(dir: &Path, args: &[&str]) -> Output {
    Command::new(ark_tests::ark_bin())
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("ARK_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "ark failed: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

/// Runs `argv` as nobody (uid and gid 65534, no groups), as any local user could. Through a
/// shell: setpriv keeps root's capabilities until its own exec, so its path lookup would still
/// pass directories nobody cannot search; the shell's exec has none left.
fn as_nobody(argv: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/bin/sh", "-c", r#"exec "$0" "$@""#])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux)")
}

/// A render holding a setuid-root copy of busybox: nobody cannot run it (or even reach it, or a
/// pod) by its path under the store, because the data directory is 0700.
#[test]
fn other_users_cannot_reach_the_store_or_its_setuid_files() {
    if !ark_tests::is_root() {
        skip!("needs root: a setuid-root file in the store, then a switch to uid 65534");
    }
    // A host where the store's parent is searchable by everyone, like /var/lib.
    let host = tempfile::tempdir().unwrap();
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let store = host.path().join("store");
    let layout = host.path().join("layout");
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    LayoutBuilder::new(vec![tar_bytes(&[Entry::File(
        "suid".into(),
        busybox,
        0o4755,
    )])])
    .write(&layout, "v1");
    let id = ok(ark_at(
        &store,
        &[
            "--insecure-options=image",
            "fetch",
            &format!("oci-layout:{}:v1", layout.display()),
        ],
    ));
    let rendered = ok(ark_at(&store, &["image", "render", id.trim()]));
    let suid = PathBuf::from(rendered.trim()).join("suid");
    assert_eq!(
        mode(&suid),
        0o4755,
        "the render keeps the image's setuid bit"
    );
    // Pods live in the same directory.
    ok(ark_at(&store, &["list"]));
    let pods = store.join("pods");
    assert!(pods.is_dir());

    let run = as_nobody(&[suid.to_str().unwrap(), "id", "-u"]);
    assert!(
        !run.status.success() && text(&run.stderr).contains("Permission denied"),
        "nobody ran the store's setuid-root file: {:?} stdout {:?} stderr {:?}",
        run.status,
        text(&run.stdout),
        text(&run.stderr)
    );
    let look = as_nobody(&["ls", pods.to_str().unwrap()]);
    assert!(
        !look.status.success() && text(&look.stderr).contains("Permission denied"),
        "nobody listed the pods: {}",
        text(&look.stderr)
    );
    assert_eq!(mode(&store), 0o700, "the data directory is private");
}

/// Setuid files under `dir` (not following symlinks), as a host user would look for them.
fn setuid_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(meta) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(setuid_files_under(&e.path()));
        } else if meta.is_file() && meta.mode() & 0o4000 != 0 {
            out.push(e.path());
        }
    }
    out
}

/// What an ns app makes setuid in its own root lands in the pod's overlay upper directory on
/// the host: nobody cannot run it from there either.
#[test]
fn other_users_cannot_run_what_a_pod_made_setuid() {
    if let Some(why) = pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    // The store's parent searchable by everyone, as /var/lib is.
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o755)).unwrap();
    ok(env.output(&[
        "run",
        "--stage1=ns",
        &env.image,
        "--",
        "sh",
        "-c",
        "cp /bin/busybox /made-suid && chmod 4755 /made-suid",
    ]));
    let made: Vec<PathBuf> = setuid_files_under(&env.path().join("pods"))
        .into_iter()
        .filter(|p| p.ends_with("made-suid"))
        .collect();
    assert!(!made.is_empty(), "the app's setuid file is in the pod dir");
    for path in made {
        let run = as_nobody(&[path.to_str().unwrap(), "id", "-u"]);
        assert!(
            !run.status.success() && text(&run.stderr).contains("Permission denied"),
            "nobody ran {}: {:?} stdout {:?} stderr {:?}",
            path.display(),
            run.status,
            text(&run.stdout),
            text(&run.stderr)
        );
    }
}

/// A store an older ark made 0755 is made 0700 by the next command (with one warning line; an
/// empty directory silently); a data directory owned by another user is refused, and nothing
/// is made in it.
#[test]
fn a_loose_store_is_tightened_and_a_foreign_one_refused() {
    if !ark_tests::is_root() {
        skip!("needs root to make a directory owned by another user");
    }
    let host = tempfile::tempdir().unwrap();
    let old = host.path().join("old");
    fs::create_dir(&old).unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
    let fresh = ark_at(&old, &["image", "list"]);
    assert!(
        fresh.status.success() && fresh.stderr.is_empty(),
        "{}",
        text(&fresh.stderr)
    );
    assert_eq!(mode(&old), 0o700, "an empty directory is tightened too");
    // What an older ark left: a store with content, 0755.
    fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
    let out = ark_at(&old, &["image", "list"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(mode(&old), 0o700, "the store was tightened");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one warning line: {err}");
    assert!(
        lines[0].starts_with("ark: warning: ") && lines[0].contains("0755"),
        "{err}"
    );
    let again = ark_at(&old, &["image", "list"]);
    assert!(
        again.status.success() && again.stderr.is_empty(),
        "{}",
        text(&again.stderr)
    );

    let theirs = host.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let out = ark_at(&theirs, &["image", "list"]);
    assert_one_line_error(&out, "owned by uid 65534");
    assert_eq!(
        fs::read_dir(&theirs).unwrap().count(),
        0,
        "nothing made in it"
    );
    assert_eq!(mode(&theirs), 0o755, "not changed either");
}

/// `--volume NAME,source=A,readOnly=true,source=/etc` names two sources: refused, one line
/// naming the key, before anything is created. The same for `--mount`.
#[test]
fn a_key_given_twice_is_refused_and_nothing_is_created() {
    if let Some(why) = pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    let src = tempfile::tempdir().unwrap();
    let before = snapshot(env.path());
    let volume = format!(
        "data,source={},readOnly=true,source=/etc",
        src.path().display()
    );
    let out = env.output(&[
        "prepare",
        "--stage1=ns",
        "--volume",
        &volume,
        &env.image,
        "--",
        "true",
    ]);
    assert_one_line_error(&out, r#"key "source" is given more than once"#);
    let out = env.output(&[
        "prepare",
        "--stage1=ns",
        &format!("--volume=data,source={}", src.path().display()),
        &env.image,
        "--mount",
        "volume=data,target=/data,target=/etc",
        "--",
        "true",
    ]);
    assert_one_line_error(&out, r#"key "target" is given more than once"#);
    assert_eq!(snapshot(env.path()), before, "the store is untouched");
}

/// A corrupt pod manifest: one line naming the file, the hostile string in it escaped.
#[test]
fn a_corrupt_pod_manifest_is_one_escaped_line_naming_the_file() {
    if let Some(why) = pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    let uuid = env
        .ok(&["prepare", "--stage1=ns", &env.image, "--", "true"])
        .trim()
        .to_string();
    let manifest = env
        .path()
        .join("pods/prepared")
        .join(&uuid)
        .join("pod-manifest.json");
    assert!(manifest.is_file());
    // An unknown flavor whose name clears the screen: serde quotes it back raw.
    fs::write(&manifest, br#"{"stage1": {"flavor": "\u001b[2Jevil"}}"#).unwrap();
    let out = env.output(&["run-prepared", &uuid]);
    assert_one_line_error(&out, &manifest.display().to_string());
    assert!(
        !out.stderr.contains(&0x1b),
        "the escape sequence reached the terminal: {:?}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("evil"), "{}", text(&out.stderr));
    // `status` and `list` still answer, and say which manifest they could not read.
    for args in [&["status", uuid.as_str()][..], &["list"][..]] {
        let out = env.output(args);
        let err = text(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&*manifest.to_string_lossy()),
            "{args:?}: {err}"
        );
        assert!(!out.stderr.contains(&0x1b), "{args:?}: {err:?}");
    }
}
