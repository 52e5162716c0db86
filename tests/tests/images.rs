//! The image store end to end: the real `ark` binary fetching, rendering, exporting and
//! collecting images built by the tests (umoci, skopeo, the tar crate).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ark_tests::images::{
    ark, ark_err, ark_ok, busybox_oci_layout, busybox_oci_layout_tagged, compress_with, gzip,
    sha256_hex, snapshot, tar_bytes, Entry, LayoutBuilder,
};
use ark_tests::{ark_bin, is_root};

fn xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length passed.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    // Negative (-1) is the error return.
    let len = usize::try_from(len).map_err(|_| std::io::Error::last_os_error())?;
    buf.truncate(len);
    Ok(buf)
}

fn layout_ref(layout: &Path, tag: &str) -> String {
    format!("oci-layout:{}:{tag}", layout.display())
}

/// The manifest digest a layout's index.json gives for `tag`.
fn layout_digest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn busybox_layout_fetch_inspect_render() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let layout = busybox_oci_layout(&tmp.path().join("busybox"));
    let reference = layout_ref(&layout, "latest");

    // Verification is on by default: an unsigned image is refused and nothing is kept.
    let err = ark_err(&store, &["fetch", &reference]);
    assert!(err.contains("--insecure-options=image"), "{err}");
    assert!(ark_ok(&store, &["image", "list", "--format=json"]).trim() == "[]");

    let id = ark_ok(&store, &["--insecure-options=image", "fetch", &reference]);
    let id = id.trim();
    assert_eq!(id, layout_digest(&layout, "latest"));
    // Idempotent.
    assert_eq!(
        ark_ok(&store, &["--insecure-options=image", "fetch", &reference]).trim(),
        id
    );
    // A stored image can be "fetched" by name or short ID: nothing to verify or copy again.
    assert_eq!(ark_ok(&store, &["fetch", "busybox"]).trim(), id);
    assert_eq!(ark_ok(&store, &["fetch", &id[7..19]]).trim(), id);

    let list: serde_json::Value =
        serde_json::from_str(&ark_ok(&store, &["image", "list", "--format=json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["names"][0], "busybox:latest");

    let inspect: serde_json::Value =
        serde_json::from_str(&ark_ok(&store, &["image", "inspect", "busybox"])).unwrap();
    assert_eq!(inspect["config"]["cmd"], serde_json::json!(["/bin/sh"]));
    assert!(inspect["config"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "PATH=/bin"));

    let manifest: serde_json::Value =
        serde_json::from_str(&ark_ok(&store, &["image", "cat-manifest", &id[7..19]])).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);

    let rootfs = ark_ok(&store, &["image", "render", id]);
    let rootfs = Path::new(rootfs.trim());
    assert!(rootfs.starts_with(&store));
    assert_eq!(
        fs::read(rootfs.join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        fs::metadata(rootfs.join("bin/busybox")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(fs::read_to_string(rootfs.join("etc/passwd"))
        .unwrap()
        .contains("app:x:1000:1000"));
    assert_eq!(
        fs::metadata(rootfs.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    // The render is cached: a second ask returns the same tree without rebuilding it.
    let inode = fs::metadata(rootfs).unwrap().ino();
    let again = ark_ok(&store, &["image", "render", "busybox:latest"]);
    assert_eq!(Path::new(again.trim()), rootfs);
    assert_eq!(fs::metadata(rootfs).unwrap().ino(), inode);

    // A copy for the user.
    let copy = tmp.path().join("copy");
    ark_ok(&store, &["image", "render", id, copy.to_str().unwrap()]);
    assert_eq!(
        fs::read(copy.join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    let err = ark_err(&store, &["image", "render", id, copy.to_str().unwrap()]);
    assert!(err.contains("not empty"), "{err}");

    // Unknown names are one clear line.
    let err = ark_err(&store, &["image", "render", "nosuchimage"]);
    assert!(err.contains("no image \"nosuchimage\""), "{err}");
}

#[test]
fn layers_whiteouts_links_modes_and_owners() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let layer1 = tar_bytes(&[
        Entry::Dir("a/", 0o755),
        Entry::file("a/f1", b"one"),
        Entry::file("a/f2", b"two"),
        Entry::Dir("b/", 0o700),
        Entry::file("b/old", b"old"),
        Entry::File("keep".into(), b"kept".to_vec(), 0o4755),
        Entry::file("gone", b"gone"),
        Entry::Hardlink("hl", "keep"),
        Entry::Symlink("s", "keep"),
        Entry::file("deep/er/file", b"parents made on the way"),
        Entry::XattrFile("with-xattr", "user.ark", b"kept"),
        Entry::OwnedFile("owned", 1000, 1001),
    ]);
    let layer2 = tar_bytes(&[
        Entry::file("a/.wh.f1", b""),
        Entry::file("b/.wh..wh..opq", b""),
        Entry::file("b/new", b"new"),
        Entry::file(".wh.gone", b""),
        Entry::file("s2", b"replaced below"),
    ]);
    let layer3 = tar_bytes(&[
        Entry::Dir("ro/", 0o555),
        Entry::file("ro/inside", b"written before the dir went read-only"),
        Entry::Symlink("s2", "a/f2"),
    ]);
    let layout = tmp.path().join("layout");
    // zstd layers (sniffed like gzip and plain ones).
    let mut builder = LayoutBuilder::new(vec![layer1, layer2, layer3]);
    builder.zstd = true;
    let digest = builder.write(&layout, "v1");
    let id = ark_ok(
        &store,
        &[
            "--insecure-options=image",
            "fetch",
            &layout_ref(&layout, "v1"),
        ],
    );
    assert_eq!(id.trim(), digest);
    let rootfs = ark_ok(&store, &["image", "render", id.trim()]);
    let r = Path::new(rootfs.trim());

    assert!(!r.join("a/f1").exists(), "whiteout removes a/f1");
    assert_eq!(fs::read(r.join("a/f2")).unwrap(), b"two");
    assert!(!r.join("b/old").exists(), "opaque dir hides lower entries");
    assert_eq!(
        fs::read(r.join("b/new")).unwrap(),
        b"new",
        "opaque dir keeps its own layer"
    );
    assert!(!r.join("gone").exists());
    let keep = fs::metadata(r.join("keep")).unwrap();
    assert_eq!(keep.mode() & 0o7777, 0o4755);
    assert_eq!(
        keep.ino(),
        fs::metadata(r.join("hl")).unwrap().ino(),
        "hardlink kept"
    );
    assert_eq!(keep.nlink(), 2);
    assert_eq!(fs::read_link(r.join("s")).unwrap(), Path::new("keep"));
    assert_eq!(fs::read_link(r.join("s2")).unwrap(), Path::new("a/f2"));
    assert_eq!(
        fs::read(r.join("deep/er/file")).unwrap(),
        b"parents made on the way"
    );
    assert_eq!(fs::metadata(r.join("ro")).unwrap().mode() & 0o7777, 0o555);
    assert_eq!(fs::metadata(r.join("b")).unwrap().mode() & 0o7777, 0o700);
    assert!(r.join("ro/inside").exists());
    assert_eq!(keep.mtime(), 1_700_000_000);
    if is_root() {
        assert_eq!((keep.uid(), keep.gid()), (0, 0));
        let owned = fs::metadata(r.join("owned")).unwrap();
        assert_eq!(
            (owned.uid(), owned.gid(), owned.mode() & 0o777),
            (1000, 1001, 0o640)
        );
    }
    match xattr(&r.join("with-xattr"), "user.ark") {
        Ok(value) => assert_eq!(value, b"kept"),
        // Filesystems without user xattrs get a warning from ark, not a failure.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
            eprintln!("xattr not checked: this filesystem has no user xattrs")
        }
        Err(e) => panic!("xattr user.ark missing on the rendered file: {e}"),
    }
}

/// Every path under `root` with what it is: file content, symlink target, or a directory.
fn tree(root: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let t = fs::symlink_metadata(&p).unwrap().file_type();
            let what = if t.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if t.is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else {
                format!("file {:?}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
            };
            out.insert(rel, what);
        }
    }
    out
}

/// OCI: a whiteout hides what LOWER layers put there, never what its own layer has, wherever
/// in the tar it comes and whether or not the layer has entries for the parent directories.
/// The same layout unpacked by umoci (a real peer) must give the same tree.
#[test]
fn whiteouts_hide_lower_layers_only_whatever_their_order_in_the_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let layer1 = tar_bytes(&[
        Entry::Dir("X/", 0o755),
        Entry::file("X/old", b"lower"),
        Entry::Dir("X/Y/", 0o755),
        Entry::file("X/Y/lower", b"lower"),
        Entry::Dir("W/", 0o755),
        Entry::file("W/old", b"lower"),
        Entry::Dir("V/", 0o755),
        Entry::Dir("V/U/", 0o755),
        Entry::file("V/U/old", b"lower"),
        Entry::file("f", b"lower"),
        Entry::file("g", b"lower"),
        Entry::Dir("D/", 0o755),
        Entry::file("D/old", b"lower"),
    ]);
    let layer2 = tar_bytes(&[
        // Own entries first, with no entry for X/Y, then the opaque whiteout.
        Entry::file("X/Y/kept", b"upper"),
        Entry::file("X/.wh..wh..opq", b""),
        // Opaque first, then own entries.
        Entry::file("W/.wh..wh..opq", b""),
        Entry::file("W/new", b"upper"),
        // An explicit directory entry over a lower directory, then the opaque whiteout.
        Entry::Dir("V/U/", 0o755),
        Entry::file("V/U/new", b"upper"),
        Entry::file("V/.wh..wh..opq", b""),
        Entry::file(".wh.f", b""),
        // Plain whiteouts after this layer's own file and directory of the same name.
        Entry::file("g", b"upper"),
        Entry::file(".wh.g", b""),
        Entry::file("D/new", b"upper"),
        Entry::file(".wh.D", b""),
    ]);
    let layout = tmp.path().join("layout");
    LayoutBuilder::new(vec![layer1, layer2]).write(&layout, "v1");
    let id = ark_ok(
        &store,
        &[
            "--insecure-options=image",
            "fetch",
            &layout_ref(&layout, "v1"),
        ],
    );
    let rootfs = ark_ok(&store, &["image", "render", id.trim()]);
    let ours = tree(Path::new(rootfs.trim()));
    let want: std::collections::BTreeMap<String, String> = [
        ("D", "dir"),
        ("D/new", "file \"upper\""),
        ("V", "dir"),
        ("V/U", "dir"),
        ("V/U/new", "file \"upper\""),
        ("W", "dir"),
        ("W/new", "file \"upper\""),
        ("X", "dir"),
        ("X/Y", "dir"),
        ("X/Y/kept", "file \"upper\""),
        ("g", "file \"upper\""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(ours, want, "ark's render");

    if let Some(why) = ark_tests::registry::missing_tool(&["umoci"]) {
        ark_tests::skip!("the comparison with umoci: {why}");
    }
    let bundle = tmp.path().join("bundle");
    let mut umoci = Command::new("umoci");
    umoci.arg("unpack");
    if !is_root() {
        umoci.arg("--rootless");
    }
    let out = umoci
        .arg("--image")
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle)
        .output()
        .expect("running umoci");
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ours, tree(&bundle.join("rootfs")), "ark and umoci differ");
}

#[test]
fn export_reimports_to_the_same_id_and_rm_gc_reclaim() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let layout = busybox_oci_layout_tagged(&tmp.path().join("bb"), "1.0");
    let id = ark_ok(
        &store,
        &[
            "--insecure-options=image",
            "fetch",
            &layout_ref(&layout, "1.0"),
        ],
    );
    let id = id.trim();
    let exported = tmp.path().join("exported");
    ark_ok(&store, &["image", "export", id, exported.to_str().unwrap()]);
    // umoci accepts what ark wrote.
    let stat = Command::new("umoci")
        .args(["stat", "--image", &format!("{}:1.0", exported.display())])
        .output()
        .unwrap();
    assert!(
        stat.status.success(),
        "{}",
        String::from_utf8_lossy(&stat.stderr)
    );
    let store2 = tmp.path().join("store2");
    let id2 = ark_ok(
        &store2,
        &[
            "--insecure-options=image",
            "fetch",
            &layout_ref(&exported, "1.0"),
        ],
    );
    assert_eq!(id2.trim(), id);
    let err = ark_err(&store, &["image", "export", id, exported.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");

    ark_ok(&store, &["image", "render", id]);
    assert_eq!(ark_ok(&store, &["image", "rm", "bb:1.0"]).trim(), id);
    let images = store.join("images");
    assert_eq!(
        fs::read_dir(images.join("blobs/sha256")).unwrap().count(),
        0
    );
    assert!(!images.join("renders").join(&id[7..]).exists());
    assert!(ark_ok(&store, &["image", "list", "--format=json"]).trim() == "[]");
    let err = ark_err(&store, &["image", "rm", id]);
    assert!(err.contains("could not remove"), "{err}");

    // A render a pod holds (shared flock on renders/<hex>.use, what ImageStore::hold takes)
    // survives rm; gc takes it once released.
    let id2 = ark_ok(
        &store,
        &[
            "--insecure-options=image",
            "fetch",
            &layout_ref(&layout, "1.0"),
        ],
    );
    let rootfs = ark_ok(&store, &["image", "render", id2.trim()]);
    let use_file =
        fs::File::create(images.join("renders").join(format!("{}.use", &id[7..]))).unwrap();
    let hold = nix::fcntl::Flock::lock(use_file, nix::fcntl::FlockArg::LockSharedNonblock).unwrap();
    ark_ok(&store, &["image", "rm", id]);
    assert!(
        Path::new(rootfs.trim()).join("bin/busybox").exists(),
        "held render removed"
    );
    let gc = ark_ok(&store, &["image", "gc"]);
    assert!(gc.ends_with("0 renders\n"), "{gc}");
    drop(hold);
    let gc = ark_ok(&store, &["image", "gc"]);
    assert!(gc.ends_with("1 renders\n"), "{gc}");
    assert!(!Path::new(rootfs.trim()).exists());
    let err = ark_err(&store, &["image", "rm", id]);
    assert!(err.contains("could not remove"), "{err}");
}

#[test]
fn docker_archive_from_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let layout = busybox_oci_layout(&tmp.path().join("bb"));
    let archive = tmp.path().join("bb.tar");
    let out = Command::new("skopeo")
        .args(["copy", "--insecure-policy"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!(
            "docker-archive:{}:example.com/tools/busybox:2",
            archive.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = format!("docker-archive:{}", archive.display());
    let err = ark_err(&store, &["fetch", &reference]);
    assert!(err.contains("--insecure-options=image"), "{err}");
    let id = ark_ok(&store, &["--insecure-options=image", "fetch", &reference]);
    // The same archive gives the same ID.
    assert_eq!(
        ark_ok(&store, &["--insecure-options=image", "fetch", &reference]),
        id
    );
    let list: serde_json::Value =
        serde_json::from_str(&ark_ok(&store, &["image", "list", "--format=json"])).unwrap();
    assert_eq!(list[0]["names"][0], "example.com/tools/busybox:2");
    let inspect: serde_json::Value =
        serde_json::from_str(&ark_ok(&store, &["image", "inspect", "tools/busybox:2"])).unwrap();
    assert_eq!(inspect["config"]["cmd"], serde_json::json!(["/bin/sh"]));
    let rootfs = ark_ok(&store, &["image", "render", id.trim()]);
    assert_eq!(
        fs::read(Path::new(rootfs.trim()).join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
}

fn aci_bytes(name: &str) -> Vec<u8> {
    let manifest = serde_json::json!({
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": name,
        "labels": [{"name": "version", "value": "1.2"}, {"name": "arch", "value": "amd64"}],
        "app": {
            "exec": ["/bin/sh", "-c", "echo hi"],
            "user": "1000",
            "group": "1000",
            "workingDirectory": "/work",
            "environment": [{"name": "GREETING", "value": "hello"}],
        },
    });
    tar_bytes(&[
        Entry::file("manifest", &serde_json::to_vec(&manifest).unwrap()),
        Entry::Dir("rootfs/", 0o755),
        Entry::Dir("rootfs/work/", 0o755),
        Entry::file("rootfs/work/hello", b"hello from an ACI"),
        Entry::Symlink("rootfs/link", "work/hello"),
    ])
}

#[test]
fn aci_import_render_and_signature_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let aci = tmp.path().join("hello.aci");
    let bytes = gzip(&aci_bytes("example.com/hello"));
    fs::write(&aci, &bytes).unwrap();

    let err = ark_err(&store, &["fetch", aci.to_str().unwrap()]);
    assert!(
        err.contains("hello.aci.asc") && err.contains("--insecure-options=image"),
        "{err}"
    );
    assert!(ark_ok(&store, &["image", "list", "--format=json"]).trim() == "[]");

    let id = ark_ok(
        &store,
        &["--insecure-options=image", "fetch", aci.to_str().unwrap()],
    );
    assert_eq!(id.trim(), format!("sha256:{}", sha256_hex(&bytes)));
    let inspect: serde_json::Value = serde_json::from_str(&ark_ok(
        &store,
        &["image", "inspect", "example.com/hello:1.2"],
    ))
    .unwrap();
    let c = &inspect["config"];
    assert_eq!(
        c["entrypoint"],
        serde_json::json!(["/bin/sh", "-c", "echo hi"])
    );
    assert_eq!(c["user"], "1000:1000");
    assert_eq!(c["working_dir"], "/work");
    assert_eq!(c["env"], serde_json::json!(["GREETING=hello"]));
    assert_eq!(c["labels"]["arch"], "amd64");
    let rootfs = ark_ok(&store, &["image", "render", id.trim()]);
    let r = Path::new(rootfs.trim());
    assert_eq!(
        fs::read(r.join("work/hello")).unwrap(),
        b"hello from an ACI"
    );
    assert_eq!(
        fs::read_link(r.join("link")).unwrap(),
        Path::new("work/hello")
    );
    assert!(!r.join("manifest").exists());
    let manifest: serde_json::Value =
        serde_json::from_str(&ark_ok(&store, &["image", "cat-manifest", id.trim()])).unwrap();
    assert_eq!(manifest["name"], "example.com/hello");
    let err = ark_err(
        &store,
        &[
            "image",
            "export",
            id.trim(),
            tmp.path().join("x").to_str().unwrap(),
        ],
    );
    assert!(err.contains("ACI"), "{err}");

    // Every ACI compression renders the same tree.
    for tool in ["xz", "bzip2"] {
        let other = tmp.path().join(format!("hello-{tool}.aci"));
        fs::write(&other, compress_with(tool, &aci_bytes("example.com/hello"))).unwrap();
        let id = ark_ok(
            &store,
            &["--insecure-options=image", "fetch", other.to_str().unwrap()],
        );
        let rootfs = ark_ok(&store, &["image", "render", id.trim()]);
        assert_eq!(
            fs::read(Path::new(rootfs.trim()).join("work/hello")).unwrap(),
            b"hello from an ACI"
        );
    }

    // A manifest that is not an image manifest is refused.
    let bad = tmp.path().join("bad.aci");
    fs::write(
        &bad,
        tar_bytes(&[Entry::file(
            "manifest",
            br#"{"acKind":"PodManifest","acVersion":"0.8.11","name":"x"}"#,
        )]),
    )
    .unwrap();
    let err = ark_err(
        &store,
        &["--insecure-options=image", "fetch", bad.to_str().unwrap()],
    );
    assert!(err.contains("PodManifest"), "{err}");
}

#[test]
fn concurrent_fetches_of_one_image_both_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let layout = busybox_oci_layout(&tmp.path().join("bb"));
    let reference = layout_ref(&layout, "latest");
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(ark_bin())
                .arg("--dir")
                .arg(&store)
                .args(["--insecure-options=image", "fetch", &reference])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]));
    // Concurrent renders share one tree.
    let renders: Vec<_> = (0..3)
        .map(|_| {
            Command::new(ark_bin())
                .arg("--dir")
                .arg(&store)
                .args(["image", "render", ids[0].trim()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let paths: Vec<String> = renders
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert!(paths.iter().all(|p| *p == paths[0]));
    // Nothing left over.
    let gc = ark_ok(&store, &["image", "gc"]);
    assert!(gc.contains("removed 0 temporary entries, 0 blobs"), "{gc}");
}

/// A layout with enough content that fetch and render take a while (random data does not
/// compress, so the blob is as big as the files).
fn big_layout(dir: &Path) -> String {
    let mut entries = Vec::new();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for i in 0..32 {
        let mut data = vec![0u8; 2 << 20];
        for chunk in data.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
        entries.push(Entry::File(format!("data/f{i}"), data, 0o644));
    }
    let mut builder = LayoutBuilder::new(vec![tar_bytes(&entries)]);
    builder.uncompressed = true;
    builder.write(dir, "big")
}

/// Starts `ark ARGS`, waits until `ready` says the command is mid-way, and kill -9s it.
fn kill_midway(store: &Path, args: &[&str], ready: impl Fn() -> bool) -> bool {
    let mut child = Command::new(ark_bin())
        .arg("--dir")
        .arg(store)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if ready() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("ark {args:?} neither finished nor reached the kill point");
}

fn tmp_has(store: &Path, prefix: &str) -> bool {
    fs::read_dir(store.join("images/tmp"))
        .map(|rd| {
            rd.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with(prefix) && {
                    // Mid-way: the staging dir has content being written.
                    fs::read_dir(e.path())
                        .map(|mut d| d.next().is_some())
                        .unwrap_or(false)
                }
            })
        })
        .unwrap_or(false)
}

#[test]
fn kill_9_mid_fetch_and_mid_render_then_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let layout = tmp.path().join("big");
    let digest = big_layout(&layout);
    let reference = layout_ref(&layout, "big");

    let killed = kill_midway(
        &store,
        &["--insecure-options=image", "fetch", &reference],
        || tmp_has(&store, "fetch-"),
    );
    assert!(killed, "fetch finished before it could be killed");
    // No visible image, leftovers only in tmp/.
    assert!(ark_ok(&store, &["image", "list", "--format=json"]).trim() == "[]");
    let gc = ark_ok(&store, &["image", "gc"]);
    assert!(gc.starts_with("removed 1 temporary entries"), "{gc}");
    assert_eq!(fs::read_dir(store.join("images/tmp")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(store.join("images/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );

    let id = ark_ok(&store, &["--insecure-options=image", "fetch", &reference]);
    assert_eq!(id.trim(), digest);
    let killed = kill_midway(&store, &["image", "render", &digest], || {
        tmp_has(&store, "render-")
    });
    assert!(killed, "render finished before it could be killed");
    assert!(!store.join("images/renders").join(&digest[7..]).exists());
    let gc = ark_ok(&store, &["image", "gc"]);
    assert!(
        gc.starts_with("removed 1 temporary entries, 0 blobs"),
        "{gc}"
    );
    let rootfs = ark_ok(&store, &["image", "render", &digest]);
    let files = fs::read_dir(Path::new(rootfs.trim()).join("data"))
        .unwrap()
        .count();
    assert_eq!(files, 32);
    // The store is consistent: the image is intact and nothing is reclaimable.
    let gc = ark_ok(&store, &["image", "gc"]);
    assert!(gc.contains("removed 0 temporary entries, 0 blobs"), "{gc}");
}

#[test]
fn bad_references_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let err = ark_err(&store, &["fetch", "busybox"]);
    assert!(err.contains("unknown image reference"), "{err}");
    let missing = tmp.path().join("missing");
    let err = ark_err(
        &store,
        &["fetch", &format!("oci-layout:{}", missing.display())],
    );
    assert!(err.contains("not an OCI image layout"), "{err}");
    let err = ark_err(
        &store,
        &[
            "fetch",
            &format!("docker-archive:{}/x.tar", missing.display()),
        ],
    );
    assert!(err.contains("x.tar"), "{err}");
    // Store dir permissions are not an excuse for a panic either.
    let _ = fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755));
    let out = ark(&store, &["image", "list"]);
    assert!(out.status.success());
}

#[test]
fn signed_aci_and_oci_layout_verify_against_trusted_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let key = ark_tests::images::TestKey::new("ark images test <images@example.com>");

    // ACI with a detached signature.
    let aci = tmp.path().join("hello.aci");
    fs::write(&aci, gzip(&aci_bytes("example.com/hello"))).unwrap();
    let asc = tmp.path().join("hello.aci.asc");
    key.detach_sign(&aci, &asc);
    let err = ark_err(&store, &["fetch", aci.to_str().unwrap()]);
    assert!(
        err.contains("ark trust --prefix example.com/hello"),
        "{err}"
    );
    ark_ok(
        &store,
        &[
            "trust",
            "--prefix",
            "example.com/hello",
            key.public.to_str().unwrap(),
        ],
    );
    let id = ark_ok(&store, &["fetch", aci.to_str().unwrap()]);
    assert!(id.starts_with("sha256:"));
    // Same signature, other bytes: refused, nothing kept.
    let before = snapshot(&store.join("images"));
    let tampered = tmp.path().join("tampered.aci");
    fs::write(&tampered, gzip(&aci_bytes("example.com/hello/evil"))).unwrap();
    fs::copy(&asc, tmp.path().join("tampered.aci.asc")).unwrap();
    let err = ark_err(&store, &["fetch", tampered.to_str().unwrap()]);
    assert!(err.contains("signature"), "{err}");
    assert_eq!(snapshot(&store.join("images")), before);

    // OCI layout whose ref.name is a full reference, signed in a lookaside dir.
    let layout = tmp.path().join("signed");
    let reference = "example.com/tools/bb:1";
    let digest = LayoutBuilder::new(vec![tar_bytes(&[Entry::file("hello", b"signed")])])
        .write(&layout, reference);
    let manifest = layout.join("blobs/sha256").join(&digest[7..]);
    let sigdir = tmp.path().join("sigs");
    key.simple_sign(&manifest, reference, &sigdir, "tools/bb");
    let src = format!("oci-layout:{}", layout.display());
    let err = ark_err(&store, &["fetch", &src]);
    assert!(err.contains("--signature-dir"), "{err}");
    let sig_arg = format!("--signature-dir={}", sigdir.display());
    let err = ark_err(&store, &["fetch", &sig_arg, &src]);
    assert!(err.contains("example.com/tools/bb"), "untrusted key: {err}");
    ark_ok(
        &store,
        &[
            "trust",
            "--prefix",
            "example.com/tools",
            key.public.to_str().unwrap(),
        ],
    );
    let id = ark_ok(&store, &["fetch", &sig_arg, &src]);
    assert_eq!(id.trim(), digest);

    // A signature for another manifest does not cover this one.
    let other = tmp.path().join("other");
    let other_digest = LayoutBuilder::new(vec![tar_bytes(&[Entry::file("hello", b"other")])])
        .write(&other, reference);
    let wrong = tmp.path().join("wrong-sigs");
    key.simple_sign(&manifest, reference, &wrong, "tools/bb");
    let moved = wrong.join(format!("tools/bb@sha256={}", &other_digest[7..]));
    fs::rename(
        wrong.join(format!("tools/bb@sha256={}", &digest[7..])),
        &moved,
    )
    .unwrap();
    let before = snapshot(&store.join("images"));
    let err = ark_err(
        &store,
        &[
            "fetch",
            &format!("--signature-dir={}", wrong.display()),
            &format!("oci-layout:{}", other.display()),
        ],
    );
    assert!(err.contains("signature"), "{err}");
    assert_eq!(snapshot(&store.join("images")), before);
}

/// A `docker-registry` on a free loopback port, with filesystem storage in `dir`.
struct LocalRegistry {
    child: std::process::Child,
    addr: String,
}

impl LocalRegistry {
    fn start(dir: &Path) -> LocalRegistry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        LocalRegistry { child, addr }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn docker_fetch_lands_in_the_store_like_any_image() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = LocalRegistry::start(tmp.path());
    let layout = busybox_oci_layout(&tmp.path().join("bb"));
    let out = Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}/tools/busybox:1", registry.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = tmp.path().join("store");
    let reference = format!("docker://{}/tools/busybox:1", registry.addr);
    let id = ark_ok(&store, &["--insecure-options=image", "fetch", &reference]);
    assert_eq!(id.trim(), layout_digest(&layout, "latest"));
    // Again, and concurrently with a render: same ID, one image.
    assert_eq!(
        ark_ok(&store, &["--insecure-options=image", "fetch", &reference]),
        id
    );
    let list: serde_json::Value =
        serde_json::from_str(&ark_ok(&store, &["image", "list", "--format=json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        list[0]["names"][0],
        format!("{}/tools/busybox:1", registry.addr)
    );
    let rootfs = ark_ok(&store, &["image", "render", "tools/busybox:1"]);
    assert_eq!(
        fs::read(Path::new(rootfs.trim()).join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    // The download was moved in, nothing left behind.
    assert_eq!(fs::read_dir(store.join("images/tmp")).unwrap().count(), 0);
    let gc = ark_ok(&store, &["image", "gc"]);
    assert!(gc.contains("removed 0 temporary entries, 0 blobs"), "{gc}");
}

#[test]
fn image_index_in_a_layout_resolves_by_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let layout = tmp.path().join("multi");
    let mut manifests = Vec::new();
    for arch in ["arm64", "amd64"] {
        let one = tmp.path().join(arch);
        let digest = LayoutBuilder::new(vec![tar_bytes(&[Entry::file("arch", arch.as_bytes())])])
            .write(&one, arch);
        let size = fs::metadata(one.join("blobs/sha256").join(&digest[7..]))
            .unwrap()
            .len();
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        for blob in fs::read_dir(one.join("blobs/sha256")).unwrap() {
            let blob = blob.unwrap();
            fs::copy(
                blob.path(),
                layout.join("blobs/sha256").join(blob.file_name()),
            )
            .unwrap();
        }
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let nested_hex = sha256_hex(&nested);
    fs::write(layout.join("blobs/sha256").join(&nested_hex), &nested).unwrap();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{nested_hex}"), "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let reference = layout_ref(&layout, "multi");
    for (flags, want) in [
        (vec![], "amd64"),
        (vec!["--platform", "linux/arm64"], "arm64"),
    ] {
        let mut args = vec!["--insecure-options=image", "fetch"];
        args.extend(flags);
        args.push(&reference);
        let id = ark_ok(&store, &args);
        assert_eq!(id.trim(), manifests[usize::from(want == "amd64")]["digest"]);
        let rootfs = ark_ok(&store, &["image", "render", id.trim()]);
        assert_eq!(
            fs::read(Path::new(rootfs.trim()).join("arch")).unwrap(),
            want.as_bytes()
        );
    }
    let err = ark_err(
        &store,
        &[
            "--insecure-options=image",
            "fetch",
            "--platform",
            "linux/s390x",
            &reference,
        ],
    );
    assert!(err.contains("no manifest for linux/s390x"), "{err}");
}

#[test]
fn kill_9_at_random_moments_never_leaves_a_broken_image() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let layout = tmp.path().join("big");
    let digest = big_layout(&layout);
    let reference = layout_ref(&layout, "big");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut seed = u64::try_from(nanos).expect("ns since 1970 fit in u64 until 2554") | 1;
    eprintln!("seed {seed}");
    for round in 0..6 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 1500);
        // Fetch then render in one shell, killed (the whole process group) after `delay`.
        let script = format!(
            "{ark} --dir {s} --insecure-options=image fetch {r} >/dev/null && {ark} --dir {s} image render {d} >/dev/null",
            ark = ark_bin().display(),
            s = store.display(),
            r = reference,
            d = digest
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&script);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(delay);
        // The process group we just made (its id is the child's pid).
        let _ = nix::sys::signal::killpg(ark_tests::child_pid(&child), nix::sys::signal::SIGKILL);
        child.wait().unwrap();

        ark_ok(&store, &["image", "gc"]);
        let list: serde_json::Value =
            serde_json::from_str(&ark_ok(&store, &["image", "list", "--format=json"])).unwrap();
        eprintln!(
            "round {round}: killed after {delay:?}, {} image(s) after gc",
            list.as_array().unwrap().len()
        );
        match list.as_array().unwrap().as_slice() {
            [] => {}
            [image] => {
                assert_eq!(image["id"], digest, "round {round}");
                let rootfs = ark_ok(&store, &["image", "render", &digest]);
                let files = fs::read_dir(Path::new(rootfs.trim()).join("data"))
                    .unwrap()
                    .count();
                assert_eq!(files, 32, "round {round}: incomplete render visible");
                assert_eq!(ark_ok(&store, &["image", "rm", &digest]).trim(), digest);
            }
            more => panic!("round {round}: unexpected images {more:?}"),
        }
        assert_eq!(fs::read_dir(store.join("images/tmp")).unwrap().count(), 0);
    }
}
