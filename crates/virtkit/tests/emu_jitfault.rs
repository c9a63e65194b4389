//! `virtkit emu user`: faults of translated loads and stores. The JIT's
//! inline accesses check only the address space's bounds and let the
//! host's page protection (which mirrors the guest's) fault the rest, so
//! what the guest sees must still be what qemu-riscv64 gives and what the
//! interpreter gives: SIGSEGV with the exact si_addr and si_code after
//! mprotect/munmap (also another thread's), misaligned accesses running
//! into an inaccessible page, self-modifying code.

mod emu_common;
use emu_common::*;

/// What `jitfault` prints on riscv64 Linux.
const EXPECTED: &str = "sum before: 0 669120000\n\
    load after PROT_NONE: fault at base+0x1000 code 2\n\
    sum readable again: 0 669120000\n\
    store to PROT_READ: fault at base+0x1000 code 2\n\
    first page written: 518\n\
    store after munmap: fault at base+0x1000 code 1\n\
    remapped: 0\n\
    misaligned across: fault at base+0x3000 code 2\n\
    other thread's mprotect: fault 1 in page 6: 1\n\
    self-modifying: total 360, data 8\n\
    call into PROT_READ: fault 1 at code: 1\n\
    faults: 6\n";

#[test]
fn translated_accesses_fault_like_qemu_and_the_interpreter() {
    let p = build("jitfault", false);
    let ours = emu(&[], &p, &[], None, None);
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        EXPECTED,
        "stderr: {}",
        ours.stderr
    );
    assert_eq!(ours.code, Some(0), "{ours:?}");
    assert_same("jitfault", &ours, &qemu(&[], &p, &[], None, None));
    // Every block translated on its first run: each access above then
    // faults in translated code, not in the interpreter (which runs
    // blocks until they have run `riscv::DEFAULT_JIT_THRESHOLD` times).
    let translated = emu(&["--jit-threshold=1"], &p, &[], None, None);
    assert_same("jitfault --jit-threshold=1", &translated, &ours);
    let interp = emu(&["--no-jit"], &p, &[], None, None);
    assert_same("jitfault --no-jit", &interp, &ours);
}

/// What `sigbus` prints first on riscv64 Linux (and on amd64 Linux, built
/// natively).
const SIGBUS_EXPECTED: &str = "backed pages: 12582\n\
    hot loop: signal 7 code 2 at base+0x2000\n\
    load: signal 7 code 2 at base+0x2008\n\
    store: signal 7 code 2 at base+0x2018\n\
    amo: signal 7 code 2 at base+0x2010\n\
    lr/sc: signal 7 code 2 at base+0x2018\n\
    write from it: -1 Bad address\n\
    read into it: -1 Bad address\n";

/// A file mapping's pages past the file's end: the guest gets SIGBUS
/// (BUS_ADRERR, exact address) for loads, stores and atomics, translated
/// or interpreted, as under qemu-riscv64; the emulator used to die of the
/// host's SIGBUS. System calls given such memory (data, a path, a result)
/// fail with EFAULT. Left unhandled, the guest dies of SIGBUS as under
/// qemu.
#[test]
fn accesses_past_a_mapped_files_end_get_sigbus_like_qemu() {
    let p = build("sigbus", false);
    let ours = emu(&[], &p, &[], None, None);
    let out = String::from_utf8_lossy(&ours.stdout);
    assert_eq!(
        out,
        format!(
            "{SIGBUS_EXPECTED}after growing the file: 12582\n\
             after shrinking it: signal 7 code 2 at base+0x1008\n"
        ),
        "stderr: {}",
        ours.stderr
    );
    assert_eq!(ours.code, Some(0), "{ours:?}");
    assert_same("sigbus", &ours, &qemu(&[], &p, &[], None, None));
    for flags in [&["--jit-threshold=1"][..], &["--no-jit"]] {
        assert_same(
            &format!("sigbus {flags:?}"),
            &emu(flags, &p, &[], None, None),
            &ours,
        );
    }
    // A path and a result buffer there: EFAULT, as Linux says (amd64, and
    // riscv64 by the same code); qemu-riscv64 7.2 aborts on them.
    let paths = emu(&[], &p, &["paths"], None, None);
    assert_eq!(
        String::from_utf8_lossy(&paths.stdout),
        format!(
            "{SIGBUS_EXPECTED}open with the path in it: -1 Bad address\n\
             pipe into it: -1 Bad address\n\
             after growing the file: 12582\n\
             after shrinking it: signal 7 code 2 at base+0x1008\n"
        ),
        "stderr: {}",
        paths.stderr
    );
    let unhandled = emu(&[], &p, &["unhandled"], None, None);
    assert_eq!(
        String::from_utf8_lossy(&unhandled.stdout),
        format!("{SIGBUS_EXPECTED}after growing the file: 12582\nunhandled\n")
    );
    assert_eq!(unhandled.signal, Some(libc::SIGBUS), "{unhandled:?}");
    assert_same(
        "sigbus unhandled",
        &unhandled,
        &qemu(&[], &p, &["unhandled"], None, None),
    );
}

/// Atomics racing a truncation of their file mapping (two seconds): each
/// one works or gets SIGBUS, interpreted or translated, and the process
/// survives, as under qemu-riscv64. The emulator's own host atomic used
/// to take the host's SIGBUS and die within a second.
#[test]
fn atomics_racing_a_truncation_get_sigbus_and_survive() {
    let p = build("sigbusrace", false);
    for flags in [&[][..], &["--no-jit"]] {
        let r = emu(flags, &p, &["2"], None, None);
        assert_eq!(
            String::from_utf8_lossy(&r.stdout),
            "survived: atomics done 1, SIGBUS seen 1\n",
            "{flags:?}: {r:?}"
        );
        assert_eq!(r.code, Some(0), "{flags:?}: {r:?}");
    }
}
