//! Operations on an existing container: start, run, state, kill, delete,
//! pause/resume, ps, list.

use super::*;
use std::os::unix::fs::OpenOptionsExt;

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
            warn(root, id, &e.to_string());
        }
    }
    Ok(())
}

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
        warn(
            root,
            &o.id,
            "killed by the OOM killer (memory limit reached)",
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
                warn(root, id, &e.to_string());
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

/// The spec a container was created with.
pub fn container_spec(root: &Root, id: &str) -> Result<Spec> {
    root.load(id)?;
    load_spec(root, id)
}
