//! Writing and reading an app's log: k8s-file records ([`ark_pod_spec::logs`]) in a directory
//! the host owns, rotated at a size cap, never blocking or failing the app's output on a
//! full disk (what cannot be written is counted and marked instead).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use ark_pod_spec::logs::{
    dropped_marker, encode_records, log_file_name, now_timestamp, parse_record, LogLimits, Stream,
    MAX_RECORD_LINE,
};
use rustix::fs::{Mode, OFlags};

/// Output bytes encoded at a time (bounding the encoding buffer: a slice of newlines makes
/// records ~40 times its size).
const ENCODE_SLICE: usize = 4096;

/// An app's log, appended to by whoever relays its output (guest-init for ns/fly,
/// stage1-kvm for kvm).
#[derive(Debug)]
pub struct LogWriter {
    dir: OwnedFd,
    app: String,
    limits: LogLimits,
    file: Option<File>,
    size: u64,
    /// Bytes of output that could not be logged since the last marker, and why.
    pending_drop: u64,
    why: String,
    /// Bytes never logged over the writer's life.
    dropped_total: u64,
    unsynced: bool,
    scratch: Vec<u8>,
}

/// `dir` opened as a directory, refusing a symlink.
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )?)
}

impl LogWriter {
    /// Opens (creating) `<dir>/<app>.log` for appending; `dir` must exist.
    pub fn open(dir: &Path, app: &str, limits: LogLimits) -> io::Result<Self> {
        let mut w = LogWriter {
            dir: open_dir(dir)?,
            app: app.to_string(),
            limits,
            file: None,
            size: 0,
            pending_drop: 0,
            why: String::new(),
            dropped_total: 0,
            unsynced: false,
            scratch: Vec::new(),
        };
        w.open_live()?;
        Ok(w)
    }

    fn open_live(&mut self) -> io::Result<()> {
        let fd = rustix::fs::openat(
            &self.dir,
            log_file_name(&self.app, 0),
            OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        self.size = meta.len();
        self.file = Some(file);
        Ok(())
    }

    /// Records one chunk of the app's output.
    pub fn record(&mut self, stream: Stream, data: &[u8]) {
        for slice in data.chunks(ENCODE_SLICE) {
            self.record_slice(stream, slice);
        }
    }

    fn record_slice(&mut self, stream: Stream, data: &[u8]) {
        if self.pending_drop > 0 {
            let marker = dropped_marker(self.pending_drop, &self.why);
            if self.append(&marker).is_ok() {
                self.pending_drop = 0;
            }
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        encode_records(&mut buf, &now_timestamp(), stream, data);
        if let Err(e) = self.append(&buf) {
            let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
            self.pending_drop = self.pending_drop.saturating_add(n);
            self.dropped_total = self.dropped_total.saturating_add(n);
            self.why = e.to_string();
        }
        self.scratch = buf;
    }

    /// Writes whole records, rotating whenever the next ones would pass the cap, so no file
    /// ever holds more than the cap. A failed write is undone (the file is cut back), so a
    /// log never holds a torn record.
    fn append(&mut self, records: &[u8]) -> io::Result<()> {
        let cap = usize::try_from(self.limits.max_size).unwrap_or(usize::MAX);
        let mut rest = records;
        while !rest.is_empty() {
            let used = usize::try_from(self.size).unwrap_or(usize::MAX);
            let room = cap.saturating_sub(used).min(rest.len());
            // The most whole records that fit; none fit: a new file (a record always fits
            // in an empty one, see MIN_MAX_SIZE).
            let Some(end) = rest[..room].iter().rposition(|b| *b == b'\n') else {
                if self.size == 0 {
                    return Err(io::Error::other("record larger than the log cap"));
                }
                self.rotate()?;
                continue;
            };
            let (now, later) = rest.split_at(end + 1);
            self.write_records(now)?;
            rest = later;
        }
        Ok(())
    }

    fn write_records(&mut self, records: &[u8]) -> io::Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                self.open_live()?;
                self.file.as_mut().expect("just opened")
            }
        };
        match file.write_all(records) {
            Ok(()) => {
                self.size += u64::try_from(records.len()).unwrap_or(u64::MAX);
                self.unsynced = true;
                Ok(())
            }
            Err(e) => {
                let _ = file.set_len(self.size);
                Err(e)
            }
        }
    }

    /// `<app>.log.<n>` → `.<n+1>` (the oldest falls off), `<app>.log` → `.1`, a new live file.
    fn rotate(&mut self) -> io::Result<()> {
        self.sync();
        let last = self.limits.max_files.saturating_sub(1);
        for n in (1..last).rev() {
            match rustix::fs::renameat(
                &self.dir,
                log_file_name(&self.app, n),
                &self.dir,
                log_file_name(&self.app, n + 1),
            ) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.file = None;
        if last >= 1 {
            rustix::fs::renameat(
                &self.dir,
                log_file_name(&self.app, 0),
                &self.dir,
                log_file_name(&self.app, 1),
            )?;
        } else {
            rustix::fs::unlinkat(
                &self.dir,
                log_file_name(&self.app, 0),
                rustix::fs::AtFlags::empty(),
            )?;
        }
        self.open_live()
    }

    /// Bytes of output this writer could not log.
    pub fn dropped(&self) -> u64 {
        self.dropped_total
    }

    /// Makes what was logged durable (when a stream ends, or at the pod's end).
    pub fn sync(&mut self) {
        if let (Some(f), true) = (&self.file, self.unsynced) {
            let _ = f.sync_data();
            self.unsynced = false;
        }
    }
}

/// Why a log could not be read: one line.
#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    #[error("{file}: {source}")]
    Io { file: String, source: io::Error },
    #[error("{file}: line {line}: not a log record")]
    Garbage { file: String, line: u64 },
}

/// One open file of an app's log, read record by record.
#[derive(Debug)]
pub struct LogFile {
    name: String,
    reader: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
}

impl LogFile {
    /// `<dir>/<app>.log[.n]`, relative to an open directory; None if it does not exist.
    pub fn open(dir: impl AsFd, app: &str, n: u32) -> Result<Option<Self>, LogReadError> {
        let name = log_file_name(app, n);
        let io_err = |source: io::Error| LogReadError::Io {
            file: name.clone(),
            source,
        };
        let fd = match rustix::fs::openat(
            dir,
            &name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io_err(e.into())),
        };
        let file = File::from(fd);
        if !file.metadata().map_err(io_err)?.is_file() {
            return Err(io_err(io::Error::other("not a regular file")));
        }
        Ok(Some(LogFile {
            name,
            reader: BufReader::with_capacity(64 * 1024, file),
            line: 0,
            buf: Vec::with_capacity(1024),
        }))
    }

    /// The file's inode, to notice a rotation.
    pub fn ino(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.reader.get_ref().metadata().ok().map(|m| m.ino())
    }

    /// Hands each complete record to `each` until the end of what the file holds now; a
    /// half-written last line is left for the next call. Lines are capped at
    /// [`MAX_RECORD_LINE`] bytes; anything that is not a record ends the read with an error.
    pub fn read_available(
        &mut self,
        mut each: impl FnMut(&ark_pod_spec::logs::Record<'_>),
    ) -> Result<(), LogReadError> {
        loop {
            let room = (MAX_RECORD_LINE + 1).saturating_sub(self.buf.len());
            let n = (&mut self.reader)
                .take(u64::try_from(room).unwrap_or(u64::MAX))
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| LogReadError::Io {
                    file: self.name.clone(),
                    source,
                })?;
            if self.buf.last() != Some(&b'\n') {
                if self.buf.len() > MAX_RECORD_LINE {
                    return Err(self.garbage());
                }
                if n == 0 {
                    return Ok(()); // the end for now; a partial line waits
                }
                continue;
            }
            let line = &self.buf[..self.buf.len() - 1];
            match parse_record(line) {
                Some(r) => each(&r),
                None => return Err(self.garbage()),
            }
            self.line += 1;
            self.buf.clear();
        }
    }

    fn garbage(&self) -> LogReadError {
        LogReadError::Garbage {
            file: self.name.clone(),
            line: self.line + 1,
        }
    }
}

/// Creates a pod's logs directory (the stage1, before the pod runs): owner-only, and
/// refused if something that is not a directory (a symlink) is in its place.
pub fn create_log_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_dir(dir).map(drop),
        r => r,
    }
}

/// The directory of a pod's logs, opened (a symlink refused).
pub fn open_log_dir(dir: &Path) -> io::Result<OwnedFd> {
    open_dir(dir)
}

/// Every record of an app's log, oldest file first (for tests and simple readers).
pub fn read_all(
    dir: &Path,
    app: &str,
    max_files: u32,
    mut each: impl FnMut(&ark_pod_spec::logs::Record<'_>),
) -> Result<(), LogReadError> {
    let fd = open_dir(dir).map_err(|source| LogReadError::Io {
        file: dir.display().to_string(),
        source,
    })?;
    for n in (0..max_files).rev() {
        if let Some(mut f) = LogFile::open(&fd, app, n)? {
            f.read_available(&mut each)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_pod_spec::logs::MIN_MAX_SIZE;

    fn collect(dir: &Path, app: &str) -> (Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        read_all(dir, app, 16, |r| match r.stream {
            Stream::Stdout => out.extend(r.output()),
            Stream::Stderr => err.extend(r.output()),
        })
        .unwrap();
        (out, err)
    }

    #[test]
    fn records_and_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(d.path(), "web", LogLimits::default()).unwrap();
        w.record(Stream::Stdout, b"out\n\x00\xffbin");
        w.record(Stream::Stderr, b"err\n");
        w.record(Stream::Stdout, b"ary\n");
        w.sync();
        assert_eq!(
            collect(d.path(), "web"),
            (b"out\n\x00\xffbinary\n".to_vec(), b"err\n".to_vec())
        );
    }

    #[test]
    fn rotates_and_stays_bounded() {
        let d = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_size: MIN_MAX_SIZE,
            max_files: 3,
        };
        let mut w = LogWriter::open(d.path(), "web", limits).unwrap();
        let line = vec![b'a'; 1000];
        for _ in 0..1000 {
            w.record(Stream::Stdout, &line);
        }
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["web.log", "web.log.1", "web.log.2"]);
        let total: u64 = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 3 * MIN_MAX_SIZE, "{total}");
        for n in ["web.log", "web.log.1", "web.log.2"] {
            let len = std::fs::metadata(d.path().join(n)).unwrap().len();
            assert!(len <= MIN_MAX_SIZE, "{n}: {len}");
        }
        let (out, _) = collect(d.path(), "web");
        assert!(u64::try_from(out.len()).unwrap() > 2 * MIN_MAX_SIZE - 5000);
        assert!(out.iter().all(|b| *b == b'a'));
        // Newlines only: ~40 bytes of record each, still never past the cap.
        w.record(Stream::Stderr, &[b'\n'; 100_000]);
        assert!(std::fs::metadata(d.path().join("web.log")).unwrap().len() <= MIN_MAX_SIZE);
    }

    #[test]
    fn garbage_and_overlong_lines_fail_with_one_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("web.log"), b"nonsense\n").unwrap();
        let e = read_all(d.path(), "web", 1, |_| {})
            .unwrap_err()
            .to_string();
        assert_eq!(e, "web.log: line 1: not a log record");
        std::fs::write(d.path().join("web.log"), vec![b'x'; 10 * MAX_RECORD_LINE]).unwrap();
        assert!(matches!(
            read_all(d.path(), "web", 1, |_| {}),
            Err(LogReadError::Garbage { .. })
        ));
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("db.log")).unwrap();
        assert!(read_all(d.path(), "db", 1, |_| {}).is_err());
    }

    #[test]
    fn a_failing_disk_drops_with_a_marker() {
        // /dev/full: every write fails with ENOSPC, as on a full disk.
        if !Path::new("/dev/full").exists() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", d.path().join("web.log")).unwrap();
        // The symlink is refused outright: the writer never writes through one.
        assert!(LogWriter::open(d.path(), "web", LogLimits::default()).is_err());
        std::fs::remove_file(d.path().join("web.log")).unwrap();
        let mut w = LogWriter::open(d.path(), "web", LogLimits::default()).unwrap();
        // Swap the file for /dev/full under the writer.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        w.file = Some(full);
        w.record(Stream::Stdout, b"lost\n");
        assert_eq!(w.dropped(), 5);
        w.file = None; // the disk is back: the next record reopens the live file
        w.record(Stream::Stdout, b"kept\n");
        let (out, err) = collect(d.path(), "web");
        assert_eq!(out, b"kept\n");
        let err = String::from_utf8(err).unwrap();
        assert!(err.starts_with("ark: dropped 5 bytes"), "{err}");
    }
}
