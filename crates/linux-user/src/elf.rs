//! A strict reader for the parts of a riscv64 ELF file that a loader needs,
//! on top of the `object` crate's ELF structures (the same reader the
//! system emulator's loader uses).
//!
//! Everything here works on an untrusted byte slice: `object` bounds-checks
//! every read, and the checks below (class, byte order, machine, type,
//! header sizes, segment ranges, the interpreter path) give a specific
//! [`ElfError`] for each way a file can be wrong, never a panic or an
//! out-of-bounds read. It is fuzzed by `crates/linux-user/fuzz`.

use object::elf::{FileHeader64, ProgramHeader64};
use object::read::elf::{FileHeader as _, ProgramHeader as _};
use object::LittleEndian as LE;
use std::borrow::Cow;
use thiserror::Error;

/// `e_machine` of RISC-V.
pub const EM_RISCV: u16 = object::elf::EM_RISCV;
/// `e_type` of a fixed-address executable.
pub const ET_EXEC: u16 = object::elf::ET_EXEC;
/// `e_type` of a position-independent object (PIE, static-PIE, ld.so).
pub const ET_DYN: u16 = object::elf::ET_DYN;
/// A loadable segment.
pub const PT_LOAD: u32 = object::elf::PT_LOAD;
/// The path of the program interpreter (the dynamic linker).
pub const PT_INTERP: u32 = object::elf::PT_INTERP;
/// The program headers themselves.
pub const PT_PHDR: u32 = object::elf::PT_PHDR;
/// Stack permissions.
pub const PT_GNU_STACK: u32 = object::elf::PT_GNU_STACK;

/// Segment is executable.
pub const PF_X: u32 = object::elf::PF_X;
/// Segment is writable.
pub const PF_W: u32 = object::elf::PF_W;
/// Segment is readable.
pub const PF_R: u32 = object::elf::PF_R;

/// Size of an ELF64 file header.
pub const EHDR_SIZE: usize = std::mem::size_of::<FileHeader64<LE>>();
/// Size of an ELF64 program header.
pub const PHDR_SIZE: usize = std::mem::size_of::<ProgramHeader64<LE>>();
/// More program headers than this is no real program: Linux refuses more
/// than 64 KiB of them, which is 1170 entries; we cap lower to keep the
/// work per file small.
pub const MAX_PHNUM: usize = 1024;
/// Longest interpreter path we accept (PATH_MAX).
pub const MAX_INTERP_LEN: usize = 4096;

/// Why a file cannot be loaded as a riscv64 program.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file (bad magic)")]
    NotElf,
    #[error("truncated ELF file: {0}")]
    Truncated(&'static str),
    #[error("not a 64-bit ELF file (class {0})")]
    NotElf64(u8),
    #[error("not a little-endian ELF file")]
    NotLittleEndian,
    #[error("not a RISC-V ELF file (e_machine {0}; this emulator runs riscv64 programs)")]
    WrongMachine(u16),
    #[error("not an executable ELF file (e_type {0})")]
    NotExecutable(u16),
    #[error("bad program header size {0} (expected 56)")]
    BadPhentsize(u16),
    #[error("too many program headers ({0})")]
    TooManyPhdrs(usize),
    #[error("no loadable segment")]
    NoLoad,
    #[error("bad segment: {0}")]
    BadSegment(&'static str),
    #[error("bad interpreter path")]
    BadInterp,
    #[error("cannot read the file: {}", std::io::Error::from_raw_os_error(*.0))]
    Read(i32),
}

/// One program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phdr {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

impl Phdr {
    fn from_object(ph: &ProgramHeader64<LE>) -> Phdr {
        Phdr {
            p_type: ph.p_type(LE),
            flags: ph.p_flags(LE),
            offset: ph.p_offset(LE),
            vaddr: ph.p_vaddr(LE),
            filesz: ph.p_filesz(LE),
            memsz: ph.p_memsz(LE),
            align: ph.p_align(LE),
        }
    }
}

/// The parsed, validated view of an ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf {
    pub e_type: u16,
    pub entry: u64,
    pub phoff: u64,
    pub phnum: usize,
    pub flags: u32,
    pub phdrs: Vec<Phdr>,
    /// Contents of PT_INTERP, without the trailing NUL.
    pub interp: Option<Vec<u8>>,
}

/// The bytes the parser reads: a whole file in memory, or a file read on
/// demand (the loader reads headers only and maps the segments).
pub trait ElfSource {
    /// The file's length.
    fn file_len(&self) -> u64;
    /// `len` bytes at `offset`; `what` names them in the error when the file
    /// ends first.
    fn read_at(
        &self,
        offset: u64,
        len: usize,
        what: &'static str,
    ) -> Result<Cow<'_, [u8]>, ElfError>;
}

impl ElfSource for [u8] {
    fn file_len(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(
        &self,
        offset: u64,
        len: usize,
        what: &'static str,
    ) -> Result<Cow<'_, [u8]>, ElfError> {
        usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(len)?))
            .map(Cow::Borrowed)
            .ok_or(ElfError::Truncated(what))
    }
}

impl Elf {
    /// Parses and validates `file` (the whole file contents).
    ///
    /// `limit` is the size of the guest address space: every segment must fit
    /// below it (after relocation for position-independent files).
    pub fn parse(file: &[u8], limit: u64) -> Result<Elf, ElfError> {
        Self::parse_from(file, limit)
    }

    /// [`Elf::parse`] reading only the headers and the interpreter path from
    /// `src`; segment contents are only checked to lie inside the file.
    pub fn parse_from<S: ElfSource + ?Sized>(src: &S, limit: u64) -> Result<Elf, ElfError> {
        let magic = src.read_at(0, 4, "magic").map_err(|_| ElfError::NotElf)?;
        if magic[..] != object::elf::ELFMAG[..] {
            return Err(ElfError::NotElf);
        }
        // `object`'s own `parse` folds class, byte order and version into
        // one "unsupported" error; read the header and check each field so
        // the message says which.
        let head = src.read_at(0, EHDR_SIZE, "file header")?;
        let (hdr, _) = object::pod::from_bytes::<FileHeader64<LE>>(&head)
            .map_err(|_| ElfError::Truncated("file header"))?;
        let ident = hdr.e_ident();
        if ident.class != object::elf::ELFCLASS64 {
            return Err(ElfError::NotElf64(ident.class));
        }
        if ident.data != object::elf::ELFDATA2LSB {
            return Err(ElfError::NotLittleEndian);
        }
        let machine = hdr.e_machine(LE);
        if machine != EM_RISCV {
            return Err(ElfError::WrongMachine(machine));
        }
        let e_type = hdr.e_type(LE);
        if e_type != ET_EXEC && e_type != ET_DYN {
            return Err(ElfError::NotExecutable(e_type));
        }
        let phentsize = hdr.e_phentsize(LE);
        if phentsize as usize != PHDR_SIZE {
            return Err(ElfError::BadPhentsize(phentsize));
        }
        // The raw count: PN_XNUM (0xffff, "the count is in section 0")
        // is over the cap too, so no section header is ever consulted.
        let phnum = hdr.e_phnum(LE) as usize;
        if phnum > MAX_PHNUM {
            return Err(ElfError::TooManyPhdrs(phnum));
        }
        let phoff = hdr.e_phoff(LE);
        // As `object` reads them: no table when e_phoff is 0.
        let table = if phoff == 0 {
            Cow::Borrowed(&[][..])
        } else {
            src.read_at(phoff, phnum * PHDR_SIZE, "program headers")?
        };
        let (raw, _) = object::pod::slice_from_bytes::<ProgramHeader64<LE>>(
            &table,
            if phoff == 0 { 0 } else { phnum },
        )
        .map_err(|_| ElfError::Truncated("program headers"))?;
        let file_len = src.file_len();
        let in_file = |p: &Phdr| {
            p.offset
                .checked_add(p.filesz)
                .is_some_and(|e| e <= file_len)
        };
        let mut phdrs = Vec::with_capacity(raw.len());
        let mut interp = None;
        for ph in raw {
            let p = Phdr::from_object(ph);
            match p.p_type {
                PT_LOAD => {
                    if p.filesz > p.memsz {
                        return Err(ElfError::BadSegment("file size larger than memory size"));
                    }
                    if p.offset.checked_add(p.filesz).is_none() {
                        return Err(ElfError::BadSegment("file range overflows"));
                    }
                    if !in_file(&p) {
                        return Err(ElfError::Truncated("segment data"));
                    }
                    let vend = p
                        .vaddr
                        .checked_add(p.memsz)
                        .ok_or(ElfError::BadSegment("address range overflows"))?;
                    if vend > limit {
                        return Err(ElfError::BadSegment("segment outside the address space"));
                    }
                }
                PT_INTERP => {
                    if !in_file(&p) {
                        return Err(ElfError::Truncated("interpreter path"));
                    }
                    if p.filesz == 0 || p.filesz > MAX_INTERP_LEN as u64 {
                        return Err(ElfError::BadInterp);
                    }
                    let raw = src.read_at(p.offset, p.filesz as usize, "interpreter path")?;
                    // Up to the first NUL; a missing terminator is
                    // tolerated (Linux requires it, qemu does not).
                    let path = raw.split(|&c| c == 0).next().unwrap_or(&raw);
                    if path.is_empty() {
                        return Err(ElfError::BadInterp);
                    }
                    interp = Some(path.to_vec());
                }
                _ => {}
            }
            phdrs.push(p);
        }
        if !phdrs.iter().any(|p| p.p_type == PT_LOAD && p.memsz > 0) {
            return Err(ElfError::NoLoad);
        }
        Ok(Elf {
            e_type,
            entry: hdr.e_entry(LE),
            phoff,
            phnum,
            flags: hdr.e_flags(LE),
            phdrs,
            interp,
        })
    }

    /// Lowest and highest (exclusive) virtual addresses of the PT_LOAD segments.
    pub fn span(&self) -> (u64, u64) {
        let mut lo = u64::MAX;
        let mut hi = 0;
        for p in self.loads() {
            lo = lo.min(p.vaddr);
            hi = hi.max(p.vaddr + p.memsz);
        }
        (lo, hi)
    }

    /// The PT_LOAD segments with a non-empty memory image.
    pub fn loads(&self) -> impl Iterator<Item = &Phdr> {
        self.phdrs
            .iter()
            .filter(|p| p.p_type == PT_LOAD && p.memsz > 0)
    }

    /// Virtual address of the program headers once loaded, if they are in a
    /// loaded segment (unrelocated).
    pub fn phdr_vaddr(&self) -> Option<u64> {
        if let Some(p) = self.phdrs.iter().find(|p| p.p_type == PT_PHDR) {
            return Some(p.vaddr);
        }
        self.loads()
            .find(|p| {
                self.phoff >= p.offset
                    && self.phoff + (self.phnum * PHDR_SIZE) as u64 <= p.offset + p.filesz
            })
            .map(|p| p.vaddr + (self.phoff - p.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(machine: u16) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56 + 16];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        f[24..32].copy_from_slice(&0x10000u64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let p = 64;
        f[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[p + 4..p + 8].copy_from_slice(&(PF_R | PF_X).to_le_bytes());
        f[p + 16..p + 24].copy_from_slice(&0x10000u64.to_le_bytes());
        f[p + 32..p + 40].copy_from_slice(&136u64.to_le_bytes());
        f[p + 40..p + 48].copy_from_slice(&0x2000u64.to_le_bytes());
        f
    }

    #[test]
    fn parses_minimal() {
        let e = Elf::parse(&minimal(EM_RISCV), 1 << 38).unwrap();
        assert_eq!(e.entry, 0x10000);
        assert_eq!(e.span(), (0x10000, 0x12000));
        assert_eq!(e.phdr_vaddr(), Some(0x10040));
    }

    #[test]
    fn rejects_other_machines_and_truncation() {
        assert_eq!(
            Elf::parse(&minimal(62), 1 << 38),
            Err(ElfError::WrongMachine(62))
        );
        let f = minimal(EM_RISCV);
        for n in 0..f.len() - 16 {
            assert!(Elf::parse(&f[..n], 1 << 38).is_err(), "len {n}");
        }
        assert_eq!(Elf::parse(b"#!/bin/sh\n", 1 << 38), Err(ElfError::NotElf));
    }

    #[test]
    fn rejects_segments_outside_the_guest() {
        let mut f = minimal(EM_RISCV);
        f[64 + 16..64 + 24].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
        assert!(matches!(
            Elf::parse(&f, 1 << 38),
            Err(ElfError::BadSegment(_))
        ));
    }

    #[test]
    fn says_which_header_field_is_wrong() {
        let mut f = minimal(EM_RISCV);
        f[5] = 2;
        assert_eq!(Elf::parse(&f, 1 << 38), Err(ElfError::NotLittleEndian));
        let mut f = minimal(EM_RISCV);
        f[16..18].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(Elf::parse(&f, 1 << 38), Err(ElfError::NotExecutable(1)));
        let mut f = minimal(EM_RISCV);
        f[54..56].copy_from_slice(&32u16.to_le_bytes());
        assert_eq!(Elf::parse(&f, 1 << 38), Err(ElfError::BadPhentsize(32)));
        let mut f = minimal(EM_RISCV);
        f[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(Elf::parse(&f, 1 << 38), Err(ElfError::TooManyPhdrs(0xffff)));
        let mut f = minimal(EM_RISCV);
        f[64 + 32..64 + 40].copy_from_slice(&0x3000u64.to_le_bytes());
        assert!(matches!(
            Elf::parse(&f, 1 << 38),
            Err(ElfError::BadSegment(_))
        ));
    }

    #[test]
    fn reads_unaligned_headers() {
        // A file buffer at an odd address, and program headers at an odd
        // offset: Linux copies them out of the file, so they need no
        // alignment.
        let f = minimal(EM_RISCV);
        let mut odd = vec![0u8; f.len() + 1];
        odd[1..].copy_from_slice(&f);
        assert_eq!(Elf::parse(&odd[1..], 1 << 38), Elf::parse(&f, 1 << 38));
        let mut g = f[..64].to_vec();
        g.push(0);
        g.extend_from_slice(&f[64..]);
        g[32..40].copy_from_slice(&65u64.to_le_bytes());
        let e = Elf::parse(&g, 1 << 38).unwrap();
        assert_eq!(e.span(), (0x10000, 0x12000));
    }
}
