//! The container process: user, capabilities, rlimits, no_new_privs,
//! seccomp, environment, and the final execve. Shared by `create` (the
//! container's init) and `exec`.

use crate::error::{spec_err, Context, Error, Result};
use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{SigSet, SigmaskHow};
use oci_spec::runtime::{LinuxCapabilities, PosixRlimitType, Process};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything execve needs, resolved before the process drops privileges.
pub struct Prepared {
    pub path: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
}

fn c(s: &str, field: &str) -> Result<CString> {
    CString::new(s).map_err(|_| spec_err(field, format!("{s:?} contains a NUL byte")))
}

/// /etc/passwd of the container is read at most this far: it belongs to
/// the image, so it may be huge (or endless, through a symlink to a
/// device); real ones are kilobytes.
pub const MAX_PASSWD_BYTES: u64 = 4 << 20;

/// The home directory of `uid` in passwd(5) text, if listed.
pub fn home_from_passwd(data: &[u8], uid: u32) -> Option<String> {
    String::from_utf8_lossy(data).lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
    })
}

/// The container's /etc/passwd, read safely: resolved inside the current
/// root (symlinks cannot leave it, no /proc magic links), opened without
/// blocking (a FIFO there must not hang the runtime), a regular file only,
/// and at most MAX_PASSWD_BYTES. None when any of that fails.
fn read_container_passwd() -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let root = std::fs::File::open("/").ok()?;
    let fd = crate::rootfs::open_in_root(
        root.as_raw_fd(),
        Path::new("/etc/passwd"),
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
    )
    .ok()?;
    let f = std::fs::File::from(fd);
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut data = Vec::new();
    f.take(MAX_PASSWD_BYTES).read_to_end(&mut data).ok()?;
    Some(data)
}

/// The environment with HOME filled in (from the container's /etc/passwd,
/// as runc does) when the spec does not set it. Call inside the
/// container's root (after pivot_root, or setns into its mount namespace).
fn environment(p: &Process) -> Vec<String> {
    let mut env: Vec<String> = p.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = read_container_passwd()
            .and_then(|d| home_from_passwd(&d, p.user().uid()))
            .unwrap_or_else(|| "/".into());
        env.push(format!("HOME={home}"));
    }
    env
}

/// Find args[0] like execvp, in the container's filesystem (call after
/// pivot_root or setns into the container's mount namespace).
pub fn prepare(p: &Process) -> Result<Prepared> {
    let args = p
        .args()
        .as_ref()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| spec_err("process.args", "missing or empty"))?;
    let env = environment(p);
    let exe = &args[0];
    let path = if exe.contains('/') {
        PathBuf::from(exe)
    } else {
        let search = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        search
            .split(':')
            .map(|d| Path::new(d).join(exe))
            .find(|c| is_executable(c))
            .ok_or_else(|| {
                Error::Child(format!("exec: {exe:?}: executable file not found in $PATH"))
            })?
    };
    let cwd_rel = p.cwd();
    let full = if path.is_absolute() {
        path.clone()
    } else {
        cwd_rel.join(&path)
    };
    if !is_executable(&full) {
        return Err(Error::Child(format!(
            "exec: {}: no such executable file",
            path.display()
        )));
    }
    Ok(Prepared {
        path: CString::new(path.as_os_str().as_bytes())
            .map_err(|_| spec_err("process.args[0]", "contains a NUL byte"))?,
        argv: args
            .iter()
            .enumerate()
            .map(|(i, a)| c(a, &format!("process.args[{i}]")))
            .collect::<Result<_>>()?,
        env: env
            .iter()
            .enumerate()
            .map(|(i, e)| c(e, &format!("process.env[{i}]")))
            .collect::<Result<_>>()?,
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn rlimit_resource(t: PosixRlimitType) -> Option<Resource> {
    use PosixRlimitType as T;
    Some(match t {
        T::RlimitCpu => Resource::RLIMIT_CPU,
        T::RlimitFsize => Resource::RLIMIT_FSIZE,
        T::RlimitData => Resource::RLIMIT_DATA,
        T::RlimitStack => Resource::RLIMIT_STACK,
        T::RlimitCore => Resource::RLIMIT_CORE,
        T::RlimitRss => Resource::RLIMIT_RSS,
        T::RlimitNproc => Resource::RLIMIT_NPROC,
        T::RlimitNofile => Resource::RLIMIT_NOFILE,
        T::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        T::RlimitAs => Resource::RLIMIT_AS,
        T::RlimitLocks => Resource::RLIMIT_LOCKS,
        T::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        T::RlimitNice => Resource::RLIMIT_NICE,
        T::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        T::RlimitRttime => Resource::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// rlimits and oom_score_adj: done while still privileged.
pub fn apply_limits(p: &Process) -> Result<()> {
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        let res = rlimit_resource(r.typ())
            .ok_or_else(|| spec_err(format!("process.rlimits[{i}].type"), "unknown"))?;
        setrlimit(res, r.soft(), r.hard()).map_err(|e| {
            Error::Child(format!(
                "setting {:?} (process.rlimits[{i}]) to soft {} hard {}: {e} \
                 (the host's hard limit may be lower)",
                r.typ(),
                r.soft(),
                r.hard()
            ))
        })?;
    }
    if let Some(adj) = p.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .ctx(|| format!("process.oomScoreAdj {adj}"))?;
    }
    Ok(())
}

/// The capabilities of one set; names this kernel or this runtime does
/// not know are left out and reported in `unknown`, as runc does
/// ("ignoring unknown or unavailable capabilities").
fn cap_set(
    set: &Option<oci_spec::runtime::Capabilities>,
    unknown: &mut Vec<String>,
) -> CapsHashSet {
    let max = caps::runtime::thread_all_supported()
        .iter()
        .map(|c| c.index())
        .max()
        .unwrap_or(40);
    let mut out = CapsHashSet::new();
    for c in set.iter().flatten() {
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        match Capability::from_str(&name) {
            Ok(cap) if caps::all().contains(&cap) && cap.index() <= max => {
                out.insert(cap);
            }
            _ => {
                if !unknown.contains(&name) {
                    unknown.push(name);
                }
            }
        }
    }
    out
}

struct CapSets {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: CapsHashSet,
}

fn cap_sets(c: &LinuxCapabilities, warnings: &mut Vec<String>) -> CapSets {
    let mut unknown = Vec::new();
    let sets = CapSets {
        bounding: cap_set(c.bounding(), &mut unknown),
        effective: cap_set(c.effective(), &mut unknown),
        permitted: cap_set(c.permitted(), &mut unknown),
        inheritable: cap_set(c.inheritable(), &mut unknown),
        ambient: cap_set(c.ambient(), &mut unknown),
    };
    if !unknown.is_empty() {
        unknown.sort();
        warnings.push(format!(
            "process.capabilities: ignoring unknown or unavailable capabilities {}",
            unknown.join(", ")
        ));
    }
    sets
}

/// Switch to the spec's user and capability sets, set umask, cwd and
/// no_new_privs, and install seccomp now if it needs privileges (without
/// no_new_privs). Done while the runtime still listens, so that a failure
/// is reported by `create` (as runc reports it), not by a dead container.
///
/// Returns warnings: ambient capabilities the kernel refuses to raise
/// (an ambient capability must be both permitted and inheritable; `runc
/// spec` lists ambient ones without inheritable ones). runc raises what it
/// can and goes on; so do we, and the caller says what was left out.
pub fn drop_privileges(
    p: &Process,
    seccomp: Option<&crate::seccomp::Program>,
) -> Result<Vec<String>> {
    let nnp = p.no_new_privileges() == Some(true);
    let mut warnings = Vec::new();
    let sets = p
        .capabilities()
        .as_ref()
        .map(|c| cap_sets(c, &mut warnings));
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it
    // while we still have it (the profile must then allow what follows).
    if let (Some(prog), false) = (seccomp, nnp) {
        crate::seccomp::install(prog)?;
    }
    if let Some(s) = &sets {
        for cap in caps::all() {
            if !s.bounding.contains(&cap) {
                // EINVAL: the kernel does not know this capability.
                let _ = caps::drop(None, CapSet::Bounding, cap);
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let u = p.user();
    let gids: Vec<nix::unistd::Gid> = u
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    // setgroups is refused in a user namespace whose setgroups is "deny";
    // then only an empty request is fine to skip.
    if let Err(e) = nix::unistd::setgroups(&gids) {
        if !gids.is_empty() {
            return Err(e).ctx(|| {
                format!(
                    "setgroups {:?} (process.user.additionalGids)",
                    u.additional_gids()
                )
            });
        }
    }
    let gid = nix::unistd::Gid::from_raw(u.gid());
    nix::unistd::setresgid(gid, gid, gid)
        .ctx(|| format!("setresgid {} (process.user.gid)", u.gid()))?;
    let uid = nix::unistd::Uid::from_raw(u.uid());
    nix::unistd::setresuid(uid, uid, uid)
        .ctx(|| format!("setresuid {} (process.user.uid)", u.uid()))?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    if let Some(s) = &sets {
        let set = |which: CapSet, name: &str, v: &CapsHashSet| {
            caps::set(None, which, v).map_err(|e| {
                Error::Child(format!(
                    "applying the {name} capability set {}: {e}",
                    cap_names(v)
                ))
            })
        };
        // Order matters: each capset must keep effective within permitted,
        // and raising inheritable needs CAP_SETPCAP still effective.
        set(CapSet::Inheritable, "inheritable", &s.inheritable)?;
        let eff_now = caps::read(None, CapSet::Effective).unwrap_or_default();
        let eff_tmp: CapsHashSet = eff_now.intersection(&s.effective).copied().collect();
        set(CapSet::Effective, "effective", &eff_tmp)?;
        set(CapSet::Permitted, "permitted", &s.permitted)?;
        set(CapSet::Effective, "effective", &s.effective)?;
        let _ = caps::clear(None, CapSet::Ambient);
        let mut refused = Vec::new();
        for cap in &s.ambient {
            if caps::raise(None, CapSet::Ambient, *cap).is_err() {
                refused.push(*cap);
            }
        }
        if !refused.is_empty() {
            refused.sort_by_key(|c| c.index());
            let names: Vec<String> = refused.iter().map(|c| c.to_string()).collect();
            warnings.push(format!(
                "process.capabilities.ambient: {} not raised (an ambient capability must also be \
                 in the permitted and inheritable sets)",
                names.join(", ")
            ));
        }
    }
    if let Some(m) = u.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
    }
    nix::unistd::chdir(p.cwd()).ctx(|| format!("chdir to process.cwd {}", p.cwd().display()))?;
    if nnp {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "no_new_privs".into());
        }
    }
    Ok(warnings)
}

fn cap_names(v: &CapsHashSet) -> String {
    let mut v: Vec<&Capability> = v.iter().collect();
    v.sort_by_key(|c| c.index());
    let names: Vec<String> = v.iter().map(|c| c.to_string()).collect();
    format!("[{}]", names.join(" "))
}

/// The last steps after [`drop_privileges`]: seccomp (with no_new_privs,
/// as late as possible so the profile need not allow the runtime's own
/// calls), signals and descriptors for the new program, execve. Only
/// returns on failure.
pub fn exec(
    p: &Process,
    prep: &Prepared,
    seccomp: Option<&crate::seccomp::Program>,
    preserve_fds: u32,
) -> Error {
    if let Err(e) = exec_environment(p, seccomp, preserve_fds) {
        return e;
    }
    let argv: Vec<*const libc::c_char> = prep
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = prep
        .env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: argv and envp are NULL-terminated arrays of pointers to
    // NUL-terminated strings that live until execve returns (on failure).
    unsafe { libc::execve(prep.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Error::Child(format!(
        "exec {:?}: {}",
        prep.path,
        std::io::Error::last_os_error()
    ))
}

fn exec_environment(
    p: &Process,
    seccomp: Option<&crate::seccomp::Program>,
    preserve_fds: u32,
) -> Result<()> {
    if let (Some(prog), true) = (seccomp, p.no_new_privileges() == Some(true)) {
        crate::seccomp::install(prog)?;
    }
    prepare_exec_environment(preserve_fds)
}

/// The lowest descriptor not passed to the container: stdio and
/// `preserve_fds` more. A clear error when the count is absurd (it comes
/// from the command line; 3 + u32::MAX would wrap).
pub fn first_unpreserved_fd(preserve_fds: u32) -> Result<i32> {
    // Linux caps a process's descriptors at fs.nr_open (at most 2^30).
    const MAX_PRESERVE_FDS: u32 = 1 << 30;
    if preserve_fds > MAX_PRESERVE_FDS {
        return Err(Error::Usage(format!(
            "--preserve-fds {preserve_fds}: more descriptors than a process can have (at most {MAX_PRESERVE_FDS})"
        )));
    }
    3i32.checked_add_unsigned(preserve_fds)
        .ok_or_else(|| Error::Usage(format!("--preserve-fds {preserve_fds}: too large")))
}

/// Signals back to default and unblocked (Rust ignores SIGPIPE; the
/// runtime blocks signals it forwards), and every descriptor above the
/// preserved ones close-on-exec, so no host fd reaches the container.
pub fn prepare_exec_environment(preserve_fds: u32) -> Result<()> {
    let first = first_unpreserved_fd(preserve_fds)?;
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: resetting a disposition to SIG_DFL is always sound.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on fds.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    for fd in 3..first {
        // SAFETY: clearing FD_CLOEXEC on descriptors the caller asked to pass.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_comes_from_the_matching_passwd_line() {
        let p = b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\nshort:x:7\n";
        assert_eq!(home_from_passwd(p, 0).as_deref(), Some("/root"));
        assert_eq!(home_from_passwd(p, 1000).as_deref(), Some("/home/user"));
        assert_eq!(home_from_passwd(p, 7), None);
        assert_eq!(
            home_from_passwd(b"\xff\xfe:x:5:5::/h\xff:/bin/sh", 5).as_deref(),
            Some("/h\u{fffd}")
        );
    }

    #[test]
    fn preserve_fds_never_overflows() {
        assert_eq!(first_unpreserved_fd(0).unwrap(), 3);
        assert_eq!(first_unpreserved_fd(2).unwrap(), 5);
        let e = first_unpreserved_fd(u32::MAX).unwrap_err().to_string();
        assert!(e.contains("--preserve-fds 4294967295"), "{e}");
        assert!(first_unpreserved_fd((1 << 30) + 1).is_err());
    }
}
