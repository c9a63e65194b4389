//! The rules every board gets for free: which requests are allowed in
//! which state (pre-boot configuration, pause before snapshot, load only
//! into an empty VM), the stored configuration, and the calls into the
//! board's [`VmController`].

use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::request::{check_mac, ApiRequest};
use super::types::{
    ActionType, InstanceInfo, MachineConfig, MemBackendType, SnapshotCreateParams,
    SnapshotLoadParams, SnapshotType, VmConfig, VmState, VmStateRequest,
};
use super::ApiError;

/// Harts a VM may have (Firecracker's limit; the boards check their own).
pub const MAX_VCPUS: u8 = 32;

/// What a board does for the API. Calls come from the API server's
/// thread, one at a time, only when the state machine allows them (so
/// `pause` is only called on a running VM, `create_snapshot` only on a
/// paused one, `start` and `load_snapshot` at most once and never both).
pub trait VmController: Send {
    /// Checks a configuration before it is stored, whole, after a
    /// pre-boot `PUT` changed it (e.g. a board's own hart or RAM limit).
    /// The default accepts everything the API itself accepts.
    fn check_config(&mut self, _candidate: &VmConfig) -> Result<(), ApiError> {
        Ok(())
    }
    /// `InstanceStart`: builds the machine from `config` and runs it.
    fn start(&mut self, config: &VmConfig) -> Result<(), ApiError>;
    /// Stops every vCPU at an instruction boundary; returns once they are.
    fn pause(&mut self) -> Result<(), ApiError>;
    fn resume(&mut self) -> Result<(), ApiError>;
    /// `SendCtrlAltDel`: asks the guest to shut down or reboot.
    fn send_ctrl_alt_del(&mut self) -> Result<(), ApiError>;
    /// Writes the snapshot of the paused VM.
    fn create_snapshot(&mut self, params: &SnapshotCreateParams) -> Result<(), ApiError>;
    /// Builds the VM from a snapshot, left paused (the API server then
    /// calls [`VmController::resume`] when `resume_vm` is set). Returns
    /// the restored VM's configuration, for `GET /vm/config`. On error no
    /// VM may be left behind: the API stays in "Not started".
    fn load_snapshot(&mut self, params: &SnapshotLoadParams) -> Result<VmConfig, ApiError>;
}

/// How the API server finds the VM when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitialState {
    /// Nothing yet: configure through the API, then `InstanceStart` or
    /// `PUT /snapshot/load`.
    AwaitingConfig,
    /// Already built and running (from the command line), with this
    /// configuration.
    Running(VmConfig),
    /// Already built and paused (e.g. restored from a snapshot without
    /// resuming), with this configuration.
    Paused(VmConfig),
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiReply {
    /// 204 No Content.
    Empty,
    /// 200 OK with this JSON body.
    Json(String),
}

/// The API's state machine over a board's controller.
pub struct Dispatcher<C> {
    controller: C,
    id: String,
    state: VmState,
    config: VmConfig,
    /// A boot-specific resource was configured: `/snapshot/load` is then
    /// refused (it would silently drop that configuration).
    configured: bool,
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<ApiReply, ApiError> {
    serde_json::to_string(value)
        .map(ApiReply::Json)
        .map_err(|e| ApiError::Internal(format!("serializing the response: {e}")))
}

/// Firecracker opens the files named at configuration time, so a typo
/// fails at `PUT`, not later at `InstanceStart`. The open never blocks
/// (O_NONBLOCK: a FIFO would otherwise wait for a writer and hang the
/// API), and only regular files (or, for disks, block devices) pass.
fn check_readable(what: &str, path: &Path, block_ok: bool) -> Result<(), ApiError> {
    let fail =
        |e: &dyn std::fmt::Display| ApiError::BadRequest(format!("{what} {}: {e}", path.display()));
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(&e))?;
    let kind = file.metadata().map_err(|e| fail(&e))?.file_type();
    if kind.is_file() || (block_ok && kind.is_block_device()) {
        Ok(())
    } else {
        Err(fail(&"not a regular file"))
    }
}

fn check_machine_config(mc: &MachineConfig) -> Result<(), ApiError> {
    if mc.vcpu_count == 0 || mc.vcpu_count > MAX_VCPUS {
        return Err(ApiError::BadRequest(format!(
            "The vCPU number is invalid! The vCPU number can only be 1 or an even \
             number when SMT is enabled, and at most {MAX_VCPUS}."
        )));
    }
    if mc.mem_size_mib == 0 {
        return Err(ApiError::BadRequest(
            "The memory size (MiB) is invalid.".into(),
        ));
    }
    Ok(())
}

impl<C: VmController> Dispatcher<C> {
    /// `id` is the instance name `GET /` reports.
    pub fn new(controller: C, initial: InitialState, id: impl Into<String>) -> Self {
        let (state, config) = match initial {
            InitialState::AwaitingConfig => (VmState::NotStarted, VmConfig::default()),
            InitialState::Running(config) => (VmState::Running, config),
            InitialState::Paused(config) => (VmState::Paused, config),
        };
        Dispatcher {
            controller,
            id: id.into(),
            state,
            config,
            configured: false,
        }
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    pub fn controller(&mut self) -> &mut C {
        &mut self.controller
    }

    fn pre_boot(&self) -> Result<(), ApiError> {
        match self.state {
            VmState::NotStarted => Ok(()),
            _ => Err(ApiError::NotSupportedPostBoot),
        }
    }

    fn post_boot(&self) -> Result<(), ApiError> {
        match self.state {
            VmState::NotStarted => Err(ApiError::NotSupportedPreBoot),
            _ => Ok(()),
        }
    }

    /// Stores a changed pre-boot configuration once the board agrees.
    fn update(&mut self, change: impl FnOnce(&mut VmConfig)) -> Result<ApiReply, ApiError> {
        self.pre_boot()?;
        let mut candidate = self.config.clone();
        change(&mut candidate);
        self.controller.check_config(&candidate)?;
        self.config = candidate;
        self.configured = true;
        Ok(ApiReply::Empty)
    }

    /// Runs one request.
    pub fn handle(&mut self, req: ApiRequest) -> Result<ApiReply, ApiError> {
        match req {
            ApiRequest::GetInstanceInfo => to_json(&InstanceInfo {
                id: self.id.clone(),
                state: self.state,
                vmm_version: env!("CARGO_PKG_VERSION").to_string(),
                app_name: "virtkit".to_string(),
            }),
            ApiRequest::GetMachineConfig => to_json(&self.config.machine_config),
            ApiRequest::GetVmConfig => to_json(&self.config),
            ApiRequest::PutMachineConfig(mc) => {
                self.pre_boot()?;
                check_machine_config(&mc)?;
                self.update(|c| c.machine_config = mc)
            }
            ApiRequest::PatchMachineConfig(update) => {
                self.pre_boot()?;
                let mc = self.config.machine_config.updated(&update);
                check_machine_config(&mc)?;
                self.update(|c| c.machine_config = mc)
            }
            ApiRequest::PutBootSource(bs) => {
                self.pre_boot()?;
                check_readable("kernel_image_path", &bs.kernel_image_path, false)?;
                if let Some(initrd) = &bs.initrd_path {
                    check_readable("initrd_path", initrd, false)?;
                }
                self.update(|c| c.boot_source = Some(bs))
            }
            ApiRequest::PutDrive(drive) => {
                self.pre_boot()?;
                check_readable("path_on_host", &drive.path_on_host, true)?;
                let other_root = self
                    .config
                    .drives
                    .iter()
                    .any(|d| d.is_root_device && d.drive_id != drive.drive_id);
                if drive.is_root_device && other_root {
                    return Err(ApiError::BadRequest(
                        "A root block device already exists!".into(),
                    ));
                }
                self.update(|c| {
                    match c.drives.iter_mut().find(|d| d.drive_id == drive.drive_id) {
                        Some(slot) => *slot = drive,
                        None => c.drives.push(drive),
                    }
                    // Firecracker puts the root device first: it is the
                    // guest's first disk (vda).
                    c.drives.sort_by_key(|d| !d.is_root_device);
                })
            }
            ApiRequest::PutNetworkInterface(iface) => {
                self.pre_boot()?;
                match (&iface.host_dev_name, &iface.virtkit_user_net) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(ApiError::BadRequest(format!(
                            "network interface {}: give exactly one of host_dev_name (a tap \
                             device) and virtkit_user_net (user-mode networking)",
                            iface.iface_id
                        )))
                    }
                    _ => {}
                }
                if let Some(mac) = &iface.guest_mac {
                    check_mac(mac)?;
                }
                for other in self
                    .config
                    .network_interfaces
                    .iter()
                    .filter(|o| o.iface_id != iface.iface_id)
                {
                    if iface.guest_mac.is_some()
                        && other.guest_mac.as_deref().map(str::to_ascii_lowercase)
                            == iface.guest_mac.as_deref().map(str::to_ascii_lowercase)
                    {
                        return Err(ApiError::BadRequest(format!(
                            "The MAC address is already in use: {}",
                            iface.guest_mac.as_deref().unwrap_or_default()
                        )));
                    }
                    if iface.host_dev_name.is_some() && other.host_dev_name == iface.host_dev_name {
                        return Err(ApiError::BadRequest(format!(
                            "The host device name is already in use: {}",
                            iface.host_dev_name.as_deref().unwrap_or_default()
                        )));
                    }
                }
                self.update(|c| {
                    match c
                        .network_interfaces
                        .iter_mut()
                        .find(|n| n.iface_id == iface.iface_id)
                    {
                        Some(slot) => *slot = iface,
                        None => c.network_interfaces.push(iface),
                    }
                })
            }
            ApiRequest::Action(ActionType::InstanceStart) => {
                self.pre_boot()?;
                if self.config.boot_source.is_none() {
                    return Err(ApiError::BadRequest(
                        "Cannot start microvm without kernel configuration.".into(),
                    ));
                }
                self.controller.start(&self.config)?;
                self.state = VmState::Running;
                Ok(ApiReply::Empty)
            }
            ApiRequest::Action(ActionType::SendCtrlAltDel) => {
                self.post_boot()?;
                self.controller.send_ctrl_alt_del()?;
                Ok(ApiReply::Empty)
            }
            ApiRequest::Action(ActionType::FlushMetrics) => Err(ApiError::NotSupported(
                "FlushMetrics: virtkit keeps no metrics.".into(),
            )),
            ApiRequest::PatchVm(target) => {
                self.post_boot()?;
                match (target, self.state) {
                    (VmStateRequest::Paused, VmState::Running) => {
                        self.controller.pause()?;
                        self.state = VmState::Paused;
                    }
                    (VmStateRequest::Resumed, VmState::Paused) => {
                        self.controller.resume()?;
                        self.state = VmState::Running;
                    }
                    // Already there: nothing to do (as Firecracker).
                    _ => {}
                }
                Ok(ApiReply::Empty)
            }
            ApiRequest::CreateSnapshot(params) => {
                self.post_boot()?;
                if self.state != VmState::Paused {
                    return Err(ApiError::BadRequest(
                        "Cannot create a snapshot of a running microVM: pause it first \
                         (PATCH /vm with {\"state\": \"Paused\"})."
                            .into(),
                    ));
                }
                if params.snapshot_type == SnapshotType::Diff {
                    return Err(ApiError::NotSupported(
                        "Diff snapshots: virtkit takes Full snapshots only.".into(),
                    ));
                }
                self.controller.create_snapshot(&params)?;
                Ok(ApiReply::Empty)
            }
            ApiRequest::LoadSnapshot(params) => {
                self.pre_boot()?;
                if self.configured {
                    return Err(ApiError::LoadSnapshotNotAllowed);
                }
                if params.mem_backend.backend_type == MemBackendType::Uffd {
                    return Err(ApiError::NotSupported(
                        "the Uffd memory backend: virtkit maps a File backend.".into(),
                    ));
                }
                let config = self.controller.load_snapshot(&params)?;
                self.config = config;
                self.state = VmState::Paused;
                if params.resume_vm {
                    self.controller.resume()?;
                    self.state = VmState::Running;
                }
                Ok(ApiReply::Empty)
            }
        }
    }
}
