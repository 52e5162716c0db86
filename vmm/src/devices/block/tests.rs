//! virtio-blk driven through a real split queue in guest memory.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::request::{STATUS_IOERR, STATUS_OK, STATUS_UNSUPP};
use crate::virtio::test_utils::{F_NEXT, F_WRITE};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::request::MAX_CHAIN_DESCRIPTORS;
use super::*;
use crate::virtio::test_utils::{self, CountingInterrupt};
use crate::virtio::{ActivateContext, GuestMemory, VirtioDevice};

const MEM_SIZE: usize = 16 << 20;
const Q: u16 = QUEUE_SIZE;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const DISK_SECTORS: u64 = 64;

fn r(addr: u64, len: u32) -> (u64, u32, bool) {
    (addr, len, false)
}
fn w(addr: u64, len: u32) -> (u64, u32, bool) {
    (addr, len, true)
}

struct Harness {
    mem: GuestMemory,
    blk: Block,
    interrupt: Arc<CountingInterrupt>,
    requests: u16,
    avail: GuestAddress,
    used: GuestAddress,
}

/// Writes `descs` at descriptor table index 0 and publishes head 0 in the avail ring (what a
/// driver does; `MockSplitQueue::new` would reset the rings).
pub(crate) fn publish(mem: &GuestMemory, avail: GuestAddress, descs: &[RawDescriptor]) {
    for (i, d) in descs.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(16 * i as u64)).unwrap();
    }
    let idx: u16 = mem.read_obj(avail.unchecked_add(2)).unwrap();
    mem.write_obj(0u16, avail.unchecked_add(4 + 2 * u64::from(idx % Q)))
        .unwrap();
    mem.write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
        .unwrap();
}

impl Harness {
    fn new(path: &Path, read_only: bool) -> Harness {
        let mem = test_utils::memory(MEM_SIZE);
        let mut blk = Block::new(path, read_only).unwrap();
        blk.set_acked_features(blk.avail_features());
        let mock = MockSplitQueue::new(&mem, Q);
        let queue: Queue = mock.create_queue().unwrap();
        let interrupt = Arc::new(CountingInterrupt::default());
        blk.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![queue],
            queue_events: vec![test_utils::queue_events(1).remove(0)],
            interrupt: interrupt.clone(),
        })
        .unwrap();
        let (avail, used) = (mock.avail_addr(), mock.used_addr());
        Harness {
            mem,
            blk,
            interrupt,
            requests: 0,
            avail,
            used,
        }
    }

    /// Puts raw descriptors at table index 0 (chain head 0), runs the device and returns the
    /// used length reported for the request.
    fn submit_raw(&mut self, descs: &[RawDescriptor]) -> u32 {
        publish(&self.mem, self.avail, descs);
        self.blk.process_queue();
        self.requests += 1;
        let used_idx: u16 = self.mem.read_obj(self.used.unchecked_add(2)).unwrap();
        assert_eq!(
            used_idx, self.requests,
            "every request must be used exactly once"
        );
        let elem = self
            .used
            .unchecked_add(4 + 8 * u64::from((used_idx - 1) % Q));
        let id: u32 = self.mem.read_obj(elem).unwrap();
        assert_eq!(id, 0);
        self.mem.read_obj(elem.unchecked_add(4)).unwrap()
    }

    fn submit(&mut self, descs: &[(u64, u32, bool)]) -> u32 {
        let raw = test_utils::chain(0, descs);
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.submit_raw(&raw)
    }

    fn header(&self, request_type: u32, sector: u64) {
        self.mem.write_obj(request_type, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// A standard IN/OUT: header, one data descriptor, status.
    fn io(&mut self, request_type: u32, sector: u64, len: u32) -> u32 {
        self.header(request_type, sector);
        let data = if request_type == VIRTIO_BLK_T_IN {
            w(DATA, len)
        } else {
            r(DATA, len)
        };
        self.submit(&[r(HDR, 16), data, w(STATUS, 1)])
    }
}

fn disk_file(fill: u8) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![fill; usize::try_from(DISK_SECTORS * 512).unwrap()])
        .unwrap();
    f.flush().unwrap();
    f
}

fn file_bytes(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut v)
        .unwrap();
    v
}

#[test]
fn config_space_and_features() {
    let f = disk_file(0);
    let h = Harness::new(f.path(), false);
    let mut cap = [0u8; 8];
    h.blk.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    let mut blk_size = [0u8; 4];
    h.blk.read_config(20, &mut blk_size);
    assert_eq!(u32::from_le_bytes(blk_size), 512);
    // Reads past the end leave zeros, partial reads are clipped.
    let mut out = [0xaau8; 8];
    h.blk.read_config(CONFIG_LEN as u64, &mut out);
    assert_eq!(out, [0; 8]);
    h.blk.read_config(u64::MAX, &mut out);
    assert_eq!(out, [0; 8]);
    let f = h.blk.avail_features();
    assert_ne!(f & crate::virtio::VIRTIO_F_VERSION_1, 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(h.blk.device_type(), crate::virtio::device_type::BLOCK);
    assert_eq!(h.blk.queue_max_sizes(), &[QUEUE_SIZE]);
}

#[test]
fn write_read_flush_get_id_round_trip() {
    let f = disk_file(0);
    let mut h = Harness::new(f.path(), false);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
    h.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();

    // OUT split over two data descriptors.
    h.header(VIRTIO_BLK_T_OUT, 3);
    let used = h.submit(&[r(HDR, 16), r(DATA, 512), r(DATA + 512, 512), w(STATUS, 1)]);
    assert_eq!((used, h.status()), (1, STATUS_OK));
    let host = file_bytes(f.path());
    assert_eq!(&host[3 * 512..5 * 512], &pattern[..]);
    assert!(host[..3 * 512].iter().all(|&b| b == 0));
    assert!(host[5 * 512..].iter().all(|&b| b == 0));

    // IN into a clean buffer.
    h.mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
    assert_eq!(h.io(VIRTIO_BLK_T_IN, 3, 1024), 1025);
    assert_eq!(h.status(), STATUS_OK);
    let mut back = vec![0u8; 1024];
    h.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern);

    // FLUSH: header + status only.
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), STATUS_OK);

    // GET_ID: 20 bytes, stable for the same image.
    h.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]), 21);
    assert_eq!(h.status(), STATUS_OK);
    let mut id = [0u8; 20];
    h.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert!(id.starts_with(b"ark"), "{id:?}");
    assert_eq!(id, h.blk.disk().serial());

    assert!(h.interrupt.count() > 0);
}

#[test]
fn header_split_across_descriptors_is_accepted() {
    let f = disk_file(0x5a);
    let mut h = Harness::new(f.path(), false);
    h.header(VIRTIO_BLK_T_IN, 1);
    let used = h.submit(&[r(HDR, 10), r(HDR + 10, 6), w(DATA, 512), w(STATUS, 1)]);
    assert_eq!((used, h.status()), (513, STATUS_OK));
    let mut back = [0u8; 512];
    h.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert!(back.iter().all(|&b| b == 0x5a));
}

#[test]
fn read_only_refuses_writes_without_touching_the_file() {
    let f = disk_file(0x11);
    let before = file_bytes(f.path());
    let mut h = Harness::new(f.path(), true);
    let feats = h.blk.avail_features();
    assert_ne!(feats & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(feats & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(feats & (1 << VIRTIO_BLK_F_DISCARD), 0);

    h.mem
        .write_slice(&[0xeeu8; 512], GuestAddress(DATA))
        .unwrap();
    assert_eq!(h.io(VIRTIO_BLK_T_OUT, 0, 512), 1);
    assert_eq!(h.status(), STATUS_IOERR);

    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.submit(&[r(HDR, 16), w(STATUS, 1)]);
    assert_eq!(h.status(), STATUS_UNSUPP);

    h.header(VIRTIO_BLK_T_DISCARD, 0);
    h.mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
    h.mem.write_obj(8u32, GuestAddress(DATA + 8)).unwrap();
    h.mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
    h.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]);
    assert_eq!(h.status(), STATUS_UNSUPP);

    // Reads still work.
    assert_eq!(h.io(VIRTIO_BLK_T_IN, 0, 512), 513);
    assert_eq!(h.status(), STATUS_OK);
    assert_eq!(file_bytes(f.path()), before);
}

#[test]
fn discard_and_write_zeroes_free_the_range() {
    let f = disk_file(0xaa);
    let mut h = Harness::new(f.path(), false);
    if !h.blk.disk().supports_discard() {
        eprintln!("SKIP: the temp dir's filesystem does not support FALLOC_FL_PUNCH_HOLE");
        return;
    }
    assert_ne!(h.blk.avail_features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    let seg = |h: &Harness, at: u64, sector: u64, n: u32, flags: u32| {
        h.mem.write_obj(sector, GuestAddress(at)).unwrap();
        h.mem.write_obj(n, GuestAddress(at + 8)).unwrap();
        h.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    };
    // Two segments in one request.
    seg(&h, DATA, 0, 8, 0);
    seg(&h, DATA + 16, 16, 8, 0);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(h.submit(&[r(HDR, 16), r(DATA, 32), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), STATUS_OK);
    let host = file_bytes(f.path());
    assert_eq!(
        host.len() as u64,
        DISK_SECTORS * 512,
        "discard must keep the size"
    );
    assert!(host[..4096].iter().all(|&b| b == 0));
    assert!(host[4096..8192].iter().all(|&b| b == 0xaa));
    assert!(host[8192..12288].iter().all(|&b| b == 0));

    // Discard past the end is refused and changes nothing.
    seg(&h, DATA, DISK_SECTORS - 4, 8, 0);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    h.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]);
    assert_eq!(h.status(), STATUS_IOERR);
    // Unknown flags on discard: unsupported.
    seg(&h, DATA, 0, 8, 0x80);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    h.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]);
    assert_eq!(h.status(), STATUS_UNSUPP);
    assert_eq!(file_bytes(f.path()), host);

    if h.blk.disk().supports_write_zeroes() {
        seg(&h, DATA, 8, 8, 0);
        h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
        h.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]);
        assert_eq!(h.status(), STATUS_OK);
        let host = file_bytes(f.path());
        assert!(host[4096..8192].iter().all(|&b| b == 0));
        assert!(host[12288..].iter().all(|&b| b == 0xaa));
    }
}

#[test]
fn out_of_range_and_overflowing_sectors_are_refused() {
    let f = disk_file(0x33);
    let before = file_bytes(f.path());
    let mut h = Harness::new(f.path(), false);
    for (sector, len) in [
        (DISK_SECTORS, 512),
        (DISK_SECTORS - 1, 1024),
        (u64::MAX / 512 + 1, 512), // sector * 512 overflows
        (u64::MAX, 512),
        ((u64::MAX - 511) / 512, 1024), // offset fits, offset + len overflows
    ] {
        for t in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
            assert_eq!(h.io(t, sector, len), 1, "sector {sector} type {t}");
            assert_eq!(h.status(), STATUS_IOERR, "sector {sector} type {t}");
        }
    }
    // The last sector itself is fine.
    assert_eq!(h.io(VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 512), 513);
    assert_eq!(h.status(), STATUS_OK);
    assert_eq!(file_bytes(f.path()), before);
}

#[test]
fn hostile_chains_never_panic_and_never_touch_the_file() {
    let f = disk_file(0x44);
    let before = file_bytes(f.path());
    let mut h = Harness::new(f.path(), false);
    let end = MEM_SIZE as u64;

    // Data descriptor outside guest memory (and straddling its end): IOERR in the status.
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(h.submit(&[r(HDR, 16), r(end - 100, 512), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), STATUS_IOERR);
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(1 << 40, 512), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), STATUS_IOERR);
    // Huge length.
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.submit(&[r(HDR, 16), w(DATA, 0xffff_fe00), w(STATUS, 1)]),
        1
    );
    assert_eq!(h.status(), STATUS_IOERR);
    // Header outside memory.
    assert_eq!(h.submit(&[r(u64::MAX - 8, 16), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), STATUS_IOERR);

    // Status descriptor missing, read-only, empty or outside memory: dropped (used len 0),
    // the status byte untouched and the data never written.
    h.mem
        .write_slice(&[0xeeu8; 512], GuestAddress(DATA))
        .unwrap();
    h.header(VIRTIO_BLK_T_OUT, 0);
    for chain in [
        vec![r(HDR, 16), r(DATA, 512)],
        vec![r(HDR, 16), r(DATA, 512), r(STATUS, 1)],
        vec![r(HDR, 16), r(DATA, 512), w(STATUS, 0)],
        vec![r(HDR, 16), r(DATA, 512), w(end, 1)],
        vec![r(HDR, 16), r(DATA, 512), w(u64::MAX, 1)],
    ] {
        assert_eq!(h.submit(&chain), 0, "{chain:?}");
        assert_eq!(h.status(), 0xff, "{chain:?}");
    }

    // Short header, unaligned length, wrong direction, readable after writable, unknown type.
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(h.submit(&[r(HDR, 8), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), STATUS_IOERR);
    assert_eq!(h.io(VIRTIO_BLK_T_IN, 0, 100), 1);
    assert_eq!(h.status(), STATUS_IOERR);
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), STATUS_IOERR);
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.submit(&[r(HDR, 16), w(DATA, 512), r(DATA, 512), w(STATUS, 1)]),
        1
    );
    assert_eq!(h.status(), STATUS_IOERR);
    h.header(99, 0);
    assert_eq!(h.submit(&[r(HDR, 16), w(STATUS, 1)]), 1);
    assert_eq!(h.status(), STATUS_UNSUPP);

    // Over-long chain (more than seg_max + 2 descriptors).
    h.header(VIRTIO_BLK_T_OUT, 0);
    let mut chain = vec![r(HDR, 16)];
    chain.extend((0..MAX_CHAIN_DESCRIPTORS as u64).map(|i| r(DATA + i * 512, 512)));
    chain.push(w(STATUS, 1));
    assert_eq!(h.submit(&chain), 0);
    assert_eq!(h.status(), 0xff);

    // A descriptor loop: 0 -> 1 -> 0 ... ends by the chain's ttl, no status byte: dropped.
    let looped = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(DATA, 512, F_NEXT, 0)),
    ];
    assert_eq!(h.submit_raw(&looped), 0);
    // A next index beyond the table.
    let wild = [RawDescriptor::from(SplitDescriptor::new(
        HDR,
        16,
        F_NEXT,
        Q + 7,
    ))];
    assert_eq!(h.submit_raw(&wild), 0);

    assert_eq!(file_bytes(f.path()), before);

    // The device still works afterwards.
    assert_eq!(h.io(VIRTIO_BLK_T_IN, 0, 512), 513);
    assert_eq!(h.status(), STATUS_OK);
}

#[test]
fn image_locking() {
    let f = disk_file(0);
    let rw = Block::new(f.path(), false).unwrap();
    assert!(matches!(
        Block::new(f.path(), false),
        Err(Error::Locked { .. })
    ));
    assert!(matches!(
        Block::new(f.path(), true),
        Err(Error::Locked { .. })
    ));
    drop(rw);
    let ro1 = Block::new(f.path(), true).unwrap();
    let _ro2 = Block::new(f.path(), true).unwrap();
    assert!(matches!(
        Block::new(f.path(), false),
        Err(Error::Locked { .. })
    ));
    drop(ro1);
    assert!(matches!(
        Block::new(Path::new("/nonexistent/ark.img"), true),
        Err(Error::Open { .. })
    ));
    assert!(matches!(
        Block::new(Path::new("/tmp"), true),
        Err(Error::NotAFile(_))
    ));
}

#[test]
fn capacity_rounds_down_to_whole_sectors() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&[1u8; 1000]).unwrap();
    f.as_file_mut().seek(SeekFrom::Start(0)).unwrap();
    let blk = Block::new(f.path(), true).unwrap();
    assert_eq!(blk.disk().capacity_sectors(), 1);
}

#[test]
fn event_loop_activation_and_queue_notify() {
    let f = disk_file(0x77);
    let mem = test_utils::memory(MEM_SIZE);
    let blk = Arc::new(Mutex::new(Block::new(f.path(), false).unwrap()));
    let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    manager.add_subscriber(blk.clone());

    let mock = MockSplitQueue::new(&mem, Q);
    let queue_evt = test_utils::queue_events(1).remove(0);
    let interrupt = Arc::new(CountingInterrupt::default());
    {
        let mut b = blk.lock().unwrap();
        let features = b.avail_features();
        b.set_acked_features(features);
        b.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![mock.create_queue().unwrap()],
            queue_events: vec![queue_evt.try_clone().unwrap()],
            interrupt: interrupt.clone(),
        })
        .unwrap();
    }
    // The activation event registers the queue eventfd.
    manager.run_with_timeout(100).unwrap();

    mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(HDR)).unwrap();
    mem.write_obj(2u64, GuestAddress(HDR + 8)).unwrap();
    let chain = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(DATA, 512, F_WRITE | F_NEXT, 2)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, F_WRITE, 0)),
    ];
    mock.add_desc_chains(&chain, 0).unwrap();
    queue_evt.write(1).unwrap();
    manager.run_with_timeout(100).unwrap();
    let used_idx: u16 = mem.read_obj(mock.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(used_idx, 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(), 0x77);
    assert_eq!(interrupt.count(), 1);

    // Reset: the old queue eventfd leaves the loop on its next turn, not at the next activation.
    assert!(blk.lock().unwrap().reset());
    manager.run_with_timeout(100).unwrap();
    queue_evt.write(1).unwrap();
    assert_eq!(
        manager.run_with_timeout(50).unwrap(),
        0,
        "reset queue eventfd polled"
    );
    // Re-activate with a fresh queue eventfd.
    let queue_evt2 = test_utils::queue_events(1).remove(0);
    let mem2 = test_utils::memory(MEM_SIZE);
    let mock2 = MockSplitQueue::new(&mem2, Q);
    blk.lock()
        .unwrap()
        .activate(ActivateContext {
            mem: mem2.clone(),
            queues: vec![mock2.create_queue().unwrap()],
            queue_events: vec![queue_evt2.try_clone().unwrap()],
            interrupt: interrupt.clone(),
        })
        .unwrap();
    manager.run_with_timeout(100).unwrap();
    mem2.write_obj(VIRTIO_BLK_T_IN, GuestAddress(HDR)).unwrap();
    mock2.add_desc_chains(&chain, 0).unwrap();
    queue_evt2.write(1).unwrap();
    manager.run_with_timeout(100).unwrap();
    let used_idx: u16 = mem2.read_obj(mock2.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(used_idx, 1);
}

#[test]
fn parser_refuses_out_on_read_only_before_any_io() {
    // The file being O_RDONLY would also fail the write; the parser must refuse first.
    let mem = test_utils::memory(MEM_SIZE);
    mem.write_obj(VIRTIO_BLK_T_OUT, GuestAddress(HDR)).unwrap();
    let mock = MockSplitQueue::new(&mem, Q);
    let chain = mock
        .build_desc_chain(&[
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(DATA, 512, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, F_WRITE, 0)),
        ])
        .unwrap();
    let limits = request::Limits {
        capacity_sectors: DISK_SECTORS,
        read_only: true,
        flush: false,
        discard: false,
        write_zeroes: false,
    };
    let err = request::parse(&mem, chain.clone(), &limits).unwrap_err();
    assert_eq!(
        err,
        (Some(GuestAddress(STATUS)), request::ParseError::ReadOnly)
    );
    let rw = request::Limits {
        read_only: false,
        ..limits
    };
    let req = request::parse(&mem, chain, &rw).unwrap();
    assert_eq!(req.request_type, request::RequestType::Out);
    assert_eq!(
        req.data,
        vec![request::Segment {
            addr: GuestAddress(DATA),
            len: 512
        }]
    );
}
