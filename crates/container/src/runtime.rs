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

/// `create`: set the container up and leave its init waiting for `start`.
pub fn create(root: &Root, o: &CreateOpts) -> Result<State> {
    // Refused before anything exists, not in the init much later.
    process::first_unpreserved_fd(o.preserve_fds)?;
    root.container_dir(&o.id)?;
    let bundle =
        std::fs::canonicalize(&o.bundle).ctx(|| format!("bundle {}", o.bundle.display()))?;
    let spec = crate::spec::load(&bundle)?;
    let rootfs = crate::spec::rootfs_path(&spec, &bundle)?;
    let proc_spec = spec
        .process()
        .clone()
        .ok_or_else(|| spec_err("process", "missing (needed to create a container)"))?;
    let linux = spec.linux().clone().unwrap_or_default();
    // What the config asks of the host (sysctls, the cgroup) is checked
    // before any of the container exists.
    crate::spec::check_sysctls(&spec, &crate::spec::is_current_namespace)?;
    let mut cg = cgroups::new_manager(linux.cgroups_path().as_deref(), &o.id)?;
    let plan = ns_plan(&spec);
    let has_uts = plan.new.contains(CloneFlags::CLONE_NEWUTS)
        || plan.join.iter().any(|(t, _)| *t == LinuxNamespaceType::Uts);
    if !has_uts && spec.hostname().is_some() {
        return Err(spec_err(
            "hostname",
            "set, but the container has no uts namespace",
        ));
    }
    subreaper();
    let dir = root.create_dir(&o.id)?;
    let mut cleanup = Cleanup {
        root,
        id: o.id.clone(),
        dir: Some(dir.clone()),
        cgroup: None,
        pids: Vec::new(),
    };
    let seccomp = linux.seccomp().as_ref().map(seccomp::compile).transpose()?;
    let terminal = proc_spec.terminal() == Some(true);
    let console = match (&o.console_socket, terminal) {
        (Some(p), true) => Some(
            UnixStream::connect(p)
                .ctx(|| format!("connecting to console socket {}", p.display()))?,
        ),
        (None, true) => {
            return Err(Error::Usage(
                "process.terminal is true: --console-socket is required".into(),
            ))
        }
        (Some(_), false) => {
            return Err(Error::Usage(
                "--console-socket given but process.terminal is false".into(),
            ))
        }
        (None, false) => None,
    };
    nix::unistd::mkfifo(
        &dir.join(state::FIFO_FILE),
        nix::sys::stat::Mode::from_bits_truncate(0o622),
    )
    .ctx(|| "creating exec.fifo".into())?;
    // Writable by the container's root even when it is an unprivileged
    // host uid (user namespaces); the umask cut the mode above.
    std::fs::set_permissions(
        dir.join(state::FIFO_FILE),
        std::os::unix::fs::PermissionsExt::from_mode(0o622),
    )
    .ctx(|| "chmod exec.fifo".into())?;
    let dirfd = std::fs::File::open(&dir).ctx(|| format!("opening {}", dir.display()))?;

    cg.create()?;
    let cg_cfg = cg.config();
    cleanup.cgroup = Some(cgroups::open(cg_cfg.clone()));
    if let Some(res) = linux.resources() {
        cg.set(res)?;
    }

    let created = state::now_rfc3339();
    let mut st = State {
        id: o.id.clone(),
        pid: 0,
        pid_start: 0,
        bundle: bundle.clone(),
        rootfs: rootfs.clone(),
        created,
        annotations: spec.annotations().clone().unwrap_or_default(),
        cgroup: cg_cfg.clone(),
        owner: String::new(),
    };

    let (ps, cs) = UnixStream::pair().ctx(|| "socketpair".into())?;
    let mut parent = Chan::new(ps)?;
    let mut child_chan = Chan::new(cs)?;
    let init = InitArgs {
        id: &o.id,
        spec: &spec,
        process: &proc_spec,
        rootfs: &rootfs,
        bundle: &bundle,
        cgroup: &cg_cfg,
        no_pivot: o.no_pivot,
        seccomp: seccomp.as_ref(),
        console: console.as_ref().map(|c| c.as_raw_fd()),
        state_dir: dirfd.as_raw_fd(),
        preserve_fds: o.preserve_fds,
        userns: plan.new_user
            || plan
                .join
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::User),
        new_uts: has_uts,
        new_mnt: plan.new.contains(CloneFlags::CLONE_NEWNS)
            || plan
                .join
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::Mount),
    };
    let intermediate = fork_child(
        || {
            stage_intermediate(&mut child_chan, cg.as_ref(), &plan, |chan| {
                init_main(chan, &init)
            })
        },
        None,
    )?;
    drop(child_chan);
    cleanup.pids.push(intermediate);
    parent.send(&Msg::Go)?;
    let hooks = spec.hooks().clone().unwrap_or_default();
    loop {
        match parent.recv()? {
            Some(Msg::Maps) => {
                write_maps(intermediate, &spec)?;
                parent.send(&Msg::Go)?;
            }
            Some(Msg::Pid(p)) => {
                let pid = Pid::from_raw(p);
                cleanup.pids.insert(0, pid);
                let _ = waitpid(intermediate, None);
                cleanup.pids.retain(|x| *x != intermediate);
                st.pid = p;
                st.pid_start = state::process_start_time(p).unwrap_or(0);
            }
            Some(Msg::Hooks) => {
                let sj = serde_json::to_vec(&state_json(&st, Status::Creating)).unwrap_or_default();
                #[allow(deprecated)]
                hooks::run("prestart", hooks.prestart().as_ref(), &sj)?;
                hooks::run("createRuntime", hooks.create_runtime().as_ref(), &sj)?;
                parent.send(&Msg::Go)?;
            }
            Some(Msg::Ready) => break,
            Some(Msg::Warn(w)) => warn(&o.id, &w),
            Some(Msg::Err(e)) => return Err(child_err(e)),
            Some(Msg::Go) => return Err(Error::Child("unexpected message".into())),
            None => {
                return Err(Error::Child(
                    "the container process exited during setup".into(),
                ))
            }
        }
    }
    drop(console);
    let spec_json = serde_json::to_vec(&spec).unwrap_or_default();
    state::write_atomic(&dir.join(state::CONFIG_FILE), &spec_json)?;
    root.save(&st)?;
    if let Some(pf) = &o.pid_file {
        write_pid_file(pf, st.pid)?;
    }
    // Success: keep everything.
    cleanup.dir = None;
    cleanup.cgroup = None;
    cleanup.pids.clear();
    Ok(st)
}

/// A setup step the container goes on without (as runc does), said on
/// the runtime's stderr, which is where runc's warnings go too.
fn warn(id: &str, what: &str) {
    eprintln!("virtkit-runc: warning: container {id}: {what}");
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

/// The intermediate child: join and create namespaces, fork the container
/// process, report its pid.
fn stage_intermediate(
    chan: &mut Chan,
    cg: &dyn Manager,
    plan: &NsPlan,
    container: impl FnOnce(&mut Chan) -> Result<()>,
) -> Result<()> {
    let r = (|| -> Result<()> {
        chan.expect_go()?;
        // Into the cgroup before the container's init is forked (it
        // inherits it), and before a joined mount namespace hides the
        // host's cgroup file system.
        cg.add_self()?;
        for (t, p) in &plan.join {
            setns_path(*t, p)?;
        }
        if plan.new_user {
            nix::sched::unshare(CloneFlags::CLONE_NEWUSER).ctx(|| "unshare(user)".into())?;
            chan.send(&Msg::Maps)?;
            chan.expect_go()?;
            // Become root of the new namespace (if 0 is mapped).
            let _ = nix::unistd::setresgid(0.into(), 0.into(), 0.into());
            let _ = nix::unistd::setresuid(0.into(), 0.into(), 0.into());
        }
        nix::sched::unshare(plan.new).ctx(|| format!("unshare({:?})", plan.new))?;
        Ok(())
    })();
    if let Err(e) = r {
        let _ = chan.send(&Msg::Err(e.to_string()));
        return Err(e);
    }
    // SAFETY: single-threaded, as in fork_child.
    match unsafe { nix::unistd::fork() }.ctx(|| "fork".into())? {
        ForkResult::Parent { child } => {
            chan.send(&Msg::Pid(child.as_raw()))?;
            Ok(())
        }
        ForkResult::Child => {
            let r = container(chan);
            if let Err(e) = &r {
                let _ = chan.send(&Msg::Err(e.to_string()));
            }
            // SAFETY: see fork_child. A failed init exits 1, as runc's
            // does (127 would read as "command not found").
            unsafe { libc::_exit(if r.is_ok() { 0 } else { 1 }) }
        }
    }
}

struct InitArgs<'a> {
    id: &'a str,
    spec: &'a Spec,
    process: &'a Process,
    rootfs: &'a Path,
    bundle: &'a Path,
    cgroup: &'a cgroups::Config,
    no_pivot: bool,
    seccomp: Option<&'a seccomp::Program>,
    console: Option<i32>,
    state_dir: i32,
    preserve_fds: u32,
    userns: bool,
    new_uts: bool,
    new_mnt: bool,
}

/// The container's init, from fork to execve.
fn init_main(chan: &mut Chan, a: &InitArgs) -> Result<()> {
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
    // is the container's (the caller's terminal, or conmon's log).
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

/// `start`: let a created container's init exec its process.
pub fn start(root: &Root, id: &str) -> Result<()> {
    let st = root.load(id)?;
    let s = status(root, &st);
    if s != Status::Created {
        return Err(Error::BadState {
            id: id.into(),
            status: s.to_string(),
            what: "only a created container can be started",
        });
    }
    let dir = root.container_dir(id)?;
    let fifo_path = dir.join(state::FIFO_FILE);
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo_path)
        .ctx(|| format!("opening {}", fifo_path.display()))?;
    let mut started = false;
    loop {
        let mut pfd = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&fifo),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16))
            .or_else(|e| {
                if e == nix::Error::EINTR {
                    Ok(0)
                } else {
                    Err(e)
                }
            })
            .ctx(|| "poll exec.fifo".into())?;
        if n > 0 {
            let mut b = [0u8; 1];
            let r = match nix::unistd::read(fifo.as_raw_fd(), &mut b) {
                Err(nix::Error::EAGAIN) => continue,
                r => r.ctx(|| "reading exec.fifo".into())?,
            };
            if r == 0 && !started {
                return Err(Error::Child(
                    "the container's init exited before starting its process".into(),
                ));
            }
            if r == 0 {
                // Closed by execve (or the process died right after).
                break;
            }
            started = true;
            continue;
        }
        if state::process_start_time(st.pid) != Some(st.pid_start) {
            if started {
                break;
            }
            return Err(Error::Child("the container's init is gone".into()));
        }
    }
    let _ = std::fs::remove_file(&fifo_path);
    let spec = load_spec(root, id)?;
    if let Some(h) = spec.hooks() {
        let sj = serde_json::to_vec(&state_json(&st, Status::Running)).unwrap_or_default();
        // A failing poststart hook is reported but the container runs on
        // (runtime-spec: "the runtime MUST log a warning").
        if let Err(e) = hooks::run("poststart", h.poststart().as_ref(), &sj) {
            eprintln!("warning: {e}");
        }
    }
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt;

/// `run`: create + start, then (unless detached) wait, forwarding signals,
/// delete (unless `keep`: it stays, stopped, until `delete`), and return
/// the process's exit code.
pub fn run(root: &Root, o: &CreateOpts, detach: bool, keep: bool) -> Result<i32> {
    if !detach {
        block_signals()?;
    }
    let st = create(root, o)?;
    if let Err(e) = start(root, &o.id) {
        let _ = delete(root, &o.id, true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let code = wait_forwarding(Pid::from_raw(st.pid))?;
    let cg = cgroups::open(st.cgroup.clone());
    if cg.oom_kills() > 0 {
        eprintln!(
            "virtkit: container {} was killed by the OOM killer (memory limit reached)",
            o.id
        );
    }
    if !keep {
        delete(root, &o.id, true)?;
    }
    Ok(code)
}

/// `state`: the runtime-spec state JSON.
pub fn state(root: &Root, id: &str) -> Result<serde_json::Value> {
    let st = root.load(id)?;
    let s = status(root, &st);
    Ok(state_json(&st, s))
}

/// Parse a signal given as a number, `KILL` or `SIGKILL`.
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| Error::Usage(format!("unknown signal {s:?}")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| Error::Usage(format!("unknown signal {s:?}")))
}

/// `kill`.
pub fn kill_container(root: &Root, id: &str, sig: Signal, all: bool) -> Result<()> {
    let st = root.load(id)?;
    let s = status(root, &st);
    if s == Status::Stopped {
        return Err(Error::BadState {
            id: id.into(),
            status: s.to_string(),
            what: "cannot signal a stopped container",
        });
    }
    // Only a cgroup this runtime created holds nothing but the container;
    // in one that existed before, `--all` reaches the init alone.
    if all && st.cgroup.owned {
        let cg = cgroups::open(st.cgroup.clone());
        for p in cg.pids()? {
            let _ = kill(Pid::from_raw(p), sig);
        }
        if s == Status::Paused && sig == Signal::SIGKILL {
            cg.freeze(false)?;
        }
        return Ok(());
    }
    kill(Pid::from_raw(st.pid), sig).ctx(|| format!("kill {} {sig}", st.pid))
}

/// `delete`.
pub fn delete(root: &Root, id: &str, force: bool) -> Result<()> {
    let st = root.load(id)?;
    let s = status(root, &st);
    let cg = cgroups::open(st.cgroup.clone());
    match s {
        Status::Stopped => {}
        // A created container's init only waits on the fifo: delete kills it.
        Status::Created => {
            let _ = kill(Pid::from_raw(st.pid), Signal::SIGKILL);
        }
        _ if !force => {
            return Err(Error::BadState {
                id: id.into(),
                status: s.to_string(),
                what: "stop it first or use --force",
            })
        }
        _ => {}
    }
    if st.cgroup.owned {
        kill_cgroup(cg.as_ref())?;
    } else if s != Status::Stopped {
        // A cgroup that existed before this container may hold processes
        // that are not its own: only the init is ours to kill.
        kill_init(&st)?;
    }
    // Our own child (run) or someone else's: reap if ours.
    let _ = waitpid(Pid::from_raw(st.pid), Some(WaitPidFlag::WNOHANG));
    if let Ok(spec) = load_spec(root, id) {
        if let Some(h) = spec.hooks() {
            let sj = serde_json::to_vec(&state_json(&st, Status::Stopped)).unwrap_or_default();
            if let Err(e) = hooks::run("poststop", h.poststop().as_ref(), &sj) {
                eprintln!("warning: {e}");
            }
        }
    }
    cg.destroy()?;
    let dir = root.container_dir(id)?;
    std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))
}

/// `pause` / `resume`.
pub fn pause(root: &Root, id: &str, pause: bool) -> Result<()> {
    let st = root.load(id)?;
    let s = status(root, &st);
    let ok = if pause {
        s == Status::Running
    } else {
        s == Status::Paused
    };
    if !ok {
        return Err(Error::BadState {
            id: id.into(),
            status: s.to_string(),
            what: if pause {
                "only a running container can be paused"
            } else {
                "only a paused container can be resumed"
            },
        });
    }
    cgroups::open(st.cgroup).freeze(pause)
}

/// `ps`: host pids of the container's processes.
pub fn pids(root: &Root, id: &str) -> Result<Vec<i32>> {
    let st = root.load(id)?;
    cgroups::open(st.cgroup).pids()
}

/// `list`: (state, status) of every container.
pub fn list(root: &Root) -> Result<Vec<(State, Status)>> {
    let mut out = Vec::new();
    for id in root.list()? {
        if let Ok(st) = root.load(&id) {
            let s = status(root, &st);
            out.push((st, s));
        }
    }
    Ok(out)
}

/// `exec`: run another process in a container's namespaces and cgroup.
/// Returns the exit code (0 right away with `detach`).
pub fn exec(root: &Root, o: &ExecOpts) -> Result<i32> {
    process::first_unpreserved_fd(o.preserve_fds)?;
    let st = root.load(&o.id)?;
    let s = status(root, &st);
    if !matches!(s, Status::Running | Status::Created) {
        return Err(Error::BadState {
            id: o.id.clone(),
            status: s.to_string(),
            what: "can only exec in a created or running container",
        });
    }
    let spec = load_spec(root, &o.id)?;
    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(seccomp::compile)
        .transpose()?;
    let terminal = o.process.terminal() == Some(true);
    let console = match (&o.console_socket, terminal) {
        (Some(p), true) => Some(
            UnixStream::connect(p)
                .ctx(|| format!("connecting to console socket {}", p.display()))?,
        ),
        (None, true) => return Err(Error::Usage("--tty needs --console-socket".into())),
        _ => None,
    };
    let plan = ns_plan(&spec);
    let mut join: Vec<(LinuxNamespaceType, PathBuf)> = Vec::new();
    for t in JOIN_ORDER {
        let in_spec = plan.join.iter().any(|(x, _)| *x == t)
            || (t == LinuxNamespaceType::User && plan.new_user)
            || plan.new.contains(ns_flag(t));
        if in_spec {
            join.push((
                t,
                PathBuf::from(format!("/proc/{}/ns/{}", st.pid, ns_proc_name(t))),
            ));
        }
    }
    // Open them all now: the init could exit while we join.
    let ns_files: Vec<(LinuxNamespaceType, std::fs::File)> = join
        .iter()
        .map(|(t, p)| {
            Ok((
                *t,
                std::fs::File::open(p).ctx(|| format!("opening {}", p.display()))?,
            ))
        })
        .collect::<Result<_>>()?;
    // Without a mount namespace the container is its init's root (a
    // chroot in the caller's mounts): the process goes there too.
    let chroot_dir = if join.iter().any(|(t, _)| *t == LinuxNamespaceType::Mount) {
        None
    } else {
        let p = format!("/proc/{}/root", st.pid);
        Some(std::fs::File::open(&p).ctx(|| format!("opening {p}"))?)
    };
    subreaper();
    if !o.detach {
        block_signals()?;
    }
    let cg = cgroups::open(st.cgroup.clone());
    let (ps, cs) = UnixStream::pair().ctx(|| "socketpair".into())?;
    let mut parent = Chan::new(ps)?;
    let mut child_chan = Chan::new(cs)?;
    let process = &o.process;
    let console_fd = console.as_ref().map(|c| c.as_raw_fd());
    let preserve = o.preserve_fds;
    let intermediate = fork_child(
        || {
            let r = (|| -> Result<()> {
                child_chan.expect_go()?;
                // As in create: the process inherits the cgroup.
                cg.add_self()?;
                for (t, f) in &ns_files {
                    nix::sched::setns(f, ns_flag(*t))
                        .ctx(|| format!("joining {} namespace", ns_proc_name(*t)))?;
                }
                Ok(())
            })();
            if let Err(e) = r {
                let _ = child_chan.send(&Msg::Err(e.to_string()));
                return Err(e);
            }
            // SAFETY: single-threaded, as in fork_child.
            match unsafe { nix::unistd::fork() }.ctx(|| "fork".into())? {
                ForkResult::Parent { child } => child_chan.send(&Msg::Pid(child.as_raw())),
                ForkResult::Child => {
                    let r = (|| -> Result<()> {
                        if let Some(sock) = console_fd {
                            nix::unistd::setsid().ctx(|| "setsid".into())?;
                            tty::setup_console(
                                sock,
                                process
                                    .console_size()
                                    .map(|b| (b.height() as u16, b.width() as u16)),
                            )?;
                            // SAFETY: our inherited copy of the socket.
                            unsafe { libc::close(sock) };
                        }
                        process::apply_limits(process)?;
                        if let Some(d) = &chroot_dir {
                            nix::unistd::fchdir(d.as_raw_fd())
                                .ctx(|| "fchdir to the container's root".into())?;
                            nix::unistd::chroot(".").ctx(|| "chroot".into())?;
                        }
                        nix::unistd::chdir(process.cwd())
                            .ctx(|| format!("cwd {}", process.cwd().display()))?;
                        let prep = process::prepare(process)?;
                        for w in process::drop_privileges(process, seccomp.as_ref())? {
                            child_chan.send(&Msg::Warn(w))?;
                        }
                        Err(process::exec(process, &prep, seccomp.as_ref(), preserve))
                    })();
                    if let Err(e) = &r {
                        let _ = child_chan.send(&Msg::Err(e.to_string()));
                    }
                    // SAFETY: see fork_child.
                    unsafe { libc::_exit(1) }
                }
            }
        },
        None,
    )?;
    drop(child_chan);
    let mut guard = Cleanup {
        root,
        id: o.id.clone(),
        dir: None,
        cgroup: None,
        pids: vec![intermediate],
    };
    parent.send(&Msg::Go)?;
    let mut pid = None;
    loop {
        match parent.recv()? {
            Some(Msg::Pid(p)) => {
                pid = Some(Pid::from_raw(p));
                guard.pids.insert(0, Pid::from_raw(p));
            }
            Some(Msg::Warn(w)) => warn(&o.id, &w),
            Some(Msg::Err(e)) => return Err(child_err(e)),
            // EOF: the intermediate exited and the process exec'd
            // (its copy of the socket is close-on-exec).
            None => break,
            Some(m) => return Err(Error::Child(format!("unexpected {m:?}"))),
        }
    }
    let _ = waitpid(intermediate, None);
    let pid = pid.ok_or_else(|| Error::Child("exec: no process was started".into()))?;
    guard.pids.clear();
    drop(console);
    if let Some(pf) = &o.pid_file {
        write_pid_file(pf, pid.as_raw())?;
    }
    if o.detach {
        return Ok(0);
    }
    wait_forwarding(pid)
}

/// The spec a container was created with.
pub fn container_spec(root: &Root, id: &str) -> Result<Spec> {
    root.load(id)?;
    load_spec(root, id)
}
