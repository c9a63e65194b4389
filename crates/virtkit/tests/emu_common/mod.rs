//! Shared helpers of the `virtkit emu user` tests: cross-compiling the C
//! test programs (cached in the target directory) and running a program
//! under virtkit and under qemu-riscv64-static side by side.

#![allow(dead_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The cross sysroot Debian's gcc-riscv64-linux-gnu installs.
pub const SYSROOT: &str = "/usr/riscv64-linux-gnu";

pub fn virtkit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_virtkit"))
}

fn progs_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../linux-user/tests/progs")
}

/// A scratch directory unique to one test of this test process.
///
/// Per process, not only per test name: two test processes sharing a
/// target directory (two `cargo test` runs at once) wiped each other's
/// files when the directory was fixed per name. Directories left by
/// processes that have exited are removed on the way.
pub fn scratch(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emu-scratch");
    let me = std::process::id();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let alive = e
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
                .is_some_and(|pid| pid == me || Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let d = root.join(me.to_string()).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// Cross-compiles `progs/<name>.c` (static, or dynamic against the cross
/// sysroot) unless an up-to-date binary is cached.
pub fn build(name: &str, dynamic: bool) -> PathBuf {
    build_with(
        name,
        "c",
        if dynamic { "-dyn" } else { "" },
        if dynamic { &[] } else { &["-static"] },
    )
}

/// Assembles `progs/<name>.S` without libc: a plain static executable, or
/// a static-PIE one (glibc's static-pie start files are not in Debian's
/// cross sysroot, so static-PIE is covered by this libc-free program).
pub fn build_asm(name: &str, pie: bool) -> PathBuf {
    let flags: &[&str] = if pie {
        &["-nostdlib", "-fPIE", "-pie", "-Wl,--no-dynamic-linker"]
    } else {
        &["-nostdlib", "-static"]
    };
    build_with(name, "S", if pie { "-pie" } else { "" }, flags)
}

pub fn build_with(name: &str, ext: &str, suffix: &str, flags: &[&str]) -> PathBuf {
    let src = progs_src().join(format!("{name}.{ext}"));
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emu-progs");
    std::fs::create_dir_all(&out_dir).expect("create output dir");
    let out = out_dir.join(format!("{name}{suffix}"));
    let fresh = match (std::fs::metadata(&src), std::fs::metadata(&out)) {
        (Ok(s), Ok(o)) => o.modified().unwrap() >= s.modified().unwrap(),
        _ => false,
    };
    if fresh {
        return out;
    }
    // Build to a unique name and rename, so tests running in parallel (in
    // several test binaries) never see a half-written file.
    let tmp = out_dir.join(format!(
        ".{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut cmd = Command::new("riscv64-linux-gnu-gcc");
    cmd.args(["-O2", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src)
        .args(flags);
    if ext == "c" {
        cmd.args(["-lm", "-lpthread"]);
    }
    let st = cmd
        .status()
        .expect("run riscv64-linux-gnu-gcc (install gcc-riscv64-linux-gnu)");
    assert!(st.success(), "compiling {name}.c failed");
    std::fs::rename(&tmp, &out).expect("rename built program");
    out
}

/// Output of one run.
#[derive(Debug, PartialEq, Eq)]
pub struct Run {
    pub stdout: Vec<u8>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stderr: String,
}

fn finish(o: Output) -> Run {
    Run {
        stdout: o.stdout,
        code: o.status.code(),
        signal: o.status.signal(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `prog args` under `virtkit emu user` with extra emulator flags.
pub fn emu(
    flags: &[&str],
    prog: &Path,
    args: &[&str],
    cwd: Option<&Path>,
    stdin: Option<&[u8]>,
) -> Run {
    emu_env(flags, prog, args, cwd, stdin, &[])
}

/// `emu` with extra environment variables.
pub fn emu_env(
    flags: &[&str],
    prog: &Path,
    args: &[&str],
    cwd: Option<&Path>,
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Run {
    let mut c = Command::new(virtkit());
    c.args(["emu", "user"]).args(flags).arg(prog).args(args);
    c.envs(env.iter().copied());
    run(c, cwd, stdin)
}

/// Runs `prog args` under qemu-riscv64-static with the same flags.
pub fn qemu(
    flags: &[&str],
    prog: &Path,
    args: &[&str],
    cwd: Option<&Path>,
    stdin: Option<&[u8]>,
) -> Run {
    qemu_env(flags, prog, args, cwd, stdin, &[])
}

/// `qemu` with extra environment variables.
pub fn qemu_env(
    flags: &[&str],
    prog: &Path,
    args: &[&str],
    cwd: Option<&Path>,
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Run {
    let mut c = Command::new("qemu-riscv64-static");
    c.args(flags).arg(prog).args(args);
    c.envs(env.iter().copied());
    run(c, cwd, stdin)
}

/// A directory of host scripts, one per busybox applet, each running that
/// applet of `bb` under qemu-riscv64-static.
///
/// Why: busybox's shell runs most applets by exec'ing /proc/self/exe.
/// qemu-user hands that execve to the host kernel, which cannot run a
/// riscv64 program without binfmt_misc (not registered on the build
/// machines), so the shell falls back to a $PATH search and quietly runs
/// the host's GNU coreutils instead (GNU `wc` pads columns differently,
/// GNU `od` accepts types busybox refuses, GNU gzip compresses
/// differently). Put first in $PATH for qemu, these make the peer run
/// busybox's own applets, as a riscv64 machine would. virtkit emulates
/// that execve itself and gets no such directory, so a broken re-exec in
/// virtkit shows up as a difference.
pub fn qemu_applet_dir(bb: &Path) -> PathBuf {
    // Built once per test process (tests run on several threads).
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| make_applet_dir(bb)).clone()
}

fn make_applet_dir(bb: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("emu-qemu-applets")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create applet dir");
    let wrapper = dir.join(".applet");
    let bb_str = bb.to_str().expect("busybox path is UTF-8");
    assert!(!bb_str.contains('\'') && !bb_str.contains('\\'));
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec qemu-riscv64-static '{bb_str}' \"${{0##*/}}\" \"$@\"\n"),
    )
    .expect("write applet wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("chmod applet wrapper");
    let list = qemu(&[], bb, &["--list"], None, None);
    let list = String::from_utf8(list.stdout).expect("applet list");
    assert!(list.lines().any(|l| l == "od"), "busybox --list: {list}");
    for name in list.lines().filter(|l| !l.is_empty() && !l.contains('/')) {
        std::os::unix::fs::symlink(".applet", dir.join(name)).expect("link applet");
    }
    dir
}

fn run(mut c: Command, cwd: Option<&Path>, stdin: Option<&[u8]>) -> Run {
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c.spawn().expect("spawn");
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = w.write_all(&data);
        });
    }
    finish(child.wait_with_output().expect("wait"))
}

/// Asserts virtkit and qemu agree on stdout and exit status.
pub fn assert_same(what: &str, ours: &Run, peer: &Run) {
    assert!(
        !ours.stderr.contains("panicked"),
        "{what}: virtkit panicked: {}",
        ours.stderr
    );
    if ours.stdout != peer.stdout {
        let a = String::from_utf8_lossy(&ours.stdout);
        let b = String::from_utf8_lossy(&peer.stdout);
        let first = a
            .lines()
            .zip(b.lines())
            .position(|(x, y)| x != y)
            .unwrap_or(a.lines().count().min(b.lines().count()));
        panic!(
            "{what}: stdout differs from qemu at line {first}:\n virtkit: {:?}\n qemu:    {:?}\n(virtkit stderr: {})",
            a.lines().nth(first),
            b.lines().nth(first),
            ours.stderr
        );
    }
    assert_eq!(
        (ours.code, ours.signal),
        (peer.code, peer.signal),
        "{what}: exit status differs from qemu (virtkit stderr: {})",
        ours.stderr
    );
}
