//! BGP-4 messages (RFC 4271) with multiprotocol IPv4/IPv6 unicast (RFC 4760) and
//! 4-octet AS numbers (RFC 6793): pure parsing and encoding, no I/O.
//!
//! Every malformed input maps to the NOTIFICATION the RFCs name for it
//! ([`Notification`]), so the session can send it back and close.

use std::net::Ipv4Addr;

pub use crate::update::{parse_update, PathAttributes, Update};

/// Every message starts with 16 bytes of ones.
pub const MARKER: [u8; 16] = [0xff; 16];
/// Marker, length, type.
pub const HEADER_LEN: usize = 19;
/// Largest message without the extended-message capability (RFC 8654).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The AS number a 4-octet speaker puts in OPEN's 2-byte field when its own does not fit (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// AFI of IPv4.
pub const AFI_IPV4: u16 = 1;
/// AFI of IPv6.
pub const AFI_IPV6: u16 = 2;
/// SAFI of unicast.
pub const SAFI_UNICAST: u8 = 1;

/// Message type codes.
pub mod msg_type {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

/// NOTIFICATION error codes and subcodes.
pub mod err {
    pub const HEADER: u8 = 1;
    pub const HEADER_NOT_SYNCHRONIZED: u8 = 1;
    pub const HEADER_BAD_LENGTH: u8 = 2;
    pub const HEADER_BAD_TYPE: u8 = 3;

    pub const OPEN: u8 = 2;
    pub const OPEN_UNSPECIFIC: u8 = 0;
    pub const OPEN_UNSUPPORTED_VERSION: u8 = 1;
    pub const OPEN_BAD_PEER_AS: u8 = 2;
    pub const OPEN_BAD_BGP_ID: u8 = 3;
    pub const OPEN_UNSUPPORTED_PARAMETER: u8 = 4;
    pub const OPEN_UNACCEPTABLE_HOLD_TIME: u8 = 6;

    pub const UPDATE: u8 = 3;
    pub const UPDATE_MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UPDATE_UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    pub const UPDATE_MISSING_WELL_KNOWN: u8 = 3;
    pub const UPDATE_ATTRIBUTE_FLAGS: u8 = 4;
    pub const UPDATE_ATTRIBUTE_LENGTH: u8 = 5;
    pub const UPDATE_INVALID_ORIGIN: u8 = 6;
    pub const UPDATE_INVALID_NEXT_HOP: u8 = 8;
    pub const UPDATE_OPTIONAL_ATTRIBUTE: u8 = 9;
    pub const UPDATE_INVALID_NETWORK: u8 = 10;
    pub const UPDATE_MALFORMED_AS_PATH: u8 = 11;

    pub const HOLD_TIMER_EXPIRED: u8 = 4;

    pub const FSM: u8 = 5;
    pub const FSM_IN_OPEN_SENT: u8 = 1;
    pub const FSM_IN_OPEN_CONFIRM: u8 = 2;
    pub const FSM_IN_ESTABLISHED: u8 = 3;

    pub const CEASE: u8 = 6;
    pub const CEASE_ADMIN_SHUTDOWN: u8 = 2;
    pub const CEASE_CONNECTION_REJECTED: u8 = 5;
    pub const CEASE_COLLISION: u8 = 7;
}

/// A NOTIFICATION: what went wrong, as a code, a subcode and the offending data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    /// A NOTIFICATION with `data`.
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Self { code, subcode, data: data.into() }
    }

    /// A short name for logs, e.g. `UPDATE/attribute-flags`.
    pub fn describe(&self) -> String {
        let code = match self.code {
            err::HEADER => "header",
            err::OPEN => "OPEN",
            err::UPDATE => "UPDATE",
            err::HOLD_TIMER_EXPIRED => "hold-timer-expired",
            err::FSM => "FSM",
            err::CEASE => "cease",
            _ => "unknown",
        };
        format!("{code} ({}/{})", self.code, self.subcode)
    }

    /// The whole message on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = vec![self.code, self.subcode];
        // A NOTIFICATION never exceeds the maximum message size: cut the data.
        let room = MAX_MESSAGE_LEN - HEADER_LEN - 2;
        body.extend_from_slice(&self.data[..self.data.len().min(room)]);
        frame(msg_type::NOTIFICATION, &body)
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// One capability of an OPEN (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions for (AFI, SAFI) (code 1).
    Multiprotocol { afi: u16, safi: u8 },
    /// Route refresh (code 2).
    RouteRefresh,
    /// 4-octet AS numbers, with the speaker's AS (code 65).
    FourOctetAs(u32),
    /// Anything else, kept as is.
    Other { code: u8, value: Vec<u8> },
}

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The 2-byte field (AS_TRANS when the real AS needs 4 bytes).
    pub my_as: u16,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// An OPEN for `local_as` offering IPv4 and IPv6 unicast, route refresh and 4-octet AS.
    pub fn new(local_as: u32, hold_time: u16, router_id: Ipv4Addr) -> Self {
        Self {
            version: 4,
            my_as: u16::try_from(local_as).unwrap_or(AS_TRANS),
            hold_time,
            router_id,
            capabilities: vec![
                Capability::Multiprotocol { afi: AFI_IPV4, safi: SAFI_UNICAST },
                Capability::Multiprotocol { afi: AFI_IPV6, safi: SAFI_UNICAST },
                Capability::RouteRefresh,
                Capability::FourOctetAs(local_as),
            ],
        }
    }

    /// The speaker's AS: the 4-octet capability's when present, else the 2-byte field.
    pub fn asn(&self) -> u32 {
        self.four_octet_as().unwrap_or(u32::from(self.my_as))
    }

    /// The AS of the 4-octet AS capability, if offered.
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(a) => Some(*a),
            _ => None,
        })
    }

    /// True when the speaker offers multiprotocol (afi, safi).
    pub fn offers(&self, afi: u16, safi: u8) -> bool {
        self.capabilities.contains(&Capability::Multiprotocol { afi, safi })
    }

    /// The whole message on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut caps = Vec::new();
        for c in &self.capabilities {
            match c {
                Capability::Multiprotocol { afi, safi } => {
                    caps.extend_from_slice(&[1, 4]);
                    caps.extend_from_slice(&afi.to_be_bytes());
                    caps.extend_from_slice(&[0, *safi]);
                }
                Capability::RouteRefresh => caps.extend_from_slice(&[2, 0]),
                Capability::FourOctetAs(a) => {
                    caps.extend_from_slice(&[65, 4]);
                    caps.extend_from_slice(&a.to_be_bytes());
                }
                Capability::Other { code, value } => {
                    caps.push(*code);
                    caps.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
                    caps.extend_from_slice(&value[..value.len().min(255)]);
                }
            }
        }
        caps.truncate(253);
        let mut body = vec![self.version];
        body.extend_from_slice(&self.my_as.to_be_bytes());
        body.extend_from_slice(&self.hold_time.to_be_bytes());
        body.extend_from_slice(&self.router_id.octets());
        if caps.is_empty() {
            body.push(0);
        } else {
            body.push(caps.len() as u8 + 2);
            body.push(2);
            body.push(caps.len() as u8);
            body.extend_from_slice(&caps);
        }
        frame(msg_type::OPEN, &body)
    }
}

/// One BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    /// ROUTE-REFRESH (RFC 2918): a receive-only speaker has nothing to resend.
    RouteRefresh {
        afi: u16,
        safi: u8,
    },
}

/// The KEEPALIVE message on the wire.
pub fn keepalive() -> Vec<u8> {
    frame(msg_type::KEEPALIVE, &[])
}

/// Header + body.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = (HEADER_LEN + body.len()) as u16;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// Checks a message header: the marker, the length (19..=4096 and at least the
/// minimum of its type) and the type. Returns (type, total length).
pub fn check_header(header: &[u8]) -> Result<(u8, usize), Notification> {
    if header.len() < HEADER_LEN {
        return Err(Notification::new(err::HEADER, err::HEADER_BAD_LENGTH, Vec::new()));
    }
    if header[..16] != MARKER {
        return Err(Notification::new(err::HEADER, err::HEADER_NOT_SYNCHRONIZED, Vec::new()));
    }
    let len_bytes = [header[16], header[17]];
    let len = usize::from(u16::from_be_bytes(len_bytes));
    let kind = header[18];
    let min = match kind {
        msg_type::OPEN => 29,
        msg_type::UPDATE => 23,
        msg_type::NOTIFICATION => 21,
        msg_type::KEEPALIVE => 19,
        msg_type::ROUTE_REFRESH => 23,
        _ => return Err(Notification::new(err::HEADER, err::HEADER_BAD_TYPE, vec![kind])),
    };
    let exact = matches!(kind, msg_type::KEEPALIVE | msg_type::ROUTE_REFRESH);
    if len < min || len > MAX_MESSAGE_LEN || (exact && len != min) {
        return Err(Notification::new(err::HEADER, err::HEADER_BAD_LENGTH, len_bytes.to_vec()));
    }
    Ok((kind, len))
}

/// Parses one whole message (header included). `four_octet` is the negotiated AS_PATH width.
pub fn parse(msg: &[u8], four_octet: bool) -> Result<Message, Notification> {
    let (kind, len) = check_header(msg)?;
    if msg.len() != len {
        return Err(Notification::new(err::HEADER, err::HEADER_BAD_LENGTH, msg[16..18].to_vec()));
    }
    let body = &msg[HEADER_LEN..];
    match kind {
        msg_type::OPEN => parse_open(body).map(Message::Open),
        msg_type::UPDATE => parse_update(body, four_octet).map(Message::Update),
        msg_type::NOTIFICATION => Ok(Message::Notification(Notification::new(body[0], body[1], &body[2..]))),
        msg_type::KEEPALIVE => Ok(Message::Keepalive),
        msg_type::ROUTE_REFRESH => {
            Ok(Message::RouteRefresh { afi: u16::from_be_bytes([body[0], body[1]]), safi: body[3] })
        }
        _ => Err(Notification::new(err::HEADER, err::HEADER_BAD_TYPE, vec![kind])),
    }
}

fn open_err(subcode: u8) -> Notification {
    Notification::new(err::OPEN, subcode, Vec::new())
}

/// Parses an OPEN body (RFC 4271 6.2 checks that need no configuration).
pub fn parse_open(body: &[u8]) -> Result<Open, Notification> {
    if body.len() < 10 {
        return Err(open_err(err::OPEN_UNSPECIFIC));
    }
    let version = body[0];
    if version != 4 {
        // The data is the largest version we support.
        return Err(Notification::new(err::OPEN, err::OPEN_UNSUPPORTED_VERSION, vec![0, 4]));
    }
    let my_as = u16::from_be_bytes([body[1], body[2]]);
    let hold_time = u16::from_be_bytes([body[3], body[4]]);
    let router_id = Ipv4Addr::new(body[5], body[6], body[7], body[8]);
    let opt_len = usize::from(body[9]);
    let params = &body[10..];
    if params.len() != opt_len {
        return Err(open_err(err::OPEN_UNSPECIFIC));
    }
    if hold_time == 1 || hold_time == 2 {
        return Err(open_err(err::OPEN_UNACCEPTABLE_HOLD_TIME));
    }
    if router_id.is_unspecified() {
        return Err(open_err(err::OPEN_BAD_BGP_ID));
    }
    let mut capabilities = Vec::new();
    let mut rest = params;
    while !rest.is_empty() {
        let [kind, len, tail @ ..] = rest else {
            return Err(open_err(err::OPEN_UNSPECIFIC));
        };
        let len = usize::from(*len);
        if tail.len() < len {
            return Err(open_err(err::OPEN_UNSPECIFIC));
        }
        let (value, after) = tail.split_at(len);
        if *kind != 2 {
            return Err(open_err(err::OPEN_UNSUPPORTED_PARAMETER));
        }
        parse_capabilities(value, &mut capabilities)?;
        rest = after;
    }
    Ok(Open { version, my_as, hold_time, router_id, capabilities })
}

fn parse_capabilities(mut v: &[u8], out: &mut Vec<Capability>) -> Result<(), Notification> {
    while !v.is_empty() {
        let [code, len, tail @ ..] = v else {
            return Err(open_err(err::OPEN_UNSPECIFIC));
        };
        let len = usize::from(*len);
        if tail.len() < len {
            return Err(open_err(err::OPEN_UNSPECIFIC));
        }
        let (value, after) = tail.split_at(len);
        out.push(match (*code, value) {
            (1, [a0, a1, _, safi]) => Capability::Multiprotocol { afi: u16::from_be_bytes([*a0, *a1]), safi: *safi },
            (2, []) => Capability::RouteRefresh,
            (65, [a, b, c, d]) => Capability::FourOctetAs(u32::from_be_bytes([*a, *b, *c, *d])),
            (1 | 65, _) => return Err(open_err(err::OPEN_UNSPECIFIC)),
            (code, value) => Capability::Other { code, value: value.to_vec() },
        });
        v = after;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_round_trips() {
        let open = Open::new(4_200_000_000, 90, Ipv4Addr::new(192, 0, 2, 1));
        let bytes = open.encode();
        let Message::Open(back) = parse(&bytes, false).unwrap() else { panic!("not an OPEN") };
        assert_eq!(back, open);
        assert_eq!(back.my_as, AS_TRANS);
        assert_eq!(back.asn(), 4_200_000_000);
        assert!(back.offers(AFI_IPV6, SAFI_UNICAST));
    }

    #[test]
    fn headers_are_checked() {
        let mut ka = keepalive();
        assert_eq!(parse(&ka, false), Ok(Message::Keepalive));
        ka[3] = 0;
        assert_eq!(check_header(&ka).unwrap_err().subcode, err::HEADER_NOT_SYNCHRONIZED);
        let mut long = keepalive();
        long[17] = 20;
        assert_eq!(check_header(&long).unwrap_err(), Notification::new(1, 2, vec![0, 20]));
        let mut big = keepalive();
        big[16] = 0x10;
        big[17] = 1;
        assert_eq!(check_header(&big).unwrap_err().subcode, err::HEADER_BAD_LENGTH);
        let mut kind = keepalive();
        kind[18] = 9;
        assert_eq!(check_header(&kind).unwrap_err(), Notification::new(1, 3, vec![9]));
    }

    #[test]
    fn open_errors_name_the_rfc_subcodes() {
        let good = Open::new(65001, 90, Ipv4Addr::new(10, 0, 0, 1)).encode();
        let body = |m: &[u8]| m[HEADER_LEN..].to_vec();
        let mut v3 = body(&good);
        v3[0] = 3;
        assert_eq!(parse_open(&v3).unwrap_err(), Notification::new(2, 1, vec![0, 4]));
        let mut hold = body(&good);
        hold[3..5].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(parse_open(&hold).unwrap_err().subcode, err::OPEN_UNACCEPTABLE_HOLD_TIME);
        let mut id = body(&good);
        id[5..9].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse_open(&id).unwrap_err().subcode, err::OPEN_BAD_BGP_ID);
        let mut param = body(&good);
        param[10] = 9;
        assert_eq!(parse_open(&param).unwrap_err().subcode, err::OPEN_UNSUPPORTED_PARAMETER);
        let mut short = body(&good);
        short[9] += 1;
        assert_eq!(parse_open(&short).unwrap_err().subcode, err::OPEN_UNSPECIFIC);
    }

    #[test]
    fn notifications_are_cut_to_the_message_size() {
        let n = Notification::new(3, 1, vec![0; 10_000]);
        let bytes = n.encode();
        assert_eq!(bytes.len(), MAX_MESSAGE_LEN);
        let Message::Notification(back) = parse(&bytes, false).unwrap() else { panic!() };
        assert_eq!((back.code, back.subcode, back.data.len()), (3, 1, MAX_MESSAGE_LEN - 21));
    }
}
