//! The legacy PC devices on the port I/O bus: COM1 (8250, IRQ 4) with host stdin as its input
//! when it is on stdout, and the i8042 whose reset ends the VM.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::SubscriberOps;
use kvm_ioctls::VmFd;
use vm_superio::Serial;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::DeviceManager;
use crate::arch;
use crate::config::SerialConfig;
use crate::devices::legacy::{EventFdTrigger, InputReady, SerialInput, SerialPort, I8042};
use crate::exit::ExitSignal;
use crate::stdin::{self, RawTerminal, StdinTarget};
use crate::Error;

const COM1_PORT: u64 = 0x3f8;
const COM1_PORT_LEN: u64 = 8;

impl DeviceManager {
    /// COM1, writing to `output`. With `stdin` [`StdinTarget::Serial`] host stdin feeds its
    /// receive FIFO; the returned guard keeps a terminal on stdin in raw mode.
    pub fn attach_serial(
        &mut self,
        vm: &VmFd,
        output: &SerialConfig,
        stdin: StdinTarget,
    ) -> Result<Option<RawTerminal>, Error> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
        vm.register_irqfd(&irq, arch::IRQ_COM1)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        let input_ready = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
        let serial = Arc::new(Mutex::new(SerialPort(Serial::with_events(
            EventFdTrigger(irq),
            InputReady(
                input_ready
                    .try_clone()
                    .map_err(|e| Error::Io("eventfd", e))?,
            ),
            super::output(output).map_err(|(path, source)| Error::Serial { path, source })?,
        ))));
        self.pio.insert(serial.clone(), COM1_PORT, COM1_PORT_LEN)?;
        if stdin != StdinTarget::Serial {
            return Ok(None);
        }
        let fd = stdin::duplicate()?;
        let input_fd = fd.as_raw_fd();
        self.events
            .add_subscriber(Arc::new(Mutex::new(SerialInput::new(
                serial,
                Box::new(File::from(fd)),
                input_fd,
                input_ready,
            ))));
        Ok(RawTerminal::if_terminal())
    }

    /// The i8042 stub: its keyboard-controller reset (`reboot=k`) ends the VM.
    pub fn attach_i8042(&mut self, exit: &Arc<ExitSignal>) -> Result<(), Error> {
        self.pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            I8042::PORT_BASE,
            I8042::PORT_LEN,
        )?;
        Ok(())
    }
}
