//! Pause, snapshot and restore of the x86 board: a small guest counts on
//! the serial port, one line per LAPIC timer tick (it waits in HLT for
//! each); the test pauses it, snapshots it, lets the original finish,
//! and restores the snapshot into a second machine, whose output must
//! continue the first one's exactly where the pause cut it (the timer,
//! the registers and RAM all came back).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use x86_machine::{Disk, Error, StopReason};

const COUNT: u64 = 120;

fn counter_guest() -> String {
    common::counter_guest(COUNT, 3_000_000)
}

fn expected() -> String {
    common::counter_expected(COUNT)
}

fn wait_for(out: &Capture, what: &str) {
    let start = Instant::now();
    while !out.text().contains(what) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {what:?} in {}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn snapshot_paths(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (dir.join("state"), dir.join("memory"))
}

#[test]
fn a_restored_guest_continues_where_the_snapshot_paused_it() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "count", &counter_guest());
    let (state, memory) = snapshot_paths(dir.path());

    let out = Capture::default();
    let m = x86_machine::start(config(&guest, &out)).unwrap();
    wait_for(&out, "n=0000000000000005\n");
    // A snapshot needs a paused machine.
    assert!(matches!(
        m.snapshot(&state, &memory).unwrap_err(),
        Error::NotPaused
    ));
    m.pause().unwrap();
    assert!(m.is_paused());
    m.pause().unwrap(); // a no-op
    let at_pause = out.text();
    m.snapshot(&state, &memory).unwrap();
    // Paused means no guest instruction runs: no output meanwhile.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(out.text(), at_pause);
    // The original goes on after a resume, to the end.
    m.resume().unwrap();
    let o = m.wait().unwrap();
    assert_eq!(o.reason, StopReason::Reset, "{}", out.text());
    assert_eq!(out.text(), expected());
    assert!(at_pause.len() < expected().len());

    // The state holds the vCPU's MSRs, the MTRRs (not in KVM's list of
    // MSRs to save) among them: the default type the board set at boot.
    let st = x86_machine::snapshot::read(&state).unwrap();
    let msrs = &st.vcpus[0].msrs;
    assert!(msrs.contains(&(0x2ff, 0x806)), "{msrs:x?}");
    assert!(msrs.iter().any(|&(i, _)| i == 0x10), "the TSC: {msrs:x?}");

    // The memory file is sparse and as large as RAM.
    let meta = std::fs::metadata(&memory).unwrap();
    assert_eq!(meta.len(), 16 << 20);

    // A second machine from the snapshot continues the output exactly.
    let out2 = Capture::default();
    let m2 = x86_machine::restore(config(&guest, &out2), &state, &memory, false).unwrap();
    let o2 = m2.wait().unwrap();
    let text2 = out2.text();
    assert_eq!(o2.reason, StopReason::Reset, "{text2}");
    assert_eq!(format!("{at_pause}{text2}"), expected(), "{text2}");

    // And again, restored paused: nothing runs until the resume.
    let out3 = Capture::default();
    let m3 = x86_machine::restore(config(&guest, &out3), &state, &memory, true).unwrap();
    assert!(m3.is_paused());
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(out3.text(), "");
    m3.resume().unwrap();
    assert_eq!(m3.wait().unwrap().reason, StopReason::Reset);
    assert_eq!(format!("{at_pause}{}", out3.text()), expected());
}

#[test]
fn mismatched_and_foreign_snapshots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "count", &counter_guest());
    let (state, memory) = snapshot_paths(dir.path());
    let out = Capture::default();
    let m = x86_machine::start(config(&guest, &out)).unwrap();
    wait_for(&out, "n=0000000000000002\n");
    m.pause().unwrap();
    m.snapshot(&state, &memory).unwrap();
    m.stop(StopReason::Quit);
    m.wait().unwrap();
    assert!(m.resume().is_err(), "a stopped machine does not resume");

    let restore = |f: &dyn Fn(&mut x86_machine::MachineConfig)| {
        let out = Capture::default();
        let mut cfg = config(&guest, &out);
        f(&mut cfg);
        match x86_machine::restore(cfg, &state, &memory, false) {
            Ok(_) => panic!("restored"),
            Err(e) => e.to_string(),
        }
    };
    let e = restore(&|c| c.vcpus = 2);
    assert!(e.contains("1 vCPUs, the machine 2"), "{e}");
    let e = restore(&|c| c.mem_size = 32 << 20);
    assert!(e.contains("16 MiB of RAM"), "{e}");
    let e = restore(&|c| c.rng = true);
    assert!(
        e.contains("virtio devices are [], the machine's [rng]"),
        "{e}"
    );

    // A riscv64 board's state file (same container format).
    let rv = dir.path().join("riscv-state");
    let body = serde_json::json!({
        "version": 1,
        "machine": {"board": "riscv64-virt", "harts": 1, "mem_size": 16 << 20,
                    "builtin_sbi": true, "devices": [], "disk_sizes": []},
    });
    vmm::snapshot::write_state(&rv, &body).unwrap();
    let out = Capture::default();
    let e = x86_machine::restore(config(&guest, &out), &rv, &memory, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("riscv64-virt"), "{e}");
    assert_eq!(
        x86_machine::snapshot::board_of(&rv).unwrap(),
        "riscv64-virt"
    );
    assert_eq!(
        x86_machine::snapshot::board_of(&state).unwrap(),
        "x86_64-kvm"
    );

    // Not a snapshot at all, and a memory file of the wrong size.
    let e = x86_machine::restore(config(&guest, &out), &guest, &memory, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a virtkit snapshot"), "{e}");
    std::fs::write(&memory, b"short").unwrap();
    let e = x86_machine::restore(config(&guest, &out), &state, &memory, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("memory"), "{e}");
}

#[test]
fn a_writable_disk_is_not_snapshotted() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "count", &counter_guest());
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let img = image::open(&raw, &image::OpenOptions::default()).unwrap();
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.disks = vec![Disk::from_image(Arc::new(img), false)];
    let m = x86_machine::start(cfg).unwrap();
    m.pause().unwrap();
    let (state, memory) = snapshot_paths(dir.path());
    let e = m.snapshot(&state, &memory).unwrap_err().to_string();
    assert!(
        e.contains("disk 0 is read-write and not a qcow2 image"),
        "{e}"
    );
    assert!(!state.exists());
}

fn qcow2(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("disk.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("1M")
        .status()
        .expect("qemu-img (qemu-utils) is needed");
    assert!(st.success());
    path
}

fn open_rw(path: &Path) -> image::Image {
    image::open(path, &image::OpenOptions::default()).unwrap()
}

#[test]
fn a_qcow2_disk_is_snapshotted_with_the_machine_and_reverted_on_restore() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "count", &counter_guest());
    let disk = qcow2(dir.path());
    let (state, memory) = snapshot_paths(dir.path());
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.disks = vec![Disk::from_image(Arc::new(open_rw(&disk)), false)];
    let m = x86_machine::start(cfg).unwrap();
    wait_for(
        &out,
        "n=0000000000000003
",
    );
    m.pause().unwrap();
    let at_pause = out.text();
    m.snapshot(&state, &memory).unwrap();
    m.stop(StopReason::Quit);
    m.wait().unwrap();
    drop(m);
    let list = std::process::Command::new("qemu-img")
        .args(["snapshot", "-l"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("virtkit-"),
        "{list:?}"
    );

    // The disk changes after the snapshot; the restore reverts it.
    {
        let img = open_rw(&disk);
        image::BlockBackend::write_at(&img, b"CHANGED!", 0).unwrap();
        image::BlockBackend::flush(&img).unwrap();
    }
    // A raw disk in its place is refused.
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let out2 = Capture::default();
    let mut cfg = config(&guest, &out2);
    cfg.disks = vec![Disk::new(Arc::new(open_rw(&raw)), false)];
    let e = x86_machine::restore(cfg, &state, &memory, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("must be the qcow2 image"), "{e}");

    let mut cfg = config(&guest, &out2);
    let img = Arc::new(open_rw(&disk));
    cfg.disks = vec![Disk::from_image(img.clone(), false)];
    let m2 = x86_machine::restore(cfg, &state, &memory, false).unwrap();
    assert_eq!(m2.wait().unwrap().reason, StopReason::Reset);
    assert_eq!(format!("{at_pause}{}", out2.text()), expected());
    let mut back = [0u8; 8];
    image::BlockBackend::read_at(img.as_ref(), &mut back, 0).unwrap();
    assert_eq!(back, [0u8; 8], "the write after the snapshot was reverted");
}

#[test]
fn a_two_vcpu_machine_is_restored_with_its_waiting_application_processor() {
    // The second vCPU waits for a SIPI inside KVM the whole time: the
    // pause must still take it out of KVM_RUN, and its wait-for-SIPI
    // state must come back.
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "count", &counter_guest());
    let (state, memory) = snapshot_paths(dir.path());
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.vcpus = 2;
    let m = x86_machine::start(cfg).unwrap();
    wait_for(&out, "n=0000000000000004\n");
    m.pause().unwrap();
    let at_pause = out.text();
    m.snapshot(&state, &memory).unwrap();
    m.stop(StopReason::Quit);
    assert_eq!(m.wait().unwrap().reason, StopReason::Quit);
    // Each vCPU's CPUID is saved (a restore sets it back as it was): leaf
    // 1's EBX holds the APIC id.
    let st = x86_machine::snapshot::read(&state).unwrap();
    for (i, v) in st.vcpus.iter().enumerate() {
        let word = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let leaf1 = v.cpuid.iter().find(|b| word(&b.0, 0) == 1).unwrap();
        assert_eq!(word(&leaf1.0, 16) >> 24, i as u32);
    }

    let out2 = Capture::default();
    let mut cfg = config(&guest, &out2);
    cfg.vcpus = 2;
    let m2 = x86_machine::restore(cfg, &state, &memory, false).unwrap();
    assert_eq!(m2.wait().unwrap().reason, StopReason::Reset);
    assert_eq!(format!("{at_pause}{}", out2.text()), expected());
}

/// The time limit counts running time only: a machine paused for longer
/// than its limit is still running after the resume, and times out once
/// it has run for the limit.
#[test]
fn the_time_limit_does_not_count_a_pause() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(
        dir.path(),
        "count",
        &common::counter_guest(1_000_000, 10_000_000),
    );
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.timeout = Some(Duration::from_secs(2));
    let m = Arc::new(x86_machine::start(cfg).unwrap());
    let waiter = {
        let m = m.clone();
        std::thread::spawn(move || m.wait().unwrap().reason)
    };
    wait_for(&out, "n=0000000000000001\n");
    m.pause().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(m.stopped(), None, "the pause counted against the limit");
    m.resume().unwrap();
    assert_eq!(waiter.join().unwrap(), StopReason::Timeout);
}
