//! `edge enroll`: exchanges a one-time enrollment token (from `steering edges
//! add`) for the edge's identity and credentials at `POST {steering}/v1/enroll`
//! and writes a complete, commented config file that `edge serve --config`
//! runs with unchanged (mode 0600: it holds the edge's secret and the
//! URL-signing keys).
//!
//! Everything that can be checked locally (the output file, the listen
//! address, the public URL, the disk path) is checked before the token is
//! spent: a token works once.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vod::edge_auth::{EnrollRequest, EnrollResponse, KeySpec};

use crate::config::{EdgeConfig, ServeArgs};
use crate::error::EdgeError;

/// `edge enroll` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct EnrollArgs {
    /// Steering's base URL, e.g. http://steering.example:8090.
    #[arg(long)]
    pub steering: String,
    /// The one-time token `steering edges add` printed.
    #[arg(long)]
    pub token: String,
    /// Directory of the disk tier (created if missing).
    #[arg(long)]
    pub disk_path: PathBuf,
    /// Address to listen on, e.g. 0.0.0.0:8081.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Disk tier capacity in bytes (default: 80% of the free space at --disk-path).
    #[arg(long)]
    pub disk_bytes: Option<u64>,
    /// RAM tier capacity in bytes (default 1 GiB).
    #[arg(long)]
    pub ram_bytes: Option<u64>,
    /// Base URL players reach this edge at (default http://LISTEN; required when listening on 0.0.0.0).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Upstream (origin) base URL, when steering has no origin_url to hand out.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Where to write the config.
    #[arg(long, default_value = "edge.toml")]
    pub out: PathBuf,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
}

const DEFAULT_RAM_BYTES: u64 = 1 << 30;

/// What the config file is made of: the local choices and steering's answer.
#[derive(Debug, Clone)]
struct Choices {
    listen: SocketAddr,
    /// None: the edge derives `http://{bound address}` when it starts.
    public_url: Option<String>,
    disk_path: PathBuf,
    disk_bytes: u64,
    ram_bytes: u64,
    steering: String,
    upstream: Option<String>,
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The config text: every key the edge knows, each with a comment line; unset ones commented out.
fn render(c: &Choices, r: &EnrollResponse, now_unix_s: u64) -> String {
    let mut out = String::new();
    let mut line = |comment: &str, setting: String| {
        out.push_str(&format!("# {comment}\n{setting}\n\n"));
    };
    let upstream = match &c.upstream {
        Some(u) => format!("upstream = {}", toml_str(u)),
        None => "# upstream = \"http://origin.example:8080\"   # SET ME: steering has no origin_url".to_owned(),
    };
    let (signing, older) = match r.token_keys.split_first() {
        Some((first, rest)) => (Some(first), rest),
        None => (None, &[][..]),
    };
    line("Address to listen on.", format!("listen = {}", toml_str(&c.listen.to_string())));
    line(
        "Base URL players reach this edge at (sent to steering with every heartbeat).",
        match &c.public_url {
            Some(u) => format!("public_url = {}", toml_str(u)),
            None => "# public_url = \"http://LISTEN-ADDRESS\"".to_owned(),
        },
    );
    line(
        "Name, as steering enrolled it (signed requests carry it; also in logs, metrics, X-Served-By).",
        format!("name = {}", toml_str(&r.name)),
    );
    line("Site (ISP location) steering enrolled this edge at.", format!("site = {}", toml_str(&r.site)));
    line(
        "Steering's base URL: heartbeats, fill plans, popularity reports, content steering.",
        format!("steering = {}", toml_str(&c.steering)),
    );
    line(
        "Per-edge secret from enrollment (base64): signs every request to steering. Keep this file private.",
        format!("edge_secret = {}", toml_str(&r.secret)),
    );
    line(
        "Bearer token for steering instead of enrollment (static setups only).",
        "# heartbeat_token = \"hb-secret\"".to_owned(),
    );
    line(
        "Milliseconds between heartbeats.",
        format!("heartbeat_interval_ms = {}", r.heartbeat_interval_ms.unwrap_or(1000)),
    );
    line("First upstream, http:// only: the origin (or a parent edge).", upstream);
    line(
        "Further upstreams, tried in order when the ones before fail.",
        "# upstreams = [\"http://parent.example:8081\"]".to_owned(),
    );
    line("An upstream's circuit breaker opens after this many failures in a row.", "# breaker_failures = 3".to_owned());
    line("How long an open breaker keeps requests off its upstream, ms.", "# breaker_cooldown_ms = 5000".to_owned());
    line(
        "Give up on the upstream after this long without a connection or new bytes, ms.",
        "# upstream_timeout_ms = 5000".to_owned(),
    );
    line("RAM tier capacity, bytes.", format!("ram_bytes = {}", c.ram_bytes));
    line(
        "tmpfs directory for RAM-tier bodies >= 64 KiB (mount it huge=within_size); unset = memfds.",
        "# ram_dir = \"/run/vod-edge/ram\"".to_owned(),
    );
    line(
        "Disk tier directory (store file and index journal).",
        format!("disk_path = {}", toml_str(&c.disk_path.display().to_string())),
    );
    line("Disk tier capacity, bytes (the store file's size).", format!("disk_bytes = {}", c.disk_bytes));
    line("Disk tier policy: frequency (count-min admission) or fifo.", "# disk_policy = \"frequency\"".to_owned());
    line(
        "Disk tier region size (eviction unit, largest cacheable object); default 1/16 of the disk, 4-256 MiB.",
        "# disk_region_bytes = 67108864".to_owned(),
    );
    match signing {
        Some(k) => {
            line(
                "Key id of the URL-signing key steering signs with (steering's heartbeats keep the keys current).",
                format!("token_key_id = {}", toml_str(&k.id)),
            );
            line("That key's secret.", format!("token_secret = {}", toml_str(&k.secret)));
        }
        None => {
            line("Key id of the URL-signing key.", "# token_key_id = \"k1\"".to_owned());
            line("That key's secret.", "# token_secret = \"change-me\"".to_owned());
        }
    }
    line(
        "Client prefixes (CIDR) this edge serves, for ISPs without BGP; sent to steering with the BGP-learned ones.",
        "# static_prefixes = [\"10.1.0.0/16\", \"2001:db8:a::/48\"]".to_owned(),
    );
    line(
        "Egress this edge sustains, bits/s, for steering's overload threshold.",
        "# max_load_bps = 10000000000".to_owned(),
    );
    line(
        "Fill plan to pull onto the disk tier, pinned: a JSON file or steering's URL (signed with edge_secret).",
        format!("# prefill_plan = {}", toml_str(&format!("{}/v1/fill-plan/{}", c.steering, r.name))),
    );
    line("Local-time window prefill runs in, HH:MM-HH:MM.", "# prefill_window = \"02:00-10:00\"".to_owned());
    line("Prefill rate cap, bits per second.", "# prefill_rate_bps = 1000000000".to_owned());
    line(
        "Prefill rate cap, bytes per second (used when prefill_rate_bps is unset).",
        "# prefill_rate_bytes_per_s = 125000000".to_owned(),
    );
    line(
        "Bearer token for /admin/... (status, purge, drain); without it the admin API is off.",
        "# admin_token = \"admin-secret\"".to_owned(),
    );
    line(
        "Request log CSV (ts_ms,client_ip,key,bytes): input of popularity reports and fill plans.",
        "# request_log = \"/var/log/vod/edge.csv\"".to_owned(),
    );
    line("Connections held open at once.", "# max_connections = 10000".to_owned());
    line(
        "How long manifests and catalogs are served from cache, ms (segments stay until evicted).",
        "# manifest_ttl_ms = 10000".to_owned(),
    );
    line(
        "A client must send a request's headers within this long, ms; an idle kept-alive connection is closed after it.",
        "# header_read_timeout_ms = 10000".to_owned(),
    );
    let mut text = format!(
        "# Edge configuration written by `edge enroll` (Unix time {now_unix_s}) for {} at site {}.\n\
         # `edge serve --config FILE` runs with it as is. Keys shown commented out keep their defaults.\n\n{out}",
        r.name, r.site
    );
    text.push_str("# More accepted URL-signing keys (the previous one during a rotation).\n");
    if older.is_empty() {
        text.push_str("# [[token_keys]]\n# id = \"k0\"\n# secret = \"previous-secret\"\n");
    }
    for k in older {
        text.push_str(&format!("[[token_keys]]\nid = {}\nsecret = {}\n\n", toml_str(&k.id), toml_str(&k.secret)));
    }
    text.push_str(
        "\n# Receive-only BGP session with the ISP's router: the client prefixes it announces go to steering.\n\
         # [bgp]\n# peer = \"192.0.2.1\"          # the router (IP or IP:PORT); with listen, the only one accepted\n\
         # listen = \"0.0.0.0:179\"       # accept the router's connection instead of dialling it\n\
         # local_as = 64512\n# peer_as = 64500\n# router_id = \"192.0.2.10\"\n\
         # hold_time_s = 90\n# grace_ms = 60000           # prefixes of a lost session are kept this long\n",
    );
    text
}

/// 80% of the space available at `dir`, in whole MiB.
fn default_disk_bytes(dir: &Path) -> Result<u64, EdgeError> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| EdgeError::Config(format!("--disk-path {}: contains a NUL byte", dir.display())))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(EdgeError::io(format!("free space of {}", dir.display()), std::io::Error::last_os_error()));
    }
    // fsblkcnt_t and c_ulong are narrower than u64 on some targets.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    let bytes = free / 10 * 8 / (1 << 20) * (1 << 20);
    if bytes == 0 {
        return Err(EdgeError::Config(format!("--disk-path {}: no free space; pass --disk-bytes", dir.display())));
    }
    Ok(bytes)
}

fn check_config(text: &str) -> Result<EdgeConfig, EdgeError> {
    ServeArgs::default()
        .merge(Some(text))
        .map_err(|e| EdgeError::Config(format!("the generated config does not load: {e}")))
}

/// Runs `edge enroll`; returns the path written.
pub async fn enroll(args: &EnrollArgs) -> Result<PathBuf, EdgeError> {
    if args.out.exists() && !args.force {
        return Err(EdgeError::Config(format!("{} exists; pass --force to overwrite it", args.out.display())));
    }
    let steering = args.steering.trim_end_matches('/').to_owned();
    let public_url = match &args.public_url {
        Some(u) => Some(u.trim_end_matches('/').to_owned()),
        None if args.listen.ip().is_unspecified() => {
            return Err(EdgeError::Config(format!(
                "listening on {}: pass --public-url, the address players reach this edge at",
                args.listen
            )))
        }
        // Left to the edge: with port 0 only the running edge knows its address.
        None => None,
    };
    std::fs::create_dir_all(&args.disk_path)
        .map_err(|e| EdgeError::io(format!("creating --disk-path {}", args.disk_path.display()), e))?;
    let disk_bytes = match args.disk_bytes {
        Some(b) => b,
        None => default_disk_bytes(&args.disk_path)?,
    };
    let mut choices = Choices {
        listen: args.listen,
        public_url: public_url.clone(),
        disk_path: args.disk_path.clone(),
        disk_bytes,
        ram_bytes: args.ram_bytes.unwrap_or(DEFAULT_RAM_BYTES),
        steering: steering.clone(),
        upstream: Some(args.upstream.clone().unwrap_or_else(|| "http://origin.invalid:8080".to_owned())),
    };
    // Everything local is checked before the token is spent.
    let placeholder = EnrollResponse {
        name: "edge".into(),
        site: "site".into(),
        secret: vod::edge_auth::encode_secret(&[0; vod::edge_auth::SECRET_LEN]),
        token_keys: vec![KeySpec { id: "k1".into(), secret: "x".into() }],
        steering_url: None,
        upstream: None,
        heartbeat_interval_ms: None,
    };
    check_config(&render(&choices, &placeholder, 0))?;

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| EdgeError::Config(format!("HTTP client: {e}")))?;
    let url = format!("{steering}/v1/enroll");
    let req = EnrollRequest {
        token: args.token.trim().to_owned(),
        public_url: public_url.clone().or_else(|| (args.listen.port() != 0).then(|| format!("http://{}", args.listen))),
        listen: Some(args.listen.to_string()),
    };
    let resp = client.post(&url).json(&req).send().await.map_err(|e| EdgeError::Config(format!("POST {url}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(EdgeError::Config(format!("enrollment refused by steering: HTTP {status}: {}", body.trim())));
    }
    let answer: EnrollResponse =
        resp.json().await.map_err(|e| EdgeError::Config(format!("POST {url}: unreadable answer: {e}")))?;
    if let Some(s) = &answer.steering_url {
        choices.steering = s.trim_end_matches('/').to_owned();
    }
    choices.upstream = args.upstream.clone().or_else(|| answer.upstream.clone());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let text = render(&choices, &answer, now);
    // Written even when incomplete (no upstream): the token is spent, the secret must not be lost.
    write_private(&args.out, &text, args.force)?;
    if choices.upstream.is_none() {
        return Err(EdgeError::Config(format!(
            "enrolled as {}, but steering has no origin_url: set upstream in {}",
            answer.name,
            args.out.display()
        )));
    }
    check_config(&text)?;
    Ok(args.out.clone())
}

/// Writes `text` to `path` with mode 0600 (temp file + rename; refuses to replace unless `force`).
fn write_private(path: &Path, text: &str, force: bool) -> Result<(), EdgeError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "edge.toml".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let io = |e| EdgeError::io(format!("writing {}", path.display()), e);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if force {
            std::fs::rename(&tmp, path)
        } else {
            // Never replaces a file that appeared meanwhile.
            std::fs::hard_link(&tmp, path).and_then(|()| std::fs::remove_file(&tmp))
        }
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(keys: &[(&str, &str)]) -> EnrollResponse {
        EnrollResponse {
            name: "edge-7".into(),
            site: "isp-a".into(),
            secret: vod::edge_auth::encode_secret(&[3; 32]),
            token_keys: keys.iter().map(|(id, s)| KeySpec { id: (*id).into(), secret: (*s).into() }).collect(),
            steering_url: None,
            upstream: Some("http://origin:8080".into()),
            heartbeat_interval_ms: Some(800),
        }
    }

    fn choices() -> Choices {
        Choices {
            listen: "0.0.0.0:8081".parse().unwrap(),
            public_url: Some("http://10.0.0.11:8081".into()),
            disk_path: "/var/cache/vod edge".into(),
            disk_bytes: 1 << 30,
            ram_bytes: 1 << 28,
            steering: "http://steer:8090".into(),
            upstream: Some("http://origin:8080".into()),
        }
    }

    #[test]
    fn the_written_config_loads_with_everything_enrollment_gave() {
        let text = render(&choices(), &answer(&[("k2", "new \"quoted\""), ("k1", "old")]), 5);
        let cfg = check_config(&text).unwrap();
        assert_eq!((cfg.name.as_str(), cfg.site.as_deref()), ("edge-7", Some("isp-a")));
        assert_eq!(cfg.steering.as_deref(), Some("http://steer:8090"));
        assert_eq!(cfg.public_url.as_deref(), Some("http://10.0.0.11:8081"));
        assert_eq!(cfg.disk_path.as_deref(), Some(Path::new("/var/cache/vod edge")));
        assert_eq!((cfg.disk_bytes, cfg.ram_bytes, cfg.heartbeat_interval_ms), (Some(1 << 30), 1 << 28, 800));
        let ids: Vec<String> = cfg.token_key_list().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, ["k2", "k1"]);
        assert_eq!(cfg.token_secret.as_deref(), Some("new \"quoted\""));
        assert_eq!(cfg.signer().unwrap().edge, "edge-7");
        // A single key leaves the rotation table as a commented example.
        assert!(check_config(&render(&choices(), &answer(&[("k1", "s")]), 5)).is_ok());
    }

    #[test]
    fn every_key_the_edge_knows_is_in_the_file_with_a_comment() {
        // serde lists every field in its unknown-field error.
        let err = toml::from_str::<EdgeConfig>("zz_not_a_key = 1\n").unwrap_err().to_string();
        let known: Vec<&str> = err.split('`').skip(3).step_by(2).collect();
        assert!(known.len() > 20, "{err}");
        let text = render(&choices(), &answer(&[("k1", "s")]), 5);
        let lines: Vec<&str> = text.lines().collect();
        for key in known {
            let at = lines
                .iter()
                .position(|l| {
                    let l = l.trim_start_matches("# ");
                    l.starts_with(&format!("{key} ="))
                        || l.starts_with(&format!("[[{key}]]"))
                        || l.starts_with(&format!("[{key}]"))
                })
                .unwrap_or_else(|| panic!("{key} is not in the generated config"));
            assert!(at > 0 && lines[at - 1].starts_with("# "), "{key} has no comment line");
        }
    }

    #[test]
    fn an_existing_file_is_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        write_private(&path, "a = 1\n", false).unwrap();
        assert!(write_private(&path, "b = 2\n", false).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a = 1\n");
        write_private(&path, "b = 2\n", true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b = 2\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temp files left behind");
    }
}
