//! Test programs compiled with Debian's riscv64-linux-gnu-gcc (-nostdlib
//! -static, own `_start`) and run on the interpreter through a tiny
//! read/write/exit harness; differential ones run under
//! qemu-riscv64-static too and must print exactly the same bytes.

#[path = "../examples/common/mod.rs"]
mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const CC: &str = "riscv64-linux-gnu-gcc";
const QEMU: &str = "qemu-riscv64-static";

fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs")
}

/// Compiles `src` (C or assembly, in tests/programs) once per content;
/// outputs are cached under the cargo target dir.
fn build(src: &str, extra: &[&str]) -> PathBuf {
    let dir = programs_dir();
    let mut h = DefaultHasher::new();
    for f in [src, "rt.h"] {
        std::fs::read(dir.join(f)).unwrap_or_default().hash(&mut h);
    }
    extra.hash(&mut h);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{src}-{:016x}", h.finish()));
    if out.exists() {
        return out;
    }
    let tmp = out.with_extension("tmp");
    let status = Command::new(CC)
        .args([
            "-O2",
            "-march=rv64gc_zba_zbb_zbs",
            "-ffreestanding",
            "-fno-builtin",
            "-fno-tree-loop-distribute-patterns",
            "-nostdlib",
            "-static",
            "-o",
        ])
        .arg(&tmp)
        .arg(dir.join(src))
        .args(extra)
        .status()
        .unwrap_or_else(|e| panic!("{CC} not runnable (install gcc-riscv64-linux-gnu): {e}"));
    assert!(status.success(), "compiling {src} failed");
    std::fs::rename(&tmp, &out).unwrap();
    out
}

fn run_ours(prog: &Path, args: &[&str], stdin: &[u8]) -> common::Outcome {
    let elf = std::fs::read(prog).unwrap();
    let (space, entry) = common::load(&elf).unwrap();
    let mut argv = vec![prog.to_str().unwrap()];
    argv.extend_from_slice(args);
    common::run(&space, entry, &argv, stdin, false)
}

fn run_qemu(prog: &Path, args: &[&str]) -> (i32, Vec<u8>) {
    let out = Command::new(QEMU)
        .arg(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{QEMU} not runnable (install qemu-user-static): {e}"));
    (out.status.code().unwrap_or(-1), out.stdout)
}

/// Runs under both and compares output bytes and exit status; on a
/// mismatch names the first differing line.
fn differential(src: &str) {
    let prog = build(src, &[]);
    let ours = run_ours(&prog, &[], b"");
    assert_eq!(ours.crash, None, "{src} crashed in the interpreter");
    let (status, theirs) = run_qemu(&prog, &[]);
    let a = String::from_utf8_lossy(&ours.output);
    let b = String::from_utf8_lossy(&theirs);
    for (la, lb) in a.lines().zip(b.lines()) {
        assert_eq!(la, lb, "{src}: first differing line (ours, qemu)");
    }
    assert_eq!(a.lines().count(), b.lines().count(), "{src}: line count");
    assert!(a.lines().count() > 10, "{src}: printed too little");
    assert_eq!(ours.status, status, "{src}: exit status");
}

#[test]
fn fp_matches_qemu_bit_for_bit() {
    differential("fpdiff.c");
}

#[test]
fn integer_ops_match_qemu() {
    differential("intdiff.c");
}

#[test]
fn compute_kernel_matches_qemu() {
    let prog = build("compute.c", &[]);
    let ours = run_ours(&prog, &["50"], b"");
    let (status, theirs) = run_qemu(&prog, &["50"]);
    assert_eq!(ours.crash, None);
    assert_eq!(
        String::from_utf8_lossy(&ours.output),
        String::from_utf8_lossy(&theirs)
    );
    assert_eq!(ours.status, status);
    assert!(
        ours.instret > 1_000_000,
        "ran only {} instructions",
        ours.instret
    );
}

#[test]
fn sha256_kernel_matches_qemu() {
    let prog = build("sha256.c", &[]);
    let ours = run_ours(&prog, &["1"], b"");
    let (status, theirs) = run_qemu(&prog, &["1"]);
    assert_eq!(ours.crash, None);
    // SHA-256 of the generator's first MiB (checked against Python's hashlib).
    let want = "0c44766520536c6789f1dda2cc2a58dbde70e889119c918e034d2ec0d66e4453\n";
    assert_eq!(String::from_utf8_lossy(&ours.output), want);
    assert_eq!(String::from_utf8_lossy(&theirs), want);
    assert_eq!(ours.status, status);
}
