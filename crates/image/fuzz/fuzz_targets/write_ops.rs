//! Opens an arbitrary file as a writable qcow2 image and runs a sequence of
//! writes, zeroing, discards, compressed writes and snapshot operations
//! chosen by the input over it: allocation, copy on write, L2/refcount
//! updates and the atomic snapshot switch must fail cleanly (an error,
//! never a panic, hang or huge allocation) on hostile metadata.
//!
//! Input: 2 bytes (big endian) giving the length of the image file, the
//! image file, then the operations (9 bytes each).
#![no_main]

use image::{BlockBackend, Format, OpenOptions};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

/// Image files larger than this are ignored (the structure that matters
/// is in the first clusters).
const MAX_IMAGE: usize = 1 << 16;
/// Operations per input.
const MAX_OPS: usize = 64;
/// Guest range the operations touch (virtual sizes are attacker-chosen).
const SPAN: u64 = 8 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = u16::from_be_bytes([data[0], data[1]]) as usize;
    let rest = &data[2..];
    if n > rest.len() || n > MAX_IMAGE {
        return;
    }
    let (file, ops) = rest.split_at(n);
    let dir = std::env::temp_dir().join(format!("virtkit-fuzzw-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("input.qcow2");
    {
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(file).unwrap();
    }
    let opts = OpenOptions {
        format: Some(Format::Qcow2),
        read_only: false,
        // A backing file named by the input must not be opened.
        follow_backing: false,
        l2_cache_size: Some(64 << 10),
        refcount_cache_size: Some(64 << 10),
        ..OpenOptions::read_only()
    };
    let Ok(img) = image::open(&path, &opts) else {
        return;
    };
    let len = img.len().min(SPAN);
    if len == 0 {
        return;
    }
    let buf = [0xa5u8; 70_000];
    for op in ops.chunks_exact(9).take(MAX_OPS) {
        let off = u32::from_be_bytes([op[1], op[2], op[3], op[4]]) as u64 % len;
        let n = (u32::from_be_bytes([op[5], op[6], op[7], op[8]]) as u64 % 70_000)
            .clamp(1, len - off);
        let r = match op[0] % 8 {
            0..=2 => img.write_at(&buf[..n as usize], off),
            3 => img.write_zeroes(off, n, op[0] & 0x80 != 0),
            4 => img.discard(off, n),
            5 => {
                let cs = img.cluster_size().unwrap_or(65536);
                let c = off / cs * cs;
                let k = cs.min(len - c) as usize;
                img.write_compressed(&vec![op[1]; k], c)
            }
            6 => img.snapshot_create(&format!("s{}", op[1])),
            _ => match img.snapshots().first() {
                Some(s) if op[2] & 1 == 0 => img.snapshot_apply(&s.id),
                Some(s) => img.snapshot_delete(&s.id),
                None => img.flush(),
            },
        };
        if r.is_err() {
            // Metadata found broken: stop like a guest would see EIO.
            break;
        }
    }
    let _ = img.flush();
    let mut back = vec![0u8; 65536];
    let _ = img.read_at(&mut back[..len.min(65536) as usize], 0);
});
