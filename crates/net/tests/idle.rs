//! The user-mode stack's thread sleeps while a flow waits on the guest.
//! Its own test binary: the thread is found by name, and no other test's
//! stack may run alongside.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use net::user::{UserConfig, UserNet};
use net::{Backend, MAX_PACKET, VNET_HDR_LEN};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

/// The backend as a smoltcp guest's NIC.
struct Nic<'a>(&'a mut UserNet, Vec<u8>);
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
        Some((Rx(self.1[VNET_HDR_LEN..n].to_vec()), Tx(self.0)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(self.0))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// CPU time (user + system, in clock ticks) of the thread named `name`.
fn thread_ticks(name: &str) -> u64 {
    let mut found = None;
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Fields after the ")" of comm: state is field 3, utime 14, stime 15.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
            assert!(found.is_none(), "more than one {name} thread");
            found = Some(ticks);
        }
    }
    found.unwrap_or_else(|| panic!("no {name} thread"))
}

/// The guest closes, then the host peer: the stack's FIN waits for the
/// guest's ACK, and a guest that is slow to send it (an emulated CPU
/// running other work) must find the stack asleep, not spinning (poll(2)
/// reports POLLHUP on the fully closed host socket even when no events are
/// asked for, which once made the thread spin at 100% of a core, the core
/// the guest's CPU needs).
#[test]
fn a_closed_flow_waiting_on_the_guest_costs_no_cpu() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let (eof_tx, eof_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        // The guest's FIN arrives as EOF; then this side closes too.
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        eof_tx.send(()).unwrap();
        let _ = go_rx.recv();
    });
    let mut net = UserNet::new(UserConfig::default()).unwrap();
    net.start(Box::new(|| {})).unwrap();
    let epoch = Instant::now();
    let mut nic = Nic(&mut net, vec![0; MAX_PACKET]);
    let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress([
        0x52, 0x54, 0, 0x12, 0x34, 0x56,
    ])));
    let mut iface = Interface::new(cfg, &mut nic, SmolInstant::from_millis(0));
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24))
            .unwrap();
    });
    iface
        .routes_mut()
        .add_default_ipv4_route(Ipv4Addr::new(10, 0, 2, 2))
        .unwrap();
    let mut sockets = SocketSet::new(Vec::new());
    let h = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 4096]),
        tcp::SocketBuffer::new(vec![0; 4096]),
    ));
    let cx = iface.context();
    sockets
        .get_mut::<tcp::Socket>(h)
        .connect(cx, (IpAddress::v4(10, 0, 2, 2), port), 40000)
        .unwrap();
    // Runs the guest (its stack answers and ACKs) until `step` says done.
    let mut run = |step: &mut dyn FnMut(&mut tcp::Socket) -> bool| {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            let now = SmolInstant::from_micros(epoch.elapsed().as_micros() as i64);
            iface.poll(now, &mut nic, &mut sockets);
            if step(sockets.get_mut::<tcp::Socket>(h)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the guest's flow did not get there");
    };
    run(&mut |s| s.may_send());
    // The guest closes and its FIN reaches the host; then the guest stops
    // running (it will never ACK the stack's FIN) and the host closes.
    run(&mut |s| {
        s.close();
        eof_rx.try_recv().is_ok()
    });
    go_tx.send(()).unwrap();
    t.join().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = thread_ticks("user-net");
    std::thread::sleep(Duration::from_secs(1));
    let used = thread_ticks("user-net") - before;
    // A sleeping thread uses a tick or two; a spinning one tens of them
    // (a hundred per second alone, dozens on a loaded machine).
    assert!(
        used < 15,
        "the stack thread used {used} ticks in 1 s while idle"
    );
}
