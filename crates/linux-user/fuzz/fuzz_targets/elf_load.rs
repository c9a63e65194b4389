//! Fuzzes the ELF parser and the loader: any byte string must give a
//! loaded image or an error, never a panic, and never a write outside the
//! guest address space. The same bytes as a file (read on demand, segments
//! mapped from it) must parse and load exactly as they do from memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linux_user::elf::Elf;
use linux_user::loader::{self, AuxInfo, Image, ProgramFile};
use linux_user::mm::{AddressSpace, GUEST_SIZE};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("vk-fuzz-elf-{}", std::process::id()));
    std::fs::write(&path, data).unwrap();
    let file = ProgramFile::open(&path, false).unwrap();
    let parsed = Elf::parse(data, GUEST_SIZE);
    assert_eq!(Elf::parse_from(&file, GUEST_SIZE), parsed);
    let Ok(elf) = parsed else {
        return;
    };
    let _ = elf.span();
    let _ = elf.phdr_vaddr();
    // Loading needs no interpreter lookup to exercise mapping and the
    // stack; skip files that ask for one (the path would hit the host).
    if elf.interp.is_some() {
        return;
    }
    let aux = AuxInfo {
        uid: 0,
        euid: 0,
        gid: 0,
        egid: 0,
        random: [7; 16],
    };
    let load = |image| {
        let mm = AddressSpace::new().ok()?;
        let l = loader::load(
            &mm,
            Path::new("fuzz"),
            image,
            None,
            &[b"prog".to_vec(), b"-x".to_vec()],
            &[b"A=B".to_vec()],
            b"prog",
            &aux,
            8 << 20,
        );
        Some((mm, l))
    };
    let (Some((mm_b, from_bytes)), Some((mm_f, from_file))) =
        (load(Image::Bytes(data)), load(Image::File(&file)))
    else {
        return;
    };
    match (from_bytes, from_file) {
        (Ok(b), Ok(f)) => {
            assert_eq!(b.image, f.image);
            // The first 64 KiB of each segment (bss can be huge).
            let bias = b.image.0 - (elf.span().0 & !0xfff);
            for p in elf.loads() {
                let a = p.vaddr + bias;
                let n = p.memsz.min(1 << 16) as usize;
                assert_eq!(mm_b.page_perm(a), mm_f.page_perm(a));
                assert_eq!(mm_b.slice(a, n), mm_f.slice(a, n), "segment at {a:#x}");
            }
        }
        (Err(_), Err(_)) => {}
        (b, f) => panic!("from bytes {:?}, from a file {:?}", b.err(), f.err()),
    }
});
