//! Snapshot files: a small state file (the machine's registers and device
//! state) and a memory file (guest RAM, byte for byte).
//!
//! # State file
//!
//! ```text
//! offset  size  field
//!      0     8  magic "VKSNAP\r\n" (the \r\n catches text-mode mangling)
//!      8     4  format version, little endian (FORMAT_VERSION)
//!     12     4  reserved, zero
//!     16     8  body length in bytes, little endian (<= MAX_STATE_BODY)
//!     24     4  CRC-32 (IEEE) of the body
//!     28     4  reserved, zero
//!     32     -  body: JSON (one serde value, the board's state struct)
//! ```
//!
//! The body is JSON (serde_json), not a binary encoding: a state file is
//! small (a few KiB per hart plus device registers), is read once per
//! restore, and JSON keeps it inspectable with `jq` when a restore goes
//! wrong; every integer the state holds is a u64 or smaller, which JSON
//! numbers carry exactly through serde_json. Versioning is explicit (the
//! header's version and each state struct's own `version` field), not
//! inferred from the encoding.
//!
//! Reading checks, in order: the file is at least a header long, the
//! magic, the version (a newer one is refused by name), the length (capped
//! before anything is allocated), the file holds exactly that body, the
//! CRC, then the body parses into the caller's type. Each failure is its
//! own [`SnapshotError`] variant naming the file.
//!
//! # Memory file
//!
//! Raw guest RAM, `size` bytes, written sparsely (all-zero pages are holes)
//! by [`write_memory`]. A restore maps it with [`GuestRam::from_file`]:
//! `MAP_PRIVATE`, so pages are read on first touch (restore time does not
//! grow with RAM size), several VMs restored from one file share its
//! untouched pages through the page cache, and guest writes stay private
//! copies that never reach the file.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use vm_memory::{Bytes, GuestAddress};

use crate::GuestRam;

/// First bytes of every state file.
pub const STATE_MAGIC: [u8; 8] = *b"VKSNAP\r\n";
/// The state-file format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed header before the body.
pub const HEADER_LEN: usize = 32;
/// Largest body accepted. A 64-hart machine's state is well under 1 MiB;
/// the cap bounds what a corrupt or hostile length field can make a
/// restore allocate.
pub const MAX_STATE_BODY: u64 = 16 << 20;

/// Why a snapshot file could not be written or read. Every message names
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "snapshot state file {path} is truncated: {what} needs {need} bytes, the file has {have}"
    )]
    Truncated {
        path: PathBuf,
        what: &'static str,
        need: u64,
        have: u64,
    },
    #[error("{path} is not a virtkit snapshot state file (bad magic)")]
    NotASnapshot { path: PathBuf },
    #[error("snapshot state file {path} has format version {version}; this virtkit reads versions up to {FORMAT_VERSION}")]
    NewerVersion { path: PathBuf, version: u32 },
    #[error(
        "snapshot state file {path} has format version 0, which never existed: the file is corrupt"
    )]
    BadVersion { path: PathBuf },
    #[error(
        "snapshot state file {path} claims a {len}-byte body; the limit is {MAX_STATE_BODY} bytes"
    )]
    TooLarge { path: PathBuf, len: u64 },
    #[error("snapshot state file {path} has {extra} bytes after its body: the file is corrupt")]
    TrailingData { path: PathBuf, extra: u64 },
    #[error("snapshot state file {path} is corrupt: checksum {computed:#010x} does not match the stored {stored:#010x}")]
    Checksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error("snapshot state file {path}: the state does not parse: {msg}")]
    Body { path: PathBuf, msg: String },
    #[error("cannot encode the snapshot state: {0}")]
    Encode(String),
    #[error("snapshot memory file {path} has {have} bytes; the machine's RAM is {want} bytes")]
    MemorySize { path: PathBuf, have: u64, want: u64 },
    #[error("cannot map snapshot memory file {path}: {reason}")]
    Map { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Encodes `state` as a whole state file (header and body).
pub fn encode_state<T: Serialize>(state: &T) -> Result<Vec<u8>, SnapshotError> {
    let body = serde_json::to_vec(state).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    if body.len() as u64 > MAX_STATE_BODY {
        return Err(SnapshotError::Encode(format!(
            "the state is {} bytes, over the {MAX_STATE_BODY}-byte limit",
            body.len()
        )));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&STATE_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks a state file's header and returns the body length it declares.
fn check_header(path: &Path, header: &[u8], file_len: u64) -> Result<u64, SnapshotError> {
    let p = || path.to_owned();
    if header.len() < HEADER_LEN {
        // A file shorter than the magic that does not start like one is
        // foreign, not truncated.
        let n = header.len().min(STATE_MAGIC.len());
        if header[..n] != STATE_MAGIC[..n] || n == 0 {
            return Err(SnapshotError::NotASnapshot { path: p() });
        }
        return Err(SnapshotError::Truncated {
            path: p(),
            what: "the header",
            need: HEADER_LEN as u64,
            have: file_len,
        });
    }
    if header[..8] != STATE_MAGIC {
        return Err(SnapshotError::NotASnapshot { path: p() });
    }
    let word =
        |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
    let version = word(8);
    if version == 0 {
        return Err(SnapshotError::BadVersion { path: p() });
    }
    if version > FORMAT_VERSION {
        return Err(SnapshotError::NewerVersion { path: p(), version });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    let len = u64::from_le_bytes(len);
    if len > MAX_STATE_BODY {
        return Err(SnapshotError::TooLarge { path: p(), len });
    }
    let need = HEADER_LEN as u64 + len;
    if file_len < need {
        return Err(SnapshotError::Truncated {
            path: p(),
            what: "the body",
            need,
            have: file_len,
        });
    }
    if file_len > need {
        return Err(SnapshotError::TrailingData {
            path: p(),
            extra: file_len - need,
        });
    }
    Ok(len)
}

/// Decodes a whole state file held in memory (`path` names it in errors).
pub fn decode_state<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, SnapshotError> {
    let head = &bytes[..bytes.len().min(HEADER_LEN)];
    let len = check_header(path, head, bytes.len() as u64)?;
    let body = &bytes[HEADER_LEN..HEADER_LEN + len as usize];
    parse_body(path, &bytes[24..28], body)
}

fn parse_body<T: DeserializeOwned>(
    path: &Path,
    crc: &[u8],
    body: &[u8],
) -> Result<T, SnapshotError> {
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(SnapshotError::Checksum {
            path: path.to_owned(),
            stored,
            computed,
        });
    }
    serde_json::from_slice(body).map_err(|e| SnapshotError::Body {
        path: path.to_owned(),
        msg: e.to_string(),
    })
}

/// Writes `state` to the state file `path`: to a temporary file next to
/// it, synced, then renamed over `path`, so a crash never leaves a
/// half-written state file under the final name.
pub fn write_state<T: Serialize>(path: &Path, state: &T) -> Result<(), SnapshotError> {
    let bytes = encode_state(state)?;
    let tmp = tmp_name(path);
    let write = || -> std::io::Result<()> {
        let mut f = create_private(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Reads and checks the state file `path` (see the module doc for the
/// order of the checks).
pub fn read_state<T: DeserializeOwned>(path: &Path) -> Result<T, SnapshotError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut header = Vec::with_capacity(HEADER_LEN);
    (&mut f)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut header)
        .map_err(io_err(path))?;
    let len = check_header(path, &header, file_len)?;
    // `len` is capped by check_header and matches the file's size.
    let mut body = vec![0u8; len as usize];
    f.read_exact(&mut body).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            // The file shrank while we read it.
            SnapshotError::Truncated {
                path: path.to_owned(),
                what: "the body",
                need: HEADER_LEN as u64 + len,
                have: file_len,
            }
        } else {
            io_err(path)(e)
        }
    })?;
    parse_body(path, &header[24..28], &body)
}

/// Guest page size for the memory file's holes.
const PAGE: usize = 4096;
/// RAM is copied out through a buffer of this size.
const COPY_CHUNK: usize = 1 << 20;

/// Writes guest RAM to the memory file `path`, all-zero pages as holes
/// (a freshly booted guest's RAM is mostly zeros). The machine must be
/// paused: RAM is read as it is at this moment.
/// Creates (or truncates) a snapshot file readable by its owner only: it
/// holds the guest's memory and registers, secrets included (the API
/// socket is 0600 for the same reason).
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

pub fn write_memory(path: &Path, ram: &GuestRam) -> Result<(), SnapshotError> {
    let tmp = tmp_name(path);
    let write = || -> Result<(), SnapshotError> {
        let f = create_private(&tmp).map_err(io_err(path))?;
        let size = ram.size();
        let mut buf = vec![0u8; COPY_CHUNK.min(size)];
        let mut off = 0usize;
        while off < size {
            let n = buf.len().min(size - off);
            ram.memory()
                .read_slice(&mut buf[..n], GuestAddress(ram.base() + off as u64))
                .map_err(|e| SnapshotError::Io {
                    path: path.to_owned(),
                    source: std::io::Error::other(format!("reading guest RAM: {e}")),
                })?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    f.write_all_at(page, (off + i * PAGE) as u64)
                        .map_err(io_err(path))?;
                }
            }
            off += n;
        }
        f.set_len(size as u64).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

impl GuestRam {
    /// Guest RAM at `base` backed by the snapshot memory file `path`, which
    /// must be exactly `size` bytes. Mapped `MAP_PRIVATE`: pages are read on
    /// first touch, and guest writes never reach the file.
    pub fn from_file(base: u64, path: &Path, size: usize) -> Result<GuestRam, SnapshotError> {
        let f = File::open(path).map_err(io_err(path))?;
        let have = f.metadata().map_err(io_err(path))?.len();
        if have != size as u64 {
            return Err(SnapshotError::MemorySize {
                path: path.to_owned(),
                have,
                want: size as u64,
            });
        }
        let map_err = |reason: String| SnapshotError::Map {
            path: path.to_owned(),
            reason,
        };
        if size == 0 {
            return Err(map_err("the file is empty".into()));
        }
        let region = vm_memory::mmap::MmapRegion::build(
            Some(vm_memory::FileOffset::new(f, 0)),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| map_err(e.to_string()))?;
        GuestRam::from_region(region, base).map_err(|e| map_err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct S {
        version: u32,
        regs: Vec<u64>,
        name: String,
    }

    fn sample() -> S {
        S {
            version: 1,
            regs: vec![0, 1, u64::MAX, 0x8000_0000_dead_beef],
            name: "hart0".into(),
        }
    }

    fn p() -> &'static Path {
        Path::new("state")
    }

    #[test]
    fn round_trip_in_memory_and_on_disk() {
        let bytes = encode_state(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"VKSNAP\r\n");
        assert_eq!(decode_state::<S>(p(), &bytes).unwrap(), sample());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_state(&path, &sample()).unwrap();
        assert_eq!(read_state::<S>(&path).unwrap(), sample());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Guest secrets: the owner's only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn every_corruption_is_its_own_error() {
        let good = encode_state(&sample()).unwrap();
        let err = |b: &[u8]| decode_state::<S>(p(), b).unwrap_err();

        assert!(matches!(err(b""), SnapshotError::NotASnapshot { .. }));
        assert!(matches!(
            err(b"\x7fELF...."),
            SnapshotError::NotASnapshot { .. }
        ));
        assert!(matches!(err(&good[..5]), SnapshotError::Truncated { .. }));
        assert!(matches!(
            err(&good[..HEADER_LEN - 1]),
            SnapshotError::Truncated { .. }
        ));
        assert!(matches!(
            err(&good[..good.len() - 1]),
            SnapshotError::Truncated { .. }
        ));

        let mut b = good.clone();
        b[8] = 2;
        let e = err(&b);
        assert!(
            matches!(e, SnapshotError::NewerVersion { version: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("version 2"), "{e}");
        b[8] = 0;
        assert!(matches!(err(&b), SnapshotError::BadVersion { .. }));

        let mut b = good.clone();
        b[16..24].copy_from_slice(&(MAX_STATE_BODY + 1).to_le_bytes());
        assert!(matches!(err(&b), SnapshotError::TooLarge { .. }));
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(err(&b), SnapshotError::TooLarge { .. }));

        let mut b = good.clone();
        b.push(0);
        assert!(matches!(
            err(&b),
            SnapshotError::TrailingData { extra: 1, .. }
        ));

        let mut b = good.clone();
        let last = b.len() - 2;
        b[last] ^= 0x20;
        assert!(matches!(err(&b), SnapshotError::Checksum { .. }));

        // A well-formed file holding something else: the body's type check.
        let other = encode_state(&vec![1u8, 2, 3]).unwrap();
        let e = err(&other);
        assert!(matches!(e, SnapshotError::Body { .. }), "{e}");
    }

    #[test]
    fn errors_from_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken");
        std::fs::write(&path, b"VKSNAP\r").unwrap();
        let e = read_state::<S>(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("broken"), "{e}");
        let missing = dir.path().join("missing");
        let e = read_state::<S>(&missing).unwrap_err();
        assert!(matches!(e, SnapshotError::Io { .. }), "{e}");
        // A huge declared length is refused before any allocation.
        let mut b = encode_state(&sample()).unwrap();
        b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        assert!(matches!(
            read_state::<S>(&path).unwrap_err(),
            SnapshotError::TooLarge { .. }
        ));
    }

    #[test]
    fn memory_file_round_trip_is_private_and_sparse() {
        let base = 0x8000_0000;
        let size = 4 << 20;
        let ram = GuestRam::new(base, size).unwrap();
        ram.memory()
            .write_obj(0x1122_3344u32, GuestAddress(base + 8))
            .unwrap();
        ram.memory()
            .write_obj(0x5566u16, GuestAddress(base + size as u64 - 2))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        write_memory(&path, &ram).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size as u64);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let restored = GuestRam::from_file(base, &path, size).unwrap();
        let m = restored.memory();
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(base + 8)).unwrap(),
            0x1122_3344
        );
        assert_eq!(
            m.read_obj::<u16>(GuestAddress(base + size as u64 - 2))
                .unwrap(),
            0x5566
        );
        assert_eq!(m.read_obj::<u64>(GuestAddress(base + 4096)).unwrap(), 0);
        // Guest writes stay private to this VM.
        m.write_obj(0xffu8, GuestAddress(base + 8)).unwrap();
        let again = GuestRam::from_file(base, &path, size).unwrap();
        assert_eq!(
            again
                .memory()
                .read_obj::<u8>(GuestAddress(base + 8))
                .unwrap(),
            0x44
        );
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk[8], 0x44);

        let e = GuestRam::from_file(base, &path, size * 2).unwrap_err();
        assert!(matches!(e, SnapshotError::MemorySize { .. }), "{e}");
        assert!(e.to_string().contains("memory"), "{e}");
    }
}
