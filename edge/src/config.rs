//! Edge settings: a TOML file (`deny_unknown_fields`) with flags on top.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::EdgeError;

/// Everything `edge serve` needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Base URL of the upstream (the origin, later a parent edge), `http://` only.
    pub upstream: String,
    /// Name in logs, metrics and `X-Served-By`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Capacity of the RAM tier in bytes.
    pub ram_bytes: u64,
    /// Directory of the disk tier. Accepted, not used yet: this version caches in RAM only.
    #[serde(default)]
    pub disk_path: Option<PathBuf>,
    /// Capacity of the disk tier. Accepted, not used yet.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// Key id that tokens must name.
    #[serde(default = "default_key_id")]
    pub token_key_id: String,
    /// Secret shared with steering; without it every signed path is refused.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// Append one CSV row per object request here (`ts_ms,client_ip,key,bytes`).
    #[serde(default)]
    pub request_log: Option<PathBuf>,
    /// Give up on the upstream after this long without a connection or new bytes.
    #[serde(default = "default_upstream_timeout_ms")]
    pub upstream_timeout_ms: u64,
    /// How long manifests and catalogs are served from cache (segments: until evicted).
    #[serde(default = "default_manifest_ttl_ms")]
    pub manifest_ttl_ms: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
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
            name: default_name(),
            ram_bytes,
            disk_path: None,
            disk_bytes: None,
            token_key_id: default_key_id(),
            token_secret: None,
            request_log: None,
            upstream_timeout_ms: default_upstream_timeout_ms(),
            manifest_ttl_ms: default_manifest_ttl_ms(),
        }
    }

    /// The upstream timeout as a duration.
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }

    /// The manifest TTL as a duration.
    pub fn manifest_ttl(&self) -> Duration {
        Duration::from_millis(self.manifest_ttl_ms)
    }

    /// True if a disk tier was asked for (which this version does not have yet).
    pub fn disk_requested(&self) -> bool {
        self.disk_path.is_some() || self.disk_bytes.is_some()
    }

    /// Rejects settings the edge cannot run with.
    pub fn validate(&self) -> Result<(), EdgeError> {
        let rest = self.upstream.strip_prefix("http://").ok_or_else(|| {
            EdgeError::Config(format!(
                "upstream {:?} must be an http:// URL (this build has no TLS client)",
                self.upstream
            ))
        })?;
        if rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains(['/', '?', '#']) {
            return Err(EdgeError::Config(format!(
                "upstream {:?} must be a base URL like http://host:port, without a path",
                self.upstream
            )));
        }
        if self.upstream_timeout_ms == 0 {
            return Err(EdgeError::Config("upstream_timeout_ms must be above 0".into()));
        }
        if self.name.is_empty() {
            return Err(EdgeError::Config("name must not be empty".into()));
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
    /// Base URL of the origin, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub upstream: Option<String>,
    /// RAM tier capacity in bytes.
    #[arg(long)]
    pub ram_bytes: Option<u64>,
    /// Disk tier directory (accepted; this version caches in RAM only).
    #[arg(long)]
    pub disk_path: Option<PathBuf>,
    /// Disk tier capacity in bytes (accepted; this version caches in RAM only).
    #[arg(long)]
    pub disk_bytes: Option<u64>,
    /// Secret shared with steering for path tokens.
    #[arg(long)]
    pub token_secret: Option<String>,
    /// Key id tokens must name (default k1).
    #[arg(long)]
    pub token_key_id: Option<String>,
    /// Name in logs and metrics (default edge).
    #[arg(long)]
    pub name: Option<String>,
    /// Append a CSV row per object request to this file.
    #[arg(long)]
    pub request_log: Option<PathBuf>,
}

impl ServeArgs {
    /// Reads `--config` if given, applies the flags on top and validates.
    pub fn load(&self) -> Result<EdgeConfig, EdgeError> {
        let file_text = match &self.config {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|e| EdgeError::io(format!("reading config {}", p.display()), e))?,
            ),
            None => None,
        };
        self.merge(file_text.as_deref())
    }

    /// Applies the flags over `file_text` (TOML), then validates.
    pub fn merge(&self, file_text: Option<&str>) -> Result<EdgeConfig, EdgeError> {
        let mut table: toml::Table = match file_text {
            Some(t) => toml::from_str(t).map_err(|e| EdgeError::Config(format!("config file: {e}")))?,
            None => toml::Table::new(),
        };
        // Flags go into the same table as the file so one deserialisation does
        // the defaults, the required-field checks and `deny_unknown_fields`.
        let mut set = |k: &str, v: toml::Value| {
            table.insert(k.to_owned(), v);
        };
        let path = |p: &PathBuf| toml::Value::String(p.display().to_string());
        let int = |n: u64| i64::try_from(n).map(toml::Value::Integer);
        if let Some(v) = &self.listen {
            set("listen", toml::Value::String(v.to_string()));
        }
        if let Some(v) = &self.upstream {
            set("upstream", toml::Value::String(v.clone()));
        }
        if let Some(v) = self.ram_bytes {
            set("ram_bytes", int(v).map_err(|_| EdgeError::Config("--ram-bytes is too large".into()))?);
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
        if let Some(v) = &self.request_log {
            set("request_log", path(v));
        }
        let cfg: EdgeConfig = table.try_into().map_err(|e: toml::de::Error| {
            EdgeError::Config(format!(
                "{} (the minimum is --upstream URL --ram-bytes N, or the same in --config FILE)",
                e.message()
            ))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_alone_make_a_config_with_defaults() {
        let args =
            ServeArgs { upstream: Some("http://127.0.0.1:8080".into()), ram_bytes: Some(1000), ..Default::default() };
        let cfg = args.merge(None).unwrap();
        assert_eq!(cfg, EdgeConfig::new("http://127.0.0.1:8080", 1000));
        assert_eq!(cfg.upstream_timeout_ms, 5000);
        assert_eq!(cfg.token_key_id, "k1");
    }

    #[test]
    fn flags_override_the_file() {
        let file = "upstream = \"http://a:1\"\nram_bytes = 5\nname = \"file\"\nupstream_timeout_ms = 250\n\
                    disk_path = \"/var/cache/edge\"\ndisk_bytes = 99\n";
        let args = ServeArgs { name: Some("flag".into()), ram_bytes: Some(7), ..Default::default() };
        let cfg = args.merge(Some(file)).unwrap();
        assert_eq!((cfg.name.as_str(), cfg.ram_bytes, cfg.upstream_timeout_ms), ("flag", 7, 250));
        assert_eq!(cfg.upstream, "http://a:1");
        assert!(cfg.disk_requested());
    }

    #[test]
    fn unknown_keys_missing_fields_and_bad_upstreams_are_refused() {
        let args = ServeArgs::default();
        let e = args.merge(Some("upstream = \"http://a:1\"\nram_bytes = 5\nram_byts = 6\n")).unwrap_err();
        assert!(e.to_string().contains("ram_byts"), "{e}");
        let e = args.merge(Some("ram_bytes = 5\n")).unwrap_err();
        assert!(e.to_string().contains("upstream"), "{e}");
        for bad in ["https://a:1", "a:1", "http://", "http://a:1/path"] {
            let args = ServeArgs { upstream: Some(bad.into()), ram_bytes: Some(1), ..Default::default() };
            assert!(args.merge(None).is_err(), "{bad} accepted");
        }
    }
}
