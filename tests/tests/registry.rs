//! `ark fetch docker://...` against real registries (Debian's docker-registry on loopback ports,
//! images built with umoci and pushed with skopeo, signatures from `skopeo copy --sign-by` with a
//! real gpg key) and against fake registries that lie or stall.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ark_tests::registry::*;
use ark_tests::skip;

/// A bcrypt hash of "s3cret" (test input for docker-registry's htpasswd file).
const S3CRET_BCRYPT: &str = "$2b$12$IVGzOVDh1pb7hIExQshcyOLT.hGF8EZ/SQ7ljF5el68aAUfEeGQGa";

/// Images pushed once per test process into one registry storage, and the registry serving it
/// (kept by a thread that lives as long as the process, so it dies with it).
struct Fixture {
    dir: PathBuf,
    storage: PathBuf,
    /// The long-lived open registry (`127.0.0.1:PORT`); signatures name it.
    addr: String,
    lookaside: PathBuf,
    signer_fpr: String,
    signer_key: PathBuf,
    stranger_key: PathBuf,
    oci_digest: String,
    v2s2_digest: String,
    amd64_digest: String,
    arm64_digest: String,
    /// The per-platform manifests of `test/multi:v2s2` (a Docker manifest list).
    list_amd64_digest: String,
    list_arm64_digest: String,
    other_digest: String,
}

fn fixture() -> Result<&'static Fixture, String> {
    static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            if let Some(why) = missing_tool(TOOLS) {
                return Err(why);
            }
            Ok(build_fixture())
        })
        .as_ref()
        .map_err(Clone::clone)
}

static FIXTURE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_fixture_dir() {
    if let Some(d) = FIXTURE_DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn build_fixture() -> Fixture {
    // Fixture files outlive every test; those of dead test processes are removed here.
    let base = std::env::temp_dir();
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("ark-registry-fixture-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let dir = base.join(format!("ark-registry-fixture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    FIXTURE_DIR.set(dir.clone()).unwrap();
    // SAFETY: registering a plain extern "C" fn; it runs once when the test binary exits.
    unsafe { libc::atexit(remove_fixture_dir) };
    let storage = dir.join("storage");
    let lookaside = dir.join("lookaside");
    let regd = dir.join("registries.d");
    registries_d(&regd, &lookaside);

    let (tx, rx) = std::sync::mpsc::channel();
    {
        let storage = storage.clone();
        std::thread::spawn(move || {
            let reg = Registry::start(&storage, RegistryAuth::None);
            tx.send(reg.addr.clone()).unwrap();
            loop {
                std::thread::park();
            }
        });
    }
    let addr = rx.recv().expect("fixture registry started");

    let layout = dir.join("layout");
    let amd64_digest = build_image(&layout, "amd64", "amd64", "amd64");
    let arm64_digest = build_image(&layout, "arm64", "arm64", "arm64");
    let other_digest = build_image(&layout, "other", "amd64", "other");
    add_index(&layout, &[("amd64", "amd64"), ("arm64", "arm64")], "multi");
    let src = |tag: &str| format!("oci:{}:{tag}", layout.display());
    let dst = |r: &str| format!("docker://{addr}/{r}");

    skopeo_copy(
        &src("amd64"),
        &dst("test/busybox:oci"),
        &["--format", "oci"],
        &[],
    );
    skopeo_copy(
        &src("amd64"),
        &dst("test/busybox:v2s2"),
        &["--format", "v2s2"],
        &[],
    );
    skopeo_copy(&src("multi"), &dst("test/multi:latest"), &["--all"], &[]);
    skopeo_copy(
        &src("multi"),
        &dst("test/multi:v2s2"),
        &["--all", "--format", "v2s2"],
        &[],
    );
    let list = remote_manifest(&format!("{addr}/test/multi:v2s2"));
    assert_eq!(
        list["mediaType"], "application/vnd.docker.distribution.manifest.list.v2+json",
        "skopeo wrote a Docker manifest list"
    );
    let list_digest = |arch: &str| {
        list["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .and_then(|m| m["digest"].as_str())
            .unwrap()
            .to_string()
    };
    let list_amd64_digest = list_digest("amd64");
    let list_arm64_digest = list_digest("arm64");
    let oci_digest = remote_digest(&format!("{addr}/test/busybox:oci"));
    assert_eq!(
        oci_digest, amd64_digest,
        "skopeo kept the OCI manifest as built"
    );
    let v2s2_digest = remote_digest(&format!("{addr}/test/busybox:v2s2"));
    assert_ne!(v2s2_digest, oci_digest, "v2s2 is a different manifest");

    let gpg = Gpg::new();
    let signer_fpr = gpg.gen_key("ark test signer <signer@example.com>", "rsa3072");
    let stranger_fpr = gpg.gen_key("stranger <stranger@example.com>", "ed25519");
    let signer_key = dir.join("signer.asc");
    gpg.export(&signer_fpr, true, &signer_key);
    let stranger_key = dir.join("stranger.asc");
    gpg.export(&stranger_fpr, true, &stranger_key);
    let regd_arg = format!("--registries.d={}", regd.display());
    skopeo_copy(
        &src("amd64"),
        &dst("signed/busybox:v1"),
        &[&regd_arg, "--format", "oci", "--sign-by", &signer_fpr],
        &[("GNUPGHOME", gpg.home.path())],
    );
    // An image index, signed (skopeo signs the index and each platform's manifest).
    skopeo_copy(
        &src("multi"),
        &dst("signed/multi:latest"),
        &[&regd_arg, "--all", "--sign-by", &signer_fpr],
        &[("GNUPGHOME", gpg.home.path())],
    );
    // The same manifest under another tag, unsigned: its only signature names :v1.
    skopeo_copy(
        &src("amd64"),
        &dst("signed/busybox:v2"),
        &["--format", "oci"],
        &[],
    );
    skopeo_copy(
        &src("other"),
        &dst("signed/other:latest"),
        &["--format", "oci"],
        &[],
    );
    gpg.stop_agent();
    assert!(
        sig_path(&lookaside, "signed/busybox", &amd64_digest).exists(),
        "skopeo wrote the signature into the lookaside"
    );

    Fixture {
        dir,
        storage,
        addr,
        lookaside,
        signer_fpr,
        signer_key,
        stranger_key,
        oci_digest,
        v2s2_digest,
        amd64_digest,
        arm64_digest,
        list_amd64_digest,
        list_arm64_digest,
        other_digest,
    }
}

fn sig_path(lookaside: &Path, repo: &str, digest: &str) -> PathBuf {
    lookaside
        .join(format!("{repo}@sha256={}", &digest["sha256:".len()..]))
        .join("signature-1")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// Asserts a fetch succeeded and printed exactly `id`.
fn assert_fetched(o: &Output, id: &str) {
    assert!(
        o.status.success(),
        "fetch failed: {}\n{}",
        o.status,
        stderr(o)
    );
    assert_eq!(stdout(o).lines().last(), Some(id), "printed image ID");
}

/// Asserts a fetch failed with one clear line containing every one of `needles`, and that
/// the store holds nothing.
fn assert_refused(o: &Output, dir: &Path, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "fetch should have failed: {}",
        stdout(o)
    );
    assert_eq!(
        o.status.code(),
        Some(125),
        "ark's error exit code; stderr: {err}"
    );
    assert_eq!(err.lines().count(), 1, "one-line error, got: {err}");
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
    assert_store_empty(dir);
}

/// Nothing of a refused fetch is visible: no image listed, no blob file (a 64-hex-digit name)
/// anywhere under the data directory, no staging left in any `tmp/`.
fn assert_store_empty(dir: &Path) {
    let o = ark(dir, &["image", "list", "--format", "json"], &[]);
    assert!(o.status.success(), "image list: {}", stderr(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).expect("image list JSON");
    assert_eq!(
        listed,
        serde_json::json!([]),
        "no image after a refused fetch"
    );
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let entries: Vec<_> = rd.flatten().collect();
        if d.file_name().is_some_and(|n| n == "tmp") {
            let names: Vec<_> = entries.iter().map(|e| e.file_name()).collect();
            assert!(
                names.is_empty(),
                "fetch left staging behind in {}: {names:?}",
                d.display()
            );
        }
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_blob = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            assert!(!is_blob, "a blob reached the store: {}", e.path().display());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
}

/// The manifest blob of image `id` as `ark image export` writes it hashes to `id`.
fn assert_exported_manifest(dir: &Path, id: &str) {
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    let o = ark(dir, &["image", "export", id, layout.to_str().unwrap()], &[]);
    assert!(o.status.success(), "image export: {}", stderr(&o));
    let blob = layout.join("blobs/sha256").join(&id["sha256:".len()..]);
    assert_eq!(sha256_file(&blob), id, "stored manifest matches its digest");
}

fn fetch(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["fetch"];
    all.extend_from_slice(args);
    ark(dir, &all, env)
}

macro_rules! fixture_or_skip {
    () => {
        match fixture() {
            Ok(f) => f,
            Err(why) => skip!("{why}"),
        }
    };
}

#[test]
fn fetches_oci_and_schema2_manifests_by_tag_and_by_digest() {
    let f = fixture_or_skip!();
    for (tag, digest) in [("oci", &f.oci_digest), ("v2s2", &f.v2s2_digest)] {
        let dir = tempfile::tempdir().unwrap();
        let by_tag = format!("docker://{}/test/busybox:{tag}", f.addr);
        let o = fetch(dir.path(), &["--insecure-options=image", &by_tag], &[]);
        assert_fetched(&o, digest);
        let dir = tempfile::tempdir().unwrap();
        let by_digest = format!("docker://{}/test/busybox@{digest}", f.addr);
        let o = fetch(dir.path(), &["--insecure-options=image", &by_digest], &[]);
        assert_fetched(&o, digest);
        // The stored manifest is the one the registry serves, byte for byte.
        assert_exported_manifest(dir.path(), digest);
    }
}

#[test]
fn image_index_resolves_to_amd64_unless_platform_says_otherwise() {
    let f = fixture_or_skip!();
    // A Docker manifest list resolves the same way as an OCI index.
    let list = format!("docker://{}/test/multi:v2s2", f.addr);
    let dir = tempfile::tempdir().unwrap();
    let o = fetch(dir.path(), &["--insecure-options=image", &list], &[]);
    assert_fetched(&o, &f.list_amd64_digest);
    let o = fetch(
        dir.path(),
        &["--insecure-options=image", "--platform=linux/arm64", &list],
        &[],
    );
    assert_fetched(&o, &f.list_arm64_digest);

    let image = format!("docker://{}/test/multi:latest", f.addr);
    let dir = tempfile::tempdir().unwrap();
    let o = fetch(dir.path(), &["--insecure-options=image", &image], &[]);
    assert_fetched(&o, &f.amd64_digest);
    let o = fetch(
        dir.path(),
        &[
            "--insecure-options=image",
            "--platform",
            "linux/arm64",
            &image,
        ],
        &[],
    );
    assert_fetched(&o, &f.arm64_digest);
    let empty = tempfile::tempdir().unwrap();
    let o = fetch(
        empty.path(),
        &[
            "--insecure-options=image",
            "--platform",
            "linux/s390x",
            &image,
        ],
        &[],
    );
    assert_refused(
        &o,
        empty.path(),
        &["no linux/s390x image", "linux/amd64", "linux/arm64"],
    );
}

#[test]
fn basic_auth_with_htpasswd_registry() {
    let f = fixture_or_skip!();
    let reg = Registry::start(
        &f.storage,
        RegistryAuth::Htpasswd {
            user: "ark".into(),
            bcrypt: S3CRET_BCRYPT.into(),
        },
    );
    let image = format!("docker://{}/test/busybox:oci", reg.addr);
    let dir = tempfile::tempdir().unwrap();
    let o = fetch(dir.path(), &["--insecure-options=image", &image], &[]);
    assert_refused(
        &o,
        dir.path(),
        &["requires a user name and password", "ARK_REGISTRY_AUTH"],
    );
    let o = fetch(
        dir.path(),
        &["--insecure-options=image", &image],
        &[("ARK_REGISTRY_AUTH", "ark:wrong")],
    );
    assert_refused(&o, dir.path(), &["refused the credentials"]);
    let o = fetch(
        dir.path(),
        &["--insecure-options=image", &image],
        &[("ARK_REGISTRY_AUTH", "ark:s3cret")],
    );
    assert_fetched(&o, &f.oci_digest);
    // The same credentials from an auth file as `podman login` writes it.
    let auth = tempfile::NamedTempFile::new().unwrap();
    let entry = base64(b"ark:s3cret", false);
    std::fs::write(
        auth.path(),
        serde_json::json!({"auths": {reg.addr.clone(): {"auth": entry}}}).to_string(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = fetch(
        dir.path(),
        &["--insecure-options=image", &image],
        &[("REGISTRY_AUTH_FILE", auth.path().to_str().unwrap())],
    );
    assert_fetched(&o, &f.oci_digest);
}

#[test]
fn bearer_token_auth_with_token_service() {
    let f = fixture_or_skip!();
    let tokens = TokenServer::start("tokuser", "tokpass");
    let reg = Registry::start(
        &f.storage,
        RegistryAuth::Token {
            realm: tokens.realm.clone(),
            service: tokens.service.clone(),
            issuer: tokens.issuer.clone(),
            cert: tokens.cert.clone(),
        },
    );
    let image = format!("docker://{}/test/busybox:v2s2", reg.addr);
    let dir = tempfile::tempdir().unwrap();
    let o = fetch(dir.path(), &["--insecure-options=image", &image], &[]);
    assert_refused(
        &o,
        dir.path(),
        &["refused anonymous access", "ARK_REGISTRY_AUTH"],
    );
    let o = fetch(
        dir.path(),
        &["--insecure-options=image", &image],
        &[("ARK_REGISTRY_AUTH", "tokuser:tokpass")],
    );
    assert_fetched(&o, &f.v2s2_digest);
    let requests = tokens.requests.lock().unwrap().clone();
    assert!(
        requests.iter().any(|(line, ok)| *ok
            && line.contains("scope=repository%3Atest%2Fbusybox%3Apull")
            && line.contains("service=ark-test-registry")),
        "ark asked the token service for a pull token with credentials: {requests:?}"
    );
}

/// A fresh store trusting `keys` (armored files) for `prefix`.
fn store_trusting(prefix: &str, keys: &[&Path]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for k in keys {
        let o = ark(
            dir.path(),
            &["trust", "--prefix", prefix, k.to_str().unwrap()],
            &[],
        );
        assert!(o.status.success(), "ark trust: {}", stderr(&o));
    }
    dir
}

#[test]
fn signed_image_is_verified_against_trusted_key() {
    let f = fixture_or_skip!();
    let sigdir = f.lookaside.to_str().unwrap();
    let image = format!("docker://{}/signed/busybox:v1", f.addr);

    // No key at all: refused before any traffic, saying how to trust one.
    let dir = tempfile::tempdir().unwrap();
    let o = fetch(dir.path(), &["--signature-dir", sigdir, &image], &[]);
    let name = format!("{}/signed/busybox", f.addr);
    assert_refused(
        &o,
        dir.path(),
        &[
            &format!("no key is trusted for {name}"),
            "ark trust --prefix",
        ],
    );

    // Trusted for the prefix (whole path components above the repository): accepted.
    let dir = store_trusting(&format!("{}/signed", f.addr), &[&f.signer_key]);
    let o = fetch(dir.path(), &["--signature-dir", sigdir, &image], &[]);
    assert_fetched(&o, &f.amd64_digest);
}

#[test]
fn signed_image_index_is_verified_then_resolved_to_a_platform() {
    let f = fixture_or_skip!();
    let dir = store_trusting(&format!("{}/signed", f.addr), &[&f.signer_key]);
    let image = format!("docker://{}/signed/multi:latest", f.addr);
    let o = fetch(
        dir.path(),
        &[
            "--signature-dir",
            f.lookaside.to_str().unwrap(),
            "--platform=linux/arm64",
            &image,
        ],
        &[],
    );
    assert_fetched(&o, &f.arm64_digest);
}

#[test]
fn signature_from_untrusted_key_is_refused() {
    let f = fixture_or_skip!();
    let dir = store_trusting(&format!("{}/signed", f.addr), &[&f.stranger_key]);
    let image = format!("docker://{}/signed/busybox:v1", f.addr);
    let o = fetch(
        dir.path(),
        &["--signature-dir", f.lookaside.to_str().unwrap(), &image],
        &[],
    );
    assert_refused(
        &o,
        dir.path(),
        &[&f.signer_fpr, "not trusted", "ark trust --prefix"],
    );
    // A key trusted for a sibling prefix does not count either.
    let dir = store_trusting(&format!("{}/signed-not", f.addr), &[&f.signer_key]);
    let o = fetch(
        dir.path(),
        &["--signature-dir", f.lookaside.to_str().unwrap(), &image],
        &[],
    );
    assert_refused(&o, dir.path(), &["no key is trusted"]);
}

#[test]
fn unsigned_image_is_refused_unless_insecure_image() {
    let f = fixture_or_skip!();
    let dir = store_trusting(&format!("{}/signed", f.addr), &[&f.signer_key]);
    let image = format!("docker://{}/signed/other:latest", f.addr);
    let sigdir = f.lookaside.to_str().unwrap();
    let o = fetch(dir.path(), &["--signature-dir", sigdir, &image], &[]);
    assert_refused(&o, dir.path(), &["is not signed", &f.other_digest]);
    let o = fetch(dir.path(), &["--insecure-options=image", &image], &[]);
    assert_fetched(&o, &f.other_digest);
}

#[test]
fn signature_naming_another_digest_or_tag_is_refused() {
    let f = fixture_or_skip!();
    let dir = store_trusting(&format!("{}/signed", f.addr), &[&f.signer_key]);
    // signed/busybox:v1's signature, planted as if it were signed/other's.
    let sigs = tempfile::tempdir().unwrap();
    let planted = sig_path(sigs.path(), "signed/other", &f.other_digest);
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::copy(
        sig_path(&f.lookaside, "signed/busybox", &f.amd64_digest),
        &planted,
    )
    .unwrap();
    let image = format!("docker://{}/signed/other:latest", f.addr);
    let o = fetch(
        dir.path(),
        &["--signature-dir", sigs.path().to_str().unwrap(), &image],
        &[],
    );
    assert_refused(
        &o,
        dir.path(),
        &[&format!(
            "signs manifest {:?}, not the fetched {}",
            f.amd64_digest, f.other_digest
        )],
    );
    // Same manifest under another tag: the signature names :v1, so :v2 is not vouched for.
    let image = format!("docker://{}/signed/busybox:v2", f.addr);
    let o = fetch(
        dir.path(),
        &["--signature-dir", f.lookaside.to_str().unwrap(), &image],
        &[],
    );
    assert_refused(&o, dir.path(), &["signed/busybox:v1", "not"]);
}

#[test]
fn plain_http_to_non_loopback_needs_insecure_option() {
    if let Err(why) = fixture() {
        skip!("{why}");
    }
    let Some(rec) = Recorder::start() else {
        skip!("this host has no non-loopback IPv4 address");
    };
    let image = format!("docker://{}/test/busybox:oci", rec.addr);
    let dir = tempfile::tempdir().unwrap();
    let o = fetch(
        dir.path(),
        &["--insecure-options=image", &image],
        &[("ARK_REGISTRY_TIMEOUT", "5")],
    );
    assert_refused(&o, dir.path(), &["https", "--insecure-options=http"]);
    let seen = rec.first_bytes.lock().unwrap().clone();
    assert!(!seen.is_empty(), "ark did try the registry");
    assert!(
        seen.iter().all(|b| b.first() == Some(&0x16)),
        "without --insecure-options=http only TLS handshakes reach a non-loopback registry: {seen:?}"
    );
    let o = fetch(
        dir.path(),
        &["--insecure-options=image,http", &image],
        &[("ARK_REGISTRY_TIMEOUT", "5")],
    );
    assert!(!o.status.success(), "the recorder serves no image");
    let seen = rec.first_bytes.lock().unwrap().clone();
    assert!(
        seen.iter().any(|b| b.starts_with(b"GET /v2/")),
        "with --insecure-options=http ark falls back to plain http: {seen:?}"
    );
}

#[test]
fn tls_registry_needs_a_trusted_certificate_or_insecure_tls() {
    let f = fixture_or_skip!();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(certs.path());
    let reg = Registry::start_tls(&f.storage, &cert, &key);
    let image = format!("docker://{}/test/busybox:oci", reg.addr);
    let dir = tempfile::tempdir().unwrap();
    let o = fetch(dir.path(), &["--insecure-options=image", &image], &[]);
    assert_refused(
        &o,
        dir.path(),
        &[
            "over https",
            "certificate not trusted",
            "--insecure-options=tls",
        ],
    );
    let o = fetch(dir.path(), &["--insecure-options=image,tls", &image], &[]);
    assert_fetched(&o, &f.oci_digest);
}

fn lying(lie: Lie) -> (FakeRegistry, tempfile::TempDir, Output, Duration) {
    let fake = FakeRegistry::start(lie);
    let dir = tempfile::tempdir().unwrap();
    let image = if lie == Lie::WrongManifest {
        format!("docker://{}/test/lies@{}", fake.addr, fake.manifest_digest)
    } else {
        format!("docker://{}/test/lies:latest", fake.addr)
    };
    let start = Instant::now();
    let o = fetch(
        dir.path(),
        &["--insecure-options=image", &image],
        &[("ARK_REGISTRY_TIMEOUT", "1")],
    );
    (fake, dir, o, start.elapsed())
}

#[test]
fn registry_serving_a_blob_with_the_wrong_digest_is_refused() {
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    let (fake, dir, o, _) = lying(Lie::WrongDigest);
    assert_refused(&o, dir.path(), &["digest", "refusing"]);
    assert!(fake
        .hits
        .lock()
        .unwrap()
        .iter()
        .any(|h| h.contains("/blobs/")));
}

#[test]
fn registry_serving_an_oversized_blob_is_refused() {
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    let (_fake, dir, o, _) = lying(Lie::Oversized);
    assert_refused(&o, dir.path(), &["more than the declared"]);
}

#[test]
fn registry_serving_another_manifest_for_a_digest_is_refused() {
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    let (_fake, dir, o, _) = lying(Lie::WrongManifest);
    assert_refused(&o, dir.path(), &["not the requested", "refusing"]);
}

#[test]
fn registry_serving_a_manifest_that_is_not_json_is_refused() {
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    let (_fake, dir, o, _) = lying(Lie::InvalidManifestJson);
    assert_refused(&o, dir.path(), &["manifest is not valid JSON"]);
}

#[test]
fn manifest_naming_an_unknown_layer_media_type_is_refused() {
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    let (fake, dir, o, _) = lying(Lie::UnknownLayerType);
    assert_refused(
        &o,
        dir.path(),
        &["unknown media type", "application/x-evil-layer"],
    );
    // Refused from the manifest alone: no blob was asked for.
    assert!(!fake
        .hits
        .lock()
        .unwrap()
        .iter()
        .any(|h| h.contains("/blobs/")));
}

/// A store directory for a fetch that must hit the free-space reserve: a 64 MiB tmpfs as root,
/// else a temp dir when its filesystem is smaller than `needed` (Err says why neither works).
fn small_store(needed: u64) -> Result<(tempfile::TempDir, PathBuf, Option<Tmpfs>), String> {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    std::fs::create_dir(&store).unwrap();
    if ark_tests::is_root() {
        let mount = Tmpfs::mount(&store, "64m")?;
        return Ok((tmp, store, Some(mount)));
    }
    if free_and_total(&store).0 >= needed {
        return Err("not root (no small tmpfs) and the temp dir's filesystem has room".into());
    }
    Ok((tmp, store, None))
}

/// A registry declaring a layer bigger than the store's filesystem can take above ark's reserve
/// is refused from the manifest alone: one line naming the sizes, fast, no blob asked for, the
/// store as it was.
#[test]
fn registry_declaring_a_60_gib_layer_is_refused_before_any_download() {
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    let (_tmp, store, _mount) = match small_store(60 << 30) {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let (free_before, _) = free_and_total(&store);
    let fake = FakeRegistry::start(Lie::HugeLayer);
    let start = Instant::now();
    let o = fetch(
        &store,
        &[
            "--insecure-options=image",
            &format!("docker://{}/test/lies:latest", fake.addr),
        ],
        &[("ARK_REGISTRY_TIMEOUT", "5")],
    );
    let took = start.elapsed();
    assert_refused(&o, &store, &["declare 60.0 GiB", "reserve"]);
    assert!(took < Duration::from_secs(20), "refused after {took:?}");
    let hits = fake.hits.lock().unwrap().clone();
    assert!(
        !hits.iter().any(|h| h.contains("/blobs/")),
        "refused from the manifest, before any blob: {hits:?}"
    );
    let (free_after, _) = free_and_total(&store);
    assert!(
        free_after + (1 << 20) >= free_before,
        "the refused fetch used space: {free_before} -> {free_after}"
    );
}

/// Declared sizes fit, but the store's filesystem fills while the layer streams (another
/// writer): the fetch stops at ark's reserve with one line saying so, never at ENOSPC, and
/// leaves nothing behind.
#[test]
fn a_fetch_stops_at_the_reserve_when_the_store_filesystem_fills_during_it() {
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    if !ark_tests::is_root() {
        skip!("mounting a small tmpfs for the store needs root");
    }
    let (_tmp, store, _mount) = match small_store(u64::MAX) {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let fake = FakeRegistry::start(Lie::PauseMidBlob);
    let child = std::process::Command::new(ark_tests::ark_bin())
        .arg("--dir")
        .arg(&store)
        .args([
            "fetch",
            "--insecure-options=image",
            &format!("docker://{}/test/lies:latest", fake.addr),
        ])
        .env("ARK_REGISTRY_TIMEOUT", "60")
        .env_remove("ARK_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running ark");
    let half_sent = fake.pause.wait_for(1, Duration::from_secs(60));
    // Let ark write what it has, then fill the filesystem to 4 MiB above the reserve
    // (min(1 GiB, 5%) of 64 MiB).
    std::thread::sleep(Duration::from_millis(500));
    let (free, total) = free_and_total(&store);
    let reserve = total / 20;
    let filler = free.saturating_sub(reserve + (4 << 20));
    if half_sent {
        std::fs::write(
            store.join("filler"),
            vec![1u8; usize::try_from(filler).expect("u64 fits in usize on x86_64")],
        )
        .unwrap();
    }
    // Watch the filesystem while ark goes on.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut min = u64::MAX;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                min = min.min(free_and_total(&store).0);
                std::thread::sleep(Duration::from_micros(200));
            }
            min
        })
    };
    fake.pause.open(2);
    let o = child.wait_with_output().expect("waiting for ark");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let min_free = watcher.join().unwrap();
    assert!(
        half_sent,
        "the registry never sent half the layer: {}",
        stderr(&o)
    );
    assert_refused(&o, &store, &["nearly full", "reserve"]);
    assert!(
        min_free >= reserve / 2,
        "the store's filesystem went down to {min_free} bytes free (reserve {reserve})"
    );
    std::fs::remove_file(store.join("filler")).unwrap();
}

/// Strings from a registry's reply reach the error line escaped: one line, no raw control byte.
#[test]
fn registry_supplied_strings_in_errors_are_escaped() {
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    let (_fake, dir, o, _) = lying(Lie::HostileIndex);
    assert_refused(
        &o,
        dir.path(),
        &[r#"it has: "\u{1b}[2J\r\nark: fake line/amd64""#],
    );
    let body = o.stderr.strip_suffix(b"\n").unwrap_or(&o.stderr);
    assert!(
        !body.iter().any(|b| b.is_ascii_control()),
        "raw control bytes in: {:?}",
        stderr(&o)
    );
}

#[test]
fn blobs_behind_redirects_are_followed_and_verified() {
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    let (fake, _dir, o, _) = lying(Lie::RedirectBlobs);
    assert_fetched(&o, &fake.manifest_digest);
    let hits = fake.hits.lock().unwrap().clone();
    assert!(
        hits.iter().any(|h| h.starts_with("/cdn/sha256:")),
        "{hits:?}"
    );
}

#[test]
fn stalling_registry_times_out() {
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    for lie in [Lie::StallAtStart, Lie::StallMidBlob] {
        let (_fake, dir, o, took) = lying(lie);
        assert_refused(&o, dir.path(), &["stalled", "1s"]);
        // A generous bound: the point is that ark gives up instead of hanging.
        assert!(
            took < Duration::from_secs(60),
            "{lie:?}: gave up after {took:?}"
        );
    }
}

#[test]
fn fetch_as_root_runs_network_and_verification_unprivileged() {
    let f = fixture_or_skip!();
    if !ark_tests::is_root() {
        skip!("privilege separation applies when ark runs as root");
    }
    let dir = store_trusting(&format!("{}/signed", f.addr), &[&f.signer_key]);
    let image = format!("docker://{}/signed/busybox:v1", f.addr);
    let o = fetch(
        dir.path(),
        &[
            "--debug",
            "--signature-dir",
            f.lookaside.to_str().unwrap(),
            &image,
        ],
        &[("ARK_LOG", "ark=debug")],
    );
    assert_fetched(&o, &f.amd64_digest);
    let err = stderr(&o);
    assert!(
        err.contains(
            "registry fetch child: uid=65534/65534/65534 gid=65534/65534/65534 groups=[] no_new_privs=1 \
             effective=[] permitted=[] inheritable=[] ambient=[] bounding=[] seccomp=2"
        ),
        "the fetch child reports an unprivileged identity: {err}"
    );
    // The signature was checked in that child (its log line comes from the same process).
    assert!(
        err.lines().any(|l| l.contains("signature of")
            && l.contains("verified with key")
            && l.contains("by uid 65534")),
        "the signature was verified by the unprivileged child: {err}"
    );
    assert_exported_manifest(dir.path(), &f.amd64_digest);
    let _ = &f.dir;
}

/// (pid, state) of the processes whose parent is `ppid`.
fn children_of(ppid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(ppid) {
            out.push((pid, state));
        }
    }
    out
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

#[test]
fn kill_9_during_a_fetch_takes_the_child_along_and_gc_reclaims_the_rest() {
    if !ark_tests::is_root() {
        skip!("the unprivileged fetch child exists only when ark runs as root");
    }
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    let fake = FakeRegistry::start(Lie::StallMidBlob);
    let dir = tempfile::tempdir().unwrap();
    let mut ark_proc = std::process::Command::new(ark_tests::ark_bin())
        .arg("--dir")
        .arg(dir.path())
        .args(["--insecure-options=image", "fetch"])
        .arg(format!("docker://{}/test/lies:latest", fake.addr))
        .env("ARK_REGISTRY_TIMEOUT", "120")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the layer is half sent: the fetch is mid-blob.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake
        .hits
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with("/v2/test/lies/blobs/"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "fetch never reached the layer");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kids = children_of(ark_proc.id());
    assert_eq!(kids.len(), 1, "one fetch child: {kids:?}");
    let kid = kids[0].0;
    assert_eq!(uid_of(kid), Some(65534), "the child runs as nobody");

    ark_proc.kill().unwrap(); // SIGKILL
    ark_proc.wait().unwrap();
    // PDEATHSIG: the child dies with its parent (a zombie if nobody reaps it here).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{kid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().chars().next())
            })
            .flatten();
        if matches!(state, None | Some('Z') | Some('X')) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fetch child {kid} outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Nothing visible; the staging left behind is garbage that `ark image gc` reclaims.
    let o = ark(dir.path(), &["image", "list", "--format", "json"], &[]);
    assert_eq!(stdout(&o), "[]");
    let o = ark(dir.path(), &["image", "gc"], &[]);
    assert!(o.status.success(), "gc: {}", stderr(&o));
    assert_store_empty(dir.path());
}

#[test]
fn layers_the_store_has_are_not_downloaded_again() {
    if let Some(why) = missing_tool(&["sha256sum"]) {
        skip!("{why}");
    }
    use ark_tests::images::{tar_bytes, Entry, LayoutBuilder};
    let fake = FakeRegistry::start(Lie::RedirectBlobs);
    let image = format!("docker://{}/test/lies:latest", fake.addr);
    // The fake's layer (see FakeRegistry::start), in another image imported from a layout.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let layer = tar_bytes(&[Entry::file("data", &data)]);
    let layer_digest = sha256_bytes(&layer);
    let blob_hits = |layer_only: bool| -> Vec<String> {
        fake.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.starts_with("/cdn/"))
            .filter(|h| !layer_only || h.ends_with(&layer_digest))
            .cloned()
            .collect()
    };

    // A store without the layer downloads it (so the fake does serve it).
    let fresh = tempfile::tempdir().unwrap();
    assert_fetched(
        &fetch(fresh.path(), &["--insecure-options=image", &image], &[]),
        &fake.manifest_digest,
    );
    assert_eq!(blob_hits(true).len(), 1, "{:?}", blob_hits(false));
    fake.hits.lock().unwrap().clear();

    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let other = LayoutBuilder {
        uncompressed: true,
        ..LayoutBuilder::new(vec![layer])
    }
    .write(&layout, "other");
    assert_ne!(other, fake.manifest_digest, "a different image");
    let store = dir.path().join("store");
    let o = fetch(
        &store,
        &[
            "--insecure-options=image",
            &format!("oci-layout:{}:other", layout.display()),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let o = fetch(&store, &["--insecure-options=image", &image], &[]);
    assert_fetched(&o, &fake.manifest_digest);
    // Only the config came over; the layer was taken from the store.
    assert!(blob_hits(true).is_empty(), "{:?}", blob_hits(false));
    assert_eq!(blob_hits(false).len(), 1, "{:?}", blob_hits(false));
    // And the image is whole: its render checks the layer against the config's diff_id.
    let o = ark(&store, &["image", "render", &fake.manifest_digest], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rootfs = stdout(&o);
    assert_eq!(
        std::fs::read(Path::new(rootfs.trim()).join("data")).unwrap(),
        data
    );
}
