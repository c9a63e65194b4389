//! Shared fixtures of the container tests: a busybox rootfs bundle built
//! from the host's busybox-static, a base config.json, and a runner for
//! `virtkit-runc` with a private state root and cgroup parent.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The runtime under test: this workspace's `virtkit-runc`, or another
/// build named by VIRTKIT_RUNC_BIN.
pub fn runc_bin() -> String {
    std::env::var("VIRTKIT_RUNC_BIN")
        .ok()
        .or(option_env!("CARGO_BIN_EXE_virtkit-runc").map(String::from))
        .expect("virtkit-runc: set VIRTKIT_RUNC_BIN")
}
pub const BUSYBOX: &str = "/bin/busybox";

/// Every test's containers live below this cgroup (in each v1 hierarchy),
/// never inside the caller's.
pub const CGROUP_PARENT: &str = "/virtkit-test";

pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub state_root: PathBuf,
    pub id: String,
}

/// Build a busybox rootfs at `root`: /bin/busybox plus one symlink per
/// applet, the usual directories, and /etc/passwd and /etc/group.
pub fn build_rootfs(root: &Path) {
    for d in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc",
        "root",
        "home/user",
        "var",
        "run",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("busybox-static is installed");
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/hostname"), "image\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// The capabilities Podman and runc give a container by default.
pub fn default_caps() -> Value {
    json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ])
}

impl Bundle {
    pub fn new(name: &str) -> Bundle {
        let dir = std::env::temp_dir().join(format!("virtkit-ctr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        build_rootfs(&rootfs);
        let state_root = dir.join("state");
        Bundle {
            id: format!("vk-{name}-{}", std::process::id()),
            dir,
            rootfs,
            state_root,
        }
    }

    /// A config like `runc spec` writes, with a non-terminal process.
    pub fn base_config(&self, args: &[&str]) -> Value {
        let caps = default_caps();
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "virtkit",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
            ],
            "linux": {
                "cgroupsPath": format!("{CGROUP_PARENT}/{}", self.id),
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
                ],
                "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        })
    }

    pub fn write_config(&self, cfg: &Value) {
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(cfg).unwrap(),
        )
        .unwrap();
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(runc_bin());
        c.arg("--root").arg(&self.state_root);
        c
    }

    /// Run the runtime to completion. Its output goes through files, not
    /// pipes: a container started by `create` or `run -d` inherits them
    /// and would keep a pipe open long after the runtime exits.
    pub fn runc(&self, args: &[&str]) -> Output {
        capture(self.cmd().args(args), &self.dir)
    }

    /// `run` in the foreground with the current config.
    pub fn run(&self) -> Output {
        let b = self.dir.to_str().unwrap().to_string();
        self.runc(&["run", "--bundle", &b, &self.id])
    }

    /// Write `cfg` and `run` it.
    pub fn run_config(&self, cfg: &Value) -> Output {
        self.write_config(cfg);
        self.run()
    }

    pub fn state(&self) -> Value {
        let out = self.runc(&["state", &self.id]);
        assert!(
            out.status.success(),
            "state: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = self.runc(&["delete", "--force", &self.id]);
        let _ = std::fs::remove_dir_all(&self.dir);
        // The per-test cgroups are gone after delete. The shared parent
        // stays (empty): removed here once unused, it could vanish
        // between a runtime's mkdir of it and of its child in a test
        // running alongside (runc then failed with ENOENT).
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert success and return stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Run `cmd` with stdout and stderr in files under `dir`; wait for it only.
pub fn capture(cmd: &mut Command, dir: &Path) -> Output {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    std::fs::create_dir_all(dir).unwrap();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let (o, e) = (dir.join(format!(".out{n}")), dir.join(format!(".err{n}")));
    let status = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .status()
        .unwrap();
    let out = Output {
        status,
        stdout: std::fs::read(&o).unwrap(),
        stderr: std::fs::read(&e).unwrap(),
    };
    let _ = std::fs::remove_file(o);
    let _ = std::fs::remove_file(e);
    out
}

/// Like `capture`, but kill the command and fail if it runs longer than
/// `secs` (for tests of inputs that once made the runtime hang).
pub fn capture_with_deadline(cmd: &mut Command, dir: &Path, secs: u64) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    let (o, e) = (dir.join(".out-deadline"), dir.join(".err-deadline"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {secs} s: {cmd:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output {
        status,
        stdout: std::fs::read(&o).unwrap(),
        stderr: std::fs::read(&e).unwrap(),
    }
}
