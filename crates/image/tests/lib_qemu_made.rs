//! Images made by qemu-img (and qemu-io) read back byte-identical through
//! the library: compressed (zlib, zstd), every refcount width, v2, extended
//! L2 with partial subclusters, overlays, internal snapshots.

mod lib_util;

use std::path::Path;

use image::{BlockBackend, OpenOptions};
use lib_util::*;

const SIZE: u64 = 4 << 20;

/// A raw source with random data, zero runs and holes.
fn make_source(dir: &TempDir) -> std::path::PathBuf {
    let mut data = vec![0u8; SIZE as usize];
    let mut rng = Rng::new(42);
    let mut off = 0usize;
    while off < data.len() {
        let len = (1 + rng.below(200_000) as usize).min(data.len() - off);
        if rng.below(3) != 0 {
            // Compressible-ish data: random bytes from a small alphabet.
            for b in &mut data[off..off + len] {
                *b = b"virtkit qcow2 "[rng.below(14) as usize];
            }
            if rng.below(2) == 0 {
                rng.fill(&mut data[off..off + len / 3]);
            }
        }
        off += len;
    }
    let p = dir.path("source.raw");
    std::fs::write(&p, &data).unwrap();
    p
}

/// Compares what we read from `img` with qemu-img's own conversion to raw.
fn assert_reads_like_qemu(dir: &TempDir, img: &Path, opts: &OpenOptions) {
    let raw = dir.path("expected.raw");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        img.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let expected = std::fs::read(&raw).unwrap();
    let ours = image::open(img, opts).unwrap();
    assert_eq!(ours.len(), expected.len() as u64);
    assert_same_bytes(&img.display().to_string(), &read_all(&ours), &expected);
    // Also in small unaligned pieces (partial clusters, subclusters).
    let mut rng = Rng::new(9);
    for _ in 0..50 {
        let off = rng.below(ours.len() - 1);
        let len = (1 + rng.below(70_000)).min(ours.len() - off) as usize;
        let mut buf = vec![0u8; len];
        ours.read_at(&mut buf, off).unwrap();
        assert_same_bytes(
            "partial read",
            &buf,
            &expected[off as usize..off as usize + len],
        );
    }
    let r = ours.check(image::Repair::None).unwrap();
    assert_eq!(
        (r.corruptions, r.leaks),
        (0, 0),
        "our check of {}: {:?}",
        img.display(),
        r.messages
    );
}

fn convert(src: &Path, dst: &Path, extra: &[&str]) {
    let mut args = vec!["convert", "-O", "qcow2"];
    args.extend_from_slice(extra);
    args.push(src.to_str().unwrap());
    args.push(dst.to_str().unwrap());
    qemu_img_ok(&args);
}

#[test]
fn compressed_zlib_and_zstd() {
    let dir = TempDir::new("qmade-z");
    let src = make_source(&dir);
    for (i, ty) in ["zlib", "zstd"].iter().enumerate() {
        for cs in ["4096", "65536"] {
            let dst = dir.path(&format!("c{i}-{cs}.qcow2"));
            let o = format!("compression_type={ty},cluster_size={cs}");
            convert(&src, &dst, &["-c", "-o", &o]);
            assert_reads_like_qemu(&dir, &dst, &OpenOptions::read_only());
            let info = image::open(&dst, &OpenOptions::read_only())
                .unwrap()
                .info()
                .unwrap();
            assert_eq!(info.qcow2.unwrap().compression_type, *ty);
        }
    }
}

#[test]
fn every_refcount_width_cluster_size_and_v2() {
    let dir = TempDir::new("qmade-rc");
    let src = make_source(&dir);
    let mut n = 0;
    let mut opts: Vec<String> = [1, 2, 4, 8, 16, 32, 64]
        .iter()
        .map(|b| format!("refcount_bits={b},cluster_size=4096"))
        .collect();
    opts.push("compat=0.10".into());
    opts.push("compat=0.10,cluster_size=512".into());
    opts.push("cluster_size=512".into());
    opts.push("cluster_size=2M".into());
    opts.push("extended_l2=on,cluster_size=16384".into());
    opts.push("extended_l2=on,cluster_size=2M".into());
    for o in &opts {
        n += 1;
        let dst = dir.path(&format!("r{n}.qcow2"));
        convert(&src, &dst, &["-o", o]);
        assert_reads_like_qemu(&dir, &dst, &OpenOptions::read_only());
    }
}

fn qemu_io(img: &Path, fmt: &str, cmds: &[String]) {
    let mut args = vec!["-f".to_string(), fmt.to_string()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(img.to_str().unwrap().to_string());
    let out = std::process::Command::new("qemu-io")
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-io failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Random qemu-io writes, zeroes and discards at sector granularity.
fn qemu_io_workload(img: &Path, seed: u64, count: usize) {
    let mut rng = Rng::new(seed);
    let mut cmds = Vec::new();
    for i in 0..count {
        let off = rng.below(SIZE / 512 - 1) * 512;
        let len = ((1 + rng.below(300)) * 512).min(SIZE - off);
        let pat = rng.below(255) + 1;
        cmds.push(match i % 5 {
            3 => format!("write -z {off} {len}"),
            4 => format!("discard {off} {len}"),
            _ => format!("write -P {pat} {off} {len}"),
        });
    }
    qemu_io(img, "qcow2", &cmds);
}

#[test]
fn overlays_and_extended_l2_written_by_qemu() {
    let dir = TempDir::new("qmade-ov");
    let src = make_source(&dir);
    let base = dir.path("base.qcow2");
    convert(&src, &base, &["-o", "cluster_size=65536"]);
    for (n, o) in [
        "cluster_size=65536",
        "extended_l2=on,cluster_size=65536",
        "extended_l2=on,cluster_size=16384",
        "compat=0.10",
    ]
    .iter()
    .enumerate()
    {
        // Overlay over a qcow2 base, relative backing name.
        let ov = dir.path(&format!("ov{n}.qcow2"));
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            o,
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            ov.to_str().unwrap(),
        ]);
        qemu_io_workload(&ov, n as u64, 60);
        assert_reads_like_qemu(&dir, &ov, &OpenOptions::read_only());
        // A stand-alone image with the same options.
        let solo = dir.path(&format!("solo{n}.qcow2"));
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            o,
            solo.to_str().unwrap(),
            &SIZE.to_string(),
        ]);
        qemu_io_workload(&solo, 100 + n as u64, 60);
        assert_reads_like_qemu(&dir, &solo, &OpenOptions::read_only());
    }
    // A raw base shorter than the overlay: reads past its end are zeros.
    let short = dir.path("short.raw");
    std::fs::write(&short, vec![0xabu8; 1_000_000]).unwrap();
    let ov = dir.path("ov-short.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        short.to_str().unwrap(),
        "-F",
        "raw",
        ov.to_str().unwrap(),
        &SIZE.to_string(),
    ]);
    qemu_io(&ov, "qcow2", &["write -P 7 900000 200000".into()]);
    assert_reads_like_qemu(&dir, &ov, &OpenOptions::read_only());
    // Chain of three: base <- mid <- top.
    let mid = dir.path("mid.qcow2");
    let top = dir.path("top.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        mid.to_str().unwrap(),
    ]);
    qemu_io_workload(&mid, 77, 30);
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    qemu_io_workload(&top, 78, 30);
    assert_reads_like_qemu(&dir, &top, &OpenOptions::read_only());
    let img = image::open(&top, &OpenOptions::read_only()).unwrap();
    assert_eq!(
        img.backing().unwrap().backing().unwrap().filename(),
        base.to_str().unwrap()
    );
}

#[test]
fn qemu_snapshots_read_and_applied_by_us() {
    let dir = TempDir::new("qmade-snap");
    let src = make_source(&dir);
    let img = dir.path("snap.qcow2");
    convert(&src, &img, &["-o", "cluster_size=4096"]);
    qemu_img_ok(&["snapshot", "-c", "first", img.to_str().unwrap()]);
    qemu_io_workload(&img, 5, 40);
    let after_first = dir.path("after1.raw");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        img.to_str().unwrap(),
        after_first.to_str().unwrap(),
    ]);
    qemu_img_ok(&["snapshot", "-c", "second", img.to_str().unwrap()]);
    qemu_io_workload(&img, 6, 40);
    assert_reads_like_qemu(&dir, &img, &OpenOptions::read_only());
    let ours = image::open(&img, &OpenOptions::read_write()).unwrap();
    let snaps = ours.snapshots();
    assert_eq!(
        snaps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["first", "second"]
    );
    assert_eq!(snaps[0].id, "1");
    ours.snapshot_apply("first").unwrap();
    assert_same_bytes(
        "applied 'first'",
        &read_all(&ours),
        &std::fs::read(&src).unwrap(),
    );
    ours.snapshot_apply("2").unwrap();
    assert_same_bytes(
        "applied 'second'",
        &read_all(&ours),
        &std::fs::read(&after_first).unwrap(),
    );
    ours.snapshot_delete("first").unwrap();
    drop(ours);
    assert_qemu_check_clean(&img);
    let (_, out, _) = qemu_img(&["snapshot", "-l", img.to_str().unwrap()]);
    assert!(out.contains("second") && !out.contains("first"), "{out}");
    assert!(qemu_same(&img, &after_first));
}
