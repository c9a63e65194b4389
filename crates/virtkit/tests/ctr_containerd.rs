//! containerd (Debian's 1.6, runc v2 shim) runs containers through
//! `virtkit-runc`, chosen per container with `ctr run --runc-binary`.
//!
//! One private containerd serves the whole test (its own root, state dir,
//! gRPC and ttrpc sockets in a temporary directory); the same scenario runs
//! first with runc, so that every expectation is checked against the peer,
//! then with virtkit-runc. Each runtime gets its own `--runc-root`, and the
//! scenario asks that runtime's `state` about the detached container while
//! the other runtime must fail to read it: a run that silently used runc
//! instead of virtkit-runc fails.

#[path = "ctr_support/containerd.rs"]
mod containerd;
mod ctr_support;

use containerd::{cgroup_path, Containerd, IMAGE};
use ctr_support::{ok, runc_bin, stderr, stdout};
use std::process::{Command, Output};

/// One runtime binary as the shim will call it.
struct Runtime<'a> {
    cd: &'a Containerd,
    bin: String,
    /// The other runtime, which must not understand this one's state.
    other: String,
    tag: &'static str,
}

impl Runtime<'_> {
    fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// `ctr run` with this runtime, a private fifo dir and runtime root,
    /// a cgroup below the tests' parent, then `opts`, the image, `id` and
    /// the command.
    fn run(&self, opts: &[&str], id: &str, cmd: &[&str]) -> Output {
        let (root, fifo) = (self.cd.runc_root(), self.cd.fifo_dir());
        let cg = cgroup_path(id);
        let mut args = vec![
            "run",
            "--runc-binary",
            &self.bin,
            "--runc-root",
            root.to_str().unwrap(),
            "--fifo-dir",
            fifo.to_str().unwrap(),
            "--cgroup",
            &cg,
        ];
        args.extend_from_slice(opts);
        args.push(IMAGE);
        args.push(id);
        args.extend_from_slice(cmd);
        self.cd.ctr(&args)
    }

    fn exec(&self, opts: &[&str], id: &str, cmd: &[&str]) -> Output {
        let fifo = self.cd.fifo_dir();
        let mut args = vec!["task", "exec", "--fifo-dir", fifo.to_str().unwrap()];
        args.extend_from_slice(opts);
        args.push(id);
        args.extend_from_slice(cmd);
        self.cd.ctr(&args)
    }

    /// `<bin> --root <the shim's runtime root> <args>`.
    fn runtime(&self, bin: &str, args: &[&str]) -> Output {
        let mut c = Command::new(bin);
        c.arg("--root").arg(self.cd.runtime_state_root()).args(args);
        self.cd.output(&mut c)
    }

    fn scenario(&self) {
        let cd = self.cd;
        let what = &self.bin;

        // Foreground runs: output, exit status, environment, cwd.
        let out = self.run(&["--rm"], &self.id("hello"), &["echo", "hello"]);
        assert_eq!(ok(&out), "hello\n", "{what}");
        let out = self.run(&["--rm"], &self.id("exit3"), &["sh", "-c", "exit 3"]);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", stderr(&out));
        let out = self.run(
            &[
                "--rm", "--env", "FOO=bar", "--env", "X=1 2", "--cwd", "/tmp",
            ],
            &self.id("env"),
            &["sh", "-c", "echo \"$FOO|$X\"; pwd; id -u"],
        );
        assert_eq!(ok(&out), "bar|1 2\n/tmp\n0\n", "{what}");

        // A detached task with a memory limit: it is this runtime's
        // container (its state, not the other runtime's), in the cgroup
        // ctr asked for.
        let id = self.id("detached");
        let script = "trap 'exit 7' TERM; while :; do sleep 0.1; done";
        ok(&self.run(
            &["-d", "--memory-limit", "67108864"],
            &id,
            &["sh", "-c", script],
        ));
        cd.wait_status(&id, "RUNNING");
        let (pid, _) = cd.task(&id).unwrap();
        let state: serde_json::Value =
            serde_json::from_str(&ok(&self.runtime(&self.bin, &["state", &id]))).unwrap();
        assert_eq!(state["status"], "running", "{what}: {state}");
        assert_eq!(state["pid"], pid, "{what}: {state}");
        assert!(
            !self.runtime(&self.other, &["state", &id]).status.success(),
            "{} reads the state of a container {what} should have made",
            self.other
        );
        let cg = format!("/sys/fs/cgroup/memory{}", cgroup_path(&id));
        let procs = std::fs::read_to_string(format!("{cg}/cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "{what}: {pid} not in {cg}: {procs}"
        );
        let limit = std::fs::read_to_string(format!("{cg}/memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), "67108864", "{what}");

        // exec: exit status, user by number and by name, cwd.
        let out = self.exec(&["--exec-id", "x"], &id, &["sh", "-c", "echo in; exit 4"]);
        assert_eq!(stdout(&out), "in\n", "{what}: {}", stderr(&out));
        assert_eq!(out.status.code(), Some(4), "{what}: {}", stderr(&out));
        let out = self.exec(
            &["--exec-id", "u", "--user", "1000:1000", "--cwd", "/tmp"],
            &id,
            &["sh", "-c", "id -u; id -g; pwd"],
        );
        assert_eq!(ok(&out), "1000\n1000\n/tmp\n", "{what}");
        let out = self.exec(&["--exec-id", "n", "--user", "user"], &id, &["id", "-un"]);
        assert_eq!(ok(&out), "user\n", "{what}");

        // ps (the runtime's `ps`), pause and resume (freezer).
        let ps = ok(&cd.ctr(&["task", "ps", &id]));
        assert!(
            ps.lines()
                .skip(1)
                .any(|l| l.split_whitespace().next() == Some(&pid.to_string())),
            "{what}: {ps}"
        );
        ok(&cd.ctr(&["task", "pause", &id]));
        cd.wait_status(&id, "PAUSED");
        ok(&cd.ctr(&["task", "resume", &id]));
        cd.wait_status(&id, "RUNNING");

        // kill (SIGTERM by default: the trap exits 7), delete, and nothing
        // left: neither the runtime's state nor the cgroup.
        ok(&cd.ctr(&["task", "kill", &id]));
        cd.wait_status(&id, "STOPPED");
        let out = cd.ctr(&["task", "delete", &id]);
        ok(&out);
        assert!(
            stderr(&out).contains("exit code 7"),
            "{what}: {}",
            stderr(&out)
        );
        ok(&cd.ctr(&["container", "rm", &id]));
        assert!(cd.task(&id).is_none());
        assert!(!self.runtime(&self.bin, &["state", &id]).status.success());
        assert!(!std::path::Path::new(&cg).exists(), "{what}: {cg} is left");

        // SIGKILL to a PID 1 without handlers: exit status 137.
        let id = self.id("killed");
        ok(&self.run(&["-d"], &id, &["sleep", "600"]));
        cd.wait_status(&id, "RUNNING");
        ok(&cd.ctr(&["task", "kill", "--signal", "SIGKILL", &id]));
        cd.wait_status(&id, "STOPPED");
        let out = cd.ctr(&["task", "delete", &id]);
        ok(&out);
        assert!(
            stderr(&out).contains("exit code 137"),
            "{what}: {}",
            stderr(&out)
        );
        ok(&cd.ctr(&["container", "rm", &id]));
    }
}

#[test]
fn containerd_runs_virtkit_runc() {
    let cd = Containerd::start();
    cd.import_busybox();
    let virtkit = runc_bin();
    let runc = "runc".to_string();
    for (bin, other, tag) in [
        (runc.clone(), virtkit.clone(), "runc"),
        (virtkit.clone(), runc.clone(), "vk"),
    ] {
        Runtime {
            cd: &cd,
            bin,
            other,
            tag,
        }
        .scenario();
    }
}
