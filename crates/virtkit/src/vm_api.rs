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
    ApiError, ApiServer, BootSource, Drive, InitialState, MachineConfig as ApiMachineConfig,
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

/// A board's running machine as the control API drives it. [`Controller`]
/// does the rest, the same for every board: the machine's slot, the VM
/// configuration that snapshots record, the checks and the replies.
pub(crate) trait ApiMachine: Sized + Send + Sync + 'static {
    /// Choices the command line makes for machines the API builds.
    type Defaults: Send + 'static;
    /// The most vCPUs the board runs.
    const MAX_VCPUS: usize;
    /// Builds and starts the machine `config` describes.
    fn start(config: &VmConfig, defaults: &Self::Defaults) -> anyhow::Result<Self>;
    /// Builds a machine from a snapshot, paused, with the disks and
    /// networks its configuration names.
    fn restore_paused(
        state: &Path,
        memory: &Path,
        defaults: &Self::Defaults,
    ) -> anyhow::Result<(Self, VmConfig)>;
    fn pause_vm(&self) -> Result<(), String>;
    fn resume_vm(&self) -> Result<(), String>;
    fn send_ctrl_alt_del(&self) -> Result<(), ApiError>;
    /// A snapshot of the paused machine, recording `config`.
    fn snapshot(
        &self,
        state: &Path,
        memory: &Path,
        config: Option<serde_json::Value>,
    ) -> Result<(), String>;
}

/// The [`ApiMachine`] methods that both boards' `RunningMachine`s answer
/// with methods of the same names and signatures of their own.
macro_rules! machine_ops {
    () => {
        fn pause_vm(&self) -> Result<(), String> {
            self.pause().map_err(|e| e.to_string())
        }

        fn resume_vm(&self) -> Result<(), String> {
            self.resume().map_err(|e| e.to_string())
        }

        fn snapshot(
            &self,
            state: &Path,
            memory: &Path,
            config: Option<serde_json::Value>,
        ) -> Result<(), String> {
            self.snapshot_with_config(state, memory, config)
                .map_err(|e| e.to_string())
        }
    };
}
pub(crate) use machine_ops;

/// The control API's controller over a board's machine.
pub(crate) struct Controller<M: ApiMachine> {
    slot: Arc<Slot<M>>,
    defaults: M::Defaults,
    /// The configuration of the running machine, saved into snapshots so
    /// that `snapshot/load` knows which disks and networks to attach.
    config: Option<VmConfig>,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

fn chain(e: anyhow::Error) -> ApiError {
    ApiError::BadRequest(format!("{e:#}"))
}

impl<M: ApiMachine> Controller<M> {
    fn machine(&self) -> Result<Arc<M>, ApiError> {
        self.slot
            .get()
            .ok_or_else(|| ApiError::BadRequest("no machine is running".into()))
    }
}

impl<M: ApiMachine> VmController for Controller<M> {
    fn check_config(&mut self, c: &VmConfig) -> Result<(), ApiError> {
        let n = usize::from(c.machine_config.vcpu_count);
        if n == 0 || n > M::MAX_VCPUS {
            return Err(ApiError::BadRequest(format!(
                "vcpu_count {n}: this machine supports 1 to {}",
                M::MAX_VCPUS
            )));
        }
        Ok(())
    }

    fn start(&mut self, config: &VmConfig) -> Result<(), ApiError> {
        let m = M::start(config, &self.defaults).map_err(chain)?;
        self.config = Some(config.clone());
        self.slot.set(Arc::new(m));
        Ok(())
    }

    fn pause(&mut self) -> Result<(), ApiError> {
        self.machine()?.pause_vm().map_err(bad)
    }

    fn resume(&mut self) -> Result<(), ApiError> {
        self.machine()?.resume_vm().map_err(bad)
    }

    fn send_ctrl_alt_del(&mut self) -> Result<(), ApiError> {
        self.machine()?.send_ctrl_alt_del()
    }

    fn create_snapshot(&mut self, p: &SnapshotCreateParams) -> Result<(), ApiError> {
        let m = self.machine()?;
        let config = self
            .config
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(bad)?;
        m.snapshot(&p.snapshot_path, &p.mem_file_path, config)
            .map_err(bad)
    }

    fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<VmConfig, ApiError> {
        let (m, config) = M::restore_paused(
            &p.snapshot_path,
            &p.mem_backend.backend_path,
            &self.defaults,
        )
        .map_err(chain)?;
        self.config = Some(config.clone());
        self.slot.set(Arc::new(m));
        Ok(config)
    }
}

/// Serves the control API on `path` for the machine in `slot` (or the one
/// the API will build), of either board.
pub(crate) fn serve_board<M: ApiMachine>(
    path: &Path,
    slot: Arc<Slot<M>>,
    defaults: M::Defaults,
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

/// Choices the command line makes for riscv64 machines the API builds.
#[derive(Clone, Copy)]
pub struct Defaults {
    pub jit: bool,
}

/// The riscv64 board behind the API.
impl ApiMachine for RunningMachine {
    type Defaults = Defaults;
    const MAX_VCPUS: usize = machine::MAX_HARTS;

    fn start(config: &VmConfig, defaults: &Defaults) -> anyhow::Result<Self> {
        let cfg = machine_config(config, *defaults, true)?;
        machine::start(cfg).map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn restore_paused(
        state: &Path,
        memory: &Path,
        defaults: &Defaults,
    ) -> anyhow::Result<(Self, VmConfig)> {
        restore(state, memory, *defaults, true)
    }

    machine_ops!();

    fn send_ctrl_alt_del(&self) -> Result<(), ApiError> {
        // As on Firecracker's aarch64 machines: the key combination is an
        // i8042 keyboard event, and this board has no keyboard.
        Err(ApiError::NotSupported(
            "SendCtrlAltDel needs an i8042 keyboard, which the riscv64 virt board does not have"
                .into(),
        ))
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

/// What an API `VmConfig` gives either board (see [`parts`]).
pub(crate) struct Parts<T> {
    pub kernel_name: String,
    pub kernel: Option<T>,
    pub initrd: Option<T>,
    pub boot_args: String,
    pub disks: Vec<riscv_machine::machine::Disk>,
    pub nics: Vec<crate::nic::NicSpec>,
}

/// Reads what `c` gives either board: with `boot`, its kernel, initrd and
/// boot arguments (each file opened by `open`; a restore needs none of
/// them), and always its drives, opened, and its network interfaces,
/// parsed (each board opens its own kind of card).
pub(crate) fn parts<T>(
    c: &VmConfig,
    boot: bool,
    open: impl Fn(&Path) -> std::io::Result<T>,
) -> anyhow::Result<Parts<T>> {
    let mut parts = Parts {
        kernel_name: String::new(),
        kernel: None,
        initrd: None,
        boot_args: String::new(),
        disks: Vec::new(),
        nics: Vec::new(),
    };
    if boot {
        let Some(b) = &c.boot_source else {
            anyhow::bail!("no boot source: PUT /boot-source first");
        };
        let kernel = open(&b.kernel_image_path)
            .with_context(|| format!("cannot read the kernel {}", b.kernel_image_path.display()))?;
        parts.kernel = Some(kernel);
        parts.initrd = b
            .initrd_path
            .as_ref()
            .map(|p| open(p).with_context(|| format!("cannot read the initrd {}", p.display())))
            .transpose()?;
        parts.kernel_name = b.kernel_image_path.display().to_string();
        parts.boot_args = b.boot_args.clone().unwrap_or_default();
    }
    parts.disks = c
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
    parts.nics = c
        .network_interfaces
        .iter()
        .map(|n| {
            crate::nic::parse_nic(&nic_spec(n)?)
                .with_context(|| format!("network interface {}", n.iface_id))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(parts)
}

/// The board's configuration for an API `VmConfig`. `boot` reads the
/// kernel and initrd (a restore needs neither).
fn machine_config(c: &VmConfig, defaults: Defaults, boot: bool) -> anyhow::Result<MachineConfig> {
    let p = parts(c, boot, riscv_machine::machine::BootFile::open)?;
    let append = if boot {
        crate::vm::with_panic_reboot(p.boot_args)
    } else {
        String::new()
    };
    let nics = crate::nic::open_nics(&p.nics)?;
    Ok(MachineConfig {
        board: BoardKind::Virt,
        harts: usize::from(c.machine_config.vcpu_count),
        mem_size: c.machine_config.mem_size_mib << 20,
        kernel_name: p.kernel_name,
        kernel: p.kernel.unwrap_or_default(),
        initrd: p.initrd,
        append,
        firmware: Firmware::Builtin,
        disks: p.disks,
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
        machine_config: ApiMachineConfig {
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

/// Serves the control API on `path` for the riscv64 machine in `slot` (or
/// the one the API will build).
pub(crate) fn serve(
    path: &Path,
    slot: Arc<Slot>,
    defaults: Defaults,
    initial: InitialState,
) -> anyhow::Result<ApiServer> {
    serve_board(path, slot, defaults, initial)
}
