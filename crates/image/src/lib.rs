//! Disk images for virtkit: raw files and qcow2 chains behind one
//! [`BlockBackend`] trait, plus qemu-img-compatible operations.

use std::io;

/// Errors of the image library. Every variant names what is wrong, so the
/// command line can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("access beyond the end of the image: offset {offset} + length {len} > size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("image is read-only")]
    ReadOnly,
}

pub type Result<T> = std::result::Result<T, Error>;

/// A virtual disk as a device model sees it: a byte-addressed array of
/// `len()` bytes.
///
/// Implementations are shared between threads (virtio-blk serves several
/// queues; the CLI's bench runs several requests in flight), so every method
/// takes `&self` and implementations synchronise internally.
pub trait BlockBackend: Send + Sync {
    /// Virtual size in bytes.
    fn len(&self) -> u64;

    /// True for an image of size zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;

    /// Reads exactly `buf.len()` bytes at `offset`. Unallocated areas read as
    /// zeros (or from the backing file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes all of `buf` at `offset`. Not durable until [`flush`](Self::flush).
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes every completed write durable (data and metadata).
    fn flush(&self) -> Result<()>;

    /// Makes `len` bytes at `offset` read as zeros. With `may_unmap`, the
    /// space may be released on the host.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()>;

    /// Tells the image that `len` bytes at `offset` are no longer needed; they
    /// read back as zeros or as the backing file afterwards.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
}

pub mod ops;
