//! `virtkit emu`: process-level emulation of riscv64 Linux programs.

use anyhow::Context;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Arguments of `virtkit emu`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
// Each subcommand's arguments are built only when it runs (as in main.rs).
#[command(defer = true)]
enum Cmd {
    /// Run a riscv64 Linux program on this host (like qemu-riscv64)
    User(UserArgs),
}

/// Arguments of `virtkit emu user`, after qemu-riscv64's where they exist.
#[derive(clap::Args)]
struct UserArgs {
    /// Sysroot holding the guest's dynamic linker and libraries (like
    /// qemu's -L); absolute paths the guest opens are looked up there first
    #[arg(short = 'L', value_name = "SYSROOT")]
    sysroot: Option<PathBuf>,
    /// Set a variable in the guest's environment
    #[arg(short = 'E', value_name = "VAR=VALUE")]
    set_env: Vec<String>,
    /// Remove a variable from the guest's environment
    #[arg(short = 'U', value_name = "VAR")]
    unset_env: Vec<String>,
    /// The guest's argv[0] (default: PROGRAM as given)
    #[arg(short = '0', value_name = "ARGV0")]
    argv0: Option<OsString>,
    /// Stack size in bytes (default: the stack rlimit)
    #[arg(short = 's', value_name = "SIZE")]
    stack_size: Option<u64>,
    /// Log every system call, unsupported requests and fatal signals to
    /// stderr (also: VIRTKIT_STRACE=1)
    #[arg(long = "strace", short = 'd')]
    strace: bool,
    /// Run guest code in the interpreter only, without translating it to
    /// host code (also: VIRTKIT_JIT=0); slower, same results
    #[arg(long = "no-jit")]
    no_jit: bool,
    /// Translate a block once it has run N times; before, the interpreter
    /// runs it (code that runs a few times costs less interpreted than
    /// translated); 1 translates every block on its first run (also:
    /// VIRTKIT_JIT_THRESHOLD=N)
    #[arg(long = "jit-threshold", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jit_threshold: Option<u32>,
    /// The program, then its arguments (passed as they are, even those
    /// starting with '-')
    #[arg(
        value_name = "PROGRAM [ARGS]...",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

pub fn main(args: Args) -> anyhow::Result<i32> {
    match args.cmd {
        Cmd::User(u) => user(u),
    }
}

fn user(u: UserArgs) -> anyhow::Result<i32> {
    let mut command = u.command.into_iter();
    let program = PathBuf::from(command.next().context("no program given")?);
    let mut argv: Vec<Vec<u8>> = vec![u
        .argv0
        .unwrap_or_else(|| program.clone().into_os_string())
        .as_bytes()
        .to_vec()];
    argv.extend(command.map(|a| a.as_bytes().to_vec()));

    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for var in &u.unset_env {
        env.retain(|(k, _)| k.as_bytes() != var.as_bytes());
    }
    for kv in &u.set_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("-E {kv}: expected VAR=VALUE"))?;
        env.retain(|(ek, _)| ek.as_bytes() != k.as_bytes());
        env.push((k.into(), v.into()));
    }
    let envp: Vec<Vec<u8>> = env
        .iter()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            b
        })
        .collect();

    let strace = u.strace || std::env::var_os("VIRTKIT_STRACE").is_some_and(|v| v != "0");
    let cfg = linux_user::Config {
        sysroot: u.sysroot,
        strace,
        self_exe: std::env::current_exe().context("cannot find the virtkit executable")?,
        stack_size: u.stack_size,
        jit: !u.no_jit && std::env::var_os("VIRTKIT_JIT").is_none_or(|v| v != "0"),
        jit_threshold: jit_threshold(u.jit_threshold)?,
    };
    // `run` only returns when the program could not be started; the guest's
    // exit status and fatal signals end this process directly.
    match linux_user::run(cfg, &program, argv, envp) {
        Ok(never) => match never {},
        // The error names the file and what is wrong with it.
        Err(e) => Err(e.into()),
    }
}

/// `--jit-threshold`, else `VIRTKIT_JIT_THRESHOLD`, else the default.
fn jit_threshold(arg: Option<u32>) -> anyhow::Result<u32> {
    if let Some(n) = arg {
        return Ok(n);
    }
    match std::env::var("VIRTKIT_JIT_THRESHOLD") {
        Ok(v) => v.parse::<u32>().ok().filter(|&n| n >= 1).with_context(|| {
            format!("VIRTKIT_JIT_THRESHOLD={v}: not a whole number of at least 1")
        }),
        Err(_) => Ok(riscv::DEFAULT_JIT_THRESHOLD),
    }
}
