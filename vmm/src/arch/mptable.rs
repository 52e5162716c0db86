//! Intel MultiProcessor Specification 1.4 table: tells a kernel without ACPI about the vCPUs,
//! the IOAPIC and how the ISA IRQs are wired. Written into the EBDA, where Linux scans for it.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} vCPUs do not fit the MP table's EBDA page")]
    TooManyCpus(u8),
    #[error("writing the MP table: {0}")]
    Memory(vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_PINS: u8 = 24;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;

/// Little-endian byte builder with the spec's checksum rule (all bytes sum to 0).
#[derive(Default)]
struct Buf(Vec<u8>);
impl Buf {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}
fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)))
}

/// The table bytes for `cpus` vCPUs, placed at `base`.
pub fn build(base: u64, cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus; // after the LAPIC IDs
    let mut entries = Buf::default();
    let mut count = 0u16;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 };
        // Processor entry: type 0; signature/features copied from family 6 as firmware does.
        entries
            .u8(0)
            .u8(cpu)
            .u8(APIC_VERSION)
            .u8(flags)
            .u32(0x600)
            .u32(0x201)
            .u32(0)
            .u32(0);
        count += 1;
    }
    // Bus 0: ISA.
    entries.u8(1).u8(0).bytes(b"ISA   ");
    count += 1;
    // The IOAPIC.
    entries
        .u8(2)
        .u8(ioapic_id)
        .u8(IOAPIC_VERSION)
        .u8(1)
        .u32(u32::try_from(IOAPIC_ADDR).expect("the IOAPIC is below 4 GiB"));
    count += 1;
    // ISA IRQ n → IOAPIC pin n (IRQ 0 → pin 2 as on PCs would need an override; the in-kernel
    // irqchip routes GSI n to pin n, so keep it 1:1). Type 3 = I/O interrupt, INT, conforming.
    for irq in 0..IOAPIC_PINS {
        entries
            .u8(3)
            .u8(0)
            .u16(0)
            .u8(0)
            .u8(irq)
            .u8(ioapic_id)
            .u8(irq);
        count += 1;
    }
    // Local interrupts: LINT0 ExtINT, LINT1 NMI, to all LAPICs.
    entries.u8(4).u8(3).u16(0).u8(0).u8(0).u8(0xff).u8(0);
    entries.u8(4).u8(1).u16(0).u8(0).u8(0).u8(0xff).u8(1);
    count += 2;

    let fps_len = 16u32;
    let table_addr = base + u64::from(fps_len);
    let mut header = Buf::default();
    // At most 255 CPUs and 24 pins of 8-20 byte entries: far below 64 KiB.
    let total_len = 44 + u16::try_from(entries.0.len()).expect("MP table entries fit in 64 KiB");
    header
        .bytes(b"PCMP")
        .u16(total_len)
        .u8(4) // spec revision 1.4
        .u8(0) // checksum, set below
        .bytes(b"ARK     ")
        .bytes(b"ARK-VMM     ")
        .u32(0)
        .u16(0)
        .u16(count)
        .u32(u32::try_from(APIC_ADDR).expect("the LAPIC is below 4 GiB"))
        .u16(0)
        .u8(0)
        .u8(0);
    let mut table = header.0;
    table.extend_from_slice(&entries.0);
    table[7] = checksum(&table);

    let mut fps = Buf::default();
    fps.bytes(b"_MP_")
        .u32(u32::try_from(table_addr).expect("the MP table is in low memory"))
        .u8(1)
        .u8(4)
        .u8(0)
        .u8(0)
        .u32(0);
    let mut out = fps.0;
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    out
}

/// Writes the MP table for `cpus` vCPUs into the EBDA.
pub fn setup<M: GuestMemory>(mem: &M, cpus: u8) -> Result<(), Error> {
    let table = build(EBDA_START, cpus);
    if EBDA_START + table.len() as u64 > 0xa0000 {
        return Err(Error::TooManyCpus(cpus));
    }
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(Error::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        let t = build(EBDA_START, 4);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        // Fits the EBDA for the largest supported vCPU count.
        assert!(build(EBDA_START, crate::config::MAX_VCPUS).len() <= 0x400);
    }
}
