//! Real downloads from the host's Debian mirror (cached under
//! $XDG_CACHE_HOME/virtkit like every other user of the cache).

use std::process::Command;

use guest::{busybox, Arch};

fn elf_machine(path: &std::path::Path) -> u16 {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([b[18], b[19]])
}

#[test]
fn busybox_riscv64_and_amd64() {
    let rv = busybox(Arch::Riscv64).unwrap();
    assert_eq!(elf_machine(&rv), 0xf3, "EM_RISCV");
    let x86 = busybox(Arch::Amd64).unwrap();
    assert_eq!(elf_machine(&x86), 0x3e, "EM_X86_64");
    // The amd64 one runs here: it is Debian's real busybox of trixie.
    let out = Command::new(&x86).args(["echo", "hello"]).output().unwrap();
    assert_eq!(out.stdout, b"hello\n");
    // Cached: the second call gives the same path.
    assert_eq!(busybox(Arch::Riscv64).unwrap(), rv);
}

#[test]
fn amd64_guest_is_a_bzimage_with_its_drivers() {
    let f = guest::Fetcher::new(guest::DEFAULT_SUITE).unwrap();
    let a = guest::guest_assets(&f, Arch::Amd64).unwrap();
    let k = std::fs::read(&a.kernel).unwrap();
    assert_eq!(
        k.get(0x202..0x206),
        Some(&b"HdrS"[..]),
        "bzImage setup header"
    );
    assert!(a.kernel_release.ends_with("-amd64"), "{}", a.kernel_release);
    for m in ["virtio_mmio", "virtio_blk", "ext4", "virtio_net"] {
        assert!(a.modules.iter().any(|n| n == m), "{m} in {:?}", a.modules);
    }
    let cpio = std::fs::read(&a.initramfs).unwrap();
    let has = |n: &str| cpio.windows(n.len()).any(|w| w == n.as_bytes());
    assert!(has(&format!("lib/modules/{}/ext4.ko", a.kernel_release)));
    assert!(
        has(guest::EXIT_SERIAL_ARG),
        "the init knows the console exit"
    );
    // Cached: the second call builds nothing and gives the same files.
    assert_eq!(guest::guest_assets(&f, Arch::Amd64).unwrap(), a);

    // What the nested KVM test loads into its outer guest.
    let (release, kvm) = guest::kernel_modules(&f, Arch::Amd64, &["kvm_amd"]).unwrap();
    assert_eq!(release, a.kernel_release);
    let names: Vec<&str> = kvm.iter().map(|m| m.name.as_str()).collect();
    let at = |n: &str| names.iter().position(|m| *m == n).expect(n);
    assert!(
        at("irqbypass") < at("kvm") && at("kvm") < at("kvm_amd"),
        "{names:?}"
    );
    let e = guest::kernel_modules(&f, Arch::Amd64, &["no_such_module"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no module no_such_module"), "{e}");
}
