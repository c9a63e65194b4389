//! The code buffer's memory, made ready ahead of the translator by
//! another thread. The first write to a fresh page of the buffer costs a
//! page fault that zeroes it (2 MiB at a time with transparent huge
//! pages): a Linux boot writes ~30 MB of code, and those faults were
//! ~3.5% of its time, all on the hart's thread, in the middle of
//! translations. Once the translator is half-way through a 2 MiB step,
//! a worker thread faults the next step in (`MADV_POPULATE_WRITE`), so
//! the translator finds it ready. Programs with less than 1 MiB of code
//! never start the worker.

use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;

/// One step: a transparent huge page.
const STEP: usize = 2 << 20;

pub(super) struct Prefault {
    /// The code buffer: its address and size.
    base: usize,
    size: usize,
    /// The last step asked for (0: none yet; step 0 is the translator's).
    asked: usize,
    /// Steps to fault in, to the worker; `None` until it starts.
    tx: Option<Sender<usize>>,
    worker: Option<JoinHandle<()>>,
    /// The worker could not be started: the translator faults its pages.
    off: bool,
}

impl Prefault {
    /// For the buffer of `size` bytes at `base`, which must stay mapped
    /// until [`Prefault::stop`] returns.
    pub(super) fn new(base: *mut u8, size: usize) -> Prefault {
        Prefault {
            base: base as usize,
            size,
            asked: 0,
            tx: None,
            worker: None,
            off: false,
        }
    }

    /// The translator has filled the buffer up to offset `len`.
    pub(super) fn filled(&mut self, len: usize) {
        let next = (len + STEP / 2) / STEP;
        if next <= self.asked || self.off || (next + 1) * STEP > self.size {
            return;
        }
        self.asked = next;
        if self.tx.is_none() {
            let (tx, rx) = channel::<usize>();
            let (base, size) = (self.base, self.size);
            let spawned = std::thread::Builder::new()
                .name("vk-jit-prefault".into())
                // It only calls madvise: a small stack (one per hart with
                // over 1 MiB of code).
                .stack_size(64 << 10)
                .spawn(move || {
                    for step in rx {
                        let at = step * STEP;
                        if at + STEP > size {
                            continue;
                        }
                        // SAFETY: a range inside the code buffer, which
                        // stays mapped until `stop` has joined this
                        // thread. Populating writes no byte: pages
                        // already there are left as they are, new ones
                        // come in zeroed, as the translator's first write
                        // would have made them.
                        let r = unsafe {
                            libc::madvise(
                                (base + at) as *mut libc::c_void,
                                STEP,
                                libc::MADV_POPULATE_WRITE,
                            )
                        };
                        if r != 0 {
                            // A kernel before 5.14 (EINVAL), or no memory:
                            // the translator's own writes fault them in.
                            return;
                        }
                    }
                });
            match spawned {
                Ok(h) => {
                    self.worker = Some(h);
                    self.tx = Some(tx);
                }
                Err(_) => {
                    self.off = true;
                    return;
                }
            }
        }
        if let Some(tx) = &self.tx {
            // A worker that stopped early leaves the pages to the
            // translator.
            let _ = tx.send(next);
        }
    }

    /// Stops the worker (before the buffer is unmapped).
    pub(super) fn stop(&mut self) {
        self.tx = None;
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Prefault {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `len` bytes at `p` in memory, per `mincore`.
    fn resident(p: *mut u8, len: usize) -> usize {
        let mut v = vec![0u8; len / 4096];
        // SAFETY: `p..p + len` is inside a live mapping; `v` has a byte
        // per page.
        let r = unsafe { libc::mincore(p.cast(), len, v.as_mut_ptr()) };
        assert_eq!(r, 0);
        v.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn the_next_step_is_faulted_in_once_half_of_one_is_filled() {
        let size = 4 * STEP;
        // SAFETY: a fresh anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let p = p.cast::<u8>();
        let mut f = Prefault::new(p, size);
        // Less than half a step: no worker at all.
        f.filled(STEP / 2 - 16);
        assert!(f.tx.is_none() && f.worker.is_none());
        f.filled(STEP / 2);
        // Asked once: a second call for the same step sends nothing.
        f.filled(STEP / 2 + 4096);
        assert_eq!(f.asked, 1);
        f.filled(STEP + STEP / 2);
        f.filled(2 * STEP + STEP / 2);
        assert_eq!(f.asked, 3);
        // Half-way through the last step: there is no next one.
        f.filled(3 * STEP + STEP / 2);
        assert_eq!(f.asked, 3);
        f.stop();
        // `stop` lets the worker finish what it was sent.
        // SAFETY: steps inside the mapping.
        let (s1, s2, s3) = unsafe { (p.add(STEP), p.add(2 * STEP), p.add(3 * STEP)) };
        // Whether this kernel has MADV_POPULATE_WRITE, on a page of a
        // mapping of its own.
        // SAFETY: a fresh anonymous page, unmapped right after.
        let supported = unsafe {
            let q = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(q, libc::MAP_FAILED);
            let ok = libc::madvise(q, 4096, libc::MADV_POPULATE_WRITE) == 0;
            libc::munmap(q, 4096);
            ok
        };
        if !supported {
            // A kernel before 5.14: the worker stopped at once, and
            // nothing was touched.
            assert_eq!(resident(s1, 3 * STEP), 0);
            // SAFETY: the mapping made above, no longer used.
            unsafe { libc::munmap(p.cast(), size) };
            return;
        }
        assert_eq!(resident(s1, STEP), STEP / 4096);
        assert_eq!(resident(s2, STEP), STEP / 4096);
        assert_eq!(resident(s3, STEP), STEP / 4096);
        // The memory reads as zeroes.
        // SAFETY: ditto.
        assert!(unsafe { std::slice::from_raw_parts(s1, STEP) }
            .iter()
            .all(|&b| b == 0));
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(p.cast(), size) };
    }
}
