//! Arbitrary instruction words never panic the decoder, and decoded
//! instructions keep their invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use riscv::decode::{decode, decode_c, Kind, ZERO_SINK};

fuzz_target!(|data: &[u8]| {
    for chunk in data.chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        let word = u32::from_le_bytes(w);
        let i = decode(word);
        assert!(i.size() == 2 || i.size() == 4);
        assert!(i.rd <= ZERO_SINK && i.rs1 < 32 && i.rs2 < 32 && i.rs3 < 32);
        let c = decode_c(word as u16);
        assert_eq!(c.size(), if word & 3 == 3 { 4 } else { 2 });
        if c.kind != Kind::Illegal {
            assert!(c.rd <= ZERO_SINK && c.rs1 < 32 && c.rs2 < 32);
        }
    }
});
