//! `virtkit run`: boot the default Debian riscv64 guest (fetched and built
//! on first use by the `guest` crate), run a command in it, stream its
//! output and exit with its status. Without a command: an interactive
//! shell on the guest's console.

use std::time::Duration;

use anyhow::Context;
use riscv_machine::machine::{self, BoardKind, BootFile, Firmware, MachineConfig, Nic};
use riscv_machine::power::StopReason;

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::instant;
use crate::vm::{open_disk, parse_size};

/// Arguments of `virtkit run`.
#[derive(clap::Args)]
pub struct Args {
    /// Guest architecture: riscv64 (emulated) or x86_64 (KVM, cold boot)
    #[arg(long, default_value = "riscv64")]
    arch: String,
    /// How guest CPUs run: kvm (x86_64 guests), tcg (the emulator:
    /// riscv64 guests), auto (whichever runs the guest's architecture)
    #[arg(long, value_enum, default_value = "auto")]
    accel: crate::vm_x86::Accel,
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
    /// Show the kernel's boot messages (implies --cold: a restored guest
    /// does not boot)
    #[arg(long)]
    verbose: bool,
    /// Boot the kernel from scratch instead of restoring the cached
    /// snapshot of the booted guest (which the first run of each machine
    /// shape builds)
    #[arg(long)]
    cold: bool,
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
    if args.net == NetArg::None && !args.publish.is_empty() {
        anyhow::bail!("-p needs a network: it cannot be used with --net none");
    }
    if crate::run_x86::wants_x86(&args.arch, args.accel)? {
        return crate::run_x86::main(crate::run_x86::Request {
            accel: args.accel,
            cpus: args.cpus,
            mem: args.mem,
            disk: args.disk,
            publish: args.publish,
            net: args.net == NetArg::User,
            verbose: args.verbose,
            timeout: args.timeout,
            command: args.command,
        });
    }
    let hostfwd = args
        .publish
        .iter()
        .map(|p| crate::nic::parse_publish(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let disk = args.disk.as_deref().map(open_disk).transpose()?;
    let mut fetcher =
        guest::Fetcher::new(guest::DEFAULT_SUITE).context("finding the Debian archive")?;
    fetcher.set_progress(Some(crate::progress::downloads()));
    let assets = guest::guest_assets(&fetcher, guest::Arch::Riscv64)
        .context("preparing the default riscv64 guest")?;
    // panic=-1: a kernel panic reboots at once, which ends the run with an
    // error instead of hanging.
    let mut append = String::from("console=ttyS0 panic=-1");
    if !args.verbose {
        append.push_str(" quiet");
    }
    let net = args.net == NetArg::User;
    let nics = |hostfwd: Vec<net::user::HostFwd>| -> anyhow::Result<_> {
        if !net {
            return Ok(Vec::new());
        }
        crate::nic::open_nics(&[crate::nic::NicSpec {
            kind: crate::nic::NicKind::User {
                restrict: false,
                hostfwd,
            },
            mac: None,
        }])
    };
    let machine = Machine {
        harts: args.cpus,
        mem_size: parse_size(&args.mem)?,
        jit: !args.no_jit && std::env::var_os("VIRTKIT_JIT").is_none_or(|v| v != "0"),
    };
    // The snapshot of a run with a disk has an empty drive (read-write or
    // read-only, as the guest's driver sets that up when it probes), which
    // the restore fills with this run's disk.
    let disk_mode = disk
        .as_ref()
        .map(|d| d.read_only || d.backend.is_read_only());
    let outcome = if args.cold || args.verbose {
        let kernel = open(&assets.kernel)?;
        let initrd = guest::run_initramfs(&assets.initramfs, &args.command)
            .context("building the guest's command archive")?;
        let mut cfg = machine.config(kernel, Some(initrd.into()), append, nics(hostfwd)?);
        cfg.disks = disk.into_iter().collect();
        cfg.input = Some(0);
        cfg.output = Box::new(std::io::stdout());
        cfg.timeout = args.timeout.map(Duration::from_secs);
        let _raw = riscv_machine::terminal::RawMode::enter(0);
        machine::run(cfg)?
    } else {
        append.push(' ');
        append.push_str(guest::WAIT_ARG);
        let shape = instant::Shape {
            kernel: &assets.kernel,
            initramfs: &assets.initramfs,
            harts: machine.harts,
            mem_size: machine.mem_size,
            net,
            disk: disk_mode,
        };
        let snap = instant::cached(fetcher.cache_dir(), &shape)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if !snap.exists() {
                let _lock = instant::BuildLock::take(&snap.dir.with_extension("lock"))?;
                if !snap.exists() {
                    eprintln!(
                        "virtkit: booting the guest once to snapshot it (later runs with {} hart(s) and {} restore it)",
                        machine.harts, args.mem
                    );
                    let kernel = open(&assets.kernel)?;
                    let initrd = open(&assets.initramfs)?;
                    let mut cfg =
                        machine.config(kernel, Some(initrd), append.clone(), nics(Vec::new())?);
                    cfg.disks = disk_mode.map(machine::empty_disk).into_iter().collect();
                    instant::build(&snap, cfg)?;
                }
            }
            let line = instant::command_line(&args.command, &[])?;
            let (output, go) = instant::GoFilter::new(Box::new(std::io::stdout()));
            let input = instant::input_with_command(line, 0, go)?;
            let mut cfg = machine.config(
                BootFile::default(),
                None,
                append.clone(),
                nics(hostfwd.clone())?,
            );
            cfg.disks = disk.clone().into_iter().collect();
            cfg.input = Some(input.as_raw_fd());
            cfg.output = Box::new(output);
            cfg.timeout = args.timeout.map(Duration::from_secs);
            let _raw = riscv_machine::terminal::RawMode::enter(0);
            match machine::restore(cfg, &snap.state, &snap.memory) {
                Ok(running) => break running.wait()?,
                // A snapshot this build cannot use (an older format, a
                // damaged file): build a new one, once.
                Err(e) if attempt == 1 => {
                    eprintln!("virtkit: the cached snapshot is unusable ({e}); rebuilding it");
                    snap.discard();
                }
                Err(e) => return Err(e).context("restoring the guest's snapshot"),
            }
        }
    };
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

/// A kernel or initramfs file, read straight into guest RAM when the
/// machine loads it.
fn open(path: &Path) -> anyhow::Result<BootFile> {
    BootFile::open(path).with_context(|| format!("cannot read {}", path.display()))
}

/// What every machine of a run shares, cold or restored.
struct Machine {
    harts: usize,
    mem_size: u64,
    jit: bool,
}

impl Machine {
    /// The default guest's machine: the virt board with the builtin SBI,
    /// virtio rng and console; no console input, output discarded, no
    /// time limit (callers set them).
    fn config(
        &self,
        kernel: BootFile,
        initrd: Option<BootFile>,
        append: String,
        nics: Vec<Nic>,
    ) -> MachineConfig {
        MachineConfig {
            board: BoardKind::Virt,
            harts: self.harts,
            mem_size: self.mem_size,
            kernel_name: "the default guest's kernel".into(),
            kernel,
            initrd,
            append,
            firmware: Firmware::Builtin,
            disks: Vec::new(),
            rng: true,
            virtio_console: true,
            nics,
            output: Box::new(std::io::sink()),
            input: None,
            timeout: None,
            jit: self.jit,
        }
    }
}
