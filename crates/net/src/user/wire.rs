//! Just enough frame parsing and building for the parts of user-mode
//! networking that bypass smoltcp (ARP, DHCP, UDP, ICMP echo, TCP resets)
//! and for the few fields the stack peeks at in TCP segments.
//!
//! Every parser takes an untrusted guest frame and answers `None` for
//! anything short or malformed; nothing here indexes past a checked length.

use std::net::Ipv4Addr;

pub const ETH_HDR: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub type Mac = [u8; 6];

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// The ones'-complement sum of `data` folded into `acc` (not yet inverted).
pub fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

/// Folds and inverts a running sum into an Internet checksum.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Sum of the IPv4 pseudo-header of an L4 segment.
pub fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut acc = sum16(&src.octets(), 0);
    acc = sum16(&dst.octets(), acc);
    acc + u32::from(proto) + (len as u32 & 0xffff) + ((len as u32) >> 16)
}

/// The Ethernet header of a frame.
pub struct Eth {
    pub src: Mac,
    pub ethertype: u16,
}

pub fn parse_eth(frame: &[u8]) -> Option<Eth> {
    if frame.len() < ETH_HDR {
        return None;
    }
    let mut src = [0; 6];
    src.copy_from_slice(&frame[6..12]);
    Some(Eth {
        src,
        ethertype: be16(frame, 12),
    })
}

/// An ARP request or reply for IPv4 over Ethernet.
pub struct Arp {
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

pub fn parse_arp(p: &[u8]) -> Option<Arp> {
    // htype 1, ptype IPv4, hlen 6, plen 4.
    if p.len() < 28 || be16(p, 0) != 1 || be16(p, 2) != ETHERTYPE_IPV4 || p[4] != 6 || p[5] != 4 {
        return None;
    }
    let mut sender_mac = [0; 6];
    sender_mac.copy_from_slice(&p[8..14]);
    Some(Arp {
        op: be16(p, 6),
        sender_mac,
        sender_ip: ip_at(p, 14),
        target_ip: ip_at(p, 24),
    })
}

/// An ARP reply telling `asker` that `ip` is at `mac`.
pub fn arp_reply(mac: Mac, ip: Ipv4Addr, asker_mac: Mac, asker_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HDR + 28);
    f.extend_from_slice(&asker_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&asker_mac);
    f.extend_from_slice(&asker_ip.octets());
    f
}

/// The IPv4 header of a packet and where its payload lies.
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Offset of the L4 header within the IP packet.
    pub hdr_len: usize,
    /// Total length of the IP packet (header and payload).
    pub total_len: usize,
}

/// Parses an IPv4 packet (`p` starts at the IP header). Fragments are
/// refused: user-mode networking does not reassemble (guests send TCP with
/// DF set and DNS/UDP datagrams that fit the MTU).
pub fn parse_ipv4(p: &[u8]) -> Option<Ipv4> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let hdr_len = usize::from(p[0] & 0xf) * 4;
    let total_len = usize::from(be16(p, 2));
    if hdr_len < 20 || total_len < hdr_len || total_len > p.len() {
        return None;
    }
    let frag = be16(p, 6);
    if frag & 0x2000 != 0 || frag & 0x1fff != 0 {
        return None;
    }
    Some(Ipv4 {
        src: ip_at(p, 12),
        dst: ip_at(p, 16),
        proto: p[9],
        hdr_len,
        total_len,
    })
}

/// Appends an Ethernet + IPv4 header for `payload_len` bytes of `proto`.
fn push_eth_ipv4(
    f: &mut Vec<u8>,
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload_len: usize,
) {
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let start = f.len();
    let total = (20 + payload_len) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let csum = fold(sum16(&f[start..start + 20], 0));
    f[start + 10..start + 12].copy_from_slice(&csum.to_be_bytes());
}

/// A UDP datagram as seen in a guest packet.
pub struct Udp<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

/// Parses the UDP header at the start of `l4` (the IP payload).
pub fn parse_udp(l4: &[u8]) -> Option<Udp<'_>> {
    if l4.len() < 8 {
        return None;
    }
    let len = usize::from(be16(l4, 4));
    if len < 8 || len > l4.len() {
        return None;
    }
    Some(Udp {
        src_port: be16(l4, 0),
        dst_port: be16(l4, 2),
        payload: &l4[8..len],
    })
}

/// Largest UDP payload that fits an IPv4 packet.
pub const MAX_UDP_PAYLOAD: usize = 65535 - 20 - 8;

/// A complete Ethernet frame carrying one UDP datagram (checksummed).
#[allow(clippy::too_many_arguments)]
pub fn udp_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    src_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_UDP_PAYLOAD)];
    let udp_len = 8 + payload.len();
    let mut f = Vec::with_capacity(ETH_HDR + 20 + udp_len);
    push_eth_ipv4(&mut f, src_mac, dst_mac, src, dst, PROTO_UDP, udp_len);
    let start = f.len();
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let mut csum = fold(sum16(&f[start..], pseudo_sum(src, dst, PROTO_UDP, udp_len)));
    if csum == 0 {
        csum = 0xffff;
    }
    f[start + 6..start + 8].copy_from_slice(&csum.to_be_bytes());
    f
}

/// A complete Ethernet frame carrying one ICMP message (`icmp`: type,
/// code, zeroed checksum, rest; the checksum is filled in here).
pub fn icmp_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp: &[u8],
) -> Vec<u8> {
    let icmp = &icmp[..icmp.len().min(65535 - 20)];
    let mut f = Vec::with_capacity(ETH_HDR + 20 + icmp.len());
    push_eth_ipv4(&mut f, src_mac, dst_mac, src, dst, PROTO_ICMP, icmp.len());
    let start = f.len();
    f.extend_from_slice(icmp);
    if icmp.len() >= 4 {
        f[start + 2..start + 4].copy_from_slice(&[0, 0]);
        let csum = fold(sum16(&f[start..], 0));
        f[start + 2..start + 4].copy_from_slice(&csum.to_be_bytes());
    }
    f
}

/// The fields of a TCP header the stack looks at before smoltcp does.
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub hdr_len: usize,
}

/// Parses the TCP header at the start of `l4` (the IP payload).
pub fn parse_tcp(l4: &[u8]) -> Option<Tcp> {
    if l4.len() < 20 {
        return None;
    }
    let hdr_len = usize::from(l4[12] >> 4) * 4;
    if hdr_len < 20 || hdr_len > l4.len() {
        return None;
    }
    Some(Tcp {
        src_port: be16(l4, 0),
        dst_port: be16(l4, 2),
        seq: be32(l4, 4),
        ack: be32(l4, 8),
        flags: l4[13],
        hdr_len,
    })
}

/// The MSS option of a TCP header (`l4` starts at the TCP header, already
/// checked by [`parse_tcp`]): its value and the offset of the value.
pub fn tcp_mss(l4: &[u8], hdr_len: usize) -> Option<(u16, usize)> {
    let mut i = 20;
    while i < hdr_len {
        match l4[i] {
            0 => return None,
            1 => i += 1,
            kind => {
                let len = usize::from(*l4.get(i + 1)?);
                if len < 2 || i + len > hdr_len {
                    return None;
                }
                if kind == 2 && len == 4 {
                    return Some((be16(l4, i + 2), i + 2));
                }
                i += len;
            }
        }
    }
    None
}

/// A RST answering a guest segment to a flow that cannot exist (refused
/// connection, restricted network, too many flows), per RFC 793's rules.
pub fn tcp_rst_for(
    gw_mac: Mac,
    guest_mac: Mac,
    ip: &Ipv4,
    tcp: &Tcp,
    payload_len: usize,
) -> Option<Vec<u8>> {
    if tcp.flags & TCP_RST != 0 {
        return None;
    }
    let (seq, ack, flags) = if tcp.flags & TCP_ACK != 0 {
        (tcp.ack, 0, TCP_RST)
    } else {
        let mut len = payload_len as u32;
        if tcp.flags & TCP_SYN != 0 {
            len += 1;
        }
        if tcp.flags & TCP_FIN != 0 {
            len += 1;
        }
        (0, tcp.seq.wrapping_add(len), TCP_RST | TCP_ACK)
    };
    let mut f = Vec::with_capacity(ETH_HDR + 40);
    push_eth_ipv4(&mut f, gw_mac, guest_mac, ip.dst, ip.src, PROTO_TCP, 20);
    let start = f.len();
    f.extend_from_slice(&tcp.dst_port.to_be_bytes());
    f.extend_from_slice(&tcp.src_port.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.extend_from_slice(&[5 << 4, flags, 0, 0, 0, 0, 0, 0]);
    let csum = fold(sum16(
        &f[start..],
        pseudo_sum(ip.dst, ip.src, PROTO_TCP, 20),
    ));
    f[start + 16..start + 18].copy_from_slice(&csum.to_be_bytes());
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_known_header() {
        // RFC 1071's example bytes.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum16(&data, 0)), !0xddf2);
    }

    #[test]
    fn udp_frame_parses_back() {
        let f = udp_frame(
            [2; 6],
            [4; 6],
            Ipv4Addr::new(10, 0, 2, 2),
            53,
            Ipv4Addr::new(10, 0, 2, 15),
            1234,
            b"hello",
        );
        let ip = parse_ipv4(&f[ETH_HDR..]).unwrap();
        assert_eq!(fold(sum16(&f[ETH_HDR..ETH_HDR + 20], 0)), 0);
        let l4 = &f[ETH_HDR + ip.hdr_len..ETH_HDR + ip.total_len];
        let udp = parse_udp(l4).unwrap();
        assert_eq!(
            (udp.src_port, udp.dst_port, udp.payload),
            (53, 1234, &b"hello"[..])
        );
        assert_eq!(
            fold(sum16(l4, pseudo_sum(ip.src, ip.dst, PROTO_UDP, l4.len()))),
            0
        );
    }

    #[test]
    fn truncated_input_is_refused() {
        assert!(parse_eth(&[0; 13]).is_none());
        assert!(parse_ipv4(&[0x45; 19]).is_none());
        assert!(parse_tcp(&[0; 19]).is_none());
        let mut tcp = [0u8; 24];
        tcp[12] = 6 << 4; // claims 24-byte header
        tcp[20] = 2; // MSS option with a length that runs past the header
        tcp[21] = 9;
        assert!(tcp_mss(&tcp, 24).is_none());
    }
}
