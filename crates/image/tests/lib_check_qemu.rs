//! `check` sees what `qemu-img check` sees: one hand-made corruption per
//! case (reserved bits in L1, L2 and refcount table entries, a refcount
//! block outside the image, the COPIED flag on a compressed cluster) and
//! the headers QEMU refuses at open; our verdict and qemu-img's must match.

mod lib_util;

use std::path::Path;
use std::process::Command;

use image::{OpenOptions, Repair};
use lib_util::{qemu_img, qemu_img_ok, TempDir};

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

fn patch(p: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// A 512-byte-cluster image with data, a compressed cluster and known
/// table offsets: (L1 offset, first L2 offset, refcount table offset).
fn base(dir: &TempDir, name: &str) -> (std::path::PathBuf, u64, u64, u64) {
    let p = dir.path(name);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        p.to_str().unwrap(),
        "64k",
    ]);
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 1 0 2k",
            "-c",
            "write -c -P 2 4k 512",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-io: {out:?}");
    let b = std::fs::read(&p).unwrap();
    let l1 = be64(&b, 40);
    let rt = be64(&b, 48);
    let l2 = be64(&b, l1 as usize) & 0x00ff_ffff_ffff_fe00;
    (p, l1, l2, rt)
}

/// Our verdict as qemu-img's exit code: 0 clean, 1 check failed or refused
/// at open, 2 corrupt, 3 leaks.
fn ours(p: &Path, repair: Repair) -> i32 {
    let opts = OpenOptions {
        read_only: repair == Repair::None,
        follow_backing: false,
        for_check: true,
        ..OpenOptions::read_only()
    };
    let img = match image::open(p, &opts) {
        Ok(i) => i,
        Err(_) => return 1,
    };
    match img.check(repair) {
        Err(_) => 1,
        Ok(r) if r.check_errors != 0 => 1,
        Ok(r) if r.corruptions > r.corruptions_fixed => 2,
        Ok(r) if r.leaks > r.leaks_fixed => 3,
        Ok(_) => 0,
    }
}

fn theirs(p: &Path) -> i32 {
    qemu_img(&["check", p.to_str().unwrap()]).0
}

#[test]
fn check_reports_what_qemu_img_reports() {
    let dir = TempDir::new("check-qemu");
    let (p, l1, l2, rt) = base(&dir, "base.qcow2");
    assert_eq!((theirs(&p), ours(&p, Repair::None)), (0, 0));
    let orig = std::fs::read(&p).unwrap();
    let rd = |at: u64| be64(&orig, at as usize);
    // (name, offset, new 8-byte value, qemu-img's verdict before and after
    // `-r all`; -1: qemu-img 7.2's repair itself fails (its overlap check
    // refuses the refblock it rebuilds), ours must leave a clean image).
    let cases: &[(&str, u64, u64, i32, i32)] = &[
        // Reserved bits: reported, never repaired.
        ("l1-reserved", l1, rd(l1) | 1 << 57, 2, 2),
        ("l1-reserved-low", l1, rd(l1) | 0x4, 2, 2),
        ("l2-reserved", l2, rd(l2) | 1 << 58, 2, 2),
        ("l2-reserved-low", l2, rd(l2) | 0x2, 2, 2),
        // The COPIED flag on the compressed cluster (L2 entry 8 = 4 KiB).
        ("compressed-copied", l2 + 64, rd(l2 + 64) | 1 << 63, 2, 2),
        // Refcount table: reserved bits, a block far outside the image
        // (offset bits above the L2 field), both rebuilt by -r all.
        ("rt-reserved", rt, rd(rt) | 0x10, 2, -1),
        ("rt-outside", rt, rd(rt) | 1 << 60, 2, 0),
    ];
    for &(name, at, v, before, after) in cases {
        let q = dir.path(&format!("q-{name}"));
        let o = dir.path(&format!("o-{name}"));
        for f in [&q, &o] {
            std::fs::write(f, &orig).unwrap();
            patch(f, at, &v.to_be_bytes());
        }
        assert_eq!(theirs(&q), before, "{name}: qemu-img's verdict");
        assert_eq!(ours(&o, Repair::None), before, "{name}: our verdict");
        // Repair with both; qemu-img judges both results.
        let (code, ..) = qemu_img(&["check", "-r", "all", q.to_str().unwrap()]);
        ours(&o, Repair::All);
        if after < 0 {
            assert_eq!(code, 1, "{name}: qemu-img's repair");
            assert_eq!(theirs(&o), 0, "{name}: qemu-img after our repair");
            continue;
        }
        assert_eq!(theirs(&q), after, "{name}: qemu-img after its repair");
        assert_eq!(theirs(&o), after, "{name}: qemu-img after our repair");
    }
}

#[test]
fn headers_qemu_refuses_at_open_are_refused() {
    let dir = TempDir::new("check-hdr");
    let (p, ..) = base(&dir, "base.qcow2");
    let orig = std::fs::read(&p).unwrap();
    // (name, header offset, bytes, the field the error must name). QEMU
    // checks these offsets whatever the count or size beside them.
    let cases: &[(&str, u64, Vec<u8>, &str)] = &[
        // Snapshot table offset unaligned, no snapshots.
        (
            "snap",
            64,
            0x123u64.to_be_bytes().to_vec(),
            "snapshots_offset",
        ),
        // Backing file name beyond the header cluster, size 0.
        (
            "backing",
            8,
            0x10_0000u64.to_be_bytes().to_vec(),
            "backing_file_offset",
        ),
        // L1 table offset unaligned with an empty L1 table (size 0).
        ("l1", 24, [0u8; 16].to_vec(), "l1_table_offset"),
        // Compression type bit with the zlib type.
        (
            "zlib-bit",
            72,
            8u64.to_be_bytes().to_vec(),
            "compression type",
        ),
    ];
    for (name, at, bytes, field) in cases {
        let f = dir.path(&format!("{name}.qcow2"));
        std::fs::write(&f, &orig).unwrap();
        patch(&f, *at, bytes);
        if *name == "l1" {
            // Virtual size 0 and L1 size 0 (written above), then an
            // unaligned L1 offset.
            patch(&f, 40, &0x321u64.to_be_bytes());
        }
        let (code, _, err) = qemu_img(&["info", f.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}: qemu-img must refuse it: {err}");
        let e = image::open(&f, &OpenOptions::read_only())
            .err()
            .unwrap_or_else(|| panic!("{name}: opened"));
        assert!(e.to_string().contains(field), "{name}: {e}");
        // `check` too (qemu-img check fails: at open, or "Check failed").
        assert_eq!(theirs(&f), 1, "{name}");
        assert_eq!(ours(&f, Repair::None), 1, "{name}");
    }
}
