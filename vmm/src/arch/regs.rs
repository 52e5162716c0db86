//! Boot-time register state: 64-bit long mode (Linux boot protocol) or 32-bit protected mode
//! without paging (PVH), plus FPU, MSRs and LAPIC LINT pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use super::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("writing boot tables to guest memory: {0}")]
    Memory(vm_memory::GuestMemoryError),
}
type Result<T> = std::result::Result<T, Error>;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// 64-bit entry with `rsi` = zero page (Linux x86 boot protocol).
    Linux64,
    /// 32-bit flat protected mode, paging off, `ebx` = `hvm_start_info` (PVH).
    Pvh,
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from flags, base and limit (the packed x86 format).
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The KVM segment a GDT entry at `index` describes.
fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let limit_raw =
        u32::try_from(((entry >> 32) & 0x000f_0000) | (entry & 0xffff)).expect("masked to 20 bits");
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(((entry >> 47) & 1) == 0),
    }
}

/// Sets the special registers for `protocol`; writes the GDT, IDT and (64-bit) page tables.
pub fn setup_sregs<M: GuestMemory>(mem: &M, vcpu: &VcpuFd, protocol: BootProtocol) -> Result<()> {
    let mut sregs: kvm_sregs = vcpu
        .get_sregs()
        .map_err(|e| Error::Kvm("KVM_GET_SREGS", e))?;
    let code = match protocol {
        BootProtocol::Linux64 => 0xa09b, // 64-bit code, present, exec/read, accessed
        BootProtocol::Pvh => 0xc09b,     // 32-bit code, 4 KiB granularity
    };
    let gdt = [
        gdt_entry(0, 0, 0),
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff), // data, read/write, accessed
        gdt_entry(0x808b, 0, 0xfffff), // TSS, busy
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(Error::Memory)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(Error::Memory)?;

    let code_seg = segment_from_gdt(gdt[1], 1);
    let data_seg = segment_from_gdt(gdt[2], 2);
    let tss_seg = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit =
        u16::try_from(std::mem::size_of_val(&gdt) - 1).expect("a 4-entry GDT is 32 bytes");
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code_seg;
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = tss_seg;

    match protocol {
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            // Identity-map the first 1 GiB with 2 MiB pages: enough for the kernel's own
            // early page tables to take over.
            mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
                .map_err(Error::Memory)?;
            mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
                .map_err(Error::Memory)?;
            for i in 0..512u64 {
                mem.write_obj(
                    (i << 21) | 0x83,
                    GuestAddress(PDE_START).unchecked_add(i * 8),
                )
                .map_err(Error::Memory)?;
            }
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| Error::Kvm("KVM_SET_SREGS", e))
}

/// General registers at the kernel entry point.
pub fn setup_regs(vcpu: &VcpuFd, protocol: BootProtocol, entry: u64, boot_info: u64) -> Result<()> {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved-as-one
        rip: entry,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = boot_info;
        }
        BootProtocol::Pvh => regs.rbx = boot_info,
    }
    vcpu.set_regs(&regs)
        .map_err(|e| Error::Kvm("KVM_SET_REGS", e))
}

/// The x87/SSE state a CPU has after reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| Error::Kvm("KVM_SET_FPU", e))
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Boot MSRs: syscall MSRs cleared, fast strings on, MTRRs enabled with write-back default.
/// Returns how many of them KVM accepted (some hosts refuse some; that is logged, not fatal).
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<usize> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, 1),
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ];
    let msrs = Msrs::from_entries(&entries).expect("a handful of MSRs fits a FamStruct");
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| Error::Kvm("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        tracing::warn!(
            "KVM accepted {set} of {} boot MSRs (first refused: {:#x})",
            entries.len(),
            entries[set].index
        );
    }
    Ok(set)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// LINT0 as ExtINT (the 8259 PIC reaches the CPU through it), LINT1 as NMI: what firmware does.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| Error::Kvm("KVM_GET_LAPIC", e))?;
    let set = |regs: &mut [std::os::raw::c_char; 1024], off: usize, mode: u32| {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = regs[off + i].cast_unsigned();
        }
        let v = u32::from_le_bytes(b);
        let v = (v & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            regs[off + i] = x.cast_signed();
        }
    };
    set(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(|e| Error::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code64 = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(code64.l, 1);
        assert_eq!(code64.db, 0);
        assert_eq!(code64.limit, 0xffff_ffff);
        assert_eq!(code64.selector, 8);
        assert_eq!(code64.present, 1);
        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!(data.type_, 3);
        assert_eq!(data.selector, 16);
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }
}
