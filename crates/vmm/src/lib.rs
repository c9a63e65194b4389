//! vmm: what every virtkit virtual machine has, whatever runs its CPUs
//! (the RISC-V emulator today, KVM next).
//!
//! - [`GuestRam`]: guest RAM, allocated once, seen by device models as a
//!   `vm-memory` [`GuestMemoryMmap`](vm_memory::GuestMemoryMmap) and by the
//!   CPU's fast path as a host pointer.
//! - [`IrqLine`]: the one interrupt-line trait: device models (virtio, the
//!   UART) drive a line; interrupt controllers (the PLIC, a KVM irqfd)
//!   implement it.
//!
//! - [`snapshot`]: snapshot state files (magic, version, length, CRC,
//!   a serde body) and memory files mapped back `MAP_PRIVATE`
//!   ([`GuestRam::from_file`]).
//!
//! - [`board`]: what both boards keep for snapshots: the [`board::Disk`]
//!   on a virtio-blk slot, the [`board::MachineSummary`] a restore must
//!   match, qcow2 internal snapshots of the disks and their revert.
//!
//! - [`BootFile`]: a kernel or initrd, in memory or read from its file
//!   straight into guest RAM.
//!
//! - [`RunClock`]: a machine's running time, pauses left out (what
//!   `--timeout` counts on both boards).
//!
//! Layering: `vmm` sits under the device models (`virtio`) and the boards
//! (`riscv-machine`), and knows neither.

pub mod api;
pub mod board;
mod boot_file;
mod irq;
mod memory;
mod run_clock;
pub mod snapshot;

pub use boot_file::BootFile;
pub use irq::IrqLine;
pub use memory::GuestRam;
pub use run_clock::RunClock;
/// The `vm-memory` version guest RAM is built on.
pub use vm_memory;

/// Errors of the vmm crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest RAM of {size:#x} bytes at {base:#x}: {reason}")]
    GuestRam {
        base: u64,
        size: usize,
        reason: String,
    },
}

/// Result type of the vmm crate.
pub type Result<T> = std::result::Result<T, Error>;
