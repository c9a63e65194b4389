//! Fuzzes the ELF parser and the loader: any byte string must give a
//! loaded image or an error, never a panic, and never a write outside the
//! guest address space.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linux_user::elf::Elf;
use linux_user::loader::{self, AuxInfo};
use linux_user::mm::{AddressSpace, GUEST_SIZE};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(elf) = Elf::parse(data, GUEST_SIZE) else {
        return;
    };
    let _ = elf.span();
    let _ = elf.phdr_vaddr();
    // Loading needs no interpreter lookup to exercise mapping and the
    // stack; skip files that ask for one (the path would hit the host).
    if elf.interp.is_some() {
        return;
    }
    let Ok(mm) = AddressSpace::new() else {
        return;
    };
    let aux = AuxInfo {
        uid: 0,
        euid: 0,
        gid: 0,
        egid: 0,
        random: [7; 16],
    };
    let _ = loader::load(
        &mm,
        Path::new("fuzz"),
        data,
        None,
        &[b"prog".to_vec(), b"-x".to_vec()],
        &[b"A=B".to_vec()],
        b"prog",
        &aux,
        8 << 20,
    );
});
