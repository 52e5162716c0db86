//! Helpers for registry/trust integration tests: Debian's `docker-registry` on loopback ports,
//! images built with `umoci` from busybox-static and pushed with `skopeo`, keys and signatures
//! made by real `gpg`, a bearer-token service, and fake registries that lie or stall.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Tools these tests drive; the first missing one is reported so the test can skip visibly.
pub const TOOLS: &[&str] = &[
    "docker-registry",
    "skopeo",
    "umoci",
    "gpg",
    "openssl",
    "sha256sum",
];

/// The first of `tools` not on PATH (or busybox-static's /bin/busybox missing), if any.
pub fn missing_tool(tools: &[&str]) -> Option<String> {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("{t} not installed (.ci/setup installs it)"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox missing (package busybox-static)".into());
    }
    None
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// `sha256:<hex>` of a file's contents.
pub fn sha256_file(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string();
    format!("sha256:{hex}")
}

/// `sha256:<hex>` of bytes.
pub fn sha256_bytes(data: &[u8]) -> String {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), data).expect("write temp file");
    sha256_file(f.path())
}

/// Standard (`url = false`) or URL-safe unpadded base64.
pub fn base64(data: &[u8], url: bool) -> String {
    let alphabet: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
        if !url {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

/// How a test registry authenticates.
#[derive(Debug)]
pub enum RegistryAuth {
    None,
    /// htpasswd basic auth with this user and bcrypt hash.
    Htpasswd {
        user: String,
        bcrypt: String,
    },
    /// Bearer tokens from `realm`, signed by the key whose certificate is `cert`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        cert: PathBuf,
    },
}

/// A `docker-registry` process on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _config: tempfile::TempDir,
}

impl Registry {
    /// Serves `storage` (filesystem driver; several registries may share one) over plain http.
    pub fn start(storage: &Path, auth: RegistryAuth) -> Registry {
        Self::start_with(storage, auth, None)
    }

    /// Serves `storage` over https with this certificate and key (PEM files).
    pub fn start_tls(storage: &Path, cert: &Path, key: &Path) -> Registry {
        Self::start_with(storage, RegistryAuth::None, Some((cert, key)))
    }

    fn start_with(storage: &Path, auth: RegistryAuth, tls: Option<(&Path, &Path)>) -> Registry {
        // The port is free when picked but may be taken before the registry binds it: retry.
        for _ in 0..5 {
            match Self::try_start(storage, &auth, tls) {
                Ok(reg) => return reg,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("docker-registry exited: {log}"),
            }
        }
        panic!("docker-registry found no free port");
    }

    fn try_start(
        storage: &Path,
        auth: &RegistryAuth,
        tls: Option<(&Path, &Path)>,
    ) -> Result<Registry, String> {
        let config = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth_yaml = match auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd { user, bcrypt } => {
                let path = config.path().join("htpasswd");
                std::fs::write(&path, format!("{user}:{bcrypt}\n")).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: ark-test\n    path: {}\n",
                    path.display()
                )
            }
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                cert,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                cert.display()
            ),
        };
        let tls_yaml = match tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let yml = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{tls_yaml}{auth_yaml}",
            storage.display()
        );
        let path = config.path().join("config.yml");
        std::fs::write(&path, yml).expect("write registry config");
        let log = std::fs::File::create(config.path().join("registry.log")).expect("log file");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl only. The registry dies with the thread that started it, so one kept
        // by a fixture thread that lives as long as the test process never outlives it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting docker-registry");
        let mut reg = Registry {
            child,
            addr,
            _config: config,
        };
        reg.wait_ready()?;
        Ok(reg)
    }

    /// Err(its log) if the registry exited instead of coming up.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self._config.path().join("registry.log"))
                    .unwrap_or_default();
                return Err(format!("({status}) {log}"));
            }
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("HTTP/") {
                    return Ok(());
                }
            }
            assert!(Instant::now() < deadline, "docker-registry did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 and its key: (cert.pem, key.pem) in `dir`.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("tls-cert.pem");
    let key = dir.join("tls-key.pem");
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

/// Builds a one-layer busybox image into the OCI layout `layout` under `tag`: `/bin/busybox`,
/// `/bin/sh`, and `/marker` containing `marker` (so images differ). Returns the manifest digest.
pub fn build_image(layout: &Path, tag: &str, arch: &str, marker: &str) -> String {
    if !layout.join("oci-layout").exists() {
        run(Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(layout));
    }
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]));
    let work = tempfile::tempdir().expect("temp dir");
    let bundle = work.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir bin");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("symlink sh");
    std::fs::write(rootfs.join("marker"), marker).expect("write marker");
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--architecture",
        arch,
        "--os",
        "linux",
    ]));
    layout_digest(layout, tag)
}

/// The manifest digest `tag` names in an OCI layout's index.json.
pub fn layout_digest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .rev()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("tag {tag} not in {}", layout.display()))
        .to_string()
}

/// Adds an image index naming `entries` (tag, architecture) of `layout` as `index_tag`.
/// Returns the index digest.
pub fn add_index(layout: &Path, entries: &[(&str, &str)], index_tag: &str) -> String {
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index.json")).expect("JSON");
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(tag, arch)| {
            let digest = layout_digest(layout, tag);
            let blob = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
            let size = std::fs::metadata(&blob).expect("manifest blob").len();
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": size,
                "platform": {"architecture": arch, "os": "linux"},
            })
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .expect("serialize index");
    let digest = sha256_bytes(&body);
    std::fs::write(
        layout.join("blobs/sha256").join(&digest["sha256:".len()..]),
        &body,
    )
    .expect("write index blob");
    index["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": body.len(),
            "annotations": {"org.opencontainers.image.ref.name": index_tag},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("JSON")).expect("write index");
    digest
}

/// `skopeo copy` to a plain-http registry, with `extra` options (e.g. `--format`, `--sign-by`).
/// `env` adds environment variables (GNUPGHOME for signing).
pub fn skopeo_copy(src: &str, dest: &str, extra: &[&str], env: &[(&str, &Path)]) {
    let mut cmd = Command::new("skopeo");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.arg("--insecure-policy");
    let (global, copy): (Vec<&str>, Vec<&str>) =
        extra.iter().partition(|a| a.starts_with("--registries.d"));
    cmd.args(global)
        .arg("copy")
        .arg("--dest-tls-verify=false")
        .args(copy)
        .arg(src)
        .arg(dest);
    run(&mut cmd);
}

/// The sha256 of the manifest a registry serves for `reference` (`HOST/REPO:TAG`).
pub fn remote_digest(reference: &str) -> String {
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    sha256_bytes(&out.stdout)
}

/// The manifest (or index) a registry serves for `reference` (`HOST/REPO:TAG`), parsed.
pub fn remote_manifest(reference: &str) -> serde_json::Value {
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    serde_json::from_slice(&out.stdout).expect("manifest JSON")
}

/// A throw-away GnuPG home with real keys.
#[derive(Debug)]
pub struct Gpg {
    pub home: tempfile::TempDir,
}

impl Drop for Gpg {
    fn drop(&mut self) {
        self.stop_agent();
    }
}

impl Default for Gpg {
    fn default() -> Self {
        Self::new()
    }
}

impl Gpg {
    pub fn new() -> Gpg {
        let home = tempfile::tempdir().expect("temp GNUPGHOME");
        std::fs::set_permissions(
            home.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod GNUPGHOME");
        Gpg { home }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--quiet",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c
    }

    /// Makes a signing key (`algo`: rsa3072, ed25519, ...) and returns its fingerprint.
    pub fn gen_key(&self, uid: &str, algo: &str) -> String {
        run(self
            .cmd()
            .args(["--quick-gen-key", uid, algo, "sign", "never"]));
        let out = run(self.cmd().args(["--with-colons", "--list-keys", uid]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_string())
            })
            .expect("fingerprint in gpg output")
    }

    /// Exports the public key, ASCII-armored or binary.
    pub fn export(&self, fpr: &str, armored: bool, dest: &Path) {
        let mut c = self.cmd();
        if armored {
            c.arg("--armor");
        }
        let out = run(c.args(["--export", fpr]));
        assert!(!out.stdout.is_empty(), "gpg exported nothing for {fpr}");
        std::fs::write(dest, out.stdout).expect("write key");
    }

    /// Stops the gpg-agent this home started (it would outlive the test otherwise).
    pub fn stop_agent(&self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .output();
    }

    /// `gpg --armor --detach-sign` of `file` into `sig`.
    pub fn detach_sign(&self, fpr: &str, file: &Path, sig: &Path) {
        run(self
            .cmd()
            .args(["--armor", "--local-user", fpr, "--output"])
            .arg(sig)
            .arg("--detach-sign")
            .arg(file));
    }
}

/// A registries.d directory telling skopeo to write simple-signing signatures to `lookaside`
/// (`sigstore-staging`, the key skopeo 1.9's containers-image reads; `lookaside-staging` is the
/// newer spelling of the same thing).
pub fn registries_d(dir: &Path, lookaside: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir registries.d");
    std::fs::write(
        dir.join("ark-test.yaml"),
        format!(
            "default-docker:\n  sigstore-staging: file://{}\n",
            lookaside.display()
        ),
    )
    .expect("write registries.d config");
}

/// Runs `ark --dir DIR ARGS` with extra environment.
pub fn ark(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(crate::ark_bin());
    cmd.arg("--dir").arg(dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running ark")
}

/// A loopback bearer-token service for `docker-registry`'s `auth: token`: it answers
/// `GET /token?service=..&scope=..` from `user:password` (basic auth) with an RS256 JWT signed
/// by a fresh key (via openssl) whose self-signed certificate the registry trusts.
#[derive(Debug)]
pub struct TokenServer {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub cert: PathBuf,
    /// Every request line (and whether it carried valid credentials).
    pub requests: Arc<Mutex<Vec<(String, bool)>>>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    pub fn start(user: &str, password: &str) -> TokenServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=ark-test-token-issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = run(Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert))
        .stdout;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let service = "ark-test-registry".to_string();
        let issuer = "ark-test-issuer".to_string();
        let expected_auth = format!(
            "Basic {}",
            base64(format!("{user}:{password}").as_bytes(), false)
        );
        {
            let requests = requests.clone();
            let (service, issuer, key) = (service.clone(), issuer.clone(), key.clone());
            let x5c = base64(&der, false);
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = serve_token(
                        stream,
                        &expected_auth,
                        &service,
                        &issuer,
                        &key,
                        &x5c,
                        &requests,
                    );
                }
            });
        }
        TokenServer {
            realm: format!("http://{addr}/token"),
            service,
            issuer,
            cert,
            requests,
            _dir: dir,
        }
    }
}

/// Reads an HTTP request head: (request line, headers lower-cased).
fn read_head(stream: &TcpStream) -> std::io::Result<(String, BTreeMap<String, String>)> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok((line.trim().to_string(), headers))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let v = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?');
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[allow(clippy::too_many_arguments)]
fn serve_token(
    mut stream: TcpStream,
    expected_auth: &str,
    service: &str,
    issuer: &str,
    key: &Path,
    x5c: &str,
    requests: &Mutex<Vec<(String, bool)>>,
) -> std::io::Result<()> {
    let (line, headers) = read_head(&stream)?;
    let authorized = headers.get("authorization").map(String::as_str) == Some(expected_auth);
    requests.lock().unwrap().push((line.clone(), authorized));
    if !authorized {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#;
        return write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut access = Vec::new();
    for pair in query.split('&') {
        if let Some(("scope", v)) = pair.split_once('=') {
            let v = percent_decode(v);
            // repository:NAME:ACTIONS
            let mut parts = v.splitn(3, ':');
            if let (Some(t), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
            {
                access.push(serde_json::json!({
                    "type": t, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }));
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": issuer, "sub": "ark-test", "aud": service,
        "exp": now + 600, "nbf": now - 60, "iat": now - 60,
        "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        base64(header.to_string().as_bytes(), true),
        base64(claims.to_string().as_bytes(), true)
    );
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    openssl
        .stdin
        .take()
        .expect("stdin")
        .write_all(signing_input.as_bytes())?;
    let sig = openssl.wait_with_output()?.stdout;
    let token = format!("{signing_input}.{}", base64(&sig, true));
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 600}).to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// How a [`FakeRegistry`] misbehaves when serving the layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Serves different bytes (of the declared size) than the layer digest names.
    WrongDigest,
    /// Serves more bytes than the manifest declares (and its Content-Length says so).
    Oversized,
    /// Sends half of the layer, then nothing, holding the connection open.
    StallMidBlob,
    /// Accepts connections but never answers anything.
    StallAtStart,
    /// Serves, for a by-digest request, a manifest other than the one asked for.
    WrongManifest,
    /// Serves a manifest that is not JSON.
    InvalidManifestJson,
    /// Serves a manifest whose layer has a media type no runtime knows.
    UnknownLayerType,
    /// Not a lie: serves blobs through a 307 redirect, as registries backed by a CDN do.
    RedirectBlobs,
    /// Declares a 60 GiB layer (and would serve the small one).
    HugeLayer,
    /// Serves, for the tag, an image index whose only platform's `os` is a screen clear and a
    /// fake line of ark's output.
    HostileIndex,
    /// Not a lie: serves a 40 MiB layer, stopping half way: it opens [`FakeRegistry::pause`]
    /// at step 1 and goes on once the test opens step 2.
    PauseMidBlob,
}

/// A tiny registry in the test process serving one image (`test/lies:latest`) with one lie.
#[derive(Debug)]
pub struct FakeRegistry {
    pub addr: String,
    /// The manifest digest of the image it pretends to have.
    pub manifest_digest: String,
    /// The paths it was asked for.
    pub hits: Arc<Mutex<Vec<String>>>,
    /// Where a [`Lie::PauseMidBlob`] registry waits half way through the layer.
    pub pause: Arc<Gate>,
}

/// Steps two threads agree on: one opens a step, the other waits (bounded) for it.
#[derive(Debug, Default)]
pub struct Gate {
    step: Mutex<u32>,
    moved: Condvar,
}

impl Gate {
    pub fn open(&self, step: u32) {
        *self.step.lock().unwrap() = step;
        self.moved.notify_all();
    }

    /// Whether `step` was opened within `timeout`.
    pub fn wait_for(&self, step: u32, timeout: Duration) -> bool {
        let guard = self.step.lock().unwrap();
        let (guard, _) = self
            .moved
            .wait_timeout_while(guard, timeout, |s| *s < step)
            .unwrap();
        *guard >= step
    }
}

impl FakeRegistry {
    pub fn start(lie: Lie) -> FakeRegistry {
        // A real (uncompressed) layer, so an honest fake serves an image ark can import.
        let len = if lie == Lie::PauseMidBlob {
            40 << 20
        } else {
            200_000u32
        };
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let layer = crate::images::tar_bytes(&[crate::images::Entry::file("data", &data)]);
        let layer_digest = sha256_bytes(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/data"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))
        .expect("JSON");
        let config_digest = sha256_bytes(&config);
        let layer_type = if lie == Lie::UnknownLayerType {
            "application/x-evil-layer"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        let manifest = if lie == Lie::InvalidManifestJson {
            br#"{"schemaVersion": 2, "config": "#.to_vec()
        } else if lie == Lie::HostileIndex {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{}", "0".repeat(64)), "size": 100,
                    "platform": {"os": "\x1b[2J\r\nark: fake line", "architecture": "amd64"},
                }],
            }))
            .expect("JSON")
        } else {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": config.len()},
                "layers": [{"mediaType": layer_type, "digest": layer_digest,
                            "size": if lie == Lie::HugeLayer { 60u64 << 30 } else { layer.len() as u64 }}],
            }))
            .expect("JSON")
        };
        let manifest_digest = sha256_bytes(&manifest);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake registry");
        let addr = listener.local_addr().expect("addr").to_string();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let pause = Arc::new(Gate::default());
        let state = Arc::new(FakeState {
            pause: pause.clone(),
            lie,
            manifest,
            manifest_digest: manifest_digest.clone(),
            config,
            config_digest,
            layer,
            layer_digest,
            hits: hits.clone(),
        });
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = state.clone();
                std::thread::spawn(move || {
                    let _ = state.serve(stream);
                });
            }
        });
        FakeRegistry {
            addr,
            manifest_digest,
            hits,
            pause,
        }
    }
}

struct FakeState {
    lie: Lie,
    manifest: Vec<u8>,
    manifest_digest: String,
    config: Vec<u8>,
    config_digest: String,
    layer: Vec<u8>,
    layer_digest: String,
    hits: Arc<Mutex<Vec<String>>>,
    pause: Arc<Gate>,
}

impl FakeState {
    fn serve(&self, mut stream: TcpStream) -> std::io::Result<()> {
        loop {
            let (line, _) = read_head(&stream)?;
            if line.is_empty() {
                return Ok(());
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            self.hits.lock().unwrap().push(path.clone());
            if self.lie == Lie::StallAtStart {
                std::thread::sleep(Duration::from_secs(3600));
            }
            let (status, ctype, body): (&str, &str, Vec<u8>) = if path == "/v2/" {
                ("200 OK", "application/json", b"{}".to_vec())
            } else if let Some(r) = path.strip_prefix("/v2/test/lies/manifests/") {
                if r == "latest" || r == self.manifest_digest {
                    let mut m = self.manifest.clone();
                    if self.lie == Lie::WrongManifest && r.starts_with("sha256:") {
                        m.extend_from_slice(b"\n");
                    }
                    ("200 OK", "application/vnd.oci.image.manifest.v1+json", m)
                } else {
                    ("404 Not Found", "application/json", b"{}".to_vec())
                }
            } else if let Some(blob) = path
                .strip_prefix("/v2/test/lies/blobs/")
                .filter(|_| self.lie == Lie::RedirectBlobs)
            {
                write!(
                    stream,
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: /cdn/{blob}\r\nContent-Length: 0\r\n\r\n"
                )?;
                continue;
            } else if let Some(blob) = path.strip_prefix("/cdn/") {
                if blob == self.config_digest {
                    ("200 OK", "application/octet-stream", self.config.clone())
                } else if blob == self.layer_digest {
                    ("200 OK", "application/octet-stream", self.layer.clone())
                } else {
                    ("404 Not Found", "application/json", b"{}".to_vec())
                }
            } else if path == format!("/v2/test/lies/blobs/{}", self.config_digest) {
                ("200 OK", "application/octet-stream", self.config.clone())
            } else if path == format!("/v2/test/lies/blobs/{}", self.layer_digest) {
                let mut layer = self.layer.clone();
                match self.lie {
                    Lie::WrongDigest => layer[1000] ^= 0xff,
                    Lie::Oversized => layer.extend_from_slice(&[0u8; 4096]),
                    Lie::PauseMidBlob => {
                        write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                            layer.len()
                        )?;
                        let half = layer.len() / 2;
                        stream.write_all(&layer[..half])?;
                        stream.flush()?;
                        self.pause.open(1);
                        self.pause.wait_for(2, Duration::from_secs(120));
                        stream.write_all(&layer[half..])?;
                        stream.flush()?;
                        continue;
                    }
                    Lie::StallMidBlob => {
                        write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                            layer.len()
                        )?;
                        stream.write_all(&layer[..layer.len() / 2])?;
                        stream.flush()?;
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                    _ => {}
                }
                ("200 OK", "application/octet-stream", layer)
            } else {
                ("404 Not Found", "application/json", b"{}".to_vec())
            };
            write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)?;
            stream.flush()?;
        }
    }
}

/// A listener on a non-loopback address of this host that records the first bytes of every
/// connection, and answers a plain-http `GET /v2/` (then 404s), to see what a client sends.
#[derive(Debug)]
pub struct Recorder {
    pub addr: String,
    pub first_bytes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    /// None if the host has no non-loopback IPv4 address.
    pub fn start() -> Option<Recorder> {
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        // No packet is sent: connecting a UDP socket only picks the route's source address.
        probe.connect("192.0.2.255:9").ok()?;
        let ip = probe.local_addr().ok()?.ip();
        if ip.is_loopback() || ip.is_unspecified() {
            return None;
        }
        let listener = TcpListener::bind((ip, 0)).ok()?;
        let addr = listener.local_addr().ok()?.to_string();
        let first_bytes = Arc::new(Mutex::new(Vec::new()));
        let seen = first_bytes.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 16];
                let n = stream.read(&mut buf).unwrap_or(0);
                seen.lock().unwrap().push(buf[..n].to_vec());
                if buf[..n].starts_with(b"GET /v2/ ") {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                }
                // Anything else (a TLS ClientHello) gets the connection closed.
            }
        });
        Some(Recorder { addr, first_bytes })
    }
}

/// A small tmpfs mounted for a test (a store whose filesystem fills quickly), unmounted when
/// dropped.
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`64m`) on the existing directory `dir`; Err says why not.
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .map_err(|e| format!("cannot mount a tmpfs: {e}"))?;
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Free bytes (for unprivileged users) and total bytes of the filesystem holding `path`.
pub fn free_and_total(path: &Path) -> (u64, u64) {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    (
        st.blocks_available() * st.fragment_size(),
        st.blocks() * st.fragment_size(),
    )
}
