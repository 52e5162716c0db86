//! Hostile images: each must fail with one clear error line and a non-zero exit, leave the
//! store as it was (no blob, render or temp entry kept), and leave the host untouched.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ark_tests::images::{
    ark_env, ark_err, ark_err_env, ark_ok, gzip, snapshot, tar_bytes, Entry, LayoutBuilder,
};
use ark_tests::registry::{free_and_total, Tmpfs};
use ark_tests::{ark_bin, is_root, skip};

/// A test area: a store holding one good image, and a host directory with a sentinel file
/// that hostile images try to reach.
struct Area {
    tmp: tempfile::TempDir,
    store: PathBuf,
    host: PathBuf,
}

const SENTINEL: &[u8] = b"host data, not to be touched";

impl Area {
    fn new() -> Area {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let host = tmp.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("sentinel"), SENTINEL).unwrap();
        let good = tmp.path().join("good");
        LayoutBuilder::new(vec![tar_bytes(&[Entry::file("ok", b"ok")])]).write(&good, "good");
        ark_ok(
            &store,
            &[
                "--insecure-options=image",
                "fetch",
                &format!("oci-layout:{}:good", good.display()),
            ],
        );
        Area { tmp, store, host }
    }

    /// Host path as an absolute string, for hostile entry names and link targets.
    fn host_str(&self) -> String {
        self.host.to_str().unwrap().to_string()
    }

    fn layout(&self, builder: &LayoutBuilder) -> (String, String) {
        let dir = self.tmp.path().join(format!(
            "layout{}",
            fs::read_dir(self.tmp.path()).unwrap().count()
        ));
        let digest = builder.write(&dir, "t");
        (format!("oci-layout:{}:t", dir.display()), digest)
    }

    /// The fetch must fail, naming `want`, with the store unchanged.
    fn fetch_refused(&self, builder: &LayoutBuilder, want: &str) {
        let (reference, _) = self.layout(builder);
        let before = snapshot(&self.store);
        let err = ark_err(
            &self.store,
            &["--insecure-options=image", "fetch", &reference],
        );
        assert!(err.contains(want), "want {want:?} in: {err}");
        assert_eq!(snapshot(&self.store), before, "the store changed");
        self.assert_host_untouched();
    }

    /// The (valid) image is fetched; rendering it must fail naming `want`, store unchanged.
    fn render_refused(&self, layers: Vec<Vec<u8>>, want: &str) {
        self.render_refused_with(&[], layers, want);
    }

    /// [`Area::render_refused`] with extra environment variables for the render; returns the
    /// image's digest (`sha256:...`).
    fn render_refused_with(
        &self,
        env: &[(&str, &str)],
        layers: Vec<Vec<u8>>,
        want: &str,
    ) -> String {
        let (reference, digest) = self.layout(&LayoutBuilder::new(layers));
        ark_ok(
            &self.store,
            &["--insecure-options=image", "fetch", &reference],
        );
        let before = snapshot(&self.store);
        let err = ark_err_env(&self.store, env, &["image", "render", &digest]);
        eprintln!("refused as expected: {err}");
        assert!(err.contains(want), "want {want:?} in: {err}");
        assert_eq!(snapshot(&self.store), before, "the store changed");
        self.assert_host_untouched();
        digest
    }

    fn assert_host_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.host)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec!["sentinel"],
            "something was written to the host directory"
        );
        assert_eq!(fs::read(self.host.join("sentinel")).unwrap(), SENTINEL);
        assert_eq!(fs::metadata(self.host.join("sentinel")).unwrap().nlink(), 1);
        assert!(!self.tmp.path().join("pwned").exists());
    }
}

/// From the rootfs being rendered (`store/images/tmp/render-X/rootfs`) up to the test dir.
const UP: &str = "../../../../..";

#[test]
fn entry_with_dotdot_is_refused() {
    let a = Area::new();
    a.render_refused(
        vec![tar_bytes(&[Entry::file(&format!("{UP}/host/pwned"), b"x")])],
        "'..'",
    );
    a.render_refused(
        vec![tar_bytes(&[Entry::file("a/../../pwned", b"x")])],
        "'..'",
    );
}

#[test]
fn owner_ids_past_32_bits_are_refused() {
    // Base-256 header fields hold 64 bits; wrapped to 32, uid 2^32 would have been root.
    let a = Area::new();
    a.render_refused(
        vec![tar_bytes(&[Entry::OwnedFile("f", 1 << 32, 0)])],
        "uid 4294967296 out of range",
    );
    a.render_refused(
        vec![tar_bytes(&[Entry::OwnedFile("f", 0, (1 << 32) + 7)])],
        "gid 4294967303 out of range",
    );
}

#[test]
fn entry_with_absolute_path_is_refused() {
    let a = Area::new();
    let name = format!("{}/pwned", a.host_str());
    a.render_refused(
        vec![tar_bytes(&[Entry::file(&name, b"x")])],
        "absolute path",
    );
}

#[test]
fn write_through_a_symlink_within_a_layer_is_refused() {
    let a = Area::new();
    let abs: &'static str = Box::leak(a.host_str().into_boxed_str());
    a.render_refused(
        vec![tar_bytes(&[
            Entry::Symlink("evil", abs),
            Entry::file("evil/pwned", b"x"),
        ])],
        "leads outside the rootfs",
    );
    let rel: &'static str = Box::leak(format!("{UP}/host").into_boxed_str());
    a.render_refused(
        vec![tar_bytes(&[
            Entry::Dir("d/", 0o755),
            Entry::Symlink("d/evil", rel),
            Entry::file("d/evil/pwned", b"x"),
        ])],
        "leads outside the rootfs",
    );
}

#[test]
fn write_through_a_symlink_from_a_lower_layer_is_refused() {
    let a = Area::new();
    let abs: &'static str = Box::leak(a.host_str().into_boxed_str());
    a.render_refused(
        vec![
            tar_bytes(&[Entry::Symlink("evil", abs)]),
            tar_bytes(&[Entry::file("evil/pwned", b"x")]),
        ],
        "leads outside the rootfs",
    );
    // Whiteouts and directories through the link are refused just the same.
    a.render_refused(
        vec![
            tar_bytes(&[Entry::Symlink("evil", abs)]),
            tar_bytes(&[Entry::file("evil/.wh.sentinel", b"")]),
        ],
        "leads outside the rootfs",
    );
}

#[test]
fn a_symlink_as_last_component_is_replaced_not_followed() {
    // Not an error: tar semantics replace the link itself; the host file stays as it was.
    let a = Area::new();
    let target: &'static str = Box::leak(format!("{}/sentinel", a.host_str()).into_boxed_str());
    let (reference, digest) = a.layout(&LayoutBuilder::new(vec![
        tar_bytes(&[Entry::Symlink("victim", target)]),
        tar_bytes(&[Entry::file("victim", b"overwritten?")]),
    ]));
    ark_ok(&a.store, &["--insecure-options=image", "fetch", &reference]);
    let rootfs = ark_ok(&a.store, &["image", "render", &digest]);
    let victim = Path::new(rootfs.trim()).join("victim");
    assert_eq!(fs::read(&victim).unwrap(), b"overwritten?");
    assert!(!fs::symlink_metadata(&victim)
        .unwrap()
        .file_type()
        .is_symlink());
    a.assert_host_untouched();
}

#[test]
fn hardlink_to_outside_the_rootfs_is_refused() {
    let a = Area::new();
    let rel: &'static str = Box::leak(format!("{UP}/host/sentinel").into_boxed_str());
    a.render_refused(vec![tar_bytes(&[Entry::Hardlink("hl", rel)])], "'..'");
    let abs: &'static str = Box::leak(format!("{}/sentinel", a.host_str()).into_boxed_str());
    a.render_refused(
        vec![tar_bytes(&[Entry::Hardlink("hl", abs)])],
        "absolute path",
    );
    let dir: &'static str = Box::leak(a.host_str().into_boxed_str());
    a.render_refused(
        vec![tar_bytes(&[
            Entry::Symlink("d", dir),
            Entry::Hardlink("hl", "d/sentinel"),
        ])],
        "leads outside the rootfs",
    );
}

#[test]
fn device_node_needs_root() {
    let layer = tar_bytes(&[Entry::Dir("dev/", 0o755), Entry::CharDev("dev/evil", 1, 3)]);
    if !is_root() {
        let a = Area::new();
        a.render_refused(vec![layer], "creating device nodes needs root");
        return;
    }
    // As root: the node is made, with its numbers.
    let a = Area::new();
    let (reference, digest) = a.layout(&LayoutBuilder::new(vec![layer.clone()]));
    ark_ok(&a.store, &["--insecure-options=image", "fetch", &reference]);
    let rootfs = ark_ok(&a.store, &["image", "render", &digest]);
    let meta = fs::metadata(Path::new(rootfs.trim()).join("dev/evil")).unwrap();
    assert_eq!(meta.rdev(), libc::makedev(1, 3));

    // As an unprivileged user (ark run with setuid in the child): refused.
    let nobody = 65534;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let layout = root.join("layout");
    let digest = LayoutBuilder::new(vec![layer]).write(&layout, "t");
    let store = root.join("store");
    fs::create_dir(&store).unwrap();
    if let Err(e) = nix::unistd::chown(&store, Some(nobody.into()), Some(nobody.into())) {
        skip!("cannot hand a store to uid {nobody}: {e}");
    }
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new(ark_bin());
        cmd.arg("--dir").arg(&store).args(args);
        // SAFETY: setgid/setuid only, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(nobody) != 0
                    || libc::setuid(nobody) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    let fetch = as_nobody(&[
        "--insecure-options=image",
        "fetch",
        &format!("oci-layout:{}:t", layout.display()),
    ]);
    assert!(
        fetch.status.success(),
        "{}",
        String::from_utf8_lossy(&fetch.stderr)
    );
    let before = snapshot(&store);
    let out = as_nobody(&["image", "render", &digest]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("creating device nodes needs root"),
        "{stderr}"
    );
    assert_eq!(snapshot(&store), before);
}

#[test]
fn layer_larger_than_declared_is_refused() {
    let a = Area::new();
    let mut b = LayoutBuilder::new(vec![tar_bytes(&[Entry::file("big", &[7u8; 4096])])]);
    b.understate_layer_size = 10;
    a.fetch_refused(&b, "larger than its declared size");
}

#[test]
fn manifest_or_config_not_json_is_refused() {
    let a = Area::new();
    let mut b = LayoutBuilder::new(vec![tar_bytes(&[Entry::file("f", b"x")])]);
    b.manifest_override = Some(b"{\"schemaVersion\": 2, \"layers\": [".to_vec());
    a.fetch_refused(&b, "manifest is not a valid image manifest");
    let mut b = LayoutBuilder::new(vec![tar_bytes(&[Entry::file("f", b"x")])]);
    b.config_override = Some(b"not json at all".to_vec());
    a.fetch_refused(&b, "config is not a valid image config");
}

#[test]
fn unknown_media_types_are_refused() {
    let a = Area::new();
    let mut b = LayoutBuilder::new(vec![tar_bytes(&[Entry::file("f", b"x")])]);
    b.layer_media_type = Some("application/x-evil".into());
    a.fetch_refused(&b, "unknown layer media type \"application/x-evil\"");
    let mut b = LayoutBuilder::new(vec![tar_bytes(&[Entry::file("f", b"x")])]);
    b.config_media_type = Some("application/x-evil-config".into());
    a.fetch_refused(
        &b,
        "unknown config media type \"application/x-evil-config\"",
    );
}

#[test]
fn blob_whose_digest_does_not_match_is_refused() {
    let a = Area::new();
    let mut b = LayoutBuilder::new(vec![tar_bytes(&[Entry::file("f", &[1u8; 10000])])]);
    b.corrupt_first_layer = true;
    a.fetch_refused(&b, "not the declared");
}

#[test]
fn layer_content_not_matching_its_diff_id_is_refused() {
    let a = Area::new();
    let layer = tar_bytes(&[Entry::file("f", b"x")]);
    let mut b = LayoutBuilder::new(vec![layer]);
    // A config whose diff_id names other content: the blob is intact, the image is not.
    b.config_override = Some(
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "ab".repeat(32))]},
        }))
        .unwrap(),
    );
    let (reference, digest) = a.layout(&b);
    ark_ok(&a.store, &["--insecure-options=image", "fetch", &reference]);
    let before = snapshot(&a.store);
    let err = ark_err(&a.store, &["image", "render", &digest]);
    assert!(err.contains("the config says"), "{err}");
    assert_eq!(snapshot(&a.store), before);
}

const MIB: usize = 1 << 20;

#[test]
fn a_layer_unpacking_past_the_byte_limit_is_refused() {
    let a = Area::new();
    let zeros = vec![0u8; 4 * MIB];
    let bomb = tar_bytes(&[Entry::file("zeros", &zeros)]);
    // What makes it a bomb: a few KiB on the wire, 4 MiB on disk.
    assert!(gzip(&bomb).len() < 64 << 10);
    let limit = [("ARK_MAX_RENDER_BYTES", "1M")];
    let digest = a.render_refused_with(&limit, vec![bomb.clone()], "unpacks to more than 1 MiB");
    let err = ark_err_env(&a.store, &limit, &["image", "render", &digest]);
    assert!(err.contains("ARK_MAX_RENDER_BYTES"), "{err}");
    assert!(err.contains(&digest), "the error names the image: {err}");

    // The limit holds across layers: two layers under it, together over it.
    let half = vec![0u8; 600 << 10];
    let layer = |name: &str| tar_bytes(&[Entry::file(name, &half)]);
    a.render_refused_with(
        &limit,
        vec![layer("a"), layer("b")],
        "unpacks to more than 1 MiB",
    );

    // Data that is never written counts too: 4 MiB of zeros after the tar's end.
    let mut trailing = tar_bytes(&[Entry::file("small", b"x")]);
    trailing.extend_from_slice(&zeros);
    a.render_refused_with(&limit, vec![trailing], "unpacks to more than 1 MiB");

    // Under a limit it fits, the same image renders whole.
    let out = ark_env(
        &a.store,
        &[("ARK_MAX_RENDER_BYTES", "8M")],
        &["image", "render", &digest],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        fs::metadata(Path::new(rootfs.trim()).join("zeros"))
            .unwrap()
            .len(),
        4 * MIB as u64
    );
}

#[test]
fn a_layer_with_too_many_entries_is_refused() {
    let a = Area::new();
    let names: Vec<String> = (0..300).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry> = names.iter().map(|n| Entry::file(n, b"")).collect();
    let layer = tar_bytes(&entries);
    let digest = a.render_refused_with(
        &[("ARK_MAX_RENDER_ENTRIES", "100")],
        vec![layer],
        "more than 100 entries",
    );
    // The default limit lets it through.
    ark_ok(&a.store, &["image", "render", &digest]);
}

#[test]
fn a_bad_render_limit_is_refused() {
    let a = Area::new();
    let (reference, digest) = a.layout(&LayoutBuilder::new(vec![tar_bytes(&[Entry::file(
        "f", b"x",
    )])]));
    ark_ok(&a.store, &["--insecure-options=image", "fetch", &reference]);
    let before = snapshot(&a.store);
    let err = ark_err_env(
        &a.store,
        &[("ARK_MAX_RENDER_BYTES", "lots")],
        &["image", "render", &digest],
    );
    assert!(
        err.contains("ARK_MAX_RENDER_BYTES=\"lots\" is not a number"),
        "{err}"
    );
    assert_eq!(snapshot(&a.store), before);
}

#[test]
fn a_render_stops_before_the_store_filesystem_fills() {
    if !is_root() {
        skip!("mounting a small tmpfs for the store needs root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let _mount = match Tmpfs::mount(&store, "48m") {
        Ok(m) => m,
        Err(why) => skip!("{why}"),
    };
    // 64 MiB of zeros: under the byte limit, over what the filesystem holds.
    let bomb = tar_bytes(&[Entry::file("zeros", &vec![0u8; 64 * MIB])]);
    let layout = tmp.path().join("layout");
    let digest = LayoutBuilder::new(vec![bomb]).write(&layout, "t");
    ark_ok(
        &store,
        &[
            "--insecure-options=image",
            "fetch",
            &format!("oci-layout:{}:t", layout.display()),
        ],
    );
    let before = snapshot(&store);
    let err = ark_err(&store, &["image", "render", &digest]);
    assert!(
        err.contains("the image store's filesystem is nearly full"),
        "{err}"
    );
    assert_eq!(snapshot(&store), before, "the store changed");
    let st = nix::sys::statvfs::statvfs(&store).unwrap();
    assert!(
        st.blocks_available() * st.fragment_size() > 40 * MIB as u64,
        "the failed render's files were not removed"
    );
}

/// `ARK_STORE_RESERVE` replaces the reserve for fetches (no huge file needed to reach it): a
/// reserve larger than the disk refuses even a tiny image before copying it; a bad value is
/// one clear line.
#[test]
fn the_store_reserve_can_be_set_and_fetches_keep_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let layout = tmp.path().join("layout");
    LayoutBuilder::new(vec![tar_bytes(&[Entry::file("f", b"small")])]).write(&layout, "t");
    let reference = format!("oci-layout:{}:t", layout.display());
    ark_ok(&store, &["image", "list"]);
    let before = snapshot(&store);
    let args = ["--insecure-options=image", "fetch", &reference];
    let err = ark_err_env(&store, &[("ARK_STORE_RESERVE", "1000000T")], &args);
    assert!(
        err.contains("declared") && err.contains("in reserve") && err.contains("ARK_STORE_RESERVE"),
        "{err}"
    );
    let err = ark_err_env(&store, &[("ARK_STORE_RESERVE", "lots")], &args);
    assert!(
        err.contains("ARK_STORE_RESERVE=\"lots\" is not a number"),
        "{err}"
    );
    assert_eq!(snapshot(&store), before, "the store changed");
    ark_ok(&store, &args);
}

/// A docker-archive (`docker save`) of one image whose single layer is `layer`.
fn docker_archive(dest: &Path, layer: &[u8]) {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/f"]},
        "rootfs": {"type": "layers", "diff_ids": [
            format!("sha256:{}", ark_tests::images::sha256_hex(layer))]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": "config.json", "RepoTags": ["big:v1"], "Layers": ["layer.tar"]}
    ]))
    .unwrap();
    let mut b = tar::Builder::new(fs::File::create(dest).unwrap());
    for (name, data) in [
        ("manifest.json", &manifest[..]),
        ("config.json", &config[..]),
        ("layer.tar", layer),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    b.finish().unwrap();
}

/// An image whose layer cannot fit above the store filesystem's reserve (min(1 GiB, 5%)) is
/// refused before a byte of it is copied, from an OCI layout and from a docker-archive alike:
/// one line naming it and the sizes, the store and its free space as they were.
#[test]
fn a_fetch_too_big_for_the_store_filesystem_is_refused_before_copying() {
    if !is_root() {
        skip!("mounting a small tmpfs for the store needs root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let _mount = match Tmpfs::mount(&store, "64m") {
        Ok(m) => m,
        Err(why) => skip!("{why}"),
    };
    // Uncompressed, so the blob really is 62 MiB: less than the filesystem, more than fits
    // above the reserve of 5% (3.2 MiB).
    let layer = tar_bytes(&[Entry::file("f", &vec![7u8; 62 * MIB])]);
    let layout = tmp.path().join("layout");
    let mut builder = LayoutBuilder::new(vec![layer.clone()]);
    builder.uncompressed = true;
    builder.write(&layout, "t");
    let archive = tmp.path().join("big.tar");
    docker_archive(&archive, &layer);
    ark_ok(&store, &["image", "list"]);
    for reference in [
        format!("oci-layout:{}:t", layout.display()),
        format!("docker-archive:{}", archive.display()),
    ] {
        let before = snapshot(&store);
        let (free_before, _) = free_and_total(&store);
        let err = ark_err(&store, &["--insecure-options=image", "fetch", &reference]);
        assert!(
            err.contains("declared") && err.contains("ark keeps 3.2 MiB in reserve"),
            "{reference}: {err}"
        );
        assert_eq!(snapshot(&store), before, "{reference}: the store changed");
        let (free_after, _) = free_and_total(&store);
        assert!(
            free_after + (1 << 20) >= free_before,
            "{reference}: the refused fetch used space: {free_before} -> {free_after}"
        );
    }
}

#[test]
fn a_huge_long_name_header_is_refused() {
    // A GNU long name of 20 MiB (the tar reader would hold it in memory), then its file.
    let name_len = 20 * MIB;
    let mut h = tar::Header::new_gnu();
    h.set_path("././@LongLink").unwrap();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(name_len as u64);
    h.set_mode(0o644);
    h.set_cksum();
    let mut layer = h.as_bytes().to_vec();
    layer.extend(std::iter::repeat_n(b'a', name_len));
    layer.resize(layer.len().next_multiple_of(512), 0);
    layer.extend(tar_bytes(&[Entry::file("f", b"x")]));
    let a = Area::new();
    a.render_refused(
        vec![layer],
        "headers (long name, pax extensions) exceed 16 MiB",
    );
}

/// What a hostile name carries: a screen clear, a carriage return and a fake line of ark's own.
const FAKE: &str = "\x1b[2J\r\nark: fake line";

/// The error is one `ark: ` line (exit 125) in which `FAKE` shows escaped, and no control byte
/// reached stderr raw.
fn assert_escaped_one_line(out: &std::process::Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{what}: stderr: {err}");
    let body = out.stderr.strip_suffix(b"\n").unwrap_or(&out.stderr);
    let raw: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| b.is_ascii_control())
        .collect();
    assert!(
        raw.is_empty(),
        "{what}: raw control bytes {raw:?} in: {err:?}"
    );
    assert!(err.starts_with("ark: "), "{what}: {err:?}");
    assert!(
        err.contains(r"\u{1b}[2J\r\nark: fake line"),
        "{what}: the escaped name is not in: {err:?}"
    );
}

/// One tar header whose 8-byte mode field is `mode` (not octal), named `name`, empty.
fn layer_with_mode_field(name: &str, mode: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.mode = [0; 8];
    old.mode[..mode.len()].copy_from_slice(mode);
    h.set_cksum();
    let mut layer = h.as_bytes().to_vec();
    layer.extend_from_slice(&[0u8; 1024]);
    layer
}

/// Entry names, link targets, a tar crate's own message quoting a header field, tags from
/// index.json and image names: none reaches the operator's terminal raw.
#[test]
fn image_supplied_strings_in_errors_are_escaped_on_one_line() {
    let a = Area::new();
    let leak = |layers: Vec<Vec<u8>>, what: &str| {
        let (reference, digest) = a.layout(&LayoutBuilder::new(layers));
        ark_ok(&a.store, &["--insecure-options=image", "fetch", &reference]);
        let before = snapshot(&a.store);
        let out = ark_env(&a.store, &[], &["image", "render", &digest]);
        assert_escaped_one_line(&out, what);
        assert_eq!(snapshot(&a.store), before, "{what}: the store changed");
    };
    let name: &'static str = Box::leak(format!("x{FAKE}").into_boxed_str());
    let target: &'static str = Box::leak(format!("missing{FAKE}").into_boxed_str());
    leak(
        vec![tar_bytes(&[Entry::Hardlink(name, target)])],
        "hardlink name and target",
    );
    // The mode field is 8 bytes: the name, which the tar crate quotes too, has the fake line.
    leak(
        vec![layer_with_mode_field(&format!("f{FAKE}"), b"\x1b[2J")],
        "a tar header field and the entry name quoted by the tar crate",
    );

    // Tags listed from index.json when the one asked for is not there.
    let dir = a.tmp.path().join("hostile-tag");
    LayoutBuilder::new(vec![tar_bytes(&[Entry::file("f", b"x")])]).write(&dir, FAKE);
    let before = snapshot(&a.store);
    let args = |r: String| ["--insecure-options=image".to_string(), "fetch".into(), r];
    let out = ark_env(
        &a.store,
        &[],
        &args(format!("oci-layout:{}:nosuch", dir.display()))
            .each_ref()
            .map(String::as_str),
    );
    assert_escaped_one_line(&out, "tags of index.json");
    // The same tag taken as the image's name: refused, not stored to be listed raw later.
    let out = ark_env(
        &a.store,
        &[],
        &args(format!("oci-layout:{}", dir.display()))
            .each_ref()
            .map(String::as_str),
    );
    assert_escaped_one_line(&out, "image name from index.json");
    assert!(String::from_utf8_lossy(&out.stderr).contains("control characters"));
    assert_eq!(snapshot(&a.store), before, "the store changed");
    a.assert_host_untouched();
}
