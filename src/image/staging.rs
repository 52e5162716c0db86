//! One fetch's staging directory: blobs written and verified there before the store takes them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::digest::{Digest, HashingReader, HashingWriter, OVERSIZE};
use super::fsutil::remove_tree;
use super::limits::ReserveWriter;
use super::progress::Progress;

/// Where blob `d` lives in a store's `blobs/sha256` directory.
pub(crate) fn blob_path(blobs_dir: &Path, d: &Digest) -> PathBuf {
    blobs_dir.join(d.hex())
}

/// One fetch's private staging directory under `tmp/`. Blobs are written and verified here
/// and only moved into `blobs/` when the whole image checked out; dropped = deleted.
pub(crate) struct Staging {
    /// The store's `blobs/sha256`: blobs it has already need not be staged again.
    blobs_dir: PathBuf,
    pub dir: PathBuf,
    pub(crate) blobs: Vec<(Digest, PathBuf)>,
    pub progress: Progress,
}

impl Staging {
    /// A new staging directory in `tmp_dir` for a store whose blobs are in `blobs_dir`.
    pub(crate) fn new(tmp_dir: &Path, blobs_dir: &Path) -> anyhow::Result<Self> {
        let dir = tmp_dir.join(format!("fetch-{}", uuid::Uuid::new_v4()));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Staging {
            blobs_dir: blobs_dir.to_path_buf(),
            dir,
            blobs: Vec::new(),
            progress: Progress::new(),
        })
    }

    /// Where a blob staged here or already in the store can be read.
    pub fn path_of(&self, d: &Digest) -> Option<PathBuf> {
        if let Some((_, p)) = self.blobs.iter().find(|(x, _)| x == d) {
            return Some(p.clone());
        }
        let p = blob_path(&self.blobs_dir, d);
        p.exists().then_some(p)
    }

    /// Copies a blob in, hashing as it goes. With `expect`, refuses a blob whose digest or
    /// size differs (stopping as soon as it grows past the size), and skips the copy if the
    /// store already has that digest.
    pub fn put(
        &mut self,
        src: &mut dyn Read,
        expect: Option<(&Digest, u64)>,
        what: &str,
    ) -> anyhow::Result<(Digest, u64)> {
        if let Some((d, size)) = expect {
            if let Some(p) = self.path_of(d) {
                let have = fs::metadata(&p)?.len();
                if have != size {
                    bail!("{what}: declared size {size} but blob {d} has {have} bytes");
                }
                return Ok((d.clone(), size));
            }
        }
        let tmp = self.dir.join(format!("blob-{}", self.blobs.len()));
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let reserved = ReserveWriter::new(&file, what, expect.map(|e| e.1))
            .inspect_err(|_| drop(fs::remove_file(&tmp)))?;
        let bar = self.progress.bytes(what, expect.map_or(0, |e| e.1));
        let mut w = HashingWriter::new(bar.wrap_write(reserved), expect.map(|e| e.1));
        // io::copy reads straight into a BufReader's buffer: 1 MiB writes, not 8 KiB.
        let copied = io::copy(&mut io::BufReader::with_capacity(1 << 20, src), &mut w);
        bar.finish_and_clear();
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            if e.to_string() == OVERSIZE {
                bail!("{what}: {OVERSIZE} ({})", expect.map_or(0, |e| e.1));
            }
            return Err(e).with_context(|| format!("{what}: copying"));
        }
        let (_, digest, size) = w.finish();
        if let Some((d, want)) = expect {
            if size != want {
                let _ = fs::remove_file(&tmp);
                bail!("{what}: blob is {size} bytes, its descriptor says {want}");
            }
            if digest != *d {
                let _ = fs::remove_file(&tmp);
                bail!("{what}: content has digest {digest}, not the declared {d}");
            }
        }
        file.sync_all()?;
        self.blobs.push((digest.clone(), tmp));
        Ok((digest, size))
    }

    /// Takes over a file already on the store's filesystem (the registry client's download)
    /// and moves it instead of copying. `hashed`: this process wrote the file itself and
    /// verified its digest while writing it (the registry client's `DirSink`, never the fetch
    /// child), so hashing it again would only repeat that; its size is still checked. Otherwise
    /// it is hashed here.
    pub fn adopt(
        &mut self,
        path: &Path,
        digest: &Digest,
        size: u64,
        hashed: bool,
        what: &str,
    ) -> anyhow::Result<()> {
        if self.path_of(digest).is_some() {
            return self
                .put(&mut io::empty(), Some((digest, size)), what)
                .map(|_| ());
        }
        let file =
            File::open(path).with_context(|| format!("{what}: missing from the download"))?;
        if hashed {
            let len = file
                .metadata()
                .with_context(|| format!("{what}: reading"))?
                .len();
            if len != size {
                bail!("{what}: blob is {len} bytes, its descriptor says {size}");
            }
        } else {
            let bar = self
                .progress
                .bytes(format!("verify {}", digest.short()), size);
            let mut reader = HashingReader::new(bar.wrap_read(&file).take(size + 1));
            let (actual, len) = reader
                .finish_read()
                .with_context(|| format!("{what}: reading"))?;
            bar.finish_and_clear();
            if len != size {
                bail!("{what}: blob is {len} bytes, its descriptor says {size}");
            }
            if actual != *digest {
                bail!("{what}: content has digest {actual}, not the declared {digest}");
            }
        }
        // The downloader need not have synced it; the store's blobs are durable before they count.
        file.sync_all()?;
        let dest = self.dir.join(format!("blob-{}", self.blobs.len()));
        fs::rename(path, &dest).with_context(|| format!("{what}: moving into the store"))?;
        self.blobs.push((digest.clone(), dest));
        Ok(())
    }

    pub fn put_bytes(&mut self, bytes: &[u8], what: &str) -> anyhow::Result<Digest> {
        Ok(self.put(&mut &bytes[..], None, what)?.0)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = remove_tree(&self.dir);
    }
}
