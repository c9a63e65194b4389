//! `virtkit-runc` against real containers: a busybox rootfs bundle, one
//! feature per test. Needs root (namespaces, cgroups, mounts).

mod ctr_support;

use ctr_support::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

fn host_ns(name: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{name}"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn exit_code_and_output_propagate() {
    let b = Bundle::new("exit");
    let out = b.run_config(&b.base_config(&["sh", "-c", "echo hello; echo err >&2; exit 7"]));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello\n");
    assert!(stderr(&out).contains("err"));
    // Signals to the runtime reach the container; its exit code comes back.
    b.write_config(&b.base_config(&[
        "sh",
        "-c",
        "trap 'exit 42' TERM; echo ready; while true; do sleep 0.05; done",
    ]));
    let mut child = b
        .cmd()
        .args(["run", "--bundle", b.dir.to_str().unwrap(), &b.id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(42));
    // State is gone after a foreground run.
    assert!(!b.state_root.join(&b.id).exists());
}

#[test]
fn namespaces_isolate() {
    let b = Bundle::new("ns");
    let script = "hostname; echo pid=$$; \
        for n in ipc mnt net pid uts cgroup; do echo $n=$(readlink /proc/self/ns/$n); done; \
        test -e /work && echo host-visible; ip link 2>/dev/null | grep -c '^[0-9]'; \
        cat /proc/self/mountinfo | wc -l; ls /proc | grep -c '^[0-9]'";
    let text = ok(&b.run_config(&b.base_config(&["sh", "-c", script])));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "virtkit", "{text}");
    assert_eq!(lines[1], "pid=1", "{text}");
    for (i, n) in ["ipc", "mnt", "net", "pid", "uts", "cgroup"]
        .iter()
        .enumerate()
    {
        let inside = lines[2 + i].split_once('=').unwrap().1;
        assert_ne!(inside, host_ns(n), "{n} namespace is shared with the host");
    }
    assert!(!text.contains("host-visible"), "host files visible: {text}");
    // Only the loopback interface in the new network namespace.
    assert_eq!(lines[8], "1", "{text}");
    // Only our own processes: sh, ls, grep (and the pipe's other sh).
    let procs: usize = lines[10].parse().unwrap();
    assert!(procs <= 4, "{text}");
}

#[test]
fn ipc_namespace_hides_host_message_queues() {
    let b = Bundle::new("ipc");
    // A POSIX message queue created inside is invisible to the host.
    let mut cfg = b.base_config(&["sh", "-c", "touch /dev/mqueue/vk-q && ls /dev/mqueue"]);
    cfg["process"]["capabilities"]["effective"] = default_caps();
    let text = ok(&b.run_config(&cfg));
    assert!(text.contains("vk-q"), "{text}");
    let _ = std::fs::create_dir_all("/dev/mqueue");
    assert!(!Path::new("/dev/mqueue/vk-q").exists());
}

#[test]
fn user_namespace_maps_ids() {
    let b = Bundle::new("userns");
    let mut cfg = b.base_config(&[
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; readlink /proc/self/ns/user",
    ]);
    cfg["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    cfg["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    cfg["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let text = ok(&b.run_config(&cfg));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "0");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"]);
    assert_ne!(lines[2], host_ns("user"));
}

#[test]
fn memory_hog_is_oom_killed() {
    let b = Bundle::new("oom");
    // The shell grows a 64 MiB string in a 32 MiB cgroup.
    let mut cfg = b.base_config(&[
        "sh",
        "-c",
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#x}",
    ]);
    cfg["linux"]["resources"]["memory"] = json!({"limit": 33554432, "swap": 33554432});
    let out = b.run_config(&cfg);
    assert_eq!(
        out.status.code(),
        Some(137),
        "{} {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!stdout(&out).contains("survived"));
    assert!(stderr(&out).contains("OOM"), "{}", stderr(&out));
}

#[test]
fn fork_bomb_stops_at_pids_max() {
    let b = Bundle::new("pids");
    // `read` is a builtin: it needs no fork once the limit is reached.
    // The bomb runs in a subshell: ash gives up at the first failed fork.
    let script = "(i=0; while [ $i -lt 60 ]; do sleep 30 & i=$((i+1)); done); \
        read max < /sys/fs/cgroup/pids/pids.max; read cur < /sys/fs/cgroup/pids/pids.current; \
        echo $max; echo $cur";
    let mut cfg = b.base_config(&["sh", "-c", script]);
    cfg["linux"]["resources"]["pids"] = json!({"limit": 16});
    let out = b.run_config(&cfg);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"16"), "{text} {}", stderr(&out));
    let current: u32 = lines[1].parse().unwrap();
    assert!(current <= 16, "{text}");
    assert!(stderr(&out).contains("fork"), "{}", stderr(&out));
}

#[test]
fn cpu_and_blkio_limits_are_written() {
    let b = Bundle::new("cpu");
    let script = "cat /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/cpu/cpu.cfs_quota_us \
        /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/cpuset/cpuset.cpus \
        /sys/fs/cgroup/memory/memory.soft_limit_in_bytes";
    let mut cfg = b.base_config(&["sh", "-c", script]);
    cfg["linux"]["resources"]["cpu"] =
        json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"});
    cfg["linux"]["resources"]["memory"] = json!({"reservation": 16777216});
    let text = ok(&b.run_config(&cfg));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, ["512", "50000", "100000", "0", "16777216"]);
}

#[test]
fn capabilities_drop() {
    let b = Bundle::new("caps");
    let script = "touch /tmp/f && chown 1000 /tmp/f && echo chowned; grep CapEff /proc/self/status";
    let mut cfg = b.base_config(&["sh", "-c", script]);
    let text = ok(&b.run_config(&cfg));
    assert!(text.contains("chowned"), "{text}");
    let without: Vec<_> = default_caps()
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| *c != "CAP_CHOWN")
        .cloned()
        .collect();
    for set in ["bounding", "effective", "permitted"] {
        cfg["process"]["capabilities"][set] = json!(without);
    }
    let out = b.run_config(&cfg);
    assert!(!stdout(&out).contains("chowned"));
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn seccomp_returns_configured_errno() {
    let b = Bundle::new("seccomp");
    let script = "mkdir /tmp/d; echo mkdir=$?; touch /tmp/f; chmod 755 /tmp/f && echo chmod755; chmod 777 /tmp/f; echo chmod777=$?";
    let mut cfg = b.base_config(&["sh", "-c", script]);
    cfg["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]},
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 2, "value": 511, "op": "SCMP_CMP_EQ"}]}
        ]
    });
    let out = b.run_config(&cfg);
    let text = stdout(&out);
    let err = stderr(&out);
    assert!(text.contains("mkdir=1"), "{text} {err}");
    // EDQUOT's message.
    assert!(err.contains("quota"), "{err}");
    assert!(text.contains("chmod755"), "{text} {err}");
    assert!(text.contains("chmod777=1"), "{text} {err}");
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn readonly_root_refuses_writes() {
    let b = Bundle::new("ro");
    let mut cfg = b.base_config(&[
        "sh",
        "-c",
        "touch /x; echo rc=$?; touch /tmp/y && echo tmp-ok",
    ]);
    cfg["root"]["readonly"] = json!(true);
    let out = b.run_config(&cfg);
    assert!(stdout(&out).contains("rc=1"), "{}", stdout(&out));
    assert!(stdout(&out).contains("tmp-ok"));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert!(!b.rootfs.join("x").exists());
}

#[test]
fn masked_and_readonly_paths() {
    let b = Bundle::new("mask");
    // /proc/keys exists on every kernel with keyrings (kcore may not).
    assert!(std::fs::read_to_string("/proc/keys").is_ok_and(|k| !k.is_empty()));
    let script = "wc -c < /proc/keys; ls /sys/firmware | wc -l; echo 1 > /proc/sys/kernel/ns_last_pid; echo rc=$?";
    let out = b.run_config(&b.base_config(&["sh", "-c", script]));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0].trim(), "0", "{text}");
    assert_eq!(lines[1].trim(), "0", "{text}");
    assert!(text.contains("rc=1"), "{text}");
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn process_settings_apply() {
    let b = Bundle::new("proc");
    let script = "id; pwd; ulimit -n; umask; cat /proc/self/oom_score_adj; grep NoNewPrivs /proc/self/status; \
        echo $FOO; echo $HOME; cat /proc/sys/net/ipv4/ip_forward; cat /proc/sys/kernel/domainname";
    let mut cfg = b.base_config(&["sh", "-c", script]);
    cfg["process"]["user"] =
        json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 7], "umask": 23});
    cfg["process"]["cwd"] = json!("/home/user");
    cfg["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("FOO=bar"));
    cfg["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 777, "soft": 555}]);
    cfg["process"]["oomScoreAdj"] = json!(123);
    cfg["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    cfg["domainname"] = json!("example.org");
    let text = ok(&b.run_config(&cfg));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("uid=1000(user) gid=1000(user) groups="),
        "{text}"
    );
    assert!(lines[0].contains('5') && lines[0].contains('7'), "{text}");
    assert_eq!(
        lines[1..],
        [
            "/home/user",
            "555",
            "0027",
            "123",
            "NoNewPrivs:\t1",
            "bar",
            "/home/user",
            "1",
            "example.org"
        ]
    );
}

#[test]
fn devices_and_symlinks() {
    let b = Bundle::new("dev");
    let script = "ls -l /dev/null /dev/zero /dev/vk0 | cut -c1; readlink /dev/fd; readlink /dev/ptmx; echo x > /dev/vk0 && echo wrote";
    let mut cfg = b.base_config(&["sh", "-c", script]);
    cfg["linux"]["devices"] =
        json!([{"path": "/dev/vk0", "type": "c", "major": 1, "minor": 3, "fileMode": 438}]);
    cfg["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]);
    let text = ok(&b.run_config(&cfg));
    assert_eq!(text, "c\nc\nc\n/proc/self/fd\npts/ptmx\nwrote\n");
}

#[test]
fn hooks_run_in_order_with_state() {
    let b = Bundle::new("hooks");
    let logdir = b.dir.join("hooklog");
    std::fs::create_dir_all(&logdir).unwrap();
    let log = logdir.join("log");
    let host_hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read s; echo {name} \"$s\" >> {}", log.display())]});
    let mut cfg = b.base_config(&["sh", "-c", "echo process >> /hooklog/log"]);
    cfg["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/hooklog", "type": "bind", "source": logdir, "options": ["rbind"]
    }));
    cfg["hooks"] = json!({
        "createRuntime": [host_hook("createRuntime")],
        "createContainer": [host_hook("createContainer")],
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "read s; echo startContainer \"$s\" >> /hooklog/log"]}],
        "poststart": [host_hook("poststart")],
        "poststop": [host_hook("poststop")]
    });
    ok(&b.run_config(&cfg));
    let text = std::fs::read_to_string(&log).unwrap();
    let order: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    let hooks_only: Vec<&str> = order.iter().copied().filter(|n| *n != "process").collect();
    assert_eq!(
        hooks_only,
        [
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ],
        "{text}"
    );
    let pos = |n: &str| order.iter().position(|x| *x == n).unwrap();
    assert!(pos("process") > pos("startContainer") && pos("process") < pos("poststop"));
    for l in text.lines().filter(|l| !l.starts_with("process")) {
        assert!(
            l.contains(&format!("\"id\":\"{}\"", b.id)) || l.contains(&b.id),
            "{l}"
        );
    }
    // A failing createRuntime hook aborts create.
    cfg["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
    let out = b.run_config(&cfg);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("createRuntime"), "{}", stderr(&out));
}

#[test]
fn lifecycle_create_start_state_kill_delete() {
    let b = Bundle::new("life");
    b.write_config(&b.base_config(&["sleep", "60"]));
    let pidfile = b.dir.join("pid");
    let bundle = b.dir.to_str().unwrap();
    ok(&b.runc(&[
        "create",
        "--bundle",
        bundle,
        "--pid-file",
        pidfile.to_str().unwrap(),
        &b.id,
    ]));
    let st = b.state();
    assert_eq!(st["status"], "created");
    let pid = st["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), pid.to_string());
    // Not started twice; a created container is not deletable without killing.
    ok(&b.runc(&["start", &b.id]));
    assert_eq!(b.state()["status"], "running");
    assert!(!b.runc(&["start", &b.id]).status.success());
    let out = b.runc(&["delete", &b.id]);
    assert!(stderr(&out).contains("running"), "{}", stderr(&out));
    let ps = ok(&b.runc(&["ps", "--format", "json", &b.id]));
    let pids: Vec<i64> = serde_json::from_str(&ps).unwrap();
    assert_eq!(pids, [pid]);
    let list = ok(&b.runc(&["list", "--format", "json"]));
    assert!(list.contains(&b.id));
    ok(&b.runc(&["pause", &b.id]));
    assert_eq!(b.state()["status"], "paused");
    ok(&b.runc(&["resume", &b.id]));
    assert_eq!(b.state()["status"], "running");
    ok(&b.runc(&["kill", &b.id, "KILL"]));
    for _ in 0..200 {
        if b.state()["status"] == "stopped" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(b.state()["status"], "stopped");
    assert!(!b.runc(&["kill", &b.id, "9"]).status.success());
    ok(&b.runc(&["delete", &b.id]));
    let out = b.runc(&["state", &b.id]);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory{CGROUP_PARENT}/{}", b.id)).exists());
}

/// CVE-2019-5736: a container process that holds on to the runtime's
/// executable (an O_PATH fd from /proc/<pid>/exe while the runtime's code
/// runs in the container) must not be able to reopen it for writing once
/// the runtime has exited. Checked for both ways of sealing: the
/// read-only detached mount and the memfd copy (forced by the env).
#[test]
fn runtime_binary_cannot_be_reopened_for_writing() {
    use std::os::unix::fs::OpenOptionsExt;
    for mode in ["", "memfd"] {
        let b = Bundle::new(&format!("exe{mode}"));
        b.write_config(&b.base_config(&["sleep", "60"]));
        let out = capture(
            b.cmd().env("VIRTKIT_RUNC_SEAL", mode).args([
                "create",
                "--bundle",
                b.dir.to_str().unwrap(),
                &b.id,
            ]),
            &b.dir,
        );
        ok(&out);
        // The init waiting for `start` runs the runtime's code, as a
        // process joining with `exec` would.
        let pid = b.state()["pid"].as_i64().unwrap();
        let held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(format!("/proc/{pid}/exe"))
            .unwrap();
        ok(&b.runc(&["delete", "--force", &b.id]));
        while Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
        let reopened = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{fd}"));
        match (mode, reopened) {
            // The read-only mount refuses the open itself. The kernel takes
            // the inode's write access before it looks at the mount, so
            // while another test runs the same binary the refusal reads
            // ETXTBSY instead of EROFS: the mount under the held fd must be
            // read-only either way.
            ("", r) => {
                let errno = r.err().and_then(|e| e.raw_os_error());
                assert!(
                    errno == Some(libc::EROFS) || errno == Some(libc::ETXTBSY),
                    "the runtime binary opened for writing ({errno:?})"
                );
                // SAFETY: statvfs is plain data, written by fstatvfs below.
                let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
                // SAFETY: fd is open (O_PATH fds are accepted by fstatvfs)
                // and st is a valid out-pointer.
                assert_eq!(unsafe { libc::fstatvfs(fd, &mut st) }, 0);
                assert!(
                    st.f_flag & libc::ST_RDONLY != 0,
                    "the runtime binary's mount is writable"
                );
            }
            (_, Err(_)) => {}
            // A memfd opens, but its seals refuse every write.
            (_, Ok(f)) => {
                let raw = std::os::fd::AsRawFd::as_raw_fd(&f);
                // SAFETY: F_GET_SEALS on our own fd; no pointers.
                let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
                assert!(
                    seals >= 0 && seals & libc::F_SEAL_WRITE != 0,
                    "the runtime binary is writable (seals {seals})"
                );
                assert!(std::io::Write::write(&mut &f, b"x").is_err());
            }
        }
    }
}

#[test]
fn exec_joins_the_container() {
    let b = Bundle::new("exec");
    b.write_config(&b.base_config(&["sleep", "60"]));
    ok(&b.runc(&[
        "run",
        "--detach",
        "--bundle",
        b.dir.to_str().unwrap(),
        &b.id,
    ]));
    let text = ok(&b.runc(&[
        "exec",
        "--env",
        "X=1",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        &b.id,
        "sh",
        "-c",
        "hostname; echo $X; pwd; id -u; echo $$",
    ]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..4], ["virtkit", "1", "/tmp", "1000"]);
    assert_ne!(lines[4], "1");
    let out = b.runc(&["exec", &b.id, "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    // --process with a JSON file, detached, with a pid file.
    let proc_json = b.dir.join("process.json");
    std::fs::write(
        &proc_json,
        r#"{"args":["sleep","30"],"cwd":"/","user":{"uid":0,"gid":0},"env":["PATH=/bin"]}"#,
    )
    .unwrap();
    let pidfile = b.dir.join("exec.pid");
    ok(&b.runc(&[
        "exec",
        "--process",
        proc_json.to_str().unwrap(),
        "--detach",
        "--pid-file",
        pidfile.to_str().unwrap(),
        &b.id,
    ]));
    let epid: i64 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    let pids: Vec<i64> = serde_json::from_str(&ok(&b.runc(&["ps", "-f", "json", &b.id]))).unwrap();
    assert!(pids.contains(&epid), "{pids:?} {epid}");
    // A bad process file names the field.
    std::fs::write(
        &proc_json,
        r#"{"args":["true"],"cwd":"/","user":{"uid":-1,"gid":0}}"#,
    )
    .unwrap();
    let out = b.runc(&["exec", "--process", proc_json.to_str().unwrap(), &b.id]);
    assert!(stderr(&out).contains("user.uid"), "{}", stderr(&out));
    ok(&b.runc(&["kill", "--all", &b.id, "SIGKILL"]));
    ok(&b.runc(&["delete", "--force", &b.id]));
}

#[test]
fn bad_config_names_the_field() {
    let b = Bundle::new("badcfg");
    let mut cfg = b.base_config(&["true"]);
    cfg["process"]["user"]["uid"] = json!("root");
    let out = b.run_config(&cfg);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("process.user.uid"),
        "{}",
        stderr(&out)
    );
    let mut cfg = b.base_config(&["true"]);
    cfg["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}, {"type": "pid"}]);
    let out = b.run_config(&cfg);
    assert!(
        stderr(&out).contains("linux.namespaces[2].type"),
        "{}",
        stderr(&out)
    );
    // Nothing is left behind by a failed create.
    assert!(!b.state_root.join(&b.id).exists());
}

#[test]
fn bad_ids_are_refused() {
    let b = Bundle::new("badid");
    b.write_config(&b.base_config(&["true"]));
    for id in ["../escape", "a/b", "..", "x y"] {
        let out = b.runc(&["create", "--bundle", b.dir.to_str().unwrap(), id]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("invalid container id"),
            "{id}: {}",
            stderr(&out)
        );
    }
    assert!(!b.dir.join("escape").exists());
}

#[test]
fn mount_symlinks_do_not_escape_the_rootfs() {
    let b = Bundle::new("escape");
    let target = format!("/tmp/virtkit-escape-{}", std::process::id());
    std::os::unix::fs::symlink(format!("/../../../..{target}"), b.rootfs.join("evil")).unwrap();
    let mut cfg = b.base_config(&["sh", "-c", "ls -d /tmp/virtkit-escape-*/m && echo inside"]);
    cfg["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/evil/m", "type": "tmpfs", "source": "tmpfs"}));
    // /tmp in the container is a tmpfs: show the image's own /tmp instead.
    cfg["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["destination"] != "/tmp");
    let text = ok(&b.run_config(&cfg));
    assert!(text.contains("inside"), "{text}");
    assert!(!Path::new(&target).exists(), "mount escaped to the host");
    assert!(b.rootfs.join(&target[1..]).join("m").is_dir());
}

#[test]
fn no_host_fds_leak_and_no_pivot_works() {
    let b = Bundle::new("fds");
    b.write_config(&b.base_config(&["ls", "/proc/self/fd"]));
    // fd 7 is open (without close-on-exec) in the runtime's caller.
    let out = capture(
        std::process::Command::new("/bin/sh").arg("-c").arg(format!(
            "exec 7</etc/hostname; exec {} --root {} run --no-pivot --bundle {} {}",
            runc_bin(),
            b.state_root.display(),
            b.dir.display(),
            b.id
        )),
        &b.dir,
    );
    let text = ok(&out);
    let fds: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "{text}");
}

#[test]
fn spec_and_features() {
    let b = Bundle::new("spec");
    let d = b.dir.join("specdir");
    std::fs::create_dir_all(&d).unwrap();
    ok(&b.runc(&["spec", "--bundle", d.to_str().unwrap()]));
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    assert_eq!(s["process"]["args"], json!(["sh"]));
    assert!(!b
        .runc(&["spec", "--bundle", d.to_str().unwrap()])
        .status
        .success());
    std::fs::remove_file(d.join("config.json")).unwrap();
    ok(&b.runc(&["spec", "--rootless", "--bundle", d.to_str().unwrap()]));
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    assert!(s["linux"]["uidMappings"].is_array());
    let f: serde_json::Value = serde_json::from_str(&ok(&b.runc(&["features"]))).unwrap();
    assert!(f["linux"]["seccomp"]["enabled"].as_bool().unwrap());
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("user")));
    let out = b.runc(&["--systemd-cgroup", "list"]);
    assert!(stderr(&out).contains("systemd"), "{}", stderr(&out));
}

#[test]
fn terminal_through_console_socket() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let b = Bundle::new("tty");
    let mut cfg = b.base_config(&["sh", "-c", "tty; stty size"]);
    cfg["process"]["terminal"] = json!(true);
    cfg["process"]["consoleSize"] = json!({"height": 30, "width": 100});
    b.write_config(&cfg);
    let sock = b.dir.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        container::tty::recv_fd(s.as_raw_fd()).unwrap()
    });
    let bundle = b.dir.to_str().unwrap();
    ok(&b.runc(&[
        "create",
        "--bundle",
        bundle,
        "--console-socket",
        sock.to_str().unwrap(),
        &b.id,
    ]));
    let master = std::fs::File::from(t.join().unwrap());
    ok(&b.runc(&["start", &b.id]));
    let mut out = Vec::new();
    let mut f = master;
    let mut buf = [0u8; 1024];
    // The master reads EIO once the container's side is closed.
    while let Ok(n @ 1..) = f.read(&mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("30 100"), "{text}");
}

/// /etc/passwd belongs to the image (the runtime reads it for HOME): a
/// FIFO there must not hang the runtime, and a symlink to an endless
/// device must not be read; both leave HOME=/.
#[test]
fn hostile_etc_passwd_is_not_read() {
    let b = Bundle::new("passwd");
    let passwd = b.rootfs.join("etc/passwd");
    b.write_config(&b.base_config(&["sh", "-c", "echo $HOME"]));
    for kind in ["fifo", "/dev/zero"] {
        std::fs::remove_file(&passwd).unwrap();
        if kind == "fifo" {
            let p = std::ffi::CString::new(passwd.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o644) }, 0);
        } else {
            std::os::unix::fs::symlink(kind, &passwd).unwrap();
        }
        let out = capture_with_deadline(
            b.cmd()
                .args(["run", "--bundle", b.dir.to_str().unwrap(), &b.id]),
            &b.dir,
            60,
        );
        assert_eq!(ok(&out), "/\n", "{kind}");
    }
}

/// `run --keep` leaves the stopped container for `delete`, as runc does;
/// `--log` that cannot be opened and an overflowing `--preserve-fds` are
/// errors that name them.
#[test]
fn run_keep_log_and_preserve_fds() {
    let b = Bundle::new("keep");
    b.write_config(&b.base_config(&["sh", "-c", "exit 3"]));
    let bundle = b.dir.to_str().unwrap();
    let out = b.runc(&["run", "--keep", "--bundle", bundle, &b.id]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(b.state()["status"], "stopped");
    ok(&b.runc(&["delete", &b.id]));
    assert!(!b.state_root.join(&b.id).exists());

    let out = b.runc(&["--log", "/nonexistent-dir/virtkit.log", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--log /nonexistent-dir/virtkit.log"),
        "{}",
        stderr(&out)
    );

    let out = b.runc(&[
        "run",
        "--preserve-fds",
        "4294967295",
        "--bundle",
        bundle,
        &b.id,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--preserve-fds 4294967295"),
        "{}",
        stderr(&out)
    );
    assert!(!b.state_root.join(&b.id).exists());
}

/// What `runc spec` writes (runc is the reference), for this bundle: a
/// non-terminal process running `args`, its cgroup under CGROUP_PARENT.
fn runc_spec(b: &Bundle, args: &[&str]) -> Value {
    let dir = b.dir.join("runc-spec");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = capture(Command::new("runc").arg("spec").current_dir(&dir), &dir);
    assert!(out.status.success(), "runc spec: {}", stderr(&out));
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    cfg["process"]["terminal"] = json!(false);
    cfg["process"]["args"] = json!(args);
    cfg["linux"]["cgroupsPath"] = json!(format!("{CGROUP_PARENT}/{}", b.id));
    cfg
}

/// Run `cfg` on the same bundle with runc itself (own state root, own
/// cgroup), for side-by-side comparison.
fn run_with_runc(b: &Bundle, cfg: &Value) -> Output {
    let id = format!("{}-runc", b.id);
    let mut cfg = cfg.clone();
    cfg["linux"]["cgroupsPath"] = json!(format!("{CGROUP_PARENT}/{id}"));
    b.write_config(&cfg);
    let out = capture(
        Command::new("runc")
            .arg("--root")
            .arg(b.dir.join("runc-state"))
            .args(["run", "--bundle", b.dir.to_str().unwrap(), &id]),
        &b.dir,
    );
    let _ = capture(
        Command::new("runc")
            .arg("--root")
            .arg(b.dir.join("runc-state"))
            .args(["delete", "--force", &id]),
        &b.dir,
    );
    // runc also makes the parent in the name=systemd and unified
    // hierarchies; like the others it stays (see Bundle's drop).
    out
}

#[test]
fn runc_spec_config_runs_like_runc() {
    // `runc spec` lists ambient capabilities but no inheritable ones: the
    // kernel refuses to raise them; runc goes on without, and so must we.
    let b = Bundle::new("runcspec");
    let cfg = runc_spec(
        &b,
        &[
            "sh",
            "-c",
            "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status; id -u",
        ],
    );
    let ours = b.run_config(&cfg);
    let theirs = run_with_runc(&b, &cfg);
    assert!(theirs.status.success(), "runc: {}", stderr(&theirs));
    let text = ok(&ours);
    assert_eq!(text, stdout(&theirs));
    assert!(text.contains("CapAmb:\t0000000000000000"), "{text}");
    let e = stderr(&ours);
    assert!(
        e.contains("warning") && e.contains("process.capabilities.ambient"),
        "{e}"
    );
    assert!(e.contains("CAP_KILL"), "{e}");
}

#[test]
fn setup_failures_are_not_config_errors_and_exit_1() {
    // Inheritable capabilities outside the bounding set cannot be set:
    // runc fails create with "unable to apply caps", exit 1. The error is
    // about setting the process up, not about config.json's syntax.
    let b = Bundle::new("setupfail");
    let mut cfg = runc_spec(&b, &["true"]);
    cfg["process"]["capabilities"]["inheritable"] = json!(["CAP_SYS_ADMIN"]);
    let ours = b.run_config(&cfg);
    let theirs = run_with_runc(&b, &cfg);
    assert_eq!(theirs.status.code(), Some(1), "runc: {}", stderr(&theirs));
    assert_eq!(ours.status.code(), Some(1), "{}", stderr(&ours));
    let e = stderr(&ours);
    assert!(e.contains("inheritable capability set"), "{e}");
    assert!(!e.contains("config.json"), "{e}");
    // Nothing stays behind.
    assert!(!b.state_root.join(&b.id).exists());
}

#[test]
fn devices_with_any_numbers_are_created_like_runc() {
    // Numbers that exist nowhere on the host: runc's default device rules
    // let the container mknod any node (c *:* m, b *:* m) but read and
    // write only the allowed ones.
    let b = Bundle::new("devnums");
    let script =
        "for d in /dev/test1 /dev/test2 /dev/fifo1; do stat -c '%n %F %t:%T %a %u:%g' $d; done; \
        cat /dev/test1 2>/dev/null || echo unreadable; echo fifo-ok > /dev/fifo1 & cat /dev/fifo1";
    let mut cfg = runc_spec(&b, &["sh", "-c", script]);
    cfg["linux"]["devices"] = json!([
        {"path": "/dev/test1", "type": "c", "major": 10, "minor": 666, "fileMode": 432, "uid": 0, "gid": 0},
        {"path": "/dev/test2", "type": "b", "major": 250, "minor": 7, "fileMode": 384},
        {"path": "/dev/fifo1", "type": "p", "major": 0, "minor": 0, "fileMode": 438, "uid": 1000, "gid": 1000}
    ]);
    let ours = ok(&b.run_config(&cfg));
    let theirs = run_with_runc(&b, &cfg);
    assert!(theirs.status.success(), "runc: {}", stderr(&theirs));
    assert_eq!(ours, stdout(&theirs));
    assert_eq!(
        ours,
        "/dev/test1 character special file a:29a 660 0:0\n\
         /dev/test2 block special file fa:7 600 0:0\n\
         /dev/fifo1 fifo 0:0 666 1000:1000\n\
         unreadable\nfifo-ok\n"
    );
}

#[test]
fn no_mount_namespace_shares_the_callers_like_runc() {
    // runc accepts a config without a mount namespace (and without masked
    // or read-only paths, which need one): the container then lives in
    // its caller's mount namespace, chrooted into the rootfs. Both run
    // inside a mount namespace of the test's own: their mounts stay there.
    let b = Bundle::new("nomntns");
    let script = "readlink /proc/self/ns/mnt; test -e /bin/busybox && echo rootfs; \
        test -e /work && echo host-visible; echo done";
    let mut cfg = runc_spec(&b, &["sh", "-c", script]);
    cfg["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "mount");
    cfg["linux"].as_object_mut().unwrap().remove("maskedPaths");
    cfg["linux"]
        .as_object_mut()
        .unwrap()
        .remove("readonlyPaths");
    b.write_config(&cfg);
    std::fs::rename(b.dir.join("config.json"), b.dir.join("ours.json")).unwrap();
    let mut rcfg = cfg.clone();
    rcfg["linux"]["cgroupsPath"] = json!(format!("{CGROUP_PARENT}/{}-runc", b.id));
    b.write_config(&rcfg);
    std::fs::rename(b.dir.join("config.json"), b.dir.join("runc.json")).unwrap();
    let run = |runtime: &str, cfg: &str, id: &str| {
        format!(
            "cp $B/{cfg} $B/config.json; {runtime} --root $B/{cfg}.state run --bundle $B {id}; echo \"exit $?\"; "
        )
    };
    // `exec` into such a container lands in its root too.
    let mut dcfg = cfg.clone();
    dcfg["process"]["args"] = json!(["sleep", "1000"]);
    b.write_config(&dcfg);
    std::fs::rename(b.dir.join("config.json"), b.dir.join("detached.json")).unwrap();
    let exec = "cp $B/detached.json $B/config.json; \
        $RUNC --root $B/d.state run -d --bundle $B $ID-d < /dev/null > /dev/null; \
        $RUNC --root $B/d.state exec $ID-d sh -c 'test -e /bin/busybox && echo exec-rootfs; test -e /work || echo exec-chrooted'; \
        $RUNC --root $B/d.state delete --force $ID-d; echo \"exit $?\"";
    let script = format!(
        "readlink /proc/self/ns/mnt; {} {} {exec}",
        run("$RUNC", "ours.json", "$ID"),
        run("runc", "runc.json", "$ID-runc")
    );
    let out = capture(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("RUNC", runc_bin())
            .env("B", &b.dir)
            .env("ID", &b.id),
        &b.dir,
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12, "{text}{}", stderr(&out));
    let ns = lines[0];
    assert_ne!(ns, host_ns("mnt"));
    assert_eq!(
        lines[1..5],
        [ns, "rootfs", "done", "exit 0"],
        "{text}{}",
        stderr(&out)
    );
    assert_eq!(
        lines[5..9],
        [ns, "rootfs", "done", "exit 0"],
        "runc: {text}"
    );
    // Masked paths without a mount namespace are refused, as by runc.
    cfg["linux"]["maskedPaths"] = json!(["/proc/kcore"]);
    let out = b.run_config(&cfg);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("linux.maskedPaths"),
        "{}",
        stderr(&out)
    );
}
