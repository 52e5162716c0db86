//! Where a pull's output goes: straight into the layout directory, or (in the unprivileged
//! child) over a pipe to the parent, which writes the directory itself.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::image::limits::ReserveWriter;
use crate::image::progress::Progress;
use crate::trust::signing::{self, DockerReference};

/// Receives the pieces of an OCI layout as a pull produces them.
pub trait LayoutSink {
    /// A blob of `size` bytes follows through [`LayoutSink::data`], then [`LayoutSink::end_blob`].
    fn begin_blob(&mut self, digest: &str, size: u64) -> Result<()>;
    fn data(&mut self, chunk: &[u8]) -> Result<()>;
    fn end_blob(&mut self) -> Result<()>;
    /// A small blob already in memory.
    fn blob_bytes(&mut self, digest: &str, data: &[u8]) -> Result<()> {
        self.begin_blob(digest, data.len() as u64)?;
        self.data(data)?;
        self.end_blob()
    }
    /// `index.json` or `oci-layout`.
    fn file(&mut self, name: &str, data: &[u8]) -> Result<()>;
    /// The simple-signing signatures for this manifest digest (empty if there are none).
    fn signatures(&mut self, digest: &str) -> Result<Vec<Vec<u8>>>;
}

/// The only names a layout written by a pull may contain.
pub fn valid_layout_name(name: &str) -> bool {
    matches!(name, "index.json" | "oci-layout")
}

fn blob_hex(digest: &str) -> Result<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| anyhow!("invalid blob digest {digest:?}"))
}

struct OpenBlob {
    digest: String,
    size: u64,
    written: u64,
    hasher: Sha256,
    file: ReserveWriter<fs::File>,
    path: PathBuf,
    bar: Option<indicatif::ProgressBar>,
}

/// Writes the layout into a directory, checking each blob's size and digest itself (in the
/// privileged parent this is the second, independent check of what the child sent). Blobs are
/// written but not fsynced: the store syncs what it adopts.
pub struct DirSink {
    dest: PathBuf,
    open: Option<OpenBlob>,
    progress: Option<Progress>,
    /// Digests of the blobs this sink wrote and verified.
    complete: std::collections::HashSet<String>,
}

/// By hand: the open blob's hasher, file and progress bar say nothing useful.
impl std::fmt::Debug for DirSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirSink")
            .field("dest", &self.dest)
            .field("open_blob", &self.open.as_ref().map(|b| &b.digest))
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

impl DirSink {
    pub fn new(dest: &Path, progress: bool) -> Result<Self> {
        let blobs = dest.join("blobs/sha256");
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        Ok(DirSink {
            dest: dest.to_path_buf(),
            open: None,
            progress: progress.then(Progress::new),
            complete: Default::default(),
        })
    }

    /// Digests of the blobs this sink wrote into the layout and verified while writing them
    /// (not synced: see [`LayoutSink::end_blob`] here).
    pub fn verified(&self) -> &std::collections::HashSet<String> {
        &self.complete
    }

    /// Whether a blob was begun and not ended.
    pub fn in_blob(&self) -> bool {
        self.open.is_some()
    }

    /// The contents of a blob this sink wrote and verified, if it did.
    pub fn verified_blob(&self, digest: &str) -> Option<Vec<u8>> {
        if !self.complete.contains(digest) {
            return None;
        }
        fs::read(self.dest.join("blobs/sha256").join(blob_hex(digest).ok()?)).ok()
    }
}

impl LayoutSink for DirSink {
    fn begin_blob(&mut self, digest: &str, size: u64) -> Result<()> {
        if self.open.is_some() {
            bail!("blob {digest} started before the previous one ended");
        }
        let path = self.dest.join("blobs/sha256").join(blob_hex(digest)?);
        // A blob may legitimately appear twice (config == a layer is impossible, but be lenient
        // about identical content): overwrite with the new, re-verified copy, which counts only
        // once it is verified in turn.
        self.complete.remove(digest);
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        // Refused here, before the first byte, if the declared size cannot fit.
        let file = match ReserveWriter::new(file, &format!("blob {digest}"), Some(size)) {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        let bar = self
            .progress
            .as_ref()
            .filter(|_| size > 64 << 10)
            .map(|p| p.bytes(format!("{:.19}", digest), size));
        self.open = Some(OpenBlob {
            digest: digest.to_string(),
            size,
            written: 0,
            hasher: Sha256::new(),
            file,
            path,
            bar,
        });
        Ok(())
    }

    fn data(&mut self, chunk: &[u8]) -> Result<()> {
        let blob = self
            .open
            .as_mut()
            .ok_or_else(|| anyhow!("blob data outside a blob"))?;
        blob.written += chunk.len() as u64;
        if blob.written > blob.size {
            bail!(
                "blob {} is larger than its declared {} bytes",
                blob.digest,
                blob.size
            );
        }
        blob.hasher.update(chunk);
        blob.file
            .write_all(chunk)
            .with_context(|| format!("writing blob {}", blob.digest))?;
        if let Some(bar) = &blob.bar {
            bar.inc(chunk.len() as u64);
        }
        Ok(())
    }

    fn end_blob(&mut self) -> Result<()> {
        let blob = self
            .open
            .take()
            .ok_or_else(|| anyhow!("blob end outside a blob"))?;
        if let Some(bar) = &blob.bar {
            bar.finish_and_clear();
        }
        let got = format!("sha256:{}", hex::encode(blob.hasher.finalize()));
        if blob.written != blob.size || got != blob.digest {
            let _ = fs::remove_file(&blob.path);
            bail!(
                "blob {} does not match: got {} bytes with digest {got}, expected {} bytes",
                blob.digest,
                blob.written,
                blob.size
            );
        }
        // Not synced here: whoever takes the blob makes it durable before it counts (the store
        // fsyncs it when adopting it). Starting the write-back now lets that fsync find the
        // data on its way while the next blob streams in; best effort, a hint only.
        // SAFETY: a plain syscall on an fd this sink owns.
        unsafe {
            libc::sync_file_range(
                std::os::fd::AsRawFd::as_raw_fd(blob.file.get_ref()),
                0,
                0,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.complete.insert(blob.digest);
        Ok(())
    }

    fn file(&mut self, name: &str, data: &[u8]) -> Result<()> {
        if !valid_layout_name(name) {
            bail!("refusing to write {name:?} into the layout");
        }
        let path = self.dest.join(name);
        fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
    }

    fn signatures(&mut self, _digest: &str) -> Result<Vec<Vec<u8>>> {
        bail!("internal: DirSink has no signature source")
    }
}

impl Drop for DirSink {
    fn drop(&mut self) {
        if let Some(blob) = self.open.take() {
            // An interrupted blob is not left looking complete.
            let _ = fs::remove_file(&blob.path);
        }
    }
}

/// In-process pulls (not root): the directory plus the lookaside signatures read directly.
#[derive(Debug)]
pub struct LocalSink<'a> {
    pub dir: &'a mut DirSink,
    pub signature_dir: Option<PathBuf>,
    pub reference: DockerReference,
}

impl LayoutSink for LocalSink<'_> {
    fn begin_blob(&mut self, digest: &str, size: u64) -> Result<()> {
        self.dir.begin_blob(digest, size)
    }
    fn data(&mut self, chunk: &[u8]) -> Result<()> {
        self.dir.data(chunk)
    }
    fn end_blob(&mut self) -> Result<()> {
        self.dir.end_blob()
    }
    fn file(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.dir.file(name, data)
    }
    fn signatures(&mut self, digest: &str) -> Result<Vec<Vec<u8>>> {
        match &self.signature_dir {
            Some(dir) => signing::read_lookaside(dir, &self.reference, digest),
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only blobs hashed in full by this sink count as verified (the store skips re-hashing
    /// those): a blob begun again no longer counts, and a bad one never does.
    #[test]
    fn verified_means_hashed_here() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = DirSink::new(tmp.path(), false).unwrap();
        let data = b"layer bytes";
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        dir.blob_bytes(&digest, data).unwrap();
        assert!(dir.verified().contains(&digest));

        dir.begin_blob(&digest, data.len() as u64).unwrap();
        dir.data(b"layer").unwrap();
        assert!(dir.in_blob());
        assert!(!dir.verified().contains(&digest));
        dir.data(b" bytez").unwrap();
        assert!(dir.end_blob().is_err());
        assert!(!dir.verified().contains(&digest));
        assert!(!tmp.path().join("blobs/sha256").join(&digest[7..]).exists());
    }

    /// The parent refuses a blob whose declared size cannot fit above the store's reserve,
    /// whatever the (possibly subverted) fetch child checked, and keeps no file of it.
    #[test]
    fn a_blob_too_big_for_the_filesystem_is_refused_before_its_first_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = DirSink::new(tmp.path(), false).unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let err = dir.begin_blob(&digest, 1 << 60).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&digest) && msg.contains("declared") && msg.contains("reserve"),
            "{msg}"
        );
        assert!(!dir.in_blob());
        let left: Vec<_> = fs::read_dir(tmp.path().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
