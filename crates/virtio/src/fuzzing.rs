//! Entry points for `cargo fuzz` (crates/virtio/fuzz) and an in-memory
//! block backend for tests. Not part of the supported API.

use std::sync::{Arc, Mutex, PoisonError};

use image::BlockBackend;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::queue::{ActivateContext, DeviceSignals, WorkerEvents};
use crate::{Block, BlockConfig, Console, Net, Rng, VirtioDevice};
use vmm::{GuestRam, IrqLine};

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
impl IrqLine for NoIrq {
    fn set_level(&self, _level: bool) {}
}

/// A network backend for the fuzzer: every offload, a few packets of
/// assorted sizes for the guest (one bigger than any single buffer, so
/// mergeable delivery spans chains), and transmitted packets swallowed.
struct FuzzNet {
    to_guest: Vec<usize>,
}

impl net::Backend for FuzzNet {
    fn offloads(&self) -> u64 {
        u64::MAX
    }
    fn set_features(&mut self, _features: u64) -> net::Result<()> {
        Ok(())
    }
    fn start(&mut self, _waker: net::Waker) -> net::Result<()> {
        Ok(())
    }
    fn send(&mut self, packet: &[u8]) -> net::Result<()> {
        assert!(packet.len() <= net::MAX_PACKET);
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> net::Result<Option<usize>> {
        Ok(self.to_guest.pop().inspect(|&n| buf[..n].fill(0xa5)))
    }
}

/// fuzz_queues picks the network device when both of these selector bits
/// are set (the low bits keep choosing among the older devices otherwise).
const SEL_NET: u8 = 0x60;

const FUZZ_BASE: u64 = 0x8000_0000;
const FUZZ_MEM: usize = 64 << 10;
const DESC: u64 = FUZZ_BASE;
const AVAIL: u64 = FUZZ_BASE + 0x1000;
const USED: u64 = FUZZ_BASE + 0x2000;

/// Feeds one fuzz input to a device's queue processing: byte 0 picks the
/// device and options, byte 1 the queue size, the rest becomes guest
/// memory (descriptor table at +0, available ring at +0x1000, used ring at
/// +0x2000, buffers anywhere). Then the device's handler runs every queue
/// twice, as after notifications. It must return without panicking, and
/// must not write guest memory outside the buffers it was given (checked
/// for the rings' neighbourhood by the fuzzer's use of a small RAM).
///
/// Raw random bytes would almost never form a descriptor pointing into
/// RAM, so descriptor addresses and lengths are folded into the RAM (plus
/// a little beyond it) unless bit 15 of the descriptor's flags asks for the
/// raw value, and the available index is folded near the queue size.
pub fn fuzz_queues(data: &[u8]) {
    let Some((sel, size, bytes)) = fold_input(data) else {
        return;
    };
    let ram = match GuestRam::new(FUZZ_BASE, FUZZ_MEM) {
        Ok(r) => r,
        Err(_) => return,
    };
    let mem = ram.memory().clone();
    if mem.write_slice(&bytes, GuestAddress(FUZZ_BASE)).is_err() {
        return;
    }
    let mut device: Box<dyn VirtioDevice> = match sel % 4 {
        _ if sel & SEL_NET == SEL_NET => Box::new(Net::new(
            Box::new(FuzzNet {
                to_guest: vec![net::MAX_PACKET, 60, 1514 + net::VNET_HDR_LEN, 0x5000],
            }),
            crate::default_mac(0),
        )),
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
    let mut features = device.device_features();
    if sel & 0x80 != 0 {
        // Without mergeable receive buffers (and, for the other devices,
        // a bit they do not have).
        features &= !(1 << crate::net_features::MRG_RXBUF);
    }
    let signals = Arc::new(DeviceSignals::new(Arc::new(NoIrq)));
    let events = Arc::new(WorkerEvents::default());
    let mut queues = Vec::new();
    for &max in device.queue_max_sizes() {
        let Ok(mut q) = Queue::new(max) else { return };
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

/// Splits a fuzz input into (device selector, queue size, guest memory
/// image), folding descriptor addresses into RAM as described above.
fn fold_input(data: &[u8]) -> Option<(u8, u16, Vec<u8>)> {
    if data.len() < 2 {
        return None;
    }
    let (sel, qsize_sel, image) = (data[0], data[1], &data[2..]);
    let mut bytes = vec![0u8; FUZZ_MEM];
    let n = image.len().min(FUZZ_MEM);
    bytes[..n].copy_from_slice(&image[..n]);
    // Any power of two up to 256, as a driver may choose.
    let size = 1u16 << (qsize_sel % 9);
    for d in bytes[..16 * usize::from(size)].chunks_exact_mut(16) {
        let flags = u16::from_le_bytes([d[12], d[13]]);
        if flags & 0x8000 == 0 {
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
            let addr = FUZZ_BASE + addr % (FUZZ_MEM as u64 + 0x100);
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
            d[8..12].copy_from_slice(&(len % 0x6000).to_le_bytes());
        }
    }
    let avail = (AVAIL - FUZZ_BASE) as usize;
    let idx = u16::from_le_bytes([bytes[avail + 2], bytes[avail + 3]]);
    if idx & 0x8000 == 0 {
        bytes[avail + 2..avail + 4].copy_from_slice(&(idx % (2 * size + 1)).to_le_bytes());
    }
    Some((sel, size, bytes))
}

/// Well-formed starting points for the fuzzer (and a regression test):
/// blk read, write, flush, get-id, discard, write-zeroes; rng; console.
pub fn seed_inputs() -> Vec<Vec<u8>> {
    fn desc(img: &mut [u8], i: usize, off: u64, len: u32, flags: u16, next: u16) {
        let d = &mut img[16 * i..16 * i + 16];
        d[0..8].copy_from_slice(&off.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
    }
    fn publish(img: &mut [u8], heads: &[u16]) {
        let a = (AVAIL - FUZZ_BASE) as usize;
        img[a + 2..a + 4].copy_from_slice(&(heads.len() as u16).to_le_bytes());
        for (i, h) in heads.iter().enumerate() {
            img[a + 4 + 2 * i..a + 6 + 2 * i].copy_from_slice(&h.to_le_bytes());
        }
    }
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    let mut seeds = Vec::new();
    // sel: 0 = blk, 2 = rng, 3 = console; qsize_sel 4 = 16 entries.
    for (rtype, data_flags, data_len) in [
        (0u32, WRITE, 1024u32),
        (1, 0, 512),
        (4, 0, 0),
        (8, WRITE, 20),
        (11, 0, 16),
        (13, 0, 32),
    ] {
        let mut img = vec![0u8; 0x6000];
        let hdr = 0x3000;
        img[hdr..hdr + 4].copy_from_slice(&rtype.to_le_bytes());
        img[hdr + 8..hdr + 16].copy_from_slice(&3u64.to_le_bytes());
        // Discard / write-zeroes ranges at 0x4000.
        img[0x4000..0x4008].copy_from_slice(&5u64.to_le_bytes());
        img[0x4008..0x400c].copy_from_slice(&2u32.to_le_bytes());
        desc(&mut img, 0, hdr as u64, 16, NEXT, 1);
        if data_len > 0 {
            desc(&mut img, 1, 0x4000, data_len, NEXT | data_flags, 2);
            desc(&mut img, 2, 0x5000, 1, WRITE, 0);
        } else {
            desc(&mut img, 0, hdr as u64, 16, NEXT, 2);
            desc(&mut img, 2, 0x5000, 1, WRITE, 0);
        }
        publish(&mut img, &[0]);
        seeds.push([&[0u8, 4][..], &img].concat());
    }
    for sel in [2u8, 3] {
        let mut img = vec![0u8; 0x6000];
        desc(&mut img, 0, 0x4000, 64, WRITE, 0);
        desc(&mut img, 1, 0x4100, 32, 0, 0);
        publish(&mut img, &[0, 1]);
        seeds.push([&[sel, 4][..], &img].concat());
    }
    seeds
}

/// Guest register traffic against a transport: byte 0 picks the device,
/// the next 0x4000 bytes become the start of guest RAM (rings and buffers
/// the driver may point at), the rest is a sequence of 7-byte register
/// accesses: kind (read/write and width), offset (u16, folded into the
/// window and a little beyond), value (u32). Queue addresses written by
/// the fuzzer are folded into RAM half of the time so activation gets past
/// validation. Dropping the transport at the end must join its worker.
/// Returns the final device status (for tests).
pub fn fuzz_mmio(data: &[u8]) -> u32 {
    const IMAGE: usize = 0x4000;
    if data.len() < 1 + IMAGE {
        return 0;
    }
    let (sel, image, ops) = (data[0], &data[1..1 + IMAGE], &data[1 + IMAGE..]);
    let Ok(ram) = GuestRam::new(FUZZ_BASE, FUZZ_MEM) else {
        return 0;
    };
    if ram
        .memory()
        .write_slice(image, GuestAddress(FUZZ_BASE))
        .is_err()
    {
        return 0;
    }
    let device: Box<dyn VirtioDevice> = match sel % 4 {
        0 => Box::new(Block::new(
            Arc::new(MemBackend::new(64 << 10, false)),
            BlockConfig::default(),
        )),
        1 => Box::new(Rng::new()),
        3 => Box::new(Net::new(
            Box::new(FuzzNet {
                to_guest: vec![60, 0x3000],
            }),
            crate::default_mac(1),
        )),
        _ => Box::new(Console::new(Box::new(std::io::sink()), Some((80, 25))).0),
    };
    let mut t = crate::MmioTransport::new(device, ram.memory().clone(), Arc::new(NoIrq));
    for op in ops.chunks_exact(7) {
        let kind = op[0];
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) % 0x240);
        let mut value = u32::from_le_bytes([op[3], op[4], op[5], op[6]]);
        // Register addresses (desc/driver/device low words) into RAM.
        if kind & 0x80 != 0 && matches!(offset, 0x80 | 0x90 | 0xa0) {
            value = (FUZZ_BASE as u32).wrapping_add(value % FUZZ_MEM as u32) & !0xf;
        }
        let width = [1usize, 2, 4, 8][usize::from(kind >> 1 & 3)];
        if kind & 1 == 0 {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
        } else {
            let v = u64::from(value).to_le_bytes();
            t.write(offset, &v[..width]);
        }
    }
    let status = t.status();
    drop(t);
    status
}

/// A register sequence that brings a device up, as a driver would.
fn mmio_init_ops(queues: u16) -> Vec<u8> {
    let mut ops = Vec::new();
    let mut w = |off: u16, v: u32, fold: bool| {
        ops.push(if fold { 0x85 } else { 0x05 });
        ops.extend_from_slice(&off.to_le_bytes());
        ops.extend_from_slice(&v.to_le_bytes());
    };
    w(0x70, 1, false);
    w(0x70, 3, false);
    w(0x24, 1, false);
    w(0x20, 1, false); // VERSION_1
    w(0x70, 11, false);
    for q in 0..queues {
        let base = 0x1000 * u32::from(q) * 3;
        w(0x30, u32::from(q), false);
        w(0x38, 16, false);
        w(0x80, base, true);
        w(0x84, 0, false);
        w(0x90, base + 0x1000, true);
        w(0x94, 0, false);
        w(0xa0, base + 0x2000, true);
        w(0xa4, 0, false);
        w(0x44, 1, false);
    }
    w(0x70, 15, false);
    for q in 0..queues {
        w(0x50, u32::from(q), false);
    }
    w(0x64, 3, false);
    ops
}

/// Starting points for the mmio target: each device brought up properly.
pub fn mmio_seed_inputs() -> Vec<Vec<u8>> {
    [(0u8, 1u16), (1, 1), (2, 2), (3, 2)]
        .into_iter()
        .map(|(sel, queues)| {
            let mut input = vec![sel];
            input.extend(vec![0u8; 0x4000]);
            input.extend(mmio_init_ops(queues));
            input
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_garbage_run_clean() {
        for s in seed_inputs() {
            fuzz_queues(&s);
        }
        // Deterministic pseudo-random inputs (xorshift), all devices and
        // queue sizes.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..400u32 {
            let mut v = vec![(i % 256) as u8, (i / 32) as u8];
            for _ in 0..4096 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
            fuzz_queues(&v);
        }
    }

    #[test]
    fn blk_seed_read_completes_with_ok() {
        use vm_memory::Bytes;
        // Rebuild the read seed by hand and check its used ring, so the
        // seeds really exercise the request path.
        let (sel, size, image) = fold_input(&seed_inputs()[0]).unwrap();
        assert_eq!((sel, size), (0, 16));
        let ram = GuestRam::new(FUZZ_BASE, FUZZ_MEM).unwrap();
        let mem = ram.memory().clone();
        mem.write_slice(&image, GuestAddress(FUZZ_BASE)).unwrap();
        let mut blk = Block::new(
            Arc::new(MemBackend::new(64 << 10, false)),
            BlockConfig::default(),
        );
        let mut q = Queue::new(256).unwrap();
        q.try_set_size(16).unwrap();
        q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q.set_ready(true);
        let mut h = blk
            .activate(ActivateContext {
                features: 0,
                mem: mem.clone(),
                signals: Arc::new(DeviceSignals::new(Arc::new(NoIrq))),
                events: Arc::new(WorkerEvents::default()),
            })
            .unwrap();
        h.process(std::slice::from_mut(&mut q), 1).unwrap();
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        let used_len: u32 = mem.read_obj(GuestAddress(USED + 8)).unwrap();
        let status: u8 = mem.read_obj(GuestAddress(FUZZ_BASE + 0x5000)).unwrap();
        assert_eq!((used_idx, used_len, status), (1, 1025, 0));
    }

    #[test]
    fn mmio_sequences_run_clean() {
        for (i, input) in mmio_seed_inputs().iter().enumerate() {
            assert_eq!(fuzz_mmio(input), 15, "device {i} did not start");
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..50u8 {
            let mut v = vec![i];
            for _ in 0..0x4000 + 700 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
            fuzz_mmio(&v);
        }
    }
}
