//! The device side of the transport: what a device model implements, the
//! worker thread that runs it, and the shared interrupt state.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use crate::{Error, Result};
use vmm::IrqLine;

/// InterruptStatus bit: a used buffer notification.
pub(crate) const INT_VRING: u32 = 1;
/// InterruptStatus bit: a configuration change notification.
pub(crate) const INT_CONFIG: u32 = 2;

/// A virtio device model, as the transport sees it.
pub trait VirtioDevice: Send {
    /// Virtio device ID ([`crate::device_type`]).
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver, including
    /// [`features::VERSION_1`](crate::features::VERSION_1).
    fn device_features(&self) -> u64;
    /// Maximum size of each virtqueue (powers of two); the length is the
    /// number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device configuration space at `offset` (from 0x100 in the MMIO
    /// window). Bytes beyond the configuration structure read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space; read-only fields ignore writes.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: returns the handler the worker thread runs.
    fn activate(&mut self, ctx: ActivateContext) -> Result<Box<dyn QueueHandler>>;
    /// The driver reset the device (the worker is already stopped).
    fn reset(&mut self) {}
    /// The device's own state for a snapshot, beyond the transport's
    /// (taken while the worker is paused). Devices with none keep the
    /// default.
    fn save_state(&self) -> crate::persist::DeviceState {
        crate::persist::DeviceState::None
    }
    /// Restores [`save_state`](Self::save_state)'s result into a fresh
    /// device, before the transport activates it again. A state for
    /// another kind of device is refused.
    fn restore_state(
        &mut self,
        state: &crate::persist::DeviceState,
    ) -> std::result::Result<(), crate::persist::PersistError> {
        crate::persist::expect_none(self.device_type(), state)
    }
    /// Whether [`restore_state`](Self::restore_state) accepted a
    /// configuration that differs from the saved one in a way the driver
    /// must be told of (a medium inserted into a drive that was empty):
    /// the transport then signals a configuration change when it resumes.
    fn config_changed_by_restore(&self) -> bool {
        false
    }
}

/// Everything an activated device needs.
pub struct ActivateContext {
    /// Features the driver accepted (a subset of the offered ones).
    pub features: u64,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Interrupts and needs-reset reporting.
    pub signals: Arc<DeviceSignals>,
    /// The worker's wake-up events (for host-side input such as a console).
    pub events: Arc<WorkerEvents>,
}

/// Queue processing, run on the device's worker thread.
pub trait QueueHandler: Send {
    /// Processes the queues whose bit is set in `pending` (bit n = queue n).
    /// An error means the guest broke the protocol beyond recovery: the
    /// transport sets DEVICE_NEEDS_RESET and stops calling the handler.
    fn process(&mut self, queues: &mut [Queue], pending: u32) -> Result<()>;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the plain data
    // behind them inconsistent, so poisoning is ignored.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Interrupt status, configuration generation and device-needs-reset of one
/// transport, shared by the vCPU side and the worker thread.
pub struct DeviceSignals {
    irq: Arc<dyn IrqLine>,
    // The lock serializes "change status, then move the line", so the line
    // is high exactly when some status bit is set.
    status: Mutex<u32>,
    config_generation: AtomicU32,
    needs_reset: AtomicBool,
    driver_ok: AtomicBool,
    error: Mutex<Option<String>>,
}

impl DeviceSignals {
    pub(crate) fn new(irq: Arc<dyn IrqLine>) -> Self {
        DeviceSignals {
            irq,
            status: Mutex::new(0),
            config_generation: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            driver_ok: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    fn set_bits(&self, bits: u32) {
        let mut status = lock(&self.status);
        *status |= bits;
        self.irq.raise();
    }

    /// Tells the driver that used buffers are ready.
    pub fn signal_used_queue(&self) {
        self.set_bits(INT_VRING);
    }

    /// The device changed its configuration space: bumps ConfigGeneration
    /// and, once the driver is running, interrupts it.
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::AcqRel);
        if self.driver_ok.load(Ordering::Acquire) {
            self.set_bits(INT_CONFIG);
        }
    }

    /// The guest broke the protocol: the device stops until reset.
    pub fn set_needs_reset(&self, reason: String) {
        *lock(&self.error) = Some(reason);
        self.needs_reset.store(true, Ordering::Release);
        if self.driver_ok.load(Ordering::Acquire) {
            self.set_bits(INT_CONFIG);
        }
    }

    pub(crate) fn interrupt_status(&self) -> u32 {
        *lock(&self.status)
    }

    pub(crate) fn ack(&self, bits: u32) {
        let mut status = lock(&self.status);
        *status &= !bits;
        if *status == 0 {
            self.irq.lower();
        }
    }

    pub(crate) fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::Acquire)
    }

    pub(crate) fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    pub(crate) fn set_driver_ok(&self, ok: bool) {
        self.driver_ok.store(ok, Ordering::Release);
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        lock(&self.error).clone()
    }

    /// Puts saved signal state back (snapshot restore) and drives the
    /// line to match the interrupt status.
    pub(crate) fn restore(
        &self,
        status: u32,
        generation: u32,
        driver_ok: bool,
        error: Option<String>,
    ) {
        self.config_generation.store(generation, Ordering::Release);
        self.driver_ok.store(driver_ok, Ordering::Release);
        self.needs_reset.store(error.is_some(), Ordering::Release);
        *lock(&self.error) = error;
        let mut s = lock(&self.status);
        *s = status & (INT_VRING | INT_CONFIG);
        self.irq.set_level(*s != 0);
    }

    pub(crate) fn reset(&self) {
        self.needs_reset.store(false, Ordering::Release);
        self.driver_ok.store(false, Ordering::Release);
        *lock(&self.error) = None;
        let mut status = lock(&self.status);
        *status = 0;
        self.irq.lower();
    }
}

#[derive(Default)]
struct EventState {
    pending: u32,
    stop: bool,
}

/// Wake-ups for a device's worker thread: queue notifications (one bit per
/// queue) and the stop request.
#[derive(Default)]
pub struct WorkerEvents {
    state: Mutex<EventState>,
    cv: Condvar,
}

impl WorkerEvents {
    /// Marks queue `index` as needing attention (a no-op beyond 31 queues;
    /// no device here has that many).
    pub fn kick(&self, index: usize) {
        if index < 32 {
            lock(&self.state).pending |= 1 << index;
            self.cv.notify_one();
        }
    }

    pub(crate) fn stop(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_one();
    }

    /// Undoes [`stop`](Self::stop) so a paused worker can run again on the
    /// same events (host-side producers keep their handle to them).
    pub(crate) fn restart(&self) {
        lock(&self.state).stop = false;
    }

    /// Waits for work: `Some(pending queues)` or `None` when asked to stop.
    fn wait(&self) -> Option<u32> {
        let mut st = lock(&self.state);
        loop {
            if st.stop {
                return None;
            }
            if st.pending != 0 {
                return Some(std::mem::take(&mut st.pending));
            }
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// What a stopped worker hands back: its handler and queues (with their
/// ring positions), so the transport can save them or run them again.
pub(crate) type Parked = (Box<dyn QueueHandler>, Vec<Queue>);

/// The worker thread's body: process everything once (buffers may have
/// been posted before DRIVER_OK, or notified while the worker was paused),
/// then whatever is notified, until stopped.
pub(crate) fn run_worker(
    mut handler: Box<dyn QueueHandler>,
    mut queues: Vec<Queue>,
    events: Arc<WorkerEvents>,
    signals: Arc<DeviceSignals>,
) -> Parked {
    let all = if queues.len() >= 32 {
        u32::MAX
    } else {
        (1u32 << queues.len()) - 1
    };
    let mut pending = all;
    loop {
        if let Err(e) = handler.process(&mut queues, pending) {
            signals.set_needs_reset(e.to_string());
            // Stay parked until the driver resets the device.
            while events.wait().is_some() {}
            return (handler, queues);
        }
        match events.wait() {
            Some(p) => pending = p,
            None => return (handler, queues),
        }
    }
}

/// One device-readable or device-writable buffer of a descriptor chain,
/// already checked to lie entirely in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A descriptor chain split into its readable and writable parts.
#[derive(Debug, Default)]
pub(crate) struct ChainBuffers {
    pub readable: Vec<Segment>,
    pub writable: Vec<Segment>,
}

impl ChainBuffers {
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// Why a chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ChainError {
    #[error("more than {0} descriptors in one chain")]
    TooManyDescriptors(usize),
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
}

/// Walks `chain`, checking every descriptor against guest memory, the
/// readable-before-writable rule and `max_descriptors` (indirect tables can
/// hold 65535 entries: without a cap a guest could make the device allocate
/// and walk that much per request). Zero-length descriptors are dropped.
pub(crate) fn collect_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    max_descriptors: usize,
) -> std::result::Result<ChainBuffers, ChainError> {
    let mut bufs = ChainBuffers::default();
    for (count, desc) in chain.enumerate() {
        if count >= max_descriptors {
            return Err(ChainError::TooManyDescriptors(max_descriptors));
        }
        let (addr, len) = (desc.addr(), desc.len());
        if len == 0 {
            continue;
        }
        let access = if desc.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(addr, len as usize, access) {
            return Err(ChainError::OutsideMemory { addr: addr.0, len });
        }
        let seg = Segment { addr, len };
        if desc.is_write_only() {
            bufs.writable.push(seg);
        } else if bufs.writable.is_empty() {
            bufs.readable.push(seg);
        } else {
            return Err(ChainError::ReadableAfterWritable);
        }
    }
    Ok(bufs)
}

/// What a per-chain callback decided.
pub(crate) enum Completion {
    /// Put the chain on the used ring with this many bytes written.
    Used(u32),
    /// Leave the chain (and the rest) on the available ring for later.
    NotNow,
}

/// Pops every available chain of `q`, hands it to `f`, and puts it on the
/// used ring; re-arms notifications (event idx aware) and interrupts the
/// driver if it asked to be.
pub(crate) fn drain_queue<F>(
    index: usize,
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    signals: &DeviceSignals,
    mut f: F,
) -> Result<()>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> Completion,
{
    if !q.ready() {
        return Ok(());
    }
    let qerr = |e: virtio_queue::Error| Error::Queue {
        index,
        reason: e.to_string(),
    };
    let mut used_any = false;
    'outer: loop {
        q.disable_notification(mem).map_err(qerr)?;
        while let Some(chain) = q.iter(mem).map_err(qerr)?.next() {
            let head = chain.head_index();
            match f(chain) {
                Completion::Used(len) => {
                    q.add_used(mem, head, len).map_err(qerr)?;
                    used_any = true;
                }
                Completion::NotNow => {
                    q.go_to_previous_position();
                    break 'outer;
                }
            }
        }
        if !q.enable_notification(mem).map_err(qerr)? {
            break;
        }
    }
    // Without this, a NotNow exit would leave notifications disabled and
    // the driver would never kick us again.
    q.enable_notification(mem).map_err(qerr)?;
    if used_any && q.needs_notification(mem).map_err(qerr)? {
        signals.signal_used_queue();
    }
    Ok(())
}

/// Copies guest bytes from the segments' concatenation, starting at byte
/// `skip`, into `buf`. Returns how many bytes were copied.
pub(crate) fn read_segments(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    mut skip: u64,
    buf: &mut [u8],
) -> Result<usize> {
    use vm_memory::Bytes;
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], s.addr.unchecked_add(skip))?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// Copies `buf` into the segments' concatenation, starting at byte `skip`.
/// Returns how many bytes were copied.
pub(crate) fn write_segments(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    mut skip: u64,
    buf: &[u8],
) -> Result<usize> {
    use vm_memory::Bytes;
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(buf.len() - done);
        mem.write_slice(&buf[done..done + n], s.addr.unchecked_add(skip))?;
        done += n;
        skip = 0;
    }
    Ok(done)
}
