//! Applies tar layers to a rootfs directory, safe by construction against hostile archives.
//!
//! Every filesystem operation is relative to a directory fd opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from the rootfs, and acts on a single
//! final component without following it. So a symlink planted by an earlier entry or layer can
//! redirect a write only to somewhere inside the rootfs; one pointing out (absolute or `..`)
//! makes the entry fail. Entry names with `..` or a leading `/` are refused outright, hardlinks
//! resolve inside the rootfs only, and device nodes need root.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;

use super::limits::{Budget, Metered, RenderLimits, StreamMeter};

/// Maps an archive path to its rootfs path; None = not part of the rootfs (an ACI's `manifest`).
pub type PathMap<'a> = &'a dyn Fn(&Path) -> Option<PathBuf>;

pub struct Extractor {
    root: OwnedFd,
    /// Running as root: keep owners, create device nodes.
    privileged: bool,
    /// Paths written by the layer being applied (an opaque whiteout keeps these).
    layer_paths: HashSet<PathBuf>,
    /// Directory modes and mtimes, applied at the end so a read-only directory can still be
    /// filled by later entries and layers.
    dir_meta: BTreeMap<PathBuf, (u32, i64)>,
    /// The rootfs's own mode from a `./` entry.
    root_meta: Option<(u32, i64)>,
    /// Reused for file contents: large writes without an allocation per file.
    buf: Vec<u8>,
    /// What this render (all its layers) has written, against its limits.
    budget: Budget,
    /// The decompressed tar streams, read through [`Extractor::metered`].
    meter: Rc<StreamMeter>,
}

/// Copies a file's content, charging every chunk to the budget before writing it.
fn copy_with(
    buf: &mut [u8],
    from: &mut impl Read,
    to: &mut impl Write,
    budget: &mut Budget,
    fs: &OwnedFd,
) -> anyhow::Result<()> {
    loop {
        match from.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                budget.bytes(n as u64, fs)?;
                to.write_all(&buf[..n])?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Decompresses by sniffing the stream's magic bytes (gzip, zstd, bzip2, xz, or plain tar).
pub fn decompress<'a, R: BufRead + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
    } else if head.starts_with(b"BZh") {
        Box::new(bzip2::bufread::MultiBzDecoder::new(r))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r))
    } else {
        Box::new(r)
    })
}

/// `a/./b/` → `a/b`; refuses `..` and absolute paths. None = the root itself (`.`, `/`).
pub fn clean_path(raw: &Path) -> anyhow::Result<Option<PathBuf>> {
    // Some tools (umoci insert) name the root directory entry "/": that one is the root.
    if raw
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::CurDir))
    {
        return Ok(None);
    }
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => bail!("{:?}: path contains '..'", raw),
            Component::RootDir | Component::Prefix(_) => bail!("{:?}: absolute path", raw),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

fn errno_context(e: Errno, path: &Path) -> anyhow::Error {
    match e {
        Errno::XDEV | Errno::LOOP => {
            anyhow!("{path:?}: a symlink on the way leads outside the rootfs")
        }
        Errno::NOTDIR => anyhow!("{path:?}: a parent is not a directory"),
        e => anyhow!("{path:?}: {}", io::Error::from(e)),
    }
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

impl Extractor {
    /// An extractor into `rootfs` bounded by `limits` (see [`super::limits`]); refuses at once
    /// if the filesystem is already down to its reserve.
    pub fn new(rootfs: &Path, limits: RenderLimits) -> anyhow::Result<Self> {
        let root = rustix::fs::open(
            rootfs,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {}", rootfs.display()))?;
        let mut extractor = Extractor {
            root,
            privileged: rustix::process::geteuid().is_root(),
            layer_paths: HashSet::new(),
            dir_meta: BTreeMap::new(),
            root_meta: None,
            buf: vec![0; 256 << 10],
            budget: Budget::new(limits),
            meter: StreamMeter::new(limits.max_bytes),
        };
        extractor.budget.check_space(&extractor.root)?;
        Ok(extractor)
    }

    /// Wraps a decompressed layer so its size counts against this render's byte limit and its
    /// entries' headers against theirs. Every layer given to [`Extractor::apply_layer`] should be.
    pub fn metered<R: Read>(&self, stream: R) -> Metered<R> {
        Metered::new(stream, self.meter.clone())
    }

    /// The render limit that stopped the extraction, if one did: the error to report instead of
    /// the I/O error it surfaced as deep in the tar reader.
    pub fn limit_hit(&self) -> Option<String> {
        self.budget
            .hit()
            .map(str::to_string)
            .or_else(|| self.meter.hit())
    }

    /// Opens directory `rel` beneath the rootfs (O_PATH), creating missing ones if `create`.
    fn open_dir(&self, rel: &Path, create: bool) -> anyhow::Result<Option<OwnedFd>> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        match rustix::fs::openat2(&self.root, target, flags, Mode::empty(), BENEATH) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) if create => {}
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(errno_context(e, rel)),
        }
        // Tar streams may omit parent directories: make them one component at a time, each
        // step again resolved beneath the directory before it.
        let mut cur = rustix::fs::openat(&self.root, ".", flags, Mode::empty())?;
        for comp in rel.components() {
            let name = comp.as_os_str();
            match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(errno_context(e, rel)),
            }
            cur = rustix::fs::openat2(&cur, name, flags, Mode::empty(), BENEATH)
                .map_err(|e| errno_context(e, rel))?;
        }
        Ok(Some(cur))
    }

    /// Applies one layer (a tar stream) on top of what is there, OCI whiteouts included.
    pub fn apply_layer<R: Read>(&mut self, reader: R, map: PathMap) -> anyhow::Result<()> {
        self.layer_paths.clear();
        let result = self.apply_entries(reader, map);
        self.meter.headers_end();
        match self.limit_hit() {
            Some(limit) if result.is_err() => Err(anyhow!(limit)),
            _ => result,
        }
    }

    fn apply_entries<R: Read>(&mut self, reader: R, map: PathMap) -> anyhow::Result<()> {
        let mut archive = tar::Archive::new(reader);
        self.meter.headers_begin();
        for entry in archive.entries().context("reading layer")? {
            let mut entry = entry.context("reading layer")?;
            self.meter.headers_end();
            self.budget.entry(&self.root)?;
            let raw = entry.path().context("entry path")?.into_owned();
            if let Some(mapped) = map(&raw) {
                self.apply_entry(&mut entry, &mapped)
                    .with_context(|| format!("entry {raw:?}"))?;
            }
            // Skip what was not read here, so the next entry's headers are measured alone.
            io::copy(&mut entry, &mut io::sink()).context("reading layer")?;
            self.meter.headers_begin();
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        raw: &Path,
    ) -> anyhow::Result<()> {
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().context("mode")? & 0o7777;
        // Header numbers can be base-256 and up to 64 bits: refuse what does not fit, never wrap.
        let uid = header.uid().context("uid")?;
        let uid = u32::try_from(uid).map_err(|_| anyhow!("uid {uid} out of range"))?;
        let gid = header.gid().context("gid")?;
        let gid = u32::try_from(gid).map_err(|_| anyhow!("gid {gid} out of range"))?;
        let mtime = header.mtime().unwrap_or(0);
        let mtime = i64::try_from(mtime).map_err(|_| anyhow!("mtime {mtime} out of range"))?;
        let Some(path) = clean_path(raw)? else {
            if kind.is_dir() {
                self.root_meta = Some((mode, mtime));
            }
            return Ok(());
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        let name = path.file_name().expect("clean path ends in a name");

        if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
            return self.whiteout(parent, OsStr::from_bytes(hidden), &path);
        }

        let dir = self.open_dir(parent, true)?.expect("created");
        let times = Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
        };
        let owner = self.privileged.then(|| {
            (
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
        });
        let xattrs = xattrs_of(entry)?;

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !remove_existing(&dir, name, true)? {
                    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))?;
                }
                if let Some((u, g)) = owner {
                    rustix::fs::chownat(&dir, name, u, g, AtFlags::SYMLINK_NOFOLLOW)?;
                }
                if !xattrs.is_empty() {
                    let fd = rustix::fs::openat(
                        &dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    self.set_xattrs(&fd, &xattrs)?;
                }
                self.dir_meta.insert(path.clone(), (mode, mtime));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                remove_existing(&dir, name, false)?;
                let fd = rustix::fs::openat(
                    &dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                let mut file = File::from(fd);
                copy_with(
                    &mut self.buf,
                    entry,
                    &mut file,
                    &mut self.budget,
                    &self.root,
                )
                .context("writing file")?;
                if let Some((u, g)) = owner {
                    rustix::fs::fchown(&file, u, g)?;
                }
                // After chown, which clears set-id bits.
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))?;
                self.set_xattrs(&file, &xattrs)?;
                rustix::fs::futimens(&file, &times)?;
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .context("symlink target")?
                    .context("symlink without a target")?;
                remove_existing(&dir, name, false)?;
                rustix::fs::symlinkat(target.as_os_str(), &dir, name)?;
                if let Some((u, g)) = owner {
                    rustix::fs::chownat(&dir, name, u, g, AtFlags::SYMLINK_NOFOLLOW)?;
                }
                let _ = rustix::fs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW);
            }
            T::Link => {
                let raw_target = entry
                    .link_name()
                    .context("hardlink target")?
                    .context("hardlink without a target")?
                    .into_owned();
                let target = clean_path(&raw_target)
                    .context("hardlink target")?
                    .context("hardlink to the rootfs itself")?;
                let tparent = target.parent().unwrap_or(Path::new(""));
                let tname = target.file_name().expect("clean path ends in a name");
                let tdir = self
                    .open_dir(tparent, false)?
                    .with_context(|| format!("hardlink target {target:?} does not exist"))?;
                let st = rustix::fs::statat(&tdir, tname, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| errno_context(e, &target))
                    .context("hardlink target")?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    bail!("hardlink to directory {target:?}");
                }
                if target == path {
                    return Ok(());
                }
                remove_existing(&dir, name, false)?;
                rustix::fs::linkat(&tdir, tname, &dir, name, AtFlags::empty())?;
            }
            T::Char | T::Block | T::Fifo => {
                let file_type = match kind {
                    T::Char => FileType::CharacterDevice,
                    T::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if file_type != FileType::Fifo && !self.privileged {
                    bail!("device node: creating device nodes needs root");
                }
                let dev = rustix::fs::makedev(
                    header.device_major()?.unwrap_or(0),
                    header.device_minor()?.unwrap_or(0),
                );
                remove_existing(&dir, name, false)?;
                rustix::fs::mknodat(&dir, name, file_type, Mode::from_raw_mode(mode), dev)?;
                if let Some((u, g)) = owner {
                    rustix::fs::chownat(&dir, name, u, g, AtFlags::SYMLINK_NOFOLLOW)?;
                }
            }
            // Metadata entries the tar crate has already folded into their file's header.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(()),
            other => {
                tracing::debug!("skipping {path:?} of unsupported tar type {other:?}");
                return Ok(());
            }
        }
        self.mark_layer_path(&path);
        Ok(())
    }

    /// Records that this layer wrote `path`, and so also its parent directories (made here if
    /// the tar had no entries for them): whiteouts of this layer must not remove any of them.
    fn mark_layer_path(&mut self, path: &Path) {
        for p in path.ancestors() {
            if p.as_os_str().is_empty() || !self.layer_paths.insert(p.to_path_buf()) {
                // Its ancestors were marked with it.
                break;
            }
        }
    }

    fn set_xattrs(&self, fd: impl AsFd, xattrs: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        for (key, value) in xattrs {
            match rustix::fs::fsetxattr(&fd, key.as_str(), value, rustix::fs::XattrFlags::empty()) {
                Ok(()) => {}
                // Unprivileged renders cannot set trusted.*/security.*; some filesystems have
                // no xattrs at all. The file content is still right, so warn and go on.
                Err(e @ (Errno::PERM | Errno::NOTSUP)) => {
                    tracing::warn!("cannot set xattr {key:?}: {e}");
                }
                Err(e) => return Err(anyhow!("setting xattr {key:?}: {}", io::Error::from(e))),
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, parent: &Path, hidden: &OsStr, path: &Path) -> anyhow::Result<()> {
        let Some(dir) = self.open_dir(parent, false)? else {
            return Ok(());
        };
        if hidden.as_bytes() == b".wh..opq" {
            return self.opaque(&dir, parent);
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.as_bytes().contains(&b'/')
        {
            bail!("{path:?}: invalid whiteout");
        }
        let hidden_path = parent.join(hidden);
        if !self.layer_paths.contains(&hidden_path) {
            remove_existing(&dir, hidden, false)?;
            return Ok(());
        }
        // This layer wrote the path too (the whiteout came after it in the tar): a whiteout
        // hides lower layers only, so keep what this layer put there and remove the rest, as
        // if the whiteout had come first.
        let st = match rustix::fs::statat(&dir, hidden, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(errno_context(e, &hidden_path)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = rustix::fs::openat2(
                &dir,
                hidden,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                BENEATH,
            )
            .map_err(|e| errno_context(e, &hidden_path))?;
            self.opaque(&sub, &hidden_path)?;
        }
        Ok(())
    }

    /// `.wh..wh..opq`: hides everything lower layers put in this directory; entries of the
    /// current layer stay, whether they came before or after it in the tar (the ones before
    /// are in `layer_paths` with their parents, the ones after are not there yet).
    fn opaque(&self, dir: &OwnedFd, rel: &Path) -> anyhow::Result<()> {
        let readable = rustix::fs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for child in list_dir(&readable)? {
            let child_path = rel.join(OsStr::from_bytes(&child));
            let child_name = OsStr::from_bytes(&child);
            if self.layer_paths.contains(&child_path) {
                let st = rustix::fs::statat(&readable, child_name, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    let sub = rustix::fs::openat2(
                        &readable,
                        child_name,
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                        BENEATH,
                    )?;
                    self.opaque(&sub, &child_path)?;
                }
            } else {
                remove_all_at(&readable, child_name)?;
            }
        }
        Ok(())
    }

    /// Applies directory modes and mtimes, deepest first (an mtime set on a parent before its
    /// children change would not stick).
    pub fn finish(self) -> anyhow::Result<()> {
        let mut dirs: Vec<_> = self.dir_meta.iter().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let apply = |fd: &OwnedFd, (mode, mtime): (u32, i64)| -> io::Result<()> {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
            let t = rustix::fs::Timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            };
            rustix::fs::futimens(
                fd,
                &Timestamps {
                    last_access: t,
                    last_modification: t,
                },
            )?;
            Ok(())
        };
        for (path, meta) in dirs {
            match rustix::fs::openat2(
                &self.root,
                path,
                flags | OFlags::NOFOLLOW,
                Mode::empty(),
                BENEATH,
            ) {
                Ok(fd) => apply(&fd, *meta).with_context(|| format!("{path:?}"))?,
                // Removed or replaced by a later layer.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
                Err(e) => return Err(errno_context(e, path)),
            }
        }
        if let Some(meta) = self.root_meta {
            let fd = rustix::fs::openat(&self.root, ".", flags, Mode::empty())?;
            apply(&fd, meta)?;
        }
        Ok(())
    }
}

fn xattrs_of<R: Read>(entry: &mut tar::Entry<R>) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions().context("pax headers")? {
        for ext in exts {
            let ext = ext.context("pax header")?;
            if let Ok(key) = ext.key() {
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    out.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(out)
}

fn list_dir(fd: &OwnedFd) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(name.to_vec());
        }
    }
    Ok(out)
}

/// Removes `name` in `dir` if present. With `keep_dir`, an existing directory is kept and
/// true returned (a tar directory entry over a directory only updates its metadata).
fn remove_existing(dir: &OwnedFd, name: &OsStr, keep_dir: bool) -> anyhow::Result<bool> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        if keep_dir {
            return Ok(true);
        }
        remove_all_at(dir, name)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(false)
}

/// `rm -rf` of `name` in `dir`, never following symlinks.
fn remove_all_at(dir: &OwnedFd, name: &OsStr) -> anyhow::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in list_dir(&sub)? {
        remove_all_at(&sub, OsStr::from_bytes(&child))?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}
