//! The container's init: from the new namespaces to the execve of the
//! container's process.

use super::*;
use std::os::unix::fs::OpenOptionsExt;

pub(super) struct InitArgs<'a> {
    pub(super) id: &'a str,
    pub(super) spec: &'a Spec,
    pub(super) process: &'a Process,
    pub(super) rootfs: &'a Path,
    pub(super) bundle: &'a Path,
    pub(super) cgroup: &'a cgroups::Config,
    pub(super) no_pivot: bool,
    pub(super) seccomp: Option<&'a seccomp::Program>,
    pub(super) console: Option<i32>,
    pub(super) state_dir: i32,
    pub(super) preserve_fds: u32,
    pub(super) userns: bool,
    pub(super) new_uts: bool,
    pub(super) new_mnt: bool,
}

/// The container's init, from fork to execve.
pub(super) fn init_main(chan: &mut Chan, a: &InitArgs) -> Result<()> {
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    process::apply_limits(a.process)?;
    if a.new_uts {
        if let Some(h) = a.spec.hostname() {
            nix::unistd::sethostname(h).ctx(|| format!("hostname {h:?}"))?;
        }
        if let Some(d) = a.spec.domainname() {
            let c = std::ffi::CString::new(d.as_str())
                .map_err(|_| spec_err("domainname", "NUL byte"))?;
            // SAFETY: valid pointer and length.
            if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
                return Err(std::io::Error::last_os_error()).ctx(|| format!("domainname {d:?}"));
            }
        }
    }
    rootfs::prepare(&rootfs::Ctx {
        spec: a.spec,
        rootfs: a.rootfs,
        bundle: a.bundle,
        cgroup: a.cgroup,
        userns: a.userns,
    })?;
    chan.send(&Msg::Hooks)?;
    chan.expect_go()?;
    let hooks = a.spec.hooks().clone().unwrap_or_default();
    let state_for_hooks = |status: &str| {
        serde_json::to_vec(&serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": a.id,
            "status": status,
            "pid": std::process::id(),
            "bundle": a.bundle,
            "annotations": a.spec.annotations().clone().unwrap_or_default(),
        }))
        .unwrap_or_default()
    };
    hooks::run(
        "createContainer",
        hooks.create_container().as_ref(),
        &state_for_hooks("creating"),
    )?;
    if a.new_mnt {
        rootfs::enter(a.rootfs, a.no_pivot)?;
    } else {
        // No mount namespace: the container shares its caller's, as with
        // runc, which then chroots instead of pivoting (and never moves a
        // mount onto the caller's root, whatever --no-pivot says).
        rootfs::enter_chroot(a.rootfs)?;
    }
    // sysctls go in before readonlyPaths make /proc/sys read-only.
    for (k, v) in a
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default()
    {
        write_sysctl(&k, &v)?;
    }
    // Read-only and masked paths, a read-only root and rootfs propagation
    // are remounts in the container's mount namespace; without one runc
    // skips them (and refuses masked or read-only paths up front).
    if a.new_mnt {
        rootfs::finish(a.spec)?;
    }
    if let Some(sock) = a.console {
        let size = a
            .process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        tty::setup_console(sock, size)?;
        // SAFETY: the socket fd was inherited from the runtime and is ours.
        unsafe { libc::close(sock) };
    }
    nix::unistd::chdir(a.process.cwd())
        .ctx(|| format!("process.cwd {}", a.process.cwd().display()))?;
    let prep = process::prepare(a.process)?;
    // User, capabilities, no_new_privs: while the runtime still listens,
    // so that `create` reports a failure (runc does the same).
    for w in process::drop_privileges(a.process, a.seccomp)? {
        chan.send(&Msg::Warn(w))?;
    }
    chan.send(&Msg::Ready)?;
    // From here on nobody reads the sync socket: report on stderr, which
    // is the container's (the caller's terminal, or conmon's log). This is
    // the container's process speaking, not the library: no caller is
    // left to hand the error to, as with runc's init.
    let e = init_after_ready(a, &prep).unwrap_or_else(|e| e);
    eprintln!("virtkit-runc: container {}: {e}", a.id);
    Err(e)
}

/// Write one sysctl (its name checked by spec::check_sysctls) through
/// the container's /proc, refusing a /proc/sys that is not procfs: the
/// rootfs could put a file or a mount of its own there.
fn write_sysctl(key: &str, value: &str) -> Result<()> {
    use std::io::Write;
    let field = || format!("linux.sysctl.{key}");
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| Error::Child(format!("{}: opening {path}: {e}", field())))?;
    let fs = nix::sys::statfs::fstatfs(&f).ctx(|| format!("statfs {path}"))?;
    if fs.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(Error::Child(format!(
            "{}: {path} is not on procfs (is /proc mounted in the container?)",
            field()
        )));
    }
    f.write_all(value.as_bytes())
        .map_err(|e| Error::Child(format!("{}: writing {value:?} to {path}: {e}", field())))
}

/// Wait for `start`, run startContainer hooks (as the container's user,
/// like runc), exec. Returns the error that stopped it.
fn init_after_ready(a: &InitArgs, prep: &process::Prepared) -> std::result::Result<Error, Error> {
    let hooks = a.spec.hooks().clone().unwrap_or_default();
    let state_for_hooks = |status: &str| {
        serde_json::to_vec(&serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": a.id,
            "status": status,
            "pid": std::process::id(),
            "bundle": a.bundle,
            "annotations": a.spec.annotations().clone().unwrap_or_default(),
        }))
        .unwrap_or_default()
    };
    // Block until `start` opens the fifo for reading.
    let name = c"exec.fifo";
    // SAFETY: state_dir is a directory fd opened before pivot_root; openat
    // on it reaches the state directory whatever our root is now.
    let fd = unsafe { libc::openat(a.state_dir, name.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "opening exec.fifo".into());
    }
    // SAFETY: fd is new and ours.
    let fifo = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: closing a directory fd we opened (inherited via fork).
    unsafe { libc::close(a.state_dir) };
    hooks::run(
        "startContainer",
        hooks.start_container().as_ref(),
        &state_for_hooks("running"),
    )?;
    // One byte says "starting"; the fifo stays open (close-on-exec) so
    // `start` sees it close when the process is exec'd, and runs poststart
    // hooks only then.
    nix::unistd::write(&fifo, &[0]).ctx(|| "writing exec.fifo".into())?;
    Ok(process::exec(a.process, prep, a.seccomp, a.preserve_fds))
}
