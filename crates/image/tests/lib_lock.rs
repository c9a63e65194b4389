//! Image locking: two writers never share an image, whether they are two
//! opens in one process, two processes, or virtkit and QEMU; the lock bytes
//! are QEMU's, byte for byte (the tables below were read from /proc/locks
//! while qemu-io and qemu-system-riscv64 7.2 held the same kinds of image).

mod lib_util;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use image::{BlockBackend, CreateOptions, Error, Format, Image, OpenOptions, Sharing};
use lib_util::*;

fn new_image(path: &Path, format: Format, backing: Option<(&str, Format)>) {
    image::create(
        path,
        &CreateOptions {
            format,
            size: Some(4 << 20),
            backing_file: backing.map(|b| b.0.to_string()),
            backing_format: backing.map(|b| b.1),
            ..Default::default()
        },
    )
    .unwrap();
}

fn opts(sharing: Sharing, read_only: bool) -> OpenOptions {
    OpenOptions {
        read_only,
        sharing,
        ..Default::default()
    }
}

fn open(path: &Path, sharing: Sharing, read_only: bool) -> image::Result<Image> {
    image::open(path, &opts(sharing, read_only))
}

/// The bytes of `path` under an OFD lock, from /proc/locks (all of them
/// are shared locks: that is QEMU's scheme).
fn locked_bytes(path: &Path) -> BTreeSet<u64> {
    let ino = std::fs::metadata(path).unwrap().ino();
    let f = std::fs::File::open("/proc/locks").unwrap();
    let mut bytes = BTreeSet::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.unwrap();
        let w: Vec<&str> = line.split_whitespace().collect();
        // "1: OFDLCK ADVISORY READ -1 fe:00:1234 100 101"; "->" lines are
        // blocked waiters.
        if w.len() < 8 || w[1] != "OFDLCK" {
            continue;
        }
        if w[5].rsplit(':').next() != Some(&ino.to_string()) {
            continue;
        }
        assert_eq!(w[3], "READ", "{line}");
        let start: u64 = w[6].parse().unwrap();
        let end: u64 = w[7].parse().unwrap();
        bytes.extend(start..=end);
    }
    bytes
}

fn set(b: &[u64]) -> BTreeSet<u64> {
    b.iter().copied().collect()
}

fn assert_locked(e: Error, perm: &str, shared: bool, path: &Path) {
    let msg = e.to_string();
    match e {
        Error::Locked {
            perm: p, shared: s, ..
        } => assert_eq!((p, s), (perm, shared), "{msg}"),
        other => panic!("expected a lock conflict, got: {other}"),
    }
    let want = if shared {
        format!("Failed to get shared \"{perm}\" lock")
    } else {
        format!("Failed to get \"{perm}\" lock")
    };
    assert!(msg.contains(&want), "{msg}");
    assert!(
        msg.contains(&format!(
            "Is another process using the image [{}]?",
            path.display()
        )),
        "{msg}"
    );
}

#[test]
fn lock_bytes_are_qemus() {
    let dir = TempDir::new("lockbytes");
    let q = dir.path("q.qcow2");
    let r = dir.path("r.raw");
    new_image(&q, Format::Qcow2, None);
    new_image(&r, Format::Raw, None);
    // (image, sharing, read-only, bytes QEMU 7.2 locks in the same role)
    let cases: &[(&Path, Sharing, bool, &[u64])] = &[
        // qemu-system -drive + virtio-blk
        (&q, Sharing::Device, false, &[100, 101, 103, 201, 203]),
        (&q, Sharing::Device, true, &[100, 201, 203]),
        (&r, Sharing::Device, false, &[100, 101, 201]),
        (&r, Sharing::Device, true, &[100, 201]),
        // qemu-io, qemu-img
        (&q, Sharing::Tool, false, &[100, 101, 103, 201, 203]),
        (&q, Sharing::Tool, true, &[100, 201, 203]),
        (&r, Sharing::Tool, false, &[100, 101]),
        (&r, Sharing::Tool, true, &[100]),
        // qemu-io -r -U
        (&q, Sharing::ForceShare, true, &[100]),
        (&r, Sharing::ForceShare, true, &[100]),
    ];
    for &(path, sharing, ro, want) in cases {
        let img = open(path, sharing, ro).unwrap();
        assert_eq!(
            locked_bytes(path),
            set(want),
            "{} {sharing:?} read_only={ro}",
            path.display()
        );
        drop(img);
        assert!(locked_bytes(path).is_empty(), "locks outlive the image");
    }
}

#[test]
fn backing_files_are_locked_as_qemu_locks_them() {
    let dir = TempDir::new("lockbacking");
    let bq = dir.path("base.qcow2");
    let br = dir.path("base.raw");
    new_image(&bq, Format::Qcow2, None);
    new_image(&br, Format::Raw, None);
    let oq = dir.path("oq.qcow2");
    let or = dir.path("or.qcow2");
    new_image(&oq, Format::Qcow2, Some(("base.qcow2", Format::Qcow2)));
    new_image(&or, Format::Qcow2, Some(("base.raw", Format::Raw)));
    let cases: &[(&Path, &Path, Sharing, &[u64])] = &[
        (&oq, &bq, Sharing::Tool, &[100, 201, 203]),
        (&or, &br, Sharing::Tool, &[100]),
        (&oq, &bq, Sharing::Device, &[100, 201, 203]),
        (&or, &br, Sharing::Device, &[100, 201, 203]),
    ];
    for &(overlay, base, sharing, want) in cases {
        let _img = open(overlay, sharing, false).unwrap();
        assert_eq!(
            locked_bytes(base),
            set(want),
            "{} {sharing:?}",
            base.display()
        );
        assert_eq!(
            locked_bytes(overlay),
            set(&[100, 101, 103, 201, 203]),
            "overlay"
        );
    }
}

#[test]
fn same_image_twice_in_one_process_is_refused() {
    let dir = TempDir::new("locktwice");
    for (name, format) in [("d.qcow2", Format::Qcow2), ("d.raw", Format::Raw)] {
        let path = dir.path(name);
        new_image(&path, format, None);
        // What `vm run --disk d --disk d` does.
        let first = open(&path, Sharing::Device, false).unwrap();
        let e = open(&path, Sharing::Device, false)
            .err()
            .expect("second writer");
        assert_locked(e, "write", false, &path);
        // A reader refuses writers, so it cannot join a writer either.
        let e = open(&path, Sharing::Tool, true).err();
        if format == Format::Qcow2 {
            assert_locked(e.expect("reader of qcow2"), "write", true, &path);
        } else {
            // QEMU lets a tool read a raw file in use (no metadata).
            assert!(e.is_none(), "raw reader: {e:?}");
        }
        // -U reads anyway, and -U is only for reading.
        let forced = open(&path, Sharing::ForceShare, true).unwrap();
        assert_eq!(forced.len(), 4 << 20);
        assert!(matches!(
            open(&path, Sharing::ForceShare, false),
            Err(Error::InvalidOption(_))
        ));
        // Creating over an image in use is refused before anything is
        // truncated.
        first.write_at(&[0xa5; 512], 0).unwrap();
        first.flush().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let e = image::create(
            &path,
            &CreateOptions {
                format,
                size: Some(1 << 20),
                ..Default::default()
            },
        )
        .expect_err("create over an image in use");
        assert_locked(e, "write", false, &path);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        drop(forced);
        // The locks go with the image.
        drop(first);
        let again = open(&path, Sharing::Device, false).unwrap();
        let mut buf = [0u8; 512];
        again.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [0xa5; 512]);
    }
}

#[test]
fn raw_file_is_shared_between_tools_but_not_with_a_device() {
    let dir = TempDir::new("lockraw");
    let path = dir.path("r.raw");
    new_image(&path, Format::Raw, None);
    // qemu-io twice on one raw file works in QEMU too.
    let a = open(&path, Sharing::Tool, false).unwrap();
    let b = open(&path, Sharing::Tool, false).unwrap();
    // A guest device refuses to share writes: it cannot join them.
    let e = open(&path, Sharing::Device, true).err().expect("device");
    assert_locked(e, "write", true, &path);
    drop((a, b));
    let dev = open(&path, Sharing::Device, true).unwrap();
    let e = open(&path, Sharing::Tool, false)
        .err()
        .expect("tool writer");
    assert_locked(e, "write", false, &path);
    drop(dev);
}

#[test]
fn one_backing_file_under_two_writable_overlays() {
    let dir = TempDir::new("locksharedbase");
    let base = dir.path("base.qcow2");
    new_image(&base, Format::Qcow2, None);
    {
        let b = open(&base, Sharing::Tool, false).unwrap();
        b.write_at(&[7; 4096], 0).unwrap();
        b.flush().unwrap();
    }
    let o1 = dir.path("o1.qcow2");
    let o2 = dir.path("o2.qcow2");
    new_image(&o1, Format::Qcow2, Some(("base.qcow2", Format::Qcow2)));
    new_image(&o2, Format::Qcow2, Some(("base.qcow2", Format::Qcow2)));
    let i1 = open(&o1, Sharing::Device, false).unwrap();
    let i2 = open(&o2, Sharing::Device, false).unwrap();
    i1.write_at(&[1; 512], 0).unwrap();
    i2.write_at(&[2; 512], 512).unwrap();
    let mut buf = [0u8; 1024];
    i1.read_at(&mut buf, 0).unwrap();
    assert_eq!((buf[0], buf[600]), (1, 7));
    i2.read_at(&mut buf, 0).unwrap();
    assert_eq!((buf[0], buf[600]), (7, 2));
    // Others may read the backing file meanwhile, nobody may write it.
    drop(open(&base, Sharing::Tool, true).unwrap());
    let e = open(&base, Sharing::Tool, false)
        .err()
        .expect("base writer");
    assert_locked(e, "write", false, &base);
}

/// A QEMU process holding `path` open (qemu-io reading commands from a
/// pipe), until dropped.
struct QemuIo {
    child: Child,
}

impl QemuIo {
    fn hold(path: &Path, format: &str, extra: &[&str], expect_byte: u64) -> QemuIo {
        let child = Command::new("qemu-io")
            .args(["-f", format])
            .args(extra)
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-io must be installed (Debian package qemu-utils)");
        let q = QemuIo { child };
        // Wait (bounded) until QEMU has taken its locks.
        for _ in 0..1000 {
            if locked_bytes(path).contains(&expect_byte) {
                return q;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("qemu-io did not lock {} within 10 s", path.display());
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        // Closing its stdin ends qemu-io.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn qemu_and_virtkit_see_each_others_locks() {
    let dir = TempDir::new("lockqemu");
    let q = dir.path("q.qcow2");
    let r = dir.path("r.raw");
    new_image(&q, Format::Qcow2, None);
    new_image(&r, Format::Raw, None);

    // QEMU writes: virtkit neither writes nor (qcow2) reads without -U.
    {
        let _qemu = QemuIo::hold(&q, "qcow2", &[], 101);
        assert_locked(
            open(&q, Sharing::Device, false).err().unwrap(),
            "write",
            false,
            &q,
        );
        assert_locked(
            open(&q, Sharing::Tool, true).err().unwrap(),
            "write",
            true,
            &q,
        );
        open(&q, Sharing::ForceShare, true).unwrap();
    }
    open(&q, Sharing::Device, false).unwrap();
    {
        let _qemu = QemuIo::hold(&r, "raw", &[], 101);
        assert_locked(
            open(&r, Sharing::Device, false).err().unwrap(),
            "write",
            true,
            &r,
        );
        open(&r, Sharing::Tool, true).unwrap();
    }
    // QEMU only reads: virtkit reads too, but does not write.
    {
        let _qemu = QemuIo::hold(&q, "qcow2", &["-r"], 201);
        open(&q, Sharing::Tool, true).unwrap();
        assert_locked(
            open(&q, Sharing::Tool, false).err().unwrap(),
            "write",
            false,
            &q,
        );
    }

    // virtkit writes: QEMU neither writes nor (qcow2) reads without -U.
    let qs = q.to_str().unwrap();
    let rs = r.to_str().unwrap();
    let held = open(&q, Sharing::Device, false).unwrap();
    let (code, _, err) = qemu_img(&["info", qs]);
    assert_ne!(code, 0);
    assert!(err.contains("Failed to get shared \"write\" lock"), "{err}");
    qemu_img_ok(&["info", "-U", qs]);
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write 0 512", qs])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Failed to get \"write\" lock"),
        "{err}"
    );
    drop(held);
    qemu_img_ok(&["info", qs]);

    let held = open(&r, Sharing::Device, false).unwrap();
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 512", rs])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Failed to get \"write\" lock"),
        "{err}"
    );
    drop(held);
    let held = open(&r, Sharing::Device, true).unwrap();
    let (code, _, err) = qemu_img(&["resize", "-f", "raw", rs, "8M"]);
    assert!(
        code != 0 && err.contains("Failed to get \"write\" lock"),
        "{err}"
    );
    drop(held);
}
