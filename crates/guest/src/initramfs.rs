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

/// Builds the small archive carrying one run's command: `/virtkit/cmd`,
/// one line of shell ([`command_script`]) that exports `env` and sets the
/// positional parameters to `argv`. An empty `argv` yields an archive
/// without it: the guest then starts an interactive shell.
pub fn run_archive(argv: &[String], env: &[(String, String)]) -> Result<Vec<u8>> {
    let script = command_script(argv, env)?;
    let mut w = CpioWriter::new();
    w.dir("virtkit", 0o755)?;
    if !argv.is_empty() {
        w.file("virtkit/cmd", 0o644, format!("{script}\n").as_bytes())?;
    }
    Ok(w.finish())
}

/// What the init prints on its console when, in waiting mode
/// ([`WAIT_ARG`] on the kernel command line), it is ready to read the
/// command line built by [`command_line`].
pub const READY_MARKER: &[u8] = b"virtkit-init: ready for a command";

/// What a waiting init prints once it has read its command line and put
/// the terminal back in its usual modes: the host sends the user's input
/// only after it (bytes arriving earlier would not be echoed), and removes
/// it from the output (an OSC sequence, which terminals ignore anyway).
pub const GO_MARKER: &[u8] = b"\x1b]6;virtkit-go\x07";

/// The kernel argument that puts the init in waiting mode: it sets up the
/// machine (modules, network), prints [`READY_MARKER`] and reads its
/// command from the console instead of `/virtkit/cmd`.
pub const WAIT_ARG: &str = "virtkit.wait=1";

/// The line a waiting init reads from its console (newline included):
/// `V1 EPOCH SEED SCRIPT`, where EPOCH is the host's time in seconds (the
/// guest sets its clock to it), SEED is hex mixed into the guest's entropy
/// pool, and SCRIPT is [`command_script`] (empty for an interactive shell).
pub fn command_line(
    argv: &[String],
    env: &[(String, String)],
    epoch: u64,
    seed: &[u8],
) -> Result<Vec<u8>> {
    let script = command_script(argv, env)?;
    let seed_hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    // An empty seed would shift the words the init reads.
    let seed_hex = if seed_hex.is_empty() {
        "00".into()
    } else {
        seed_hex
    };
    Ok(format!("V1 {epoch} {seed_hex} {script}\n").into_bytes())
}

/// One line of busybox sh that the init `eval`s: `export`s for `env`, then
/// `set --` with `argv` (empty when `argv` is: an interactive shell). Every
/// word is quoted as `$'...'` with anything but plain characters written
/// `\xHH`, so no byte (newline, quote, backslash, control characters,
/// UTF-8) can end the line or the word early. The shell reads the script
/// without starting a process, which the restored guest's start-up time
/// counts.
pub fn command_script(argv: &[String], env: &[(String, String)]) -> Result<String> {
    let (args, envb) = encode_command(argv, env)?;
    if argv.is_empty() {
        return Ok(String::new());
    }
    let mut out = String::new();
    for kv in envb.split(|&b| b == 0).filter(|w| !w.is_empty()) {
        out.push_str("export ");
        quote(&mut out, kv);
        out.push_str("; ");
    }
    out.push_str("set --");
    for a in args.split(|&b| b == 0).take(argv.len()) {
        out.push(' ');
        quote(&mut out, a);
    }
    Ok(out)
}

fn quote(out: &mut String, word: &[u8]) {
    out.push_str("$'");
    for &b in word {
        if b.is_ascii_alphanumeric() || b"-_./=:,+@%^ ".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('\'');
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

    /// What busybox sh makes of a script: the exported variable and the
    /// arguments, each in brackets.
    fn busybox_eval(script: &str) -> Vec<u8> {
        let probe = format!("{script}; printf '<%s>' \"$FOO\"; printf '[%s]' \"$@\"");
        Command::new("busybox")
            .args(["sh", "-c", &probe])
            .output()
            .unwrap()
            .stdout
    }

    #[test]
    fn command_script_survives_busybox_sh_for_any_bytes() {
        let argv = vec![
            "sh".to_string(),
            "-c".into(),
            "echo 'a b'; exit 7".into(),
            "new\nline\ttab \\ back $HOME `x` \"q\" \u{e9}".into(),
            String::new(),
        ];
        let env = vec![("FOO".to_string(), "bar 'baz'".to_string())];
        let script = command_script(&argv, &env).unwrap();
        assert!(!script.contains('\n'));
        let mut want = b"<bar 'baz'>".to_vec();
        for a in &argv {
            want.extend_from_slice(format!("[{a}]").as_bytes());
        }
        assert_eq!(
            String::from_utf8_lossy(&busybox_eval(&script)),
            String::from_utf8_lossy(&want)
        );
    }

    #[test]
    fn command_line_carries_time_seed_and_script() {
        let argv = vec!["true".to_string()];
        let line = command_line(&argv, &[], 1234, &[0xab, 0x01]).unwrap();
        assert_eq!(line, b"V1 1234 ab01 set -- $'true'\n");
        // An interactive shell: no script; an empty seed still fills its word.
        assert_eq!(command_line(&[], &[], 1, &[]).unwrap(), b"V1 1 00 \n");
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
            std::fs::read_to_string(x.join("virtkit/cmd")).unwrap(),
            "export $'FOO=bar baz'; set -- $'sh' $'-c' $'echo \\x27a b\\x27\\x3b exit 7'\n"
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
