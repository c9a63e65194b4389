//! The I/O engine behind `virtkit img bench`, with `qemu-img bench`'s
//! semantics: `count` requests of `buf_size` bytes, `depth` of them in flight
//! at once, the first at `offset` and each next one `step` bytes further,
//! wrapping modulo the image size.
//!
//! qemu-img keeps `depth` requests in flight with AIO callbacks served by a
//! thread pool (aio=threads, its default). We do the same with `depth`
//! worker threads, each owning one buffer and issuing blocking requests to
//! the shared [`BlockBackend`]; a shared counter hands out request numbers,
//! so the sequence of offsets is the same as qemu-img's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::BlockBackend;

/// Largest number of worker threads: qemu's thread pool has at most 64
/// workers, so a deeper queue does not add parallelism there either.
pub const MAX_WORKERS: usize = 64;

/// Largest buffer per request, to bound memory (`depth` buffers exist).
pub const MAX_BUF_SIZE: usize = 64 << 20;

/// Parameters of one run, named after `qemu-img bench`'s options.
#[derive(Clone, Debug)]
pub struct BenchParams {
    /// `-c`: number of requests.
    pub count: u64,
    /// `-d`: requests in flight.
    pub depth: usize,
    /// `-s`: bytes per request.
    pub buf_size: usize,
    /// `-o`: offset of the first request.
    pub offset: u64,
    /// `-S`: distance between consecutive requests (qemu: 0 means buf_size).
    pub step: u64,
    /// `-w`: write instead of read.
    pub write: bool,
    /// `--pattern`: the byte written.
    pub pattern: u8,
    /// `--flush-interval`: flush after every that many requests (0: never).
    pub flush_interval: u64,
    /// `-t writethrough`/`directsync`: flush after every write.
    pub writethrough: bool,
    /// `-t unsafe`: flushes are ignored (also `--flush-interval`'s).
    pub no_flush: bool,
}

impl Default for BenchParams {
    /// qemu-img bench's defaults.
    fn default() -> Self {
        Self {
            count: 75000,
            depth: 64,
            buf_size: 4096,
            offset: 0,
            step: 0,
            write: false,
            pattern: 0,
            flush_interval: 0,
            writethrough: false,
            no_flush: false,
        }
    }
}

/// Errors of a bench run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("Invalid {what} specified. Must be between 1 and {max}.")]
    Invalid { what: &'static str, max: u64 },
    #[error("--flush-interval is only available in write tests")]
    FlushNeedsWrite,
    #[error("Flush interval can't be smaller than depth")]
    FlushBelowDepth,
    #[error("image is read-only; a write benchmark needs a writable image")]
    ReadOnly,
    #[error("Failed request: {0}")]
    Request(#[source] crate::Error),
}

impl BenchParams {
    /// The step actually used (qemu: a zero step means the buffer size).
    pub fn effective_step(&self) -> u64 {
        if self.step == 0 {
            self.buf_size as u64
        } else {
            self.step
        }
    }

    /// Checks the parameters as qemu-img does before opening the image.
    pub fn validate(&self) -> Result<(), BenchError> {
        let max = i32::MAX as u64;
        if self.count == 0 || self.count > max {
            return Err(BenchError::Invalid {
                what: "request count",
                max,
            });
        }
        if self.depth == 0 || self.depth as u64 > max {
            return Err(BenchError::Invalid {
                what: "queue depth",
                max,
            });
        }
        if self.buf_size == 0 || self.buf_size > MAX_BUF_SIZE {
            return Err(BenchError::Invalid {
                what: "buffer size",
                max: MAX_BUF_SIZE as u64,
            });
        }
        if self.flush_interval != 0 && !self.write {
            return Err(BenchError::FlushNeedsWrite);
        }
        if self.flush_interval != 0 && self.flush_interval < self.depth as u64 {
            return Err(BenchError::FlushBelowDepth);
        }
        Ok(())
    }

    /// Offset of request number `n` (0-based), as qemu-img computes it: the
    /// first at `offset`, then `step` further each time, modulo the size.
    pub fn request_offset(&self, n: u64, image_size: u64) -> u64 {
        if n == 0 {
            return self.offset;
        }
        let raw = self.offset as u128 + n as u128 * self.effective_step() as u128;
        if image_size == 0 {
            0
        } else {
            (raw % image_size as u128) as u64
        }
    }
}

/// Runs the benchmark and returns the wall time from the first request to
/// the completion of the last (qemu-img's "Run completed in" figure; like
/// qemu-img, the final flush on close is not timed).
pub fn run(backend: &dyn BlockBackend, params: &BenchParams) -> Result<Duration, BenchError> {
    params.validate()?;
    if params.write && backend.is_read_only() {
        return Err(BenchError::ReadOnly);
    }
    let size = backend.len();
    let workers = params.depth.min(MAX_WORKERS).min(params.count as usize);
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<crate::Error>> = Mutex::new(None);

    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut buf = vec![params.pattern; params.buf_size];
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= params.count {
                        return;
                    }
                    let offset = params.request_offset(n, size);
                    let result = if params.write {
                        backend.write_at(&buf, offset).and_then(|()| {
                            let interval_hit = params.flush_interval != 0
                                && (n + 1).is_multiple_of(params.flush_interval);
                            if !params.no_flush && (params.writethrough || interval_hit) {
                                backend.flush()
                            } else {
                                Ok(())
                            }
                        })
                    } else {
                        backend.read_at(&mut buf, offset)
                    };
                    if let Err(e) = result {
                        failed.store(true, Ordering::Relaxed);
                        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(BenchError::Request(e)),
        None => Ok(elapsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, Result};

    /// A backend in memory that counts requests, to check the engine.
    struct Mem {
        data: Mutex<Vec<u8>>,
        reads: AtomicU64,
        writes: AtomicU64,
        flushes: AtomicU64,
    }

    impl Mem {
        fn new(size: usize) -> Self {
            Self {
                data: Mutex::new(vec![0; size]),
                reads: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                flushes: AtomicU64::new(0),
            }
        }
        fn check(&self, offset: u64, len: usize) -> Result<()> {
            let size = self.len();
            if offset + len as u64 > size {
                return Err(Error::OutOfRange {
                    offset,
                    len: len as u64,
                    size,
                });
            }
            Ok(())
        }
    }

    impl BlockBackend for Mem {
        fn len(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.check(offset, buf.len())?;
            self.reads.fetch_add(1, Ordering::Relaxed);
            let d = self.data.lock().unwrap();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
            self.check(offset, buf.len())?;
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut d = self.data.lock().unwrap();
            d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self) -> Result<()> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64, _: bool) -> Result<()> {
            self.write_at(&vec![0; len as usize], offset)
        }
        fn discard(&self, offset: u64, len: u64) -> Result<()> {
            self.write_zeroes(offset, len, true)
        }
    }

    #[test]
    fn offsets_wrap_like_qemu() {
        let p = BenchParams {
            offset: 4096,
            step: 8192,
            ..Default::default()
        };
        assert_eq!(p.request_offset(0, 16384), 4096);
        assert_eq!(p.request_offset(1, 16384), 12288);
        assert_eq!(p.request_offset(2, 16384), 4096);
        let q = BenchParams::default();
        assert_eq!(q.effective_step(), 4096);
        assert_eq!(q.request_offset(5, 1 << 20), 5 * 4096);
    }

    #[test]
    fn writes_every_request_with_pattern() {
        let mem = Mem::new(1 << 20);
        let p = BenchParams {
            count: 300,
            depth: 8,
            buf_size: 4096,
            write: true,
            pattern: 0x5a,
            flush_interval: 100,
            ..Default::default()
        };
        run(&mem, &p).unwrap();
        assert_eq!(mem.writes.load(Ordering::Relaxed), 300);
        assert_eq!(mem.flushes.load(Ordering::Relaxed), 3);
        let d = mem.data.lock().unwrap();
        // 256 requests cover the whole 1 MiB before wrapping.
        assert!(d.iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn out_of_range_request_fails() {
        let mem = Mem::new(10000);
        let p = BenchParams {
            count: 10,
            depth: 2,
            ..Default::default()
        };
        let err = run(&mem, &p).unwrap_err();
        assert!(err.to_string().starts_with("Failed request"), "{err}");
    }

    #[test]
    fn validation_mirrors_qemu() {
        let p = BenchParams {
            flush_interval: 10,
            ..Default::default()
        };
        assert!(matches!(p.validate(), Err(BenchError::FlushNeedsWrite)));
        let p = BenchParams {
            write: true,
            flush_interval: 10,
            depth: 64,
            ..Default::default()
        };
        assert!(matches!(p.validate(), Err(BenchError::FlushBelowDepth)));
        let p = BenchParams {
            count: 0,
            ..Default::default()
        };
        assert!(p.validate().is_err());
    }
}
