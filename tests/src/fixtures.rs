//! Pod directories built by hand, the way stage0 lays them out (docs/pod-manifest.md): a
//! busybox app root, the manifest, the static ark-init; for running a stage1 binary without
//! stage0 (stage1-ns's and stage1-fly's own tests). Pods made through `ark` are
//! [`crate::pods::PodEnv`].

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ark_os::StatusDir;
use ark_pod_spec::{PodLayout, PodManifest};

pub const BUSYBOX: &str = "/bin/busybox";
/// Applets the stage1 tests use beyond [`crate::images::BUSYBOX_APPLETS`].
const MORE_APPLETS: &[&str] = &["dd", "grep", "kill", "head", "wc", "printf", "test"];

/// The static ark-init: `$ARK_INIT`, else what `./build.sh` installed, else its musl build.
pub fn ark_init() -> PathBuf {
    if let Some(p) = std::env::var_os("ARK_INIT") {
        return p.into();
    }
    let target = crate::target_dir();
    let candidates = [
        target.join("ark/libexec/ark/ark-init"),
        target.join("x86_64-unknown-linux-musl/release/ark-init"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} missing: run ./build.sh first (or set ARK_INIT)",
                candidates[0].display()
            )
        })
        .clone()
}

/// Why this host cannot run these tests, if it cannot.
pub fn cannot_run() -> Option<String> {
    if !crate::is_root() {
        return Some("needs root (namespaces, mounts, cgroups)".into());
    }
    if !Path::new(BUSYBOX).is_file() {
        return Some(format!("{BUSYBOX} missing (Debian busybox-static)"));
    }
    None
}

/// Returns from the test (saying why) when [`cannot_run`] says so.
#[macro_export]
macro_rules! skip_unless_able {
    () => {
        if let Some(why) = $crate::fixtures::cannot_run() {
            $crate::skip!("{why}");
        }
    };
}

/// The image fixture's busybox root ([`crate::images::busybox_rootfs`]) with the accounts
/// the stage1 tests switch to (`alice`, 1000:100, in `users` and `wheel`).
pub fn busybox_root(root: &Path) {
    crate::images::busybox_rootfs(root);
    for d in ["root", "home/alice"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for a in MORE_APPLETS {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:100:Alice:/home/alice:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nusers:x:100:\nwheel:x:10:alice\n",
    )
    .unwrap();
}

#[derive(Debug)]
pub struct TestPod {
    pub tmp: tempfile::TempDir,
    pub layout: PodLayout,
    pub manifest: PodManifest,
}

/// A pod whose manifest is `json` with `uuid` and `version` filled in; each app gets a busybox
/// root.
pub fn pod(flavor: &str, mut json: serde_json::Value) -> TestPod {
    let tmp = tempfile::Builder::new()
        .prefix("ark-stage1-test")
        .tempdir()
        .unwrap();
    let layout = PodLayout::new(tmp.path().join("pod"));
    let uuid = format!(
        "{:08x}-0000-4000-8000-{:012x}",
        std::process::id(),
        rand_u64() & 0xffff_ffff_ffff
    );
    json["version"] = 1.into();
    json["uuid"] = uuid.into();
    json["stage1"] = serde_json::json!({ "flavor": flavor });
    for app in json["apps"].as_array_mut().unwrap() {
        if app.get("image").is_none() {
            app["image"] = serde_json::json!({ "id": "sha256:test" });
        }
    }
    let manifest = PodManifest::from_json(json.to_string().as_bytes()).unwrap();
    std::fs::create_dir_all(layout.in_root("/ark")).unwrap();
    std::fs::write(layout.manifest(), manifest.to_json()).unwrap();
    std::fs::write(layout.rootfs_manifest(), manifest.to_json()).unwrap();
    std::fs::copy(ark_init(), layout.init_binary()).unwrap();
    for a in &manifest.apps {
        busybox_root(&layout.app_rootfs(&a.name));
    }
    TestPod {
        tmp,
        layout,
        manifest,
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

impl TestPod {
    pub fn command(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        c.args(
            ark_pod_spec::stage1::RunArgs {
                pod_dir: self.layout.dir().to_path_buf(),
                debug: false,
                interactive: false,
            }
            .to_args(),
        );
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, bin: &Path) -> Output {
        let out = self.command(bin).output().unwrap();
        eprintln!(
            "--- {} exit {:?}\nstdout:\n{}\nstderr:\n{}",
            bin.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn status(&self) -> StatusDir {
        StatusDir::new(self.layout.status_dir())
    }

    /// The pod's cgroup directories still on the host.
    pub fn cgroups_left(&self) -> Vec<PathBuf> {
        crate::pods::pod_cgroups(&self.manifest.uuid)
    }

    /// Mounts under the pod directory visible on the host.
    pub fn mounts_left(&self) -> Vec<String> {
        crate::pods::mounts_under(self.layout.dir())
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `f` for up to `secs` seconds.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}
