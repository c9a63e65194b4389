//! Hostile or broken files: a clear error naming the problem, never a
//! panic, hang or huge allocation.

mod lib_util;

use std::os::unix::fs::FileExt;
use std::path::Path;

use image::{BlockBackend, CreateOptions, Error, Format, OpenOptions};
use lib_util::*;

fn good_image(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let p = dir.path(name);
    image::create(
        &p,
        &CreateOptions {
            size: Some(1 << 20),
            cluster_size: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let img = image::open(&p, &OpenOptions::read_write()).unwrap();
    img.write_at(&[7u8; 10000], 5000).unwrap();
    drop(img);
    p
}

fn patch(p: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn open_err(p: &Path) -> Error {
    let o = OpenOptions {
        format: Some(Format::Qcow2),
        ..OpenOptions::read_only()
    };
    match image::open(p, &o) {
        Ok(img) => {
            // Opening may succeed; reading must then fail cleanly.
            let mut buf = vec![0u8; img.len().min(1 << 20) as usize];
            img.read_at(&mut buf, 0)
                .expect_err("broken image read without error")
        }
        Err(e) => e,
    }
}

#[test]
fn broken_headers_and_tables_are_named() {
    let dir = TempDir::new("bad");
    // Truncated header.
    let p = good_image(&dir, "trunc.qcow2");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(50)
        .unwrap();
    let e = open_err(&p);
    assert!(e.to_string().contains("truncated"), "{e}");
    // Not an image at all, forced as qcow2; probed it is raw.
    let p = dir.path("text.txt");
    std::fs::write(&p, b"hello, this is not a disk image").unwrap();
    assert!(matches!(open_err(&p), Error::NotFormat { .. }));
    assert_eq!(image::probe(&p).unwrap(), Format::Raw);
    // L1 table beyond the end of the file.
    let p = good_image(&dir, "l1.qcow2");
    patch(&p, 40, &(1u64 << 40).to_be_bytes());
    let e = open_err(&p);
    assert!(
        e.to_string().contains("L1 table") && e.to_string().contains("beyond"),
        "{e}"
    );
    // Refcount table overlapping the header.
    let p = good_image(&dir, "rt.qcow2");
    patch(&p, 48, &0u64.to_be_bytes());
    let e = open_err(&p);
    assert!(
        e.to_string().contains("refcount table overlaps the header"),
        "{e}"
    );
    // Absurd sizes.
    let p = good_image(&dir, "size.qcow2");
    patch(&p, 24, &u64::MAX.to_be_bytes());
    assert!(matches!(open_err(&p), Error::TooLarge { .. }));
    let p = good_image(&dir, "l1size.qcow2");
    patch(&p, 36, &u32::MAX.to_be_bytes());
    assert!(matches!(open_err(&p), Error::TooLarge { .. }));
    let p = good_image(&dir, "cb.qcow2");
    patch(&p, 20, &40u32.to_be_bytes());
    assert!(open_err(&p).to_string().contains("cluster_bits"));
    // Unknown incompatible feature and external data file: refused, named.
    let p = good_image(&dir, "feat.qcow2");
    patch(&p, 72, &(1u64 << 40).to_be_bytes());
    let e = open_err(&p);
    assert!(e.to_string().contains("incompatible feature bit 40"), "{e}");
    let p = good_image(&dir, "datafile.qcow2");
    patch(&p, 72, &(1u64 << 2).to_be_bytes());
    assert!(open_err(&p).to_string().contains("external data file"));
    // L2 entry pointing at the refcount table: reading is harmless, but
    // writing there is refused as corruption.
    let p = good_image(&dir, "l2.qcow2");
    let img = image::open(&p, &OpenOptions::read_only()).unwrap();
    let st = img.layer_status(5000, 1).unwrap();
    drop(img);
    let host = st.offset.unwrap() & !4095;
    // Find the L2 entry holding `host` and point it at cluster 0.
    let data = std::fs::read(&p).unwrap();
    let pos = data
        .chunks_exact(8)
        .position(|c| u64::from_be_bytes(c.try_into().unwrap()) & 0x00ff_ffff_ffff_fe00 == host)
        .unwrap();
    patch(&p, pos as u64 * 8, &((1u64 << 63) | 4096).to_be_bytes());
    let img = image::open(&p, &OpenOptions::read_write()).unwrap();
    let e = img.write_at(&[1u8; 512], 4096).unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
    // Unaligned L2 entry: a named corruption on read.
    let p = good_image(&dir, "l2u.qcow2");
    patch(
        &p,
        pos as u64 * 8,
        &((1u64 << 63) | (host + 512)).to_be_bytes(),
    );
    let e = open_err(&p);
    assert!(e.to_string().contains("unaligned"), "{e}");
    // qemu-img agrees these are broken (sanity of the fixtures).
    let (code, _, _) = qemu_img(&["check", p.to_str().unwrap()]);
    assert_ne!(code, 0);
}

#[test]
fn backing_cycles_and_missing_files() {
    let dir = TempDir::new("cycle");
    let a = dir.path("a.qcow2");
    let b = dir.path("b.qcow2");
    let base = CreateOptions {
        size: Some(1 << 20),
        ..Default::default()
    };
    image::create(&a, &base).unwrap();
    image::create(
        &b,
        &CreateOptions {
            backing_file: Some("a.qcow2".into()),
            backing_format: Some(Format::Qcow2),
            ..base.clone()
        },
    )
    .unwrap();
    // Make a point back at b.
    let img = image::open(
        &a,
        &OpenOptions {
            follow_backing: false,
            ..OpenOptions::read_write()
        },
    )
    .unwrap();
    img.set_backing(Some("b.qcow2"), Some(Format::Qcow2))
        .unwrap();
    drop(img);
    match image::open(&b, &OpenOptions::read_only()) {
        Err(Error::BackingCycle { .. }) => {}
        Err(e) => panic!("expected a cycle error, got {e}"),
        Ok(_) => panic!("cyclic chain opened"),
    }
    // Self-reference.
    let img = image::open(
        &a,
        &OpenOptions {
            follow_backing: false,
            ..OpenOptions::read_write()
        },
    )
    .unwrap();
    img.set_backing(Some("a.qcow2"), None).unwrap();
    drop(img);
    assert!(matches!(
        image::open(&a, &OpenOptions::read_only()),
        Err(Error::BackingCycle { .. })
    ));
    // Missing backing file: an I/O error naming it.
    let img = image::open(
        &a,
        &OpenOptions {
            follow_backing: false,
            ..OpenOptions::read_write()
        },
    )
    .unwrap();
    img.set_backing(Some("nope.qcow2"), None).unwrap();
    drop(img);
    let e = image::open(&a, &OpenOptions::read_only()).err().unwrap();
    assert!(e.to_string().contains("nope.qcow2"), "{e}");
    // Header rewrite keeps unknown extensions: add one, rewrite, compare.
    let c = dir.path("c.qcow2");
    image::create(&c, &base).unwrap();
    let mut data = std::fs::read(&c).unwrap();
    // Insert an unknown extension right after the 112-byte header.
    let ext = [
        0x12u8, 0x34, 0x56, 0x78, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0,
    ];
    data.splice(112..112, ext);
    data.truncate(data.len() - ext.len());
    std::fs::write(&c, &data[..]).unwrap();
    let img = image::open(&c, &OpenOptions::read_write()).unwrap();
    img.set_backing(Some("a.qcow2"), Some(Format::Qcow2))
        .unwrap();
    drop(img);
    let after = std::fs::read(&c).unwrap();
    assert!(
        after[..4096].windows(ext.len()).any(|w| w == ext),
        "unknown extension lost"
    );
    assert_eq!(qemu_info(&c)["backing-filename"].as_str(), Some("a.qcow2"));
}

#[test]
fn corrupt_and_dirty_bits() {
    let dir = TempDir::new("bits");
    // Corrupt bit: opens read-only, writes refused naming the bit.
    let p = good_image(&dir, "corrupt.qcow2");
    patch(&p, 72, &(1u64 << 1).to_be_bytes());
    let img = image::open(&p, &OpenOptions::read_write()).unwrap();
    assert!(img.is_read_only());
    assert!(matches!(
        img.write_at(&[0], 0),
        Err(Error::MarkedCorrupt { .. })
    ));
    assert!(img.info().unwrap().qcow2.unwrap().corrupt);
    drop(img);
    // check -r all clears it.
    let img = image::open(
        &p,
        &OpenOptions {
            for_check: true,
            ..OpenOptions::read_write()
        },
    )
    .unwrap();
    img.check(image::Repair::All).unwrap();
    drop(img);
    assert!(
        !image::open(&p, &OpenOptions::read_only())
            .unwrap()
            .info()
            .unwrap()
            .qcow2
            .unwrap()
            .corrupt
    );
    // Dirty bit with broken refcounts: rebuilt on a read-write open.
    let p = good_image(&dir, "dirty.qcow2");
    let img = image::open(&p, &OpenOptions::read_only()).unwrap();
    let host = img.layer_status(5000, 1).unwrap().offset.unwrap() & !4095;
    drop(img);
    // Zero the refcount of that data cluster (16-bit refcounts, block at
    // cluster 2 for a fresh image) and mark the image dirty.
    let rb = 2 * 4096;
    patch(&p, rb + (host / 4096) * 2, &[0, 0]);
    patch(&p, 72, &1u64.to_be_bytes());
    let (code, _, _) = qemu_img(&["check", p.to_str().unwrap()]);
    assert_eq!(code, 2, "fixture must be corrupt for qemu-img");
    let img = image::open(&p, &OpenOptions::read_write()).unwrap();
    assert_eq!(img.info().unwrap().dirty_flag, Some(false));
    drop(img);
    assert_qemu_check_clean(&p);
}

#[test]
fn backing_name_offset_near_u64_max_is_refused() {
    // Found in review: offset + size wrapped around and indexed out of bounds.
    let dir = TempDir::new("bad-backing-off");
    let p = good_image(&dir, "wrap.qcow2");
    patch(&p, 8, &0xFFFF_FFFF_FFFF_FFF8u64.to_be_bytes());
    patch(&p, 16, &16u32.to_be_bytes());
    let e = open_err(&p);
    assert!(
        e.to_string().contains("backing file name"),
        "unexpected error: {e}"
    );
}

/// Found by the write_ops fuzz target: an L2 entry pointing far past the
/// end of the file made a snapshot operation size its reference counts by
/// that offset (gigabytes). Now a clear error, and nothing changes.
#[test]
fn snapshot_of_image_with_data_past_eof_is_refused() {
    let dir = TempDir::new("badsnap");
    let p = good_image(&dir, "far.qcow2");
    // The L2 table of the (only) L1 entry; point its second entry (the
    // cluster at 4096, written above) at 1 TiB.
    let l1_off = {
        let b = std::fs::read(&p).unwrap();
        u64::from_be_bytes(b[40..48].try_into().unwrap())
    };
    let b = std::fs::read(&p).unwrap();
    let l1e = u64::from_be_bytes(b[l1_off as usize..l1_off as usize + 8].try_into().unwrap());
    let l2 = l1e & 0x00ff_ffff_ffff_fe00;
    patch(&p, l2 + 8, &((1u64 << 40) | (1 << 63)).to_be_bytes());
    let before = std::fs::read(&p).unwrap();
    let img = image::open(&p, &OpenOptions::read_write()).unwrap();
    let err = img.snapshot_create("s").unwrap_err();
    assert!(
        err.to_string().contains("beyond the end of the file"),
        "{err}"
    );
    assert!(img.snapshots().is_empty());
    drop(img);
    let after = std::fs::read(&p).unwrap();
    // Only the dirty-bit/autoclear header bytes may differ, not the tables.
    assert_eq!(before.len(), after.len());
    assert_eq!(before[4096..], after[4096..]);
}

/// A snapshot whose recorded disk size is absurd: applying it is refused
/// before any table is sized by it.
#[test]
fn snapshot_with_absurd_disk_size_is_refused() {
    let dir = TempDir::new("badsize");
    let p = good_image(&dir, "s.qcow2");
    {
        let img = image::open(&p, &OpenOptions::read_write()).unwrap();
        img.snapshot_create("s").unwrap();
    }
    let b = std::fs::read(&p).unwrap();
    let snap_off = u64::from_be_bytes(b[64..72].try_into().unwrap());
    // Extra data: vm_state_size_large, then disk_size.
    patch(&p, snap_off + 48, &(1u64 << 62).to_be_bytes());
    let img = image::open(&p, &OpenOptions::read_write()).unwrap();
    let err = img.snapshot_apply("s").unwrap_err();
    assert!(err.to_string().contains("invalid disk size"), "{err}");
    assert_eq!(img.len(), 1 << 20);
}
