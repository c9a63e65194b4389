//! Arbitrary register accesses (status, features, queue setup, notify,
//! ack, config space) against a transport, including activation with
//! rings in a small guest memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtio::fuzzing::fuzz_mmio(data);
});
