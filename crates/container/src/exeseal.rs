//! CVE-2019-5736 defence: before it puts a process into a container, the
//! runtime re-executes itself from a copy of its binary that nobody can
//! write, so a container process that reaches the runtime's executable
//! through /proc/<pid>/exe (or an `#!/proc/self/exe` trick) and reopens it
//! for writing later gets an error instead of the host binary.
//!
//! Two ways, tried in order (like runc 1.2's `exeseal`):
//! 1. A read-only detached bind mount of the binary: `open_tree(CLONE)`
//!    then `mount_setattr(RDONLY)`, executed with `execveat`. No copy, a
//!    few microseconds. The mount is attached nowhere (no mount namespace
//!    sees it, nothing propagates), so the container cannot remount it
//!    read-write; opening the file for writing through it fails with
//!    EROFS. Needs CAP_SYS_ADMIN and Linux 5.12.
//! 2. Otherwise a sealed memfd copy (the kernel copies with sendfile), as
//!    runc 1.1 does: about 10 ms for this ~22 MB binary, which made `run`
//!    slower than runc before the mount way existed.

use crate::error::{Context, Error, Result};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

const MEMFD_NAME: &std::ffi::CStr = c"virtkit-runc";
const MEMFD_SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// Set in the environment of a re-execution from the read-only mount: a
/// read-only file system alone does not prove the mount is ours.
const MARK_ENV: &str = "_VIRTKIT_RUNC_SEALED";

/// `VIRTKIT_RUNC_SEAL=memfd` forces the copy (tests and bench/ctr.sh
/// measure both ways; both are safe).
pub const FORCE_ENV: &str = "VIRTKIT_RUNC_SEAL";

/// `open_tree(2)` flags, `mount_setattr(2)` attributes and argument
/// (linux/mount.h; not all in the libc crate).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// How the running binary is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    ReadOnlyMount,
    Memfd,
}

/// Is the running binary already an unwritable copy?
pub fn current() -> Option<Sealed> {
    let exe = File::open("/proc/self/exe").ok()?;
    // SAFETY: F_GET_SEALS on an fd we own; no pointers.
    let seals = unsafe { libc::fcntl(exe.as_raw_fd(), libc::F_GET_SEALS) };
    if seals >= 0 {
        // A memfd (or another sealable file): safe only if fully sealed.
        return (seals & MEMFD_SEALS == MEMFD_SEALS).then_some(Sealed::Memfd);
    }
    // Only our own re-execution sets the mark.
    std::env::var_os(MARK_ENV)?;
    read_only(&exe).then_some(Sealed::ReadOnlyMount)
}

/// Does `f` sit on a read-only mount?
fn read_only(f: &impl AsRawFd) -> bool {
    // SAFETY: a zeroed statvfs is a valid out-buffer for fstatvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out-pointer.
    let r = unsafe { libc::fstatvfs(f.as_raw_fd(), &mut st) };
    r == 0 && st.f_flag & libc::ST_RDONLY != 0
}

/// Re-exec from an unwritable copy unless already done. Returns Ok(())
/// only when already running from one; otherwise it does not return
/// unless every way failed.
pub fn ensure_sealed() -> Result<()> {
    if current().is_some() {
        // Not for hooks and the container: they are not the runtime.
        std::env::remove_var(MARK_ENV);
        return Ok(());
    }
    let force_memfd = std::env::var_os(FORCE_ENV).is_some_and(|v| v == "memfd");
    if !force_memfd {
        // Unprivileged, an old kernel, or a file system that refuses to
        // execute from the clone: the copy below still protects us.
        if let Ok(fd) = read_only_mount() {
            // Returns only if the exec failed.
            let _ = exec_fd(&fd, true);
        }
    }
    exec_fd(&memfd_copy()?, false)
}

/// A read-only, detached bind mount of our own binary (an O_PATH fd).
fn read_only_mount() -> Result<OwnedFd> {
    // SAFETY: a NUL-terminated path and flags; the kernel returns a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/proc/self/exe".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "open_tree(/proc/self/exe)".into());
    }
    // SAFETY: a new fd that nobody else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: our fd, an empty path with AT_EMPTY_PATH, and a pointer to a
    // mount_attr of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .ctx(|| "mount_setattr(read-only) on the runtime binary".into());
    }
    // Trust, but verify: only a read-only mount protects the host binary.
    if !read_only(&tree) {
        return Err(Error::Usage(
            "the runtime binary's mount did not become read-only".into(),
        ));
    }
    Ok(tree)
}

/// A sealed memfd with a copy of our binary.
fn memfd_copy() -> Result<OwnedFd> {
    // SAFETY: a NUL-terminated name; flags are constants.
    let fd = unsafe {
        libc::memfd_create(
            MEMFD_NAME.as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "memfd_create".into());
    }
    // SAFETY: a new fd that nobody else owns.
    let mut dst = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut src = File::open("/proc/self/exe").ctx(|| "opening /proc/self/exe".into())?;
    // std::io::copy uses copy_file_range/sendfile: the copy stays in the kernel.
    std::io::copy(&mut src, &mut dst).ctx(|| "copying the runtime into a memfd".into())?;
    // SAFETY: F_ADD_SEALS on our memfd; no pointers.
    if unsafe { libc::fcntl(dst.as_raw_fd(), libc::F_ADD_SEALS, MEMFD_SEALS) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "sealing the memfd".into());
    }
    Ok(dst.into())
}

fn cstring(b: Vec<u8>) -> CString {
    // Arguments and environment come from the kernel, NUL-free.
    CString::new(b).unwrap_or_default()
}

/// execveat(fd) with our arguments and environment (plus the mark).
fn exec_fd(fd: &OwnedFd, mark: bool) -> Result<()> {
    let args: Vec<CString> = std::env::args_os()
        .map(|a| cstring(a.as_bytes().to_vec()))
        .collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != MARK_ENV)
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            cstring(b)
        })
        .collect();
    if mark {
        env.push(cstring(format!("{MARK_ENV}=1").into_bytes()));
    }
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
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the
    // call; AT_EMPTY_PATH with an empty path executes the fd itself.
    unsafe {
        libc::execveat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr() as *const *mut libc::c_char,
            envp.as_ptr() as *const *mut libc::c_char,
            libc::AT_EMPTY_PATH,
        )
    };
    Err(Error::Io {
        what: "re-executing from the sealed copy of the runtime".into(),
        source: std::io::Error::last_os_error(),
    })
}
