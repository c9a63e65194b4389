//! The instant path of `virtkit run`: restore a snapshot of the default
//! guest taken where its init waits for a command, and hand it the command.
//!
//! On first use for a machine shape (kernel, initramfs, harts, RAM, network
//! on or off, this virtkit binary) the guest boots once in waiting mode
//! (`virtkit.wait=1`, see the `guest` crate); when its init prints
//! [`guest::READY_MARKER`] the machine is paused and snapshotted into the
//! cache (`$XDG_CACHE_HOME/virtkit/snapshots/<key>/{state,memory}`). Every
//! run then restores that snapshot (the memory file is mapped copy-on-write,
//! so concurrent runs share its untouched pages) and writes the command line
//! ([`guest::command_line`]: the command, its environment, the host's time
//! and fresh entropy) to the guest's console ahead of the user's input.
//!
//! A cached snapshot is found by a key over everything that shapes it, so
//! a new kernel, initramfs or virtkit binary builds a new one; one that no
//! longer loads (a format change) is rebuilt.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use riscv_machine::machine::{self, MachineConfig};
use riscv_machine::power::StopReason;
use sha2::{Digest, Sha256};

/// Bump when what goes into a snapshot changes in a way the key's inputs
/// do not show (the init's protocol, the machine's wiring).
const SNAPSHOT_LAYOUT: &str = "virtkit-run-snapshot-2";

/// How long the first boot may take to reach the waiting init.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// The files of one cached snapshot.
pub struct Cached {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub memory: PathBuf,
}

/// What shapes a snapshot of the default guest.
pub struct Shape<'a> {
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub harts: usize,
    pub mem_size: u64,
    pub net: bool,
    /// A drive for a disk: `Some(read_only)` (the snapshot holds it empty,
    /// the restore inserts the run's disk), `None` for no drive.
    pub disk: Option<bool>,
}

impl Shape<'_> {
    /// A key over everything that makes two snapshots differ: the files by
    /// path, size and modification time (the guest crate names its cache
    /// directories after their contents), this binary likewise, the shape.
    fn key(&self) -> anyhow::Result<String> {
        let mut h = Sha256::new();
        h.update(SNAPSHOT_LAYOUT.as_bytes());
        let exe = std::env::current_exe().context("finding the virtkit binary")?;
        for p in [exe.as_path(), self.kernel, self.initramfs] {
            let m = std::fs::metadata(p).with_context(|| format!("cannot stat {}", p.display()))?;
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .unwrap_or_default();
            h.update(format!("{}\0{}\0{}\0", p.display(), m.len(), mtime.as_nanos()).as_bytes());
        }
        h.update(
            format!(
                "{}\0{}\0{}\0{:?}\0",
                self.harts, self.mem_size, self.net, self.disk
            )
            .as_bytes(),
        );
        Ok(h.finalize()[..10]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

/// Where the snapshot for `shape` lives (whether or not it exists yet).
pub fn cached(cache: &Path, shape: &Shape) -> anyhow::Result<Cached> {
    let dir = cache.join("snapshots").join(shape.key()?);
    Ok(Cached {
        state: dir.join("state"),
        memory: dir.join("memory"),
        dir,
    })
}

impl Cached {
    pub fn exists(&self) -> bool {
        self.state.is_file() && self.memory.is_file()
    }

    /// Drops a snapshot that failed to load, so the next run rebuilds it.
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Holds an exclusive lock on `path` (created if needed) until dropped:
/// concurrent first runs build one snapshot, not one each.
pub struct BuildLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

impl BuildLock {
    pub fn take(path: &Path) -> anyhow::Result<BuildLock> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map(BuildLock)
            .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
    }
}

/// Console output while the snapshot is built: kept (for an error message)
/// and watched for the init's ready marker.
#[derive(Clone, Default)]
struct Watch(Arc<(Mutex<Seen>, Condvar)>);

/// The console's tail so far, and whether the marker was in it.
#[derive(Default)]
struct Seen(Vec<u8>, bool);

impl Write for Watch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (m, c) = &*self.0;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        g.0.extend_from_slice(buf);
        // Keep the tail only: enough for the marker and an error message.
        if g.0.len() > 64 * 1024 {
            let cut = g.0.len() - 16 * 1024;
            g.0.drain(..cut);
        }
        // The whole line: the snapshot must not catch the newline still
        // on its way out (the restored guest would print it).
        if !g.1 && find(&g.0, &[guest::READY_MARKER, b"\n"].concat()) {
            g.1 = true;
            c.notify_all();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Watch {
    /// Waits until the marker appeared (true) or `limit` passed, polling
    /// `gone` to notice a machine that stopped first.
    fn wait(&self, limit: Duration, gone: impl Fn() -> bool) -> bool {
        let (m, c) = &*self.0;
        let end = std::time::Instant::now() + limit;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        while !g.1 {
            let now = std::time::Instant::now();
            if now >= end || gone() {
                return false;
            }
            g = c
                .wait_timeout(g, (end - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn tail(&self) -> String {
        let g = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        let s = String::from_utf8_lossy(&g.0);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Boots `cfg` (the waiting guest: its append must carry
/// [`guest::WAIT_ARG`]) until the init is ready, and snapshots it into
/// `snap`. `cfg.output` and `cfg.input` are replaced.
pub fn build(snap: &Cached, mut cfg: MachineConfig) -> anyhow::Result<()> {
    let watch = Watch::default();
    cfg.output = Box::new(watch.clone());
    cfg.input = None;
    cfg.timeout = None;
    let running = machine::start(cfg).context("booting the guest to snapshot it")?;
    let ready = watch.wait(BOOT_LIMIT, || running.stopped().is_some());
    if !ready {
        running.stop(StopReason::Quit);
        let outcome = running.wait();
        bail!(
            "the guest did not reach its waiting init ({:?}); its console ended with:\n{}",
            outcome.map(|o| o.reason),
            watch.tail()
        );
    }
    let tmp = snap
        .dir
        .with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = running
        .pause()
        .and_then(|()| running.snapshot(&tmp.join("state"), &tmp.join("memory")))
        .context("snapshotting the booted guest");
    running.stop(StopReason::Quit);
    let _ = running.wait();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&snap.dir);
    std::fs::rename(&tmp, &snap.dir)
        .with_context(|| format!("moving the snapshot to {}", snap.dir.display()))?;
    Ok(())
}

/// The guest's console input for a restored run: a pipe whose first line
/// is the command line, followed by whatever `stdin` gives (copied by a
/// thread until its end) once `go` fires (see [`GoFilter`]). Returns the
/// pipe's read end.
pub fn input_with_command(
    line: Vec<u8>,
    stdin: RawFd,
    go: mpsc::Receiver<()>,
) -> anyhow::Result<OwnedFd> {
    let (r, w) = nix::unistd::pipe().context("creating the console pipe")?;
    std::thread::Builder::new()
        .name("vk-command".into())
        .spawn(move || {
            let mut w = std::fs::File::from(w);
            if w.write_all(&line).is_err() {
                return;
            }
            // A guest that never says go has stopped: its run ends, and
            // this thread with the process.
            if go.recv().is_err() {
                return;
            }
            // SAFETY: the caller's stdin stays open for the process's life;
            // ManuallyDrop keeps this File from closing it.
            let input = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(stdin) });
            let _ = std::io::copy(&mut &*input, &mut w);
        })
        .context("starting the console input thread")?;
    Ok(r)
}

/// The console output of a restored run: passes everything to `inner`
/// but [`guest::GO_MARKER`], which it removes, firing `go` when it sees it
/// (the init prints it when the terminal is ready for the user's input).
pub struct GoFilter {
    inner: Box<dyn Write + Send>,
    /// Bytes that may be the start of the marker, held back.
    carry: Vec<u8>,
    go: Option<mpsc::Sender<()>>,
}

impl GoFilter {
    pub fn new(inner: Box<dyn Write + Send>) -> (GoFilter, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        (
            GoFilter {
                inner,
                carry: Vec::new(),
                go: Some(tx),
            },
            rx,
        )
    }
}

impl Write for GoFilter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(go) = &self.go else {
            return self.inner.write(buf);
        };
        self.carry.extend_from_slice(buf);
        let m = guest::GO_MARKER;
        if let Some(i) = self.carry.windows(m.len()).position(|w| w == m) {
            let mut out = self.carry[..i].to_vec();
            out.extend_from_slice(&self.carry[i + m.len()..]);
            self.carry.clear();
            let _ = go.send(());
            self.go = None;
            self.inner.write_all(&out)?;
        } else {
            // Hold back the longest tail that could begin the marker.
            let keep = (1..m.len().min(self.carry.len() + 1))
                .rev()
                .find(|&k| self.carry.ends_with(&m[..k]))
                .unwrap_or(0);
            let n = self.carry.len() - keep;
            let out: Vec<u8> = self.carry.drain(..n).collect();
            self.inner.write_all(&out)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The line handed to the restored guest: the command, its environment,
/// the time now and fresh entropy.
pub fn command_line(argv: &[String], env: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
    let mut seed = [0u8; 32];
    getrandom(&mut seed)?;
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    guest::command_line(argv, env, epoch, &seed).context("encoding the command for the guest")
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);
    impl Write for Out {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn go_filter_removes_the_marker_across_writes_and_fires_once() {
        let m = guest::GO_MARKER;
        for split in 0..m.len() {
            let out = Out::default();
            let (mut f, go) = GoFilter::new(Box::new(out.clone()));
            f.write_all(b"before\x1b[0m").unwrap();
            f.write_all(&m[..split]).unwrap();
            assert!(go.try_recv().is_err());
            f.write_all(&m[split..]).unwrap();
            f.write_all(b"after").unwrap();
            assert!(go.try_recv().is_ok());
            f.write_all(m).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.0.lock().unwrap()),
                String::from_utf8_lossy(&[b"before\x1b[0mafter".as_slice(), m].concat())
            );
        }
    }
}
