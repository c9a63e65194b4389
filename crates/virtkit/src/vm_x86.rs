//! `virtkit vm run --arch x86_64`: the KVM monitor (crate `x86-machine`),
//! and the accelerator choice (`--accel`) shared with the riscv64 path.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use x86_machine::probe::ProbeReport;
use x86_machine::{Disk, MachineConfig, StopReason};

/// `--accel` and `--kvm-device`, flattened into `vm run`'s arguments.
#[derive(clap::Args, Clone)]
pub struct AccelArgs {
    /// How guest CPUs run: kvm (hardware-assisted, x86_64 guests on an
    /// x86-64 host), tcg (the emulator: riscv64 guests), auto (kvm for the
    /// host's own architecture, the emulator otherwise)
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// The KVM device to open (another path to use a KVM elsewhere, or a
    /// missing one to see how its absence is reported)
    #[arg(long, value_name = "PATH", default_value = x86_machine::DEFAULT_KVM_PATH)]
    pub kvm_device: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Kvm,
    Tcg,
    Auto,
}

/// Whether `--arch` names x86-64 (QEMU's and Debian's spellings).
pub fn is_x86_64(arch: &str) -> bool {
    matches!(arch, "x86_64" | "x86-64" | "amd64")
}

/// Refuses an accelerator the riscv64 emulator path cannot honour.
pub fn check_emulated(accel: &AccelArgs, arch: &str) -> anyhow::Result<()> {
    if accel.accel == Accel::Kvm {
        bail!(
            "--accel kvm: KVM runs guests of the host's architecture (x86_64), \
             not {arch}; use --accel tcg or auto"
        );
    }
    Ok(())
}

/// What `vm run --arch x86_64` was asked to do.
pub struct Request {
    pub accel: AccelArgs,
    /// None: configured (or loaded from a snapshot) through the API.
    pub kernel: Option<PathBuf>,
    /// Serve the control API on this socket.
    pub api_sock: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: String,
    pub cpus: usize,
    pub mem: String,
    pub disks: Vec<String>,
    pub timeout: Option<u64>,
    pub nics: Vec<String>,
    /// `--machine spike` (a riscv-only board).
    pub spike: bool,
}

/// Says, on stderr, when this KVM emulates guest ring 0.
fn warn_if_emulated(path: &std::path::Path, r: &ProbeReport) {
    if r.ring0_emulated {
        eprintln!(
            "virtkit: warning: {} emulates guest ring 0 (about {:.1} million instructions/s; \
             ring 3 runs natively): small guests run well, a Linux kernel takes hours to boot",
            path.display(),
            r.ring0_ips() / 1e6
        );
    }
}

/// Runs the probe, says what it found and remembers it for this boot.
fn probe(path: &std::path::Path) -> anyhow::Result<ProbeReport> {
    let r = x86_machine::probe::probe(path).map_err(flat)?;
    warn_if_emulated(path, &r);
    if let Ok(dir) = guest::fetch::default_cache_dir() {
        x86_machine::probe::remember(path, &dir, &r);
    }
    Ok(r)
}

pub fn run(req: Request) -> anyhow::Result<i32> {
    if req.accel.accel == Accel::Tcg {
        bail!(
            "--accel tcg: virtkit has no x86-64 emulator; x86_64 guests run on KVM (--accel kvm)"
        );
    }
    if req.spike {
        bail!("--machine spike is a riscv64 board; x86_64 guests run on the KVM board");
    }
    // Disk and NIC syntax first: a typo is reported before any file is read.
    for d in &req.disks {
        crate::vm::parse_disk_spec(d)?;
    }
    let nic_specs = req
        .nics
        .iter()
        .map(|n| crate::nic::parse_nic(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mem_size = crate::vm::parse_size(&req.mem)?;
    let defaults = crate::vm_api_x86::Defaults {
        kvm_path: req.accel.kvm_device.clone(),
        timeout: req.timeout.map(Duration::from_secs),
    };
    let Some(kernel_path) = req.kernel.clone() else {
        let Some(sock) = &req.api_sock else {
            bail!(
                "--kernel is required (or --api-sock, to configure the VM through the control API)"
            );
        };
        // Configured and started (or loaded) through the API.
        let slot = Arc::new(crate::vm_api_x86::Slot::default());
        let _server = crate::vm_api_x86::serve(
            sock,
            slot.clone(),
            defaults,
            vmm::api::InitialState::AwaitingConfig,
        )?;
        return wait(&slot.wait());
    };
    // Opened, not read: the board reads them straight into guest RAM.
    let kernel = x86_machine::BootFile::open(&kernel_path)
        .with_context(|| format!("cannot read the kernel {}", kernel_path.display()))?;
    let kernel_name = kernel_path.display().to_string();
    // A wrong file is reported before the probe's warning.
    x86_machine::boot::identify_file(&kernel, &kernel_name).map_err(flat)?;
    let initrd = req
        .initrd
        .as_deref()
        .map(|p| {
            x86_machine::BootFile::open(p)
                .with_context(|| format!("cannot read the initrd {}", p.display()))
        })
        .transpose()?;
    // What the probe found is remembered for the host's boot (see
    // x86_machine::probe::remembered). Otherwise the probe runs in its own
    // small VM beside the machine's start-up (it only decides a warning),
    // so it adds little to the start time. KVM missing or broken: the
    // machine itself reports it.
    let probe_path = req.accel.kvm_device.clone();
    let remembered = guest::fetch::default_cache_dir()
        .ok()
        .and_then(|dir| x86_machine::probe::remembered(&probe_path, &dir));
    let probe = match remembered {
        Some(r) => {
            warn_if_emulated(&probe_path, &r);
            None
        }
        None => Some(std::thread::spawn(move || probe(&probe_path))),
    };
    let disks = req
        .disks
        .iter()
        .map(|d| {
            let disk = crate::vm::open_disk(d)?;
            Ok(Disk {
                backend: disk.backend,
                read_only: disk.read_only,
                image: disk.image,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nics = open_nics(&nic_specs)?;
    let disk_specs = req
        .disks
        .iter()
        .map(|d| crate::vm::parse_disk_spec(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cfg = MachineConfig {
        kvm_path: req.accel.kvm_device.clone(),
        vcpus: req.cpus,
        mem_size,
        kernel,
        kernel_name,
        initrd,
        cmdline: req.append.clone(),
        disks,
        rng: true,
        virtio_console: None,
        nics,
        output: Box::new(std::io::stdout()),
        input: Some(0),
        timeout: req.timeout.map(Duration::from_secs),
    };
    let outcome = match &req.api_sock {
        None => {
            // Raw mode only while the machine runs; restored on every way out.
            let _raw = riscv_machine::terminal::RawMode::enter(0);
            x86_machine::run(cfg).map_err(flat)
        }
        Some(sock) => {
            let config = crate::vm_api::describe(
                &kernel_path,
                req.initrd.as_deref(),
                &req.append,
                req.cpus,
                mem_size,
                &disk_specs,
                &req.nics,
            )?;
            let m = Arc::new(x86_machine::start(cfg).map_err(flat)?);
            let slot = Arc::new(crate::vm_api_x86::Slot::default());
            slot.set(m.clone());
            let _server = crate::vm_api_x86::serve(
                sock,
                slot,
                defaults,
                vmm::api::InitialState::Running(config),
            )?;
            let _raw = riscv_machine::terminal::RawMode::enter(0);
            m.wait().map_err(flat)
        }
    };
    let probed = probe.map(|p| p.join());
    let outcome = outcome?;
    if let Some(Ok(Err(e))) = probed {
        eprintln!("virtkit: warning: the accelerator probe failed: {e:#}");
    }
    Ok(exit_status(&outcome.reason))
}

/// Waits for a machine the API built or restored; its exit status.
fn wait(m: &x86_machine::RunningMachine) -> anyhow::Result<i32> {
    let outcome = {
        let _raw = riscv_machine::terminal::RawMode::enter(0);
        m.wait()
    }
    .map_err(flat)?;
    Ok(exit_status(&outcome.reason))
}

/// `virtkit vm restore DIR` of an x86 snapshot: a new VM, running.
pub fn restore(dir: &std::path::Path, api_sock: Option<&std::path::Path>) -> anyhow::Result<i32> {
    let defaults = crate::vm_api_x86::Defaults {
        kvm_path: x86_machine::DEFAULT_KVM_PATH.into(),
        timeout: None,
    };
    let (m, config) = crate::vm_api_x86::restore(
        &dir.join(vmm::api::STATE_FILE),
        &dir.join(vmm::api::MEMORY_FILE),
        &defaults,
        false,
    )?;
    let m = Arc::new(m);
    let slot = Arc::new(crate::vm_api_x86::Slot::default());
    slot.set(m.clone());
    let _server = api_sock
        .map(|p| {
            crate::vm_api_x86::serve(
                p,
                slot.clone(),
                defaults.clone(),
                vmm::api::InitialState::Running(config),
            )
        })
        .transpose()?;
    wait(&m)
}

/// Opens the backends of parsed `--nic`s (the same backends and MAC
/// defaults as the riscv64 board's) as the x86 board's cards.
pub fn open_nics(specs: &[crate::nic::NicSpec]) -> anyhow::Result<Vec<x86_machine::Nic>> {
    Ok(crate::nic::open_nics(specs)?
        .into_iter()
        .map(|n| x86_machine::Nic {
            backend: n.backend,
            mac: n.mac,
        })
        .collect())
}

/// The library's errors already name their cause in their message: keep
/// anyhow from printing the cause a second time.
fn flat(e: x86_machine::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Exit status for how the machine stopped, saying why when it failed.
fn exit_status(reason: &StopReason) -> i32 {
    match reason {
        // Linux's reboot and poweroff (reboot=k) end here, as in Firecracker.
        StopReason::Reset | StopReason::Quit => 0,
        // KVM_SYSTEM_EVENT_SHUTDOWN and _RESET are orderly; _CRASH is not.
        StopReason::SystemEvent { kind: 1 | 2, .. } => 0,
        StopReason::SystemEvent { vcpu, kind } => {
            eprintln!("virtkit: vCPU {vcpu} reported system event {kind} (a guest crash)");
            1
        }
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
