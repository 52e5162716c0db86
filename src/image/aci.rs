//! appc ACIs (`PATH.aci`): a tar (optionally gzip/bzip2/xz) of `manifest` and `rootfs/`,
//! signed by a detached OpenPGP signature at `PATH.aci.asc`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use super::extract::decompress;
use super::limits::{Metered, RenderLimits, StoreSpace, StreamMeter};
use super::record::{now, ImageKind, ImageRecord, Imported, Layer, MAX_JSON};
use super::staging::Staging;
use super::{FetchOptions, ImageConfig, ImageId};

pub const ACI_MEDIA_TYPE: &str = "application/vnd.appc.aci";
pub const ACI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.appc.image-manifest+json";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct App {
    #[serde(default)]
    exec: Vec<String>,
    #[serde(default)]
    user: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    working_directory: Option<String>,
    #[serde(default)]
    environment: Vec<NameValue>,
    #[serde(default)]
    ports: Vec<serde_json::Value>,
}

/// The appc image manifest (the fields ark uses; the rest is kept in the stored blob).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AciManifest {
    ac_kind: String,
    ac_version: String,
    name: String,
    #[serde(default)]
    labels: Vec<NameValue>,
    #[serde(default)]
    app: Option<App>,
    #[serde(default)]
    annotations: Vec<NameValue>,
    #[serde(default)]
    dependencies: Vec<serde_json::Value>,
}

fn parse_manifest(bytes: &[u8]) -> anyhow::Result<AciManifest> {
    let m: AciManifest =
        serde_json::from_slice(bytes).context("ACI manifest is not a valid appc image manifest")?;
    if m.ac_kind != "ImageManifest" {
        bail!("ACI manifest has acKind {:?}, not ImageManifest", m.ac_kind);
    }
    if m.ac_version.is_empty() || m.name.is_empty() {
        bail!("ACI manifest lacks acVersion or name");
    }
    Ok(m)
}

/// `rootfs/x` → `x`; everything outside `rootfs/` (the manifest) is not rendered.
pub fn rootfs_path(p: &Path) -> Option<PathBuf> {
    let p = p.strip_prefix("./").unwrap_or(p);
    p.strip_prefix("rootfs").ok().map(Path::to_path_buf)
}

pub fn import(staging: &mut Staging, path: &Path, opts: &FetchOptions) -> anyhow::Result<Imported> {
    let manifest_bytes = read_manifest(path)?;
    let manifest = parse_manifest(&manifest_bytes)?;
    if !manifest.dependencies.is_empty() {
        bail!(
            "ACI {:?} has dependencies, which ark does not support",
            manifest.name
        );
    }
    let version = manifest
        .labels
        .iter()
        .find(|l| l.name == "version")
        .map_or("latest", |l| l.value.as_str());
    let name = format!("{}:{}", manifest.name, version);

    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    StoreSpace::at(&staging.dir)?.check_fits("the ACI", len)?;
    let (digest, size) = staging.put(&mut file, None, "aci")?;
    if !opts.insecure_image {
        // Verify the copy the store keeps, not the path, which could change in between.
        let staged = staging.path_of(&digest).expect("just staged");
        verify_signature(path, &staged, &manifest.name, opts)?;
    }
    let manifest_digest = staging.put_bytes(&manifest_bytes, "aci manifest")?;
    Ok(Imported {
        record: ImageRecord {
            id: ImageId(digest.clone()),
            kind: ImageKind::Aci,
            manifest: manifest_digest.clone(),
            manifest_media_type: ACI_MANIFEST_MEDIA_TYPE.to_string(),
            config: manifest_digest,
            layers: vec![Layer {
                digest,
                size,
                media_type: ACI_MEDIA_TYPE.to_string(),
                diff_id: None,
            }],
            size,
            source: String::new(),
            imported: now(),
        },
        names: vec![name],
    })
}

fn verify_signature(
    path: &Path,
    data: &Path,
    name: &str,
    opts: &FetchOptions,
) -> anyhow::Result<()> {
    let mut asc = path.as_os_str().to_owned();
    asc.push(".asc");
    let asc = PathBuf::from(asc);
    if !asc.exists() {
        bail!(
            "ACI {name:?} is not signed: {} is missing; sign it with `gpg --armor --detach-sign` \
             and trust the key with `ark trust --prefix {name:?} KEYFILE`, or pass \
             --insecure-options=image to skip verification",
            asc.display()
        );
    }
    let fingerprint = crate::trust::verify_detached(&opts.trust_dir, name, data, &asc)
        .map_err(super::one_line)
        .with_context(|| format!("verifying {}", asc.display()))?;
    tracing::info!("ACI {name:?} is signed by trusted key {fingerprint}");
    Ok(())
}

/// Reads the `manifest` entry out of the ACI (which may come anywhere in the tar).
fn read_manifest(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // A bomb must not keep the fetch decompressing (or a long name filling memory) forever.
    let meter = StreamMeter::new(RenderLimits::from_env()?.max_bytes);
    let stream = Metered::new(decompress(BufReader::new(file))?, meter.clone());
    let mut archive = tar::Archive::new(stream);
    meter.headers_begin();
    for entry in archive.entries().context("ACI is not a tar archive")? {
        let entry = entry.map_err(|e| meter.hit().map_or(e.into(), anyhow::Error::msg));
        let mut entry = entry.context("reading the ACI")?;
        meter.headers_end();
        let p = entry.path()?.into_owned();
        if p == Path::new("manifest") || p == Path::new("./manifest") {
            if entry.size() > MAX_JSON {
                bail!("ACI manifest is too large");
            }
            let mut buf = Vec::new();
            entry.take(MAX_JSON).read_to_end(&mut buf)?;
            return Ok(buf);
        }
        // Skip the data here, so the next entry's headers are measured alone.
        std::io::copy(&mut entry, &mut std::io::sink())
            .map_err(|e| meter.hit().map_or(e.into(), anyhow::Error::msg))
            .context("reading the ACI")?;
        meter.headers_begin();
    }
    bail!("{} is not an ACI: no manifest in it", path.display())
}

pub fn image_config(manifest: &[u8]) -> anyhow::Result<ImageConfig> {
    let m = parse_manifest(manifest)?;
    let mut out = ImageConfig {
        labels: m.labels.into_iter().map(|l| (l.name, l.value)).collect(),
        annotations: m
            .annotations
            .into_iter()
            .map(|a| (a.name, a.value))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    };
    if let Some(app) = m.app {
        out.entrypoint = app.exec;
        out.env = app
            .environment
            .into_iter()
            .map(|e| format!("{}={}", e.name, e.value))
            .collect();
        out.user = match (app.user.as_str(), app.group.as_str()) {
            ("", _) => None,
            (u, "") => Some(u.to_string()),
            (u, g) => Some(format!("{u}:{g}")),
        };
        out.working_dir = app.working_directory.filter(|w| !w.is_empty());
        out.exposed_ports = app
            .ports
            .iter()
            .filter_map(|p| {
                let port = p.get("port")?.as_u64()?;
                let proto = p.get("protocol").and_then(|v| v.as_str()).unwrap_or("tcp");
                Some(format!("{port}/{proto}"))
            })
            .collect();
        out.port_names = app
            .ports
            .iter()
            .filter_map(|p| {
                let name = p.get("name")?.as_str()?;
                let port = p.get("port")?.as_u64()?;
                let proto = p.get("protocol").and_then(|v| v.as_str()).unwrap_or("tcp");
                Some((name.to_string(), format!("{port}/{proto}")))
            })
            .collect();
    }
    Ok(out)
}
