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
enum Command {
    /// Boot a kernel (or a bare-metal ELF with --machine spike)
    Run(RunArgs),
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
    /// Guest architecture (only riscv64 is emulated)
    #[arg(long, default_value = "riscv64")]
    arch: String,
    /// Board to emulate
    #[arg(long, value_enum, default_value = "virt")]
    machine: MachineArg,
    /// Linux kernel Image (gzip allowed), or an ELF program for spike
    #[arg(long)]
    kernel: PathBuf,
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
    /// A disk image (raw or qcow2) on a virtio-blk slot; `FILE,ro` for
    /// read-only. Repeat for more disks.
    #[arg(long = "disk", value_name = "FILE[,ro]")]
    disks: Vec<String>,
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
        Command::Run(a) => run(a),
    }
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

fn read_file(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// Opens `FILE[,ro]` as a virtio disk.
pub fn open_disk(spec: &str) -> anyhow::Result<Disk> {
    let (path, read_only) = match spec.strip_suffix(",ro") {
        Some(p) => (p, true),
        None => (spec.strip_suffix(",rw").unwrap_or(spec), false),
    };
    let meta = std::fs::metadata(path).with_context(|| format!("disk {path}"))?;
    if meta.is_dir() {
        bail!("disk {path} is a directory, not a disk image");
    }
    let opts = if read_only {
        image::OpenOptions::read_only()
    } else {
        image::OpenOptions::read_write()
    };
    let img = image::open(path, &opts).with_context(|| format!("disk {path}"))?;
    let backend: Arc<dyn image::BlockBackend> = Arc::new(img);
    if backend.len() < 512 {
        bail!(
            "disk {path} is not a disk image: its size ({} bytes) is less than one 512-byte sector",
            backend.len()
        );
    }
    Ok(Disk { backend, read_only })
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
    if a.arch != "riscv64" {
        bail!(
            "--arch {}: only riscv64 guests are emulated (x86-64 guests need the KVM monitor)",
            a.arch
        );
    }
    let kernel = read_file("kernel", &a.kernel)?;
    let initrd = a
        .initrd
        .as_deref()
        .map(|p| read_file("initrd", p))
        .transpose()?;
    let firmware = match a.firmware.as_str() {
        "builtin" | "none" => Firmware::Builtin,
        path => Firmware::File {
            name: path.to_string(),
            data: read_file("firmware", Path::new(path))?,
        },
    };
    let disks = a
        .disks
        .iter()
        .map(|d| open_disk(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Like `virtkit run`, a kernel panic reboots (and so ends the run with
    // an error) unless the command line says otherwise.
    let mut append = a.append.clone();
    if !append.split_whitespace().any(|w| w.starts_with("panic=")) {
        if !append.is_empty() {
            append.push(' ');
        }
        append.push_str("panic=-1");
    }
    let board = match a.machine {
        MachineArg::Virt => BoardKind::Virt,
        MachineArg::Spike => BoardKind::Spike,
    };
    let cfg = MachineConfig {
        board,
        harts: a.cpus,
        mem_size: parse_size(&a.mem)?,
        kernel_name: a.kernel.display().to_string(),
        kernel,
        initrd,
        append,
        firmware,
        disks,
        rng: board == BoardKind::Virt,
        virtio_console: board == BoardKind::Virt,
        output: Box::new(std::io::stdout()),
        input: Some(0),
        timeout: a.timeout.map(std::time::Duration::from_secs),
        jit: !a.no_jit && std::env::var_os("VIRTKIT_JIT").is_none_or(|v| v != "0"),
    };
    let outcome = {
        // Raw mode only while the machine runs; the guard restores the
        // terminal on every way out of this block.
        let _raw = riscv_machine::terminal::RawMode::enter(0);
        machine::run(cfg)
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
}
