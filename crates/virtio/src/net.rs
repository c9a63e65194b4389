//! virtio-net (virtio 1.2, 5.1): one receive and one transmit queue, over
//! any [`net::Backend`].
//!
//! Packets cross the backend boundary exactly as they sit in the rings: a
//! 12-byte `virtio_net_hdr_v1` and an Ethernet frame, so checksum and
//! segmentation offloads pass through without the device touching them.
//! The device offers only the offloads the backend reports
//! ([`net::Backend::offloads`]) and tells it what the driver accepted.
//!
//! Receive: the backend's waker kicks the receive queue; the worker takes
//! one packet at a time and, with mergeable receive buffers, spreads it
//! over as many posted buffers as it needs (`num_buffers` in the header).
//! A packet that finds no (or not enough) buffers waits in the device
//! until the driver posts more: the backend is not read meanwhile, so it
//! queues or drops by its own rules, and nothing is lost in between.
//!
//! Transmit: each chain is gathered into a fixed bounce buffer of
//! [`net::MAX_PACKET`] bytes and handed to the backend; a malformed chain
//! (outside guest memory, too many descriptors, too short or too long)
//! costs the guest that packet only.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use net::{Backend, MAX_PACKET, VNET_HDR_LEN};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::blk::copy_config;
use crate::queue::{
    collect_chain, drain_queue, read_segments, write_segments, ActivateContext, ChainBuffers,
    Completion, DeviceSignals, QueueHandler, VirtioDevice,
};
use crate::{device_type, features, Error, Result};

/// Virtqueue size of both queues.
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

/// Descriptors accepted in one chain. Linux uses at most MAX_SKB_FRAGS + 2
/// (19) per transmitted packet and one or a few per receive buffer; the cap
/// keeps an indirect table of 65535 entries from being walked per packet.
pub const MAX_NET_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// Smallest packet handed to a backend: the vnet header and an Ethernet
/// header. Shorter transmit chains are dropped.
pub const MIN_TX_PACKET: usize = VNET_HDR_LEN + 14;

/// Feature bits of virtio-net (5.1.3).
pub mod net_features {
    /// The device handles packets with partial checksums.
    pub const CSUM: u32 = 0;
    /// The driver handles packets with partial checksums.
    pub const GUEST_CSUM: u32 = 1;
    /// The device has a MAC address in its configuration.
    pub const MAC: u32 = 5;
    /// The driver can receive TSOv4.
    pub const GUEST_TSO4: u32 = 7;
    /// The driver can receive TSOv6.
    pub const GUEST_TSO6: u32 = 8;
    /// The driver can receive TSO with ECN.
    pub const GUEST_ECN: u32 = 9;
    /// The driver can receive UFO.
    pub const GUEST_UFO: u32 = 10;
    /// The device can receive TSOv4.
    pub const HOST_TSO4: u32 = 11;
    /// The device can receive TSOv6.
    pub const HOST_TSO6: u32 = 12;
    /// The device can receive TSO with ECN.
    pub const HOST_ECN: u32 = 13;
    /// The device can receive UFO.
    pub const HOST_UFO: u32 = 14;
    /// The driver can merge receive buffers.
    pub const MRG_RXBUF: u32 = 15;
    /// Configuration status field (link state) is available.
    pub const STATUS: u32 = 16;
}
use net_features as nf;

/// The offload bits a backend may allow; anything else it reports is not
/// offered.
const OFFLOADS: u64 = 1 << nf::CSUM
    | 1 << nf::GUEST_CSUM
    | 1 << nf::GUEST_TSO4
    | 1 << nf::GUEST_TSO6
    | 1 << nf::GUEST_ECN
    | 1 << nf::GUEST_UFO
    | 1 << nf::HOST_TSO4
    | 1 << nf::HOST_TSO6
    | 1 << nf::HOST_ECN
    | 1 << nf::HOST_UFO;

/// Link up in the status field.
///
/// The link is up from the start. A Linux 6.12 guest that configures eth0
/// right after loading virtio_net may still show NO-CARRIER (operstate
/// "down") for up to a second while /sys/class/net/eth0/carrier reads 1:
/// the driver's carrier-on is a non-urgent link-watch event, which the
/// kernel applies at most once a second (the probe's carrier-off used the
/// slot). Traffic flows meanwhile; an ETHTOOL_GLINK ioctl (`ethtool eth0`)
/// applies the pending event at once. Nothing the device reports changes
/// that.
const S_LINK_UP: u16 = 1;

/// Bytes of virtio_net_config we fill in: mac[6], status u16.
const CONFIG_SIZE: usize = 8;

/// Offset of num_buffers in the vnet header.
const NUM_BUFFERS_OFFSET: u64 = 10;

/// A network card a board puts on a virtio-net slot: what both boards'
/// configurations take.
pub struct Nic {
    /// Where its frames go (tap, user-mode networking, ...).
    pub backend: Box<dyn net::Backend>,
    /// Its MAC address ([`default_mac`] gives QEMU's defaults).
    pub mac: [u8; 6],
}

/// The MAC address QEMU gives its NIC number `index` (52:54:00:12:34:56,
/// then counting up in the last byte), stable across runs.
pub fn default_mac(index: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56u8.wrapping_add(index)]
}

/// What a NIC is, apart from its backend: the configuration the driver
/// sees and the features it accepted. Plain data, so it can be saved with
/// a snapshot and given back to [`Net::with_state`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetState {
    /// Layout version of this struct.
    pub version: u32,
    /// The MAC address in the configuration space.
    pub mac: [u8; 6],
    /// Link status (VIRTIO_NET_S_LINK_UP).
    pub link_up: bool,
    /// Features the driver accepted at the last activation (0 before).
    pub acked_features: u64,
}

impl NetState {
    /// Current [`NetState::version`].
    pub const VERSION: u32 = 1;
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The backend behind this lock is only ever used whole (one call at a
    // time), so poisoning leaves nothing half-done to protect.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type SharedBackend = Arc<Mutex<Box<dyn Backend>>>;

/// The network device.
pub struct Net {
    state: NetState,
    backend: SharedBackend,
    started: bool,
    max_sizes: [u16; 2],
}

impl Net {
    /// A NIC with MAC address `mac`, link up, over `backend`.
    pub fn new(backend: Box<dyn Backend>, mac: [u8; 6]) -> Net {
        Net::with_state(
            backend,
            NetState {
                version: NetState::VERSION,
                mac,
                link_up: true,
                acked_features: 0,
            },
        )
    }

    /// A NIC from saved state.
    pub fn with_state(backend: Box<dyn Backend>, state: NetState) -> Net {
        Net {
            state,
            backend: Arc::new(Mutex::new(backend)),
            started: false,
            max_sizes: [QUEUE_SIZE; 2],
        }
    }

    /// The device's state (configuration and negotiated features).
    pub fn state(&self) -> &NetState {
        &self.state
    }

    fn config(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[..6].copy_from_slice(&self.state.mac);
        let status = if self.state.link_up { S_LINK_UP } else { 0 };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c
    }

    fn stop_backend(&mut self) {
        if std::mem::take(&mut self.started) {
            lock(&self.backend).stop();
        }
    }
}

/// Offloads that may be offered given what the backend reports: a TSO bit
/// needs its checksum bit (5.1.3.1: the device MUST NOT offer GUEST_TSO*
/// without GUEST_CSUM, nor HOST_TSO* without CSUM).
fn offered_offloads(backend: u64) -> u64 {
    let mut f = backend & OFFLOADS;
    if f & 1 << nf::GUEST_CSUM == 0 {
        f &= !(1 << nf::GUEST_TSO4 | 1 << nf::GUEST_TSO6 | 1 << nf::GUEST_ECN | 1 << nf::GUEST_UFO);
    }
    if f & 1 << nf::CSUM == 0 {
        f &= !(1 << nf::HOST_TSO4 | 1 << nf::HOST_TSO6 | 1 << nf::HOST_ECN | 1 << nf::HOST_UFO);
    }
    // ECN needs one of the TSO bits it extends.
    if f & (1 << nf::GUEST_TSO4 | 1 << nf::GUEST_TSO6) == 0 {
        f &= !(1 << nf::GUEST_ECN);
    }
    if f & (1 << nf::HOST_TSO4 | 1 << nf::HOST_TSO6) == 0 {
        f &= !(1 << nf::HOST_ECN);
    }
    f
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_backend();
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn device_features(&self) -> u64 {
        1 << features::VERSION_1
            | 1 << features::RING_INDIRECT_DESC
            | 1 << features::RING_EVENT_IDX
            | 1 << nf::MAC
            | 1 << nf::STATUS
            | 1 << nf::MRG_RXBUF
            | offered_offloads(lock(&self.backend).offloads())
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        copy_config(&self.config(), offset, data);
    }

    // The MAC is read-only for a virtio 1.x driver (no CTRL_MAC_ADDR): the
    // default write_config ignores writes.

    fn activate(&mut self, ctx: ActivateContext) -> Result<Box<dyn QueueHandler>> {
        self.stop_backend();
        self.state.acked_features = ctx.features;
        let backend_err = |e: net::Error| Error::Queue {
            index: RX,
            reason: format!("network backend: {e}"),
        };
        {
            let mut b = lock(&self.backend);
            b.set_features(ctx.features & OFFLOADS)
                .map_err(backend_err)?;
            let events = ctx.events.clone();
            b.start(Box::new(move || events.kick(RX)))
                .map_err(backend_err)?;
        }
        self.started = true;
        Ok(Box::new(NetHandler {
            backend: self.backend.clone(),
            mem: ctx.mem,
            signals: ctx.signals,
            mergeable: ctx.features & (1 << nf::MRG_RXBUF) != 0,
            rx_buf: vec![0; MAX_PACKET],
            rx_len: None,
            tx_buf: vec![0; MAX_PACKET],
            chains: Vec::new(),
        }))
    }

    fn reset(&mut self) {
        self.stop_backend();
        self.state.acked_features = 0;
    }

    fn save_state(&self) -> crate::persist::DeviceState {
        self.persist_save()
    }

    fn restore_state(
        &mut self,
        state: &crate::persist::DeviceState,
    ) -> std::result::Result<(), crate::persist::PersistError> {
        self.persist_restore(state)
    }
}

struct NetHandler {
    backend: SharedBackend,
    mem: GuestMemoryMmap,
    signals: Arc<DeviceSignals>,
    mergeable: bool,
    /// The packet being delivered to the guest.
    rx_buf: Vec<u8>,
    /// Length of the packet in `rx_buf` still waiting for buffers.
    rx_len: Option<usize>,
    tx_buf: Vec<u8>,
    /// Receive chains taken for the current packet: (head, buffers).
    chains: Vec<(u16, ChainBuffers)>,
}

/// How delivering one packet went.
enum Delivery {
    /// On the used ring.
    Done,
    /// Not enough buffers yet: the available ring was rewound.
    NoRoom,
}

impl NetHandler {
    fn transmit(&mut self, q: &mut Queue) -> Result<()> {
        let mem = &self.mem;
        let buf = &mut self.tx_buf;
        let backend = &self.backend;
        drain_queue(TX, q, mem, &self.signals, |chain| {
            let Ok(bufs) = collect_chain(mem, chain, MAX_NET_DESCRIPTORS) else {
                return Completion::Used(0);
            };
            let len = bufs.readable_len();
            if len < MIN_TX_PACKET as u64 || len > buf.len() as u64 {
                return Completion::Used(0);
            }
            let len = len as usize;
            match read_segments(mem, &bufs.readable, 0, &mut buf[..len]) {
                // A backend that cannot take the packet drops it, as a
                // full wire would.
                Ok(n) if n == len => {
                    let _ = lock(backend).send(&buf[..len]);
                }
                _ => {}
            }
            Completion::Used(0)
        })
    }

    fn receive(&mut self, q: &mut Queue) -> Result<()> {
        if !q.ready() {
            return Ok(());
        }
        let qerr = |e: virtio_queue::Error| Error::Queue {
            index: RX,
            reason: e.to_string(),
        };
        let mut used_any = false;
        loop {
            let len = match self.rx_len {
                Some(len) => len,
                None => match lock(&self.backend).recv(&mut self.rx_buf) {
                    Ok(Some(len)) if (VNET_HDR_LEN..=self.rx_buf.len()).contains(&len) => len,
                    // A packet without a whole header is a backend bug:
                    // nothing sensible can reach the guest from it.
                    Ok(Some(_)) => continue,
                    // Nothing ready, or a backend error (dropped here:
                    // the device has no one to report it to).
                    Ok(None) | Err(_) => break,
                },
            };
            self.rx_len = Some(len);
            q.disable_notification(&self.mem).map_err(qerr)?;
            match self.deliver(q, len, &mut used_any)? {
                Delivery::Done => self.rx_len = None,
                Delivery::NoRoom => {
                    // Ask for a kick when buffers come; if some came in the
                    // meantime, try again right away.
                    if q.enable_notification(&self.mem).map_err(qerr)? {
                        continue;
                    }
                    break;
                }
            }
        }
        q.enable_notification(&self.mem).map_err(qerr)?;
        if used_any && q.needs_notification(&self.mem).map_err(qerr)? {
            self.signals.signal_used_queue();
        }
        Ok(())
    }

    /// Puts the packet in `rx_buf[..len]` into as many receive chains as it
    /// needs (one without mergeable buffers), or none if they are not all
    /// there yet.
    fn deliver(&mut self, q: &mut Queue, len: usize, used_any: &mut bool) -> Result<Delivery> {
        let mem = &self.mem;
        let qerr = |e: virtio_queue::Error| Error::Queue {
            index: RX,
            reason: e.to_string(),
        };
        let start = q.next_avail();
        self.chains.clear();
        let mut room = 0u64;
        while room < len as u64 {
            let Some(chain) = q.iter(mem).map_err(qerr)?.next() else {
                // Rewind: the chains taken so far stay available.
                q.set_next_avail(start);
                self.chains.clear();
                return Ok(Delivery::NoRoom);
            };
            let head = chain.head_index();
            match collect_chain(mem, chain, MAX_NET_DESCRIPTORS) {
                Ok(bufs)
                    if bufs.readable.is_empty() && bufs.writable_len() >= VNET_HDR_LEN as u64 =>
                {
                    room += bufs.writable_len();
                    self.chains.push((head, bufs));
                    if !self.mergeable {
                        break;
                    }
                }
                // A malformed buffer (outside memory, readable parts, too
                // small for a header) goes back empty and costs the guest
                // this packet.
                _ => {
                    for (h, _) in self
                        .chains
                        .drain(..)
                        .chain([(head, ChainBuffers::default())])
                    {
                        q.add_used(mem, h, 0).map_err(qerr)?;
                    }
                    *used_any = true;
                    return Ok(Delivery::Done);
                }
            }
        }
        if room < len as u64 {
            // Without mergeable buffers the packet must fit one chain.
            for (h, _) in self.chains.drain(..) {
                q.add_used(mem, h, 0).map_err(qerr)?;
            }
            *used_any = true;
            return Ok(Delivery::Done);
        }
        let num_buffers = self.chains.len() as u16;
        self.rx_buf[NUM_BUFFERS_OFFSET as usize..VNET_HDR_LEN]
            .copy_from_slice(&num_buffers.to_le_bytes());
        let mut off = 0usize;
        for (head, bufs) in self.chains.drain(..) {
            let n = (bufs.writable_len() as usize).min(len - off);
            let written =
                write_segments(mem, &bufs.writable, 0, &self.rx_buf[off..off + n]).unwrap_or(0);
            q.add_used(mem, head, written as u32).map_err(qerr)?;
            off += n;
        }
        *used_any = true;
        Ok(Delivery::Done)
    }
}

impl QueueHandler for NetHandler {
    fn process(&mut self, queues: &mut [Queue], pending: u32) -> Result<()> {
        if pending & (1 << TX) != 0 {
            if let Some(q) = queues.get_mut(TX) {
                self.transmit(q)?;
            }
        }
        // RX is kicked by the driver posting buffers and by the backend's
        // waker.
        if pending & (1 << RX) != 0 {
            if let Some(q) = queues.get_mut(RX) {
                self.receive(q)?;
            }
        }
        Ok(())
    }
}

// ---- persist: snapshot state (see crate::persist) ----

impl Net {
    fn persist_save(&self) -> crate::persist::DeviceState {
        crate::persist::DeviceState::Net {
            mac: self.state.mac,
            link_up: self.state.link_up,
            acked_features: self.state.acked_features,
        }
    }

    /// The restored guest's driver knows the saved MAC: it wins over the
    /// one this NIC was created with (as Firecracker does).
    fn persist_restore(
        &mut self,
        state: &crate::persist::DeviceState,
    ) -> std::result::Result<(), crate::persist::PersistError> {
        let crate::persist::DeviceState::Net {
            mac,
            link_up,
            acked_features,
        } = *state
        else {
            return Err(crate::persist::wrong_state(device_type::NET, state));
        };
        self.state = NetState {
            version: NetState::VERSION,
            mac,
            link_up,
            acked_features,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tso_is_offered_only_with_its_checksum() {
        let all = OFFLOADS;
        assert_eq!(offered_offloads(all), all);
        let f = offered_offloads(all & !(1 << nf::CSUM));
        assert_eq!(f & (1 << nf::HOST_TSO4 | 1 << nf::HOST_TSO6), 0);
        assert_ne!(f & 1 << nf::GUEST_TSO4, 0);
        assert_eq!(offered_offloads(1 << 40 | 1 << nf::MRG_RXBUF), 0);
    }

    #[test]
    fn default_macs_count_up_from_qemus() {
        assert_eq!(default_mac(0), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(default_mac(2)[5], 0x58);
    }
}
