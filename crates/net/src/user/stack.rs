//! The user-mode network's thread: smoltcp toward the guest, host sockets
//! toward the world, and the relay between them.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

use super::wire::{self, Mac};
use super::{dhcp, lock, Listeners, Shared};
use super::{
    CONNECT_TIMEOUT, DNS_ADDR, F_GUEST_CSUM, F_GUEST_TSO4, GATEWAY_ADDR, GATEWAY_MAC,
    MAX_QUEUED_FRAMES, MAX_TCP_FLOWS, MAX_UDP_FLOWS, TCP_BUFFER, TCP_IDLE, UDP_IDLE,
};
use crate::VNET_HDR_LEN;

/// The MSS smoltcp is told a GUEST_TSO4 guest advertised: the largest
/// segment that fits one IPv4 packet with a 20-byte TCP header.
const TSO_MSS: u16 = 65535 - 20 - 20;
/// MSS assumed for a guest that did not say (RFC 879's default is smaller,
/// but every guest of ours says).
const DEFAULT_MSS: u16 = 1460;
/// Datagrams read from one host socket per round of the loop.
const READ_BATCH: usize = 64;
/// First port of the gateway's side of forwarded connections.
const EPHEMERAL_START: u16 = 49152;

const BROADCAST_MAC: Mac = [0xff; 6];

/// A flow as the guest sees it: its own endpoint and the peer's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct FlowKey {
    guest: SocketAddrV4,
    remote: SocketAddrV4,
}

enum TcpFlow {
    /// Waiting for the host connect; the guest's SYN is replayed to
    /// smoltcp once it succeeds.
    Connecting {
        host: TcpStream,
        syn: Vec<u8>,
        since: Instant,
    },
    Open(OpenTcp),
}

struct OpenTcp {
    host: TcpStream,
    handle: SocketHandle,
    last: Instant,
    /// The host socket has data or an event to read.
    readable: bool,
    host_eof: bool,
    host_shut: bool,
}

enum UdpFlow {
    /// The guest's datagrams to an outside address, through a host socket.
    Out { sock: UdpSocket, last: Instant },
    /// Datagrams from a host peer of a UDP forward.
    Fwd {
        listener: usize,
        peer: SocketAddr,
        last: Instant,
    },
}

struct PingFlow {
    sock: UdpSocket,
    last: Instant,
}

/// The smoltcp device: frames from the guest in, frames to the guest out.
struct GuestPort {
    rx: VecDeque<Vec<u8>>,
    shared: Arc<Shared>,
    /// The MSS each guest endpoint advertised (the GSO size of the large
    /// segments smoltcp sends it).
    mss: HashMap<FlowKey, u16>,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a GuestPort);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut pkt = vec![0u8; VNET_HDR_LEN + len];
        let r = f(&mut pkt[VNET_HDR_LEN..]);
        self.0.finish(&mut pkt);
        lock(&self.0.shared.to_guest).push_back(pkt);
        r
    }
}

impl phy::Device for GuestPort {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TxToken<'_>> {
        // A guest that does not take its frames stalls smoltcp's output
        // (which retransmits later) instead of growing the queue.
        (lock(&self.shared.to_guest).len() < MAX_QUEUED_FRAMES).then_some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // Large enough for a 64 KiB segment; the guest's MSS (or the GSO
        // size when the guest takes GUEST_TSO4) bounds what is sent.
        caps.max_transmission_unit = wire::ETH_HDR + 65535;
        let mut csum = ChecksumCapabilities::default();
        // IPv4 headers are computed on the way out; nothing is verified on
        // the way in (frames cross memory, and an offloading guest sends
        // partial TCP checksums); TCP checksums are done in `finish`.
        csum.ipv4 = Checksum::Tx;
        csum.tcp = Checksum::None;
        caps.checksum = csum;
        caps
    }
}

impl GuestPort {
    /// Fills in the vnet header and the TCP checksum of a frame smoltcp
    /// produced: a partial checksum (and GSO for large segments) when the
    /// driver negotiated it, a full one otherwise.
    fn finish(&self, pkt: &mut [u8]) {
        let features = self.shared.features.load(Ordering::Relaxed);
        let frame = &mut pkt[VNET_HDR_LEN..];
        let Some(eth) = wire::parse_eth(frame) else {
            return;
        };
        if eth.ethertype != wire::ETHERTYPE_IPV4 {
            return;
        }
        let Some(ip) = wire::parse_ipv4(&frame[wire::ETH_HDR..]) else {
            return;
        };
        if ip.proto != wire::PROTO_TCP {
            return;
        }
        let l4_at = wire::ETH_HDR + ip.hdr_len;
        let l4_len = ip.total_len - ip.hdr_len;
        let Some(tcp) = wire::parse_tcp(&frame[l4_at..l4_at + l4_len]) else {
            return;
        };
        let pseudo = wire::pseudo_sum(ip.src, ip.dst, wire::PROTO_TCP, l4_len);
        if features & F_GUEST_CSUM == 0 {
            frame[l4_at + 16..l4_at + 18].copy_from_slice(&[0, 0]);
            let c = wire::fold(wire::sum16(&frame[l4_at..l4_at + l4_len], pseudo));
            frame[l4_at + 16..l4_at + 18].copy_from_slice(&c.to_be_bytes());
            return;
        }
        // Partial checksum: the folded pseudo-header sum, as Linux leaves
        // it in a CHECKSUM_PARTIAL skb.
        let partial = !wire::fold(pseudo);
        frame[l4_at + 16..l4_at + 18].copy_from_slice(&partial.to_be_bytes());
        let key = FlowKey {
            guest: SocketAddrV4::new(ip.dst, tcp.dst_port),
            remote: SocketAddrV4::new(ip.src, tcp.src_port),
        };
        let mss = self.mss.get(&key).copied().unwrap_or(DEFAULT_MSS);
        let payload = l4_len - tcp.hdr_len;
        let hdr = &mut pkt[..VNET_HDR_LEN];
        hdr[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
        hdr[6..8].copy_from_slice(&(l4_at as u16).to_le_bytes()); // csum_start
        hdr[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
        if features & F_GUEST_TSO4 != 0 && payload > usize::from(mss) {
            hdr[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
            hdr[2..4].copy_from_slice(&((l4_at + tcp.hdr_len) as u16).to_le_bytes());
            hdr[4..6].copy_from_slice(&mss.to_le_bytes());
        }
    }
}

/// Where the stack's poll(2) results go.
#[derive(Clone, Copy)]
enum Token {
    Wake,
    TcpListener(usize),
    UdpListener(usize),
    Tcp(FlowKey),
    Udp(FlowKey),
    Ping((Ipv4Addr, u16)),
}

pub(super) struct Stack {
    restrict: bool,
    dns: Vec<SocketAddr>,
    listeners: Listeners,
    shared: Arc<Shared>,
    iface: Interface,
    port: GuestPort,
    sockets: SocketSet<'static>,
    tcp: HashMap<FlowKey, TcpFlow>,
    udp: HashMap<FlowKey, UdpFlow>,
    udp_peers: HashMap<(usize, SocketAddr), FlowKey>,
    pings: HashMap<(Ipv4Addr, u16), PingFlow>,
    guest_mac: Option<Mac>,
    /// The guest's (MAC, IPv4) last told to smoltcp's neighbour cache.
    guest_neighbor: Option<(Mac, Ipv4Addr)>,
    next_port: u16,
    epoch: Instant,
    /// Frames the stack sent the guest since the waker last ran.
    produced: bool,
    /// Sockets poll(2) found ready (other than open TCP flows, which keep
    /// their own flag).
    ready: Vec<Token>,
}

fn smol_now(epoch: Instant) -> SmolInstant {
    SmolInstant::from_micros(epoch.elapsed().as_micros() as i64)
}

impl Stack {
    pub(super) fn new(
        restrict: bool,
        dns: Vec<SocketAddr>,
        listeners: Listeners,
        shared: Arc<Shared>,
    ) -> Stack {
        let epoch = Instant::now();
        let mut port = GuestPort {
            rx: VecDeque::new(),
            shared: shared.clone(),
            mss: HashMap::new(),
        };
        let iface = Self::new_iface(&mut port, epoch);
        Stack {
            restrict,
            dns,
            listeners,
            shared,
            iface,
            port,
            sockets: SocketSet::new(Vec::new()),
            tcp: HashMap::new(),
            udp: HashMap::new(),
            udp_peers: HashMap::new(),
            pings: HashMap::new(),
            guest_mac: None,
            guest_neighbor: None,
            next_port: EPHEMERAL_START,
            epoch,
            produced: false,
            ready: Vec::new(),
        }
    }

    fn new_iface(port: &mut GuestPort, epoch: Instant) -> Interface {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        config.random_seed = epoch.elapsed().as_nanos() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let mut iface = Interface::new(config, port, smol_now(epoch));
        iface.update_ip_addrs(|a| {
            // Two addresses fit smoltcp's fixed-size address list.
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(GATEWAY_ADDR), 24));
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(DNS_ADDR), 24));
        });
        // Any destination routed through our own address is accepted: the
        // guest's connections to the whole world end in smoltcp sockets.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY_ADDR);
        iface
    }

    /// Forgets every flow (the device was reset).
    pub(super) fn reset(&mut self) {
        self.tcp.clear();
        self.udp.clear();
        self.udp_peers.clear();
        self.pings.clear();
        self.sockets = SocketSet::new(Vec::new());
        self.port.rx.clear();
        self.port.mss.clear();
        self.guest_mac = None;
        self.guest_neighbor = None;
        self.iface = Self::new_iface(&mut self.port, self.epoch);
    }

    /// The thread's loop, until the backend is stopped.
    pub(super) fn run(&mut self, wake_rx: &UnixDatagram, waker: &crate::Waker) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.wait(wake_rx);
            let frames: Vec<Vec<u8>> = lock(&self.shared.from_guest).drain(..).collect();
            for f in &frames {
                self.guest_packet(f);
            }
            self.poll_iface();
            self.accept_forwards();
            self.tcp_progress();
            self.udp_progress();
            self.expire();
            self.poll_iface();
            if std::mem::take(&mut self.produced) || !lock(&self.shared.to_guest).is_empty() {
                waker();
            }
        }
    }

    fn poll_iface(&mut self) {
        let now = smol_now(self.epoch);
        self.iface.poll(now, &mut self.port, &mut self.sockets);
    }

    /// Sleeps in poll(2) until a host socket, the device or a smoltcp
    /// timer needs attention, and records which sockets are ready.
    fn wait(&mut self, wake_rx: &UnixDatagram) {
        let mut tokens = vec![Token::Wake];
        let mut fds = vec![PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN)];
        for (i, (l, _)) in self.listeners.tcp.iter().enumerate() {
            if self.tcp.len() < MAX_TCP_FLOWS {
                tokens.push(Token::TcpListener(i));
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
        }
        for (i, (l, _)) in self.listeners.udp.iter().enumerate() {
            tokens.push(Token::UdpListener(i));
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        for (key, flow) in &self.tcp {
            let (fd, events) = match flow {
                TcpFlow::Connecting { host, .. } => (host.as_fd(), PollFlags::POLLOUT),
                TcpFlow::Open(o) => {
                    let s = self.sockets.get::<tcp::Socket>(o.handle);
                    let mut ev = PollFlags::empty();
                    if !o.host_eof && s.can_send() && !o.readable {
                        ev |= PollFlags::POLLIN;
                    }
                    if s.recv_queue() > 0 {
                        ev |= PollFlags::POLLOUT;
                    }
                    if ev.is_empty() {
                        // Nothing wanted from this socket now. poll(2)
                        // reports POLLHUP even for no events: a host peer
                        // that closed while the guest still finishes its
                        // side would make every poll return at once and
                        // the thread spin (stealing a core from the
                        // guest's CPU) until the guest's FIN.
                        continue;
                    }
                    (o.host.as_fd(), ev)
                }
            };
            tokens.push(Token::Tcp(*key));
            fds.push(PollFd::new(fd, events));
        }
        for (key, flow) in &self.udp {
            if let UdpFlow::Out { sock, .. } = flow {
                tokens.push(Token::Udp(*key));
                fds.push(PollFd::new(sock.as_fd(), PollFlags::POLLIN));
            }
        }
        for (key, p) in &self.pings {
            tokens.push(Token::Ping(*key));
            fds.push(PollFd::new(p.sock.as_fd(), PollFlags::POLLIN));
        }
        let now = smol_now(self.epoch);
        let mut timeout_ms = self
            .iface
            .poll_delay(now, &self.sockets)
            .map_or(1000, |d| d.total_millis().min(1000));
        // Host data known to be waiting and room for it: no sleeping (a
        // full smoltcp buffer waits for the guest's ACKs instead).
        let ready_tcp = self.tcp.values().any(|f| {
            matches!(f, TcpFlow::Open(o) if o.readable && !o.host_eof
                && self.sockets.get::<tcp::Socket>(o.handle).can_send())
        });
        if !lock(&self.shared.from_guest).is_empty() || ready_tcp {
            timeout_ms = 0;
        }
        let timeout = PollTimeout::from(timeout_ms as u16);
        // EINTR and friends: just go round again.
        if nix::poll::poll(&mut fds, timeout).is_err() {
            return;
        }
        let ready: Vec<(Token, PollFlags)> = tokens
            .iter()
            .zip(&fds)
            .filter_map(|(t, f)| f.revents().filter(|r| !r.is_empty()).map(|r| (*t, r)))
            .collect();
        drop(fds);
        self.ready.clear();
        for (token, revents) in ready {
            match token {
                Token::Wake => {
                    let mut b = [0u8; 64];
                    while wake_rx.recv(&mut b).is_ok() {}
                }
                Token::Tcp(key) => match self.tcp.get_mut(&key) {
                    Some(TcpFlow::Open(o)) => {
                        let rd = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
                        if revents.intersects(rd) {
                            o.readable = true;
                        }
                    }
                    Some(TcpFlow::Connecting { .. }) => self.ready.push(token),
                    None => {}
                },
                t => self.ready.push(t),
            }
        }
    }
}

/// Where a guest's outbound flow to `dst:port` goes on the host, or `None`
/// when it goes nowhere (restricted network, our own subnet, multicast).
fn host_target(restrict: bool, dns: &[SocketAddr], dst: Ipv4Addr, port: u16) -> Option<SocketAddr> {
    if restrict || dst.is_broadcast() || dst.is_multicast() || dst.is_unspecified() {
        return None;
    }
    if dst == GATEWAY_ADDR {
        return Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if dst == DNS_ADDR {
        return (port == 53).then(|| dns.first().copied())?;
    }
    let o = dst.octets();
    if o[0] == 10 && o[1] == 0 && o[2] == 2 {
        return None; // nobody else lives on the guest's subnet
    }
    Some(SocketAddr::from((dst, port)))
}

impl Stack {
    /// Pushes a frame built here (not by smoltcp) to the guest.
    fn push_guest(&mut self, frame: Vec<u8>) {
        let mut q = lock(&self.shared.to_guest);
        if q.len() < MAX_QUEUED_FRAMES {
            let mut pkt = vec![0u8; VNET_HDR_LEN];
            pkt.extend_from_slice(&frame);
            q.push_back(pkt);
            self.produced = true;
        }
    }

    fn guest_mac(&self) -> Mac {
        self.guest_mac.unwrap_or(BROADCAST_MAC)
    }

    /// One packet from the guest: vnet header, then the Ethernet frame.
    fn guest_packet(&mut self, pkt: &[u8]) {
        let frame = &pkt[VNET_HDR_LEN.min(pkt.len())..];
        let Some(eth) = wire::parse_eth(frame) else {
            return;
        };
        if eth.src[0] & 1 != 0 {
            return; // a multicast source address is never a real sender
        }
        self.guest_mac = Some(eth.src);
        match eth.ethertype {
            wire::ETHERTYPE_ARP => self.guest_arp(frame),
            wire::ETHERTYPE_IPV4 => self.guest_ipv4(frame, eth.src),
            _ => {} // IPv6 and the rest: not served
        }
    }

    fn guest_arp(&mut self, frame: &[u8]) {
        let Some(arp) = wire::parse_arp(&frame[wire::ETH_HDR..]) else {
            return;
        };
        match arp.op {
            // Requests are answered here, for our two addresses only (a
            // guest probing its own address must hear nothing).
            1 if arp.target_ip == GATEWAY_ADDR || arp.target_ip == DNS_ADDR => {
                let r = wire::arp_reply(GATEWAY_MAC, arp.target_ip, arp.sender_mac, arp.sender_ip);
                self.push_guest(r);
            }
            // Replies to smoltcp's own requests fill its neighbour cache.
            2 if arp.target_ip == GATEWAY_ADDR || arp.target_ip == DNS_ADDR => {
                self.port.rx.push_back(frame.to_vec());
            }
            _ => {}
        }
    }

    /// Tells smoltcp where the guest is, so its first SYN-ACK does not wait
    /// for an ARP round trip.
    fn learn_guest(&mut self, mac: Mac, ip: Ipv4Addr) {
        let o = ip.octets();
        if self.guest_neighbor == Some((mac, ip)) || !(o[0] == 10 && o[1] == 0 && o[2] == 2) {
            return;
        }
        if ip == GATEWAY_ADDR || ip == DNS_ADDR || o[3] == 0 || o[3] == 255 {
            return;
        }
        self.guest_neighbor = Some((mac, ip));
        let reply = wire::arp_reply(mac, ip, GATEWAY_MAC, GATEWAY_ADDR);
        self.port.rx.push_back(reply);
    }

    fn guest_ipv4(&mut self, frame: &[u8], src_mac: Mac) {
        let p = &frame[wire::ETH_HDR..];
        let Some(ip) = wire::parse_ipv4(p) else {
            return;
        };
        self.learn_guest(src_mac, ip.src);
        let l4 = &p[ip.hdr_len..ip.total_len];
        match ip.proto {
            wire::PROTO_TCP => self.guest_tcp(frame, &ip, l4),
            wire::PROTO_UDP => self.guest_udp(&ip, l4),
            wire::PROTO_ICMP => self.guest_icmp(&ip, l4),
            _ => {}
        }
    }

    fn guest_tcp(&mut self, frame: &[u8], ip: &wire::Ipv4, l4: &[u8]) {
        let Some(tcp) = wire::parse_tcp(l4) else {
            return;
        };
        let key = FlowKey {
            guest: SocketAddrV4::new(ip.src, tcp.src_port),
            remote: SocketAddrV4::new(ip.dst, tcp.dst_port),
        };
        let mut frame = frame.to_vec();
        if tcp.flags & wire::TCP_SYN != 0 {
            // Remember the guest's MSS (the GSO size toward it) and, when
            // it takes TSO, let smoltcp send it 64 KiB segments.
            let l4_at = wire::ETH_HDR + ip.hdr_len;
            if let Some((mss, at)) = wire::tcp_mss(l4, tcp.hdr_len) {
                if self.port.mss.len() < 2 * MAX_TCP_FLOWS || self.port.mss.contains_key(&key) {
                    self.port.mss.insert(key, mss.max(64));
                }
                let features = self.shared.features.load(Ordering::Relaxed);
                if features & F_GUEST_TSO4 != 0 {
                    frame[l4_at + at..l4_at + at + 2].copy_from_slice(&TSO_MSS.to_be_bytes());
                }
            }
        }
        match self.tcp.get(&key) {
            Some(TcpFlow::Open(_)) => self.port.rx.push_back(frame),
            Some(TcpFlow::Connecting { .. }) => {} // a retransmitted SYN
            None if tcp.flags & (wire::TCP_SYN | wire::TCP_ACK) == wire::TCP_SYN => {
                self.new_outbound(key, frame, ip, &tcp, l4.len() - tcp.hdr_len)
            }
            // Segments of no flow: smoltcp answers them with a reset.
            None => self.port.rx.push_back(frame),
        }
    }

    fn refuse(&mut self, ip: &wire::Ipv4, tcp: &wire::Tcp, payload_len: usize) {
        if let Some(r) = wire::tcp_rst_for(GATEWAY_MAC, self.guest_mac(), ip, tcp, payload_len) {
            self.push_guest(r);
        }
    }

    /// The guest's SYN opens a flow: connect on the host first, answer the
    /// guest when that succeeds.
    fn new_outbound(
        &mut self,
        key: FlowKey,
        syn: Vec<u8>,
        ip: &wire::Ipv4,
        tcp: &wire::Tcp,
        payload: usize,
    ) {
        let Some(target) = host_target(self.restrict, &self.dns, ip.dst, tcp.dst_port) else {
            return self.refuse(ip, tcp, payload);
        };
        if self.tcp.len() >= MAX_TCP_FLOWS {
            return self.refuse(ip, tcp, payload);
        }
        match connect_nonblocking(target) {
            Ok(host) => {
                self.port.mss.entry(key).or_insert(DEFAULT_MSS);
                self.tcp.insert(
                    key,
                    TcpFlow::Connecting {
                        host,
                        syn,
                        since: Instant::now(),
                    },
                );
            }
            Err(_) => self.refuse(ip, tcp, payload),
        }
    }

    fn new_tcp_socket(&mut self) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        );
        s.set_nagle_enabled(false);
        self.sockets.add(s)
    }

    /// Completes the host connects poll(2) reported, and relays every open
    /// flow.
    fn tcp_progress(&mut self) {
        let ready: Vec<FlowKey> = self
            .ready
            .iter()
            .filter_map(|t| match t {
                Token::Tcp(k) => Some(*k),
                _ => None,
            })
            .collect();
        for key in ready {
            let Some(TcpFlow::Connecting { host, .. }) = self.tcp.get(&key) else {
                continue;
            };
            let ok = matches!(host.take_error(), Ok(None)) && host.peer_addr().is_ok();
            let Some(TcpFlow::Connecting { host, syn, .. }) = self.tcp.remove(&key) else {
                continue;
            };
            if !ok {
                self.refuse_frame(&syn);
                continue;
            }
            let _ = host.set_nodelay(true);
            let handle = self.new_tcp_socket();
            let ep = IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(*key.remote.ip())),
                port: key.remote.port(),
            };
            let listening = self
                .sockets
                .get_mut::<tcp::Socket>(handle)
                .listen(ep)
                .is_ok();
            // The listening socket must take exactly this SYN: nothing else
            // is queued for smoltcp now (the guest's frames were polled in).
            self.port.rx.push_back(syn.clone());
            self.poll_iface();
            let s = self.sockets.get_mut::<tcp::Socket>(handle);
            if !listening || s.state() == tcp::State::Listen {
                self.sockets.remove(handle);
                self.refuse_frame(&syn);
                continue;
            }
            self.tcp.insert(
                key,
                TcpFlow::Open(OpenTcp {
                    host,
                    handle,
                    last: Instant::now(),
                    readable: true,
                    host_eof: false,
                    host_shut: false,
                }),
            );
        }
        let keys: Vec<FlowKey> = self.tcp.keys().copied().collect();
        for key in keys {
            let Some(TcpFlow::Open(o)) = self.tcp.get_mut(&key) else {
                continue;
            };
            let s = self.sockets.get_mut::<tcp::Socket>(o.handle);
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
                let h = o.handle;
                self.sockets.remove(h);
                self.tcp.remove(&key);
                self.port.mss.remove(&key);
                continue;
            }
            if relay(o, s) {
                o.last = Instant::now();
            }
        }
    }

    /// A reset for the guest's SYN kept in `syn` (a whole frame).
    fn refuse_frame(&mut self, syn: &[u8]) {
        let p = &syn[wire::ETH_HDR.min(syn.len())..];
        if let Some(ip) = wire::parse_ipv4(p) {
            if let Some(tcp) = wire::parse_tcp(&p[ip.hdr_len..ip.total_len]) {
                let payload = ip.total_len - ip.hdr_len - tcp.hdr_len;
                self.refuse(&ip, &tcp, payload);
            }
        }
    }

    /// New connections to the TCP forwards become smoltcp connects to the
    /// guest, from the gateway's address; datagrams to the UDP forwards go
    /// to the guest from a gateway port of their own per host peer.
    fn accept_forwards(&mut self) {
        let ready: Vec<Token> = self.ready.clone();
        for t in ready {
            match t {
                Token::TcpListener(i) => self.accept_tcp(i),
                Token::UdpListener(i) => self.recv_udp_forward(i),
                _ => {}
            }
        }
    }

    fn free_port(&mut self, taken: impl Fn(&Self, u16) -> bool) -> Option<u16> {
        for _ in EPHEMERAL_START..=u16::MAX {
            let p = self.next_port;
            self.next_port = if p == u16::MAX {
                EPHEMERAL_START
            } else {
                p + 1
            };
            if !taken(self, p) {
                return Some(p);
            }
        }
        None
    }

    fn accept_tcp(&mut self, i: usize) {
        while self.tcp.len() < MAX_TCP_FLOWS {
            let Ok((host, _)) = self.listeners.tcp[i].0.accept() else {
                return;
            };
            let fwd = self.listeners.tcp[i].1.clone();
            let guest = SocketAddrV4::new(fwd.guest_addr, fwd.guest_port);
            let taken = |st: &Self, p| {
                st.tcp.contains_key(&FlowKey {
                    guest,
                    remote: SocketAddrV4::new(GATEWAY_ADDR, p),
                })
            };
            let Some(port) = self.free_port(taken) else {
                return;
            };
            if host.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = host.set_nodelay(true);
            let handle = self.new_tcp_socket();
            let local = IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(GATEWAY_ADDR)),
                port,
            };
            let remote = (IpAddress::Ipv4(fwd.guest_addr), fwd.guest_port);
            let cx = self.iface.context();
            if self
                .sockets
                .get_mut::<tcp::Socket>(handle)
                .connect(cx, remote, local)
                .is_err()
            {
                self.sockets.remove(handle);
                continue;
            }
            let key = FlowKey {
                guest,
                remote: SocketAddrV4::new(GATEWAY_ADDR, port),
            };
            self.tcp.insert(
                key,
                TcpFlow::Open(OpenTcp {
                    host,
                    handle,
                    last: Instant::now(),
                    readable: true,
                    host_eof: false,
                    host_shut: false,
                }),
            );
        }
    }

    fn recv_udp_forward(&mut self, i: usize) {
        let mut buf = vec![0u8; wire::MAX_UDP_PAYLOAD];
        for _ in 0..READ_BATCH {
            let Ok((n, peer)) = self.listeners.udp[i].0.recv_from(&mut buf) else {
                return;
            };
            let fwd = self.listeners.udp[i].1.clone();
            let guest = SocketAddrV4::new(fwd.guest_addr, fwd.guest_port);
            let key = match self.udp_peers.get(&(i, peer)) {
                Some(k) => *k,
                None => {
                    if self.udp.len() + self.pings.len() >= MAX_UDP_FLOWS {
                        continue;
                    }
                    let taken = |st: &Self, p| {
                        st.udp.contains_key(&FlowKey {
                            guest,
                            remote: SocketAddrV4::new(GATEWAY_ADDR, p),
                        })
                    };
                    let Some(port) = self.free_port(taken) else {
                        continue;
                    };
                    let key = FlowKey {
                        guest,
                        remote: SocketAddrV4::new(GATEWAY_ADDR, port),
                    };
                    self.udp_peers.insert((i, peer), key);
                    key
                }
            };
            self.udp.insert(
                key,
                UdpFlow::Fwd {
                    listener: i,
                    peer,
                    last: Instant::now(),
                },
            );
            let f = wire::udp_frame(
                GATEWAY_MAC,
                self.guest_mac(),
                *key.remote.ip(),
                key.remote.port(),
                *key.guest.ip(),
                key.guest.port(),
                &buf[..n],
            );
            self.push_guest(f);
        }
    }

    fn guest_udp(&mut self, ip: &wire::Ipv4, l4: &[u8]) {
        let Some(udp) = wire::parse_udp(l4) else {
            return;
        };
        if udp.dst_port == dhcp::SERVER_PORT && (ip.dst.is_broadcast() || ip.dst == GATEWAY_ADDR) {
            if let Some(reply) = dhcp::answer(udp.payload) {
                let f = wire::udp_frame(
                    GATEWAY_MAC,
                    BROADCAST_MAC,
                    GATEWAY_ADDR,
                    dhcp::SERVER_PORT,
                    Ipv4Addr::BROADCAST,
                    dhcp::CLIENT_PORT,
                    &reply,
                );
                self.push_guest(f);
            }
            return;
        }
        let key = FlowKey {
            guest: SocketAddrV4::new(ip.src, udp.src_port),
            remote: SocketAddrV4::new(ip.dst, udp.dst_port),
        };
        let now = Instant::now();
        match self.udp.get_mut(&key) {
            Some(UdpFlow::Fwd {
                listener,
                peer,
                last,
            }) => {
                *last = now;
                let _ = self.listeners.udp[*listener].0.send_to(udp.payload, *peer);
            }
            Some(UdpFlow::Out { sock, last }) => {
                *last = now;
                let _ = sock.send(udp.payload);
            }
            None => {
                let Some(target) = host_target(self.restrict, &self.dns, ip.dst, udp.dst_port)
                else {
                    return;
                };
                if self.udp.len() + self.pings.len() >= MAX_UDP_FLOWS {
                    return;
                }
                let Ok(sock) = udp_socket_to(target) else {
                    return;
                };
                let _ = sock.send(udp.payload);
                self.udp.insert(key, UdpFlow::Out { sock, last: now });
            }
        }
    }

    fn guest_icmp(&mut self, ip: &wire::Ipv4, l4: &[u8]) {
        // Echo requests only: type 8, code 0, with an identifier.
        if l4.len() < 8 || l4[0] != 8 || l4[1] != 0 {
            return;
        }
        if ip.dst == GATEWAY_ADDR || ip.dst == DNS_ADDR {
            let mut reply = l4.to_vec();
            reply[0] = 0;
            let f = wire::icmp_frame(GATEWAY_MAC, self.guest_mac(), ip.dst, ip.src, &reply);
            return self.push_guest(f);
        }
        if host_target(self.restrict, &self.dns, ip.dst, 0).is_none() {
            return;
        }
        let id = u16::from_be_bytes([l4[4], l4[5]]);
        let key = (ip.dst, id);
        if !self.pings.contains_key(&key) {
            if self.udp.len() + self.pings.len() >= MAX_UDP_FLOWS {
                return;
            }
            // Refused unless net.ipv4.ping_group_range admits us: then
            // pings to the world are dropped.
            let Ok(sock) = ping_socket(ip.dst) else {
                return;
            };
            self.pings.insert(
                key,
                PingFlow {
                    sock,
                    last: Instant::now(),
                },
            );
        }
        if let Some(p) = self.pings.get_mut(&key) {
            p.last = Instant::now();
            let _ = p.sock.send(l4);
        }
    }

    /// Datagrams and echo replies from the host sockets poll(2) reported.
    fn udp_progress(&mut self) {
        let ready: Vec<Token> = self.ready.clone();
        let mut buf = vec![0u8; wire::MAX_UDP_PAYLOAD];
        for t in ready {
            match t {
                // Bounded batches: a flooding peer cannot starve the rest.
                Token::Udp(key) => {
                    for _ in 0..READ_BATCH {
                        let Some(UdpFlow::Out { sock, last }) = self.udp.get_mut(&key) else {
                            break;
                        };
                        let n = match sock.recv(&mut buf) {
                            Ok(n) => n,
                            // ICMP errors from earlier datagrams: keep reading.
                            Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                            Err(_) => break,
                        };
                        *last = Instant::now();
                        let f = wire::udp_frame(
                            GATEWAY_MAC,
                            self.guest_mac(),
                            *key.remote.ip(),
                            key.remote.port(),
                            *key.guest.ip(),
                            key.guest.port(),
                            &buf[..n],
                        );
                        self.push_guest(f);
                    }
                }
                Token::Ping((dst, id)) => {
                    for _ in 0..READ_BATCH {
                        let Some(p) = self.pings.get_mut(&(dst, id)) else {
                            break;
                        };
                        let Ok(n) = p.sock.recv(&mut buf) else {
                            break;
                        };
                        p.last = Instant::now();
                        if n < 8 || buf[0] != 0 {
                            continue;
                        }
                        // The kernel put its own identifier in: give the guest's back.
                        buf[4..6].copy_from_slice(&id.to_be_bytes());
                        let Some((guest_mac, guest_ip)) = self.guest_neighbor else {
                            continue;
                        };
                        let f = wire::icmp_frame(GATEWAY_MAC, guest_mac, dst, guest_ip, &buf[..n]);
                        self.push_guest(f);
                    }
                }
                _ => {}
            }
        }
    }

    /// Drops idle flows and refuses connects that took too long.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut late = Vec::new();
        for (key, flow) in &mut self.tcp {
            match flow {
                TcpFlow::Connecting { since, .. }
                    if now.duration_since(*since) > CONNECT_TIMEOUT =>
                {
                    late.push(*key)
                }
                TcpFlow::Open(o) if now.duration_since(o.last) > TCP_IDLE => {
                    // Closed after the next poll has sent the reset.
                    self.sockets.get_mut::<tcp::Socket>(o.handle).abort();
                    o.last = now;
                }
                _ => {}
            }
        }
        for key in late {
            if let Some(TcpFlow::Connecting { syn, .. }) = self.tcp.remove(&key) {
                self.refuse_frame(&syn);
            }
        }
        self.udp.retain(|_, f| match f {
            UdpFlow::Out { last, .. } | UdpFlow::Fwd { last, .. } => {
                now.duration_since(*last) <= UDP_IDLE
            }
        });
        let udp = &self.udp;
        self.udp_peers.retain(|_, k| udp.contains_key(k));
        self.pings
            .retain(|_, p| now.duration_since(p.last) <= UDP_IDLE);
    }
}

/// Moves bytes between a smoltcp socket and its host socket; true when
/// anything moved.
fn relay(o: &mut OpenTcp, s: &mut tcp::Socket<'_>) -> bool {
    let mut moved = false;
    // Guest to host.
    while s.can_recv() {
        let r = s.recv(|buf| match o.host.write(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match r {
            Ok(Ok(n)) if n > 0 => moved = true,
            Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => break,
            Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => continue,
            Ok(Err(_)) => {
                s.abort();
                return true;
            }
            _ => break,
        }
    }
    // The guest closed its side and everything it sent was delivered.
    let guest_done = matches!(
        s.state(),
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    );
    if guest_done && s.recv_queue() == 0 && !o.host_shut {
        let _ = o.host.shutdown(Shutdown::Write);
        o.host_shut = true;
        moved = true;
    }
    // Host to guest.
    while o.readable && !o.host_eof && s.can_send() {
        let r = s.send(|buf| match o.host.read(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match r {
            Ok(Ok(0)) => {
                o.host_eof = true;
                s.close();
                moved = true;
            }
            Ok(Ok(_)) => moved = true,
            Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => o.readable = false,
            Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            Ok(Err(_)) => {
                s.abort();
                return true;
            }
            Err(_) => break,
        }
    }
    moved
}

/// A TCP socket connecting to `target` without blocking.
fn connect_nonblocking(target: SocketAddr) -> nix::Result<TcpStream> {
    let SocketAddr::V4(v4) = target else {
        // IPv6 resolvers: connect the ordinary way (rare: DNS over TCP).
        let s = TcpStream::connect_timeout(&target, std::time::Duration::from_secs(2))
            .map_err(|_| Errno::ECONNREFUSED)?;
        s.set_nonblocking(true).map_err(|_| Errno::EIO)?;
        return Ok(s);
    };
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match socket::connect(fd.as_raw_fd(), &SockaddrIn::from(v4)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok(TcpStream::from(fd)),
        Err(e) => Err(e),
    }
}

/// A UDP socket sending to `target`.
fn udp_socket_to(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(any)?;
    s.connect(target)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// An unprivileged ICMP echo socket connected to `dst`.
fn ping_socket(dst: Ipv4Addr) -> nix::Result<UdpSocket> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )?;
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(dst, 0)))?;
    Ok(UdpSocket::from(fd))
}
