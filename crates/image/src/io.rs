//! File I/O helpers shared by the raw and qcow2 drivers: positioned reads
//! and writes that name the file in their errors, zeroing, preallocation,
//! SEEK_DATA/SEEK_HOLE, and syncing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use crate::{Error, Result};

/// Chunk size for writing zeros when the file system cannot punch holes.
const ZERO_CHUNK: usize = 1 << 20;

/// An I/O error on the file `path`.
pub(crate) fn io_err(path: &str, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_string(),
        source,
    }
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

/// Writes all of `buf` at `offset`.
pub(crate) fn pwrite_all(file: &File, path: &str, buf: &[u8], offset: u64) -> Result<()> {
    file.write_all_at(buf, offset).map_err(|e| io_err(path, e))
}

/// Writes `len` zero bytes at `offset`, a chunk at a time.
pub(crate) fn write_zeros(file: &File, path: &str, offset: u64, len: u64) -> Result<()> {
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

/// Reserves `[offset, offset+len)` of `file` with fallocate (no holes).
pub(crate) fn fallocate(file: &File, path: &str, offset: u64, len: u64) -> Result<()> {
    // SAFETY: fallocate on a file descriptor we own, with plain integers.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset as i64, len as i64) };
    if r != 0 {
        return Err(io_err(path, std::io::Error::last_os_error()));
    }
    Ok(())
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
    write_zeros(file, path, offset, len)
}

/// lseek with SEEK_DATA/SEEK_HOLE; `None` when the call fails (ENXIO: no
/// data after `offset`).
pub(crate) fn seek(file: &File, offset: u64, whence: i32) -> Option<u64> {
    // SAFETY: lseek on a file descriptor we own; it does not touch memory.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as i64, whence) };
    if r < 0 {
        None
    } else {
        Some(r as u64)
    }
}

/// fdatasync, naming the file in the error.
pub(crate) fn sync_data(file: &File, path: &str) -> Result<()> {
    file.sync_data().map_err(|e| io_err(path, e))
}
