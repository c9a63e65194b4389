//! User-mode networking: a rootless NAT between one guest NIC and the
//! host's ordinary sockets, with QEMU's addresses (like `-nic user`).
//!
//! # What the guest sees
//! Network 10.0.2.0/24; the guest gets 10.0.2.15 by DHCP with router
//! 10.0.2.2 and DNS 10.0.2.3. TCP and UDP to 10.0.2.2:P reach the host's
//! 127.0.0.1:P; UDP (and TCP) to 10.0.2.3:53 go to the first resolver of
//! [`UserConfig::dns_servers`] (default: `/etc/resolv.conf`); TCP and UDP to
//! any other address leave through host sockets the process opens itself
//! (no root, no raw sockets). ICMP echo to 10.0.2.2/10.0.2.3 is answered
//! here; to other addresses it goes through an unprivileged ping socket
//! (`SOCK_DGRAM`/`IPPROTO_ICMP`) when `net.ipv4.ping_group_range` admits
//! the process, and is dropped otherwise. No IPv6 (the guest's IPv6
//! frames are dropped), no IP fragments, no other ICMP.
//!
//! [`UserConfig::restrict`] cuts the guest off: nothing it starts leaves
//! (TCP gets a reset, UDP and ICMP are dropped, DNS too); DHCP, pings to
//! the gateway and the port forwards ([`HostFwd`]) still work.
//!
//! # Why smoltcp
//! The guest's TCP is terminated by `smoltcp` (one socket per flow, created
//! when the guest's SYN shows up or a forwarded host connection is
//! accepted) and relayed to a host socket, so the host kernel runs TCP
//! toward the real peer. The alternative, passt's translation of guest
//! segments straight into host socket calls, saves a copy but needs its own
//! TCP engine toward the guest (sequence tracking, windows, retransmission
//! when the guest drops frames); smoltcp's is tested and small, which wins
//! for correctness at the size of this crate. Throughput comes from
//! offloads rather than from skipping a copy: the guest may send 64 KiB
//! TSO segments with partial checksums (smoltcp is told not to verify TCP
//! checksums: frames cross memory, not a wire), and when the driver takes
//! GUEST_TSO4 the guest's SYN advertises a 64 KiB MSS to smoltcp, which
//! then emits 64 KiB segments that go up as GSO frames (gso_size = the
//! guest's real MSS) with a partial checksum. The emulated guest CPU, not
//! the host, is what such a link runs out of.
//!
//! # Threads and bounds
//! [`Backend::start`] spawns one thread that owns smoltcp and every host
//! socket and sleeps in `poll(2)`; `send` queues a frame for it and `recv`
//! takes one from its output queue (both queues hold at most
//! [`MAX_QUEUED_FRAMES`]; beyond, frames are dropped like a full wire). At
//! most [`MAX_TCP_FLOWS`] TCP and [`MAX_UDP_FLOWS`] UDP/ICMP flows exist at
//! once, each TCP flow buffers at most [`TCP_BUFFER`] bytes per direction
//! (a slow reader closes the window instead), and idle flows expire
//! ([`TCP_IDLE`], [`UDP_IDLE`], [`CONNECT_TIMEOUT`]). A guest flooding SYNs
//! gets resets once the table is full; garbage frames are dropped.

mod dhcp;
mod hostfwd;
mod stack;
mod wire;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub use hostfwd::{HostFwd, Proto};

use crate::{Backend, Error, Result, Waker};

/// The gateway: reaches the host's loopback, answers ARP and pings.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The DNS forwarder.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The address DHCP gives the guest.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Netmask of 10.0.2.0/24.
pub const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
/// MAC address of the gateway and DNS server (QEMU's slirp uses the same).
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];

/// Concurrent TCP flows (a flooding guest gets resets beyond this).
pub const MAX_TCP_FLOWS: usize = 256;
/// Concurrent UDP and ICMP echo flows.
pub const MAX_UDP_FLOWS: usize = 256;
/// Bytes buffered per TCP flow and direction: enough window for a fast
/// local link, small enough that a full table costs at most 64 MiB.
pub const TCP_BUFFER: usize = 128 * 1024;
/// Frames waiting in each direction between the device and the stack.
pub const MAX_QUEUED_FRAMES: usize = 512;
/// An established TCP flow with no traffic for this long is reset.
pub const TCP_IDLE: Duration = Duration::from_secs(3600);
/// A host connect that has not completed by then is reported refused.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A UDP or ping flow with no traffic for this long is forgotten.
pub const UDP_IDLE: Duration = Duration::from_secs(60);

// virtio-net feature bits this backend deals in.
const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_HOST_TSO4: u64 = 1 << 11;

/// Configuration of one user-mode network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserConfig {
    /// QEMU's `restrict=on`: the guest reaches nothing outside; only the
    /// forwards work.
    pub restrict: bool,
    /// Host-to-guest port forwards.
    pub hostfwd: Vec<HostFwd>,
    /// Resolvers behind 10.0.2.3 (address and port; the first is used);
    /// `None` reads `/etc/resolv.conf` (port 53).
    pub dns_servers: Option<Vec<SocketAddr>>,
}

/// The host's resolvers from resolv.conf text (`nameserver` lines), on
/// port 53.
fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(a)) => a
                    .split('%')
                    .next()?
                    .parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53)),
                _ => None,
            }
        })
        .collect()
}

/// State shared by the device side and the stack thread.
struct Shared {
    /// Packets for the guest (vnet header + frame).
    to_guest: Mutex<VecDeque<Vec<u8>>>,
    /// Packets from the guest (vnet header + frame).
    from_guest: Mutex<VecDeque<Vec<u8>>>,
    features: AtomicU64,
    stop: AtomicBool,
}

fn lock(q: &Mutex<VecDeque<Vec<u8>>>) -> MutexGuard<'_, VecDeque<Vec<u8>>> {
    // A panic while holding the lock cannot leave a VecDeque half-updated
    // in a way that matters here: keep going with its contents.
    q.lock().unwrap_or_else(|e| e.into_inner())
}

/// The host end of the forwards, bound by [`UserNet::new`].
struct Listeners {
    tcp: Vec<(TcpListener, HostFwd)>,
    udp: Vec<(UdpSocket, HostFwd)>,
}

/// A user-mode network backend for one NIC.
pub struct UserNet {
    shared: Arc<Shared>,
    wake_tx: UnixDatagram,
    /// What the stack thread owns while it is not running.
    idle: Option<(stack::Stack, UnixDatagram)>,
    thread: Option<JoinHandle<(stack::Stack, UnixDatagram)>>,
    forward_addrs: Vec<SocketAddr>,
}

fn bind_error(fwd: &HostFwd, addr: SocketAddr, e: std::io::Error) -> Error {
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => "the port is already in use".to_string(),
        std::io::ErrorKind::PermissionDenied => format!(
            "port {} is privileged: binding it needs CAP_NET_BIND_SERVICE \
             (or a lower net.ipv4.ip_unprivileged_port_start)",
            addr.port()
        ),
        std::io::ErrorKind::AddrNotAvailable => "the address is not one of this host's".to_string(),
        _ => "cannot bind".to_string(),
    };
    Error::Io {
        what: format!("hostfwd {fwd}: host address {addr}: {why}"),
        source: e,
    }
}

impl UserNet {
    /// Binds the forwarded host ports (an error names a port that is in use
    /// or needs privileges) and prepares the stack; [`Backend::start`]
    /// runs it.
    pub fn new(cfg: UserConfig) -> Result<UserNet> {
        let dns = match &cfg.dns_servers {
            Some(d) => d.clone(),
            None => std::fs::read_to_string("/etc/resolv.conf")
                .map(|t| parse_resolv_conf(&t))
                .unwrap_or_default(),
        };
        let mut listeners = Listeners {
            tcp: Vec::new(),
            udp: Vec::new(),
        };
        let mut forward_addrs = Vec::new();
        for fwd in &cfg.hostfwd {
            let addr = SocketAddr::from((fwd.host_addr, fwd.host_port));
            let local = match fwd.proto {
                Proto::Tcp => {
                    let l = TcpListener::bind(addr).map_err(|e| bind_error(fwd, addr, e))?;
                    l.set_nonblocking(true)
                        .map_err(|e| bind_error(fwd, addr, e))?;
                    let local = l.local_addr().map_err(|e| bind_error(fwd, addr, e))?;
                    listeners.tcp.push((l, fwd.clone()));
                    local
                }
                Proto::Udp => {
                    let s = UdpSocket::bind(addr).map_err(|e| bind_error(fwd, addr, e))?;
                    s.set_nonblocking(true)
                        .map_err(|e| bind_error(fwd, addr, e))?;
                    let local = s.local_addr().map_err(|e| bind_error(fwd, addr, e))?;
                    listeners.udp.push((s, fwd.clone()));
                    local
                }
            };
            forward_addrs.push(local);
        }
        let io = |what: &str| {
            let what = what.to_string();
            move |source| Error::Io { what, source }
        };
        let (wake_tx, wake_rx) = UnixDatagram::pair().map_err(io("user net: wake-up socket"))?;
        wake_tx
            .set_nonblocking(true)
            .map_err(io("user net: wake-up socket"))?;
        wake_rx
            .set_nonblocking(true)
            .map_err(io("user net: wake-up socket"))?;
        let shared = Arc::new(Shared {
            to_guest: Mutex::new(VecDeque::new()),
            from_guest: Mutex::new(VecDeque::new()),
            features: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let stack = stack::Stack::new(cfg.restrict, dns, listeners, shared.clone());
        Ok(UserNet {
            shared,
            wake_tx,
            idle: Some((stack, wake_rx)),
            thread: None,
            forward_addrs,
        })
    }

    /// The host addresses the forwards are bound to, in the order of
    /// [`UserConfig::hostfwd`] (host port 0 shows the port chosen).
    pub fn forward_addrs(&self) -> &[SocketAddr] {
        &self.forward_addrs
    }

    fn wake(&self) {
        // A full socket already holds a pending wake-up: nothing is lost.
        let _ = self.wake_tx.send(&[1]);
    }
}

impl Backend for UserNet {
    fn offloads(&self) -> u64 {
        F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_HOST_TSO4
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        self.shared
            .features
            .store(features & self.offloads(), Ordering::Relaxed);
        Ok(())
    }

    fn start(&mut self, waker: Waker) -> Result<()> {
        let Some((mut stack, wake_rx)) = self.idle.take() else {
            return Ok(()); // already running
        };
        self.shared.stop.store(false, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("user-net".into())
            .spawn(move || {
                stack.run(&wake_rx, &waker);
                (stack, wake_rx)
            });
        match spawned {
            Ok(t) => {
                self.thread = Some(t);
                Ok(())
            }
            Err(source) => Err(Error::Io {
                what: "user net: starting its thread".into(),
                source,
            }),
        }
    }

    fn send(&mut self, packet: &[u8]) -> Result<()> {
        if packet.len() < crate::VNET_HDR_LEN + wire::ETH_HDR || packet.len() > crate::MAX_PACKET {
            return Ok(()); // not a frame: dropped as a wire would
        }
        let was_empty = {
            let mut q = lock(&self.shared.from_guest);
            if q.len() >= MAX_QUEUED_FRAMES {
                return Ok(());
            }
            q.push_back(packet.to_vec());
            q.len() == 1
        };
        if was_empty {
            self.wake();
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        let Some(p) = lock(&self.shared.to_guest).pop_front() else {
            return Ok(None);
        };
        if p.len() > buf.len() {
            return Err(Error::Config(format!(
                "user net: receive buffer of {} bytes is smaller than a {}-byte packet",
                buf.len(),
                p.len()
            )));
        }
        buf[..p.len()].copy_from_slice(&p);
        Ok(Some(p.len()))
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shared.stop.store(true, Ordering::Relaxed);
            self.wake();
            if let Ok((mut stack, wake_rx)) = t.join() {
                // A reset device starts over with no flows.
                stack.reset();
                self.idle = Some((stack, wake_rx));
            }
            lock(&self.shared.to_guest).clear();
            lock(&self.shared.from_guest).clear();
        }
    }
}

impl Drop for UserNet {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let t = "# comment\nnameserver 127.0.0.53\nsearch x\nnameserver fe80::1%eth0\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec![
                SocketAddr::from(([127, 0, 0, 53], 53)),
                "[fe80::1]:53".parse::<SocketAddr>().unwrap()
            ]
        );
    }
}
