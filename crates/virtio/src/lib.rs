//! Paravirtualized devices for virtkit: the virtio-mmio transport (version 2,
//! modern only) and the network, block, entropy and console devices behind
//! it.
//!
//! The device models are architecture-neutral: each one sees only
//!
//! * guest memory, as a `vm-memory` [`GuestMemoryMmap`] (see
//!   [`vmm::GuestRam`] for how the machine allocates RAM once and shares it
//!   with the CPU's fast path),
//! * an interrupt line, the [`vmm::IrqLine`] trait (the PLIC of the RISC-V
//!   board implements it today, a KVM irqfd tomorrow),
//! * its own 0x200-byte register window, [`MmioTransport::read`] and
//!   [`MmioTransport::write`].
//!
//! # Plugging a device into a board
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use virtio::{MmioTransport, Rng};
//! use vmm::{GuestRam, IrqLine};
//!
//! struct Line; // the board's PLIC source n
//! impl IrqLine for Line {
//!     fn set_level(&self, level: bool) { /* plic.set_pending(n, level) */ }
//! }
//!
//! let ram = GuestRam::new(0x8000_0000, 256 << 20).unwrap();
//! let cpu_ptr = ram.host_ptr(); // the CPU's fast path: guest 0x8000_0000 == cpu_ptr
//! let slot = Mutex::new(MmioTransport::new(
//!     Box::new(Rng::new()),
//!     ram.memory().clone(),
//!     Arc::new(Line),
//! ));
//! // On a load/store that hits 0x1000_1000..0x1000_1200:
//! let mut buf = [0u8; 4];
//! slot.lock().unwrap().read(0x000, &mut buf); // "virt" magic
//! # let _ = cpu_ptr;
//! ```
//!
//! # Threading
//!
//! A driver's QueueNotify write never does I/O on the vCPU thread: when the
//! driver sets DRIVER_OK, the transport starts one worker thread for the
//! device, and a notification only sets a bit and wakes that thread. The
//! worker processes the queues, writes the used rings and raises the
//! interrupt line (from the worker thread: [`vmm::IrqLine`] implementations must
//! be thread-safe). A device reset (status 0), [`MmioTransport::shutdown`] or
//! dropping the transport stops and joins the worker after the request it is
//! working on; nothing is left running.
//!
//! # Hostile guests
//!
//! Everything in guest memory is untrusted. `virtio-queue` bounds chain
//! walks by the queue size (65535 for indirect tables) and checks ring
//! placement; on top of that every device
//!
//! * checks each descriptor's whole range against guest memory before use
//!   and refuses chains with readable descriptors after writable ones,
//! * caps descriptors per chain and bytes per request with named constants
//!   ([`SEG_MAX`], [`MAX_REQUEST_BYTES`], [`MAX_DISCARD_SEGMENTS`],
//!   [`MAX_RNG_BYTES_PER_REQUEST`], [`MAX_TX_CHAIN_BYTES`],
//!   [`MAX_NET_DESCRIPTORS`], `net::MAX_PACKET`) and copies
//!   through fixed bounce buffers, so no guest value sizes a host allocation,
//! * answers a bad block request with VIRTIO_BLK_S_IOERR / UNSUPP (short
//!   header, sectors beyond the capacity or overflowing, partial sectors,
//!   writes to a read-only disk), and a chain with no room for a status
//!   byte with a zero-length completion,
//! * sets DEVICE_NEEDS_RESET (and raises a configuration interrupt) when
//!   the rings themselves are broken (an available index running more than
//!   a queue ahead, a head index beyond the queue), then ignores the queue
//!   until the driver resets the device.
//!
//! `crates/virtio/fuzz` has two cargo-fuzz targets: `queues` (arbitrary
//! descriptor tables and requests for every device) and `mmio` (arbitrary
//! register traffic, including activation). Run them with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run queues --fuzz-dir crates/virtio/fuzz`
//! after seeding: `cargo run --manifest-path crates/virtio/fuzz/Cargo.toml
//! --bin write-seeds -- crates/virtio/fuzz/corpus`.

mod blk;
mod console;
mod mmio;
mod net;
pub mod persist;
mod queue;
mod rng;

pub use self::net::{
    default_mac, net_features, Net, NetState, Nic, MAX_NET_DESCRIPTORS, MIN_TX_PACKET,
};
pub use blk::{
    Block, BlockConfig, EmptyMedium, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, MAX_REQUEST_BYTES,
    SEG_MAX, SIZE_MAX,
};
pub use console::{Console, ConsoleHost, MAX_PENDING_INPUT, MAX_TX_CHAIN_BYTES};
pub use mmio::{status, MmioTransport, MMIO_WINDOW_SIZE};
pub use queue::{ActivateContext, DeviceSignals, QueueHandler, VirtioDevice, WorkerEvents};
pub use rng::{Rng, MAX_RNG_BYTES_PER_REQUEST};
/// The `vm-memory` version the devices are built on (use it to name
/// `GuestAddress`, `Bytes` etc. without a version mismatch).
pub use vm_memory;
pub use vm_memory::GuestMemoryMmap;

#[doc(hidden)]
pub mod fuzzing;

/// Errors of the virtio crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the virtio device thread: {0}")]
    SpawnWorker(#[source] std::io::Error),
    #[error("virtio queue {index}: {reason}")]
    Queue { index: usize, reason: String },
    #[error("guest memory access failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Result type of the virtio crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Virtio device type IDs (virtio 1.2, section 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
}

/// Device-independent feature bits (virtio 1.2, section 6).
pub mod features {
    /// Indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u32 = 28;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u32 = 29;
    /// The modern interface (mandatory for virtio-mmio version 2).
    pub const VERSION_1: u32 = 32;
}
