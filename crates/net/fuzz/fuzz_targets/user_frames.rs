//! Arbitrary guest packets into the user-mode network (restrict=on, so
//! nothing leaves the host), its output drained. The input is split into
//! packets by a length byte; each packet gets a vnet header from the input
//! too, and most get a plausible Ethernet/IPv4 prefix so the fuzzer reaches
//! ARP, DHCP, UDP, TCP and ICMP handling quickly.
#![no_main]

use std::sync::OnceLock;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use net::user::{UserConfig, UserNet};
use net::{Backend, MAX_PACKET};

fn backend() -> &'static Mutex<UserNet> {
    static NET: OnceLock<Mutex<UserNet>> = OnceLock::new();
    NET.get_or_init(|| {
        let mut net = UserNet::new(UserConfig {
            restrict: true,
            dns_servers: Some(Vec::new()),
            ..UserConfig::default()
        })
        .expect("user net");
        // Offloads on: the TSO/partial-checksum paths are exercised too.
        net.set_features(net.offloads()).unwrap();
        net.start(Box::new(|| {})).unwrap();
        Mutex::new(net)
    })
}

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const GW_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

fn prefix(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(64 + body.len());
    f.extend_from_slice(&[0u8; 12]); // vnet header, patched below
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&GUEST_MAC);
    match kind % 4 {
        0 => f.extend_from_slice(body), // raw ethertype and all
        1 => {
            f.extend_from_slice(&[0x08, 0x06]);
            f.extend_from_slice(body);
        }
        2 => {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(body);
        }
        _ => {
            // IPv4 with a consistent length, protocol from the body.
            let proto = [1u8, 6, 17][usize::from(kind / 4) % 3];
            let total = (20 + body.len()).min(65535) as u16;
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0, 10, 0, 2, 15]);
            let dst = if kind & 0x80 != 0 { [10, 0, 2, 2] } else { [93, 184, 216, 34] };
            f.extend_from_slice(&dst);
            f.extend_from_slice(body);
        }
    }
    f
}

fuzz_target!(|data: &[u8]| {
    let mut net = backend().lock().unwrap_or_else(|e| e.into_inner());
    let mut rest = data;
    let mut buf = vec![0u8; MAX_PACKET];
    while rest.len() >= 2 {
        let kind = rest[0];
        let len = usize::from(rest[1]) * 8;
        rest = &rest[2..];
        let take = len.min(rest.len());
        let (body, tail) = rest.split_at(take);
        rest = tail;
        let mut pkt = prefix(kind, body);
        // Vnet header flags from the kind byte: NEEDS_CSUM / DATA_VALID / GSO.
        pkt[0] = kind & 3;
        pkt[1] = (kind >> 2) & 1;
        net.send(&pkt).unwrap();
        while net.recv(&mut buf).unwrap().is_some() {}
    }
    if !data.is_empty() {
        net.send(data).unwrap();
    }
    while net.recv(&mut buf).unwrap().is_some() {}
});
