//! Loads a riscv64 ELF program (and its interpreter) into an
//! [`AddressSpace`] and builds the initial stack (argv, envp, auxv) the way
//! Linux's `binfmt_elf` does.

use crate::elf::{Elf, ElfError, ET_DYN, PF_R, PF_W, PF_X};
use crate::mm::{
    page_down, page_up, AddressSpace, MmError, GUEST_SIZE, PAGE, PROT_R, PROT_W, PROT_X,
};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where position-independent executables go (Linux's ELF_ET_DYN_BASE for
/// Sv39: two thirds of the address space).
pub const ET_DYN_BASE: u64 = 0x2a_aaaa_a000;
/// Top of the initial stack (one guard page below the end of the space).
pub const STACK_TOP: u64 = GUEST_SIZE - PAGE;
/// Largest program file we read into memory.
pub const MAX_FILE: u64 = 1 << 30;
/// Largest stack we map up front (the stack rlimit may be "unlimited").
const MAX_STACK: u64 = 256 << 20;
/// Largest argv+envp the initial stack takes (Linux: a quarter of the stack
/// limit; we use a fixed cap).
const MAX_ARGS_BYTES: usize = 2 << 20;

/// `AT_HWCAP` for RV64IMAFDC: one bit per single-letter extension.
pub const HWCAP: u64 = (1 << (b'i' - b'a'))
    | (1 << (b'm' - b'a'))
    | 1 // 'a' - 'a'
    | (1 << (b'f' - b'a'))
    | (1 << (b'd' - b'a'))
    | (1 << (b'c' - b'a'));

/// Why a file cannot be loaded; the path is named by [`LoadError`].
#[derive(Debug, Error)]
pub enum FileError {
    #[error("{}", io_message(.0))]
    Io(std::io::Error),
    #[error("is a directory")]
    IsDirectory,
    #[error("not a regular file")]
    NotRegular,
    #[error("file too large ({0} bytes)")]
    TooLarge(u64),
    #[error("{0}")]
    Elf(ElfError),
    #[error("does not fit in the guest address space: {0}")]
    Map(MmError),
}

/// An I/O error without std's " (os error N)" suffix, like strerror.
fn io_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match e.raw_os_error() {
        Some(n) => s
            .strip_suffix(&format!(" (os error {n})"))
            .map(str::to_string)
            .unwrap_or(s),
        None => s,
    }
}

/// Why a program could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{path}: {error}")]
    File { path: PathBuf, error: FileError },
    /// The program's PT_INTERP names a file that cannot be loaded; the
    /// interpreter path is shown escaped (it comes from an untrusted file),
    /// with the host file it was looked up as when that differs.
    #[error("{path}: cannot load interpreter \"{interp}\"{}: {error}",
        host.as_ref().map(|h| format!(" (as {})", h.display())).unwrap_or_default())]
    Interp {
        path: PathBuf,
        interp: String,
        host: Option<PathBuf>,
        error: FileError,
    },
    #[error("argument and environment strings too long")]
    ArgsTooLong,
}

impl LoadError {
    fn file(path: &Path, error: FileError) -> LoadError {
        LoadError::File {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Where things ended up; what the CPU and the syscall layer need.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// First instruction to run (the interpreter's entry if there is one).
    pub pc: u64,
    /// Initial stack pointer.
    pub sp: u64,
    /// Program entry point (AT_ENTRY).
    pub entry: u64,
    /// Start of the program break.
    pub brk: u64,
    /// Lowest and highest address of the main program image.
    pub image: (u64, u64),
    /// Interpreter load address (AT_BASE), 0 if none.
    pub interp_base: u64,
    /// Bottom of the stack mapping.
    pub stack_low: u64,
    /// The auxiliary vector as the guest sees it (pairs of little-endian
    /// words up to and including AT_NULL), for /proc/self/auxv.
    pub auxv: Vec<u8>,
    /// Where the program's and the interpreter's file contents were placed,
    /// for /proc/self/maps.
    pub segments: Vec<FileSegment>,
}

/// Guest pages holding (a copy of) part of a file.
#[derive(Debug, Clone)]
pub struct FileSegment {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub path: PathBuf,
}

/// Reads a file for loading, with clear errors for directories and the like.
pub fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    read(path, false).map_err(|e| LoadError::file(path, e))
}

/// Reads the program to run, which must be executable, as execve requires.
pub fn read_program(path: &Path) -> Result<Vec<u8>, LoadError> {
    read(path, true).map_err(|e| LoadError::file(path, e))
}

/// Whether the effective user may execute `path`, as the kernel's execve
/// decides it: faccessat(X_OK, AT_EACCESS) checks the mode bits against the
/// effective ids (root needs at least one x bit) and refuses files on
/// noexec mounts. Only meaningful for regular files (execve refuses
/// everything else with EACCES; callers check that first).
pub fn exec_access(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::ENOENT))?;
    // SAFETY: `c` is a valid NUL-terminated string; no memory is written.
    let r = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::X_OK, libc::AT_EACCESS) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn read(path: &Path, need_exec: bool) -> Result<Vec<u8>, FileError> {
    let meta = std::fs::metadata(path).map_err(FileError::Io)?;
    if meta.is_dir() {
        return Err(FileError::IsDirectory);
    }
    if !meta.is_file() {
        return Err(FileError::NotRegular);
    }
    if need_exec {
        exec_access(path).map_err(FileError::Io)?;
    }
    if meta.len() > MAX_FILE {
        return Err(FileError::TooLarge(meta.len()));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE).read_to_end(&mut data))
        .map_err(FileError::Io)?;
    Ok(data)
}

fn seg_prot(flags: u32) -> u8 {
    let mut p = 0;
    if flags & PF_R != 0 {
        p |= PROT_R;
    }
    if flags & PF_W != 0 {
        p |= PROT_W | PROT_R;
    }
    if flags & PF_X != 0 {
        p |= PROT_X;
    }
    p
}

/// Maps the PT_LOAD segments of `elf` (contents `data`) at `bias`.
fn map_image(
    mm: &AddressSpace,
    path: &Path,
    elf: &Elf,
    data: &[u8],
    bias: u64,
    segments: &mut Vec<FileSegment>,
) -> Result<(u64, u64), FileError> {
    let merr = FileError::Map;
    let (lo, hi) = elf.span();
    let lo = page_down(lo + bias);
    let hi = page_up(hi + bias)
        .filter(|&h| h <= GUEST_SIZE)
        .ok_or_else(|| merr(MmError::OutOfRange { addr: lo, len: 0 }))?;
    // Map the whole span writable, copy the segments, then set each page's
    // final permissions (pages shared by two segments get the union).
    mm.map(lo, hi - lo, PROT_R | PROT_W, false, -1, 0)
        .map_err(merr)?;
    for p in elf.loads() {
        if p.filesz > 0 {
            let start = page_down(p.vaddr.wrapping_add(bias));
            segments.push(FileSegment {
                start,
                end: page_up(p.vaddr.wrapping_add(bias).saturating_add(p.filesz))
                    .unwrap_or(hi)
                    .min(hi),
                // Congruent in a well-formed ELF; only informative otherwise.
                offset: p.offset.wrapping_sub(p.vaddr.wrapping_add(bias) - start),
                path: path.to_path_buf(),
            });
        }
        let src = &data[p.offset as usize..(p.offset + p.filesz) as usize];
        mm.write(p.vaddr + bias, src).ok_or_else(|| {
            merr(MmError::OutOfRange {
                addr: p.vaddr,
                len: p.filesz,
            })
        })?;
    }
    let npages = ((hi - lo) / PAGE) as usize;
    let mut prots = vec![0u8; npages];
    for p in elf.loads() {
        let s = page_down(p.vaddr + bias);
        let e = page_up(p.vaddr + bias + p.memsz).unwrap_or(hi);
        let mut a = s;
        while a < e {
            prots[((a - lo) / PAGE) as usize] |= seg_prot(p.flags);
            a += PAGE;
        }
    }
    // Apply in runs of equal permission.
    let mut i = 0;
    while i < npages {
        let mut j = i + 1;
        while j < npages && prots[j] == prots[i] {
            j += 1;
        }
        let a = lo + i as u64 * PAGE;
        let len = (j - i) as u64 * PAGE;
        if prots[i] == 0 {
            mm.unmap(a, len).map_err(merr)?;
        } else {
            mm.protect(a, len, prots[i]).map_err(merr)?;
        }
        i = j;
    }
    Ok((lo, hi))
}

fn max_align(elf: &Elf) -> u64 {
    elf.loads()
        .map(|p| p.align)
        .filter(|a| a.is_power_of_two())
        .max()
        .unwrap_or(PAGE)
        .clamp(PAGE, 1 << 30)
}

/// Picks a load bias for an ET_DYN image.
///
/// Follows qemu 7.2's `load_elf_image` (linux-user/elfload.c): the image's
/// lowest address is a hint. A pre-linked ET_DYN (first segment at a
/// nonzero address: a prelinked library, or an executable that is not
/// position-independent but says ET_DYN) goes to its link address when that
/// range is free, which such a file needs to run; Linux does the same for
/// an ET_DYN without an interpreter (`load_bias = 0`, mapped without
/// MAP_FIXED in `load_elf_binary`). Otherwise the image goes to `preferred`
/// (Linux's ELF_ET_DYN_BASE for a main program) or anywhere free.
fn choose_bias(mm: &AddressSpace, elf: &Elf, preferred: Option<u64>) -> Result<u64, MmError> {
    let (lo, hi) = elf.span();
    let lo = page_down(lo);
    let size = page_up(hi).ok_or(MmError::NoSpace(hi))? - lo;
    if lo != 0 && lo.checked_add(size).is_some_and(|e| e <= GUEST_SIZE) && mm.is_free(lo, size) {
        return Ok(0);
    }
    let align = max_align(elf);
    if let Some(p) = preferred {
        let p = (p + align - 1) & !(align - 1);
        if p.checked_add(size).is_some_and(|e| e <= GUEST_SIZE) && mm.is_free(p, size) {
            return Ok(p - lo);
        }
    }
    // Over-allocate to satisfy the alignment, as Linux does.
    let a = mm.choose(0, size + align, false, false)?;
    let a = (a + align - 1) & !(align - 1);
    Ok(a - lo)
}

/// Process-wide values that go into the auxiliary vector.
#[derive(Debug, Clone)]
pub struct AuxInfo {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    /// 16 random bytes for AT_RANDOM.
    pub random: [u8; 16],
}

impl AuxInfo {
    /// Values of the running host process.
    pub fn host() -> AuxInfo {
        let mut random = [0u8; 16];
        // SAFETY: getrandom writes at most 16 bytes into the buffer.
        unsafe { libc::getrandom(random.as_mut_ptr() as *mut libc::c_void, 16, 0) };
        // SAFETY: these calls have no preconditions.
        unsafe {
            AuxInfo {
                uid: libc::getuid(),
                euid: libc::geteuid(),
                gid: libc::getgid(),
                egid: libc::getegid(),
                random,
            }
        }
    }
}

/// Loads `path` (already read into `data`), its interpreter (looked up under
/// `sysroot` if given) and builds the stack.
#[allow(clippy::too_many_arguments)]
pub fn load(
    mm: &AddressSpace,
    path: &Path,
    data: &[u8],
    sysroot: Option<&Path>,
    argv: &[Vec<u8>],
    envp: &[Vec<u8>],
    execfn: &[u8],
    aux: &AuxInfo,
    stack_size: u64,
) -> Result<Loaded, LoadError> {
    let ferr = |error| LoadError::file(path, error);
    let elf = Elf::parse(data, GUEST_SIZE).map_err(|e| ferr(FileError::Elf(e)))?;
    let stack_size = page_up(stack_size.clamp(128 << 10, MAX_STACK)).unwrap_or(8 << 20);
    let stack_low = STACK_TOP - stack_size;
    // Leave a gap under the stack; mmap allocations go top-down below it.
    mm.set_mmap_window(0x1_0000, stack_low - (16 << 20));

    let merr = |error| ferr(FileError::Map(error));
    let bias = if elf.e_type == ET_DYN {
        choose_bias(mm, &elf, Some(ET_DYN_BASE)).map_err(merr)?
    } else {
        0
    };
    let mut segments = Vec::new();
    let (lo, hi) = map_image(mm, path, &elf, data, bias, &mut segments).map_err(ferr)?;
    let entry = elf.entry.wrapping_add(bias);
    let phdr = elf.phdr_vaddr().map(|v| v + bias).unwrap_or(lo + elf.phoff);

    let mut pc = entry;
    let mut interp_base = 0;
    if let Some(interp) = &elf.interp {
        let ipath = interp_path(interp, sysroot);
        let (ilo, ientry) =
            load_interp(mm, &ipath, &mut segments).map_err(|error| LoadError::Interp {
                path: path.to_path_buf(),
                interp: interp.escape_ascii().to_string(),
                host: (ipath.as_os_str().as_bytes() != interp.as_slice()).then_some(ipath),
                error,
            })?;
        interp_base = ilo;
        pc = ientry;
    }

    let brk = hi;
    mm.set_brk_start(brk);
    mm.map(stack_low, stack_size, PROT_R | PROT_W, false, -1, 0)
        .map_err(merr)?;

    let auxv: Vec<(u64, u64)> = vec![
        (3, phdr),                                                 // AT_PHDR
        (4, 56),                                                   // AT_PHENT
        (5, elf.phnum as u64),                                     // AT_PHNUM
        (6, PAGE),                                                 // AT_PAGESZ
        (7, interp_base),                                          // AT_BASE
        (8, 0),                                                    // AT_FLAGS
        (9, entry),                                                // AT_ENTRY
        (11, aux.uid as u64),                                      // AT_UID
        (12, aux.euid as u64),                                     // AT_EUID
        (13, aux.gid as u64),                                      // AT_GID
        (14, aux.egid as u64),                                     // AT_EGID
        (16, HWCAP),                                               // AT_HWCAP
        (17, 100),                                                 // AT_CLKTCK
        (23, (aux.uid != aux.euid || aux.gid != aux.egid) as u64), // AT_SECURE
        (51, 1024 + 128), // AT_MINSIGSTKSZ: our frame is 1088 bytes
    ];
    let (sp, auxv) = build_stack(mm, argv, envp, execfn, &aux.random, &auxv)?;
    Ok(Loaded {
        auxv,
        segments,
        pc,
        sp,
        entry,
        brk,
        image: (lo, hi),
        interp_base,
        stack_low,
    })
}

/// Maps the interpreter at `ipath`; returns its lowest address and entry.
fn load_interp(
    mm: &AddressSpace,
    ipath: &Path,
    segments: &mut Vec<FileSegment>,
) -> Result<(u64, u64), FileError> {
    let idata = read(ipath, false)?;
    let ielf = Elf::parse(&idata, GUEST_SIZE).map_err(FileError::Elf)?;
    let ibias = if ielf.e_type == ET_DYN {
        choose_bias(mm, &ielf, None).map_err(FileError::Map)?
    } else {
        0
    };
    let (ilo, _) = map_image(mm, ipath, &ielf, &idata, ibias, segments)?;
    Ok((ilo, ielf.entry.wrapping_add(ibias)))
}

/// The host path of the interpreter named in PT_INTERP.
pub fn interp_path(interp: &[u8], sysroot: Option<&Path>) -> PathBuf {
    let p = Path::new(std::ffi::OsStr::from_bytes(interp));
    match sysroot {
        Some(root) => {
            let rel = p.strip_prefix("/").unwrap_or(p);
            let under = root.join(rel);
            // Like qemu's -L: use the sysroot copy when it exists, the
            // host path otherwise.
            if under.exists() {
                under
            } else {
                p.to_path_buf()
            }
        }
        None => p.to_path_buf(),
    }
}

fn build_stack(
    mm: &AddressSpace,
    argv: &[Vec<u8>],
    envp: &[Vec<u8>],
    execfn: &[u8],
    random: &[u8; 16],
    auxv: &[(u64, u64)],
) -> Result<(u64, Vec<u8>), LoadError> {
    let total: usize = argv.iter().chain(envp).map(|s| s.len() + 1).sum::<usize>() + execfn.len();
    if total > MAX_ARGS_BYTES {
        return Err(LoadError::ArgsTooLong);
    }
    let mut sp = STACK_TOP;
    let push_bytes = |bytes: &[u8], sp: &mut u64| -> u64 {
        *sp -= bytes.len() as u64;
        // Inside the freshly mapped stack: total is capped above.
        let _ = mm.write(*sp, bytes);
        *sp
    };
    let mut s = execfn.to_vec();
    s.push(0);
    let execfn_addr = push_bytes(&s, &mut sp);
    let mut env_addrs = Vec::with_capacity(envp.len());
    for e in envp.iter().rev() {
        let mut s = e.clone();
        s.push(0);
        env_addrs.push(push_bytes(&s, &mut sp));
    }
    env_addrs.reverse();
    let mut arg_addrs = Vec::with_capacity(argv.len());
    for a in argv.iter().rev() {
        let mut s = a.clone();
        s.push(0);
        arg_addrs.push(push_bytes(&s, &mut sp));
    }
    arg_addrs.reverse();
    sp &= !15;
    let random_addr = push_bytes(random, &mut sp);
    let mut words: Vec<u64> = Vec::new();
    words.push(argv.len() as u64);
    words.extend(&arg_addrs);
    words.push(0);
    words.extend(&env_addrs);
    words.push(0);
    for &(k, v) in auxv {
        words.push(k);
        words.push(v);
    }
    let auxv_at = words.len();
    words.extend([25, random_addr, 31, execfn_addr, 0, 0]); // AT_RANDOM, AT_EXECFN, AT_NULL
    let auxv_at = auxv_at - 2 * auxv.len();
    sp -= words.len() as u64 * 8;
    sp &= !15;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    mm.write(sp, &bytes).ok_or(LoadError::ArgsTooLong)?;
    Ok((sp, bytes[auxv_at * 8..].to_vec()))
}
