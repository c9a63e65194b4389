//! `virtkit emu user` on things that are not riscv64 programs: a clear
//! error naming the file, never a panic.

mod emu_common;
use emu_common::*;
use std::path::Path;

fn expect_error(path: &Path, needle: &str) {
    let r = emu(&[], path, &[], None, None);
    assert_eq!(r.code, Some(1), "{}: {:?}", path.display(), r);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&path.display().to_string()) && r.stderr.contains(needle),
        "{}: stderr should name the file and say {needle:?}: {}",
        path.display(),
        r.stderr
    );
}

#[test]
fn bad_programs_get_clear_errors() {
    let d = scratch("badinput");
    expect_error(&d.join("missing"), "No such file");
    expect_error(&d, "is a directory");
    // A host (x86-64) program.
    expect_error(Path::new("/bin/true"), "not a RISC-V ELF");
    let good = std::fs::read(build("hello", false)).unwrap();
    for (name, len) in [
        ("trunc-header", 40),
        ("trunc-phdrs", 100),
        ("trunc-data", 5000),
    ] {
        let p = d.join(name);
        std::fs::write(&p, &good[..len]).unwrap();
        expect_error(&p, "truncated");
    }
    let p = d.join("empty");
    std::fs::write(&p, b"").unwrap();
    expect_error(&p, "not an ELF");
    let p = d.join("text");
    std::fs::write(&p, b"hello, world\n").unwrap();
    expect_error(&p, "not an ELF");
    // 32-bit RISC-V.
    let mut e32 = good.clone();
    e32[4] = 1;
    let p = d.join("elf32");
    std::fs::write(&p, &e32).unwrap();
    expect_error(&p, "not a 64-bit ELF");
}

#[test]
fn usage_errors() {
    let r = std::process::Command::new(virtkit())
        .args(["emu", "user"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("PROGRAM"));
}
