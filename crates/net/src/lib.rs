//! net: where a virtio-net device's frames go and come from, independent of
//! the machine and of the CPU engine.
//!
//! The contract between a NIC model (crate `virtio`, `Net`) and a backend is
//! [`Backend`]: packets cross it as a `virtio_net_hdr_v1` (12 bytes,
//! [`VNET_HDR_LEN`]) followed by one Ethernet frame, so that checksum and
//! segmentation offloads pass through unchanged (a tap device with
//! IFF_VNET_HDR takes exactly this; the user-mode stack reads the header).

pub mod user;

pub mod tap;

/// Size of `struct virtio_net_hdr_v1` (virtio 1.x: flags, gso_type,
/// hdr_len, gso_size, csum_start, csum_offset, num_buffers).
pub const VNET_HDR_LEN: usize = 12;

/// Largest packet that crosses [`Backend`]: a 64 KiB GSO frame, its
/// Ethernet header and the vnet header. Buffers passed to
/// [`Backend::recv`] have at least this many bytes.
pub const MAX_PACKET: usize = VNET_HDR_LEN + 14 + 65535;

/// Errors of the network backends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// Result type of the net crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Called by a backend, from any thread, when [`Backend::recv`] may have a
/// packet for the guest (the device then wakes its worker thread).
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// A network backend of one NIC.
///
/// The device's worker thread calls `send` for each packet the guest
/// transmits and `recv` while the guest has receive buffers; neither may
/// block for long (a backend drops a packet rather than stall the guest).
pub trait Backend: Send {
    /// Virtio-net feature bits (offloads: CSUM, GUEST_CSUM, GUEST_TSO4/6,
    /// HOST_TSO4/6, ...) this backend can handle; the device offers only
    /// these offloads to the driver.
    fn offloads(&self) -> u64;

    /// The driver accepted `features`: the backend must from now on accept
    /// what they allow the guest to send and may produce what they allow
    /// the guest to receive.
    fn set_features(&mut self, features: u64) -> Result<()>;

    /// Starts the backend's own work (host sockets, threads); `waker` is
    /// called whenever a packet for the guest becomes available.
    fn start(&mut self, waker: Waker) -> Result<()>;

    /// A packet from the guest: vnet header, then the Ethernet frame.
    fn send(&mut self, packet: &[u8]) -> Result<()>;

    /// The next packet for the guest (vnet header, then the frame) into
    /// `buf` (at least [`MAX_PACKET`] bytes): its length, or `None` when
    /// nothing is ready.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>>;

    /// Stops the backend's work (the device was reset or the VM stops).
    fn stop(&mut self) {}
}
