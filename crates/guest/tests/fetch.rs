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
