//! virtio-console driven through real split queues under a real event loop.

use std::io::ErrorKind;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::test_utils::{self, add_chain, clones, queue_events, CountingInterrupt};
use crate::virtio::{ActivateContext, GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1};

/// Shared output sink the test can inspect.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const MEM_SIZE: usize = 0x40_0000;

struct Harness<'a> {
    rx: MockSplitQueue<'a, GuestMemory>,
    tx: MockSplitQueue<'a, GuestMemory>,
    next_desc: [u16; 2],
    mgr: EventManager<Arc<Mutex<Console>>>,
    dev: Arc<Mutex<Console>>,
    kicks: Vec<EventFd>,
    irq: Arc<CountingInterrupt>,
    out: Sink,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemory, input: Option<OwnedFd>) -> Self {
        let out = Sink::default();
        let dev = Arc::new(Mutex::new(
            Console::new(Box::new(out.clone()), input).unwrap(),
        ));
        let mut mgr = EventManager::<Arc<Mutex<Console>>>::new().unwrap();
        mgr.add_subscriber(dev.clone());
        // The mock places its used ring by counting avail entries as bytes, so it overlaps
        // the avail ring's upper half: size the queues so tests stay below that.
        let rx = MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x2000), QUEUE_SIZE);
        let kicks = queue_events(2);
        let irq = Arc::new(CountingInterrupt::default());
        dev.lock()
            .unwrap()
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()],
                queue_events: clones(&kicks),
                interrupt: irq.clone(),
            })
            .unwrap();
        let mut h = Harness {
            rx,
            tx,
            next_desc: [0; 2],
            mgr,
            dev,
            kicks,
            irq,
            out,
        };
        h.run();
        h
    }

    fn run(&mut self) {
        test_utils::run_until_idle(&mut self.mgr, 30);
    }

    /// Adds a chain of (addr, len, writable) to queue `q` and kicks it.
    fn add(&mut self, q: usize, descs: &[(u64, u32, bool)]) {
        let first = self.next_desc[q];
        let vq = if q == RX_QUEUE { &self.rx } else { &self.tx };
        add_chain(vq, first, descs);
        self.next_desc[q] += crate::virtio::test_utils::idx16(descs.len());
        self.kicks[q].write(1).unwrap();
        self.run();
    }

    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        test_utils::used(if q == RX_QUEUE { &self.rx } else { &self.tx })
    }
}

fn memory() -> GuestMemory {
    test_utils::memory(MEM_SIZE)
}

fn pipe() -> (OwnedFd, std::fs::File) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (r, std::fs::File::from(w))
}

#[test]
fn guest_output_reaches_the_sink() {
    let mem = memory();
    let mut h = Harness::new(&mem, None);
    mem.write_slice(b"hello ", GuestAddress(0x10000)).unwrap();
    mem.write_slice(b"world\n", GuestAddress(0x20000)).unwrap();
    h.add(TX_QUEUE, &[(0x10000, 6, false), (0x20000, 6, false)]);
    assert_eq!(&*h.out.0.lock().unwrap(), b"hello world\n");
    assert_eq!(h.used(TX_QUEUE), vec![(0, 0)]);
    assert_eq!(h.irq.count(), 1);
}

#[test]
fn hostile_tx_chains_are_dropped() {
    let mem = memory();
    let mut h = Harness::new(&mem, None);
    mem.write_slice(b"secret", GuestAddress(0x10000)).unwrap();
    // Writable descriptor in the transmit queue, buffer outside memory, past its end.
    h.add(TX_QUEUE, &[(0x10000, 6, true)]);
    h.add(TX_QUEUE, &[(1 << 40, 6, false)]);
    h.add(TX_QUEUE, &[(MEM_SIZE as u64 - 2, 6, false)]);
    h.add(TX_QUEUE, &[(0x10000, 6, false), (0x10000, 6, true)]);
    assert!(h.out.0.lock().unwrap().is_empty());
    assert_eq!(h.used(TX_QUEUE).len(), 4);
    h.add(TX_QUEUE, &[(0x10000, 6, false)]);
    assert_eq!(&*h.out.0.lock().unwrap(), b"secret");
}

#[test]
fn input_waits_for_guest_buffers_and_is_not_read_unboundedly() {
    let mem = memory();
    let (r, mut w) = pipe();
    let mut h = Harness::new(&mem, Some(r));
    // No rx buffers: the device must leave the pipe alone, so it fills up and blocks.
    nix::fcntl::fcntl(
        w.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut written = 0usize;
    loop {
        match w.write(&[b'k'; 4096]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        h.run();
        assert!(
            written < 16 << 20,
            "device drained the pipe without rx buffers"
        );
    }
    assert!(h.used(RX_QUEUE).is_empty());
    // Buffers arrive: input flows, one read per buffer, never beyond the buffer.
    let mut got = 0usize;
    for i in 0..(written / 4096 + 4) {
        let addr = 0x100000 + (i as u64 % 64) * 0x1000;
        h.add(RX_QUEUE, &[(addr, 4096, true)]);
        if i + 1 >= 16 {
            break;
        }
    }
    for (_, len) in h.used(RX_QUEUE) {
        assert!(len <= 4096);
        got += len as usize;
    }
    assert!(got > 0);
    let mut first = [0u8; 4];
    mem.read_slice(&mut first, GuestAddress(0x100000)).unwrap();
    assert_eq!(&first, b"kkkk");
}

#[test]
fn input_eof_stops_polling_and_bad_rx_buffers_are_skipped() {
    let mem = memory();
    let (r, mut w) = pipe();
    let mut h = Harness::new(&mem, Some(r));
    w.write_all(b"ls\n").unwrap();
    h.run();
    // A readable (wrong-direction) buffer and one outside memory come back empty; the
    // next good one gets the input.
    h.add(RX_QUEUE, &[(0x100000, 64, false)]);
    h.add(RX_QUEUE, &[(1 << 40, 64, true)]);
    h.add(RX_QUEUE, &[(0x100000, 64, true)]);
    assert_eq!(h.used(RX_QUEUE), vec![(0, 0), (1, 0), (2, 3)]);
    let mut got = [0u8; 3];
    mem.read_slice(&mut got, GuestAddress(0x100000)).unwrap();
    assert_eq!(&got, b"ls\n");
    // Writer gone: EOF. The buffer is not consumed and the fd is no longer polled.
    drop(w);
    h.add(RX_QUEUE, &[(0x101000, 64, true)]);
    h.run();
    assert_eq!(h.used(RX_QUEUE).len(), 3);
    assert!(h.dev.lock().unwrap().input.is_none());
    assert_eq!(h.mgr.run_with_timeout(50).unwrap(), 0);
}

#[test]
fn emergency_write_needs_the_feature() {
    let mem = memory();
    let h = Harness::new(&mem, None);
    let mut dev = h.dev.lock().unwrap();
    dev.write_config(EMERG_WR_OFFSET, &u32::from(b'!').to_le_bytes());
    assert!(h.out.0.lock().unwrap().is_empty());
    dev.set_acked_features(VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_EMERG_WRITE);
    dev.write_config(EMERG_WR_OFFSET, &u32::from(b'!').to_le_bytes());
    dev.write_config(0, &[1, 2, 3, 4]);
    dev.write_config(u64::MAX, &[1]);
    assert_eq!(&*h.out.0.lock().unwrap(), b"!");
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0; 12]);
}
