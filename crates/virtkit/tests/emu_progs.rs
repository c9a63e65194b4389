//! `virtkit emu user` on C test programs, compared with qemu-riscv64-static.

mod emu_common;
use emu_common::*;

#[test]
fn hello_static_and_dynamic_match_qemu() {
    let args = ["one", "-b", "--three"];
    let flags = ["-E", "VIRTKIT_TEST_VAR=set-by-E"];
    let st = build("hello", false);
    let ours = emu(&flags, &st, &args, None, None);
    assert_same(
        "hello (static)",
        &ours,
        &qemu(&flags, &st, &args, None, None),
    );
    assert_eq!(ours.code, Some(44));
    let text = String::from_utf8_lossy(&ours.stdout);
    assert!(
        text.contains("argv[2]=-b\n") && text.contains("VIRTKIT_TEST_VAR=set-by-E\n"),
        "{text}"
    );
    assert!(text.contains("machine=riscv64\n"), "{text}");

    let dy = build("hello", true);
    let flags = ["-L", SYSROOT, "-U", "VIRTKIT_TEST_VAR"];
    let ours = emu(&flags, &dy, &args, None, None);
    assert_same(
        "hello (dynamic)",
        &ours,
        &qemu(&flags, &dy, &args, None, None),
    );
    assert!(String::from_utf8_lossy(&ours.stdout).contains("VIRTKIT_TEST_VAR=(unset)\n"));
}

#[test]
fn libc_free_static_and_static_pie_match_qemu() {
    for pie in [false, true] {
        let p = build_asm("tiny", pie);
        let ours = emu(&[], &p, &[], None, None);
        assert_eq!(ours.stdout, b"tiny!\n", "pie={pie}: {:?}", ours);
        assert_same("tiny", &ours, &qemu(&[], &p, &[], None, None));
    }
}

#[test]
fn integer_and_float_corner_cases_match_qemu_bit_for_bit() {
    let p = build("intfp", false);
    let ours = emu(&[], &p, &[], None, None);
    assert!(ours.stdout.len() > 100_000, "too little output");
    let peer = qemu(&[], &p, &[], None, None);
    assert_same("intfp", &ours, &peer);
    // Each case runs once or a few times: by default the interpreter
    // runs most of them. Translated on their first run they agree too,
    // as with the interpreter alone (no translation to host code).
    let translated = emu(&["--jit-threshold=1"], &p, &[], None, None);
    assert_same("intfp --jit-threshold=1", &translated, &peer);
    let interp = emu(&["--no-jit"], &p, &[], None, None);
    assert_same("intfp --no-jit", &interp, &peer);
}

#[test]
fn compute_kernel_matches_qemu() {
    let p = build("kernel", false);
    let ours = emu(&[], &p, &["300"], None, None);
    let peer = qemu(&[], &p, &["300"], None, None);
    assert_same("kernel", &ours, &peer);
    let interp = emu_env(&[], &p, &["300"], None, None, &[("VIRTKIT_JIT", "0")]);
    assert_same("kernel VIRTKIT_JIT=0", &interp, &peer);
}

#[test]
fn fp_kernel_matches_qemu() {
    // Inline FP in translated code (SSE, FMA) against qemu and the
    // interpreter's soft-float: the same bits out.
    let p = build("fpkernel", false);
    let ours = emu(&[], &p, &["200"], None, None);
    let peer = qemu(&[], &p, &["200"], None, None);
    assert_same("fpkernel", &ours, &peer);
    let interp = emu(&["--no-jit"], &p, &["200"], None, None);
    assert_same("fpkernel --no-jit", &interp, &peer);
}

#[test]
fn threads_hammer_shared_counters() {
    for dynamic in [false, true] {
        let p = build("threads", dynamic);
        let flags: &[&str] = if dynamic { &["-L", SYSROOT] } else { &[] };
        let ours = emu(flags, &p, &[], None, None);
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout),
            "amo=400000 cas=400000 mutex=25000 ret=6006 tls=-1\n",
            "stderr: {}",
            ours.stderr
        );
        assert_same("threads", &ours, &qemu(flags, &p, &[], None, None));
    }
}

/// Concurrent mmap(NULL)/munmap in several threads: no range is handed to
/// two of them (choosing and mapping under one lock).
#[test]
fn concurrent_mmaps_get_distinct_ranges() {
    let p = build("mmrace", false);
    let ours = emu(&[], &p, &[], None, None);
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        "mappings handed to two threads: 0\n",
        "{ours:?}"
    );
    assert_eq!(ours.code, Some(0), "{ours:?}");
}

#[test]
fn signals_match_qemu() {
    let p = build("signals", false);
    let ours = emu(&[], &p, &[], None, None);
    assert_eq!(ours.signal, Some(libc_sigterm()), "ends by its own SIGTERM");
    let peer = qemu(&[], &p, &[], None, None);
    assert_same("signals", &ours, &peer);
    // Handlers entered and left from translated code (most of this
    // program runs too few times to be translated by default).
    let translated = emu(&["--jit-threshold=1"], &p, &[], None, None);
    assert_same("signals --jit-threshold=1", &translated, &peer);
}

fn libc_sigterm() -> i32 {
    15
}

#[test]
fn files_match_qemu() {
    let p = build("files", false);
    let a = scratch("files-virtkit");
    let b = scratch("files-qemu");
    let ours = emu(&[], &p, &[a.to_str().unwrap()], None, None);
    assert!(
        String::from_utf8_lossy(&ours.stdout).ends_with("ok\n"),
        "{:?}",
        ours
    );
    assert_same(
        "files",
        &ours,
        &qemu(&[], &p, &[b.to_str().unwrap()], None, None),
    );
}

#[test]
fn mmap_matches_qemu() {
    let p = build("mmap", false);
    let a = scratch("mmap-virtkit");
    let b = scratch("mmap-qemu");
    let ours = emu(&[], &p, &[a.to_str().unwrap()], None, None);
    assert_same(
        "mmap",
        &ours,
        &qemu(&[], &p, &[b.to_str().unwrap()], None, None),
    );
}

#[test]
fn fork_exec_wait() {
    // qemu-user cannot execve a riscv64 program without binfmt_misc, so
    // this one is checked against what the program must print.
    let p = build("forkexec", false);
    let ours = emu(&[], &p, &[], None, None);
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        "fork exit=7\nkilled signaled=1 sig=9\npipe sum=499500\n\
         exec child argc=3 arg2=-x env=from-vfork\nvfork+exec exit=42\n\
         exec child argc=3 arg2=second env=from-fork\nfork+exec exit=42\n\
         failed exec exit=3\n",
        "stderr: {}",
        ours.stderr
    );
    assert_eq!(ours.code, Some(0));
}

#[test]
fn fatal_signals_become_virtkits_own() {
    for (name, sig) in [("fault", 11), ("illegal", 4)] {
        let p = build(name, false);
        let ours = emu(&[], &p, &[], None, None);
        assert_eq!(ours.signal, Some(sig), "{name}: {:?}", ours);
        assert_eq!(ours.stderr, "", "{name}: nothing extra on stderr");
        assert_same(name, &ours, &qemu(&[], &p, &[], None, None));
    }
    let p = build("exit_code", false);
    let ours = emu(&[], &p, &[], None, None);
    assert_eq!(ours.code, Some(3));
}

/// What `procself` prints on riscv64 Linux.
const PROCSELF: &str = "exe: argv[0]\ncode: r-xp exe\ndata: rw-p\nstack: rw-p [stack]\n\
    mmap first: r--p\nmmap middle: rw-p\nmmap middle is one page: 1\n\
    mremap across mappings: Bad address\nmremap grown: grown rw-p\n\
    file map: named, offset 1000\nauxv: matches getauxval (5 keys checked)\ncmdline: argv\n\
    prctl name: 0 abcdefghijklmno\nprctl name: short\n\
    write own exe: Text file busy\ntruncate own exe: Text file busy\n\
    get_robust_list(other thread): its head\nget_robust_list(no such pid): No such process\n\
    clone3 fork: child exit 23\n\
    clone3 clear-sighand: child killed by 10, parent handled 10\nclone3 vfork: child exit 24\n\
    vfork: parent resumed after the child: 1, exit 26\n\
    vfork: child's write seen: 42\nposix_spawn missing program: No such file or directory\nclone3 pidfd: waited status 25\n\
    clone3 thread: counter 1000, parent_tid set 1\n\
    clone3 size-without-stack: -1 Invalid argument\nclone3 short struct: -1 Invalid argument\n";

#[test]
fn proc_self_files_clone3_and_robust_lists() {
    for dynamic in [false, true] {
        let p = build("procself", dynamic);
        let flags: &[&str] = if dynamic { &["-L", SYSROOT] } else { &[] };
        let args = ["x", "--y"];
        let ours = emu(flags, &p, &args, None, None);
        let text = String::from_utf8_lossy(&ours.stdout);
        assert_eq!(text, PROCSELF, "dynamic={dynamic} stderr: {}", ours.stderr);
        assert_eq!(ours.code, Some(0));
        // The /proc and mremap part against qemu. qemu 7.2 has no clone3
        // or get_robust_list and wants a NUL within PR_SET_NAME's 16 bytes
        // (Linux reads 15), so the rest is checked against Linux's answers
        // above only.
        let peer = qemu(flags, &p, &args, None, None);
        let head = |s: &[u8]| {
            String::from_utf8_lossy(s)
                .lines()
                .take_while(|l| !l.starts_with("prctl"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(head(&ours.stdout), head(&peer.stdout), "dynamic={dynamic}");
    }
}
