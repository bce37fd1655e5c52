//! Which address a request comes from: the peer, or what `X-Forwarded-For`
//! says when the peer is a proxy we trust. Pure.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// Every peer is trusted (`trust_forwarded_for = true`): the first address wins.
    pub trust_all: bool,
    /// Peers in these networks are trusted proxies.
    pub proxies: Vec<IpNet>,
}

impl Forwarding {
    fn is_proxy(&self, ip: IpAddr) -> bool {
        self.proxies.iter().any(|n| n.contains(&ip))
    }
}

fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry.parse::<IpAddr>().or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip())).ok().map(|ip| ip.to_canonical())
}

/// The client address used for coverage. With `trust_all`, the first `X-Forwarded-For`
/// address. From a trusted proxy, the right-most address that is not itself a trusted
/// proxy (what the nearest untrusted hop claimed cannot be spoofed by the client).
/// Otherwise, or when the header is missing or garbled, the peer.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, fw: &Forwarding) -> IpAddr {
    let peer = peer.to_canonical();
    let Some(xff) = forwarded_for else { return peer };
    if fw.trust_all {
        return xff.split(',').next().and_then(parse_forwarded).unwrap_or(peer);
    }
    if !fw.is_proxy(peer) {
        return peer;
    }
    let mut best = peer;
    for entry in xff.rsplit(',') {
        match parse_forwarded(entry) {
            Some(ip) if fw.is_proxy(ip) => best = ip,
            Some(ip) => return ip,
            None => return best,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let peer = ip("127.0.0.1");
        let none = Forwarding::default();
        let all = Forwarding { trust_all: true, proxies: Vec::new() };
        assert_eq!(client_ip(peer, Some("10.1.2.3, 10.9.9.9"), &none), peer);
        assert_eq!(client_ip(peer, Some("10.1.2.3, 10.9.9.9"), &all), ip("10.1.2.3"));
        assert_eq!(client_ip(peer, Some(" 2001:db8::1 "), &all), ip("2001:db8::1"));
        assert_eq!(client_ip(peer, Some("10.1.2.3:5555"), &all), ip("10.1.2.3"));
        assert_eq!(client_ip(peer, Some("::ffff:10.1.2.3"), &all), ip("10.1.2.3"));
        assert_eq!(client_ip(peer, Some("garbage"), &all), peer);
        assert_eq!(client_ip(peer, None, &all), peer);
    }

    #[test]
    fn trusted_proxies_are_walked_from_the_right() {
        let fw = Forwarding {
            trust_all: false,
            proxies: vec!["127.0.0.0/8".parse().unwrap(), "192.168.0.0/16".parse().unwrap()],
        };
        // From a trusted proxy: the right-most untrusted address.
        assert_eq!(client_ip(ip("127.0.0.1"), Some("6.6.6.6, 10.1.2.3"), &fw), ip("10.1.2.3"));
        assert_eq!(client_ip(ip("127.0.0.1"), Some("10.1.2.3, 192.168.1.1"), &fw), ip("10.1.2.3"));
        // All hops trusted: the left-most.
        assert_eq!(client_ip(ip("127.0.0.1"), Some("192.168.1.1"), &fw), ip("192.168.1.1"));
        // Garbage stops the walk at the last good hop.
        assert_eq!(client_ip(ip("127.0.0.1"), Some("10.1.2.3, junk"), &fw), ip("127.0.0.1"));
        // From anyone else the header is ignored.
        assert_eq!(client_ip(ip("10.9.9.9"), Some("10.1.2.3"), &fw), ip("10.9.9.9"));
        assert_eq!(client_ip(ip("::ffff:127.0.0.1"), Some("10.1.2.3"), &fw), ip("10.1.2.3"));
    }
}
