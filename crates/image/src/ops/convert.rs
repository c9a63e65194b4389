//! `convert`: copies the content of one image (through its backing chain),
//! or of several images end to end, into another, as `qemu-img convert`
//! does: zero runs are not written (sparse detection, `-S`), `-c` writes
//! compressed clusters, with a backing file for the target (`-B`) only what
//! the source's top layer allocates is copied, and `-m N` copies with N
//! workers (writes stay in order unless `-W`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use super::{reads_as_zero, Status, IO_CHUNK};
use crate::{BlockBackend, Image};

/// Most workers `-m` accepts (qemu-img's limit on coroutines).
pub const MAX_WORKERS: usize = 16;

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
    /// `-m`: requests in flight (worker threads), 1 to [`MAX_WORKERS`].
    pub workers: usize,
    /// `-W`: writes may reach the target out of order (compressed output
    /// is always written in order, one cluster after the other).
    pub out_of_order: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            sparse_size: DEFAULT_SPARSE_SIZE,
            compress: false,
            target_is_zero: true,
            target_has_backing: false,
            workers: 8,
            out_of_order: false,
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
    #[error(
        "Invalid number of coroutines. Allowed number of coroutines is between 1 and {MAX_WORKERS}"
    )]
    Workers,
    #[error(
        "Having a backing file for the target makes no sense when concatenating multiple input images"
    )]
    BackingWithSeveralSources,
    #[error("no source image")]
    NoSource,
}

impl ConvertOptions {
    /// Checks the options against each other, as qemu-img does.
    pub fn validate(&self, sources: usize) -> Result<(), ConvertError> {
        if sources == 0 {
            return Err(ConvertError::NoSource);
        }
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(ConvertError::Workers);
        }
        if self.target_has_backing && sources > 1 {
            return Err(ConvertError::BackingWithSeveralSources);
        }
        if !self.sparse_size.is_multiple_of(512) {
            return Err(ConvertError::SparseSize(self.sparse_size));
        }
        Ok(())
    }
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

/// What one piece of a chunk needs on the target.
enum Action {
    /// Nothing (the target already reads right).
    Skip,
    Zero,
    /// Data at this range of the chunk buffer.
    Data(usize, usize),
}

/// Copies the sources, end to end, into `dst` (which must be at least as
/// large as all of them together). `progress` is called with (bytes done,
/// total bytes) as the copy advances.
pub fn convert(
    srcs: &[&Image],
    dst: &Image,
    opts: &ConvertOptions,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<(), ConvertError> {
    opts.validate(srcs.len())?;
    let size: u64 = srcs.iter().map(|s| s.len()).sum();
    if dst.len() < size {
        return Err(ConvertError::TargetTooSmall {
            target: dst.len(),
            source_size: size,
        });
    }
    if opts.compress {
        let cs = dst.cluster_size().ok_or(ConvertError::CompressNeedsQcow2)?;
        let mut base = 0;
        for src in srcs {
            convert_compressed(src, dst, base, size, cs, opts, progress)?;
            base += src.len();
        }
    } else {
        copy_parallel(srcs, dst, size, opts, progress)?;
    }
    dst.flush()?;
    Ok(())
}

/// The plain copy: the sources cut in chunks of [`IO_CHUNK`] bytes that
/// `opts.workers` threads take in turn; each reads its chunk, then writes
/// it, in chunk order unless `opts.out_of_order`.
fn copy_parallel(
    srcs: &[&Image],
    dst: &Image,
    size: u64,
    opts: &ConvertOptions,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<(), ConvertError> {
    // Chunk k covers [starts[s] + j*IO_CHUNK, ...) of source s.
    let mut chunks: Vec<(usize, u64, u64)> = Vec::new();
    for (i, s) in srcs.iter().enumerate() {
        let mut off = 0;
        while off < s.len() {
            let n = (s.len() - off).min(IO_CHUNK as u64);
            chunks.push((i, off, n));
            off += n;
        }
    }
    let bases: Vec<u64> = srcs
        .iter()
        .scan(0u64, |acc, s| {
            let b = *acc;
            *acc += s.len();
            Some(b)
        })
        .collect();
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<crate::Error>> = Mutex::new(None);
    // In-order writes: the chunk whose turn it is to write.
    let turn = Mutex::new(0u64);
    let turn_cv = Condvar::new();
    let done = Mutex::new((0u64, progress));
    if let Ok(mut d) = done.lock() {
        (d.1)(0, size);
    }
    let workers = opts.workers.min(chunks.len()).max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut buf = vec![0u8; IO_CHUNK];
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(si, off, n)) = chunks.get(k as usize) else {
                        return;
                    };
                    let src = srcs[si];
                    let at = bases[si] + off;
                    let mut result = if failed.load(Ordering::Relaxed) {
                        Ok(Vec::new())
                    } else {
                        plan_chunk(src, off, n, opts, &mut buf)
                    };
                    if !opts.out_of_order {
                        let mut t = turn.lock().unwrap_or_else(|e| e.into_inner());
                        while *t != k {
                            t = turn_cv.wait(t).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    if !failed.load(Ordering::Relaxed) {
                        result = result.and_then(|actions| {
                            write_chunk(dst, &buf, at, &actions, opts)?;
                            Ok(actions)
                        });
                    }
                    if !opts.out_of_order {
                        *turn.lock().unwrap_or_else(|e| e.into_inner()) = k + 1;
                        turn_cv.notify_all();
                    }
                    match result {
                        Ok(_) => {
                            let mut d = done.lock().unwrap_or_else(|e| e.into_inner());
                            d.0 += n;
                            let v = d.0;
                            (d.1)(v, size);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Reads chunk `[off, off+n)` of `src` into `buf` where it holds data and
/// says what each piece needs on the target.
fn plan_chunk(
    src: &Image,
    off: u64,
    n: u64,
    opts: &ConvertOptions,
    buf: &mut [u8],
) -> crate::Result<Vec<(u64, u64, Action)>> {
    let mut out = Vec::new();
    let mut pos = off;
    let end = off + n;
    while pos < end {
        let st = source_status(src, pos, end - pos, opts.target_has_backing)?;
        let len = st.len.clamp(1, end - pos);
        let rel = (pos - off) as usize;
        let action = if opts.target_has_backing && !st.present {
            // The target's backing file provides this range.
            Action::Skip
        } else if reads_as_zero(&st) && opts.sparse_size != 0 {
            if opts.target_is_zero {
                Action::Skip
            } else {
                Action::Zero
            }
        } else {
            src.read_at(&mut buf[rel..rel + len as usize], pos)?;
            Action::Data(rel, rel + len as usize)
        };
        out.push((pos - off, len, action));
        pos += len;
    }
    Ok(out)
}

/// Writes a planned chunk at target offset `at`.
fn write_chunk(
    dst: &Image,
    buf: &[u8],
    at: u64,
    actions: &[(u64, u64, Action)],
    opts: &ConvertOptions,
) -> crate::Result<()> {
    for (rel, len, action) in actions {
        match action {
            Action::Skip => {}
            Action::Zero => dst.write_zeroes(at + rel, *len, true)?,
            Action::Data(a, b) => write_sparse(dst, &buf[*a..*b], at + rel, opts)?,
        }
    }
    Ok(())
}

/// `-c`: every target cluster that is not all zeros is written compressed.
/// Source `src` goes to target offset `base`; `total` is the size of all
/// sources, for the progress.
fn convert_compressed(
    src: &Image,
    dst: &Image,
    base: u64,
    total: u64,
    cluster_size: u64,
    opts: &ConvertOptions,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> crate::Result<()> {
    let size = src.len();
    let mut buf = vec![0u8; cluster_size as usize];
    let mut offset = 0u64;
    progress(base, total);
    while offset < size {
        let n = cluster_size.min(size - offset);
        let st = source_status(src, offset, size - offset, opts.target_has_backing)?;
        let skip_whole = st.len / cluster_size * cluster_size;
        let unneeded = (opts.target_has_backing && !st.present) || reads_as_zero(&st);
        if unneeded && skip_whole > 0 {
            if !opts.target_is_zero && (!opts.target_has_backing || st.present) {
                dst.write_zeroes(base + offset, skip_whole, true)?;
            }
            offset += skip_whole;
            progress(base + offset, total);
            continue;
        }
        let chunk = &mut buf[..n as usize];
        src.read_at(chunk, offset)?;
        if chunk.iter().all(|&b| b == 0) {
            if !opts.target_is_zero {
                dst.write_zeroes(base + offset, n, true)?;
            }
        } else {
            dst.write_compressed(chunk, base + offset)?;
        }
        offset += n;
        progress(base + offset, total);
    }
    Ok(())
}
