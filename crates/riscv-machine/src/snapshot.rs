//! What a snapshot of the `virt` board holds: the body of the state file
//! (framed by [`vmm::snapshot`]), and the check that a restore target
//! matches it.
//!
//! The body names the machine configuration (harts, RAM size, the kind of
//! M-mode software, the device in each virtio slot and each disk's size),
//! so restoring into a different machine is refused with a message saying
//! what differs, before anything is built. Each device's state is its own
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

/// The machine configuration a snapshot was taken of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSummary {
    /// [`BOARD_NAME`] or [`SPIKE_BOARD_NAME`].
    pub board: String,
    pub harts: usize,
    /// RAM size in bytes (page aligned).
    pub mem_size: u64,
    /// The kernel runs on the built-in SBI (no firmware in M-mode).
    pub builtin_sbi: bool,
    /// The device in each virtio slot: "block", "rng", "console", "net".
    pub devices: Vec<String>,
    /// Each disk's size in bytes, in slot order.
    pub disk_sizes: Vec<u64>,
}

impl MachineSummary {
    /// What differs between the snapshot's machine (`self`) and the one it
    /// is restored into, in words; `None` if they match.
    pub fn mismatch(&self, target: &MachineSummary) -> Option<String> {
        if self.board != target.board {
            return Some(format!(
                "the snapshot is of a {} machine, not {}",
                self.board, target.board
            ));
        }
        if self.harts != target.harts {
            return Some(format!(
                "the snapshot has {} harts, the machine {} (use --cpus {})",
                self.harts, target.harts, self.harts
            ));
        }
        if self.mem_size != target.mem_size {
            return Some(format!(
                "the snapshot has {} MiB of RAM, the machine {} MiB (use --mem {})",
                self.mem_size >> 20,
                target.mem_size >> 20,
                self.mem_size >> 20
            ));
        }
        if self.builtin_sbi != target.builtin_sbi {
            let name = |b: bool| {
                if b {
                    "the built-in SBI"
                } else {
                    "a firmware file"
                }
            };
            return Some(format!(
                "the snapshot ran {}, the machine {}",
                name(self.builtin_sbi),
                name(target.builtin_sbi)
            ));
        }
        if self.devices != target.devices {
            return Some(format!(
                "the snapshot's virtio devices are [{}], the machine's [{}]",
                self.devices.join(", "),
                target.devices.join(", ")
            ));
        }
        for (i, (a, b)) in self.disk_sizes.iter().zip(&target.disk_sizes).enumerate() {
            // A drive that was empty (size 0) takes any medium: the guest
            // is told of its capacity on restore.
            if a != b && *a != 0 {
                return Some(format!("disk {i} has {b} bytes, the snapshot's had {a}"));
            }
        }
        None
    }
}

/// SBI hart state management, per hart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum HsmState {
    Started,
    Stopped,
    StartPending { addr: u64, opaque: u64 },
}

/// A qcow2 disk's internal snapshot taken at the same instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSnapshot {
    /// Disk index (in `MachineConfig::disks` order).
    pub disk: usize,
    /// Name of the internal snapshot in that qcow2 image.
    pub name: String,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> MachineSummary {
        MachineSummary {
            board: BOARD_NAME.into(),
            harts: 2,
            mem_size: 256 << 20,
            builtin_sbi: true,
            devices: vec!["block".into(), "rng".into()],
            disk_sizes: vec![1 << 30],
        }
    }

    #[test]
    fn mismatches_are_named() {
        let a = summary();
        assert_eq!(a.mismatch(&summary()), None);
        let mut b = summary();
        b.harts = 4;
        assert!(a.mismatch(&b).unwrap().contains("2 harts"));
        let mut b = summary();
        b.mem_size = 512 << 20;
        assert!(a.mismatch(&b).unwrap().contains("256 MiB"));
        let mut b = summary();
        b.devices.pop();
        assert!(a.mismatch(&b).unwrap().contains("block, rng"));
        let mut b = summary();
        b.disk_sizes[0] = 4096;
        assert!(a.mismatch(&b).unwrap().contains("disk 0"));
        let mut a0 = summary();
        a0.disk_sizes[0] = 0;
        assert_eq!(a0.mismatch(&summary()), None, "a medium in an empty drive");
        assert!(summary().mismatch(&a0).unwrap().contains("disk 0"));
        let mut b = summary();
        b.builtin_sbi = false;
        assert!(a.mismatch(&b).unwrap().contains("firmware"));
    }
}
