//! Arbitrary descriptor tables, rings and requests in a small guest memory,
//! processed by virtio-blk, virtio-rng and virtio-console.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtio::fuzzing::fuzz_queues(data);
});
