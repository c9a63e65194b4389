//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).

use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::persist::{PersistError, QueueState, TransportState, TRANSPORT_STATE_VERSION};
use crate::queue::{run_worker, ActivateContext, DeviceSignals, Parked, WorkerEvents};
use crate::{features, Error, Result, VirtioDevice};
use vmm::IrqLine;

/// Size of one device's register window (registers 0x000..0x100, device
/// configuration space from 0x100).
pub const MMIO_WINDOW_SIZE: u64 = 0x200;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// Vendor ID reported to the guest; drivers ignore it. "VKIT".
const VENDOR_ID: u32 = 0x5449_4b56;

// Register offsets (virtio 1.2, 4.2.2, table "MMIO Device Register Layout").
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Queue registers as the driver wrote them; turned into a
/// [`virtio_queue::Queue`] when the driver sets DRIVER_OK.
#[derive(Clone, Debug)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

struct Worker {
    events: Arc<WorkerEvents>,
    thread: JoinHandle<Parked>,
}

/// One virtio device behind a virtio-mmio register window.
///
/// The board maps it at some guest-physical base (QEMU `virt`: 0x1000_1000 +
/// n * 0x1000) and forwards loads and stores in
/// `base..base + MMIO_WINDOW_SIZE` as [`read`](Self::read) and
/// [`write`](Self::write) with the offset from `base`. Several vCPUs may do
/// that concurrently: wrap the transport in a `Mutex`; register accesses are
/// short (no I/O happens under it, see the crate docs on threading).
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    signals: Arc<DeviceSignals>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    worker: Option<Worker>,
    /// A paused worker's handler and queues, with the events it waits on
    /// (see [`pause`](Self::pause)).
    parked: Option<(Parked, Arc<WorkerEvents>)>,
    /// A restore changed the device's configuration (see
    /// [`VirtioDevice::config_changed_by_restore`]): the first
    /// [`resume`](Self::resume) interrupts the driver about it, once the
    /// board's interrupt controller is back.
    config_change_on_resume: bool,
}

impl MmioTransport {
    /// Puts `device` behind a register window; `irq` is the line the board
    /// wired the slot to.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: Arc<dyn IrqLine>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&m| QueueConfig::new(m))
            .collect();
        MmioTransport {
            device,
            mem,
            signals: Arc::new(DeviceSignals::new(irq)),
            status: 0,
            config_change_on_resume: false,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            worker: None,
            parked: None,
        }
    }

    /// Virtio device ID (for the device tree's comments and logs).
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Why the device set DEVICE_NEEDS_RESET, if it did: a guest driver bug
    /// or attack worth logging.
    pub fn device_error(&self) -> Option<String> {
        self.signals.last_error()
    }

    /// Current device status register, as the driver would read it.
    pub fn status(&self) -> u32 {
        let mut s = self.status;
        if self.signals.needs_reset() {
            s |= status::DEVICE_NEEDS_RESET;
        }
        s
    }

    /// Handles a guest load of `data.len()` bytes at `offset` in the window.
    /// Registers below 0x100 answer only aligned 32-bit loads (the spec
    /// requires them); anything else, and offsets past the window, read as
    /// zeros.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= REG_CONFIG {
            if offset < MMIO_WINDOW_SIZE {
                self.device.read_config(offset - REG_CONFIG, data);
            }
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// Handles a guest store at `offset` in the window. Registers below
    /// 0x100 take only aligned 32-bit stores; others are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            if offset < MMIO_WINDOW_SIZE {
                self.device.write_config(offset - REG_CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let features = self.device.device_features();
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size.into()),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready.into()),
            REG_INTERRUPT_STATUS => self.signals.interrupt_status(),
            REG_STATUS => self.status(),
            // No shared memory regions: length all ones means "absent".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.signals.config_generation(),
            // Write-only registers and holes read as zero.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        // Queue layout registers may only change before DRIVER_OK (4.2.3.2).
        let queue_setup = self.status & status::DRIVER_OK == 0;
        let sel = self.queue_sel as usize;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            // Features are frozen once FEATURES_OK is set (3.1.1).
            REG_DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => set_half(&mut self.driver_features, false, v),
                    1 => set_half(&mut self.driver_features, true, v),
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM if queue_setup => {
                if let Some(q) = self.queues.get_mut(sel) {
                    // Checked against max and power of two at activation.
                    q.size = v.min(u32::from(u16::MAX)) as u16;
                }
            }
            // Reads return the last value written (4.2.2), even after
            // DRIVER_OK: Linux's vm_del_vq writes 0 and checks it reads
            // back. A running queue is not stopped by it (that would need
            // VIRTIO_F_RING_RESET); the next reset does.
            REG_QUEUE_READY => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.ready = v == 1;
                }
            }
            REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH if queue_setup => {
                if let Some(q) = self.queues.get_mut(sel) {
                    set_half(&mut q.desc, offset == REG_QUEUE_DESC_HIGH, v);
                }
            }
            REG_QUEUE_DRIVER_LOW | REG_QUEUE_DRIVER_HIGH if queue_setup => {
                if let Some(q) = self.queues.get_mut(sel) {
                    set_half(&mut q.avail, offset == REG_QUEUE_DRIVER_HIGH, v);
                }
            }
            REG_QUEUE_DEVICE_LOW | REG_QUEUE_DEVICE_HIGH if queue_setup => {
                if let Some(q) = self.queues.get_mut(sel) {
                    set_half(&mut q.used, offset == REG_QUEUE_DEVICE_HIGH, v);
                }
            }
            REG_QUEUE_NOTIFY => {
                if let Some(w) = &self.worker {
                    // Without VIRTIO_F_NOTIFICATION_DATA the value is the
                    // queue index.
                    if (v as usize) < self.queues.len() {
                        w.events.kick(v as usize);
                    }
                }
            }
            REG_INTERRUPT_ACK => self.signals.ack(v),
            REG_STATUS => self.write_status(v),
            REG_SHM_SEL => {}
            _ => {}
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Drivers must not clear status bits except by reset (2.1.1);
        // keeping them sticky means a running device is never re-activated
        // over rings it is already serving.
        let mut new = (v | old) & 0xff & !status::DEVICE_NEEDS_RESET;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let offered = self.device.device_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & (1 << features::VERSION_1) != 0;
            if !ok {
                // The driver reads the status back and gives up (3.1.1).
                new &= !status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            if new & status::FEATURES_OK == 0 {
                new &= !status::DRIVER_OK;
            } else if let Err(e) = self.activate() {
                self.signals.set_needs_reset(e.to_string());
            }
        }
        self.status = new;
    }

    fn activate(&mut self) -> Result<()> {
        // Never two workers on the same rings.
        self.stop_worker();
        let mut queues = Vec::with_capacity(self.queues.len());
        let event_idx = self.driver_features & (1 << features::RING_EVENT_IDX) != 0;
        for (index, cfg) in self.queues.iter().enumerate() {
            let qerr = |e: virtio_queue::Error| Error::Queue {
                index,
                reason: e.to_string(),
            };
            let mut q = Queue::new(cfg.max_size).map_err(qerr)?;
            if cfg.ready {
                q.try_set_size(cfg.size).map_err(qerr)?;
                q.try_set_desc_table_address(GuestAddress(cfg.desc))
                    .map_err(qerr)?;
                q.try_set_avail_ring_address(GuestAddress(cfg.avail))
                    .map_err(qerr)?;
                q.try_set_used_ring_address(GuestAddress(cfg.used))
                    .map_err(qerr)?;
                q.set_event_idx(event_idx);
                q.set_ready(true);
                if !q.is_valid(&self.mem) {
                    return Err(Error::Queue {
                        index,
                        reason: "rings are not inside guest memory".into(),
                    });
                }
            }
            queues.push(q);
        }
        let events = Arc::new(WorkerEvents::default());
        self.signals.set_driver_ok(true);
        let handler = self.device.activate(ActivateContext {
            features: self.driver_features,
            mem: self.mem.clone(),
            signals: self.signals.clone(),
            events: events.clone(),
        })?;
        self.spawn_worker(handler, queues, events)
    }

    fn spawn_worker(
        &mut self,
        handler: Box<dyn crate::QueueHandler>,
        queues: Vec<Queue>,
        events: Arc<WorkerEvents>,
    ) -> Result<()> {
        let signals = self.signals.clone();
        let ev = events.clone();
        let thread = std::thread::Builder::new()
            .name(format!("virtio-{}", self.device.device_type()))
            .spawn(move || run_worker(handler, queues, ev, signals))
            .map_err(Error::SpawnWorker)?;
        self.worker = Some(Worker { events, thread });
        Ok(())
    }

    fn stop_worker(&mut self) {
        self.parked = None;
        if let Some(w) = self.worker.take() {
            w.events.stop();
            // A panicking worker already reported through the panic hook;
            // there is nothing more to do with it here.
            let _ = w.thread.join();
        }
    }

    /// Back to the power-on state (the driver wrote 0 to Status).
    fn reset(&mut self) {
        self.stop_worker();
        self.device.reset();
        self.signals.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
    }

    /// Stops the device's worker thread (after the request in progress) and
    /// resets the device. Also done on drop.
    pub fn shutdown(&mut self) {
        self.reset();
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

fn set_half(reg: &mut u64, high: bool, v: u32) {
    if high {
        *reg = (*reg & 0xffff_ffff) | (u64::from(v) << 32);
    } else {
        *reg = (*reg & !0xffff_ffff) | u64::from(v);
    }
}

// ---- persist: pause, resume, save and restore for snapshots ----

impl MmioTransport {
    /// Stops the device's worker after the request it is on and keeps its
    /// queues, so the device is quiescent (no guest memory access, no
    /// interrupt) and its ring positions are known. Notifications that
    /// arrive while paused are not lost: [`resume`](Self::resume) scans
    /// every queue first. A no-op if the device is not running.
    pub fn pause(&mut self) {
        if let Some(w) = self.worker.take() {
            w.events.stop();
            // A worker that panicked has nothing to hand back: the device
            // stays dead, as it would have without the pause.
            if let Ok(parked) = w.thread.join() {
                self.parked = Some((parked, w.events));
            }
        }
    }

    /// Starts the worker of a paused (or restored) device again.
    pub fn resume(&mut self) -> Result<()> {
        if self.signals.needs_reset() {
            // A broken device stays stopped until the driver resets it.
            return Ok(());
        }
        if std::mem::take(&mut self.config_change_on_resume) {
            self.signals.signal_config_change();
        }
        if let Some(((handler, queues), events)) = self.parked.take() {
            events.restart();
            self.spawn_worker(handler, queues, events)?;
        }
        Ok(())
    }

    /// The transport's and device's state. The transport must be paused
    /// (or never activated).
    pub fn save(&self) -> std::result::Result<TransportState, PersistError> {
        let device_type = self.device.device_type();
        if self.worker.is_some() {
            return Err(PersistError::NotPaused { device_type });
        }
        let parked = self.parked.as_ref().map(|((_, q), _)| q);
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pos = parked.and_then(|q| q.get(i)).map(|q| q.state());
                QueueState {
                    max_size: c.max_size,
                    size: c.size,
                    ready: c.ready,
                    desc: c.desc,
                    avail: c.avail,
                    used: c.used,
                    next_avail: pos.map_or(0, |p| p.next_avail),
                    next_used: pos.map_or(0, |p| p.next_used),
                }
            })
            .collect();
        Ok(TransportState {
            version: TRANSPORT_STATE_VERSION,
            device_type,
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            queues,
            interrupt_status: self.signals.interrupt_status(),
            config_generation: self.signals.config_generation(),
            needs_reset: if self.signals.needs_reset() {
                Some(self.signals.last_error().unwrap_or_default())
            } else {
                None
            },
            device: self.device.save_state(),
        })
    }

    /// A transport for `device` (fresh, of the snapshot's kind) in the
    /// saved state, paused: call [`resume`](Self::resume) once the rest of
    /// the board (interrupt controller included) is restored. Everything
    /// is checked before the device is activated; on error nothing runs.
    pub fn restore(
        mut device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: Arc<dyn IrqLine>,
        st: &TransportState,
    ) -> std::result::Result<Self, PersistError> {
        let device_type = device.device_type();
        if st.version != TRANSPORT_STATE_VERSION {
            return Err(PersistError::Version(st.version));
        }
        if st.device_type != device_type {
            return Err(PersistError::DeviceType {
                expected: device_type,
                found: st.device_type,
            });
        }
        let max_sizes = device.queue_max_sizes().to_vec();
        if st.queues.len() != max_sizes.len() {
            return Err(PersistError::QueueCount {
                device_type,
                expected: max_sizes.len(),
                found: st.queues.len(),
            });
        }
        for (index, (q, &max)) in st.queues.iter().zip(&max_sizes).enumerate() {
            if q.max_size != max {
                return Err(PersistError::Queue {
                    device_type,
                    index,
                    reason: format!("maximum size {} in the snapshot, {max} here", q.max_size),
                });
            }
        }
        device.restore_state(&st.device)?;
        let config_changed = device.config_changed_by_restore();
        let mut t = MmioTransport::new(device, mem, irq);
        t.config_change_on_resume = config_changed;
        t.status = st.status & 0xff & !status::DEVICE_NEEDS_RESET;
        t.device_features_sel = st.device_features_sel;
        t.driver_features_sel = st.driver_features_sel;
        t.driver_features = st.driver_features;
        t.queue_sel = st.queue_sel;
        for (c, q) in t.queues.iter_mut().zip(&st.queues) {
            c.size = q.size;
            c.ready = q.ready;
            c.desc = q.desc;
            c.avail = q.avail;
            c.used = q.used;
        }
        let running = t.status & status::DRIVER_OK != 0 && st.needs_reset.is_none();
        if running {
            let queues = t.restored_queues(&st.queues)?;
            let events = Arc::new(WorkerEvents::default());
            t.signals.set_driver_ok(true);
            let handler = t
                .device
                .activate(ActivateContext {
                    features: t.driver_features,
                    mem: t.mem.clone(),
                    signals: t.signals.clone(),
                    events: events.clone(),
                })
                .map_err(|e| PersistError::Activate {
                    device_type,
                    reason: e.to_string(),
                })?;
            t.parked = Some(((handler, queues), events));
        }
        t.signals.restore(
            st.interrupt_status,
            st.config_generation,
            t.status & status::DRIVER_OK != 0,
            st.needs_reset.clone(),
        );
        Ok(t)
    }

    /// The running queues of a restored, activated device, checked as
    /// activation checks them, at their saved positions.
    fn restored_queues(
        &self,
        saved: &[QueueState],
    ) -> std::result::Result<Vec<Queue>, PersistError> {
        let device_type = self.device.device_type();
        let event_idx = self.driver_features & (1 << features::RING_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(saved.len());
        for (index, s) in saved.iter().enumerate() {
            let qerr = |reason: String| PersistError::Queue {
                device_type,
                index,
                reason,
            };
            let state = virtio_queue::QueueState {
                max_size: s.max_size,
                next_avail: s.next_avail,
                next_used: s.next_used,
                event_idx_enabled: event_idx,
                size: if s.ready { s.size } else { s.max_size },
                ready: s.ready,
                desc_table: if s.ready { s.desc } else { 0 },
                avail_ring: if s.ready { s.avail } else { 0 },
                used_ring: if s.ready { s.used } else { 0 },
            };
            let q = Queue::try_from(state).map_err(|e| qerr(e.to_string()))?;
            if s.ready && !q.is_valid(&self.mem) {
                return Err(qerr("rings are not inside guest memory".into()));
            }
            queues.push(q);
        }
        Ok(queues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_can_be_shared_behind_a_mutex() {
        fn shareable<T: Send + Sync>() {}
        shareable::<std::sync::Mutex<MmioTransport>>();
        shareable::<vmm::GuestRam>();
        shareable::<crate::ConsoleHost>();
    }

    #[test]
    fn set_half_keeps_the_other_half() {
        let mut r = 0x1111_2222_3333_4444u64;
        set_half(&mut r, true, 0xaaaa_bbbb);
        assert_eq!(r, 0xaaaa_bbbb_3333_4444);
        set_half(&mut r, false, 0xcccc_dddd);
        assert_eq!(r, 0xaaaa_bbbb_cccc_dddd);
    }
}
