//! The on-disk image store, `<dir>/images/`:
//!
//! ```text
//! index.json            images and names (rewritten atomically under index.lock)
//! blobs/sha256/<hex>    content-addressed blobs, verified before they get here, never modified
//! renders/<hex>/rootfs  rendered rootfs per image ID (renamed in whole when complete)
//! renders/<hex>.lock    serializes rendering of one image
//! tmp/                  staging of fetches, renders and index writes; all of it is garbage
//!                       once no ark process holds store.lock
//! store.lock            shared by fetch/render, exclusive for gc and rm
//! ```
//!
//! Everything becomes visible by one rename after its content is complete and synced, so a
//! process killed at any point leaves only unreferenced blobs and `tmp/` entries, which
//! `ark image gc` removes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::{typed, ErrorKind, Result};
use super::fsutil::try_flock_exclusive;
pub(crate) use super::fsutil::{flock, fsync_dir, remove_tree, Lock};
use super::oci_layout::Origin;
pub use super::record::{ImageInfo, ImageKind};
use super::record::{ImageRecord, Imported, MAX_JSON};
use super::reference::{with_default_tag, Source};
use super::staging::{self, Staging};
use super::{FetchOptions, ImageConfig, ImageId};
use crate::error::Kind as _;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<ImageId, ImageRecord>,
    /// `name:tag` → image.
    names: BTreeMap<String, ImageId>,
}

#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
}

/// Whether `dir` (or something in it) is the lower layer of an overlay mounted anywhere.
fn mounted_as_overlay_lower(dir: &Path) -> io::Result<bool> {
    let dir = fs::canonicalize(dir)?;
    Ok(ark_os::mountinfo::overlay_lowerdirs_under(Path::new("/"))?
        .iter()
        .any(|lower| lower.starts_with(&dir)))
}

impl ImageStore {
    /// Opens (creating if needed) the store under `<dir>/images`, `dir` being ark's `--dir`.
    pub fn open(dir: &Path) -> Result<ImageStore> {
        typed(|| {
            let root = dir.join("images");
            for sub in ["blobs/sha256", "renders", "tmp"] {
                fs::create_dir_all(root.join(sub))
                    .with_context(|| format!("creating image store {}", root.display()))?;
            }
            Ok(ImageStore { root })
        })
    }

    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        staging::blob_path(&self.blobs_dir(), d)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn renders_dir(&self) -> PathBuf {
        self.root.join("renders")
    }

    pub(crate) fn lock(&self, name: &str, exclusive: bool) -> anyhow::Result<Lock> {
        flock(&self.root.join(name), exclusive)
    }

    /// Fetches or imports `reference` into the store and returns its ID. Idempotent: blobs the
    /// store has already are not copied again; names move to the image just fetched. A
    /// reference without a transport (`sha256:...`, a short ID, `name[:tag]`) names an image
    /// already in the store.
    pub fn fetch(&self, reference: &str, opts: &FetchOptions) -> Result<ImageId> {
        typed(|| {
            let source = match Source::parse(reference) {
                Ok(source) => source,
                // Not a transport reference: an image already in the store, by ID or name.
                Err(e) => return self.resolve(reference).map_err(|_| e),
            };
            let _shared = self.lock("store.lock", false)?;
            let mut staging = Staging::new(&self.tmp_dir(), &self.blobs_dir())?;
            let imported = match &source {
                Source::OciLayout { path, tag } => super::oci_layout::import(
                    &mut staging,
                    path,
                    tag.as_deref(),
                    Origin::User(opts),
                ),
                Source::DockerArchive { path, reference } => {
                    super::docker_archive::import(&mut staging, path, reference.as_deref(), opts)
                }
                Source::Aci(path) => super::aci::import(&mut staging, path, opts),
                Source::Docker(r) => self.fetch_docker(&mut staging, r, opts),
            }
            .and_then(|imported| super::reference::check_names(&imported.names).map(|()| imported))
            .with_context(|| format!("fetching {reference}"))?;
            let mut imported = imported;
            imported.record.source = reference.to_string();
            self.commit(staging, imported)
        })
    }

    /// `docker://`: the registry client writes a verified OCI layout into our staging dir
    /// (same filesystem), which is then imported like any layout, its blobs moved, not copied.
    fn fetch_docker(
        &self,
        staging: &mut Staging,
        reference: &str,
        opts: &FetchOptions,
    ) -> anyhow::Result<Imported> {
        let mut ropts = super::registry::FetchOptions::new(opts.trust_dir.clone())?;
        ropts.insecure_http = opts.insecure_http;
        ropts.insecure_tls = opts.insecure_tls;
        ropts.insecure_image = opts.insecure_image;
        ropts.platform = opts.platform.clone();
        ropts.signature_dir = opts.signature_dir.clone();
        // Blobs in the store were verified when they came in, and stay while this fetch holds
        // store.lock (rm and gc need it exclusively): no need to download those layers again.
        ropts.have_blobs = self.blob_digests()?;
        let layout = staging.dir.join("layout");
        let (fetched, verified) = super::registry::fetch(reference, &ropts, &layout)?;
        let mut imported = super::oci_layout::import(
            staging,
            &layout,
            None,
            Origin::Registry {
                platform: opts.platform.as_deref(),
                verified: &verified,
            },
        )?;
        let want: Digest = fetched.manifest_digest.parse()?;
        if imported.record.manifest != want {
            bail!(
                "the registry client reported manifest {want} but wrote {}",
                imported.record.manifest
            );
        }
        imported.names = fetched
            .tag
            .map(|t| format!("{}:{t}", fetched.name))
            .into_iter()
            .collect();
        Ok(imported)
    }

    /// `sha256:HEX` of every blob in the store.
    fn blob_digests(&self) -> anyhow::Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for entry in fs::read_dir(self.root.join("blobs/sha256"))? {
            let name = entry?.file_name();
            if let Ok(d) = format!("sha256:{}", name.to_string_lossy()).parse::<Digest>() {
                out.insert(d.to_string());
            }
        }
        Ok(out)
    }

    /// Moves staged blobs into place and records the image and its names.
    fn commit(&self, staging: Staging, imported: Imported) -> anyhow::Result<ImageId> {
        let blobs_dir = self.root.join("blobs/sha256");
        let mut stored_any = false;
        for (digest, path) in &staging.blobs {
            let dest = self.blob_path(digest);
            if dest.exists() {
                continue;
            }
            fs::rename(path, &dest).with_context(|| format!("storing blob {digest}"))?;
            stored_any = true;
        }
        // The blobs an index entry names must be durable before the entry is. Blobs already
        // in the store were made durable when they were stored; a re-fetch of an image the
        // store already has moves none and needs no sync.
        if stored_any {
            fsync_dir(&blobs_dir)?;
        }
        let id = imported.record.id.clone();
        self.update_index(|index| {
            let mut record = imported.record;
            if let Some(old) = index.images.get(&id) {
                // Keep the first import time: it is the same image.
                record.imported = old.imported;
            }
            index.images.insert(id.clone(), record);
            for name in &imported.names {
                index.names.insert(with_default_tag(name), id.clone());
            }
            Ok(())
        })?;
        drop(staging);
        Ok(id)
    }

    fn read_index(&self) -> anyhow::Result<Index> {
        Ok(self.read_index_bytes()?.0)
    }

    /// The index and the bytes it was parsed from (None: no index yet).
    fn read_index_bytes(&self) -> anyhow::Result<(Index, Option<Vec<u8>>)> {
        let path = self.root.join("index.json");
        match fs::read(&path) {
            // serde quotes pieces of its input raw, and the index holds image-supplied names.
            Ok(bytes) => Ok((
                serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "image store index {} is corrupt: {}",
                        path.display(),
                        crate::image::escape::controls_escaped(&e.to_string())
                    )
                })?,
                Some(bytes),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Index::default(), None)),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Applies `f` to the index under its lock and writes the result, unless it is byte for
    /// byte the index already stored. Then only the store's directory is synced: an earlier
    /// writer killed between its rename and its directory fsync may have left those very bytes
    /// not yet durable (on a clean directory the fsync returns at once).
    fn update_index(&self, f: impl FnOnce(&mut Index) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let _lock = self.lock("index.lock", true)?;
        let (mut index, stored) = self.read_index_bytes()?;
        f(&mut index)?;
        let bytes = serde_json::to_vec_pretty(&index)?;
        if stored.as_deref() == Some(&bytes[..]) {
            return fsync_dir(&self.root);
        }
        self.write_atomic(&self.root.join("index.json"), &bytes)
    }

    /// Writes `dest` whole or not at all and durably, its temp file in the store's tmp dir
    /// (which `gc` reclaims after an interruption).
    pub(crate) fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        ark_os::write_atomic_in(&self.tmp_dir(), dest, bytes)
            .with_context(|| format!("writing {}", dest.display()))
    }

    pub(crate) fn record(&self, id: &ImageId) -> anyhow::Result<ImageRecord> {
        self.read_index()?.images.remove(id).ok_or_else(|| {
            ErrorKind::NotFound
                .marked(format!("image {id} is not in the store"))
                .into()
        })
    }

    /// Finds a stored image by full or short ID (`sha256:` optional) or by `name[:tag]`
    /// (`:latest` implied; a name may omit its registry host if that leaves one match).
    pub fn resolve(&self, name_or_id: &str) -> Result<ImageId> {
        typed(|| {
            let index = self.read_index()?;
            let wanted = name_or_id.strip_prefix("docker://").unwrap_or(name_or_id);
            let named = with_default_tag(wanted);
            if let Some(id) = index.names.get(&named) {
                return Ok(id.clone());
            }
            let by_suffix: BTreeSet<&ImageId> = index
                .names
                .iter()
                .filter(|(n, _)| n.ends_with(&format!("/{named}")))
                .map(|(_, id)| id)
                .collect();
            if by_suffix.len() == 1 {
                return Ok((*by_suffix.iter().next().unwrap()).clone());
            }
            let hex = wanted.strip_prefix("sha256:").unwrap_or(wanted);
            if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                let hex = hex.to_ascii_lowercase();
                let matches: Vec<&ImageId> = index
                    .images
                    .keys()
                    .filter(|id| id.0.hex().starts_with(&hex))
                    .collect();
                match matches.len() {
                    1 => return Ok(matches[0].clone()),
                    0 => {}
                    n => bail!("{name_or_id:?} is ambiguous: it is the start of {n} image IDs"),
                }
            }
            if by_suffix.len() > 1 {
                bail!("{name_or_id:?} is ambiguous: it names images from several registries");
            }
            Err(ErrorKind::NotFound
                .marked(format!(
                    "no image {name_or_id:?} in the store (see `ark image list`)"
                ))
                .into())
        })
    }

    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        typed(|| {
            let index = self.read_index()?;
            let mut names: BTreeMap<&ImageId, Vec<String>> = BTreeMap::new();
            for (name, id) in &index.names {
                names.entry(id).or_default().push(name.clone());
            }
            let mut out: Vec<ImageInfo> = index
                .images
                .values()
                .map(|r| ImageInfo {
                    id: r.id.clone(),
                    kind: r.kind,
                    names: names.get(&r.id).cloned().unwrap_or_default(),
                    size: r.size,
                    imported: r.imported,
                    source: r.source.clone(),
                })
                .collect();
            out.sort_by(|a, b| b.imported.cmp(&a.imported).then(a.id.cmp(&b.id)));
            Ok(out)
        })
    }

    pub(crate) fn read_blob(&self, d: &Digest, limit: u64) -> anyhow::Result<Vec<u8>> {
        let path = self.blob_path(d);
        let f = File::open(&path).with_context(|| format!("blob {d} missing from the store"))?;
        let mut buf = Vec::new();
        f.take(limit + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > limit {
            bail!("blob {d} is larger than {limit} bytes");
        }
        Ok(buf)
    }

    /// The image's manifest as stored (OCI/Docker manifest JSON, or the ACI's manifest).
    pub fn manifest(&self, id: &ImageId) -> Result<Vec<u8>> {
        typed(|| {
            let record = self.record(id)?;
            self.read_blob(&record.manifest, MAX_JSON)
        })
    }

    /// Entrypoint, cmd, env, user, working dir, labels and annotations of a stored image.
    pub fn image_config(&self, id: &ImageId) -> Result<ImageConfig> {
        typed(|| {
            let record = self.record(id)?;
            match record.kind {
                ImageKind::Oci => {
                    let manifest = self.read_blob(&record.manifest, MAX_JSON)?;
                    let config = self.read_blob(&record.config, MAX_JSON)?;
                    super::oci_layout::image_config(&manifest, &config)
                }
                ImageKind::Aci => {
                    let manifest = self.read_blob(&record.manifest, MAX_JSON)?;
                    super::aci::image_config(&manifest)
                }
            }
            .with_context(|| format!("reading the config of image {id}"))
        })
    }

    /// Removes images (by ID or name) and their blobs and render that no other image uses.
    pub fn remove(&self, name_or_id: &str) -> Result<ImageId> {
        typed(|| {
            let _excl = self.lock("store.lock", true)?;
            let id = self.resolve(name_or_id)?;
            self.update_index(|index| {
                index.images.remove(&id);
                index.names.retain(|_, v| *v != id);
                Ok(())
            })?;
            self.remove_render(id.0.hex())?;
            self.sweep_blobs()?;
            Ok(id)
        })
    }

    /// Removes an image's render unless a pod holds it (see [`ImageStore::hold`]); a held
    /// render stays until a later `gc` finds it free. Returns whether it was removed.
    fn remove_render(&self, hex: &str) -> anyhow::Result<bool> {
        let use_path = self.renders_dir().join(format!("{hex}.use"));
        let _free = match try_flock_exclusive(&use_path)? {
            Some(lock) => lock,
            None => return Ok(false),
        };
        let dir = self.renders_dir().join(hex);
        if dir.exists() && mounted_as_overlay_lower(&dir)? {
            // A prepared or exited pod keeps the render as its overlay's lower layer with no
            // process holding it; deleting it would pull the files out from under that pod.
            return Ok(false);
        }
        if dir.exists() {
            // Out of sight first (one rename), then the slow delete.
            let trash = self
                .tmp_dir()
                .join(format!("trash-{}", uuid::Uuid::new_v4()));
            fs::rename(&dir, &trash)?;
            remove_tree(&trash)?;
        }
        let _ = fs::remove_file(self.renders_dir().join(format!("{hex}.lock")));
        let _ = fs::remove_file(&use_path);
        Ok(true)
    }

    /// Marks the image's render as in use for as long as the returned hold (an open file with a
    /// shared flock) lives — across `exec` too, if [`RenderHold::keep_across_exec`] is called —
    /// so `ark image rm`/`gc` leave the tree alone while a pod runs on it.
    pub fn hold(&self, id: &ImageId) -> Result<RenderHold> {
        typed(|| {
            let path = self.renders_dir().join(format!("{}.use", id.0.hex()));
            Ok(RenderHold(flock(&path, false)?))
        })
    }

    /// Deletes blobs no image references; the caller holds store.lock exclusively.
    fn sweep_blobs(&self) -> anyhow::Result<(usize, u64)> {
        let index = self.read_index()?;
        let live: BTreeSet<String> = index
            .images
            .values()
            .flat_map(|r| r.blobs().map(|d| d.hex().to_string()))
            .collect();
        let mut count = 0;
        let mut bytes = 0;
        for entry in fs::read_dir(self.root.join("blobs/sha256"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(entry.path())?;
                count += 1;
            }
        }
        Ok((count, bytes))
    }

    /// Reclaims what interrupted commands left: staging dirs, unreferenced blobs, renders of
    /// removed images. Waits for running fetches and renders to finish.
    pub fn gc(&self) -> Result<GcReport> {
        typed(|| {
            let _excl = self.lock("store.lock", true)?;
            let mut report = GcReport::default();
            for entry in fs::read_dir(self.tmp_dir())? {
                let path = entry?.path();
                remove_tree(&path).with_context(|| format!("removing {}", path.display()))?;
                report.tmp += 1;
            }
            let (blobs, bytes) = self.sweep_blobs()?;
            report.blobs = blobs;
            report.blob_bytes = bytes;
            let index = self.read_index()?;
            let live: BTreeSet<String> = index
                .images
                .keys()
                .map(|id| id.0.hex().to_string())
                .collect();
            for entry in fs::read_dir(self.renders_dir())? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                let Some(hex) = name.get(..64).filter(|h| !live.contains(*h)) else {
                    continue;
                };
                if name.len() == 64 && self.remove_render(hex)? {
                    report.renders += 1;
                } else if name.len() > 64 && !self.renders_dir().join(hex).exists() {
                    // A lock file whose render is gone (or never finished).
                    if let Some(_free) =
                        try_flock_exclusive(&self.renders_dir().join(format!("{hex}.use")))?
                    {
                        let _ = fs::remove_file(self.renders_dir().join(&name));
                    }
                }
            }
            Ok(report)
        })
    }

    /// Writes an image as an OCI image layout at `dest` (which must not exist yet).
    pub fn export(&self, id: &ImageId, dest: &Path) -> Result<()> {
        typed(|| {
            let record = self.record(id)?;
            if record.kind != ImageKind::Oci {
                bail!(
                    "image {id} is an ACI; only OCI/Docker images can be exported as an OCI layout"
                );
            }
            if dest.exists() {
                bail!("{} already exists", dest.display());
            }
            let names: Vec<String> = self
                .read_index()?
                .names
                .iter()
                .filter(|(_, v)| **v == record.id)
                .map(|(n, _)| n.clone())
                .collect();
            let parent = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let file_name = dest.file_name().context("export path has no file name")?;
            // Build beside the destination, then rename: a half-written layout is never visible.
            let tmp = parent.join(format!(
                ".{}.tmp-{}",
                file_name.to_string_lossy(),
                uuid::Uuid::new_v4()
            ));
            let result = super::oci_layout::export(&|d| self.blob_path(d), &record, &names, &tmp)
                .and_then(|()| fs::rename(&tmp, dest).context("renaming into place"));
            if result.is_err() {
                let _ = remove_tree(&tmp);
            }
            result.with_context(|| format!("exporting {id} to {}", dest.display()))
        })
    }
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub tmp: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub renders: usize,
}

/// A pod's claim on a rendered rootfs; see [`ImageStore::hold`].
#[derive(Debug)]
pub struct RenderHold(Lock);

impl RenderHold {
    /// Lets the claim outlive an `exec` (stage0 ends by exec'ing stage1): clears FD_CLOEXEC.
    #[allow(dead_code)] // for the pod half's `ark run`
    pub fn keep_across_exec(&self) -> anyhow::Result<()> {
        let fd = &(self.0).0;
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).context("clearing FD_CLOEXEC")?;
        Ok(())
    }
}
