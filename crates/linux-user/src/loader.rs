//! Loads a riscv64 ELF program (and its interpreter) into an
//! [`AddressSpace`] and builds the initial stack (argv, envp, auxv) the way
//! Linux's `binfmt_elf` does.

use crate::elf::{Elf, ElfError, ElfSource, Phdr, ET_DYN, PF_R, PF_W, PF_X};
use crate::mm::{
    page_down, page_up, AddressSpace, MmError, GUEST_SIZE, PAGE, PROT_R, PROT_W, PROT_X,
};
use std::borrow::Cow;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where position-independent executables go (Linux's ELF_ET_DYN_BASE for
/// Sv39: two thirds of the address space).
pub const ET_DYN_BASE: u64 = 0x2a_aaaa_a000;
/// Top of the initial stack (one guard page below the end of the space).
pub const STACK_TOP: u64 = GUEST_SIZE - PAGE;
/// Largest program file we load.
pub const MAX_FILE: u64 = 1 << 30;
/// How much of a program file is read up front: the ELF header, and in
/// practice the program headers and the interpreter path too.
const HEAD: u64 = 4096;
/// Copies from a file into guest memory go in pieces of this size.
const COPY_CHUNK: usize = 1 << 20;
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
    /// (device, inode) of the files whose pages are mapped (the program and
    /// its interpreter): writing them would change the running code, which
    /// Linux refuses (ETXTBSY).
    pub files: Vec<(u64, u64)>,
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

/// Opens the program to run, which must be executable, as execve requires.
pub fn read_program(path: &Path) -> Result<ProgramFile, LoadError> {
    ProgramFile::open(path, true).map_err(|e| LoadError::file(path, e))
}

/// A program file opened for loading. Only its first bytes are read up
/// front; its segments are mapped from it (or copied, see [`load`]).
#[derive(Debug)]
pub struct ProgramFile {
    file: std::fs::File,
    len: u64,
    head: Vec<u8>,
    /// (device, inode).
    id: (u64, u64),
}

impl ProgramFile {
    /// Opens `path`, with clear errors for directories and the like.
    pub fn open(path: &Path, need_exec: bool) -> Result<ProgramFile, FileError> {
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
        let file = std::fs::File::open(path).map_err(FileError::Io)?;
        // The length of what was opened, not of what the path named a
        // moment ago.
        let meta = file.metadata().map_err(FileError::Io)?;
        let (len, id) = (meta.len(), (meta.dev(), meta.ino()));
        if len > MAX_FILE {
            return Err(FileError::TooLarge(len));
        }
        // Up to HEAD bytes, fewer if the file ends first: a file shortened
        // since the fstat, or one whose size overstates its contents (sysfs
        // files say 4096), is only what it holds, and the parser says what
        // is missing.
        let want = len.min(HEAD) as usize;
        let mut head = vec![0u8; want];
        let mut n = 0;
        while n < want {
            match file.read_at(&mut head[n..], n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FileError::Io(e)),
            }
        }
        head.truncate(n);
        let len = if n < want { n as u64 } else { len };
        Ok(ProgramFile {
            file,
            len,
            head,
            id,
        })
    }

    /// The file's (device, inode).
    pub fn id(&self) -> (u64, u64) {
        self.id
    }
}

impl ElfSource for ProgramFile {
    fn file_len(&self) -> u64 {
        self.len
    }

    fn read_at(
        &self,
        offset: u64,
        len: usize,
        what: &'static str,
    ) -> Result<Cow<'_, [u8]>, ElfError> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.len)
            .ok_or(ElfError::Truncated(what))?;
        if end <= self.head.len() as u64 {
            return Ok(Cow::Borrowed(&self.head[offset as usize..end as usize]));
        }
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| read_error(e, what))?;
        Ok(Cow::Owned(buf))
    }
}

fn read_error(e: std::io::Error, what: &'static str) -> ElfError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        // Shortened since it was opened.
        ElfError::Truncated(what)
    } else {
        ElfError::Read(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// What [`load`] loads from: a file (whose segments are mapped, as Linux
/// and qemu do) or bytes in memory (tests and fuzzing; everything copied).
#[derive(Debug, Clone, Copy)]
pub enum Image<'a> {
    Bytes(&'a [u8]),
    File(&'a ProgramFile),
}

impl Image<'_> {
    fn parse(&self) -> Result<Elf, ElfError> {
        match self {
            Image::Bytes(b) => Elf::parse(b, GUEST_SIZE),
            Image::File(f) => Elf::parse_from(*f, GUEST_SIZE),
        }
    }

    /// Copies `len` bytes at file `offset` to guest `addr`, mapped
    /// writable. The file range was checked by the parser.
    fn copy(&self, mm: &AddressSpace, addr: u64, offset: u64, len: u64) -> Result<(), FileError> {
        let out_of_range = || FileError::Map(MmError::OutOfRange { addr, len });
        match self {
            Image::Bytes(b) => {
                let src = b
                    .read_at(offset, len as usize, "segment data")
                    .map_err(FileError::Elf)?;
                mm.write(addr, &src).ok_or_else(out_of_range)
            }
            Image::File(f) => {
                // Straight into guest memory, a piece at a time: no buffer
                // as large as the segment.
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(COPY_CHUNK as u64);
                    let dst = mm
                        .slice_mut(addr + done, n as usize)
                        .ok_or_else(out_of_range)?;
                    f.file
                        .read_exact_at(dst, offset + done)
                        .map_err(|e| FileError::Elf(read_error(e, "segment data")))?;
                    done += n;
                }
                Ok(())
            }
        }
    }
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

/// Maps the PT_LOAD segments of `elf` (from `image`) at `bias`.
fn map_image(
    mm: &AddressSpace,
    path: &Path,
    elf: &Elf,
    image: Image<'_>,
    bias: u64,
    segments: &mut Vec<FileSegment>,
) -> Result<(u64, u64), FileError> {
    let merr = FileError::Map;
    let (lo, hi) = elf.span();
    let lo = page_down(lo + bias);
    let hi = page_up(hi + bias)
        .filter(|&h| h <= GUEST_SIZE)
        .ok_or_else(|| merr(MmError::OutOfRange { addr: lo, len: 0 }))?;
    // Map the whole span writable, fill in the segments, then set each
    // page's final permissions (pages shared by two segments get the union).
    mm.map(lo, hi - lo, PROT_R | PROT_W, false, -1, 0)
        .map_err(merr)?;
    let loads: Vec<&Phdr> = elf.loads().collect();
    // The file as /proc/self/maps names it (the host does so for the mapped
    // pages): absolute now, not relative to wherever the guest chdirs.
    let seg_path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    // End of the file range mapped (not copied): checked against the file's
    // length once everything is mapped.
    let mut mapped_end = 0;
    for (i, p) in loads.iter().enumerate() {
        if p.filesz == 0 {
            continue;
        }
        let v = p.vaddr + bias;
        let start = page_down(v);
        segments.push(FileSegment {
            start,
            end: page_up(v.saturating_add(p.filesz)).unwrap_or(hi).min(hi),
            // Congruent in a well-formed ELF; only informative otherwise.
            offset: p.offset.wrapping_sub(v - start),
            path: seg_path.clone(),
        });
        let fend = v + p.filesz;
        // The segment's whole pages come from the file by a private
        // mapping, as Linux and qemu load programs: nothing is read or
        // copied until the guest touches a page, and the page cache is
        // shared by every process running the file. That needs the file
        // offset congruent with the address and pages no other segment
        // shares; the last, partial page is copied, so that what follows
        // the file data in it is zero and no page maps past the file's end.
        let mut copy_from = v;
        if let Image::File(f) = image {
            let alone = loads
                .iter()
                .enumerate()
                .all(|(j, q)| j == i || !pages_overlap(p, q));
            let full_end = page_down(fend);
            if alone && v % PAGE == p.offset % PAGE && full_end > start {
                let len = full_end - start;
                let fd = f.file.as_raw_fd();
                if mm
                    .map(start, len, PROT_R | PROT_W, false, fd, page_down(p.offset))
                    .is_ok()
                {
                    copy_from = full_end;
                    mapped_end = mapped_end.max(page_down(p.offset) + len);
                } else {
                    // A file system that cannot map files: copy, into
                    // fresh anonymous pages (a failed fixed mapping may
                    // have dropped the old ones).
                    mm.map(start, len, PROT_R | PROT_W, false, -1, 0)
                        .map_err(merr)?;
                }
            }
        }
        if fend > copy_from {
            image.copy(mm, copy_from, p.offset + (copy_from - v), fend - copy_from)?;
        }
    }
    // A file shortened since it was opened leaves mapped pages past its
    // end, which the host faults (SIGBUS) on first touch: refuse it, as a
    // short copy is refused. (A file shortened while the program runs still
    // faults, as under qemu; Linux refuses to write a running program.)
    if let Image::File(f) = image {
        if mapped_end > 0 && f.file.metadata().map_err(FileError::Io)?.len() < mapped_end {
            return Err(FileError::Elf(ElfError::Truncated("segment data")));
        }
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

/// Whether two segments touch a common page (bias is the same for both).
fn pages_overlap(p: &Phdr, q: &Phdr) -> bool {
    let range = |s: &Phdr| (page_down(s.vaddr), s.vaddr.saturating_add(s.memsz));
    let (ps, pe) = range(p);
    let (qs, qe) = range(q);
    ps < qe && qs < pe
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

/// Loads `path` (opened as `image`), its interpreter (looked up under
/// `sysroot` if given) and builds the stack.
#[allow(clippy::too_many_arguments)]
pub fn load(
    mm: &AddressSpace,
    path: &Path,
    image: Image<'_>,
    sysroot: Option<&Path>,
    argv: &[Vec<u8>],
    envp: &[Vec<u8>],
    execfn: &[u8],
    aux: &AuxInfo,
    stack_size: u64,
) -> Result<Loaded, LoadError> {
    let ferr = |error| LoadError::file(path, error);
    let elf = image.parse().map_err(|e| ferr(FileError::Elf(e)))?;
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
    let (lo, hi) = map_image(mm, path, &elf, image, bias, &mut segments).map_err(ferr)?;
    let mut files: Vec<(u64, u64)> = match image {
        Image::File(f) => vec![f.id()],
        Image::Bytes(_) => Vec::new(),
    };
    let entry = elf.entry.wrapping_add(bias);
    let phdr = elf.phdr_vaddr().map(|v| v + bias).unwrap_or(lo + elf.phoff);

    let mut pc = entry;
    let mut interp_base = 0;
    if let Some(interp) = &elf.interp {
        let ipath = interp_path(interp, sysroot);
        let (ilo, ientry) =
            load_interp(mm, &ipath, &mut segments, &mut files).map_err(|error| {
                LoadError::Interp {
                    path: path.to_path_buf(),
                    interp: interp.escape_ascii().to_string(),
                    host: (ipath.as_os_str().as_bytes() != interp.as_slice()).then_some(ipath),
                    error,
                }
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
        files,
    })
}

/// Maps the interpreter at `ipath`; returns its lowest address and entry.
fn load_interp(
    mm: &AddressSpace,
    ipath: &Path,
    segments: &mut Vec<FileSegment>,
    files: &mut Vec<(u64, u64)>,
) -> Result<(u64, u64), FileError> {
    let ifile = ProgramFile::open(ipath, false)?;
    files.push(ifile.id());
    let ielf = Elf::parse_from(&ifile, GUEST_SIZE).map_err(FileError::Elf)?;
    let ibias = if ielf.e_type == ET_DYN {
        choose_bias(mm, &ielf, None).map_err(FileError::Map)?
    } else {
        0
    };
    let (ilo, _) = map_image(mm, ipath, &ielf, Image::File(&ifile), ibias, segments)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{EM_RISCV, ET_EXEC, PT_LOAD};

    /// (flags, file offset, address, file size, memory size) of each PT_LOAD.
    type Seg = (u32, u64, u64, u64, u64);

    /// An ET_EXEC riscv64 file with `segs`, its bytes a pattern that differs
    /// from page to page (so a wrong offset shows), `len` bytes long.
    fn elf(segs: &[Seg], len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        f[..64].fill(0);
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[18..20].copy_from_slice(&EM_RISCV.to_le_bytes());
        f[24..32].copy_from_slice(&segs[0].2.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, &(flags, off, vaddr, filesz, memsz)) in segs.iter().enumerate() {
            let p = 64 + 56 * i;
            f[p..p + 56].fill(0);
            f[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            f[p + 4..p + 8].copy_from_slice(&flags.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            f[p + 16..p + 24].copy_from_slice(&vaddr.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
            f[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
            f[p + 48..p + 56].copy_from_slice(&PAGE.to_le_bytes());
        }
        f
    }

    /// `bytes` written to a fresh file named after `name` and the process.
    fn file(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vk-loader-{name}-{}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn aux() -> AuxInfo {
        AuxInfo {
            uid: 0,
            euid: 0,
            gid: 0,
            egid: 0,
            random: [7; 16],
        }
    }

    fn load_image(image: Image<'_>) -> Result<(AddressSpace, Loaded), LoadError> {
        let mm = AddressSpace::new().unwrap();
        let l = load(
            &mm,
            Path::new("prog"),
            image,
            None,
            &[b"prog".to_vec()],
            &[],
            b"prog",
            &aux(),
            1 << 20,
        )?;
        Ok((mm, l))
    }

    /// Every byte and page permission of the image's span.
    fn snapshot(mm: &AddressSpace, l: &Loaded) -> Vec<(u8, Vec<u8>)> {
        (l.image.0..l.image.1)
            .step_by(PAGE as usize)
            .map(|a| {
                let perm = mm.page_perm(a);
                let bytes = mm
                    .slice(a, PAGE as usize)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                (perm, bytes)
            })
            .collect()
    }

    /// Loads `bytes` from memory and from a file: both must give the same
    /// image. Returns the file, its path and the file-loaded space.
    fn both_ways(name: &str, bytes: &[u8]) -> (PathBuf, AddressSpace, Loaded) {
        let (mm_b, l_b) = load_image(Image::Bytes(bytes)).unwrap();
        let path = file(name, bytes);
        let pf = ProgramFile::open(&path, false).unwrap();
        let (mm_f, l_f) = load_image(Image::File(&pf)).unwrap();
        assert_eq!(l_b.image, l_f.image);
        let (sb, sf) = (snapshot(&mm_b, &l_b), snapshot(&mm_f, &l_f));
        for (i, (b, f)) in sb.iter().zip(&sf).enumerate() {
            assert_eq!(b.0, f.0, "permissions of page {i}");
            // Inside the segments the contents must agree; outside them a
            // mapped page shows the file, as under Linux.
            for (k, seg) in Elf::parse(bytes, GUEST_SIZE).unwrap().loads().enumerate() {
                let a = l_b.image.0 + i as u64 * PAGE;
                let (s, e) = (seg.vaddr.max(a), (seg.vaddr + seg.memsz).min(a + PAGE));
                for x in s..e {
                    let o = (x - a) as usize;
                    assert_eq!(b.1[o], f.1[o], "segment {k}, address {x:#x}");
                }
            }
        }
        (path, mm_f, l_f)
    }

    #[test]
    fn whole_pages_come_from_the_file_and_the_partial_page_is_copied() {
        // Text: two whole pages and a partial one. Data: congruent with its
        // offset, a partial page then bss.
        let segs = [
            (PF_R | PF_X, 0, 0x10000, 0x2345, 0x2345),
            (PF_R | PF_W, 0x2400, 0x13400, 0x1900, 0x3000),
        ];
        let bytes = elf(&segs, 0x4000);
        let (path, mm, _) = both_ways("mapped", &bytes);
        // The bss after the data's file part is zero, in its partial page too.
        assert!(mm
            .slice(0x13400 + 0x1900, 0x3000 - 0x1900)
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        // The whole pages are the file's pages (a private mapping shows a
        // write to the file where the guest has not written); the copied
        // partial page does not.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        for off in [0x1000, 0x2100, 0x2500, 0x3000] {
            f.write_all_at(&[0xa5], off).unwrap();
        }
        assert_eq!(
            mm.slice(0x11000, 1).unwrap()[0],
            0xa5,
            "whole text page mapped"
        );
        assert_eq!(
            mm.slice(0x12100, 1).unwrap()[0],
            bytes[0x2100],
            "partial text page copied"
        );
        assert_eq!(
            mm.slice(0x13500, 1).unwrap()[0],
            0xa5,
            "whole data page mapped"
        );
        assert_eq!(
            mm.slice(0x14000, 1).unwrap()[0],
            bytes[0x3000],
            "partial data page copied"
        );
        // The guest's own write to a mapped page stays its own.
        mm.write(0x13504, &[1]).unwrap();
        f.write_all_at(&[0x5a], 0x2504).unwrap();
        assert_eq!(mm.slice(0x13504, 1).unwrap()[0], 1);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn shared_pages_and_incongruent_offsets_are_copied() {
        let segs = [
            // Text and data share the page at 0x12000.
            (PF_R | PF_X, 0, 0x10000, 0x2345, 0x2345),
            (PF_R | PF_W, 0x2400, 0x12400, 0x1000, 0x1800),
            // Offset 0x100 into the file at a page-aligned address.
            (PF_R, 0x100, 0x20000, 0x2000, 0x2000),
        ];
        let bytes = elf(&segs, 0x4000);
        let (path, mm, _) = both_ways("copied", &bytes);
        assert_eq!(
            mm.page_perm(0x12000),
            PROT_R | PROT_W | PROT_X,
            "union of both"
        );
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xa5; 0x3000], 0x1000).unwrap();
        for a in [0x11000, 0x12800, 0x20f00, 0x21000] {
            assert_ne!(
                mm.slice(a, 1).unwrap()[0],
                0xa5,
                "{a:#x} copied, not mapped"
            );
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn program_headers_and_interpreter_beyond_the_first_bytes_are_read() {
        // Program headers and PT_INTERP past HEAD: read on demand.
        let segs = [(PF_R | PF_X, 0, 0x10000, 0x100, 0x100)];
        let mut bytes = elf(&segs, 0x3000);
        let ph: Vec<u8> = bytes[64..120].to_vec();
        bytes[0x2000..0x2038].copy_from_slice(&ph);
        let mut interp = [0u8; 56];
        interp[..4].copy_from_slice(&crate::elf::PT_INTERP.to_le_bytes());
        interp[8..16].copy_from_slice(&0x2800u64.to_le_bytes());
        interp[32..40].copy_from_slice(&12u64.to_le_bytes());
        bytes[0x2038..0x2070].copy_from_slice(&interp);
        bytes[0x2800..0x280c].copy_from_slice(b"/lib/ld.so\0\0");
        bytes[32..40].copy_from_slice(&0x2000u64.to_le_bytes());
        bytes[56..58].copy_from_slice(&2u16.to_le_bytes());
        let path = file("far", &bytes);
        let pf = ProgramFile::open(&path, false).unwrap();
        let e = Elf::parse_from(&pf, GUEST_SIZE).unwrap();
        assert_eq!(e, Elf::parse(&bytes, GUEST_SIZE).unwrap());
        assert_eq!(e.interp.as_deref(), Some(&b"/lib/ld.so"[..]));
        std::fs::remove_file(path).unwrap();
    }

    /// Random layouts (overlapping, page-sharing, congruent or not,
    /// ET_EXEC and ET_DYN) load the same from bytes and from a file.
    #[test]
    fn random_layouts_load_the_same_from_bytes_and_from_a_file() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let len = 0x10000usize;
        let mut compared = 0;
        for round in 0..400 {
            let nseg = 1 + rnd(4) as usize;
            let dyn_ = rnd(2) == 0;
            let mut segs = Vec::new();
            for _ in 0..nseg {
                let vaddr = if dyn_ { 0 } else { 0x10000 } + rnd(0x8000);
                let off = if rnd(2) == 0 {
                    (rnd(8) * PAGE) + vaddr % PAGE
                } else {
                    rnd(0x8000)
                };
                let filesz = rnd(0x4000).min(len as u64 - off);
                let memsz = filesz + rnd(3) * rnd(0x3000);
                let flags = [PF_R, PF_R | PF_X, PF_R | PF_W, PF_X][rnd(4) as usize];
                segs.push((flags, off, vaddr, filesz, memsz));
            }
            if segs.iter().all(|s| s.4 == 0) {
                continue;
            }
            let mut bytes = elf(&segs, len);
            if dyn_ {
                bytes[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
            }
            let rb = load_image(Image::Bytes(&bytes));
            let path = file(&format!("rand{round}"), &bytes);
            let pf = ProgramFile::open(&path, false).unwrap();
            let rf = load_image(Image::File(&pf));
            std::fs::remove_file(&path).unwrap();
            let ((mb, lb), (mf, lf)) = match (rb, rf) {
                (Ok(b), Ok(f)) => (b, f),
                (Err(_), Err(_)) => continue,
                (b, f) => panic!("round {round}: {:?} vs {:?}", b.err(), f.err()),
            };
            assert_eq!(lb.image, lf.image);
            let bias = lb.image.0 - page_down(Elf::parse(&bytes, GUEST_SIZE).unwrap().span().0);
            for a in (lb.image.0..lb.image.1).step_by(PAGE as usize) {
                assert_eq!(
                    mb.page_perm(a),
                    mf.page_perm(a),
                    "round {round} {segs:x?} page {a:#x}"
                );
            }
            // Make every mapped page readable to compare (X-only ones too).
            for mm in [&mb, &mf] {
                for a in (lb.image.0..lb.image.1).step_by(PAGE as usize) {
                    if mm.page_perm(a) != 0 {
                        mm.protect(a, PAGE, PROT_R).unwrap();
                    }
                }
            }
            compared += 1;
            for (k, s) in segs.iter().enumerate() {
                let a = s.2 + bias;
                let n = s.4 as usize;
                if mb.page_perm(a) & PROT_R == 0 {
                    continue;
                }
                let (Some(x), Some(y)) = (mb.slice(a, n), mf.slice(a, n)) else {
                    continue;
                };
                if let Some(i) = (0..n).find(|&i| x[i] != y[i]) {
                    panic!(
                        "round {round} {segs:x?}: segment {k} differs at {:#x}",
                        a + i as u64
                    );
                }
            }
        }
        assert!(compared > 200, "{compared}");
    }

    /// A file shortened after it was opened fails to load, whether the cut
    /// lands in a copied partial page or only under mapped whole pages (a
    /// load must not leave guest pages whose first touch is a host SIGBUS).
    #[test]
    fn a_file_shortened_after_opening_is_an_error() {
        for (size, cut) in [(0x2345, 0x2100), (0x3000, 0x1000)] {
            let segs = [(PF_R | PF_X, 0, 0x10000, size, size)];
            let path = file(&format!("short-{cut:x}"), &elf(&segs, 0x3000));
            let pf = ProgramFile::open(&path, false).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let r = load_image(Image::File(&pf));
            std::fs::remove_file(&path).unwrap();
            let Err(e) = r else {
                panic!("loaded a file cut to {cut:#x}");
            };
            let e = e.to_string();
            assert!(
                e.contains("truncated ELF file: segment data"),
                "{cut:#x}: {e}"
            );
        }
    }

    /// A regular file whose size overstates its contents (sysfs
    /// files say 4096) is "not an ELF file", as before, not "failed to fill
    /// whole buffer".
    #[test]
    fn a_file_shorter_than_its_size_is_not_elf() {
        let Some(p) = [
            "/sys/kernel/profiling",
            "/sys/kernel/mm/transparent_hugepage/enabled",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == 4096)) else {
            eprintln!("no sysfs file to try");
            return;
        };
        let e = ProgramFile::open(p, false)
            .and_then(|f| Elf::parse_from(&f, GUEST_SIZE).map_err(FileError::Elf))
            .map(|_| ())
            .map_err(|e| LoadError::file(p, e).to_string());
        assert_eq!(
            e,
            Err(format!("{}: not an ELF file (bad magic)", p.display()))
        );
    }

    /// /proc/self/maps names the loader's copied pages by
    /// FileSegment::path; a relative program path must not depend on the
    /// guest's later chdir (the mapped pages are named absolutely by the
    /// host, so the copied partial pages then disagree with them).
    #[test]
    fn file_segments_name_the_file_absolutely() {
        let segs = [(PF_R | PF_X, 0, 0x10000, 0x2345, 0x2345)];
        let abs = file("relpath", &elf(&segs, 0x3000));
        // The same file by a path relative to the current directory.
        let cwd = std::env::current_dir().unwrap();
        let mut rel = PathBuf::new();
        for _ in cwd.components().skip(1) {
            rel.push("..");
        }
        rel.push(abs.strip_prefix("/").unwrap());
        let pf = ProgramFile::open(&rel, false).unwrap();
        let mm = AddressSpace::new().unwrap();
        let l = load(
            &mm,
            &rel,
            Image::File(&pf),
            None,
            &[b"p".to_vec()],
            &[],
            b"p",
            &aux(),
            1 << 20,
        )
        .unwrap();
        std::fs::remove_file(&abs).unwrap();
        assert!(!l.segments.is_empty());
        for s in &l.segments {
            assert!(s.path.is_absolute(), "{}", s.path.display());
        }
    }
}
