//! Crash consistency: a child process (this test binary re-executed) writes
//! to an image through the library and is killed with SIGKILL at random
//! moments, over and over. After every kill, `qemu-img check` and our check
//! must find no corruption (leaks are allowed), and everything the child
//! flushed before the kill must read back.

mod lib_util;

use std::fs::OpenOptions as FsOpen;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use image::{BlockBackend, CreateOptions, OpenOptions};
use lib_util::*;

const SIZE: u64 = 8 << 20;
const CLUSTER: u64 = 4096;
/// The child flushes (and records progress) after this many operations.
const FLUSH_EVERY: u64 = 4;
const KILLS: usize = 100;

enum Op {
    Write { off: u64, data: Vec<u8> },
    Zero { off: u64, len: u64, unmap: bool },
    Discard { off: u64, len: u64 },
    Compressed { off: u64, data: Vec<u8> },
    Snapshot,
}

fn gen_op(rng: &mut Rng) -> Op {
    let off = rng.below(SIZE - 1);
    let len = (1 + rng.below(40_000)).min(SIZE - off);
    match rng.below(16) {
        0..=9 => {
            let mut data = vec![0u8; len as usize];
            rng.fill(&mut data);
            Op::Write { off, data }
        }
        10 | 11 => Op::Zero {
            off,
            len,
            unmap: rng.below(2) == 0,
        },
        12 => Op::Discard { off, len },
        13 | 14 => {
            let c = rng.below(SIZE / CLUSTER) * CLUSTER;
            let mut data = vec![b'z'; CLUSTER as usize];
            rng.fill(&mut data[..100]);
            Op::Compressed { off: c, data }
        }
        _ => Op::Snapshot,
    }
}

/// Applies an op to the reference model; returns the byte range it touches.
fn apply_model(model: &mut [u8], op: &Op) -> Option<(u64, u64)> {
    match op {
        Op::Write { off, data } | Op::Compressed { off, data } => {
            model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            Some((*off, data.len() as u64))
        }
        Op::Zero { off, len, .. } | Op::Discard { off, len } => {
            model[*off as usize..(*off + *len) as usize].fill(0);
            Some((*off, *len))
        }
        Op::Snapshot => None,
    }
}

/// The child: runs the workload of `seed` forever, recording after each
/// flush how many operations are durable.
#[test]
#[ignore = "helper re-executed by crash_consistency_under_sigkill"]
fn crash_child() {
    let (Ok(img_path), Ok(progress), Ok(seed)) = (
        std::env::var("CRASH_IMAGE"),
        std::env::var("CRASH_PROGRESS"),
        std::env::var("CRASH_SEED"),
    ) else {
        return;
    };
    let prog = FsOpen::new().write(true).open(&progress).unwrap();
    let img = image::open(&img_path, &OpenOptions::read_write()).unwrap();
    let mut rng = Rng::new(seed.parse().unwrap());
    let mut i = 0u64;
    loop {
        match gen_op(&mut rng) {
            Op::Write { off, data } => img.write_at(&data, off).unwrap(),
            Op::Zero { off, len, unmap } => img.write_zeroes(off, len, unmap).unwrap(),
            Op::Discard { off, len } => img.discard(off, len).unwrap(),
            Op::Compressed { off, data } => img.write_compressed(&data, off).unwrap(),
            Op::Snapshot => {
                let snaps = img.snapshots();
                if snaps.len() < 2 {
                    img.snapshot_create(&format!("c{seed}-{i}")).unwrap();
                } else {
                    img.snapshot_delete(&snaps[0].id).unwrap();
                }
            }
        }
        i += 1;
        if i.is_multiple_of(FLUSH_EVERY) {
            img.flush().unwrap();
            prog.write_all_at(&i.to_le_bytes(), 0).unwrap();
        }
    }
}

fn check_after_crash(path: &Path, round: usize) {
    let (code, v) = qemu_check_json(path);
    let corruptions = v["corruptions"].as_u64().unwrap_or(0);
    if corruptions != 0 {
        let _ = std::fs::copy(path, "/tmp/crashfail.qcow2");
    }
    assert!(
        corruptions == 0 && (code == 0 || code == 3),
        "round {round}: qemu-img check exit {code}: {v}"
    );
    let img = image::open(
        path,
        &OpenOptions {
            read_only: true,
            for_check: true,
            ..Default::default()
        },
    )
    .unwrap();
    let r = img.check(image::Repair::None).unwrap();
    if r.corruptions != 0 {
        let _ = std::fs::copy(path, "/tmp/crashfail.qcow2");
    }
    assert_eq!(
        r.corruptions, 0,
        "round {round}: our check: {:?}",
        r.messages
    );
    assert_eq!(
        r.leaks,
        v["leaks"].as_u64().unwrap_or(0),
        "round {round}: our leak count differs from qemu-img's"
    );
}

#[test]
fn crash_consistency_under_sigkill() {
    let dir = TempDir::new("crash");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(2024);
    for (variant, lazy) in [(0, false), (1, true)] {
        let path = dir.path(&format!("crash{variant}.qcow2"));
        image::create(
            &path,
            &CreateOptions {
                size: Some(SIZE),
                cluster_size: CLUSTER,
                lazy_refcounts: lazy,
                ..Default::default()
            },
        )
        .unwrap();
        let progress = dir.path("progress");
        let mut model = vec![0u8; SIZE as usize];
        for round in 0..KILLS / 2 {
            std::fs::write(&progress, [0u8; 8]).unwrap();
            let seed = rng.next() % 1_000_000;
            let mut child = Command::new(&exe)
                .args(["--ignored", "--exact", "crash_child", "--test-threads=1"])
                .env("CRASH_IMAGE", &path)
                .env("CRASH_PROGRESS", &progress)
                .env("CRASH_SEED", seed.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(15 + rng.below(60)));
            if let Ok(Some(st)) = child.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("child exited early ({st}): {err}");
            }
            // SIGKILL: no chance to flush or clean up.
            child.kill().unwrap();
            child.wait().unwrap();
            let done =
                u64::from_le_bytes(std::fs::read(&progress).unwrap()[..8].try_into().unwrap());
            check_after_crash(&path, round);
            // Replay: ops < done are durable; ops in [done, done+FLUSH_EVERY)
            // may or may not have happened.
            let mut oprng = Rng::new(seed);
            let mut unknown = Vec::new();
            for i in 0..done + FLUSH_EVERY {
                let op = gen_op(&mut oprng);
                let r = apply_model(&mut model, &op);
                if i >= done {
                    unknown.extend(r);
                }
            }
            let img = image::open(&path, &OpenOptions::read_only()).unwrap();
            let actual = read_all(&img);
            // A reader refuses writers (image locks): close before reopening.
            drop(img);
            let mut known = vec![true; SIZE as usize];
            for (off, len) in &unknown {
                known[*off as usize..(*off + *len) as usize].fill(false);
            }
            if let Some(p) = (0..SIZE as usize).find(|&p| known[p] && actual[p] != model[p]) {
                panic!("round {round} (variant {variant}, {done} ops flushed): byte {p:#x} is {:#x}, flushed data says {:#x}", actual[p], model[p]);
            }
            // What the unfinished ops left is the new truth.
            model = actual;
            if round % 10 == 9 {
                // Opening read-write repairs a dirty image; a leak repair
                // then leaves it clean for qemu-img.
                let img = image::open(&path, &OpenOptions::read_write()).unwrap();
                let r = img.check(image::Repair::Leaks).unwrap();
                assert_eq!(r.leaks, r.leaks_fixed);
                drop(img);
                assert_qemu_check_clean(&path);
            }
        }
    }
}
