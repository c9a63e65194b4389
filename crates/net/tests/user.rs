//! User-mode networking driven through the `Backend` contract, with a
//! smoltcp stack (or hand-built frames) as the guest. Traffic stays on
//! 127.0.0.1.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use net::user::{HostFwd, UserConfig, UserNet, GATEWAY_MAC};
use net::{Backend, MAX_PACKET, VNET_HDR_LEN};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const DEADLINE: Duration = Duration::from_secs(20);

fn start(cfg: UserConfig) -> (UserNet, Arc<AtomicUsize>) {
    let mut net = UserNet::new(cfg).expect("user net");
    let wakes = Arc::new(AtomicUsize::new(0));
    let w = wakes.clone();
    net.start(Box::new(move || {
        w.fetch_add(1, Ordering::Relaxed);
    }))
    .expect("start");
    (net, wakes)
}

fn send_frame(net: &mut UserNet, frame: &[u8]) {
    let mut p = vec![0u8; VNET_HDR_LEN];
    p.extend_from_slice(frame);
    net.send(&p).unwrap();
}

/// The next frame for the guest that `want` accepts, within the deadline.
fn wait_frame(net: &mut UserNet, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_PACKET];
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        match net.recv(&mut buf).unwrap() {
            Some(n) if want(&buf[VNET_HDR_LEN..n]) => return buf[VNET_HDR_LEN..n].to_vec(),
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    panic!("no matching frame for the guest");
}

/// The smoltcp "guest" sees the backend as its NIC.
/// The NIC, its receive buffer, whether the guest takes offloads (then
/// TCP checksums are partial and not verified) and the GSO sizes seen.
struct Nic<'a>(&'a mut UserNet, Vec<u8>, bool, Rc<RefCell<Vec<u16>>>);
struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut UserNet);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut p = vec![0u8; VNET_HDR_LEN + len];
        let r = f(&mut p[VNET_HDR_LEN..]);
        self.0.send(&p).unwrap();
        r
    }
}

impl phy::Device for Nic<'_> {
    type RxToken<'a>
        = Rx
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let n = self.0.recv(&mut self.1).unwrap()?;
        if self.1[1] != 0 {
            self.3
                .borrow_mut()
                .push(u16::from_le_bytes([self.1[4], self.1[5]]));
        }
        let frame = self.1[VNET_HDR_LEN..n].to_vec();
        Some((Rx(frame), Tx(self.0)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(self.0))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        if self.2 {
            c.checksum.tcp = Checksum::Tx;
        }
        c
    }
}

struct Guest {
    offload: bool,
    gso: Rc<RefCell<Vec<u16>>>,
    iface: Interface,
    sockets: SocketSet<'static>,
    epoch: Instant,
}

impl Guest {
    fn new(net: &mut UserNet) -> Guest {
        Self::with_offloads(net, false)
    }

    fn with_offloads(net: &mut UserNet, offload: bool) -> Guest {
        let epoch = Instant::now();
        let gso = Rc::new(RefCell::new(Vec::new()));
        let mut nic = Nic(net, vec![0; MAX_PACKET], offload, gso.clone());
        let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut iface = Interface::new(cfg, &mut nic, SmolInstant::from_millis(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24))
                .unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(10, 0, 2, 2))
            .unwrap();
        Guest {
            offload,
            gso,
            iface,
            sockets: SocketSet::new(Vec::new()),
            epoch,
        }
    }

    fn tcp_socket(&mut self) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        self.sockets.add(s)
    }

    /// Runs the guest stack until `done` says so.
    fn run_until(&mut self, net: &mut UserNet, mut done: impl FnMut(&mut Self) -> bool) {
        let end = Instant::now() + DEADLINE;
        let mut nic = Nic(net, vec![0; MAX_PACKET], self.offload, self.gso.clone());
        while Instant::now() < end {
            let now = SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64);
            self.iface.poll(now, &mut nic, &mut self.sockets);
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        panic!("guest condition not reached in time");
    }

    fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }
}

fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[10, 0, 2, 15]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

fn dhcp_discover() -> Vec<u8> {
    let mut bootp = vec![0u8; 240];
    bootp[0] = 1;
    bootp[1] = 1;
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&[9, 8, 7, 6]);
    bootp[28..34].copy_from_slice(&GUEST_MAC);
    bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    bootp.extend_from_slice(&[53, 1, 1, 255]);
    let udp_len = 8 + bootp.len();
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]);
    f.extend_from_slice(&[0, 68, 0, 67]);
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(&bootp);
    f
}

/// The value of DHCP option `code` in a reply frame.
fn dhcp_option(frame: &[u8], code: u8) -> Option<Vec<u8>> {
    let opts = &frame[14 + 20 + 8 + 240..];
    let mut i = 0;
    while i + 1 < opts.len() && opts[i] != 255 {
        let len = usize::from(opts[i + 1]);
        if opts[i] == code {
            return Some(opts[i + 2..i + 2 + len].to_vec());
        }
        i += 2 + len;
    }
    None
}

#[test]
fn dhcp_offers_qemu_addresses_and_arp_answers_for_the_gateway() {
    let (mut net, _) = start(UserConfig::default());
    send_frame(&mut net, &dhcp_discover());
    let offer = wait_frame(&mut net, |f| f.len() > 42 && f[23] == 17);
    assert_eq!(&offer[0..6], &[0xff; 6]);
    assert_eq!(&offer[26..30], &[10, 0, 2, 2], "from the gateway");
    assert_eq!(&offer[34..38], &[0, 67, 0, 68]);
    let bootp = &offer[42..];
    assert_eq!(&bootp[4..8], &[9, 8, 7, 6], "xid");
    assert_eq!(&bootp[16..20], &[10, 0, 2, 15], "yiaddr");
    assert_eq!(dhcp_option(&offer, 53), Some(vec![2]), "OFFER");
    assert_eq!(dhcp_option(&offer, 3), Some(vec![10, 0, 2, 2]), "router");
    assert_eq!(dhcp_option(&offer, 6), Some(vec![10, 0, 2, 3]), "DNS");
    assert_eq!(dhcp_option(&offer, 1), Some(vec![255, 255, 255, 0]));
    assert!(dhcp_option(&offer, 51).is_some(), "lease");

    for target in [[10, 0, 2, 2], [10, 0, 2, 3]] {
        send_frame(&mut net, &arp_request(target));
        let reply = wait_frame(&mut net, |f| f.len() >= 42 && f[12..14] == [8, 6]);
        assert_eq!(&reply[0..6], &GUEST_MAC);
        assert_eq!(&reply[20..22], &[0, 2], "ARP reply");
        assert_eq!(&reply[22..28], &GATEWAY_MAC);
        assert_eq!(&reply[28..32], &target);
    }
}

#[test]
fn guest_tcp_to_gateway_reaches_host_loopback_both_ways() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let expect = big.clone();
    let t = std::thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        c.write_all(&big).unwrap();
        // The guest's FIN arrives as EOF.
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        rest
    });
    let (mut net, _) = start(UserConfig::default());
    let mut g = Guest::new(&mut net);
    let h = g.tcp_socket();
    let cx = g.iface.context();
    g.sockets
        .get_mut::<tcp::Socket>(h)
        .connect(cx, (IpAddress::v4(10, 0, 2, 2), port), 40000)
        .unwrap();
    g.run_until(&mut net, |g| g.tcp(h).may_send());
    g.tcp(h).send_slice(b"ping").unwrap();
    let mut got = Vec::new();
    g.run_until(&mut net, |g| {
        let s = g.tcp(h);
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        got.len() >= expect.len()
    });
    assert!(got == expect, "host-to-guest bytes differ");
    g.tcp(h).send_slice(b"bye").unwrap();
    g.tcp(h).close();
    g.run_until(&mut net, |g| {
        !g.tcp(h).is_active() || g.tcp(h).state() == tcp::State::TimeWait
    });
    assert_eq!(t.join().unwrap(), b"bye");
}

#[test]
fn a_tso_guest_gets_large_segments_with_its_mss_as_gso_size() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let big = vec![0x5au8; 400_000];
    let t = std::thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        c.write_all(&big).unwrap();
    });
    let mut net = UserNet::new(UserConfig::default()).unwrap();
    net.set_features(net.offloads()).unwrap();
    net.start(Box::new(|| {})).unwrap();
    let mut g = Guest::with_offloads(&mut net, true);
    let h = g.tcp_socket();
    let cx = g.iface.context();
    g.sockets
        .get_mut::<tcp::Socket>(h)
        .connect(cx, (IpAddress::v4(10, 0, 2, 2), port), 40003)
        .unwrap();
    let mut got = 0;
    g.run_until(&mut net, |g| {
        let s = g.tcp(h);
        while s.can_recv() {
            got += s.recv(|b| (b.len(), b.len())).unwrap();
        }
        got >= 400_000
    });
    t.join().unwrap();
    let gso = g.gso.borrow();
    assert!(!gso.is_empty(), "no GSO frame reached the guest");
    // smoltcp as the guest advertises MSS 1460 for its 1514-byte MTU.
    assert!(gso.iter().all(|&s| s == 1460), "{gso:?}");
}

#[test]
fn guest_tcp_to_a_closed_port_is_reset() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut net, _) = start(UserConfig::default());
    let mut g = Guest::new(&mut net);
    let h = g.tcp_socket();
    let cx = g.iface.context();
    g.sockets
        .get_mut::<tcp::Socket>(h)
        .connect(cx, (IpAddress::v4(10, 0, 2, 2), port), 40001)
        .unwrap();
    g.run_until(&mut net, |g| g.tcp(h).state() == tcp::State::Closed);
}

#[test]
fn guest_udp_to_gateway_reaches_host_loopback_and_back() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let mut b = [0u8; 100];
        let (n, from) = server.recv_from(&mut b).unwrap();
        server.send_to(&b[..n].to_ascii_uppercase(), from).unwrap();
    });
    let (mut net, _) = start(UserConfig::default());
    let mut g = Guest::new(&mut net);
    let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
    let h = g.sockets.add(udp::Socket::new(buf(), buf()));
    let s = g.sockets.get_mut::<udp::Socket>(h);
    s.bind(5000).unwrap();
    s.send_slice(b"echo me", (IpAddress::v4(10, 0, 2, 2), port))
        .unwrap();
    let mut reply = None;
    g.run_until(&mut net, |g| {
        let s = g.sockets.get_mut::<udp::Socket>(h);
        if let Ok((d, meta)) = s.recv() {
            reply = Some((d.to_vec(), meta.endpoint));
        }
        reply.is_some()
    });
    let (data, from) = reply.unwrap();
    assert_eq!(data, b"ECHO ME");
    assert_eq!(from.addr, IpAddress::v4(10, 0, 2, 2));
    assert_eq!(from.port, port);
    t.join().unwrap();
}

#[test]
fn tcp_forward_reaches_a_listening_guest() {
    let cfg = UserConfig {
        hostfwd: vec!["tcp:127.0.0.1:0-:8080".parse().unwrap()],
        ..UserConfig::default()
    };
    let (mut net, _) = start(cfg);
    let addr = net.forward_addrs()[0];
    let mut g = Guest::new(&mut net);
    let h = g.tcp_socket();
    g.tcp(h).listen(8080).unwrap();
    let t = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"hello guest").unwrap();
        let mut b = [0u8; 10];
        c.read_exact(&mut b).unwrap();
        b
    });
    let mut got = Vec::new();
    g.run_until(&mut net, |g| {
        let s = g.tcp(h);
        if s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        got.len() >= 11
    });
    assert_eq!(got, b"hello guest");
    assert_eq!(
        g.tcp(h).remote_endpoint().unwrap().addr,
        IpAddress::v4(10, 0, 2, 2),
        "forwarded connections come from the gateway"
    );
    g.tcp(h).send_slice(b"hello host").unwrap();
    g.run_until(&mut net, |g| g.tcp(h).send_queue() == 0);
    assert_eq!(&t.join().unwrap(), b"hello host");
}

#[test]
fn udp_forward_reaches_the_guest_and_replies_return() {
    let cfg = UserConfig {
        hostfwd: vec!["udp::0-:5353".parse().unwrap()],
        ..UserConfig::default()
    };
    let (mut net, _) = start(cfg);
    let addr = net.forward_addrs()[0];
    let mut g = Guest::new(&mut net);
    let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
    let h = g.sockets.add(udp::Socket::new(buf(), buf()));
    g.sockets.get_mut::<udp::Socket>(h).bind(5353).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"query", addr).unwrap();
    g.run_until(&mut net, |g| {
        let s = g.sockets.get_mut::<udp::Socket>(h);
        match s.recv() {
            Ok((d, meta)) => {
                assert_eq!(d, b"query");
                let to = meta.endpoint;
                s.send_slice(b"answer", to).unwrap();
                true
            }
            Err(_) => false,
        }
    });
    g.run_until(&mut net, |g| {
        g.sockets.get_mut::<udp::Socket>(h).send_queue() == 0
    });
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 16];
    let (n, from) = client.recv_from(&mut b).unwrap();
    assert_eq!((&b[..n], from), (&b"answer"[..], addr));
}

#[test]
fn restrict_refuses_outbound_but_forwards_work() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let port = server.local_addr().unwrap().port();
    let cfg = UserConfig {
        restrict: true,
        hostfwd: vec!["tcp::0-:22".parse().unwrap()],
        ..UserConfig::default()
    };
    let (mut net, _) = start(cfg);
    let fwd = net.forward_addrs()[0];
    let mut g = Guest::new(&mut net);
    let h = g.tcp_socket();
    let cx = g.iface.context();
    g.sockets
        .get_mut::<tcp::Socket>(h)
        .connect(cx, (IpAddress::v4(10, 0, 2, 2), port), 40002)
        .unwrap();
    g.run_until(&mut net, |g| g.tcp(h).state() == tcp::State::Closed);
    assert!(server.accept().is_err(), "the host server saw a connection");

    let l = g.tcp_socket();
    g.tcp(l).listen(22).unwrap();
    let t = std::thread::spawn(move || TcpStream::connect(fwd).unwrap().write_all(b"in").unwrap());
    g.run_until(&mut net, |g| g.tcp(l).recv_queue() >= 2);
    t.join().unwrap();
}

#[test]
fn a_forward_port_in_use_is_an_error_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = UserConfig {
        hostfwd: vec![format!("tcp::{port}-:22").parse::<HostFwd>().unwrap()],
        ..UserConfig::default()
    };
    let err = UserNet::new(cfg).err().expect("bind must fail").to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("already in use"), "{err}");
}

#[test]
fn garbage_frames_cost_only_themselves() {
    let (mut net, _) = start(UserConfig {
        restrict: true,
        ..UserConfig::default()
    });
    let mut seed = 0x1234_5678_u32;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let templates = [dhcp_discover(), arp_request([10, 0, 2, 2])];
    for i in 0..3000 {
        let mut f = if i % 3 == 0 {
            (0..(rnd() % 200) as usize)
                .map(|_| rnd() as u8)
                .collect::<Vec<u8>>()
        } else {
            templates[i % 2].clone()
        };
        // Flip a few bytes, or cut the frame short.
        for _ in 0..(rnd() % 4) {
            if !f.is_empty() {
                let at = rnd() as usize % f.len();
                f[at] = rnd() as u8;
            }
        }
        if rnd() % 5 == 0 {
            let keep = rnd() as usize % (f.len() + 1);
            f.truncate(keep);
        }
        let _ = net.send(&f); // with or without a vnet header
        send_frame(&mut net, &f);
        let mut buf = vec![0u8; MAX_PACKET];
        while net.recv(&mut buf).unwrap().is_some() {}
    }
    // Still serving.
    send_frame(&mut net, &dhcp_discover());
    wait_frame(&mut net, |f| f.len() > 42 && f[23] == 17 && f[42] == 2);
}

#[test]
fn stop_and_restart_keeps_the_forwards() {
    let cfg = UserConfig {
        hostfwd: vec!["tcp::0-:80".parse().unwrap()],
        ..UserConfig::default()
    };
    let (mut net, _) = start(cfg);
    let addr: SocketAddr = net.forward_addrs()[0];
    net.stop();
    net.start(Box::new(|| {})).unwrap();
    send_frame(&mut net, &dhcp_discover());
    wait_frame(&mut net, |f| f.len() > 42 && f[23] == 17);
    assert!(TcpStream::connect(addr).is_ok(), "forward still bound");
}

#[test]
fn dns_to_10_0_2_3_goes_to_the_configured_resolver_and_port() {
    // A "resolver" on a port other than 53: the configured address and
    // port are used as given.
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let resolver = server.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut b = [0u8; 100];
        let (n, from) = server.recv_from(&mut b).unwrap();
        server.send_to(&b[..n].to_ascii_uppercase(), from).unwrap();
    });
    let (mut net, _) = start(UserConfig {
        dns_servers: Some(vec![resolver]),
        ..UserConfig::default()
    });
    let mut g = Guest::new(&mut net);
    let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
    let h = g.sockets.add(udp::Socket::new(buf(), buf()));
    let s = g.sockets.get_mut::<udp::Socket>(h);
    s.bind(5001).unwrap();
    s.send_slice(b"query", (IpAddress::v4(10, 0, 2, 3), 53))
        .unwrap();
    let mut reply = None;
    g.run_until(&mut net, |g| {
        let s = g.sockets.get_mut::<udp::Socket>(h);
        if let Ok((d, meta)) = s.recv() {
            reply = Some((d.to_vec(), meta.endpoint));
        }
        reply.is_some()
    });
    let (data, from) = reply.unwrap();
    assert_eq!(data, b"QUERY");
    assert_eq!(from.addr, IpAddress::v4(10, 0, 2, 3));
    assert_eq!(from.port, 53);
    t.join().unwrap();
}
