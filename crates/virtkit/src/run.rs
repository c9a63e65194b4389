//! `virtkit run`: boot the default Debian riscv64 guest (fetched and built
//! on first use by the `guest` crate), run a command in it, stream its
//! output and exit with its status. Without a command: an interactive
//! shell on the guest's console.

use std::time::Duration;

use anyhow::Context;
use riscv_machine::machine::{self, BoardKind, Firmware, MachineConfig};
use riscv_machine::power::StopReason;

use crate::vm::{open_disk, parse_size};

/// Arguments of `virtkit run`.
#[derive(clap::Args)]
pub struct Args {
    /// Number of harts
    #[arg(long, default_value_t = 1)]
    cpus: usize,
    /// RAM size: bytes, or with a K, M or G suffix
    #[arg(long, default_value = "512M")]
    mem: String,
    /// A disk image (raw or qcow2, ext4 inside) mounted at /mnt in the
    /// guest; `FILE,ro` for read-only
    #[arg(long, value_name = "FILE[,ro]")]
    disk: Option<String>,
    /// Networking: `user` (rootless NAT, the default: guest 10.0.2.15,
    /// host loopback at 10.0.2.2, DNS at 10.0.2.3) or `none`
    #[arg(long, value_enum, default_value = "user")]
    net: NetArg,
    /// Publish a guest port on the host, as `podman run -p`:
    /// [HOSTIP:]HOSTPORT:GUESTPORT[/udp] (HOSTIP defaults to 127.0.0.1)
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOSTIP:]HOSTPORT:GUESTPORT[/udp]"
    )]
    publish: Vec<String>,
    /// Show the kernel's boot messages
    #[arg(long)]
    verbose: bool,
    /// Stop the guest after this many seconds (exit status 124)
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Run guest code in the interpreter only, without translating it to
    /// host code (also: VIRTKIT_JIT=0); slower, same results
    #[arg(long = "no-jit")]
    no_jit: bool,
    /// The command to run in the guest (after `--`)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NetArg {
    /// User-mode networking (NAT through host sockets, no privileges)
    User,
    /// No network card
    None,
}

/// Exit status when the guest did not finish its command: it panicked,
/// rebooted or the emulation failed (as `podman run` uses 125 for errors
/// of its own).
const MACHINE_FAILURE: i32 = 125;

pub fn main(args: Args) -> anyhow::Result<i32> {
    let hostfwd = args
        .publish
        .iter()
        .map(|p| crate::nic::parse_publish(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.net == NetArg::None && !hostfwd.is_empty() {
        anyhow::bail!("-p needs a network: it cannot be used with --net none");
    }
    let disk = args.disk.as_deref().map(open_disk).transpose()?;
    let mut fetcher =
        guest::Fetcher::new(guest::DEFAULT_SUITE).context("finding the Debian archive")?;
    fetcher.set_progress(Some(crate::progress::downloads()));
    let assets = guest::guest_assets(&fetcher, guest::Arch::Riscv64)
        .context("preparing the default riscv64 guest")?;
    let kernel = std::fs::read(&assets.kernel)
        .with_context(|| format!("cannot read {}", assets.kernel.display()))?;
    let initrd = guest::run_initramfs(&assets.initramfs, &args.command)
        .context("building the guest's command archive")?;
    // panic=-1: a kernel panic reboots at once, which ends the run with an
    // error instead of hanging.
    let mut append = String::from("console=ttyS0 panic=-1");
    if !args.verbose {
        append.push_str(" quiet");
    }
    let nics = match args.net {
        NetArg::None => Vec::new(),
        NetArg::User => crate::nic::open_nics(&[crate::nic::NicSpec {
            kind: crate::nic::NicKind::User {
                restrict: false,
                hostfwd,
            },
            mac: None,
        }])?,
    };
    let cfg = MachineConfig {
        board: BoardKind::Virt,
        harts: args.cpus,
        mem_size: parse_size(&args.mem)?,
        kernel_name: assets.kernel.display().to_string(),
        kernel,
        initrd: Some(initrd),
        append,
        firmware: Firmware::Builtin,
        disks: disk.into_iter().collect(),
        rng: true,
        virtio_console: true,
        nics,
        output: Box::new(std::io::stdout()),
        input: Some(0),
        timeout: args.timeout.map(Duration::from_secs),
        jit: !args.no_jit && std::env::var_os("VIRTKIT_JIT").is_none_or(|v| v != "0"),
    };
    let outcome = {
        let _raw = riscv_machine::terminal::RawMode::enter(0);
        machine::run(cfg)
    }?;
    Ok(match outcome.reason {
        StopReason::PowerOff(s) if s != 0 && s & 0xff == 0 => 1,
        StopReason::PowerOff(s) => (s & 0xff) as i32,
        StopReason::Reset => {
            eprintln!("virtkit: the guest rebooted before the command finished (kernel panic?)");
            MACHINE_FAILURE
        }
        StopReason::Quit => 130,
        StopReason::Timeout => {
            eprintln!("virtkit: the guest did not finish within the timeout");
            124
        }
        StopReason::Fatal(m) => {
            eprintln!("virtkit: {m}");
            MACHINE_FAILURE
        }
    })
}
