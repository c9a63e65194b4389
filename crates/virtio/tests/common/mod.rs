//! A minimal virtio driver, playing the guest's part against the MMIO
//! transport: feature negotiation, split virtqueues in guest memory,
//! notifications and interrupts.

#![allow(dead_code)]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use virtio::{status, MmioTransport, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::{GuestRam, IrqLine};

pub const RAM_BASE: u64 = 0x8000_0000;
pub const RAM_SIZE: usize = 64 << 20;

pub const VERSION_1: u64 = 1 << 32;
pub const RING_INDIRECT_DESC: u64 = 1 << 28;
pub const RING_EVENT_IDX: u64 = 1 << 29;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

// Register offsets, written out from the virtio 1.2 spec (4.2.2) rather
// than taken from the crate, so a wrong constant there fails here.
pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_SHM_SEL: u64 = 0x0ac;
pub const REG_SHM_LEN_LOW: u64 = 0x0b0;
pub const REG_SHM_LEN_HIGH: u64 = 0x0b4;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const REG_CONFIG: u64 = 0x100;

/// An interrupt line that records its level and counts rising edges.
#[derive(Default)]
pub struct TestIrq {
    state: Mutex<(bool, u32)>,
    cv: Condvar,
}

impl IrqLine for TestIrq {
    fn set_level(&self, level: bool) {
        let mut st = self.state.lock().unwrap();
        if level && !st.0 {
            st.1 += 1;
        }
        st.0 = level;
        if level {
            self.cv.notify_all();
        }
    }
}

impl TestIrq {
    pub fn level(&self) -> bool {
        self.state.lock().unwrap().0
    }
    pub fn raises(&self) -> u32 {
        self.state.lock().unwrap().1
    }
    /// Waits for the line to go high (a hang guard, not a timing check).
    pub fn wait_high(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut st = self.state.lock().unwrap();
        while !st.0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
        true
    }
}

pub struct DrvQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

/// One descriptor as the test wants it: guest address, length, writable.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

pub fn rd(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: false,
    }
}

pub fn wr(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: true,
    }
}

pub struct Driver {
    pub ram: GuestRam,
    pub mmio: MmioTransport,
    pub irq: Arc<TestIrq>,
    pub queues: Vec<DrvQueue>,
    next_free: u64,
}

impl Driver {
    pub fn new(device: Box<dyn VirtioDevice>) -> Driver {
        let ram = GuestRam::new(RAM_BASE, RAM_SIZE).unwrap();
        let irq = Arc::new(TestIrq::default());
        let mmio = MmioTransport::new(device, ram.memory().clone(), irq.clone());
        Driver {
            ram,
            mmio,
            irq,
            queues: Vec::new(),
            next_free: RAM_BASE + 0x10_0000,
        }
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    pub fn read32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.mmio.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write32(&mut self, off: u64, v: u32) {
        self.mmio.write(off, &v.to_le_bytes());
    }

    pub fn device_features(&mut self) -> u64 {
        self.write32(REG_DEVICE_FEATURES_SEL, 0);
        let lo = self.read32(REG_DEVICE_FEATURES);
        self.write32(REG_DEVICE_FEATURES_SEL, 1);
        let hi = self.read32(REG_DEVICE_FEATURES);
        u64::from(lo) | u64::from(hi) << 32
    }

    /// Reset, ACKNOWLEDGE, DRIVER, accept `wanted & offered`, FEATURES_OK;
    /// returns whether the device kept FEATURES_OK.
    pub fn negotiate(&mut self, wanted: u64) -> bool {
        self.write32(REG_STATUS, 0);
        self.queues.clear();
        self.write32(REG_STATUS, status::ACKNOWLEDGE);
        self.write32(REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let f = self.device_features() & wanted;
        self.set_driver_features(f);
        self.write32(
            REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.read32(REG_STATUS) & status::FEATURES_OK != 0
    }

    pub fn set_driver_features(&mut self, f: u64) {
        self.write32(REG_DRIVER_FEATURES_SEL, 0);
        self.write32(REG_DRIVER_FEATURES, f as u32);
        self.write32(REG_DRIVER_FEATURES_SEL, 1);
        self.write32(REG_DRIVER_FEATURES, (f >> 32) as u32);
    }

    /// Bump allocator over guest RAM, 16-byte aligned.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next_free;
        self.next_free = (a + len + 15) & !15;
        assert!(self.next_free <= RAM_BASE + RAM_SIZE as u64);
        a
    }

    pub fn setup_queue(&mut self, index: u32, size: u16) {
        self.write32(REG_QUEUE_SEL, index);
        assert!(self.read32(REG_QUEUE_NUM_MAX) >= u32::from(size));
        self.write32(REG_QUEUE_NUM, u32::from(size));
        let desc = self.alloc(16 * u64::from(size));
        let avail = self.alloc(6 + 2 * u64::from(size));
        let used = self.alloc(6 + 8 * u64::from(size));
        for (lo, hi, a) in [
            (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, desc),
            (REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, avail),
            (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, used),
        ] {
            self.write32(lo, a as u32);
            self.write32(hi, (a >> 32) as u32);
        }
        self.write32(REG_QUEUE_READY, 1);
        assert_eq!(self.read32(REG_QUEUE_READY), 1);
        while self.queues.len() <= index as usize {
            self.queues.push(DrvQueue {
                size: 0,
                desc: 0,
                avail: 0,
                used: 0,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            });
        }
        self.queues[index as usize] = DrvQueue {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
    }

    pub fn driver_ok(&mut self) {
        let s = self.read32(REG_STATUS);
        self.write32(REG_STATUS, s | status::DRIVER_OK);
    }

    /// Negotiates `features` and sets up `nqueues` queues of `size`.
    pub fn init(&mut self, features: u64, nqueues: u32, size: u16) {
        assert!(self.negotiate(features), "features refused");
        for q in 0..nqueues {
            self.setup_queue(q, size);
        }
        self.driver_ok();
        assert_eq!(
            self.read32(REG_STATUS) & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET),
            status::DRIVER_OK
        );
    }

    pub fn write_desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = &self.queues[q];
        let a = GuestAddress(d.desc + 16 * u64::from(i));
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem().write_slice(&raw, a).unwrap();
    }

    /// Writes a chain into fresh descriptor slots; returns its head.
    pub fn add_chain(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let size = self.queues[q].size;
        let head = self.queues[q].next_desc;
        for (k, b) in bufs.iter().enumerate() {
            let i = (head + k as u16) % size;
            let last = k + 1 == bufs.len();
            let mut flags = if b.write { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(q, i, b.addr, b.len, flags, (i + 1) % size);
        }
        self.queues[q].next_desc = (head + bufs.len() as u16) % size;
        head
    }

    /// Puts `head` on the available ring (without notifying).
    pub fn publish(&mut self, q: usize, head: u16) {
        let d = &self.queues[q];
        let slot = GuestAddress(d.avail + 4 + 2 * u64::from(d.avail_idx % d.size));
        self.mem().write_obj(head, slot).unwrap();
        let idx = d.avail_idx.wrapping_add(1);
        self.mem()
            .store(idx, GuestAddress(d.avail + 2), Ordering::Release)
            .unwrap();
        self.queues[q].avail_idx = idx;
    }

    /// Sets the available index directly (to play a broken driver).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let d = &self.queues[q];
        self.mem()
            .store(idx, GuestAddress(d.avail + 2), Ordering::Release)
            .unwrap();
        self.queues[q].avail_idx = idx;
    }

    pub fn notify(&mut self, q: u32) {
        self.write32(REG_QUEUE_NOTIFY, q);
    }

    /// add_chain + publish + notify.
    pub fn submit(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let head = self.add_chain(q, bufs);
        self.publish(q, head);
        self.notify(q as u32);
        head
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem()
            .load(GuestAddress(self.queues[q].used + 2), Ordering::Acquire)
            .unwrap()
    }

    /// Waits for the next used element of queue `q`: (descriptor id, len).
    /// The deadline only guards against a hang.
    pub fn wait_used(&mut self, q: usize) -> (u32, u32) {
        self.try_wait_used(q, Duration::from_secs(20))
            .expect("device did not complete the request")
    }

    pub fn try_wait_used(&mut self, q: usize, limit: Duration) -> Option<(u32, u32)> {
        let deadline = Instant::now() + limit;
        while self.used_idx(q) == self.queues[q].used_seen {
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let d = &self.queues[q];
        let e = GuestAddress(d.used + 4 + 8 * u64::from(d.used_seen % d.size));
        let id: u32 = self.mem().read_obj(e).unwrap();
        let len: u32 = self.mem().read_obj(GuestAddress(e.0 + 4)).unwrap();
        self.queues[q].used_seen = self.queues[q].used_seen.wrapping_add(1);
        Some((id, len))
    }

    /// Waits until the device sets DEVICE_NEEDS_RESET.
    pub fn wait_needs_reset(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.read32(REG_STATUS) & status::DEVICE_NEEDS_RESET == 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    pub fn write_bytes(&self, addr: u64, data: &[u8]) {
        self.mem().write_slice(data, GuestAddress(addr)).unwrap();
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem().read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn config(&self, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mmio.read(REG_CONFIG + off, &mut v);
        v
    }
}

/// Wraps a backend and counts flushes, to prove FLUSH reaches it.
pub struct Counting {
    pub inner: image::Image,
    pub flushes: std::sync::atomic::AtomicU32,
}

impl Counting {
    /// Opens `path` with virtkit's image library (format probed).
    pub fn open(path: &std::path::Path, read_only: bool) -> Counting {
        let inner = image::open(
            path,
            &image::OpenOptions {
                read_only,
                ..Default::default()
            },
        )
        .unwrap();
        Counting {
            inner,
            flushes: Default::default(),
        }
    }

    pub fn flushes(&self) -> u32 {
        self.flushes.load(Ordering::SeqCst)
    }
}

impl image::BlockBackend for Counting {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> image::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> image::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> image::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> image::Result<()> {
        self.inner.write_zeroes(offset, len, may_unmap)
    }
    fn discard(&self, offset: u64, len: u64) -> image::Result<()> {
        self.inner.discard(offset, len)
    }
}
