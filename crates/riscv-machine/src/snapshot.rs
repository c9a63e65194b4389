//! What a snapshot of the `virt` board holds: the body of the state file
//! (framed by [`vmm::snapshot`]), and the check that a restore target
//! matches it.
//!
//! The body names the machine configuration (harts, RAM size, the kind of
//! M-mode software, the device in each virtio slot and each disk's size:
//! `vmm::board::MachineSummary`, shared with the x86 board), so restoring
//! into a different machine is refused with a message saying what
//! differs, before anything is built. Each device's state is its own
//! versioned struct (`ClintState`, `PlicState`, `UartState`,
//! `virtio::persist::TransportState`, `riscv::HartState`).
//!
//! # The guest's clock
//!
//! The guest continues from the snapshot's time: `mtime` (and the `time`
//! CSR) read on after a restore exactly where they stood when the
//! snapshot was taken, as if the machine had been paused, so timers
//! programmed before the snapshot fire after the same guest delay. The
//! guest's wall clock therefore lags real time by the time the snapshot
//! sat on disk, until something (NTP, `date -s`) sets it. A pause and
//! resume likewise hides the paused interval from the guest.

use serde::{Deserialize, Serialize};

use crate::clint::ClintState;
use crate::plic::PlicState;
use crate::uart::UartState;

/// Version of [`MachineState`] this build writes and reads.
pub const MACHINE_STATE_VERSION: u32 = 1;

/// The `virt` board's name in a state file (refuses other boards' files).
pub const BOARD_NAME: &str = "riscv64-virt";
/// The `spike` board's name in a state file.
pub const SPIKE_BOARD_NAME: &str = "riscv64-spike";

/// A device state that does not fit the device it is restored into.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{device} state: {what}")]
pub struct DeviceStateError {
    pub device: &'static str,
    pub what: String,
}

impl DeviceStateError {
    pub fn new(device: &'static str, what: String) -> Self {
        DeviceStateError { device, what }
    }
}

/// The machine configuration a snapshot was taken of (shared with the
/// x86 board: `vcpus` counts the harts, `builtin_sbi` is always given).
pub use vmm::board::MachineSummary;

/// SBI hart state management, per hart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum HsmState {
    Started,
    Stopped,
    StartPending { addr: u64, opaque: u64 },
}

/// A qcow2 disk's internal snapshot taken at the same instant.
pub use vmm::board::DiskSnapshot;

/// A spike program's HTIF page: served as MMIO (so every store to
/// `tohost` reaches the host at once), its bytes live outside RAM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HtifState {
    pub tohost: u64,
    pub fromhost: Option<u64>,
    /// The page's 4096 bytes.
    pub bytes: Vec<u8>,
}

/// The body of a `virt` or `spike` board's state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineState {
    /// [`MACHINE_STATE_VERSION`] when written.
    pub version: u32,
    pub machine: MachineSummary,
    /// `mtime` at the snapshot (ticks of the 10 MHz timebase).
    pub time: u64,
    pub harts: Vec<riscv::HartState>,
    pub hsm: Vec<HsmState>,
    pub clint: ClintState,
    pub plic: PlicState,
    pub uart: UartState,
    /// Host terminal input goes to the virtio console (hvc0), not the UART.
    pub input_to_hvc: bool,
    /// One per virtio slot, in slot order.
    pub virtio: Vec<virtio::persist::TransportState>,
    /// Internal snapshots of the read-write qcow2 disks.
    pub disks: Vec<DiskSnapshot>,
    /// The spike program's HTIF page, if it has one.
    pub htif: Option<HtifState>,
    /// What the snapshot's taker recorded about the machine for its
    /// restorer (the control API's VM configuration: disk paths, networks);
    /// the board itself does not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<serde_json::Value>,
}
