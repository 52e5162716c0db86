//! Legacy PC devices: the COM1 8250 UART (vm-superio) and an i8042 stub whose only job is the
//! keyboard-controller reset that `reboot=k` guests use to end the VM.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};

/// Raises an irq through an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);
impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the input side that the guest drained the receive FIFO, so stdin may be read again.
#[derive(Debug)]
pub struct InputReady(pub EventFd);
impl SerialEvents for InputReady {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

pub type SerialDevice = Serial<EventFdTrigger, InputReady, Box<dyn Write + Send>>;

/// COM1 on the port I/O bus.
pub struct SerialPort(pub SerialDevice);
/// The UART's state is behind vm-superio's (non-Debug) types; the name is what logs need.
impl std::fmt::Debug for SerialPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialPort").finish_non_exhaustive()
    }
}
impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match u8::try_from(offset) {
            Ok(offset @ 0..=7) if data.len() == 1 => data[0] = self.0.read(offset),
            _ => {}
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset @ 0..=7), 1) = (u8::try_from(offset), data.len()) {
            if let Err(e) = self.0.write(offset, data[0]) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}

/// Feeds host input (a TTY or a pipe on stdin) into the serial receive FIFO, without ever
/// spinning: when the FIFO is full, input is unregistered until the guest drains it.
pub struct SerialInput {
    serial: Arc<Mutex<SerialPort>>,
    input: Box<dyn io::Read + Send>,
    input_fd: i32,
    ready: EventFd,
    input_registered: bool,
}

/// Without `input` (a `dyn Read`).
impl std::fmt::Debug for SerialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialInput")
            .field("input_fd", &self.input_fd)
            .field("ready", &self.ready)
            .field("input_registered", &self.input_registered)
            .finish_non_exhaustive()
    }
}

impl SerialInput {
    pub fn new(
        serial: Arc<Mutex<SerialPort>>,
        input: Box<dyn io::Read + Send>,
        input_fd: i32,
        ready: EventFd,
    ) -> Self {
        SerialInput {
            serial,
            input,
            input_fd,
            ready,
            input_registered: false,
        }
    }

    fn set_input(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.input_registered {
            return;
        }
        let ev = Events::new_raw(self.input_fd, EventSet::IN);
        tracing::debug!("serial input: {}", if on { "resumed" } else { "paused" });
        let r = if on { ops.add(ev) } else { ops.remove(ev) };
        match r {
            Ok(()) => self.input_registered = on,
            Err(e) => tracing::warn!("serial input: epoll: {e:?}"),
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.ready, EventSet::IN)) {
            tracing::warn!("serial input: epoll: {e:?}");
        }
        self.set_input(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.ready.as_raw_fd() {
            let _ = self.ready.read();
            self.set_input(ops, true);
            return;
        }
        if events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR)
            && !events.event_set().contains(EventSet::IN)
        {
            self.set_input(ops, false);
            return;
        }
        let serial = self.serial.clone();
        let mut serial = serial.lock().expect("serial lock");
        let room = serial.0.fifo_capacity();
        if room == 0 {
            drop(serial);
            self.set_input(ops, false);
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                drop(serial);
                self.set_input(ops, false); // EOF: the pipe closed
            }
            Ok(n) => {
                if let Err(e) = serial.0.enqueue_raw_bytes(&buf[..n]) {
                    tracing::debug!("serial input: {e:?}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                drop(serial);
                tracing::warn!("serial input: {e}");
                self.set_input(ops, false);
            }
        }
    }
}

/// i8042 keyboard controller, reduced to what a guest without a keyboard touches: status reads
/// say "no data, input buffer empty", and the CPU-reset command (0xfe on port 0x64) ends the VM.
#[derive(Debug)]
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub const PORT_BASE: u64 = 0x60;
    pub const PORT_LEN: u64 = 5;
    const STATUS_OFFSET: u64 = 4;
    const CMD_RESET_CPU: u8 = 0xfe;

    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == Self::STATUS_OFFSET && data.first() == Some(&Self::CMD_RESET_CPU) {
            tracing::info!("guest requested a reset through the i8042");
            self.exit.request(Ok(VmExit::GuestStop));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i8042_reset_ends_the_vm() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut kbd = I8042::new(exit.clone());
        let mut b = [0xffu8];
        kbd.read(4, &mut b);
        assert_eq!(b[0], 0, "status must say input buffer empty");
        kbd.write(4, &[0xd1]); // another command: ignored
        assert!(exit.take_reason().is_none());
        kbd.write(0, &[0xfe]); // data port, not a command
        assert!(exit.take_reason().is_none());
        kbd.write(4, &[0xfe]);
        assert!(matches!(exit.take_reason(), Some(Ok(VmExit::GuestStop))));
    }

    #[test]
    fn serial_output_reaches_the_writer() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let serial = Serial::with_events(
            EventFdTrigger(EventFd::new(0).unwrap()),
            InputReady(EventFd::new(0).unwrap()),
            Box::new(out.clone()) as Box<dyn Write + Send>,
        );
        let mut port = SerialPort(serial);
        for c in b"hi" {
            port.write(0, &[*c]);
        }
        port.write(0, b"xy"); // wrong width: ignored
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi");
    }
}
