//! How a VM ends, and the one place every thread reports that it should.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why a VM stopped without a VMM error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest rebooted or panicked (with `reboot=k panic=-1` both reach the i8042 reset),
    /// powered off (every vCPU halted with interrupts off, [`crate::poweroff`]), or KVM
    /// reported a guest shutdown/reset system event.
    GuestStop,
    /// The vCPU triple-faulted (KVM_EXIT_SHUTDOWN): the guest kernel crashed hard.
    TripleFault,
    /// The host asked the VM to stop ([`StopHandle::stop`], SIGTERM/SIGINT in `ark-vmm`).
    HostStop,
}

impl VmExit {
    /// `ark-vmm`'s process exit status for this outcome. A VMM error exits with 1.
    ///
    /// | status | meaning |
    /// |---|---|
    /// | 0 | guest requested stop (poweroff, reboot, panic with `panic=-1`) |
    /// | 1 | VMM error (bad config, KVM failure, emulation failure) |
    /// | 2 | guest triple fault (KVM_EXIT_SHUTDOWN) |
    /// | 3 | stopped by the host (SIGTERM, SIGINT, `StopHandle::stop`) |
    pub fn exit_code(self) -> i32 {
        match self {
            VmExit::GuestStop => 0,
            VmExit::TripleFault => 2,
            VmExit::HostStop => 3,
        }
    }
}

/// Exit status of `ark-vmm` when the VMM itself fails.
pub const EXIT_CODE_VMM_ERROR: i32 = 1;

/// The first reason to stop wins; later ones are ignored. `Err` is a VMM-side failure.
pub type ExitReason = Result<VmExit, crate::Error>;

/// Shared by vCPU threads, devices and the host: records why the VM stops and wakes the event
/// loop through an eventfd.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    stopping: AtomicBool,
    evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn request(&self, reason: ExitReason) {
        {
            let mut r = self.reason.lock().expect("exit lock");
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }

    /// Takes the recorded reason (errors are not `Clone`; the VM's builder takes it once, at
    /// the end). An eventfd write without a reason (a signal handler's) means the host asked
    /// for the stop.
    pub fn take_reason(&self) -> Option<ExitReason> {
        self.reason.lock().expect("exit lock").take()
    }

    /// Marks the VM as stopping after the eventfd fired (possibly from a signal handler).
    pub fn acknowledge(&self) {
        let _ = self.evt.read();
        let mut r = self.reason.lock().expect("exit lock");
        if r.is_none() {
            *r = Some(Ok(VmExit::HostStop));
        }
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

/// Requests an orderly stop of a running VM from any thread (vCPUs are kicked out of KVM_RUN,
/// devices dropped, `run` returns [`VmExit::HostStop`]). Cheap to clone. One handle per VM: once
/// stopped it stays stopped, and a stop requested before `run_with_stop` starts the VM ends it
/// as soon as it is built.
#[derive(Clone, Debug)]
pub struct StopHandle(pub(crate) Arc<ExitSignal>);

impl StopHandle {
    pub fn new() -> std::io::Result<Self> {
        Ok(StopHandle(Arc::new(ExitSignal::new()?)))
    }

    pub fn stop(&self) {
        self.0.request(Ok(VmExit::HostStop));
    }

    /// An eventfd whose write (8 bytes, any non-zero value) stops the VM: usable from a signal
    /// handler, where `stop` is not async-signal-safe. Valid while a clone of this handle lives.
    pub fn raw_fd(&self) -> RawFd {
        self.0.evt.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_bare_writes_mean_host_stop() {
        let s = ExitSignal::new().unwrap();
        s.request(Ok(VmExit::TripleFault));
        s.request(Ok(VmExit::GuestStop));
        assert!(matches!(s.take_reason(), Some(Ok(VmExit::TripleFault))));
        let t = ExitSignal::new().unwrap();
        t.event().write(1).unwrap();
        assert!(!t.stopping());
        t.acknowledge();
        assert!(t.stopping());
        assert!(matches!(t.take_reason(), Some(Ok(VmExit::HostStop))));
        assert_eq!(VmExit::GuestStop.exit_code(), 0);
        assert_eq!(VmExit::TripleFault.exit_code(), 2);
        assert_eq!(VmExit::HostStop.exit_code(), 3);
    }
}
