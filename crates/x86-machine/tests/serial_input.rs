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
