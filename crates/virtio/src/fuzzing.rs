//! Entry points for `cargo fuzz` (crates/virtio/fuzz) and an in-memory
//! block backend for tests. Not part of the supported API.

use std::sync::{Arc, Mutex, PoisonError};

use image::BlockBackend;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::queue::{ActivateContext, DeviceSignals, WorkerEvents};
use crate::{Block, BlockConfig, Console, GuestRam, Interrupt, Rng, VirtioDevice};

/// A disk held in memory.
pub struct MemBackend {
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemBackend {
    /// A zeroed disk of `len` bytes.
    pub fn new(len: usize, read_only: bool) -> Self {
        MemBackend {
            data: Mutex::new(vec![0; len]),
            read_only,
        }
    }

    /// A copy of the disk's contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn span(&self, offset: u64, len: u64) -> image::Result<std::ops::Range<usize>> {
        let size = self.len();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(image::Error::OutOfRange { offset, len, size }),
        }
    }
}

impl image::BlockBackend for MemBackend {
    fn len(&self) -> u64 {
        self.data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> image::Result<()> {
        let r = self.span(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.lock().unwrap_or_else(PoisonError::into_inner)[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> image::Result<()> {
        if self.read_only {
            return Err(image::Error::ReadOnly);
        }
        let r = self.span(offset, buf.len() as u64)?;
        self.data.lock().unwrap_or_else(PoisonError::into_inner)[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> image::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> image::Result<()> {
        if self.read_only {
            return Err(image::Error::ReadOnly);
        }
        let r = self.span(offset, len)?;
        self.data.lock().unwrap_or_else(PoisonError::into_inner)[r].fill(0);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> image::Result<()> {
        self.write_zeroes(offset, len, true)
    }
}

struct NoIrq;
impl Interrupt for NoIrq {
    fn raise(&self) {}
    fn lower(&self) {}
}

const FUZZ_BASE: u64 = 0x8000_0000;
const FUZZ_MEM: usize = 64 << 10;
const DESC: u64 = FUZZ_BASE;
const AVAIL: u64 = FUZZ_BASE + 0x1000;
const USED: u64 = FUZZ_BASE + 0x2000;

/// Feeds one fuzz input to a device's queue processing: byte 0 picks the
/// device and options, byte 1 the queue size, the rest becomes guest
/// memory (descriptor table at +0, available ring at +0x1000, used ring at
/// +0x2000, buffers anywhere). Then the device's handler runs every queue
/// once, as after a notification. It must return without panicking.
pub fn fuzz_queues(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (sel, qsize_sel, image) = (data[0], data[1], &data[2..]);
    let ram = match GuestRam::new(FUZZ_BASE, FUZZ_MEM) {
        Ok(r) => r,
        Err(_) => return,
    };
    let mem = ram.memory().clone();
    let n = image.len().min(FUZZ_MEM);
    if mem
        .write_slice(&image[..n], GuestAddress(FUZZ_BASE))
        .is_err()
    {
        return;
    }
    let mut device: Box<dyn VirtioDevice> = match sel % 4 {
        0 | 1 => Box::new(Block::new(
            Arc::new(MemBackend::new(64 << 10, sel & 4 != 0)),
            BlockConfig {
                read_only: sel & 8 != 0,
                serial: "fuzz".into(),
            },
        )),
        2 => Box::new(Rng::new()),
        _ => {
            let (console, host) = Console::new(Box::new(std::io::sink()), Some((80, 25)));
            // Input waiting for the receive queue.
            host.try_send(&[b'x'; 300]);
            Box::new(console)
        }
    };
    let features = device.device_features();
    let signals = Arc::new(DeviceSignals::new(Arc::new(NoIrq)));
    let events = Arc::new(WorkerEvents::default());
    let mut queues = Vec::new();
    for &max in device.queue_max_sizes() {
        let Ok(mut q) = Queue::new(max) else { return };
        // Any power of two up to the max, as the driver may choose.
        let size = 1u16 << (qsize_sel % 9);
        if q.try_set_size(size.min(max)).is_err()
            || q.try_set_desc_table_address(GuestAddress(DESC)).is_err()
            || q.try_set_avail_ring_address(GuestAddress(AVAIL)).is_err()
            || q.try_set_used_ring_address(GuestAddress(USED)).is_err()
        {
            return;
        }
        q.set_event_idx(sel & 0x10 != 0);
        q.set_ready(true);
        queues.push(q);
    }
    let ctx = ActivateContext {
        features,
        mem,
        signals,
        events,
    };
    let Ok(mut handler) = device.activate(ctx) else {
        return;
    };
    // Errors are fine (they become DEVICE_NEEDS_RESET); panics are not.
    let _ = handler.process(&mut queues, u32::MAX);
    let _ = handler.process(&mut queues, u32::MAX);
}
