//! The control API (`vmm::api`, Firecracker's endpoints) over the x86-64
//! KVM board: `virtkit vm run --arch x86_64 --api-sock PATH` and `virtkit
//! vm restore` of an x86 snapshot. The same state machine, endpoints and
//! snapshot files as the riscv64 board's (`vm_api.rs`); the board behind
//! them is `x86_machine::RunningMachine`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use vmm::api::{
    ApiError, ApiServer, InitialState, SnapshotCreateParams, SnapshotLoadParams, VmConfig,
    VmController,
};
use x86_machine::{MachineConfig, RunningMachine};

use crate::vm::{open_parsed_disk, DiskSpec};

/// The x86 machine once there is one.
pub type Slot = crate::vm_api::Slot<RunningMachine>;

/// Choices the command line makes for machines the API builds.
#[derive(Clone)]
pub struct Defaults {
    pub kvm_path: PathBuf,
    pub timeout: Option<Duration>,
}

/// The x86 board behind the API.
pub struct Controller {
    pub slot: Arc<Slot>,
    pub defaults: Defaults,
    /// The configuration of the running machine, saved into snapshots so
    /// that `snapshot/load` knows which disks and networks to attach.
    pub config: Option<VmConfig>,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

fn chain(e: anyhow::Error) -> ApiError {
    ApiError::BadRequest(format!("{e:#}"))
}

impl Controller {
    fn machine(&self) -> Result<Arc<RunningMachine>, ApiError> {
        self.slot
            .get()
            .ok_or_else(|| ApiError::BadRequest("no machine is running".into()))
    }
}

impl VmController for Controller {
    fn check_config(&mut self, c: &VmConfig) -> Result<(), ApiError> {
        let n = usize::from(c.machine_config.vcpu_count);
        let max = x86_machine::mptable::MAX_MPTABLE_CPUS;
        if n == 0 || n > max {
            return Err(ApiError::BadRequest(format!(
                "vcpu_count {n}: this machine supports 1 to {max}"
            )));
        }
        Ok(())
    }

    fn start(&mut self, config: &VmConfig) -> Result<(), ApiError> {
        let cfg = machine_config(config, &self.defaults, true).map_err(chain)?;
        let m = x86_machine::start(cfg).map_err(bad)?;
        self.config = Some(config.clone());
        self.slot.set(Arc::new(m));
        Ok(())
    }

    fn pause(&mut self) -> Result<(), ApiError> {
        self.machine()?.pause().map_err(bad)
    }

    fn resume(&mut self) -> Result<(), ApiError> {
        self.machine()?.resume().map_err(bad)
    }

    fn send_ctrl_alt_del(&mut self) -> Result<(), ApiError> {
        // The i8042 keyboard presses and releases the keys and raises
        // IRQ 1, as Firecracker's; Linux reboots (and the reset ends the
        // run with status 0).
        self.machine()?.send_ctrl_alt_del().map_err(bad)
    }

    fn create_snapshot(&mut self, p: &SnapshotCreateParams) -> Result<(), ApiError> {
        let m = self.machine()?;
        let config = self
            .config
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(bad)?;
        m.snapshot_with_config(&p.snapshot_path, &p.mem_file_path, config)
            .map_err(bad)
    }

    fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<VmConfig, ApiError> {
        let (m, config) = restore(
            &p.snapshot_path,
            &p.mem_backend.backend_path,
            &self.defaults,
            true,
        )
        .map_err(chain)?;
        self.config = Some(config.clone());
        self.slot.set(Arc::new(m));
        Ok(config)
    }
}

/// Builds a machine from an x86 snapshot, with the disks and networks its
/// configuration names; left paused when `paused`.
pub fn restore(
    state: &Path,
    memory: &Path,
    defaults: &Defaults,
    paused: bool,
) -> anyhow::Result<(RunningMachine, VmConfig)> {
    let saved = x86_machine::snapshot_config(state).map_err(|e| anyhow::anyhow!("{e}"));
    let config = crate::vm_api::saved_config(state, saved)?;
    let cfg = machine_config(&config, defaults, false)?;
    let m = x86_machine::restore(cfg, state, memory, paused)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("restoring {}", state.display()))?;
    Ok((m, config))
}

/// The board's configuration for an API `VmConfig`. `boot` reads the
/// kernel and initrd (a restore needs neither).
fn machine_config(c: &VmConfig, d: &Defaults, boot: bool) -> anyhow::Result<MachineConfig> {
    let (kernel_name, kernel, initrd, cmdline) = match (&c.boot_source, boot) {
        (Some(b), true) => {
            let kernel = x86_machine::BootFile::open(&b.kernel_image_path).with_context(|| {
                format!("cannot read the kernel {}", b.kernel_image_path.display())
            })?;
            let initrd = b
                .initrd_path
                .as_ref()
                .map(|p| {
                    x86_machine::BootFile::open(p)
                        .with_context(|| format!("cannot read the initrd {}", p.display()))
                })
                .transpose()?;
            (
                b.kernel_image_path.display().to_string(),
                kernel,
                initrd,
                b.boot_args.clone().unwrap_or_default(),
            )
        }
        (None, true) => anyhow::bail!("no boot source: PUT /boot-source first"),
        (_, false) => (String::new(), Vec::new().into(), None, String::new()),
    };
    let disks = c
        .drives
        .iter()
        .map(|d| {
            let disk = open_parsed_disk(&DiskSpec {
                path: d.path_on_host.display().to_string(),
                read_only: d.is_read_only,
                format: None,
            })
            .with_context(|| format!("drive {}", d.drive_id))?;
            Ok(x86_machine::Disk {
                backend: disk.backend,
                read_only: disk.read_only,
                image: disk.image,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let specs = c
        .network_interfaces
        .iter()
        .map(|n| {
            crate::nic::parse_nic(&crate::vm_api::nic_spec(n)?)
                .with_context(|| format!("network interface {}", n.iface_id))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nics = crate::vm_x86::open_nics(&specs)?;
    Ok(MachineConfig {
        kvm_path: d.kvm_path.clone(),
        vcpus: usize::from(c.machine_config.vcpu_count),
        mem_size: c.machine_config.mem_size_mib << 20,
        kernel,
        kernel_name,
        initrd,
        cmdline,
        disks,
        // As `vm run --arch x86_64`: the device list must be the same
        // for a snapshot to fit.
        rng: true,
        virtio_console: None,
        nics,
        output: Box::new(std::io::stdout()),
        input: Some(0),
        timeout: d.timeout,
    })
}

/// Serves the control API on `path` for the machine in `slot` (or the one
/// the API will build).
pub fn serve(
    path: &Path,
    slot: Arc<Slot>,
    defaults: Defaults,
    initial: InitialState,
) -> anyhow::Result<ApiServer> {
    let config = match &initial {
        InitialState::Running(c) | InitialState::Paused(c) => Some(c.clone()),
        InitialState::AwaitingConfig => None,
    };
    ApiServer::start(
        path,
        Controller {
            slot,
            defaults,
            config,
        },
        initial,
    )
    .with_context(|| format!("serving the control API on {}", path.display()))
}
