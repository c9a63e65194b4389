//! Snapshot state of a virtio-mmio transport and its device, as plain
//! versioned serde structs (Firecracker's `persist.rs` idea).
//!
//! A transport is saved while paused ([`MmioTransport::pause`]: its worker
//! finished the request it was on and handed back its queues), so the
//! ring positions (`next_avail`, `next_used`) are exact. A restore builds
//! a paused transport from a fresh device of the same kind: registers,
//! queue addresses and positions, interrupt status and configuration
//! generation come back, an activated device is activated again over the
//! same rings, and [`MmioTransport::resume`] starts its worker once the
//! rest of the board is restored.
//!
//! [`MmioTransport::pause`]: crate::MmioTransport::pause
//! [`MmioTransport::resume`]: crate::MmioTransport::resume

use serde::{Deserialize, Serialize};

/// Version of [`TransportState`] this build writes and reads.
pub const TRANSPORT_STATE_VERSION: u32 = 1;

/// A device's own state, beyond its transport's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceState {
    /// Nothing to save (virtio-rng: after a restore the guest simply gets
    /// fresh host entropy).
    None,
    /// virtio-blk: what the driver was told about the disk; a restore
    /// onto a disk that differs is refused.
    Block { capacity: u64, read_only: bool },
    /// virtio-console: host input not yet delivered, and the console size.
    Console {
        pending_input: Vec<u8>,
        size: Option<(u16, u16)>,
    },
    /// virtio-net: configuration and negotiated features.
    Net {
        mac: [u8; 6],
        link_up: bool,
        acked_features: u64,
    },
}

impl DeviceState {
    fn name(&self) -> &'static str {
        match self {
            DeviceState::None => "none",
            DeviceState::Block { .. } => "block",
            DeviceState::Console { .. } => "console",
            DeviceState::Net { .. } => "net",
        }
    }
}

/// One virtqueue: the driver's layout and the device's ring positions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueState {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

/// A virtio-mmio transport with its device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportState {
    /// [`TRANSPORT_STATE_VERSION`] when written.
    pub version: u32,
    /// Virtio device ID ([`crate::device_type`]).
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub queues: Vec<QueueState>,
    pub interrupt_status: u32,
    pub config_generation: u32,
    /// Why the device set DEVICE_NEEDS_RESET, if it did.
    pub needs_reset: Option<String>,
    pub device: DeviceState,
}

/// Why a transport could not be saved or restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PersistError {
    #[error(
        "virtio device {device_type}: its worker is running; pause the transport before saving it"
    )]
    NotPaused { device_type: u32 },
    #[error("virtio transport state version {0} is not supported (this build reads version {TRANSPORT_STATE_VERSION})")]
    Version(u32),
    #[error("the snapshot has virtio device type {found} here, the machine has type {expected}")]
    DeviceType { expected: u32, found: u32 },
    #[error(
        "virtio device {device_type}: the snapshot has {found} queues, the device has {expected}"
    )]
    QueueCount {
        device_type: u32,
        expected: usize,
        found: usize,
    },
    #[error("virtio device {device_type} queue {index}: {reason}")]
    Queue {
        device_type: u32,
        index: usize,
        reason: String,
    },
    #[error(
        "virtio device {device_type}: a `{found}` device state does not belong to this device"
    )]
    WrongState {
        device_type: u32,
        found: &'static str,
    },
    #[error("virtio device {device_type}: {what}")]
    Mismatch { device_type: u32, what: String },
    #[error("virtio device {device_type}: cannot activate the restored device: {reason}")]
    Activate { device_type: u32, reason: String },
}

/// The default [`crate::VirtioDevice::restore_state`]: only
/// [`DeviceState::None`] fits a device that saves nothing.
pub(crate) fn expect_none(device_type: u32, state: &DeviceState) -> Result<(), PersistError> {
    match state {
        DeviceState::None => Ok(()),
        other => Err(wrong_state(device_type, other)),
    }
}

pub(crate) fn wrong_state(device_type: u32, state: &DeviceState) -> PersistError {
    PersistError::WrongState {
        device_type,
        found: state.name(),
    }
}
