//! virtio-blk driven through the MMIO registers, as a guest driver would.

mod common;

use std::sync::Arc;

use common::*;
use virtio::{status, Block, BlockConfig};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

const F_SIZE_MAX: u64 = 1 << 1;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

const DISK_SIZE: u64 = 4 << 20;

struct Disk {
    _dir: tempdir::Dir,
    path: std::path::PathBuf,
    backend: Arc<Counting>,
}

/// A raw image file with a recognisable pattern: byte i = (i / 512 + i) as u8.
fn pattern(i: u64) -> u8 {
    (i / 512 + i) as u8
}

fn raw_disk(read_only: bool) -> Disk {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("disk.raw");
    let data: Vec<u8> = (0..DISK_SIZE).map(pattern).collect();
    std::fs::write(&path, &data).unwrap();
    let backend = Arc::new(Counting::open(&path, read_only));
    Disk {
        _dir: dir,
        path,
        backend,
    }
}

mod tempdir {
    /// A temporary directory removed on drop (no extra crate needed).
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "virtio-blk-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn blk_driver(backend: Arc<dyn image::BlockBackend>, cfg: BlockConfig) -> Driver {
    let mut d = Driver::new(Box::new(Block::new(backend, cfg)));
    d.init(u64::MAX, 1, 128);
    d
}

/// Header of a request in guest memory.
fn header(d: &mut Driver, rtype: u32, sector: u64) -> u64 {
    let a = d.alloc(16);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&rtype.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    d.write_bytes(a, &h);
    a
}

fn status_buf(d: &mut Driver) -> u64 {
    let a = d.alloc(1);
    d.write_bytes(a, &[0xff]);
    a
}

/// Runs a request laid out as [header][data bufs][status]; returns
/// (status byte, used len).
fn request(d: &mut Driver, rtype: u32, sector: u64, data: &[Buf]) -> (u8, u32) {
    let h = header(d, rtype, sector);
    let s = status_buf(d);
    let mut bufs = vec![rd(h, 16)];
    bufs.extend_from_slice(data);
    bufs.push(wr(s, 1));
    let head = d.submit(0, &bufs);
    let (id, len) = d.wait_used(0);
    assert_eq!(id, u32::from(head));
    (d.read_bytes(s, 1)[0], len)
}

#[test]
fn registers_and_config_space() {
    let disk = raw_disk(false);
    let mut d = Driver::new(Box::new(Block::new(
        disk.backend.clone(),
        BlockConfig::default(),
    )));
    assert_eq!(d.read32(REG_MAGIC), 0x7472_6976);
    assert_eq!(d.read32(REG_VERSION), 2);
    assert_eq!(d.read32(REG_DEVICE_ID), 2);
    let f = d.device_features();
    for bit in [
        VERSION_1,
        F_SIZE_MAX,
        F_SEG_MAX,
        F_FLUSH,
        F_DISCARD,
        F_WRITE_ZEROES,
        F_BLK_SIZE,
    ] {
        assert_ne!(f & bit, 0, "feature {bit:#x} missing");
    }
    assert_eq!(f & F_RO, 0);
    let cap = u64::from_le_bytes(d.config(0, 8).try_into().unwrap());
    assert_eq!(cap, DISK_SIZE / 512);
    // size_max and seg_max bound a request.
    let size_max = u32::from_le_bytes(d.config(8, 4).try_into().unwrap());
    let seg_max = u32::from_le_bytes(d.config(12, 4).try_into().unwrap());
    assert_eq!(
        u64::from(size_max) * u64::from(seg_max),
        virtio::MAX_REQUEST_BYTES
    );
    assert_eq!(u32::from_le_bytes(d.config(20, 4).try_into().unwrap()), 512);
    // max_discard_seg, max_write_zeroes_seg, write_zeroes_may_unmap.
    assert!(u32::from_le_bytes(d.config(40, 4).try_into().unwrap()) >= 1);
    assert!(u32::from_le_bytes(d.config(52, 4).try_into().unwrap()) >= 1);
    assert_eq!(d.config(56, 1), [1]);
    // Byte-wise reads of config space agree with the wide read.
    let bytes: Vec<u8> = (0..8).map(|i| d.config(i, 1)[0]).collect();
    assert_eq!(bytes, d.config(0, 8));
    // Past the structure: zeros.
    assert_eq!(d.config(0xf0, 4), [0; 4]);
}

#[test]
fn read_write_roundtrip_on_raw_file() {
    let disk = raw_disk(false);
    let mut d = blk_driver(disk.backend.clone(), BlockConfig::default());

    // Read sectors 3..5 into two separate descriptors.
    let a = d.alloc(512);
    let b = d.alloc(512);
    let (st, len) = request(&mut d, T_IN, 3, &[wr(a, 512), wr(b, 512)]);
    assert_eq!((st, len), (S_OK, 1025));
    let got = [d.read_bytes(a, 512), d.read_bytes(b, 512)].concat();
    let want: Vec<u8> = (3 * 512..5 * 512).map(pattern).collect();
    assert_eq!(got, want);

    // Write 3 sectors from three descriptors of odd sizes (100+900+536).
    let data: Vec<u8> = (0..1536u32).map(|i| (i * 7 + 1) as u8).collect();
    let p = d.alloc(100);
    let q = d.alloc(900);
    let r = d.alloc(536);
    d.write_bytes(p, &data[..100]);
    d.write_bytes(q, &data[100..1000]);
    d.write_bytes(r, &data[1000..]);
    let (st, len) = request(&mut d, T_OUT, 10, &[rd(p, 100), rd(q, 900), rd(r, 536)]);
    assert_eq!((st, len), (S_OK, 1));
    let file = std::fs::read(&disk.path).unwrap();
    assert_eq!(&file[10 * 512..13 * 512], &data[..]);
    assert_eq!(file[13 * 512], pattern(13 * 512), "write spilled over");
    assert_eq!(file[10 * 512 - 1], pattern(10 * 512 - 1));

    // Read it back through the device, header and status sharing
    // descriptors with data (VIRTIO_F_ANY_LAYOUT is implied by VERSION_1).
    let hdr_and_nothing = header(&mut d, T_IN, 10);
    let out = d.alloc(1537);
    let head = d.submit(0, &[rd(hdr_and_nothing, 16), wr(out, 1537)]);
    let (id, len) = d.wait_used(0);
    assert_eq!((id, len), (u32::from(head), 1537));
    assert_eq!(d.read_bytes(out, 1536), data);
    assert_eq!(d.read_bytes(out + 1536, 1), [S_OK]);

    // The last sector of the disk is readable.
    let last = DISK_SIZE / 512 - 1;
    let (st, _) = request(&mut d, T_IN, last, &[wr(a, 512)]);
    assert_eq!(st, S_OK);
    assert_eq!(
        d.read_bytes(a, 512),
        (last * 512..DISK_SIZE).map(pattern).collect::<Vec<_>>()
    );
}

#[test]
fn flush_reaches_the_backend() {
    let disk = raw_disk(false);
    let mut d = blk_driver(disk.backend.clone(), BlockConfig::default());
    let (st, len) = request(&mut d, T_FLUSH, 0, &[]);
    assert_eq!((st, len), (S_OK, 1));
    assert_eq!(disk.backend.flushes(), 1);
}

#[test]
fn get_id_returns_the_serial() {
    let disk = raw_disk(false);
    let mut d = blk_driver(
        disk.backend.clone(),
        BlockConfig {
            read_only: false,
            serial: "virtkit-disk-0".into(),
        },
    );
    let id = d.alloc(20);
    let (st, len) = request(&mut d, T_GET_ID, 0, &[wr(id, 20)]);
    assert_eq!((st, len), (S_OK, 21));
    let mut want = b"virtkit-disk-0".to_vec();
    want.resize(20, 0);
    assert_eq!(d.read_bytes(id, 20), want);

    // A 25-byte serial is cut to 20.
    let mut d = blk_driver(
        disk.backend.clone(),
        BlockConfig {
            read_only: false,
            serial: "abcdefghijklmnopqrstuvwxy".into(),
        },
    );
    let id = d.alloc(20);
    let (st, _) = request(&mut d, T_GET_ID, 0, &[wr(id, 20)]);
    assert_eq!(st, S_OK);
    assert_eq!(d.read_bytes(id, 20), b"abcdefghijklmnopqrst");
}

fn range_record(d: &mut Driver, ranges: &[(u64, u32, u32)]) -> u64 {
    let a = d.alloc(16 * ranges.len() as u64);
    for (i, &(sector, num, flags)) in ranges.iter().enumerate() {
        let mut r = [0u8; 16];
        r[0..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&num.to_le_bytes());
        r[12..16].copy_from_slice(&flags.to_le_bytes());
        d.write_bytes(a + 16 * i as u64, &r);
    }
    a
}

#[test]
fn discard_and_write_zeroes() {
    let disk = raw_disk(false);
    let mut d = blk_driver(disk.backend.clone(), BlockConfig::default());

    let rec = range_record(&mut d, &[(8, 2, 0), (20, 1, 0)]);
    let (st, _) = request(&mut d, T_DISCARD, 0, &[rd(rec, 32)]);
    assert_eq!(st, S_OK);
    let rec = range_record(&mut d, &[(100, 4, 1)]);
    let (st, _) = request(&mut d, T_WRITE_ZEROES, 0, &[rd(rec, 16)]);
    assert_eq!(st, S_OK);

    let file = std::fs::read(&disk.path).unwrap();
    for (s, n) in [(8u64, 2u64), (20, 1), (100, 4)] {
        let r = (s * 512) as usize..((s + n) * 512) as usize;
        assert!(
            file[r].iter().all(|&b| b == 0),
            "range at sector {s} not zero"
        );
    }
    assert_eq!(file[10 * 512], pattern(10 * 512));
    assert_eq!(file[104 * 512], pattern(104 * 512));

    // Unmap on a discard and unknown flags are UNSUPP (virtio 1.2 5.2.6.2).
    let rec = range_record(&mut d, &[(0, 1, 1)]);
    assert_eq!(request(&mut d, T_DISCARD, 0, &[rd(rec, 16)]).0, S_UNSUPP);
    let rec = range_record(&mut d, &[(0, 1, 4)]);
    assert_eq!(
        request(&mut d, T_WRITE_ZEROES, 0, &[rd(rec, 16)]).0,
        S_UNSUPP
    );
    // Out of range, and a valid range after a bad one: nothing happens.
    let rec = range_record(&mut d, &[(0, 1, 0), (DISK_SIZE / 512, 1, 0)]);
    assert_eq!(request(&mut d, T_DISCARD, 0, &[rd(rec, 32)]).0, S_IOERR);
    assert_eq!(std::fs::read(&disk.path).unwrap()[..512], file[..512]);
    // Too many ranges, too many sectors, a truncated record.
    let many: Vec<_> = (0..virtio::MAX_DISCARD_SEGMENTS as u64 + 1)
        .map(|i| (i, 1, 0))
        .collect();
    let rec = range_record(&mut d, &many);
    let n = 16 * many.len() as u32;
    assert_eq!(request(&mut d, T_DISCARD, 0, &[rd(rec, n)]).0, S_IOERR);
    let rec = range_record(&mut d, &[(0, virtio::MAX_DISCARD_SECTORS + 1, 0)]);
    assert_eq!(
        request(&mut d, T_WRITE_ZEROES, 0, &[rd(rec, 16)]).0,
        S_IOERR
    );
    let rec = range_record(&mut d, &[(0, 1, 0)]);
    assert_eq!(request(&mut d, T_DISCARD, 0, &[rd(rec, 15)]).0, S_IOERR);
    assert_eq!(request(&mut d, T_DISCARD, 0, &[]).0, S_IOERR);
}

#[test]
fn read_only_disk_refuses_writes() {
    for (backend_ro, cfg_ro) in [(true, false), (false, true)] {
        let disk = raw_disk(backend_ro);
        let before = std::fs::read(&disk.path).unwrap();
        let mut d = Driver::new(Box::new(Block::new(
            disk.backend.clone(),
            BlockConfig {
                read_only: cfg_ro,
                serial: String::new(),
            },
        )));
        let f = d.device_features();
        assert_ne!(f & F_RO, 0);
        assert_eq!(f & (F_DISCARD | F_WRITE_ZEROES), 0);
        d.init(u64::MAX, 1, 64);

        let buf = d.alloc(512);
        d.write_bytes(buf, &[0xaa; 512]);
        assert_eq!(request(&mut d, T_OUT, 0, &[rd(buf, 512)]), (S_IOERR, 1));
        let rec = range_record(&mut d, &[(0, 1, 0)]);
        assert_eq!(request(&mut d, T_DISCARD, 0, &[rd(rec, 16)]).0, S_IOERR);
        assert_eq!(
            request(&mut d, T_WRITE_ZEROES, 0, &[rd(rec, 16)]).0,
            S_IOERR
        );
        // Reads and flushes still work.
        assert_eq!(request(&mut d, T_IN, 0, &[wr(buf, 512)]).0, S_OK);
        assert_eq!(d.read_bytes(buf, 512), before[..512]);
        assert_eq!(request(&mut d, T_FLUSH, 0, &[]).0, S_OK);
        assert_eq!(std::fs::read(&disk.path).unwrap(), before);
    }
}

#[test]
fn out_of_range_and_malformed_requests() {
    let disk = raw_disk(false);
    let before = std::fs::read(&disk.path).unwrap();
    let mut d = blk_driver(disk.backend.clone(), BlockConfig::default());
    let cap = DISK_SIZE / 512;
    let buf = d.alloc(1024);

    // Beyond the end, straddling the end, sector arithmetic overflow.
    assert_eq!(request(&mut d, T_IN, cap, &[wr(buf, 512)]).0, S_IOERR);
    assert_eq!(request(&mut d, T_IN, cap - 1, &[wr(buf, 1024)]).0, S_IOERR);
    assert_eq!(request(&mut d, T_OUT, cap - 1, &[rd(buf, 1024)]).0, S_IOERR);
    assert_eq!(request(&mut d, T_IN, u64::MAX, &[wr(buf, 512)]).0, S_IOERR);
    assert_eq!(
        request(&mut d, T_OUT, u64::MAX / 512 + 1, &[rd(buf, 512)]).0,
        S_IOERR
    );
    // Not a whole number of sectors.
    assert_eq!(request(&mut d, T_IN, 0, &[wr(buf, 100)]).0, S_IOERR);
    assert_eq!(request(&mut d, T_OUT, 0, &[rd(buf, 513)]).0, S_IOERR);
    // Unknown request type.
    assert_eq!(request(&mut d, 0x1234, 0, &[wr(buf, 512)]).0, S_UNSUPP);

    // A header shorter than 16 bytes.
    let h = header(&mut d, T_IN, 0);
    let s = status_buf(&mut d);
    d.submit(0, &[rd(h, 8), wr(buf, 512), wr(s, 1)]);
    assert_eq!(d.wait_used(0).1, 1);
    assert_eq!(d.read_bytes(s, 1), [S_IOERR]);

    // No writable byte for the status: completed with length 0, no effect.
    let h = header(&mut d, T_OUT, 0);
    d.write_bytes(buf, &[0x55; 512]);
    d.submit(0, &[rd(h, 16), rd(buf, 512)]);
    assert_eq!(d.wait_used(0).1, 0);

    // A readable descriptor after a writable one.
    let h = header(&mut d, T_OUT, 0);
    let s = status_buf(&mut d);
    d.submit(0, &[rd(h, 16), wr(s, 1), rd(buf, 512)]);
    assert_eq!(d.wait_used(0).1, 0);
    assert_eq!(d.read_bytes(s, 1), [0xff]);

    // A data descriptor outside guest memory.
    let h = header(&mut d, T_IN, 0);
    let s = status_buf(&mut d);
    d.submit(0, &[rd(h, 16), wr(0x1000, 512), wr(s, 1)]);
    assert_eq!(d.wait_used(0).1, 0);
    let end = RAM_BASE + RAM_SIZE as u64;
    d.submit(0, &[rd(h, 16), wr(end - 256, 512), wr(s, 1)]);
    assert_eq!(d.wait_used(0).1, 0);
    assert_eq!(d.read_bytes(s, 1), [0xff]);

    // A request larger than seg_max * size_max, made by pointing many
    // descriptors at the same buffer.
    let big = d.alloc(8 << 20);
    let h = header(&mut d, T_IN, 0);
    let s = status_buf(&mut d);
    let mut bufs = vec![rd(h, 16)];
    bufs.extend(std::iter::repeat_n(wr(big, 8 << 20), 5));
    bufs.push(wr(s, 1));
    d.submit(0, &bufs);
    d.wait_used(0);
    assert_eq!(d.read_bytes(s, 1), [S_IOERR]);

    // A chain whose `next` loops back on itself ends (the queue size bounds
    // it) and is refused; the device keeps working.
    let h = header(&mut d, T_IN, 0);
    let head = d.queues[0].size - 1;
    d.write_desc(0, head, h, 16, DESC_F_NEXT, head);
    d.publish(0, head);
    d.notify(0);
    d.wait_used(0);
    assert_eq!(request(&mut d, T_IN, 1, &[wr(buf, 512)]).0, S_OK);

    assert_eq!(std::fs::read(&disk.path).unwrap(), before, "disk modified");
    assert_eq!(d.read32(REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn indirect_descriptors() {
    let disk = raw_disk(false);
    let mut d = blk_driver(disk.backend.clone(), BlockConfig::default());
    let h = header(&mut d, T_IN, 2);
    let data = d.alloc(512);
    let s = status_buf(&mut d);
    let table = d.alloc(48);
    for (i, (addr, len, flags)) in [
        (h, 16u32, DESC_F_NEXT),
        (data, 512, DESC_F_NEXT | DESC_F_WRITE),
        (s, 1, DESC_F_WRITE),
    ]
    .into_iter()
    .enumerate()
    {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
        d.write_bytes(table + 16 * i as u64, &raw);
    }
    d.write_desc(0, 0, table, 48, DESC_F_INDIRECT, 0);
    d.publish(0, 0);
    d.notify(0);
    assert_eq!(d.wait_used(0), (0, 513));
    assert_eq!(d.read_bytes(s, 1), [S_OK]);
    assert_eq!(
        d.read_bytes(data, 512),
        (1024..1536).map(pattern).collect::<Vec<_>>()
    );
}

#[test]
fn broken_rings_set_needs_reset_and_reset_recovers() {
    let disk = raw_disk(false);
    let mut d = blk_driver(disk.backend.clone(), BlockConfig::default());

    // The available index jumps by more than the queue size.
    d.set_avail_idx(0, 1000);
    d.notify(0);
    assert!(d.wait_needs_reset());
    assert!(d.mmio.device_error().is_some());
    // The driver is told through a configuration change interrupt.
    assert!(d.irq.wait_high());
    assert_ne!(d.read32(REG_INTERRUPT_STATUS) & 2, 0);

    // Reset brings it back.
    d.init(u64::MAX, 1, 128);
    assert_eq!(d.read32(REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(!d.irq.level());
    let buf = d.alloc(512);
    assert_eq!(request(&mut d, T_IN, 0, &[wr(buf, 512)]).0, S_OK);

    // A head index beyond the queue size.
    d.publish(0, 4000);
    d.notify(0);
    assert!(d.wait_needs_reset());
}

#[test]
fn used_buffer_interrupt_and_ack() {
    let disk = raw_disk(false);
    let mut d = Driver::new(Box::new(Block::new(
        disk.backend.clone(),
        BlockConfig::default(),
    )));
    // Without EVENT_IDX every completion interrupts.
    d.init(!RING_EVENT_IDX, 1, 16);
    assert!(!d.irq.level());
    let buf = d.alloc(512);
    for i in 0..40u64 {
        assert_eq!(request(&mut d, T_IN, i, &[wr(buf, 512)]).0, S_OK);
        assert!(d.irq.wait_high());
        assert_eq!(d.read32(REG_INTERRUPT_STATUS), 1);
        d.write32(REG_INTERRUPT_ACK, 1);
        assert_eq!(d.read32(REG_INTERRUPT_STATUS), 0);
        assert!(!d.irq.level());
    }
    assert_eq!(d.irq.raises(), 40);
}

#[test]
fn many_requests_in_flight_with_event_idx() {
    let disk = raw_disk(false);
    let mut d = blk_driver(disk.backend.clone(), BlockConfig::default());
    let mut heads = Vec::new();
    let mut bufs = Vec::new();
    for i in 0..32u64 {
        let h = header(&mut d, T_IN, i);
        let b = d.alloc(512);
        let s = status_buf(&mut d);
        let head = d.add_chain(0, &[rd(h, 16), wr(b, 512), wr(s, 1)]);
        d.publish(0, head);
        heads.push(head);
        bufs.push((b, s));
    }
    d.notify(0);
    for (i, head) in heads.iter().enumerate() {
        let (id, len) = d.wait_used(0);
        assert_eq!((id, len), (u32::from(*head), 513));
        let (b, s) = bufs[i];
        assert_eq!(d.read_bytes(s, 1), [S_OK]);
        let want: Vec<u8> = (i as u64 * 512..(i as u64 + 1) * 512)
            .map(pattern)
            .collect();
        assert_eq!(d.read_bytes(b, 512), want);
    }
}

fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (qemu-utils) is needed for the qcow2 tests");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// virtio-blk over a qcow2 overlay on a qcow2 base, both made by qemu-img:
/// the guest reads the base's data through the overlay, its writes,
/// write-zeroes and discards land in the overlay only, and qemu-img reads
/// back exactly what the guest wrote.
#[test]
fn qcow2_overlay_roundtrip_checked_by_qemu_img() {
    let dir = tempdir::Dir::new();
    let raw = dir.path().join("pattern.raw");
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    let data: Vec<u8> = (0..DISK_SIZE).map(pattern).collect();
    std::fs::write(&raw, &data).unwrap();
    let (raw_s, base_s, top_s) = (
        raw.to_str().unwrap(),
        base.to_str().unwrap(),
        top.to_str().unwrap(),
    );
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw_s, base_s]);
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", base_s, "-F", "qcow2", top_s,
    ]);
    let base_before = std::fs::read(&base).unwrap();

    let backend = Arc::new(Counting::open(&top, false));
    let mut d = blk_driver(backend.clone(), BlockConfig::default());
    let cap = u64::from_le_bytes(d.config(0, 8).try_into().unwrap());
    assert_eq!(cap, DISK_SIZE / 512);

    // Reads come from the base.
    let buf = d.alloc(4096);
    assert_eq!(request(&mut d, T_IN, 100, &[wr(buf, 4096)]).0, S_OK);
    assert_eq!(
        d.read_bytes(buf, 4096),
        (100 * 512..100 * 512 + 4096)
            .map(pattern)
            .collect::<Vec<_>>()
    );

    // Writes spanning a cluster boundary (64 KiB = sector 128).
    let mut want = data.clone();
    let w: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    d.write_bytes(buf, &w[..4096]);
    let buf2 = d.alloc(4096);
    d.write_bytes(buf2, &w[4096..]);
    assert_eq!(
        request(&mut d, T_OUT, 120, &[rd(buf, 4096), rd(buf2, 4096)]).0,
        S_OK
    );
    want[120 * 512..120 * 512 + 8192].copy_from_slice(&w);
    // Write-zeroes and discard of whole clusters and a partial one.
    let rec = range_record(&mut d, &[(256, 128, 1), (1000, 3, 0)]);
    assert_eq!(request(&mut d, T_WRITE_ZEROES, 0, &[rd(rec, 32)]).0, S_OK);
    want[256 * 512..384 * 512].fill(0);
    want[1000 * 512..1003 * 512].fill(0);
    let rec = range_record(&mut d, &[(2048, 256, 0)]);
    assert_eq!(request(&mut d, T_DISCARD, 0, &[rd(rec, 16)]).0, S_OK);
    assert_eq!(request(&mut d, T_FLUSH, 0, &[]).0, S_OK);
    assert_eq!(backend.flushes(), 1);

    // The guest sees its writes.
    let check = d.alloc(8192);
    assert_eq!(request(&mut d, T_IN, 120, &[wr(check, 8192)]).0, S_OK);
    assert_eq!(d.read_bytes(check, 8192), w);
    d.mmio.shutdown();
    drop(d);
    drop(backend);

    // qemu-img agrees, outside the discarded range (discarded clusters of an
    // overlay may read as zeros or as the base: both are allowed).
    let out = dir.path().join("out.raw");
    qemu_img(&["check", "-q", top_s]);
    qemu_img(&["convert", "-O", "raw", top_s, out.to_str().unwrap()]);
    let got = std::fs::read(&out).unwrap();
    let discarded = 2048 * 512..(2048 + 256) * 512;
    assert_eq!(got[..discarded.start], want[..discarded.start]);
    assert_eq!(got[discarded.end..], want[discarded.end..]);
    for (i, &b) in got[discarded.clone()].iter().enumerate() {
        let at = discarded.start + i;
        assert!(b == 0 || b == data[at], "discarded byte {at} is {b}");
    }
    assert_eq!(std::fs::read(&base).unwrap(), base_before, "base modified");
}

/// The guest's side of the crash test: write, flush, then die without any
/// cleanup (no destructors, no close). Runs only when spawned by
/// `flushed_writes_survive_a_crash`.
#[test]
#[ignore = "helper process of flushed_writes_survive_a_crash"]
fn crash_child() {
    let Ok(path) = std::env::var("VIRTIO_CRASH_IMAGE") else {
        return;
    };
    let backend = Arc::new(Counting::open(std::path::Path::new(&path), false));
    let mut d = blk_driver(backend, BlockConfig::default());
    let buf = d.alloc(64 << 10);
    d.write_bytes(buf, &crash_data());
    assert_eq!(request(&mut d, T_OUT, 64, &[rd(buf, 64 << 10)]).0, S_OK);
    assert_eq!(request(&mut d, T_FLUSH, 0, &[]).0, S_OK);
    std::process::abort();
}

fn crash_data() -> Vec<u8> {
    (0..64u32 << 10).map(|i| (i * 13 + 5) as u8).collect()
}

/// Flushed data must be in the file when virtkit dies right after the
/// flush completes. (The image library writes through to the host page
/// cache, so a process crash keeps even unflushed writes; what this catches
/// is data a backend or the device still holds in user space after
/// acknowledging a flush. Power-loss durability rests on flush calling
/// fsync, which `flush_reaches_the_backend` and the image crate test.)
fn crash_and_check(format: &str) {
    let dir = tempdir::Dir::new();
    let img = dir.path().join(format!("disk.{format}"));
    let img_s = img.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", format, img_s, "4M"]);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "crash_child", "--test-threads=1"])
        .env("VIRTIO_CRASH_IMAGE", &img)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have aborted");
    // qemu-img, not our library, reads back what survived.
    let out = dir.path().join("out.raw");
    qemu_img(&[
        "convert",
        "-f",
        format,
        "-O",
        "raw",
        img_s,
        out.to_str().unwrap(),
    ]);
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got[64 * 512..64 * 512 + (64 << 10)], crash_data()[..]);
}

#[test]
fn flushed_writes_survive_a_crash_raw() {
    crash_and_check("raw");
}

#[test]
fn flushed_writes_survive_a_crash_qcow2() {
    crash_and_check("qcow2");
}
