//! Container ids, the state directory under `--root`, and the state record.
//!
//! Layout: `<root>/<id>/state.json` (written atomically: temp file,
//! rename), `<root>/<id>/config.json` (the spec as created, for exec, hooks
//! and delete), and `<root>/<id>/exec.fifo` while the container is created
//! but not started.

use crate::error::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const CONFIG_FILE: &str = "config.json";
pub const FIFO_FILE: &str = "exec.fifo";
/// Container ids longer than this are refused: they become file names.
pub const MAX_ID_LEN: usize = 1024;

/// Check a container id: it names a directory under `--root`, so it must not
/// be able to leave it.
pub fn validate_id(id: &str) -> Result<()> {
    let bad = |why| {
        Err(Error::InvalidId {
            id: id.to_string(),
            why,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("longer than 1024 bytes");
    }
    if id == "." || id == ".." || id.contains("..") {
        return bad("must not contain `..`");
    }
    if id.contains('/') {
        return bad("must not contain `/`");
    }
    // Same alphabet as runc: letters, digits and `_+-.`; no control bytes,
    // no spaces, nothing a shell or a path could misread.
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b))
    {
        return bad("only letters, digits and `_+-.` are allowed");
    }
    Ok(())
}

/// What the runtime remembers about a container between invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub id: String,
    /// Host pid of the container's init process.
    pub pid: i32,
    /// Its start time in clock ticks since boot (field 22 of /proc/pid/stat),
    /// so that a recycled pid is not mistaken for the container.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The cgroup this container lives in (see cgroups::Config).
    pub cgroup: crate::cgroups::Config,
    /// Namespaces the container created or joined, for `exec`.
    #[serde(default)]
    pub owner: String,
}

/// The runtime's view of a container's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Receives the runtime's warnings: setup steps a container goes on
/// without (as runc does), failing poststart/poststop hooks, an OOM kill.
/// The library prints nothing; the caller shows or logs them.
pub type WarnFn = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// The state directory of all containers (`--root`), and where the
/// runtime's warnings go.
#[derive(Clone)]
pub struct Root {
    pub dir: PathBuf,
    warn: Option<WarnFn>,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root").field("dir", &self.dir).finish()
    }
}

impl Root {
    /// The state directory `dir`; warnings are dropped until
    /// [`Root::with_warnings`] says where they go.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Root {
            dir: dir.into(),
            warn: None,
        }
    }

    /// Sends the runtime's warnings to `f`.
    pub fn with_warnings(mut self, f: WarnFn) -> Self {
        self.warn = Some(f);
        self
    }

    /// Reports a warning to the caller's sink, if any.
    pub fn warn(&self, msg: &str) {
        if let Some(f) = &self.warn {
            f(msg);
        }
    }

    pub fn container_dir(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        Ok(self.dir.join(id))
    }

    /// Reserve a new container's directory; fails if the id is taken.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf> {
        let dir = self.container_dir(id)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.dir)
            .ctx(|| format!("creating state root {}", self.dir.display()))?;
        match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::Exists(id.to_string()))
            }
            Err(e) => Err(e).ctx(|| format!("creating {}", dir.display())),
        }
    }

    pub fn load(&self, id: &str) -> Result<State> {
        let dir = self.container_dir(id)?;
        let path = dir.join(STATE_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()))
            }
            Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
        };
        serde_json::from_slice(&data).map_err(|e| Error::Io {
            what: format!("parsing {}", path.display()),
            source: e.into(),
        })
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let dir = self.container_dir(&state.id)?;
        let data = serde_json::to_vec(state).map_err(|e| Error::Io {
            what: "serializing state".into(),
            source: e.into(),
        })?;
        write_atomic(&dir.join(STATE_FILE), &data)
    }

    /// Ids of all containers with a state directory, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx(|| format!("reading {}", self.dir.display())),
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(STATE_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| validate_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// Write a file so that readers see either the old or the new content:
/// a temporary file in the same directory, then rename over.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .ctx(|| format!("creating {}", tmp.display()))?;
    // No fsync: the state lives on a tmpfs (/run) in practice and the
    // rename alone gives readers all-or-nothing; an fsync here cost
    // milliseconds on every create.
    f.write_all(data)
        .ctx(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("renaming to {}", path.display()))
}

/// Start time of a process (clock ticks since boot), None if it is gone.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split
    // after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // rest starts at field 3; starttime is field 22.
    fields.nth(18)?.parse().ok()
}

/// Current time as RFC 3339 in UTC with nanoseconds, like runc's state.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, sod) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "abc-123", "x.y_z+1", "libpod-0123abcd"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "../x", "a..b", "a b", "a\nb", "/abs"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_id(&"a".repeat(2000)).is_err());
    }

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = std::env::temp_dir().join(format!("virtkit-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_start_time() {
        let me = std::process::id() as i32;
        assert!(process_start_time(me).is_some());
    }
}
