//! `virtkit img` against the real peer, qemu-img: the same commands on the
//! same inputs, comparing what matters (JSON fields, exit codes, image
//! content through `qemu-img compare`, metadata through `qemu-img check`).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn virtkit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_virtkit"));
    c.arg("img");
    c
}

fn run(mut c: Command, dir: &Path) -> Output {
    c.current_dir(dir);
    let out = c.output().expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "a command panicked: {c:?}\n{stderr}"
    );
    out
}

/// Runs `virtkit img ARGS` in `dir`.
fn vk(dir: &Path, args: &[&str]) -> Output {
    let mut c = virtkit();
    c.args(args);
    run(c, dir)
}

/// Runs `qemu-img ARGS` in `dir`.
fn qi(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("qemu-img");
    c.args(args);
    run(c, dir)
}

/// Runs `qemu-io -c CMD... FILE` (to make images with known content).
fn qio(dir: &Path, file: &str, fmt: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(file);
    let out = run(c, dir);
    assert!(out.status.success(), "qemu-io {cmds:?}: {out:?}");
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("valid JSON")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A raw file with a recognisable mix of data and zero runs.
fn write_pattern_raw(path: &Path, size: usize, seed: u64) {
    let mut data = vec![0u8; size];
    let mut x = seed | 1;
    let mut pos = 0;
    while pos < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = 4096 * (1 + (x % 37) as usize);
        let end = (pos + run).min(size);
        if !x.is_multiple_of(3) {
            for (i, b) in data[pos..end].iter_mut().enumerate() {
                *b = (x as usize + i * 31) as u8;
            }
        }
        pos = end;
    }
    std::fs::write(path, data).unwrap();
}

fn qemu_compare(dir: &Path, a: &str, b: &str) {
    let out = qi(dir, &["compare", a, b]);
    assert_eq!(code(&out), 0, "qemu-img compare {a} {b}: {out:?}");
}

fn qemu_check_clean(dir: &Path, f: &str) {
    let out = qi(dir, &["check", f]);
    assert_eq!(code(&out), 0, "qemu-img check {f}: {out:?}");
}

/// Fields of `info --output=json` that both tools must agree on.
fn essential(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        // The size on disk depends on allocation order and is not part of
        // the format; everything else must be equal.
        m.remove("actual-size");
        if let Some(Value::Array(snaps)) = m.get_mut("snapshots") {
            for s in snaps {
                if let Some(s) = s.as_object_mut() {
                    s.remove("date-sec");
                    s.remove("date-nsec");
                }
            }
        }
    }
    v
}

#[test]
fn create_matrix_passes_qemu_check_and_info_agrees() {
    let d = tmp();
    let dir = d.path();
    ok(&qi(
        dir,
        &["create", "-q", "-f", "qcow2", "base.qcow2", "8M"],
    ));
    let cases: &[&[&str]] = &[
        &["-o", "cluster_size=512"],
        &["-o", "cluster_size=4k,refcount_bits=1"],
        &["-o", "cluster_size=64k,compat=0.10"],
        &["-o", "cluster_size=2M,refcount_bits=64"],
        &["-o", "extended_l2=on,cluster_size=128k,refcount_bits=8"],
        &["-o", "lazy_refcounts=on,compression_type=zstd"],
        &["-o", "preallocation=metadata,cluster_size=16k"],
        &["-b", "base.qcow2", "-F", "qcow2"],
        &[
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "-o",
            "cluster_size=4k,refcount_bits=2",
        ],
    ];
    for (i, extra) in cases.iter().enumerate() {
        let name = format!("img{i}.qcow2");
        let mut args = vec!["create", "-f", "qcow2"];
        args.extend_from_slice(extra);
        args.push(&name);
        if !extra.contains(&"-b") {
            args.push("8M");
        }
        let out = vk(dir, &args);
        let text = ok(&out);
        assert!(
            text.starts_with(&format!("Formatting '{name}', fmt=qcow2")),
            "{text}"
        );
        qemu_check_clean(dir, &name);
        let theirs = json(&qi(dir, &["info", "--output=json", &name]));
        let ours = json(&vk(dir, &["info", "--output=json", &name]));
        assert_eq!(essential(&ours), essential(&theirs), "case {extra:?}");
        // Our check agrees too.
        assert_eq!(code(&vk(dir, &["check", &name])), 0);
    }
    // Raw, with a size suffix.
    ok(&vk(dir, &["create", "-f", "raw", "r.raw", "1.5M"]));
    assert_eq!(
        std::fs::metadata(dir.join("r.raw")).unwrap().len(),
        1536 << 10
    );
    // The human "Formatting" line is qemu-img's.
    let ours = ok(&vk(dir, &["create", "-f", "qcow2", "x.qcow2", "1M"]));
    let theirs = ok(&qi(dir, &["create", "-f", "qcow2", "y.qcow2", "1M"]));
    assert_eq!(ours.replace("x.qcow2", "y.qcow2"), theirs);
}

#[test]
fn info_json_and_human_match_qemu_on_qemu_images() {
    let d = tmp();
    let dir = d.path();
    ok(&qi(
        dir,
        &["create", "-q", "-f", "qcow2", "base.qcow2", "16M"],
    ));
    qio(
        dir,
        "base.qcow2",
        "qcow2",
        &["write -P 0xaa 0 1M", "write -z 2M 64k"],
    );
    ok(&qi(dir, &["snapshot", "-c", "snap1", "base.qcow2"]));
    std::fs::create_dir(dir.join("sub")).unwrap();
    ok(&qi(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "../base.qcow2",
            "-F",
            "qcow2",
            "sub/ov.qcow2",
        ],
    ));
    for f in ["base.qcow2", "sub/ov.qcow2"] {
        let theirs = json(&qi(dir, &["info", "--output=json", f]));
        let ours = json(&vk(dir, &["info", "--output=json", f]));
        assert_eq!(essential(&ours), essential(&theirs), "{f}");
        // Same key order as qemu-img.
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&ours), keys(&theirs), "{f}");
    }
    let theirs = json(&qi(
        dir,
        &["info", "--output=json", "--backing-chain", "sub/ov.qcow2"],
    ));
    let ours = json(&vk(
        dir,
        &["info", "--output=json", "--backing-chain", "sub/ov.qcow2"],
    ));
    let (o, t) = (ours.as_array().unwrap(), theirs.as_array().unwrap());
    assert_eq!(o.len(), 2);
    for (a, b) in o.iter().zip(t) {
        assert_eq!(essential(a), essential(b));
    }
    // Human output: identical apart from the disk size line.
    let strip = |s: String| {
        s.lines()
            .filter(|l| !l.starts_with("disk size:"))
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    };
    let ours = strip(ok(&vk(dir, &["info", "--backing-chain", "sub/ov.qcow2"])));
    let theirs = strip(ok(&qi(dir, &["info", "--backing-chain", "sub/ov.qcow2"])));
    assert_eq!(ours, theirs);
    // Raw image.
    std::fs::write(dir.join("r.raw"), vec![1u8; 8192]).unwrap();
    let theirs = json(&qi(dir, &["info", "--output=json", "-f", "raw", "r.raw"]));
    let ours = json(&vk(dir, &["info", "--output=json", "-f", "raw", "r.raw"]));
    assert_eq!(essential(&ours), essential(&theirs));
}

/// A qcow2 image with a leaked cluster, made by raising the refcount of a
/// cluster nothing references (64 KiB clusters: refcount block at 0x20000).
fn make_leaky(dir: &Path, name: &str) {
    ok(&qi(dir, &["create", "-q", "-f", "qcow2", name, "1M"]));
    qio(dir, name, "qcow2", &["write 0 64k"]);
    let path = dir.join(name);
    let mut data = std::fs::read(&path).unwrap();
    data.resize(8 * 65536, 0);
    data[0x20000 + 2 * 7..0x20000 + 2 * 7 + 2].copy_from_slice(&1u16.to_be_bytes());
    std::fs::write(&path, data).unwrap();
}

/// A corrupt image: the refcount of a used data cluster set to 0.
fn make_corrupt(dir: &Path, name: &str) {
    ok(&qi(dir, &["create", "-q", "-f", "qcow2", name, "1M"]));
    qio(dir, name, "qcow2", &["write 0 64k"]);
    let path = dir.join(name);
    let mut data = std::fs::read(&path).unwrap();
    data[0x20000 + 2 * 5..0x20000 + 2 * 5 + 2].copy_from_slice(&0u16.to_be_bytes());
    std::fs::write(&path, data).unwrap();
}

#[test]
fn check_results_and_exit_codes_match_qemu() {
    let d = tmp();
    let dir = d.path();
    ok(&qi(
        dir,
        &["create", "-q", "-f", "qcow2", "clean.qcow2", "4M"],
    ));
    qio(dir, "clean.qcow2", "qcow2", &["write 0 1M"]);
    make_leaky(dir, "leak.qcow2");
    make_corrupt(dir, "corrupt.qcow2");
    for f in ["clean.qcow2", "leak.qcow2", "corrupt.qcow2"] {
        let t = qi(dir, &["check", "--output=json", f]);
        let o = vk(dir, &["check", "--output=json", f]);
        assert_eq!(code(&o), code(&t), "{f}: {o:?}");
        let tv: Value = serde_json::from_slice(&t.stdout).unwrap();
        let ov: Value = serde_json::from_slice(&o.stdout).unwrap();
        for key in [
            "leaks",
            "corruptions",
            "check-errors",
            "total-clusters",
            "allocated-clusters",
        ] {
            assert_eq!(ov.get(key), tv.get(key), "{f}: {key}");
        }
        let th = qi(dir, &["check", f]);
        let oh = vk(dir, &["check", f]);
        assert_eq!(code(&oh), code(&th));
        assert_eq!(
            String::from_utf8_lossy(&oh.stdout).lines().next(),
            String::from_utf8_lossy(&th.stdout).lines().next(),
            "{f}"
        );
    }
    assert_eq!(code(&vk(dir, &["check", "leak.qcow2"])), 3);
    assert_eq!(code(&vk(dir, &["check", "corrupt.qcow2"])), 2);
    // Repairing leaks: ours fixes, qemu-img agrees afterwards.
    let out = vk(dir, &["check", "-r", "leaks", "leak.qcow2"]);
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 leaked clusters"));
    qemu_check_clean(dir, "leak.qcow2");
    // Raw images cannot be checked: qemu-img exits 63.
    std::fs::write(dir.join("r.raw"), [0u8; 512]).unwrap();
    assert_eq!(code(&vk(dir, &["check", "-f", "raw", "r.raw"])), 63);
    assert_eq!(code(&qi(dir, &["check", "-f", "raw", "r.raw"])), 63);
}

/// `check -r all` on images whose refcount table or blocks are damaged:
/// the refcount structure is rebuilt (like qemu-img), after which
/// qemu-img finds the image clean and the data is intact.
#[test]
fn check_repair_all_rebuilds_a_broken_refcount_structure() {
    let d = tmp();
    let dir = d.path();
    // 64 KiB clusters: refcount table at 0x10000 (its entry 0 names the
    // block at 0x20000), L1 table at 0x30000.
    ok(&qi(dir, &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]));
    qio(
        dir,
        "a.qcow2",
        "qcow2",
        &["write -P 7 0 64k", "write -P 9 512k 100k"],
    );
    let orig = std::fs::read(dir.join("a.qcow2")).unwrap();
    let damage = |name: &str, at: usize, bytes: &[u8]| {
        let mut b = orig.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        for p in ["q_", "v_"] {
            std::fs::write(dir.join(format!("{p}{name}")), &b).unwrap();
        }
    };
    // Block pointing at the L1 table, no block at all, a block far past the
    // end of the file, a block full of garbage.
    damage("ovl.qcow2", 0x10000, &0x30000u64.to_be_bytes());
    damage("zero.qcow2", 0x10000, &0u64.to_be_bytes());
    damage("far.qcow2", 0x10000, &0x700_0000u64.to_be_bytes());
    damage("garb.qcow2", 0x20000, &[0xff; 64]);
    // An unaligned block and reserved bits in the entry (qemu-img 7.2's
    // repair fails on these with an I/O error: ours only).
    damage("mis.qcow2", 0x10000, &0x28000u64.to_be_bytes());
    damage("unal.qcow2", 0x10000, &0x20100u64.to_be_bytes());
    let ours_only = ["mis.qcow2", "unal.qcow2"];
    for f in [
        "ovl.qcow2",
        "zero.qcow2",
        "far.qcow2",
        "garb.qcow2",
        "mis.qcow2",
        "unal.qcow2",
    ] {
        let (q, v) = (format!("q_{f}"), format!("v_{f}"));
        // qemu-img says "corrupt" (2), or for an unaligned block "check
        // failed" (1) as it cannot read the refcounts; ours says corrupt.
        let theirs = code(&qi(dir, &["check", &q]));
        assert!(
            theirs == 2 || ours_only.contains(&f) && theirs == 1,
            "{f}: {theirs}"
        );
        // Ours agrees with qemu-img, "check failed" (1) included.
        assert_eq!(code(&vk(dir, &["check", &v])), theirs, "{f}: damaged");
        let ours = vk(dir, &["check", "-r", "all", &v]);
        assert_eq!(code(&ours), 0, "{f}: {ours:?}");
        qemu_check_clean(dir, &v);
        assert_eq!(code(&vk(dir, &["check", &v])), 0, "{f}");
        // The data is what qemu-io wrote.
        qemu_compare(dir, "a.qcow2", &v);
        if !ours_only.contains(&f) {
            let theirs = qi(dir, &["check", "-r", "all", &q]);
            assert_eq!(code(&ours), code(&theirs), "{f}: {theirs:?}");
            qemu_check_clean(dir, &q);
            qemu_compare(dir, &q, &v);
        }
    }
    // `-r leaks` does not rebuild: still corrupt afterwards.
    damage("keep.qcow2", 0x10000, &0x30000u64.to_be_bytes());
    assert_eq!(code(&vk(dir, &["check", "-r", "leaks", "v_keep.qcow2"])), 2);
    assert_eq!(code(&vk(dir, &["check", "v_keep.qcow2"])), 2);
}

#[test]
fn map_json_matches_qemu() {
    let d = tmp();
    let dir = d.path();
    ok(&qi(
        dir,
        &["create", "-q", "-f", "qcow2", "base.qcow2", "16M"],
    ));
    qio(
        dir,
        "base.qcow2",
        "qcow2",
        &[
            "write -P 0xaa 0 1M",
            "write -z 2M 64k",
            "write -P 1 5M 192k",
        ],
    );
    ok(&qi(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "ov.qcow2",
        ],
    ));
    qio(
        dir,
        "ov.qcow2",
        "qcow2",
        &["write -P 0xbb 512k 128k", "write -z 5M 64k"],
    );
    for f in ["base.qcow2", "ov.qcow2"] {
        let t = ok(&qi(dir, &["map", "--output=json", f]));
        let o = ok(&vk(dir, &["map", "--output=json", f]));
        assert_eq!(o, t, "{f}");
        let t = ok(&qi(dir, &["map", f]));
        let o = ok(&vk(dir, &["map", f]));
        assert_eq!(o, t, "{f}");
    }
    let t = ok(&qi(
        dir,
        &[
            "map",
            "--output=json",
            "--start-offset=1M",
            "--max-length=4M",
            "ov.qcow2",
        ],
    ));
    let o = ok(&vk(
        dir,
        &[
            "map",
            "--output=json",
            "--start-offset=1M",
            "--max-length=4M",
            "ov.qcow2",
        ],
    ));
    assert_eq!(o, t);
}

#[test]
fn compare_exit_codes_and_messages_match_qemu() {
    let d = tmp();
    let dir = d.path();
    write_pattern_raw(&dir.join("a.raw"), 1 << 20, 7);
    std::fs::copy(dir.join("a.raw"), dir.join("b.raw")).unwrap();
    let mut c = std::fs::read(dir.join("a.raw")).unwrap();
    c[1000] ^= 0xff;
    std::fs::write(dir.join("c.raw"), &c).unwrap();
    let mut big = std::fs::read(dir.join("a.raw")).unwrap();
    big.resize(2 << 20, 0);
    std::fs::write(dir.join("big.raw"), &big).unwrap();
    big[1_500_000] = 1;
    std::fs::write(dir.join("bigdiff.raw"), &big).unwrap();
    ok(&qi(
        dir,
        &["convert", "-f", "raw", "-O", "qcow2", "a.raw", "a.qcow2"],
    ));
    let cases: &[&[&str]] = &[
        &["-f", "raw", "-F", "raw", "a.raw", "b.raw"],
        &["-f", "raw", "-F", "raw", "a.raw", "c.raw"],
        &["-f", "raw", "-F", "raw", "a.raw", "big.raw"],
        &["-f", "raw", "-F", "raw", "a.raw", "bigdiff.raw"],
        &["-s", "-f", "raw", "-F", "raw", "a.raw", "big.raw"],
        &["-f", "raw", "a.raw", "a.qcow2"],
        &["a.qcow2", "c.raw"],
        &["a.raw", "missing.raw"],
        &["-f", "qcow2", "a.raw", "a.qcow2"],
        // With a progress bar (drawn only on a terminal): same results.
        &["-p", "-f", "raw", "-F", "raw", "a.raw", "c.raw"],
        &["-p", "a.qcow2", "b.raw"],
    ];
    for args in cases {
        let mut full = vec!["compare"];
        full.extend_from_slice(args);
        let t = qi(dir, &full);
        let o = vk(dir, &full);
        assert_eq!(code(&o), code(&t), "{args:?}: ours {o:?} theirs {t:?}");
        if code(&t) < 2 {
            // With -p qemu-img writes "(NN.NN/100%)\r" updates to stdout;
            // ours draws a bar on a terminal only. The verdict is the same.
            let verdict = |b: &[u8]| {
                let s = String::from_utf8_lossy(b).into_owned();
                let s = s.rsplit('\r').next().unwrap_or_default().to_string();
                s.trim_end().to_string()
            };
            assert_eq!(verdict(&o.stdout), verdict(&t.stdout), "{args:?}");
            if !args.contains(&"-p") {
                assert_eq!(o.stdout, t.stdout, "{args:?}");
            }
        }
    }
}

#[test]
fn measure_matches_qemu() {
    let d = tmp();
    let dir = d.path();
    ok(&qi(
        dir,
        &["create", "-q", "-f", "qcow2", "base.qcow2", "64M"],
    ));
    qio(
        dir,
        "base.qcow2",
        "qcow2",
        &["write -P 0xaa 0 1M", "write -z 2M 64k", "write 10M 300k"],
    );
    write_pattern_raw(&dir.join("data.raw"), 3 << 20, 3);
    let cases: &[&[&str]] = &[
        &["--size", "1G", "-O", "qcow2"],
        &["--size", "1G", "-O", "qcow2", "-o", "cluster_size=4k"],
        &[
            "--size",
            "100G",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=2M,refcount_bits=1",
        ],
        &["--size", "10G", "-O", "qcow2", "-o", "extended_l2=on"],
        &["--size", "1G", "-O", "qcow2", "-o", "preallocation=full"],
        &["--size", "1G"],
        &["-O", "qcow2", "base.qcow2"],
        &["-O", "qcow2", "-o", "compat=0.10", "base.qcow2"],
        &["-O", "raw", "base.qcow2"],
        &["-O", "qcow2", "-f", "raw", "data.raw"],
        &["--output=json", "-O", "qcow2", "base.qcow2"],
    ];
    for args in cases {
        let mut full = vec!["measure"];
        full.extend_from_slice(args);
        let t = ok(&qi(dir, &full));
        let o = ok(&vk(dir, &full));
        assert_eq!(o, t, "{args:?}");
    }
}

/// Several sources are copied end to end (qemu-img convert a b c out),
/// with several workers, in order or not; options qemu-img refuses are
/// refused the same way, and cache mode none is refused clearly.
#[test]
fn convert_concatenates_sources_with_workers() {
    let d = tmp();
    let dir = d.path();
    write_pattern_raw(&dir.join("a.raw"), 3 << 20, 21);
    write_pattern_raw(&dir.join("b.raw"), (5 << 20) + 512, 22);
    ok(&qi(
        dir,
        &["convert", "-f", "raw", "-O", "qcow2", "a.raw", "a.qcow2"],
    ));
    ok(&qi(
        dir,
        &[
            "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "ov.qcow2",
        ],
    ));
    qio(dir, "ov.qcow2", "qcow2", &["write -P 0x5c 1M 300k"]);
    let srcs = ["a.raw", "ov.qcow2", "b.raw", "a.qcow2"];
    let mut theirs = vec!["convert", "-O", "raw"];
    theirs.extend(srcs);
    theirs.push("q.raw");
    ok(&qi(dir, &theirs));
    for (out, extra) in [
        ("v1.qcow2", vec!["-O", "qcow2"]),
        ("v2.qcow2", vec!["-O", "qcow2", "-m", "1"]),
        ("v3.raw", vec!["-O", "raw", "-m", "16", "-W"]),
        (
            "v4.qcow2",
            vec!["-O", "qcow2", "-m", "4", "-t", "writeback", "-T", "none"],
        ),
    ] {
        let mut args = vec!["convert"];
        args.extend(extra);
        args.extend(srcs);
        args.push(out);
        ok(&vk(dir, &args));
        if out.ends_with(".qcow2") {
            qemu_check_clean(dir, out);
        }
        let info = json(&qi(dir, &["info", "--output=json", out]));
        let q = json(&qi(dir, &["info", "--output=json", "q.raw"]));
        assert_eq!(info["virtual-size"], q["virtual-size"], "{out}");
        qemu_compare(dir, "q.raw", out);
    }
    // Refused like qemu-img (same exit code).
    for bad in [
        vec!["convert", "-m", "17", "-O", "raw", "a.raw", "x.raw"],
        vec!["convert", "-m", "0", "-O", "raw", "a.raw", "x.raw"],
        vec!["convert", "-t", "bogus", "-O", "raw", "a.raw", "x.raw"],
        vec![
            "convert", "-O", "qcow2", "-B", "a.qcow2", "-F", "qcow2", "a.raw", "b.raw", "x.qcow2",
        ],
    ] {
        let o = vk(dir, &bad);
        let t = qi(dir, &bad);
        assert_eq!(code(&o), code(&t), "{bad:?}: {o:?}");
        assert_eq!(code(&o), 1, "{bad:?}");
    }
    // O_DIRECT for the target: a clear refusal, not a silent fallback.
    let o = vk(
        dir,
        &["convert", "-t", "none", "-O", "raw", "a.raw", "x.raw"],
    );
    assert_eq!(code(&o), 1);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("O_DIRECT"),
        "{o:?}"
    );
}

#[test]
fn convert_outputs_match_source() {
    let d = tmp();
    let dir = d.path();
    write_pattern_raw(&dir.join("src.raw"), 5 << 20, 11);
    // raw -> qcow2 (sparse), -> compressed qcow2, qcow2 -> raw, various -o.
    ok(&vk(
        dir,
        &["convert", "-f", "raw", "-O", "qcow2", "src.raw", "a.qcow2"],
    ));
    ok(&vk(
        dir,
        &[
            "convert", "-c", "-f", "raw", "-O", "qcow2", "src.raw", "c.qcow2",
        ],
    ));
    ok(&vk(
        dir,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k,compat=0.10",
            "src.raw",
            "d.qcow2",
        ],
    ));
    ok(&vk(
        dir,
        &[
            "convert", "-p", "-f", "qcow2", "-O", "raw", "c.qcow2", "back.raw",
        ],
    ));
    for f in ["a.qcow2", "c.qcow2", "d.qcow2"] {
        qemu_check_clean(dir, f);
        qemu_compare(dir, "src.raw", f);
    }
    qemu_compare(dir, "src.raw", "back.raw");
    assert_eq!(
        std::fs::read(dir.join("src.raw")).unwrap(),
        std::fs::read(dir.join("back.raw")).unwrap()
    );
    // Sparse detection: the zero runs of the source are not allocated, so
    // the qcow2 is no larger than qemu-img's conversion of the same file.
    ok(&qi(
        dir,
        &["convert", "-f", "raw", "-O", "qcow2", "src.raw", "q.qcow2"],
    ));
    let ours = json(&vk(dir, &["check", "--output=json", "a.qcow2"]));
    let theirs = json(&qi(dir, &["check", "--output=json", "q.qcow2"]));
    assert_eq!(ours["allocated-clusters"], theirs["allocated-clusters"]);
    // Compressed clusters are really compressed (qemu-img check counts them).
    let c = json(&qi(dir, &["check", "--output=json", "c.qcow2"]));
    assert!(c["compressed-clusters"].as_u64().unwrap_or(0) > 0, "{c}");
    // -B: only the overlay's own data is copied; result equals the chain.
    ok(&qi(
        dir,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "src.raw",
            "base.qcow2",
        ],
    ));
    ok(&qi(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "ov.qcow2",
        ],
    ));
    qio(
        dir,
        "ov.qcow2",
        "qcow2",
        &["write -P 0x77 1M 256k", "write -z 3M 64k"],
    );
    ok(&vk(
        dir,
        &[
            "convert",
            "-O",
            "qcow2",
            "-B",
            "base.qcow2",
            "-F",
            "qcow2",
            "ov.qcow2",
            "ovc.qcow2",
        ],
    ));
    qemu_check_clean(dir, "ovc.qcow2");
    qemu_compare(dir, "ov.qcow2", "ovc.qcow2");
    let info = json(&qi(dir, &["info", "--output=json", "ovc.qcow2"]));
    assert_eq!(info["backing-filename"], "base.qcow2");
    let small = json(&qi(dir, &["check", "--output=json", "ovc.qcow2"]));
    assert!(
        small["allocated-clusters"].as_u64().unwrap() <= 6,
        "{small}"
    );
    // A qemu-made zstd-compressed image converts back to the same bytes.
    ok(&qi(
        dir,
        &[
            "convert",
            "-c",
            "-o",
            "compression_type=zstd",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "src.raw",
            "z.qcow2",
        ],
    ));
    ok(&vk(dir, &["convert", "-O", "raw", "z.qcow2", "z.raw"]));
    qemu_compare(dir, "src.raw", "z.raw");
}

#[test]
fn snapshots_interoperate_with_qemu() {
    let d = tmp();
    let dir = d.path();
    ok(&qi(dir, &["create", "-q", "-f", "qcow2", "s.qcow2", "4M"]));
    qio(dir, "s.qcow2", "qcow2", &["write -P 0x11 0 128k"]);
    ok(&vk(dir, &["snapshot", "-c", "ours", "s.qcow2"]));
    qio(dir, "s.qcow2", "qcow2", &["write -P 0x22 0 128k"]);
    ok(&qi(dir, &["snapshot", "-c", "theirs", "s.qcow2"]));
    qio(dir, "s.qcow2", "qcow2", &["write -P 0x33 0 128k"]);
    // Both list both, with the same table apart from dates.
    let strip_dates = |s: String| -> Vec<String> {
        s.lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let o = strip_dates(ok(&vk(dir, &["snapshot", "-l", "s.qcow2"])));
    let t = strip_dates(ok(&qi(dir, &["snapshot", "-l", "s.qcow2"])));
    assert_eq!(o, t);
    assert!(
        o.iter().any(|l| l == "1 ours") && o.iter().any(|l| l == "2 theirs"),
        "{o:?}"
    );
    // Our snapshot carries the same extra data as theirs (icount 0).
    let info = json(&qi(dir, &["info", "--output=json", "s.qcow2"]));
    let snaps = info["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    for s in snaps {
        assert_eq!(s.get("icount"), Some(&Value::from(0)), "{s}");
    }
    assert_eq!(
        json(&vk(dir, &["info", "--output=json", "s.qcow2"]))["snapshots"],
        info["snapshots"]
    );
    // Our apply of their snapshot, checked with qemu-io.
    ok(&vk(dir, &["snapshot", "-a", "theirs", "s.qcow2"]));
    qio(dir, "s.qcow2", "qcow2", &["read -P 0x22 0 128k"]);
    qemu_check_clean(dir, "s.qcow2");
    // Their apply of our snapshot.
    ok(&qi(dir, &["snapshot", "-a", "ours", "s.qcow2"]));
    qio(dir, "s.qcow2", "qcow2", &["read -P 0x11 0 128k"]);
    // Delete, then both see one snapshot left.
    ok(&vk(dir, &["snapshot", "-d", "ours", "s.qcow2"]));
    qemu_check_clean(dir, "s.qcow2");
    let t = ok(&qi(dir, &["snapshot", "-l", "s.qcow2"]));
    assert!(!t.contains("ours") && t.contains("theirs"), "{t}");
    // Errors: missing snapshot.
    let out = vk(dir, &["snapshot", "-a", "nope", "s.qcow2"]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

/// base <- ov with data in both, made by qemu-img/qemu-io.
fn make_chain(dir: &Path, prefix: &str) -> (String, String) {
    let base = format!("{prefix}base.qcow2");
    let ov = format!("{prefix}ov.qcow2");
    ok(&qi(dir, &["create", "-q", "-f", "qcow2", &base, "8M"]));
    qio(
        dir,
        &base,
        "qcow2",
        &["write -P 0xaa 0 2M", "write -P 0xcc 6M 512k"],
    );
    ok(&qi(
        dir,
        &[
            "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &ov,
        ],
    ));
    qio(
        dir,
        &ov,
        "qcow2",
        &[
            "write -P 0xbb 1M 300k",
            "write -z 6M 64k",
            "write -P 0xdd 7M 4k",
        ],
    );
    (base, ov)
}

#[test]
fn commit_matches_qemu() {
    let d = tmp();
    let dir = d.path();
    let (ob, oo) = make_chain(dir, "o");
    let (tb, to) = make_chain(dir, "t");
    let out = ok(&vk(dir, &["commit", &oo]));
    assert_eq!(out, "Image committed.\n");
    ok(&qi(dir, &["commit", &to]));
    qemu_compare(dir, &ob, &tb);
    qemu_compare(dir, &oo, &to);
    qemu_check_clean(dir, &ob);
    qemu_check_clean(dir, &oo);
    // The overlay was emptied, as qemu-img does.
    let m = json(&qi(dir, &["map", "--output=json", &oo]));
    assert!(
        m.as_array()
            .unwrap()
            .iter()
            .all(|e| e["depth"] != 0 || e["present"] == false),
        "{m}"
    );
    // No backing file: error, exit 1.
    let out = vk(dir, &["commit", &ob]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not have a backing file"));
}

#[test]
fn rebase_safe_unsafe_and_flatten_match_qemu() {
    let d = tmp();
    let dir = d.path();
    let (_, oo) = make_chain(dir, "o");
    let (_, to) = make_chain(dir, "t");
    for f in ["onew.qcow2", "tnew.qcow2"] {
        ok(&qi(dir, &["create", "-q", "-f", "qcow2", f, "8M"]));
        qio(
            dir,
            f,
            "qcow2",
            &["write -P 0xaa 0 1M", "write -P 0xee 4M 1M"],
        );
    }
    std::fs::copy(dir.join(&oo), dir.join("before.qcow2")).unwrap();
    ok(&vk(
        dir,
        &["rebase", "-b", "onew.qcow2", "-F", "qcow2", &oo],
    ));
    ok(&qi(
        dir,
        &["rebase", "-b", "tnew.qcow2", "-F", "qcow2", &to],
    ));
    qemu_check_clean(dir, &oo);
    // Content is unchanged by a safe rebase, and equals qemu-img's result.
    ok(&qi(
        dir,
        &[
            "rebase",
            "-u",
            "-b",
            "obase.qcow2",
            "-F",
            "qcow2",
            "before.qcow2",
        ],
    ));
    qemu_compare(dir, &oo, &to);
    let info = json(&vk(dir, &["info", "--output=json", &oo]));
    assert_eq!(info["backing-filename"], "onew.qcow2");
    // Unsafe: only the header changes.
    ok(&vk(
        dir,
        &["rebase", "-u", "-b", "obase.qcow2", "-F", "qcow2", &oo],
    ));
    let info = json(&qi(dir, &["info", "--output=json", &oo]));
    assert_eq!(info["backing-filename"], "obase.qcow2");
    // Flatten with -b "": no backing file, same content as qemu's flatten.
    ok(&vk(dir, &["rebase", "-b", "", &oo]));
    ok(&qi(dir, &["rebase", "-b", "", &to]));
    let info = json(&qi(dir, &["info", "--output=json", &oo]));
    assert!(info.get("backing-filename").is_none(), "{info}");
    qemu_compare(dir, &oo, &to);
    qemu_check_clean(dir, &oo);
    // -b without -F is refused, as by qemu-img 7.
    assert_eq!(code(&vk(dir, &["rebase", "-b", "onew.qcow2", &oo])), 1);
}

#[test]
fn resize_grow_and_shrink_like_qemu() {
    let d = tmp();
    let dir = d.path();
    for f in ["o.qcow2", "t.qcow2"] {
        ok(&qi(dir, &["create", "-q", "-f", "qcow2", f, "8M"]));
        qio(
            dir,
            f,
            "qcow2",
            &["write -P 0x5a 0 1M", "write -P 0x6b 6M 1M"],
        );
    }
    assert_eq!(
        ok(&vk(dir, &["resize", "o.qcow2", "+8M"])),
        "Image resized.\n"
    );
    ok(&qi(dir, &["resize", "t.qcow2", "+8M"]));
    qemu_compare(dir, "o.qcow2", "t.qcow2");
    // Shrink needs --shrink, for both tools.
    let o = vk(dir, &["resize", "o.qcow2", "-12M"]);
    let t = qi(dir, &["resize", "t.qcow2", "-12M"]);
    assert_eq!((code(&o), code(&t)), (1, 1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--shrink"));
    ok(&vk(dir, &["resize", "--shrink", "o.qcow2", "-12M"]));
    ok(&qi(dir, &["resize", "--shrink", "t.qcow2", "-12M"]));
    qemu_compare(dir, "o.qcow2", "t.qcow2");
    qemu_check_clean(dir, "o.qcow2");
    let info = json(&qi(dir, &["info", "--output=json", "o.qcow2"]));
    assert_eq!(info["virtual-size"], 4 << 20);
    // Absolute size on a raw file.
    std::fs::write(dir.join("r.raw"), vec![1u8; 4096]).unwrap();
    ok(&vk(dir, &["resize", "-f", "raw", "r.raw", "1M"]));
    assert_eq!(std::fs::metadata(dir.join("r.raw")).unwrap().len(), 1 << 20);
}

#[test]
fn bench_runs_with_qemu_semantics() {
    let d = tmp();
    let dir = d.path();
    ok(&qi(dir, &["create", "-q", "-f", "qcow2", "b.qcow2", "16M"]));
    let out = ok(&vk(
        dir,
        &[
            "bench", "-w", "-c", "512", "-d", "4", "-s", "64k", "b.qcow2",
        ],
    ));
    let theirs = ok(&qi(
        dir,
        &[
            "bench", "-w", "-c", "512", "-d", "4", "-s", "64k", "b.qcow2",
        ],
    ));
    assert_eq!(out.lines().next(), theirs.lines().next());
    assert!(
        out.lines().nth(1).unwrap().starts_with("Run completed in "),
        "{out}"
    );
    // -q: qemu-img 7.2 prints the same two lines with it.
    let oq = ok(&vk(dir, &["bench", "-q", "-c", "64", "-d", "2", "b.qcow2"]));
    let tq = ok(&qi(dir, &["bench", "-q", "-c", "64", "-d", "2", "b.qcow2"]));
    assert_eq!(oq.lines().count(), tq.lines().count(), "{oq}");
    assert_eq!(oq.lines().next(), tq.lines().next());
    assert!(
        oq.lines().nth(1).unwrap().starts_with("Run completed in "),
        "{oq}"
    );
    // cache=unsafe ignores flushes, so a flush interval is accepted and
    // the run completes.
    ok(&vk(
        dir,
        &[
            "bench",
            "-w",
            "-t",
            "unsafe",
            "-c",
            "64",
            "-d",
            "2",
            "--flush-interval",
            "8",
            "b.qcow2",
        ],
    ));
    // The write benchmark wrote zeros over the whole image (256 x 64k wrap).
    qemu_check_clean(dir, "b.qcow2");
    let m = json(&qi(dir, &["map", "--output=json", "b.qcow2"]));
    let entries = m.as_array().unwrap();
    assert!(entries.iter().all(|e| e["data"] == true), "{m}");
    let total: u64 = entries.iter().map(|e| e["length"].as_u64().unwrap()).sum();
    assert_eq!(total, 16 << 20, "{m}");
    ok(&vk(
        dir,
        &["bench", "-c", "1000", "-S", "12k", "-o", "4k", "b.qcow2"],
    ));
    // A request past the end fails cleanly.
    let out = vk(
        dir,
        &["bench", "-c", "2", "-o", "16380k", "-s", "8k", "b.qcow2"],
    );
    assert_eq!(code(&out), 1);
}

#[test]
fn bad_input_gives_clear_errors_and_qemu_exit_codes() {
    let d = tmp();
    let dir = d.path();
    // A text file is not a qcow2 image.
    std::fs::write(dir.join("text.txt"), "hello, this is not a disk image\n").unwrap();
    let o = vk(dir, &["info", "-f", "qcow2", "text.txt"]);
    let t = qi(dir, &["info", "-f", "qcow2", "text.txt"]);
    assert_eq!((code(&o), code(&t)), (1, 1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("text.txt"));
    // Truncated header.
    ok(&qi(
        dir,
        &["create", "-q", "-f", "qcow2", "full.qcow2", "1M"],
    ));
    let full = std::fs::read(dir.join("full.qcow2")).unwrap();
    std::fs::write(dir.join("trunc.qcow2"), &full[..100]).unwrap();
    for args in [
        &["info", "trunc.qcow2"][..],
        &["check", "trunc.qcow2"],
        &["map", "trunc.qcow2"],
        &["convert", "-O", "raw", "trunc.qcow2", "out.raw"],
    ] {
        let o = vk(dir, args);
        let t = qi(dir, args);
        assert_eq!(code(&o), code(&t), "{args:?}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("trunc.qcow2"),
            "{o:?}"
        );
    }
    // Missing file.
    let o = vk(dir, &["info", "missing.qcow2"]);
    assert_eq!(code(&o), 1);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("missing.qcow2") && e.starts_with("virtkit img: "),
        "{e}"
    );
    assert_eq!(
        code(&vk(dir, &["compare", "missing.qcow2", "full.qcow2"])),
        2
    );
    // Cyclic backing chain: a -> b -> a.
    ok(&qi(dir, &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]));
    ok(&qi(
        dir,
        &[
            "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2",
        ],
    ));
    ok(&qi(
        dir,
        &["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"],
    ));
    let o = vk(dir, &["info", "--backing-chain", "b.qcow2"]);
    let t = qi(dir, &["info", "--backing-chain", "b.qcow2"]);
    assert_eq!((code(&o), code(&t)), (1, 1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .to_lowercase()
            .contains("cycle"),
        "{o:?}"
    );
    // Usage errors exit 1 like qemu-img's.
    assert_eq!(code(&vk(dir, &["create", "-f", "qcow2", "x.qcow2"])), 1);
    assert_eq!(
        code(&vk(dir, &["create", "-f", "qcow2", "x.qcow2", "12Q"])),
        1
    );
    assert_eq!(
        code(&vk(dir, &["create", "-f", "vmdk", "x.qcow2", "1M"])),
        1
    );
    assert_eq!(code(&vk(dir, &["frobnicate"])), 1);
    assert_eq!(code(&vk(dir, &["check", "-r", "some", "full.qcow2"])), 1);
}

// ---------------------------------------------------------------- locking

/// Holds `path` open as a VM's read-write disk does (QEMU's lock bytes).
fn hold_as_vm_disk(path: &Path) -> image::Image {
    image::open(
        path,
        &image::OpenOptions {
            sharing: image::Sharing::Device,
            ..Default::default()
        },
    )
    .expect("open the image as a VM disk")
}

/// Waits (bounded: 10 s) until some process holds an OFD lock on byte
/// `byte` of `path`; false if none came.
fn wait_for_lock_byte(path: &Path, byte: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = format!(":{}", std::fs::metadata(path).unwrap().ino());
    for _ in 0..1000 {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        // "1: OFDLCK ADVISORY READ -1 fe:00:1234 100 101"
        let found = locks.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 8
                && w[1] == "OFDLCK"
                && w[5].ends_with(&ino)
                && w[6].parse::<u64>().is_ok_and(|s| s <= byte)
                && w[7].parse::<u64>().is_ok_and(|e| e >= byte)
        });
        if found {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `virtkit img` refuses to write, and without -U to read, a qcow2 image
/// that another process (here: this test, as a VM would) is writing; -U
/// reads it; QEMU's messages.
#[test]
fn images_in_use_are_refused_and_force_share_reads_them() {
    let d = tmp();
    let dir = d.path();
    ok(&qi(
        dir,
        &["create", "-q", "-f", "qcow2", "base.qcow2", "4M"],
    ));
    qio(dir, "base.qcow2", "qcow2", &["write -P 0x11 0 64k"]);
    ok(&qi(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    ));
    qio(dir, "top.qcow2", "qcow2", &["write -P 0x22 64k 64k"]);
    let held = hold_as_vm_disk(&dir.join("top.qcow2"));
    let refused = |args: &[&str], what: &str| {
        let o = vk(dir, args);
        let e = stderr_of(&o);
        assert_eq!(code(&o), 1, "{args:?} should be refused: {o:?}");
        assert!(e.contains(what), "{args:?}: {e}");
        assert!(
            e.contains("Is another process using the image [top.qcow2]?"),
            "{args:?}: {e}"
        );
    };
    let shared = "Failed to get shared \"write\" lock";
    let write = "Failed to get \"write\" lock";
    refused(&["info", "top.qcow2"], shared);
    refused(&["check", "top.qcow2"], shared);
    refused(&["map", "top.qcow2"], shared);
    refused(&["snapshot", "-l", "top.qcow2"], shared);
    refused(&["convert", "-O", "raw", "top.qcow2", "out.raw"], shared);
    refused(&["snapshot", "-c", "s1", "top.qcow2"], write);
    refused(&["resize", "top.qcow2", "8M"], write);
    refused(&["commit", "top.qcow2"], write);
    refused(&["check", "-r", "all", "top.qcow2"], write);
    refused(&["bench", "-w", "-c", "1", "top.qcow2"], write);
    refused(&["rebase", "-u", "-b", "", "top.qcow2"], write);
    refused(&["create", "-f", "qcow2", "top.qcow2", "1M"], write);
    // -U: read-only opens go through, and see the data.
    let info = ok(&vk(dir, &["info", "-U", "--output=json", "top.qcow2"]));
    assert!(
        info.contains("\"backing-filename\": \"base.qcow2\""),
        "{info}"
    );
    ok(&vk(dir, &["check", "-U", "top.qcow2"]));
    ok(&vk(dir, &["map", "--force-share", "top.qcow2"]));
    ok(&vk(dir, &["snapshot", "-l", "-U", "top.qcow2"]));
    ok(&vk(dir, &["bench", "-U", "-c", "10", "top.qcow2"]));
    ok(&vk(dir, &["measure", "-U", "-O", "qcow2", "top.qcow2"]));
    ok(&vk(
        dir,
        &["convert", "-U", "-O", "raw", "top.qcow2", "out.raw"],
    ));
    ok(&vk(dir, &["compare", "-U", "top.qcow2", "out.raw"]));
    // -U never writes (QEMU's message).
    let o = vk(dir, &["check", "-U", "-r", "all", "top.qcow2"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr_of(&o).contains("force-share=on can only be used with read-only images"),
        "{o:?}"
    );
    // The backing file of a disk in use is read (by the VM and others),
    // never written.
    ok(&vk(dir, &["info", "base.qcow2"]));
    let o = vk(dir, &["resize", "base.qcow2", "8M"]);
    assert!(code(&o) == 1 && stderr_of(&o).contains(write), "{o:?}");
    // The locks go with the image.
    drop(held);
    ok(&vk(dir, &["snapshot", "-c", "s1", "top.qcow2"]));
    ok(&vk(dir, &["commit", "top.qcow2"]));
    assert_eq!(code(&qi(dir, &["compare", "base.qcow2", "out.raw"])), 0);
}

/// Two processes of virtkit: a writing `img bench` keeps a second writer
/// out until it ends.
#[test]
fn two_virtkit_writers_exclude_each_other() {
    let d = tmp();
    let dir = d.path();
    ok(&vk(dir, &["create", "-q", "-f", "qcow2", "d.qcow2", "1M"]));
    // Long enough to outlast the test; killed below.
    let mut c = virtkit();
    c.args([
        "bench",
        "-w",
        "-t",
        "unsafe",
        "-d",
        "1",
        "-s",
        "512",
        "-c",
        "2000000000",
        "d.qcow2",
    ])
    .current_dir(dir)
    .stdout(std::process::Stdio::null());
    let mut bench = c.spawn().unwrap();
    let held = wait_for_lock_byte(&dir.join("d.qcow2"), 101);
    let o = vk(dir, &["bench", "-w", "-c", "1", "d.qcow2"]);
    let _ = bench.kill();
    let _ = bench.wait();
    assert!(held, "the first bench never locked the image");
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(
        stderr_of(&o).contains("Failed to get \"write\" lock"),
        "{o:?}"
    );
    // Killed, it holds nothing any more.
    ok(&vk(dir, &["bench", "-w", "-c", "1", "d.qcow2"]));
}

/// QEMU and virtkit see each other's locks through the CLI too.
#[test]
fn qemu_and_virtkit_img_exclude_each_other() {
    let d = tmp();
    let dir = d.path();
    ok(&qi(dir, &["create", "-q", "-f", "qcow2", "q.qcow2", "1M"]));
    // virtkit holds it: qemu-img neither writes nor reads it without -U.
    let held = hold_as_vm_disk(&dir.join("q.qcow2"));
    let o = qi(dir, &["snapshot", "-c", "s", "q.qcow2"]);
    assert!(
        code(&o) != 0 && stderr_of(&o).contains("Failed to get \"write\" lock"),
        "{o:?}"
    );
    let o = qi(dir, &["info", "q.qcow2"]);
    assert!(
        code(&o) != 0 && stderr_of(&o).contains("Failed to get shared \"write\" lock"),
        "{o:?}"
    );
    ok(&qi(dir, &["info", "-U", "q.qcow2"]));
    drop(held);
    // QEMU holds it (qemu-io waiting on its stdin): virtkit img is refused.
    let mut qemu = Command::new("qemu-io")
        .args(["-f", "qcow2", "q.qcow2"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qemu-io (qemu-utils)");
    let held = wait_for_lock_byte(&dir.join("q.qcow2"), 101);
    let o = vk(dir, &["resize", "q.qcow2", "2M"]);
    drop(qemu.stdin.take());
    let _ = qemu.wait();
    assert!(held, "qemu-io never locked the image");
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(
        stderr_of(&o).contains("Failed to get \"write\" lock"),
        "{o:?}"
    );
    ok(&vk(dir, &["info", "q.qcow2"]));
}

/// `bench --pattern` takes what C's strtol takes (decimal, 0x hex, 0 octal).
#[test]
fn bench_pattern_accepts_hex_and_octal() {
    let d = tmp();
    let dir = d.path();
    for (pattern, byte) in [("0xa5", 0xa5u8), ("0245", 0xa5), ("90", 90), ("0", 0)] {
        std::fs::write(dir.join("p.raw"), vec![0xffu8; 4096]).unwrap();
        ok(&vk(
            dir,
            &[
                "bench",
                "-w",
                "-c",
                "1",
                "-s",
                "512",
                "--pattern",
                pattern,
                "-f",
                "raw",
                "p.raw",
            ],
        ));
        let data = std::fs::read(dir.join("p.raw")).unwrap();
        assert!(
            data[..512].iter().all(|&b| b == byte),
            "--pattern {pattern}"
        );
        assert_eq!(data[512], 0xff);
    }
    for bad in ["256", "0x100", "zz", "-1", "08", ""] {
        let arg = format!("--pattern={bad}");
        let o = vk(dir, &["bench", "-w", "-c", "1", &arg, "p.raw"]);
        assert_eq!(code(&o), 1, "--pattern {bad:?}: {o:?}");
        assert!(
            stderr_of(&o).contains("Invalid pattern byte"),
            "--pattern {bad:?}: {o:?}"
        );
    }
}
