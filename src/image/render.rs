//! Rendering: an image's layers applied in order into `renders/<hex>/rootfs`, once per image.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::digest::HashingReader;
use super::error::{typed, Result};
use super::extract::{decompress, Extractor};
use super::fsutil::{flock, fsync_dir, remove_tree};
use super::limits::RenderLimits;
use super::progress::Progress;
use super::record::{ImageKind, ImageRecord};
use super::store::ImageStore;
use super::ImageId;

impl ImageStore {
    /// The image's rendered rootfs, rendering it first if this is the first ask. Concurrent
    /// callers wait for one render; a render interrupted half way is never visible. The tree is
    /// shared by every pod of this image: use it read-only (as an overlay lower dir, say).
    pub fn render(&self, id: &ImageId) -> Result<PathBuf> {
        typed(|| {
            let final_dir = self.renders_dir().join(id.0.hex());
            let rootfs = final_dir.join("rootfs");
            if rootfs.is_dir() {
                return Ok(rootfs);
            }
            let record = self.record(id)?;
            let _shared = self.lock("store.lock", false)?;
            let _render = flock(
                &self.renders_dir().join(format!("{}.lock", id.0.hex())),
                true,
            )?;
            if rootfs.is_dir() {
                return Ok(rootfs);
            }
            let tmp = self
                .tmp_dir()
                .join(format!("render-{}", uuid::Uuid::new_v4()));
            let result = self.render_into(&record, &tmp).and_then(|()| {
                fs::rename(&tmp, &final_dir).context("moving the render into place")?;
                fsync_dir(&self.renders_dir())
            });
            if result.is_err() {
                let _ = remove_tree(&tmp);
            }
            result.with_context(|| format!("rendering image {id}"))?;
            Ok(rootfs)
        })
    }

    fn render_into(&self, record: &ImageRecord, dir: &Path) -> anyhow::Result<()> {
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(&rootfs)?;
        let mut extractor = Extractor::new(&rootfs, RenderLimits::from_env()?)?;
        let progress = Progress::new();
        match record.kind {
            ImageKind::Oci => {
                let identity = |p: &Path| Some(p.to_path_buf());
                for (i, layer) in record.layers.iter().enumerate() {
                    let what = format!("layer {} {}", i + 1, layer.digest.short());
                    let file = File::open(self.blob_path(&layer.digest))
                        .with_context(|| format!("{what}: blob missing from the store"))?;
                    let bar =
                        progress.bytes(format!("render {}", layer.digest.short()), layer.size);
                    let stream =
                        decompress(BufReader::with_capacity(1 << 20, bar.wrap_read(file)))?;
                    let mut hashing = HashingReader::new(extractor.metered(stream));
                    extractor
                        .apply_layer(&mut hashing, &identity)
                        .with_context(|| what.clone())?;
                    // Draining what follows the tar counts against the limit too.
                    let (diff_id, _) = hashing
                        .finish()
                        .map_err(|e| extractor.limit_hit().map_or(e.into(), anyhow::Error::msg))
                        .with_context(|| what.clone())?;
                    bar.finish_and_clear();
                    if let Some(want) = &layer.diff_id {
                        if *want != diff_id {
                            bail!(
                                "{what}: uncompressed content is {diff_id}, the config says {want}"
                            );
                        }
                    }
                }
            }
            ImageKind::Aci => {
                let layer = record
                    .layers
                    .first()
                    .context("ACI record without its file")?;
                let file = File::open(self.blob_path(&layer.digest)).context("ACI blob missing")?;
                let bar = progress.bytes(format!("render {}", layer.digest.short()), layer.size);
                let stream = decompress(BufReader::with_capacity(1 << 20, bar.wrap_read(file)))?;
                let strip = |p: &Path| super::aci::rootfs_path(p);
                let stream = extractor.metered(stream);
                extractor.apply_layer(stream, &strip)?;
                bar.finish_and_clear();
            }
        }
        extractor.finish()?;
        // One syncfs instead of an fsync per file: the rename that publishes the tree must not
        // reach the disk before the tree does.
        let fd = File::open(dir)?;
        rustix::fs::syncfs(&fd).context("syncing the render")?;
        Ok(())
    }

    /// Copies the (cached) rendered rootfs to `dest`, which must not exist or be empty.
    pub fn render_to(&self, id: &ImageId, dest: &Path) -> Result<()> {
        typed(|| {
            if dest.exists() && fs::read_dir(dest)?.next().is_some() {
                bail!("{} exists and is not empty", dest.display());
            }
            let rootfs = self.render(id)?;
            // A concurrent `ark image rm` must not pull the tree away mid-copy.
            let _hold = self.hold(id)?;
            fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
            // cp -a keeps modes, owners, times, links, devices and xattrs, and is what users
            // would do by hand; the source is ark's own tree.
            let status = Command::new("cp")
                .arg("-a")
                .arg("--preserve=all")
                .arg("--no-target-directory")
                .arg(&rootfs)
                .arg(dest)
                .status()
                .context("running cp")?;
            if !status.success() {
                bail!("copying the rootfs to {} failed ({status})", dest.display());
            }
            Ok(())
        })
    }
}
