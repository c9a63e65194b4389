//! The control API (`vmm::api`, Firecracker's endpoints) over the x86-64
//! KVM board: `virtkit vm run --arch x86_64 --api-sock PATH` and `virtkit
//! vm restore` of an x86 snapshot. The same state machine, endpoints and
//! snapshot files as the riscv64 board's (`vm_api.rs`'s `Controller`); the
//! board behind them is `x86_machine::RunningMachine`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use vmm::api::{ApiError, VmConfig};
use x86_machine::{MachineConfig, RunningMachine};

use crate::vm_api::ApiMachine;

/// The x86 machine once there is one.
pub type Slot = crate::vm_api::Slot<RunningMachine>;

pub(crate) use crate::vm_api::serve_board as serve;

/// Choices the command line makes for machines the API builds.
#[derive(Clone)]
pub struct Defaults {
    pub kvm_path: PathBuf,
    pub timeout: Option<Duration>,
}

/// The x86 board behind the API.
impl ApiMachine for RunningMachine {
    type Defaults = Defaults;
    const MAX_VCPUS: usize = x86_machine::mptable::MAX_MPTABLE_CPUS;

    fn start(config: &VmConfig, defaults: &Defaults) -> anyhow::Result<Self> {
        let cfg = machine_config(config, defaults, true)?;
        x86_machine::start(cfg).map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn restore_paused(
        state: &Path,
        memory: &Path,
        defaults: &Defaults,
    ) -> anyhow::Result<(Self, VmConfig)> {
        restore(state, memory, defaults, true)
    }

    crate::vm_api::machine_ops!();

    fn send_ctrl_alt_del(&self) -> Result<(), ApiError> {
        // The i8042 keyboard presses and releases the keys and raises
        // IRQ 1, as Firecracker's; Linux reboots (and the reset ends the
        // run with status 0).
        RunningMachine::send_ctrl_alt_del(self).map_err(|e| ApiError::BadRequest(e.to_string()))
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
    let p = crate::vm_api::parts(c, boot, x86_machine::BootFile::open)?;
    let nics = crate::vm_x86::open_nics(&p.nics)?;
    Ok(MachineConfig {
        kvm_path: d.kvm_path.clone(),
        vcpus: usize::from(c.machine_config.vcpu_count),
        mem_size: c.machine_config.mem_size_mib << 20,
        kernel: p.kernel.unwrap_or_else(|| Vec::new().into()),
        kernel_name: p.kernel_name,
        initrd: p.initrd,
        cmdline: p.boot_args,
        disks: p.disks,
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
