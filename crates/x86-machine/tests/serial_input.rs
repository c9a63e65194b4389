//! Host input reaches the guest's 16550 (receive buffer, line status), and
//! Ctrl-A x on the input stops the machine, as on the riscv board.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use common::*;
use x86_machine::StopReason;

/// Echoes received bytes as "got=<c>" lines until it receives '!', then
/// resets. Polls the line status register's data-ready bit.
const ECHO_GUEST: &str = r#"
_start:
    lea rdi, [rip + s_ready]
    call puts
1:  mov dx, 0x3fd
    in al, dx
    test al, 1
    jz 1b
    mov dx, 0x3f8
    in al, dx
    cmp al, '!'
    je 2f
    mov bl, al
    lea rdi, [rip + s_got]
    call puts
    mov al, bl
    call putc
    mov al, 10
    call putc
    jmp 1b
2:  call reset
s_ready: .asciz "ready\n"
s_got: .asciz "got="
"#;

fn pipe() -> (OwnedFd, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: fds is an array of two ints for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and owned by nothing else.
    unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn input_reaches_the_serial_port() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "echo", ECHO_GUEST);
    let (r, mut w) = pipe();
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.input = Some(r.as_raw_fd());
    // Ctrl-A Ctrl-A is a literal Ctrl-A.
    w.write_all(b"ab\x01\x01c!").unwrap();
    let outcome = run(cfg);
    let text = out.text();
    assert_eq!(outcome.reason, StopReason::Reset, "{text}");
    assert_eq!(text, "ready\ngot=a\ngot=b\ngot=\x01\ngot=c\n");
    drop(r);
}

#[test]
fn ctrl_a_x_quits() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "echo", ECHO_GUEST);
    let (r, mut w) = pipe();
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.input = Some(r.as_raw_fd());
    w.write_all(b"z\x01x").unwrap();
    let outcome = run(cfg);
    assert_eq!(outcome.reason, StopReason::Quit, "{}", out.text());
    drop(r);
}

fn wait_for(out: &Capture, what: &str) {
    let start = std::time::Instant::now();
    while !out.text().contains(what) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no {what:?} in {}",
            out.text()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// "got=<c>\n" for each byte of `bytes`.
fn echoed(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| format!("got={}\n", b as char))
        .collect()
}

/// Input typed while the machine is paused stays out of the guest's
/// 16550 until the resume, all of it (more than the FIFO's 64 bytes), and
/// a snapshot taken meanwhile keeps it for the restored machine.
#[test]
fn input_typed_while_paused_waits_for_the_resume_and_is_snapshotted() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "echo", ECHO_GUEST);
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));
    let (r, mut w) = pipe();
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.input = Some(r.as_raw_fd());
    let m = x86_machine::start(cfg).unwrap();
    wait_for(&out, "ready\n");
    m.pause().unwrap();
    let typed: Vec<u8> = (0..100u8).map(|i| b'0' + i % 75).collect();
    w.write_all(&typed).unwrap();
    let start = std::time::Instant::now();
    while m.serial_input_queued() < typed.len() {
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    m.snapshot(&state, &memory).unwrap();
    assert_eq!(out.text(), "ready\n", "nothing reached the paused guest");
    m.resume().unwrap();
    wait_for(&out, &echoed(&typed));
    w.write_all(b"!").unwrap();
    assert_eq!(m.wait().unwrap().reason, StopReason::Reset);
    assert_eq!(out.text(), format!("ready\n{}", echoed(&typed)));

    // The snapshot holds what was typed while it was paused.
    let st = x86_machine::snapshot::read(&state).unwrap();
    assert_eq!(st.serial_input, typed);
    let (r2, mut w2) = pipe();
    let out2 = Capture::default();
    let mut cfg = config(&guest, &out2);
    cfg.input = Some(r2.as_raw_fd());
    w2.write_all(b"z!").unwrap();
    let m2 = x86_machine::restore(cfg, &state, &memory, false).unwrap();
    assert_eq!(m2.wait().unwrap().reason, StopReason::Reset);
    assert_eq!(out2.text(), format!("{}got=z\n", echoed(&typed)));
    drop((r, r2));
}
