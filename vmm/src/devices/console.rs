//! virtio-console (virtio spec 1.2, 5.3) with a single port (no MULTIPORT): the guest's
//! transmitq goes to a host `Write`, and bytes from a pollable host fd (pipe, tty, socket) fill
//! the guest's receiveq.
//!
//! Input is read only when the guest has an rx buffer to put it in, one read per readiness
//! report, so nothing is buffered on the host side and the fd never needs O_NONBLOCK (which
//! would leak to whoever shares it, e.g. a terminal).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, QueueT, Reader, Writer};

use crate::virtio::{
    device_type, Event, GuestMemory, VirtioState, WithVirtioState, VIRTIO_F_VERSION_1,
};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 64;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
/// VIRTIO_CONSOLE_F_EMERG_WRITE: the driver may write single characters to config `emerg_wr`
/// before (or without) setting up the queues.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;
/// `struct virtio_console_config`: cols, rows (u16), max_nr_ports, emerg_wr (u32).
const CONFIG_SIZE: u64 = 12;
const EMERG_WR_OFFSET: u64 = 8;
/// At most this much input per rx buffer, and the copy granule for output.
const MAX_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the activation eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("descriptor in the wrong direction for this queue")]
    Direction,
    #[error("buffer outside guest memory: {0}")]
    Memory(virtio_queue::Error),
    #[error("guest memory access: {0}")]
    Access(std::io::Error),
    #[error("zero-length rx buffer")]
    Empty,
}

/// The virtio-console device.
pub struct Console {
    output: Box<dyn Write + Send>,
    input: Option<File>,
    /// Whether the input fd is registered with the event loop (for IN).
    input_registered: bool,
    /// epoll reported input and we have not read it yet (waiting for an rx buffer).
    input_ready: bool,
    state: VirtioState,
    buf: Vec<u8>,
}

impl Console {
    /// `output` receives everything the guest writes; `input`, if any, must be pollable and is
    /// what the guest reads.
    pub fn new(output: Box<dyn Write + Send>, input: Option<OwnedFd>) -> Result<Console, Error> {
        Ok(Console {
            output,
            input: input.map(File::from),
            input_registered: false,
            input_ready: false,
            // cols/rows need F_SIZE and max_nr_ports needs F_MULTIPORT, neither offered;
            // emerg_wr is write-only: everything reads as zero.
            state: VirtioState::new(
                "virtio-console",
                device_type::CONSOLE,
                VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_EMERG_WRITE,
                QUEUE_SIZES.to_vec(),
                Vec::new(),
            )
            .map_err(Error::EventFd)?,
            buf: Vec::new(),
        })
    }

    fn write_output(&mut self, data: &[u8]) {
        if let Err(e) = self.output.write_all(data) {
            tracing::warn!("virtio-console: output: {e}");
        }
    }

    /// Copies every tx chain to the output; returns whether the driver needs an interrupt.
    fn process_tx(&mut self) -> bool {
        let Some(a) = self.state.active.as_mut() else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = a.queues[TX_QUEUE].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            if let Err(e) = copy_out(&a.mem, chain, &mut self.buf, &mut self.output) {
                tracing::warn!("virtio-console: dropping tx buffer: {e}");
            }
            if let Err(e) = a.queues[TX_QUEUE].add_used(&a.mem, head, 0) {
                tracing::warn!("virtio-console: tx add_used: {e}");
                break;
            }
            used = true;
        }
        if used {
            let _ = self.output.flush();
        }
        used && a.queues[TX_QUEUE]
            .needs_notification(&a.mem)
            .unwrap_or(true)
    }

    /// Moves pending input into one guest rx buffer, if both exist. Unusable buffers (wrong
    /// direction, outside memory) are returned empty on the way.
    fn process_rx(&mut self) -> InputOutcome {
        let mut outcome = InputOutcome::default();
        let (Some(a), Some(input)) = (self.state.active.as_mut(), self.input.as_mut()) else {
            return outcome;
        };
        while self.input_ready {
            let Some(chain) = a.queues[RX_QUEUE].pop_descriptor_chain(&a.mem) else {
                // No buffer: leave the input unread; the guest's next rx notify brings us back.
                break;
            };
            let head = chain.head_index();
            let len = match fill_in(&a.mem, chain, &mut self.buf, input) {
                Ok(InputRead::Data(len)) => {
                    self.input_ready = false;
                    len
                }
                Ok(read) => {
                    // Nothing delivered: hand the buffer back untouched.
                    self.input_ready = false;
                    let q = &mut a.queues[RX_QUEUE];
                    q.set_next_avail(q.next_avail().wrapping_sub(1));
                    outcome.eof = matches!(read, InputRead::Eof);
                    break;
                }
                Err(e) => {
                    tracing::warn!("virtio-console: rx buffer: {e}");
                    0
                }
            };
            if let Err(e) = a.queues[RX_QUEUE].add_used(&a.mem, head, len) {
                tracing::warn!("virtio-console: rx add_used: {e}");
                break;
            }
            outcome.notify |= a.queues[RX_QUEUE]
                .needs_notification(&a.mem)
                .unwrap_or(true);
        }
        outcome
    }

    /// Polls the input exactly while it can be consumed.
    fn sync_input(&mut self, ops: &mut EventOps) {
        let Some(input) = self.input.as_ref() else {
            return;
        };
        let want = self.state.active.is_some() && !self.input_ready;
        if want && !self.input_registered {
            match ops.add(Events::new(input, EventSet::IN)) {
                Ok(()) => self.input_registered = true,
                Err(e) => {
                    tracing::warn!("virtio-console: input is not pollable, ignoring it: {e}");
                    self.input = None;
                }
            }
        } else if !want && self.input_registered {
            let _ = ops.remove(Events::new(input, EventSet::IN));
            self.input_registered = false;
        }
    }

    fn drop_input(&mut self, ops: &mut EventOps) {
        if let Some(input) = self.input.take() {
            if self.input_registered {
                let _ = ops.remove(Events::new(&input, EventSet::IN));
            }
        }
        self.input_registered = false;
        self.input_ready = false;
    }
}

fn copy_out(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut Vec<u8>,
    out: &mut dyn Write,
) -> Result<(), ChainError> {
    if chain.clone().any(|d| d.is_write_only()) {
        return Err(ChainError::Direction);
    }
    let mut reader: Reader = Reader::new(mem, chain).map_err(ChainError::Memory)?;
    buf.resize(MAX_CHUNK, 0);
    loop {
        let n = reader.read(&mut buf[..]).map_err(ChainError::Access)?;
        if n == 0 {
            return Ok(());
        }
        if let Err(e) = out.write_all(&buf[..n]) {
            tracing::warn!("virtio-console: output: {e}");
        }
    }
}

#[derive(Default)]
struct InputOutcome {
    /// Used rx buffers the driver must hear about.
    notify: bool,
    /// The input ended.
    eof: bool,
}

enum InputRead {
    Data(u32),
    /// Readiness was stale (someone else drained the fd): wait for the next report.
    Nothing,
    /// End of input, or an error that will not go away.
    Eof,
}

/// Reads once from `input` into the chain.
fn fill_in(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut Vec<u8>,
    input: &mut File,
) -> Result<InputRead, ChainError> {
    if chain.clone().any(|d| !d.is_write_only()) {
        return Err(ChainError::Direction);
    }
    let mut writer: Writer = Writer::new(mem, chain).map_err(ChainError::Memory)?;
    let cap = writer.available_bytes().min(MAX_CHUNK);
    if cap == 0 {
        return Err(ChainError::Empty);
    }
    buf.resize(cap, 0);
    let n = loop {
        match input.read(&mut buf[..cap]) {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(InputRead::Nothing),
            Err(e) => {
                tracing::warn!("virtio-console: input: {e}");
                return Ok(InputRead::Eof);
            }
        }
    };
    if n == 0 {
        return Ok(InputRead::Eof);
    }
    writer.write_all(&buf[..n]).map_err(ChainError::Access)?;
    // n <= MAX_CHUNK.
    Ok(InputRead::Data(n as u32))
}

/// Reset: input already signalled stays signalled for the next session; only polling stops.
impl WithVirtioState for Console {
    crate::virtio_state_accessors!();

    fn write_device_config(&mut self, offset: u64, data: &[u8]) {
        if self.state.acked_features & VIRTIO_CONSOLE_F_EMERG_WRITE == 0 {
            return;
        }
        let in_emerg_wr = offset >= EMERG_WR_OFFSET
            && offset
                .checked_add(data.len() as u64)
                .is_some_and(|end| end <= CONFIG_SIZE);
        if offset == EMERG_WR_OFFSET && in_emerg_wr && !data.is_empty() {
            // The character is the low byte of the little-endian u32.
            self.write_output(&data[..1]);
            let _ = self.output.flush();
        }
    }
}

impl MutEventSubscriber for Console {
    fn init(&mut self, ops: &mut EventOps) {
        self.state.queue_events.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut notify = false;
        match self.state.queue_events.process(&events, ops).event {
            // On activation too: the driver may have queued output before we were listening.
            Event::Activate | Event::Queue(TX_QUEUE) => notify |= self.process_tx(),
            // RX: new buffers, served below.
            Event::Queue(_) | Event::Stale => {}
            Event::Other => {
                if self
                    .input
                    .as_ref()
                    .is_some_and(|i| i.as_raw_fd() == events.fd())
                {
                    self.input_ready = true;
                }
            }
        }
        let input = self.process_rx();
        notify |= input.notify;
        if input.eof {
            // A level-triggered fd at EOF would wake us forever: stop watching it.
            self.drop_input(ops);
        }
        self.sync_input(ops);
        if notify {
            if let Some(a) = self.state.active.as_ref() {
                a.signal_used("virtio-console");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::test_utils::{self, add_chain, clones, queue_events, CountingInterrupt};
    use crate::virtio::{ActivateContext, VirtioDevice};

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
            self.next_desc[q] += descs.len() as u16;
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
            if i as u16 + 1 >= 16 {
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
}
