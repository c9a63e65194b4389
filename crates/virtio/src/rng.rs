//! virtio-rng (virtio 1.2, 5.4): one request queue; the device fills each
//! writable buffer with bytes from the host's getrandom(2).

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::queue::{
    collect_chain, drain_queue, write_segments, ActivateContext, Completion, DeviceSignals,
    QueueHandler, VirtioDevice,
};
use crate::{device_type, features, Result};

const QUEUE_SIZE: u16 = 256;

/// Most bytes handed out per request. Linux's hw_random asks for at most a
/// few KiB at a time; a guest posting a multi-GiB buffer gets this much and
/// no more, so one request cannot pin the worker (or drain the host's pool)
/// for long.
pub const MAX_RNG_BYTES_PER_REQUEST: usize = 64 << 10;

/// Descriptors per chain: a guest buffer split page by page.
const MAX_RNG_DESCRIPTORS: usize = 64;

/// The entropy device.
#[derive(Debug, Default)]
pub struct Rng {
    max_sizes: [u16; 1],
}

impl Rng {
    /// A new entropy device.
    pub fn new() -> Self {
        Rng {
            max_sizes: [QUEUE_SIZE],
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn device_features(&self) -> u64 {
        1 << features::VERSION_1 | 1 << features::RING_INDIRECT_DESC | 1 << features::RING_EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No configuration space.
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<Box<dyn QueueHandler>> {
        Ok(Box::new(RngHandler {
            mem: ctx.mem,
            signals: ctx.signals,
            buf: vec![0; MAX_RNG_BYTES_PER_REQUEST],
        }))
    }
}

struct RngHandler {
    mem: GuestMemoryMmap,
    signals: Arc<DeviceSignals>,
    buf: Vec<u8>,
}

impl QueueHandler for RngHandler {
    fn process(&mut self, queues: &mut [Queue], pending: u32) -> Result<()> {
        if pending & 1 == 0 {
            return Ok(());
        }
        let Some(q) = queues.get_mut(0) else {
            return Ok(());
        };
        let mem = &self.mem;
        let buf = &mut self.buf;
        drain_queue(0, q, mem, &self.signals, |chain| {
            let Ok(bufs) = collect_chain(mem, chain, MAX_RNG_DESCRIPTORS) else {
                return Completion::Used(0);
            };
            let n = (bufs.writable_len() as usize).min(buf.len());
            if getrandom::fill(&mut buf[..n]).is_err() {
                // No entropy to give: an empty answer, the driver retries.
                return Completion::Used(0);
            }
            match write_segments(mem, &bufs.writable, 0, &buf[..n]) {
                Ok(w) => Completion::Used(w as u32),
                Err(_) => Completion::Used(0),
            }
        })
    }
}
