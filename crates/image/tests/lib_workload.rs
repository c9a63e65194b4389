//! Seeded random workloads through the library (writes, zeroes, discards,
//! compressed writes, our snapshots, resize, several threads), checked
//! against a raw reference with `qemu-img compare` and `qemu-img check`.

mod lib_util;

use std::sync::Arc;

use image::{BlockBackend, Compat, CompressionType, CreateOptions, Format, OpenOptions};
use lib_util::*;

const SIZE: u64 = 6 << 20;

struct Cfg {
    name: &'static str,
    cluster: u64,
    compat: Compat,
    refcount_bits: u32,
    extended_l2: bool,
    compression: CompressionType,
    backing: bool,
    ops: usize,
}

fn run(dir: &TempDir, cfg: &Cfg, seed: u64) {
    let mut rng = Rng::new(seed);
    let path = dir.path(&format!("{}.qcow2", cfg.name));
    let mut model = vec![0u8; SIZE as usize];
    let mut backing_file = None;
    if cfg.backing {
        let base = dir.path(&format!("{}-base.qcow2", cfg.name));
        let opts = CreateOptions {
            size: Some(SIZE - 500 * 1024),
            cluster_size: 65536,
            ..Default::default()
        };
        image::create(&base, &opts).unwrap();
        let b = image::open(&base, &OpenOptions::read_write()).unwrap();
        let mut data = vec![0u8; (SIZE - 500 * 1024) as usize];
        rng.fill(&mut data);
        b.write_at(&data, 0).unwrap();
        model[..data.len()].copy_from_slice(&data);
        backing_file = Some(format!("{}-base.qcow2", cfg.name));
    }
    let opts = CreateOptions {
        format: Format::Qcow2,
        size: Some(SIZE),
        cluster_size: cfg.cluster,
        compat: cfg.compat,
        refcount_bits: cfg.refcount_bits,
        extended_l2: cfg.extended_l2,
        compression_type: cfg.compression,
        backing_format: backing_file.as_ref().map(|_| Format::Qcow2),
        backing_file,
        ..Default::default()
    };
    image::create(&path, &opts).unwrap();
    let img = image::open(&path, &OpenOptions::read_write()).unwrap();
    let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
    let cs = cfg.cluster;
    let v2_backed = cfg.compat == Compat::V2 && cfg.backing;
    for i in 0..cfg.ops {
        let off = rng.below(SIZE - 1);
        let len = (1 + rng.below(4 * cs.min(65536))).min(SIZE - off);
        let op = rng.below(20);
        if std::env::var_os("WL_TRACE").is_some() {
            eprintln!("{} op {i}: kind {op} off {off:#x} len {len:#x}", cfg.name);
        }
        match op {
            0..=9 => {
                let mut buf = vec![0u8; len as usize];
                rng.fill(&mut buf);
                img.write_at(&buf, off).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&buf);
            }
            10..=11 => {
                img.write_zeroes(off, len, rng.below(2) == 0).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            12..=13 if !v2_backed => {
                img.discard(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            14..=15 => {
                // A compressed cluster (convert -c's path).
                let c = rng.below(SIZE / cs) * cs;
                let n = cs.min(SIZE - c) as usize;
                let mut buf = vec![b'q'; n];
                rng.fill(&mut buf[..n / 4]);
                img.write_compressed(&buf, c).unwrap();
                model[c as usize..c as usize + n].copy_from_slice(&buf);
            }
            16 if snaps.len() < 3 && cfg.refcount_bits > 2 => {
                let name = format!("s{i}");
                img.snapshot_create(&name).unwrap();
                snaps.push((name, model.clone()));
            }
            17 if !snaps.is_empty() => {
                let k = rng.below(snaps.len() as u64) as usize;
                img.snapshot_apply(&snaps[k].0).unwrap();
                model = snaps[k].1.clone();
            }
            18 if snaps.len() > 1 => {
                let k = rng.below(snaps.len() as u64) as usize;
                img.snapshot_delete(&snaps[k].0).unwrap();
                snaps.remove(k);
            }
            _ => img.flush().unwrap(),
        }
        if i % 50 == 0 || std::env::var_os("WL_TRACE").is_some() {
            assert_same_bytes(
                &format!("{} after op {i}", cfg.name),
                &read_all(&img),
                &model,
            );
        }
    }
    assert_same_bytes(cfg.name, &read_all(&img), &model);
    let r = img.check(image::Repair::None).unwrap();
    assert_eq!(
        (r.corruptions, r.leaks),
        (0, 0),
        "{}: our check {:?}",
        cfg.name,
        r.messages
    );
    drop(img);
    assert_qemu_check_clean(&path);
    let raw = dir.path(&format!("{}.raw", cfg.name));
    std::fs::write(&raw, &model).unwrap();
    assert!(
        qemu_same(&path, &raw),
        "{}: qemu-img compare differs",
        cfg.name
    );
    // qemu-img lists our snapshots and applies them correctly.
    let (_, list, _) = qemu_img(&["snapshot", "-l", path.to_str().unwrap()]);
    for (name, data) in &snaps {
        assert!(
            list.contains(name.as_str()),
            "{}: {name} not listed: {list}",
            cfg.name
        );
        qemu_img_ok(&["snapshot", "-a", name, path.to_str().unwrap()]);
        std::fs::write(&raw, data).unwrap();
        assert!(
            qemu_same(&path, &raw),
            "{}: snapshot {name} applied by qemu differs",
            cfg.name
        );
        assert_qemu_check_clean(&path);
    }
}

#[test]
fn random_workloads_match_raw_reference() {
    let dir = TempDir::new("work");
    let cfgs = [
        Cfg {
            name: "v3-64k",
            cluster: 65536,
            compat: Compat::V3,
            refcount_bits: 16,
            extended_l2: false,
            compression: CompressionType::Zlib,
            backing: false,
            ops: 400,
        },
        Cfg {
            name: "v3-4k-zstd-backed",
            cluster: 4096,
            compat: Compat::V3,
            refcount_bits: 8,
            extended_l2: false,
            compression: CompressionType::Zstd,
            backing: true,
            ops: 300,
        },
        Cfg {
            name: "v2-64k",
            cluster: 65536,
            compat: Compat::V2,
            refcount_bits: 16,
            extended_l2: false,
            compression: CompressionType::Zlib,
            backing: false,
            ops: 300,
        },
        Cfg {
            name: "v2-64k-backed",
            cluster: 65536,
            compat: Compat::V2,
            refcount_bits: 16,
            extended_l2: false,
            compression: CompressionType::Zlib,
            backing: true,
            ops: 300,
        },
        Cfg {
            name: "extl2-32k-backed",
            cluster: 32768,
            compat: Compat::V3,
            refcount_bits: 16,
            extended_l2: true,
            compression: CompressionType::Zlib,
            backing: true,
            ops: 300,
        },
        Cfg {
            name: "extl2-64k",
            cluster: 65536,
            compat: Compat::V3,
            refcount_bits: 64,
            extended_l2: true,
            compression: CompressionType::Zstd,
            backing: false,
            ops: 300,
        },
        Cfg {
            name: "512-rc2",
            cluster: 512,
            compat: Compat::V3,
            refcount_bits: 2,
            extended_l2: false,
            compression: CompressionType::Zlib,
            backing: false,
            ops: 300,
        },
        Cfg {
            name: "512-rc1",
            cluster: 512,
            compat: Compat::V3,
            refcount_bits: 1,
            extended_l2: false,
            compression: CompressionType::Zlib,
            backing: true,
            ops: 200,
        },
    ];
    for (i, c) in cfgs.iter().enumerate() {
        run(&dir, c, 1000 + i as u64);
    }
}

#[test]
fn concurrent_writers_and_readers() {
    let dir = TempDir::new("threads");
    let path = dir.path("mt.qcow2");
    image::create(
        &path,
        &CreateOptions {
            size: Some(SIZE),
            cluster_size: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let img = Arc::new(image::open(&path, &OpenOptions::read_write()).unwrap());
    let threads = 4u64;
    let slice = SIZE / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let img = img.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(t + 50);
                let mut model = vec![0u8; slice as usize];
                for _ in 0..300 {
                    let off = rng.below(slice - 1);
                    let len = (1 + rng.below(20000)).min(slice - off);
                    let mut buf = vec![0u8; len as usize];
                    rng.fill(&mut buf);
                    img.write_at(&buf, t * slice + off).unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&buf);
                    let mut back = vec![0u8; len as usize];
                    img.read_at(&mut back, t * slice + off).unwrap();
                    assert_eq!(back, buf);
                }
                model
            })
        })
        .collect();
    let mut model = Vec::new();
    for h in handles {
        model.extend(h.join().unwrap());
    }
    assert_same_bytes("threads", &read_all(&img), &model);
    drop(img);
    assert_qemu_check_clean(&path);
}

/// Several threads write interleaved stripes of the same clusters of an
/// overlay at once, so that allocations of one cluster race (one writer
/// allocates and copies from the base while the others wait for the link),
/// plus multi-cluster writes of whole clusters straight from the buffer.
#[test]
fn concurrent_allocations_of_shared_clusters() {
    const CLUSTER: u64 = 65536;
    const STRIPE: u64 = CLUSTER / THREADS;
    const THREADS: u64 = 4;
    let dir = TempDir::new("threads-cow");
    let base = dir.path("base.qcow2");
    let top = dir.path("top.qcow2");
    let size = 16u64 << 20;
    image::create(
        &base,
        &CreateOptions {
            size: Some(size),
            cluster_size: CLUSTER,
            ..Default::default()
        },
    )
    .unwrap();
    let mut model = vec![0u8; size as usize];
    Rng::new(7).fill(&mut model[..(size as usize * 3 / 4)]);
    {
        let b = image::open(&base, &OpenOptions::read_write()).unwrap();
        b.write_at(&model, 0).unwrap();
    }
    image::create(
        &top,
        &CreateOptions {
            size: Some(size),
            cluster_size: CLUSTER,
            backing_file: Some(base.to_string_lossy().into_owned()),
            backing_format: Some(Format::Qcow2),
            ..Default::default()
        },
    )
    .unwrap();
    let img = Arc::new(image::open(&top, &OpenOptions::read_write()).unwrap());
    // The first half: stripes interleaved between threads; the second
    // half: one region per thread, written in multi-cluster pieces.
    let half = size / 2;
    let region = half / THREADS;
    let barrier = Arc::new(std::sync::Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let img = img.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(t + 900);
                let mut writes = Vec::new();
                let mut write = |off: u64, len: u64, rng: &mut Rng| {
                    let mut buf = vec![0u8; len as usize];
                    rng.fill(&mut buf);
                    img.write_at(&buf, off).unwrap();
                    writes.push((off, buf));
                };
                // In lock step, every thread writes its stripe of the same
                // fresh cluster: the allocations race.
                for c in 0..half / CLUSTER {
                    barrier.wait();
                    let a = rng.below(STRIPE);
                    let b = a + 1 + rng.below(STRIPE - a);
                    write(c * CLUSTER + t * STRIPE + a, b - a, &mut rng);
                }
                for _ in 0..300 {
                    if rng.below(2) == 0 {
                        let lo = half + t * region;
                        let off = lo + rng.below(region - 1);
                        let len = (1 + rng.below(40_000)).min(lo + region - off);
                        write(off, len, &mut rng);
                    } else {
                        let stripe = rng.below(half / STRIPE / THREADS) * THREADS + t;
                        let a = rng.below(STRIPE);
                        let b = a + 1 + rng.below(STRIPE - a);
                        write(stripe * STRIPE + a, b - a, &mut rng);
                    }
                }
                writes
            })
        })
        .collect();
    for h in handles {
        // Each thread's writes touch only its own bytes: apply in order.
        for (off, buf) in h.join().unwrap() {
            model[off as usize..off as usize + buf.len()].copy_from_slice(&buf);
        }
    }
    assert_same_bytes("shared clusters", &read_all(&img), &model);
    drop(img);
    assert_qemu_check_clean(&top);
}

#[test]
fn resize_grow_and_shrink() {
    let dir = TempDir::new("resize");
    let path = dir.path("r.qcow2");
    image::create(
        &path,
        &CreateOptions {
            size: Some(1 << 20),
            cluster_size: 512,
            ..Default::default()
        },
    )
    .unwrap();
    let img = image::open(&path, &OpenOptions::read_write()).unwrap();
    img.write_at(&[1u8; 4096], (1 << 20) - 4096).unwrap();
    img.resize(64 << 20, false).unwrap();
    assert_eq!(img.len(), 64 << 20);
    img.write_at(&[2u8; 8192], (64 << 20) - 8192).unwrap();
    assert!(
        img.resize(1 << 20, false).is_err(),
        "shrink needs allow_shrink"
    );
    img.resize((1 << 20) - 1024, true).unwrap();
    let mut buf = vec![0u8; 3072];
    img.read_at(&mut buf, (1 << 20) - 4096).unwrap();
    assert!(buf.iter().all(|&b| b == 1));
    img.resize(2 << 20, false).unwrap();
    let mut tail = vec![9u8; 1024];
    img.read_at(&mut tail, (1 << 20) - 1024).unwrap();
    assert!(
        tail.iter().all(|&b| b == 0),
        "grown area must read as zeros"
    );
    drop(img);
    assert_qemu_check_clean(&path);
    assert_eq!(qemu_info(&path)["virtual-size"].as_u64(), Some(2 << 20));
}
