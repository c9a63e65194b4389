//! Kernel formats and bad input: a bzImage through its 64-bit entry with
//! its setup header in the zero page; files that are not x86-64 kernels,
//! too little memory, a missing KVM device. And the accelerator probe.

mod common;

use common::*;
use x86_machine::{Error, StopReason};

/// Reports the zero page's copy of the bzImage header, then resets.
const BZ_GUEST: &str = r#"
_start:
    movzx eax, byte ptr [rsi + 0x1f1]
    lea rdi, [rip + s_sects]
    call kv
    movzx eax, word ptr [rsi + 0x206]
    lea rdi, [rip + s_version]
    call kv
    movzx eax, byte ptr [rsi + 0x210]
    lea rdi, [rip + s_loader]
    call kv
    lea rax, [rip + _start]
    lea rdi, [rip + s_rip]
    call kv
    lea rdi, [rip + s_cmdline]
    call puts
    mov edi, dword ptr [rsi + 0x228]
    call puts
    mov al, 10
    call putc
    call reset
s_sects: .asciz "setup_sects"
s_version: .asciz "version"
s_loader: .asciz "loader"
s_rip: .asciz "rip"
s_cmdline: .asciz "cmdline="
"#;

#[test]
fn bzimage_boots_through_its_64bit_entry() {
    let dir = tempfile::tempdir().unwrap();
    let bz = build_bzimage(dir.path(), "bzImage", BZ_GUEST);
    // From the file (read into guest RAM as it loads) and from bytes.
    let mut texts = Vec::new();
    for from_file in [true, false] {
        let out = Capture::default();
        let mut cfg = config(&bz, &out);
        if !from_file {
            cfg.kernel = std::fs::read(&bz).unwrap().into();
        }
        cfg.cmdline = "console=ttyS0 reboot=k".into();
        let outcome = run(cfg);
        assert_eq!(outcome.reason, StopReason::Reset, "{}", out.text());
        texts.push(out.text());
    }
    assert_eq!(texts[0], texts[1]);
    let text = texts.pop().unwrap();
    assert_eq!(value(&text, "rip"), 0x10_0200, "{text}");
    assert_eq!(value(&text, "setup_sects"), 4);
    assert_eq!(value(&text, "version"), 0x020f);
    assert_eq!(value(&text, "loader"), 0xff);
    assert!(text.contains("cmdline=console=ttyS0 reboot=k\n"), "{text}");
}

fn run_err(cfg: x86_machine::MachineConfig) -> Error {
    match x86_machine::run(cfg) {
        Ok(o) => panic!("expected an error, the machine ran: {o:?}"),
        Err(e) => e,
    }
}

#[test]
fn bad_kernels_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = Capture::default();

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a kernel\n".repeat(100)).unwrap();
    let e = run_err(config(&text, &out)).to_string();
    assert!(
        e.contains("notes.txt") && e.contains("not an x86-64 kernel"),
        "{e}"
    );

    let bz = build_bzimage(dir.path(), "bz", "_start:\n    call reset\n");
    let full = std::fs::read(&bz).unwrap();
    let cut = dir.path().join("bz-truncated");
    std::fs::write(&cut, &full[..5 * 512 + 8]).unwrap();
    let e = run_err(config(&cut, &out)).to_string();
    assert!(e.contains("truncated bzImage"), "{e}");

    // A riscv64 kernel: the cached Debian one if a test fetched it,
    // otherwise an Image header written here.
    let cached = dirs_riscv_image();
    let rv = match cached {
        Some(p) => p,
        None => {
            let mut h = vec![0u8; 4096];
            h[0x30..0x36].copy_from_slice(b"RISCV\0");
            h[0x38..0x3c].copy_from_slice(b"RSC\x05");
            let p = dir.path().join("Image");
            std::fs::write(&p, h).unwrap();
            p
        }
    };
    let e = run_err(config(&rv, &out)).to_string();
    assert!(e.contains("riscv64"), "{e}");

    // An x86-64 ELF that does not fit in RAM: a 64 KiB segment at 2 MiB
    // in a 2 MiB machine.
    let big = build_guest(
        dir.path(),
        "big",
        "_start:\n    call reset\n.bss\n.skip 65536\n.text\n",
    );
    let mut cfg = config(&big, &out);
    cfg.mem_size = 2 << 20;
    let e = run_err(cfg);
    assert!(matches!(e, Error::TooLittleMemory { .. }), "{e}");
    assert!(e.to_string().contains("too little"), "{e}");

    let mut cfg = config(&big, &out);
    cfg.mem_size = 1 << 20;
    let e = run_err(cfg);
    assert!(matches!(e, Error::TooLittleMemory { .. }), "{e}");
}

fn dirs_riscv_image() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    let guest = home.join("virtkit/guest");
    std::fs::read_dir(guest)
        .ok()?
        .filter_map(|e| e.ok())
        // The guest crate names its directories SUITE-ARCH-KEY; the amd64
        // guest's kernel is called Image too.
        .filter(|e| e.file_name().to_string_lossy().contains("-riscv64-"))
        .map(|e| e.path().join("Image"))
        .find(|p| p.is_file())
}

#[test]
fn missing_kvm_device_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "g", "_start:\n    call reset\n");
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.kvm_path = dir.path().join("no-kvm-here");
    let e = run_err(cfg);
    assert!(matches!(e, Error::NoKvm { .. }), "{e}");
    assert!(e.to_string().contains("no-kvm-here"), "{e}");

    // A file that is not KVM.
    let mut cfg = config(&guest, &out);
    cfg.kvm_path = guest.clone();
    assert!(x86_machine::run(cfg).is_err());
}

#[test]
fn bad_configurations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "g", "_start:\n    call reset\n");
    let out = Capture::default();
    for (vcpus, mem, want) in [
        (0, 16 << 20, "vCPUs"),
        (33, 16 << 20, "vCPUs"),
        (1, 4 << 30, "at most"),
        (1, (16 << 20) + 1, "4 KiB pages"),
    ] {
        let mut cfg = config(&guest, &out);
        cfg.vcpus = vcpus;
        cfg.mem_size = mem;
        let e = run_err(cfg).to_string();
        assert!(e.contains(want), "{vcpus} vCPUs, {mem} bytes: {e}");
    }
}

/// The probe tells PVM (the paravirtualized KVM that emulates guest ring
/// 0, loaded as the kvm_pvm module) from hardware virtualization.
#[test]
fn probe_tells_emulated_ring0_from_native() {
    let r = x86_machine::probe::probe(std::path::Path::new(x86_machine::DEFAULT_KVM_PATH))
        .expect("the probe runs");
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    assert_eq!(r.ring0_emulated, pvm, "{r:?}");
}
