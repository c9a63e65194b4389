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

/// The devices-cgroup rules every container gets after its own, as runc's
/// defaults: mknod of any node (`linux.devices` may name numbers that exist
/// nowhere on the host; creating a node opens nothing), read/write of
/// [`crate::rootfs::DEFAULT_DEVICES`], terminals and /dev/net/tun.
pub const DEFAULT_DEVICE_RULES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

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
    /// The runtime created the container's own cgroup (the leaf, in every
    /// hierarchy), so every process in it belongs to the container and
    /// `delete` / `kill --all` may signal them all. False for a cgroup that
    /// existed before (and for states written before this field): then
    /// only the container's init is ever signalled.
    #[serde(default)]
    pub owned: bool,
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

/// Where a container's cgroup goes below each hierarchy's root: `/a/b`,
/// normalised (no empty or `.` components), never the root itself.
///
/// The root of a hierarchy holds every process of the host: a container
/// placed there would have `delete` kill them all, and its limits would
/// apply to the whole machine. Pure (no file system access), so it runs
/// before anything of the container exists.
pub fn resolve_path(cgroups_path: Option<&Path>, id: &str) -> Result<String> {
    let bad = |p: &Path, why: &str| {
        Err(Error::Cgroup(format!(
            "linux.cgroupsPath {:?}: {why}",
            p.to_string_lossy()
        )))
    };
    let (base, rel) = match cgroups_path {
        // `slice:prefix:name` is the systemd driver's syntax.
        Some(p) if p.to_string_lossy().contains(':') => {
            return bad(
                p,
                "is a systemd path; only the cgroupfs driver is supported",
            )
        }
        Some(p) if p.is_absolute() => ("", p.to_string_lossy().into_owned()),
        // Relative paths are below our own cgroup in runc; we keep every
        // container under one fixed parent instead so that nothing lands
        // inside the caller's cgroup (which may be managed by someone else).
        Some(p) => ("/virtkit", p.to_string_lossy().into_owned()),
        None => ("/virtkit", id.to_string()),
    };
    let shown = cgroups_path.unwrap_or(Path::new(id));
    let mut comps = Vec::new();
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => return bad(shown, "must not contain `..`"),
            c if c.contains('\0') => return bad(shown, "contains a NUL byte"),
            c => comps.push(c),
        }
    }
    if comps.is_empty() {
        return bad(
            shown,
            if base.is_empty() {
                "is the root of the cgroup hierarchy, which holds every process of the host; \
                 a container needs a cgroup of its own"
            } else {
                "names no cgroup"
            },
        );
    }
    Ok(format!("{base}/{}", comps.join("/")))
}

/// A manager for a new container's cgroup.
pub fn new_manager(cgroups_path: Option<&Path>, id: &str) -> Result<Box<dyn Manager>> {
    let cfg = Config {
        version: if unified_host() { 2 } else { 1 },
        path: resolve_path(cgroups_path, id)?,
        created: Vec::new(),
        owned: false,
    };
    Ok(open(cfg))
}

/// Processes in the cgroup `dir` and all its descendants (v1's
/// cgroup.procs lists only direct members), for counting only: those
/// outside our pid namespace are listed as 0. Directories that vanish
/// while we walk are skipped: a cgroup being removed has no processes.
pub(crate) fn pids_below(dir: &Path) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        match std::fs::read_to_string(d.join("cgroup.procs")) {
            Ok(s) => out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::Cgroup(format!(
                    "reading {}: {e}",
                    d.join("cgroup.procs").display()
                )))
            }
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                }
            }
        }
    }
    Ok(out)
}

/// Refuse a cgroup that existed before this container and has processes
/// (in it or below it), as runc 1.2 does: they are not the container's,
/// and nothing the runtime does to "its" cgroup may reach them.
pub(crate) fn refuse_populated(path: &str, dir: &Path) -> Result<()> {
    let pids = pids_below(dir)?;
    if !pids.is_empty() {
        return Err(Error::Cgroup(format!(
            "linux.cgroupsPath {path:?}: cgroup {} already has {} process(es); \
             a container needs an empty cgroup of its own",
            dir.display(),
            pids.len()
        )));
    }
    Ok(())
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
    // A process outside our pid namespace is listed as 0 (cgroup v2):
    // kill(0) would signal our own process group, kill(-1) everything.
    Ok(s.lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|p| *p > 0)
        .collect())
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
    use super::{resolve_path, shares_to_weight};
    use std::path::Path;

    #[test]
    fn the_hierarchy_root_is_never_a_container_cgroup() {
        for root in ["/", "//", "/.", "/./", "/././/.", "///."] {
            let e = resolve_path(Some(Path::new(root)), "c")
                .unwrap_err()
                .to_string();
            assert!(e.contains("root of the cgroup hierarchy"), "{root:?}: {e}");
        }
        // Relative paths land below /virtkit, but must still name a cgroup.
        for rel in ["", ".", "./", "./."] {
            assert!(resolve_path(Some(Path::new(rel)), "c").is_err(), "{rel:?}");
        }
        for bad in ["/a/../b", "..", "/..", "a/..", "/a/.."] {
            let e = resolve_path(Some(Path::new(bad)), "c")
                .unwrap_err()
                .to_string();
            assert!(e.contains("`..`"), "{bad:?}: {e}");
        }
        let e = resolve_path(Some(Path::new("system.slice:virtkit:x")), "c").unwrap_err();
        assert!(e.to_string().contains("systemd"), "{e}");
    }

    #[test]
    fn cgroup_paths_are_normalised() {
        let r = |p: &str| resolve_path(Some(Path::new(p)), "c").unwrap();
        assert_eq!(r("/a/b"), "/a/b");
        assert_eq!(r("//a/./b//"), "/a/b");
        assert_eq!(r("a/b"), "/virtkit/a/b");
        assert_eq!(r("./x/"), "/virtkit/x");
        assert_eq!(resolve_path(None, "id1").unwrap(), "/virtkit/id1");
    }

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
