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
    let (args, envb) = encode_command(argv, env)?;
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

/// What the init prints on its console when, in waiting mode
/// ([`WAIT_ARG`] on the kernel command line), it is ready to read the
/// command line built by [`command_line`].
pub const READY_MARKER: &[u8] = b"virtkit-init: ready for a command";

/// The kernel argument that puts the init in waiting mode: it sets up the
/// machine (modules, network), prints [`READY_MARKER`] and reads its
/// command from the console instead of `/virtkit/argv`.
pub const WAIT_ARG: &str = "virtkit.wait=1";

/// The line a waiting init reads from its console (newline included):
/// `V1 EPOCH SEED BASE64`, where EPOCH is the host's time in seconds (the
/// guest sets its clock to it), SEED is hex mixed into the guest's entropy
/// pool, and BASE64 encodes the environment entries, the word
/// `virtkit-argv`, then the arguments, each NUL-terminated (nothing at all
/// for an interactive shell).
pub fn command_line(
    argv: &[String],
    env: &[(String, String)],
    epoch: u64,
    seed: &[u8],
) -> Result<Vec<u8>> {
    let (args, envb) = encode_command(argv, env)?;
    let mut payload = envb;
    if !argv.is_empty() {
        payload.extend_from_slice(b"virtkit-argv\0");
        payload.extend_from_slice(&args);
    } else {
        payload.clear();
    }
    let seed_hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let mut line = format!("V1 {epoch} {seed_hex} ").into_bytes();
    line.extend_from_slice(base64(&payload).as_bytes());
    line.push(b'\n');
    Ok(line)
}

/// Standard base64 with padding (what busybox `base64 -d` reads). A dozen
/// lines here rather than a dependency for one call.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The NUL-terminated arguments and `KEY=VALUE` entries, checked.
fn encode_command(argv: &[String], env: &[(String, String)]) -> Result<(Vec<u8>, Vec<u8>)> {
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
    Ok((args, envb))
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
    fn command_line_decodes_with_base64_and_splits_like_the_init() {
        let argv = vec!["sh".to_string(), "-c".into(), "echo 'a b'; exit 7".into()];
        let env = vec![("FOO".to_string(), "bar baz".to_string())];
        let line = command_line(&argv, &env, 1234, &[0xab, 0x01]).unwrap();
        let text = String::from_utf8(line).unwrap();
        assert!(text.ends_with('\n'));
        let words: Vec<&str> = text.trim_end().split(' ').collect();
        assert_eq!(&words[..3], &["V1", "1234", "ab01"]);
        let out = Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(words[3].as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert_eq!(
            out.stdout,
            b"FOO=bar baz\0virtkit-argv\0sh\0-c\0echo 'a b'; exit 7\0"
        );
        for n in 0..7 {
            let data: Vec<u8> = (0..n).map(|i| i * 37).collect();
            let enc = base64(&data);
            assert_eq!(enc.len() % 4, 0);
        }
        assert_eq!(base64(b"hello\0world"), "aGVsbG8Ad29ybGQ=");
        // An interactive shell: no payload at all.
        let shell = command_line(&[], &env, 1, &[]).unwrap();
        assert_eq!(shell, b"V1 1  \n");
        assert!(command_line(&["a\0b".to_string()], &[], 1, &[]).is_err());
    }

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
