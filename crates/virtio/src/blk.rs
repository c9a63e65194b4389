//! virtio-blk (virtio 1.2, 5.2) over any [`image::BlockBackend`].

use std::sync::Arc;

use image::BlockBackend;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::queue::{
    collect_chain, drain_queue, read_segments, write_segments, ActivateContext, ChainBuffers,
    Completion, DeviceSignals, QueueHandler, VirtioDevice,
};
use crate::{device_type, features, Result};

/// Sector size of the virtio-blk protocol (independent of blk_size).
pub const SECTOR_SIZE: u64 = 512;

/// Virtqueue size. Linux uses min(this, 256) descriptors per queue.
const QUEUE_SIZE: u16 = 256;

/// seg_max: data segments per request the driver may use. With the header
/// and status descriptors a request fits a queue of QUEUE_SIZE entries.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// size_max: largest single data segment the driver may use.
pub const SIZE_MAX: u32 = 128 << 10;

/// Largest data transfer in one read or write request. A driver that
/// honours seg_max and size_max never exceeds SEG_MAX * SIZE_MAX (31.75
/// MiB); anything larger is a hostile or broken guest and gets IOERR rather
/// than tying up the worker.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;

/// Descriptors accepted in one chain: header + SEG_MAX data + status. An
/// indirect table could otherwise hold 65535 of them.
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;

/// Bounce buffer between guest memory and the backend, reused for every
/// request: large requests are copied in pieces of this size, so the host
/// never allocates per request.
const BOUNCE_SIZE: usize = SIZE_MAX as usize;

/// max_discard_seg / max_write_zeroes_seg: ranges per discard or
/// write-zeroes request (each is a 16-byte record in the request).
pub const MAX_DISCARD_SEGMENTS: u32 = 32;

/// max_discard_sectors / max_write_zeroes_sectors: sectors per range (1 GiB).
/// Both operations are metadata work for the backends (a hole punch, a
/// qcow2 cluster update), but a bound keeps one request's latency sane.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;

/// Length of the GET_ID answer (VIRTIO_BLK_ID_BYTES).
const ID_BYTES: usize = 20;

// Request types.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

// Status values.
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

// Feature bits (5.2.3).
const F_SIZE_MAX: u32 = 1;
const F_SEG_MAX: u32 = 2;
const F_RO: u32 = 5;
const F_BLK_SIZE: u32 = 6;
const F_FLUSH: u32 = 9;
const F_DISCARD: u32 = 13;
const F_WRITE_ZEROES: u32 = 14;

/// write-zeroes flag: the device may deallocate the range.
const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Header size: type u32, reserved u32, sector u64.
const HEADER_SIZE: usize = 16;
/// One discard / write-zeroes range: sector u64, num_sectors u32, flags u32.
const RANGE_SIZE: usize = 16;

/// Options of a block device.
#[derive(Clone, Debug, Default)]
pub struct BlockConfig {
    /// Refuse writes (VIRTIO_BLK_F_RO) even if the backend would take them.
    pub read_only: bool,
    /// Serial number returned by GET_ID (at most 20 bytes are used); Linux
    /// shows it in /sys/block/vdX/serial.
    pub serial: String,
}

/// The medium of a drive that has none: zero sectors, every access out
/// of range. A snapshot taken with an empty drive can be restored with a
/// disk in it (see [`Block`]'s `restore_state`): that is how `virtkit run`
/// restores one snapshot of its booted guest with whatever disk a run names.
pub struct EmptyMedium;

impl BlockBackend for EmptyMedium {
    fn len(&self) -> u64 {
        0
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> image::Result<()> {
        empty_access(offset, buf.len() as u64)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> image::Result<()> {
        empty_access(offset, buf.len() as u64)
    }
    fn flush(&self) -> image::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> image::Result<()> {
        empty_access(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> image::Result<()> {
        empty_access(offset, len)
    }
}

fn empty_access(offset: u64, len: u64) -> image::Result<()> {
    if len == 0 {
        return Ok(());
    }
    Err(image::Error::OutOfRange {
        offset,
        len,
        size: 0,
    })
}

/// The block device.
pub struct Block {
    backend: Arc<dyn BlockBackend>,
    /// Restored from a snapshot whose drive was empty, with a medium now:
    /// the driver is told of the new capacity (a configuration change).
    inserted: bool,
    read_only: bool,
    serial: [u8; ID_BYTES],
    config: [u8; CONFIG_SIZE],
    max_sizes: [u16; 1],
}

/// Bytes of virtio_blk_config we fill in (through write_zeroes_may_unmap
/// and its padding).
const CONFIG_SIZE: usize = 60;

impl Block {
    /// A block device serving `backend`. The capacity is the backend's
    /// length rounded down to whole sectors.
    pub fn new(backend: Arc<dyn BlockBackend>, cfg: BlockConfig) -> Self {
        let read_only = cfg.read_only || backend.is_read_only();
        let mut serial = [0u8; ID_BYTES];
        let s = cfg.serial.as_bytes();
        let n = s.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&s[..n]);

        let mut c = [0u8; CONFIG_SIZE];
        let put32 = |c: &mut [u8; CONFIG_SIZE], off: usize, v: u32| {
            c[off..off + 4].copy_from_slice(&v.to_le_bytes())
        };
        c[0..8].copy_from_slice(&(backend.len() / SECTOR_SIZE).to_le_bytes());
        put32(&mut c, 8, SIZE_MAX);
        put32(&mut c, 12, SEG_MAX);
        // 16..20 geometry: not offered.
        put32(&mut c, 20, SECTOR_SIZE as u32); // blk_size
                                               // 24..32 topology, 32..36 writeback/num_queues: not offered.
        put32(&mut c, 36, MAX_DISCARD_SECTORS);
        put32(&mut c, 40, MAX_DISCARD_SEGMENTS);
        put32(&mut c, 44, 1); // discard_sector_alignment
        put32(&mut c, 48, MAX_DISCARD_SECTORS);
        put32(&mut c, 52, MAX_DISCARD_SEGMENTS);
        c[56] = 1; // write_zeroes_may_unmap
        Block {
            backend,
            inserted: false,
            read_only,
            serial,
            config: c,
            max_sizes: [QUEUE_SIZE],
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.backend.len() / SECTOR_SIZE
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn device_features(&self) -> u64 {
        let mut f = 1 << features::VERSION_1
            | 1 << features::RING_INDIRECT_DESC
            | 1 << features::RING_EVENT_IDX
            | 1 << F_SIZE_MAX
            | 1 << F_SEG_MAX
            | 1 << F_BLK_SIZE
            | 1 << F_FLUSH;
        if self.read_only {
            f |= 1 << F_RO;
        } else {
            f |= 1 << F_DISCARD | 1 << F_WRITE_ZEROES;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        copy_config(&self.config, offset, data);
    }

    fn save_state(&self) -> crate::persist::DeviceState {
        crate::persist::DeviceState::Block {
            capacity: self.capacity(),
            read_only: self.read_only,
        }
    }

    fn restore_state(
        &mut self,
        state: &crate::persist::DeviceState,
    ) -> std::result::Result<(), crate::persist::PersistError> {
        let crate::persist::DeviceState::Block {
            capacity,
            read_only,
        } = *state
        else {
            return Err(crate::persist::wrong_state(device_type::BLOCK, state));
        };
        // A medium in a drive that was empty: the guest saw a disk of zero
        // sectors, so it holds nothing of the old contents; it learns the
        // new capacity through a configuration change, as when QEMU
        // changes a drive's medium.
        let inserted = capacity == 0 && self.capacity() != 0;
        let what = if capacity != self.capacity() && !inserted {
            format!(
                "the disk has {} sectors, the snapshot's had {capacity}: the guest would see its disk change size",
                self.capacity()
            )
        } else if read_only != self.read_only {
            format!(
                "the disk is {} but was {} when the snapshot was taken",
                if self.read_only {
                    "read-only"
                } else {
                    "read-write"
                },
                if read_only { "read-only" } else { "read-write" }
            )
        } else {
            self.inserted = inserted;
            return Ok(());
        };
        Err(crate::persist::PersistError::Mismatch {
            device_type: device_type::BLOCK,
            what,
        })
    }

    fn config_changed_by_restore(&self) -> bool {
        self.inserted
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<Box<dyn QueueHandler>> {
        Ok(Box::new(BlockHandler {
            req: RequestContext {
                backend: self.backend.clone(),
                read_only: self.read_only,
                serial: self.serial,
                capacity: self.capacity(),
                bounce: vec![0; BOUNCE_SIZE],
            },
            mem: ctx.mem,
            signals: ctx.signals,
        }))
    }
}

/// Copies `config[offset..]` into `data`, zeros beyond its end.
pub(crate) fn copy_config(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off < config.len() {
        let n = data.len().min(config.len() - off);
        data[..n].copy_from_slice(&config[off..off + n]);
    }
}

struct BlockHandler {
    req: RequestContext,
    mem: GuestMemoryMmap,
    signals: Arc<DeviceSignals>,
}

impl QueueHandler for BlockHandler {
    fn process(&mut self, queues: &mut [Queue], pending: u32) -> Result<()> {
        if pending & 1 == 0 {
            return Ok(());
        }
        let Some(q) = queues.get_mut(0) else {
            return Ok(());
        };
        let mem = &self.mem;
        let req = &mut self.req;
        drain_queue(0, q, mem, &self.signals, |chain| {
            Completion::Used(req.execute_chain(mem, chain))
        })
    }
}

/// Per-device state of request execution (also driven by the fuzzer).
pub(crate) struct RequestContext {
    pub backend: Arc<dyn BlockBackend>,
    pub read_only: bool,
    pub serial: [u8; ID_BYTES],
    pub capacity: u64,
    pub bounce: Vec<u8>,
}

/// Outcome of one request before the status byte is written.
struct Done {
    status: u8,
    /// Data bytes written into the guest's buffers (before the status).
    written: u32,
}

impl Done {
    fn status(status: u8) -> Self {
        Done { status, written: 0 }
    }
}

impl RequestContext {
    /// Executes one chain; returns the used length (bytes written to guest
    /// buffers, including the status byte). A chain that has nowhere to put
    /// a status byte, or breaks the descriptor rules, completes with length
    /// 0 and no side effects.
    pub fn execute_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let Ok(bufs) = collect_chain(mem, chain, MAX_DESCRIPTORS) else {
            return 0;
        };
        let wlen = bufs.writable_len();
        if wlen == 0 {
            return 0;
        }
        // The status byte is the last writable byte; data writes stop
        // before it.
        let data_wlen = wlen - 1;
        let done = self.execute(mem, &bufs, data_wlen);
        let status_ok =
            write_segments(mem, &bufs.writable, data_wlen, &[done.status]).is_ok_and(|n| n == 1);
        if !status_ok {
            return 0;
        }
        done.written + 1
    }

    fn execute(&mut self, mem: &GuestMemoryMmap, bufs: &ChainBuffers, data_wlen: u64) -> Done {
        let mut hdr = [0u8; HEADER_SIZE];
        match read_segments(mem, &bufs.readable, 0, &mut hdr) {
            Ok(HEADER_SIZE) => {}
            _ => return Done::status(S_IOERR),
        }
        let rtype = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let data_rlen = bufs.readable_len() - HEADER_SIZE as u64;
        match rtype {
            T_IN => self.read(mem, bufs, sector, data_wlen),
            T_OUT => self.write(mem, bufs, sector, data_rlen),
            T_FLUSH => match self.backend.flush() {
                Ok(()) => Done::status(S_OK),
                Err(_) => Done::status(S_IOERR),
            },
            T_GET_ID => {
                let n = (data_wlen as usize).min(ID_BYTES);
                match write_segments(mem, &bufs.writable, 0, &self.serial[..n]) {
                    Ok(w) => Done {
                        status: S_OK,
                        written: w as u32,
                    },
                    Err(_) => Done::status(S_IOERR),
                }
            }
            T_DISCARD | T_WRITE_ZEROES => self.ranges(mem, bufs, rtype, data_rlen),
            _ => Done::status(S_UNSUPP),
        }
    }

    /// Byte offset of `sector..sector + len bytes`, if inside the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let end_sector = sector.checked_add(len.div_ceil(SECTOR_SIZE))?;
        if end_sector > self.capacity {
            return None;
        }
        sector.checked_mul(SECTOR_SIZE)
    }

    fn read(&mut self, mem: &GuestMemoryMmap, bufs: &ChainBuffers, sector: u64, len: u64) -> Done {
        if len % SECTOR_SIZE != 0 || len > MAX_REQUEST_BYTES {
            return Done::status(S_IOERR);
        }
        let Some(base) = self.range(sector, len) else {
            return Done::status(S_IOERR);
        };
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(self.bounce.len() as u64) as usize;
            let chunk = &mut self.bounce[..n];
            if self.backend.read_at(chunk, base + done).is_err() {
                return Done {
                    status: S_IOERR,
                    written: done as u32,
                };
            }
            match write_segments(mem, &bufs.writable, done, chunk) {
                Ok(w) if w == n => {}
                _ => {
                    return Done {
                        status: S_IOERR,
                        written: done as u32,
                    }
                }
            }
            done += n as u64;
        }
        Done {
            status: S_OK,
            written: len as u32,
        }
    }

    fn write(&mut self, mem: &GuestMemoryMmap, bufs: &ChainBuffers, sector: u64, len: u64) -> Done {
        if self.read_only {
            return Done::status(S_IOERR);
        }
        if len % SECTOR_SIZE != 0 || len > MAX_REQUEST_BYTES {
            return Done::status(S_IOERR);
        }
        let Some(base) = self.range(sector, len) else {
            return Done::status(S_IOERR);
        };
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(self.bounce.len() as u64) as usize;
            let chunk = &mut self.bounce[..n];
            match read_segments(mem, &bufs.readable, HEADER_SIZE as u64 + done, chunk) {
                Ok(r) if r == n => {}
                _ => return Done::status(S_IOERR),
            }
            if self.backend.write_at(chunk, base + done).is_err() {
                return Done::status(S_IOERR);
            }
            done += n as u64;
        }
        Done::status(S_OK)
    }

    fn ranges(&mut self, mem: &GuestMemoryMmap, bufs: &ChainBuffers, rtype: u32, len: u64) -> Done {
        if self.read_only {
            return Done::status(S_IOERR);
        }
        let count = len / RANGE_SIZE as u64;
        if len % RANGE_SIZE as u64 != 0 || count == 0 {
            return Done::status(S_IOERR);
        }
        if count > u64::from(MAX_DISCARD_SEGMENTS) {
            return Done::status(S_IOERR);
        }
        // Validate every range before touching the disk, so a bad request
        // has no partial effect.
        let mut ranges = [(0u64, 0u64, false); MAX_DISCARD_SEGMENTS as usize];
        for (i, slot) in ranges.iter_mut().enumerate().take(count as usize) {
            let mut rec = [0u8; RANGE_SIZE];
            match read_segments(
                mem,
                &bufs.readable,
                (HEADER_SIZE + i * RANGE_SIZE) as u64,
                &mut rec,
            ) {
                Ok(RANGE_SIZE) => {}
                _ => return Done::status(S_IOERR),
            }
            let sector = u64::from_le_bytes(rec[0..8].try_into().unwrap_or_default());
            let num = u32::from_le_bytes(rec[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(rec[12..16].try_into().unwrap_or_default());
            let unmap = flags & WRITE_ZEROES_FLAG_UNMAP != 0;
            // 5.2.6.2: unknown flags, or unmap on a discard, are UNSUPP.
            if flags & !WRITE_ZEROES_FLAG_UNMAP != 0 || (rtype == T_DISCARD && unmap) {
                return Done::status(S_UNSUPP);
            }
            if num > MAX_DISCARD_SECTORS {
                return Done::status(S_IOERR);
            }
            let bytes = u64::from(num) * SECTOR_SIZE;
            let Some(off) = self.range(sector, bytes) else {
                return Done::status(S_IOERR);
            };
            *slot = (off, bytes, unmap);
        }
        for &(off, bytes, unmap) in &ranges[..count as usize] {
            if bytes == 0 {
                continue;
            }
            let r = if rtype == T_DISCARD {
                self.backend.discard(off, bytes)
            } else {
                self.backend.write_zeroes(off, bytes, unmap)
            };
            if r.is_err() {
                return Done::status(S_IOERR);
            }
        }
        Done::status(S_OK)
    }
}
