//! The host terminal as the guest's console: raw mode while the machine
//! runs (restored on every exit path by a drop guard, and before SIGTERM,
//! SIGINT or SIGHUP ends the process), and a reader thread that feeds stdin
//! to the UART or the virtio console and recognises QEMU's escape sequence
//! Ctrl-A x (quit); Ctrl-A Ctrl-A sends a literal Ctrl-A.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::power::{Power, StopReason};
use crate::uart::Console;

const CTRL_A: u8 = 0x01;

/// Puts a terminal in raw mode; restores the saved settings when dropped,
/// and also when SIGTERM, SIGINT or SIGHUP ends the process meanwhile (see
/// [`SignalGuard`]).
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
    /// Dropped after the terminal is restored (fields drop in order).
    _signals: Option<SignalGuard>,
}

impl RawMode {
    /// Enters raw mode on `fd` if it is a terminal; `None` otherwise.
    ///
    /// Call it before the machine starts its threads: the signals that
    /// must restore the terminal are blocked in the calling thread and in
    /// every thread it starts afterwards (see [`SignalGuard`]).
    pub fn enter(fd: RawFd) -> Option<RawMode> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a terminal and `saved` is a valid termios.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // As QEMU's stdio backend: no input translation, echo, canonical
        // mode or signals (Ctrl-C goes to the guest); output processing
        // stays on.
        raw.c_iflag &= !(libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON);
        raw.c_oflag |= libc::OPOST;
        raw.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::IEXTEN | libc::ISIG);
        raw.c_cflag &= !(libc::CSIZE | libc::PARENB);
        raw.c_cflag |= libc::CS8;
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // The guard first, so that no signal can end the process between
        // entering raw mode and being able to leave it. Without the guard
        // (no thread could be started) raw mode still works, as before.
        let signals = SignalGuard::start(fd, saved);
        // SAFETY: valid fd and termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode {
            fd,
            saved,
            _signals: signals,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same fd.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

/// Signals whose default action ends the process and that may reach
/// virtkit while the terminal is raw: kill's default (SIGTERM), the
/// terminal or its emulator going away (SIGHUP), and SIGINT from kill (the
/// raw terminal itself sends Ctrl-C to the guest as a byte, not a signal).
const RESTORE_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// How often the signal thread looks whether raw mode ended.
const SIGNAL_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Restores the terminal when one of [`RESTORE_SIGNALS`] arrives, then
/// lets that signal end the process as it would have.
///
/// Nothing runs in signal-handler context: the signals are blocked (in the
/// thread that enters raw mode, and so in every thread it starts later,
/// since threads inherit the mask) and one dedicated thread takes them
/// with `sigtimedwait`, where calling `tcsetattr` is ordinary code. The
/// terminal settings reach that thread by value; no global state is
/// needed. The thread then puts the signal's default action back,
/// unblocks it in itself and raises it, so the process dies of the same
/// signal (a shell sees status 128 + n, as without raw mode).
///
/// Dropping the guard unblocks the signals in the owning thread again and
/// tells the signal thread to end (it notices within [`SIGNAL_POLL`]; it is
/// not joined, so leaving raw mode never waits for it). A signal it takes
/// after that still ends the process the same way; restoring the settings
/// once more is harmless.
struct SignalGuard {
    old_mask: libc::sigset_t,
    done: Arc<std::sync::atomic::AtomicBool>,
    /// The mask belongs to the thread that entered raw mode: the guard must
    /// be dropped there, so it is neither Send nor Sync.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl SignalGuard {
    fn start(fd: RawFd, saved: libc::termios) -> Option<SignalGuard> {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above, filled by pthread_sigmask.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigemptyset writes only into `set`.
        unsafe { libc::sigemptyset(&mut set) };
        for s in RESTORE_SIGNALS {
            // A signal the parent set to be ignored (nohup's SIGHUP, SIGINT
            // of a background job) stays ignored: blocking it would queue
            // it for the thread, which would then end the process.
            // SAFETY: struct sigaction is plain data; zero is a valid value.
            let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: queries (null new action) into a valid struct.
            let ignored = unsafe { libc::sigaction(s, std::ptr::null(), &mut act) } == 0
                && act.sa_sigaction == libc::SIG_IGN;
            if !ignored {
                // SAFETY: sigaddset writes only into `set`.
                unsafe { libc::sigaddset(&mut set, s) };
            }
        }
        // SAFETY: valid sets; changes only this thread's mask.
        if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask) } != 0 {
            return None;
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread_done = done.clone();
        let spawned = std::thread::Builder::new()
            .name("vk-signals".into())
            .spawn(move || signal_thread(set, fd, saved, thread_done));
        if spawned.is_err() {
            // SAFETY: puts back the mask saved above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
            return None;
        }
        Some(SignalGuard {
            old_mask,
            done,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        // A signal that arrived meanwhile and is still pending is taken by
        // the signal thread or, once unblocked here, acts as usual.
        // SAFETY: restores this thread's mask saved in `start`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut());
        }
    }
}

fn signal_thread(
    set: libc::sigset_t,
    fd: RawFd,
    saved: libc::termios,
    done: Arc<std::sync::atomic::AtomicBool>,
) {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: SIGNAL_POLL.as_nanos() as libc::c_long,
    };
    loop {
        // SAFETY: valid set and timeout; no siginfo wanted.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if sig > 0 {
            // SAFETY: restores the settings saved before raw mode on the
            // same terminal; then the signal's default action (terminate)
            // is put back, unblocked in this thread and raised at it, which
            // ends the process. sigemptyset/sigaddset write into a local.
            unsafe {
                libc::tcsetattr(fd, libc::TCSANOW, &saved);
                libc::signal(sig, libc::SIG_DFL);
                let mut one: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut one);
                libc::sigaddset(&mut one, sig);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
                libc::raise(sig);
            }
            // Not reached unless the signal was ignored after all.
            return;
        }
        // A timeout (EAGAIN) or EINTR: keep waiting while raw mode lasts.
        if done.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
    }
}

/// The Ctrl-A escape state machine, separate from I/O so it can be tested.
#[derive(Default)]
pub struct Escape {
    armed: bool,
}

impl Escape {
    /// Filters input: returns the bytes for the guest, and whether the user
    /// asked to quit.
    pub fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.armed {
                self.armed = false;
                match b {
                    b'x' | b'X' => return true,
                    CTRL_A => out.push(CTRL_A),
                    // Other escapes of QEMU (monitor, help) do not exist
                    // here; the sequence is swallowed as QEMU does.
                    _ => {}
                }
            } else if b == CTRL_A {
                self.armed = true;
            } else {
                out.push(b);
            }
        }
        false
    }
}

/// Where the terminal's keystrokes go: one device only (see
/// [`crate::machine::console_input_to_hvc`] for which).
pub enum InputSink {
    /// The UART's receive queue (shared with the SBI console).
    Uart(Arc<Console>),
    /// The virtio console's port (the guest's hvc0).
    Virtio(virtio::ConsoleHost),
}

impl InputSink {
    /// Hands `bytes` to the device, waiting while its buffer is full, but
    /// never past the machine's stop (so the reader thread can be joined).
    fn deliver(&self, bytes: &[u8], power: &Power) {
        match self {
            InputSink::Uart(c) => c.push_input(bytes),
            InputSink::Virtio(host) => {
                let mut rest = bytes;
                // try_send rather than send: send waits on a condition
                // variable that only a guest read or the device's drop
                // ends, and the device outlives this thread.
                while !rest.is_empty() && !power.is_stopped() {
                    let n = host.try_send(rest);
                    rest = &rest[n..];
                    if n == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            }
        }
    }
}

/// Starts the thread that copies `fd` (normally stdin) to the console. It
/// ends at end of file, on Ctrl-A x (stopping the machine with
/// [`StopReason::Quit`]) or when the machine stops.
pub fn spawn_input(fd: RawFd, sink: InputSink, power: Arc<Power>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("vk-stdin".into())
        .spawn(move || {
            let mut esc = Escape::default();
            let mut buf = [0u8; 256];
            let mut out = Vec::new();
            while !power.is_stopped() {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; a timeout lets the thread see
                // that the machine stopped.
                let r = unsafe { libc::poll(&mut pfd, 1, 100) };
                if r < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return;
                }
                if r == 0 {
                    continue;
                }
                // SAFETY: reads into a buffer we own, within its length.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    // End of input (or an error): the guest keeps running.
                    return;
                }
                out.clear();
                let quit = esc.filter(&buf[..n as usize], &mut out);
                if !out.is_empty() {
                    sink.deliver(&out, &power);
                }
                if quit {
                    power.stop(StopReason::Quit);
                    return;
                }
            }
        })
        .expect("spawning the terminal reader thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_is_literal() {
        let mut e = Escape::default();
        let mut out = Vec::new();
        assert!(!e.filter(b"ls\x01\x01z", &mut out));
        assert_eq!(out, b"ls\x01z");
        out.clear();
        assert!(!e.filter(b"a\x01", &mut out));
        assert!(e.filter(b"x", &mut out));
        assert_eq!(out, b"a");
    }

    #[test]
    fn reader_feeds_the_console_and_quits_on_escape() {
        let mut fds = [0; 2];
        // SAFETY: creating a pipe into a valid array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let console = Arc::new(Console::new(Box::new(std::io::sink())));
        let power = Power::new();
        let t = spawn_input(fds[0], InputSink::Uart(console.clone()), power.clone());
        // SAFETY: writing a static buffer to our pipe.
        unsafe { libc::write(fds[1], b"hi\x01x".as_ptr().cast(), 4) };
        assert_eq!(
            power.wait_timeout(std::time::Duration::from_secs(5)),
            Some(StopReason::Quit)
        );
        t.join().unwrap();
        assert_eq!(console.pop_input(), Some(b'h'));
        assert_eq!(console.pop_input(), Some(b'i'));
        assert_eq!(console.pop_input(), None);
        // SAFETY: closing the pipe we created.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
