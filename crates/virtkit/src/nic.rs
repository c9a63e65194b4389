//! `--nic` (QEMU's `-nic` syntax as far as it applies) and `virtkit run`'s
//! `-p` port publishing: parsing, then opening the backends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;

use anyhow::{bail, Context};
use net::tap::{Tap, TapSource};
use net::user::{HostFwd, Proto, UserConfig, UserNet};
use riscv_machine::machine::Nic;

/// Help text for `--nic`.
pub const NIC_HELP: &str = "A network card (virtio-net): `user[,hostfwd=tcp:127.0.0.1:2222-:22][,hostfwd=udp::5353-:53][,restrict=on][,resolver=IP[:PORT]][,mac=52:54:00:..]` \
(rootless NAT: guest 10.0.2.15, gateway 10.0.2.2 = host loopback, DNS 10.0.2.3 forwarded to resolver= or else to /etc/resolv.conf's first nameserver) or \
`tap,ifname=NAME|fd=N[,mac=...]` (an existing tap device, or an open tap fd). Repeat for more cards";

/// A parsed `--nic`.
#[derive(Debug, Clone, PartialEq)]
pub struct NicSpec {
    pub kind: NicKind,
    /// None: QEMU's default for the card's index.
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NicKind {
    /// User-mode networking with only these two options (what `virtkit
    /// run` builds); the rest at their defaults.
    User {
        restrict: bool,
        hostfwd: Vec<HostFwd>,
    },
    /// User-mode networking with every option `--nic user,...` takes.
    UserWith(UserConfig),
    Tap(TapSource),
}

fn on_off(spec: &str, key: &str, v: &str) -> anyhow::Result<bool> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => bail!("--nic {spec:?}: {key}={v:?}: expected on or off"),
    }
}

/// Parses a MAC address `xx:xx:xx:xx:xx:xx`; it must be unicast.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6
        || parts
            .iter()
            .zip(&mut mac)
            .any(|(p, m)| p.len() != 2 || u8::from_str_radix(p, 16).map(|v| *m = v).is_err())
    {
        bail!("MAC address {s:?}: expected six hex bytes, like 52:54:00:12:34:56");
    }
    if mac[0] & 1 != 0 {
        bail!("MAC address {s}: a multicast address (the first byte is odd) cannot be a card's");
    }
    if mac == [0; 6] {
        bail!("MAC address {s}: all zeros is not a card's address");
    }
    Ok(mac)
}

/// Parses a resolver `IP`, `IP:PORT` or `[IPv6]:PORT` (port 53 when
/// left out).
fn parse_resolver(spec: &str, v: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    v.parse::<SocketAddr>().ok().with_context(|| {
        format!("--nic {spec:?}: resolver={v:?}: expected IP or IP:PORT, like 127.0.0.1:53")
    })
}

/// Parses `user[,...]` or `tap,...`.
pub fn parse_nic(spec: &str) -> anyhow::Result<NicSpec> {
    let mut parts = spec.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut mac = None;
    let mut restrict = false;
    let mut hostfwd = Vec::new();
    let mut resolvers = Vec::new();
    let mut tap: Option<TapSource> = None;
    let known = match kind {
        "user" => "hostfwd, restrict, resolver, mac, model",
        "tap" => "ifname, fd, mac, model",
        "" => bail!("--nic {spec:?}: no network type (expected user or tap)"),
        other => bail!("--nic {spec:?}: unknown network type {other:?} (expected user or tap)"),
    };
    for opt in parts {
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        match (kind, key) {
            (_, "mac") => mac = Some(parse_mac(value).with_context(|| format!("--nic {spec:?}"))?),
            // QEMU's model=: only the virtio card exists here.
            (_, "model") => {
                if !matches!(value, "virtio" | "virtio-net" | "virtio-net-device") {
                    bail!("--nic {spec:?}: model={value:?}: only virtio-net is emulated");
                }
            }
            ("user", "hostfwd") => hostfwd.push(
                value
                    .parse::<HostFwd>()
                    .with_context(|| format!("--nic {spec:?}"))?,
            ),
            ("user", "restrict") => restrict = on_off(spec, key, value)?,
            ("user", "resolver") => resolvers.push(parse_resolver(spec, value)?),
            ("tap", "ifname") => {
                if value.is_empty() {
                    bail!("--nic {spec:?}: ifname= needs a tap device name");
                }
                tap = Some(TapSource::Name(value.to_string()));
            }
            ("tap", "fd") => {
                let fd: RawFd = value.parse().ok().filter(|&fd| fd >= 0).with_context(|| {
                    format!("--nic {spec:?}: fd={value:?} is not a file descriptor number")
                })?;
                tap = Some(TapSource::Fd(fd));
            }
            _ => bail!("--nic {spec:?}: unknown option {key:?} for {kind} (known: {known})"),
        }
    }
    let kind = match kind {
        "user" => NicKind::UserWith(UserConfig {
            restrict,
            hostfwd,
            dns_servers: (!resolvers.is_empty()).then_some(resolvers),
        }),
        _ => NicKind::Tap(
            tap.with_context(|| format!("--nic {spec:?}: a tap card needs ifname=NAME or fd=N"))?,
        ),
    };
    Ok(NicSpec { kind, mac })
}

/// Parses podman's `-p [HOSTIP:]HOSTPORT:GUESTPORT[/udp|/tcp]` as a
/// forward to the default guest (10.0.2.15).
pub fn parse_publish(spec: &str) -> anyhow::Result<HostFwd> {
    let (ports, proto) = match spec.rsplit_once('/') {
        Some((p, "tcp")) => (p, Proto::Tcp),
        Some((p, "udp")) => (p, Proto::Udp),
        Some((_, other)) => bail!("-p {spec:?}: unknown protocol {other:?} (tcp or udp)"),
        None => (spec, Proto::Tcp),
    };
    let fields: Vec<&str> = ports.split(':').collect();
    let (host_addr, host_port, guest_port) = match fields[..] {
        [h, g] => (Ipv4Addr::LOCALHOST, h, g),
        [a, h, g] => {
            let addr = if a.is_empty() {
                Ipv4Addr::LOCALHOST
            } else {
                a.parse::<Ipv4Addr>()
                    .ok()
                    .with_context(|| format!("-p {spec:?}: {a:?} is not an IPv4 address"))?
            };
            (addr, h, g)
        }
        _ => bail!("-p {spec:?}: expected [HOSTIP:]HOSTPORT:GUESTPORT[/udp]"),
    };
    let port = |p: &str, what: &str| {
        p.parse::<u16>().ok().with_context(|| {
            format!("-p {spec:?}: {what} port {p:?} is not a number from 0 to 65535")
        })
    };
    let guest_port = port(guest_port, "guest")?;
    if guest_port == 0 {
        bail!("-p {spec:?}: the guest port cannot be 0");
    }
    Ok(HostFwd {
        proto,
        host_addr,
        host_port: port(host_port, "host")?,
        guest_addr: Ipv4Addr::new(10, 0, 2, 15),
        guest_port,
    })
}

/// Opens the backends of the parsed cards, in order; card `i` without a
/// MAC gets QEMU's default for index `i`.
pub fn open_nics(specs: &[NicSpec]) -> anyhow::Result<Vec<Nic>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let backend: Box<dyn net::Backend> = match &s.kind {
                NicKind::User { restrict, hostfwd } => Box::new(
                    UserNet::new(UserConfig {
                        restrict: *restrict,
                        hostfwd: hostfwd.clone(),
                        dns_servers: None,
                    })
                    .context("user-mode networking")?,
                ),
                NicKind::UserWith(cfg) => {
                    Box::new(UserNet::new(cfg.clone()).context("user-mode networking")?)
                }
                NicKind::Tap(src) => Box::new(Tap::open(src)?),
            };
            Ok(Nic {
                backend,
                mac: s.mac.unwrap_or(virtio::default_mac(i as u8)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_specs() {
        let n = parse_nic("user").unwrap();
        assert_eq!(n.kind, NicKind::UserWith(UserConfig::default()));
        let n = parse_nic("user,resolver=127.0.0.1:5353,resolver=::1").unwrap();
        let NicKind::UserWith(cfg) = n.kind else {
            panic!("not user")
        };
        assert_eq!(
            cfg.dns_servers,
            Some(vec![
                "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ])
        );
        let n = parse_nic("user,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp::5353-:53,restrict=on,mac=52:54:00:00:00:09")
            .unwrap();
        let NicKind::UserWith(cfg) = n.kind else {
            panic!("not user")
        };
        assert!(cfg.restrict);
        assert_eq!(cfg.hostfwd.len(), 2);
        assert_eq!(cfg.hostfwd[1].proto, Proto::Udp);
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0, 0, 9]));
        assert_eq!(
            parse_nic("tap,ifname=tap0").unwrap().kind,
            NicKind::Tap(TapSource::Name("tap0".into()))
        );
        assert_eq!(
            parse_nic("tap,fd=3,model=virtio").unwrap().kind,
            NicKind::Tap(TapSource::Fd(3))
        );
        for (bad, why) in [
            ("bogus", "unknown network type \"bogus\""),
            ("", "no network type"),
            ("tap", "needs ifname=NAME or fd=N"),
            ("tap,fd=x", "not a file descriptor number"),
            (
                "tap,hostfwd=tcp::1-:2",
                "unknown option \"hostfwd\" for tap",
            ),
            ("user,ifname=x", "unknown option \"ifname\" for user"),
            ("user,restrict=maybe", "expected on or off"),
            ("user,resolver=dns.example", "expected IP or IP:PORT"),
            ("user,mac=01:00:00:00:00:01", "multicast"),
            ("user,mac=52:54", "six hex bytes"),
            ("user,model=e1000", "only virtio-net"),
        ] {
            let e = format!("{:#}", parse_nic(bad).unwrap_err());
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(parse_nic("user,hostfwd=tcp:1-").is_err());
    }

    #[test]
    fn publish_specs() {
        let f = parse_publish("8080:80").unwrap();
        assert_eq!(
            (f.proto, f.host_addr, f.host_port, f.guest_port),
            (Proto::Tcp, Ipv4Addr::LOCALHOST, 8080, 80)
        );
        assert_eq!(f.guest_addr, Ipv4Addr::new(10, 0, 2, 15));
        let f = parse_publish("0.0.0.0:5353:53/udp").unwrap();
        assert_eq!(
            (f.proto, f.host_addr, f.host_port),
            (Proto::Udp, Ipv4Addr::UNSPECIFIED, 5353)
        );
        for bad in [
            "80",
            "a:80",
            "8080:80/sctp",
            "1.2.3:80:80",
            "8080:0",
            "1:2:3:4",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }
}
