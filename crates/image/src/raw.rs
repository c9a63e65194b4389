//! Raw image files: the virtual disk is the file, byte for byte.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::image::io_err;
use crate::lock::{HeldLocks, Request};
use crate::{Error, LayerStatus, Preallocation, Result};

/// Chunk size for writing zeros when the file system cannot punch holes.
const ZERO_CHUNK: usize = 1 << 20;

pub(crate) struct RawImage {
    file: File,
    /// QEMU-compatible locks on `file`, released on drop.
    _locks: HeldLocks,
    path: String,
    read_only: bool,
    size: AtomicU64,
}

/// Reads `buf.len()` bytes at `offset`, filling what lies past the end of the
/// file with zeros (a short read means end of file).
pub(crate) fn pread_zero_fill(file: &File, path: &str, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(path, e)),
        }
    }
    Ok(())
}

pub(crate) fn pwrite_all(file: &File, path: &str, buf: &[u8], offset: u64) -> Result<()> {
    file.write_all_at(buf, offset).map_err(|e| io_err(path, e))
}

/// Makes `[offset, offset+len)` of `file` read as zeros: punches a hole when
/// `unmap` and the file system supports it, else zero-range, else writes
/// zeros.
pub(crate) fn zero_file_range(
    file: &File,
    path: &str,
    offset: u64,
    len: u64,
    unmap: bool,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mode = if unmap {
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
    } else {
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
    };
    // SAFETY: fallocate on a file descriptor we own, with plain integers.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if r == 0 {
        return Ok(());
    }
    let zeros = vec![0u8; ZERO_CHUNK.min(len as usize)];
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let n = ((end - pos) as usize).min(zeros.len());
        pwrite_all(file, path, &zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

fn seek(file: &File, offset: u64, whence: i32) -> Option<u64> {
    // SAFETY: lseek on a file descriptor we own; it does not touch memory.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as i64, whence) };
    if r < 0 {
        None
    } else {
        Some(r as u64)
    }
}

impl RawImage {
    pub(crate) fn open(path: &Path, name: &str, read_only: bool, req: Request) -> Result<RawImage> {
        let file = FsOpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| io_err(name, e))?;
        let (perm, shared) = req.for_file(crate::Format::Raw, !read_only);
        let locks = crate::lock::lock(&file, name, perm, shared)?;
        let size = file.metadata().map_err(|e| io_err(name, e))?.len();
        Ok(RawImage {
            file,
            _locks: locks,
            path: name.to_string(),
            read_only,
            size: AtomicU64::new(size),
        })
    }

    pub(crate) fn create(path: &Path, size: u64, prealloc: Preallocation) -> Result<()> {
        let name = path.display().to_string();
        // The locks stay until the new file is complete.
        let (file, _locks) = crate::lock::create_file(path, &name)?;
        file.set_len(size).map_err(|e| io_err(&name, e))?;
        match prealloc {
            Preallocation::Off | Preallocation::Metadata => {}
            Preallocation::Falloc => {
                // SAFETY: fallocate on our own descriptor with integer arguments.
                let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as i64) };
                if r != 0 {
                    return Err(io_err(&name, std::io::Error::last_os_error()));
                }
            }
            Preallocation::Full => {
                let zeros = vec![0u8; ZERO_CHUNK];
                let mut pos = 0;
                while pos < size {
                    let n = ((size - pos) as usize).min(ZERO_CHUNK);
                    pwrite_all(&file, &name, &zeros[..n], pos)?;
                    pos += n as u64;
                }
            }
        }
        file.sync_all().map_err(|e| io_err(&name, e))
    }

    pub(crate) fn len(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        pread_zero_fill(&self.file, &self.path, buf, offset)
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }

    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.writable()?;
        pwrite_all(&self.file, &self.path, buf, offset)
    }

    pub(crate) fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| io_err(&self.path, e))
    }

    pub(crate) fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.writable()?;
        zero_file_range(&self.file, &self.path, offset, len, may_unmap)
    }

    pub(crate) fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        zero_file_range(&self.file, &self.path, offset, len, true)
    }

    pub(crate) fn resize(&self, new_size: u64) -> Result<()> {
        self.writable()?;
        self.file
            .set_len(new_size)
            .map_err(|e| io_err(&self.path, e))?;
        self.size.store(new_size, Ordering::Relaxed);
        Ok(())
    }

    /// Data or hole, found with SEEK_DATA/SEEK_HOLE (everything is data when
    /// the file system cannot tell).
    pub(crate) fn layer_status(&self, offset: u64, max_len: u64) -> Result<LayerStatus> {
        let end = offset + max_len;
        let (data, len) = match seek(&self.file, offset, libc::SEEK_DATA) {
            Some(d) if d > offset => (false, (d - offset).min(max_len)),
            Some(_) => {
                let h = seek(&self.file, offset, libc::SEEK_HOLE).unwrap_or(end);
                (true, h.min(end).saturating_sub(offset).max(1).min(max_len))
            }
            // ENXIO: no data after offset (hole up to EOF); the part past the
            // file's end also reads as zeros.
            None => (false, max_len),
        };
        Ok(LayerStatus {
            len,
            allocated: true,
            zero: !data,
            data,
            compressed: false,
            offset: Some(offset),
        })
    }
}
