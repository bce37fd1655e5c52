//! Steering's configuration file (TOML) and its validation.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Steering settings, as read from TOML; `validate` checks them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the binary binds (the library's `run` takes a bound listener).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Id of the signing key; tokens carry it so keys can rotate.
    #[serde(default = "default_key_id")]
    pub token_key_id: String,
    /// Secret shared with the edges for signing URL tokens.
    pub token_secret: String,
    /// Lifetime of a signed URL, in seconds.
    #[serde(default = "default_ttl")]
    pub token_ttl_s: u64,
    /// Take the client IP from the first `X-Forwarded-For` address (only behind a trusted proxy, or in tests).
    #[serde(default)]
    pub trust_forwarded_for: bool,
    /// Time between two health probes of an edge.
    #[serde(default = "default_probe_interval")]
    pub probe_interval_ms: u64,
    /// A probe slower than this counts as a failure.
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout_ms: u64,
    /// Consecutive failed probes after which an edge is down.
    #[serde(default = "default_failures_to_down")]
    pub probe_failures_to_down: u32,
    /// Peers (CIDRs) whose `X-Forwarded-For` is honoured; `trust_forwarded_for = true` trusts every peer.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Bearer token edges send with `POST /v1/heartbeat`; unset: heartbeats are refused.
    #[serde(default)]
    pub heartbeat_token: Option<String>,
    /// An edge that has sent heartbeats is out when none arrived for this long.
    #[serde(default = "default_heartbeat_timeout")]
    pub heartbeat_timeout_ms: u64,
    /// First hold-out of an edge that fails again soon after recovering (doubles per flap).
    #[serde(default = "default_breaker_backoff")]
    pub breaker_backoff_ms: u64,
    /// Longest hold-out of a flapping edge.
    #[serde(default = "default_breaker_max_backoff")]
    pub breaker_max_backoff_ms: u64,
    /// A failure this soon after a recovery counts as a flap.
    #[serde(default = "default_breaker_window")]
    pub breaker_window_ms: u64,
    /// An edge whose load reaches this percentage of its `max_load_bps` is skipped (ranked after the others).
    #[serde(default = "default_overload_percent")]
    pub overload_percent: u32,
    /// At most this many URLs in an answer (the origin fallback comes on top).
    #[serde(default = "default_max_urls")]
    pub max_urls: usize,
    /// Site → sites to try next, nearest first (after the client's own site).
    #[serde(default)]
    pub nearby: BTreeMap<String, Vec<String>>,
    /// Sites to try first for clients no prefix covers.
    #[serde(default)]
    pub fallback_sites: Vec<String>,
    /// Origin base URL offered last, unsigned, when set (reason `fallback-origin`).
    #[serde(default)]
    pub origin_url: Option<String>,
    /// TTL of content-steering manifests (how often players re-poll), seconds.
    #[serde(default = "default_steering_ttl")]
    pub steering_ttl_s: u64,
    /// Coverage table file: CSV `prefix,site` or Traffic Control coverage-zone JSON; merged with edge prefixes.
    #[serde(default)]
    pub coverage_file: Option<PathBuf>,
    /// How often the coverage file's mtime is checked for a reload.
    #[serde(default = "default_coverage_reload")]
    pub coverage_reload_ms: u64,
    /// Client prefixes an edge reports in its heartbeats (learned over BGP) count while its last
    /// heartbeat is at most this old; an edge silent for longer loses them.
    #[serde(default = "default_reported_prefix_hold")]
    pub reported_prefix_hold_ms: u64,
    /// Directory where edges' daily popularity reports are kept (survives restarts); unset: memory only.
    #[serde(default)]
    pub popularity_dir: Option<PathBuf>,
    /// Directory of enrolled edges (`steering edges add|revoke|list`), one JSON file each; replicas may share it.
    #[serde(default)]
    pub edges_dir: Option<PathBuf>,
    /// Older URL-signing keys edges still accept during a rotation (`[[token_keys]]` with `id` and
    /// `secret`); steering signs with `token_key_id`/`token_secret` and hands enrolled edges all of them.
    #[serde(default)]
    pub token_keys: Vec<TokenKeyConfig>,
    /// Steering's base URL as edges reach it, handed out at enrollment.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The edges steering may send players to.
    #[serde(default)]
    pub edges: Vec<EdgeConfig>,
}

/// A URL-signing key edges accept besides the signing one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    /// The key id tokens name.
    pub id: String,
    /// The shared secret.
    pub secret: String,
}

/// One edge cache as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Unique name, shown to players and operators and hashed for placement.
    pub name: String,
    /// Base URL such as `http://127.0.0.1:4567`.
    pub url: String,
    /// The site (ISP location) the edge sits in.
    pub site: String,
    /// CIDRs of the client networks this edge's site covers.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// A drained edge gets no new players (still probed).
    #[serde(default)]
    pub drained: bool,
    /// Egress (bits/s) the edge sustains; with heartbeat load it decides overload. A heartbeat's value wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_load_bps: Option<u64>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8090))
}
fn default_key_id() -> String {
    "k1".to_owned()
}
fn default_ttl() -> u64 {
    3600
}
// Probes every second, 500 ms timeout, two failures: a dead edge is out within 2.5 s.
fn default_probe_interval() -> u64 {
    1000
}
fn default_probe_timeout() -> u64 {
    500
}
fn default_heartbeat_timeout() -> u64 {
    2500
}
fn default_breaker_backoff() -> u64 {
    10_000
}
fn default_breaker_max_backoff() -> u64 {
    300_000
}
fn default_breaker_window() -> u64 {
    60_000
}
fn default_overload_percent() -> u32 {
    90
}
fn default_max_urls() -> usize {
    8
}
fn default_steering_ttl() -> u64 {
    10
}
fn default_reported_prefix_hold() -> u64 {
    60_000
}
fn default_coverage_reload() -> u64 {
    2000
}
fn default_failures_to_down() -> u32 {
    2
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("token_secret must not be empty")]
    EmptySecret,
    #[error("token_key_id must be non-empty and must not contain '|'")]
    BadKeyId,
    #[error("token_ttl_s must be at least 1")]
    ZeroTtl,
    #[error("{0} must be at least 1")]
    ZeroSetting(&'static str),
    #[error("no [[edges]] configured")]
    NoEdges,
    #[error("edge #{index}: name must not be empty")]
    EmptyName { index: usize },
    #[error("edge {edge:?}: site must not be empty")]
    EmptySite { edge: String },
    #[error("edge name {0:?} is used twice")]
    DuplicateEdge(String),
    #[error("edge {edge:?}: url {url:?} is not a usable base URL: {reason}")]
    BadUrl { edge: String, url: String, reason: String },
    #[error("edge {edge:?}: prefix {prefix:?} is not a CIDR like 10.1.0.0/16 or 2001:db8::/32: {reason}")]
    BadPrefix { edge: String, prefix: String, reason: String },
    #[error("prefix {prefix} is claimed by site {first:?} and site {second:?}")]
    PrefixConflict { prefix: IpNet, first: String, second: String },
    #[error("trusted_proxies: {0:?} is not a CIDR like 127.0.0.1/32")]
    BadTrustedProxy(String),
    #[error("origin_url {url:?} is not a usable base URL: {reason}")]
    BadOriginUrl { url: String, reason: String },
    #[error("heartbeat_token must not be empty when set")]
    EmptyHeartbeatToken,
    #[error("overload_percent must be between 1 and 1000")]
    BadOverloadPercent,
    #[error("token key {0:?}: id must be non-empty without '|', unique, with a non-empty secret")]
    BadTokenKey(String),
    #[error("public_url {url:?} is not a usable base URL: {reason}")]
    BadPublicUrl { url: String, reason: String },
}

/// An edge after validation: parsed prefixes and a base URL without trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Unique name.
    pub name: String,
    /// Base URL without trailing slash, e.g. `http://127.0.0.1:4567`.
    pub base_url: String,
    /// Site the edge sits in.
    pub site: String,
    /// Client networks the site covers (host bits cleared).
    pub prefixes: Vec<IpNet>,
    /// Drained edges get no new players.
    pub drained: bool,
    /// Configured egress capacity, bits/s.
    pub max_load_bps: Option<u64>,
}

impl Edge {
    /// Where its health is probed.
    pub fn health_url(&self) -> String {
        format!("{}/health", self.base_url)
    }
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml_str(&text)
    }

    /// Probe period as a duration.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }

    /// Probe timeout as a duration.
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }

    /// Checks every setting and returns the edges in configured order.
    pub fn validate(&self) -> Result<Vec<Edge>, ConfigError> {
        if self.token_secret.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        if self.token_key_id.is_empty() || self.token_key_id.contains('|') {
            return Err(ConfigError::BadKeyId);
        }
        if self.token_ttl_s == 0 {
            return Err(ConfigError::ZeroTtl);
        }
        for (name, v) in [
            ("probe_interval_ms", self.probe_interval_ms),
            ("probe_timeout_ms", self.probe_timeout_ms),
            ("probe_failures_to_down", u64::from(self.probe_failures_to_down)),
            ("heartbeat_timeout_ms", self.heartbeat_timeout_ms),
            ("max_urls", self.max_urls as u64),
            ("steering_ttl_s", self.steering_ttl_s),
            ("coverage_reload_ms", self.coverage_reload_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroSetting(name));
            }
        }
        if !(1..=1000).contains(&self.overload_percent) {
            return Err(ConfigError::BadOverloadPercent);
        }
        self.trusted_proxy_nets()?;
        if let Some(url) = &self.origin_url {
            check_base_url(url).map_err(|reason| ConfigError::BadOriginUrl { url: url.clone(), reason })?;
        }
        if self.heartbeat_token.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::EmptyHeartbeatToken);
        }
        let mut key_ids = vec![self.token_key_id.as_str()];
        for k in &self.token_keys {
            if k.id.is_empty() || k.id.contains('|') || k.secret.is_empty() || key_ids.contains(&k.id.as_str()) {
                return Err(ConfigError::BadTokenKey(k.id.clone()));
            }
            key_ids.push(&k.id);
        }
        if let Some(url) = &self.public_url {
            check_base_url(url).map_err(|reason| ConfigError::BadPublicUrl { url: url.clone(), reason })?;
        }
        // Edges may also register by heartbeat, but only if heartbeats are enabled.
        if self.edges.is_empty() && self.heartbeat_token.is_none() && self.edges_dir.is_none() {
            return Err(ConfigError::NoEdges);
        }
        let mut edges: Vec<Edge> = Vec::with_capacity(self.edges.len());
        let mut prefix_site: HashMap<IpNet, String> = HashMap::new();
        for (index, e) in self.edges.iter().enumerate() {
            if e.name.trim().is_empty() {
                return Err(ConfigError::EmptyName { index });
            }
            if edges.iter().any(|x| x.name == e.name) {
                return Err(ConfigError::DuplicateEdge(e.name.clone()));
            }
            if e.site.trim().is_empty() {
                return Err(ConfigError::EmptySite { edge: e.name.clone() });
            }
            let base_url = check_base_url(&e.url).map_err(|reason| ConfigError::BadUrl {
                edge: e.name.clone(),
                url: e.url.clone(),
                reason,
            })?;
            let mut prefixes = Vec::with_capacity(e.prefixes.len());
            for p in &e.prefixes {
                let net: IpNet = p.trim().parse().map_err(|err: ipnet::AddrParseError| ConfigError::BadPrefix {
                    edge: e.name.clone(),
                    prefix: p.clone(),
                    reason: err.to_string(),
                })?;
                // 10.1.2.3/16 means the network 10.1.0.0/16.
                let net = net.trunc();
                match prefix_site.get(&net) {
                    Some(site) if *site != e.site => {
                        return Err(ConfigError::PrefixConflict {
                            prefix: net,
                            first: site.clone(),
                            second: e.site.clone(),
                        })
                    }
                    _ => {
                        prefix_site.insert(net, e.site.clone());
                    }
                }
                prefixes.push(net);
            }
            edges.push(Edge {
                name: e.name.clone(),
                base_url,
                site: e.site.clone(),
                prefixes,
                drained: e.drained,
                max_load_bps: e.max_load_bps,
            });
        }
        Ok(edges)
    }

    /// `trusted_proxies` parsed (host bits cleared).
    pub fn trusted_proxy_nets(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|p| {
                let t = p.trim();
                t.parse::<IpNet>()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| ConfigError::BadTrustedProxy(p.clone()))
            })
            .collect()
    }

    /// Every URL-signing key edges must accept, the signing one first.
    pub fn token_key_specs(&self) -> Vec<vod::edge_auth::KeySpec> {
        std::iter::once(vod::edge_auth::KeySpec { id: self.token_key_id.clone(), secret: self.token_secret.clone() })
            .chain(
                self.token_keys.iter().map(|k| vod::edge_auth::KeySpec { id: k.id.clone(), secret: k.secret.clone() }),
            )
            .collect()
    }

    /// `origin_url` without trailing slash, if set (call after `validate`).
    pub fn origin_base(&self) -> Option<String> {
        self.origin_url.as_deref().and_then(|u| check_base_url(u).ok())
    }
}

/// Accepts `http(s)://host[:port][/path]` without query or fragment; returns it without trailing slash.
pub(crate) fn check_base_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| e.to_string())?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("scheme must be http or https, not {}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".to_owned());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
token_secret = "s3cret"
trust_forwarded_for = true

[[edges]]
name = "a1"
url = "http://127.0.0.1:4567/"
site = "lab-a"
prefixes = ["10.1.0.0/16", "2001:db8:a::/48"]

[[edges]]
name = "b1"
url = "http://127.0.0.1:4568"
site = "lab-b"
prefixes = ["10.2.3.4/16"]
"#;

    #[test]
    fn parses_defaults_and_normalizes() {
        let cfg = Config::from_toml_str(GOOD).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:8090".parse().unwrap());
        assert_eq!(cfg.token_key_id, "k1");
        assert_eq!(cfg.token_ttl_s, 3600);
        assert_eq!((cfg.probe_interval_ms, cfg.probe_timeout_ms, cfg.probe_failures_to_down), (1000, 500, 2));
        assert_eq!(cfg.heartbeat_timeout_ms, 2500);
        // Failure detection within 3 s: two failed probes, the second timing out.
        assert!(cfg.probe_interval_ms * u64::from(cfg.probe_failures_to_down) + cfg.probe_timeout_ms <= 3000);
        let edges = cfg.validate().unwrap();
        assert_eq!(edges[0].base_url, "http://127.0.0.1:4567");
        assert_eq!(edges[0].health_url(), "http://127.0.0.1:4567/health");
        assert_eq!(edges[1].prefixes, vec!["10.2.0.0/16".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn example_config_is_valid() {
        let cfg = Config::from_toml_str(include_str!("../steering.example.toml")).unwrap();
        assert_eq!(cfg.validate().unwrap().len(), 3);
    }

    fn err_of(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn refuses_bad_configs_with_clear_messages() {
        assert!(err_of(&GOOD.replace("s3cret", "")).contains("token_secret"));
        assert!(err_of(&format!("{GOOD}\nbogus = 1\n")).contains("bogus"));
        assert!(err_of(&GOOD.replace("\"b1\"", "\"a1\"")).contains("used twice"));
        let bad_url = err_of(&GOOD.replace("http://127.0.0.1:4568", "ftp://x"));
        assert!(bad_url.contains("b1") && bad_url.contains("scheme"), "{bad_url}");
        assert!(err_of(&GOOD.replace("http://127.0.0.1:4568", "not a url")).contains("not a usable base URL"));
        let bad_cidr = err_of(&GOOD.replace("10.2.3.4/16", "10.2.0.0/33"));
        assert!(bad_cidr.contains("10.2.0.0/33") && bad_cidr.contains("b1"), "{bad_cidr}");
        assert!(err_of(&GOOD.replace("10.2.3.4/16", "10.1.0.0/16")).contains("claimed by site"));
        assert!(err_of("token_secret = \"x\"\n").contains("no [[edges]]"));
        assert!(
            err_of(&GOOD.replace("trust_forwarded_for = true", "probe_interval_ms = 0")).contains("probe_interval_ms")
        );
        let with = |line: &str| GOOD.replace("trust_forwarded_for = true", line);
        assert!(err_of(&with("trusted_proxies = [\"10.0.0.0/33\"]")).contains("trusted_proxies"));
        assert!(err_of(&with("origin_url = \"ftp://o\"")).contains("origin_url"));
        assert!(err_of(&with("heartbeat_token = \"\"")).contains("heartbeat_token"));
        assert!(err_of(&with("overload_percent = 0")).contains("overload_percent"));
        let dup = err_of(&format!("{}\n[[token_keys]]\nid = \"k1\"\nsecret = \"x\"\n", with("")));
        assert!(dup.contains("token key \"k1\""), "{dup}");
        assert!(err_of(&with("public_url = \"ftp://s\"")).contains("public_url"));
    }

    #[test]
    fn new_settings_parse() {
        let cfg = Config::from_toml_str(&GOOD.replace(
            "trust_forwarded_for = true",
            "trusted_proxies = [\"127.0.0.1\", \"10.9.0.0/16\"]\norigin_url = \"http://origin:9000/\"\n\
             heartbeat_token = \"hb\"\nfallback_sites = [\"lab-a\"]\n[nearby]\nlab-a = [\"lab-b\"]\n",
        ))
        .unwrap();
        let nets: Vec<String> = cfg.trusted_proxy_nets().unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(nets, vec!["127.0.0.1/32", "10.9.0.0/16"]);
        assert_eq!(cfg.origin_base().as_deref(), Some("http://origin:9000"));
        assert_eq!(cfg.nearby["lab-a"], vec!["lab-b"]);
        // With heartbeats on, edges may come by registration alone.
        assert!(Config::from_toml_str("token_secret = \"x\"\nheartbeat_token = \"hb\"\n").is_ok());
        // So may enrolled ones; rotation keys come after the signing key.
        let cfg = Config::from_toml_str(
            "token_secret = \"new\"\ntoken_key_id = \"k2\"\nedges_dir = \"/var/lib/steering/edges\"\n\
             [[token_keys]]\nid = \"k1\"\nsecret = \"old\"\n",
        )
        .unwrap();
        let ids: Vec<String> = cfg.token_key_specs().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, ["k2", "k1"]);
    }
}
