//! Kernel loading: an ELF vmlinux at its physical addresses or a bzImage's
//! protected-mode payload at 1 MiB (both through `linux-loader`), the
//! initrd at the top of RAM, the command line, and the zero page
//! (`boot_params`) with the e820 map, which rsi points to at entry.
//!
//! The kernel and initrd are [`BootFile`]s: bytes the caller already
//! holds, or open files read straight into guest RAM (the monitor keeps
//! no copy: a 60 MB vmlinux would otherwise cost its size again in the
//! monitor's memory while the guest's pages fill).
//!
//! The kernel file is untrusted: its kind is recognised from its own
//! headers before anything is loaded, and a kernel of another architecture,
//! a truncated bzImage or one that does not fit in RAM is refused with a
//! message that says so.

use std::io::Cursor;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader, KernelLoaderResult};
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use vmm::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;
use crate::{Error, Result};

/// "HdrS": the boot protocol header magic at 0x202 of a bzImage.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `xloadflags` bit: the kernel has a 64-bit entry point at load + 0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry (startup_64) in the protected-mode payload.
const BZIMAGE_64BIT_ENTRY: u64 = 0x200;
/// `type_of_loader` "undefined" (Firecracker and Cloud Hypervisor use it).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `loadflags`: the payload is loaded high (at 1 MiB).
const LOADED_HIGH: u8 = 0x01;
/// e820 types.
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

pub use vmm::BootFile;

/// Most header bytes read to recognise a kernel file (the bzImage setup
/// header and, in any sane ELF file, its program headers lie well
/// within).
const HEAD: usize = 64 << 10;
/// Largest ELF program header table looked at.
const MAX_PHDRS: u64 = 1 << 20;

/// What kind of kernel file this is, from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// ELF64 for x86-64 (a vmlinux or a small test guest).
    Elf,
    /// A Linux bzImage (boot protocol header "HdrS").
    BzImage,
}

/// Where the kernel went and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub kind: KernelKind,
    /// 64-bit entry point (rip at start).
    pub entry: u64,
    /// First byte past the kernel's memory image (bss included).
    pub end: u64,
    /// The bzImage's setup header, copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Identifies `data` as an x86-64 kernel, or says what it is instead.
pub fn identify(data: &[u8], name: &str) -> Result<KernelKind> {
    identify_head(data, data.len() as u64, name)
}

/// [`identify`] for a [`BootFile`], from its first bytes.
pub fn identify_file(file: &BootFile, name: &str) -> Result<KernelKind> {
    let (head, len) = head(file, name)?;
    identify_head(&head, len, name)
}

/// The first bytes of `file` (its ELF program headers included) and its
/// length.
fn head(file: &BootFile, name: &str) -> Result<(Vec<u8>, u64)> {
    let unreadable = |e: std::io::Error| Error::Kernel {
        name: name.to_string(),
        reason: format!("cannot be read: {e}"),
    };
    let len = file.len().map_err(unreadable)?;
    let mut head = file.read_range(0, HEAD).map_err(unreadable)?;
    if head.len() >= 64 && head[..4] == *b"\x7fELF" {
        // e_phoff (0x20), e_phentsize (0x36), e_phnum (0x38) of an ELF64
        // file; a table beyond the first bytes is read as well (a bad
        // one is refused by the checks that follow).
        let phoff = u64::from_le_bytes(head[0x20..0x28].try_into().unwrap());
        let phsize = u16::from_le_bytes([head[0x36], head[0x37]]) as u64;
        let phnum = u16::from_le_bytes([head[0x38], head[0x39]]) as u64;
        let end = phoff.saturating_add(phsize * phnum);
        if end > head.len() as u64 && end <= len && phsize * phnum <= MAX_PHDRS {
            head = file.read_range(0, end as usize).map_err(unreadable)?;
        }
    }
    Ok((head, len))
}

/// [`identify`] from the first bytes of a kernel file of `len` bytes.
fn identify_head(data: &[u8], len: u64, name: &str) -> Result<KernelKind> {
    let bad = |reason: String| Error::Kernel {
        name: name.to_string(),
        reason,
    };
    if data.len() >= 4 && data[..4] == *b"\x7fELF" {
        let hdr = elf::FileHeader64::<object::Endianness>::parse(data)
            .map_err(|e| bad(format!("not a usable ELF64 file ({e})")))?;
        let endian = hdr
            .endian()
            .map_err(|e| bad(format!("bad ELF byte order ({e})")))?;
        return match hdr.e_machine(endian) {
            elf::EM_X86_64 => Ok(KernelKind::Elf),
            elf::EM_RISCV => Err(bad(
                "is a riscv64 ELF file, not an x86-64 kernel (use --arch riscv64)".into(),
            )),
            elf::EM_AARCH64 => Err(bad("is an arm64 ELF file, not an x86-64 kernel".into())),
            m => Err(bad(format!(
                "is an ELF file for machine {m}, not x86-64 ({})",
                elf::EM_X86_64
            ))),
        };
    }
    // Linux's arm64/riscv "Image" header: magic at 0x30 (riscv) or 0x38.
    if data.len() >= 0x40 {
        if &data[0x30..0x36] == b"RISCV\0" || &data[0x38..0x3c] == b"RSC\x05" {
            return Err(bad(
                "is a riscv64 Linux Image, not an x86-64 kernel (use --arch riscv64)".into(),
            ));
        }
        if &data[0x38..0x3c] == b"ARM\x64" {
            return Err(bad("is an arm64 Linux Image, not an x86-64 kernel".into()));
        }
    }
    if data.len() >= 0x206
        && u32::from_le_bytes(data[0x202..0x206].try_into().unwrap()) == HDRS_MAGIC
    {
        check_bzimage(data, len).map_err(bad)?;
        return Ok(KernelKind::BzImage);
    }
    if data.len() >= 2 && data[..2] == [0x1f, 0x8b] {
        return Err(bad(
            "is gzip-compressed: give the vmlinux (ELF) or the bzImage itself".into(),
        ));
    }
    Err(bad(
        "is not an x86-64 kernel: neither an ELF64 vmlinux nor a bzImage (no \"HdrS\" header)"
            .into(),
    ))
}

/// Checks the parts of a bzImage header the loader relies on, and that
/// the file holds what the header promises.
fn check_bzimage(data: &[u8], len: u64) -> std::result::Result<(), String> {
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
    if data.len() < 0x268 {
        return Err(format!(
            "is a truncated bzImage: {len} bytes, shorter than its setup header"
        ));
    }
    let version = u16_at(0x206);
    if version < 0x020c {
        return Err(format!(
            "is a bzImage of boot protocol {}.{:02}: 2.12 or later is needed for the 64-bit entry",
            version >> 8,
            version & 0xff
        ));
    }
    if data[0x211] & LOADED_HIGH == 0 {
        return Err("is a zImage (loaded low), not a bzImage".into());
    }
    if u16_at(0x236) & XLF_KERNEL_64 == 0 {
        return Err("is a bzImage without a 64-bit entry point (XLF_KERNEL_64 unset)".into());
    }
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let setup_bytes = (setup_sects + 1) * 512;
    // syssize counts 16-byte paragraphs of the protected-mode payload.
    let payload = u32_at(0x1f4) as usize * 16;
    let want = (setup_bytes + payload) as u64;
    if len < want {
        return Err(format!(
            "is a truncated bzImage: its header describes {want} bytes, the file has {len}"
        ));
    }
    Ok(())
}

/// Loads the kernel into `mem` (which covers `0..mem_size`).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &BootFile,
    name: &str,
) -> Result<LoadedKernel> {
    let (data, len) = head(kernel, name)?;
    let kind = identify_head(&data, len, name)?;
    let bad = |reason: String| Error::Kernel {
        name: name.to_string(),
        reason,
    };
    match kind {
        KernelKind::Elf => {
            let (entry, end) = elf_extent(&data, len).map_err(bad)?;
            if end > mem_size {
                return Err(Error::TooLittleMemory {
                    mem_size,
                    need: end,
                    what: format!("the ELF kernel {name}, which loads up to {end:#x}"),
                });
            }
            let r =
                load_with::<Elf>(mem, kernel).map_err(|e| bad(format!("cannot be loaded: {e}")))?;
            Ok(LoadedKernel {
                kind,
                entry: entry.max(r.kernel_load.0),
                end: r.kernel_end,
                setup_header: None,
            })
        }
        KernelKind::BzImage => {
            // The payload decompresses itself in place: it needs init_size
            // bytes from its load address.
            let init_size = u32::from_le_bytes(data[0x260..0x264].try_into().unwrap()) as u64;
            let need = HIMEM_START + init_size.max(len);
            if need > mem_size {
                return Err(Error::TooLittleMemory {
                    mem_size,
                    need,
                    what: format!("the bzImage {name} (init_size {init_size:#x} at 1 MiB)"),
                });
            }
            let r = load_with::<BzImage>(mem, kernel)
                .map_err(|e| bad(format!("cannot be loaded: {e}")))?;
            Ok(LoadedKernel {
                kind,
                entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY,
                end: r.kernel_load.0 + init_size,
                setup_header: r.setup_header,
            })
        }
    }
}

/// Runs linux-loader's `L` over the kernel (a file is read straight
/// into guest RAM).
fn load_with<L: KernelLoader>(
    mem: &GuestMemoryMmap,
    kernel: &BootFile,
) -> linux_loader::loader::Result<KernelLoaderResult> {
    let high = Some(GuestAddress(HIMEM_START));
    match kernel {
        BootFile::Bytes(b) => L::load(mem, None, &mut Cursor::new(b.as_slice()), high),
        BootFile::File(f) => L::load(mem, None, &mut &*f, high),
    }
}

/// Entry point and end of an x86-64 ELF's loadable image, checked: every
/// PT_LOAD segment lies in the file and at or above 1 MiB.
fn elf_extent(data: &[u8], len: u64) -> std::result::Result<(u64, u64), String> {
    let hdr = elf::FileHeader64::<object::Endianness>::parse(data).map_err(|e| e.to_string())?;
    let endian = hdr.endian().map_err(|e| e.to_string())?;
    let phdrs = hdr
        .program_headers(endian, data)
        .map_err(|e| format!("bad program headers ({e})"))?;
    let mut end = 0u64;
    let mut loads = 0;
    for ph in phdrs {
        if ph.p_type(endian) != elf::PT_LOAD {
            continue;
        }
        loads += 1;
        let (paddr, filesz, memsz, off) = (
            ph.p_paddr(endian),
            ph.p_filesz(endian),
            ph.p_memsz(endian),
            ph.p_offset(endian),
        );
        if off.checked_add(filesz).is_none_or(|e| e > len) {
            return Err(format!(
                "is truncated: a segment at file offset {off:#x} of {filesz:#x} bytes lies past its end ({len} bytes)"
            ));
        }
        if paddr < HIMEM_START {
            return Err(format!(
                "has a segment at physical address {paddr:#x}, below 1 MiB where the boot structures live"
            ));
        }
        let seg_end = paddr
            .checked_add(memsz.max(filesz))
            .ok_or_else(|| format!("has a segment at {paddr:#x} that wraps around"))?;
        end = end.max(seg_end);
    }
    if loads == 0 {
        return Err("has no loadable segment".into());
    }
    Ok((hdr.e_entry(endian), end))
}

/// What the zero page describes besides the kernel.
pub struct BootSetup<'a> {
    pub mem_size: u64,
    pub cmdline: &'a str,
    pub initrd: Option<&'a BootFile>,
}

/// Writes the command line, the initrd and the zero page. Returns the
/// initrd's guest address and size, if any.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    setup: &BootSetup<'_>,
) -> Result<Option<(u64, u64)>> {
    let cmd = setup.cmdline.as_bytes();
    if cmd.len() + 1 > CMDLINE_MAX {
        return Err(Error::CommandLine(format!(
            "{} bytes, longer than the {} the kernel accepts",
            cmd.len(),
            CMDLINE_MAX - 1
        )));
    }
    if cmd.contains(&0) {
        return Err(Error::CommandLine("contains a NUL byte".into()));
    }
    write(mem, CMDLINE_ADDR, cmd)?;
    write(mem, CMDLINE_ADDR + cmd.len() as u64, &[0])?;

    let mut params = boot_params::default();
    if let Some(h) = kernel.setup_header {
        params.hdr = h;
    } else {
        // An ELF kernel has no header of its own: fill in what Linux reads.
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmd.len() as u32;

    let mut initrd_at = None;
    if let Some(initrd) = setup.initrd {
        // Top of RAM, page aligned, below what the kernel says it can
        // reach (initrd_addr_max; 0 in an ELF: assume the 2 GiB of old).
        let max = match params.hdr.initrd_addr_max {
            0 => 0x7fff_ffff,
            m => m as u64,
        };
        let top = setup.mem_size.min(max + 1);
        let size = initrd
            .len()
            .map_err(|e| Error::GuestMemory(format!("cannot read the initrd: {e}")))?;
        let addr = top.checked_sub(size).map(|a| a & !0xfff);
        match addr {
            Some(a) if a >= kernel.end.max(HIMEM_START) => {
                initrd.copy_to(mem, a).map_err(|e| {
                    Error::GuestMemory(format!("initrd of {size} bytes at {a:#x}: {e}"))
                })?;
                params.hdr.ramdisk_image = a as u32;
                params.hdr.ramdisk_size = size as u32;
                initrd_at = Some((a, size));
            }
            _ => {
                return Err(Error::TooLittleMemory {
                    mem_size: setup.mem_size,
                    need: kernel.end.max(HIMEM_START) + size.next_multiple_of(0x1000),
                    what: format!("the kernel and an initrd of {size} bytes"),
                })
            }
        }
    }

    let e820 = [
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, HIMEM_START - LOW_RAM_END, E820_RESERVED),
        (HIMEM_START, setup.mem_size - HIMEM_START, E820_RAM),
    ];
    for (i, &(addr, size, type_)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(|e| Error::GuestMemory(format!("zero page: {e}")))?;
    Ok(initrd_at)
}

fn write(mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> Result<()> {
    mem.write_slice(data, GuestAddress(addr))
        .map_err(|e| Error::GuestMemory(format!("{} bytes at {addr:#x}: {e}", data.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage(len: usize, syssize: u32, version: u16, xlf: u16) -> Vec<u8> {
        let mut d = vec![0u8; len];
        d[0x1f1] = 4;
        d[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        d[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        d[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        d[0x211] = LOADED_HIGH;
        d[0x236..0x238].copy_from_slice(&xlf.to_le_bytes());
        d
    }

    #[test]
    fn recognises_kernels_and_refuses_others() {
        assert_eq!(
            identify(&bzimage(0x2000, 0x100, 0x20f, 1), "k").unwrap(),
            KernelKind::BzImage
        );
        let e = identify(&bzimage(0x1000, 0x100, 0x20f, 1), "k").unwrap_err();
        assert!(e.to_string().contains("truncated bzImage"), "{e}");
        let e = identify(&bzimage(0x2000, 0x100, 0x20b, 1), "k").unwrap_err();
        assert!(e.to_string().contains("2.12"), "{e}");
        let e = identify(&bzimage(0x2000, 0x100, 0x20f, 0), "k").unwrap_err();
        assert!(e.to_string().contains("64-bit entry"), "{e}");
        let e = identify(b"hello world, not a kernel", "notes.txt").unwrap_err();
        assert!(e.to_string().contains("notes.txt"), "{e}");
        assert!(e.to_string().contains("not an x86-64 kernel"), "{e}");
        let mut rv = vec![0u8; 0x40];
        rv[0x30..0x36].copy_from_slice(b"RISCV\0");
        let e = identify(&rv, "Image").unwrap_err();
        assert!(e.to_string().contains("riscv64"), "{e}");
        let e = identify(&[0x1f, 0x8b, 8, 0], "vmlinuz.gz").unwrap_err();
        assert!(e.to_string().contains("gzip"), "{e}");
    }
}
