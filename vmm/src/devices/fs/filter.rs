//! A policy layer in front of the passthrough filesystem: the guest kernel is untrusted, so
//! names are checked again here and, for read-only shares, every mutating operation is refused
//! with EROFS before it reaches the host filesystem (the guest mounting read-only is not relied
//! upon).
//!
//! What the guest leaves in the host directory is something the host kernel honours for host
//! users, and the backend runs as root, so:
//! - MKNOD makes only regular files, FIFOs, sockets and 0:0 character devices (overlayfs
//!   whiteouts), judged on `mode & !umask` (the mode really created; the guest sends both);
//! - no mode from the guest (CREATE, MKNOD, MKDIR, SETATTR) carries setuid or setgid, except
//!   setgid on a directory (new entries inherit its group; it grants nothing on exec);
//! - a regular file's setuid/setgid bits are cleared before the guest changes its data (WRITE,
//!   FALLOCATE, truncation), whatever kill-priv flags it sends: the host kernel does that only for
//!   writers without CAP_FSETID;
//! - existing device nodes keep their mode, owner and ACLs;
//! - extended attributes are limited to `user.*` and POSIX ACLs (see [`check_xattr_name`]);
//! - OPEN/CREATE/OPENDIR flags the Linux client never sends and the host must not act on
//!   (O_PATH, O_TMPFILE) are refused.
//!
//! Only the operations listed here are forwarded; everything else (ioctl, bmap, poll, DAX
//! mappings, POSIX locks) keeps the trait's ENOSYS default.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, OpenOptions};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, SetattrValid,
    ZeroCopyReader, ZeroCopyWriter,
};

/// Longest name a Linux filesystem accepts (NAME_MAX).
const NAME_MAX: usize = 255;

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn eperm() -> io::Error {
    io::Error::from_raw_os_error(libc::EPERM)
}

/// Longest extended-attribute value and name list Linux has (XATTR_SIZE_MAX, XATTR_LIST_MAX).
const XATTR_MAX: u32 = 65536;

/// Permission bits a guest may give a non-directory: setuid and setgid dropped.
fn file_perms(mode: u32) -> u32 {
    mode & 0o1777
}

/// Permission bits a guest may give a directory: setuid dropped, setgid kept.
fn dir_perms(mode: u32) -> u32 {
    mode & 0o3777
}

/// The mode MKNOD may create, with the umask already applied (the backend is then given umask
/// 0, so what is checked here is what is made): a regular file, FIFO or socket, or the 0:0
/// character device overlayfs uses as a whiteout (no driver backs it). Any other device is a
/// host device to whoever on the host opens it.
pub fn mknod_mode(mode: u32, umask: u32, rdev: u32) -> io::Result<u32> {
    let mode = mode & !umask;
    let kind = match mode & libc::S_IFMT {
        // mknod(2): a zero type is a regular file.
        0 | libc::S_IFREG => libc::S_IFREG,
        kind @ (libc::S_IFIFO | libc::S_IFSOCK) => kind,
        libc::S_IFCHR if rdev == 0 => libc::S_IFCHR,
        libc::S_IFCHR | libc::S_IFBLK => return Err(eperm()),
        _ => return Err(einval()),
    };
    Ok(kind | file_perms(mode))
}

/// Extended attributes a guest may set or remove: its own (`user.*`) and POSIX ACLs, which
/// grant no more than mode bits do. Not `security.capability` (file capabilities on exec),
/// other `security.*` (LSM labels), `trusted.*` (e.g. `trusted.overlay.*`, which steers a host
/// overlayfs using the directory as a layer) or other `system.*` names.
pub fn check_xattr_name(name: &CStr) -> io::Result<()> {
    let name = name.to_bytes();
    if name.starts_with(b"user.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
    {
        Ok(())
    } else {
        Err(eperm())
    }
}

/// Refuses open flags no Linux FUSE client sends and the host must not act on: with O_PATH,
/// openat ignores O_CREAT|O_EXCL and follows a symlink the guest planted (CREATE would hold
/// a host file outside the share); O_TMPFILE on a directory makes an unnamed host file.
fn check_open_flags(flags: u32) -> io::Result<()> {
    // The same bits as the guest sent, typed as libc spells the O_* flags.
    let flags = flags.cast_signed();
    if flags & libc::O_PATH != 0 || flags & (libc::O_TMPFILE & !libc::O_DIRECTORY) != 0 {
        Err(einval())
    } else {
        Ok(())
    }
}

/// A single path component: non-empty, no '/', at most NAME_MAX bytes, and (unless
/// `allow_dots`, which only LOOKUP needs) not "." or "..". CStr already guarantees there is
/// exactly one NUL, at the end.
pub fn check_name(name: &CStr, allow_dots: bool) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') {
        return Err(einval());
    }
    if bytes.len() > NAME_MAX {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    if !allow_dots && (bytes == b"." || bytes == b"..") {
        return Err(einval());
    }
    Ok(())
}

/// Open flags that could modify the file or create one.
fn open_writes(flags: u32) -> bool {
    // The same bits as the guest sent, typed as libc spells the O_* flags.
    let flags = flags.cast_signed();
    flags & libc::O_ACCMODE != libc::O_RDONLY
        || flags & (libc::O_TRUNC | libc::O_CREAT) != 0
        || flags & libc::O_TMPFILE == libc::O_TMPFILE
}

/// The guest-facing filesystem: `inner` behind name checks and the read-only policy.
#[derive(Debug)]
pub struct GuestFs<F> {
    inner: F,
    read_only: bool,
}

impl<F> GuestFs<F> {
    pub fn new(inner: F, read_only: bool) -> Self {
        GuestFs { inner, read_only }
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(erofs())
        } else {
            Ok(())
        }
    }
}

impl<F: FileSystem> GuestFs<F>
where
    F::Inode: Copy,
{
    /// Clears a regular file's setuid and setgid bits before its data changes.
    fn kill_suidgid(&self, ctx: &Context, inode: F::Inode) -> io::Result<()> {
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || st.st_mode & (libc::S_ISUID | libc::S_ISGID) == 0
        {
            return Ok(());
        }
        let mut attr = st;
        attr.st_mode = file_perms(st.st_mode);
        self.inner
            .setattr(ctx, inode, attr, None, SetattrValid::MODE)
            .map(drop)
    }

    /// The inode's file type; refuses a device node other than a 0:0 whiteout, whose mode,
    /// owner and ACLs are not the guest's to loosen.
    fn kind_unless_device(&self, ctx: &Context, inode: F::Inode) -> io::Result<u32> {
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        let kind = st.st_mode & libc::S_IFMT;
        if matches!(kind, libc::S_IFCHR | libc::S_IFBLK) && st.st_rdev != 0 {
            return Err(eperm());
        }
        Ok(kind)
    }
}

impl<F: FileSystem> FileSystem for GuestFs<F>
where
    F::Inode: Copy,
{
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // PassthroughFs only asks for readdirplus; without MAX_PAGES/BIG_WRITES the server caps
        // requests at 4 KiB, which makes every page of a boot a separate guest exit. These are
        // all handled by the server or the kernel, not by the filesystem.
        let mut want = self.inner.init(capable)?
            | FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::AUTO_INVAL_DATA
            | FsOptions::ASYNC_DIO
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::ATOMIC_O_TRUNC
            | FsOptions::CACHE_SYMLINKS;
        if self.read_only {
            want.remove(FsOptions::WRITEBACK_CACHE);
        }
        Ok(want)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        check_name(name, true)?;
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        let mut attr = attr;
        if valid.intersects(SetattrValid::MODE | SetattrValid::UID | SetattrValid::GID) {
            let kind = self.kind_unless_device(ctx, inode)?;
            if valid.contains(SetattrValid::MODE) {
                attr.st_mode = if kind == libc::S_IFDIR {
                    dir_perms(attr.st_mode)
                } else {
                    file_perms(attr.st_mode)
                };
            }
        }
        if valid.contains(SetattrValid::SIZE) {
            self.kill_suidgid(ctx, inode)?;
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(name, false)?;
        // The target is stored, never followed by the host (all opens are O_NOFOLLOW and
        // relative to directory fds), so any content is fine; only bound it.
        if linkname.to_bytes().is_empty() || linkname.to_bytes().len() >= libc::PATH_MAX as usize {
            return Err(einval());
        }
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(name, false)?;
        let mode = mknod_mode(mode, umask, rdev)?;
        self.inner.mknod(ctx, inode, name, mode, rdev, 0)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(name, false)?;
        self.inner
            .mkdir(ctx, parent, name, dir_perms(mode & !umask), 0)
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_name(name, false)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_name(name, false)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        check_name(oldname, false)?;
        check_name(newname, false)?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(newname, false)?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        if self.read_only && open_writes(flags) {
            return Err(erofs());
        }
        check_open_flags(flags)?;
        if flags & libc::O_TRUNC as u32 != 0 {
            self.kill_suidgid(ctx, inode)?;
        }
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        check_name(name, false)?;
        check_open_flags(args.flags)?;
        let args = CreateIn {
            mode: libc::S_IFREG | file_perms(args.mode & !args.umask),
            umask: 0,
            ..args
        };
        let created = self.inner.create(ctx, parent, name, args)?;
        // Without O_EXCL an existing file is opened, and O_TRUNC truncates it.
        if args.flags & libc::O_TRUNC as u32 != 0 {
            self.kill_suidgid(ctx, F::Inode::from(created.0.inode))?;
        }
        Ok(created)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        self.kill_suidgid(ctx, inode)?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.kill_suidgid(ctx, inode)?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        check_xattr_name(name)?;
        self.kind_unless_device(ctx, inode)?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        // The backend allocates `size` bytes; the kernel would cap it here anyway.
        self.inner.getxattr(ctx, inode, name, size.min(XATTR_MAX))
    }

    fn listxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_xattr_name(name)?;
        self.kind_unless_device(ctx, inode)?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        if self.read_only && open_writes(flags) {
            return Err(erofs());
        }
        check_open_flags(flags)?;
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        if self.read_only && mask & libc::W_OK as u32 != 0 {
            return Err(erofs());
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }
}
