//! Image locking, compatible with QEMU's: two users of one image file see
//! each other, whether they are virtkit or QEMU, in one process or two.
//!
//! QEMU's block layer gives every user of a node *permissions* (consistent
//! read, write, write unchanged, resize) and a set of permissions it lets
//! *others* have at the same time. block/file-posix.c publishes both on the
//! file with open-file-description (OFD) byte-range locks, all of them
//! shared (read) locks of one byte:
//!
//! - byte 100 + i while it holds permission i,
//! - byte 200 + i while it does not share permission i.
//!
//! To open, a user first takes its own locks, then tests (F_OFD_GETLK with a
//! write lock, which a shared lock of anyone else blocks) byte 200 + i for
//! every permission i it wants (someone refuses to share it: `Failed to get
//! "write" lock`) and byte 100 + i for every permission i it does not share
//! (someone holds it: `Failed to get shared "write" lock`). Taking before
//! testing means two racing openers both fail rather than both succeed.
//!
//! OFD locks belong to the open file description, not to the process: two
//! opens of one image in one process conflict like two processes do, a
//! `dup` of the descriptor shares its locks, and they all go away when the
//! last descriptor of the description closes (when the [`Image`] drops).
//!
//! Which permissions an open asks for follows QEMU 7.2 (checked against
//! `/proc/locks` under qemu-io and qemu-system): see [`Request`].
//!
//! [`Image`]: crate::Image

use std::fs::File;
use std::os::unix::io::AsRawFd;

use crate::{Error, Format, Result, Sharing};

/// QEMU's `BLK_PERM_CONSISTENT_READ`: the data read is what was written.
pub(crate) const CONSISTENT_READ: u8 = 1 << 0;
/// `BLK_PERM_WRITE`.
pub(crate) const WRITE: u8 = 1 << 1;
/// `BLK_PERM_WRITE_UNCHANGED`: writes that do not change what reads see.
pub(crate) const WRITE_UNCHANGED: u8 = 1 << 2;
/// `BLK_PERM_RESIZE`.
pub(crate) const RESIZE: u8 = 1 << 3;
/// Every permission QEMU 7.2 knows (`BLK_PERM_ALL`).
pub(crate) const ALL: u8 = CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE;
/// Names as QEMU prints them (`bdrv_perm_names`), by bit number.
const NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];

/// QEMU's `RAW_LOCK_PERM_BASE`: byte 100 + i is locked while permission i
/// is held.
pub(crate) const PERM_BASE: i64 = 100;
/// QEMU's `RAW_LOCK_SHARED_BASE`: byte 200 + i is locked while permission i
/// is *not* shared with others.
pub(crate) const SHARED_BASE: i64 = 200;

/// What a user of an image node asks of it: the permissions it holds and
/// those it lets others hold (QEMU's `perm` and `shared` of a parent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub perm: u8,
    pub shared: u8,
    /// `force-share`: every layer shares everything.
    pub force: bool,
}

impl Request {
    /// The top image's user, from [`OpenOptions`](crate::OpenOptions).
    pub(crate) fn top(sharing: Sharing, read_only: bool) -> Result<Request> {
        let rw = if read_only { 0 } else { WRITE };
        match sharing {
            // blkconf_apply_backend_options: a guest device shares reads,
            // unchanged writes and resizes, but never plain writes (unless
            // share-rw=on).
            Sharing::Device => Ok(Request {
                perm: CONSISTENT_READ | rw,
                shared: CONSISTENT_READ | WRITE_UNCHANGED | RESIZE,
                force: false,
            }),
            // blk_new_open, as qemu-img and qemu-io use it: everything shared
            // (the format may still refuse to share, see `for_file`).
            Sharing::Tool => Ok(Request {
                perm: CONSISTENT_READ | rw,
                shared: ALL,
                force: false,
            }),
            Sharing::ForceShare if !read_only => Err(Error::InvalidOption(
                "force-share=on can only be used with read-only images".into(),
            )),
            Sharing::ForceShare => Ok(Request {
                perm: CONSISTENT_READ,
                shared: ALL,
                force: true,
            }),
        }
    }

    /// What an image asks of its backing file (QEMU's
    /// `bdrv_default_perms_for_cow`): consistent reads if the image's user
    /// needs them; others may read and write unchanged, and may write and
    /// resize only if the image's user tolerates changing data.
    pub(crate) fn for_backing(self) -> Request {
        let mut shared = CONSISTENT_READ | WRITE_UNCHANGED;
        if self.shared & WRITE != 0 {
            shared |= WRITE | RESIZE;
        }
        Request {
            perm: self.perm & CONSISTENT_READ,
            shared: if self.force { ALL } else { shared },
            force: self.force,
        }
    }

    /// What the format layer asks of its file (`bdrv_default_perms`): raw
    /// passes its user's request through; qcow2 reads metadata always,
    /// writes and grows the file when writable, and never lets anyone else
    /// write or resize it (that would corrupt its metadata).
    pub(crate) fn for_file(self, format: Format, writable: bool) -> (u8, u8) {
        let (perm, shared) = match format {
            Format::Raw => (self.perm, self.shared),
            Format::Qcow2 => {
                let mut perm = (self.perm & ALL) | CONSISTENT_READ;
                if writable {
                    perm |= WRITE | RESIZE;
                }
                (perm, self.shared & !(WRITE | RESIZE))
            }
        };
        if self.force {
            (perm, ALL)
        } else {
            (perm, shared)
        }
    }
}

/// One byte-range OFD lock operation: `kind` is F_RDLCK, F_WRLCK or F_UNLCK.
fn flock_at(byte: i64, kind: i32) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    // OFD locks require l_pid = 0 (zeroed above).
    fl
}

/// Outcome of an OFD lock call that the kernel may not support.
enum Ofd {
    Done,
    /// The kernel or file system has no OFD locks (EINVAL): QEMU's
    /// `locking=auto` then goes without locks, and so do we.
    Unsupported,
}

fn set(file: &File, path: &str, byte: i64, kind: i32) -> Result<Ofd> {
    let mut fl = flock_at(byte, kind);
    // SAFETY: fcntl on a descriptor we own, with a valid flock struct that
    // outlives the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if r == 0 {
        return Ok(Ofd::Done);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) => Ok(Ofd::Unsupported),
        _ => Err(Error::Io {
            path: path.to_string(),
            source: std::io::Error::new(e.kind(), format!("Failed to lock byte {byte}: {e}")),
        }),
    }
}

/// Whether anyone but this open file description holds a lock on `byte`.
fn taken_by_other(file: &File, path: &str, byte: i64) -> Result<bool> {
    let mut fl = flock_at(byte, libc::F_WRLCK);
    // SAFETY: as in `set`; F_OFD_GETLK writes into `fl` only.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::Io {
            path: path.to_string(),
            source: std::io::Error::new(e.kind(), format!("Failed to test byte {byte}: {e}")),
        });
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The locks of one open file description, released when dropped.
///
/// Closing the last descriptor releases OFD locks too, but not when another
/// process shares the description: a child forked by any thread holds a
/// copy of every descriptor until it execs, so an image dropped and opened
/// again at that moment would find its own old locks. Unlocking explicitly
/// before the close leaves no such window.
pub(crate) struct HeldLocks {
    /// A descriptor of the locked description (`None`: no OFD locks here).
    file: Option<File>,
}

impl HeldLocks {
    /// Locks that were never taken (a file system without OFD locks).
    fn none() -> HeldLocks {
        HeldLocks { file: None }
    }

    /// Releases every lock byte of QEMU's range at once.
    fn release(file: &File) {
        let mut fl = flock_at(PERM_BASE, libc::F_UNLCK);
        fl.l_len = SHARED_BASE + NAMES.len() as i64 - PERM_BASE;
        // SAFETY: as in `set`. Unlocking cannot conflict; an error would
        // only mean no locks were held.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    }
}

impl Drop for HeldLocks {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            HeldLocks::release(f);
        }
    }
}

/// Publishes `perm` and `!shared` on `file` (QEMU's `raw_apply_lock_bytes`),
/// then checks that nobody else refuses what we hold or holds what we
/// refuse (`raw_check_lock_bytes`). The locks last as long as the returned
/// [`HeldLocks`]; on a conflict they are released at once.
pub(crate) fn lock(file: &File, path: &str, perm: u8, shared: u8) -> Result<HeldLocks> {
    for i in 0..NAMES.len() {
        let bit = 1u8 << i;
        for (base, want) in [
            (PERM_BASE, perm & bit != 0),
            (SHARED_BASE, shared & bit == 0),
        ] {
            if !want {
                continue;
            }
            match set(file, path, base + i as i64, libc::F_RDLCK) {
                Ok(Ofd::Done) => {}
                Ok(Ofd::Unsupported) => return Ok(HeldLocks::none()),
                Err(e) => {
                    HeldLocks::release(file);
                    return Err(e);
                }
            }
        }
    }
    let held = HeldLocks {
        file: Some(file.try_clone().map_err(|e| crate::io::io_err(path, e))?),
    };
    for (i, name) in NAMES.iter().enumerate() {
        let bit = 1u8 << i;
        if perm & bit != 0 && taken_by_other(file, path, SHARED_BASE + i as i64)? {
            return Err(Error::Locked {
                path: path.to_string(),
                perm: name,
                shared: false,
            });
        }
    }
    for (i, name) in NAMES.iter().enumerate() {
        let bit = 1u8 << i;
        if shared & bit == 0 && taken_by_other(file, path, PERM_BASE + i as i64)? {
            return Err(Error::Locked {
                path: path.to_string(),
                perm: name,
                shared: true,
            });
        }
    }
    Ok(held)
}

/// Opens `path` for creating an image: read-write, created if missing, then
/// (QEMU's `raw_co_create`) locked for writing and resizing, refused if
/// someone uses the file, and only then truncated to zero bytes, so that
/// creating over an image in use does not destroy it.
pub(crate) fn create_file(path: &std::path::Path, name: &str) -> Result<(File, HeldLocks)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| crate::io::io_err(name, e))?;
    let locks = lock(&file, name, WRITE | RESIZE, ALL & !RESIZE)?;
    file.set_len(0).map_err(|e| crate::io::io_err(name, e))?;
    Ok((file, locks))
}
