//! x86_64 platform: guest physical layout, boot-time CPU state, CPUID, MP table.

pub mod cpuid;
pub mod mptable;
pub mod regs;

use vm_memory::GuestAddress;

/// Guest physical memory map (what goes where below 1 MiB follows Firecracker's choices).
pub mod layout {
    /// Boot GDT and (empty) IDT.
    pub const BOOT_GDT_START: u64 = 0x500;
    pub const BOOT_IDT_START: u64 = 0x520;
    /// PVH `hvm_start_info`, then its memory map and module list.
    pub const PVH_INFO_START: u64 = 0x6000;
    pub const PVH_MODLIST_START: u64 = 0x6040;
    pub const PVH_MEMMAP_START: u64 = 0x6100;
    /// Linux zero page (`boot_params`).
    pub const ZERO_PAGE_START: u64 = 0x7000;
    /// Initial stack for the boot CPU (grows down, below the page tables).
    pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
    /// Identity-mapping page tables for 64-bit entry.
    pub const PML4_START: u64 = 0x9000;
    pub const PDPTE_START: u64 = 0xa000;
    pub const PDE_START: u64 = 0xb000;
    /// Kernel command line.
    pub const CMDLINE_START: u64 = 0x20000;
    /// x86 COMMAND_LINE_SIZE.
    pub const CMDLINE_MAX_SIZE: usize = 2048;
    /// Extended BIOS data area: the MP table lives here, where Linux scans for it.
    pub const EBDA_START: u64 = 0x9fc00;
    /// Start of the kernel and of "high" memory.
    pub const HIMEM_START: u64 = 0x10_0000;
    /// The MMIO hole: virtio-mmio devices, the IOAPIC and the LAPIC live here; no RAM.
    pub const MMIO_HOLE_START: u64 = 0xd000_0000;
    pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
    /// virtio-mmio windows, one 4 KiB page each, from the start of the hole.
    pub const VIRTIO_MMIO_START: u64 = MMIO_HOLE_START;
    pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
    pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
    pub const APIC_ADDR: u64 = 0xfee0_0000;
    /// KVM's TSS and identity map pages (needed on Intel, harmless elsewhere), in the hole.
    pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
    pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
}

/// Legacy IRQ lines devices may use. 4 is COM1; 0, 1, 2, 8 are timer, keyboard, cascade, RTC.
pub const IRQ_COM1: u32 = 4;
pub const DEVICE_IRQS: &[u32] = &[5, 6, 7, 9, 10, 11, 12, 13, 14, 15];

/// Guest RAM ranges for `mem_size` bytes: below the MMIO hole first, the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(layout::MMIO_HOLE_START);
    // usize is 64 bits on x86_64, the only target the VMM builds for.
    let to_len = |n: u64| usize::try_from(n).expect("usize is 64 bits on x86_64");
    let mut ranges = vec![(GuestAddress(0), to_len(low))];
    if mem_size > low {
        ranges.push((GuestAddress(layout::MMIO_HOLE_END), to_len(mem_size - low)));
    }
    ranges
}

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// The e820 map: base RAM up to the EBDA, then RAM from 1 MiB, skipping the MMIO hole.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, layout::EBDA_START, E820_RAM),
        (
            layout::EBDA_START,
            0x10_0000 - layout::EBDA_START,
            E820_RESERVED,
        ),
    ];
    for (start, len) in ram_ranges(mem_size) {
        let (start, len) = (start.0, len as u64);
        if start == 0 {
            map.push((layout::HIMEM_START, len - layout::HIMEM_START, E820_RAM));
        } else {
            map.push((start, len, E820_RAM));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_split_around_the_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), 0xd000_0000));
        assert_eq!(r[1], (GuestAddress(1 << 32), (4 << 30) - 0xd000_0000));
        let e = e820_map(4 << 30);
        assert_eq!(e.last().unwrap().0, 1 << 32);
        // No RAM entry overlaps the hole.
        for (s, l, t) in e {
            if t == E820_RAM {
                assert!(s + l <= layout::MMIO_HOLE_START || s >= layout::MMIO_HOLE_END);
            }
        }
    }
}
