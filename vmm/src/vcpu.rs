//! vCPU threads: run KVM_RUN, dispatch port I/O and MMIO exits to the buses, report how the
//! guest ended. The host stops them with a signal plus `immediate_exit` (no polling); the same
//! kick makes a vCPU report its state to the power-off watch ([`crate::poweroff`]).

use std::cell::Cell;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::exit::{ExitSignal, VmExit};
use crate::poweroff::{HaltProbe, VcpuActivity};
use crate::Error;

thread_local! {
    /// This thread's kvm_run page, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's mapped kvm_run page, valid while the vCPU
            // thread runs; immediate_exit is a plain byte KVM reads on the next KVM_RUN.
            unsafe { (*run).immediate_exit = 1 };
        }
    });
}

/// Installs the kick handler (process-wide, idempotent).
pub fn register_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), kick_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

#[derive(Debug)]
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    /// Answered after every kick, for the power-off watch.
    pub probe: Arc<HaltProbe>,
    /// seccomp filter the thread applies to itself before its first KVM_RUN.
    pub seccomp: Option<Arc<seccompiler::BpfProgram>>,
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

impl Vcpu {
    pub fn spawn(mut self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || {
                // A panic (say, a poisoned device lock) must end the VM, not leave it hanging.
                let exit = self.exit.clone();
                let id = self.id;
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_loop()))
                    .is_err()
                {
                    exit.request(Err(Error::VcpuPanicked(id)));
                }
            })
    }

    fn run_loop(&mut self) {
        KVM_RUN.with(|p| p.set(self.fd.get_kvm_run() as *mut kvm_run));
        if let Some(filter) = &self.seccomp {
            if let Err(e) = crate::seccomp::apply(filter) {
                self.exit.request(Err(Error::VcpuSeccomp {
                    id: self.id,
                    source: e,
                }));
            }
        }
        let mut first_exit = self.id == 0;
        while !self.exit.stopping() {
            match self.fd.run() {
                Ok(exit) => {
                    if first_exit {
                        // For bench/vmm.sh: process start to the guest's first instruction
                        // (its first exit), against a timestamp the launcher took.
                        first_exit = false;
                        tracing::info!(
                            "vcpu0: first guest exit at CLOCK_MONOTONIC {} ns",
                            monotonic_ns()
                        );
                    }
                    if let Some(reason) = handle_exit(self.id, exit, &self.pio, &self.mmio) {
                        self.exit.request(reason);
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    if !self.exit.stopping() {
                        self.probe
                            .report(usize::from(self.id), VcpuActivity::of(&self.fd));
                    }
                }
                Err(e) => self.exit.request(Err(Error::KvmRun {
                    id: self.id,
                    source: e,
                })),
            }
        }
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }
}

pub fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // CLOCK_MONOTONIC is never negative.
    let non_negative = |n: i64| u128::try_from(n).unwrap_or(0);
    non_negative(ts.tv_sec) * 1_000_000_000 + non_negative(ts.tv_nsec)
}

/// Handles one exit; `Some` when the VM must stop.
fn handle_exit(
    id: u8,
    exit: VcpuExit<'_>,
    pio: &Bus,
    mmio: &Bus,
) -> Option<crate::exit::ExitReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                data.fill(0xff); // nothing there: a floating bus
            }
        }
        VcpuExit::IoOut(port, data) => {
            pio.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            mmio.write(addr, data);
        }
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => {}
        VcpuExit::Shutdown => return Some(Ok(VmExit::TripleFault)),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => {
                return Some(Ok(VmExit::GuestStop))
            }
            KVM_SYSTEM_EVENT_CRASH => return Some(Ok(VmExit::GuestStop)),
            other => tracing::warn!("vcpu{id}: ignoring system event {other}"),
        },
        VcpuExit::FailEntry(reason, cpu) => {
            return Some(Err(Error::KvmEntryFailed { id, reason, cpu }))
        }
        VcpuExit::InternalError => return Some(Err(Error::KvmInternal(id))),
        other => {
            return Some(Err(Error::UnexpectedExit {
                id,
                exit: format!("{other:?}"),
            }));
        }
    }
    None
}

/// Kicks every vCPU thread until it has left KVM_RUN, then joins it.
pub fn stop_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        while !h.is_finished() {
            let _ = h.kill(kick_signal());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = h.join();
    }
}
