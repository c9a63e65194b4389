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
    format!(
        r#"
_start:
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    lea rax, [rip + timer]
    lea rdi, [rip + idt + 0x40 * 16]
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8e00
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    lidt [rip + idtr]
    # LAPIC on; its timer periodic on vector 0x40, every 3 ms (KVM's
    # LAPIC bus runs at 1 GHz), divide by 1.
    mov rbx, 0xfee00000
    mov dword ptr [rbx + 0xf0], 0x1ff
    mov dword ptr [rbx + 0x3e0], 0xb
    mov dword ptr [rbx + 0x320], 0x20040
    mov dword ptr [rbx + 0x380], 3000000
    mov r13, 0x1122334455667788
    xor r12d, r12d
    sti
1:  inc r12
    mov rax, r12
    lea rdi, [rip + s_n]
    call kv
    cmp r12, {COUNT}
    jae 2f
    hlt
    jmp 1b
2:  mov rax, r13
    lea rdi, [rip + s_r13]
    call kv
    call reset

timer:
    push rax
    lock inc qword ptr [rip + ticks]
    mov rax, 0xfee00000
    mov dword ptr [rax + 0xb0], 0
    pop rax
    iretq

.section .rodata
s_n: .asciz "n"
s_r13: .asciz "r13"
.data
.balign 16
idtr: .word 256 * 16 - 1
      .quad idt
.bss
.balign 4096
idt: .skip 4096
.balign 8
ticks: .skip 8
.text
"#
    )
}

/// What the guest prints from start to end.
fn expected() -> String {
    let mut s = String::new();
    for n in 1..=COUNT {
        s.push_str(&format!("n={n:016x}\n"));
    }
    s.push_str("r13=1122334455667788\n");
    s
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
    assert!(e.contains("virtio devices are [], the machine's [rng]"), "{e}");

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
    assert_eq!(x86_machine::snapshot::board_of(&rv).unwrap(), "riscv64-virt");
    assert_eq!(x86_machine::snapshot::board_of(&state).unwrap(), "x86_64-kvm");

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
    cfg.disks = vec![Disk {
        backend: Arc::new(img),
        read_only: false,
    }];
    let m = x86_machine::start(cfg).unwrap();
    m.pause().unwrap();
    let (state, memory) = snapshot_paths(dir.path());
    let e = m.snapshot(&state, &memory).unwrap_err().to_string();
    assert!(e.contains("disk 0 is read-write"), "{e}");
    assert!(!state.exists());
}
