//! Port forwards from the host into the guest, in QEMU's `hostfwd` syntax.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::GUEST_ADDR;
use crate::Error;

/// Transport protocol of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One host-to-guest port forward: `[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`
/// as QEMU's `-nic user,hostfwd=...` writes it. The host address defaults
/// to 127.0.0.1 (only local clients reach the guest unless the user names
/// another address), the guest address to 10.0.2.15. Host port 0 binds any
/// free port ([`super::UserNet::forward_addrs`] tells which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFwd {
    pub proto: Proto,
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    pub guest_addr: Ipv4Addr,
    pub guest_port: u16,
}

impl fmt::Display for HostFwd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(
            f,
            "{proto}:{}:{}-{}:{}",
            self.host_addr, self.host_port, self.guest_addr, self.guest_port
        )
    }
}

fn addr_port(
    s: &str,
    default: Ipv4Addr,
    what: &str,
    whole: &str,
) -> Result<(Ipv4Addr, u16), Error> {
    let bad = |why: String| Error::Config(format!("hostfwd '{whole}': {why}"));
    let (addr, port) = s
        .rsplit_once(':')
        .ok_or_else(|| bad(format!("{what} must be [ADDRESS]:PORT, got '{s}'")))?;
    let addr = if addr.is_empty() {
        default
    } else {
        addr.parse::<Ipv4Addr>()
            .map_err(|_| bad(format!("{what} address '{addr}' is not an IPv4 address")))?
    };
    let port = port.parse::<u16>().map_err(|_| {
        bad(format!(
            "{what} port '{port}' is not a number from 0 to 65535"
        ))
    })?;
    Ok((addr, port))
}

impl FromStr for HostFwd {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (proto, rest) = match s.split_once(':') {
            Some(("tcp", rest)) => (Proto::Tcp, rest),
            Some(("udp", rest)) => (Proto::Udp, rest),
            // QEMU: the protocol may be left empty, meaning tcp.
            Some(("", rest)) => (Proto::Tcp, rest),
            Some((p, _)) if !p.contains('.') && p.parse::<u16>().is_err() => {
                return Err(Error::Config(format!(
                    "hostfwd '{s}': protocol '{p}' is neither tcp nor udp"
                )))
            }
            _ => {
                return Err(Error::Config(format!(
                    "hostfwd '{s}': expected tcp|udp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT"
                )))
            }
        };
        let (host, guest) = rest.split_once('-').ok_or_else(|| {
            Error::Config(format!(
                "hostfwd '{s}': missing '-' between the host and guest sides"
            ))
        })?;
        let (host_addr, host_port) = addr_port(host, Ipv4Addr::LOCALHOST, "host", s)?;
        let (guest_addr, guest_port) = addr_port(guest, GUEST_ADDR, "guest", s)?;
        if guest_port == 0 {
            return Err(Error::Config(format!(
                "hostfwd '{s}': guest port must not be 0"
            )));
        }
        Ok(HostFwd {
            proto,
            host_addr,
            host_port,
            guest_addr,
            guest_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_syntax_with_defaults() {
        let f: HostFwd = "tcp:127.0.0.1:2222-:22".parse().unwrap();
        assert_eq!(
            f,
            HostFwd {
                proto: Proto::Tcp,
                host_addr: Ipv4Addr::LOCALHOST,
                host_port: 2222,
                guest_addr: GUEST_ADDR,
                guest_port: 22
            }
        );
        let f: HostFwd = "udp::5353-10.0.2.15:53".parse().unwrap();
        assert_eq!(
            (f.proto, f.host_addr, f.host_port),
            (Proto::Udp, Ipv4Addr::LOCALHOST, 5353)
        );
        let f: HostFwd = ":0.0.0.0:80-:8080".parse().unwrap();
        assert_eq!(
            (f.proto, f.host_addr, f.guest_port),
            (Proto::Tcp, Ipv4Addr::UNSPECIFIED, 8080)
        );
        assert_eq!(f.to_string(), "tcp:0.0.0.0:80-10.0.2.15:8080");
    }

    #[test]
    fn malformed_forwards_name_the_problem() {
        for (bad, needle) in [
            ("sctp::1-:2", "protocol 'sctp'"),
            ("tcp::1:2", "missing '-'"),
            ("tcp::99999-:22", "host port '99999'"),
            ("tcp:example:1-:22", "host address 'example'"),
            ("tcp::1-:0", "guest port must not be 0"),
            ("tcp::1-22", "guest must be [ADDRESS]:PORT"),
            ("", "expected tcp|udp"),
        ] {
            let err = bad.parse::<HostFwd>().unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
