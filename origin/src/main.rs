//! `origin serve (--root DIR | --store DIR|s3://bucket/prefix) --listen ADDR [--config FILE]`;
//! `origin s3-gc --store s3://bucket/prefix --older-than 1h [--dry-run]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use origin::{S3Store, ServeConfig, ServerLimits, StoreLocation};

#[derive(Parser)]
#[command(about = "The origin: serves published titles from an object store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an object store (a local directory or S3) over HTTP.
    Serve {
        /// TOML file with the same settings (and `[limits]`); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Root directory of a local store.
        #[arg(long, conflicts_with = "store")]
        root: Option<PathBuf>,
        /// Store location: a directory or s3://bucket/prefix (AWS_ENDPOINT_URL,
        /// AWS_REGION, credentials and AWS_S3_FORCE_PATH_STYLE from the environment).
        #[arg(long)]
        store: Option<String>,
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks one).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Open connections at most.
        #[arg(long)]
        max_connections: Option<usize>,
    },
    /// Abort incomplete multipart uploads (left by killed publishers) older than a bound.
    #[command(name = "s3-gc")]
    S3Gc {
        /// s3://bucket/prefix (AWS_ENDPOINT_URL, AWS_REGION and credentials from the environment).
        #[arg(long)]
        store: String,
        /// Only uploads started this long ago or earlier, e.g. 90s, 30m, 1h, 2d
        /// (a publisher still uploading is younger than this).
        #[arg(long, value_parser = parse_age)]
        older_than: Duration,
        /// List what would be aborted; abort nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    svc::init_tracing("info");
    let (config, root, store, listen, max_connections) = match Cli::parse().command {
        Command::Serve { config, root, store, listen, max_connections } => {
            (config, root, store, listen, max_connections)
        }
        Command::S3Gc { store, older_than, dry_run } => return s3_gc(&store, older_than, dry_run).await,
    };
    let mut cfg = match config {
        Some(p) => {
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<ServeConfig>(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            root: None,
            store: None,
            limits: ServerLimits::default(),
        },
    };
    if let Some(r) = root {
        cfg.root = Some(r);
        cfg.store = None;
    }
    if let Some(s) = store {
        cfg.store = Some(s);
        cfg.root = None;
    }
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(n) = max_connections {
        cfg.limits.max_connections = n;
    }
    let location = match (&cfg.store, &cfg.root) {
        (Some(s), _) => StoreLocation::parse(s).context("--store")?,
        (None, Some(r)) => StoreLocation::Local(r.clone()),
        (None, None) => anyhow::bail!("--root DIR or --store DIR|s3://bucket/prefix (or --config FILE) is required"),
    };
    let store = location.open().await.with_context(|| format!("opening store {location}"))?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    eprintln!("origin listening on {}", listener.local_addr()?);
    origin::serve(store, cfg.limits, listener, svc::shutdown_signal()).await.context("origin server")
}

/// Lists the incomplete uploads under the store's prefix and aborts the stale ones, one line each.
async fn s3_gc(store: &str, older_than: Duration, dry_run: bool) -> Result<()> {
    let location = StoreLocation::parse(store).context("--store")?;
    let StoreLocation::S3 { bucket, prefix } = &location else {
        anyhow::bail!("--store must be s3://bucket/prefix; a local store has no incomplete uploads");
    };
    let s3 = S3Store::from_env(bucket, prefix).await.with_context(|| format!("opening store {location}"))?;
    let now = SystemTime::now();
    let report =
        s3.abort_stale_uploads(older_than, now, dry_run).await.with_context(|| format!("s3-gc on {location}"))?;
    let age = |t: Option<SystemTime>| match t.map(|t| now.duration_since(t).unwrap_or_default()) {
        Some(d) => format!("started {}s ago", d.as_secs()),
        None => "start time unknown".to_owned(),
    };
    let verb = if dry_run { "would abort" } else { "aborted" };
    for u in &report.aborted {
        println!("{verb} {location}{} upload {} ({})", u.key, u.upload_id, age(u.initiated));
    }
    for u in &report.kept {
        println!("kept {location}{} upload {} ({})", u.key, u.upload_id, age(u.initiated));
    }
    for (u, e) in &report.failed {
        println!("FAILED {location}{} upload {}: {e}", u.key, u.upload_id);
    }
    println!(
        "s3-gc {location}: {verb} {}, kept {} younger than {}s, {} failed",
        report.aborted.len(),
        report.kept.len(),
        older_than.as_secs(),
        report.failed.len()
    );
    anyhow::ensure!(report.failed.is_empty(), "{} uploads could not be aborted", report.failed.len());
    Ok(())
}

/// `90s`, `30m`, `1h`, `2d` (a bare number is seconds).
fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("expected a number and a unit (s, m, h, d), got {s:?}"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use s, m, h or d")),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages_parse_with_units() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_age("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_age("0"), Ok(Duration::ZERO));
        assert!(parse_age("1w").is_err());
        assert!(parse_age("h").is_err());
        assert!(parse_age("-1h").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }
}
