//! virtio-net on the x86 board: a small guest drives the virtio-mmio
//! transport of the network card itself (feature negotiation, a receive
//! and a transmit queue), sends an ARP request for the gateway to the
//! user-mode network stack of `crates/net` (the backend `--nic user`
//! uses), and waits in HLT for the reply's interrupt (an irqfd through
//! the IOAPIC). Both kicks are QueueNotify writes into KVM ioeventfds.

mod common;

use common::*;
use x86_machine::{Nic, StopReason};

#[test]
fn virtio_net_arp_round_trip_through_user_networking() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "net", &net_guest(0));
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.nics = vec![Nic {
        backend: Box::new(net::user::UserNet::new(Default::default()).unwrap()),
        mac: virtio::default_mac(0),
    }];
    let outcome = run(cfg);
    let text = out.text();
    assert_eq!(outcome.reason, StopReason::Reset, "{text}");
    check_net_guest(&text);
    assert!(value(&text, "irqs") >= 1, "{text}");
    assert_eq!(outcome.notify_exits, 0, "kicks go through ioeventfds");
    assert_eq!(outcome.unhandled_mmio, 0);
}
