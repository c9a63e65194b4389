//! `virtkit vm run --arch x86_64`: small guests on /dev/kvm through the
//! command line (serial output, exit status, the probe's warning, --cpus,
//! --initrd/--append), and bad input with a clear error and a non-zero exit.

#[path = "../../x86-machine/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

fn virtkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_virtkit"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("virtkit runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Prints its command line and the vCPU count from CPUID, then resets.
const HELLO: &str = r#"
_start:
    lea rdi, [rip + s_hello]
    call puts
    mov edi, dword ptr [rsi + 0x228]
    call puts
    mov al, 10
    call putc
    mov eax, 1
    cpuid
    shr ebx, 16
    movzx eax, bl
    lea rdi, [rip + s_cpus]
    call kv
    mov eax, dword ptr [rsi + 0x21c]
    lea rdi, [rip + s_initrd]
    call kv
    call reset
s_hello: .asciz "hello from KVM: "
s_cpus: .asciz "cpus"
s_initrd: .asciz "initrd_size"
"#;

#[test]
fn small_guest_runs_and_resets_with_status_0() {
    let dir = tempfile::tempdir().unwrap();
    let guest = common::build_guest(dir.path(), "hello", HELLO);
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, vec![7u8; 12345]).unwrap();
    let out = virtkit(&[
        "vm",
        "run",
        "--arch",
        "x86_64",
        "--kernel",
        guest.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--append",
        "console=ttyS0 quiet",
        "--cpus",
        "3",
        "--mem",
        "64M",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("hello from KVM: console=ttyS0 quiet"),
        "{stdout}"
    );
    assert_eq!(common::value(&stdout, "cpus"), 3, "{stdout}");
    assert_eq!(common::value(&stdout, "initrd_size"), 12345, "{stdout}");
    // On this project's machines KVM emulates ring 0 (the kvm_pvm
    // module): one line says so; on hardware virtualization, nothing.
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let warned = stderr.contains("emulates guest ring 0");
    assert_eq!(warned, pvm, "{stderr}");
    if pvm {
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn nic_user_gives_the_guest_a_virtio_net_card() {
    let dir = tempfile::tempdir().unwrap();
    // vm run gives the board a virtio-rng in slot 0: the card is slot 1.
    let guest = common::build_guest(dir.path(), "net", &common::net_guest(1));
    let out = virtkit(&[
        "vm",
        "run",
        "--arch",
        "x86_64",
        "--kernel",
        guest.to_str().unwrap(),
        "--mem",
        "16M",
        "--nic",
        "user,hostfwd=tcp:127.0.0.1:0-:22",
        "--timeout",
        "60",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    common::check_net_guest(&stdout);
}

#[test]
fn a_crashing_guest_fails_with_its_registers() {
    let dir = tempfile::tempdir().unwrap();
    let guest = common::build_guest(
        dir.path(),
        "ud2",
        "_start:\n    mov rbx, 0xfeedf00d\n    ud2\n",
    );
    let out = virtkit(&[
        "vm",
        "run",
        "--arch",
        "x86_64",
        "--kernel",
        guest.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("triple fault") && stderr.contains("rbx=0xfeedf00d"),
        "{stderr}"
    );
}

fn expect_error(args: &[&str], want: &str) {
    let out = virtkit(args);
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{args:?} succeeded: {stderr}");
    assert!(
        stderr.contains(want),
        "{args:?}: wanted {want:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_input_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let guest = common::build_guest(dir.path(), "ok", "_start:\n    call reset\n");
    let g = guest.to_str().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a kernel at all\n".repeat(64)).unwrap();
    let n = notes.to_str().unwrap();
    let x86 = |extra: &[&str]| {
        let mut v = vec!["vm", "run", "--arch", "x86_64"];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str], want: &str| {
        let args = x86(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        expect_error(&refs, want);
    };
    run(&["--kernel", n], "not an x86-64 kernel");
    let bz = common::build_bzimage(dir.path(), "bz", "_start:\n    call reset\n");
    let cut = dir.path().join("bz-cut");
    std::fs::write(&cut, &std::fs::read(&bz).unwrap()[..3000]).unwrap();
    run(&["--kernel", cut.to_str().unwrap()], "truncated bzImage");
    let mut rv = vec![0u8; 4096];
    rv[0x30..0x36].copy_from_slice(b"RISCV\0");
    let rvp = dir.path().join("Image");
    std::fs::write(&rvp, rv).unwrap();
    run(&["--kernel", rvp.to_str().unwrap()], "riscv64");
    run(&["--kernel", g, "--mem", "1M"], "too little");
    run(
        &["--kernel", g, "--kvm-device", "/nonexistent/kvm"],
        "/nonexistent/kvm",
    );
    run(&["--kernel", g, "--accel", "tcg"], "no x86-64 emulator");
    run(&["--kernel", g, "--cpus", "0"], "vCPUs");
    run(&["--kernel", g, "--nic", "bogus"], "unknown network type");
    run(
        &["--kernel", "/nonexistent/vmlinux"],
        "cannot read the kernel",
    );
    // And riscv64 with KVM asked for.
    expect_error(
        &["vm", "run", "--kernel", g, "--accel", "kvm"],
        "--accel kvm",
    );
}
