//! `convert`: copies the content of one image (through its backing chain)
//! into another, as `qemu-img convert` does: zero runs are not written
//! (sparse detection, `-S`), `-c` writes compressed clusters, and with a
//! backing file for the target (`-B`) only what the source's top layer
//! allocates is copied.

use super::{reads_as_zero, Status, IO_CHUNK};
use crate::{BlockBackend, Image};

/// Default `-S`: zero runs of at least 4 KiB are left unallocated.
pub const DEFAULT_SPARSE_SIZE: u64 = 4096;

/// How to copy.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// `-S`: smallest run of zeros (aligned to itself) left unwritten; 0
    /// writes everything, fully allocating the target.
    pub sparse_size: u64,
    /// `-c`: write compressed clusters (target must be qcow2).
    pub compress: bool,
    /// The target was just created and reads as zeros everywhere, so zero
    /// runs need no write at all. False with `-n` (existing target) or when
    /// the target has a backing file.
    pub target_is_zero: bool,
    /// `-B`: the target has a backing file with the same content as the
    /// source's backing chain; only the source's top layer is copied.
    pub target_has_backing: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            sparse_size: DEFAULT_SPARSE_SIZE,
            compress: false,
            target_is_zero: true,
            target_has_backing: false,
        }
    }
}

/// Errors of `convert`.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Image(#[from] crate::Error),
    #[error("the target image is smaller than the source ({target} < {source_size} bytes)")]
    TargetTooSmall { target: u64, source_size: u64 },
    #[error("invalid sparse size {0}: must be a multiple of 512")]
    SparseSize(u64),
    #[error("compressed output needs a qcow2 target")]
    CompressNeedsQcow2,
}

/// Status of the source range at `offset`: the whole chain normally, the
/// top layer only when the target shares the source's backing content.
fn source_status(src: &Image, offset: u64, max_len: u64, top_only: bool) -> crate::Result<Status> {
    if top_only && src.backing().is_some() {
        let st = src.layer_status(offset, max_len)?;
        Ok(Status {
            len: st.len,
            depth: 0,
            present: st.allocated,
            zero: st.zero,
            data: st.data,
            compressed: st.compressed,
            offset: st.offset,
        })
    } else {
        src.block_status(offset, max_len)
    }
}

/// Writes `buf` (the source content at `offset`) to the target, leaving out
/// aligned zero runs of at least `sparse` bytes.
fn write_sparse(dst: &Image, buf: &[u8], offset: u64, opts: &ConvertOptions) -> crate::Result<()> {
    let sparse = opts.sparse_size as usize;
    if sparse == 0 {
        return dst.write_at(buf, offset);
    }
    // Walk the buffer in blocks aligned (in the image) to `sparse`; a block
    // that is all zeros is a hole, consecutive blocks of the same kind are
    // written (or zeroed) together.
    let mut pos = 0usize;
    let mut run_start = 0usize;
    let mut run_zero: Option<bool> = None;
    let flush_run = |start: usize, end: usize, zero: bool| -> crate::Result<()> {
        if start == end {
            return Ok(());
        }
        let at = offset + start as u64;
        if !zero {
            dst.write_at(&buf[start..end], at)
        } else if opts.target_is_zero {
            Ok(())
        } else {
            dst.write_zeroes(at, (end - start) as u64, true)
        }
    };
    while pos < buf.len() {
        let image_pos = offset + pos as u64;
        let block_end = ((image_pos / opts.sparse_size + 1) * opts.sparse_size - offset) as usize;
        let end = block_end.min(buf.len());
        // Partial blocks at the edges count as zero only if the whole part
        // is zero; qemu behaves the same at request boundaries.
        let zero = buf[pos..end].iter().all(|&b| b == 0);
        match run_zero {
            Some(z) if z == zero => {}
            Some(z) => {
                flush_run(run_start, pos, z)?;
                run_start = pos;
                run_zero = Some(zero);
            }
            None => run_zero = Some(zero),
        }
        pos = end;
    }
    if let Some(z) = run_zero {
        flush_run(run_start, buf.len(), z)?;
    }
    Ok(())
}

/// Copies `src` into `dst` (which must be at least as large). `progress` is
/// called with (bytes done, total bytes) as the copy advances.
pub fn convert(
    src: &Image,
    dst: &Image,
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), ConvertError> {
    let size = src.len();
    if dst.len() < size {
        return Err(ConvertError::TargetTooSmall {
            target: dst.len(),
            source_size: size,
        });
    }
    if !opts.sparse_size.is_multiple_of(512) {
        return Err(ConvertError::SparseSize(opts.sparse_size));
    }
    if opts.compress {
        let cs = dst.cluster_size().ok_or(ConvertError::CompressNeedsQcow2)?;
        convert_compressed(src, dst, cs, opts, progress)?;
    } else {
        let mut buf = vec![0u8; IO_CHUNK];
        let mut offset = 0u64;
        progress(0, size);
        while offset < size {
            let st = source_status(src, offset, size - offset, opts.target_has_backing)?;
            let n = st.len.clamp(1, size - offset).min(IO_CHUNK as u64);
            if opts.target_has_backing && !st.present {
                // The target's backing file provides this range.
            } else if reads_as_zero(&st) && opts.sparse_size != 0 {
                if !opts.target_is_zero {
                    dst.write_zeroes(offset, n, true)?;
                }
            } else {
                let chunk = &mut buf[..n as usize];
                src.read_at(chunk, offset)?;
                write_sparse(dst, chunk, offset, opts)?;
            }
            offset += n;
            progress(offset, size);
        }
    }
    dst.flush()?;
    Ok(())
}

/// `-c`: every target cluster that is not all zeros is written compressed.
fn convert_compressed(
    src: &Image,
    dst: &Image,
    cluster_size: u64,
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> crate::Result<()> {
    let size = src.len();
    let mut buf = vec![0u8; cluster_size as usize];
    let mut offset = 0u64;
    progress(0, size);
    while offset < size {
        let n = cluster_size.min(size - offset);
        let st = source_status(src, offset, size - offset, opts.target_has_backing)?;
        let skip_whole = st.len / cluster_size * cluster_size;
        let unneeded = (opts.target_has_backing && !st.present) || reads_as_zero(&st);
        if unneeded && skip_whole > 0 {
            if !opts.target_is_zero && (!opts.target_has_backing || st.present) {
                dst.write_zeroes(offset, skip_whole, true)?;
            }
            offset += skip_whole;
            progress(offset, size);
            continue;
        }
        let chunk = &mut buf[..n as usize];
        src.read_at(chunk, offset)?;
        if chunk.iter().all(|&b| b == 0) {
            if !opts.target_is_zero {
                dst.write_zeroes(offset, n, true)?;
            }
        } else {
            dst.write_compressed(chunk, offset)?;
        }
        offset += n;
        progress(offset, size);
    }
    Ok(())
}
