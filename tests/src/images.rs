//! Helpers for the images integration tests: real busybox images built with umoci, and
//! hand-made (possibly hostile) OCI layouts, docker archives and ACIs built with the `tar` crate.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

/// The busybox applets the test image links (those pods and tests use).
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "id", "ls", "env", "pwd", "true", "false", "uname", "hostname",
    "mkdir", "rm", "touch",
];

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A busybox rootfs (Debian's busybox-static) in `dir`: /bin/busybox and applet links,
/// /etc/passwd with root and `app` (1000:1000), /etc/group, /etc/hostname.
pub fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("/bin/busybox (Debian package busybox-static) is needed");
    for applet in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    fs::write(dir.join("etc/hostname"), "busybox\n").unwrap();
}

/// Builds (with umoci) an OCI layout at `dest` holding busybox as tag `latest`; returns `dest`.
/// Use it as `oci-layout:DEST:latest` (unsigned: pass `--insecure-options=image`).
pub fn busybox_oci_layout(dest: &Path) -> PathBuf {
    busybox_oci_layout_tagged(dest, "latest")
}

/// Like [`busybox_oci_layout`] with tag `tag`; adds the tag if `dest` is a layout already.
pub fn busybox_oci_layout_tagged(dest: &Path, tag: &str) -> PathBuf {
    let rootless = !crate::is_root();
    if !dest.join("oci-layout").exists() {
        run(Command::new("umoci").arg("init").arg("--layout").arg(dest));
    }
    let image = format!("{}:{tag}", dest.display());
    run(Command::new("umoci").args(["new", "--image", &image]));
    // unpack + repack (umoci 0.4.7's `insert` writes layers without the tar trailer).
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let mut unpack = Command::new("umoci");
    unpack.args(["unpack", "--image", &image]);
    if rootless {
        unpack.arg("--rootless");
    }
    run(unpack.arg(&bundle));
    busybox_rootfs(&bundle.join("rootfs"));
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "PATH=/bin",
    ]));
    dest.to_path_buf()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One tar entry for hand-made layers. Names are written raw, so they may be hostile.
#[derive(Debug)]
pub enum Entry {
    Dir(&'static str, u32),
    File(String, Vec<u8>, u32),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    CharDev(&'static str, u32, u32),
    /// A block device node, mode 0666.
    BlockDev(&'static str, u32, u32),
    /// A file with one extended attribute (a PAX `SCHILY.xattr.*` record before it).
    XattrFile(&'static str, &'static str, &'static [u8]),
    /// A file owned by uid:gid (64-bit: a header field in base-256 holds more than a uid_t).
    OwnedFile(&'static str, u64, u64),
}

impl Entry {
    pub fn file(name: &str, content: &[u8]) -> Entry {
        Entry::File(name.to_string(), content.to_vec(), 0o644)
    }
}

/// A tar stream of `entries`, names and link targets written into the header as given
/// (the tar crate's own checks would refuse the hostile ones).
pub fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if let Entry::XattrFile(_, key, value) = e {
            b.append_pax_extensions([(format!("SCHILY.xattr.{key}").as_str(), *value)])
                .unwrap();
        }
        let mut h = tar::Header::new_ustar();
        let (name, data): (&str, &[u8]) = match e {
            Entry::Dir(n, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                (n, &[])
            }
            Entry::File(n, d, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                (n.as_str(), d.as_slice())
            }
            Entry::Symlink(n, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                set_raw(&mut h.as_old_mut().linkname, target);
                (n, &[])
            }
            Entry::Hardlink(n, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                set_raw(&mut h.as_old_mut().linkname, target);
                (n, &[])
            }
            Entry::OwnedFile(n, _, _) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o640);
                (n, b"owned")
            }
            Entry::XattrFile(n, _, _) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (n, b"xattr")
            }
            Entry::CharDev(n, major, minor) | Entry::BlockDev(n, major, minor) => {
                h.set_entry_type(if matches!(e, Entry::BlockDev(..)) {
                    tar::EntryType::Block
                } else {
                    tar::EntryType::Char
                });
                h.set_mode(0o666);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                (n, &[])
            }
        };
        set_raw(&mut h.as_old_mut().name, name);
        h.set_size(data.len() as u64);
        let (uid, gid) = match e {
            Entry::OwnedFile(_, uid, gid) => (*uid, *gid),
            _ => (0, 0),
        };
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn set_raw(field: &mut [u8], value: &str) {
    assert!(
        value.len() < field.len(),
        "test name too long for a ustar header"
    );
    field.fill(0);
    field[..value.len()].copy_from_slice(value.as_bytes());
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `TOOL -c` of `bytes` (zstd, xz, bzip2: the real tools, as image builders use them).
pub fn compress_with(tool: &str, bytes: &[u8]) -> Vec<u8> {
    use std::process::Stdio;
    let mut child = Command::new(tool)
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{tool} failed");
    out.stdout
}

/// A hand-made OCI layout: layers (tar bytes, gzipped here) and knobs to make it lie.
#[derive(Debug, Default)]
pub struct LayoutBuilder {
    pub layers: Vec<Vec<u8>>,
    /// Replace the manifest bytes (e.g. with invalid JSON).
    pub manifest_override: Option<Vec<u8>>,
    /// Replace the config bytes.
    pub config_override: Option<Vec<u8>>,
    /// Media type for every layer (default OCI tar+gzip).
    pub layer_media_type: Option<String>,
    /// Declare each layer this many bytes smaller than it is.
    pub understate_layer_size: u64,
    /// Flip a byte in the first layer's blob after its digest was computed.
    pub corrupt_first_layer: bool,
    /// Store layers as plain tar instead of gzip.
    pub uncompressed: bool,
    /// Media type for the config descriptor (default OCI config).
    pub config_media_type: Option<String>,
    /// Compress layers with zstd (the `zstd` tool) instead of gzip.
    pub zstd: bool,
}

impl LayoutBuilder {
    pub fn new(layers: Vec<Vec<u8>>) -> Self {
        LayoutBuilder {
            layers,
            ..Default::default()
        }
    }

    /// Writes the layout to `dest` with tag `tag`; returns the manifest digest (`sha256:...`).
    pub fn write(&self, dest: &Path, tag: &str) -> String {
        let blobs = dest.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        fs::write(
            dest.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let put = |bytes: &[u8]| -> String {
            let hex = sha256_hex(bytes);
            fs::write(blobs.join(&hex), bytes).unwrap();
            format!("sha256:{hex}")
        };
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, tar) in self.layers.iter().enumerate() {
            diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
            let gz = if self.uncompressed {
                tar.clone()
            } else {
                gzip(tar)
            };
            let digest = put(&gz);
            if i == 0 && self.corrupt_first_layer {
                let path = blobs.join(digest.trim_start_matches("sha256:"));
                let mut bytes = fs::read(&path).unwrap();
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
                fs::write(&path, bytes).unwrap();
            }
            layer_descs.push(serde_json::json!({
                "mediaType": self.layer_media_type.clone().unwrap_or_else(|| {
                    let suffix = match (self.uncompressed, self.zstd) {
                        (true, _) => "",
                        (false, true) => "+zstd",
                        (false, false) => "+gzip",
                    };
                    format!("application/vnd.oci.image.layer.v1.tar{suffix}")
                }),
                "digest": digest,
                "size": gz.len() as u64 - self.understate_layer_size,
            }));
        }
        let config = self.config_override.clone().unwrap_or_else(|| {
            serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "User": "1000:1000" },
                "rootfs": { "type": "layers", "diff_ids": diff_ids },
            }))
            .unwrap()
        });
        let config_digest = put(&config);
        let manifest = self.manifest_override.clone().unwrap_or_else(|| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": self.config_media_type.clone()
                        .unwrap_or_else(|| "application/vnd.oci.image.config.v1+json".into()),
                    "digest": config_digest,
                    "size": config.len(),
                },
                "layers": layer_descs,
            }))
            .unwrap()
        });
        let manifest_digest = put(&manifest);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        });
        fs::write(dest.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        manifest_digest
    }
}

/// `ark --dir DIR ARGS...`, run to completion.
pub fn ark(dir: &Path, args: &[&str]) -> Output {
    ark_env(dir, &[], args)
}

/// `ark --dir DIR ARGS...` with extra environment variables, run to completion.
pub fn ark_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(crate::ark_bin())
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("ARK_DIR")
        .envs(env.iter().copied())
        .output()
        .expect("running ark")
}

/// Runs ark and asserts success; returns stdout.
pub fn ark_ok(dir: &Path, args: &[&str]) -> String {
    let out = ark(dir, args);
    assert!(
        out.status.success(),
        "ark {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs ark, asserts it failed with exit 125 and one `ark: ...` line; returns that line.
pub fn ark_err(dir: &Path, args: &[&str]) -> String {
    ark_err_env(dir, &[], args)
}

/// [`ark_err`] with extra environment variables.
pub fn ark_err_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = ark_env(dir, env, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(125),
        "ark {args:?} should fail; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line, got: {stderr}");
    assert!(lines[0].starts_with("ark: "), "{stderr}");
    lines[0].to_string()
}

/// Every path under `dir` with its size, mode and (for files) content digest, to show a
/// failed command changed nothing.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, u32, String)> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u64, u32, String)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let meta = fs::symlink_metadata(&p).unwrap();
            let digest = if meta.is_file() {
                sha256_hex(&fs::read(&p).unwrap_or_default())
            } else {
                String::new()
            };
            // Lock files are created empty on first use and carry no state.
            if p.extension().is_some_and(|x| x == "lock") {
                continue;
            }
            // A directory's size says nothing on ext4 and counts lock files on tmpfs: its
            // entries are compared instead.
            let size = if meta.is_dir() { 0 } else { meta.size() };
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (size, meta.mode(), digest),
            );
            if meta.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// A throwaway gpg home with one signing key (real `gpg`); the agent is stopped on drop.
#[derive(Debug)]
pub struct TestKey {
    pub home: tempfile::TempDir,
    pub fingerprint: String,
    /// The ASCII-armored public key, for `ark trust`.
    pub public: PathBuf,
}

impl TestKey {
    pub fn new(uid: &str) -> TestKey {
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .unwrap();
        fs::set_permissions(home.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let gpg = |args: &[&str]| -> Vec<u8> {
            let out = Command::new("gpg")
                .env("GNUPGHOME", home.path())
                .args([
                    "--batch",
                    "--quiet",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args)
                .output()
                .expect("running gpg");
            assert!(
                out.status.success(),
                "gpg {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        gpg(&["--quick-gen-key", uid, "ed25519", "sign", "never"]);
        let listing = String::from_utf8(gpg(&["--with-colons", "--list-keys", uid])).unwrap();
        let fingerprint = listing
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("fingerprint")
            .to_string();
        let public = home.path().join("public.asc");
        fs::write(&public, gpg(&["--armor", "--export", &fingerprint])).unwrap();
        TestKey {
            home,
            fingerprint,
            public,
        }
    }

    /// `gpg --armor --detach-sign` of `file` into `sig`.
    pub fn detach_sign(&self, file: &Path, sig: &Path) {
        run(Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args([
                "--local-user",
                &self.fingerprint,
                "--armor",
                "--detach-sign",
                "--output",
            ])
            .arg(sig)
            .arg(file));
    }

    /// A simple-signing signature (what `skopeo copy --sign-by` makes) of `manifest` for
    /// `reference`, stored in the lookaside layout under `sigdir` for `repo` (no host).
    pub fn simple_sign(&self, manifest: &Path, reference: &str, sigdir: &Path, repo: &str) {
        let digest = sha256_hex(&fs::read(manifest).unwrap());
        let dir = sigdir.join(format!("{repo}@sha256={digest}"));
        fs::create_dir_all(&dir).unwrap();
        run(Command::new("skopeo")
            .env("GNUPGHOME", self.home.path())
            .args(["standalone-sign", "-o"])
            .arg(dir.join("signature-1"))
            .arg(manifest)
            .args([reference, &self.fingerprint]));
    }
}

impl Drop for TestKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .output();
    }
}
