//! cgroup v1: one directory per controller hierarchy.

use super::{mkdir_levels, read_pids, refuse_populated, write, Config, Manager};
use crate::error::{Error, Result};
use oci_spec::runtime::LinuxResources;
use std::path::{Path, PathBuf};

/// Controllers the runtime places containers in (and configures).
const CONTROLLERS: &[&str] = &[
    "memory", "pids", "cpu", "cpuacct", "cpuset", "blkio", "freezer", "devices",
];

pub struct V1 {
    cfg: Config,
    /// controller -> mount point of its hierarchy.
    mounts: Vec<(String, PathBuf)>,
}

/// Mount points of the v1 hierarchies, from /proc/self/mountinfo.
fn hierarchies() -> Vec<(String, PathBuf)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        if r.next() != Some("cgroup") {
            continue;
        }
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let opts = r.nth(1).unwrap_or("");
        for o in opts.split(',') {
            if CONTROLLERS.contains(&o) && !out.iter().any(|(c, _)| c == o) {
                out.push((o.to_string(), PathBuf::from(mp)));
            }
        }
    }
    out
}

impl V1 {
    pub fn new(cfg: Config) -> Self {
        V1 {
            cfg,
            mounts: hierarchies(),
        }
    }

    fn dir(&self, ctrl: &str) -> Option<PathBuf> {
        self.mounts
            .iter()
            .find(|(c, _)| c == ctrl)
            .map(|(_, mp)| mp.join(self.cfg.path.trim_start_matches('/')))
    }

    /// Distinct directories (controllers may share a hierarchy).
    fn dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = Vec::new();
        for (c, _) in &self.mounts {
            if let Some(d) = self.dir(c) {
                if !v.contains(&d) {
                    v.push(d);
                }
            }
        }
        v
    }

    fn set_file(&self, ctrl: &str, file: &str, value: &str) -> Result<()> {
        let dir = self
            .dir(ctrl)
            .ok_or_else(|| Error::Cgroup(format!("controller {ctrl} is not mounted")))?;
        write(&dir.join(file), value)
    }
}

/// cpuset.cpus and cpuset.mems start empty in a new v1 cpuset cgroup, and a
/// cgroup with empty ones accepts no tasks: copy them from the parent.
fn init_cpuset(dir: &Path) -> Result<()> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let cur = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if cur.trim().is_empty() {
            if let Some(parent) = dir.parent() {
                let pv = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                write(&dir.join(f), pv.trim())?;
            }
        }
    }
    Ok(())
}

impl Manager for V1 {
    fn create(&mut self) -> Result<()> {
        let mut created = Vec::new();
        let rel = self.cfg.path.clone();
        let mut seen: Vec<PathBuf> = Vec::new();
        let mut owned = true;
        for (ctrl, mp) in self.mounts.clone() {
            if seen.contains(&mp) {
                continue;
            }
            seen.push(mp.clone());
            let leaf = mp.join(rel.trim_start_matches('/'));
            let r = mkdir_levels(&mp, &rel).and_then(|new| {
                let leaf_is_new = new.contains(&leaf);
                created.extend(new);
                if !leaf_is_new {
                    // Someone else's cgroup: usable only while empty, and
                    // never ours to kill.
                    owned = false;
                    refuse_populated(&rel, &leaf)?;
                }
                if ctrl == "cpuset" {
                    let mut cur = mp.clone();
                    for comp in rel.split('/').filter(|c| !c.is_empty()) {
                        cur.push(comp);
                        init_cpuset(&cur)?;
                    }
                }
                Ok(())
            });
            if let Err(e) = r {
                // Nobody else knows these yet: undo them, deepest first.
                for d in created.iter().rev() {
                    let _ = std::fs::remove_dir(d);
                }
                return Err(e);
            }
        }
        self.cfg.created = created;
        self.cfg.owned = owned && !seen.is_empty();
        Ok(())
    }

    fn set(&self, r: &LinuxResources) -> Result<()> {
        if let Some(m) = r.memory() {
            if let Some(l) = m.limit() {
                self.set_file("memory", "memory.limit_in_bytes", &l.to_string())?;
            }
            if let Some(res) = m.reservation() {
                self.set_file("memory", "memory.soft_limit_in_bytes", &res.to_string())?;
            }
            if let Some(s) = m.swap() {
                // OCI's swap is memory+swap, which is exactly memsw.
                self.set_file("memory", "memory.memsw.limit_in_bytes", &s.to_string())?;
            }
            if let Some(sw) = m.swappiness() {
                self.set_file("memory", "memory.swappiness", &sw.to_string())?;
            }
            if m.disable_oom_killer() == Some(true) {
                self.set_file("memory", "memory.oom_control", "1")?;
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(s) = c.shares() {
                self.set_file("cpu", "cpu.shares", &s.to_string())?;
            }
            // Period first: a quota is checked against the current period.
            if let Some(p) = c.period() {
                self.set_file("cpu", "cpu.cfs_period_us", &p.to_string())?;
            }
            if let Some(q) = c.quota() {
                self.set_file("cpu", "cpu.cfs_quota_us", &q.to_string())?;
            }
            if let Some(cpus) = c.cpus() {
                self.set_file("cpuset", "cpuset.cpus", cpus)?;
            }
            if let Some(mems) = c.mems() {
                self.set_file("cpuset", "cpuset.mems", mems)?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".to_string()
            };
            self.set_file("pids", "pids.max", &v)?;
        }
        if let Some(b) = r.block_io() {
            if let Some(w) = b.weight() {
                let dir = self
                    .dir("blkio")
                    .ok_or_else(|| Error::Cgroup("controller blkio is not mounted".into()))?;
                // CFQ's blkio.weight is gone on multi-queue kernels; BFQ's
                // blkio.bfq.weight takes the same 1..1000 range.
                let file = ["blkio.weight", "blkio.bfq.weight"]
                    .into_iter()
                    .find(|f| dir.join(f).exists())
                    .ok_or_else(|| {
                        Error::Cgroup(
                            "linux.resources.blockIO.weight: neither blkio.weight nor blkio.bfq.weight exists on this kernel".into(),
                        )
                    })?;
                write(&dir.join(file), &w.to_string())?;
            }
        }
        if let Some(devs) = r.devices() {
            let dir = self
                .dir("devices")
                .ok_or_else(|| Error::Cgroup("controller devices is not mounted".into()))?;
            for d in devs {
                let typ = d
                    .typ()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or("a".into());
                let num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or("*".into());
                let rule = if typ == "a" {
                    "a".to_string()
                } else {
                    format!(
                        "{typ} {}:{} {}",
                        num(d.major()),
                        num(d.minor()),
                        d.access().clone().unwrap_or_else(|| "rwm".into())
                    )
                };
                let file = if d.allow() {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                write(&dir.join(file), &rule)?;
            }
            // The devices every container gets (see rootfs::DEFAULT_DEVICES),
            // plus /dev/pts/* and /dev/ptmx for terminals.
            for rule in crate::cgroups::DEFAULT_DEVICE_RULES {
                write(&dir.join("devices.allow"), rule)?;
            }
        }
        Ok(())
    }

    fn add(&self, pid: i32) -> Result<()> {
        for d in self.dirs() {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn add_self(&self) -> Result<()> {
        for d in self.dirs() {
            write(&d.join("tasks"), "0")?;
        }
        Ok(())
    }

    fn freeze(&self, frozen: bool) -> Result<()> {
        let want = if frozen { "FROZEN" } else { "THAWED" };
        self.set_file("freezer", "freezer.state", want)?;
        let dir = self.dir("freezer").unwrap_or_default();
        // Freezing is asynchronous in v1: wait until the state settles.
        for _ in 0..1000 {
            let s = std::fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();
            if s.trim() == want {
                return Ok(());
            }
            if frozen && s.trim() == "FREEZING" {
                write(&dir.join("freezer.state"), want)?;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(Error::Cgroup(format!("freezer did not reach {want}")))
    }

    fn is_frozen(&self) -> bool {
        self.dir("freezer")
            .and_then(|d| std::fs::read_to_string(d.join("freezer.state")).ok())
            .is_some_and(|s| s.trim() == "FROZEN")
    }

    fn pids(&self) -> Result<Vec<i32>> {
        let ctrl = if self.dir("pids").is_some() {
            "pids"
        } else {
            "memory"
        };
        let dir = self
            .dir(ctrl)
            .ok_or_else(|| Error::Cgroup("no pids or memory hierarchy".into()))?;
        read_pids(&dir.join("cgroup.procs"))
    }

    fn oom_kills(&self) -> u64 {
        self.dir("memory")
            .and_then(|d| std::fs::read_to_string(d.join("memory.oom_control")).ok())
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    fn destroy(&self) -> Result<()> {
        super::destroy_created(&self.dirs(), &self.cfg.created)
    }

    fn config(&self) -> Config {
        self.cfg.clone()
    }
}
