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
        write_exe(&p, &good[..len]);
        expect_error(&p, "truncated");
    }
    let p = d.join("empty");
    write_exe(&p, b"");
    expect_error(&p, "not an ELF");
    let p = d.join("text");
    write_exe(&p, b"hello, world\n");
    expect_error(&p, "not an ELF");
    // 32-bit RISC-V.
    let mut e32 = good.clone();
    e32[4] = 1;
    let p = d.join("elf32");
    write_exe(&p, &e32);
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

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes an executable file (mode 0755: the loader checks permission
/// before contents, as the kernel does).
fn write_exe(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
    chmod(path, 0o755);
}

fn copy_with_mode(from: &Path, to: &Path, mode: u32) {
    std::fs::copy(from, to).unwrap();
    chmod(to, mode);
}

#[test]
fn programs_need_execute_permission() {
    let d = scratch("noexec");
    let hello = build("hello", false);
    let noexec = d.join("noexec");
    copy_with_mode(&hello, &noexec, 0o644);
    // The kernel and qemu refuse it (EACCES), root included.
    expect_error(&noexec, "Permission denied");
    let peer = qemu(&[], &noexec, &[], None, None);
    assert_ne!(peer.code, Some(0), "qemu runs a file without x bits?");
    // One x bit is enough (for root; and for the owner, who we are).
    let owner_x = d.join("owner-x");
    copy_with_mode(&hello, &owner_x, 0o700);
    let ours = emu(&[], &owner_x, &[], None, None);
    assert_same("owner-x", &ours, &qemu(&[], &owner_x, &[], None, None));

    // The guest's execve: EACCES for the file without x bits and for a
    // directory, as the kernel says under qemu.
    let p = build("execperm", false);
    let missing = d.join("missing");
    let args = [
        noexec.to_str().unwrap(),
        d.to_str().unwrap(),
        missing.to_str().unwrap(),
    ];
    let ours = emu(&[], &p, &args, None, None);
    assert_same("execperm", &ours, &qemu(&[], &p, &args, None, None));
    let text = String::from_utf8_lossy(&ours.stdout);
    assert_eq!(
        text.matches("Permission denied").count(),
        2,
        "noexec and the directory: {text}"
    );
}

/// Replaces the contents of `prog`'s PT_INTERP (keeping its length and the
/// trailing NUL) with `with`, repeated.
fn patch_interp(prog: &[u8], with: &[u8]) -> Vec<u8> {
    let mut f = prog.to_vec();
    let u64_at = |f: &[u8], o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap());
    let phoff = u64_at(&f, 32) as usize;
    let phnum = u16::from_le_bytes([f[56], f[57]]) as usize;
    for i in 0..phnum {
        let o = phoff + i * 56;
        if u32::from_le_bytes(f[o..o + 4].try_into().unwrap()) == 3 {
            let (off, len) = (u64_at(&f, o + 8) as usize, u64_at(&f, o + 32) as usize);
            for (j, b) in f[off..off + len - 1].iter_mut().enumerate() {
                *b = with[j % with.len()];
            }
            return f;
        }
    }
    panic!("no PT_INTERP");
}

#[test]
fn garbage_interpreter_path_is_escaped_and_names_the_program() {
    let d = scratch("badinterp");
    let good = std::fs::read(build("hello", true)).unwrap();
    let p = d.join("prog");
    write_exe(&p, &patch_interp(&good, b"\x01\x02\xff\n\""));
    let r = emu(&[], &p, &[], None, None);
    assert_eq!(r.code, Some(1), "{r:?}");
    let want = format!(
        "{}: cannot load interpreter \"\\x01\\x02\\xff\\n\\\"\\x01",
        p.display()
    );
    assert!(r.stderr.contains(&want), "want {want:?} in {:?}", r.stderr);
    assert!(
        r.stderr.contains("No such file or directory"),
        "{}",
        r.stderr
    );
    // Nothing raw from the file reaches the terminal.
    assert!(
        !r.stderr.bytes().any(|b| b < 0x20 && b != b'\n'),
        "{:?}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{:?}", r.stderr);
}

/// Sets `e_type` to ET_DYN.
fn make_et_dyn(from: &Path, to: &Path) {
    let mut f = std::fs::read(from).unwrap();
    f[16..18].copy_from_slice(&3u16.to_le_bytes());
    write_exe(to, &f);
}

#[test]
fn prelinked_et_dyn_runs_at_its_link_address_like_qemu() {
    // Executables that are not position-independent but say ET_DYN: they
    // only run where they were linked (0x10000 here), where qemu puts them.
    let d = scratch("prelinked");
    let st = d.join("static-et-dyn");
    make_et_dyn(&build("hello", false), &st);
    let ours = emu(&[], &st, &["a"], None, None);
    assert_same("static ET_DYN", &ours, &qemu(&[], &st, &["a"], None, None));
    assert_eq!(ours.code, Some(42), "{ours:?}");

    let nopie = build_with("hello", "c", "-nopie-dyn", &["-no-pie"]);
    let dy = d.join("dynamic-et-dyn");
    make_et_dyn(&nopie, &dy);
    let flags = ["-L", SYSROOT];
    let ours = emu(&flags, &dy, &["a"], None, None);
    assert_same(
        "dynamic ET_DYN",
        &ours,
        &qemu(&flags, &dy, &["a"], None, None),
    );
    assert_eq!(ours.code, Some(42), "{ours:?}");
}
