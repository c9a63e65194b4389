//! The runtime's operations: create, start, run, exec, state, kill,
//! delete, pause, resume, ps, list.
//!
//! Process layout of `create`: the runtime forks an intermediate child that
//! joins namespaces given by path and unshares the new ones (writing
//! uid/gid maps is the runtime's job, through the sync socket); it then
//! forks the container's init (pid 1 of a new pid namespace), reports its
//! pid and exits. The runtime is a child subreaper, so init becomes its
//! child. Init mounts the rootfs, pivots, opens a terminal if asked, says
//! "ready", and blocks opening `exec.fifo` for writing until `start` opens
//! it for reading; then it drops privileges and execs the process.
//!
//! The stages live in their own files: `create` (the runtime's side of
//! setting a container up, and the intermediate child), `init` (the
//! container's init, from namespaces to execve), `ops` (start, run, state,
//! kill, delete, pause, ps, list) and `exec`. This file holds what they
//! share: namespace plans, process helpers, cleanup and state.

mod create;
mod exec;
mod init;
mod ops;

pub use create::create;
pub use exec::exec;
pub use ops::{
    container_spec, delete, kill_container, list, parse_signal, pause, pids, run, start, state,
};

use crate::cgroups::{self, Manager};
use crate::error::{spec_err, Context, Error, Result};
use crate::state::{self, Root, State, Status};
use crate::sync::{Chan, Msg};
use crate::{hooks, process, rootfs, seccomp, tty};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const OCI_VERSION: &str = "1.2.0";

/// Options of `create` and `run`.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: u32,
}

/// Options of `exec`.
#[derive(Debug, Clone)]
pub struct ExecOpts {
    pub id: String,
    pub process: Process,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: u32,
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        #[allow(unreachable_patterns)]
        _ => CloneFlags::empty(),
    }
}

fn ns_proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        #[allow(unreachable_patterns)]
        _ => "",
    }
}

/// Join order: user first (it grants the capabilities the others need),
/// mount last (after it, host paths are gone).
const JOIN_ORDER: [LinuxNamespaceType; 7] = [
    LinuxNamespaceType::User,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Mount,
];

struct NsPlan {
    /// (type, path) to setns into, in JOIN_ORDER.
    join: Vec<(LinuxNamespaceType, PathBuf)>,
    /// Namespaces to create, user excluded (created first, separately).
    new: CloneFlags,
    new_user: bool,
}

fn ns_plan(spec: &Spec) -> NsPlan {
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut join = Vec::new();
    let mut new = CloneFlags::empty();
    let mut new_user = false;
    for t in JOIN_ORDER {
        if let Some(ns) = list.iter().find(|n| n.typ() == t) {
            match ns.path() {
                Some(p) => join.push((t, p.clone())),
                None if t == LinuxNamespaceType::User => new_user = true,
                None => new |= ns_flag(t),
            }
        }
    }
    NsPlan {
        join,
        new,
        new_user,
    }
}

fn setns_path(t: LinuxNamespaceType, path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).ctx(|| format!("opening namespace {}", path.display()))?;
    nix::sched::setns(&f, ns_flag(t)).ctx(|| format!("joining namespace {}", path.display()))
}

/// The runtime-spec state object (stdin of hooks, output of `state`).
pub fn state_json(st: &State, status: Status) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": st.id,
        "pid": if status == Status::Stopped { 0 } else { st.pid },
        "status": status.as_str(),
        "bundle": st.bundle,
        "rootfs": st.rootfs,
        "created": st.created,
        "owner": st.owner,
        "annotations": st.annotations,
    })
}

/// Status of a container from its state: alive? fifo still there? frozen?
pub fn status(root: &Root, st: &State) -> Status {
    if state::process_start_time(st.pid) != Some(st.pid_start) {
        return Status::Stopped;
    }
    let dir = root.dir.join(&st.id);
    if dir.join(state::FIFO_FILE).exists() {
        return Status::Created;
    }
    if cgroups::open(st.cgroup.clone()).is_frozen() {
        return Status::Paused;
    }
    Status::Running
}

fn load_spec(root: &Root, id: &str) -> Result<Spec> {
    let dir = root.container_dir(id)?;
    let path = dir.join(state::CONFIG_FILE);
    let data = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
    crate::spec::parse(&data, &path)
}

/// Fork, running `child` in the child; it never returns there.
fn fork_child(child: impl FnOnce() -> Result<()>, chan: Option<&mut Chan>) -> Result<Pid> {
    // SAFETY: the runtime is single-threaded (no thread is ever spawned),
    // so the child may run ordinary Rust code after fork.
    match unsafe { nix::unistd::fork() }.ctx(|| "fork".into())? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let r = child();
            if let (Err(e), Some(c)) = (&r, chan) {
                let _ = c.send(&Msg::Err(e.to_string()));
            }
            // SAFETY: _exit skips atexit handlers and destructors that
            // belong to the parent's copy of the state.
            unsafe { libc::_exit(if r.is_ok() { 0 } else { 1 }) }
        }
    }
}

fn write_maps(pid: Pid, spec: &Spec) -> Result<()> {
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| spec_err("linux", "missing"))?;
    let fmt = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> String {
        m.iter()
            .flatten()
            .map(|e| format!("{} {} {}\n", e.container_id(), e.host_id(), e.size()))
            .collect()
    };
    std::fs::write(format!("/proc/{pid}/uid_map"), fmt(linux.uid_mappings()))
        .ctx(|| "linux.uidMappings: writing uid_map".into())?;
    std::fs::write(format!("/proc/{pid}/gid_map"), fmt(linux.gid_mappings()))
        .ctx(|| "linux.gidMappings: writing gid_map".into())
}

/// Become a child subreaper so the container process (a grandchild) is
/// re-parented to us when the intermediate child exits.
fn subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Signals the runtime forwards to a foreground container; blocked before
/// forking so none is lost, collected with sigwait.
fn forward_set() -> SigSet {
    let mut s = SigSet::all();
    s.remove(Signal::SIGKILL);
    s.remove(Signal::SIGSTOP);
    s.remove(Signal::SIGSEGV);
    s.remove(Signal::SIGBUS);
    s.remove(Signal::SIGILL);
    s.remove(Signal::SIGFPE);
    s
}

pub fn block_signals() -> Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forward_set()), None)
        .ctx(|| "sigprocmask".into())
}

/// Wait for `pid`, forwarding signals to it; its exit code (128+signal
/// when killed, like a shell).
pub fn wait_forwarding(pid: Pid) -> Result<i32> {
    let set = forward_set();
    loop {
        // Reap first: the child may already be gone.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(code),
                Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return Ok(128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        let sig = set.wait().ctx(|| "sigwait".into())?;
        if sig != Signal::SIGCHLD {
            let _ = kill(pid, sig);
        }
    }
}

/// What `create` leaves behind on failure, undone in reverse.
struct Cleanup<'a> {
    root: &'a Root,
    id: String,
    dir: Option<PathBuf>,
    cgroup: Option<Box<dyn Manager>>,
    pids: Vec<Pid>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for p in &self.pids {
            let _ = kill(*p, Signal::SIGKILL);
            let _ = waitpid(*p, None);
        }
        if let Some(cg) = &self.cgroup {
            // Only a cgroup we created is all ours; in another, the pids
            // above were everything of this container.
            if cg.config().owned {
                let _ = kill_cgroup(cg.as_ref());
            }
            let _ = cg.destroy();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
        let _ = (&self.root, &self.id);
    }
}

fn kill_cgroup(cg: &dyn Manager) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let frozen = cg.is_frozen();
    loop {
        let pids = cg.pids()?;
        if pids.is_empty() {
            return Ok(());
        }
        for p in &pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
        if frozen {
            // SIGKILL is only acted on once thawed.
            let _ = cg.freeze(false);
        }
        // Reap any that are our own children.
        while let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
            waitpid(None, Some(WaitPidFlag::WNOHANG))
        {}
        if Instant::now() > deadline {
            return Err(Error::Cgroup(format!("processes {pids:?} did not die")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGKILL the container's init (still the same process: its start time
/// is checked) and wait until it is gone. In a pid namespace of its own
/// the kernel then kills the rest of the container.
fn kill_init(st: &State) -> Result<()> {
    let pid = Pid::from_raw(st.pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while state::process_start_time(st.pid) == Some(st.pid_start) {
        let _ = kill(pid, Signal::SIGKILL);
        // A frozen init acts on SIGKILL only once thawed: thaw its cgroup
        // (freezing is the container's, whoever created the cgroup).
        let cg = cgroups::open(st.cgroup.clone());
        if cg.is_frozen() {
            let _ = cg.freeze(false);
        }
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        if Instant::now() > deadline {
            return Err(Error::Child(format!("init {pid} did not die")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// A setup step the container goes on without (as runc does), for the
/// caller to show (runc says these on its stderr).
fn warn(root: &Root, id: &str, what: &str) {
    root.warn(&format!("container {id}: {what}"));
}

/// An error reported by a child: already a `Child` error there, so say
/// "container process:" once.
fn child_err(msg: String) -> Error {
    match msg.strip_prefix("container process: ") {
        Some(rest) => Error::Child(rest.to_string()),
        None => Error::Child(msg),
    }
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    state::write_atomic(&abs, pid.to_string().as_bytes())
}
