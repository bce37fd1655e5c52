//! Client IP → site by longest-prefix match over the coverage table: every
//! edge's configured prefixes, the prefixes edges report in their heartbeats
//! (learned over BGP from the ISP's router; see `Registry::reported_coverage`)
//! and an optional coverage file, either a CSV of `prefix,site` or Traffic
//! Control's coverage-zone JSON
//! (`{"coverageZones": {"site": {"network": [..], "network6": [..]}}}`).
//! The server passes reported prefixes before the file's to [`CoverageMap::build`],
//! so for one prefix: configured, then reported, then the file.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::Edge;

/// Where a client IP was placed: its site and the prefix that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoverageMatch {
    /// Site covering the client.
    pub site: String,
    /// The most specific prefix containing the client.
    pub prefix: IpNet,
}

/// Why a coverage file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CoverageError {
    #[error("reading coverage file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("coverage CSV line {line}: {reason}")]
    Csv { line: usize, reason: String },
    #[error("coverage-zone JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("coverage zone {site:?}: {prefix:?} is not a CIDR")]
    BadZonePrefix { site: String, prefix: String },
    #[error("coverage file: prefix {prefix} is claimed by site {first:?} and site {second:?}")]
    Conflict { prefix: IpNet, first: String, second: String },
}

/// The coverage table: one hash map per prefix length, longest first, so a lookup
/// costs at most one probe per distinct length (≤ 33 for IPv4, ≤ 129 for IPv6)
/// however many prefixes there are.
#[derive(Debug, Clone, Default)]
pub struct CoverageMap {
    v4: Vec<(u8, HashMap<u32, usize>)>,
    v6: Vec<(u8, HashMap<u128, usize>)>,
    sites: Vec<String>,
    len: usize,
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl CoverageMap {
    /// Builds the table from validated edges (duplicates within a site collapse).
    pub fn from_edges(edges: &[Edge]) -> Self {
        Self::build(edges, Vec::new())
    }

    /// Edge prefixes first, then `extra` (a coverage file) for prefixes the edges do not name:
    /// an edge's own configuration wins over the file.
    pub fn build(edges: &[Edge], extra: Vec<(IpNet, String)>) -> Self {
        let mut map = Self::default();
        let mut site_ids: HashMap<String, usize> = HashMap::new();
        let mut v4: HashMap<u8, HashMap<u32, usize>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, usize>> = HashMap::new();
        let from_edges = edges.iter().flat_map(|e| e.prefixes.iter().map(|p| (*p, e.site.clone())));
        for (net, site) in from_edges.chain(extra) {
            let next = site_ids.len();
            let id = *site_ids.entry(site.clone()).or_insert_with(|| {
                map.sites.push(site);
                next
            });
            // The first claim of a prefix wins: edges before the file.
            match net.trunc() {
                IpNet::V4(n) => {
                    v4.entry(n.prefix_len()).or_default().entry(u32::from(n.network())).or_insert(id);
                }
                IpNet::V6(n) => {
                    v6.entry(n.prefix_len()).or_default().entry(u128::from(n.network())).or_insert(id);
                }
            }
        }
        map.v4 = v4.into_iter().collect();
        map.v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        map.v6 = v6.into_iter().collect();
        map.v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        map.len =
            map.v4.iter().map(|(_, m)| m.len()).sum::<usize>() + map.v6.iter().map(|(_, m)| m.len()).sum::<usize>();
        map
    }

    /// The site of `ip` by longest-prefix match, if any prefix covers it.
    /// IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) match IPv4 prefixes.
    pub fn lookup(&self, ip: IpAddr) -> Option<CoverageMatch> {
        let (len, site) = match ip.to_canonical() {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                self.v4.iter().find_map(|(len, m)| m.get(&(bits & mask4(*len))).map(|s| (*len, *s)))?
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                self.v6.iter().find_map(|(len, m)| m.get(&(bits & mask6(*len))).map(|s| (*len, *s)))?
            }
        };
        let prefix = IpNet::new(ip.to_canonical(), len).ok()?.trunc();
        Some(CoverageMatch { site: self.sites[site].clone(), prefix })
    }

    /// Number of distinct prefixes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no prefix is configured.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Adds (prefix, site) to `out`, refusing a prefix claimed by two sites (same site twice is fine).
fn push_entry(
    out: &mut Vec<(IpNet, String)>,
    seen: &mut HashMap<IpNet, usize>,
    net: IpNet,
    site: &str,
) -> Result<(), CoverageError> {
    let net = net.trunc();
    match seen.get(&net) {
        Some(&i) if out[i].1 != site => {
            Err(CoverageError::Conflict { prefix: net, first: out[i].1.clone(), second: site.to_owned() })
        }
        Some(_) => Ok(()),
        None => {
            seen.insert(net, out.len());
            out.push((net, site.to_owned()));
            Ok(())
        }
    }
}

/// Parses `prefix,site` lines; blank lines, `#` comments and a `prefix,site` header are skipped.
pub fn parse_csv(text: &str) -> Result<Vec<(IpNet, String)>, CoverageError> {
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| CoverageError::Csv { line: n + 1, reason };
        let (prefix, site) = line.split_once(',').ok_or_else(|| err("expected prefix,site".to_owned()))?;
        let (prefix, site) = (prefix.trim(), site.trim());
        if n == 0 && prefix.eq_ignore_ascii_case("prefix") {
            continue;
        }
        if site.is_empty() || site.contains(',') {
            return Err(err(format!("bad site {site:?}")));
        }
        let net: IpNet = prefix.parse().map_err(|_| err(format!("{prefix:?} is not a CIDR")))?;
        push_entry(&mut out, &mut seen, net, site)?;
    }
    Ok(out)
}

#[derive(Deserialize)]
struct CoverageZoneFile {
    #[serde(rename = "coverageZones")]
    coverage_zones: HashMap<String, CoverageZone>,
}

#[derive(Deserialize)]
struct CoverageZone {
    #[serde(default)]
    network: Vec<String>,
    #[serde(default)]
    network6: Vec<String>,
}

/// Parses Traffic Control's coverage-zone JSON (other keys such as `coordinates` are ignored).
pub fn parse_coverage_zones(text: &str) -> Result<Vec<(IpNet, String)>, CoverageError> {
    let file: CoverageZoneFile = serde_json::from_str(text)?;
    let mut zones: Vec<(String, CoverageZone)> = file.coverage_zones.into_iter().collect();
    // Sorted so that a conflict is reported the same way every time.
    zones.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for (site, zone) in zones {
        for p in zone.network.iter().chain(&zone.network6) {
            let net: IpNet =
                p.trim().parse().map_err(|_| CoverageError::BadZonePrefix { site: site.clone(), prefix: p.clone() })?;
            push_entry(&mut out, &mut seen, net, &site)?;
        }
    }
    Ok(out)
}

/// Reads a coverage file: JSON when it starts with `{`, else CSV.
pub fn load_file(path: &Path) -> Result<Vec<(IpNet, String)>, CoverageError> {
    let text = std::fs::read_to_string(path).map_err(|source| CoverageError::Read { path: path.to_owned(), source })?;
    if text.trim_start().starts_with('{') {
        parse_coverage_zones(&text)
    } else {
        parse_csv(&text)
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
            max_load_bps: None,
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
    fn nested_prefixes_and_default_routes() {
        let m = CoverageMap::build(
            &[],
            vec![
                ("0.0.0.0/0".parse().unwrap(), "world".into()),
                ("10.0.0.0/8".parse().unwrap(), "ten".into()),
                ("10.1.2.3/32".parse().unwrap(), "host".into()),
                ("::/0".parse().unwrap(), "world6".into()),
            ],
        );
        let site = |ip: &str| m.lookup(ip.parse().unwrap()).map(|c| c.site).unwrap();
        assert_eq!(site("10.1.2.3"), "host");
        assert_eq!(site("10.1.2.4"), "ten");
        assert_eq!(site("8.8.8.8"), "world");
        assert_eq!(site("2001:db8::1"), "world6");
        assert_eq!(m.lookup("10.1.2.3".parse().unwrap()).unwrap().prefix.to_string(), "10.1.2.3/32");
    }

    #[test]
    fn edge_prefixes_win_over_the_file() {
        let m = CoverageMap::build(
            &[edge("a1", "isp-a", &["10.0.0.0/8"])],
            vec![("10.0.0.0/8".parse().unwrap(), "file".into()), ("10.5.0.0/16".parse().unwrap(), "file".into())],
        );
        let site = |ip: &str| m.lookup(ip.parse().unwrap()).map(|c| c.site).unwrap();
        assert_eq!(site("10.1.0.1"), "isp-a");
        assert_eq!(site("10.5.0.1"), "file");
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn configured_then_reported_then_file_for_the_same_prefix() {
        let reported =
            vec![("10.0.0.0/8".parse().unwrap(), "bgp".into()), ("10.6.0.0/16".parse().unwrap(), "bgp".into())];
        let file =
            vec![("10.6.0.0/16".parse().unwrap(), "file".into()), ("10.7.0.0/16".parse().unwrap(), "file".into())];
        let m = CoverageMap::build(&[edge("a1", "isp-a", &["10.0.0.0/8"])], reported.into_iter().chain(file).collect());
        let site = |ip: &str| m.lookup(ip.parse().unwrap()).map(|c| c.site).unwrap();
        assert_eq!(site("10.1.0.1"), "isp-a");
        assert_eq!(site("10.6.0.1"), "bgp");
        assert_eq!(site("10.7.0.1"), "file");
    }

    #[test]
    fn csv_files_parse_with_clear_errors() {
        let rows = parse_csv("prefix,site\n# comment\n\n10.1.0.0/16, isp-a\n2001:db8::/32,isp-b\n10.1.0.0/16,isp-a\n")
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1], ("2001:db8::/32".parse().unwrap(), "isp-b".to_owned()));
        let err = parse_csv("10.1.0.0/16,a\n10.1.0.0/33,b\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("10.1.0.0/33"), "{err}");
        assert!(parse_csv("10.1.0.0/16\n").unwrap_err().to_string().contains("prefix,site"));
        let err = parse_csv("10.1.0.0/16,a\n10.1.0.0/16,b\n").unwrap_err().to_string();
        assert!(err.contains("claimed by site \"a\" and site \"b\""), "{err}");
    }

    #[test]
    fn traffic_control_coverage_zones_parse() {
        let json = r#"{
            "revision": "2026-11-23", "customerName": "lab",
            "coverageZones": {
                "isp-a": {"network": ["10.1.0.0/16", "10.2.0.0/16"], "network6": ["2001:db8:a::/48"],
                          "coordinates": {"latitude": 1.0, "longitude": 2.0}},
                "isp-b": {"network": ["10.3.0.0/16"]}
            }
        }"#;
        let m = CoverageMap::build(&[], parse_coverage_zones(json).unwrap());
        assert_eq!(m.len(), 4);
        let site = |ip: &str| m.lookup(ip.parse().unwrap()).map(|c| c.site);
        assert_eq!(site("10.2.9.9").as_deref(), Some("isp-a"));
        assert_eq!(site("2001:db8:a::5").as_deref(), Some("isp-a"));
        assert_eq!(site("10.3.0.1").as_deref(), Some("isp-b"));
        let err = parse_coverage_zones(r#"{"coverageZones": {"x": {"network": ["nope"]}}}"#).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(parse_coverage_zones("{}").is_err());
    }

    #[test]
    fn files_are_detected_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("cov.csv");
        std::fs::write(&csv, "10.1.0.0/16,isp-a\n").unwrap();
        assert_eq!(load_file(&csv).unwrap().len(), 1);
        let json = dir.path().join("czf.json");
        std::fs::write(&json, r#"{"coverageZones": {"isp-a": {"network": ["10.1.0.0/16"]}}}"#).unwrap();
        assert_eq!(load_file(&json).unwrap()[0].1, "isp-a");
        assert!(load_file(&dir.path().join("missing")).unwrap_err().to_string().contains("missing"));
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
