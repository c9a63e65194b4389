//! Podman drives `virtkit-runc` as its OCI runtime (cgroupfs manager),
//! with an image imported from the busybox rootfs.
//!
//! Podman's default ulimits (nofile 1048576, nproc) exceed this machine's
//! hard limits, so every run passes explicit `--ulimit`s. Storage is a
//! private temporary store (vfs driver, no overlay needed), networking is
//! off (`--network=none`: no netavark/CNI config is assumed), events go to
//! a file (no systemd journal).

mod ctr_support;

use ctr_support::*;
use std::process::{Command, Output};

struct Podman {
    dir: std::path::PathBuf,
}

impl Podman {
    fn new() -> Podman {
        let dir = std::env::temp_dir().join(format!("virtkit-podman-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Podman { dir }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        // Podman's conmon writes an `oom` file into its working directory
        // when a container's memory cgroup goes away (Debian 12's conmon
        // on cgroup v1 takes the removal for an OOM; runc's containers
        // too): keep it out of the source tree.
        c.current_dir(&self.dir);
        c.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .arg("--storage-driver=vfs")
            .arg("--cgroup-manager=cgroupfs")
            .arg("--events-backend=file")
            .arg("--runtime")
            .arg(runc_bin());
        c
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("podman is installed")
    }

    /// `podman run --rm` with the flags this machine needs, then `extra`.
    fn run(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "run",
            "--rm",
            "--network=none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        args.extend_from_slice(extra);
        self.podman(&args)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.podman(&["system", "reset", "--force"]);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("storage"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const IMAGE: &str = "localhost/virtkit-busybox:test";

#[test]
fn podman_uses_virtkit_runc() {
    let p = Podman::new();
    let rootfs = p.dir.join("rootfs");
    build_rootfs(&rootfs);
    let tar = p.dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    ok(&p.podman(&["import", tar.to_str().unwrap(), IMAGE]));

    // run, output, exit codes.
    assert_eq!(
        ok(&p.run(&[IMAGE, "echo", "hello from virtkit"])),
        "hello from virtkit\n"
    );
    assert_eq!(p.run(&[IMAGE, "sh", "-c", "exit 3"]).status.code(), Some(3));
    // Environment, user, workdir.
    let out = ok(&p.run(&[
        "-e",
        "FOO=bar",
        "--user",
        "1000:1000",
        "--workdir",
        "/tmp",
        IMAGE,
        "sh",
        "-c",
        "echo $FOO; id -u; id -g; pwd",
    ]));
    assert_eq!(out, "bar\n1000\n1000\n/tmp\n");
    // Limits: memory, pids; read-only root.
    let out = ok(&p.run(&[
        "--memory",
        "64m",
        "--pids-limit",
        "32",
        IMAGE,
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max",
    ]));
    assert_eq!(out, "67108864\n32\n");
    let out = p.run(&[
        "--memory",
        "32m",
        "--memory-swap",
        "32m",
        IMAGE,
        "sh",
        "-c",
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
    ]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "{} {}",
        stdout(&out),
        stderr(&out)
    );
    let out = p.run(&["--read-only", IMAGE, "sh", "-c", "touch /x; echo rc=$?"]);
    assert!(stdout(&out).contains("rc=1"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );

    // Detached container, exec into it, stop, rm.
    let id = ok(&p.podman(&[
        "run",
        "-d",
        "--network=none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--hostname",
        "vkhost",
        IMAGE,
        "sleep",
        "600",
    ]));
    let id = id.trim();
    let out = ok(&p.podman(&[
        "exec",
        "-e",
        "X=42",
        id,
        "sh",
        "-c",
        "hostname; echo $X; echo $$",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["vkhost", "42"], "{out}");
    assert_eq!(
        p.podman(&["exec", id, "sh", "-c", "exit 4"]).status.code(),
        Some(4)
    );
    let ps = ok(&p.podman(&["ps", "--format", "{{.ID}} {{.Status}}"]));
    assert!(ps.contains(&id[..12]) && ps.contains("Up"), "{ps}");
    ok(&p.podman(&["stop", "--time", "1", id]));
    let inspect = ok(&p.podman(&["inspect", "--format", "{{.State.Status}}", id]));
    assert_eq!(inspect.trim(), "exited");
    ok(&p.podman(&["rm", id]));
    assert!(!ok(&p.podman(&["ps", "-a", "-q"])).contains(&id[..12]));
}
