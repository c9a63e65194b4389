//! Arbitrary bytes as a snapshot state file: every header check (magic,
//! version, capped length, trailing bytes), the CRC and the JSON body must
//! fail with an error, never a panic or an allocation sized by the input.
//! Inputs with a valid CRC are built half the time, so the body parser is
//! reached, not only the checksum.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmm::snapshot::{decode_state, encode_state, HEADER_LEN};

/// A state shaped like a board's: nested structs, vectors, options, enums.
#[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct Hart {
    version: u32,
    x: Vec<u64>,
    pc: u64,
    wfi: bool,
}

#[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Device {
    None,
    Block {
        capacity: u64,
        read_only: bool,
    },
    Console {
        pending_input: Vec<u8>,
        size: Option<(u16, u16)>,
    },
}

#[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct State {
    version: u32,
    harts: Vec<Hart>,
    devices: Vec<Device>,
    name: String,
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz-state");
    let _ = decode_state::<State>(path, data);
    // The same bytes as a body behind a correct header and CRC.
    if let Some((&first, body)) = data.split_first() {
        if first & 1 == 0 {
            if let Ok(raw) = std::str::from_utf8(body) {
                let value: Result<serde_json::Value, _> = serde_json::from_str(raw);
                if let Ok(v) = value {
                    let file = encode_state(&v).expect("a parsed value encodes");
                    assert!(file.len() >= HEADER_LEN);
                    if let Ok(s) = decode_state::<State>(path, &file) {
                        // What parses re-encodes to a file that parses the same.
                        let again = encode_state(&s).unwrap();
                        assert_eq!(decode_state::<State>(path, &again).unwrap(), s);
                    }
                }
            }
        }
    }
});
