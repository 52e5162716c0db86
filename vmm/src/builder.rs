//! Builds a machine from a [`VmConfig`] (Firecracker's `builder.rs`): KVM, guest memory, the
//! in-kernel irqchip, the devices (through [`DeviceManager`]), the kernel, and the vCPUs, ready
//! for [`crate::vm`] to run.

use std::sync::Arc;

use event_manager::EventManager;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use seccompiler::BpfProgram;
use vm_memory::{GuestMemory as _, GuestMemoryRegion};

use crate::arch::{self, layout, regs};
use crate::boot::KernelEntry;
use crate::bus::Bus;
use crate::config::VmConfig;
use crate::device_manager::{DeviceManager, Subscriber};
use crate::exit::ExitSignal;
use crate::poweroff::HaltProbe;
use crate::stdin::{RawTerminal, StdinTarget};
use crate::vcpu::Vcpu;
use crate::virtio::GuestMemory;
use crate::Error;

/// A built machine, not yet running.
pub(crate) struct Machine {
    pub vcpus: Vec<Vcpu>,
    /// Every device's subscription, for the event loop.
    pub events: EventManager<Subscriber>,
    /// The event loop's seccomp filter (`None` with seccomp off).
    pub event_loop_filter: Option<BpfProgram>,
    pub probe: Arc<HaltProbe>,
    /// Restores a terminal on stdin when the machine is dropped.
    pub raw_terminal: Option<RawTerminal>,
    /// Kept until the vCPUs are joined: they run in this VM and this memory.
    pub vm: VmFd,
    pub mem: GuestMemory,
}

/// Builds the machine `config` describes. `exit` is where every part reports a stop.
pub(crate) fn build(config: &VmConfig, exit: &Arc<ExitSignal>) -> Result<Machine, Error> {
    config.validate().map_err(Error::Config)?;
    let kvm = Kvm::new().map_err(Error::KvmOpen)?;
    let vm = create_vm(&kvm)?;
    // Memory before the irqchip: see `create_irqchip`.
    let mem = create_memory(&vm, config.memory_mib)?;
    create_irqchip(&vm)?;

    let cmdline = Cmdline::try_from(&config.cmdline, layout::CMDLINE_MAX_SIZE)?;
    let mut devices = DeviceManager::new(cmdline)?;
    devices.add_subscriber(crate::vm::exit_watcher(exit));
    let stdin = StdinTarget::for_config(config);
    let raw_terminal = devices.attach_serial(&vm, &config.serial, stdin)?;
    devices.attach_i8042(exit)?;
    devices.attach_virtio_devices(&vm, &mem, config, stdin)?;

    let entry = load_kernel(&mem, config, &devices.cmdline)?;
    let (vcpu_filter, event_loop_filter) = seccomp_filters(config)?;
    let probe = Arc::new(HaltProbe::new(usize::from(config.vcpus)));
    let vcpus = create_vcpus(
        &kvm,
        &vm,
        &mem,
        config.vcpus,
        &entry,
        VcpuShared {
            pio: Arc::new(std::mem::take(&mut devices.pio)),
            mmio: Arc::new(std::mem::take(&mut devices.mmio)),
            exit: exit.clone(),
            probe: probe.clone(),
            seccomp: vcpu_filter,
        },
    )?;
    Ok(Machine {
        vcpus,
        events: devices.events,
        event_loop_filter,
        probe,
        raw_terminal,
        vm,
        mem,
    })
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
    vm.set_tss_address(
        usize::try_from(layout::KVM_TSS_ADDRESS).expect("usize is 64 bits on x86_64"),
    )
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
            slot: u32::try_from(slot).expect("a few memory regions"),
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

/// The MP table, then the kernel, initrd and command line (with every device's entry).
fn load_kernel(
    mem: &GuestMemory,
    config: &VmConfig,
    cmdline: &Cmdline,
) -> Result<KernelEntry, Error> {
    let mem_size = u64::from(config.memory_mib) << 20;
    arch::mptable::setup(mem, config.vcpus)?;
    let entry = crate::boot::load_linux(
        mem,
        &config.kernel,
        config.initrd.as_deref(),
        cmdline,
        mem_size,
    )?;
    tracing::info!(
        "kernel entry {:#x} ({:?}), cmdline: {}",
        entry.entry.0,
        entry.protocol,
        cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    Ok(entry)
}

/// The vCPU and event-loop filters, and the SIGSYS handler that reports violations.
fn seccomp_filters(
    config: &VmConfig,
) -> Result<(Option<Arc<BpfProgram>>, Option<BpfProgram>), Error> {
    if !config.seccomp {
        return Ok((None, None));
    }
    crate::seccomp::install_violation_handler().map_err(Error::SeccompHandler)?;
    Ok((
        Some(Arc::new(crate::seccomp::vcpu_filter()?)),
        Some(crate::seccomp::event_loop_filter()?),
    ))
}

/// What every vCPU thread shares.
struct VcpuShared {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    probe: Arc<HaltProbe>,
    seccomp: Option<Arc<BpfProgram>>,
}

/// One vCPU per `count`: CPUID, MSRs, FPU, LAPIC; vCPU 0 also gets the boot registers.
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemory,
    count: u8,
    entry: &KernelEntry,
    shared: VcpuShared,
) -> Result<Vec<Vcpu>, Error> {
    let host_kvm = arch::cpuid::HostKvm::detect();
    let mut vcpus = Vec::new();
    for id in 0..count {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        arch::cpuid::filter(&mut cpuid, id, count, host_kvm);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| Error::Kvm("KVM_SET_CPUID2", e))?;
        regs::setup_msrs(&fd)?;
        regs::setup_fpu(&fd)?;
        regs::setup_lint(&fd)?;
        if id == 0 {
            regs::setup_sregs(mem, &fd, entry.protocol)?;
            regs::setup_regs(&fd, entry.protocol, entry.entry.0, entry.boot_info.0)?;
        }
        vcpus.push(Vcpu {
            id,
            fd,
            pio: shared.pio.clone(),
            mmio: shared.mmio.clone(),
            exit: shared.exit.clone(),
            probe: shared.probe.clone(),
            seccomp: shared.seccomp.clone(),
        });
    }
    Ok(vcpus)
}
