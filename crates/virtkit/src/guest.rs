//! `virtkit guest`: Debian guest assets (kernel, busybox, initramfs).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use guest::{Arch, Fetcher};

/// Arguments of `virtkit guest`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum ArchArg {
    Riscv64,
    Amd64,
}

impl From<ArchArg> for Arch {
    fn from(a: ArchArg) -> Arch {
        match a {
            ArchArg::Riscv64 => Arch::Riscv64,
            ArchArg::Amd64 => Arch::Amd64,
        }
    }
}

#[derive(clap::Args)]
struct Common {
    /// Debian architecture
    #[arg(long, value_enum, default_value = "riscv64")]
    arch: ArchArg,
    /// Debian suite the packages come from
    #[arg(long, default_value = guest::DEFAULT_SUITE)]
    suite: String,
    /// No progress bar or notes on stderr
    #[arg(long, short)]
    quiet: bool,
}

impl Common {
    fn fetcher(&self) -> anyhow::Result<Fetcher> {
        let mut f = Fetcher::new(&self.suite).context("finding the Debian archive")?;
        if !self.quiet {
            f.set_progress(Some(crate::progress::downloads()));
        }
        Ok(f)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    /// The kernel (riscv64: Image, amd64: bzImage)
    Kernel,
    /// The base initramfs
    Initramfs,
    /// The kernel's configuration
    Config,
    /// Debian's static busybox
    Busybox,
}

#[derive(Subcommand)]
// Each subcommand's arguments are built only when it runs (as in main.rs).
#[command(defer = true)]
enum Cmd {
    /// Download, verify and build the guest assets; print where they are
    Fetch {
        #[command(flatten)]
        common: Common,
    },
    /// Print the path of one asset (fetching it first if needed)
    Path {
        what: What,
        #[command(flatten)]
        common: Common,
    },
    /// Write an initramfs that runs COMMAND in the default guest (for
    /// `virtkit vm run --initrd` or `qemu-system-riscv64 -initrd`)
    Initramfs {
        /// Output file
        #[arg(long, short)]
        output: PathBuf,
        /// Environment variable for the command (repeatable)
        #[arg(long, short, value_name = "KEY=VALUE")]
        env: Vec<String>,
        #[command(flatten)]
        common: Common,
        /// The command and its arguments (none: an interactive shell)
        #[arg(last = true)]
        command: Vec<String>,
    },
}

pub fn main(args: Args) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match args.command {
        Cmd::Fetch { common } => {
            let f = common.fetcher()?;
            writeln!(
                out,
                "mirror     {} ({}, signed by {})",
                f.mirror().uri,
                f.suite(),
                f.mirror().keyring.display()
            )?;
            let arch: Arch = common.arch.into();
            let a = guest::guest_assets(&f, arch)?;
            for (p, v) in &a.packages {
                writeln!(out, "package    {p} {v}")?;
            }
            writeln!(out, "kernel     {}", a.kernel.display())?;
            writeln!(out, "initramfs  {}", a.initramfs.display())?;
            writeln!(out, "config     {}", a.config.display())?;
            writeln!(out, "release    {}", a.kernel_release)?;
            writeln!(out, "modules    {}", a.modules.join(" "))?;
            let bb = guest::busybox_with(&f, arch)?;
            writeln!(out, "busybox    {}", bb.display())?;
        }
        Cmd::Path { what, common } => {
            let f = common.fetcher()?;
            let arch: Arch = common.arch.into();
            let p = match what {
                What::Busybox => guest::busybox_with(&f, arch)?,
                What::Kernel => guest::guest_assets(&f, arch)?.kernel,
                What::Initramfs => guest::guest_assets(&f, arch)?.initramfs,
                What::Config => guest::guest_assets(&f, arch)?.config,
            };
            writeln!(out, "{}", p.display())?;
        }
        Cmd::Initramfs {
            output,
            env,
            common,
            command,
        } => {
            let env = env
                .iter()
                .map(|e| {
                    e.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .with_context(|| format!("--env {e:?}: expected KEY=VALUE"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let f = common.fetcher()?;
            let a = guest::guest_assets(&f, common.arch.into())?;
            let data = guest::run_initramfs_with_env(&a.initramfs, &command, &env)?;
            std::fs::write(&output, data)
                .with_context(|| format!("writing {}", output.display()))?;
        }
    }
    Ok(0)
}
