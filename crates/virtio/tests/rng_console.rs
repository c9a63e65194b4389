//! virtio-rng and virtio-console driven as a guest driver would.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use virtio::{Console, Rng};

#[test]
fn rng_fills_buffers_with_random_bytes() {
    let mut d = Driver::new(Box::new(Rng::new()));
    assert_eq!(d.read32(REG_DEVICE_ID), 4);
    d.init(u64::MAX, 1, 64);
    let a = d.alloc(256);
    let b = d.alloc(100);
    let c = d.alloc(156);
    d.submit(0, &[wr(a, 256)]);
    assert_eq!(d.wait_used(0).1, 256);
    d.submit(0, &[wr(b, 100), wr(c, 156)]);
    assert_eq!(d.wait_used(0).1, 256);
    let x = d.read_bytes(a, 256);
    let y = [d.read_bytes(b, 100), d.read_bytes(c, 156)].concat();
    // 256 random bytes are all zero, or equal to another 256, with
    // probability 2^-2048.
    assert_ne!(x, vec![0; 256]);
    assert_ne!(y, vec![0; 256]);
    assert_ne!(x, y);

    // A huge buffer gets at most the per-request cap.
    let big = d.alloc(1 << 20);
    d.submit(0, &[wr(big, 1 << 20)]);
    assert_eq!(d.wait_used(0).1 as usize, virtio::MAX_RNG_BYTES_PER_REQUEST);
    // A readable-only chain gets nothing, and the device carries on.
    d.submit(0, &[rd(a, 16)]);
    assert_eq!(d.wait_used(0).1, 0);
    d.submit(0, &[wr(a, 8)]);
    assert_eq!(d.wait_used(0).1, 8);
}

/// A `Write` whose bytes the test can look at.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn wait_for(&self, want: &[u8]) -> Vec<u8> {
        for _ in 0..20_000 {
            let got = self.0.lock().unwrap().clone();
            if got.len() >= want.len() {
                return got;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.0.lock().unwrap().clone()
    }
}

#[test]
fn console_output_reaches_the_host() {
    let sink = Sink::default();
    let (console, _host) = Console::new(Box::new(sink.clone()), None);
    let mut d = Driver::new(Box::new(console));
    assert_eq!(d.read32(REG_DEVICE_ID), 3);
    assert_eq!(d.device_features() & 1, 0, "F_SIZE without a size");
    d.init(u64::MAX, 2, 64);
    let a = d.alloc(64);
    let b = d.alloc(64);
    d.write_bytes(a, b"hello, ");
    d.write_bytes(b, b"world\n");
    d.submit(1, &[rd(a, 7)]);
    d.submit(1, &[rd(b, 6)]);
    d.wait_used(1);
    d.wait_used(1);
    assert_eq!(sink.wait_for(b"hello, world\n"), b"hello, world\n");

    // emerg_write: a character written to config offset 8.
    d.mmio.write(REG_CONFIG + 8, &u32::from(b'!').to_le_bytes());
    assert_eq!(sink.0.lock().unwrap().last(), Some(&b'!'));
}

#[test]
fn console_input_reaches_the_guest() {
    let (console, host) = Console::new(Box::new(std::io::sink()), Some((80, 24)));
    let mut d = Driver::new(Box::new(console));
    // Typed before the driver is up: kept until buffers are posted.
    assert!(host.send(b"early "));
    d.init(u64::MAX, 2, 64);
    let a = d.alloc(4);
    let b = d.alloc(64);
    d.submit(0, &[wr(a, 4)]);
    assert_eq!(d.wait_used(0).1, 4);
    d.submit(0, &[wr(b, 64)]);
    assert_eq!(d.wait_used(0).1, 2);
    assert_eq!([d.read_bytes(a, 4), d.read_bytes(b, 2)].concat(), b"early ");

    // A posted buffer waits for input, then gets it.
    let c = d.alloc(64);
    d.submit(0, &[wr(c, 64)]);
    assert!(d.try_wait_used(0, Duration::from_millis(50)).is_none());
    assert!(host.send(b"ls\n"));
    assert_eq!(d.wait_used(0).1, 3);
    assert_eq!(d.read_bytes(c, 3), b"ls\n");

    // Pending input is bounded; try_send reports what fit.
    let n = host.try_send(&vec![b'x'; virtio::MAX_PENDING_INPUT + 10]);
    assert_eq!(n, virtio::MAX_PENDING_INPUT);
    assert_eq!(host.try_send(b"y"), 0);
    // Draining it makes room again.
    let big = d.alloc(4096);
    d.submit(0, &[wr(big, 4096)]);
    assert_eq!(d.wait_used(0).1, 4096);
    assert_eq!(host.try_send(b"y"), 1);
}

#[test]
fn console_size_and_resize() {
    let (console, host) = Console::new(Box::new(std::io::sink()), Some((80, 24)));
    let mut d = Driver::new(Box::new(console));
    assert_eq!(d.device_features() & 1, 1, "F_SIZE offered");
    assert_eq!(d.config(0, 4), [80, 0, 24, 0]);
    d.init(u64::MAX, 2, 64);
    let gen = d.read32(REG_CONFIG_GENERATION);
    host.resize(132, 43);
    assert_eq!(d.config(0, 2), 132u16.to_le_bytes());
    assert_eq!(d.config(2, 2), 43u16.to_le_bytes());
    assert_ne!(d.read32(REG_CONFIG_GENERATION), gen);
    assert!(d.irq.wait_high());
    assert_eq!(d.read32(REG_INTERRUPT_STATUS), 2);
    d.write32(REG_INTERRUPT_ACK, 2);
    assert!(!d.irq.level());
}

#[test]
fn console_reader_thread_and_device_drop() {
    let (console, host) = Console::new(Box::new(std::io::sink()), None);
    let mut d = Driver::new(Box::new(console));
    d.init(u64::MAX, 2, 64);
    host.spawn_reader(std::io::Cursor::new(b"from a reader".to_vec()))
        .unwrap();
    let a = d.alloc(64);
    d.submit(0, &[wr(a, 64)]);
    let (_, len) = d.wait_used(0);
    let mut got = d.read_bytes(a, len as usize);
    while got.len() < 13 {
        d.submit(0, &[wr(a, 64)]);
        let (_, len) = d.wait_used(0);
        got.extend(d.read_bytes(a, len as usize));
    }
    assert_eq!(got, b"from a reader");
    // Once the device is gone, a blocked sender gives up instead of hanging.
    host.try_send(&vec![0; virtio::MAX_PENDING_INPUT]);
    let h2 = host.clone();
    let t = std::thread::spawn(move || h2.send(b"more"));
    drop(d);
    assert!(!t.join().unwrap());
}
