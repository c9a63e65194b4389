//! Images created by the library, across cluster sizes, compat levels,
//! refcount widths, extended L2 and backing files, pass `qemu-img check`,
//! agree with `qemu-img info`, and hold the data written through us.

mod lib_util;

use image::{BlockBackend, Compat, CreateOptions, Format, OpenOptions};
use lib_util::*;

struct Case {
    cluster: u64,
    compat: Compat,
    refcount_bits: u32,
    extended_l2: bool,
    backing: bool,
    lazy: bool,
}

fn run_case(dir: &TempDir, n: usize, c: &Case) {
    let size: u64 = 5 * 1024 * 1024 + 12800;
    let path = dir.path(&format!("img{n}.qcow2"));
    let mut model = vec![0u8; size as usize];
    let mut rng = Rng::new(n as u64 + 7);
    let backing_name = if c.backing {
        let b = dir.path(&format!("base{n}.raw"));
        let mut data = vec![0u8; size as usize - 100_000];
        rng.fill(&mut data);
        std::fs::write(&b, &data).unwrap();
        model[..data.len()].copy_from_slice(&data);
        Some(format!("base{n}.raw"))
    } else {
        None
    };
    let opts = CreateOptions {
        format: Format::Qcow2,
        size: Some(size),
        cluster_size: c.cluster,
        compat: c.compat,
        refcount_bits: c.refcount_bits,
        extended_l2: c.extended_l2,
        lazy_refcounts: c.lazy,
        backing_file: backing_name.clone(),
        backing_format: backing_name.as_ref().map(|_| Format::Raw),
        ..Default::default()
    };
    image::create(&path, &opts).unwrap();
    {
        let img = image::open(&path, &OpenOptions::read_write()).unwrap();
        assert_eq!(img.len(), size);
        for i in 0..60 {
            let off = rng.below(size - 1);
            let len = (1 + rng.below(3 * c.cluster.min(65536))).min(size - off) as usize;
            match i % 6 {
                0..=3 => {
                    let mut buf = vec![0u8; len];
                    rng.fill(&mut buf);
                    img.write_at(&buf, off).unwrap();
                    model[off as usize..off as usize + len].copy_from_slice(&buf);
                }
                4 => {
                    img.write_zeroes(off, len as u64, i % 12 == 4).unwrap();
                    model[off as usize..off as usize + len].fill(0);
                }
                _ => {
                    img.discard(off, len as u64).unwrap();
                    model[off as usize..off as usize + len].fill(0);
                }
            }
        }
        assert_same_bytes("read back before close", &read_all(&img), &model);
        img.flush().unwrap();
    }
    assert_qemu_check_clean(&path);
    let info = qemu_info(&path);
    assert_eq!(info["virtual-size"].as_u64(), Some(size));
    assert_eq!(info["cluster-size"].as_u64(), Some(c.cluster));
    assert_eq!(info["format"].as_str(), Some("qcow2"));
    let data = &info["format-specific"]["data"];
    assert_eq!(data["compat"].as_str(), Some(c.compat.name()));
    if c.compat == Compat::V3 {
        assert_eq!(data["refcount-bits"].as_u64(), Some(c.refcount_bits as u64));
        assert_eq!(data["extended-l2"].as_bool(), Some(c.extended_l2));
        assert_eq!(data["lazy-refcounts"].as_bool(), Some(c.lazy));
        assert_eq!(data["compression-type"].as_str(), Some("zlib"));
    }
    assert_eq!(info["backing-filename"].as_str(), backing_name.as_deref());
    if c.backing {
        assert_eq!(info["backing-filename-format"].as_str(), Some("raw"));
    }
    // Our info agrees.
    let ours = image::open(&path, &OpenOptions::read_only()).unwrap();
    let oi = ours.info().unwrap();
    assert_eq!(oi.virtual_size, size);
    assert_eq!(oi.cluster_size, Some(c.cluster));
    assert_eq!(oi.backing_filename.as_deref(), backing_name.as_deref());
    assert_eq!(
        oi.full_backing_filename.as_deref(),
        info["full-backing-filename"].as_str()
    );
    assert_eq!(oi.dirty_flag, Some(false));
    assert_same_bytes("read back after reopen", &read_all(&ours), &model);
    // And qemu-img reads the same bytes.
    let raw = dir.path(&format!("ref{n}.raw"));
    std::fs::write(&raw, &model).unwrap();
    assert!(
        qemu_same(&path, &raw),
        "qemu-img compare differs for case {n}"
    );
    let r = ours.check(image::Repair::None).unwrap();
    assert_eq!(
        (r.corruptions, r.leaks, r.check_errors),
        (0, 0, 0),
        "our check: {:?}",
        r.messages
    );
}

#[test]
fn create_matrix_passes_qemu_check() {
    let dir = TempDir::new("create");
    let mut cases = Vec::new();
    for cluster in [512u64, 1024, 4096, 65536, 2 << 20] {
        cases.push(Case {
            cluster,
            compat: Compat::V3,
            refcount_bits: 16,
            extended_l2: false,
            backing: false,
            lazy: false,
        });
    }
    for rb in [1u32, 2, 4, 8, 32, 64] {
        cases.push(Case {
            cluster: 4096,
            compat: Compat::V3,
            refcount_bits: rb,
            extended_l2: false,
            backing: rb % 2 == 0,
            lazy: false,
        });
    }
    for cluster in [512u64, 65536] {
        cases.push(Case {
            cluster,
            compat: Compat::V2,
            refcount_bits: 16,
            extended_l2: false,
            backing: false,
            lazy: false,
        });
        cases.push(Case {
            cluster,
            compat: Compat::V2,
            refcount_bits: 16,
            extended_l2: false,
            backing: true,
            lazy: false,
        });
    }
    for cluster in [16384u64, 65536, 2 << 20] {
        cases.push(Case {
            cluster,
            compat: Compat::V3,
            refcount_bits: 16,
            extended_l2: true,
            backing: false,
            lazy: false,
        });
        cases.push(Case {
            cluster,
            compat: Compat::V3,
            refcount_bits: 16,
            extended_l2: true,
            backing: true,
            lazy: false,
        });
    }
    cases.push(Case {
        cluster: 65536,
        compat: Compat::V3,
        refcount_bits: 16,
        extended_l2: false,
        backing: true,
        lazy: true,
    });
    cases.push(Case {
        cluster: 512,
        compat: Compat::V3,
        refcount_bits: 1,
        extended_l2: false,
        backing: false,
        lazy: false,
    });
    for (n, c) in cases.iter().enumerate() {
        run_case(&dir, n, c);
    }
}
