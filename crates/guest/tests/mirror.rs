//! The fetch pipeline against a local signed test archive (tests/data,
//! made by tests/data/make-mirror.sh) served over HTTP from this process:
//! signature, index and package checks, and their failures.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use guest::sources::Mirror;
use guest::{Arch, Error, Fetcher};

const SUITE: &str = "virtkit-test";
const DEB: &str = "pool/main/b/busybox/busybox-static_1.0-1_riscv64.deb";
const PACKAGES_XZ: &str = "dists/virtkit-test/main/binary-riscv64/Packages.xz";
const INRELEASE: &str = "dists/virtkit-test/InRelease";

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The files of a test archive: "mirror" (busybox-static 1.0-1) or
/// "mirror-v2" (1.0-2, as after an update of the archive).
fn archive_files(name: &str) -> HashMap<String, Vec<u8>> {
    let v2 = name.ends_with("v2");
    let deb = if v2 {
        DEB.replace("1.0-1", "1.0-2")
    } else {
        DEB.to_string()
    };
    let mut files = HashMap::new();
    for p in [deb.as_str(), PACKAGES_XZ, INRELEASE] {
        files.insert(
            p.to_string(),
            std::fs::read(data().join(name).join(p)).unwrap(),
        );
    }
    files
}

/// A minimal HTTP/1.1 server of an in-memory file map; counts requests.
struct Server {
    uri: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    fn start() -> Server {
        let files = Arc::new(Mutex::new(archive_files("mirror")));
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}/debian", listener.local_addr().unwrap());
        let (f, h) = (files.clone(), hits.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut line = String::new();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut hdr = String::new();
                    if r.read_line(&mut hdr).unwrap_or(0) == 0 || hdr == "\r\n" {
                        break;
                    }
                }
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .trim_start_matches("/debian/")
                    .to_string();
                *h.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                let body = f.lock().unwrap().get(&path).cloned();
                let _ = match body {
                    Some(b) => conn
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len())
                                .as_bytes(),
                        )
                        .and_then(|_| conn.write_all(&b)),
                    None => conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                };
            }
        });
        Server { uri, files, hits }
    }

    fn fetcher(&self, cache: &Path, keyring: PathBuf) -> Fetcher {
        Fetcher::with(
            cache.to_path_buf(),
            Mirror {
                uri: self.uri.clone(),
                keyring,
            },
            SUITE,
        )
    }

    fn edit(&self, path: &str, change: impl FnOnce(&mut Vec<u8>)) {
        change(self.files.lock().unwrap().get_mut(path).unwrap());
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn keyring() -> PathBuf {
    data().join("test-keyring.gpg")
}

#[test]
fn downloads_are_reported_to_the_progress_callback() {
    let s = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let mut f = s.fetcher(cache.path(), keyring());
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = events.clone();
    f.set_progress(Some(Box::new(move |e| {
        log.lock().unwrap().push(match e {
            guest::Progress::Note(m) => format!("note {m}"),
            guest::Progress::Start { name, total } => format!("start {name} {total:?}"),
            guest::Progress::Advance { done } => format!("advance {done}"),
            guest::Progress::Finish => "finish".into(),
        })
    })));
    guest::busybox_with(&f, Arch::Riscv64).unwrap();
    let events = events.lock().unwrap();
    let deb_len = archive_files("mirror")[DEB].len();
    let deb_name = DEB.rsplit('/').next().unwrap();
    let start = events
        .iter()
        .position(|e| e == &format!("start {deb_name} Some({deb_len})"))
        .unwrap_or_else(|| panic!("no start of the .deb in {events:?}"));
    // Its bytes arrive, then it finishes; every start has its finish.
    let finish = start + events[start..].iter().position(|e| e == "finish").unwrap();
    assert_eq!(events[finish - 1], format!("advance {deb_len}"));
    let starts = events.iter().filter(|e| e.starts_with("start")).count();
    let finishes = events.iter().filter(|e| *e == "finish").count();
    assert_eq!(starts, finishes, "{events:?}");
    assert!(
        starts >= 3,
        "InRelease, Packages.xz and the .deb: {events:?}"
    );
}

#[test]
fn fetches_verifies_and_caches() {
    let s = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let f = s.fetcher(cache.path(), keyring());
    let bb = guest::busybox_with(&f, Arch::Riscv64).unwrap();
    assert!(bb.starts_with(cache.path()));
    assert_eq!(
        std::fs::read_to_string(&bb).unwrap(),
        "#!/bin/sh\necho fake busybox 1\n"
    );
    // Everything is cached now: the archive may vanish.
    s.files.lock().unwrap().clear();
    assert_eq!(guest::busybox_with(&f, Arch::Riscv64).unwrap(), bb);
    assert_eq!(s.hits(DEB), 1);
    assert_eq!(s.hits(INRELEASE), 1);
    // No temporary files left behind.
    let leftovers: Vec<_> = walk(cache.path())
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with('.') || name.contains("download") || name.contains("unverified")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).unwrap().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn concurrent_fetchers_download_once() {
    let s = Arc::new(Server::start());
    let cache = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            let dir = cache.path().to_path_buf();
            std::thread::spawn(move || {
                guest::busybox_with(&s.fetcher(&dir, keyring()), Arch::Riscv64).unwrap()
            })
        })
        .collect();
    let paths: Vec<PathBuf> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(s.hits(DEB), 1, "the cache lock serializes fetchers");
}

fn fetch_err(s: &Server, keyring: PathBuf) -> Error {
    let cache = tempfile::tempdir().unwrap();
    guest::busybox_with(&s.fetcher(cache.path(), keyring), Arch::Riscv64).unwrap_err()
}

#[test]
fn tampered_release_fails_signature() {
    let s = Server::start();
    s.edit(INRELEASE, |b| {
        let t = String::from_utf8(b.clone())
            .unwrap()
            .replace("Origin: virtkit", "Origin: evil");
        *b = t.into_bytes();
    });
    let e = fetch_err(&s, keyring());
    assert!(matches!(e, Error::Signature { .. }), "{e}");
    assert!(e.to_string().contains("BAD signature"), "{e}");
}

#[test]
fn unknown_key_is_reported_as_missing_key() {
    let s = Server::start();
    let e = fetch_err(&s, PathBuf::from(guest::sources::DEFAULT_KEYRING));
    assert!(matches!(e, Error::MissingKey { .. }), "{e}");
    assert!(e.to_string().contains("debian-archive-keyring"), "{e}");
    let e = fetch_err(&s, PathBuf::from("/nonexistent/keyring.gpg"));
    assert!(e.to_string().contains("keyring file not found"), "{e}");
}

#[test]
fn corrupt_index_is_a_hash_mismatch() {
    let s = Server::start();
    s.edit(PACKAGES_XZ, |b| {
        let n = b.len() / 2;
        b[n] ^= 0xff;
    });
    let e = fetch_err(&s, keyring());
    assert!(matches!(e, Error::HashMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("Packages.xz: SHA256 mismatch"),
        "{e}"
    );
}

#[test]
fn corrupt_deb_is_a_hash_mismatch_after_a_retry() {
    let s = Server::start();
    s.edit(DEB, |b| {
        let n = b.len() - 10;
        b[n] ^= 1;
    });
    let e = fetch_err(&s, keyring());
    assert!(matches!(e, Error::HashMismatch { .. }), "{e}");
    assert!(e.to_string().contains(".deb: SHA256 mismatch"), "{e}");
}

#[test]
fn truncated_deb_and_missing_files() {
    let s = Server::start();
    s.edit(DEB, |b| b.truncate(100));
    let e = fetch_err(&s, keyring());
    assert!(matches!(e, Error::SizeMismatch { actual: 100, .. }), "{e}");

    s.files.lock().unwrap().remove(DEB);
    let e = fetch_err(&s, keyring());
    assert!(e.to_string().contains("HTTP 404"), "{e}");

    s.files.lock().unwrap().remove(INRELEASE);
    let e = fetch_err(&s, keyring());
    assert!(e.to_string().contains("InRelease: HTTP 404"), "{e}");
}

#[test]
fn absent_package_and_architecture() {
    let s = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let f = s.fetcher(cache.path(), keyring());
    let e = f
        .lock()
        .unwrap()
        .package("riscv64", "no-such-package")
        .unwrap_err();
    assert!(
        e.to_string().contains("package no-such-package not found"),
        "{e}"
    );
    let e = guest::busybox_with(&f, Arch::Amd64).unwrap_err();
    assert!(
        e.to_string().contains("no main/binary-amd64/Packages.xz"),
        "{e}"
    );
}

#[test]
fn superseded_package_refreshes_the_index() {
    let s = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let f = s.fetcher(cache.path(), keyring());
    // The index is cached (fresh), then the archive moves on: 1.0-1 is gone.
    f.lock()
        .unwrap()
        .package("riscv64", "busybox-static")
        .unwrap();
    *s.files.lock().unwrap() = archive_files("mirror-v2");
    let bb = guest::busybox_with(&f, Arch::Riscv64).unwrap();
    assert_eq!(
        std::fs::read_to_string(bb).unwrap(),
        "#!/bin/sh\necho fake busybox 2\n"
    );
    assert_eq!(
        s.hits(INRELEASE),
        2,
        "the 404 of the old .deb made the index refresh"
    );
}

#[test]
fn day_old_index_is_refreshed_or_used_offline() {
    let s = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let f = s.fetcher(cache.path(), keyring());
    let bb = guest::busybox_with(&f, Arch::Riscv64).unwrap();
    let release = walk(cache.path())
        .into_iter()
        .find(|p| p.ends_with("Release"))
        .unwrap();
    let age = |days: u64| {
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86400);
        std::fs::File::options()
            .write(true)
            .open(&release)
            .unwrap()
            .set_modified(t)
            .unwrap();
    };
    // Fresh: no network.
    guest::busybox_with(&f, Arch::Riscv64).unwrap();
    assert_eq!(s.hits(INRELEASE), 1);
    // Two days old: fetched again.
    age(2);
    guest::busybox_with(&f, Arch::Riscv64).unwrap();
    assert_eq!(s.hits(INRELEASE), 2);
    // Old and the archive unreachable: the cached index still serves.
    age(2);
    s.files.lock().unwrap().clear();
    assert_eq!(guest::busybox_with(&f, Arch::Riscv64).unwrap(), bb);
    assert_eq!(s.hits(INRELEASE), 3);
}
