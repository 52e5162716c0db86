//! OCI image layouts (`oci-layout:PATH[:TAG]`): import into the store, export from it, and
//! the manifest/config checks every OCI-shaped source shares.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use super::digest::Digest;
use super::limits::StoreSpace;
use super::record::{now, ImageKind, ImageRecord, Imported, Layer, MAX_JSON};
use super::staging::Staging;
use super::{FetchOptions, ImageConfig, ImageId};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Layer media types ark can render (compression is sniffed from the bytes when rendering).
pub const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// A parsed, checked image manifest and config.
pub struct CheckedImage {
    pub manifest: ImageManifest,
    pub layers: Vec<Layer>,
}

/// Checks a manifest and its config: valid JSON, known media types, one diff_id per layer.
pub fn check_image(
    manifest_bytes: &[u8],
    manifest_media_type: &str,
    config_bytes: &[u8],
) -> anyhow::Result<CheckedImage> {
    let manifest = ImageManifest::from_reader(manifest_bytes)
        .map_err(|e| anyhow::anyhow!("manifest is not a valid image manifest: {e}"))?;
    if manifest.schema_version() != 2 {
        bail!(
            "manifest schemaVersion {} is not supported (want 2)",
            manifest.schema_version()
        );
    }
    if let Some(mt) = manifest.media_type() {
        let mt = mt.to_string();
        if mt != manifest_media_type && manifest_media_type != OCI_MANIFEST {
            bail!("manifest says mediaType {mt:?} but was referenced as {manifest_media_type:?}");
        }
        if mt != OCI_MANIFEST && mt != DOCKER_MANIFEST {
            bail!("unknown manifest media type {mt:?}");
        }
    }
    let config_type = manifest.config().media_type().to_string();
    if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
        bail!("unknown config media type {config_type:?}");
    }
    let config = ImageConfiguration::from_reader(config_bytes)
        .map_err(|e| anyhow::anyhow!("config is not a valid image config: {e}"))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        bail!(
            "config lists {} diff_ids for {} layers",
            diff_ids.len(),
            manifest.layers().len()
        );
    }
    let mut layers = Vec::new();
    for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let media_type = desc.media_type().to_string();
        if !LAYER_TYPES.contains(&media_type.as_str()) {
            bail!("unknown layer media type {media_type:?}");
        }
        layers.push(Layer {
            digest: descriptor_digest(desc)?,
            size: desc.size(),
            media_type,
            diff_id: Some(diff_id.parse().context("config diff_id")?),
        });
    }
    Ok(CheckedImage { manifest, layers })
}

pub fn descriptor_digest(desc: &Descriptor) -> anyhow::Result<Digest> {
    desc.digest().to_string().parse()
}

/// The descriptor's platform matches `os/arch[/variant]` (default linux/amd64).
pub fn platform_matches(desc: &Descriptor, platform: Option<&str>) -> bool {
    let want = platform.unwrap_or("linux/amd64");
    let mut parts = want.split('/');
    let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
    let Some(p) = desc.platform() else {
        return false;
    };
    Some(p.os().to_string().as_str()) == os
        && Some(p.architecture().to_string().as_str()) == arch
        && variant.is_none_or(|v| p.variant().as_deref() == Some(v))
}

/// Reads a layout's own JSON file (`oci-layout`, `index.json`), refusing one over [`MAX_JSON`].
fn read_capped(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.take(MAX_JSON + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_JSON {
        bail!("{} is larger than {MAX_JSON} bytes", path.display());
    }
    Ok(buf)
}

/// Reads a blob of a layout, verifying digest and size against its descriptor.
fn read_layout_json(layout: &Path, desc: &Descriptor, what: &str) -> anyhow::Result<Vec<u8>> {
    let digest = descriptor_digest(desc)?;
    if desc.size() > MAX_JSON {
        bail!("{what} {digest} declares {} bytes; too large", desc.size());
    }
    let path = layout.join("blobs/sha256").join(digest.hex());
    let mut buf = Vec::new();
    File::open(&path)
        .with_context(|| format!("{what} {digest}: missing from the layout"))?
        .take(desc.size() + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 != desc.size() {
        bail!(
            "{what} {digest}: blob size differs from its descriptor's {}",
            desc.size()
        );
    }
    let actual = Digest::of_bytes(&buf);
    if actual != digest {
        bail!("{what}: blob content has digest {actual}, not the declared {digest}");
    }
    Ok(buf)
}

/// Where a layout comes from decides who verifies it and whether its blobs may be moved.
pub enum Origin<'a> {
    /// The user's layout: verify its signature here, copy its blobs.
    User(&'a FetchOptions),
    /// A layout the registry client wrote into our staging dir after verifying the signature:
    /// move its blobs in, re-hashing those it did not verify itself while writing them.
    Registry {
        platform: Option<&'a str>,
        /// Digests of the blobs this process hashed as it wrote them into the layout.
        verified: &'a std::collections::HashSet<String>,
    },
}

pub fn import(
    staging: &mut Staging,
    layout: &Path,
    tag: Option<&str>,
    origin: Origin,
) -> anyhow::Result<Imported> {
    let marker = read_capped(&layout.join("oci-layout")).with_context(|| {
        format!(
            "{} is not an OCI image layout (no oci-layout file)",
            layout.display()
        )
    })?;
    let marker: serde_json::Value =
        serde_json::from_slice(&marker).context("oci-layout file is not valid JSON")?;
    if marker.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        bail!(
            "oci-layout: unsupported imageLayoutVersion {}",
            marker["imageLayoutVersion"]
        );
    }
    let index_bytes = read_capped(&layout.join("index.json")).context("reading index.json")?;
    let index = ImageIndex::from_reader(&index_bytes[..])
        .map_err(|e| anyhow::anyhow!("index.json is not a valid image index: {e}"))?;
    let ref_of = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let chosen = match tag {
        Some(tag) => index
            .manifests()
            .iter()
            .find(|d| ref_of(d).as_deref() == Some(tag))
            .with_context(|| {
                let tags: Vec<String> = index
                    .manifests()
                    .iter()
                    .filter_map(ref_of)
                    .map(|t| format!("{t:?}"))
                    .collect();
                format!("no tag {tag:?} in the layout (it has: {})", tags.join(", "))
            })?,
        None if index.manifests().len() == 1 => &index.manifests()[0],
        None => bail!(
            "the layout holds {} images; say which with :TAG",
            index.manifests().len()
        ),
    };
    let tag_name = tag.map(str::to_string).or_else(|| ref_of(chosen));
    let mut desc = chosen.clone();
    let mut media_type = desc.media_type().to_string();
    if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        let nested_bytes = read_layout_json(layout, &desc, "image index")?;
        let nested = ImageIndex::from_reader(&nested_bytes[..])
            .map_err(|e| anyhow::anyhow!("nested image index is not valid: {e}"))?;
        let platform = match &origin {
            Origin::User(opts) => opts.platform.as_deref(),
            Origin::Registry { platform, .. } => *platform,
        };
        desc = nested
            .manifests()
            .iter()
            .find(|d| platform_matches(d, platform))
            .with_context(|| {
                format!(
                    "the image index has no manifest for {}",
                    platform.unwrap_or("linux/amd64")
                )
            })?
            .clone();
        media_type = desc.media_type().to_string();
    }
    if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
        bail!("unknown manifest media type {media_type:?}");
    }
    let manifest_bytes = read_layout_json(layout, &desc, "manifest")?;
    let manifest_digest = descriptor_digest(&desc)?;
    let probe = ImageManifest::from_reader(&manifest_bytes[..])
        .map_err(|e| anyhow::anyhow!("manifest is not a valid image manifest: {e}"))?;
    let config_bytes = read_layout_json(layout, probe.config(), "config")?;
    let checked = check_image(&manifest_bytes, &media_type, &config_bytes)?;
    let config_digest = descriptor_digest(checked.manifest.config())?;

    let name = tag_name.as_deref().map(|t| layout_name(layout, t));
    let adopt = match origin {
        Origin::User(opts) => {
            // Only a full reference in the layout (not a bare tag) says what was signed.
            let identity = tag_name.as_deref().filter(|t| t.contains('/'));
            super::verify_local_signature(name.as_deref(), identity, &manifest_digest, opts)?;
            None
        }
        Origin::Registry { verified, .. } => Some(verified),
    };

    if adopt.is_none() {
        // Refused before a byte is copied if the blobs to copy cannot fit above the reserve.
        let mut to_copy: BTreeMap<&Digest, u64> = BTreeMap::new();
        for layer in &checked.layers {
            if staging.path_of(&layer.digest).is_none() {
                to_copy.insert(&layer.digest, layer.size);
            }
        }
        let total = to_copy.values().fold(
            (manifest_bytes.len() + config_bytes.len()) as u64,
            |a, b| a.saturating_add(*b),
        );
        StoreSpace::at(&staging.dir)?.check_fits("the image's blobs", total)?;
    }
    staging.put(
        &mut &manifest_bytes[..],
        Some((&manifest_digest, manifest_bytes.len() as u64)),
        "manifest",
    )?;
    staging.put(
        &mut &config_bytes[..],
        Some((&config_digest, config_bytes.len() as u64)),
        "config",
    )?;
    let mut size = (manifest_bytes.len() + config_bytes.len()) as u64;
    for (i, layer) in checked.layers.iter().enumerate() {
        let what = format!("layer {} {}", i + 1, layer.digest.short());
        let path = layout.join("blobs/sha256").join(layer.digest.hex());
        if let Some(verified) = adopt {
            let hashed = verified.contains(&layer.digest.to_string());
            staging.adopt(&path, &layer.digest, layer.size, hashed, &what)?;
        } else if staging.path_of(&layer.digest).is_none() {
            let mut f =
                File::open(&path).with_context(|| format!("{what}: missing from the layout"))?;
            staging.put(&mut f, Some((&layer.digest, layer.size)), &what)?;
        } else {
            staging.put(
                &mut std::io::empty(),
                Some((&layer.digest, layer.size)),
                &what,
            )?;
        }
        size += layer.size;
    }
    Ok(Imported {
        record: ImageRecord {
            id: ImageId(manifest_digest.clone()),
            kind: ImageKind::Oci,
            manifest: manifest_digest,
            manifest_media_type: media_type,
            config: config_digest,
            layers: checked.layers,
            size,
            source: String::new(),
            imported: now(),
        },
        names: name.into_iter().collect(),
    })
}

/// A layout's tag becomes `<dir name>:<tag>`, unless the tag is a full reference already.
fn layout_name(layout: &Path, tag: &str) -> String {
    if tag.contains('/') {
        return tag.to_string();
    }
    let dir = layout
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "image".to_string());
    format!("{dir}:{tag}")
}

pub fn image_config(manifest: &[u8], config: &[u8]) -> anyhow::Result<ImageConfig> {
    let manifest = ImageManifest::from_reader(manifest)
        .map_err(|e| anyhow::anyhow!("stored manifest is invalid: {e}"))?;
    let config = ImageConfiguration::from_reader(config)
        .map_err(|e| anyhow::anyhow!("stored config is invalid: {e}"))?;
    let mut out = ImageConfig::default();
    if let Some(c) = config.config() {
        out.entrypoint = c.entrypoint().clone().unwrap_or_default();
        out.cmd = c.cmd().clone().unwrap_or_default();
        out.env = c.env().clone().unwrap_or_default();
        out.user = c.user().clone().filter(|u| !u.is_empty());
        out.working_dir = c.working_dir().clone().filter(|w| !w.is_empty());
        out.exposed_ports = c.exposed_ports().clone().unwrap_or_default();
        out.stop_signal = c.stop_signal().clone();
        out.labels = c.labels().clone().unwrap_or_default().into_iter().collect();
    }
    out.annotations = manifest
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect::<BTreeMap<_, _>>();
    Ok(out)
}

/// Writes the image as an OCI layout in `dir` (created here).
/// `blob_path` says where the store keeps a blob.
pub fn export(
    blob_path: &dyn Fn(&Digest) -> std::path::PathBuf,
    record: &ImageRecord,
    names: &[String],
    dir: &Path,
) -> anyhow::Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for d in record.blobs() {
        let dest = blobs.join(d.hex());
        if dest.exists() {
            continue;
        }
        // Blobs are immutable, so a hard link is a safe copy; fall back across filesystems.
        if fs::hard_link(blob_path(d), &dest).is_err() {
            fs::copy(blob_path(d), &dest).with_context(|| format!("copying blob {d}"))?;
        }
    }
    let manifest_size = fs::metadata(blob_path(&record.manifest))?.len();
    let mut desc = serde_json::json!({
        "mediaType": record.manifest_media_type,
        "digest": record.manifest.to_string(),
        "size": manifest_size,
    });
    if let Some(name) = names.first() {
        let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
        desc["annotations"] = serde_json::json!({ REF_NAME: tag });
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [desc],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok(())
}
