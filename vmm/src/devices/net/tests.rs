//! virtio-net driven through real split queues under a real event loop, on a real TAP in a
//! private network namespace; the host end of the TAP is an AF_PACKET socket on it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::request::{FrameError, MAX_BUFFER_LEN, VNET_HDR_LEN};
use super::*;
use crate::rate_limiter::{RateLimit, TokenBucketConfig};
use crate::virtio::test_utils::{self, add_chain, run_until_idle, CountingInterrupt};
use crate::virtio::{ActivateContext, GuestMemory, VirtioDevice};

const MEM_SIZE: usize = 16 << 20;
const TAP_NAME: &str = "vnet-test0";
const TX_RING: u64 = 0x10000;
/// Guest buffers from here; each test buffer gets its own 128 KiB.
const BUFS: u64 = 0x10_0000;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
/// VIRTIO_NET_F_MRG_RXBUF.
const MRG_RXBUF: u32 = 15;

fn buf(i: u64) -> u64 {
    BUFS + i * 0x2_0000
}
fn r(addr: u64, len: u32) -> (u64, u32, bool) {
    (addr, len, false)
}
fn w(addr: u64, len: u32) -> (u64, u32, bool) {
    (addr, len, true)
}

/// Runs `f` on a thread of its own network namespace (so nothing shows on the host), or
/// returns false when this host cannot (not root).
fn in_netns(f: impl FnOnce() + Send + 'static) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: a TAP in a private network namespace needs root");
        return false;
    }
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f();
    })
    .join()
    .unwrap();
    true
}

/// A TAP with a vnet header in the calling thread's namespace, up, with IPv6 off so the
/// kernel sends nothing on it by itself; and an AF_PACKET socket on its host side.
fn tap_and_host_end() -> (Tap, HostEnd) {
    let fd = ark_os::tap::open_tap(TAP_NAME, true).unwrap();
    // The child process inherits this thread's network namespace.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo 1 > /proc/sys/net/ipv6/conf/{TAP_NAME}/disable_ipv6; \
             ip link set {TAP_NAME} arp off multicast off up"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (Tap::new(fd).unwrap(), HostEnd::new(TAP_NAME))
}

struct HostEnd {
    sock: OwnedFd,
}

impl HostEnd {
    fn new(ifname: &str) -> HostEnd {
        let proto = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let index = nix::net::if_::if_nametoindex(ifname).unwrap();
        // SAFETY: sockaddr_ll is plain data.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
        sa.sll_protocol = proto;
        sa.sll_ifindex = i32::try_from(index).unwrap();
        // SAFETY: binds to a properly sized sockaddr_ll that outlives the call.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                std::ptr::from_ref(&sa).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        HostEnd { sock }
    }

    /// Sends `frame` out of the interface, that is into the TAP's descriptor.
    fn send(&self, frame: &[u8]) {
        // SAFETY: sends from a valid slice.
        let n = unsafe { libc::send(self.sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            isize::try_from(frame.len()).unwrap(),
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame the interface received (what the device wrote to the TAP), if one comes
    /// within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            // SAFETY: receives into a valid, large enough buffer.
            let n =
                unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if let Ok(n) = usize::try_from(n) {
                buf.truncate(n);
                return Some(buf);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// An Ethernet frame of `len` bytes (broadcast, a local experimental ethertype) whose payload
/// is `seed` counting up.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5]);
    let mut b = seed;
    while f.len() < len {
        f.push(b);
        b = b.wrapping_add(1);
    }
    f
}

struct Harness<'a> {
    mem: &'a GuestMemory,
    rxq: MockSplitQueue<'a, GuestMemory>,
    txq: MockSplitQueue<'a, GuestMemory>,
    dev: Arc<Mutex<Net>>,
    mgr: EventManager<Arc<Mutex<Net>>>,
    kicks: Vec<EventFd>,
    irq: Arc<CountingInterrupt>,
    host: HostEnd,
}

impl<'a> Harness<'a> {
    /// A device whose driver does not take mergeable rx buffers.
    fn new(mem: &'a GuestMemory) -> Self {
        Self::with_limits(mem, None, None)
    }

    /// A device whose driver takes every feature, mergeable rx buffers included.
    fn mergeable(mem: &'a GuestMemory) -> Self {
        Self::build(mem, None, None, true)
    }

    fn with_limits(
        mem: &'a GuestMemory,
        rx_rate: Option<&RateLimit>,
        tx_rate: Option<&RateLimit>,
    ) -> Self {
        Self::build(mem, rx_rate, tx_rate, false)
    }

    fn build(
        mem: &'a GuestMemory,
        rx_rate: Option<&RateLimit>,
        tx_rate: Option<&RateLimit>,
        mergeable: bool,
    ) -> Self {
        let (tap, host) = tap_and_host_end();
        let mut net = Net::new(
            tap,
            ark_pod_spec::net::Mac(MAC),
            Some(1500),
            rx_rate,
            tx_rate,
        )
        .unwrap();
        if mergeable {
            // Implemented, not offered by default (see `Net::new`).
            net.state.avail_features |= 1 << MRG_RXBUF;
        }
        let features = net.avail_features();
        net.set_acked_features(features);
        let rxq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let txq = MockSplitQueue::create(mem, GuestAddress(TX_RING), QUEUE_SIZE);
        let kicks = test_utils::queue_events(2);
        let irq = Arc::new(CountingInterrupt::default());
        net.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![
                rxq.create_queue::<Queue>().unwrap(),
                txq.create_queue::<Queue>().unwrap(),
            ],
            queue_events: test_utils::clones(&kicks),
            interrupt: irq.clone(),
        })
        .unwrap();
        let dev = Arc::new(Mutex::new(net));
        let mut mgr = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
        mgr.add_subscriber(dev.clone());
        let mut h = Harness {
            mem,
            rxq,
            txq,
            dev,
            mgr,
            kicks,
            irq,
            host,
        };
        h.run();
        h
    }

    fn run(&mut self) {
        run_until_idle(&mut self.mgr, 50);
    }

    fn kick(&mut self, queue: usize) {
        self.kicks[queue].write(1).unwrap();
        self.run();
    }

    fn stats(&self) -> NetStats {
        self.dev.lock().unwrap().stats()
    }

    /// Queues `hdr + frame` for tx at table slot `slot`, in one readable descriptor.
    fn tx(&mut self, slot: u16, frame: &[u8]) {
        let addr = buf(u64::from(slot));
        self.mem
            .write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(frame, GuestAddress(addr + VNET_HDR_LEN as u64))
            .unwrap();
        let len = test_utils::len32(VNET_HDR_LEN + frame.len());
        add_chain(&self.txq, slot, &[r(addr, len)]);
    }

    /// Posts one writable rx buffer of `len` bytes at slot `slot`.
    fn rx_buffer(&self, slot: u16, len: u32) {
        add_chain(&self.rxq, slot, &[w(buf(u64::from(slot)), len)]);
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[test]
fn features_and_config_space() {
    in_netns(|| {
        let (tap, _host) = tap_and_host_end();
        let net = Net::new(tap, ark_pod_spec::net::Mac(MAC), Some(1400), None, None).unwrap();
        assert_eq!(net.device_type(), crate::virtio::device_type::NET);
        assert_eq!(net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
        let f = net.avail_features();
        for bit in [5, 16, 3, 0, 1, 7, 8, 11, 12] {
            assert_ne!(f & (1 << bit), 0, "feature {bit}");
        }
        // No UFO, control queue or multiqueue: not implemented; mergeable rx buffers: not
        // offered yet (see `Net::new`).
        for bit in [10, 14, 17, 22, 15] {
            assert_eq!(f & (1 << bit), 0, "feature {bit}");
        }
        let mut c = [0u8; CONFIG_LEN];
        net.read_config(0, &mut c);
        assert_eq!(&c[..6], &MAC);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "link up");
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1400);
        // Without an MTU the feature is not offered.
        let (tap2, _h) = (ark_os::tap::open_tap("vnet-test1", true).unwrap(), ());
        let net2 = Net::new(
            Tap::new(tap2).unwrap(),
            ark_pod_spec::net::Mac(MAC),
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(net2.avail_features() & (1 << 3), 0);
    });
}

#[test]
fn offloads_follow_what_the_guest_accepted() {
    in_netns(|| {
        let (tap, _host) = tap_and_host_end();
        let mut net = Net::new(tap, ark_pod_spec::net::Mac(MAC), None, None, None).unwrap();
        net.set_acked_features(net.avail_features());
        assert_eq!(
            net.offloads(),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
        // TSO without the checksum offload it depends on: a hostile driver's combination;
        // the TAP gets neither (TUNSETOFFLOAD would refuse it anyway).
        net.set_acked_features(crate::virtio::VIRTIO_F_VERSION_1 | 1 << 7 | 1 << 8);
        assert_eq!(net.offloads(), 0);
        net.set_acked_features(crate::virtio::VIRTIO_F_VERSION_1 | 1 << 1);
        assert_eq!(net.offloads(), libc::TUN_F_CSUM);
        // Every combination the device computes is one the TAP accepts.
        net.set_acked_features(net.avail_features());
        net.tap.set_offloads(net.offloads()).unwrap();
    });
}

#[test]
fn only_a_vnet_header_tap_is_accepted() {
    in_netns(|| {
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(matches!(Tap::new(null), Err(Error::TapIoctl { .. })));
        let plain = ark_os::tap::open_tap("vnet-plain0", false).unwrap();
        assert!(matches!(Tap::new(plain), Err(Error::NotVnetTap(_))));
        let err = Tap::open(&crate::config::TapSource::Fd(9999)).unwrap_err();
        assert!(matches!(err, Error::DupFd { fd: 9999, .. }), "{err}");
    });
}

#[test]
fn a_tx_frame_comes_out_of_the_tap_and_an_rx_frame_lands_with_its_header() {
    in_netns(|| {
        let mem = test_utils::memory(MEM_SIZE);
        let mut h = Harness::new(&mem);
        // tx: header + frame split over two descriptors, as Linux queues them.
        let f = frame(1000, 7);
        let (a, b) = (buf(0), buf(1));
        mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(a))
            .unwrap();
        mem.write_slice(&f, GuestAddress(b)).unwrap();
        add_chain(
            &h.txq,
            0,
            &[
                r(a, test_utils::len32(VNET_HDR_LEN)),
                r(b, test_utils::len32(f.len())),
            ],
        );
        h.kick(TX_QUEUE);
        assert_eq!(h.host.recv(Duration::from_secs(2)).as_deref(), Some(&f[..]));
        assert_eq!(test_utils::used(&h.txq), vec![(0, 0)]);
        assert_eq!(h.irq.count(), 1);

        // rx: a frame sent into the TAP, before the guest posted buffers: it waits.
        let g = frame(600, 40);
        h.host.send(&g);
        h.run();
        assert!(test_utils::used(&h.rxq).is_empty());
        // A buffer split into a header-sized and a larger descriptor.
        let (c, d) = (buf(2), buf(3));
        add_chain(&h.rxq, 0, &[w(c, 12), w(d, 4096)]);
        h.kick(RX_QUEUE);
        let total = test_utils::len32(VNET_HDR_LEN + g.len());
        assert_eq!(test_utils::used(&h.rxq), vec![(0, total)]);
        let hdr = h.read(c, VNET_HDR_LEN);
        // flags 0 (a frame the host stack built whole), no GSO, num_buffers 1.
        assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(h.read(d, g.len()), g);
        assert_eq!(
            h.stats(),
            NetStats {
                rx_frames: 1,
                rx_bytes: 600,
                tx_frames: 1,
                tx_bytes: 1000,
                ..NetStats::default()
            }
        );
    });
}

#[test]
fn malformed_tx_chains_are_returned_and_the_device_keeps_working() {
    in_netns(|| {
        let mem = test_utils::memory(MEM_SIZE);
        let mut h = Harness::new(&mem);
        let end = MEM_SIZE as u64;
        let bad: [&[(u64, u32, bool)]; 7] = [
            // Shorter than the virtio-net header.
            &[r(buf(0), 5)],
            // Zero length.
            &[r(buf(0), 0)],
            // Past the end of guest memory, and wrapping the address space.
            &[r(end - 100, 200)],
            &[r(u64::MAX - 10, 64)],
            // A device-writable descriptor in a tx chain.
            &[r(buf(0), 12), w(buf(1), 100)],
            // More than a 64 KiB frame and its header: one descriptor, and several.
            &[r(buf(0), test_utils::len32(MAX_BUFFER_LEN + 1))],
            &[
                r(buf(0), 0x8000),
                r(buf(1), 0x8000),
                r(buf(2), test_utils::len32(MAX_BUFFER_LEN - 0x10000 + 1)),
            ],
        ];
        let mut slot = 0;
        for chain in bad {
            add_chain(&h.txq, slot, chain);
            slot += test_utils::idx16(chain.len());
        }
        // Then a good frame: it still goes out.
        let f = frame(200, 1);
        h.tx(slot, &f);
        h.kick(TX_QUEUE);
        assert_eq!(h.host.recv(Duration::from_secs(2)).as_deref(), Some(&f[..]));
        assert_eq!(
            h.host.recv(Duration::from_millis(100)),
            None,
            "nothing else"
        );
        let used = test_utils::used(&h.txq);
        assert_eq!(used.len(), 8, "every chain returned: {used:?}");
        assert!(used.iter().all(|&(_, len)| len == 0));
        let s = h.stats();
        assert_eq!((s.bad_chains, s.tx_frames), (7, 1), "{s:?}");
    });
}

#[test]
fn malformed_rx_chains_are_returned_and_the_frame_waits_for_a_good_one() {
    in_netns(|| {
        let mem = test_utils::memory(MEM_SIZE);
        let mut h = Harness::new(&mem);
        let end = MEM_SIZE as u64;
        // A read-only descriptor, and memory past the end: bad chains, the frame is kept.
        add_chain(&h.rxq, 0, &[r(buf(0), 4096)]);
        add_chain(&h.rxq, 1, &[w(buf(1), 12), r(buf(2), 4096)]);
        add_chain(&h.rxq, 3, &[w(end - 100, 4096)]);
        add_chain(&h.rxq, 4, &[w(u64::MAX - 4000, 4096)]);
        add_chain(&h.rxq, 5, &[w(buf(5), 4096)]);
        let f = frame(500, 3);
        h.host.send(&f);
        h.run();
        let used = test_utils::used(&h.rxq);
        let total = test_utils::len32(VNET_HDR_LEN + f.len());
        assert_eq!(used, vec![(0, 0), (1, 0), (3, 0), (4, 0), (5, total)]);
        assert_eq!(h.read(buf(5) + VNET_HDR_LEN as u64, f.len()), f);
        // Nothing was written where the bad chains pointed.
        assert!(h.read(buf(1), 12).iter().all(|&b| b == 0));
        assert!(h.read(end - 100, 100).iter().all(|&b| b == 0));
        let s = h.stats();
        assert_eq!(
            (s.bad_chains, s.rx_frames, s.rx_dropped),
            (4, 1, 0),
            "{s:?}"
        );
    });
}

#[test]
fn an_rx_frame_larger_than_the_guest_buffer_is_dropped_not_truncated() {
    in_netns(|| {
        let mem = test_utils::memory(MEM_SIZE);
        let mut h = Harness::new(&mem);
        // Shorter than the header, then shorter than the frame, then room.
        h.rx_buffer(0, 4);
        h.rx_buffer(1, 100);
        h.rx_buffer(2, 2048);
        for seed in [1, 2, 3] {
            h.host.send(&frame(1000, seed));
        }
        h.run();
        let total = test_utils::len32(VNET_HDR_LEN + 1000);
        assert_eq!(test_utils::used(&h.rxq), vec![(0, 0), (1, 0), (2, total)]);
        // The third frame reached the good buffer; the small buffers were left untouched.
        assert_eq!(h.read(buf(2) + VNET_HDR_LEN as u64, 1000), frame(1000, 3));
        assert!(h.read(buf(0), 4).iter().all(|&b| b == 0));
        assert!(h.read(buf(1), 100).iter().all(|&b| b == 0));
        let s = h.stats();
        assert_eq!((s.rx_dropped, s.rx_frames), (2, 1), "{s:?}");
    });
}

#[test]
fn a_guest_that_never_refills_rx_stalls_the_device_without_spinning_or_buffering() {
    in_netns(|| {
        let mem = test_utils::memory(MEM_SIZE);
        let mut h = Harness::new(&mem);
        h.rx_buffer(0, 2048);
        for seed in 0..50 {
            h.host.send(&frame(300, seed));
        }
        h.run();
        assert_eq!(test_utils::used(&h.rxq).len(), 1);
        {
            let dev = h.dev.lock().unwrap();
            // One frame held, the other 48 wait in the kernel's TAP queue, and the device is
            // not listening on the TAP.
            assert!(dev.rx.pending.is_some() && dev.rx.waiting_for_buffers);
            assert!(dev.tap_interest.is_empty());
            assert_eq!(dev.rx.frame.len(), MAX_BUFFER_LEN, "no growing buffer");
        }
        // No busy loop: a readable TAP does not wake the loop.
        let start = Instant::now();
        let mut events = 0;
        while start.elapsed() < Duration::from_millis(200) {
            events += h.mgr.run_with_timeout(50).unwrap();
        }
        assert_eq!(events, 0);
        // The guest refills: every frame arrives, in order.
        for slot in 1..60 {
            h.rx_buffer(slot, 2048);
        }
        h.kick(RX_QUEUE);
        let used = test_utils::used(&h.rxq);
        assert_eq!(used.len(), 50);
        for (i, seed) in (0..50u8).enumerate() {
            let slot = u64::try_from(i).unwrap();
            assert_eq!(
                h.read(buf(slot) + VNET_HDR_LEN as u64, 300),
                frame(300, seed)
            );
        }
        // Buffers left over: the device listens on the TAP again.
        assert!(!h.dev.lock().unwrap().tap_interest.is_empty());
    });
}

#[test]
fn tx_rate_limit_holds_frames_until_its_timer() {
    in_netns(|| {
        let mem = test_utils::memory(MEM_SIZE);
        // One frame, then ten per second.
        let limit = RateLimit {
            bytes: None,
            ops: Some(TokenBucketConfig {
                rate: 10,
                burst: Some(1),
            }),
        };
        let mut h = Harness::with_limits(&mem, None, Some(&limit));
        for slot in 0..3u16 {
            h.tx(slot, &frame(100, u8::try_from(slot).unwrap()));
        }
        let start = Instant::now();
        h.kick(TX_QUEUE);
        assert_eq!(h.stats().tx_frames, 1);
        assert_eq!(test_utils::used(&h.txq).len(), 1, "the others stay queued");
        // The timer, not a poll, brings the rest: about 100 ms apart.
        while h.stats().tx_frames < 3 && start.elapsed() < Duration::from_secs(2) {
            h.mgr.run_with_timeout(500).unwrap();
        }
        assert_eq!(h.stats().tx_frames, 3);
        assert!(
            start.elapsed() >= Duration::from_millis(180),
            "{:?}",
            start.elapsed()
        );
        for seed in 0..3 {
            assert_eq!(h.host.recv(Duration::from_secs(1)), Some(frame(100, seed)));
        }
    });
}

#[test]
fn rx_rate_limit_holds_the_frame_until_its_timer() {
    in_netns(|| {
        let mem = test_utils::memory(MEM_SIZE);
        // 1100 bytes at once, then 5 kB/s: each further frame waits about 200 ms (longer than
        // the harness's idle turn).
        let limit = RateLimit {
            bytes: Some(TokenBucketConfig {
                rate: 5000,
                burst: Some(1100),
            }),
            ops: None,
        };
        let mut h = Harness::with_limits(&mem, Some(&limit), None);
        for slot in 0..4 {
            h.rx_buffer(slot, 2048);
        }
        for seed in 0..3 {
            h.host.send(&frame(1000, seed));
        }
        let start = Instant::now();
        h.run();
        assert_eq!(test_utils::used(&h.rxq).len(), 1);
        {
            // The held frame is not read again and again: the TAP is out of the loop.
            let dev = h.dev.lock().unwrap();
            assert!(dev.rx.pending.is_some() && dev.tap_interest.is_empty());
        }
        while test_utils::used(&h.rxq).len() < 3 && start.elapsed() < Duration::from_secs(3) {
            h.mgr.run_with_timeout(500).unwrap();
        }
        assert_eq!(test_utils::used(&h.rxq).len(), 3);
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "{:?}",
            start.elapsed()
        );
    });
}

#[test]
fn request_parsers_refuse_before_touching_memory() {
    // The parsers alone, for what the TAP cannot produce: an rx chain of zero capacity.
    let mem = test_utils::memory(0x10_0000);
    let vq = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = vq.create_queue().unwrap();
    add_chain(&vq, 0, &[w(0x8000, 0)]);
    let chain = virtio_queue::QueueT::pop_descriptor_chain(&mut q, &mem).unwrap();
    assert_eq!(
        request::write_rx_frame(&mem, chain, &[1; 20]),
        Err(FrameError::RxTooSmall { have: 0, need: 20 })
    );
    let mut hdr = [0xffu8; VNET_HDR_LEN];
    request::set_num_buffers(&mut hdr, 3);
    assert_eq!(&hdr[10..], &[3, 0]);
}

/// `num_buffers` of the header at `addr`.
fn num_buffers(h: &Harness, addr: u64) -> u16 {
    let b = h.read(addr + 10, 2);
    u16::from_le_bytes([b[0], b[1]])
}

#[test]
fn a_mergeable_rx_frame_spans_chains_and_uses_only_those_it_needs() {
    in_netns(|| {
        let mem = test_utils::memory(MEM_SIZE);
        let mut h = Harness::mergeable(&mem);
        for slot in 0..4 {
            h.rx_buffer(slot, 512);
        }
        let f = frame(1200, 9);
        h.host.send(&f);
        h.run();
        // 12 + 1200 bytes: two full buffers and 188 bytes of the third; the fourth stays.
        assert_eq!(test_utils::used(&h.rxq), vec![(0, 512), (1, 512), (2, 188)]);
        assert_eq!(num_buffers(&h, buf(0)), 3);
        let mut got = h.read(buf(0) + VNET_HDR_LEN as u64, 500);
        got.extend(h.read(buf(1), 512));
        got.extend(h.read(buf(2), 188));
        assert_eq!(got, f);
        // The next frame starts in the fourth buffer, alone.
        let g = frame(300, 1);
        h.host.send(&g);
        h.run();
        let used = test_utils::used(&h.rxq);
        assert_eq!(used[3..], [(3, test_utils::len32(VNET_HDR_LEN + 300))]);
        assert_eq!(num_buffers(&h, buf(3)), 1);
        assert_eq!(h.read(buf(3) + VNET_HDR_LEN as u64, 300), g);
        let s = h.stats();
        assert_eq!(
            (s.rx_frames, s.rx_dropped, s.bad_chains),
            (2, 0, 0),
            "{s:?}"
        );
    });
}

#[test]
fn a_mergeable_frame_waits_for_enough_buffers_without_spinning_or_truncating() {
    in_netns(|| {
        let mem = test_utils::memory(MEM_SIZE);
        let mut h = Harness::mergeable(&mem);
        h.rx_buffer(0, 256);
        h.rx_buffer(1, 256);
        let f = frame(1000, 5);
        h.host.send(&f);
        h.run();
        // 512 bytes posted for 1012: nothing used, nothing written, the frame held.
        assert!(test_utils::used(&h.rxq).is_empty());
        assert!(h.read(buf(0), 256).iter().all(|&b| b == 0));
        {
            let dev = h.dev.lock().unwrap();
            assert!(dev.rx.pending.is_some() && dev.rx.waiting_for_buffers);
            assert!(dev.tap_interest.is_empty(), "not listening on the TAP");
        }
        let start = Instant::now();
        let mut events = 0;
        while start.elapsed() < Duration::from_millis(200) {
            events += h.mgr.run_with_timeout(50).unwrap();
        }
        assert_eq!(events, 0, "no busy loop");
        // One more buffer is still too few; a fourth makes room.
        h.rx_buffer(2, 256);
        h.kick(RX_QUEUE);
        assert!(test_utils::used(&h.rxq).is_empty());
        h.rx_buffer(3, 256);
        h.rx_buffer(4, 256);
        h.kick(RX_QUEUE);
        assert_eq!(
            test_utils::used(&h.rxq),
            vec![(0, 256), (1, 256), (2, 256), (3, 244)]
        );
        assert_eq!(num_buffers(&h, buf(0)), 4);
        let mut got = h.read(buf(0) + VNET_HDR_LEN as u64, 244);
        for slot in 1..4 {
            got.extend(h.read(buf(slot), 256));
        }
        got.truncate(1000);
        assert_eq!(got, f, "the whole frame, in order");
        let s = h.stats();
        assert_eq!((s.rx_frames, s.rx_dropped), (1, 0), "{s:?}");
        // The fifth buffer is left for the next frame: the device listens on the TAP again.
        assert!(!h.dev.lock().unwrap().tap_interest.is_empty());
    });
}

#[test]
fn malformed_mergeable_rx_chains_are_returned_and_the_frame_lands_in_good_ones() {
    in_netns(|| {
        let mem = test_utils::memory(MEM_SIZE);
        let mut h = Harness::mergeable(&mem);
        let end = MEM_SIZE as u64;
        // Zero length; shorter than a header; past memory; wrapping; read-only; then a good
        // chain with a zero-length descriptor inside, and a second good one.
        add_chain(&h.rxq, 0, &[w(buf(0), 0)]);
        add_chain(&h.rxq, 1, &[w(buf(1), 8)]);
        add_chain(&h.rxq, 2, &[w(end - 100, 512)]);
        add_chain(&h.rxq, 3, &[w(u64::MAX - 100, 512)]);
        add_chain(&h.rxq, 4, &[r(buf(4), 512)]);
        add_chain(&h.rxq, 5, &[w(buf(5), 100), w(buf(6), 0), w(buf(7), 100)]);
        add_chain(&h.rxq, 8, &[w(buf(8), 512)]);
        let f = frame(400, 2);
        h.host.send(&f);
        h.run();
        // Returned unused as they came, then the frame's two chains together.
        assert_eq!(
            test_utils::used(&h.rxq),
            vec![(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 200), (8, 212)]
        );
        assert_eq!(num_buffers(&h, buf(5)), 2);
        let mut got = h.read(buf(5) + VNET_HDR_LEN as u64, 88);
        got.extend(h.read(buf(7), 100));
        got.extend(h.read(buf(8), 212));
        assert_eq!(got, f);
        assert!(h.read(buf(1), 8).iter().all(|&b| b == 0));
        assert!(h.read(end - 100, 100).iter().all(|&b| b == 0));
        let s = h.stats();
        assert_eq!((s.bad_chains, s.rx_frames), (5, 1), "{s:?}");
    });
}

#[test]
fn a_mergeable_frame_larger_than_a_full_ring_is_dropped_and_the_buffers_kept() {
    in_netns(|| {
        let mem = test_utils::memory(MEM_SIZE);
        let mut h = Harness::mergeable(&mem);
        let out = std::process::Command::new("ip")
            .args(["link", "set", TAP_NAME, "mtu", "9000"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // Every slot of the ring holds a 12-byte buffer: 3072 bytes in all.
        for slot in 0..QUEUE_SIZE {
            add_chain(&h.rxq, slot, &[w(BUFS + u64::from(slot) * 16, 12)]);
        }
        h.host.send(&frame(4000, 1));
        let g = frame(100, 2);
        h.host.send(&g);
        h.run();
        // The big frame is dropped (counted), the small one takes the first nine buffers.
        let used = test_utils::used(&h.rxq);
        assert_eq!(used.len(), 10, "{used:?}");
        assert_eq!(used[0], (0, 12));
        assert_eq!(used[9], (9, 4));
        assert_eq!(num_buffers(&h, BUFS), 10);
        let s = h.stats();
        assert_eq!((s.rx_dropped, s.rx_frames), (1, 1), "{s:?}");
    });
}
