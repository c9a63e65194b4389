//! The few /proc files that must describe the guest rather than the
//! emulator, as qemu-user fakes them: `maps` (the guest's mappings, not
//! the host's), `auxv` (the vector the guest got) and `cmdline` (the
//! guest's argv). `exe` is handled by path translation. Each is generated
//! when opened, into an anonymous file the guest then reads like any other.

use crate::mm::{Region, PROT_R, PROT_W, PROT_X};
use crate::process::Thread;
use std::ffi::CString;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;

/// A /proc file generated for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcFile {
    Maps,
    Auxv,
    Cmdline,
}

/// Which faked file a guest path names: `/proc/self/X`,
/// `/proc/thread-self/X` or `/proc/<our pid>/X`.
pub(crate) fn classify(path: &[u8]) -> Option<ProcFile> {
    let rest = path.strip_prefix(b"/proc/")?;
    let slash = rest.iter().position(|&c| c == b'/')?;
    let (who, file) = (&rest[..slash], &rest[slash + 1..]);
    let pid = std::process::id().to_string();
    if who != b"self" && who != b"thread-self" && who != pid.as_bytes() {
        return None;
    }
    match file {
        b"maps" => Some(ProcFile::Maps),
        b"auxv" => Some(ProcFile::Auxv),
        b"cmdline" => Some(ProcFile::Cmdline),
        _ => None,
    }
}

/// One line of the host's /proc/self/maps that is backed by a file.
struct HostMap {
    start: u64,
    end: u64,
    offset: u64,
    dev: String,
    inode: u64,
    path: String,
}

fn host_file_maps() -> Vec<HostMap> {
    let Ok(text) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(6, ' ');
        let (Some(range), Some(_perms), Some(off), Some(dev), Some(ino)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = f.next().unwrap_or("").trim_start().to_string();
        let inode: u64 = ino.parse().unwrap_or(0);
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(off, 16),
        ) else {
            continue;
        };
        if inode != 0 {
            v.push(HostMap {
                start,
                end,
                offset,
                dev: dev.to_string(),
                inode,
                path,
            });
        }
    }
    v
}

/// One line of the guest's maps before merging.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    start: u64,
    end: u64,
    perm: u8,
    shared: bool,
    offset: u64,
    dev: String,
    inode: u64,
    path: String,
}

impl Line {
    /// Whether `next` continues this line (Linux merges such areas).
    fn joins(&self, next: &Line) -> bool {
        self.end == next.start
            && self.perm == next.perm
            && self.shared == next.shared
            && self.inode == next.inode
            && self.dev == next.dev
            && self.path == next.path
            && (self.inode == 0 || self.offset + (self.end - self.start) == next.offset)
    }
}

impl Thread {
    /// The guest's /proc/self/maps, in Linux's format.
    fn maps_text(&self) -> String {
        let mm = &self.proc.mm;
        let base = mm.base() as u64;
        let host = host_file_maps();
        let (brk_start, brk) = mm.brk_range();
        let heap = (
            crate::mm::page_up(brk_start).unwrap_or(brk_start),
            crate::mm::page_up(brk).unwrap_or(brk),
        );
        let mut lines: Vec<Line> = Vec::new();
        for Region {
            start,
            end,
            perm,
            shared,
            file,
        } in mm.regions()
        {
            let mut s = start;
            while s < end {
                let mut line = Line {
                    start: s,
                    end,
                    perm,
                    shared,
                    offset: 0,
                    dev: "00:00".into(),
                    inode: 0,
                    path: String::new(),
                };
                let hs = base + s;
                let hm = if file {
                    host.iter().find(|m| m.start <= hs && hs < m.end)
                } else {
                    None
                };
                if let Some(m) = hm {
                    // A guest mmap of a file: the host mapping names it.
                    line.end = end.min(m.end - base);
                    line.offset = m.offset + (hs - m.start);
                    line.dev = m.dev.clone();
                    line.inode = m.inode;
                    line.path = m.path.clone();
                } else if let Some(seg) = self
                    .proc
                    .segments
                    .iter()
                    .find(|g| g.start <= s && s < g.end)
                {
                    // The loader's copy of the program or interpreter.
                    line.end = end.min(seg.end);
                    line.offset = seg.offset.wrapping_add(s - seg.start);
                    if let Ok(md) = std::fs::metadata(&seg.path) {
                        line.dev = format!(
                            "{:02x}:{:02x}",
                            libc::major(md.dev()),
                            libc::minor(md.dev())
                        );
                        line.inode = md.ino();
                    }
                    let p = std::fs::canonicalize(&seg.path).unwrap_or(seg.path.clone());
                    line.path = p.to_string_lossy().into_owned();
                } else {
                    // Anonymous: cut at the next loader segment so that its
                    // pages get their name.
                    if let Some(next) = self
                        .proc
                        .segments
                        .iter()
                        .filter(|g| g.start > s && g.start < end)
                        .map(|g| g.start)
                        .min()
                    {
                        line.end = next;
                    }
                    if s >= self.proc.stack.0 && s < self.proc.stack.1 {
                        line.path = "[stack]".into();
                    } else if s >= heap.0 && s < heap.1 {
                        line.end = line.end.min(heap.1);
                        line.path = "[heap]".into();
                    } else if heap.0 > s && heap.0 < line.end {
                        line.end = heap.0;
                    }
                }
                s = line.end;
                match lines.last_mut() {
                    Some(prev) if prev.joins(&line) => prev.end = line.end,
                    _ => lines.push(line),
                }
            }
        }
        let mut out = String::new();
        for l in lines {
            let perms = format!(
                "{}{}{}{}",
                if l.perm & PROT_R != 0 { 'r' } else { '-' },
                if l.perm & PROT_W != 0 { 'w' } else { '-' },
                if l.perm & PROT_X != 0 { 'x' } else { '-' },
                if l.shared { 's' } else { 'p' }
            );
            let head = format!(
                "{:08x}-{:08x} {} {:08x} {} {} ",
                l.start, l.end, perms, l.offset, l.dev, l.inode
            );
            if l.path.is_empty() {
                let _ = writeln!(out, "{head}");
            } else {
                // Linux pads the name to column 73.
                let _ = writeln!(out, "{head:<73}{}", l.path);
            }
        }
        out
    }

    /// Contents of a faked /proc file.
    pub(crate) fn proc_contents(&self, f: ProcFile) -> Vec<u8> {
        match f {
            ProcFile::Maps => self.maps_text().into_bytes(),
            ProcFile::Auxv => self.proc.auxv.clone(),
            ProcFile::Cmdline => self.proc.argv.iter().fold(Vec::new(), |mut v, a| {
                v.extend_from_slice(a);
                v.push(0);
                v
            }),
        }
    }

    /// Opens a faked /proc file: its contents in an anonymous file, then
    /// reopened read-only with the guest's flags (like the real file, it
    /// cannot be written). Returns the fd or -errno.
    pub(crate) fn open_proc(&self, f: ProcFile, flags: i32) -> i64 {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return -(libc::EACCES as i64);
        }
        let data = self.proc_contents(f);
        let name = c"virtkit-proc";
        // SAFETY: a valid C string; creates a new fd.
        let mfd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if mfd < 0 {
            return -(crate::mm::errno() as i64);
        }
        let mut off = 0;
        while off < data.len() {
            // SAFETY: writes from a live buffer to our own fd.
            let n = unsafe {
                libc::write(
                    mfd,
                    data[off..].as_ptr().cast(),
                    (data.len() - off) as libc::size_t,
                )
            };
            if n <= 0 {
                let e = crate::mm::errno();
                // SAFETY: our own fd.
                unsafe { libc::close(mfd) };
                return -(e as i64);
            }
            off += n as usize;
        }
        let path = CString::new(format!("/proc/self/fd/{mfd}")).unwrap_or_default();
        let keep = flags & (libc::O_CLOEXEC | libc::O_NONBLOCK);
        // SAFETY: a valid C string; opens a new read-only description.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | keep) };
        let r = if fd < 0 {
            -(crate::mm::errno() as i64)
        } else {
            fd as i64
        };
        // SAFETY: our own fd.
        unsafe { libc::close(mfd) };
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_paths() {
        let pid = std::process::id();
        assert_eq!(classify(b"/proc/self/maps"), Some(ProcFile::Maps));
        assert_eq!(classify(b"/proc/thread-self/auxv"), Some(ProcFile::Auxv));
        assert_eq!(
            classify(format!("/proc/{pid}/cmdline").as_bytes()),
            Some(ProcFile::Cmdline)
        );
        assert_eq!(classify(b"/proc/1/maps"), None);
        assert_eq!(classify(b"/proc/self/status"), None);
        assert_eq!(classify(b"/proc/self/maps/x"), None);
        assert_eq!(classify(b"/proc/self"), None);
        assert_eq!(classify(b"/etc/passwd"), None);
    }
}
