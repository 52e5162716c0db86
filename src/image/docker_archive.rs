//! `docker-archive:PATH[:REF]`: what `docker save` / `podman save` write — a tar with
//! `manifest.json` (`[{Config, RepoTags, Layers}]`), the config and one tar per layer.
//! The archive has no manifest digest of its own, so ark writes an OCI manifest for it; its
//! digest is the image ID (the same archive always gives the same ID).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use super::digest::Digest;
use super::extract::clean_path;
use super::limits::StoreSpace;
use super::oci_layout::{check_image, OCI_CONFIG, OCI_MANIFEST};
use super::record::{now, ImageKind, ImageRecord, Imported, MAX_JSON};
use super::reference::with_default_tag;
use super::staging::Staging;
use super::{FetchOptions, ImageId};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn open_archive(path: &Path) -> anyhow::Result<tar::Archive<BufReader<File>>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(tar::Archive::new(BufReader::with_capacity(1 << 20, f)))
}

fn normalize(p: &Path) -> anyhow::Result<PathBuf> {
    clean_path(p)?.with_context(|| format!("{p:?}: empty path"))
}

pub fn import(
    staging: &mut Staging,
    path: &Path,
    reference: Option<&str>,
    opts: &FetchOptions,
) -> anyhow::Result<Imported> {
    // Pass 1: manifest.json and the symlinks `docker save` uses for repeated layers.
    let mut manifest_json = None;
    let mut links: HashMap<PathBuf, PathBuf> = HashMap::new();
    for entry in open_archive(path)?.entries().context("not a tar archive")? {
        let mut entry = entry.context("reading the archive")?;
        let p = normalize(&entry.path()?)?;
        if p == Path::new("manifest.json") {
            let mut buf = Vec::new();
            (&mut entry).take(MAX_JSON + 1).read_to_end(&mut buf)?;
            if buf.len() as u64 > MAX_JSON {
                bail!("manifest.json is too large");
            }
            manifest_json = Some(buf);
        } else if entry.header().entry_type().is_symlink() {
            if let Some(target) = entry.link_name()? {
                let resolved = p.parent().unwrap_or(Path::new("")).join(target);
                links.insert(p, lexical(&resolved)?);
            }
        }
    }
    let manifest_json = manifest_json.context("not a docker archive: no manifest.json in it")?;
    let entries: Vec<ArchiveEntry> =
        serde_json::from_slice(&manifest_json).context("manifest.json is not valid")?;
    let chosen = match reference {
        None if entries.len() == 1 => &entries[0],
        None => bail!(
            "the archive holds {} images; say which with :NAME:TAG",
            entries.len()
        ),
        Some(r) => {
            let want = with_default_tag(r);
            entries
                .iter()
                .find(|e| {
                    e.repo_tags
                        .iter()
                        .flatten()
                        .any(|t| *t == want || t.ends_with(&format!("/{want}")))
                })
                .with_context(|| format!("no image {r:?} in the archive"))?
        }
    };
    let resolve = |s: &str| -> anyhow::Result<PathBuf> {
        let mut p = normalize(Path::new(s))?;
        for _ in 0..8 {
            match links.get(&p) {
                Some(t) => p = t.clone(),
                None => return Ok(p),
            }
        }
        bail!("{s:?}: too many symlinks")
    };
    let config_path = resolve(&chosen.config)?;
    let layer_paths: Vec<PathBuf> = chosen
        .layers
        .iter()
        .map(|l| resolve(l))
        .collect::<Result<_, _>>()?;

    // Pass 2: the config into memory, the layers into staging.
    let mut config = None;
    let mut staged: BTreeMap<PathBuf, (Digest, u64, bool)> = BTreeMap::new();
    for entry in open_archive(path)?.entries()? {
        let mut entry = entry?;
        let p = normalize(&entry.path()?)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if p == config_path {
            let mut buf = Vec::new();
            (&mut entry).take(MAX_JSON + 1).read_to_end(&mut buf)?;
            if buf.len() as u64 > MAX_JSON {
                bail!("config is too large");
            }
            config = Some(buf);
        } else if layer_paths.contains(&p) && !staged.contains_key(&p) {
            let entry_size = entry.size();
            let mut head = [0u8; 4];
            let mut sniffer = Sniff {
                inner: &mut entry,
                head: &mut head,
                seen: 0,
            };
            let what = format!("layer {:?}", p);
            StoreSpace::at(&staging.dir)?.check_fits(&what, entry_size)?;
            let (digest, size) = staging.put(&mut sniffer, None, &what)?;
            let compressed = head.starts_with(&[0x1f, 0x8b]) || head == [0x28, 0xb5, 0x2f, 0xfd];
            staged.insert(p, (digest, size, compressed));
        }
    }
    let config =
        config.with_context(|| format!("config {:?} missing from the archive", chosen.config))?;
    let config_digest = Digest::of_bytes(&config);
    let mut layers_json = Vec::new();
    for p in &layer_paths {
        let (digest, size, compressed) = staged
            .get(p)
            .with_context(|| format!("layer {p:?} missing from the archive"))?;
        let media_type = if *compressed {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        layers_json.push(serde_json::json!({
            "mediaType": media_type, "digest": digest.to_string(), "size": size,
        }));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len() },
        "layers": layers_json,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let checked = check_image(&manifest_bytes, OCI_MANIFEST, &config)?;
    // An uncompressed layer is its own diff: it must be what the config says.
    for (i, layer) in checked.layers.iter().enumerate() {
        if layer.media_type.ends_with(".tar") && layer.diff_id.as_ref() != Some(&layer.digest) {
            bail!(
                "layer {} has digest {}, but the config's diff_id is {}",
                i + 1,
                layer.digest,
                layer
                    .diff_id
                    .as_ref()
                    .map_or("missing".into(), |d| d.to_string())
            );
        }
    }
    let manifest_digest = Digest::of_bytes(&manifest_bytes);
    let names: Vec<String> = chosen.repo_tags.clone().unwrap_or_default();
    let first = names.first().map(String::as_str);
    super::verify_local_signature(first, first, &manifest_digest, opts)?;
    staging.put_bytes(&manifest_bytes, "manifest")?;
    staging.put_bytes(&config, "config")?;
    let size = manifest_bytes.len() as u64
        + config.len() as u64
        + checked.layers.iter().map(|l| l.size).sum::<u64>();
    Ok(Imported {
        record: ImageRecord {
            id: ImageId(manifest_digest.clone()),
            kind: ImageKind::Oci,
            manifest: manifest_digest,
            manifest_media_type: OCI_MANIFEST.to_string(),
            config: config_digest,
            layers: checked.layers,
            size,
            source: String::new(),
            imported: now(),
        },
        names,
    })
}

/// `a/b/../c` → `a/c`, refusing to climb above the archive root.
fn lexical(p: &Path) -> anyhow::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    bail!("{p:?} points outside the archive");
                }
            }
            _ => bail!("{p:?}: absolute link in the archive"),
        }
    }
    Ok(out)
}

/// Passes bytes through, keeping the first few to sniff the compression.
struct Sniff<'a, R> {
    inner: R,
    head: &'a mut [u8; 4],
    seen: usize,
}

impl<R: Read> Read for Sniff<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.seen < 4 {
            let take = (4 - self.seen).min(n);
            self.head[self.seen..self.seen + take].copy_from_slice(&buf[..take]);
            self.seen += take;
        }
        Ok(n)
    }
}
