//! Loading guest software into RAM: a Linux `Image` (RISC-V boot protocol),
//! raw firmware binaries, and ELF programs (spike, firmware `.elf`).
//!
//! Everything here parses untrusted files: every size and address is
//! checked against the file and against RAM before use.

use std::io::Read;

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Object, ObjectSymbol};

/// Errors of the loaders; each names the file's problem.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{what} is empty")]
    Empty { what: String },
    #[error("{what} is an x86 Linux kernel (bzImage); this machine runs riscv64 kernels")]
    X86Kernel { what: String },
    #[error("{what} is an arm64 Linux kernel; this machine runs riscv64 kernels")]
    Arm64Kernel { what: String },
    #[error("{what} is an ELF file for {machine}, not riscv64")]
    WrongElfMachine { what: String, machine: String },
    #[error("{what} is not a RISC-V Linux kernel Image (no \"RSC\\x05\" magic at offset 56) nor a riscv64 ELF file")]
    NotAKernel { what: String },
    #[error("{what}: invalid ELF file: {msg}")]
    BadElf { what: String, msg: String },
    #[error("{what} ({len} bytes at {addr:#x}) does not fit in RAM ({ram_base:#x}..{ram_end:#x})")]
    DoesNotFit {
        what: String,
        addr: u64,
        len: u64,
        ram_base: u64,
        ram_end: u64,
    },
    #[error("{what}: cannot decompress gzip data: {source}")]
    Gzip {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: decompressed kernel is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("cannot read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub use vmm::BootFile;

/// The header of a RISC-V Linux `Image` (Documentation/riscv/boot-image-header.rst).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    pub text_offset: u64,
    /// Memory the kernel occupies from its load address (code, data, bss).
    pub image_size: u64,
}

const IMAGE_MAGIC2: &[u8; 4] = b"RSC\x05";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const EM_RISCV: u16 = 243;
/// Decompressed kernels beyond this are refused: no riscv64 distribution
/// kernel comes near it, and it bounds memory spent on a hostile file.
const MAX_KERNEL: u64 = 512 << 20;

/// What a kernel file turned out to be.
#[derive(Debug)]
pub enum KernelKind {
    /// A flat Image (already decompressed if the file was gzip; an
    /// uncompressed file stays a file, read into RAM when loaded).
    Image(BootFile, ImageHeader),
    /// An ELF file for RISC-V.
    Elf(Vec<u8>),
}

/// Identifies a kernel file: a RISC-V Image (possibly gzip-compressed) or a
/// riscv64 ELF. x86 and arm64 kernels get an error that says so.
pub fn identify_kernel(what: &str, data: Vec<u8>) -> Result<KernelKind, LoadError> {
    let w = || what.to_string();
    if data.is_empty() {
        return Err(LoadError::Empty { what: w() });
    }
    let data = if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&data[..])
            .take(MAX_KERNEL + 1)
            .read_to_end(&mut out)
            .map_err(|source| LoadError::Gzip { what: w(), source })?;
        if out.len() as u64 > MAX_KERNEL {
            return Err(LoadError::TooLarge {
                what: w(),
                limit: MAX_KERNEL,
            });
        }
        out
    } else {
        data
    };
    if data.starts_with(ELF_MAGIC) {
        let machine = elf_machine(&data);
        return match machine {
            Some(EM_RISCV) if data.get(4) == Some(&2) => Ok(KernelKind::Elf(data)),
            Some(m) => Err(LoadError::WrongElfMachine {
                what: w(),
                machine: machine_name(m, data.get(4).copied()),
            }),
            None => Err(LoadError::BadElf {
                what: w(),
                msg: "truncated header".into(),
            }),
        };
    }
    if data.len() >= 0x206 && &data[0x202..0x206] == b"HdrS" {
        return Err(LoadError::X86Kernel { what: w() });
    }
    if data.len() >= 60 && &data[56..60] == b"ARM\x64" {
        return Err(LoadError::Arm64Kernel { what: w() });
    }
    if data.len() >= 64 && &data[56..60] == IMAGE_MAGIC2 {
        let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap_or([0; 8]));
        let hdr = ImageHeader {
            text_offset: u64_at(8),
            image_size: u64_at(16),
        };
        return Ok(KernelKind::Image(data.into(), hdr));
    }
    Err(LoadError::NotAKernel { what: w() })
}

/// [`identify_kernel`] for a [`BootFile`]: a file holding an
/// uncompressed Image stays a file, the loader reads it straight into
/// RAM; gzip and ELF files are read whole first.
pub fn identify_kernel_file(what: &str, file: BootFile) -> Result<KernelKind, LoadError> {
    let BootFile::File(f) = file else {
        return identify_kernel(what, file.into_bytes().unwrap_or_default());
    };
    let read_err = |source| LoadError::Read {
        what: what.to_string(),
        source,
    };
    let f = BootFile::File(f);
    // Every header identify_kernel looks at lies within 4 KiB.
    let head = f.read_range(0, 4096).map_err(read_err)?;
    if head.starts_with(&[0x1f, 0x8b]) || head.starts_with(ELF_MAGIC) {
        return identify_kernel(what, f.into_bytes().map_err(read_err)?);
    }
    match identify_kernel(what, head)? {
        KernelKind::Image(_, hdr) => Ok(KernelKind::Image(f, hdr)),
        // Not reached: the head starts with no ELF magic.
        k @ KernelKind::Elf(_) => Ok(k),
    }
}

fn elf_machine(data: &[u8]) -> Option<u16> {
    let b = data.get(18..20)?;
    // e_ident[EI_DATA]: 1 little endian, 2 big endian.
    Some(if data.get(5) == Some(&2) {
        u16::from_be_bytes([b[0], b[1]])
    } else {
        u16::from_le_bytes([b[0], b[1]])
    })
}

fn machine_name(m: u16, class: Option<u8>) -> String {
    match m {
        3 => "x86 (i386)".into(),
        62 => "x86-64".into(),
        40 => "arm".into(),
        183 => "aarch64".into(),
        EM_RISCV if class == Some(1) => "riscv32".into(),
        _ => format!("machine type {m}"),
    }
}

/// One piece of an ELF file to copy into memory.
#[derive(Debug)]
pub struct Segment {
    pub addr: u64,
    pub data: Vec<u8>,
    /// Bytes to zero after `data` (bss).
    pub zero: u64,
}

/// A parsed riscv64 ELF program: its loadable segments, entry point and the
/// HTIF symbols when present.
#[derive(Debug)]
pub struct ElfProgram {
    pub entry: u64,
    pub segments: Vec<Segment>,
    pub tohost: Option<u64>,
    pub fromhost: Option<u64>,
}

/// Parses a riscv64 ELF file.
pub fn parse_elf(what: &str, data: &[u8]) -> Result<ElfProgram, LoadError> {
    let bad = |msg: String| LoadError::BadElf {
        what: what.to_string(),
        msg,
    };
    if let Some(m) = elf_machine(data) {
        if m != EM_RISCV || data.get(4) != Some(&2) {
            return Err(LoadError::WrongElfMachine {
                what: what.into(),
                machine: machine_name(m, data.get(4).copied()),
            });
        }
    }
    let file = ElfFile64::<object::Endianness>::parse(data).map_err(|e| bad(e.to_string()))?;
    let endian = file.endian();
    let mut segments = Vec::new();
    let phdrs = file
        .elf_header()
        .program_headers(endian, data)
        .map_err(|e| bad(e.to_string()))?;
    for ph in phdrs {
        if ph.p_type(endian) != object::elf::PT_LOAD {
            continue;
        }
        let bytes = ph
            .data(endian, data)
            .map_err(|_| bad("segment extends beyond the file".into()))?;
        let memsz = ph.p_memsz(endian);
        let filesz = bytes.len() as u64;
        if memsz < filesz {
            return Err(bad("segment memory size smaller than its file size".into()));
        }
        segments.push(Segment {
            // Physical addresses: a bare-metal program runs with paging off.
            addr: ph.p_paddr(endian),
            data: bytes.to_vec(),
            zero: memsz - filesz,
        });
    }
    if segments.is_empty() {
        return Err(bad("no loadable segment".into()));
    }
    let mut tohost = None;
    let mut fromhost = None;
    for sym in file.symbols() {
        match sym.name() {
            Ok("tohost") => tohost = Some(sym.address()),
            Ok("fromhost") => fromhost = Some(sym.address()),
            _ => {}
        }
    }
    Ok(ElfProgram {
        entry: file.entry(),
        segments,
        tohost,
        fromhost,
    })
}

/// Checks that `[addr, addr + len)` lies in RAM `[base, base + size)`.
pub fn check_fits(what: &str, addr: u64, len: u64, base: u64, size: u64) -> Result<(), LoadError> {
    let end = addr.checked_add(len);
    match end {
        Some(end) if addr >= base && end <= base + size => Ok(()),
        _ => Err(LoadError::DoesNotFit {
            what: what.into(),
            addr,
            len,
            ram_base: base,
            ram_end: base + size,
        }),
    }
}

/// `struct fw_dynamic_info` of OpenSBI's fw_dynamic, version 2.
pub fn fw_dynamic_info(next_addr: u64, boot_hart: u64) -> [u8; 48] {
    const MAGIC: u64 = 0x4942_534f; // "OSBI"
    const VERSION: u64 = 2;
    const NEXT_MODE_S: u64 = 1;
    let fields = [MAGIC, VERSION, next_addr, NEXT_MODE_S, 0, boot_hart];
    let mut out = [0u8; 48];
    for (i, f) in fields.iter().enumerate() {
        out[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(size: u64) -> Vec<u8> {
        let mut d = vec![0u8; 4096];
        d[8..16].copy_from_slice(&0x20_0000u64.to_le_bytes());
        d[16..24].copy_from_slice(&size.to_le_bytes());
        d[48..56].copy_from_slice(b"RISCV\0\0\0");
        d[56..60].copy_from_slice(IMAGE_MAGIC2);
        d
    }

    #[test]
    fn image_files_stay_files_and_read_whole() {
        let dir = std::env::temp_dir().join(format!("vk-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut img = image(1 << 20);
        img.resize(10_000, 0);
        img[9_999] = 0xa5;
        let path = dir.join("Image");
        std::fs::write(&path, &img).unwrap();
        let f = BootFile::open(&path).unwrap();
        match identify_kernel_file("k", f).unwrap() {
            KernelKind::Image(f @ BootFile::File(_), h) => {
                assert_eq!(h.image_size, 1 << 20);
                assert_eq!(f.len().unwrap(), 10_000);
                let mut dst = vec![0u8; 10_000];
                f.read_into(&mut dst).unwrap();
                assert_eq!(dst, img);
                // A file shorter than the room it was measured for.
                let mut big = vec![0u8; 10_001];
                assert!(f.read_into(&mut big).is_err());
            }
            k => panic!("{k:?}"),
        }
        // gzip: decompressed into memory.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &img).unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        match identify_kernel_file("k", BootFile::open(&path).unwrap()).unwrap() {
            KernelKind::Image(BootFile::Bytes(d), _) => assert_eq!(d, img),
            k => panic!("{k:?}"),
        }
        // Errors from the head, as for bytes.
        std::fs::write(&path, b"hello").unwrap();
        let e = identify_kernel_file("x", BootFile::open(&path).unwrap()).unwrap_err();
        assert!(matches!(e, LoadError::NotAKernel { .. }), "{e}");
        std::fs::write(&path, b"").unwrap();
        let e = identify_kernel_file("x", BootFile::open(&path).unwrap()).unwrap_err();
        assert!(matches!(e, LoadError::Empty { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recognises_images_plain_and_gzip() {
        match identify_kernel("k", image(1 << 20)).unwrap() {
            KernelKind::Image(_, h) => assert_eq!(h.image_size, 1 << 20),
            k => panic!("{k:?}"),
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &image(3 << 20)).unwrap();
        match identify_kernel("k", gz.finish().unwrap()).unwrap() {
            KernelKind::Image(d, h) => {
                assert_eq!(h.image_size, 3 << 20);
                assert_eq!(d.len().unwrap(), 4096);
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn refuses_foreign_kernels_with_a_clear_message() {
        let mut bz = vec![0u8; 1024];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let e = identify_kernel("vmlinuz", bz).unwrap_err().to_string();
        assert!(e.contains("x86"), "{e}");
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 62;
        let e = identify_kernel("vmlinux", elf).unwrap_err().to_string();
        assert!(e.contains("x86-64"), "{e}");
        let e = identify_kernel("x", b"hello".to_vec())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a RISC-V Linux kernel"), "{e}");
        assert!(identify_kernel("x", vec![]).is_err());
        // Truncated gzip.
        assert!(identify_kernel("x", vec![0x1f, 0x8b, 8, 0]).is_err());
    }

    #[test]
    fn garbage_elf_is_an_error_not_a_panic() {
        let mut d = vec![0u8; 200];
        d[..4].copy_from_slice(ELF_MAGIC);
        d[4] = 2;
        d[5] = 1;
        d[18] = EM_RISCV as u8;
        d[32] = 0xff; // e_phoff far away
        assert!(parse_elf("p", &d).is_err());
        assert!(parse_elf("p", &d[..10]).is_err());
    }

    #[test]
    fn fits() {
        assert!(check_fits("a", 0x8000_0000, 16, 0x8000_0000, 32).is_ok());
        assert!(check_fits("a", 0x8000_0010, 17, 0x8000_0000, 32).is_err());
        assert!(check_fits("a", u64::MAX, 2, 0x8000_0000, 32).is_err());
        assert!(check_fits("a", 0x1000, 2, 0x8000_0000, 32).is_err());
    }
}

/// What a firmware file turned out to be.
#[derive(Debug)]
pub enum FirmwareKind {
    Elf(ElfProgram),
    /// A flat binary, loaded at the start of RAM.
    Binary,
}

/// Identifies a firmware file (OpenSBI `fw_*.bin` or `fw_*.elf`).
pub fn identify_firmware(what: &str, data: &[u8]) -> Result<FirmwareKind, LoadError> {
    if data.is_empty() {
        return Err(LoadError::Empty { what: what.into() });
    }
    if data.starts_with(ELF_MAGIC) {
        return Ok(FirmwareKind::Elf(parse_elf(what, data)?));
    }
    Ok(FirmwareKind::Binary)
}
