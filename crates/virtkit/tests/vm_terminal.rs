//! The host terminal around `virtkit vm run`: raw mode while the guest
//! runs, and the saved settings back when a signal (SIGTERM, SIGHUP,
//! SIGINT) ends virtkit instead of the guest.
//!
//! virtkit runs on a pseudo-terminal made here; the test waits until its
//! settings turn raw, sends the signal, and compares the settings after
//! virtkit died with those from before. The guest (Debian's kernel, no
//! initrd) never gets far: no boot is waited for.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VIRTKIT: &str = env!("CARGO_BIN_EXE_virtkit");

fn settings(fd: RawFd) -> libc::termios {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is our open pty slave and `t` a valid termios.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t
}

/// The fields a raw-mode switch changes (termios has padding, so compare
/// field by field).
fn key(t: &libc::termios) -> (u32, u32, u32, u32, Vec<u8>) {
    (t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, t.c_cc.to_vec())
}

fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors; no name, default settings.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[test]
fn a_signal_restores_the_terminal_before_virtkit_dies() {
    let kernel = guest::default_riscv64().unwrap().kernel;
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        let (master, slave) = openpty();
        use std::os::fd::AsRawFd;
        let fd = slave.as_raw_fd();
        let before = key(&settings(fd));
        // The guest's output is read and thrown away, so a full pty buffer
        // never blocks virtkit.
        let mut reader = std::fs::File::from(master.try_clone().unwrap());
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let mut cmd = Command::new(VIRTKIT);
        cmd.args(["vm", "run", "--kernel"])
            .arg(&kernel)
            .args(["--append", "console=ttyS0", "--timeout", "120"])
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // virtkit as started from a terminal: the signal's default action.
        // A test run under nohup (or a job control shell's background
        // job) passes SIGHUP or SIGINT ignored, and virtkit rightly keeps
        // an ignored signal ignored.
        // SAFETY: signal() is async-signal-safe; the closure touches
        // nothing else between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                libc::signal(sig, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        while key(&settings(fd)) == before {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "virtkit never put the terminal in raw mode"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Let the guest get going (harts and device threads started).
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signals our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(sig),
            "virtkit should die of signal {sig}: {status:?}"
        );
        assert!(
            key(&settings(fd)) == before,
            "signal {sig}: the terminal was left in raw mode"
        );
        drop(master);
    }
}
