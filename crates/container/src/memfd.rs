//! CVE-2019-5736 defence: the runtime re-executes itself from a sealed
//! memfd copy before it enters a container, so a process in the container
//! that reaches the runtime's executable through /proc/<pid>/exe (or an
//! `#!/proc/self/exe` trick) finds an immutable anonymous copy, never the
//! host binary.

use crate::error::{Context, Error, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

const NAME: &[u8] = b"virtkit-runc\0";

/// Are we already running from the sealed copy?
pub fn is_cloned() -> bool {
    std::fs::read_link("/proc/self/exe")
        .is_ok_and(|p| p.as_os_str().as_bytes().starts_with(b"/memfd:virtkit-runc"))
}

/// Re-exec from a sealed memfd copy unless already done. Returns only on
/// failure, or Ok(()) when already cloned.
pub fn ensure_cloned() -> Result<()> {
    if is_cloned() {
        return Ok(());
    }
    // SAFETY: NAME is NUL-terminated; flags are constants.
    let fd = unsafe {
        libc::memfd_create(
            NAME.as_ptr() as *const libc::c_char,
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "memfd_create".into());
    }
    // SAFETY: fd is new and ours.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut src = std::fs::File::open("/proc/self/exe").ctx(|| "opening /proc/self/exe".into())?;
    let mut dst = std::fs::File::from(memfd);
    // std::io::copy uses copy_file_range/sendfile: the copy stays in the kernel.
    std::io::copy(&mut src, &mut dst).ctx(|| "copying the runtime into a memfd".into())?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on our memfd.
    if unsafe { libc::fcntl(dst.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "sealing the memfd".into());
    }
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            CString::new(b).unwrap_or_default()
        })
        .collect();
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: NULL-terminated arrays of valid C strings; AT_EMPTY_PATH with
    // an empty path executes the fd itself.
    unsafe {
        libc::execveat(
            dst.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr() as *const *mut libc::c_char,
            envp.as_ptr() as *const *mut libc::c_char,
            libc::AT_EMPTY_PATH,
        )
    };
    Err(Error::Io {
        what: "re-executing from the sealed memfd".into(),
        source: std::io::Error::last_os_error(),
    })
}
