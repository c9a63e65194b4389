//! `virtkit vm`: virtual machines with an explicit kernel, firmware and
//! disks (`virtkit vm run ...`), like `qemu-system-riscv64 -M virt`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use riscv_machine::machine::{self, BoardKind, Disk, Firmware, MachineConfig};
use riscv_machine::power::StopReason;

/// Arguments of `virtkit vm`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
// Each subcommand's arguments are built only when it runs (as in main.rs).
#[command(defer = true)]
enum Command {
    /// Boot a kernel (or a bare-metal ELF with --machine spike)
    Run(Box<RunArgs>),
    /// Print the state of the VM behind an API socket (Not started,
    /// Running, Paused)
    State(virtkit::api_client::SockArgs),
    /// Pause the VM behind an API socket (every hart stops)
    Pause(virtkit::api_client::SockArgs),
    /// Resume the VM behind an API socket
    Resume(virtkit::api_client::SockArgs),
    /// Snapshot the VM behind an API socket into DIR (DIR/state and
    /// DIR/memory; a running VM is paused meanwhile)
    Snapshot(virtkit::api_client::SnapshotArgs),
    /// Start a new VM from a snapshot directory (DIR/state, DIR/memory),
    /// running, with the disks and networks it was taken with
    Restore(RestoreArgs),
}

/// Arguments of `virtkit vm restore`.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The snapshot directory (written by `virtkit vm snapshot`)
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Serve the control API on this Unix socket (created mode 0600)
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Run guest code in the interpreter only (also: VIRTKIT_JIT=0)
    #[arg(long = "no-jit")]
    no_jit: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum MachineArg {
    /// QEMU's virt board: CLINT, PLIC, 16550 UART, virtio-mmio, test finisher
    Virt,
    /// Bare metal: an ELF program in M-mode with HTIF (tohost/fromhost)
    Spike,
}

/// Arguments of `virtkit vm run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Guest architecture: riscv64 (emulated) or x86_64 (on KVM)
    #[arg(long, default_value = "riscv64")]
    arch: String,
    // --accel and --kvm-device (vm_x86.rs).
    #[command(flatten)]
    accel: crate::vm_x86::AccelArgs,
    /// Board to emulate
    #[arg(long, value_enum, default_value = "virt")]
    machine: MachineArg,
    /// Linux kernel Image (gzip allowed), or an ELF program for spike
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Serve the control API (Firecracker's endpoints, HTTP on a Unix
    /// socket created mode 0600) on PATH. Without --kernel the VM waits to
    /// be configured and started (or loaded from a snapshot) through it
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Initial ramdisk (cpio archive, possibly compressed)
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line; the last `console=` also picks where keys go:
    /// `console=hvc0` to the virtio console, anything else to the UART
    #[arg(long, default_value = "")]
    append: String,
    /// M-mode firmware: `builtin` (the machine's own SBI) or an OpenSBI
    /// file such as /usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin
    /// (or fw_jump.bin: the kernel is loaded where it jumps, RAM + 2 MiB)
    #[arg(long, default_value = "builtin")]
    firmware: String,
    /// A disk image (raw or qcow2) on a virtio-blk slot. Options after
    /// commas: ro (or readonly=on), format=raw|qcow2; a comma in the file
    /// name is written ',,'. Repeat for more disks. The image is locked as
    /// QEMU locks it: no other writer (VM, virtkit img, qemu-img) meanwhile
    #[arg(long = "disk", value_name = "FILE[,ro]")]
    disks: Vec<String>,
    #[arg(long = "nic", value_name = "TYPE[,OPTION...]", help = crate::nic::NIC_HELP)]
    nics: Vec<String>,
    /// Number of harts (each runs on its own host thread)
    #[arg(long, default_value_t = 1)]
    cpus: usize,
    /// RAM size: bytes, or with a K, M or G suffix
    #[arg(long, default_value = "512M")]
    mem: String,
    /// Stop the guest after this many seconds (exit status 124)
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Run guest code in the interpreter only, without translating it to
    /// host code (also: VIRTKIT_JIT=0); slower, same results
    #[arg(long = "no-jit")]
    no_jit: bool,
}

pub fn main(args: Args) -> anyhow::Result<i32> {
    match args.command {
        Command::Run(a) => run(*a),
        Command::State(a) => virtkit::api_client::state(&a),
        Command::Pause(a) => virtkit::api_client::pause(&a),
        Command::Resume(a) => virtkit::api_client::resume(&a),
        Command::Snapshot(a) => virtkit::api_client::snapshot(&a),
        Command::Restore(a) => restore(a),
    }
}

fn jit_default(no_jit: bool) -> bool {
    !no_jit && std::env::var_os("VIRTKIT_JIT").is_none_or(|v| v != "0")
}

/// `virtkit vm restore DIR`: a new VM from a snapshot, running.
fn restore(a: RestoreArgs) -> anyhow::Result<i32> {
    // An x86 snapshot goes to the KVM board (vm_x86.rs).
    let state = a.dir.join(vmm::api::STATE_FILE);
    if x86_machine::snapshot::board_of(&state).is_ok_and(|b| b == x86_machine::snapshot::BOARD_NAME)
    {
        return crate::vm_x86::restore(&a.dir, a.api_sock.as_deref());
    }
    let defaults = crate::vm_api::Defaults {
        jit: jit_default(a.no_jit),
    };
    let (m, config) = crate::vm_api::restore(
        &a.dir.join(vmm::api::STATE_FILE),
        &a.dir.join(vmm::api::MEMORY_FILE),
        defaults,
        false,
    )?;
    let m = Arc::new(m);
    let slot = Arc::new(crate::vm_api::Slot::default());
    slot.set(m.clone());
    let _server = a
        .api_sock
        .as_deref()
        .map(|p| {
            crate::vm_api::serve(
                p,
                slot.clone(),
                defaults,
                vmm::api::InitialState::Running(config),
            )
        })
        .transpose()?;
    let outcome = {
        let _raw = riscv_machine::terminal::RawMode::enter(0);
        m.wait()
    }?;
    Ok(exit_status(&outcome.reason))
}

/// Adds `panic=-1` unless the command line sets `panic=`: like `virtkit
/// run`, a kernel panic reboots (and so ends the run with an error).
pub fn with_panic_reboot(mut append: String) -> String {
    if !append.split_whitespace().any(|w| w.starts_with("panic=")) {
        if !append.is_empty() {
            append.push(' ');
        }
        append.push_str("panic=-1");
    }
    append
}

/// Parses a memory size like QEMU's `-m`: a plain number is MiB when small,
/// suffixes K, M, G (powers of 1024).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => bail!("invalid memory size {s:?}: unknown suffix {c:?} (use K, M or G)"),
            };
            (&t[..i], m)
        }
        // QEMU reads a bare number as MiB.
        _ => (t, 1 << 20),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid memory size {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("memory size {s:?} is too large"))
}

fn open_boot_file(what: &str, path: &Path) -> anyhow::Result<riscv_machine::machine::BootFile> {
    riscv_machine::machine::BootFile::open(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))
}

fn read_file(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// A parsed `--disk FILE[,OPTION...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: String,
    pub read_only: bool,
    /// `format=raw|qcow2`; probed when absent.
    pub format: Option<image::Format>,
}

/// Help text for `--disk`, shared by `vm run` and `run`.
pub const DISK_OPTIONS: &str = "ro (or readonly=on), rw (or readonly=off), format=raw|qcow2";

/// Parses `FILE[,OPTION...]` like QEMU's `-drive file=...`: options are
/// comma separated and a comma inside the file name is written twice
/// (`my,,disk.img` is `my,disk.img`). Options: `ro`/`readonly=on`,
/// `rw`/`readonly=off`, `format=raw|qcow2`.
pub fn parse_disk_spec(spec: &str) -> anyhow::Result<DiskSpec> {
    // Split on single commas; ",," is a literal comma.
    let mut fields = vec![String::new()];
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                fields.last_mut().expect("never empty").push(',');
            } else {
                fields.push(String::new());
            }
        } else {
            fields.last_mut().expect("never empty").push(c);
        }
    }
    let mut fields = fields.into_iter();
    let path = fields.next().unwrap_or_default();
    if path.is_empty() {
        bail!("--disk {spec:?}: no file name (expected FILE[,OPTION...])");
    }
    let mut d = DiskSpec {
        path,
        read_only: false,
        format: None,
    };
    for opt in fields {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        match (key, value) {
            ("ro", None) | ("readonly", Some("on")) => d.read_only = true,
            ("rw", None) | ("readonly", Some("off")) => d.read_only = false,
            ("readonly", Some(v)) => {
                bail!("--disk {spec:?}: readonly={v:?}: expected on or off")
            }
            ("format", Some(f)) => {
                d.format =
                    Some(image::Format::from_name(f).with_context(|| format!("--disk {spec:?}"))?)
            }
            ("", None) => {
                bail!("--disk {spec:?}: empty option (a comma in the file name is written ',,')")
            }
            _ => bail!(
                "--disk {spec:?}: unknown option {opt:?} (known: {DISK_OPTIONS}; \
                 a comma in the file name is written ',,')"
            ),
        }
    }
    Ok(d)
}

/// Opens `FILE[,OPTION...]` (see [`parse_disk_spec`]) as a virtio disk.
pub fn open_disk(spec: &str) -> anyhow::Result<Disk> {
    open_parsed_disk(&parse_disk_spec(spec)?)
}

/// Opens a parsed disk as a guest device does in QEMU: nobody else may
/// write the image while the machine runs (a second `--disk` of the same
/// file included), and a read-only disk refuses writers too.
pub fn open_parsed_disk(d: &DiskSpec) -> anyhow::Result<Disk> {
    let path = d.path.as_str();
    let meta = std::fs::metadata(path).with_context(|| format!("disk {path}"))?;
    if meta.is_dir() {
        bail!("disk {path} is a directory, not a disk image");
    }
    let opts = image::OpenOptions {
        read_only: d.read_only,
        format: d.format,
        sharing: image::Sharing::Device,
        ..Default::default()
    };
    let img = image::open(path, &opts).with_context(|| format!("disk {path}"))?;
    let img = Arc::new(img);
    let backend: Arc<dyn image::BlockBackend> = img.clone();
    if backend.len() < 512 {
        bail!(
            "disk {path} is not a disk image: its size ({} bytes) is less than one 512-byte sector",
            backend.len()
        );
    }
    Ok(Disk {
        backend,
        read_only: d.read_only,
        // Lets a snapshot take a qcow2 internal snapshot of it.
        image: Some(img),
    })
}

/// Maps how the machine stopped to an exit status, printing why when it
/// was not a power-off.
pub fn exit_status(reason: &StopReason) -> i32 {
    match reason {
        StopReason::PowerOff(0) => 0,
        // Exit statuses are 8 bits; keep a failure a failure.
        StopReason::PowerOff(s) if s & 0xff == 0 => 1,
        StopReason::PowerOff(s) => (s & 0xff) as i32,
        StopReason::Reset => {
            eprintln!(
                "virtkit: the guest reset the machine (reboot, or a kernel panic with panic=-1)"
            );
            1
        }
        StopReason::Quit => 0,
        StopReason::Timeout => {
            eprintln!("virtkit: the guest did not stop within the timeout");
            124
        }
        StopReason::Fatal(m) => {
            eprintln!("virtkit: {m}");
            1
        }
    }
}

fn run(a: RunArgs) -> anyhow::Result<i32> {
    // x86_64 guests go to the KVM monitor (vm_x86.rs).
    if crate::vm_x86::is_x86_64(&a.arch) {
        return crate::vm_x86::run(crate::vm_x86::Request {
            accel: a.accel,
            kernel: a.kernel,
            api_sock: a.api_sock,
            initrd: a.initrd,
            append: a.append,
            cpus: a.cpus,
            mem: a.mem,
            disks: a.disks,
            timeout: a.timeout,
            nics: a.nics,
            spike: a.machine == MachineArg::Spike,
        });
    }
    crate::vm_x86::check_emulated(&a.accel, &a.arch)?;
    if a.arch != "riscv64" {
        bail!(
            "--arch {}: only riscv64 guests are emulated (x86-64 guests need the KVM monitor)",
            a.arch
        );
    }
    // Disk syntax first: a typo is reported before any file is read.
    let disk_specs = a
        .disks
        .iter()
        .map(|d| parse_disk_spec(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nic_specs = a
        .nics
        .iter()
        .map(|n| crate::nic::parse_nic(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if a.machine == MachineArg::Spike && !nic_specs.is_empty() {
        bail!("--nic needs the virt machine (spike has no virtio slots)");
    }
    if a.machine == MachineArg::Spike && a.api_sock.is_some() {
        bail!("--api-sock needs the virt machine");
    }
    let defaults = crate::vm_api::Defaults {
        jit: jit_default(a.no_jit),
    };
    let Some(kernel_path) = a.kernel.clone() else {
        // Configured and started (or loaded) through the API.
        let Some(sock) = &a.api_sock else {
            bail!(
                "--kernel is required (or --api-sock, to configure the VM through the control API)"
            );
        };
        let slot = Arc::new(crate::vm_api::Slot::default());
        let _server = crate::vm_api::serve(
            sock,
            slot.clone(),
            defaults,
            vmm::api::InitialState::AwaitingConfig,
        )?;
        let m = slot.wait();
        let outcome = {
            let _raw = riscv_machine::terminal::RawMode::enter(0);
            m.wait()
        }?;
        return Ok(exit_status(&outcome.reason));
    };
    // Read straight into guest RAM when the machine loads them.
    let kernel = open_boot_file("kernel", &kernel_path)?;
    let initrd = a
        .initrd
        .as_deref()
        .map(|p| open_boot_file("initrd", p))
        .transpose()?;
    let firmware = match a.firmware.as_str() {
        "builtin" | "none" => Firmware::Builtin,
        path => Firmware::File {
            name: path.to_string(),
            data: read_file("firmware", Path::new(path))?,
        },
    };
    let disks = disk_specs
        .iter()
        .map(open_parsed_disk)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nics = crate::nic::open_nics(&nic_specs)?;
    let append = with_panic_reboot(a.append.clone());
    let board = match a.machine {
        MachineArg::Virt => BoardKind::Virt,
        MachineArg::Spike => BoardKind::Spike,
    };
    let cfg = MachineConfig {
        board,
        harts: a.cpus,
        mem_size: parse_size(&a.mem)?,
        kernel_name: kernel_path.display().to_string(),
        kernel,
        initrd,
        append,
        firmware,
        disks,
        rng: board == BoardKind::Virt,
        virtio_console: board == BoardKind::Virt,
        nics,
        output: Box::new(std::io::stdout()),
        input: Some(0),
        timeout: a.timeout.map(std::time::Duration::from_secs),
        jit: defaults.jit,
    };
    let Some(sock) = &a.api_sock else {
        let outcome = {
            // Raw mode only while the machine runs; the guard restores the
            // terminal on every way out of this block.
            let _raw = riscv_machine::terminal::RawMode::enter(0);
            machine::run(cfg)
        }?;
        return Ok(exit_status(&outcome.reason));
    };
    let config = crate::vm_api::describe(
        &kernel_path,
        a.initrd.as_deref(),
        &cfg.append,
        cfg.harts,
        cfg.mem_size,
        &disk_specs,
        &a.nics,
    )?;
    let m = Arc::new(machine::start(cfg)?);
    let slot = Arc::new(crate::vm_api::Slot::default());
    slot.set(m.clone());
    let _server = crate::vm_api::serve(
        sock,
        slot,
        defaults,
        vmm::api::InitialState::Running(config),
    )?;
    let outcome = {
        let _raw = riscv_machine::terminal::RawMode::enter(0);
        m.wait()
    }?;
    Ok(exit_status(&outcome.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("256").unwrap(), 256 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn disk_specs() {
        let d = parse_disk_spec("a.img").unwrap();
        assert_eq!(
            (d.path.as_str(), d.read_only, d.format),
            ("a.img", false, None)
        );
        assert!(parse_disk_spec("a.img,ro").unwrap().read_only);
        assert!(parse_disk_spec("a.img,readonly=on").unwrap().read_only);
        assert!(!parse_disk_spec("a.img,ro,rw").unwrap().read_only);
        let d = parse_disk_spec("my,,disk.qcow2,format=qcow2,ro").unwrap();
        assert_eq!(d.path, "my,disk.qcow2");
        assert_eq!(d.format, Some(image::Format::Qcow2));
        assert!(d.read_only);
        let e = format!("{:#}", parse_disk_spec("a.img,foo=bar").unwrap_err());
        assert!(e.contains("unknown option \"foo=bar\""), "{e}");
        assert!(parse_disk_spec(",ro").is_err());
        assert!(parse_disk_spec("a.img,").is_err());
        assert!(parse_disk_spec("a.img,readonly=yes").is_err());
        assert!(parse_disk_spec("a.img,format=vmdk").is_err());
    }
}
