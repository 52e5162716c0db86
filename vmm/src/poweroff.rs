//! Guest power-off without ACPI.
//!
//! Linux with no power-off driver (no ACPI, as in a microVM) turns `poweroff` into a halt
//! (kernel/reboot.c): every CPU runs `stop_this_cpu` and ends in `hlt` with interrupts off,
//! which only an NMI or INIT could wake, and the VMM injects neither. With the in-kernel irqchip
//! KVM keeps such a vCPU blocked inside KVM_RUN, so no exit ever reports it. [`PowerOffWatch`]
//! kicks the vCPUs every [`PROBE_INTERVAL`]; each reports its state through [`HaltProbe`], and
//! when every vCPU is stopped (halted with IF=0, or never started by the guest) in
//! [`CONFIRMING_ROUNDS`] rounds in a row the guest has powered off.
//!
//! An idle guest halts with interrupts on (`sti; hlt`), so it is never taken for powered off;
//! the repeated rounds cover a vCPU caught between halting and an NMI another vCPU just sent.

use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_bindings::{KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::exit::{ExitSignal, VmExit};

/// How often the vCPUs are probed while the guest runs.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Consecutive rounds that must find every vCPU stopped.
pub const CONFIRMING_ROUNDS: u32 = 2;

const X86_EFLAGS_IF: u64 = 1 << 9;

/// What a probed vCPU was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum VcpuActivity {
    /// Running, or halted with interrupts on (idle): the guest is alive.
    Running = 0,
    /// Halted with interrupts off: stopped for good.
    Halted = 1,
    /// Waiting for INIT/SIPI: an AP the guest never started (or parked again).
    NotStarted = 2,
}

impl VcpuActivity {
    /// Reads a vCPU's state. Only valid while its thread is outside KVM_RUN (the vCPU thread
    /// calls this itself after a kick). An ioctl failure counts as running: never stop a guest
    /// on a guess.
    pub fn of(fd: &VcpuFd) -> Self {
        match fd.get_mp_state().map(|s| s.mp_state) {
            Ok(KVM_MP_STATE_HALTED) => match fd.get_regs() {
                Ok(regs) if regs.rflags & X86_EFLAGS_IF == 0 => VcpuActivity::Halted,
                _ => VcpuActivity::Running,
            },
            Ok(KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED) => VcpuActivity::NotStarted,
            _ => VcpuActivity::Running,
        }
    }
}

/// Probe rounds shared by the watch (which starts them) and the vCPU threads (which answer).
/// Each report is `round << 2 | activity`, so a late answer to an old round never counts.
#[derive(Debug)]
pub struct HaltProbe {
    round: AtomicU64,
    reports: Vec<AtomicU64>,
}

impl HaltProbe {
    pub fn new(vcpus: usize) -> Self {
        HaltProbe {
            round: AtomicU64::new(0),
            // Round 0 is never probed: its reports read as "running".
            reports: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// vCPU `id` answers the current round.
    pub fn report(&self, id: usize, activity: VcpuActivity) {
        let round = self.round.load(Ordering::SeqCst);
        if let Some(slot) = self.reports.get(id) {
            slot.store(round << 2 | activity as u64, Ordering::SeqCst);
        }
    }

    /// Ends the current round and starts the next: true when every vCPU answered this round
    /// and all are stopped, at least one of them halted (a guest whose every vCPU waits for
    /// SIPI has not run at all).
    pub fn end_round(&self) -> bool {
        let round = self.round.fetch_add(1, Ordering::SeqCst);
        let mut halted = false;
        for slot in &self.reports {
            let r = slot.load(Ordering::SeqCst);
            if r >> 2 != round {
                return false;
            }
            match r & 3 {
                x if x == VcpuActivity::Halted as u64 => halted = true,
                x if x == VcpuActivity::NotStarted as u64 => {}
                _ => return false,
            }
        }
        halted
    }
}

/// The event-loop side: a periodic timer that ends a probe round and kicks every vCPU for the
/// next one, and ends the VM ([`VmExit::GuestStop`]) once the guest has powered off.
#[derive(Debug)]
pub struct PowerOffWatch {
    timer: TimerFd,
    probe: Arc<HaltProbe>,
    /// The vCPU threads. They only end once the VM is stopping, and the watch never kicks then.
    vcpus: Vec<libc::pthread_t>,
    exit: Arc<ExitSignal>,
    kick_signal: i32,
    stopped_rounds: u32,
}

impl PowerOffWatch {
    pub fn new(
        probe: Arc<HaltProbe>,
        vcpus: &[JoinHandle<()>],
        exit: Arc<ExitSignal>,
        kick_signal: i32,
    ) -> std::io::Result<Self> {
        let mut timer = TimerFd::new().map_err(std::io::Error::from)?;
        timer
            .reset(PROBE_INTERVAL, Some(PROBE_INTERVAL))
            .map_err(std::io::Error::from)?;
        Ok(PowerOffWatch {
            timer,
            probe,
            vcpus: vcpus.iter().map(|h| h.as_pthread_t()).collect(),
            exit,
            kick_signal,
            stopped_rounds: 0,
        })
    }

    fn tick(&mut self) {
        if self.exit.stopping() {
            return;
        }
        if self.probe.end_round() {
            self.stopped_rounds += 1;
        } else {
            self.stopped_rounds = 0;
        }
        if self.stopped_rounds >= CONFIRMING_ROUNDS {
            tracing::info!("every vCPU halted with interrupts off: the guest powered off");
            self.exit.request(Ok(VmExit::GuestStop));
            return;
        }
        for &thread in &self.vcpus {
            // SAFETY: `thread` is a vCPU thread that has not been joined (they are joined only
            // after the event loop ends); a thread that already returned is still a valid
            // target until then (pthread_kill reports ESRCH or nothing).
            unsafe { libc::pthread_kill(thread, self.kick_signal) };
        }
    }
}

impl MutEventSubscriber for PowerOffWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            self.exit.request(Err(crate::Error::PowerOffRegister(e)));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.timer.as_raw_fd() {
            // A periodic timer read after epoll reported it: never blocks.
            let _ = self.timer.wait();
            self.tick();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_counts_only_when_every_vcpu_answered_it_stopped() {
        let p = HaltProbe::new(2);
        // Round 0: nobody answered.
        assert!(!p.end_round());
        p.report(0, VcpuActivity::Halted);
        p.report(1, VcpuActivity::NotStarted);
        assert!(p.end_round(), "halted BSP + never-started AP = powered off");
        // Round 2: only vCPU 0 answered; vCPU 1's answer is from round 1.
        p.report(0, VcpuActivity::Halted);
        assert!(!p.end_round());
        p.report(0, VcpuActivity::Halted);
        p.report(1, VcpuActivity::Running);
        assert!(!p.end_round(), "one running vCPU keeps the guest alive");
        p.report(0, VcpuActivity::NotStarted);
        p.report(1, VcpuActivity::NotStarted);
        assert!(!p.end_round(), "no vCPU ever halted: not a power-off");
        p.report(0, VcpuActivity::Halted);
        p.report(1, VcpuActivity::Halted);
        assert!(p.end_round());
        // Out-of-range ids are ignored, not a panic on a guest-independent path.
        p.report(7, VcpuActivity::Halted);
    }
}
