//! Atomic file replacement: a reader never sees half a file.

use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically and durably: a new temp file in the same directory
/// (`O_EXCL`, so nothing that was there is followed or reused), fsync, rename, fsync of the
/// directory. A reader never sees half a file; an interruption or a crash leaves the old
/// version or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(None, path, bytes, true)
}

/// [`write_atomic`] without the fsyncs, for state that only matters while the pod runs (the
/// stage2 config, pids, "running" statuses): a reader still never sees half a file, and a
/// crash of the host loses nothing that is not rewritten anyway.
pub fn write_atomic_volatile(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(None, path, bytes, false)
}

/// [`write_atomic`] with the temp file in `tmp_dir` (which must be on `path`'s filesystem), for
/// a store that keeps its half-written files where it reclaims them rather than beside `path`.
pub fn write_atomic_in(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(Some(tmp_dir), path, bytes, true)
}

fn write_atomic_with(
    tmp_dir: Option<&Path>,
    path: &Path,
    bytes: &[u8],
    durable: bool,
) -> io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Unique within the process (threads) and across processes (pid): O_EXCL never collides
    // with a live writer; a dead writer's leftover under the same name is simply refused.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tmp_dir.unwrap_or(dir).join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, path)?;
        if durable {
            // The rename itself is only durable once the directory is.
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces() {
        let dir = std::env::temp_dir().join(format!("ark-os-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn atomic_write_in_a_tmp_dir_leaves_nothing_there() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let p = dir.path().join("index.json");
        write_atomic_in(&tmp, &p, b"one").unwrap();
        write_atomic_in(&tmp, &p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // A temp dir on the way that is gone is an error, and `path` is untouched.
        assert!(write_atomic_in(&dir.path().join("gone"), &p, b"three").is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
    }
}
