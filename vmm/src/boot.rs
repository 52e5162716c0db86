//! Loading Linux: kernel (ELF vmlinux or bzImage) through linux-loader, optional initramfs,
//! command line, and the boot information the kernel reads (`boot_params` or PVH start info).

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryRegion};

use crate::arch::layout::*;
use crate::arch::regs::BootProtocol;
use crate::arch::{e820_map, E820_RAM};
use crate::virtio::GuestMemory as Mem;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kernel {0}: {1}")]
    KernelFile(String, std::io::Error),
    #[error("kernel {0}: not an ELF or bzImage")]
    KernelFormat(String),
    #[error("kernel {0}: {1}")]
    KernelLoad(String, loader::Error),
    #[error("initrd {0}: {1}")]
    Initrd(String, String),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("writing boot information: {0}")]
    Memory(vm_memory::GuestMemoryError),
}
type Result<T> = std::result::Result<T, Error>;

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    pub protocol: BootProtocol,
    pub entry: GuestAddress,
    /// `boot_params` (Linux64) or `hvm_start_info` (PVH) address, for `rsi` / `ebx`.
    pub boot_info: GuestAddress,
}

struct Loaded {
    protocol: BootProtocol,
    entry: GuestAddress,
    kernel_end: u64,
    setup_header: Option<setup_header>,
}

fn load_kernel(mem: &Mem, path: &Path) -> Result<Loaded> {
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|e| Error::KernelFile(name.clone(), e))?;
    let himem = Some(GuestAddress(HIMEM_START));
    match Elf::load(mem, None, &mut f, himem) {
        Ok(r) => {
            let (protocol, entry) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (BootProtocol::Pvh, addr),
                _ => (BootProtocol::Linux64, r.kernel_load),
            };
            return Ok(Loaded {
                protocol,
                entry,
                kernel_end: r.kernel_end,
                setup_header: None,
            });
        }
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {}
        Err(e) => return Err(Error::KernelLoad(name, e)),
    }
    match BzImage::load(mem, None, &mut f, himem) {
        Ok(r) => Ok(Loaded {
            protocol: BootProtocol::Linux64,
            // The 64-bit entry point sits 0x200 past the start of the protected-mode kernel.
            entry: r.kernel_load.unchecked_add(0x200),
            kernel_end: r.kernel_end,
            setup_header: r.setup_header,
        }),
        Err(loader::Error::Bzimage(
            loader::bzimage::Error::InvalidBzImage | loader::bzimage::Error::ReadBzImageHeader,
        )) => Err(Error::KernelFormat(name)),
        Err(e) => Err(Error::KernelLoad(name, e)),
    }
}

/// Loads the initramfs as high as it fits in low memory (below the MMIO hole and any limit the
/// kernel header sets), above the kernel. Returns (address, size).
fn load_initrd(mem: &Mem, path: &Path, kernel_end: u64, max_addr: u64) -> Result<(u64, u64)> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|e| Error::Initrd(name.clone(), e.to_string()))?;
    let size = data.len() as u64;
    let low_end = mem
        .iter()
        .find(|r| r.start_addr().0 == 0)
        .map(|r| r.len())
        .unwrap_or(0)
        .min(max_addr);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or_else(|| {
            Error::Initrd(
                name.clone(),
                format!("{size} bytes do not fit in guest memory"),
            )
        })?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| Error::Initrd(name, e.to_string()))?;
    Ok((addr, size))
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// boot_params.hdr.initrd_addr_max default for kernels that do not say.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Loads kernel, initrd and command line and writes the boot information.
pub fn load_linux(
    mem: &Mem,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &Cmdline,
    mem_size: u64,
) -> Result<KernelEntry> {
    let k = load_kernel(mem, kernel)?;
    let max_initrd = match &k.setup_header {
        Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max) + 1,
        _ => DEFAULT_INITRD_ADDR_MAX + 1,
    };
    let initrd = initrd
        .map(|p| load_initrd(mem, p, k.kernel_end, max_initrd))
        .transpose()?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| Error::Cmdline(e.to_string()))?
        .as_bytes_with_nul()
        .len();
    let e820 = e820_map(mem_size);

    let boot_info = match k.protocol {
        BootProtocol::Pvh => {
            let mut info = hvm_start_info {
                magic: XEN_HVM_START_MAGIC,
                version: 1,
                cmdline_paddr: CMDLINE_START,
                memmap_paddr: PVH_MEMMAP_START,
                memmap_entries: u32::try_from(e820.len()).expect("e820_map returns a few entries"),
                ..Default::default()
            };
            if let Some((addr, size)) = initrd {
                let m = hvm_modlist_entry {
                    paddr: addr,
                    size,
                    ..Default::default()
                };
                mem.write_obj(m, GuestAddress(PVH_MODLIST_START))
                    .map_err(Error::Memory)?;
                info.nr_modules = 1;
                info.modlist_paddr = PVH_MODLIST_START;
            }
            for (i, (addr, size, type_)) in e820.iter().enumerate() {
                let e = hvm_memmap_table_entry {
                    addr: *addr,
                    size: *size,
                    type_: *type_,
                    reserved: 0,
                };
                let at =
                    PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
                mem.write_obj(e, GuestAddress(at)).map_err(Error::Memory)?;
            }
            mem.write_obj(info, GuestAddress(PVH_INFO_START))
                .map_err(Error::Memory)?;
            GuestAddress(PVH_INFO_START)
        }
        BootProtocol::Linux64 => {
            let mut params = boot_params::default();
            if let Some(h) = k.setup_header {
                params.hdr = h;
            }
            params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.cmd_line_ptr =
                u32::try_from(CMDLINE_START).expect("the command line is in low memory");
            params.hdr.cmdline_size = u32::try_from(cmdline_len)
                .map_err(|_| Error::Cmdline(format!("{cmdline_len} bytes is too long")))?;
            if params.hdr.kernel_alignment == 0 {
                params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
            }
            if let Some((addr, size)) = initrd {
                // load_initrd put addr + size below initrd_addr_max + 1 <= 4 GiB.
                params.hdr.ramdisk_image = u32::try_from(addr).expect("initrd below 4 GiB");
                params.hdr.ramdisk_size = u32::try_from(size).expect("initrd below 4 GiB");
            }
            for (i, (addr, size, type_)) in e820.iter().enumerate() {
                params.e820_table[i] = boot_e820_entry {
                    addr: *addr,
                    size: *size,
                    type_: *type_,
                };
            }
            params.e820_entries = u8::try_from(e820.len()).expect("e820_map returns a few entries");
            mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
                .map_err(Error::Memory)?;
            GuestAddress(ZERO_PAGE_START)
        }
    };
    debug_assert!(e820.iter().any(|e| e.2 == E820_RAM));
    Ok(KernelEntry {
        protocol: k.protocol,
        entry: k.entry,
        boot_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ELF64 with one PT_LOAD at 2 MiB and, optionally, a PVH note pointing at `pvh_entry`.
    fn elf(pvh_entry: Option<u32>) -> Vec<u8> {
        let load: u64 = 0x20_0000;
        let code = [0xf4u8; 16];
        let note = pvh_entry.map(|entry| {
            let mut n = Vec::new();
            for v in [4u32, 4, 18] {
                n.extend_from_slice(&v.to_le_bytes());
            }
            n.extend_from_slice(b"Xen\0");
            n.extend_from_slice(&entry.to_le_bytes());
            n
        });
        let phnum: u16 = if note.is_some() { 2 } else { 1 };
        let notes_off = 64 + 56 * u64::from(phnum);
        let code_off = notes_off + note.as_ref().map_or(0, |n| n.len() as u64);
        let mut e = b"\x7fELF\x02\x01\x01\x00".to_vec();
        e.extend_from_slice(&[0; 8]);
        e.extend_from_slice(&2u16.to_le_bytes());
        e.extend_from_slice(&0x3eu16.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        for v in [load, 64, 0] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        e.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, phnum, 0, 0, 0] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&5u32.to_le_bytes());
        for v in [code_off, load, load, 16, 16, 0x1000] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(n) = &note {
            e.extend_from_slice(&4u32.to_le_bytes());
            e.extend_from_slice(&4u32.to_le_bytes());
            for v in [notes_off, 0, 0, n.len() as u64, n.len() as u64, 4] {
                e.extend_from_slice(&v.to_le_bytes());
            }
            e.extend_from_slice(n);
        }
        e.extend_from_slice(&code);
        e
    }

    fn setup(image: &[u8], mem_size: usize) -> (Mem, tempfile::TempDir, std::path::PathBuf) {
        let mem = Mem::from_ranges(&crate::arch::ram_ranges(mem_size as u64)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel");
        std::fs::write(&k, image).unwrap();
        (mem, dir, k)
    }

    #[test]
    fn linux64_boot_params_carry_cmdline_e820_and_initrd() {
        let size = 64 << 20;
        let (mem, dir, k) = setup(&elf(None), size);
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, vec![7u8; 5000]).unwrap();
        let cmdline = Cmdline::try_from("console=ttyS0", CMDLINE_MAX_SIZE).unwrap();
        let entry = load_linux(&mem, &k, Some(&initrd), &cmdline, size as u64).unwrap();
        assert_eq!(entry.protocol, BootProtocol::Linux64);
        assert_eq!(entry.entry, GuestAddress(0x20_0000));
        assert_eq!(entry.boot_info, GuestAddress(ZERO_PAGE_START));
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(u64::from(p.hdr.cmd_line_ptr), CMDLINE_START);
        assert_eq!(
            { p.hdr.cmdline_size },
            u32::try_from("console=ttyS0".len() + 1).unwrap()
        );
        let mut c = [0u8; 14];
        mem.read_slice(&mut c, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&c, b"console=ttyS0\0");
        // The initrd sits page-aligned at the top of RAM.
        let (addr, len) = ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size });
        assert_eq!(len, 5000);
        assert_eq!(addr % 4096, 0);
        assert!(u64::from(addr) + 5000 <= size as u64);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(u64::from(addr))).unwrap(),
            7
        );
        // e820: RAM below the EBDA, reserved up to 1 MiB, RAM from 1 MiB to the end.
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table;
        assert_eq!(
            ({ e[0].addr }, { e[0].size }, { e[0].type_ }),
            (0, EBDA_START, 1)
        );
        assert_eq!({ e[1].type_ }, 2);
        assert_eq!(
            ({ e[2].addr }, { e[2].size }),
            (HIMEM_START, size as u64 - HIMEM_START)
        );
    }

    #[test]
    fn pvh_start_info_when_the_note_is_there() {
        let size = 64 << 20;
        let (mem, dir, k) = setup(&elf(Some(0x20_0008)), size);
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, b"cpio").unwrap();
        let cmdline = Cmdline::try_from("x", CMDLINE_MAX_SIZE).unwrap();
        let entry = load_linux(&mem, &k, Some(&initrd), &cmdline, size as u64).unwrap();
        assert_eq!(entry.protocol, BootProtocol::Pvh);
        assert_eq!(entry.entry, GuestAddress(0x20_0008));
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.memmap_entries, 3);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(m.size, 4);
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.size),
            (HIMEM_START, size as u64 - HIMEM_START)
        );
    }

    #[test]
    fn bzimage_setup_header_reaches_boot_params_and_entry_is_the_64_bit_one() {
        let mut image = vec![0u8; 1024 + 0x400];
        image[0x1f1] = 1; // setup_sects
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x211] = 0x01; // LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        image[0x22c..0x230].copy_from_slice(&0x0fff_ffffu32.to_le_bytes()); // initrd_addr_max
        image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
        image[1024 + 0x200] = 0xf4;
        let size = 512 << 20;
        let (mem, dir, k) = setup(&image, size);
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, b"cpio").unwrap();
        let cmdline = Cmdline::try_from("bz", CMDLINE_MAX_SIZE).unwrap();
        let entry = load_linux(&mem, &k, Some(&initrd), &cmdline, size as u64).unwrap();
        assert_eq!(entry.protocol, BootProtocol::Linux64);
        assert_eq!(entry.entry, GuestAddress(0x10_0200));
        assert_eq!(mem.read_obj::<u8>(entry.entry).unwrap(), 0xf4);
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        // The kernel's own header fields survive; the loader's are filled in.
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.xloadflags }, 1);
        assert_eq!({ p.hdr.kernel_alignment }, KERNEL_MIN_ALIGNMENT);
        assert_eq!({ p.hdr.type_of_loader }, KERNEL_LOADER_OTHER);
        assert_eq!(u64::from(p.hdr.cmd_line_ptr), CMDLINE_START);
        // The kernel's initrd_addr_max (256 MiB) caps where the initrd goes.
        assert!({ p.hdr.ramdisk_image } + 4 <= 0x1000_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 4);
    }

    #[test]
    fn bad_kernels_and_initrds_are_named() {
        let size = 16 << 20;
        let (mem, dir, k) = setup(&[0x42; 4096], size);
        let cmdline = Cmdline::try_from("", CMDLINE_MAX_SIZE).unwrap();
        let e = load_linux(&mem, &k, None, &cmdline, size as u64).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("kernel {}: not an ELF or bzImage", k.display())
        );
        std::fs::write(&k, elf(None)).unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; size]).unwrap();
        let e = load_linux(&mem, &k, Some(&big), &cmdline, size as u64).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
    }
}
