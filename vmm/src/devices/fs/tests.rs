//! virtio-fs driven through a real split queue: FUSE messages built the way the Linux driver
//! lays them out, served against a temp directory.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, EntryOut, FsOptions, GetattrIn, InHeader, InitIn, InitIn2, InitOut, MkdirIn,
    MknodIn, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, SetattrIn, WriteIn, WriteOut,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::{ActivateContext, GuestMemory, Interrupt, InterruptKind, VirtioDevice};

const MEM_SIZE: usize = 16 << 20;
const Q: u16 = QUEUE_SIZE;
const HIPRIO_BASE: u64 = 0;
const REQUEST_BASE: u64 = 0x1_0000;
const REQ: u64 = 0x10_0000;
const RESP: u64 = 0x40_0000;
const ROOT: u64 = 1;

#[derive(Default)]
struct CountingInterrupt(AtomicUsize);

impl Interrupt for CountingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        assert_eq!(kind, InterruptKind::Queue);
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

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
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
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
            queue_events: vec![
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ],
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
            RawDescriptor::from(SplitDescriptor::new(
                REQ,
                request.len() as u32,
                VRING_DESC_F_NEXT as u16,
                1,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                RESP,
                resp_len,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
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
            len: (40 + body.len()) as u32,
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
            flags: flags as u32,
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
            flags: flags as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0o022,
            fuse_flags: 0,
        };
        let mut body = args.as_slice().to_vec();
        body.extend_from_slice(CString::new(name).unwrap().as_bytes_with_nul());
        self.call(Opcode::Create, parent, &body)
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Reply {
        let args = MkdirIn {
            mode: 0o755,
            umask: 0o022,
        };
        let mut body = args.as_slice().to_vec();
        body.extend_from_slice(CString::new(name).unwrap().as_bytes_with_nul());
        self.call(Opcode::Mkdir, parent, &body)
    }
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
        flags: wanted.bits() as u32,
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
        size: data.len() as u32,
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
        size: big.len() as u32,
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
        rdev: libc::makedev(1, 3) as u32,
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
        RawDescriptor::from(SplitDescriptor::new(REQ, 40, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(SplitDescriptor::new(
            MEM_SIZE as u64 - 8,
            4096,
            VRING_DESC_F_WRITE as u16,
            0,
        )),
    ];
    assert_eq!(h.submit_raw(&outside), 0);
    let backwards = [
        RawDescriptor::from(SplitDescriptor::new(
            RESP,
            64,
            (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
            1,
        )),
        RawDescriptor::from(SplitDescriptor::new(REQ, 40, 0, 0)),
    ];
    assert_eq!(h.submit_raw(&backwards), 0);
    let looped = [
        RawDescriptor::from(SplitDescriptor::new(REQ, 40, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(SplitDescriptor::new(
            RESP,
            64,
            (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
            0,
        )),
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
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let fs = Arc::new(Mutex::new(Fs::new("rootfs", dir.path(), false).unwrap()));
    let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    manager.add_subscriber(fs.clone());
    let hiprio = MockSplitQueue::create(&mem, GuestAddress(HIPRIO_BASE), Q);
    let request = MockSplitQueue::create(&mem, GuestAddress(REQUEST_BASE), Q);
    let events = [
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ];
    let interrupt = Arc::new(CountingInterrupt::default());
    fs.lock()
        .unwrap()
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![
                hiprio.create_queue().unwrap(),
                request.create_queue().unwrap(),
            ],
            queue_events: vec![
                events[0].try_clone().unwrap(),
                events[1].try_clone().unwrap(),
            ],
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
        RawDescriptor::from(SplitDescriptor::new(REQ, 56, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(SplitDescriptor::new(
            RESP,
            4096,
            VRING_DESC_F_WRITE as u16,
            0,
        )),
    ];
    request.add_desc_chains(&chain, 0).unwrap();
    events[1].write(1).unwrap();
    manager.run_with_timeout(100).unwrap();
    let used: u16 = mem.read_obj(request.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(used, 1);
    let out: OutHeader = mem.read_obj(GuestAddress(RESP)).unwrap();
    assert_eq!((out.error, out.unique), (0, 9));
    assert_eq!(interrupt.0.load(Ordering::SeqCst), 1);

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
