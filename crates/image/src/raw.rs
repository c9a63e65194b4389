//! Raw image files: the virtual disk is the file, byte for byte.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::io::{
    fallocate, io_err, pread_zero_fill, pwrite_all, seek, sync_data, write_zeros, zero_file_range,
};
use crate::lock::{HeldLocks, Request};
use crate::{Error, LayerStatus, Preallocation, Result};

pub(crate) struct RawImage {
    file: File,
    /// QEMU-compatible locks on `file`, released on drop.
    _locks: HeldLocks,
    path: String,
    read_only: bool,
    size: AtomicU64,
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
                fallocate(&file, &name, 0, size)?;
            }
            Preallocation::Full => write_zeros(&file, &name, 0, size)?,
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
        sync_data(&self.file, &self.path)
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
