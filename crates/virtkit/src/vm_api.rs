//! The control API (`vmm::api`, Firecracker's endpoints) over the riscv64
//! board: `virtkit vm run --api-sock PATH` and `virtkit vm restore`.
//!
//! The API server calls [`Controller`] from its own thread; the machine
//! runs on its hart threads; the main thread waits for a machine to exist
//! (from the command line, `InstanceStart` or `PUT /snapshot/load`) and then
//! for it to stop, and exits with the guest's status.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use anyhow::Context;
use riscv_machine::machine::{self, BoardKind, Firmware, MachineConfig, RunningMachine};
use vmm::api::{
    ApiError, ApiServer, BootSource, Drive, InitialState, MachineConfig as ApiMachine,
    NetworkInterface, SnapshotCreateParams, SnapshotLoadParams, UserNet, VmConfig, VmController,
};

use crate::vm::{open_parsed_disk, DiskSpec};

/// The machine once there is one (a riscv64 or an x86 board's running
/// machine), shared by the API thread and the main thread.
pub struct Slot<M = RunningMachine> {
    machine: Mutex<Option<Arc<M>>>,
    ready: Condvar,
}

impl<M> Default for Slot<M> {
    fn default() -> Self {
        Slot {
            machine: Mutex::new(None),
            ready: Condvar::new(),
        }
    }
}

impl<M> Slot<M> {
    pub fn set(&self, m: Arc<M>) {
        *self.machine.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
        self.ready.notify_all();
    }

    pub(crate) fn get(&self) -> Option<Arc<M>> {
        self.machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Blocks until a machine exists.
    pub fn wait(&self) -> Arc<M> {
        let mut g = self.machine.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(m) = g.as_ref() {
                return m.clone();
            }
            g = self.ready.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The VM configuration a snapshot's state file recorded (`saved`, as the
/// board's `snapshot_config` read it): which disks and networks a restore
/// attaches.
pub(crate) fn saved_config(
    state: &Path,
    saved: anyhow::Result<Option<serde_json::Value>>,
) -> anyhow::Result<VmConfig> {
    let saved = saved.with_context(|| format!("reading the snapshot {}", state.display()))?;
    match saved {
        Some(v) => serde_json::from_value(v).with_context(|| {
            format!(
                "the snapshot {} has an unreadable VM configuration",
                state.display()
            )
        }),
        None => anyhow::bail!(
            "the snapshot {} does not record its VM's disks and networks \
             (it was not taken through the control API or `virtkit vm snapshot`)",
            state.display()
        ),
    }
}

/// Choices the command line makes for machines the API builds.
#[derive(Clone, Copy)]
pub struct Defaults {
    pub jit: bool,
}

/// The riscv64 board behind the API.
pub struct Controller {
    pub slot: Arc<Slot>,
    pub defaults: Defaults,
    /// The configuration of the running machine, saved into snapshots so
    /// that `snapshot/load` knows which disks and networks to attach.
    pub config: Option<VmConfig>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
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
        let harts = usize::from(c.machine_config.vcpu_count);
        if harts == 0 || harts > machine::MAX_HARTS {
            return Err(ApiError::BadRequest(format!(
                "vcpu_count {harts}: this machine supports 1 to {}",
                machine::MAX_HARTS
            )));
        }
        Ok(())
    }

    fn start(&mut self, config: &VmConfig) -> Result<(), ApiError> {
        let cfg = machine_config(config, self.defaults, true).map_err(chain)?;
        let m = machine::start(cfg).map_err(internal)?;
        self.config = Some(config.clone());
        self.slot.set(Arc::new(m));
        Ok(())
    }

    fn pause(&mut self) -> Result<(), ApiError> {
        self.machine()?.pause().map_err(internal)
    }

    fn resume(&mut self) -> Result<(), ApiError> {
        self.machine()?.resume().map_err(internal)
    }

    fn send_ctrl_alt_del(&mut self) -> Result<(), ApiError> {
        // As on Firecracker's aarch64 machines: the key combination is an
        // i8042 keyboard event, and this board has no keyboard.
        Err(ApiError::NotSupported(
            "SendCtrlAltDel needs an i8042 keyboard, which the riscv64 virt board does not have"
                .into(),
        ))
    }

    fn create_snapshot(&mut self, p: &SnapshotCreateParams) -> Result<(), ApiError> {
        let m = self.machine()?;
        let config = self
            .config
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(internal)?;
        m.snapshot_with_config(&p.snapshot_path, &p.mem_file_path, config)
            .map_err(internal)
    }

    fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<VmConfig, ApiError> {
        let (m, config) = restore(
            &p.snapshot_path,
            &p.mem_backend.backend_path,
            self.defaults,
            true,
        )
        .map_err(chain)?;
        self.config = Some(config.clone());
        self.slot.set(Arc::new(m));
        Ok(config)
    }
}

/// Builds a machine from a snapshot, with the disks and networks its
/// configuration names; left paused when `paused`.
pub fn restore(
    state: &Path,
    memory: &Path,
    defaults: Defaults,
    paused: bool,
) -> anyhow::Result<(RunningMachine, VmConfig)> {
    // Another board's snapshot (same file format) is refused by name.
    if let Ok(board) = x86_machine::snapshot::board_of(state) {
        if !board.starts_with("riscv64") {
            anyhow::bail!(
                "{} is a snapshot of the {board} board, not of a riscv64 machine \
                 (restore it with `virtkit vm restore`, or load it into `vm run --arch x86_64 --api-sock`)",
                state.display()
            );
        }
    }
    let config = saved_config(state, machine::snapshot_config(state).map_err(Into::into))?;
    let cfg = machine_config(&config, defaults, false)?;
    let m = if paused {
        machine::restore_paused(cfg, state, memory)
    } else {
        machine::restore(cfg, state, memory)
    }
    .with_context(|| format!("restoring {}", state.display()))?;
    Ok((m, config))
}

/// The board's configuration for an API `VmConfig`. `boot` reads the
/// kernel and initrd (a restore needs neither).
fn machine_config(c: &VmConfig, defaults: Defaults, boot: bool) -> anyhow::Result<MachineConfig> {
    let (kernel_name, kernel, initrd, append) = match (&c.boot_source, boot) {
        (Some(b), true) => {
            let kernel = std::fs::read(&b.kernel_image_path).with_context(|| {
                format!("cannot read the kernel {}", b.kernel_image_path.display())
            })?;
            let initrd = b
                .initrd_path
                .as_ref()
                .map(|p| {
                    std::fs::read(p)
                        .with_context(|| format!("cannot read the initrd {}", p.display()))
                })
                .transpose()?;
            let append = crate::vm::with_panic_reboot(b.boot_args.clone().unwrap_or_default());
            (
                b.kernel_image_path.display().to_string(),
                kernel,
                initrd,
                append,
            )
        }
        (None, true) => anyhow::bail!("no boot source: PUT /boot-source first"),
        (_, false) => (String::new(), Vec::new(), None, String::new()),
    };
    let disks = c
        .drives
        .iter()
        .map(|d| {
            open_parsed_disk(&DiskSpec {
                path: d.path_on_host.display().to_string(),
                read_only: d.is_read_only,
                format: None,
            })
            .with_context(|| format!("drive {}", d.drive_id))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let specs = c
        .network_interfaces
        .iter()
        .map(|n| {
            crate::nic::parse_nic(&nic_spec(n)?)
                .with_context(|| format!("network interface {}", n.iface_id))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nics = crate::nic::open_nics(&specs)?;
    Ok(MachineConfig {
        board: BoardKind::Virt,
        harts: usize::from(c.machine_config.vcpu_count),
        mem_size: c.machine_config.mem_size_mib << 20,
        kernel_name,
        kernel,
        initrd,
        append,
        firmware: Firmware::Builtin,
        disks,
        rng: true,
        virtio_console: true,
        nics,
        output: Box::new(std::io::stdout()),
        input: Some(0),
        timeout: None,
        jit: defaults.jit,
    })
}

/// A network interface as `--nic` would say it.
pub(crate) fn nic_spec(n: &NetworkInterface) -> anyhow::Result<String> {
    let mut s = match (&n.host_dev_name, &n.virtkit_user_net) {
        (Some(tap), None) => format!("tap,ifname={tap}"),
        (None, Some(u)) => {
            let mut s = String::from("user");
            for f in &u.hostfwd {
                s.push_str(",hostfwd=");
                s.push_str(f);
            }
            if u.restrict {
                s.push_str(",restrict=on");
            }
            s
        }
        _ => anyhow::bail!("give exactly one of host_dev_name and virtkit_user_net"),
    };
    if let Some(mac) = &n.guest_mac {
        s.push_str(",mac=");
        s.push_str(mac);
    }
    Ok(s)
}

/// The API's description of a machine started from the command line.
pub fn describe(
    kernel: &Path,
    initrd: Option<&Path>,
    append: &str,
    harts: usize,
    mem_size: u64,
    disks: &[DiskSpec],
    nics: &[String],
) -> anyhow::Result<VmConfig> {
    let network_interfaces = nics
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let mut parts = spec.split(',');
            let kind = parts.next().unwrap_or_default();
            let mut n = NetworkInterface {
                iface_id: format!("eth{i}"),
                host_dev_name: None,
                guest_mac: None,
                virtkit_user_net: None,
            };
            let mut user = UserNet::default();
            for p in parts {
                match p.split_once('=') {
                    Some(("ifname", v)) => n.host_dev_name = Some(v.to_string()),
                    Some(("mac", v)) => n.guest_mac = Some(v.to_string()),
                    Some(("hostfwd", v)) => user.hostfwd.push(v.to_string()),
                    Some(("restrict", v)) => user.restrict = matches!(v, "on" | "yes" | "true"),
                    _ => {}
                }
            }
            if kind == "user" {
                n.virtkit_user_net = Some(user);
            }
            n
        })
        .collect();
    Ok(VmConfig {
        boot_source: Some(BootSource {
            kernel_image_path: kernel.to_path_buf(),
            initrd_path: initrd.map(Path::to_path_buf),
            boot_args: Some(append.to_string()),
        }),
        machine_config: ApiMachine {
            vcpu_count: u8::try_from(harts).context("too many harts for the API")?,
            mem_size_mib: mem_size >> 20,
            ..Default::default()
        },
        drives: disks
            .iter()
            .enumerate()
            .map(|(i, d)| Drive {
                drive_id: format!("disk{i}"),
                path_on_host: d.path.clone().into(),
                is_root_device: false,
                is_read_only: d.read_only,
            })
            .collect(),
        network_interfaces,
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
