//! Edge settings: a TOML file (`deny_unknown_fields`) with flags on top.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use vod::token::TokenKey;

use crate::error::EdgeError;

/// The disk tier policies a config can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskPolicyName {
    #[default]
    Frequency,
    Fifo,
}

/// Everything `edge serve` needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Base URL of the first upstream (a parent edge or the origin), `http://` only.
    pub upstream: String,
    /// Further upstreams, tried in order when the ones before fail.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// An upstream's circuit breaker opens after this many failures in a row.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker keeps requests off its upstream.
    #[serde(default = "default_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
    /// Name in logs, metrics and `X-Served-By`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Capacity of the RAM tier in bytes.
    pub ram_bytes: u64,
    /// A tmpfs directory (ideally mounted `huge=within_size` or `huge=always`) for RAM-tier bodies of
    /// 64 KiB and more, as unlinked files; unset = memfds. Anything but a tmpfs is refused at start.
    #[serde(default)]
    pub ram_dir: Option<PathBuf>,
    /// Directory of the disk tier (store file and index journal); with `disk_bytes`.
    #[serde(default)]
    pub disk_path: Option<PathBuf>,
    /// Capacity of the disk tier (the store file's size); with `disk_path`.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// Disk tier policy: `frequency` (count-min admission + reinsertion) or `fifo`.
    #[serde(default)]
    pub disk_policy: DiskPolicyName,
    /// Disk tier region size (eviction unit, largest cacheable object); default 1/16 of the disk, 4–256 MiB.
    #[serde(default)]
    pub disk_region_bytes: Option<u64>,
    /// Key id that tokens must name.
    #[serde(default = "default_key_id")]
    pub token_key_id: String,
    /// Secret shared with steering; without it (and without `token_keys`) every signed path is refused.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// Accepted signing keys besides `token_key_id`/`token_secret`: during a rotation, the current and the
    /// previous one (`[[token_keys]]` with `id` and `secret`).
    #[serde(default)]
    pub token_keys: Vec<TokenKeyConfig>,
    /// Base URL of steering: heartbeats go to `{steering}/v1/heartbeat`, and master playlists served on
    /// signed paths point their content steering at `{steering}/v1/steering/{title}`.
    #[serde(default)]
    pub steering: Option<String>,
    /// Bearer token steering expects on heartbeats (its `heartbeat_token`).
    #[serde(default)]
    pub heartbeat_token: Option<String>,
    /// Per-edge secret from `edge enroll` (base64): heartbeats, fill-plan and popularity requests are
    /// signed with it as edge `name`, and steering's heartbeat answers update the accepted token keys.
    #[serde(default)]
    pub edge_secret: Option<String>,
    /// Time between two heartbeats (steering's default timeout, 2.5 s, tolerates one lost).
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Site (ISP location) sent with heartbeats, so steering can register an edge it was not configured with.
    #[serde(default)]
    pub site: Option<String>,
    /// Base URL players reach this edge at; default `http://{listen address}`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Egress this edge sustains, bits/s, reported to steering for its overload threshold.
    #[serde(default)]
    pub max_load_bps: Option<u64>,
    /// Client prefixes (CIDR) this edge serves, reported to steering with the ones learned over BGP
    /// (for ISPs without a BGP session).
    #[serde(default)]
    pub static_prefixes: Vec<String>,
    /// Receive-only BGP session with the ISP's router (`[bgp]`): the client prefixes it announces are
    /// reported to steering.
    #[serde(default)]
    pub bgp: Option<crate::bgp::BgpConfig>,
    /// A fill plan to pull onto the disk tier, pinned, at start: a JSON file, or an
    /// `http://` URL to GET it from (steering's `/v1/fill-plan/{edge}`).
    #[serde(default)]
    pub prefill_plan: Option<PathBuf>,
    /// Daily local-time window prefill may run in, `HH:MM-HH:MM` (e.g. `02:00-10:00`); unset = any time.
    #[serde(default)]
    pub prefill_window: Option<String>,
    /// Cap on prefill traffic in bits per second (a token bucket); unset = no cap.
    #[serde(default)]
    pub prefill_rate_bps: Option<u64>,
    /// Cap on prefill traffic from upstream; unset = as fast as the upstream sends.
    #[serde(default)]
    pub prefill_rate_bytes_per_s: Option<u64>,
    /// Bearer token for `/admin/...`; without it the admin API is off.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Append one CSV row per object request here (`ts_ms,client_ip,key,bytes`).
    #[serde(default)]
    pub request_log: Option<PathBuf>,
    /// Connections held open at once; more wait in the kernel's accept backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Give up on the upstream after this long without a connection or new bytes.
    #[serde(default = "default_upstream_timeout_ms")]
    pub upstream_timeout_ms: u64,
    /// How long manifests and catalogs are served from cache (segments: until evicted).
    #[serde(default = "default_manifest_ttl_ms")]
    pub manifest_ttl_ms: u64,
    /// A client must send a request's headers within this long, and a kept-alive
    /// HTTP/1.1 connection idle this long between requests is closed.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
}

/// One accepted token signing key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    /// The key id tokens name.
    pub id: String,
    /// The shared secret.
    pub secret: String,
}

fn default_heartbeat_interval_ms() -> u64 {
    1000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_max_connections() -> usize {
    10_000
}
fn default_breaker_failures() -> u32 {
    3
}
fn default_breaker_cooldown_ms() -> u64 {
    5000
}
fn default_name() -> String {
    "edge".into()
}
fn default_key_id() -> String {
    "k1".into()
}
fn default_upstream_timeout_ms() -> u64 {
    5000
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_manifest_ttl_ms() -> u64 {
    // Matches the origin's `max-age=10` on manifests.
    10_000
}

impl EdgeConfig {
    /// A config with defaults for everything but the upstream and the RAM size.
    pub fn new(upstream: impl Into<String>, ram_bytes: u64) -> Self {
        Self {
            listen: default_listen(),
            upstream: upstream.into(),
            upstreams: Vec::new(),
            breaker_failures: default_breaker_failures(),
            breaker_cooldown_ms: default_breaker_cooldown_ms(),
            name: default_name(),
            ram_bytes,
            ram_dir: None,
            disk_path: None,
            disk_bytes: None,
            disk_policy: DiskPolicyName::default(),
            disk_region_bytes: None,
            token_key_id: default_key_id(),
            token_secret: None,
            token_keys: Vec::new(),
            steering: None,
            heartbeat_token: None,
            edge_secret: None,
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            site: None,
            public_url: None,
            max_load_bps: None,
            static_prefixes: Vec::new(),
            bgp: None,
            admin_token: None,
            prefill_plan: None,
            prefill_window: None,
            prefill_rate_bps: None,
            prefill_rate_bytes_per_s: None,
            request_log: None,
            max_connections: default_max_connections(),
            upstream_timeout_ms: default_upstream_timeout_ms(),
            manifest_ttl_ms: default_manifest_ttl_ms(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
        }
    }

    /// Every accepted token key: `token_key_id`/`token_secret` first, then `token_keys`.
    pub fn token_key_list(&self) -> Vec<TokenKey> {
        let single =
            self.token_secret.as_ref().map(|s| TokenKey::new(self.token_key_id.clone(), s.as_bytes().to_vec()));
        single
            .into_iter()
            .chain(self.token_keys.iter().map(|k| TokenKey::new(k.id.clone(), k.secret.as_bytes().to_vec())))
            .collect()
    }

    /// The signer for requests to steering, when the edge is enrolled (`edge_secret`; call after `validate`).
    pub fn signer(&self) -> Option<vod::edge_auth::EdgeSigner> {
        self.edge_secret.as_deref().and_then(|s| vod::edge_auth::EdgeSigner::new(self.name.clone(), s).ok())
    }

    /// Steering's base URL without a trailing slash, if set.
    pub fn steering_base(&self) -> Option<&str> {
        self.steering.as_deref().map(|s| s.trim_end_matches('/'))
    }

    /// Every upstream in the order they are tried.
    pub fn all_upstreams(&self) -> Vec<&str> {
        std::iter::once(self.upstream.as_str()).chain(self.upstreams.iter().map(String::as_str)).collect()
    }

    /// The upstream timeout as a duration.
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }

    /// The manifest TTL as a duration.
    pub fn manifest_ttl(&self) -> Duration {
        Duration::from_millis(self.manifest_ttl_ms)
    }

    /// True if a disk tier was asked for.
    pub fn disk_requested(&self) -> bool {
        self.disk_path.is_some() || self.disk_bytes.is_some()
    }

    /// The disk tier's settings, if one is configured.
    pub fn disk(&self) -> Option<crate::disk::DiskConfig> {
        match (&self.disk_path, self.disk_bytes) {
            (Some(dir), Some(bytes)) => Some(crate::disk::DiskConfig {
                region_bytes: self.disk_region_bytes,
                policy: match self.disk_policy {
                    DiskPolicyName::Frequency => crate::disk_log::DiskPolicy::Frequency,
                    DiskPolicyName::Fifo => crate::disk_log::DiskPolicy::Fifo,
                },
                ..crate::disk::DiskConfig::new(dir.clone(), bytes)
            }),
            _ => None,
        }
    }

    /// Rejects settings the edge cannot run with. Each message starts with the
    /// key it is about (`bgp.peer ...`) and quotes a bad value with `{:?}`:
    /// `config_check` finds the key's line in the file from that.
    pub fn validate(&self) -> Result<(), EdgeError> {
        for upstream in self.all_upstreams() {
            let rest = upstream.strip_prefix("http://").ok_or_else(|| {
                EdgeError::Config(format!(
                    "upstream {upstream:?} must be an http:// URL (this build has no TLS client)"
                ))
            })?;
            if rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains(['/', '?', '#']) {
                return Err(EdgeError::Config(format!(
                    "upstream {upstream:?} must be a base URL like http://host:port, without a path"
                )));
            }
        }
        if let Some(w) = &self.prefill_window {
            crate::prefill_window::PrefillWindow::parse(w).map_err(EdgeError::Config)?;
        }
        if self.prefill_rate_bps == Some(0) {
            return Err(EdgeError::Config("prefill_rate_bps must be above 0 (leave it unset for no cap)".into()));
        }
        if self.prefill_plan.is_some() && self.disk_path.is_none() {
            return Err(EdgeError::Config("prefill_plan needs a disk tier (disk_path, disk_bytes)".into()));
        }
        if self.max_connections == 0 {
            return Err(EdgeError::Config("max_connections must be above 0".into()));
        }
        if self.breaker_failures == 0 {
            return Err(EdgeError::Config("breaker_failures must be above 0".into()));
        }
        if self.upstream_timeout_ms == 0 {
            return Err(EdgeError::Config("upstream_timeout_ms must be above 0".into()));
        }
        if self.header_read_timeout_ms == 0 {
            return Err(EdgeError::Config("header_read_timeout_ms must be above 0".into()));
        }
        match (&self.disk_path, self.disk_bytes) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(EdgeError::Config("disk_path and disk_bytes go together".into()));
            }
            (_, Some(0)) => return Err(EdgeError::Config("disk_bytes must be above 0".into())),
            _ => {}
        }
        if self.name.is_empty() {
            return Err(EdgeError::Config("name must not be empty".into()));
        }
        if self.ram_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(EdgeError::Config("ram_dir must not be empty (leave it unset for memfds)".into()));
        }
        self.validate_keys()?;
        crate::bgp::parse_static(&self.static_prefixes)?;
        if let Some(bgp) = &self.bgp {
            bgp.validate()?;
        }
        self.validate_steering()
    }

    fn validate_keys(&self) -> Result<(), EdgeError> {
        if let Some(secret) = &self.edge_secret {
            vod::edge_auth::EdgeSigner::new(self.name.clone(), secret).map_err(|e| {
                EdgeError::Config(format!("edge_secret (with name {:?}): {e}; run `edge enroll` again", self.name))
            })?;
        }
        let bad_id = |id: &str| id.is_empty() || id.contains('|');
        if self.token_secret.is_some() && bad_id(&self.token_key_id) {
            return Err(EdgeError::Config("token_key_id must be non-empty and must not contain '|'".into()));
        }
        if self.token_secret.as_deref() == Some("") {
            return Err(EdgeError::Config("token_secret must not be empty".into()));
        }
        let mut seen: Vec<&str> = self.token_secret.iter().map(|_| self.token_key_id.as_str()).collect();
        for k in &self.token_keys {
            if bad_id(&k.id) {
                return Err(EdgeError::Config(format!(
                    "token key id {:?} must be non-empty and must not contain '|'",
                    k.id
                )));
            }
            if k.secret.is_empty() {
                return Err(EdgeError::Config(format!("token key {:?}: secret must not be empty", k.id)));
            }
            if seen.contains(&k.id.as_str()) {
                return Err(EdgeError::Config(format!("token key id {:?} is listed twice", k.id)));
            }
            seen.push(&k.id);
        }
        Ok(())
    }

    fn validate_steering(&self) -> Result<(), EdgeError> {
        let base_url = |what: &str, url: &str| -> Result<(), EdgeError> {
            let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
            match rest.map(|r| r.trim_end_matches('/')) {
                Some(r) if !r.is_empty() && !r.contains(['/', '?', '#', ' ']) => Ok(()),
                _ => Err(EdgeError::Config(format!("{what} {url:?} must be a base URL like http://host:port"))),
            }
        };
        if let Some(s) = &self.steering {
            base_url("steering", s)?;
        }
        if let Some(u) = &self.public_url {
            base_url("public_url", u)?;
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(EdgeError::Config("heartbeat_interval_ms must be above 0".into()));
        }
        if self.heartbeat_token.as_deref() == Some("") {
            return Err(EdgeError::Config("heartbeat_token must not be empty".into()));
        }
        if self.site.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(EdgeError::Config("site must not be empty".into()));
        }
        Ok(())
    }
}

/// `edge serve` flags; each overrides the same setting of `--config`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with the same settings (and more); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8081 (port 0 picks one).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Base URL of an upstream, e.g. http://127.0.0.1:8080; repeat it for
    /// fallbacks, tried in the order given.
    #[arg(long)]
    pub upstream: Vec<String>,
    /// RAM tier capacity in bytes.
    #[arg(long)]
    pub ram_bytes: Option<u64>,
    /// tmpfs directory for large RAM-tier bodies (unlinked files; huge pages if the mount has huge=).
    #[arg(long)]
    pub ram_dir: Option<PathBuf>,
    /// Disk tier directory (store file and index journal).
    #[arg(long)]
    pub disk_path: Option<PathBuf>,
    /// Disk tier capacity in bytes (the size of its store file).
    #[arg(long)]
    pub disk_bytes: Option<u64>,
    /// Secret shared with steering for path tokens.
    #[arg(long)]
    pub token_secret: Option<String>,
    /// Key id tokens must name (default k1).
    #[arg(long)]
    pub token_key_id: Option<String>,
    /// A further accepted token key as ID=SECRET (repeat it: during a rotation, the current and the previous key).
    #[arg(long = "token-key", value_name = "ID=SECRET")]
    pub token_keys: Vec<String>,
    /// Steering's base URL: send heartbeats there and point steered master playlists at it.
    #[arg(long)]
    pub steering: Option<String>,
    /// Bearer token for heartbeats (steering's heartbeat_token).
    #[arg(long)]
    pub heartbeat_token: Option<String>,
    /// Milliseconds between heartbeats (default 1000).
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Site (ISP location) reported in heartbeats.
    #[arg(long)]
    pub site: Option<String>,
    /// Base URL players reach this edge at (default http://LISTEN-ADDRESS).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Name in logs and metrics (default edge).
    #[arg(long)]
    pub name: Option<String>,
    /// Append a CSV row per object request to this file.
    #[arg(long)]
    pub request_log: Option<PathBuf>,
    /// Most connections held open at once (default 10000).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Fill plan to pull onto the disk tier (pinned): a JSON file or an http:// URL (steering's /v1/fill-plan/{edge}).
    #[arg(long)]
    pub prefill: Option<PathBuf>,
    /// Local-time window prefill runs in, HH:MM-HH:MM (e.g. 02:00-10:00).
    #[arg(long)]
    pub prefill_window: Option<String>,
    /// Prefill rate cap, bits per second.
    #[arg(long)]
    pub prefill_rate_bps: Option<u64>,
    /// Bearer token that unlocks /admin/status and /admin/purge.
    #[arg(long)]
    pub admin_token: Option<String>,
}

impl ServeArgs {
    /// Reads `--config` if given, applies the flags on top and validates; each
    /// problem names its key and its line in the file (`FILE:LINE: key ...`).
    pub fn load(&self) -> Result<EdgeConfig, EdgeError> {
        let file_text = match &self.config {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|e| EdgeError::io(format!("reading config {}", p.display()), e))?,
            ),
            None => None,
        };
        let shown = self.config.as_ref().map_or_else(|| "flags".to_owned(), |p| p.display().to_string());
        self.merge_located(file_text.as_deref())
            .map_err(|problems| EdgeError::Config(crate::config_check::render_all(&problems, &shown)))
    }

    /// Applies the flags over `file_text` (TOML), then validates.
    pub fn merge(&self, file_text: Option<&str>) -> Result<EdgeConfig, EdgeError> {
        self.merge_located(file_text)
            .map_err(|problems| EdgeError::Config(crate::config_check::render_all(&problems, "config file")))
    }

    /// `merge`, with every problem located: the key, and its line in `file_text` or the flag that set it.
    pub fn merge_located(
        &self,
        file_text: Option<&str>,
    ) -> Result<EdgeConfig, Vec<crate::config_check::ConfigProblem>> {
        use crate::config_check::{self as check, KeyLines};
        let (mut table, lines): (toml::Table, KeyLines) = match file_text {
            Some(t) => {
                let lines = KeyLines::parse(t).map_err(|p| vec![p])?;
                (toml::from_str(t).map_err(|e| vec![check::syntax_problem(t, &e)])?, lines)
            }
            None => (toml::Table::new(), KeyLines::default()),
        };
        let mut flag_keys: Vec<String> = Vec::new();
        // Flags go into the same table as the file so one deserialisation does
        // the defaults, the required-field checks and `deny_unknown_fields`.
        let mut set = |k: &str, v: toml::Value| {
            flag_keys.push(k.to_owned());
            table.insert(k.to_owned(), v);
        };
        let path = |p: &PathBuf| toml::Value::String(p.display().to_string());
        let int = |n: u64| i64::try_from(n).map(toml::Value::Integer);
        if let Some(v) = &self.listen {
            set("listen", toml::Value::String(v.to_string()));
        }
        if let Some((first, rest)) = self.upstream.split_first() {
            set("upstream", toml::Value::String(first.clone()));
            set("upstreams", toml::Value::Array(rest.iter().cloned().map(toml::Value::String).collect()));
        }
        if let Some(v) = self.ram_bytes {
            set("ram_bytes", int(v).map_err(|_| EdgeError::Config("--ram-bytes is too large".into()))?);
        }
        if let Some(v) = &self.ram_dir {
            set("ram_dir", path(v));
        }
        if let Some(v) = &self.disk_path {
            set("disk_path", path(v));
        }
        if let Some(v) = self.disk_bytes {
            set("disk_bytes", int(v).map_err(|_| EdgeError::Config("--disk-bytes is too large".into()))?);
        }
        if let Some(v) = &self.token_secret {
            set("token_secret", toml::Value::String(v.clone()));
        }
        if let Some(v) = &self.token_key_id {
            set("token_key_id", toml::Value::String(v.clone()));
        }
        if let Some(v) = &self.name {
            set("name", toml::Value::String(v.clone()));
        }
        if !self.token_keys.is_empty() {
            let mut keys = Vec::with_capacity(self.token_keys.len());
            for k in &self.token_keys {
                let (id, secret) = k
                    .split_once('=')
                    .ok_or_else(|| EdgeError::Config(format!("--token-key {k:?}: expected ID=SECRET")))?;
                let mut t = toml::Table::new();
                t.insert("id".into(), toml::Value::String(id.to_owned()));
                t.insert("secret".into(), toml::Value::String(secret.to_owned()));
                keys.push(toml::Value::Table(t));
            }
            set("token_keys", toml::Value::Array(keys));
        }
        for (k, v) in [
            ("steering", &self.steering),
            ("heartbeat_token", &self.heartbeat_token),
            ("site", &self.site),
            ("public_url", &self.public_url),
        ] {
            if let Some(v) = v {
                set(k, toml::Value::String(v.clone()));
            }
        }
        if let Some(v) = self.heartbeat_interval_ms {
            set(
                "heartbeat_interval_ms",
                int(v).map_err(|_| EdgeError::Config("--heartbeat-interval-ms is too large".into()))?,
            );
        }
        if let Some(v) = &self.request_log {
            set("request_log", path(v));
        }
        if let Some(v) = self.max_connections {
            set(
                "max_connections",
                int(v as u64).map_err(|_| EdgeError::Config("--max-connections is too large".into()))?,
            );
        }
        if let Some(v) = &self.prefill {
            set("prefill_plan", path(v));
        }
        if let Some(v) = &self.prefill_window {
            set("prefill_window", toml::Value::String(v.clone()));
        }
        if let Some(v) = self.prefill_rate_bps {
            set("prefill_rate_bps", int(v).map_err(|_| EdgeError::Config("--prefill-rate-bps is too large".into()))?);
        }
        if let Some(v) = &self.admin_token {
            set("admin_token", toml::Value::String(v.clone()));
        }
        let cfg = check::deserialize(table, &lines, &flag_keys)?;
        check::validate(&cfg, &lines, &flag_keys)?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_alone_make_a_config_with_defaults() {
        let args =
            ServeArgs { upstream: vec!["http://127.0.0.1:8080".into()], ram_bytes: Some(1000), ..Default::default() };
        let cfg = args.merge(None).unwrap();
        assert_eq!(cfg, EdgeConfig::new("http://127.0.0.1:8080", 1000));
        assert_eq!(cfg.upstream_timeout_ms, 5000);
        assert_eq!(cfg.token_key_id, "k1");
    }

    #[test]
    fn flags_override_the_file() {
        let file = "upstream = \"http://a:1\"\nram_bytes = 5\nname = \"file\"\nupstream_timeout_ms = 250\n\
                    disk_path = \"/var/cache/edge\"\ndisk_bytes = 99\ndisk_policy = \"fifo\"\n";
        let args = ServeArgs { name: Some("flag".into()), ram_bytes: Some(7), ..Default::default() };
        let cfg = args.merge(Some(file)).unwrap();
        assert_eq!((cfg.name.as_str(), cfg.ram_bytes, cfg.upstream_timeout_ms), ("flag", 7, 250));
        assert_eq!(cfg.upstream, "http://a:1");
        assert!(cfg.disk_requested());
        assert_eq!(cfg.disk().unwrap().policy, crate::disk_log::DiskPolicy::Fifo);
    }

    #[test]
    fn unknown_keys_missing_fields_and_bad_upstreams_are_refused() {
        let args = ServeArgs::default();
        let e = args.merge(Some("upstream = \"http://a:1\"\nram_bytes = 5\nram_byts = 6\n")).unwrap_err();
        assert!(e.to_string().contains("ram_byts"), "{e}");
        let e = args.merge(Some("ram_bytes = 5\n")).unwrap_err();
        assert!(e.to_string().contains("upstream"), "{e}");
        for bad in ["https://a:1", "a:1", "http://", "http://a:1/path"] {
            let args = ServeArgs { upstream: vec![bad.into()], ram_bytes: Some(1), ..Default::default() };
            assert!(args.merge(None).is_err(), "{bad} accepted");
            let args =
                ServeArgs { upstream: vec!["http://a:1".into(), bad.into()], ram_bytes: Some(1), ..Default::default() };
            assert!(args.merge(None).is_err(), "fallback {bad} accepted");
        }
    }

    #[test]
    fn token_keys_come_from_the_file_the_flags_and_the_old_single_key() {
        let file = "upstream = \"http://a:1\"\nram_bytes = 5\ntoken_secret = \"old\"\n\
                    [[token_keys]]\nid = \"k2\"\nsecret = \"new\"\n";
        let cfg = ServeArgs::default().merge(Some(file)).unwrap();
        let ids: Vec<String> = cfg.token_key_list().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, ["k1", "k2"]);
        let args = ServeArgs {
            upstream: vec!["http://a:1".into()],
            ram_bytes: Some(1),
            token_keys: vec!["k3=s3".into(), "k4=s=4".into()],
            ..Default::default()
        };
        let ids: Vec<String> = args.merge(None).unwrap().token_key_list().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, ["k3", "k4"]);
        let bad = |keys: &[&str]| {
            let args = ServeArgs {
                upstream: vec!["http://a:1".into()],
                ram_bytes: Some(1),
                token_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
                ..Default::default()
            };
            args.merge(None).unwrap_err().to_string()
        };
        assert!(bad(&["nosecret"]).contains("ID=SECRET"));
        assert!(bad(&["k1=a", "k1=b"]).contains("twice"));
        assert!(bad(&["k|1=a"]).contains("'|'"));
        assert!(bad(&["k1="]).contains("secret must not be empty"));
    }

    #[test]
    fn steering_settings_are_checked() {
        let args = ServeArgs {
            upstream: vec!["http://a:1".into()],
            ram_bytes: Some(1),
            steering: Some("http://steer:8090/".into()),
            site: Some("isp-a".into()),
            ..Default::default()
        };
        let cfg = args.merge(None).unwrap();
        assert_eq!(cfg.steering_base(), Some("http://steer:8090"));
        assert_eq!(cfg.heartbeat_interval_ms, 1000);
        for (steering, public) in [("steer:1", "http://e:1"), ("http://s:1", "ftp://e"), ("http://s:1/x", "http://e:1")]
        {
            let a = ServeArgs { steering: Some(steering.into()), public_url: Some(public.into()), ..args.clone() };
            assert!(a.merge(None).is_err(), "{steering} {public} accepted");
        }
        let zero = ServeArgs { heartbeat_interval_ms: Some(0), ..args };
        assert!(zero.merge(None).unwrap_err().to_string().contains("heartbeat_interval_ms"));
    }

    #[test]
    fn a_repeated_upstream_flag_lists_fallbacks_in_order() {
        let args = ServeArgs {
            upstream: vec!["http://parent:1".into(), "http://origin:2".into()],
            ram_bytes: Some(1),
            ..Default::default()
        };
        let cfg = args.merge(Some("upstreams = [\"http://file:3\"]\nupstream = \"http://file:4\"\n")).unwrap();
        assert_eq!(cfg.all_upstreams(), ["http://parent:1", "http://origin:2"]);
        let cfg = ServeArgs { ram_bytes: Some(1), ..Default::default() }
            .merge(Some("upstreams = [\"http://b:2\"]\nupstream = \"http://a:1\"\n"))
            .unwrap();
        assert_eq!(cfg.all_upstreams(), ["http://a:1", "http://b:2"]);
    }
}
