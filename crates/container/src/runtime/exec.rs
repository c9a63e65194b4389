//! `exec`: another process in a running container's namespaces and
//! cgroup.

use super::*;

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
            Some(Msg::Warn(w)) => warn(root, &o.id, &w),
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
