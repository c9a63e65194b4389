//! Compressed clusters: raw deflate with a 4 KiB window (what QEMU writes
//! and what its inflate with windowBits -12 accepts) and zstd frames.

use crate::CompressionType;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Why a compressed cluster could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error("bad deflate data: {0}")]
    Deflate(#[source] flate2::DecompressError),
    #[error("bad zstd frame: {0}")]
    ZstdFrame(&'static str),
    #[error("bad zstd data: {0}")]
    Zstd(#[source] std::io::Error),
    #[error("{kind} data decompresses to {got} bytes, expected {want}")]
    WrongSize {
        kind: &'static str,
        got: usize,
        want: usize,
    },
}

/// Compresses one cluster; `None` if the result would exceed `limit` bytes
/// (the caller then writes the cluster uncompressed, as QEMU does).
pub(crate) fn compress(ty: CompressionType, src: &[u8], limit: usize) -> Option<Vec<u8>> {
    match ty {
        CompressionType::Zlib => {
            let mut c = Compress::new_with_window_bits(Compression::default(), false, 12);
            let mut out = Vec::with_capacity(limit);
            match c.compress_vec(src, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) if out.len() <= limit => Some(out),
                _ => None,
            }
        }
        CompressionType::Zstd => {
            let out = zstd::bulk::compress(src, zstd::DEFAULT_COMPRESSION_LEVEL).ok()?;
            (out.len() <= limit).then_some(out)
        }
    }
}

/// Decompresses `src` (which may carry trailing bytes up to the end of its
/// last sector) into exactly `out.len()` bytes.
pub(crate) fn decompress(
    ty: CompressionType,
    src: &[u8],
    out: &mut [u8],
) -> Result<(), DecompressError> {
    match ty {
        CompressionType::Zlib => {
            // A 32 KiB window accepts every raw deflate stream, including
            // those written with QEMU's 4 KiB window.
            let mut d = Decompress::new_with_window_bits(false, 15);
            match d.decompress(src, out, FlushDecompress::Finish) {
                Ok(_) if d.total_out() as usize == out.len() => Ok(()),
                Ok(_) => Err(DecompressError::WrongSize {
                    kind: "deflate",
                    got: d.total_out() as usize,
                    want: out.len(),
                }),
                Err(e) => Err(DecompressError::Deflate(e)),
            }
        }
        CompressionType::Zstd => {
            let frame = zstd::zstd_safe::find_frame_compressed_size(src)
                .map_err(|e| DecompressError::ZstdFrame(zstd::zstd_safe::get_error_name(e)))?;
            let mut dctx = zstd::bulk::Decompressor::new().map_err(DecompressError::Zstd)?;
            match dctx.decompress_to_buffer(&src[..frame], out) {
                Ok(n) if n == out.len() => Ok(()),
                Ok(n) => Err(DecompressError::WrongSize {
                    kind: "zstd",
                    got: n,
                    want: out.len(),
                }),
                Err(e) => Err(DecompressError::Zstd(e)),
            }
        }
    }
}
