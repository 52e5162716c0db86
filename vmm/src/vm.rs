//! Runs a built machine ([`crate::builder`]) until the guest or the host ends it: vCPU threads,
//! the event loop on its own thread, then an orderly stop.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use seccompiler::BpfProgram;
use vmm_sys_util::epoll::EventSet;

use crate::builder::{self, Machine};
use crate::config::VmConfig;
use crate::device_manager::Subscriber;
use crate::exit::{ExitReason, ExitSignal, StopHandle, VmExit};
use crate::vcpu::{self, Vcpu};
use crate::Error;

/// Builds and runs the VM described by `config` until it ends. See [`VmExit`].
pub fn run(config: VmConfig) -> Result<VmExit, Error> {
    let stop = StopHandle::new().map_err(|e| Error::Io("eventfd", e))?;
    run_with_stop(config, stop)
}

/// Like [`run`]; `stop` (or a clone of it kept by another thread) stops the VM in order.
pub fn run_with_stop(config: VmConfig, stop: StopHandle) -> Result<VmExit, Error> {
    let exit = stop.0.clone();
    let machine = builder::build(&config, &exit)?;
    machine.run(&exit)
}

/// Wakes the event loop when the VM must stop.
struct ExitWatcher(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            self.0.request(Err(Error::EventLoop(e)));
        }
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.0.acknowledge();
    }
}

/// The event loop's first subscriber: a stop requested anywhere ends the loop.
pub(crate) fn exit_watcher(exit: &Arc<ExitSignal>) -> Subscriber {
    Arc::new(Mutex::new(ExitWatcher(exit.clone())))
}

impl Machine {
    /// Starts the vCPUs and serves the event loop until a stop is requested, then joins every
    /// thread and drops the devices. A thread that fails reports to `exit` and so stops the VM.
    fn run(self, exit: &Arc<ExitSignal>) -> ExitReason {
        let Machine {
            vcpus,
            mut events,
            event_loop_filter,
            probe,
            raw_terminal,
            vm,
            mem,
        } = self;
        vcpu::register_kick_handler().map_err(|e| Error::Io("vCPU kick signal", e))?;
        let handles = spawn_vcpus(vcpus, exit);
        match crate::poweroff::PowerOffWatch::new(
            probe,
            &handles,
            exit.clone(),
            vcpu::kick_signal(),
        ) {
            Ok(watch) => {
                events.add_subscriber(Arc::new(Mutex::new(watch)));
            }
            Err(e) => exit.request(Err(Error::PowerOffTimer(e))),
        }
        let devices = serve_event_loop(events, event_loop_filter, exit);
        vcpu::stop_all(handles);
        drop(devices);
        // Only now that no vCPU runs in them.
        drop((vm, mem));
        drop(raw_terminal);
        exit.take_reason().unwrap_or(Ok(VmExit::HostStop))
    }
}

/// Starts one thread per vCPU; a failed spawn stops the VM (the ones started are returned to
/// be joined).
fn spawn_vcpus(vcpus: Vec<Vcpu>, exit: &ExitSignal) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for v in vcpus {
        match v.spawn() {
            Ok(h) => handles.push(h),
            Err(e) => {
                exit.request(Err(Error::SpawnVcpu(e)));
                break;
            }
        }
    }
    handles
}

/// Runs the event loop on its own thread until the VM stops, and returns it with its devices.
///
/// Its own thread so that its seccomp filter (which cannot be lifted) confines only the loop,
/// not the caller: stage1-kvm keeps using its main thread after the VM ends. Every device fd is
/// open by now; the loop hands the devices back to be dropped by the caller, outside the filter.
fn serve_event_loop(
    mut events: EventManager<Subscriber>,
    filter: Option<BpfProgram>,
    exit: &Arc<ExitSignal>,
) -> Option<EventManager<Subscriber>> {
    let loop_exit = exit.clone();
    let event_loop = std::thread::Builder::new()
        .name("event-loop".into())
        .spawn(move || {
            if let Some(filter) = &filter {
                if let Err(e) = crate::seccomp::apply(filter) {
                    loop_exit.request(Err(Error::EventLoopSeccomp(e)));
                }
            }
            while !loop_exit.stopping() {
                if let Err(e) = events.run() {
                    loop_exit.request(Err(Error::EventLoop(e)));
                }
            }
            events
        });
    match event_loop {
        Ok(h) => match h.join() {
            Ok(events) => Some(events),
            Err(_) => {
                exit.request(Err(Error::EventLoopPanicked));
                None
            }
        },
        Err(e) => {
            exit.request(Err(Error::SpawnEventLoop(e)));
            None
        }
    }
}
