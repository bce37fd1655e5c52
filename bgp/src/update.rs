//! UPDATE messages: withdrawn routes, path attributes (flags and lengths
//! checked, RFC 4271 6.3), IPv4 NLRI and MP_REACH/MP_UNREACH_NLRI for IPv6
//! (RFC 4760), AS_PATH in 2- or 4-octet form (RFC 6793). Pure.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::codec::{err, frame, msg_type, Notification, AFI_IPV4, AFI_IPV6, AS_TRANS, SAFI_UNICAST};

/// Path attributes of an UPDATE, as far as a receive-only speaker cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathAttributes {
    /// 0 IGP, 1 EGP, 2 incomplete.
    pub origin: Option<u8>,
    /// Every AS on the path, in order (sets flattened).
    pub as_path: Option<Vec<u32>>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
}

/// An UPDATE: what is withdrawn and what is announced, IPv4 and IPv6 together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Withdrawn routes (the IPv4 field plus MP_UNREACH_NLRI).
    pub withdrawn: Vec<IpNet>,
    /// Announced routes (the IPv4 NLRI plus MP_REACH_NLRI).
    pub announced: Vec<IpNet>,
    pub attributes: PathAttributes,
    /// IPv6 next hop of MP_REACH_NLRI (global address).
    pub next_hop_v6: Option<Ipv6Addr>,
}

impl Update {
    /// The whole message on the wire: IPv4 in the classic fields, IPv6 in MP_REACH/MP_UNREACH.
    /// `four_octet` selects the AS_PATH width (as negotiated).
    pub fn encode(&self, four_octet: bool) -> Vec<u8> {
        let (w4, w6): (Vec<_>, Vec<_>) = self.withdrawn.iter().partition(|p| matches!(p, IpNet::V4(_)));
        let (a4, a6): (Vec<_>, Vec<_>) = self.announced.iter().partition(|p| matches!(p, IpNet::V4(_)));
        let mut withdrawn = Vec::new();
        for p in &w4 {
            put_prefix(&mut withdrawn, p);
        }
        let mut attrs = Vec::new();
        let a = &self.attributes;
        if !a4.is_empty() || !a6.is_empty() {
            put_attr(&mut attrs, 0x40, 1, &[a.origin.unwrap_or(0)]);
            let path = a.as_path.clone().unwrap_or_default();
            let mut seg = Vec::new();
            if !path.is_empty() {
                seg.extend_from_slice(&[2, path.len().min(255) as u8]);
                for asn in path.iter().take(255) {
                    if four_octet {
                        seg.extend_from_slice(&asn.to_be_bytes());
                    } else {
                        seg.extend_from_slice(&u16::try_from(*asn).unwrap_or(AS_TRANS).to_be_bytes());
                    }
                }
            }
            put_attr(&mut attrs, 0x40, 2, &seg);
        }
        if !a4.is_empty() {
            put_attr(&mut attrs, 0x40, 3, &a.next_hop.unwrap_or(Ipv4Addr::LOCALHOST).octets());
        }
        if let Some(med) = a.med {
            put_attr(&mut attrs, 0x80, 4, &med.to_be_bytes());
        }
        if let Some(lp) = a.local_pref {
            put_attr(&mut attrs, 0x40, 5, &lp.to_be_bytes());
        }
        if !a.communities.is_empty() {
            let v: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
            put_attr(&mut attrs, 0xc0, 8, &v);
        }
        if !a6.is_empty() {
            let mut v = AFI_IPV6.to_be_bytes().to_vec();
            v.push(SAFI_UNICAST);
            v.push(16);
            v.extend_from_slice(&self.next_hop_v6.unwrap_or(Ipv6Addr::LOCALHOST).octets());
            v.push(0);
            for p in &a6 {
                put_prefix(&mut v, p);
            }
            put_attr(&mut attrs, 0x80, 14, &v);
        }
        if !w6.is_empty() {
            let mut v = AFI_IPV6.to_be_bytes().to_vec();
            v.push(SAFI_UNICAST);
            for p in &w6 {
                put_prefix(&mut v, p);
            }
            put_attr(&mut attrs, 0x80, 15, &v);
        }
        let mut body = Vec::new();
        body.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
        body.extend_from_slice(&withdrawn);
        body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        body.extend_from_slice(&attrs);
        for p in &a4 {
            put_prefix(&mut body, p);
        }
        frame(msg_type::UPDATE, &body)
    }
}

fn put_attr(out: &mut Vec<u8>, flags: u8, code: u8, value: &[u8]) {
    if value.len() > 255 {
        out.extend_from_slice(&[flags | 0x10, code]);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, code, value.len() as u8]);
    }
    out.extend_from_slice(value);
}

fn put_prefix(out: &mut Vec<u8>, p: &IpNet) {
    let len = p.prefix_len();
    out.push(len);
    let bytes = usize::from(len).div_ceil(8);
    match p.trunc() {
        IpNet::V4(n) => out.extend_from_slice(&n.network().octets()[..bytes]),
        IpNet::V6(n) => out.extend_from_slice(&n.network().octets()[..bytes]),
    }
}

fn update_err(subcode: u8, data: impl Into<Vec<u8>>) -> Notification {
    Notification::new(err::UPDATE, subcode, data)
}

/// Reads prefixes (length byte + the significant bytes) of one address family.
fn parse_prefixes(mut v: &[u8], afi: u16, subcode: u8, out: &mut Vec<IpNet>) -> Result<(), Notification> {
    let max = if afi == AFI_IPV4 { 32 } else { 128 };
    while let [len, tail @ ..] = v {
        let bits = *len;
        if bits > max {
            return Err(update_err(subcode, Vec::new()));
        }
        let n = usize::from(bits).div_ceil(8);
        if tail.len() < n {
            return Err(update_err(subcode, Vec::new()));
        }
        let (addr, after) = tail.split_at(n);
        let net = if afi == AFI_IPV4 {
            let mut o = [0u8; 4];
            o[..n].copy_from_slice(addr);
            Ipv4Net::new(Ipv4Addr::from(o), bits).map(|n| IpNet::V4(n.trunc()))
        } else {
            let mut o = [0u8; 16];
            o[..n].copy_from_slice(addr);
            Ipv6Net::new(Ipv6Addr::from(o), bits).map(|n| IpNet::V6(n.trunc()))
        };
        out.push(net.map_err(|_| update_err(subcode, Vec::new()))?);
        v = after;
    }
    Ok(())
}

/// Attribute type codes this speaker understands, with the flags they must carry
/// (optional, transitive).
fn known_attribute(code: u8) -> Option<(bool, bool)> {
    match code {
        1 | 2 | 3 | 5 | 6 => Some((false, true)),
        4 | 14 | 15 => Some((true, false)),
        7 | 8 | 17 | 18 => Some((true, true)),
        _ => None,
    }
}

/// Parses an UPDATE body (RFC 4271 6.3, RFC 4760, RFC 6793).
pub fn parse_update(body: &[u8], four_octet: bool) -> Result<Update, Notification> {
    let malformed = || update_err(err::UPDATE_MALFORMED_ATTRIBUTE_LIST, Vec::new());
    if body.len() < 4 {
        return Err(malformed());
    }
    let wlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
    if 2 + wlen + 2 > body.len() {
        return Err(malformed());
    }
    let withdrawn_field = &body[2..2 + wlen];
    let alen = usize::from(u16::from_be_bytes([body[2 + wlen], body[3 + wlen]]));
    let attrs_start = 4 + wlen;
    if attrs_start + alen > body.len() {
        return Err(malformed());
    }
    let attrs_field = &body[attrs_start..attrs_start + alen];
    let nlri_field = &body[attrs_start + alen..];

    let mut up = Update::default();
    parse_prefixes(withdrawn_field, AFI_IPV4, err::UPDATE_INVALID_NETWORK, &mut up.withdrawn)?;

    let mut seen = [false; 256];
    let mut mp_reach = false;
    let mut rest = attrs_field;
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err(malformed());
        }
        let (flags, code) = (rest[0], rest[1]);
        let extended = flags & 0x10 != 0;
        let (len, hdr) = if extended {
            if rest.len() < 4 {
                return Err(malformed());
            }
            (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4)
        } else {
            (usize::from(rest[2]), 3)
        };
        if rest.len() < hdr + len {
            // The attribute runs past the attribute list.
            return Err(malformed());
        }
        let whole = &rest[..hdr + len];
        let value = &rest[hdr..hdr + len];
        rest = &rest[hdr + len..];
        if std::mem::replace(&mut seen[usize::from(code)], true) {
            return Err(malformed());
        }
        let optional = flags & 0x80 != 0;
        let transitive = flags & 0x40 != 0;
        let partial = flags & 0x20 != 0;
        let Some((want_optional, want_transitive)) = known_attribute(code) else {
            if !optional {
                return Err(update_err(err::UPDATE_UNRECOGNIZED_WELL_KNOWN, whole));
            }
            // An optional attribute we do not know: a receive-only speaker passes nothing on.
            continue;
        };
        // Well-known attributes are transitive and never partial; optional non-transitive ones never partial.
        let flags_ok = optional == want_optional
            && transitive == want_transitive
            && !(partial && (!want_optional || !want_transitive));
        if !flags_ok {
            return Err(update_err(err::UPDATE_ATTRIBUTE_FLAGS, whole));
        }
        let length_err = || update_err(err::UPDATE_ATTRIBUTE_LENGTH, whole);
        match code {
            1 => {
                let [o] = value else { return Err(length_err()) };
                if *o > 2 {
                    return Err(update_err(err::UPDATE_INVALID_ORIGIN, whole));
                }
                up.attributes.origin = Some(*o);
            }
            2 => up.attributes.as_path = Some(parse_as_path(value, four_octet)?),
            3 => {
                let [a, b, c, d] = value else { return Err(length_err()) };
                let nh = Ipv4Addr::new(*a, *b, *c, *d);
                if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
                    return Err(update_err(err::UPDATE_INVALID_NEXT_HOP, whole));
                }
                up.attributes.next_hop = Some(nh);
            }
            4 | 5 => {
                let [a, b, c, d] = value else { return Err(length_err()) };
                let v = u32::from_be_bytes([*a, *b, *c, *d]);
                if code == 4 {
                    up.attributes.med = Some(v);
                } else {
                    up.attributes.local_pref = Some(v);
                }
            }
            6 if !value.is_empty() => return Err(length_err()),
            7 if value.len() != if four_octet { 8 } else { 6 } => return Err(length_err()),
            8 if !value.len().is_multiple_of(4) => return Err(length_err()),
            8 => {
                up.attributes.communities =
                    value.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
            }
            14 => {
                mp_reach = true;
                parse_mp_reach(value, whole, &mut up)?;
            }
            15 => parse_mp_unreach(value, whole, &mut up)?,
            17 => {
                parse_as_path(value, true).map_err(|_| update_err(err::UPDATE_OPTIONAL_ATTRIBUTE, whole))?;
            }
            18 if value.len() != 8 => return Err(length_err()),
            _ => {}
        }
    }
    parse_prefixes(nlri_field, AFI_IPV4, err::UPDATE_INVALID_NETWORK, &mut up.announced)?;
    // Routes need ORIGIN and AS_PATH; IPv4 NLRI also NEXT_HOP (RFC 4271 6.3, RFC 4760 3).
    let announces = !nlri_field.is_empty() || mp_reach;
    if announces {
        let mut needed = vec![1u8, 2];
        if !nlri_field.is_empty() {
            needed.push(3);
        }
        if let Some(missing) = needed.into_iter().find(|c| !seen[usize::from(*c)]) {
            return Err(update_err(err::UPDATE_MISSING_WELL_KNOWN, vec![missing]));
        }
    }
    Ok(up)
}

fn parse_as_path(mut v: &[u8], four_octet: bool) -> Result<Vec<u32>, Notification> {
    let width = if four_octet { 4 } else { 2 };
    let mut path = Vec::new();
    while !v.is_empty() {
        let [kind, count, tail @ ..] = v else {
            return Err(update_err(err::UPDATE_MALFORMED_AS_PATH, Vec::new()));
        };
        // AS_SET, AS_SEQUENCE, AS_CONFED_SEQUENCE, AS_CONFED_SET.
        if !(1..=4).contains(kind) || *count == 0 {
            return Err(update_err(err::UPDATE_MALFORMED_AS_PATH, Vec::new()));
        }
        let n = usize::from(*count) * width;
        if tail.len() < n {
            return Err(update_err(err::UPDATE_MALFORMED_AS_PATH, Vec::new()));
        }
        path.extend(tail[..n].chunks_exact(width).map(|c| match c {
            [a, b] => u32::from(u16::from_be_bytes([*a, *b])),
            [a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
            _ => 0,
        }));
        v = &tail[n..];
    }
    Ok(path)
}

fn parse_mp_reach(v: &[u8], whole: &[u8], up: &mut Update) -> Result<(), Notification> {
    let bad = || update_err(err::UPDATE_OPTIONAL_ATTRIBUTE, whole);
    if v.len() < 5 {
        return Err(bad());
    }
    let afi = u16::from_be_bytes([v[0], v[1]]);
    let safi = v[2];
    let nh_len = usize::from(v[3]);
    if v.len() < 4 + nh_len + 1 {
        return Err(bad());
    }
    let nh = &v[4..4 + nh_len];
    // Skip the reserved byte.
    let nlri = &v[4 + nh_len + 1..];
    if safi != SAFI_UNICAST || (afi != AFI_IPV4 && afi != AFI_IPV6) {
        // A family we never offered: nothing for us in it.
        return Ok(());
    }
    match (afi, nh_len) {
        (AFI_IPV6, 16 | 32) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&nh[..16]);
            up.next_hop_v6 = Some(Ipv6Addr::from(o));
        }
        (AFI_IPV4, 4) | (AFI_IPV4, 16 | 32) => {}
        _ => return Err(bad()),
    }
    parse_prefixes(nlri, afi, err::UPDATE_INVALID_NETWORK, &mut up.announced)
}

fn parse_mp_unreach(v: &[u8], whole: &[u8], up: &mut Update) -> Result<(), Notification> {
    if v.len() < 3 {
        return Err(update_err(err::UPDATE_OPTIONAL_ATTRIBUTE, whole));
    }
    let afi = u16::from_be_bytes([v[0], v[1]]);
    if v[2] != SAFI_UNICAST || (afi != AFI_IPV4 && afi != AFI_IPV6) {
        return Ok(());
    }
    parse_prefixes(&v[3..], afi, err::UPDATE_INVALID_NETWORK, &mut up.withdrawn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{parse, Message};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn update_round_trips_both_families_and_both_as_widths() {
        let up = Update {
            withdrawn: vec![net("10.9.0.0/16"), net("2001:db8:9::/48")],
            announced: vec![net("10.1.0.0/16"), net("192.0.2.128/25"), net("2001:db8:a::/48"), net("::/0")],
            attributes: PathAttributes {
                origin: Some(0),
                as_path: Some(vec![65001, 65002]),
                next_hop: Some(Ipv4Addr::new(127, 0, 0, 1)),
                med: Some(5),
                local_pref: Some(100),
                communities: vec![0xfde8_0001],
            },
            next_hop_v6: Some(Ipv6Addr::LOCALHOST),
        };
        for four in [false, true] {
            let Message::Update(mut back) = parse(&up.encode(four), four).unwrap() else { panic!("not an UPDATE") };
            // IPv6 routes travel in attributes, before the IPv4 NLRI.
            back.announced.sort();
            back.withdrawn.sort();
            let mut want = up.clone();
            want.announced.sort();
            want.withdrawn.sort();
            assert_eq!(back, want);
        }
    }

    fn update_with_attrs(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0];
        b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        b.extend_from_slice(attrs);
        b.extend_from_slice(nlri);
        b
    }

    const BASE: [u8; 14] = [0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 127, 0, 0, 1];

    #[test]
    fn update_errors_name_the_rfc_subcodes() {
        let nlri = [16, 10, 1];
        assert!(parse_update(&update_with_attrs(&BASE, &nlri), false).is_ok());
        let code = |attrs: &[u8], nlri: &[u8]| parse_update(&update_with_attrs(attrs, nlri), false).unwrap_err();
        // ORIGIN flagged optional.
        let mut flags = BASE;
        flags[0] = 0xc0;
        assert_eq!(code(&flags, &nlri), update_err(4, vec![0xc0, 1, 1, 0]));
        // NEXT_HOP of 3 bytes.
        let mut len = BASE.to_vec();
        len[9] = 3;
        len.pop();
        assert_eq!(code(&len, &nlri), update_err(5, vec![0x40, 3, 3, 127, 0, 0]));
        // An unknown well-known attribute.
        let mut unknown = BASE.to_vec();
        unknown.extend_from_slice(&[0x40, 99, 1, 7]);
        assert_eq!(code(&unknown, &nlri), update_err(2, vec![0x40, 99, 1, 7]));
        // An unknown optional one is ignored.
        let mut optional = BASE.to_vec();
        optional.extend_from_slice(&[0xc0, 99, 1, 7]);
        assert!(parse_update(&update_with_attrs(&optional, &nlri), false).is_ok());
        // An attribute that runs past the list, and a repeated one.
        assert_eq!(code(&BASE[..13], &nlri).subcode, err::UPDATE_MALFORMED_ATTRIBUTE_LIST);
        let twice = [BASE.as_slice(), &BASE[..4]].concat();
        assert_eq!(code(&twice, &nlri).subcode, err::UPDATE_MALFORMED_ATTRIBUTE_LIST);
        // Missing NEXT_HOP.
        assert_eq!(code(&BASE[..7], &nlri), update_err(3, vec![3]));
        // A /33 and a prefix cut short.
        assert_eq!(code(&BASE, &[33, 1, 2, 3, 4, 5]).subcode, err::UPDATE_INVALID_NETWORK);
        assert_eq!(code(&BASE, &[24, 10, 1]).subcode, err::UPDATE_INVALID_NETWORK);
        // Lengths that do not add up.
        assert_eq!(parse_update(&[0, 9, 0, 0], false).unwrap_err().subcode, err::UPDATE_MALFORMED_ATTRIBUTE_LIST);
        // ORIGIN 3, AS_PATH segment type 7.
        let mut origin = BASE;
        origin[3] = 3;
        assert_eq!(code(&origin, &nlri).subcode, err::UPDATE_INVALID_ORIGIN);
        let path = [0x40, 1, 1, 0, 0x40, 2, 4, 7, 1, 0, 1, 0x40, 3, 4, 127, 0, 0, 1];
        assert_eq!(code(&path, &nlri).subcode, err::UPDATE_MALFORMED_AS_PATH);
    }

    #[test]
    fn a_withdraw_only_update_needs_no_attributes() {
        let body = [0, 3, 16, 10, 1, 0, 0];
        let up = parse_update(&body, false).unwrap();
        assert_eq!(up.withdrawn, vec![net("10.1.0.0/16")]);
        assert!(up.announced.is_empty());
    }
}
