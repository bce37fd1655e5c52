//! Client prefixes: the ones the ISP's router announces over a receive-only
//! BGP session (the `bgp` crate), plus `static_prefixes` from the config for
//! ISPs without BGP. Heartbeats carry the union to steering, which maps those
//! prefixes to this edge's site.
//!
//! ```toml
//! static_prefixes = ["192.0.2.0/24"]
//!
//! [bgp]
//! listen = "0.0.0.0:179"     # the router connects here; or leave it out and the edge dials `peer`
//! peer = "198.51.100.1"      # only this address may connect (listen), or where to connect (port 179 unless given)
//! local_as = 64512
//! peer_as = 65001
//! router_id = "198.51.100.2"
//! hold_time_s = 90
//! grace_ms = 60000           # a lost session's prefixes stay this long
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bgp::{SessionState, Speaker, SpeakerConfig, Transport};
use ipnet::IpNet;
use serde::Deserialize;
use tokio::sync::watch;

use crate::error::EdgeError;

/// The `[bgp]` section of the edge config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// Address to accept the router's connection on; without it the edge connects to `peer`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The router: `IP` or `IP:PORT`. With `listen`, only it may connect; without, where to connect (port 179).
    #[serde(default)]
    pub peer: Option<String>,
    /// This edge's AS number.
    pub local_as: u32,
    /// The AS the router must present in its OPEN.
    pub peer_as: u32,
    /// This edge's BGP identifier.
    pub router_id: Ipv4Addr,
    /// Hold time offered, seconds (0 for none, else at least 3).
    #[serde(default = "default_hold_time_s")]
    pub hold_time_s: u16,
    /// How long the prefixes of a lost session are kept, milliseconds.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
    /// Time between connection attempts when dialling the router, milliseconds.
    #[serde(default = "default_connect_retry_ms")]
    pub connect_retry_ms: u64,
    /// The session is closed when the router announces more prefixes than this.
    #[serde(default = "default_max_prefixes")]
    pub max_prefixes: usize,
}

fn default_hold_time_s() -> u16 {
    90
}
fn default_grace_ms() -> u64 {
    60_000
}
fn default_connect_retry_ms() -> u64 {
    5_000
}
fn default_max_prefixes() -> usize {
    100_000
}

/// The router's address as configured: `IP:PORT`, or `IP` for port 179.
fn parse_peer(peer: &str) -> Result<SocketAddr, EdgeError> {
    peer.parse::<SocketAddr>()
        .or_else(|_| peer.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 179)))
        .map_err(|_| EdgeError::Config(format!("bgp.peer {peer:?} must be an IP address or IP:PORT")))
}

impl BgpConfig {
    /// Rejects settings the session cannot run with.
    pub fn validate(&self) -> Result<(), EdgeError> {
        let peer = self.peer.as_deref().map(parse_peer).transpose()?;
        if self.listen.is_none() && peer.is_none() {
            return Err(EdgeError::Config("bgp: set listen (the router connects) or peer (the edge connects)".into()));
        }
        if self.hold_time_s == 1 || self.hold_time_s == 2 {
            return Err(EdgeError::Config("bgp.hold_time_s must be 0 or at least 3 (RFC 4271)".into()));
        }
        if self.local_as == 0 || self.peer_as == 0 {
            return Err(EdgeError::Config("bgp.local_as and bgp.peer_as must be above 0".into()));
        }
        if self.router_id.is_unspecified() {
            return Err(EdgeError::Config("bgp.router_id must not be 0.0.0.0".into()));
        }
        if self.connect_retry_ms == 0 {
            return Err(EdgeError::Config("bgp.connect_retry_ms must be above 0".into()));
        }
        if self.max_prefixes == 0 {
            return Err(EdgeError::Config("bgp.max_prefixes must be above 0".into()));
        }
        Ok(())
    }

    fn speaker_config(&self) -> Result<SpeakerConfig, EdgeError> {
        let mut cfg = SpeakerConfig::new(self.local_as, self.router_id, self.peer_as);
        cfg.hold_time = self.hold_time_s;
        cfg.grace = Duration::from_millis(self.grace_ms);
        cfg.connect_retry = Duration::from_millis(self.connect_retry_ms);
        cfg.max_prefixes = self.max_prefixes;
        cfg.peer_address = self.peer.as_deref().map(parse_peer).transpose()?.map(|a| a.ip().to_canonical());
        Ok(cfg)
    }
}

/// Parses `static_prefixes`, naming the first bad one.
pub fn parse_static(list: &[String]) -> Result<Vec<IpNet>, EdgeError> {
    list.iter()
        .map(|p| {
            p.trim()
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| EdgeError::Config(format!("static_prefixes: {p:?} is not a CIDR prefix like 10.1.0.0/16")))
        })
        .collect()
}

/// The client prefixes heartbeats report: static ones plus what the BGP session learned.
#[derive(Debug, Clone, Default)]
pub struct ClientPrefixes {
    fixed: Vec<IpNet>,
    learned: Option<watch::Receiver<Arc<Vec<IpNet>>>>,
}

impl ClientPrefixes {
    /// Static prefixes only.
    pub fn fixed(fixed: Vec<IpNet>) -> Self {
        Self { fixed, learned: None }
    }

    /// The union now, sorted, as CIDR strings.
    pub fn current(&self) -> Vec<String> {
        let mut all = self.fixed.clone();
        if let Some(rx) = &self.learned {
            all.extend(rx.borrow().iter().copied());
        }
        all.sort();
        all.dedup();
        all.iter().map(ToString::to_string).collect()
    }
}

/// What `/metrics` follows of a running speaker: its session state and its prefixes.
type Followed = (watch::Receiver<SessionState>, watch::Receiver<Arc<Vec<IpNet>>>);

/// The BGP session's state and prefix count for `/metrics`; empty until a speaker is attached.
#[derive(Debug, Default)]
pub struct BgpGauges {
    attached: OnceLock<Followed>,
}

impl BgpGauges {
    /// Follows `speaker` from now on (the first call wins).
    pub fn attach(&self, speaker: &Speaker) {
        let _ = self.attached.set((speaker.subscribe_state(), speaker.subscribe()));
    }

    /// Prometheus text: `edge_bgp_session_established` and `edge_bgp_prefixes` (nothing without BGP).
    pub fn render(&self, edge: &str) -> String {
        let Some((state, prefixes)) = self.attached.get() else { return String::new() };
        let up = u8::from(*state.borrow() == SessionState::Established);
        let n = prefixes.borrow().len();
        format!(
            "# HELP edge_bgp_session_established 1 while the BGP session with the ISP's router is established.\n\
             # TYPE edge_bgp_session_established gauge\nedge_bgp_session_established{{edge=\"{edge}\"}} {up}\n\
             # HELP edge_bgp_prefixes Client prefixes learned over BGP (live or within their grace period).\n\
             # TYPE edge_bgp_prefixes gauge\nedge_bgp_prefixes{{edge=\"{edge}\"}} {n}\n"
        )
    }
}

/// Starts the BGP session when `[bgp]` is configured (binding its listener now, so a
/// taken port fails the start); returns it with the prefixes to report.
pub async fn start(
    bgp: Option<&BgpConfig>,
    static_prefixes: &[String],
) -> Result<(Option<Speaker>, ClientPrefixes), EdgeError> {
    let fixed = parse_static(static_prefixes)?;
    let Some(cfg) = bgp else {
        return Ok((None, ClientPrefixes::fixed(fixed)));
    };
    cfg.validate()?;
    let speaker_cfg = cfg.speaker_config()?;
    let transport = match (cfg.listen, cfg.peer.as_deref()) {
        (Some(addr), _) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| EdgeError::io(format!("binding the BGP listener {addr}"), e))?;
            let bound = listener.local_addr().map_err(|e| EdgeError::io("reading the BGP listen address", e))?;
            tracing::info!(peer_as = cfg.peer_as, local_as = cfg.local_as, "bgp listening on {bound}");
            Transport::Listen(listener)
        }
        (None, Some(peer)) => {
            let addr = parse_peer(peer)?;
            tracing::info!(%addr, peer_as = cfg.peer_as, local_as = cfg.local_as, "bgp: connecting to the router");
            Transport::Connect(addr)
        }
        (None, None) => return Err(EdgeError::Config("bgp: set listen or peer".into())),
    };
    let speaker = Speaker::spawn(speaker_cfg, transport);
    let prefixes = ClientPrefixes { fixed, learned: Some(speaker.subscribe()) };
    Ok((Some(speaker), prefixes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BgpConfig {
        toml::from_str("listen = \"127.0.0.1:0\"\nlocal_as = 64512\npeer_as = 65001\nrouter_id = \"192.0.2.1\"\n")
            .unwrap()
    }

    #[test]
    fn defaults_and_checks() {
        let c = cfg();
        assert_eq!((c.hold_time_s, c.grace_ms), (90, 60_000));
        c.validate().unwrap();
        let e = BgpConfig { listen: None, ..c.clone() }.validate().unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
        assert!(BgpConfig { hold_time_s: 2, ..c.clone() }.validate().is_err());
        assert!(BgpConfig { peer: Some("router".into()), ..c.clone() }.validate().is_err());
        assert_eq!(parse_peer("10.0.0.1").unwrap(), "10.0.0.1:179".parse().unwrap());
        assert_eq!(parse_peer("[2001:db8::1]:1179").unwrap(), "[2001:db8::1]:1179".parse().unwrap());
        let unknown = toml::from_str::<BgpConfig>("local_as = 1\npeer_as = 2\nrouter_id = \"1.2.3.4\"\nholdtime = 3\n");
        assert!(unknown.unwrap_err().to_string().contains("holdtime"));
    }

    #[test]
    fn static_prefixes_are_checked_and_merged() {
        let fixed = parse_static(&["10.1.2.3/16".into(), "2001:db8::/32".into()]).unwrap();
        assert_eq!(ClientPrefixes::fixed(fixed).current(), ["10.1.0.0/16", "2001:db8::/32"]);
        let e = parse_static(&["10.1.0.0/16".into(), "10.300.0.0/16".into()]).unwrap_err();
        assert!(e.to_string().contains("10.300.0.0/16"), "{e}");
    }

    /// Reads one whole BGP message.
    async fn read_msg(s: &mut tokio::net::TcpStream) -> bgp::Message {
        use tokio::io::AsyncReadExt;
        let mut msg = vec![0u8; bgp::codec::HEADER_LEN];
        s.read_exact(&mut msg).await.unwrap();
        let len = usize::from(u16::from_be_bytes([msg[16], msg[17]]));
        msg.resize(len, 0);
        s.read_exact(&mut msg[bgp::codec::HEADER_LEN..]).await.unwrap();
        bgp::codec::parse(&msg, true).unwrap()
    }

    #[tokio::test]
    async fn learned_prefixes_join_the_static_ones() {
        use tokio::io::AsyncWriteExt;
        let (speaker, prefixes) = start(Some(&cfg()), &["10.1.0.0/16".into(), "10.9.0.0/16".into()]).await.unwrap();
        let speaker = speaker.unwrap();
        assert_eq!(prefixes.current(), ["10.1.0.0/16", "10.9.0.0/16"]);
        // A router announces one prefix the config already has and two new ones.
        let mut router = tokio::net::TcpStream::connect(speaker.local_addr().unwrap()).await.unwrap();
        assert!(matches!(read_msg(&mut router).await, bgp::Message::Open(_)));
        router.write_all(&bgp::codec::Open::new(65001, 90, Ipv4Addr::new(198, 51, 100, 1)).encode()).await.unwrap();
        assert_eq!(read_msg(&mut router).await, bgp::Message::Keepalive);
        router.write_all(&bgp::codec::keepalive()).await.unwrap();
        let update = bgp::codec::Update {
            announced: ["10.1.0.0/16", "100.64.0.0/10", "2001:db8::/32"].iter().map(|p| p.parse().unwrap()).collect(),
            attributes: bgp::codec::PathAttributes {
                origin: Some(0),
                as_path: Some(vec![65001]),
                next_hop: Some(Ipv4Addr::new(198, 51, 100, 1)),
                ..Default::default()
            },
            ..Default::default()
        };
        router.write_all(&update.encode(true)).await.unwrap();
        let mut rx = speaker.subscribe();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|p| p.len() == 3)).await.unwrap().unwrap();
        assert_eq!(prefixes.current(), ["10.1.0.0/16", "10.9.0.0/16", "100.64.0.0/10", "2001:db8::/32"]);
        let gauges = BgpGauges::default();
        assert_eq!(gauges.render("e1"), "", "no BGP, no gauges");
        gauges.attach(&speaker);
        let text = gauges.render("e1");
        assert!(text.contains("edge_bgp_session_established{edge=\"e1\"} 1\n"), "{text}");
        assert!(text.contains("edge_bgp_prefixes{edge=\"e1\"} 3\n"), "{text}");
        speaker.shutdown().await;
        let (none, fixed) = start(None, &[]).await.unwrap();
        assert!(none.is_none() && fixed.current().is_empty());
    }
}
