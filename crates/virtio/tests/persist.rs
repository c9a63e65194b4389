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
