//! Client IP → site by longest-prefix match over the configured coverage
//! table (like Traffic Control's coverage zone file).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::Edge;

/// Where a client IP was placed: its site and the prefix that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoverageMatch {
    /// Site covering the client.
    pub site: String,
    /// The most specific configured prefix containing the client.
    pub prefix: IpNet,
}

/// The coverage table: every configured prefix and the site it belongs to.
#[derive(Debug, Clone, Default)]
pub struct CoverageMap {
    /// Sorted most specific first, so the first hit is the longest match.
    entries: Vec<(IpNet, String)>,
}

impl CoverageMap {
    /// Builds the table from validated edges (duplicates within a site collapse).
    pub fn from_edges(edges: &[Edge]) -> Self {
        let mut entries: Vec<(IpNet, String)> =
            edges.iter().flat_map(|e| e.prefixes.iter().map(|p| (*p, e.site.clone()))).collect();
        entries.sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then_with(|| a.0.cmp(&b.0)));
        entries.dedup();
        Self { entries }
    }

    /// The site of `ip` by longest-prefix match, if any prefix covers it.
    /// IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) match IPv4 prefixes.
    pub fn lookup(&self, ip: IpAddr) -> Option<CoverageMatch> {
        // A linear scan is plenty for hundreds of prefixes; a trie can replace it behind this method.
        let ip = ip.to_canonical();
        self.entries
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(net, site)| CoverageMatch { site: site.clone(), prefix: *net })
    }

    /// Number of distinct (prefix, site) entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no prefix is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(name: &str, site: &str, prefixes: &[&str]) -> Edge {
        Edge {
            name: name.into(),
            base_url: format!("http://{name}"),
            site: site.into(),
            prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            drained: false,
        }
    }

    fn map() -> CoverageMap {
        CoverageMap::from_edges(&[
            edge("a1", "isp-a", &["10.0.0.0/8", "2001:db8::/32"]),
            edge("a2", "isp-a", &["10.0.0.0/8"]),
            edge("b1", "isp-b", &["10.2.0.0/16", "2001:db8:b::/48"]),
            edge("c1", "isp-c", &["10.2.3.0/24"]),
        ])
    }

    #[test]
    fn longest_prefix_wins() {
        let m = map();
        let site = |ip: &str| m.lookup(ip.parse().unwrap()).map(|c| c.site);
        assert_eq!(site("10.9.9.9").as_deref(), Some("isp-a"));
        assert_eq!(site("10.2.9.9").as_deref(), Some("isp-b"));
        assert_eq!(site("10.2.3.9").as_deref(), Some("isp-c"));
        let hit = m.lookup("10.2.3.9".parse().unwrap()).unwrap();
        assert_eq!(hit.prefix.to_string(), "10.2.3.0/24");
        assert_eq!(m.len(), 5, "duplicate prefixes within a site collapse");
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        let m = map();
        let site = |ip: &str| m.lookup(ip.parse().unwrap()).map(|c| c.site);
        assert_eq!(site("2001:db8:1::1").as_deref(), Some("isp-a"));
        assert_eq!(site("2001:db8:b::1").as_deref(), Some("isp-b"));
        assert_eq!(site("::ffff:10.2.3.4").as_deref(), Some("isp-c"));
    }

    #[test]
    fn no_match_is_none() {
        let m = map();
        assert_eq!(m.lookup("192.0.2.1".parse().unwrap()), None);
        assert_eq!(m.lookup("2001:db9::1".parse().unwrap()), None);
        assert_eq!(CoverageMap::default().lookup("10.0.0.1".parse().unwrap()), None);
    }
}
