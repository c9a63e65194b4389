//! `create`: the runtime's side of setting a container up, and the
//! intermediate child that enters the namespaces and forks the init.

use super::init::{init_main, InitArgs};
use super::*;

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
            Some(Msg::Warn(w)) => warn(root, &o.id, &w),
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
