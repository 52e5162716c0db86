//! Device-level tests: a simulated guest driver works the three virtqueues in real guest memory,
//! the device runs under a real event loop, and real Unix sockets in a temp dir stand for the
//! host side.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::virtio::test_utils::{len32, F_NEXT, F_WRITE};
use event_manager::{EventManager, SubscriberOps};
use virtio_queue::desc::split::VirtqUsedElem;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::connection::TX_BUF_SIZE;
use super::packet::{op, Header, HDR_SIZE, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::virtio::test_utils::{self, CountingInterrupt};
use crate::virtio::{ActivateContext, GuestMemory, VirtioDevice};

const CID: u64 = 3;
const QSIZE: u16 = QUEUE_SIZE;
const MEM_SIZE: usize = 64 << 20;
const BUF_BASE: u64 = 0x10_0000;
const BUF_STRIDE: u64 = 0x1_1000;
const GUEST_BUF_ALLOC: u32 = 256 * 1024;

/// The driver's side of one split virtqueue, with ring indices wrapping properly (the mock's
/// own helpers do not wrap, and these tests push more chains than a queue holds).
struct DriverQueue {
    qi: u64,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    /// Lays the rings out at `qi * 0x4000` (the mock's own layout overlaps its used ring with
    /// the upper half of the avail ring, which these tests would reach).
    fn new(qi: u64) -> Self {
        let start = qi * 0x4000;
        DriverQueue {
            qi,
            desc: GuestAddress(start),
            avail: GuestAddress(start + 0x1000),
            used: GuestAddress(start + 0x2000),
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// The device's view, as a transport would hand it over after the driver set it up.
    fn device_queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        let split = |a: GuestAddress| {
            let [l0, l1, l2, l3, h0, h1, h2, h3] = a.0.to_le_bytes();
            (
                Some(u32::from_le_bytes([l0, l1, l2, l3])),
                Some(u32::from_le_bytes([h0, h1, h2, h3])),
            )
        };
        let (lo, hi) = split(self.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    /// A distinct guest buffer for every descriptor slot of every queue.
    fn buf_addr(&self, desc_index: u16) -> u64 {
        BUF_BASE + (self.qi * u64::from(QSIZE) + u64::from(desc_index)) * BUF_STRIDE
    }

    /// Publishes one chain; `descs` are (addr or None for this slot's own buffer, len,
    /// device-writable). Returns the head index.
    fn add_chain(
        &mut self,
        mem: &GuestMemory,
        descs: &[(Option<u64>, u32, bool)],
    ) -> (u16, Vec<u64>) {
        let head = self.next_desc;
        let mut addrs = Vec::new();
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QSIZE;
            let addr = addr.unwrap_or_else(|| self.buf_addr(index));
            addrs.push(addr);
            let mut flags = if write { F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= F_NEXT;
            }
            let d: RawDescriptor = SplitDescriptor::new(addr, len, flags, self.next_desc).into();
            mem.write_obj(d, self.desc.unchecked_add(16 * u64::from(index)))
                .unwrap();
        }
        let slot = u64::from(self.avail_idx % QSIZE);
        mem.write_obj(head, self.avail.unchecked_add(4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, self.avail.unchecked_add(2))
            .unwrap();
        (head, addrs)
    }

    fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u16, u32)> {
        let idx: u16 = mem.read_obj(self.used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % QSIZE);
            let e: VirtqUsedElem = mem.read_obj(self.used.unchecked_add(4 + 8 * slot)).unwrap();
            out.push((u16::try_from(e.id()).unwrap(), e.len()));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

struct Vm<'m> {
    mem: &'m GuestMemory,
    rxq: DriverQueue,
    txq: DriverQueue,
    kicks: Vec<EventFd>,
    irq: Arc<CountingInterrupt>,
    mgr: EventManager<Arc<Mutex<Vsock>>>,
    dev: Arc<Mutex<Vsock>>,
    /// rx head -> (header addr, payload addr)
    rx_bufs: HashMap<u16, (u64, u64)>,
    uds: PathBuf,
    _dir: tempfile::TempDir,
}

fn memory() -> GuestMemory {
    test_utils::memory(MEM_SIZE)
}

fn raw_header(h: Header) -> [u8; HDR_SIZE] {
    let mut out = [0u8; HDR_SIZE];
    out[0..8].copy_from_slice(&h.src_cid.to_le_bytes());
    out[8..16].copy_from_slice(&h.dst_cid.to_le_bytes());
    out[16..20].copy_from_slice(&h.src_port.to_le_bytes());
    out[20..24].copy_from_slice(&h.dst_port.to_le_bytes());
    out[24..28].copy_from_slice(&h.len.to_le_bytes());
    out[28..30].copy_from_slice(&h.type_.to_le_bytes());
    out[30..32].copy_from_slice(&h.op.to_le_bytes());
    out[32..36].copy_from_slice(&h.flags.to_le_bytes());
    out[36..40].copy_from_slice(&h.buf_alloc.to_le_bytes());
    out[40..44].copy_from_slice(&h.fwd_cnt.to_le_bytes());
    out
}

fn parse_header(raw: &[u8; HDR_SIZE]) -> Header {
    let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().unwrap());
    Header {
        src_cid: u64::from_le_bytes(raw[0..8].try_into().unwrap()),
        dst_cid: u64::from_le_bytes(raw[8..16].try_into().unwrap()),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16::from_le_bytes(raw[28..30].try_into().unwrap()),
        op: u16::from_le_bytes(raw[30..32].try_into().unwrap()),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

/// A guest → host header.
fn ghdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF_ALLOC,
        fwd_cnt: 0,
    }
}

impl<'m> Vm<'m> {
    fn new(mem: &'m GuestMemory, max_conns: Option<usize>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mut dev = Vsock::new(CID, &uds).unwrap();
        if let Some(max) = max_conns {
            dev = dev.with_max_connections(max);
        }
        let dev = Arc::new(Mutex::new(dev));
        let mut mgr = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        mgr.add_subscriber(dev.clone());

        let dqs: Vec<DriverQueue> = (0..3).map(DriverQueue::new).collect();
        let kicks = test_utils::queue_events(3);
        let irq = Arc::new(CountingInterrupt::default());
        dev.lock()
            .unwrap()
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: dqs.iter().map(DriverQueue::device_queue).collect(),
                queue_events: test_utils::clones(&kicks),
                interrupt: irq.clone(),
            })
            .unwrap();
        let mut vm = Vm {
            mem,
            rxq: DriverQueue::new(0),
            txq: DriverQueue::new(1),
            kicks,
            irq,
            mgr,
            dev,
            rx_bufs: HashMap::new(),
            uds,
            _dir: dir,
        };
        vm.run();
        vm
    }

    /// Runs the event loop until it has been idle for a moment.
    fn run(&mut self) {
        while self.mgr.run_with_timeout(30).unwrap() > 0 {}
    }

    fn kick(&mut self, q: usize) {
        self.kicks[q].write(1).unwrap();
        self.run();
    }

    /// The guest posts `n` rx buffers the way Linux 6.1 does (44-byte header + 4 KiB payload).
    fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            let (head, addrs) = self.rxq.add_chain(
                self.mem,
                &[(None, len32(HDR_SIZE), true), (None, 4096, true)],
            );
            self.rx_bufs.insert(head, (addrs[0], addrs[1]));
        }
        self.kick(RX_QUEUE);
    }

    /// Packets the device put in the guest's rx buffers since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.rxq
            .take_used(self.mem)
            .into_iter()
            .filter_map(|(head, len)| {
                let (ha, pa) = self.rx_bufs.remove(&head).unwrap();
                if len == 0 {
                    return None;
                }
                let mut raw = [0u8; HDR_SIZE];
                self.mem.read_slice(&mut raw, GuestAddress(ha)).unwrap();
                let h = parse_header(&raw);
                assert_eq!(len as usize, HDR_SIZE + h.len as usize);
                let mut data = vec![0u8; h.len as usize];
                self.mem.read_slice(&mut data, GuestAddress(pa)).unwrap();
                Some((h, data))
            })
            .collect()
    }

    /// The guest sends one packet (header and payload in separate descriptors, like Linux).
    fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = len32(payload.len());
        let hdr_addr = self.txq.buf_addr(self.txq.next_desc);
        self.mem
            .write_slice(&raw_header(h), GuestAddress(hdr_addr))
            .unwrap();
        if payload.is_empty() {
            self.txq
                .add_chain(self.mem, &[(None, len32(HDR_SIZE), false)]);
        } else {
            let pay_addr = self.txq.buf_addr((self.txq.next_desc + 1) % QSIZE);
            self.mem
                .write_slice(payload, GuestAddress(pay_addr))
                .unwrap();
            self.txq.add_chain(
                self.mem,
                &[
                    (None, len32(HDR_SIZE), false),
                    (None, len32(payload.len()), false),
                ],
            );
        }
        self.kick(TX_QUEUE);
        // The device consumed it (tx buffers come back with used length 0).
        assert_eq!(
            self.txq
                .take_used(self.mem)
                .iter()
                .map(|u| u.1)
                .collect::<Vec<_>>(),
            [0]
        );
    }

    /// The guest sends a raw chain (for hostile shapes); returns the used entries of tx.
    fn send_raw(&mut self, descs: &[(Option<u64>, u32, bool)]) -> Vec<(u16, u32)> {
        self.txq.add_chain(self.mem, descs);
        self.kick(TX_QUEUE);
        self.txq.take_used(self.mem)
    }

    fn conns(&self) -> usize {
        self.dev.lock().unwrap().connection_count()
    }

    /// Host side of a guest-initiated connection: returns the accepted stream.
    fn guest_connect(&mut self, listener: &UnixListener, guest_port: u32, port: u32) -> UnixStream {
        self.send(ghdr(op::REQUEST, guest_port, port), &[]);
        let (stream, _) = listener.accept().unwrap();
        let pkts = self.recv();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        let (h, _) = &pkts[0];
        assert_eq!(
            (h.op, h.src_port, h.dst_port),
            (op::RESPONSE, port, guest_port)
        );
        assert_eq!(
            (h.src_cid, h.dst_cid, h.type_),
            (HOST_CID, CID, TYPE_STREAM)
        );
        assert_eq!(h.buf_alloc, TX_BUF_SIZE);
        stream
    }

    /// Host-initiated connection up to the OK line; returns (client stream, local port).
    fn host_connect(&mut self, guest_port: u32) -> (UnixStream, u32) {
        let mut client = UnixStream::connect(&self.uds).unwrap();
        client
            .write_all(format!("CONNECT {guest_port}\n").as_bytes())
            .unwrap();
        self.run();
        let pkts = self.recv();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        let (req, _) = pkts[0].clone();
        assert_eq!(req.op, op::REQUEST);
        assert_eq!(req.dst_port, guest_port);
        assert!(req.src_port >= 1 << 30);
        self.send(ghdr(op::RESPONSE, guest_port, req.src_port), &[]);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let expect = format!("OK {}\n", req.src_port);
        let mut line = vec![0u8; expect.len()];
        client.read_exact(&mut line).unwrap();
        assert_eq!(String::from_utf8(line).unwrap(), expect);
        (client, req.src_port)
    }
}

fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn assert_eof(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected EOF, got {other:?}"),
    }
}

fn host_listener(vm: &Vm, port: u32) -> UnixListener {
    let mut p = vm.uds.clone().into_os_string();
    p.push(format!("_{port}"));
    UnixListener::bind(p).unwrap()
}

#[test]
fn config_space_and_features() {
    let mem = memory();
    let vm = Vm::new(&mem, None);
    let dev = vm.dev.lock().unwrap();
    assert_eq!(dev.device_type(), crate::virtio::device_type::VSOCK);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_eq!(dev.avail_features(), crate::virtio::VIRTIO_F_VERSION_1);
    let mut d = [0xffu8; 8];
    dev.read_config(0, &mut d);
    assert_eq!(u64::from_le_bytes(d), CID);
    let mut d = [0xffu8; 4];
    dev.read_config(4, &mut d);
    assert_eq!(d, [0; 4]);
    dev.read_config(6, &mut d);
    assert_eq!(d, [0; 4], "read running past the config space");
    dev.read_config(u64::MAX, &mut d);
    assert_eq!(d, [0; 4]);
}

#[test]
fn new_rejects_reserved_cids_and_busy_paths() {
    let dir = tempfile::tempdir().unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert!(matches!(
            Vsock::new(cid, &dir.path().join("a")),
            Err(Error::InvalidCid(_))
        ));
    }
    let path = dir.path().join("b");
    let first = Vsock::new(3, &path).unwrap();
    assert!(matches!(Vsock::new(4, &path), Err(Error::Bind { .. })));
    drop(first);
    assert!(!path.exists(), "socket file removed on drop");
}

#[test]
fn guest_initiated_bytes_both_ways_and_clean_close() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    let listener = host_listener(&vm, 52);
    vm.give_rx(16);
    let mut host = vm.guest_connect(&listener, 1000, 52);
    assert_eq!(vm.conns(), 1);

    vm.send(ghdr(op::RW, 1000, 52), b"ping from guest");
    assert_eq!(read_exactly(&mut host, 15), b"ping from guest");

    host.write_all(b"pong from host").unwrap();
    vm.run();
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let (h, data) = &pkts[0];
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RW, 52, 1000));
    assert_eq!(data, b"pong from host");
    // The device reports the 15 bytes it forwarded to the host.
    assert_eq!(h.fwd_cnt, 15);
    assert!(vm.irq.count() > 0);

    // The guest closes its socket: SHUTDOWN with both flags; the host sees EOF and the device
    // acknowledges with a RST.
    let mut shut = ghdr(op::SHUTDOWN, 1000, 52);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    vm.send(shut, &[]);
    assert_eof(&mut host);
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, op::RST);
    assert_eq!(vm.conns(), 0);
}

#[test]
fn host_initiated_bytes_both_ways_and_half_close() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    vm.give_rx(16);
    let (mut client, local) = vm.host_connect(5000);
    assert_eq!(vm.conns(), 1);

    client.write_all(b"stdin bytes").unwrap();
    vm.run();
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.src_port, pkts[0].0.dst_port),
        (op::RW, local, 5000)
    );
    assert_eq!(pkts[0].1, b"stdin bytes");

    vm.send(ghdr(op::RW, 5000, local), b"stdout bytes");
    assert_eq!(read_exactly(&mut client, 12), b"stdout bytes");

    // Host half-closes: the guest is told the host sends no more...
    client.shutdown(std::net::Shutdown::Write).unwrap();
    vm.run();
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.flags),
        (op::SHUTDOWN, SHUTDOWN_SEND)
    );
    // ...while the guest can still send.
    vm.send(ghdr(op::RW, 5000, local), b"more output");
    assert_eq!(read_exactly(&mut client, 11), b"more output");
    assert_eq!(vm.conns(), 1);

    // Guest finishes sending too: host sees EOF, the guest gets the closing RST.
    let mut shut = ghdr(op::SHUTDOWN, 5000, local);
    shut.flags = SHUTDOWN_SEND;
    vm.send(shut, &[]);
    assert_eof(&mut client);
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, op::RST);
    assert_eq!(vm.conns(), 0);
}

#[test]
fn data_sent_with_connect_line_is_not_lost() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    vm.give_rx(8);
    let mut client = UnixStream::connect(&vm.uds).unwrap();
    client.write_all(b"CONNECT 7\nearly data").unwrap();
    vm.run();
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1);
    let local = pkts[0].0.src_port;
    vm.send(ghdr(op::RESPONSE, 7, local), &[]);
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].1, b"early data");
    assert_eq!(
        read_exactly(&mut client, 3 + local.to_string().len() + 1),
        format!("OK {local}\n").as_bytes()
    );
}

#[test]
fn guest_connect_to_unbound_port_gets_rst() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    vm.give_rx(4);
    vm.send(ghdr(op::REQUEST, 1234, 99), &[]);
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let h = pkts[0].0;
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.dst_cid),
        (op::RST, 99, 1234, CID)
    );
    assert_eq!(vm.conns(), 0);
    // Packets for a connection that does not exist are answered with RST as well...
    vm.send(ghdr(op::RW, 1234, 99), b"x");
    assert_eq!(vm.recv()[0].0.op, op::RST);
    // ...except a RST, which must not be answered (no RST ping-pong).
    vm.send(ghdr(op::RST, 1234, 99), &[]);
    assert!(vm.recv().is_empty());
}

#[test]
fn host_client_refused_by_guest_sees_eof() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    vm.give_rx(4);
    let mut client = UnixStream::connect(&vm.uds).unwrap();
    client.write_all(b"CONNECT 80\n").unwrap();
    vm.run();
    let req = vm.recv()[0].0;
    vm.send(ghdr(op::RST, 80, req.src_port), &[]);
    assert_eof(&mut client);
    assert_eq!(vm.conns(), 0);
    // Garbage instead of a CONNECT line: the client is dropped, the guest never hears of it.
    let mut bad = UnixStream::connect(&vm.uds).unwrap();
    bad.write_all(b"HELLO 80\n").unwrap();
    vm.run();
    assert_eof(&mut bad);
    assert!(vm.recv().is_empty());
}

#[test]
fn unanswered_host_connect_times_out() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    vm.give_rx(4);
    let mut client = UnixStream::connect(&vm.uds).unwrap();
    client.write_all(b"CONNECT 80\n").unwrap();
    vm.run();
    let req = vm.recv()[0].0;
    assert_eq!(req.op, op::REQUEST);
    let until = Instant::now() + connection::CONNECT_TIMEOUT + Duration::from_secs(2);
    while vm.conns() > 0 && Instant::now() < until {
        vm.mgr.run_with_timeout(100).unwrap();
    }
    assert_eq!(vm.conns(), 0);
    assert_eof(&mut client);
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!((pkts[0].0.op, pkts[0].0.src_port), (op::RST, req.src_port));
}

#[test]
fn guest_without_rx_buffers_stops_host_reads() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    let listener = host_listener(&vm, 52);
    vm.give_rx(1);
    let mut host = vm.guest_connect(&listener, 1000, 52);
    // The guest posts no more rx buffers. The host writes as much as it can: the device must
    // stop reading, so the host's writes soon block instead of being swallowed.
    host.set_nonblocking(true).unwrap();
    let chunk = vec![0x5a; 64 * 1024];
    let mut written = 0usize;
    let mut stalled_rounds = 0;
    for _ in 0..200 {
        match host.write(&chunk) {
            Ok(n) => {
                written += n;
                stalled_rounds = 0;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => stalled_rounds += 1,
            Err(e) => panic!("{e}"),
        }
        vm.run();
        if stalled_rounds >= 3 {
            break;
        }
    }
    assert!(
        stalled_rounds >= 3,
        "host writes never blocked: {written} bytes swallowed"
    );
    assert!(written < 8 << 20, "{written} bytes buffered");
    // Buffers arrive: the data flows again, in order and complete.
    let mut got = 0usize;
    for _ in 0..10_000 {
        vm.give_rx(64);
        for (h, data) in vm.recv() {
            assert_eq!(h.op, op::RW);
            assert!(data.iter().all(|&b| b == 0x5a));
            got += data.len();
            // Keep the device's view of guest credit open.
            let mut cu = ghdr(op::CREDIT_UPDATE, 1000, 52);
            cu.fwd_cnt = len32(got);
            vm.send(cu, &[]);
        }
        if got == written {
            break;
        }
    }
    assert_eq!(got, written);
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    let listener = host_listener(&vm, 52);
    vm.give_rx(32);
    // The guest advertises only 5000 bytes of buffer.
    let mut req = ghdr(op::REQUEST, 1000, 52);
    req.buf_alloc = 5000;
    vm.send(req, &[]);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(vm.recv()[0].0.op, op::RESPONSE);
    host.write_all(&[7u8; 20000]).unwrap();
    vm.run();
    let pkts = vm.recv();
    let data: usize = pkts
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(_, d)| d.len())
        .sum();
    assert_eq!(data, 5000, "device must not exceed the guest's credit");
    assert!(pkts.iter().any(|(h, _)| h.op == op::CREDIT_REQUEST));
    // The guest consumed 3000 bytes: exactly that much more may come.
    let mut cu = ghdr(op::CREDIT_UPDATE, 1000, 52);
    cu.buf_alloc = 5000;
    cu.fwd_cnt = 3000;
    vm.send(cu, &[]);
    let data: usize = vm
        .recv()
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(_, d)| d.len())
        .sum();
    assert_eq!(data, 3000);
}

#[test]
fn guest_to_host_credit_is_enforced_and_updated() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    let listener = host_listener(&vm, 52);
    vm.give_rx(64);
    let mut host = vm.guest_connect(&listener, 1000, 52);
    // The host does not read: the guest may fill exactly TX_BUF_SIZE beyond what the socket
    // buffer holds, as announced; we send in 64 KiB packets until the device's fwd_cnt stops.
    let chunk = vec![1u8; 64 * 1024];
    let mut sent = 0usize;
    let mut fwd = 0u32;
    loop {
        // Guest credit check, as a well-behaved driver does.
        let free = TX_BUF_SIZE as usize - (sent - fwd as usize);
        if free < chunk.len() {
            break;
        }
        vm.send(ghdr(op::RW, 1000, 52), &chunk);
        sent += chunk.len();
        for (h, _) in vm.recv() {
            fwd = fwd.max(h.fwd_cnt);
        }
        assert!(sent < 64 << 20, "host socket never filled");
    }
    assert_eq!(vm.conns(), 1, "a guest within its credit is not reset");
    // One more packet breaks the credit: the connection is reset.
    vm.send(ghdr(op::RW, 1000, 52), &chunk);
    vm.send(ghdr(op::RW, 1000, 52), &chunk);
    let pkts = vm.recv();
    assert!(pkts.iter().any(|(h, _)| h.op == op::RST), "{pkts:?}");
    assert_eq!(vm.conns(), 0);
    // What the host got before is intact and the stream then ends.
    host.set_nonblocking(false).unwrap();
    let mut all = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = host.read_to_end(&mut all);
    assert!(all.iter().all(|&b| b == 1));
}

#[test]
fn credit_update_after_host_drains() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    let listener = host_listener(&vm, 52);
    vm.give_rx(64);
    let mut host = vm.guest_connect(&listener, 1000, 52);
    // Fill the host socket so the device has to buffer, then let the host drain it: the device
    // must tell the guest about the freed space.
    let chunk = vec![2u8; 64 * 1024];
    for _ in 0..6 {
        vm.send(ghdr(op::RW, 1000, 52), &chunk);
    }
    let total = 6 * chunk.len();
    let mut got = 0;
    host.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut last_fwd = 0;
    for _ in 0..100 {
        if let Ok(n) = host.read(&mut buf) {
            got += n;
        }
        vm.run();
        for (h, _) in vm.recv() {
            last_fwd = last_fwd.max(h.fwd_cnt);
        }
        if got == total {
            break;
        }
    }
    assert_eq!(got, total);
    assert!(
        last_fwd as usize >= total - TX_BUF_SIZE as usize / 2,
        "fwd_cnt {last_fwd}"
    );
}

#[test]
fn hostile_tx_chains_are_dropped_without_effect() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    let listener = host_listener(&vm, 52);
    vm.give_rx(16);
    let mut host = vm.guest_connect(&listener, 1000, 52);

    let put = |vm: &mut Vm, h: Header| {
        let addr = 0x3f0_0000;
        vm.mem
            .write_slice(&raw_header(h), GuestAddress(addr))
            .unwrap();
        addr
    };
    let hl = len32(HDR_SIZE);
    // Wrong source CID (spoofing another VM), wrong destination CID.
    let mut h = ghdr(op::RW, 1000, 52);
    h.src_cid = 4;
    h.len = 1;
    let a = put(&mut vm, h);
    assert_eq!(vm.send_raw(&[(Some(a), hl + 1, false)]).len(), 1);
    let mut h = ghdr(op::RW, 1000, 52);
    h.dst_cid = 7;
    h.len = 1;
    let a = put(&mut vm, h);
    vm.send_raw(&[(Some(a), hl + 1, false)]);
    // Header outside memory, header past the end of memory, zero-length and short headers,
    // writable (wrong-direction) tx descriptor, u64-wrapping address.
    let a = put(&mut vm, ghdr(op::CREDIT_REQUEST, 1000, 52));
    for descs in [
        vec![(Some(1u64 << 40), hl, false)],
        vec![(Some(MEM_SIZE as u64 - 10), hl, false)],
        vec![(Some(a), 0, false)],
        vec![(Some(a), hl - 1, false)],
        vec![(Some(a), hl, true)],
        vec![(Some(a), hl, false), (Some(a), 4, true)],
        vec![(Some(u64::MAX - 3), hl, false)],
    ] {
        let used = vm.send_raw(&descs);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].1, 0);
    }
    // None of that reached the host or produced a packet for the guest.
    assert!(vm.recv().is_empty());
    host.set_nonblocking(true).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(host.read(&mut b).unwrap_err().kind(), ErrorKind::WouldBlock);
    assert_eq!(vm.conns(), 1);

    // Now well-addressed but invalid: len beyond the chain resets the connection it names.
    let mut h = ghdr(op::RW, 1000, 52);
    h.len = 100;
    let a = put(&mut vm, h);
    vm.send_raw(&[(Some(a), hl + 10, false)]);
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (op::RST, 1000));
    assert_eq!(vm.conns(), 0);
    host.set_nonblocking(false).unwrap();
    assert_eof(&mut host);
}

#[test]
fn invalid_fields_on_live_connections_reset_them() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    let listener = host_listener(&vm, 52);
    vm.give_rx(32);
    type Mutation = Box<dyn Fn(&mut Header) -> Vec<u8>>;
    let cases: Vec<Mutation> = vec![
        Box::new(|h| {
            h.op = 99;
            vec![]
        }),
        Box::new(|h| {
            h.type_ = 2; // SEQPACKET, not offered
            vec![]
        }),
        Box::new(|h| {
            h.op = op::RW;
            h.len = super::packet::MAX_PKT_PAYLOAD + 1;
            vec![0; super::packet::MAX_PKT_PAYLOAD as usize + 1]
        }),
        Box::new(|h| {
            h.op = op::REQUEST; // duplicate request on a live connection
            vec![]
        }),
        Box::new(|h| {
            h.op = op::RESPONSE; // response nobody asked for
            vec![]
        }),
    ];
    for (i, mutate) in cases.iter().enumerate() {
        let port = 2000 + len32(i);
        let mut host = vm.guest_connect(&listener, port, 52);
        let mut h = ghdr(op::RW, port, 52);
        let payload = mutate(&mut h);
        h.len = len32(payload.len());
        let addr = 0x3f0_0000;
        vm.mem
            .write_slice(&raw_header(h), GuestAddress(addr))
            .unwrap();
        vm.mem
            .write_slice(&payload, GuestAddress(addr + HDR_SIZE as u64))
            .unwrap();
        let used = vm.send_raw(&[(Some(addr), len32(HDR_SIZE) + len32(payload.len()), false)]);
        assert_eq!(used.len(), 1);
        let pkts = vm.recv();
        assert!(
            pkts.iter()
                .any(|(p, _)| p.op == op::RST && p.dst_port == port),
            "case {i}: {pkts:?}"
        );
        assert_eof(&mut host);
        assert_eq!(vm.conns(), 0, "case {i}");
    }
}

#[test]
fn bad_rx_buffers_are_returned_empty_and_skipped() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    // A readable rx buffer, a too-short one and one outside memory, then a good one.
    vm.rxq.add_chain(vm.mem, &[(None, 64, false)]);
    vm.rxq.add_chain(vm.mem, &[(None, 20, true)]);
    vm.rxq.add_chain(vm.mem, &[(Some(1 << 40), 64, true)]);
    vm.kick(RX_QUEUE);
    vm.give_rx(1);
    vm.send(ghdr(op::REQUEST, 1, 9), &[]);
    let used = vm.rxq.take_used(vm.mem);
    assert_eq!(used.len(), 4, "{used:?}");
    assert_eq!(
        &used[..3].iter().map(|u| u.1).collect::<Vec<_>>(),
        &[0, 0, 0]
    );
    assert_eq!(used[3].1, len32(HDR_SIZE));
}

#[test]
fn connection_limit_is_enforced_both_ways() {
    let mem = memory();
    let mut vm = Vm::new(&mem, Some(3));
    let listener = host_listener(&vm, 52);
    vm.give_rx(64);
    let _h1 = vm.guest_connect(&listener, 1, 52);
    let _h2 = vm.guest_connect(&listener, 2, 52);
    let (_c3, _) = vm.host_connect(77);
    assert_eq!(vm.conns(), 3);
    // Guest connects beyond the limit are refused.
    for port in 10..20 {
        vm.send(ghdr(op::REQUEST, port, 52), &[]);
        let pkts = vm.recv();
        assert_eq!(pkts.len(), 1);
        assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (op::RST, port));
    }
    // Host clients beyond the limit are closed without reaching the guest.
    let mut extra = UnixStream::connect(&vm.uds).unwrap();
    let _ = extra.write_all(b"CONNECT 77\n");
    vm.run();
    assert_eof(&mut extra);
    assert!(vm.recv().is_empty());
    assert_eq!(vm.conns(), 3);
    // Closing one frees a slot.
    vm.send(ghdr(op::RST, 1, 52), &[]);
    assert_eq!(vm.conns(), 2);
    let _h4 = vm.guest_connect(&listener, 30, 52);
    assert_eq!(vm.conns(), 3);
}

#[test]
fn reset_drops_connections_and_deregisters_fds() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    let listener = host_listener(&vm, 52);
    vm.give_rx(8);
    let mut host = vm.guest_connect(&listener, 1000, 52);
    let (mut client, _) = vm.host_connect(9);
    assert!(vm.dev.lock().unwrap().reset());
    vm.run();
    assert_eq!(vm.conns(), 0);
    assert_eof(&mut host);
    assert_eof(&mut client);
    // Nothing of the old session is still polled.
    vm.kicks[TX_QUEUE].write(1).unwrap();
    assert_eq!(vm.mgr.run_with_timeout(50).unwrap(), 0);
}

#[test]
fn credit_request_and_receive_shutdown() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    let listener = host_listener(&vm, 52);
    vm.give_rx(16);
    let mut host = vm.guest_connect(&listener, 1000, 52);
    vm.send(ghdr(op::RW, 1000, 52), b"abc");
    assert_eq!(read_exactly(&mut host, 3), b"abc");

    vm.send(ghdr(op::CREDIT_REQUEST, 1000, 52), &[]);
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let h = pkts[0].0;
    assert_eq!(
        (h.op, h.buf_alloc, h.fwd_cnt),
        (op::CREDIT_UPDATE, TX_BUF_SIZE, 3)
    );

    // The guest will receive no more: host data is no longer forwarded...
    let mut shut = ghdr(op::SHUTDOWN, 1000, 52);
    shut.flags = SHUTDOWN_RCV;
    vm.send(shut, &[]);
    host.write_all(b"unwanted").unwrap();
    vm.run();
    assert!(vm.recv().is_empty());
    // ...but the guest can still send.
    vm.send(ghdr(op::RW, 1000, 52), b"still here");
    assert_eq!(read_exactly(&mut host, 10), b"still here");
    // SHUTDOWN(SEND) completes the close: host EOF, RST to the guest.
    let mut shut = ghdr(op::SHUTDOWN, 1000, 52);
    shut.flags = SHUTDOWN_SEND;
    vm.send(shut, &[]);
    assert_eof(&mut host);
    let pkts = vm.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, op::RST);
    assert_eq!(vm.conns(), 0);
}

/// Guest data still buffered for a slow host when the guest closes: delivered if the host reads
/// it in time, the connection then ends with RST; a host that never reads is cut off after the
/// close timeout instead of pinning the connection forever.
#[test]
fn guest_close_flushes_buffered_data_or_times_out() {
    let mem = memory();
    let mut vm = Vm::new(&mem, None);
    let listener = host_listener(&vm, 52);
    vm.give_rx(128);
    let chunk = vec![3u8; 64 * 1024];
    let mut shut = ghdr(op::SHUTDOWN, 0, 52);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;

    // Reading host: everything arrives, then EOF, then the guest gets its RST.
    let mut host = vm.guest_connect(&listener, 1000, 52);
    let sent = fill_until_buffered(&mut vm, 1000, &chunk);
    shut.src_port = 1000;
    vm.send(shut, &[]);
    assert_eq!(vm.conns(), 1);
    host.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert_eq!(vm.conns(), 1, "the close waits for buffered data");
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 20];
    let mut eof = false;
    for _ in 0..200 {
        match host.read(&mut buf) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => got += n,
            Err(_) => {}
        }
        vm.run();
    }
    assert!(eof);
    assert_eq!(got, sent);
    assert!(vm.recv().iter().any(|(h, _)| h.op == op::RST));
    assert_eq!(vm.conns(), 0);

    // Host that never reads: the connection is dropped after the close timeout.
    let _stuck = vm.guest_connect(&listener, 1001, 52);
    fill_until_buffered(&mut vm, 1001, &chunk);
    assert_eq!(vm.conns(), 1);
    shut.src_port = 1001;
    vm.send(shut, &[]);
    let until = Instant::now() + connection::CLOSE_TIMEOUT + Duration::from_secs(2);
    while vm.conns() > 0 && Instant::now() < until {
        vm.mgr.run_with_timeout(100).unwrap();
    }
    assert_eq!(vm.conns(), 0);
    let pkts = vm.recv();
    assert!(
        pkts.iter()
            .any(|(h, _)| h.op == op::RST && h.dst_port == 1001),
        "{pkts:?}"
    );
}

/// Sends guest data (within credit, as a driver would) until the host socket is full and the
/// device holds some in its buffer. Returns the bytes sent.
fn fill_until_buffered(vm: &mut Vm, port: u32, chunk: &[u8]) -> usize {
    let mut sent = 0usize;
    let mut fwd = 0u32;
    loop {
        for (h, _) in vm.recv() {
            fwd = fwd.max(h.fwd_cnt);
        }
        if TX_BUF_SIZE as usize - (sent - fwd as usize) < chunk.len() {
            return sent;
        }
        vm.send(ghdr(op::RW, port, 52), chunk);
        sent += chunk.len();
        assert!(sent < 64 << 20, "host socket never filled");
    }
}
