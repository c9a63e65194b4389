//! Fuzzes the guest address space with the operations guest syscalls drive
//! (mmap, munmap, mprotect, mremap, brk) in any order with any arguments:
//! never a panic, and afterwards the bookkeeping agrees with the CPU's
//! permission table (every byte the table allows lies in a listed region
//! with that permission, and regions never overlap).
#![no_main]

use libfuzzer_sys::fuzz_target;
use linux_user::mm::{AddressSpace, PAGE, PROT_R, PROT_W, PROT_X};

/// Addresses stay in a small window so operations collide often.
const WINDOW: u64 = 64 * PAGE;
const BASE: u64 = 0x10_0000;

fn arg(b: &[u8], i: usize) -> u64 {
    b.get(i).copied().unwrap_or(0) as u64
}

fuzz_target!(|data: &[u8]| {
    let Ok(mm) = AddressSpace::new() else {
        return;
    };
    mm.set_mmap_window(BASE, BASE + WINDOW);
    mm.set_brk_start(BASE + 2 * WINDOW);
    for op in data.chunks(4).take(64) {
        let addr = BASE + (arg(op, 1) % WINDOW / PAGE) * PAGE;
        // Mostly page-sized lengths, sometimes odd or huge ones.
        let len = match arg(op, 2) {
            0xff => u64::MAX - arg(op, 3),
            0xfe => arg(op, 3),
            n => (n % 16) * PAGE,
        };
        let prot = (arg(op, 3) as u8) & (PROT_R | PROT_W | PROT_X);
        match arg(op, 0) % 8 {
            0 => {
                if let Ok(a) = mm.choose(addr, len, false, false) {
                    let _ = mm.map(a, len, prot, false, -1, 0);
                }
            }
            1 => {
                let _ = mm.map(addr, len, prot, arg(op, 3) & 0x80 != 0, -1, 0);
            }
            2 => {
                let _ = mm.unmap(addr, len);
            }
            3 => {
                let _ = mm.protect(addr, len, prot);
            }
            4 => {
                let new_len = (arg(op, 3) % 16) * PAGE;
                if mm.is_mapped(addr, len) {
                    let _ = mm.grow_in_place(addr, len, new_len);
                }
            }
            5 => {
                let to = BASE + (arg(op, 3) % WINDOW / PAGE) * PAGE;
                let new_len = (arg(op, 3) % 8 + 1) * PAGE;
                if len > 0 && mm.is_mapped(addr, len) && mm.is_free(to, new_len) {
                    let _ = mm.remap(addr, len, new_len, to);
                }
            }
            6 => {
                let _ = mm.brk(BASE + 2 * WINDOW + arg(op, 1) * arg(op, 2) * 97);
            }
            _ => {
                let _ = mm.write(addr, &op[..op.len().min(3)]);
                let _ = mm.slice(addr, len.min(1 << 20) as usize);
            }
        }
    }
    let regions = mm.regions();
    for w in regions.windows(2) {
        assert!(w[0].end <= w[1].start, "overlap: {:?}", w);
    }
    let mut a = BASE;
    while a < BASE + 3 * WINDOW {
        let p = mm.page_perm(a);
        let r = regions.iter().find(|r| r.start <= a && a < r.end);
        match r {
            Some(r) => assert_eq!(r.perm, p, "page {a:#x}"),
            None => assert_eq!(p, 0, "unlisted page {a:#x} has permissions"),
        }
        a += PAGE;
    }
});
