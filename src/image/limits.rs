//! Bounds on one render, so a small hostile layer (a gzip or zstd bomb, millions of empty files,
//! a multi-gigabyte "long name") cannot fill the host's disk, inodes or memory.
//!
//! Across all layers of one render:
//! - bytes: every byte written to a regular file plus [`ENTRY_OVERHEAD`] per tar entry must stay
//!   under `ARK_MAX_RENDER_BYTES` (default 32 GiB); the decompressed tar streams themselves are
//!   held to the same bound, which also covers data that is never written (skipped entries,
//!   trailing garbage, sparse-file expansion the other way round);
//! - entries: at most `ARK_MAX_RENDER_ENTRIES` (default 4Mi) tar entries;
//! - free space: the store's filesystem must keep `min(1 GiB, 5%)` of its space (or
//!   `ARK_STORE_RESERVE`) and `min(10000, 5%)` of its inodes free, checked before and every few
//!   MiB during the render;
//! - one entry's headers (GNU long names, pax extensions, which the tar crate holds in memory)
//!   may not exceed [`MAX_ENTRY_HEADERS`].
//!
//! Fetches and imports keep the same space reserve: every blob written into the store goes
//! through a [`ReserveWriter`], which refuses a blob whose declared size cannot fit above the
//! reserve before its first byte, and stops one that streams past it (a size that lied, or none).
//!
//! The variables take a number of bytes/entries, with an optional K, M, G or T (binary) suffix.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::rc::Rc;

use anyhow::{anyhow, Context};

pub const MAX_RENDER_BYTES_ENV: &str = "ARK_MAX_RENDER_BYTES";
pub const MAX_RENDER_ENTRIES_ENV: &str = "ARK_MAX_RENDER_ENTRIES";
/// Bytes to keep free on the store's filesystem, instead of `min(1 GiB, 5%)`.
pub const STORE_RESERVE_ENV: &str = "ARK_STORE_RESERVE";
const DEFAULT_MAX_BYTES: u64 = 32 << 30;
const DEFAULT_MAX_ENTRIES: u64 = 4 << 20;
/// What one entry costs besides its data: a tar header's size, about an inode and a dirent.
pub const ENTRY_OVERHEAD: u64 = 512;
/// Largest total of one entry's extension headers (paths are < 4 KiB, xattrs < 64 KiB each).
pub const MAX_ENTRY_HEADERS: u64 = 16 << 20;
/// statvfs every this many charged bytes / entries: often enough to stop before ENOSPC.
const SPACE_CHECK_BYTES: u64 = 8 << 20;
const SPACE_CHECK_ENTRIES: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for RenderLimits {
    fn default() -> Self {
        RenderLimits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl RenderLimits {
    /// The defaults, overridden by `ARK_MAX_RENDER_BYTES` / `ARK_MAX_RENDER_ENTRIES`.
    pub fn from_env() -> anyhow::Result<Self> {
        let mut limits = RenderLimits::default();
        for (var, field) in [
            (MAX_RENDER_BYTES_ENV, &mut limits.max_bytes),
            (MAX_RENDER_ENTRIES_ENV, &mut limits.max_entries),
        ] {
            if let Some(value) = count_from_env(var)? {
                *field = value;
            }
        }
        Ok(limits)
    }
}

/// `VAR`'s count if it is set.
fn count_from_env(var: &str) -> anyhow::Result<Option<u64>> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    parse_count(&value)
        .with_context(|| format!("{var}={value:?} is not a number (with an optional K, M, G or T)"))
        .map(Some)
}

/// `1048576`, `1M`, `1MiB`, `32G` → a count (binary suffixes).
pub fn parse_count(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (digits, shift) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 10),
        Some('M') => (&s[..s.len() - 1], 20),
        Some('G') => (&s[..s.len() - 1], 30),
        Some('T') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.parse()?;
    n.checked_mul(1 << shift).context("too large")
}

/// `1048576` → `1 MiB`, `1536` → `1.5 KiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn bytes_exceeded(max: u64) -> String {
    format!(
        "unpacks to more than {} ({max} bytes), ark's render limit; set {MAX_RENDER_BYTES_ENV} \
         to raise it",
        human(max)
    )
}

/// What one render has used so far; every charge checks the limits. The first limit crossed
/// is remembered so the caller can report it instead of the I/O error it surfaced as.
pub struct Budget {
    limits: RenderLimits,
    bytes: u64,
    entries: u64,
    next_space_check: u64,
    next_inode_check: u64,
    hit: Option<String>,
}

impl Budget {
    pub fn new(limits: RenderLimits) -> Self {
        Budget {
            limits,
            bytes: 0,
            entries: 0,
            next_space_check: SPACE_CHECK_BYTES,
            next_inode_check: SPACE_CHECK_ENTRIES,
            hit: None,
        }
    }

    /// The limit that stopped the render, if one did.
    pub fn hit(&self) -> Option<&str> {
        self.hit.as_deref()
    }

    fn fail(&mut self, msg: String) -> anyhow::Error {
        self.hit.get_or_insert(msg.clone());
        anyhow!(msg)
    }

    /// One more tar entry, in the filesystem holding `fs`.
    pub fn entry(&mut self, fs: impl AsFd) -> anyhow::Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            let max = self.limits.max_entries;
            return Err(self.fail(format!(
                "has more than {max} entries, ark's render limit; set {MAX_RENDER_ENTRIES_ENV} \
                 to raise it"
            )));
        }
        if self.entries >= self.next_inode_check {
            self.next_inode_check = self.entries + SPACE_CHECK_ENTRIES;
            self.check_space(&fs)?;
        }
        self.bytes(ENTRY_OVERHEAD, fs)
    }

    /// `n` more bytes written.
    pub fn bytes(&mut self, n: u64, fs: impl AsFd) -> anyhow::Result<()> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limits.max_bytes {
            return Err(self.fail(bytes_exceeded(self.limits.max_bytes)));
        }
        if self.bytes >= self.next_space_check {
            self.check_space(fs)?;
        }
        Ok(())
    }

    /// Refuses to go on when the filesystem is down to its reserve of space or inodes.
    pub fn check_space(&mut self, fs: impl AsFd) -> anyhow::Result<()> {
        let space = StoreSpace::of(fs)?;
        self.next_space_check = self.bytes + space.check_step();
        if let Err(msg) = space.keeps_reserve(0) {
            return Err(self.fail(msg));
        }
        // Some filesystems (btrfs) have no fixed inode count and report 0.
        if space.files > 0 {
            let reserve = 10_000u64.min(space.files / 20);
            if space.files_free < reserve {
                return Err(self.fail(format!(
                    "the image store's filesystem is out of inodes ({} free, ark keeps {reserve} \
                     in reserve)",
                    space.files_free
                )));
            }
        }
        Ok(())
    }
}

/// The store filesystem's free space and the reserve ark keeps on it: `min(1 GiB, 5%)` of its
/// size, or `ARK_STORE_RESERVE`.
#[derive(Debug, Clone, Copy)]
pub struct StoreSpace {
    pub free: u64,
    pub reserve: u64,
    files: u64,
    files_free: u64,
}

impl StoreSpace {
    /// statvfs of the filesystem holding `fs` (any fd on it: the store, a staging file).
    pub fn of(fs: impl AsFd) -> anyhow::Result<Self> {
        let st = rustix::fs::fstatvfs(fs).context("statvfs of the image store")?;
        let total = st.f_blocks.saturating_mul(st.f_frsize);
        let reserve = match count_from_env(STORE_RESERVE_ENV)? {
            Some(r) => r,
            None => (1u64 << 30).min(total / 20),
        };
        Ok(StoreSpace {
            free: st.f_bavail.saturating_mul(st.f_frsize),
            reserve,
            files: st.f_files,
            files_free: st.f_favail,
        })
    }

    /// [`StoreSpace::of`] the filesystem holding `path`.
    pub fn at(path: &std::path::Path) -> anyhow::Result<Self> {
        let dir =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Self::of(&dir)
    }

    /// What can still be written above the reserve.
    pub fn room(&self) -> u64 {
        self.free.saturating_sub(self.reserve)
    }

    /// How many bytes may be written before the next statvfs: half of what is left above the
    /// reserve (so it cannot be gone before the next look), at most 8 MiB, at least 64 KiB.
    fn check_step(&self) -> u64 {
        (self.room() / 2).clamp(64 << 10, SPACE_CHECK_BYTES)
    }

    /// Err(message) if writing `more` bytes would leave less than the reserve free.
    fn keeps_reserve(&self, more: u64) -> Result<(), String> {
        if self.free < self.reserve.saturating_add(more) {
            return Err(format!(
                "the image store's filesystem is nearly full ({} free, ark keeps {} in reserve{})",
                human(self.free),
                human(self.reserve),
                reserve_hint()
            ));
        }
        Ok(())
    }

    /// Refuses `what` (a blob, an image) declaring `size` bytes that cannot fit above the reserve.
    pub fn check_fits(&self, what: &str, size: u64) -> anyhow::Result<()> {
        if size > self.room() {
            return Err(anyhow!(
                "{what}: {} ({size} bytes) declared, but the image store's filesystem has {} \
                 free and ark keeps {} in reserve{}",
                human(size),
                human(self.free),
                human(self.reserve),
                reserve_hint()
            ));
        }
        Ok(())
    }
}

fn reserve_hint() -> String {
    format!("; free space, or set {STORE_RESERVE_ENV} to change the reserve")
}

/// Writes one blob into the image store without eating into its free-space reserve. Every
/// writer of store blobs (registry fetches, layout, archive and ACI imports) goes through this:
/// a declared size that cannot fit is refused before the first byte, and free space is looked
/// at again every few MiB (not every write) as the blob streams, since a declared size can lie
/// or be missing.
pub struct ReserveWriter<W> {
    inner: W,
    written: u64,
    next_check: u64,
}

impl<W: Write + AsFd> ReserveWriter<W> {
    /// `inner`: the blob's file in the store (or its staging directory, same filesystem);
    /// `declared`: the size its source claims, if it claims one; `what` names the blob in the
    /// error refusing it.
    pub fn new(inner: W, what: &str, declared: Option<u64>) -> anyhow::Result<Self> {
        let space = StoreSpace::of(&inner)?;
        if let Some(size) = declared {
            space.check_fits(what, size)?;
        }
        Ok(ReserveWriter {
            inner,
            written: 0,
            next_check: space.check_step(),
        })
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write + AsFd> Write for ReserveWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let after = self.written + buf.len() as u64;
        if after > self.next_check {
            let space =
                StoreSpace::of(&self.inner).map_err(|e| io::Error::other(format!("{e:#}")))?;
            space
                .keeps_reserve(buf.len() as u64)
                .map_err(io::Error::other)?;
            self.next_check = self.written + space.check_step();
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts the bytes of decompressed tar streams (all layers of one render) against the byte
/// limit, and the bytes between one entry's start and its data against [`MAX_ENTRY_HEADERS`].
pub struct StreamMeter {
    max_bytes: u64,
    read: Cell<u64>,
    headers_from: Cell<Option<u64>>,
    hit: RefCell<Option<String>>,
}

impl StreamMeter {
    pub fn new(max_bytes: u64) -> Rc<Self> {
        Rc::new(StreamMeter {
            max_bytes,
            read: Cell::new(0),
            headers_from: Cell::new(None),
            hit: RefCell::new(None),
        })
    }

    /// From here on, what is read is an entry's headers.
    pub fn headers_begin(&self) {
        self.headers_from.set(Some(self.read.get()));
    }

    /// An entry's headers are complete.
    pub fn headers_end(&self) {
        self.headers_from.set(None);
    }

    pub fn hit(&self) -> Option<String> {
        self.hit.borrow().clone()
    }

    fn fail(&self, msg: String) -> io::Error {
        self.hit.borrow_mut().get_or_insert(msg.clone());
        io::Error::other(msg)
    }
}

/// A reader charging a [`StreamMeter`].
pub struct Metered<R> {
    inner: R,
    meter: Rc<StreamMeter>,
}

impl<R> Metered<R> {
    pub fn new(inner: R, meter: Rc<StreamMeter>) -> Self {
        Metered { inner, meter }
    }
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        // Never hand out more than the limit allows, so nothing past it reaches a parser.
        let room = m.max_bytes.saturating_sub(m.read.get()).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        let read = m.read.get() + n as u64;
        m.read.set(read);
        if read > m.max_bytes {
            return Err(m.fail(bytes_exceeded(m.max_bytes)));
        }
        if let Some(from) = m.headers_from.get() {
            if read - from > MAX_ENTRY_HEADERS {
                return Err(m.fail(format!(
                    "a tar entry's headers (long name, pax extensions) exceed {}",
                    human(MAX_ENTRY_HEADERS)
                )));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_with_binary_suffixes() {
        assert_eq!(parse_count("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_count("1M").unwrap(), 1 << 20);
        assert_eq!(parse_count("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_count("32g").unwrap(), 32 << 30);
        assert!(parse_count("lots").is_err());
        assert!(parse_count("99999999999T").is_err());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(1 << 20), "1 MiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(100), "100 bytes");
    }

    #[test]
    fn metered_stream_stops_at_the_limit() {
        let meter = StreamMeter::new(1000);
        let mut r = Metered::new(&[0u8; 4000][..], meter.clone());
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("unpacks to more than"), "{err}");
        assert!(meter.hit().is_some());
        let meter = StreamMeter::new(4000);
        let mut r = Metered::new(&[0u8; 4000][..], meter.clone());
        assert_eq!(io::copy(&mut r, &mut io::sink()).unwrap(), 4000);
        assert!(meter.hit().is_none());
    }

    #[test]
    fn reserve_writer_refuses_what_cannot_fit_and_passes_what_can() {
        let mut file = tempfile::tempfile().unwrap();
        let err = ReserveWriter::new(&mut file, "blob x", Some(u64::MAX))
            .err()
            .expect("refused");
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with("blob x: ") && msg.contains("reserve"),
            "{msg}"
        );
        let mut w = ReserveWriter::new(&mut file, "blob x", Some(3 << 20)).unwrap();
        // Past the first check point (64 KiB to 8 MiB in): checked again, still fits.
        for _ in 0..3 {
            w.write_all(&[1u8; 1 << 20]).unwrap();
        }
        assert_eq!(file.metadata().unwrap().len(), 3 << 20);
    }

    #[test]
    fn budget_counts_entries_and_bytes() {
        let dir = std::env::temp_dir();
        let fd = std::fs::File::open(&dir).unwrap();
        let mut b = Budget::new(RenderLimits {
            max_bytes: 10 * ENTRY_OVERHEAD,
            max_entries: 3,
        });
        for _ in 0..3 {
            b.entry(&fd).unwrap();
        }
        let err = b.entry(&fd).unwrap_err();
        assert!(err.to_string().contains("more than 3 entries"), "{err}");
        let mut b = Budget::new(RenderLimits {
            max_bytes: 10 * ENTRY_OVERHEAD,
            max_entries: 100,
        });
        b.entry(&fd).unwrap();
        let err = b.bytes(10 * ENTRY_OVERHEAD, &fd).unwrap_err();
        assert!(b.hit().unwrap().contains("unpacks to more than"), "{err}");
    }
}
