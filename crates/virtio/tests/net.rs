//! virtio-net driven through the MMIO registers, as a guest driver would,
//! over a mock backend.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use virtio::Net;

// Feature bits written out from the virtio 1.2 spec (5.1.3).
const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_HOST_TSO4: u64 = 1 << 11;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_STATUS: u64 = 1 << 16;

const HDR: usize = 12;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

#[derive(Default)]
struct MockState {
    offloads: u64,
    features: Option<u64>,
    sent: Vec<Vec<u8>>,
    to_guest: VecDeque<Vec<u8>>,
    waker: Option<net::Waker>,
    starts: u32,
    stops: u32,
}

/// A backend whose traffic the test sees and makes.
#[derive(Clone, Default)]
struct Mock(Arc<Mutex<MockState>>);

impl net::Backend for Mock {
    fn offloads(&self) -> u64 {
        self.0.lock().unwrap().offloads
    }
    fn set_features(&mut self, features: u64) -> net::Result<()> {
        self.0.lock().unwrap().features = Some(features);
        Ok(())
    }
    fn start(&mut self, waker: net::Waker) -> net::Result<()> {
        let mut st = self.0.lock().unwrap();
        st.waker = Some(waker);
        st.starts += 1;
        Ok(())
    }
    fn send(&mut self, packet: &[u8]) -> net::Result<()> {
        self.0.lock().unwrap().sent.push(packet.to_vec());
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> net::Result<Option<usize>> {
        assert!(buf.len() >= net::MAX_PACKET);
        let mut st = self.0.lock().unwrap();
        Ok(st.to_guest.pop_front().map(|p| {
            buf[..p.len()].copy_from_slice(&p);
            p.len()
        }))
    }
    fn stop(&mut self) {
        self.0.lock().unwrap().stops += 1;
    }
}

impl Mock {
    /// A packet for the guest; the waker fires as a backend's thread would.
    fn inject(&self, packet: Vec<u8>) {
        let mut st = self.0.lock().unwrap();
        st.to_guest.push_back(packet);
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w();
            self.0.lock().unwrap().waker = Some(w);
        }
    }

    fn wait_sent(&self, n: usize) -> Vec<Vec<u8>> {
        for _ in 0..20_000 {
            let sent = self.0.lock().unwrap().sent.clone();
            if sent.len() >= n {
                return sent;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.0.lock().unwrap().sent.clone()
    }
}

/// A vnet header (no offload) and an Ethernet frame of `len` bytes.
fn packet(len: usize, seed: u8) -> Vec<u8> {
    let mut p = vec![0u8; HDR];
    p.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    p
}

fn nic(offloads: u64) -> (Driver, Mock) {
    let mock = Mock::default();
    mock.0.lock().unwrap().offloads = offloads;
    let d = Driver::new(Box::new(Net::new(Box::new(mock.clone()), MAC)));
    (d, mock)
}

#[test]
fn config_and_features_follow_the_backend() {
    let all = F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_HOST_TSO4;
    let (mut d, mock) = nic(all | 1 << 40);
    assert_eq!(d.read32(REG_DEVICE_ID), 1);
    let f = d.device_features();
    for bit in [VERSION_1, F_MAC, F_STATUS, F_MRG_RXBUF, all] {
        assert_eq!(f & bit, bit, "feature {bit:#x} not offered");
    }
    assert_eq!(f & 1 << 40, 0, "an unknown backend bit was offered");
    assert_eq!(d.config(0, 6), MAC);
    assert_eq!(d.config(6, 2), [1, 0], "link up");
    // Writes to the MAC are ignored (read-only in virtio 1.x).
    d.mmio.write(REG_CONFIG, &[0; 4]);
    assert_eq!(d.config(0, 6), MAC);

    d.init(VERSION_1 | F_MAC | F_CSUM | F_HOST_TSO4, 2, 64);
    let st = mock.0.lock().unwrap();
    assert_eq!(st.features, Some(F_CSUM | F_HOST_TSO4));
    assert_eq!(st.starts, 1);
    drop(st);

    // Reset stops the backend; the next activation starts it again.
    d.write32(REG_STATUS, 0);
    assert_eq!(mock.0.lock().unwrap().stops, 1);
    d.init(VERSION_1, 2, 64);
    assert_eq!(mock.0.lock().unwrap().starts, 2);
    assert_eq!(mock.0.lock().unwrap().features, Some(0));

    // A backend without checksum offload gets no TSO offered either.
    let (mut d, _) = nic(F_HOST_TSO4 | F_GUEST_TSO4);
    assert_eq!(d.device_features() & (F_HOST_TSO4 | F_GUEST_TSO4), 0);
}

#[test]
fn transmitted_frames_reach_the_backend() {
    let (mut d, mock) = nic(0);
    d.init(u64::MAX, 2, 64);
    let p = packet(1000, 1);
    // Header and frame in separate descriptors, the frame split in two.
    let a = d.alloc(HDR as u64);
    let b = d.alloc(400);
    let c = d.alloc(600);
    d.write_bytes(a, &p[..HDR]);
    d.write_bytes(b, &p[HDR..HDR + 400]);
    d.write_bytes(c, &p[HDR + 400..]);
    d.submit(1, &[rd(a, HDR as u32), rd(b, 400), rd(c, 600)]);
    assert_eq!(d.wait_used(1).1, 0);
    let q = packet(60, 2);
    let e = d.alloc(q.len() as u64);
    d.write_bytes(e, &q);
    d.submit(1, &[rd(e, q.len() as u32)]);
    d.wait_used(1);
    assert_eq!(mock.wait_sent(2), vec![p, q]);
}

#[test]
fn received_frames_reach_the_guest() {
    let (mut d, mock) = nic(0);
    d.init(u64::MAX, 2, 64);
    let a = d.alloc(2048);
    d.submit(0, &[wr(a, 2048)]);
    let mut p = packet(1500, 3);
    mock.inject(p.clone());
    assert_eq!(d.wait_used(0).1 as usize, p.len());
    p[10] = 1; // num_buffers
    assert_eq!(d.read_bytes(a, p.len()), p);
    assert!(d.irq.level());
}

#[test]
fn mergeable_receive_spans_several_buffers() {
    let (mut d, mock) = nic(0);
    d.init(u64::MAX, 2, 64);
    let bufs: Vec<u64> = (0..4).map(|_| d.alloc(1000)).collect();
    for &b in &bufs {
        d.submit(0, &[wr(b, 1000)]);
    }
    let mut p = packet(2500, 4); // 2512 bytes: three buffers
    mock.inject(p.clone());
    let lens: Vec<u32> = (0..3).map(|_| d.wait_used(0).1).collect();
    assert_eq!(lens, [1000, 1000, 512]);
    p[10] = 3;
    let got = [
        d.read_bytes(bufs[0], 1000),
        d.read_bytes(bufs[1], 1000),
        d.read_bytes(bufs[2], 512),
    ]
    .concat();
    assert_eq!(got, p);
    // The fourth buffer is still there for the next packet.
    let mut q = packet(100, 5);
    mock.inject(q.clone());
    assert_eq!(d.wait_used(0).1 as usize, q.len());
    q[10] = 1;
    assert_eq!(d.read_bytes(bufs[3], q.len()), q);
}

#[test]
fn a_packet_waits_for_the_guest_to_post_buffers() {
    let (mut d, mock) = nic(0);
    d.init(u64::MAX, 2, 64);
    // No buffers: the packet must not be lost, nor the backend.
    let mut p = packet(3000, 6);
    mock.inject(p.clone());
    assert!(d.try_wait_used(0, Duration::from_millis(50)).is_none());
    // One buffer is not enough for the whole packet: still waiting.
    let a = d.alloc(2048);
    d.submit(0, &[wr(a, 2048)]);
    assert!(d.try_wait_used(0, Duration::from_millis(50)).is_none());
    let b = d.alloc(2048);
    d.submit(0, &[wr(b, 2048)]);
    assert_eq!(d.wait_used(0).1, 2048);
    assert_eq!(d.wait_used(0).1 as usize, p.len() - 2048);
    p[10] = 2;
    let got = [d.read_bytes(a, 2048), d.read_bytes(b, p.len() - 2048)].concat();
    assert_eq!(got, p);
    // And the backend still delivers afterwards.
    let c = d.alloc(2048);
    d.submit(0, &[wr(c, 2048)]);
    mock.inject(packet(64, 7));
    assert_eq!(d.wait_used(0).1 as usize, HDR + 64);
}

#[test]
fn without_mergeable_buffers_a_packet_needs_one_chain() {
    let (mut d, mock) = nic(0);
    d.init(VERSION_1, 2, 64);
    let a = d.alloc(1000);
    let b = d.alloc(600);
    let c = d.alloc(600);
    d.submit(0, &[wr(a, 1000)]);
    // Too big for the chain: dropped, the buffer comes back empty.
    mock.inject(packet(1500, 8));
    assert_eq!(d.wait_used(0).1, 0);
    // Two descriptors in one chain hold a packet together.
    d.submit(0, &[wr(b, 600), wr(c, 600)]);
    let mut p = packet(1000, 9);
    mock.inject(p.clone());
    assert_eq!(d.wait_used(0).1 as usize, p.len());
    p[10] = 1;
    let got = [d.read_bytes(b, 600), d.read_bytes(c, p.len() - 600)].concat();
    assert_eq!(got, p);
}

#[test]
fn malformed_chains_cost_only_their_packet() {
    let (mut d, mock) = nic(0);
    d.init(u64::MAX, 2, 64);
    let good = packet(100, 10);
    let a = d.alloc(good.len() as u64);
    d.write_bytes(a, &good);
    // Transmit: outside guest memory, shorter than a header, longer than
    // any packet, writable.
    let end = RAM_BASE + RAM_SIZE as u64;
    d.submit(1, &[rd(end - 8, 64)]);
    d.submit(1, &[rd(a, 20)]);
    let big = d.alloc(net::MAX_PACKET as u64 + 1);
    d.submit(1, &[rd(big, net::MAX_PACKET as u32 + 1)]);
    d.submit(1, &[wr(a, good.len() as u32)]);
    d.submit(1, &[rd(a, good.len() as u32)]);
    for _ in 0..5 {
        assert_eq!(d.wait_used(1).1, 0);
    }
    assert_eq!(mock.wait_sent(1), vec![good.clone()]);
    assert_eq!(mock.0.lock().unwrap().sent.len(), 1);

    // Receive: a readable buffer, one outside memory and one too small for
    // the header each cost a packet; a good buffer then gets the next.
    d.submit(0, &[rd(a, 2048)]);
    mock.inject(packet(50, 11));
    assert_eq!(d.wait_used(0).1, 0);
    d.submit(0, &[wr(end - 8, 2048)]);
    mock.inject(packet(50, 12));
    assert_eq!(d.wait_used(0).1, 0);
    d.submit(0, &[wr(a, 4)]);
    mock.inject(packet(50, 13));
    assert_eq!(d.wait_used(0).1, 0);
    let b = d.alloc(2048);
    d.submit(0, &[wr(b, 2048)]);
    let mut p = packet(50, 14);
    mock.inject(p.clone());
    assert_eq!(d.wait_used(0).1 as usize, p.len());
    p[10] = 1;
    assert_eq!(d.read_bytes(b, p.len()), p);
    assert_eq!(
        d.read32(REG_STATUS) & virtio::status::DEVICE_NEEDS_RESET,
        0,
        "bad buffers are not a broken ring"
    );
}
