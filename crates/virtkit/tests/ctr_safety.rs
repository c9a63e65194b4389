//! A config.json must not reach the host: cgroups that are not the
//! container's own, and sysctls of namespaces it shares with the host.
//!
//! Every dangerous case runs the runtime inside namespaces and a scratch
//! cgroup this test creates, so that a regression hits only the test:
//! - cgroup cases: `unshare --cgroup --mount --pid` from inside a scratch
//!   cgroup, with the cgroup hierarchies mounted again in the new mount
//!   namespace, so the runtime's "root of the hierarchy" is the scratch
//!   cgroup, and the pid namespace hides every other process of the host;
//! - sysctl cases: `unshare --ipc --net --uts --mount --pid`, so a
//!   namespaced sysctl written "on the host" lands in the test's namespaces,
//!   where the test sees it; host-wide ones (vm.swappiness) are compared
//!   before and after, and put back if a regression changed them.
//!
//! Needs root.

mod ctr_support;

use ctr_support::*;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cgroup v1 hierarchies of the host: (directory under /sys/fs/cgroup,
/// mount options naming its controllers), named ones (systemd) left out.
fn v1_hierarchies() -> Vec<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let r: Vec<&str> = right.split(' ').collect();
        let Some(name) = left
            .split(' ')
            .nth(4)
            .and_then(|m| m.strip_prefix("/sys/fs/cgroup/"))
        else {
            continue;
        };
        if r[0] != "cgroup" || name.contains('/') {
            continue;
        }
        let ctrls: Vec<&str> = r[2]
            .split(',')
            .filter(|o| !["rw", "ro"].contains(o) && !o.contains('='))
            .collect();
        if !ctrls.is_empty() {
            out.push((name.to_string(), ctrls.join(",")));
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Version {
    V1,
    V2,
}

/// A scratch cgroup in every hierarchy the runtime would use: the root of
/// what the runtime sees in `Scratch::run`. Removed (with everything
/// below it) on drop.
struct Scratch {
    version: Version,
    dirs: Vec<PathBuf>,
}

impl Scratch {
    fn new(name: &str, version: Version) -> Scratch {
        let leaf = format!("virtkit-safety-{name}-{}", std::process::id());
        let dirs: Vec<PathBuf> = match version {
            Version::V1 => v1_hierarchies()
                .iter()
                .map(|(h, _)| Path::new("/sys/fs/cgroup").join(h).join(&leaf))
                .collect(),
            Version::V2 => vec![Path::new("/sys/fs/cgroup/unified").join(&leaf)],
        };
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
            init_cpuset(d);
        }
        Scratch { version, dirs }
    }

    /// Run `script` (sh) as pid 1 of new cgroup, mount, pid, ipc, net and
    /// uts namespaces, inside the scratch cgroup, with the cgroup file
    /// systems mounted again so that the scratch cgroup is their root.
    /// The script gets $RUNC, $B (the bundle), $ID and $STATE.
    fn run(&self, b: &Bundle, script: &str) -> Output {
        let mounts = match self.version {
            Version::V1 => {
                let mut m = String::from("mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup\n");
                for (h, opts) in v1_hierarchies() {
                    m += &format!(
                        "mkdir /sys/fs/cgroup/{h} && mount -t cgroup -o {opts} cgroup /sys/fs/cgroup/{h}\n"
                    );
                }
                m
            }
            // The runtime takes a cgroup2 file system at /sys/fs/cgroup
            // for a pure v2 host.
            Version::V2 => "mount -t cgroup2 cgroup2 /sys/fs/cgroup\n".to_string(),
        };
        // The host's cgroup mounts go first: left shadowed below the new
        // ones, they would still be listed in mountinfo.
        let inner = format!("set -e\numount -l /sys/fs/cgroup\n{mounts}set +e\n{script}");
        let join: String = self
            .dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs || exit 99\n", d.display()))
            .collect();
        let outer = format!(
            "{join}exec unshare --cgroup --mount --propagation private --pid --fork --mount-proc \
             --ipc --net --uts sh -c \"$INNER\""
        );
        // A process group of its own: a runtime that signals process 0
        // (how cgroup v2 lists a process outside its pid namespace) must
        // not reach the test.
        capture_with_deadline(
            Command::new("sh")
                .process_group(0)
                .arg("-c")
                .arg(outer)
                .env("INNER", inner)
                .env("RUNC", runc_bin())
                .env("B", &b.dir)
                .env("ID", &b.id)
                .env("STATE", &b.state_root),
            &b.dir,
            120,
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The pid namespace is gone, so are its processes: remove the
        // cgroups, deepest first.
        fn rm(d: &Path) {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        rm(&e.path());
                    }
                }
            }
            for _ in 0..200 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        for d in &self.dirs {
            rm(d);
        }
    }
}

/// A new v1 cpuset cgroup takes no process until it has cpus and mems.
fn init_cpuset(d: &Path) {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        if d.join(f).exists() {
            let v = std::fs::read_to_string(d.parent().unwrap().join(f)).unwrap();
            std::fs::write(d.join(f), v.trim()).unwrap();
        }
    }
}

/// Shell: start a `sleep` in the cgroup `$1` (relative to the runtime's
/// view of the hierarchy roots; "" for the root itself) of every
/// hierarchy, wait until it is there, and leave its pid in $canary.
const CANARY_FN: &str = r#"
roots() {
    if [ -e /sys/fs/cgroup/cgroup.procs ]; then echo /sys/fs/cgroup; else ls -d /sys/fs/cgroup/*; fi
}
canary() {
    # The ready file is the test's own (tests run in parallel; a shared
    # one let a test go on while its canary was still forking).
    rm -f "$B/canary-ready"
    ROOTS="$(roots)" READY="$B/canary-ready" sh -c '
        for d in $ROOTS; do
            mkdir -p "$d/$0"
            if [ -e "$d/$0/cpuset.cpus" ] && [ -z "$(cat "$d/$0/cpuset.cpus")" ]; then
                cat "$d/cpuset.cpus" > "$d/$0/cpuset.cpus"
                cat "$d/cpuset.mems" > "$d/$0/cpuset.mems"
            fi
            echo $$ > "$d/$0/cgroup.procs"
        done
        : > "$READY"  # a builtin: a forked touch would be counted in the cgroup until it exits
        exec sleep 1000' "$1" &
    canary=$!
    while [ ! -e "$B/canary-ready" ]; do sleep 0.01; done
}
alive() { if kill -0 "$2" 2>/dev/null; then echo "$1 alive"; else echo "$1 dead"; fi; }
"#;

fn cgroup_config(b: &Bundle, path: &str, args: &[&str]) -> Value {
    let mut cfg = b.base_config(args);
    cfg["linux"]["cgroupsPath"] = json!(path);
    cfg
}

/// `cgroupsPath` naming the root of the hierarchy (however spelled) is
/// refused, and a process elsewhere survives.
fn root_cgroup_is_refused(version: Version, name: &str) {
    let b = Bundle::new(name);
    let scratch = Scratch::new(name, version);
    let mut script = String::from(CANARY_FN);
    // One canary in the "root" (the scratch cgroup), one in a sibling.
    script += "canary ''; root=$canary; canary sibling; sib=$canary\n";
    for (i, path) in ["/", "//", "/.", "/./"].iter().enumerate() {
        b.write_config(&cgroup_config(&b, path, &["true"]));
        std::fs::rename(b.dir.join("config.json"), b.dir.join(format!("c{i}.json"))).unwrap();
        script += &format!(
            "cp $B/c{i}.json $B/config.json; $RUNC --root $STATE run --bundle $B $ID-{i} 2>&1; \
             echo \"exit $?\"; alive root $root; alive sibling $sib\n"
        );
    }
    let out = scratch.run(&b, &script);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert_eq!(
        text.matches("root of the cgroup hierarchy").count(),
        4,
        "{text}"
    );
    assert_eq!(text.matches("exit 1\n").count(), 4, "{text}");
    assert!(!text.contains("dead"), "{text}");
    assert_eq!(text.matches("alive").count(), 8, "{text}");
}

#[test]
fn root_cgroup_is_refused_v1() {
    root_cgroup_is_refused(Version::V1, "rootcg1");
}

#[test]
fn root_cgroup_is_refused_v2() {
    root_cgroup_is_refused(Version::V2, "rootcg2");
}

/// `cgroupsPath` naming a cgroup that already has processes (or has them
/// in a cgroup below it) is refused; they survive.
fn populated_cgroup_is_refused(version: Version, name: &str) {
    let b = Bundle::new(name);
    let scratch = Scratch::new(name, version);
    let mut script = String::from(CANARY_FN);
    script += "canary victim; v=$canary; canary parent/child; c=$canary\n";
    for (i, path) in ["/victim", "/parent"].iter().enumerate() {
        b.write_config(&cgroup_config(&b, path, &["true"]));
        std::fs::rename(b.dir.join("config.json"), b.dir.join(format!("c{i}.json"))).unwrap();
        script += &format!(
            "cp $B/c{i}.json $B/config.json; $RUNC --root $STATE run --bundle $B $ID-{i} 2>&1; \
             echo \"exit $?\"; alive victim $v; alive child $c; ls $STATE\n"
        );
    }
    let out = scratch.run(&b, &script);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert_eq!(
        text.matches("already has 1 process(es)").count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("exit 1\n").count(), 2, "{text}");
    assert!(!text.contains("dead"), "{text}");
    // Nothing of the refused containers stays behind.
    assert!(!text.contains(&b.id), "{text}");
}

#[test]
fn populated_cgroup_is_refused_v1() {
    populated_cgroup_is_refused(Version::V1, "popcg1");
}

#[test]
fn populated_cgroup_is_refused_v2() {
    populated_cgroup_is_refused(Version::V2, "popcg2");
}

/// A container in a cgroup that existed (empty) before it: the runtime
/// accepts it, as runc does, but remembers that the cgroup is not its
/// own, so `kill --all` and `delete` reach the container's init only, not
/// a process that joined the cgroup later. A container in a cgroup the
/// runtime created is killed whole, as before.
fn foreign_cgroup_members_survive(version: Version, name: &str) {
    let b = Bundle::new(name);
    let scratch = Scratch::new(name, version);
    b.write_config(&cgroup_config(&b, "/shared", &["sleep", "1000"]));
    let script = format!(
        "{CANARY_FN}
        for d in $(roots); do
            mkdir -p $d/shared
            [ -e $d/shared/cpuset.cpus ] && cat $d/cpuset.cpus > $d/shared/cpuset.cpus && cat $d/cpuset.mems > $d/shared/cpuset.mems
        done
        $RUNC --root $STATE run -d --bundle $B $ID > /dev/null 2>$B/run.err < /dev/null; r=$?; cat $B/run.err >&2; echo \"run $r\"
        grep -o '\"owned\":[a-z]*' $STATE/$ID/state.json
        init=$($RUNC --root $STATE state $ID | sed -n 's/.*\"pid\": *\\([0-9]*\\).*/\\1/p')
        canary shared; v=$canary
        $RUNC --root $STATE kill --all $ID KILL; echo \"kill $?\"
        while kill -0 $init 2>/dev/null; do sleep 0.01; done
        $RUNC --root $STATE delete --force $ID; echo \"delete $?\"
        alive joined $v
        alive init $init
        sed 's/\"cgroupsPath\": *\"[^\"]*\"/\"cgroupsPath\": \"\\/own\"/' $B/config.json > $B/c2 && mv $B/c2 $B/config.json
        $RUNC --root $STATE run -d --bundle $B $ID-own > /dev/null 2>$B/run.err < /dev/null; r=$?; cat $B/run.err >&2; echo \"run $r\"
        grep -o '\"owned\":[a-z]*' $STATE/$ID-own/state.json
        $RUNC --root $STATE exec -d $ID-own sleep 1000; echo \"exec $?\"
        n=$(cat $(find /sys/fs/cgroup -maxdepth 2 -name own | head -1)/cgroup.procs | wc -l); echo \"members $n\"
        $RUNC --root $STATE delete --force $ID-own; echo \"delete $?\"
        n=$(find /sys/fs/cgroup -maxdepth 2 -name own | wc -l); echo \"left $n\"
        "
    );
    let out = scratch.run(&b, &script);
    let text = stdout(&out);
    let expect = [
        "run 0",
        "\"owned\":false",
        "kill 0",
        "delete 0",
        "joined alive",
        "init dead",
        "run 0",
        "\"owned\":true",
        "exec 0",
        "members 2",
        "delete 0",
        "left 0",
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, expect, "{text}{}", stderr(&out));
}

#[test]
fn foreign_cgroup_members_survive_v1() {
    foreign_cgroup_members_survive(Version::V1, "foreign1");
}

#[test]
fn foreign_cgroup_members_survive_v2() {
    foreign_cgroup_members_survive(Version::V2, "foreign2");
}

/// Run the runtime in new ipc, net, uts, mount and pid namespaces (the
/// "host" of the runtime is then the test's), with $B, $ID and friends
/// set as in Scratch::run.
fn run_in_test_namespaces(b: &Bundle, script: &str) -> Output {
    capture_with_deadline(
        Command::new("unshare")
            .process_group(0)
            .args([
                "--mount",
                "--propagation",
                "private",
                "--ipc",
                "--net",
                "--uts",
                "--pid",
                "--fork",
                "--mount-proc",
                "sh",
                "-c",
                script,
            ])
            .env("RUNC", runc_bin())
            .env("B", &b.dir)
            .env("ID", &b.id)
            .env("STATE", &b.state_root),
        &b.dir,
        120,
    )
}

fn read_sysctl(name: &str) -> String {
    std::fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/")))
        .unwrap()
        .trim()
        .to_string()
}

/// Nothing of a refused container exists: no state, no cgroup.
fn assert_nothing_created(b: &Bundle) {
    assert!(!b.state_root.join(&b.id).exists());
    assert!(!Path::new("/sys/fs/cgroup/pids")
        .join(CGROUP_PARENT.trim_start_matches('/'))
        .join(&b.id)
        .exists());
}

#[test]
fn host_wide_sysctl_is_refused() {
    let b = Bundle::new("sysctl-vm");
    let before = read_sysctl("vm.swappiness");
    let other = if before == "37" { "38" } else { "37" };
    let mut cfg = b.base_config(&["cat", "/proc/sys/vm/swappiness"]);
    cfg["linux"]["sysctl"] = json!({ "vm.swappiness": other });
    b.write_config(&cfg);
    let out = run_in_test_namespaces(&b, "$RUNC --root $STATE run --bundle $B $ID");
    let after = read_sysctl("vm.swappiness");
    if after != before {
        // A regression: put the host back before failing.
        std::fs::write("/proc/sys/vm/swappiness", &before).unwrap();
        panic!("vm.swappiness changed on the host: {before} -> {after}");
    }
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let e = stderr(&out);
    assert!(e.contains("linux.sysctl.vm.swappiness"), "{e}");
    assert!(e.contains("not namespaced"), "{e}");
    assert!(stdout(&out).is_empty());
    assert_nothing_created(&b);
}

#[test]
fn ipc_sysctl_needs_an_ipc_namespace() {
    let b = Bundle::new("sysctl-ipc");
    let host = read_sysctl("kernel.msgmax");
    let value = if host == "12345" { "12346" } else { "12345" };
    // Without an ipc namespace: refused, and the runtime's own ipc
    // namespace (the test's) keeps its value.
    let mut cfg = b.base_config(&["cat", "/proc/sys/kernel/msgmax"]);
    cfg["linux"]["sysctl"] = json!({ "kernel.msgmax": value });
    let ns = cfg["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| n["type"] != "ipc");
    b.write_config(&cfg);
    std::fs::copy(b.dir.join("config.json"), b.dir.join("no-ipc.json")).unwrap();
    // With one: the container sees the value, nobody else does.
    cfg["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "ipc"}));
    b.write_config(&cfg);
    std::fs::rename(b.dir.join("config.json"), b.dir.join("ipc.json")).unwrap();
    let script = "cat /proc/sys/kernel/msgmax
        cp $B/no-ipc.json $B/config.json; $RUNC --root $STATE run --bundle $B $ID; echo \"exit $?\"
        cat /proc/sys/kernel/msgmax
        cp $B/ipc.json $B/config.json; $RUNC --root $STATE run --bundle $B $ID; echo \"exit $?\"
        cat /proc/sys/kernel/msgmax";
    let out = run_in_test_namespaces(&b, script);
    assert_eq!(
        read_sysctl("kernel.msgmax"),
        host,
        "the host's msgmax changed"
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    // A new ipc namespace starts with the kernel's default (8192).
    let fresh = "8192";
    assert_eq!(
        lines,
        [fresh, "exit 1", fresh, value, "exit 0", fresh],
        "{text}{}",
        stderr(&out)
    );
    let e = stderr(&out);
    assert!(e.contains("linux.sysctl.kernel.msgmax"), "{e}");
    assert!(e.contains("ipc namespace"), "{e}");
}

#[test]
fn net_and_uts_sysctls_need_their_namespaces() {
    let b = Bundle::new("sysctl-net");
    let mut cfg = b.base_config(&["true"]);
    cfg["linux"]["sysctl"] = json!({ "net.ipv4.ip_default_ttl": "33" });
    cfg["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "network");
    b.write_config(&cfg);
    std::fs::rename(b.dir.join("config.json"), b.dir.join("no-net.json")).unwrap();
    let mut cfg = b.base_config(&["true"]);
    cfg["linux"]["sysctl"] = json!({ "kernel.domainname": "evil" });
    cfg["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "uts");
    cfg.as_object_mut().unwrap().remove("hostname");
    b.write_config(&cfg);
    std::fs::rename(b.dir.join("config.json"), b.dir.join("no-uts.json")).unwrap();
    let script = "cat /proc/sys/net/ipv4/ip_default_ttl /proc/sys/kernel/domainname
        for c in no-net no-uts; do
            cp $B/$c.json $B/config.json; $RUNC --root $STATE run --bundle $B $ID; echo \"exit $?\"
        done
        cat /proc/sys/net/ipv4/ip_default_ttl /proc/sys/kernel/domainname";
    let out = run_in_test_namespaces(&b, script);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        ["64", "(none)", "exit 1", "exit 1", "64", "(none)"],
        "{text}{}",
        stderr(&out)
    );
    let e = stderr(&out);
    assert!(e.contains("linux.sysctl.net.ipv4.ip_default_ttl"), "{e}");
    assert!(e.contains("linux.sysctl.kernel.domainname"), "{e}");
}
