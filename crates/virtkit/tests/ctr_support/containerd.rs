//! A private containerd for the container tests: its own root, state dir,
//! gRPC and ttrpc sockets and runtime state root, all under one temporary
//! directory, and a busybox image imported from an OCI archive that
//! Podman builds from the busybox rootfs.
//!
//! containerd 1.6's shims put their sockets in the fixed directory
//! /run/containerd/s (not configurable); the fixture removes that
//! directory (and /run/containerd) at the end only if it created them and
//! they are empty.
#![allow(dead_code)]

use crate::ctr_support::{build_rootfs, stdout, CGROUP_PARENT};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The image every scenario runs.
pub const IMAGE: &str = "localhost/virtkit-busybox:ctrd";
/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "virtkit-test";
/// How long any single `ctr` command may take before the test fails.
const CTR_DEADLINE: Duration = Duration::from_secs(60);

const SHIM_RUN_DIRS: [&str; 2] = ["/run/containerd/s", "/run/containerd"];

pub struct Containerd {
    pub dir: PathBuf,
    child: Option<Child>,
    /// Which of SHIM_RUN_DIRS did not exist before containerd started.
    created_run_dirs: Vec<&'static str>,
    n: AtomicUsize,
}

impl Containerd {
    /// Write the config, start containerd and wait until it answers.
    pub fn start() -> Containerd {
        let dir = std::env::temp_dir().join(format!("virtkit-ctrd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("fifo")).unwrap();
        let created_run_dirs = SHIM_RUN_DIRS
            .into_iter()
            .filter(|d| !Path::new(d).exists())
            .collect();
        let d = dir.display();
        // CRI is off: it wants CNI and a sandbox image, and ctr does not
        // use it. The opt plugin would otherwise install into /opt.
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd is installed (scripts/install-deps.sh)");
        let c = Containerd {
            dir,
            child: Some(child),
            created_run_dirs,
            n: AtomicUsize::new(0),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.ctr(&["version"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn address(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// The `--runc-root` the scenarios pass: the shim gives the runtime
    /// `--root <this>/<namespace>`.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// The state root the runtime binary sees.
    pub fn runtime_state_root(&self) -> PathBuf {
        self.runc_root().join(NAMESPACE)
    }

    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address <ours> --namespace virtkit-test <args>`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.address())
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args);
        self.output(&mut c)
    }

    /// Run `cmd` to completion with stdout and stderr in files (a detached
    /// container must not hold a pipe of ours open), failing the test if
    /// it takes longer than CTR_DEADLINE.
    pub fn output(&self, cmd: &mut Command) -> Output {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let (o, e) = (
            self.dir.join(format!(".out{n}")),
            self.dir.join(format!(".err{n}")),
        );
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&o).unwrap())
            .stderr(std::fs::File::create(&e).unwrap())
            .spawn()
            .unwrap_or_else(|err| panic!("{cmd:?}: {err}"));
        let deadline = Instant::now() + CTR_DEADLINE;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("still running after {CTR_DEADLINE:?}: {cmd:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = Output {
            status,
            stdout: std::fs::read(&o).unwrap(),
            stderr: std::fs::read(&e).unwrap(),
        };
        let _ = std::fs::remove_file(o);
        let _ = std::fs::remove_file(e);
        out
    }

    /// Build the busybox image as an OCI archive with Podman (private
    /// store, vfs driver) and `ctr image import` it as IMAGE.
    pub fn import_busybox(&self) {
        let work = self.dir.join("image");
        let rootfs = work.join("rootfs");
        build_rootfs(&rootfs);
        let tar = work.join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar of the rootfs failed");
        let archive = work.join("busybox-oci.tar");
        let podman = |args: &[&str]| {
            let mut c = Command::new("podman");
            c.arg("--root")
                .arg(work.join("storage"))
                .arg("--runroot")
                .arg(work.join("run"))
                .arg("--tmpdir")
                .arg(work.join("tmp"))
                .arg("--storage-driver=vfs")
                .arg("--events-backend=file")
                .args(args);
            self.output(&mut c)
        };
        let imported = podman(&["import", tar.to_str().unwrap(), IMAGE]);
        let saved = podman(&[
            "save",
            "--format",
            "oci-archive",
            "-o",
            archive.to_str().unwrap(),
            IMAGE,
        ]);
        let _ = podman(&["system", "reset", "--force"]);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(work.join("storage"))
            .output();
        crate::ctr_support::ok(&imported);
        crate::ctr_support::ok(&saved);
        crate::ctr_support::ok(&self.ctr(&["image", "import", archive.to_str().unwrap()]));
        let _ = std::fs::remove_dir_all(&work);
    }

    /// The task's pid and status as `ctr task ls` shows them.
    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        let ls = stdout(&self.ctr(&["task", "ls"]));
        ls.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == id).then(|| (f[1].parse().unwrap(), f[2].to_string()))
        })
    }

    /// Poll `ctr task ls` until the task shows `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.task(id);
            if now.as_ref().map(|t| t.1.as_str()) == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} is {now:?}, never {status}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Remove every task and container of the namespace.
    fn remove_all(&self) {
        for id in stdout(&self.ctr(&["task", "ls", "-q"])).lines() {
            let _ = self.ctr(&["task", "delete", "--force", id]);
        }
        for id in stdout(&self.ctr(&["container", "ls", "-q"])).lines() {
            let _ = self.ctr(&["container", "rm", id]);
        }
    }

    /// Shims serving our containerd (their `-address` is our socket): left
    /// only if a test failed half-way.
    fn our_shims(&self) -> Vec<u32> {
        let addr = self.address();
        let addr = addr.to_str().unwrap();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_ours = args
                .windows(2)
                .any(|w| w[0] == b"-address" && w[1] == addr.as_bytes());
            if is_ours
                && args
                    .first()
                    .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"))
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// Unmount whatever is still mounted under our directory, deepest first.
    fn unmount_leftovers(&self) {
        let prefix = self.dir.to_str().unwrap().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).output();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all();
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .output();
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // After a failure: kill the shims left behind, then the containers
        // (whichever runtime created them understands its own state).
        for pid in self.our_shims() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .output();
        }
        if let Ok(entries) = std::fs::read_dir(self.runtime_state_root()) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                for bin in [crate::ctr_support::runc_bin(), "runc".to_string()] {
                    let _ = Command::new(bin)
                        .arg("--root")
                        .arg(self.runtime_state_root())
                        .args(["delete", "--force", &id])
                        .output();
                }
            }
        }
        self.unmount_leftovers();
        let _ = std::fs::remove_dir_all(&self.dir);
        for d in &self.created_run_dirs {
            let _ = std::fs::remove_dir(d);
        }
        for ctrl in [
            "memory", "pids", "cpu", "cpuacct", "cpuset", "blkio", "freezer", "devices",
        ] {
            let parent = format!("/sys/fs/cgroup/{ctrl}{CGROUP_PARENT}");
            if let Ok(entries) = std::fs::read_dir(&parent) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&format!("ctrd-{}-", std::process::id())) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The cgroup path (below CGROUP_PARENT) for container `id` of this run.
pub fn cgroup_path(id: &str) -> String {
    format!("{CGROUP_PARENT}/ctrd-{}-{id}", std::process::id())
}
