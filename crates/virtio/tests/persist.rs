//! Pause, save and restore of a virtio-mmio transport: the restored device
//! continues the rings where the saved one stopped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use virtio::persist::{DeviceState, PersistError};
use virtio::{Console, MmioTransport, Rng};

#[test]
fn restored_rng_continues_the_rings() {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.init(u64::MAX, 1, 64);
    let a = d.alloc(64);
    d.submit(0, &[wr(a, 64)]);
    assert_eq!(d.wait_used(0).1, 64);

    // Paused: a request posted now waits.
    d.mmio.pause();
    let b = d.alloc(32);
    d.submit(0, &[wr(b, 32)]);
    assert!(d.try_wait_used(0, Duration::from_millis(50)).is_none());
    let st = d.mmio.save().unwrap();
    assert_eq!(st.queues[0].next_avail, 1);
    assert_eq!(st.queues[0].next_used, 1);
    assert_eq!(st.device, DeviceState::None);

    // A new transport over the same guest memory, as after a restore.
    let irq = Arc::new(TestIrq::default());
    let t =
        MmioTransport::restore(Box::new(Rng::new()), d.mem().clone(), irq.clone(), &st).unwrap();
    let old = std::mem::replace(&mut d.mmio, t);
    drop(old);
    d.irq = irq;
    assert_eq!(
        d.mmio.save().unwrap(),
        st,
        "restored state reads back the same"
    );
    assert_eq!(d.read32(REG_STATUS), st.status);
    d.mmio.resume().unwrap();
    // The request posted while paused is served once running again.
    assert_eq!(d.wait_used(0).1, 32);
    let c = d.alloc(16);
    d.submit(0, &[wr(c, 16)]);
    assert_eq!(d.wait_used(0).1, 16);
    assert!(d.irq.wait_high());
}

#[test]
fn saving_a_running_transport_is_refused() {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.init(u64::MAX, 1, 64);
    assert!(matches!(d.mmio.save(), Err(PersistError::NotPaused { .. })));
    d.mmio.pause();
    assert!(d.mmio.save().is_ok());
    d.mmio.resume().unwrap();
    let a = d.alloc(8);
    d.submit(0, &[wr(a, 8)]);
    assert_eq!(d.wait_used(0).1, 8);
}

#[test]
fn mismatched_states_are_refused() {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.init(u64::MAX, 1, 64);
    d.mmio.pause();
    let st = d.mmio.save().unwrap();
    let irq = Arc::new(TestIrq::default());
    let (console, _host) = Console::new(Box::new(std::io::sink()), None);
    let e = MmioTransport::restore(Box::new(console), d.mem().clone(), irq.clone(), &st)
        .err()
        .unwrap();
    assert!(matches!(e, PersistError::DeviceType { .. }), "{e}");

    let mut bad = st.clone();
    bad.version = 99;
    let e = MmioTransport::restore(Box::new(Rng::new()), d.mem().clone(), irq.clone(), &bad)
        .err()
        .unwrap();
    assert_eq!(e, PersistError::Version(99));

    let mut bad = st.clone();
    bad.device = DeviceState::Block {
        capacity: 8,
        read_only: false,
    };
    let e = MmioTransport::restore(Box::new(Rng::new()), d.mem().clone(), irq.clone(), &bad)
        .err()
        .unwrap();
    assert!(matches!(e, PersistError::WrongState { .. }), "{e}");

    // Rings outside guest memory are refused before anything runs.
    let mut bad = st.clone();
    bad.queues[0].desc = 0x10;
    let e = MmioTransport::restore(Box::new(Rng::new()), d.mem().clone(), irq, &bad)
        .err()
        .unwrap();
    assert!(matches!(e, PersistError::Queue { .. }), "{e}");
}

/// A snapshot of an empty drive restored with a medium in it: the device
/// takes the new capacity and, once resumed, tells the driver through a
/// configuration change (interrupt and generation), and serves the disk.
#[test]
fn medium_inserted_into_an_empty_drive_on_restore() {
    use virtio::{Block, BlockConfig, EmptyMedium};
    let empty = || Box::new(Block::new(Arc::new(EmptyMedium), BlockConfig::default()));
    let mut d = Driver::new(empty());
    d.init(u64::MAX, 1, 64);
    assert_eq!(d.config(0, 8), 0u64.to_le_bytes());
    d.mmio.pause();
    let st = d.mmio.save().unwrap();
    assert_eq!(
        st.device,
        DeviceState::Block {
            capacity: 0,
            read_only: false
        }
    );

    // The same empty drive: nothing changes, no interrupt.
    let irq = Arc::new(TestIrq::default());
    let mut t = MmioTransport::restore(empty(), d.mem().clone(), irq.clone(), &st).unwrap();
    t.resume().unwrap();
    assert!(!irq.level());
    t.pause();
    drop(t);

    let dir = std::env::temp_dir().join(format!("virtio-persist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.raw");
    std::fs::write(&path, vec![0x5a; 4096]).unwrap();
    let backend = Arc::new(Counting::open(&path, false));
    let irq = Arc::new(TestIrq::default());
    let blk = Block::new(backend.clone(), BlockConfig::default());
    let t = MmioTransport::restore(Box::new(blk), d.mem().clone(), irq.clone(), &st).unwrap();
    drop(std::mem::replace(&mut d.mmio, t));
    d.irq = irq;
    let generation = d.read32(REG_CONFIG_GENERATION);
    // Nothing is signalled before the board resumes the device.
    assert!(!d.irq.level());
    d.mmio.resume().unwrap();
    assert!(d.irq.level(), "no configuration-change interrupt");
    assert_eq!(d.read32(REG_INTERRUPT_STATUS) & 2, 2);
    assert_ne!(d.read32(REG_CONFIG_GENERATION), generation);
    assert_eq!(d.config(0, 8), 8u64.to_le_bytes());
    d.write32(REG_INTERRUPT_ACK, 2);
    assert!(!d.irq.level());

    // A read of the new medium's last sector.
    let hdr = d.alloc(16);
    let mut h = [0u8; 16];
    h[8..16].copy_from_slice(&7u64.to_le_bytes());
    d.write_bytes(hdr, &h);
    let data = d.alloc(512);
    let status = d.alloc(1);
    d.submit(0, &[rd(hdr, 16), wr(data, 512), wr(status, 1)]);
    assert_eq!(d.wait_used(0).1, 513);
    assert_eq!(d.read_bytes(status, 1), [0]);
    assert_eq!(d.read_bytes(data, 512), vec![0x5a; 512]);

    // The other way round (a disk's snapshot into an empty drive) the
    // guest would lose its disk: refused.
    d.mmio.pause();
    let with_disk = d.mmio.save().unwrap();
    let e = MmioTransport::restore(
        empty(),
        d.mem().clone(),
        Arc::new(TestIrq::default()),
        &with_disk,
    )
    .err()
    .unwrap();
    assert!(matches!(e, PersistError::Mismatch { .. }), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
