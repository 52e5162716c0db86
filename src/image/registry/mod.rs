//! The `docker://` fetcher: Docker Registry HTTP API v2 into an OCI image layout.
//!
//! [`fetch`] resolves `HOST[:PORT]/REPO[:TAG|@DIGEST]` (an image index or manifest list to one
//! platform), verifies its simple-signing signature unless told not to, and writes `oci-layout`,
//! `index.json` and `blobs/sha256/*` into the caller's empty directory, checking every blob's size
//! and digest while it streams. As root, the network and verification work runs in an
//! unprivileged child ([`crate::image::privsep`]) and only reaches the directory through this
//! process, which checks every blob again.
//!
//! Settings from the environment: `ARK_REGISTRY_AUTH=USER:PASSWORD` (credentials for basic
//! auth or for the bearer token service, for every registry), `ARK_REGISTRY_TIMEOUT=SECONDS`
//! (how long a registry may stay silent; default 30). Without `ARK_REGISTRY_AUTH`, credentials
//! for the image's registry host come from the first auth file that has them, in the format
//! `podman login` / `skopeo login` / `docker login` write (`{"auths": {"HOST[:PORT]": {"auth":
//! base64("USER:PASSWORD")}}}`): `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.docker/config.json`.

pub mod client;
pub mod request;
pub mod sink;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::image::limits::{human, StoreSpace};
use crate::trust::keys::KeySet;
use crate::trust::signing::{self, DockerReference};
use client::{Client, ClientSettings};
pub use request::{Fetched, PullRequest};
pub use sink::{DirSink, LayoutSink};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];
/// Refuse absurd declared sizes before allocating anything for them.
const MAX_BLOB_SIZE: u64 = 64 << 30;

/// How to fetch. Build with [`FetchOptions::new`] to pick up the environment's settings.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Allow plain http to non-loopback registries (`--insecure-options=http`).
    pub insecure_http: bool,
    /// Accept any TLS certificate (`--insecure-options=tls`).
    pub insecure_tls: bool,
    /// Skip signature verification (`--insecure-options=image`).
    pub insecure_image: bool,
    /// `os/arch[/variant]` to pick from an image index; None = linux/amd64.
    pub platform: Option<String>,
    /// Lookaside directory of simple-signing signatures (`REPO@sha256=HEX/signature-N`).
    pub signature_dir: Option<PathBuf>,
    /// The key store (`<ark dir>/trust`).
    pub trust_dir: PathBuf,
    /// How long the registry may stay silent (connect, each read).
    pub timeout: Duration,
    /// User and password for basic auth or the token service.
    pub credentials: Option<(String, String)>,
    /// Progress bars on stderr (drawn only if it is a terminal).
    pub progress: bool,
    /// Digests (`sha256:HEX`) of blobs the caller's store already holds, verified: layers among
    /// them are not downloaded (the layout written then lacks them; the importer takes them
    /// from the store). Configs and manifests are always fetched, as they are checked here.
    pub have_blobs: BTreeSet<String>,
}

impl FetchOptions {
    /// Defaults: everything checked, linux/amd64, `ARK_REGISTRY_TIMEOUT` / `ARK_REGISTRY_AUTH`.
    pub fn new(trust_dir: PathBuf) -> Result<Self> {
        Ok(FetchOptions {
            insecure_http: false,
            insecure_tls: false,
            insecure_image: false,
            platform: None,
            signature_dir: None,
            trust_dir,
            timeout: timeout_from_env()?,
            credentials: credentials_from_env()?,
            progress: true,
            have_blobs: BTreeSet::new(),
        })
    }
}

/// `ARK_REGISTRY_TIMEOUT` in seconds (fractions allowed), default 30.
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var("ARK_REGISTRY_TIMEOUT") {
        Ok(v) => {
            let secs: f64 = v
                .parse()
                .ok()
                .filter(|s: &f64| *s > 0.0 && s.is_finite())
                .ok_or_else(|| anyhow!("ARK_REGISTRY_TIMEOUT={v:?}: expected seconds > 0"))?;
            Ok(Duration::from_secs_f64(secs))
        }
        Err(_) => Ok(Duration::from_secs(30)),
    }
}

/// `ARK_REGISTRY_AUTH=USER:PASSWORD`.
pub fn credentials_from_env() -> Result<Option<(String, String)>> {
    match std::env::var("ARK_REGISTRY_AUTH") {
        Ok(v) if !v.is_empty() => {
            let (u, p) = v
                .split_once(':')
                .ok_or_else(|| anyhow!("ARK_REGISTRY_AUTH must be USER:PASSWORD"))?;
            Ok(Some((u.to_string(), p.to_string())))
        }
        _ => Ok(None),
    }
}

/// Credentials for `host` from the auth files `podman login` / `docker login` write.
pub fn credentials_from_auth_files(host: &str) -> Result<Option<(String, String)>> {
    use base64::Engine as _;
    // (path, explicitly named): only a file the user named must be readable.
    let mut files = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push((PathBuf::from(f), true));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push((PathBuf::from(d).join("containers/auth.json"), false));
    }
    if let Some(h) = std::env::var_os("HOME") {
        files.push((PathBuf::from(h).join(".docker/config.json"), false));
    }
    // Docker Hub's entry is keyed by its legacy URL.
    let keys = if host == "docker.io" {
        vec![host.to_string(), "https://index.docker.io/v1/".to_string()]
    } else {
        vec![host.to_string(), format!("https://{host}")]
    };
    for (file, explicit) in files {
        let data = match std::fs::read(&file) {
            Ok(d) => d,
            Err(e) if explicit => {
                return Err(e).with_context(|| format!("reading {}", file.display()))
            }
            Err(e) => {
                tracing::debug!("skipping auth file {}: {e}", file.display());
                continue;
            }
        };
        let doc: serde_json::Value = serde_json::from_slice(&data)
            .with_context(|| format!("{} is not valid JSON", file.display()))?;
        for key in &keys {
            let Some(auth) = doc["auths"][key]["auth"].as_str() else {
                continue;
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| anyhow!("{}: auth for {key} is not base64", file.display()))?;
            let (u, p) = decoded.split_once(':').ok_or_else(|| {
                anyhow!("{}: auth for {key} is not USER:PASSWORD", file.display())
            })?;
            tracing::debug!("credentials for {host} from {}", file.display());
            return Ok(Some((u.to_string(), p.to_string())));
        }
    }
    Ok(None)
}

/// Downloads `reference` (`HOST[:PORT]/REPO[:TAG|@DIGEST]`) into `dest`, an empty directory,
/// as a complete OCI image layout. See the module docs. Also returns the digests of the blobs
/// this process wrote into `dest` and verified itself while writing them (whatever the child
/// said): their files need no second hash, but are not synced yet.
pub fn fetch(
    reference: &str,
    opts: &FetchOptions,
    dest: &Path,
) -> Result<(Fetched, std::collections::HashSet<String>)> {
    let parsed = DockerReference::parse(reference)?;
    // Policy is decided before any traffic: a wrong platform string or an untrusted name fails here.
    if let Some(p) = &opts.platform {
        Platform::parse(p)?;
    }
    let keys = if opts.insecure_image {
        None
    } else {
        let keys = KeySet::load_for(&opts.trust_dir, &parsed.name())?;
        if keys.keys.is_empty() {
            bail!(
                "no key is trusted for {}: trust the image signer with `ark trust --prefix {} KEYFILE`, or skip verification with --insecure-options=image",
                parsed.name(),
                parsed.name()
            );
        }
        Some(keys)
    };
    let mut dir = DirSink::new(dest, opts.progress)?;
    let request = PullRequest {
        room: Some(StoreSpace::at(dest)?.room()),
        reference: reference.to_string(),
        client: ClientSettings {
            insecure_http: opts.insecure_http,
            insecure_tls: opts.insecure_tls,
            timeout: opts.timeout,
            credentials: match &opts.credentials {
                Some(c) => Some(c.clone()),
                None => credentials_from_auth_files(&parsed.host)?,
            },
        },
        platform: opts.platform.clone(),
        keys,
        have_blobs: opts.have_blobs.clone(),
    };
    let fetched = if crate::image::privsep::should_separate() {
        crate::image::privsep::pull_in_child(&request, &mut dir, opts.signature_dir.as_deref())?
    } else {
        let mut local = sink::LocalSink {
            dir: &mut dir,
            signature_dir: opts.signature_dir.clone(),
            reference: parsed,
        };
        pull(&request, &mut local)?
    };
    if dir.in_blob() {
        bail!("the fetch ended in the middle of a blob");
    }
    Ok((fetched, dir.verified().clone()))
}

/// `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => bail!("invalid platform {s:?}: expected OS/ARCH[/VARIANT], e.g. linux/arm64"),
        }
    }

    fn matches(&self, p: &IndexPlatform) -> bool {
        // arm64 images often omit their (only) variant v8.
        let theirs = p
            .variant
            .as_deref()
            .or((p.architecture == "arm64").then_some("v8"));
        p.os == self.os
            && p.architecture == self.architecture
            && self.variant.as_deref().is_none_or(|v| theirs == Some(v))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<IndexPlatform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IndexPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct MediaTypeOnly {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A descriptor's digest and size, checked to be something we can verify.
fn checked(d: &Descriptor, what: &str) -> Result<(String, u64)> {
    let hex = d
        .digest
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow!("{what} digest {:?} is not sha256", d.digest))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        bail!("{what} digest {:?} is malformed", d.digest);
    }
    let size = u64::try_from(d.size)
        .ok()
        .filter(|s| *s <= MAX_BLOB_SIZE)
        .ok_or_else(|| anyhow!("{what} {} has an invalid size {}", d.digest, d.size))?;
    Ok((d.digest.clone(), size))
}

/// The media type a document says it is (its `mediaType`, else the HTTP Content-Type).
fn media_type_of(body: &[u8], content_type: Option<&str>, what: &str) -> Result<String> {
    let declared: MediaTypeOnly =
        serde_json::from_slice(body).map_err(|e| anyhow!("{what} is not valid JSON: {e}"))?;
    match (declared.media_type.filter(|m| !m.is_empty()), content_type) {
        (Some(m), _) => Ok(m),
        (None, Some(ct)) => Ok(ct.to_string()),
        (None, None) => bail!("{what} has no media type"),
    }
}

const ACCEPT: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// The network half: resolve, verify the signature, stream every blob into `sink`.
/// `ark __registry-fetch-child`: the unprivileged half of a fetch, [`pull`] run by
/// [`privsep::child_main`](crate::image::privsep::child_main).
pub fn fetch_child_main() -> Result<std::process::ExitCode> {
    crate::image::privsep::child_main(pull)
}

pub fn pull(req: &PullRequest, sink: &mut dyn LayoutSink) -> Result<Fetched> {
    let reference = DockerReference::parse(&req.reference)?;
    let platform = Platform::parse(req.platform.as_deref().unwrap_or("linux/amd64"))?;
    let mut client = Client::connect(&reference.host, &reference.repo, &req.client)?;

    let wanted = reference
        .digest
        .clone()
        .or_else(|| reference.tag_or_latest().map(str::to_string))
        .expect("a tag or a digest");
    let (top, content_type) = client.get_document("manifests", &wanted, ACCEPT)?;
    let top_digest = sha256_digest(&top);
    if let Some(d) = &reference.digest {
        if *d != top_digest {
            bail!(
                "registry {} sent a manifest whose digest is {top_digest}, not the requested {d}; refusing it",
                reference.host
            );
        }
    }
    let top_type = media_type_of(&top, content_type.as_deref(), "manifest")?;
    tracing::debug!(%top_digest, media_type = %top_type, "fetched manifest for {reference}");

    // The signature covers what the tag (or digest) points at: for an index, the index.
    if let Some(keys) = &req.keys {
        let sigs = sink.signatures(&top_digest)?;
        let fp = signing::verify_simple_signing_with(keys, &reference, &top_digest, &sigs)?;
        tracing::debug!(
            "signature of {reference} ({top_digest}) verified with key {fp} by uid {}",
            nix::unistd::getuid()
        );
    }

    let mut index_digest = None;
    let (manifest, manifest_digest, manifest_type) = match top_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => (top, top_digest, top_type),
        OCI_INDEX | DOCKER_LIST => {
            let index: Index =
                serde_json::from_slice(&top).map_err(|e| anyhow!("image index is invalid: {e}"))?;
            if index.schema_version != 2 {
                bail!(
                    "image index has schemaVersion {}, expected 2",
                    index.schema_version
                );
            }
            let chosen = index
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
                .ok_or_else(|| {
                    let have: Vec<String> = index
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref())
                        .map(|p| {
                            let platform = match &p.variant {
                                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                                None => format!("{}/{}", p.os, p.architecture),
                            };
                            format!("{platform:?}")
                        })
                        .collect();
                    anyhow!(
                        "{reference} has no {platform} image (it has: {}); pick one with --platform",
                        have.join(", ")
                    )
                })?;
            if !matches!(chosen.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST) {
                bail!(
                    "image index entry for {platform} has unsupported media type {:?}",
                    chosen.media_type
                );
            }
            let (digest, size) = checked(chosen, "manifest")?;
            let (body, ct) = client.get_document("manifests", &digest, ACCEPT)?;
            let got = sha256_digest(&body);
            if got != digest || body.len() as u64 != size {
                bail!(
                    "registry {} sent a {platform} manifest with digest {got} ({} bytes), but the index says {digest} ({size} bytes); refusing it",
                    reference.host,
                    body.len()
                );
            }
            let mt = media_type_of(&body, ct.as_deref(), "manifest")?;
            if mt != chosen.media_type {
                bail!(
                    "{platform} manifest is {mt:?}, but the index says {:?}",
                    chosen.media_type
                );
            }
            // Kept so whoever reads the layout can check the signed index names this manifest.
            sink.blob_bytes(&top_digest, &top)?;
            index_digest = Some(top_digest);
            (body, digest, mt)
        }
        DOCKER_SCHEMA1 => {
            bail!("{reference} uses Docker manifest schema 1, which is not supported")
        }
        other => bail!("{reference}: unknown manifest media type {other:?}"),
    };

    let m: Manifest =
        serde_json::from_slice(&manifest).map_err(|e| anyhow!("image manifest is invalid: {e}"))?;
    if m.schema_version != 2 {
        bail!(
            "image manifest has schemaVersion {}, expected 2",
            m.schema_version
        );
    }
    if !CONFIG_TYPES.contains(&m.config.media_type.as_str()) {
        bail!(
            "{reference} is not a container image: config media type {:?}",
            m.config.media_type
        );
    }
    if let Some(l) = m
        .layers
        .iter()
        .find(|l| !LAYER_TYPES.contains(&l.media_type.as_str()))
    {
        bail!(
            "{reference}: layer {} has unknown media type {:?}",
            l.digest,
            l.media_type
        );
    }
    let config = checked(&m.config, "config")?;
    let layers = m
        .layers
        .iter()
        .map(|l| checked(l, "layer"))
        .collect::<Result<Vec<_>>>()?;

    if let Some(room) = req.room {
        let mut to_fetch: BTreeSet<&str> = BTreeSet::new();
        to_fetch.insert(&config.0);
        let mut total = config.1 + manifest.len() as u64;
        for (digest, size) in &layers {
            if !req.have_blobs.contains(digest) && to_fetch.insert(digest) {
                total = total.saturating_add(*size);
            }
        }
        if total > room {
            bail!(
                "the image's blobs declare {} ({total} bytes), more than the image store's filesystem has free above ark's reserve ({})",
                human(total),
                human(room)
            );
        }
    }
    sink.blob_bytes(&manifest_digest, &manifest)?;
    // Images may list one blob several times (Docker's empty layers): fetch each once.
    let mut fetched = std::collections::HashSet::new();
    copy_blob(&mut client, sink, &config.0, config.1)?;
    fetched.insert(config.0.clone());
    for (digest, size) in &layers {
        if req.have_blobs.contains(digest) {
            tracing::debug!("layer {digest} is in the store already; not downloading it");
        } else if fetched.insert(digest.clone()) {
            copy_blob(&mut client, sink, digest, *size)?;
        }
    }
    let tag = reference.tag_or_latest().map(str::to_string);
    let mut annotations = serde_json::Map::new();
    if let Some(t) = &tag {
        annotations.insert("org.opencontainers.image.ref.name".into(), t.clone().into());
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": manifest_type,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": annotations,
        }],
    });
    sink.file("index.json", &serde_json::to_vec_pretty(&index)?)?;
    sink.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Fetched {
        manifest_digest,
        name: reference.name(),
        tag,
        index_digest,
    })
}

/// Streams one blob from the registry into the sink, refusing it unless it has exactly the
/// declared size and digest.
fn copy_blob(
    client: &mut Client,
    sink: &mut dyn LayoutSink,
    digest: &str,
    size: u64,
) -> Result<()> {
    use std::io::Read;
    let resp = client.get("blobs", digest, &[])?;
    let mut body = resp.into_body().into_reader();
    sink.begin_blob(digest, size)?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = body.read(&mut buf).map_err(|e| {
            anyhow!(
                "{} while receiving blob {digest}",
                client::describe_read(client.host(), &e, client.timeout())
            )
        })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > size {
            bail!(
                "registry {} sent more than the declared {size} bytes of blob {digest}; refusing it",
                client.host()
            );
        }
        hasher.update(&buf[..n]);
        sink.data(&buf[..n])?;
    }
    if total != size {
        bail!(
            "registry {} sent {total} of the declared {size} bytes of blob {digest}; refusing it",
            client.host()
        );
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != digest {
        bail!(
            "registry {} sent a blob whose digest is {got}, not the expected {digest}; refusing it",
            client.host()
        );
    }
    sink.end_blob()
        .with_context(|| format!("storing blob {digest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_matching() {
        let p = |os: &str, a: &str, v: Option<&str>| IndexPlatform {
            os: os.into(),
            architecture: a.into(),
            variant: v.map(Into::into),
        };
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert!(amd64.matches(&p("linux", "amd64", None)));
        assert!(!amd64.matches(&p("linux", "arm64", None)));
        let arm64v8 = Platform::parse("linux/arm64/v8").unwrap();
        assert!(arm64v8.matches(&p("linux", "arm64", None)));
        assert!(arm64v8.matches(&p("linux", "arm64", Some("v8"))));
        let armv7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(!armv7.matches(&p("linux", "arm", Some("v6"))));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v1/x").is_err());
    }
}
