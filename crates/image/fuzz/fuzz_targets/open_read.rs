//! Opens an arbitrary file as qcow2 (and probed) and reads it: header
//! parsing, table validation, L2/refcount lookups, decompression, snapshot
//! table parsing and `check` must all fail cleanly on hostile input.
#![no_main]

use image::{BlockBackend, Format, OpenOptions, Repair};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

/// Inputs larger than this are ignored: the interesting structure is in the
/// first clusters and big files only slow the fuzzer down.
const MAX_INPUT: usize = 1 << 20;
/// Bytes of virtual disk read per input (bounded: virtual sizes are
/// attacker-chosen).
const MAX_READ: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let dir = std::env::temp_dir().join(format!("virtkit-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("input.qcow2");
    {
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(data).unwrap();
    }
    let opts = OpenOptions {
        format: Some(Format::Qcow2),
        // A backing file named by the input must not be opened.
        follow_backing: false,
        l2_cache_size: Some(64 << 10),
        refcount_cache_size: Some(64 << 10),
        ..OpenOptions::read_only()
    };
    if let Ok(img) = image::open(&path, &opts) {
        let _ = img.info();
        let len = img.len().min(MAX_READ);
        let mut buf = vec![0u8; 65536];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            if img.read_at(&mut buf[..n], off).is_err() {
                break;
            }
            off += n as u64;
        }
        let mut pos = 0;
        while pos < len {
            match img.block_status(pos, len - pos) {
                Ok(st) => pos += st.len,
                Err(_) => break,
            }
        }
        let _ = img.check(Repair::None);
    }
    // The same file read-write (a copy): writes and repair on hostile
    // metadata must fail cleanly too.
    let rw = OpenOptions {
        read_only: false,
        for_check: true,
        ..opts
    };
    if let Ok(img) = image::open(&path, &rw) {
        let _ = img.check(Repair::All);
        if img.len() > 0 {
            let _ = img.write_at(&[0x5a; 3000], img.len().min(MAX_READ) / 2 & !511);
            let _ = img.write_zeroes(0, img.len().min(65536), true);
        }
        let _ = img.snapshot_create("fuzz");
    }
});
