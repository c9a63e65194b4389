//! The virtio-mmio register window: layout, feature negotiation, queue
//! setup rules, reset.

mod common;

use common::*;
use virtio::{status, Rng};

fn rng() -> Driver {
    Driver::new(Box::new(Rng::new()))
}

#[test]
fn identification_registers() {
    let mut d = rng();
    assert_eq!(d.read32(REG_MAGIC), u32::from_le_bytes(*b"virt"));
    assert_eq!(d.read32(REG_VERSION), 2);
    assert_eq!(d.read32(REG_DEVICE_ID), 4);
    assert_ne!(d.read32(REG_VENDOR_ID), 0);
    let f = d.device_features();
    assert_ne!(f & VERSION_1, 0);
    d.write32(REG_DEVICE_FEATURES_SEL, 2);
    assert_eq!(d.read32(REG_DEVICE_FEATURES), 0);
    d.write32(REG_QUEUE_SEL, 0);
    assert_eq!(d.read32(REG_QUEUE_NUM_MAX), 256);
    assert_eq!(d.read32(REG_QUEUE_READY), 0);
    // A queue that does not exist has QueueNumMax 0 (4.2.3.2).
    d.write32(REG_QUEUE_SEL, 1);
    assert_eq!(d.read32(REG_QUEUE_NUM_MAX), 0);
    // No shared memory regions: length reads as all ones.
    d.write32(REG_SHM_SEL, 0);
    assert_eq!(d.read32(REG_SHM_LEN_LOW), u32::MAX);
    assert_eq!(d.read32(REG_SHM_LEN_HIGH), u32::MAX);
    assert_eq!(d.read32(REG_STATUS), 0);
    assert_eq!(d.read32(REG_INTERRUPT_STATUS), 0);
}

#[test]
fn narrow_unaligned_and_out_of_window_accesses_are_harmless() {
    let mut d = rng();
    let mut b2 = [0xffu8; 2];
    d.mmio.read(REG_MAGIC, &mut b2);
    assert_eq!(b2, [0, 0]);
    let mut b4 = [0xffu8; 4];
    d.mmio.read(REG_MAGIC + 1, &mut b4);
    assert_eq!(b4, [0; 4]);
    let mut b8 = [0xffu8; 8];
    d.mmio.read(REG_MAGIC, &mut b8);
    assert_eq!(b8, [0; 8]);
    d.mmio.read(0x200, &mut b4);
    assert_eq!(b4, [0; 4]);
    d.mmio.read(u64::MAX - 1, &mut b4);
    // Narrow status write: ignored.
    d.mmio.write(REG_STATUS, &[1]);
    assert_eq!(d.read32(REG_STATUS), 0);
    d.mmio.write(REG_STATUS + 2, &1u32.to_le_bytes());
    assert_eq!(d.read32(REG_STATUS), 0);
    d.mmio.write(u64::MAX - 3, &[1, 2, 3, 4]);
    d.mmio.write(0x1ff, &[1, 2, 3, 4]);
    // Notifying a queue that does not exist or is not running is ignored.
    d.write32(REG_QUEUE_NOTIFY, 77);
    d.write32(REG_QUEUE_NOTIFY, 0);
    assert_eq!(d.read32(REG_STATUS), 0);
}

#[test]
fn feature_negotiation() {
    let mut d = rng();
    // Accepting a feature the device does not offer: FEATURES_OK refused.
    d.write32(REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.set_driver_features(VERSION_1 | 1 << 40);
    d.write32(
        REG_STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(d.read32(REG_STATUS) & status::FEATURES_OK, 0);
    // A legacy driver (no VERSION_1): refused too.
    assert!(!d.negotiate(!VERSION_1));
    // DRIVER_OK without FEATURES_OK does not start the device.
    d.write32(
        REG_STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(d.read32(REG_STATUS) & status::DRIVER_OK, 0);
    // A proper negotiation.
    assert!(d.negotiate(VERSION_1));
    // Features are frozen after FEATURES_OK: later writes are ignored, and
    // the device runs with what was accepted.
    d.set_driver_features(VERSION_1 | 1 << 40);
    d.setup_queue(0, 16);
    d.driver_ok();
    assert_eq!(
        d.read32(REG_STATUS),
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
    );
    let a = d.alloc(16);
    d.submit(0, &[wr(a, 16)]);
    assert_eq!(d.wait_used(0).1, 16);
}

#[test]
fn bad_queue_setup_sets_needs_reset() {
    // Size not a power of two.
    let mut d = rng();
    assert!(d.negotiate(u64::MAX));
    d.setup_queue(0, 16);
    d.write32(REG_QUEUE_SEL, 0);
    // Queue registers can still change before DRIVER_OK.
    d.write32(REG_QUEUE_NUM, 24);
    d.driver_ok();
    assert_ne!(d.read32(REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(d.mmio.device_error().unwrap().contains("queue 0"));

    // Rings outside guest memory.
    let mut d = rng();
    assert!(d.negotiate(u64::MAX));
    d.setup_queue(0, 16);
    d.write32(REG_QUEUE_DESC_LOW, 0x1000);
    d.write32(REG_QUEUE_DESC_HIGH, 0);
    d.driver_ok();
    assert_ne!(d.read32(REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);

    // Misaligned descriptor table.
    let mut d = rng();
    assert!(d.negotiate(u64::MAX));
    d.setup_queue(0, 16);
    let desc = d.queues[0].desc;
    d.write32(REG_QUEUE_DESC_LOW, desc as u32 + 8);
    d.driver_ok();
    assert_ne!(d.read32(REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn queue_registers_frozen_after_driver_ok() {
    let mut d = rng();
    d.init(u64::MAX, 1, 16);
    d.write32(REG_QUEUE_SEL, 0);
    d.write32(REG_QUEUE_DESC_LOW, 0);
    d.write32(REG_QUEUE_NUM, 2);
    let a = d.alloc(16);
    d.submit(0, &[wr(a, 16)]);
    assert_eq!(d.wait_used(0).1, 16);
    // QueueReady reads back what was written (Linux's vm_del_vq checks).
    d.write32(REG_QUEUE_READY, 0);
    assert_eq!(d.read32(REG_QUEUE_READY), 0);
}

#[test]
fn reset_returns_to_power_on_state() {
    let mut d = rng();
    d.init(!RING_EVENT_IDX, 1, 16);
    let a = d.alloc(16);
    d.submit(0, &[wr(a, 16)]);
    d.wait_used(0);
    assert!(d.irq.wait_high());
    d.write32(REG_STATUS, 0);
    assert_eq!(d.read32(REG_STATUS), 0);
    assert_eq!(d.read32(REG_INTERRUPT_STATUS), 0);
    assert!(!d.irq.level(), "reset must lower the line");
    d.write32(REG_QUEUE_SEL, 0);
    assert_eq!(d.read32(REG_QUEUE_READY), 0);
    // And it can be brought up again, many times.
    for _ in 0..20 {
        d.init(u64::MAX, 1, 32);
        let a = d.alloc(16);
        d.submit(0, &[wr(a, 16)]);
        assert_eq!(d.wait_used(0).1, 16);
    }
    d.mmio.shutdown();
    assert_eq!(d.read32(REG_STATUS), 0);
}

#[test]
fn buffers_posted_before_driver_ok_are_processed() {
    let mut d = rng();
    assert!(d.negotiate(u64::MAX));
    d.setup_queue(0, 16);
    let a = d.alloc(16);
    let head = d.add_chain(0, &[wr(a, 16)]);
    d.publish(0, head);
    d.driver_ok();
    assert_eq!(d.wait_used(0), (u32::from(head), 16));
}

#[test]
fn driver_ok_toggled_without_reset_keeps_one_worker() {
    let mut d = rng();
    d.init(u64::MAX, 1, 16);
    let a = d.alloc(16);
    d.submit(0, &[wr(a, 16)]);
    assert_eq!(d.wait_used(0).1, 16);
    let s = d.read32(REG_STATUS);
    for _ in 0..10 {
        d.write32(REG_STATUS, s & !status::DRIVER_OK);
        d.write32(REG_STATUS, s);
    }
    assert_eq!(
        d.read32(REG_STATUS),
        s,
        "status bits are sticky until reset"
    );
    for _ in 0..50 {
        let a = d.alloc(16);
        d.submit(0, &[wr(a, 16)]);
        assert_eq!(d.wait_used(0).1, 16);
    }
}
