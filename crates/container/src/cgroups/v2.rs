//! cgroup v2: one unified hierarchy at /sys/fs/cgroup.

use super::{mkdir_levels, read_pids, refuse_populated, shares_to_weight, write, Config, Manager};
use crate::error::Result;
use oci_spec::runtime::LinuxResources;
use std::path::PathBuf;

const ROOT: &str = "/sys/fs/cgroup";

pub struct V2 {
    cfg: Config,
}

impl V2 {
    pub fn new(cfg: Config) -> Self {
        V2 { cfg }
    }

    fn dir(&self) -> PathBuf {
        PathBuf::from(ROOT).join(self.cfg.path.trim_start_matches('/'))
    }
}

impl Manager for V2 {
    fn create(&mut self) -> Result<()> {
        // Controllers must be enabled in every ancestor's subtree_control
        // before the leaf gets their files.
        let mut cur = PathBuf::from(ROOT);
        let avail = std::fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
        let enable: String = avail
            .split_whitespace()
            .filter(|c| ["cpu", "cpuset", "memory", "pids", "io"].contains(c))
            .map(|c| format!("+{c} "))
            .collect();
        let comps: Vec<&str> = self.cfg.path.split('/').filter(|c| !c.is_empty()).collect();
        self.cfg.created = mkdir_levels(&cur, &self.cfg.path)?;
        let leaf = self.dir();
        self.cfg.owned = self.cfg.created.contains(&leaf);
        if !self.cfg.owned {
            // Someone else's cgroup: usable only while empty, and never
            // ours to kill.
            if let Err(e) = refuse_populated(&self.cfg.path, &leaf) {
                for d in self.cfg.created.iter().rev() {
                    let _ = std::fs::remove_dir(d);
                }
                self.cfg.created.clear();
                return Err(e);
            }
        }
        for c in comps {
            if !enable.is_empty() {
                // Best effort: a controller already used by processes in
                // this level cannot be delegated (EBUSY); limits on it then
                // fail later with a message naming the file.
                let _ = write(&cur.join("cgroup.subtree_control"), enable.trim());
            }
            cur.push(c);
        }
        Ok(())
    }

    fn set(&self, r: &LinuxResources) -> Result<()> {
        let d = self.dir();
        // v2 enforces device rules only through an eBPF program attached
        // to the cgroup; ignoring them would let a process with CAP_MKNOD
        // open any device.
        if let Some(devs) = r.devices().as_ref().filter(|d| !d.is_empty()) {
            let prog = super::devfilter::program(&super::devfilter::rules_for(devs)?);
            super::devfilter::attach(&d, &prog)?;
        }
        if let Some(m) = r.memory() {
            let lim = |v: i64| {
                if v < 0 {
                    "max".to_string()
                } else {
                    v.to_string()
                }
            };
            if let Some(l) = m.limit() {
                write(&d.join("memory.max"), &lim(l))?;
            }
            if let Some(res) = m.reservation() {
                write(&d.join("memory.low"), &lim(res))?;
            }
            if let Some(s) = m.swap() {
                // OCI's swap is memory+swap; v2's swap.max is swap alone.
                let v = match (s, m.limit()) {
                    (s, _) if s < 0 => "max".to_string(),
                    (s, Some(l)) if l >= 0 => (s - l).max(0).to_string(),
                    (s, _) => s.to_string(),
                };
                write(&d.join("memory.swap.max"), &v)?;
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(s) = c.shares() {
                write(&d.join("cpu.weight"), &shares_to_weight(s).to_string())?;
            }
            if c.quota().is_some() || c.period().is_some() {
                let q = match c.quota() {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".to_string(),
                };
                write(
                    &d.join("cpu.max"),
                    &format!("{q} {}", c.period().unwrap_or(100_000)),
                )?;
            }
            if let Some(cpus) = c.cpus() {
                write(&d.join("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = c.mems() {
                write(&d.join("cpuset.mems"), mems)?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            write(&d.join("pids.max"), &v)?;
        }
        if let Some(b) = r.block_io() {
            if let Some(w) = b.weight() {
                if d.join("io.bfq.weight").exists() {
                    write(&d.join("io.bfq.weight"), &w.to_string())?;
                } else {
                    // io.weight is 1..10000, blkio weight 10..1000.
                    let w2 = 1 + ((u64::from(w).clamp(10, 1000) - 10) * 9999) / 990;
                    write(&d.join("io.weight"), &format!("default {w2}"))?;
                }
            }
        }
        Ok(())
    }

    fn add(&self, pid: i32) -> Result<()> {
        write(&self.dir().join("cgroup.procs"), &pid.to_string())
    }

    fn add_self(&self) -> Result<()> {
        // cgroup.threads only works in threaded subtrees; "0" moves us.
        write(&self.dir().join("cgroup.procs"), "0")
    }

    fn freeze(&self, frozen: bool) -> Result<()> {
        write(
            &self.dir().join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )
    }

    fn is_frozen(&self) -> bool {
        std::fs::read_to_string(self.dir().join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
    }

    fn pids(&self) -> Result<Vec<i32>> {
        read_pids(&self.dir().join("cgroup.procs"))
    }

    fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.dir().join("memory.events"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    fn destroy(&self) -> Result<()> {
        super::destroy_created(&[self.dir()], &self.cfg.created)
    }

    fn config(&self) -> Config {
        self.cfg.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_device_rules_are_refused_by_name() {
        let v2 = V2::new(Config {
            version: 2,
            path: "/virtkit-unit-test-never-created".into(),
            created: Vec::new(),
            owned: false,
        });
        let r: LinuxResources =
            serde_json::from_str(r#"{"devices":[{"allow":false,"type":"c","access":"rwx"}]}"#)
                .unwrap();
        let e = v2.set(&r).unwrap_err().to_string();
        assert!(e.contains("linux.resources.devices[0].access"), "{e}");
    }
}
