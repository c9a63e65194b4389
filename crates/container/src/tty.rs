//! Terminals: the console-socket protocol (the pty master goes to the
//! caller over a unix socket with SCM_RIGHTS, as runc does).

use crate::error::{Context, Result};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Open a pty in the container (/dev/ptmx of its devpts), send the master
/// to `socket`, make the slave our controlling terminal and stdio.
pub fn setup_console(socket: RawFd, size: Option<(u16, u16)>) -> Result<()> {
    // SAFETY: plain libc calls on a fresh descriptor; results checked.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if master < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "opening /dev/ptmx".into());
    }
    // SAFETY: master is a new fd we own.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: master is a valid pty master fd; no pointers.
    if unsafe { libc::grantpt(master.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "grantpt on the pty".into());
    }
    // SAFETY: as above.
    if unsafe { libc::unlockpt(master.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "unlocking the pty".into());
    }
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: buf is writable for its length.
    if unsafe { libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len()) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "ptsname".into());
    }
    // SAFETY: ptsname_r NUL-terminated it.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_owned();
    // SAFETY: name is a valid C string.
    let slave = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| format!("opening {name:?}"));
    }
    // SAFETY: slave is a new fd we own.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some((h, w)) = size {
        let ws = libc::winsize {
            ws_row: h,
            ws_col: w,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let fds = [master.as_raw_fd()];
    let payload = name.to_bytes();
    sendmsg::<()>(
        socket,
        &[IoSlice::new(payload)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .ctx(|| "sending the pty master to the console socket".into())?;
    drop(master);
    // SAFETY: we are a session leader (setsid) without a terminal.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "TIOCSCTTY".into());
    }
    for target in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), target).ctx(|| "dup2 pty".into())?;
    }
    Ok(())
}

/// Receive a pty master sent with SCM_RIGHTS (the `run` foreground case,
/// where the runtime itself is the console socket's other end).
pub fn recv_fd(socket: RawFd) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ctx(|| "receiving the pty master".into())?;
    for c in msg.cmsgs().ctx(|| "control messages".into())? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(crate::error::Error::Child("no pty master received".into()))
}
