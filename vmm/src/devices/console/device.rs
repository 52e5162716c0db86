//! The virtio-console device: its queues, host output and input, and the emergency write.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::DescriptorChain;

use super::request::{copy_out, fill_in, InputOutcome, InputRead};
use super::{
    Error, CONFIG_SIZE, EMERG_WR_OFFSET, QUEUE_SIZES, RX_QUEUE, TX_QUEUE,
    VIRTIO_CONSOLE_F_EMERG_WRITE,
};
use crate::virtio::{
    device_type, GuestMemory, RxSource, VirtioState, WithVirtioState, VIRTIO_F_VERSION_1,
};

/// The virtio-console device.
pub struct Console {
    pub(super) output: Box<dyn Write + Send>,
    pub(super) input: Option<File>,
    /// Whether the input fd is registered with the event loop (for IN).
    pub(super) input_registered: bool,
    /// epoll reported input and we have not read it yet (waiting for an rx buffer).
    pub(super) input_ready: bool,
    pub(super) state: VirtioState,
    pub(super) buf: Vec<u8>,
}

/// Without `output` (a `dyn Write`) and the buffer.
impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("input", &self.input)
            .field("input_registered", &self.input_registered)
            .field("input_ready", &self.input_ready)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
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
    pub(super) fn process_tx(&mut self) -> bool {
        let Some(a) = self.state.active.as_mut() else {
            return false;
        };
        let (buf, output) = (&mut self.buf, &mut self.output);
        let mut copied = false;
        let notify = a.drain(self.state.name, TX_QUEUE, |mem, chain| {
            if let Err(e) = copy_out(mem, chain, buf, output) {
                tracing::warn!("virtio-console: dropping tx buffer: {e}");
            }
            copied = true;
            0
        });
        if copied {
            let _ = self.output.flush();
        }
        notify
    }

    /// Moves pending input into one guest rx buffer, if both exist. Unusable buffers (wrong
    /// direction, outside memory) are returned empty on the way.
    pub(super) fn process_rx(&mut self) -> InputOutcome {
        let (Some(a), Some(input)) = (self.state.active.as_mut(), self.input.as_mut()) else {
            return InputOutcome::default();
        };
        let mut source = InputToGuest {
            input,
            ready: &mut self.input_ready,
            buf: &mut self.buf,
            eof: false,
        };
        let notify = a.fill_rx(self.state.name, RX_QUEUE, &mut source);
        InputOutcome {
            notify,
            eof: source.eof,
        }
    }

    /// Polls the input exactly while it can be consumed.
    pub(super) fn sync_input(&mut self, ops: &mut EventOps) {
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

    pub(super) fn drop_input(&mut self, ops: &mut EventOps) {
        if let Some(input) = self.input.take() {
            if self.input_registered {
                let _ = ops.remove(Events::new(&input, EventSet::IN));
            }
        }
        self.input_registered = false;
        self.input_ready = false;
    }
}

/// The console input as a source of guest rx buffers: one read while epoll said it is ready.
struct InputToGuest<'a> {
    input: &'a mut File,
    ready: &'a mut bool,
    buf: &'a mut Vec<u8>,
    /// The input ended.
    eof: bool,
}

impl RxSource for InputToGuest<'_> {
    fn has_pending(&self) -> bool {
        *self.ready
    }

    fn fill(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> Option<u32> {
        match fill_in(mem, chain, self.buf, self.input) {
            Ok(InputRead::Data(len)) => {
                *self.ready = false;
                Some(len)
            }
            Ok(read) => {
                // Nothing delivered: the buffer goes back untouched.
                *self.ready = false;
                self.eof = matches!(read, InputRead::Eof);
                None
            }
            Err(e) => {
                tracing::warn!("virtio-console: rx buffer: {e}");
                Some(0)
            }
        }
    }
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
