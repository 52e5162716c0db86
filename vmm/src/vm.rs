//! Builds a VM from a [`VmConfig`] and runs it until the guest or the host ends it.

use std::fs::OpenOptions;
use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemory as _, GuestMemoryRegion};
use vm_superio::Serial;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::{self, layout, regs};
use crate::bus::Bus;
use crate::config::{SerialConfig, VmConfig};
use crate::devices::legacy::{EventFdTrigger, InputReady, SerialInput, SerialPort, I8042};
use crate::exit::{ExitSignal, StopHandle, VmExit};
use crate::vcpu::{self, Vcpu};
use crate::virtio::mmio::{MmioInterrupt, MmioTransport, MMIO_WINDOW, REG_QUEUE_NOTIFY};
use crate::virtio::{GuestMemory, VirtioDevice};
use crate::Error;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

const COM1_PORT: u64 = 0x3f8;

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

/// Puts a terminal on stdin into raw mode (keeping ^C as a signal) and restores it on drop.
struct RawTerminal(Option<libc::termios>);
impl RawTerminal {
    fn new() -> Self {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr/tcsetattr only read/write it.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            t.c_lflag |= libc::ISIG;
            if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
                return RawTerminal(None);
            }
            RawTerminal(Some(saved))
        }
    }
}
impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe { libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &t) };
        }
    }
}

/// stdin is worth reading when it is a terminal or a pipe (not /dev/null or a file).
fn stdin_is_interactive() -> bool {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return true;
    }
    // SAFETY: fstat on a valid fd into plain data.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(stdin.as_raw_fd(), &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
    }
}

struct Builder {
    vm: VmFd,
    mem: GuestMemory,
    mmio: Bus,
    events: EventManager<Subscriber>,
    cmdline: Cmdline,
    virtio_count: usize,
}

impl Builder {
    /// Puts `dev` behind a virtio-mmio transport: ioeventfds, irqfd, bus window, event loop,
    /// and a `virtio_mmio.device=` command line entry.
    fn attach_virtio<D>(&mut self, dev: D) -> Result<(), Error>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let idx = self.virtio_count;
        let irq = *arch::DEVICE_IRQS
            .get(idx)
            .ok_or(Error::TooManyDevices(arch::DEVICE_IRQS.len()))?;
        let base = layout::VIRTIO_MMIO_START + idx as u64 * layout::VIRTIO_MMIO_SIZE;
        let queues = dev.queue_max_sizes().len();
        let dev = Arc::new(Mutex::new(dev));
        let mut queue_events = Vec::with_capacity(queues);
        for q in 0..queues {
            let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
            self.vm
                .register_ioevent(
                    &evt,
                    &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(|e| Error::Kvm("KVM_IOEVENTFD", e))?;
            queue_events.push(evt);
        }
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
        self.vm
            .register_irqfd(&irq_evt, irq)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        let transport = MmioTransport::new(
            dev.clone(),
            self.mem.clone(),
            Arc::new(MmioInterrupt::new(irq_evt)),
            queue_events,
        );
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW)?;
        self.events.add_subscriber(dev);
        self.cmdline
            .add_virtio_mmio_device(MMIO_WINDOW, GuestAddress(base), irq, None)?;
        self.virtio_count += 1;
        Ok(())
    }
}

fn create_vm(kvm: &Kvm) -> Result<VmFd, Error> {
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::KvmCapability(name));
        }
    }
    let vm = kvm
        .create_vm()
        .map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR", e))?;
    if let Err(e) = vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS) {
        tracing::debug!("KVM_SET_IDENTITY_MAP_ADDR: {e} (only needed on some hosts)");
    }
    Ok(vm)
}

/// The in-kernel PIC, IOAPIC, LAPICs and PIT. Created after guest memory: with an irqchip in
/// place every memslot change waits for an SRCU grace period, 5-10 ms per slot on some hosts.
fn create_irqchip(vm: &VmFd) -> Result<(), Error> {
    vm.create_irq_chip()
        .map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| Error::Kvm("KVM_CREATE_PIT2", e))
}

fn create_memory(vm: &VmFd, memory_mib: u32) -> Result<GuestMemory, Error> {
    let size = u64::from(memory_mib) << 20;
    let mem = GuestMemory::from_ranges(&arch::ram_ranges(size))
        .map_err(|e| Error::GuestMemory(memory_mib, e))?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM's vCPUs
        // (they are joined before `mem` is dropped).
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(mem)
}

/// Where serial or console output goes; a file that cannot be opened comes back with its path.
fn serial_output(cfg: &SerialConfig) -> Result<Box<dyn Write + Send>, (PathBuf, io::Error)> {
    Ok(match cfg {
        SerialConfig::Stdout => Box::new(io::stdout()),
        SerialConfig::None => Box::new(io::sink()),
        SerialConfig::File(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| (p.clone(), e))?,
        ),
    })
}

/// Builds and runs the VM described by `config` until it ends. See [`VmExit`].
pub fn run(config: VmConfig) -> Result<VmExit, Error> {
    let stop = StopHandle::new().map_err(|e| Error::Io("eventfd", e))?;
    run_with_stop(config, stop)
}

/// Like [`run`]; `stop` (or a clone of it kept by another thread) stops the VM in order.
pub fn run_with_stop(config: VmConfig, stop: StopHandle) -> Result<VmExit, Error> {
    config.validate().map_err(Error::Config)?;
    let exit = stop.0.clone();
    let kvm = Kvm::new().map_err(Error::KvmOpen)?;
    let vm = create_vm(&kvm)?;
    let mem = create_memory(&vm, config.memory_mib)?;
    create_irqchip(&vm)?;
    let mut pio = Bus::default();

    let cmdline = Cmdline::try_from(&config.cmdline, layout::CMDLINE_MAX_SIZE)?;
    let events = EventManager::<Subscriber>::new().map_err(Error::EventLoop)?;
    let mut b = Builder {
        vm,
        mem,
        mmio: Bus::default(),
        events,
        cmdline,
        virtio_count: 0,
    };
    b.events
        .add_subscriber(Arc::new(Mutex::new(ExitWatcher(exit.clone()))));

    // COM1, on IRQ 4.
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
    b.vm.register_irqfd(&serial_irq, arch::IRQ_COM1)
        .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
    let input_ready = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Io("eventfd", e))?;
    let serial = Arc::new(Mutex::new(SerialPort(Serial::with_events(
        EventFdTrigger(serial_irq),
        InputReady(
            input_ready
                .try_clone()
                .map_err(|e| Error::Io("eventfd", e))?,
        ),
        serial_output(&config.serial).map_err(|(path, source)| Error::Serial { path, source })?,
    ))));
    pio.insert(serial.clone(), COM1_PORT, 8)?;
    let interactive = config.serial == SerialConfig::Stdout && stdin_is_interactive();
    // Unbuffered reads from a duplicate of fd 0: std's Stdin buffers, which would hide input
    // from epoll and overfill the 64-byte receive FIFO.
    let stdin_dup = if interactive {
        Some(
            io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::Io("stdin", e))?,
        )
    } else {
        None
    };
    let _raw_terminal = stdin_dup.map(|fd| {
        let input_fd = fd.as_raw_fd();
        b.events
            .add_subscriber(Arc::new(Mutex::new(SerialInput::new(
                serial.clone(),
                Box::new(std::fs::File::from(fd)),
                input_fd,
                input_ready,
            ))));
        io::stdin().is_terminal().then(RawTerminal::new)
    });

    pio.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        I8042::PORT_BASE,
        I8042::PORT_LEN,
    )?;

    attach_devices(&mut b, &config)?;

    let mem_size = u64::from(config.memory_mib) << 20;
    arch::mptable::setup(&b.mem, config.vcpus)?;
    let entry = crate::boot::load_linux(
        &b.mem,
        &config.kernel,
        config.initrd.as_deref(),
        &b.cmdline,
        mem_size,
    )?;
    tracing::info!(
        "kernel entry {:#x} ({:?}), cmdline: {}",
        entry.entry.0,
        entry.protocol,
        b.cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    );

    let pio = Arc::new(pio);
    let mmio = Arc::new(std::mem::take(&mut b.mmio));
    let (seccomp, event_loop_filter) = if config.seccomp {
        crate::seccomp::install_violation_handler().map_err(Error::SeccompHandler)?;
        (
            Some(Arc::new(crate::seccomp::vcpu_filter()?)),
            Some(crate::seccomp::event_loop_filter()?),
        )
    } else {
        (None, None)
    };
    let probe = Arc::new(crate::poweroff::HaltProbe::new(usize::from(config.vcpus)));
    let host_kvm = arch::cpuid::HostKvm::detect();
    let mut vcpus = Vec::new();
    for id in 0..config.vcpus {
        let fd =
            b.vm.create_vcpu(u64::from(id))
                .map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        arch::cpuid::filter(&mut cpuid, id, config.vcpus, host_kvm);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| Error::Kvm("KVM_SET_CPUID2", e))?;
        regs::setup_msrs(&fd)?;
        regs::setup_fpu(&fd)?;
        regs::setup_lint(&fd)?;
        if id == 0 {
            regs::setup_sregs(&b.mem, &fd, entry.protocol)?;
            regs::setup_regs(&fd, entry.protocol, entry.entry.0, entry.boot_info.0)?;
        }
        vcpus.push(Vcpu {
            id,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            exit: exit.clone(),
            probe: probe.clone(),
            seccomp: seccomp.clone(),
        });
    }

    vcpu::register_kick_handler().map_err(|e| Error::Io("vCPU kick signal", e))?;
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

    // The loop runs on its own thread so that its seccomp filter (which cannot be lifted)
    // confines only the loop, not the caller: stage1-kvm keeps using its main thread after the
    // VM ends. Every device fd is open by now; the loop hands the devices back to be dropped
    // here, outside the filter.
    let mut events = b.events;
    match crate::poweroff::PowerOffWatch::new(probe, &handles, exit.clone(), vcpu::kick_signal()) {
        Ok(watch) => {
            events.add_subscriber(Arc::new(Mutex::new(watch)));
        }
        Err(e) => exit.request(Err(Error::PowerOffTimer(e))),
    }
    let loop_exit = exit.clone();
    let event_loop = std::thread::Builder::new()
        .name("event-loop".into())
        .spawn(move || {
            if let Some(filter) = &event_loop_filter {
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
    let devices = match event_loop {
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
    };
    vcpu::stop_all(handles);
    drop(devices);

    exit.take_reason().unwrap_or(Ok(VmExit::HostStop))
}

fn attach_devices(b: &mut Builder, config: &VmConfig) -> Result<(), Error> {
    use crate::devices;
    for blk in &config.blk {
        let dev = devices::block::Block::new(&blk.path, blk.read_only).map_err(|source| {
            Error::Block {
                path: blk.path.clone(),
                source,
            }
        })?;
        b.attach_virtio(dev)?;
    }
    for fs in &config.fs {
        let cache = if fs.shared {
            devices::fs::CacheMode::Shared
        } else {
            devices::fs::CacheMode::Exclusive
        };
        let dev = devices::fs::Fs::with_cache(&fs.tag, &fs.dir, fs.read_only, cache).map_err(
            |source| Error::Fs {
                tag: fs.tag.clone(),
                source,
            },
        )?;
        b.attach_virtio(dev)?;
    }
    if let Some(v) = &config.vsock {
        let dev = devices::vsock::Vsock::new(v.guest_cid, &v.uds_path)?;
        b.attach_virtio(dev)?;
    }
    if let Some(out) = &config.console {
        // stdin goes to the serial console when that is on stdout, else to this one.
        let input = if *out == SerialConfig::Stdout
            && config.serial != SerialConfig::Stdout
            && stdin_is_interactive()
        {
            Some(
                io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| Error::Io("stdin", e))?,
            )
        } else {
            None
        };
        let output =
            serial_output(out).map_err(|(path, source)| Error::ConsoleOutput { path, source })?;
        let dev = devices::console::Console::new(output, input)?;
        b.attach_virtio(dev)?;
    }
    if config.rng {
        let dev = devices::rng::Rng::new()?;
        b.attach_virtio(dev)?;
    }
    Ok(())
}
