//! virtio-fs driven through a real split queue: FUSE messages built the way the Linux driver
//! lays them out, served against a temp directory.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use crate::virtio::test_utils::{len32, F_NEXT, F_WRITE};
use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, EntryOut, FallocateIn, FsOptions, GetattrIn, GetxattrIn, InHeader, InitIn,
    InitIn2, InitOut, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, Rename2In,
    SetattrIn, SetattrValid, SetxattrIn, WriteIn, WriteOut,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::{self, CountingInterrupt};
use crate::virtio::{ActivateContext, GuestMemory, VirtioDevice};

const MEM_SIZE: usize = 16 << 20;
const Q: u16 = QUEUE_SIZE;
const HIPRIO_BASE: u64 = 0;
const REQUEST_BASE: u64 = 0x1_0000;
const REQ: u64 = 0x10_0000;
const RESP: u64 = 0x40_0000;
const ROOT: u64 = 1;

struct Reply {
    used: u32,
    header: OutHeader,
    body: Vec<u8>,
}

impl Reply {
    fn ok<T: ByteValued>(&self) -> T {
        assert_eq!(self.header.error, 0, "FUSE error {}", self.header.error);
        T::from_slice(&self.body[..std::mem::size_of::<T>()])
            .copied()
            .unwrap()
    }
    fn errno(&self) -> i32 {
        -self.header.error
    }
}

struct Harness {
    mem: GuestMemory,
    fs: Fs,
    avail: GuestAddress,
    used: GuestAddress,
    requests: u16,
    unique: u64,
}

impl Harness {
    fn new(dir: &Path, read_only: bool) -> Harness {
        let mem = test_utils::memory(MEM_SIZE);
        let mut fs = Fs::new("rootfs", dir, read_only).unwrap();
        fs.set_acked_features(fs.avail_features());
        let hiprio = MockSplitQueue::create(&mem, GuestAddress(HIPRIO_BASE), Q);
        let request = MockSplitQueue::create(&mem, GuestAddress(REQUEST_BASE), Q);
        let queues: Vec<Queue> = vec![
            hiprio.create_queue().unwrap(),
            request.create_queue().unwrap(),
        ];
        fs.activate(ActivateContext {
            mem: mem.clone(),
            queues,
            queue_events: test_utils::queue_events(NUM_QUEUES),
            interrupt: Arc::new(CountingInterrupt::default()),
        })
        .unwrap();
        let (avail, used) = (request.avail_addr(), request.used_addr());
        let mut h = Harness {
            mem,
            fs,
            avail,
            used,
            requests: 0,
            unique: 0,
        };
        h.init();
        h
    }

    /// Publishes raw descriptors as one chain (head 0) on the request queue and returns the
    /// used length.
    fn submit_raw(&mut self, descs: &[RawDescriptor]) -> u32 {
        for (i, d) in descs.iter().enumerate() {
            self.mem
                .write_obj(*d, GuestAddress(REQUEST_BASE + 16 * i as u64))
                .unwrap();
        }
        let idx: u16 = self.mem.read_obj(self.avail.unchecked_add(2)).unwrap();
        self.mem
            .write_obj(0u16, self.avail.unchecked_add(4 + 2 * u64::from(idx % Q)))
            .unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), self.avail.unchecked_add(2))
            .unwrap();
        self.fs.process_queue(1);
        self.requests += 1;
        let used_idx: u16 = self.mem.read_obj(self.used.unchecked_add(2)).unwrap();
        assert_eq!(
            used_idx, self.requests,
            "every chain must be used exactly once"
        );
        let elem = self
            .used
            .unchecked_add(4 + 8 * u64::from((used_idx - 1) % Q));
        self.mem.read_obj(elem.unchecked_add(4)).unwrap()
    }

    /// Sends raw request bytes (one readable descriptor) with a `resp_len` reply buffer.
    fn send_bytes(&mut self, request: &[u8], resp_len: u32) -> Reply {
        self.mem.write_slice(request, GuestAddress(REQ)).unwrap();
        self.mem
            .write_slice(&vec![0xa5u8; resp_len as usize], GuestAddress(RESP))
            .unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(REQ, len32(request.len()), F_NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(RESP, resp_len, F_WRITE, 0)),
        ];
        let used = self.submit_raw(&descs);
        let header: OutHeader = self.mem.read_obj(GuestAddress(RESP)).unwrap();
        let body_len = (used as usize).saturating_sub(16);
        let mut body = vec![0u8; body_len];
        self.mem
            .read_slice(&mut body, GuestAddress(RESP + 16))
            .unwrap();
        Reply { used, header, body }
    }

    fn call(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> Reply {
        self.call_as(opcode, nodeid, body, 0, 0)
    }

    fn call_as(&mut self, opcode: Opcode, nodeid: u64, body: &[u8], uid: u32, gid: u32) -> Reply {
        self.unique += 1;
        let header = InHeader {
            len: len32(40 + body.len()),
            opcode: opcode as u32,
            unique: self.unique,
            nodeid,
            uid,
            gid,
            pid: 1,
            padding: 0,
        };
        let mut msg = header.as_slice().to_vec();
        msg.extend_from_slice(body);
        let reply = self.send_bytes(&msg, 64 * 1024);
        if reply.used > 0 {
            assert_eq!(reply.header.unique, self.unique);
            assert_eq!(reply.header.len, reply.used);
        }
        reply
    }

    fn init(&mut self) {
        let init = InitIn {
            major: 7,
            minor: 33,
            max_readahead: 128 * 1024,
            flags: 0,
        };
        let out: InitOut = self.call(Opcode::Init, 0, init.as_slice()).ok();
        assert_eq!(out.major, 7);
        assert!(out.minor >= 27);
    }

    fn lookup(&mut self, parent: u64, name: &[u8]) -> Reply {
        let mut body = name.to_vec();
        body.push(0);
        self.call(Opcode::Lookup, parent, &body)
    }

    fn open(&mut self, nodeid: u64, flags: i32) -> Reply {
        let open = OpenIn {
            flags: flags.cast_unsigned(),
            fuse_flags: 0,
        };
        self.call(Opcode::Open, nodeid, open.as_slice())
    }

    fn read(&mut self, nodeid: u64, fh: u64, size: u32) -> Reply {
        let read = ReadIn {
            fh,
            offset: 0,
            size,
            ..Default::default()
        };
        self.call(Opcode::Read, nodeid, read.as_slice())
    }

    fn create(&mut self, parent: u64, name: &str, flags: i32) -> Reply {
        let args = CreateIn {
            flags: flags.cast_unsigned(),
            mode: libc::S_IFREG | 0o644,
            umask: 0o022,
            fuse_flags: 0,
        };
        let mut body = args.as_slice().to_vec();
        body.extend_from_slice(CString::new(name).unwrap().as_bytes_with_nul());
        self.call(Opcode::Create, parent, &body)
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Reply {
        self.mkdir_mode(parent, name, 0o755, 0o022)
    }

    fn mkdir_mode(&mut self, parent: u64, name: &str, mode: u32, umask: u32) -> Reply {
        let args = MkdirIn { mode, umask };
        self.call(Opcode::Mkdir, parent, &with_name(args.as_slice(), name))
    }

    fn create_mode(&mut self, parent: u64, name: &str, flags: i32, mode: u32, umask: u32) -> Reply {
        let args = CreateIn {
            flags: flags.cast_unsigned(),
            mode,
            umask,
            fuse_flags: 0,
        };
        self.call(Opcode::Create, parent, &with_name(args.as_slice(), name))
    }

    fn mknod(&mut self, parent: u64, name: &str, mode: u32, rdev: u32, umask: u32) -> Reply {
        let args = MknodIn {
            mode,
            rdev,
            umask,
            padding: 0,
        };
        self.call(Opcode::Mknod, parent, &with_name(args.as_slice(), name))
    }

    fn setattr(&mut self, nodeid: u64, args: SetattrIn) -> Reply {
        self.call(Opcode::Setattr, nodeid, args.as_slice())
    }

    fn write(&mut self, nodeid: u64, fh: u64, data: &[u8]) -> Reply {
        let write = WriteIn {
            fh,
            size: len32(data.len()),
            ..Default::default()
        };
        let mut body = write.as_slice().to_vec();
        body.extend_from_slice(data);
        self.call(Opcode::Write, nodeid, &body)
    }
}

/// A FUSE body: the fixed part, then a NUL-terminated name.
fn with_name(fixed: &[u8], name: &str) -> Vec<u8> {
    let mut body = fixed.to_vec();
    body.extend_from_slice(CString::new(name).unwrap().as_bytes_with_nul());
    body
}

fn share() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), b"hello from the host\n").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd-link")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("etc-link")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/passwd", dir.path().join("rel-link"))
        .unwrap();
    dir
}

#[test]
fn tag_and_config_space() {
    let dir = share();
    assert!(matches!(
        Fs::new("", dir.path(), true),
        Err(Error::BadTag(_))
    ));
    assert!(matches!(
        Fs::new(&"x".repeat(TAG_LEN + 1), dir.path(), true),
        Err(Error::BadTag(_))
    ));
    assert!(matches!(
        Fs::new("a\0b", dir.path(), true),
        Err(Error::BadTag(_))
    ));
    assert!(matches!(
        Fs::new("t", &dir.path().join("hello.txt"), true),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(
        Fs::new("t", &dir.path().join("missing"), true),
        Err(Error::SharedDir { .. })
    ));
    let fs = Fs::new(&"x".repeat(TAG_LEN), dir.path(), true).unwrap();
    let mut tag = [0u8; TAG_LEN];
    fs.read_config(0, &mut tag);
    assert_eq!(tag, [b'x'; TAG_LEN]);
    let fs = Fs::new("rootfs", dir.path(), false).unwrap();
    let mut cfg = [0xffu8; CONFIG_LEN];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..7], b"rootfs\0");
    assert!(cfg[7..TAG_LEN].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(cfg[TAG_LEN..].try_into().unwrap()), 1);
    assert_eq!(fs.queue_max_sizes().len(), 2);
    assert_eq!(fs.device_type(), crate::virtio::device_type::FS);
}

#[test]
fn linux_style_init_negotiation() {
    // What a 6.x guest sends: minor 38, INIT_EXT with the second flags word.
    let dir = share();
    let mut h = Harness::new(dir.path(), true);
    let wanted = FsOptions::ASYNC_READ
        | FsOptions::POSIX_LOCKS
        | FsOptions::ATOMIC_O_TRUNC
        | FsOptions::EXPORT_SUPPORT
        | FsOptions::BIG_WRITES
        | FsOptions::DONT_MASK
        | FsOptions::FLOCK_LOCKS
        | FsOptions::AUTO_INVAL_DATA
        | FsOptions::DO_READDIRPLUS
        | FsOptions::READDIRPLUS_AUTO
        | FsOptions::ASYNC_DIO
        | FsOptions::WRITEBACK_CACHE
        | FsOptions::PARALLEL_DIROPS
        | FsOptions::MAX_PAGES
        | FsOptions::CACHE_SYMLINKS
        | FsOptions::INIT_EXT;
    let init = InitIn {
        major: 7,
        minor: 38,
        max_readahead: 128 * 1024,
        // The low half; with INIT_EXT, flags2 carries the high one.
        flags: u32::try_from(wanted.bits() & 0xffff_ffff).unwrap(),
    };
    let mut body = init.as_slice().to_vec();
    body.extend_from_slice(InitIn2::default().as_slice());
    let out: InitOut = h.call(Opcode::Init, 0, &body).ok();
    let got = FsOptions::from_bits_truncate(u64::from(out.flags) | (u64::from(out.flags2) << 32));
    assert_eq!(out.major, 7);
    assert!(got.contains(FsOptions::DO_READDIRPLUS | FsOptions::MAX_PAGES));
    assert!(
        !got.contains(FsOptions::WRITEBACK_CACHE),
        "read-only share: no writeback"
    );
    assert!(
        !got.contains(FsOptions::POSIX_LOCKS),
        "locks stay in the guest"
    );
    assert_eq!(out.max_pages, 256);
    assert!(out.max_write >= 128 * 1024);
    // Still serving after re-INIT.
    let entry: EntryOut = h.lookup(ROOT, b"hello.txt").ok();
    assert_eq!(entry.attr.size, 20);
}

#[test]
fn init_lookup_getattr_open_read() {
    let dir = share();
    let mut h = Harness::new(dir.path(), true);
    let entry: EntryOut = h.lookup(ROOT, b"hello.txt").ok();
    assert_eq!(entry.attr.size, 20);
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFREG);

    let getattr = GetattrIn::default();
    let attr: AttrOut = h
        .call(Opcode::Getattr, entry.nodeid, getattr.as_slice())
        .ok();
    assert_eq!(attr.attr.size, 20);
    assert_eq!(
        attr.attr.ino,
        std::fs::metadata(dir.path().join("hello.txt"))
            .unwrap()
            .ino()
    );

    let open: OpenOut = h.open(entry.nodeid, libc::O_RDONLY).ok();
    let read = h.read(entry.nodeid, open.fh, 4096);
    assert_eq!(read.header.error, 0);
    assert_eq!(read.body, b"hello from the host\n");

    // Nested lookup and STATFS.
    let sub: EntryOut = h.lookup(ROOT, b"sub").ok();
    let inner: EntryOut = h.lookup(sub.nodeid, b"inner").ok();
    assert_eq!(inner.attr.size, 5);
    let statfs = h.call(Opcode::Statfs, ROOT, &[]);
    assert_eq!(statfs.header.error, 0);
    assert!(statfs.used >= 16 + 80);

    // OPENDIR + READDIRPLUS lists the entries.
    let opendir: OpenOut = h
        .call(Opcode::Opendir, ROOT, OpenIn::default().as_slice())
        .ok();
    let readdir = ReadIn {
        fh: opendir.fh,
        size: 8192,
        ..Default::default()
    };
    let listing = h.call(Opcode::Readdirplus, ROOT, readdir.as_slice());
    assert_eq!(listing.header.error, 0);
    let text = String::from_utf8_lossy(&listing.body);
    assert!(text.contains("hello.txt") && text.contains("sub"), "{text}");
}

#[test]
fn writes_in_rw_mode_reach_the_host() {
    let dir = share();
    let mut h = Harness::new(dir.path(), false);
    let created = h.create(ROOT, "new.txt", libc::O_WRONLY | libc::O_CREAT);
    assert_eq!(created.header.error, 0);
    let entry = EntryOut::from_slice(&created.body[..std::mem::size_of::<EntryOut>()])
        .copied()
        .unwrap();
    let open = OpenOut::from_slice(&created.body[std::mem::size_of::<EntryOut>()..][..16])
        .copied()
        .unwrap();
    let data = b"written by the guest";
    let write = WriteIn {
        fh: open.fh,
        offset: 0,
        size: len32(data.len()),
        ..Default::default()
    };
    let mut body = write.as_slice().to_vec();
    body.extend_from_slice(data);
    let out: WriteOut = h.call(Opcode::Write, entry.nodeid, &body).ok();
    assert_eq!(out.size as usize, data.len());
    assert_eq!(std::fs::read(dir.path().join("new.txt")).unwrap(), data);

    // One 192 KiB WRITE (well past the 4 KiB a non-MAX_PAGES server allows), read back in one
    // READ.
    let big: Vec<u8> = (0..192 * 1024u32).map(|i| (i % 253) as u8).collect();
    let write = WriteIn {
        fh: open.fh,
        offset: 0,
        size: len32(big.len()),
        ..Default::default()
    };
    let mut body = write.as_slice().to_vec();
    body.extend_from_slice(&big);
    let out: WriteOut = h.call(Opcode::Write, entry.nodeid, &body).ok();
    assert_eq!(out.size as usize, big.len());
    assert_eq!(std::fs::read(dir.path().join("new.txt")).unwrap(), big);
    let reader: OpenOut = h.open(entry.nodeid, libc::O_RDONLY).ok();
    let read = h.read(entry.nodeid, reader.fh, 60 * 1024);
    assert_eq!(read.header.error, 0);
    assert_eq!(read.body, &big[..60 * 1024]);
    std::fs::write(dir.path().join("new.txt"), data).unwrap();

    // WRITE claiming more bytes than the request carries: refused, nothing beyond the request
    // (other guest memory) reaches the file.
    let write = WriteIn {
        fh: open.fh,
        offset: 0,
        size: 1 << 20,
        ..Default::default()
    };
    let mut body = write.as_slice().to_vec();
    body.extend_from_slice(b"tiny");
    let r = h.call(Opcode::Write, entry.nodeid, &body);
    assert_eq!(r.errno(), libc::EINVAL);
    assert_eq!(std::fs::read(dir.path().join("new.txt")).unwrap(), data);
    // READ asking for more than the reply buffer holds: an error, not an overflow.
    let read = h.read(entry.nodeid, reader.fh, 1 << 20);
    assert_ne!(read.header.error, 0);
    // umask applied by the guest is honoured: 0644 stays 0644.
    let mode = std::fs::metadata(dir.path().join("new.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);

    // Files created as a guest user belong to that uid on the host (no mapping).
    let args = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let mut body = args.as_slice().to_vec();
    body.extend_from_slice(b"owned\0");
    let r = h.call_as(Opcode::Mkdir, ROOT, &body, 1234, 4321);
    assert_eq!(r.header.error, 0);
    let meta = std::fs::metadata(dir.path().join("owned")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 4321));

    assert_eq!(h.mkdir(ROOT, "newdir").header.error, 0);
    assert!(dir.path().join("newdir").is_dir());

    // Names with '/' or dot-names are refused for creation.
    for bad in ["a/b", "..", ".", "/etc/evil"] {
        assert_eq!(h.mkdir(ROOT, bad).errno(), libc::EINVAL, "{bad}");
    }
    assert_eq!(h.mkdir(ROOT, &"n".repeat(256)).errno(), libc::ENAMETOOLONG);
    assert!(!Path::new("/etc/evil").exists());

    // Host device nodes cannot be created.
    let mknod = MknodIn {
        mode: libc::S_IFCHR | 0o666,
        rdev: u32::try_from(libc::makedev(1, 3)).unwrap(),
        umask: 0,
        padding: 0,
    };
    let mut body = mknod.as_slice().to_vec();
    body.extend_from_slice(b"null\0");
    assert_eq!(h.call(Opcode::Mknod, ROOT, &body).errno(), libc::EPERM);
    assert!(!dir.path().join("null").exists());
}

#[test]
fn read_only_mode_refuses_every_mutation() {
    let dir = share();
    let before = std::fs::read(dir.path().join("hello.txt")).unwrap();
    let mut h = Harness::new(dir.path(), true);
    let entry: EntryOut = h.lookup(ROOT, b"hello.txt").ok();

    assert_eq!(
        h.create(ROOT, "x", libc::O_WRONLY | libc::O_CREAT).errno(),
        libc::EROFS
    );
    assert_eq!(h.mkdir(ROOT, "d").errno(), libc::EROFS);
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_TMPFILE | libc::O_RDWR,
    ] {
        assert_eq!(
            h.open(entry.nodeid, flags).errno(),
            libc::EROFS,
            "{flags:#x}"
        );
    }
    let setattr = SetattrIn {
        valid: 1 << 3, // FATTR_SIZE
        size: 0,
        ..Default::default()
    };
    assert_eq!(
        h.call(Opcode::Setattr, entry.nodeid, setattr.as_slice())
            .errno(),
        libc::EROFS
    );
    for (op, body) in [
        (Opcode::Unlink, b"hello.txt\0".to_vec()),
        (Opcode::Rmdir, b"sub\0".to_vec()),
        (Opcode::Symlink, b"ln\0/etc/passwd\0".to_vec()),
    ] {
        assert_eq!(h.call(op, ROOT, &body).errno(), libc::EROFS, "{op:?}");
    }
    let mut rename = ROOT.to_le_bytes().to_vec();
    rename.extend_from_slice(b"hello.txt\0moved\0");
    assert_eq!(h.call(Opcode::Rename, ROOT, &rename).errno(), libc::EROFS);
    let mut link = entry.nodeid.to_le_bytes().to_vec();
    link.extend_from_slice(b"hardlink\0");
    assert_eq!(h.call(Opcode::Link, ROOT, &link).errno(), libc::EROFS);

    // Even with a read-only handle, WRITE and FALLOCATE are refused.
    let open: OpenOut = h.open(entry.nodeid, libc::O_RDONLY).ok();
    let write = WriteIn {
        fh: open.fh,
        size: 4,
        ..Default::default()
    };
    let mut body = write.as_slice().to_vec();
    body.extend_from_slice(b"evil");
    assert_eq!(
        h.call(Opcode::Write, entry.nodeid, &body).errno(),
        libc::EROFS
    );
    let mut fallocate = open.fh.to_le_bytes().to_vec();
    fallocate.extend_from_slice(&0u64.to_le_bytes());
    fallocate.extend_from_slice(&4096u64.to_le_bytes());
    fallocate.extend_from_slice(&[0u8; 8]);
    assert_eq!(
        h.call(Opcode::Fallocate, entry.nodeid, &fallocate).errno(),
        libc::EROFS
    );

    assert_eq!(std::fs::read(dir.path().join("hello.txt")).unwrap(), before);
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["etc-link", "hello.txt", "passwd-link", "rel-link", "sub"]
    );
}

#[test]
fn lookups_cannot_escape_the_share() {
    let dir = share();
    let root_ino = std::fs::metadata(dir.path()).unwrap().ino();
    let mut h = Harness::new(dir.path(), false);

    // ".." at the root is the root.
    let up: EntryOut = h.lookup(ROOT, b"..").ok();
    assert_eq!(up.attr.ino, root_ino);
    let up2: EntryOut = h.lookup(up.nodeid, b"..").ok();
    assert_eq!(up2.attr.ino, root_ino);
    // ".." from a subdirectory leads back to the root, not beyond.
    let sub: EntryOut = h.lookup(ROOT, b"sub").ok();
    let back: EntryOut = h.lookup(sub.nodeid, b"..").ok();
    assert_eq!(back.attr.ino, root_ino);

    // Multi-component and absolute names are refused outright.
    for name in [
        &b"../etc"[..],
        b"/etc/passwd",
        b"sub/inner",
        b"/proc/self/root",
        b"",
    ] {
        assert_eq!(h.lookup(ROOT, name).errno(), libc::EINVAL, "{name:?}");
    }

    // Symlinks are entries of their own; the host never follows them.
    let host_passwd = std::fs::read("/etc/passwd").unwrap();
    for link in [&b"passwd-link"[..], b"rel-link"] {
        let l: EntryOut = h.lookup(ROOT, link).ok();
        assert_eq!(l.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        let open = h.open(l.nodeid, libc::O_RDONLY);
        assert_ne!(open.header.error, 0, "opening a symlink inode must fail");
        let target = h.call(Opcode::Readlink, l.nodeid, &[]);
        assert_eq!(target.header.error, 0);
        assert_ne!(target.body, host_passwd);
    }
    // Looking up through a symlink to a host directory does not reach it.
    let etc: EntryOut = h.lookup(ROOT, b"etc-link").ok();
    let through = h.lookup(etc.nodeid, b"passwd");
    assert_ne!(through.header.error, 0);

    // A guest-made symlink to /etc/passwd is just as inert.
    let r = h.call(Opcode::Symlink, ROOT, b"mine\0/etc/passwd\0");
    assert_eq!(r.header.error, 0);
    let mine: EntryOut = h.lookup(ROOT, b"mine").ok();
    assert_ne!(h.open(mine.nodeid, libc::O_RDONLY).header.error, 0);
    let created = h.create(mine.nodeid, "x", libc::O_WRONLY | libc::O_CREAT);
    assert_ne!(created.header.error, 0);

    // A host device node inside the share is never opened for I/O.
    let null = dir.path().join("devnull");
    nix::sys::stat::mknod(
        &null,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
    let dev: EntryOut = h.lookup(ROOT, b"devnull").ok();
    assert_ne!(h.open(dev.nodeid, libc::O_RDWR).header.error, 0);
}

#[test]
fn malformed_requests_get_errors_or_are_dropped() {
    let dir = share();
    let mut h = Harness::new(dir.path(), false);
    let header = |len: u32, opcode: u32| {
        InHeader {
            len,
            opcode,
            unique: 77,
            nodeid: ROOT,
            ..Default::default()
        }
        .as_slice()
        .to_vec()
    };

    // Truncated header: EINVAL reply.
    let r = h.send_bytes(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 64);
    assert_eq!((r.used, r.errno()), (16, libc::EINVAL));
    // Header length larger than the request, smaller than a header, or absurd.
    for len in [41 + 100, 0, 39, u32::MAX] {
        let r = h.send_bytes(&header(len, Opcode::Getattr as u32), 64);
        assert_eq!((r.used, r.errno()), (16, libc::EINVAL), "len {len}");
    }
    // Unknown opcode: ENOSYS.
    let r = h.send_bytes(&header(40, 9999), 64);
    assert_eq!(r.errno(), libc::ENOSYS);
    assert_eq!(r.header.unique, 77);
    // LOOKUP name without NUL terminator.
    let mut msg = header(45, Opcode::Lookup as u32);
    msg.extend_from_slice(b"hello");
    let r = h.send_bytes(&msg, 256);
    assert_eq!(r.errno(), libc::EINVAL);
    // Body shorter than the opcode's struct (OPEN without OpenIn).
    let r = h.send_bytes(&header(40, Opcode::Open as u32), 256);
    assert_eq!(r.errno(), libc::EINVAL);
    // Reply buffer too small for any reply: dropped, nothing written.
    let r = h.send_bytes(&header(40, 9999), 8);
    assert_eq!(r.used, 0);
    // A garbage nodeid.
    let r = h.send_bytes(
        &InHeader {
            len: 40 + 16,
            opcode: Opcode::Getattr as u32,
            unique: 5,
            nodeid: 0xdead_beef,
            ..Default::default()
        }
        .as_slice()
        .iter()
        .copied()
        .chain([0u8; 16])
        .collect::<Vec<u8>>(),
        256,
    );
    assert_ne!(r.header.error, 0);
    // BATCH_FORGET claiming 2^32-1 entries: no reply, no allocation blow-up.
    let mut msg = header(48, Opcode::BatchForget as u32);
    msg.extend_from_slice(&u32::MAX.to_le_bytes());
    msg.extend_from_slice(&[0u8; 4]);
    assert_eq!(h.send_bytes(&msg, 64).used, 0);

    // Chains: descriptor outside memory, readable after writable, no descriptors beyond
    // the table.
    let msg = header(40, Opcode::Statfs as u32);
    h.mem.write_slice(&msg, GuestAddress(REQ)).unwrap();
    let outside = [
        RawDescriptor::from(SplitDescriptor::new(REQ, 40, F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(MEM_SIZE as u64 - 8, 4096, F_WRITE, 0)),
    ];
    assert_eq!(h.submit_raw(&outside), 0);
    let backwards = [
        RawDescriptor::from(SplitDescriptor::new(RESP, 64, F_WRITE | F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(REQ, 40, 0, 0)),
    ];
    assert_eq!(h.submit_raw(&backwards), 0);
    let looped = [
        RawDescriptor::from(SplitDescriptor::new(REQ, 40, F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(RESP, 64, F_WRITE | F_NEXT, 0)),
    ];
    // A 0 -> 1 -> 0 loop ends at the queue size; it is readable-after-writable: dropped.
    assert_eq!(h.submit_raw(&looped), 0);

    // Still serving afterwards.
    let entry: EntryOut = h.lookup(ROOT, b"hello.txt").ok();
    assert_eq!(entry.attr.size, 20);
}

#[test]
fn event_loop_dispatches_both_queues() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::Mutex;

    let dir = share();
    let mem = test_utils::memory(MEM_SIZE);
    let fs = Arc::new(Mutex::new(Fs::new("rootfs", dir.path(), false).unwrap()));
    let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    manager.add_subscriber(fs.clone());
    let hiprio = MockSplitQueue::create(&mem, GuestAddress(HIPRIO_BASE), Q);
    let request = MockSplitQueue::create(&mem, GuestAddress(REQUEST_BASE), Q);
    let events = test_utils::queue_events(NUM_QUEUES);
    let interrupt = Arc::new(CountingInterrupt::default());
    fs.lock()
        .unwrap()
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![
                hiprio.create_queue().unwrap(),
                request.create_queue().unwrap(),
            ],
            queue_events: test_utils::clones(&events),
            interrupt: interrupt.clone(),
        })
        .unwrap();
    manager.run_with_timeout(100).unwrap();

    // INIT on the request queue, signalled through its eventfd.
    let init = InitIn {
        major: 7,
        minor: 33,
        ..Default::default()
    };
    let header = InHeader {
        len: 56,
        opcode: Opcode::Init as u32,
        unique: 9,
        ..Default::default()
    };
    mem.write_slice(header.as_slice(), GuestAddress(REQ))
        .unwrap();
    mem.write_slice(init.as_slice(), GuestAddress(REQ + 40))
        .unwrap();
    let chain = [
        RawDescriptor::from(SplitDescriptor::new(REQ, 56, F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(RESP, 4096, F_WRITE, 0)),
    ];
    request.add_desc_chains(&chain, 0).unwrap();
    events[1].write(1).unwrap();
    manager.run_with_timeout(100).unwrap();
    let used: u16 = mem.read_obj(request.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(used, 1);
    let out: OutHeader = mem.read_obj(GuestAddress(RESP)).unwrap();
    assert_eq!((out.error, out.unique), (0, 9));
    assert_eq!(interrupt.count(), 1);

    // FORGET on the hiprio queue: consumed without a reply.
    let forget = InHeader {
        len: 48,
        opcode: Opcode::Forget as u32,
        unique: 10,
        nodeid: 12345,
        ..Default::default()
    };
    mem.write_slice(forget.as_slice(), GuestAddress(REQ))
        .unwrap();
    mem.write_obj(1u64, GuestAddress(REQ + 40)).unwrap();
    hiprio
        .add_desc_chains(
            &[RawDescriptor::from(SplitDescriptor::new(REQ, 48, 0, 0))],
            0,
        )
        .unwrap();
    events[0].write(1).unwrap();
    manager.run_with_timeout(100).unwrap();
    let used: u16 = mem.read_obj(hiprio.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(used, 1);
    let len: u32 = mem
        .read_obj(hiprio.used_addr().unchecked_add(4 + 4))
        .unwrap();
    assert_eq!(len, 0);
}

// ---- A hostile guest kernel: what it creates in, and does to, the host directory ----

const SUID_SGID: u32 = libc::S_ISUID | libc::S_ISGID;

/// `st_mode` of `name` in `dir`, not following symlinks.
fn host_mode(dir: &Path, name: &str) -> u32 {
    std::fs::symlink_metadata(dir.join(name)).unwrap().mode()
}

/// A host file the image put in the share with setuid and setgid set.
fn host_setid_file(dir: &Path, name: &str) {
    let path = dir.join(name);
    std::fs::write(&path, b"#!/bin/sh\nid\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o6755)).unwrap();
    assert_eq!(host_mode(dir, name) & 0o7777, 0o6755);
}

fn mode_setattr(mode: u32) -> SetattrIn {
    SetattrIn {
        valid: SetattrValid::MODE.bits(),
        mode,
        ..Default::default()
    }
}

/// Issue 9, item 7: the node is made with `mode & !umask` and the guest sends both, so what
/// is checked must be the type left after the umask.
#[test]
fn mknod_checks_the_type_left_after_the_guest_umask() {
    let dir = share();
    let mut h = Harness::new(dir.path(), false);
    let sda = u32::try_from(libc::makedev(8, 0)).unwrap();
    let mem = u32::try_from(libc::makedev(1, 1)).unwrap();

    // The instances: a block device, then a character device.
    let r = h.mknod(ROOT, "blk", 0o070666, sda, 0o010000);
    assert_eq!(r.errno(), libc::EPERM);
    let r = h.mknod(ROOT, "chr", libc::S_IFLNK | 0o666, mem, 0o100000);
    assert_eq!(r.errno(), libc::EPERM);
    for name in ["blk", "chr"] {
        assert!(std::fs::symlink_metadata(dir.path().join(name)).is_err());
    }

    // The class: every file type the guest can name under every umask type, with a real
    // device number and with 0:0. What exists afterwards is a regular file, FIFO, socket or
    // the 0:0 character device (an overlayfs whiteout, which no driver backs), never setuid or
    // setgid.
    for rdev in [mem, 0] {
        for mode_type in 0..16u32 {
            for umask_type in 0..16u32 {
                let mode = (mode_type << 12) | 0o6777;
                let umask = (umask_type << 12) | 0o022;
                let name = format!("n-{rdev}-{mode_type:o}-{umask_type:o}");
                let r = h.mknod(ROOT, &name, mode, rdev, umask);
                let Ok(meta) = std::fs::symlink_metadata(dir.path().join(&name)) else {
                    assert_ne!(r.header.error, 0, "{name}");
                    continue;
                };
                assert_eq!(r.header.error, 0, "{name}");
                let kind = meta.mode() & libc::S_IFMT;
                let whiteout = kind == libc::S_IFCHR && meta.rdev() == 0;
                assert!(
                    whiteout || matches!(kind, libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK),
                    "{name}: made type {kind:o} rdev {:#x}",
                    meta.rdev()
                );
                assert_eq!(
                    meta.mode() & 0o7777,
                    0o755,
                    "{name}: mode {:o}",
                    meta.mode()
                );
            }
        }
    }

    // What a real guest makes keeps working: FIFOs, sockets, whiteouts, plain files.
    for (name, mode) in [
        ("fifo", libc::S_IFIFO | 0o644),
        ("sock", libc::S_IFSOCK | 0o755),
        ("whiteout", libc::S_IFCHR),
        ("plain", libc::S_IFREG | 0o640),
    ] {
        let r = h.mknod(ROOT, name, mode, 0, 0o022);
        assert_eq!(r.header.error, 0, "{name}");
        let meta = std::fs::symlink_metadata(dir.path().join(name)).unwrap();
        assert_eq!(meta.mode(), mode & !0o022, "{name}");
        assert_eq!(meta.rdev(), 0, "{name}");
    }
    // Block devices are refused even as 0:0.
    assert_eq!(
        h.mknod(ROOT, "b00", libc::S_IFBLK, 0, 0).errno(),
        libc::EPERM
    );
    // RENAME_WHITEOUT (what overlayfs in the guest uses) leaves the same 0:0 node behind.
    let rename = Rename2In {
        newdir: ROOT,
        flags: libc::RENAME_WHITEOUT,
        padding: 0,
    };
    let mut body = rename.as_slice().to_vec();
    body.extend_from_slice(b"plain\0renamed\0");
    assert_eq!(h.call(Opcode::Rename2, ROOT, &body).header.error, 0);
    let left = std::fs::symlink_metadata(dir.path().join("plain")).unwrap();
    assert_eq!(
        (left.mode() & libc::S_IFMT, left.rdev()),
        (libc::S_IFCHR, 0)
    );
    assert!(dir.path().join("renamed").is_file());
}

/// Issue 9, item 5 (virtio-fs): guest-made files are never setuid or setgid on the host.
/// Directories may keep setgid (new entries inherit the group; it grants nothing on exec).
#[test]
fn guest_cannot_make_setuid_or_setgid_files() {
    let dir = share();
    let d = dir.path();
    let mut h = Harness::new(d, false);
    let flags = libc::O_WRONLY | libc::O_CREAT;

    let r = h.create_mode(ROOT, "suid", flags, libc::S_IFREG | 0o4755, 0);
    assert_eq!(r.header.error, 0);
    assert_eq!(host_mode(d, "suid") & 0o7777, 0o755);
    let r = h.create_mode(
        ROOT,
        "sgid",
        flags | libc::O_EXCL,
        libc::S_IFREG | 0o6775,
        0o002,
    );
    assert_eq!(r.header.error, 0);
    assert_eq!(host_mode(d, "sgid") & 0o7777, 0o775);

    // SETATTR to 06755: the reply and the host agree, neither bit is set.
    let file: EntryOut = h.lookup(ROOT, b"hello.txt").ok();
    let attr: AttrOut = h
        .setattr(file.nodeid, mode_setattr(libc::S_IFREG | 0o6755))
        .ok();
    assert_eq!(attr.attr.mode & 0o7777, 0o755);
    assert_eq!(host_mode(d, "hello.txt"), libc::S_IFREG | 0o755);
    // Type bits in a SETATTR mode do not turn the file into anything else.
    for kind in [libc::S_IFCHR, libc::S_IFBLK, libc::S_IFDIR, 0o170000] {
        let attr: AttrOut = h.setattr(file.nodeid, mode_setattr(kind | 0o4640)).ok();
        assert_eq!(attr.attr.mode, libc::S_IFREG | 0o640, "{kind:o}");
        assert_eq!(host_mode(d, "hello.txt"), libc::S_IFREG | 0o640, "{kind:o}");
    }

    // Directories: never setuid; setgid kept when the guest sets it.
    let r = h.mkdir_mode(ROOT, "sgid-dir", 0o6755, 0);
    assert_eq!(r.header.error, 0);
    assert_eq!(host_mode(d, "sgid-dir") & libc::S_ISUID, 0);
    let sub: EntryOut = h.lookup(ROOT, b"sgid-dir").ok();
    let attr: AttrOut = h.setattr(sub.nodeid, mode_setattr(0o6755)).ok();
    assert_eq!(attr.attr.mode, libc::S_IFDIR | 0o2755);
    assert_eq!(host_mode(d, "sgid-dir"), libc::S_IFDIR | 0o2755);
    // ... and what is created inside it inherits the group, not setgid.
    let r = h.create_mode(sub.nodeid, "inner", flags, libc::S_IFREG | 0o2755, 0);
    assert_eq!(r.header.error, 0);
    assert_eq!(host_mode(d, "sgid-dir/inner") & 0o7777, 0o755);
}

/// The host kernel clears setuid/setgid on a write only when the writer lacks CAP_FSETID, and
/// the device writes as root; a guest changing a setuid file's data must still clear them,
/// whatever the guest says in its kill-priv flags.
#[test]
fn guest_data_changes_clear_setuid_and_setgid() {
    const OPS: [&str; 6] = [
        "write",
        "fallocate",
        "truncate",
        "chown",
        "otrunc",
        "create-trunc",
    ];
    let dir = share();
    let d = dir.path();
    for name in OPS {
        host_setid_file(d, name);
    }
    let mut h = Harness::new(d, false);
    let node = |h: &mut Harness, name: &str| h.lookup(ROOT, name.as_bytes()).ok::<EntryOut>();

    let e = node(&mut h, "write");
    let open: OpenOut = h.open(e.nodeid, libc::O_WRONLY).ok();
    let out: WriteOut = h.write(e.nodeid, open.fh, b"#!/bin/sh\nevil\n").ok();
    assert_eq!(out.size, 15);

    let e = node(&mut h, "fallocate");
    let open: OpenOut = h.open(e.nodeid, libc::O_RDWR).ok();
    let fallocate = FallocateIn {
        fh: open.fh,
        offset: 0,
        length: 4096,
        mode: 0,
        padding: 0,
    };
    let r = h.call(Opcode::Fallocate, e.nodeid, fallocate.as_slice());
    assert_eq!(r.header.error, 0);

    let e = node(&mut h, "truncate");
    let truncate = SetattrIn {
        valid: SetattrValid::SIZE.bits(),
        size: 3,
        ..Default::default()
    };
    let truncated: AttrOut = h.setattr(e.nodeid, truncate).ok();

    let e = node(&mut h, "chown");
    let chown = SetattrIn {
        valid: (SetattrValid::UID | SetattrValid::GID).bits(),
        uid: 0,
        gid: 0,
        ..Default::default()
    };
    let _: AttrOut = h.setattr(e.nodeid, chown).ok();

    let e = node(&mut h, "otrunc");
    let _: OpenOut = h.open(e.nodeid, libc::O_WRONLY | libc::O_TRUNC).ok();

    let r = h.create(
        ROOT,
        "create-trunc",
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
    );
    assert_eq!(r.header.error, 0);

    let modes: Vec<_> = OPS
        .iter()
        .map(|op| (*op, host_mode(d, op) & 0o7777))
        .collect();
    let want: Vec<_> = OPS.iter().map(|op| (*op, 0o755)).collect();
    assert_eq!(modes, want);
    assert_eq!(
        truncated.attr.mode & SUID_SGID,
        0,
        "SETATTR's reply shows the cleared mode"
    );
}

/// Extended-attribute value on the host, if set.
fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated; the kernel writes at most buf.len() bytes.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

/// `security.capability` grants privilege on exec, `trusted.overlay.*` steers a host overlayfs
/// that uses the directory as a layer, other `security.*` names are LSM labels: a guest sets
/// none of them, even when the backend stores extended attributes.
#[test]
fn xattrs_the_host_honours_are_refused() {
    use fuse_backend_rs::api::filesystem::{Context, FileSystem, GetxattrReply};
    use fuse_backend_rs::passthrough::{Config, PassthroughFs};
    const PRIVILEGED: [&str; 6] = [
        "security.capability",
        "security.selinux",
        "trusted.overlay.opaque",
        "trusted.overlay.redirect",
        "trusted.anything",
        "system.sockprotoname",
    ];
    // A well-formed vfs_cap_data (revision 2, effective, all of the low 32 capabilities
    // permitted): the kernel would store it.
    let mut value = 0x0200_0001u32.to_le_bytes().to_vec();
    value.extend_from_slice(&u32::MAX.to_le_bytes());
    value.extend_from_slice(&[0u8; 12]);
    let dir = share();
    let file = dir.path().join("hello.txt");

    // Through the device as it is built: refused, nothing reaches the host.
    let mut h = Harness::new(dir.path(), false);
    let e: EntryOut = h.lookup(ROOT, b"hello.txt").ok();
    for name in PRIVILEGED {
        let args = SetxattrIn {
            size: len32(value.len()),
            flags: 0,
        };
        let mut body = with_name(args.as_slice(), name);
        body.extend_from_slice(&value);
        assert_ne!(
            h.call(Opcode::Setxattr, e.nodeid, &body).header.error,
            0,
            "{name}"
        );
        assert_eq!(host_xattr(&file, name), None, "{name}");
    }

    // Reads and removals with absurd sizes or privileged names: errors, and still serving.
    let huge = GetxattrIn {
        size: u32::MAX,
        padding: 0,
    };
    let r = h.call(
        Opcode::Getxattr,
        e.nodeid,
        &with_name(huge.as_slice(), "security.capability"),
    );
    assert_ne!(r.header.error, 0);
    assert_ne!(
        h.call(Opcode::Listxattr, e.nodeid, huge.as_slice())
            .header
            .error,
        0
    );
    let r = h.call(Opcode::Removexattr, e.nodeid, b"security.capability\0");
    assert_ne!(r.header.error, 0);
    assert_eq!(
        h.lookup(ROOT, b"hello.txt").ok::<EntryOut>().nodeid,
        e.nodeid
    );

    // The policy holds on its own, in front of a backend that does store xattrs.
    let cfg = Config {
        root_dir: dir.path().to_str().unwrap().to_string(),
        do_import: true,
        xattr: true,
        ..Default::default()
    };
    let fs = GuestFs::new(PassthroughFs::<()>::new(cfg).unwrap(), false);
    fs.init(FsOptions::empty()).unwrap();
    let ctx = Context::default();
    let inode = fs
        .lookup(&ctx, ROOT, &CString::new("hello.txt").unwrap())
        .unwrap()
        .inode;
    for name in PRIVILEGED {
        let cname = CString::new(name).unwrap();
        let err = fs.setxattr(&ctx, inode, &cname, &value, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{name}");
        assert_eq!(host_xattr(&file, name), None, "{name}");
    }
    // A host-set trusted.overlay.opaque stays: the guest cannot remove it either.
    let cpath = CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    let opaque = CString::new("trusted.overlay.opaque").unwrap();
    // SAFETY: NUL-terminated strings, a 1-byte value.
    let set =
        unsafe { libc::lsetxattr(cpath.as_ptr(), opaque.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    let err = fs.removexattr(&ctx, inode, &opaque).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    assert_eq!(
        host_xattr(&file, "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );

    // An ACL is a chmod by other means: not on a device node either.
    nix::sys::stat::mknod(
        &dir.path().join("devnull"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        libc::makedev(1, 3),
    )
    .unwrap();
    let dev = fs
        .lookup(&ctx, ROOT, &CString::new("devnull").unwrap())
        .unwrap()
        .inode;
    let mut acl = 2u32.to_le_bytes().to_vec(); // POSIX_ACL_XATTR_VERSION
    for tag in [0x01u16, 0x04, 0x20] {
        // ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER: rw-
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&6u16.to_le_bytes());
        acl.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    let access_acl = CString::new("system.posix_acl_access").unwrap();
    let err = fs.setxattr(&ctx, dev, &access_acl, &acl, 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    assert_eq!(host_mode(dir.path(), "devnull") & 0o777, 0o600);

    // The guest's own names (user.*, POSIX ACLs) still work.
    let note = CString::new("user.note").unwrap();
    fs.setxattr(&ctx, inode, &note, b"kept", 0).unwrap();
    assert_eq!(host_xattr(&file, "user.note"), Some(b"kept".to_vec()));
    // A guest asking for a 4 GiB buffer gets the value (the size is capped as the kernel does).
    match fs.getxattr(&ctx, inode, &note, u32::MAX).unwrap() {
        GetxattrReply::Value(v) => assert_eq!(v, b"kept"),
        GetxattrReply::Count(n) => panic!("count {n} for a sized read"),
    }
    fs.removexattr(&ctx, inode, &note).unwrap();
    assert_eq!(host_xattr(&file, "user.note"), None);
    fs.setxattr(&ctx, inode, &access_acl, &acl, 0).unwrap();
    assert_eq!(host_mode(dir.path(), "hello.txt") & 0o777, 0o666);
}

/// A loop device attached to a temp file, detached on drop.
struct LoopDevice {
    path: String,
    rdev: u64,
}

impl LoopDevice {
    fn attach(backing: &Path) -> Option<LoopDevice> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipping the block-device part: losetup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
        let rdev = std::fs::metadata(&path).ok()?.rdev();
        Some(LoopDevice { path, rdev })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.path])
            .status();
    }
}

/// An image can ship device nodes, FIFOs and sockets in the directory the share exposes: the
/// host side never opens one (a FIFO open would also block the device), never re-targets a
/// CREATE through a symlink, never makes unnamed files, and never loosens a device node's
/// permissions or owner.
#[test]
fn special_files_in_the_share_are_never_opened_or_loosened() {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let dir = share();
    let d = dir.path();
    let backing_dir = tempfile::tempdir().unwrap();
    let backing = backing_dir.path().join("disk.img");
    let pattern = vec![0xabu8; 64 * 1024];
    std::fs::write(&backing, &pattern).unwrap();
    let disk = LoopDevice::attach(&backing);

    nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o666)).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let private = Mode::from_bits_truncate(0o600);
    mknod(
        &d.join("devnull"),
        SFlag::S_IFCHR,
        private,
        libc::makedev(1, 3),
    )
    .unwrap();
    let mut specials = vec!["fifo", "sock", "devnull"];
    if let Some(disk) = &disk {
        mknod(&d.join("disk"), SFlag::S_IFBLK, private, disk.rdev).unwrap();
        specials.push("disk");
    }

    let mut h = Harness::new(d, false);
    for name in &specials {
        let e: EntryOut = h.lookup(ROOT, name.as_bytes()).ok();
        for flags in [
            libc::O_RDONLY,
            libc::O_RDONLY | libc::O_NONBLOCK,
            libc::O_WRONLY | libc::O_NONBLOCK,
            libc::O_RDWR,
        ] {
            assert_ne!(h.open(e.nodeid, flags).header.error, 0, "{name} {flags:#x}");
        }
        // CREATE of an existing name without O_EXCL opens what is there.
        let r = h.create(ROOT, name, libc::O_RDWR | libc::O_CREAT | libc::O_NONBLOCK);
        assert_ne!(r.header.error, 0, "{name}");
    }
    for name in ["devnull", "disk"].iter().filter(|n| specials.contains(n)) {
        let e: EntryOut = h.lookup(ROOT, name.as_bytes()).ok();
        assert_eq!(
            h.setattr(e.nodeid, mode_setattr(0o666)).errno(),
            libc::EPERM,
            "{name}"
        );
        let chown = SetattrIn {
            valid: SetattrValid::UID.bits(),
            uid: 65534,
            ..Default::default()
        };
        assert_eq!(h.setattr(e.nodeid, chown).errno(), libc::EPERM, "{name}");
        let meta = std::fs::symlink_metadata(d.join(name)).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o600, 0), "{name}");
    }
    assert_eq!(std::fs::read(&backing).unwrap(), pattern);

    // O_PATH makes the kernel drop O_CREAT|O_EXCL and follow the symlink: the host would hold
    // an fd on its own /etc/passwd and answer GETATTR on that handle.
    let host_passwd = std::fs::metadata("/etc/passwd").unwrap().ino();
    for name in ["passwd-link", "fifo", "devnull"] {
        let flags = libc::O_PATH | libc::O_CREAT;
        let r = h.create_mode(ROOT, name, flags, libc::S_IFREG | 0o644, 0);
        if r.header.error == 0 {
            let entry = EntryOut::from_slice(&r.body[..std::mem::size_of::<EntryOut>()])
                .copied()
                .unwrap();
            let open = OpenOut::from_slice(&r.body[std::mem::size_of::<EntryOut>()..][..16])
                .copied()
                .unwrap();
            let getattr = GetattrIn {
                flags: 1, // FUSE_GETATTR_FH
                fh: open.fh,
                ..Default::default()
            };
            let attr = h.call(Opcode::Getattr, entry.nodeid, getattr.as_slice());
            if attr.header.error == 0 {
                assert_ne!(attr.ok::<AttrOut>().attr.ino, host_passwd, "{name}");
            }
        }
        assert_eq!(r.errno(), libc::EINVAL, "{name}: CREATE with O_PATH");
    }
    // O_TMPFILE on a directory would make an unnamed host file the guest writes through.
    let tmpfile = libc::O_TMPFILE | libc::O_RDWR;
    assert_eq!(h.open(ROOT, tmpfile).errno(), libc::EINVAL);
    let opendir = OpenIn {
        flags: tmpfile.cast_unsigned(),
        fuse_flags: 0,
    };
    let r = h.call(Opcode::Opendir, ROOT, opendir.as_slice());
    assert_eq!(r.errno(), libc::EINVAL);
}
