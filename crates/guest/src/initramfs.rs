//! The initramfs of the default guest, and the per-run archive that carries
//! the command.

use std::path::Path;

use crate::cpio::CpioWriter;
use crate::error::{Error, IoContext, Result};
use crate::modules::Module;

/// The guest's /init (a busybox sh script).
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Limit on argv plus env in the run archive: busybox xargs (which the init
/// uses to read NUL-separated words) must pass them in a single command.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Builds the base initramfs: busybox, the modules of `release` in load
/// order, device nodes the kernel needs before devtmpfs, and /init.
/// Uncompressed: the kernel copies it straight into its rootfs, which under
/// an emulated CPU is much faster than inflating it.
pub fn build_base(busybox: &[u8], release: &str, modules: &[Module]) -> Result<Vec<u8>> {
    let mut w = CpioWriter::new();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "mnt",
        "tmp",
        "run",
        "root",
        "etc",
        "lib",
        "lib/modules",
        "virtkit",
    ] {
        w.dir(d, 0o755)?;
    }
    let moddir = format!("lib/modules/{release}");
    w.dir(&moddir, 0o755)?;
    // The kernel opens /dev/console for init's stdio before anything mounts
    // devtmpfs; without the node init would run with no output.
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("bin/busybox", 0o755, busybox)?;
    w.symlink("bin/sh", "busybox")?;
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    w.file("etc/group", 0o644, b"root:x:0:\n")?;
    let mut order = String::new();
    for m in modules {
        w.file(&format!("{moddir}/{}.ko", m.name), 0o644, &m.data)?;
        order.push_str(&m.name);
        order.push('\n');
    }
    w.file(&format!("{moddir}/virtkit.order"), 0o644, order.as_bytes())?;
    w.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    Ok(w.finish())
}

/// Builds the small archive carrying one run's command: `/virtkit/argv`
/// (arguments, each followed by NUL) and, if `env` is not empty,
/// `/virtkit/env` (`KEY=VALUE`, each followed by NUL). An empty `argv`
/// yields an archive without `/virtkit/argv`: the guest then starts an
/// interactive shell.
pub fn run_archive(argv: &[String], env: &[(String, String)]) -> Result<Vec<u8>> {
    let mut args = Vec::new();
    for a in argv {
        if a.contains('\0') {
            return Err(Error::Invalid(format!(
                "argument {a:?} contains a NUL byte"
            )));
        }
        args.extend_from_slice(a.as_bytes());
        args.push(0);
    }
    let mut envb = Vec::new();
    for (k, v) in env {
        let valid_key = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(Error::Invalid(format!(
                "bad environment variable name {k:?}"
            )));
        }
        if v.contains('\0') {
            return Err(Error::Invalid(format!(
                "environment variable {k} contains a NUL byte"
            )));
        }
        envb.extend_from_slice(format!("{k}={v}").as_bytes());
        envb.push(0);
    }
    if args.len() + envb.len() > MAX_COMMAND_BYTES {
        return Err(Error::Invalid(format!(
            "command and environment take {} bytes; the guest accepts at most {MAX_COMMAND_BYTES}",
            args.len() + envb.len()
        )));
    }
    let mut w = CpioWriter::new();
    w.dir("virtkit", 0o755)?;
    if !argv.is_empty() {
        w.file("virtkit/argv", 0o644, &args)?;
    }
    if !env.is_empty() {
        w.file("virtkit/env", 0o644, &envb)?;
    }
    Ok(w.finish())
}

/// Reads the base initramfs at `base` and appends the run archive for
/// `argv` and `env` (the kernel unpacks concatenated archives in order).
pub fn run_initramfs(base: &Path, argv: &[String], env: &[(String, String)]) -> Result<Vec<u8>> {
    let mut data = std::fs::read(base).ctx(|| format!("reading initramfs {}", base.display()))?;
    // Each archive must start 4-aligned for the kernel's unpacker.
    while data.len() & 3 != 0 {
        data.push(0);
    }
    data.extend(run_archive(argv, env)?);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn run_archive_contents_via_gnu_cpio() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.cpio");
        let mut w = CpioWriter::new();
        w.file("init", 0o755, b"x").unwrap();
        std::fs::write(&base, w.finish()).unwrap();
        let argv = vec!["sh".to_string(), "-c".into(), "echo 'a b'; exit 7".into()];
        let env = vec![("FOO".to_string(), "bar baz".to_string())];
        let all = run_initramfs(&base, &argv, &env).unwrap();
        // GNU cpio reads one archive per invocation; skip the base one.
        let base_len = std::fs::metadata(&base).unwrap().len() as usize;
        let second = dir.path().join("run.cpio");
        std::fs::write(&second, &all[base_len..]).unwrap();
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let out = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "-F"])
            .arg(&second)
            .current_dir(&x)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(x.join("virtkit/argv")).unwrap(),
            b"sh\0-c\0echo 'a b'; exit 7\0"
        );
        assert_eq!(
            std::fs::read(x.join("virtkit/env")).unwrap(),
            b"FOO=bar baz\0"
        );
    }

    #[test]
    fn run_archive_rejects_bad_input() {
        assert!(run_archive(&["a\0b".into()], &[]).is_err());
        assert!(run_archive(&[], &[("A=B".into(), "c".into())]).is_err());
        assert!(run_archive(&[], &[("".into(), "c".into())]).is_err());
        assert!(run_archive(&["x".repeat(MAX_COMMAND_BYTES + 1)], &[]).is_err());
        let empty = run_archive(&[], &[]).unwrap();
        assert!(!String::from_utf8_lossy(&empty).contains("virtkit/argv"));
    }

    #[test]
    fn missing_base_is_a_clear_error() {
        let e = run_initramfs(Path::new("/nonexistent/initramfs"), &[], &[]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/initramfs"), "{e}");
    }
}
