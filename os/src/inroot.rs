//! File and mount operations inside an untrusted root (an app's or an image's), resolved by the
//! kernel: every path goes through `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from a
//! descriptor of the root, so a symlink, `..` or `/proc/self/...` link in the image can never
//! lead outside it. Files are read only when regular and replaced atomically (never opened for
//! writing where they are); mounts are made onto descriptors (`move_mount`, or
//! `/proc/self/fd/N` for new filesystems), so nothing is resolved again after the check.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

/// What a mount target must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// The largest file [`read_file`] reads (passwd, group, hosts are far smaller).
pub const READ_LIMIT: u64 = 4 << 20;

/// An `O_PATH` descriptor of the directory `path` (a root the caller trusts the path of).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `path` opened with `flags` as if `root` were `/`: symlinks and `..` stay inside `root`,
/// magic links (`/proc/self/fd/N`, `/proc/PID/root`) are refused.
pub fn resolve(root: BorrowedFd, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    // EAGAIN: a rename elsewhere raced the lookup; the kernel asks for a retry.
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, rel, flags | OFlags::CLOEXEC, Mode::empty(), how) {
            Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
            r => return Ok(r?),
        }
    }
}

/// The normal components of `path` (`.` and empty ones dropped); `..` is refused, so a caller
/// never has to think about where it would lead.
fn components(path: &str) -> io::Result<Vec<&OsStr>> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::ParentDir => Some(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: \"..\" is not allowed"),
            ))),
            _ => None,
        })
        .collect()
}

fn join(parts: &[&OsStr]) -> String {
    let mut s = String::from("/");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push('/');
        }
        s.push_str(&p.to_string_lossy());
    }
    s
}

/// The directory `path` inside `root`, created (0755) with its parents where missing; an
/// `O_PATH` descriptor of it.
pub fn mkdir_all(root: BorrowedFd, path: &str) -> io::Result<OwnedFd> {
    let parts = components(path)?;
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY;
    let mut cur = resolve(root, "/", dir_flags)?;
    for i in 0..parts.len() {
        let prefix = join(&parts[..=i]);
        cur = match resolve(root, &prefix, dir_flags) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // One name below a directory already resolved: nothing to follow.
                match rustix::fs::mkdirat(&cur, parts[i], Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                resolve(root, &prefix, dir_flags)?
            }
            Err(e) => return Err(e),
        };
    }
    Ok(cur)
}

/// The parent directory of `path` (created if missing) and the final name.
fn parent_and_name<'p>(root: BorrowedFd, path: &'p str) -> io::Result<(OwnedFd, &'p OsStr)> {
    let parts = components(path)?;
    let Some((name, parent)) = parts.split_last() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path:?} names the root itself"),
        ));
    };
    Ok((mkdir_all(root, &join(parent))?, name))
}

fn not_regular(path: &str, t: FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{path} is not a regular file ({t:?})"),
    )
}

/// The contents of the regular file `path` inside `root`; `Ok(None)` if it does not exist.
/// Anything else there (a device node, fifo, socket, directory, symlink) is an error, and is
/// never opened: opening a device can have effects of its own (a watchdog starts, a tape
/// rewinds), so the file is looked at through an `O_PATH` descriptor first and only a regular
/// one is opened for reading, through that descriptor (`/proc/self/fd/N`: the same inode, not
/// the path again).
pub fn read_file(root: BorrowedFd, path: &str) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let fd = match resolve(root, path, OFlags::PATH | OFlags::NOFOLLOW) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let t = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
    if t != FileType::RegularFile {
        return Err(not_regular(path, t));
    }
    let fd = rustix::fs::open(
        fd_path(fd.as_fd()),
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(READ_LIMIT + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > READ_LIMIT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path} is larger than {READ_LIMIT} bytes"),
        ));
    }
    Ok(Some(out))
}

/// Makes `path` inside `root` a regular file (mode 0644) holding `bytes`: written to a new
/// temporary file next to it, then renamed over it. Whatever was there before (a device node,
/// a symlink to /proc, a fifo) is replaced, never opened.
pub fn replace_file(root: BorrowedFd, path: &str, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    // An O_PATH directory descriptor serves as the dirfd of the *at calls below.
    let (parent, name) = parent_and_name(root, path)?;
    let mut tmp_name = b".".to_vec();
    tmp_name.extend_from_slice(name.as_bytes());
    tmp_name.extend_from_slice(format!(".ark-tmp.{}", std::process::id()).as_bytes());
    let tmp_name = OsStr::from_bytes(&tmp_name);
    let mode = Mode::from_raw_mode(0o644);
    let _ = rustix::fs::unlinkat(&parent, tmp_name, rustix::fs::AtFlags::empty());
    let fd = rustix::fs::openat(
        &parent,
        tmp_name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        mode,
    )?;
    let written = (|| {
        rustix::fs::fchmod(&fd, mode)?;
        let mut f = std::fs::File::from(fd);
        f.write_all(bytes)?;
        drop(f);
        rustix::fs::renameat(&parent, tmp_name, &parent, name)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(&parent, tmp_name, rustix::fs::AtFlags::empty());
    }
    written
}

/// `path` inside `root` as a mount point of `kind` (created with its parents if missing), as
/// an `O_PATH` descriptor to mount onto. A final symlink is refused, not followed; a file
/// mount point must be a regular file.
pub fn mount_target(root: BorrowedFd, path: &str, kind: Kind) -> io::Result<OwnedFd> {
    let (parent, name) = parent_and_name(root, path)?;
    match kind {
        Kind::Dir => match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        },
        Kind::File => {
            let flags =
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(0o644)) {
                Ok(_) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let fd = rustix::fs::openat(
        &parent,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let t = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
    let ok = match kind {
        Kind::Dir => t == FileType::Directory,
        Kind::File => t == FileType::RegularFile,
    };
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("mount point {path} is a {t:?}, not a {kind:?}"),
        ));
    }
    Ok(fd)
}

/// `path` inside `root` if it exists (no final symlink followed), for masking: its descriptor
/// and whether it is a directory.
pub fn existing(root: BorrowedFd, path: &str) -> io::Result<Option<(OwnedFd, bool)>> {
    match resolve(root, path, OFlags::PATH | OFlags::NOFOLLOW) {
        Ok(fd) => {
            let t = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
            Ok(Some((fd, t == FileType::Directory)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The path through which the kernel reaches `fd` itself (for `mount(2)` of a new filesystem
/// onto a resolved target): `/proc/self/fd/N`. Needs `/proc` mounted in the caller's root.
pub fn fd_path(fd: BorrowedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// A detached copy of the mount tree at `path` (relative to `dir`; `""` = `dir` itself), to be
/// given attributes and then attached with [`attach`].
pub fn clone_tree(dir: BorrowedFd, path: &str, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    if path.is_empty() {
        flags |= OpenTreeFlags::AT_EMPTY_PATH;
    }
    Ok(rustix::mount::open_tree(dir, path, flags)?)
}

/// `mount_setattr(2)`: sets `MOUNT_ATTR_*` bits (`set`) on the mount `tree` and, when
/// `recursive`, every mount below it. (No crate wraps this syscall yet.)
pub fn set_attrs(tree: BorrowedFd, set: u64, recursive: bool) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: a valid fd, a NUL-terminated empty path, and a struct of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub const ATTR_RDONLY: u64 = 0x1;
pub const ATTR_NOSUID: u64 = 0x2;
pub const ATTR_NODEV: u64 = 0x4;
pub const ATTR_NOEXEC: u64 = 0x8;

/// Attaches the detached mount `tree` onto the mount point `target` (a descriptor).
pub fn attach(tree: BorrowedFd, target: BorrowedFd) -> io::Result<()> {
    Ok(rustix::mount::move_mount(
        tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?)
}

/// Bind-mounts `source` (a trusted path) onto the descriptor `target` with the extra
/// attributes `attrs` on every mount of the copy, in one step: the mount never appears
/// without them.
pub fn bind(source: &Path, target: BorrowedFd, attrs: u64, recursive: bool) -> io::Result<()> {
    let cwd = rustix::fs::CWD;
    let tree = clone_tree(cwd, &source.to_string_lossy(), recursive)?;
    if attrs != 0 {
        set_attrs(tree.as_fd(), attrs, recursive)?;
    }
    attach(tree.as_fd(), target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, FileTypeExt};

    fn root() -> (tempfile::TempDir, OwnedFd) {
        let d = tempfile::tempdir().unwrap();
        let fd = open_root(d.path()).unwrap();
        (d, fd)
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let (d, fd) = root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host").unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        symlink(outside.path(), d.path().join("evil")).unwrap();
        symlink("../../../../..", d.path().join("etc/up")).unwrap();
        // Absolute and relative escapes land inside the root, where nothing is.
        assert!(read_file(fd.as_fd(), "/evil/secret").unwrap().is_none());
        replace_file(fd.as_fd(), "/etc/up/evil/x", b"1").unwrap_err();
        replace_file(fd.as_fd(), "/etc/up/made", b"1").unwrap();
        assert_eq!(std::fs::read(d.path().join("made")).unwrap(), b"1");
        // A magic link is refused outright.
        symlink("/proc/self/root/etc", d.path().join("magic")).unwrap();
        assert!(read_file(fd.as_fd(), "/magic/passwd").unwrap().is_none());
        symlink("/proc/self/fd/0", d.path().join("fd0")).unwrap();
        assert!(read_file(fd.as_fd(), "/fd0").is_err());
        assert_eq!(
            std::fs::read(outside.path().join("secret")).unwrap(),
            b"host"
        );
    }

    #[test]
    fn replace_never_writes_through_what_was_there() {
        let (d, fd) = root();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("target");
        std::fs::write(&target, "unchanged").unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        // A hard link to an outside file, a symlink, a fifo: each is replaced, not written.
        std::fs::hard_link(&target, d.path().join("etc/hard")).unwrap();
        symlink(&target, d.path().join("etc/sym")).unwrap();
        nix_mkfifo(&d.path().join("etc/fifo"));
        for name in ["hard", "sym", "fifo"] {
            let p = format!("/etc/{name}");
            replace_file(fd.as_fd(), &p, b"new\n").unwrap();
            let meta = std::fs::symlink_metadata(d.path().join(&p[1..])).unwrap();
            assert!(meta.file_type().is_file(), "{name}");
            assert!(!meta.file_type().is_fifo());
            assert_eq!(read_file(fd.as_fd(), &p).unwrap().unwrap(), b"new\n");
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"unchanged");
        // Parents are made; a directory is not replaced.
        replace_file(fd.as_fd(), "/a/b/c", b"x").unwrap();
        assert!(replace_file(fd.as_fd(), "/a/b", b"x").is_err());
        assert!(replace_file(fd.as_fd(), "/", b"x").is_err());
        assert!(replace_file(fd.as_fd(), "/a/../x", b"x").is_err());
    }

    #[test]
    fn reads_refuse_non_regular_files() {
        let (d, fd) = root();
        nix_mkfifo(&d.path().join("fifo"));
        std::fs::write(d.path().join("real"), "x").unwrap();
        symlink("real", d.path().join("link")).unwrap();
        assert!(read_file(fd.as_fd(), "/fifo").is_err());
        assert!(read_file(fd.as_fd(), "/link").is_err());
        assert_eq!(read_file(fd.as_fd(), "/real").unwrap().unwrap(), b"x");
    }

    #[test]
    fn mount_targets_are_made_and_checked() {
        let (d, fd) = root();
        std::fs::write(d.path().join("file"), "").unwrap();
        symlink("/", d.path().join("toroot")).unwrap();
        mount_target(fd.as_fd(), "/new/dir", Kind::Dir).unwrap();
        assert!(d.path().join("new/dir").is_dir());
        mount_target(fd.as_fd(), "/new/f", Kind::File).unwrap();
        assert!(d.path().join("new/f").is_file());
        assert!(mount_target(fd.as_fd(), "/file", Kind::Dir).is_err());
        assert!(mount_target(fd.as_fd(), "/toroot", Kind::Dir).is_err());
        // Through a symlinked parent: still inside.
        mount_target(fd.as_fd(), "/toroot/via", Kind::Dir).unwrap();
        assert!(d.path().join("via").is_dir());
    }

    fn nix_mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }
}
