//! Popularity reports: the edge's request log summed per UTC day and key
//! (requests, size, distinct clients) and sent to steering
//! (`POST {steering}/v1/popularity`, the heartbeat's bearer token), which
//! forecasts from them and plans the site's prefill.
//!
//! While an edge serves with both a request log and steering configured, a
//! task re-reads the log every `interval` and reports the current and the
//! previous day (a later report of a day replaces the earlier one).
//! `edge report-popularity` does the same once, e.g. from cron.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vod::log::{RequestLogRow, HEADER};
use vod::plan::{DailyPopularity, DayAggregator};

use crate::error::EdgeError;

/// How often a serving edge reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(600);

/// Sums a request log per UTC day. Rows that do not parse (a line being
/// written as the log is read, say) are skipped and counted.
pub fn aggregate(
    reader: impl BufRead,
    edge: &str,
    site: Option<&str>,
) -> Result<(Vec<DailyPopularity>, u64), EdgeError> {
    let mut days = DayAggregator::default();
    let mut skipped = 0;
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| EdgeError::io("reading the request log", e))?;
        if i == 0 && line.trim_start_matches('\u{feff}').trim() == HEADER {
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let Ok(row) = RequestLogRow::parse(&line, i + 1) else {
            skipped += 1;
            continue;
        };
        days.add(&row);
    }
    let out = days.finish(edge, site);
    Ok((out, skipped))
}

/// Reads and sums the log file at `path`.
pub fn aggregate_file(path: &Path, edge: &str, site: Option<&str>) -> Result<(Vec<DailyPopularity>, u64), EdgeError> {
    let file = std::fs::File::open(path).map_err(|e| EdgeError::io(format!("opening {}", path.display()), e))?;
    aggregate(std::io::BufReader::new(file), edge, site)
}

/// Sends one day to steering.
pub async fn send(
    client: &reqwest::Client,
    steering: &str,
    token: Option<&str>,
    day: &DailyPopularity,
) -> Result<(), EdgeError> {
    send_signed(client, steering, token, None, day).await
}

/// [`send`], signed as an enrolled edge when `signer` is given.
pub async fn send_signed(
    client: &reqwest::Client,
    steering: &str,
    token: Option<&str>,
    signer: Option<&vod::edge_auth::EdgeSigner>,
    day: &DailyPopularity,
) -> Result<(), EdgeError> {
    let url = format!("{}/v1/popularity", steering.trim_end_matches('/'));
    let body = serde_json::to_vec(day).map_err(|e| EdgeError::Config(format!("encoding the report: {e}")))?;
    let mut req = client.post(&url).header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req = crate::heartbeat::sign_request(req, signer, "POST", &url, &body);
    let resp = req.body(body).send().await.map_err(|e| EdgeError::Config(format!("POST {url}: {e}")))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(EdgeError::Config(format!("POST {url}: HTTP {status}: {}", body.trim())));
    }
    Ok(())
}

/// What the periodic reporter needs.
#[derive(Debug, Clone)]
pub struct ReporterSettings {
    pub log: PathBuf,
    pub steering: String,
    pub token: Option<String>,
    /// Signs reports as an enrolled edge.
    pub signer: Option<vod::edge_auth::EdgeSigner>,
    pub edge: String,
    pub site: Option<String>,
    pub interval: Duration,
}

/// Reports the last two days of the log every `interval`; abort the task to stop it.
pub fn spawn(settings: ReporterSettings) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "popularity reports off: no HTTP client");
                return;
            }
        };
        let mut ticker = tokio::time::interval(settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate; the log is empty at start
        loop {
            ticker.tick().await;
            let s = settings.clone();
            let days = tokio::task::spawn_blocking(move || aggregate_file(&s.log, &s.edge, s.site.as_deref())).await;
            let days = match days {
                Ok(Ok((days, _))) => days,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "popularity report: reading the request log failed");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "popularity report task failed");
                    continue;
                }
            };
            let recent = days.len().saturating_sub(2);
            for day in &days[recent..] {
                let (token, signer) = (settings.token.as_deref(), settings.signer.as_ref());
                if let Err(e) = send_signed(&client, &settings.steering, token, signer, day).await {
                    tracing::warn!(day = day.day, error = %e, "popularity report not sent");
                }
            }
        }
    })
}

/// `edge report-popularity` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Request log CSV (`ts_ms,client_ip,key,bytes`).
    #[arg(long)]
    pub log: PathBuf,
    /// Steering's base URL.
    #[arg(long)]
    pub steering: String,
    /// This edge's name (as steering knows it).
    #[arg(long)]
    pub edge: String,
    /// Its site (else steering looks it up by name).
    #[arg(long)]
    pub site: Option<String>,
    /// Bearer token (steering's heartbeat_token).
    #[arg(long)]
    pub token: Option<String>,
}

/// Sends every day of the log; returns the days sent.
pub async fn report_once(args: &ReportArgs) -> Result<usize, EdgeError> {
    let (days, skipped) = aggregate_file(&args.log, &args.edge, args.site.as_deref())?;
    if skipped > 0 {
        tracing::warn!(skipped, "rows that are not request-log rows were skipped");
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| EdgeError::Config(format!("HTTP client: {e}")))?;
    for day in &days {
        send(&client, &args.steering, args.token.as_deref(), day).await?;
    }
    Ok(days.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vod::plan::{ObjectDay, DAY_MS};

    #[test]
    fn sums_per_day_and_key_with_distinct_clients_and_skips_torn_rows() {
        let log = format!(
            "{HEADER}\n1,10.0.0.1,titles/t/v/1.m4s,10\n2,10.0.0.1,titles/t/v/1.m4s,10\n3,10.0.0.2,titles/t/v/1.m4s,10\n\
             {},10.0.0.1,titles/t/v/2.m4s,12\n{},10.0.0.3,titles/t/v/",
            DAY_MS + 5,
            DAY_MS + 6
        );
        let (days, skipped) = aggregate(log.as_bytes(), "a", Some("s")).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(days.len(), 2);
        assert_eq!(
            days[0].objects,
            vec![ObjectDay { key: "titles/t/v/1.m4s".into(), requests: 3, bytes: 10, clients: 2 }]
        );
        assert_eq!((days[1].day, days[1].objects[0].bytes), (1, 12));
        assert_eq!(days[0].site.as_deref(), Some("s"));
    }
}
