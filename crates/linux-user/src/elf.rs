//! A strict parser for the parts of a riscv64 ELF file that a loader needs.
//!
//! Everything here works on an untrusted byte slice: every offset and size is
//! checked before use, so a truncated or malicious file yields an [`ElfError`]
//! and never a panic or an out-of-bounds read. It is fuzzed by
//! `crates/linux-user/fuzz`.

use thiserror::Error;

/// `e_machine` of RISC-V.
pub const EM_RISCV: u16 = 243;
/// `e_type` of a fixed-address executable.
pub const ET_EXEC: u16 = 2;
/// `e_type` of a position-independent object (PIE, static-PIE, ld.so).
pub const ET_DYN: u16 = 3;
/// A loadable segment.
pub const PT_LOAD: u32 = 1;
/// The path of the program interpreter (the dynamic linker).
pub const PT_INTERP: u32 = 3;
/// The program headers themselves.
pub const PT_PHDR: u32 = 6;
/// Stack permissions.
pub const PT_GNU_STACK: u32 = 0x6474_e551;

/// Segment is executable.
pub const PF_X: u32 = 1;
/// Segment is writable.
pub const PF_W: u32 = 2;
/// Segment is readable.
pub const PF_R: u32 = 4;

/// Size of an ELF64 file header.
pub const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
pub const PHDR_SIZE: usize = 56;
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

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or([0; 4]))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or([0; 8]))
}

impl Elf {
    /// Parses and validates `file` (the whole file contents).
    ///
    /// `limit` is the size of the guest address space: every segment must fit
    /// below it (after relocation for position-independent files).
    pub fn parse(file: &[u8], limit: u64) -> Result<Elf, ElfError> {
        if file.len() < 4 || &file[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        if file.len() < EHDR_SIZE {
            return Err(ElfError::Truncated("file header"));
        }
        if file[4] != 2 {
            return Err(ElfError::NotElf64(file[4]));
        }
        if file[5] != 1 {
            return Err(ElfError::NotLittleEndian);
        }
        let e_type = u16_at(file, 16);
        let machine = u16_at(file, 18);
        if machine != EM_RISCV {
            return Err(ElfError::WrongMachine(machine));
        }
        if e_type != ET_EXEC && e_type != ET_DYN {
            return Err(ElfError::NotExecutable(e_type));
        }
        let entry = u64_at(file, 24);
        let phoff = u64_at(file, 32);
        let flags = u32_at(file, 48);
        let phentsize = u16_at(file, 54);
        let phnum = u16_at(file, 56) as usize;
        if phentsize as usize != PHDR_SIZE {
            return Err(ElfError::BadPhentsize(phentsize));
        }
        if phnum > MAX_PHNUM {
            return Err(ElfError::TooManyPhdrs(phnum));
        }
        let ph_end = (phnum as u64)
            .checked_mul(PHDR_SIZE as u64)
            .and_then(|n| n.checked_add(phoff))
            .ok_or(ElfError::Truncated("program headers"))?;
        if ph_end > file.len() as u64 {
            return Err(ElfError::Truncated("program headers"));
        }
        let mut phdrs = Vec::with_capacity(phnum);
        let mut interp = None;
        for i in 0..phnum {
            let o = phoff as usize + i * PHDR_SIZE;
            let ph = Phdr {
                p_type: u32_at(file, o),
                flags: u32_at(file, o + 4),
                offset: u64_at(file, o + 8),
                vaddr: u64_at(file, o + 16),
                filesz: u64_at(file, o + 32),
                memsz: u64_at(file, o + 40),
                align: u64_at(file, o + 48),
            };
            match ph.p_type {
                PT_LOAD => {
                    if ph.filesz > ph.memsz {
                        return Err(ElfError::BadSegment("file size larger than memory size"));
                    }
                    let fend = ph
                        .offset
                        .checked_add(ph.filesz)
                        .ok_or(ElfError::BadSegment("file range overflows"))?;
                    if fend > file.len() as u64 {
                        return Err(ElfError::Truncated("segment data"));
                    }
                    let vend = ph
                        .vaddr
                        .checked_add(ph.memsz)
                        .ok_or(ElfError::BadSegment("address range overflows"))?;
                    if vend > limit {
                        return Err(ElfError::BadSegment("segment outside the address space"));
                    }
                }
                PT_INTERP => {
                    let end = ph
                        .offset
                        .checked_add(ph.filesz)
                        .filter(|&e| e <= file.len() as u64)
                        .ok_or(ElfError::Truncated("interpreter path"))?;
                    if ph.filesz == 0 || ph.filesz as usize > MAX_INTERP_LEN {
                        return Err(ElfError::BadInterp);
                    }
                    let raw = &file[ph.offset as usize..end as usize];
                    let path = match raw.iter().position(|&c| c == 0) {
                        Some(n) => &raw[..n],
                        None => raw,
                    };
                    if path.is_empty() {
                        return Err(ElfError::BadInterp);
                    }
                    interp = Some(path.to_vec());
                }
                _ => {}
            }
            phdrs.push(ph);
        }
        if !phdrs.iter().any(|p| p.p_type == PT_LOAD && p.memsz > 0) {
            return Err(ElfError::NoLoad);
        }
        Ok(Elf {
            e_type,
            entry,
            phoff,
            phnum,
            flags,
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
}
