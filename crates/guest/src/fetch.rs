//! Downloading verified Debian packages into the cache.
//!
//! Cache layout under `$XDG_CACHE_HOME/virtkit` (default `~/.cache/virtkit`):
//!
//! ```text
//! lock                                   flock(2)ed while fetching or building
//! debian/<mirror>/<suite>/Release         signed text of InRelease, verified
//! debian/<mirror>/<suite>/Packages-<arch>-<sha256 of Packages.xz>
//! debian/debs/<sha256>.deb               verified package files
//! debian/unpacked/<sha256>/              their data.tar trees
//! guest/...                              built guest assets
//! ```
//!
//! Every file appears by an atomic rename of a complete temporary file, so a
//! reader never sees a half-written one; content-addressed names mean a file,
//! once there, never changes. The lock keeps concurrent processes (parallel
//! tests) from downloading the same thing twice.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::index::{self, Package, Release};
use crate::sources::{self, Mirror};

/// How old the signed index may get before it is fetched again.
const INDEX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// InRelease has no signed size to check against; cap it (trixie's is 140 KB).
const INRELEASE_MAX: u64 = 64 << 20;
/// Decompressed Packages indices are ~60 MB; refuse absurd ones.
const PACKAGES_MAX: u64 = 1 << 30;

/// The cache directory: `$XDG_CACHE_HOME/virtkit`, else `~/.cache/virtkit`.
pub fn default_cache_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("virtkit"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            Error::Invalid("neither XDG_CACHE_HOME nor HOME is set: no cache directory".into())
        })?;
    Ok(PathBuf::from(home).join(".cache").join("virtkit"))
}

/// Lower-case hex of a SHA256 digest.
pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).ctx(|| format!("reading {}", path.display()))?;
    Ok(hex(&h.finalize()))
}

/// Writes `data` to `path` atomically (temporary file in the same
/// directory, then rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let mut t = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .ctx(|| format!("creating a temporary file in {}", dir.display()))?;
    t.write_all(data)
        .ctx(|| format!("writing {}", path.display()))?;
    t.persist(path)
        .map_err(|e| Error::io(format!("renaming into {}", path.display()), e.error))?;
    Ok(())
}

/// What a download must turn out to be.
struct Expect<'a> {
    sha256: Option<&'a str>,
    size: Option<u64>,
    max: u64,
}

/// What a [`Fetcher`] reports while it works, for the caller to show (the
/// library itself draws nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// A one-line remark worth showing (e.g. a stale index kept).
    Note(&'a str),
    /// A download of `name` began; `total` bytes when the size is known.
    Start { name: &'a str, total: Option<u64> },
    /// `done` bytes of the current download have arrived.
    Advance { done: u64 },
    /// The current download ended, complete or not.
    Finish,
}

/// The callback that receives [`Progress`] reports.
pub type ProgressFn = Box<dyn Fn(Progress<'_>) + Send + Sync>;

/// Fetches from one Debian archive into one cache directory.
pub struct Fetcher {
    root: PathBuf,
    mirror: Mirror,
    suite: String,
    progress: Option<ProgressFn>,
    agent: ureq::Agent,
}

impl Fetcher {
    /// The host's Debian archive (see [`sources::host_mirror`]), the default
    /// cache directory, and `suite` (e.g. [`crate::DEFAULT_SUITE`]).
    pub fn new(suite: &str) -> Result<Self> {
        Ok(Self::with(
            default_cache_dir()?,
            sources::host_mirror()?,
            suite,
        ))
    }

    /// Explicit cache directory and mirror.
    pub fn with(cache_dir: PathBuf, mirror: Mirror, suite: &str) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(120))
            .build();
        Self {
            root: cache_dir,
            mirror,
            suite: suite.to_string(),
            progress: None,
            agent,
        }
    }

    /// Where downloads and notes are reported (default: nowhere).
    pub fn set_progress(&mut self, progress: Option<ProgressFn>) {
        self.progress = progress;
    }

    pub fn suite(&self) -> &str {
        &self.suite
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    pub fn cache_dir(&self) -> &Path {
        &self.root
    }

    /// Takes the cache lock (blocking while another process holds it).
    /// All fetching goes through the returned session.
    pub fn lock(&self) -> Result<Session<'_>> {
        fs::create_dir_all(&self.root).ctx(|| format!("creating {}", self.root.display()))?;
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        let mut file = file;
        let lock = loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive) {
                Ok(lock) => break lock,
                Err((f, nix::errno::Errno::EINTR)) => file = f,
                Err((_, e)) => {
                    return Err(Error::io(format!("locking {}", path.display()), e.into()))
                }
            }
        };
        Ok(Session {
            f: self,
            _lock: lock,
            refreshed: Vec::new(),
            loaded: None,
        })
    }

    fn index_dir(&self) -> PathBuf {
        let key: String = self
            .mirror
            .uri
            .split("://")
            .last()
            .unwrap_or("")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("debian").join(key).join(&self.suite)
    }

    fn report(&self, event: Progress<'_>) {
        if let Some(p) = &self.progress {
            p(event);
        }
    }

    fn note(&self, msg: &str) {
        self.report(Progress::Note(msg));
    }

    /// GET `url` into `dest` atomically, checking what `expect` says.
    fn download(&self, url: &str, dest: &Path, expect: Expect<'_>) -> Result<()> {
        let http = |message: String| Error::Http {
            url: url.to_string(),
            message,
        };
        let resp = self.agent.get(url).call().map_err(|e| match e {
            ureq::Error::Status(code, r) => http(format!("HTTP {code} {}", r.status_text())),
            ureq::Error::Transport(t) => http(t.to_string()),
        })?;
        let len = expect
            .size
            .or_else(|| resp.header("Content-Length").and_then(|v| v.parse().ok()));
        if let Some(n) = len {
            if n > expect.max {
                return Err(http(format!(
                    "{n} bytes is more than the {} allowed",
                    expect.max
                )));
            }
        }
        let dir = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempfile_in(dir)
            .ctx(|| format!("creating a temporary file in {}", dir.display()))?;
        let name = url.rsplit('/').next().unwrap_or(url);
        self.report(Progress::Start { name, total: len });
        // Finish is reported however the transfer ends.
        let result = self.transfer(resp, &mut tmp, &expect, url);
        self.report(Progress::Finish);
        let (total, actual) = result?;
        if let Some(size) = expect.size {
            if total != size {
                return Err(Error::SizeMismatch {
                    what: url.to_string(),
                    expected: size,
                    actual: total,
                });
            }
        }
        if let Some(want) = expect.sha256 {
            if actual != want {
                return Err(Error::HashMismatch {
                    what: url.to_string(),
                    expected: want.to_string(),
                    actual,
                });
            }
        }
        tmp.as_file()
            .sync_all()
            .ctx(|| format!("syncing {}", tmp.path().display()))?;
        tmp.persist(dest)
            .map_err(|e| Error::io(format!("renaming into {}", dest.display()), e.error))?;
        Ok(())
    }

    /// Copies the body of `resp` into `tmp`, hashing it; returns its size
    /// and SHA256 (hex).
    fn transfer(
        &self,
        resp: ureq::Response,
        tmp: &mut tempfile::NamedTempFile,
        expect: &Expect<'_>,
        url: &str,
    ) -> Result<(u64, String)> {
        let http = |message: String| Error::Http {
            url: url.to_string(),
            message,
        };
        let mut reader = resp.into_reader().take(expect.max + 1);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(http(format!("transfer broke off after {total} bytes: {e}"))),
            };
            total += n as u64;
            if total > expect.max {
                return Err(http(format!("more than the {} bytes allowed", expect.max)));
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .ctx(|| format!("writing {}", tmp.path().display()))?;
            self.report(Progress::Advance { done: total });
        }
        Ok((total, hex(&hasher.finalize())))
    }
}

/// A locked view of the cache; see [`Fetcher::lock`].
pub struct Session<'a> {
    f: &'a Fetcher,
    _lock: nix::fcntl::Flock<File>,
    /// Architectures whose index was fetched afresh in this session.
    refreshed: Vec<String>,
    /// The last Packages index read (path, text): lookups within one
    /// session reuse it instead of reading 50 MB again.
    loaded: Option<(PathBuf, String)>,
}

impl Session<'_> {
    pub fn fetcher(&self) -> &Fetcher {
        self.f
    }

    /// Fetches and verifies `dists/<suite>/InRelease`, returning the signed text.
    fn refresh_release(&self) -> Result<String> {
        let dir = self.f.index_dir();
        let url = format!("{}/dists/{}/InRelease", self.f.mirror.uri, self.f.suite);
        let raw = dir.join("InRelease.unverified");
        self.f.download(
            &url,
            &raw,
            Expect {
                sha256: None,
                size: None,
                max: INRELEASE_MAX,
            },
        )?;
        let text = index::verify_inrelease(&raw, &self.f.mirror.keyring, &url);
        let _ = fs::remove_file(&raw);
        let text = text?;
        let rel = index::parse_release(&text)?;
        // As apt: the file must be for the suite we asked for, else a
        // mirror could hand us another release's (validly signed) index.
        if rel.codename != self.f.suite && rel.suite != self.f.suite {
            return Err(Error::format(
                &url,
                format!(
                    "is for Codename {:?} / Suite {:?}, not {:?}",
                    rel.codename, rel.suite, self.f.suite
                ),
            ));
        }
        write_atomic(&dir.join("Release"), text.as_bytes())?;
        Ok(text)
    }

    /// Path of the verified, decompressed Packages index of `main` for
    /// `arch`, refreshed when older than a day or when `force`.
    pub fn index(&mut self, arch: &str, force: bool) -> Result<PathBuf> {
        let dir = self.f.index_dir();
        let release_path = dir.join("Release");
        let age = fs::metadata(&release_path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        let stale = force || age.is_none_or(|a| a > INDEX_MAX_AGE);
        let text = if stale {
            match self.refresh_release() {
                Ok(t) => t,
                // Offline with a usable older index: go on with it, say so.
                Err(e @ Error::Http { .. }) if !force && release_path.exists() => {
                    self.f.note(&format!("{e}; using the cached index"));
                    fs::read_to_string(&release_path)
                        .ctx(|| format!("reading {}", release_path.display()))?
                }
                Err(e) => return Err(e),
            }
        } else {
            fs::read_to_string(&release_path)
                .ctx(|| format!("reading {}", release_path.display()))?
        };
        let rel = index::parse_release(&text)?;
        let path = self.packages_file(&rel, arch, &dir)?;
        if stale && !self.refreshed.iter().any(|a| a == arch) {
            self.refreshed.push(arch.to_string());
        }
        Ok(path)
    }

    fn packages_file(&self, rel: &Release, arch: &str, dir: &Path) -> Result<PathBuf> {
        let xz_name = format!("main/binary-{arch}/Packages.xz");
        let Some((xz_sha, xz_size)) = rel.files.get(&xz_name) else {
            return Err(Error::Invalid(format!(
                "Debian {} has no {xz_name}: is {arch} an architecture of this suite?",
                self.f.suite
            )));
        };
        let path = dir.join(format!("Packages-{arch}-{xz_sha}"));
        if path.exists() {
            return Ok(path);
        }
        let url = format!("{}/dists/{}/{xz_name}", self.f.mirror.uri, self.f.suite);
        let xz_path = dir.join(format!("Packages-{arch}.xz.download"));
        self.f.download(
            &url,
            &xz_path,
            Expect {
                sha256: Some(xz_sha),
                size: Some(*xz_size),
                max: PACKAGES_MAX,
            },
        )?;
        let xz = fs::read(&xz_path).ctx(|| format!("reading {}", xz_path.display()))?;
        let _ = fs::remove_file(&xz_path);
        let plain = crate::deb::decompress_all(".xz", &xz, PACKAGES_MAX, &url)?;
        if let Some((sha, size)) = rel.files.get(&format!("main/binary-{arch}/Packages")) {
            let actual = hex(&Sha256::digest(&plain));
            if actual != *sha || plain.len() as u64 != *size {
                return Err(Error::HashMismatch {
                    what: format!("{url} (decompressed)"),
                    expected: sha.clone(),
                    actual,
                });
            }
        }
        write_atomic(&path, &plain)?;
        // Older indices of this architecture are garbage now.
        let prefix = format!("Packages-{arch}-");
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(&prefix) && e.path() != path {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(path)
    }

    /// Looks up packages of `arch` by name.
    ///
    /// Entries found once are kept in a small file beside the index (named
    /// after it, so a new index starts afresh): reading and scanning the
    /// 50 MB index costs a tenth of a second, which `virtkit run` restoring
    /// a snapshot cannot afford on every start.
    pub fn packages(&mut self, arch: &str, names: &[&str]) -> Result<HashMap<String, Package>> {
        let path = self.index(arch, false)?;
        let mut side = path.clone().into_os_string();
        side.push(".found");
        let side = PathBuf::from(side);
        let known = fs::read_to_string(&side).unwrap_or_default();
        if let Ok(found) = index::find_packages(&known, names) {
            if found.len() == names.len() {
                return Ok(found);
            }
        }
        if self.loaded.as_ref().is_none_or(|(p, _)| *p != path) {
            let text = fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
            self.loaded = Some((path, text));
        }
        let text = self.loaded.as_ref().map(|(_, t)| t.as_str()).unwrap_or("");
        let found = index::find_packages(text, names)?;
        let mut all = known;
        for p in found.values() {
            if !all.is_empty() && !all.ends_with("\n\n") {
                all.push('\n');
            }
            all.push_str(&p.to_stanza());
        }
        // Only a cache: failing to write it costs the next run time, nothing else.
        let _ = write_atomic(&side, all.as_bytes());
        Ok(found)
    }

    /// Looks up one package of `arch`.
    pub fn package(&mut self, arch: &str, name: &str) -> Result<Package> {
        self.packages(arch, &[name])?
            .remove(name)
            .ok_or_else(|| Error::PackageNotFound {
                name: name.into(),
                suite: self.f.suite.clone(),
                arch: arch.into(),
            })
    }

    /// The verified .deb of `pkg`, downloaded if not cached.
    pub fn deb(&self, pkg: &Package) -> Result<PathBuf> {
        let path = self
            .f
            .root
            .join("debian/debs")
            .join(format!("{}.deb", pkg.sha256));
        if path.exists() {
            return Ok(path);
        }
        let url = format!("{}/{}", self.f.mirror.uri, pkg.filename);
        self.f.download(
            &url,
            &path,
            Expect {
                sha256: Some(&pkg.sha256),
                size: Some(pkg.size),
                max: pkg.size,
            },
        )?;
        Ok(path)
    }

    /// The unpacked data tree of `pkg`.
    pub fn unpacked(&self, pkg: &Package) -> Result<PathBuf> {
        let base = self.f.root.join("debian/unpacked");
        let path = base.join(&pkg.sha256);
        if path.is_dir() {
            return Ok(path);
        }
        let deb = self.deb(pkg)?;
        fs::create_dir_all(&base).ctx(|| format!("creating {}", base.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&base)
            .ctx(|| format!("creating a temporary directory in {}", base.display()))?;
        crate::deb::unpack_data(&deb, tmp.path())?;
        fs::rename(tmp.path(), &path).ctx(|| format!("renaming into {}", path.display()))?;
        // The temporary directory is gone (renamed); keep its guard from
        // trying to remove the now-final tree.
        let _ = tmp.keep();
        Ok(path)
    }

    /// Looks up `name` for `arch` and returns it unpacked. If the .deb the
    /// index names is gone from the mirror or does not match, the index is
    /// fetched again (it was older than the mirror's) and the lookup retried.
    pub fn fetch(&mut self, arch: &str, name: &str) -> Result<(Package, PathBuf)> {
        let pkg = self.package(arch, name)?;
        match self.unpacked(&pkg) {
            Ok(p) => Ok((pkg, p)),
            Err(
                e @ (Error::Http { .. } | Error::HashMismatch { .. } | Error::SizeMismatch { .. }),
            ) if !self.refreshed.iter().any(|a| a == arch) => {
                self.f.note(&format!("{e}; fetching the index again"));
                self.index(arch, true)?;
                let pkg = self.package(arch, name)?;
                let p = self.unpacked(&pkg)?;
                Ok((pkg, p))
            }
            Err(e) => Err(e),
        }
    }
}
