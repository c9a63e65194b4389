//! The DHCP server of the user-mode network: one client, one address
//! (QEMU's 10.0.2.15), router 10.0.2.2, DNS 10.0.2.3.

use std::net::Ipv4Addr;

use super::{DNS_ADDR, GATEWAY_ADDR, GUEST_ADDR, NETMASK};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// Lease handed out, in seconds (QEMU's slirp uses a day as well).
pub const LEASE_SECS: u32 = 86400;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const OPTIONS_AT: usize = 240;

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// The answer to a client's BOOTP/DHCP message (`msg` is the UDP payload),
/// or `None` for anything that is not a well-formed DISCOVER or REQUEST.
pub fn answer(msg: &[u8]) -> Option<Vec<u8>> {
    // op BOOTREQUEST, htype Ethernet, hlen 6.
    if msg.len() < OPTIONS_AT || msg[0] != 1 || msg[1] != 1 || msg[2] != 6 {
        return None;
    }
    if msg[236..240] != MAGIC {
        return None;
    }
    let mut kind = None;
    let mut requested = None;
    let mut i = OPTIONS_AT;
    while i < msg.len() {
        let code = msg[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(*msg.get(i + 1)?);
        let val = msg.get(i + 2..i + 2 + len)?;
        match (code, val) {
            (53, [t]) => kind = Some(*t),
            (50, [a, b, c, d]) => requested = Some(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => {}
        }
        i += 2 + len;
    }
    let ciaddr = Ipv4Addr::new(msg[12], msg[13], msg[14], msg[15]);
    let reply_kind = match kind? {
        DISCOVER => OFFER,
        REQUEST => {
            let wanted = requested.unwrap_or(ciaddr);
            if wanted == GUEST_ADDR || wanted.is_unspecified() {
                ACK
            } else {
                NAK
            }
        }
        _ => return None,
    };
    let mut r = vec![0u8; OPTIONS_AT];
    r[0] = 2; // BOOTREPLY
    r[1] = 1;
    r[2] = 6;
    r[4..8].copy_from_slice(&msg[4..8]); // xid
    r[10..12].copy_from_slice(&msg[10..12]); // flags
    if reply_kind != NAK {
        r[16..20].copy_from_slice(&GUEST_ADDR.octets()); // yiaddr
        r[20..24].copy_from_slice(&GATEWAY_ADDR.octets()); // siaddr
    }
    r[28..44].copy_from_slice(&msg[28..44]); // chaddr
    r[236..240].copy_from_slice(&MAGIC);
    r.extend_from_slice(&[53, 1, reply_kind]);
    r.extend_from_slice(&[54, 4]);
    r.extend_from_slice(&GATEWAY_ADDR.octets());
    if reply_kind != NAK {
        r.extend_from_slice(&[51, 4]);
        r.extend_from_slice(&LEASE_SECS.to_be_bytes());
        r.extend_from_slice(&[1, 4]);
        r.extend_from_slice(&NETMASK.octets());
        r.extend_from_slice(&[3, 4]);
        r.extend_from_slice(&GATEWAY_ADDR.octets());
        r.extend_from_slice(&[6, 4]);
        r.extend_from_slice(&DNS_ADDR.octets());
    }
    r.push(255);
    // Some clients ignore replies shorter than BOOTP's 300 bytes.
    if r.len() < 300 {
        r.resize(300, 0);
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: u8, requested: Option<[u8; 4]>) -> Vec<u8> {
        let mut m = vec![0u8; OPTIONS_AT];
        m[0] = 1;
        m[1] = 1;
        m[2] = 6;
        m[4..8].copy_from_slice(&[1, 2, 3, 4]);
        m[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        m[236..240].copy_from_slice(&MAGIC);
        m.extend_from_slice(&[53, 1, kind]);
        if let Some(ip) = requested {
            m.extend_from_slice(&[50, 4]);
            m.extend_from_slice(&ip);
        }
        m.push(255);
        m
    }

    #[test]
    fn discover_gets_offer_and_request_gets_ack() {
        let offer = answer(&request(DISCOVER, None)).unwrap();
        assert_eq!(&offer[16..20], &[10, 0, 2, 15]);
        assert_eq!(&offer[4..8], &[1, 2, 3, 4]);
        assert_eq!(&offer[240..243], &[53, 1, OFFER]);
        let ack = answer(&request(REQUEST, Some([10, 0, 2, 15]))).unwrap();
        assert_eq!(&ack[240..243], &[53, 1, ACK]);
        let nak = answer(&request(REQUEST, Some([10, 0, 2, 99]))).unwrap();
        assert_eq!(&nak[240..243], &[53, 1, NAK]);
    }

    #[test]
    fn malformed_messages_get_no_answer() {
        assert!(answer(&[]).is_none());
        let mut m = request(DISCOVER, None);
        let n = m.len();
        m[n - 3] = 200; // option length running past the end
        m.truncate(n - 1);
        assert!(answer(&m).is_none());
    }
}
