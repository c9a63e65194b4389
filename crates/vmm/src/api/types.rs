//! The JSON bodies of the control API, with Firecracker's field names
//! (`src/firecracker/swagger/firecracker.yaml`), so that scripts written
//! for Firecracker work unchanged. Request bodies reject unknown fields:
//! a misspelt field is an error, not a silently ignored setting.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `GET /`: what Firecracker calls `InstanceInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The instance's name (Firecracker's `--id`; default `anonymous-instance`).
    pub id: String,
    pub state: VmState,
    pub vmm_version: String,
    pub app_name: String,
}

/// Where a VM is in its life, as `GET /` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Being configured: `InstanceStart` or `/snapshot/load` not yet done.
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmState::NotStarted => "Not started",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
        })
    }
}

/// `PUT /machine-config` and `GET /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (accepted for Firecracker's scripts;
    /// the emulated harts have no SMT siblings).
    #[serde(default)]
    pub smt: bool,
    /// Firecracker's dirty-page tracking for diff snapshots (accepted;
    /// virtkit takes full snapshots only).
    #[serde(default)]
    pub track_dirty_pages: bool,
}

impl Default for MachineConfig {
    /// Firecracker's defaults before any `PUT /machine-config`.
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
        }
    }
}

/// `PATCH /machine-config`: only the fields given change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    #[serde(default)]
    pub vcpu_count: Option<u8>,
    #[serde(default)]
    pub mem_size_mib: Option<u64>,
    #[serde(default)]
    pub smt: Option<bool>,
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
}

impl MachineConfig {
    /// This configuration with `update`'s fields applied.
    pub fn updated(&self, update: &MachineConfigUpdate) -> MachineConfig {
        MachineConfig {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
        }
    }
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(default)]
    pub initrd_path: Option<PathBuf>,
    #[serde(default)]
    pub boot_args: Option<String>,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
}

/// `PUT /network-interfaces/{iface_id}`.
///
/// Firecracker's interface is a tap device (`host_dev_name`). virtkit
/// also offers its rootless user-mode network through an extension
/// field, `virtkit_user_net`: exactly one of the two is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    /// An existing tap device on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_dev_name: Option<String>,
    /// `xx:xx:xx:xx:xx:xx`; a default is chosen when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// virtkit extension: user-mode networking (NAT through host
    /// sockets, as `--nic user`) instead of a tap device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtkit_user_net: Option<UserNet>,
}

/// The `virtkit_user_net` extension of [`NetworkInterface`]: the options
/// of `--nic user,...`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserNet {
    /// Port forwards in QEMU's `hostfwd` syntax, e.g.
    /// `tcp:127.0.0.1:2222-:22`.
    #[serde(default)]
    pub hostfwd: Vec<String>,
    /// No connections out of the guest, only the forwards in.
    #[serde(default)]
    pub restrict: bool,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAction {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateChange {
    pub state: VmStateRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmStateRequest {
    Paused,
    Resumed,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// The state file (CPU, devices, configuration).
    pub snapshot_path: PathBuf,
    /// The guest memory file.
    pub mem_file_path: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    #[default]
    Full,
    /// Firecracker's dirty-pages-only snapshot: refused by virtkit.
    Diff,
}

/// `PUT /snapshot/load` as it arrives: the memory file is named either by
/// `mem_backend` or by the older `mem_file_path`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotLoadBody {
    pub snapshot_path: PathBuf,
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    #[serde(default)]
    pub resume_vm: bool,
}

/// `PUT /snapshot/load`, with the memory file's two spellings folded
/// into [`SnapshotLoadParams::mem_backend`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: PathBuf,
    pub mem_backend: MemBackend,
    /// Accepted for Firecracker's scripts; virtkit snapshots are always full.
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    /// Run the restored VM at once (otherwise it is left paused).
    #[serde(default)]
    pub resume_vm: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_type: MemBackendType,
    pub backend_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// A memory file, mapped `MAP_PRIVATE`.
    File,
    /// Firecracker's userfaultfd page server: refused by virtkit.
    Uffd,
}

/// `GET /vm/config`: the whole configuration, with Firecracker's
/// hyphenated keys. The boards also hand it to the API server when a VM
/// is started from the command line or restored from a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSource>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub fault_message: String,
}
