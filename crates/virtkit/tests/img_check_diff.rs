//! Differential test of `virtkit img check` against `qemu-img check` (the
//! reference, Debian 12's 7.2) on deterministically corrupted images.
//!
//! A few small base images are made with `qemu-img create`, `qemu-io` and
//! `qemu-img snapshot` (small clusters, several refcount widths, version 2
//! and 3, extended L2, compressed clusters, internal snapshots, a backing
//! file name). Each test image is a copy of one of them with one to three
//! random byte or word writes aimed at one metadata structure: the header,
//! an L1 table, an L2 table, the refcount table, a refcount block or the
//! snapshot table. Both tools check every image; they must agree on
//! "broken" (exit 2, exit 1 or refused at open) versus "usable" (exit 0 or
//! 3). On a subset both repair with `-r all`, and qemu-img then judges both
//! results: both must be usable again, or both still broken.
//!
//! `VIRTKIT_CHECK_DIFF_N` sets the number of images (default 200),
//! `VIRTKIT_CHECK_DIFF_SEED` the seed, and `VIRTKIT_CHECK_DIFF_KEEP` a
//! directory that receives every image the tools disagree on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn run(mut c: Command) -> Output {
    let out = c.output().expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "a command panicked: {c:?}\n{stderr}"
    );
    out
}

fn must(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_img(args: &[&str]) -> Output {
    // `timeout` bounds a pathological image: a hang is a finding, not a
    // stuck test run.
    let mut c = Command::new("timeout");
    c.args(["60", "qemu-img"]).args(args);
    run(c)
}

fn virtkit_img(args: &[&str]) -> Output {
    let mut c = Command::new("timeout");
    c.args(["60", env!("CARGO_BIN_EXE_virtkit"), "img"])
        .args(args);
    run(c)
}

fn qemu_io(file: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(file);
    must(run(c), &format!("qemu-io {cmds:?}"));
}

/// What a tool made of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Clean,
    Leaks,
    Corrupt,
    /// Exit 1 after the image opened ("Check failed").
    CheckFailed,
    /// The image was refused at open.
    OpenFailed,
    /// qemu-img could not open the backing file (`qemu-img check` opens
    /// the backing chain, `virtkit img check` does not: not compared).
    BackingFailed,
    /// Anything else (a timeout, a signal, an unexpected exit code).
    Other(i32),
}

impl Verdict {
    fn of(out: &Output) -> Verdict {
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => Verdict::Clean,
            Some(3) => Verdict::Leaks,
            Some(2) => Verdict::Corrupt,
            Some(1) if stderr.contains("Could not open backing file") => Verdict::BackingFailed,
            Some(1) if stderr.contains("Could not open") => Verdict::OpenFailed,
            Some(1) => Verdict::CheckFailed,
            Some(c) => Verdict::Other(c),
            None => Verdict::Other(-1),
        }
    }

    /// The coarse class both tools must agree on.
    fn usable(self) -> bool {
        matches!(self, Verdict::Clean | Verdict::Leaks)
    }
}

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes(b[o..o + 2].try_into().unwrap())
}

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Metadata regions of a base image, as (name, offset, length, entry size).
struct Base {
    name: String,
    bytes: Vec<u8>,
    regions: Vec<(&'static str, usize, usize, usize)>,
}

impl Base {
    /// Finds the metadata structures of a well-formed image.
    fn parse(name: &str, bytes: Vec<u8>) -> Base {
        let b = &bytes;
        let cb = be32(b, 20);
        let cs = 1usize << cb;
        let version = be32(b, 4);
        let hl = if version >= 3 {
            be32(b, 100) as usize
        } else {
            72
        };
        let l1_size = be32(b, 36) as usize;
        let l1_off = be64(b, 40) as usize;
        let rt_off = be64(b, 48) as usize;
        let rt_clusters = be32(b, 56) as usize;
        let nb_snap = be32(b, 60) as usize;
        let snap_off = be64(b, 64) as usize;
        let mut regions = vec![
            ("header", 0, hl, 4),
            ("header-ext", hl, (cs.min(4096) - hl).min(512), 4),
            ("l1", l1_off, l1_size * 8, 8),
            ("reftable", rt_off, rt_clusters * cs, 8),
        ];
        let mut l2s = Vec::new();
        let mut l1s = vec![(l1_off, l1_size)];
        if nb_snap > 0 {
            let mut p = snap_off;
            for _ in 0..nb_snap {
                let sl1 = be64(b, p) as usize;
                let sl1n = be32(b, p + 8) as usize;
                let id = be16(b, p + 12) as usize;
                let nm = be16(b, p + 14) as usize;
                let extra = be32(b, p + 36) as usize;
                l1s.push((sl1, sl1n));
                regions.push(("snap-l1", sl1, sl1n * 8, 8));
                let len = (40 + extra + id + nm).div_ceil(8) * 8;
                regions.push(("snaptable", p, len, 4));
                p += len;
            }
        }
        for (off, n) in l1s {
            for i in 0..n {
                let l2 = (be64(b, off + 8 * i) & OFFSET_MASK) as usize;
                if l2 != 0 && !l2s.contains(&l2) {
                    l2s.push(l2);
                }
            }
        }
        for l2 in l2s {
            regions.push(("l2", l2, cs, 8));
        }
        for i in 0..rt_clusters * cs / 8 {
            let blk = (be64(b, rt_off + 8 * i) & OFFSET_MASK) as usize;
            if blk != 0 {
                regions.push(("refblock", blk, cs, 2));
            }
        }
        // Tables may end in a cluster the file does not fully hold.
        let file_len = bytes.len();
        let regions = regions
            .into_iter()
            .filter(|r| r.1 < file_len)
            .map(|(n, off, len, w)| (n, off, len.min(file_len - off), w))
            .filter(|r| r.2 >= r.3)
            .collect();
        Base {
            name: name.to_string(),
            bytes,
            regions,
        }
    }
}

/// Makes the base images in `dir`.
fn make_bases(dir: &Path) -> Vec<Base> {
    let mut bases = Vec::new();
    let create = |name: &str, opts: &str, size: &str| -> PathBuf {
        let p = dir.join(name);
        must(
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                opts,
                p.to_str().unwrap(),
                size,
            ]),
            "qemu-img create",
        );
        p
    };
    let snapshot = |p: &Path, name: &str| {
        must(
            qemu_img(&["snapshot", "-c", name, p.to_str().unwrap()]),
            "qemu-img snapshot",
        );
    };
    // v3, 512-byte clusters: data, compressed clusters, a snapshot, then
    // rewrites (refcounts of 2, COPIED flags both ways).
    let p = create("v3_512.qcow2", "cluster_size=512", "256k");
    qemu_io(
        &p,
        &[
            "write -P 1 0 8k",
            "write -c -P 2 16k 512",
            "write -c -P 3 16896 512",
            "write -P 4 100k 3k",
        ],
    );
    snapshot(&p, "s1");
    qemu_io(&p, &["write -P 5 1k 1k", "write -P 6 200k 2k"]);
    bases.push(p);
    // v2 with 1 KiB clusters and two snapshots.
    let p = create("v2_1k.qcow2", "cluster_size=1024,compat=0.10", "512k");
    qemu_io(&p, &["write -P 7 0 6k", "write -P 8 300k 5k"]);
    snapshot(&p, "a");
    qemu_io(&p, &["write -P 9 2k 2k"]);
    snapshot(&p, "b");
    bases.push(p);
    // 8-bit refcounts, 4 KiB clusters, compressed data.
    let p = create("rc8_4k.qcow2", "cluster_size=4096,refcount_bits=8", "1M");
    qemu_io(
        &p,
        &[
            "write -P 10 0 20k",
            "write -c -P 11 64k 4k",
            "write -c -P 12 68k 4k",
            "write -P 13 700k 8k",
        ],
    );
    bases.push(p);
    // 64-bit refcounts with a snapshot.
    let p = create(
        "rc64_512.qcow2",
        "cluster_size=512,refcount_bits=64",
        "128k",
    );
    qemu_io(&p, &["write -P 14 0 4k", "write -P 15 64k 2k"]);
    snapshot(&p, "x");
    qemu_io(&p, &["write -P 16 0 1k"]);
    bases.push(p);
    // Extended L2 entries (subclusters).
    let p = create("extl2_16k.qcow2", "cluster_size=16384,extended_l2=on", "1M");
    qemu_io(
        &p,
        &[
            "write -P 17 0 4k",
            "write -P 18 40k 1k",
            "write -P 19 300k 20k",
        ],
    );
    bases.push(p);
    // A backing file name in the header cluster.
    create("backing.qcow2", "cluster_size=512", "64k");
    let p = dir.join("overlay.qcow2");
    must(
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            "-b",
            "backing.qcow2",
            "-F",
            "qcow2",
            p.to_str().unwrap(),
        ]),
        "qemu-img create overlay",
    );
    qemu_io(&p, &["write -P 20 0 2k", "write -P 21 10k 1k"]);
    bases.push(p);
    bases
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let bytes = std::fs::read(&p).unwrap();
            Base::parse(&name, bytes)
        })
        .collect()
}

/// Applies one to three random writes aimed at one region; returns a
/// description of what was done.
fn corrupt(rng: &mut Rng, base: &Base) -> (Vec<u8>, String) {
    let mut b = base.bytes.clone();
    let (region, off, len, word) = base.regions[rng.below(base.regions.len() as u64) as usize];
    let mut what = format!("{}:{region}", base.name);
    let writes = 1 + rng.below(3);
    for _ in 0..writes {
        let kind = rng.below(4);
        match kind {
            // One random byte.
            0 => {
                let at = off + rng.below(len as u64) as usize;
                let v = rng.next() as u8;
                b[at] = v;
                what += &format!(" byte@{at:#x}={v:#x}");
            }
            // One flipped bit in an entry (reserved bits, flags, offsets).
            1 | 2 => {
                let n = (len / word).max(1) as u64;
                let at = off + rng.below(n) as usize * word;
                let bit = rng.below(word as u64 * 8);
                let byte = at + word - 1 - (bit / 8) as usize;
                b[byte] ^= 1 << (bit % 8);
                what += &format!(" flip@{at:#x}:{bit}");
            }
            // A whole entry replaced by a random value, small or large.
            _ => {
                let n = (len / word).max(1) as u64;
                let at = off + rng.below(n) as usize * word;
                let v = match rng.below(3) {
                    0 => rng.next(),
                    1 => rng.below(b.len() as u64 * 2),
                    _ => rng.below(b.len() as u64 * 2) & !511,
                };
                let bytes = v.to_be_bytes();
                b[at..at + word].copy_from_slice(&bytes[8 - word..]);
                what += &format!(" set@{at:#x}={v:#x}");
            }
        }
    }
    (b, what)
}

#[derive(Default)]
struct Tally {
    images: usize,
    disagreements: Vec<String>,
    exact_mismatch: BTreeMap<(Verdict, Verdict), usize>,
    by_verdict: BTreeMap<Verdict, usize>,
    repairs: usize,
    repair_disagreements: Vec<String>,
    /// Images skipped because qemu-img failed on the backing file.
    backing_skipped: usize,
    /// Repairs qemu-img could not complete (exit 1, or an image it cannot
    /// open afterwards), not compared.
    qemu_repair_failed: usize,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.images += o.images;
        self.disagreements.extend(o.disagreements);
        for (k, v) in o.exact_mismatch {
            *self.exact_mismatch.entry(k).or_default() += v;
        }
        for (k, v) in o.by_verdict {
            *self.by_verdict.entry(k).or_default() += v;
        }
        self.repairs += o.repairs;
        self.repair_disagreements.extend(o.repair_disagreements);
        self.backing_skipped += o.backing_skipped;
        self.qemu_repair_failed += o.qemu_repair_failed;
    }
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// Checks one corrupted image with both tools (and repairs it with both
/// when `repair`), in `dir` under the name prefix `tag`.
/// One corrupted image: its number, bytes and how it was made.
struct Case {
    i: usize,
    bytes: Vec<u8>,
    what: String,
}

fn one_image(t: &mut Tally, dir: &Path, tag: &str, case: &Case, repair: bool, keep: Option<&Path>) {
    let (i, bytes, what) = (case.i, &case.bytes[..], &case.what[..]);
    let img = dir.join(format!("{tag}t.qcow2"));
    let img_s = img.to_str().unwrap();
    std::fs::write(&img, bytes).unwrap();
    let q = qemu_img(&["check", "-f", "qcow2", img_s]);
    let v = virtkit_img(&["check", "-f", "qcow2", img_s]);
    let (qv, vv) = (Verdict::of(&q), Verdict::of(&v));
    t.images += 1;
    *t.by_verdict.entry(qv).or_default() += 1;
    if qv != vv {
        *t.exact_mismatch.entry((qv, vv)).or_default() += 1;
    }
    let save = |kind: &str| {
        if let Some(k) = keep {
            std::fs::create_dir_all(k).unwrap();
            std::fs::write(k.join(format!("{i:04}-{kind}.qcow2")), bytes).unwrap();
        }
    };
    if qv == Verdict::BackingFailed {
        t.backing_skipped += 1;
        return;
    }
    if qv.usable() != vv.usable() {
        t.disagreements.push(format!(
            "#{i} {what}: qemu-img {qv:?} ({}), virtkit {vv:?} ({})",
            stderr_of(&q),
            stderr_of(&v)
        ));
        save("check");
        return;
    }
    // Repair with both tools; qemu-img judges both results.
    if !repair || qv == Verdict::Clean {
        return;
    }
    let (qr, vr) = (
        dir.join(format!("{tag}q.qcow2")),
        dir.join(format!("{tag}v.qcow2")),
    );
    let (qr, vr) = (qr.to_str().unwrap(), vr.to_str().unwrap());
    std::fs::write(qr, bytes).unwrap();
    std::fs::write(vr, bytes).unwrap();
    let qo = qemu_img(&["check", "-r", "all", "-f", "qcow2", qr]);
    let vo = virtkit_img(&["check", "-r", "all", "-f", "qcow2", vr]);
    let qa = Verdict::of(&qemu_img(&["check", "-f", "qcow2", qr]));
    let va = Verdict::of(&qemu_img(&["check", "-f", "qcow2", vr]));
    t.repairs += 1;
    if qo.status.code() == Some(1) || qa == Verdict::OpenFailed && va.usable() {
        // qemu-img stopped with an internal error (typically its refcount
        // reader refusing the broken table it should rebuild), or left an
        // image it cannot open itself: no verdict to compare ours with.
        t.qemu_repair_failed += 1;
        return;
    }
    if qa.usable() != va.usable() {
        t.repair_disagreements.push(format!(
            "#{i} {what}: after -r all (exit {:?} / {:?}) qemu-img finds qemu's result {qa:?}, ours {va:?}\n  qemu: {}\n  ours: {}",
            qo.status.code(),
            vo.status.code(),
            stderr_of(&qo),
            stderr_of(&vo)
        ));
        save("repair");
    }
}

#[test]
fn check_agrees_with_qemu_img_on_corrupted_images() {
    let n: usize = std::env::var("VIRTKIT_CHECK_DIFF_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("VIRTKIT_CHECK_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let keep = std::env::var_os("VIRTKIT_CHECK_DIFF_KEEP").map(PathBuf::from);
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let bases = make_bases(dir);
    // The bases themselves are clean for both.
    for b in &bases {
        let p = dir.join(&b.name);
        let p = p.to_str().unwrap();
        assert_eq!(Verdict::of(&qemu_img(&["check", p])), Verdict::Clean, "{p}");
        assert_eq!(
            Verdict::of(&virtkit_img(&["check", p])),
            Verdict::Clean,
            "{p}"
        );
    }
    // The images depend on the seed alone; two workers check them.
    let mut rng = Rng(seed | 1);
    let cases: Vec<Case> = (0..n)
        .map(|i| {
            let base = &bases[rng.below(bases.len() as u64) as usize];
            let (bytes, what) = corrupt(&mut rng, base);
            Case { i, bytes, what }
        })
        .collect();
    let mut t = Tally::default();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let cases = &cases;
                let keep = keep.as_deref();
                s.spawn(move || {
                    let mut t = Tally::default();
                    for case in cases.iter().skip(w).step_by(2) {
                        // A third of the images are repaired too.
                        let tag = format!("w{w}");
                        one_image(&mut t, dir, &tag, case, case.i % 3 == 0, keep);
                    }
                    t
                })
            })
            .collect();
        for h in workers {
            t.merge(h.join().unwrap());
        }
    });
    eprintln!(
        "{} images, qemu-img verdicts {:?}; {} class disagreements; exact-verdict mismatches {:?}; {} skipped (backing file); {} repairs, {} repair disagreements, {} not compared (qemu-img's repair failed)",
        t.images,
        t.by_verdict,
        t.disagreements.len(),
        t.exact_mismatch,
        t.backing_skipped,
        t.repairs,
        t.repair_disagreements.len(),
        t.qemu_repair_failed
    );
    for s in t.disagreements.iter().chain(&t.repair_disagreements) {
        eprintln!("{s}");
    }
    assert!(
        t.disagreements.is_empty() && t.repair_disagreements.is_empty(),
        "virtkit img check disagrees with qemu-img check (see above)"
    );
}
