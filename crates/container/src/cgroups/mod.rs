//! cgroups v1 and v2 behind one interface.
//!
//! Hybrid hosts (v1 controllers under /sys/fs/cgroup/<controller> and an
//! empty cgroup2 at /sys/fs/cgroup/unified) use v1; a host whose
//! /sys/fs/cgroup is itself cgroup2 uses v2.

pub mod devfilter;
mod v1;
mod v2;

use crate::error::{Error, Result};
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a container's cgroup is, as remembered in its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// 1 or 2.
    pub version: u8,
    /// Path below each hierarchy's root, absolute (`/virtkit/<id>`).
    pub path: String,
    /// Directories this runtime created (parents first), removed on delete.
    #[serde(default)]
    pub created: Vec<PathBuf>,
}

/// What the runtime asks of a cgroup, whatever its version.
pub trait Manager {
    /// Create the cgroup directories (remembering which were new).
    fn create(&mut self) -> Result<()>;
    /// Apply resource limits from the spec.
    fn set(&self, r: &LinuxResources) -> Result<()>;
    /// Move a process (and its future children) into the cgroup.
    fn add(&self, pid: i32) -> Result<()>;
    /// Move the calling process, which must have a single thread, into
    /// the cgroup. On v1 it writes "0" to `tasks`: moving only the caller's
    /// own thread skips the kernel's global threadgroup rwsem and its RCU
    /// grace period (5 to 20 ms here), which moving a whole process
    /// through `cgroup.procs` costs on every container start.
    fn add_self(&self) -> Result<()>;
    fn freeze(&self, frozen: bool) -> Result<()>;
    fn is_frozen(&self) -> bool;
    /// Processes in the cgroup (host pids).
    fn pids(&self) -> Result<Vec<i32>>;
    /// How many processes the OOM killer killed in this cgroup.
    fn oom_kills(&self) -> u64;
    /// Remove the directories this runtime created.
    fn destroy(&self) -> Result<()>;
    fn config(&self) -> Config;
}

/// Is this host's /sys/fs/cgroup a pure cgroup v2 hierarchy?
pub fn unified_host() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// A manager for a new container's cgroup.
pub fn new_manager(cgroups_path: Option<&Path>, id: &str) -> Result<Box<dyn Manager>> {
    let path = match cgroups_path {
        // `slice:prefix:name` is the systemd driver's syntax.
        Some(p) if p.to_string_lossy().contains(':') => {
            return Err(Error::Cgroup(format!(
                "linux.cgroupsPath {p:?} is a systemd path; only the cgroupfs driver is supported"
            )))
        }
        Some(p) if p.is_absolute() => p.to_string_lossy().into_owned(),
        // Relative paths are below our own cgroup in runc; we keep every
        // container under one fixed parent instead so that nothing lands
        // inside the caller's cgroup (which may be managed by someone else).
        Some(p) => format!("/virtkit/{}", p.display()),
        None => format!("/virtkit/{id}"),
    };
    if path.split('/').any(|c| c == "..") {
        return Err(Error::Cgroup(format!(
            "linux.cgroupsPath {path:?} must not contain `..`"
        )));
    }
    let cfg = Config {
        version: if unified_host() { 2 } else { 1 },
        path,
        created: Vec::new(),
    };
    Ok(open(cfg))
}

/// A manager for an existing container's cgroup (from its state).
pub fn open(cfg: Config) -> Box<dyn Manager> {
    if cfg.version == 2 {
        Box::new(v2::V2::new(cfg))
    } else {
        Box::new(v1::V1::new(cfg))
    }
}

pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .map_err(|e| Error::Cgroup(format!("writing {value:?} to {}: {e}", path.display())))
}

pub(crate) fn read_pids(path: &Path) -> Result<Vec<i32>> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| Error::Cgroup(format!("reading {}: {e}", path.display())))?;
    Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Remove a cgroup directory, retrying briefly while the last processes
/// finish leaving it (rmdir gives EBUSY until then).
pub(crate) fn remove_dir(path: &Path) -> Result<()> {
    for _ in 0..200 {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => return Err(Error::Cgroup(format!("removing {}: {e}", path.display()))),
        }
    }
    Err(Error::Cgroup(format!(
        "removing {}: still busy after 1s",
        path.display()
    )))
}

/// Create `root/rel` level by level; returns the directories that were new.
///
/// Another runtime deleting its container may remove a shared parent
/// (once empty) between our mkdir of it and of the level below: on ENOENT
/// start again from the top, a bounded number of times.
pub(crate) fn mkdir_levels(root: &Path, rel: &str) -> Result<Vec<PathBuf>> {
    const ATTEMPTS: usize = 20;
    let mut created = Vec::new();
    'attempt: for attempt in 1..=ATTEMPTS {
        let mut cur = root.to_path_buf();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            cur.push(comp);
            match std::fs::create_dir(&cur) {
                Ok(()) => created.push(cur.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < ATTEMPTS => {
                    // A parent vanished under us; it is no longer "ours".
                    created.retain(|p| p.exists());
                    continue 'attempt;
                }
                Err(e) => {
                    for d in created.iter().rev() {
                        let _ = std::fs::remove_dir(d);
                    }
                    return Err(Error::Cgroup(format!("creating {}: {e}", cur.display())));
                }
            }
        }
        break;
    }
    Ok(created)
}

/// cpu.shares (v1, 2..262144) to cpu.weight (v2, 1..10000), as runc does.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    // config.json may hold any u64: clamp to v1's range before scaling.
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// Remove the leaf cgroups we created (waiting for them to empty), then the
/// parents we created if no other container uses them any more.
pub(crate) fn destroy_created(leaves: &[PathBuf], created: &[PathBuf]) -> Result<()> {
    for leaf in leaves {
        if created.contains(leaf) {
            remove_dir(leaf)?;
        }
    }
    for d in created.iter().rev() {
        if !leaves.contains(d) {
            // Still holding other containers' cgroups: keep it.
            let _ = std::fs::remove_dir(d);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shares_to_weight;

    #[test]
    fn shares_map_to_weight_like_runc_and_never_overflow() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        // Values out of v1's range are clamped, not wrapped.
        assert_eq!(shares_to_weight(u64::MAX), 10_000);
        assert_eq!(shares_to_weight(1), 1);
    }
}
