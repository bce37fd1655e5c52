//! The request log: one CSV row per object request, written by a dedicated
//! task so that requests never wait on file I/O.
//!
//! Requests hand rows to a bounded channel with `try_send`; when the writer
//! falls behind, rows are dropped and counted (`edge_request_log_dropped_total`)
//! rather than slowing playback. The writer flushes whenever the channel runs
//! dry, and drains everything when the last sender is dropped.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vod::log::{RequestLogRow, HEADER};

use crate::error::EdgeError;
use crate::metrics::EdgeMetrics;

/// Rows buffered between requests and the writer before rows are dropped.
const QUEUE_ROWS: usize = 8192;

/// The requests' side of the log.
#[derive(Clone)]
pub struct RequestLog {
    tx: mpsc::Sender<RequestLogRow>,
    metrics: Arc<EdgeMetrics>,
}

/// The writer task; await `finish` after the server stopped to flush the tail.
pub struct RequestLogWriter {
    task: JoinHandle<Result<(), EdgeError>>,
}

impl RequestLog {
    /// Opens `path` for appending (writing the header if the file is new or
    /// empty) and starts the writer task.
    pub async fn open(path: &Path, metrics: Arc<EdgeMetrics>) -> Result<(Self, RequestLogWriter), EdgeError> {
        let what = || format!("request log {}", path.display());
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|e| EdgeError::io(what(), e))?;
        let len = file.metadata().await.map_err(|e| EdgeError::io(what(), e))?.len();
        if len == 0 {
            file.write_all(format!("{HEADER}\n").as_bytes()).await.map_err(|e| EdgeError::io(what(), e))?;
            file.flush().await.map_err(|e| EdgeError::io(what(), e))?;
        }
        let (tx, rx) = mpsc::channel(QUEUE_ROWS);
        let task = tokio::spawn(write_rows(path.to_owned(), file, rx));
        Ok((Self { tx, metrics }, RequestLogWriter { task }))
    }

    /// Queues a row for the current time; drops it if the writer is behind.
    pub fn record(&self, client_ip: IpAddr, key: String, bytes: u64) {
        let ts_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        if self.tx.try_send(RequestLogRow { ts_ms, client_ip, key, bytes }).is_err() {
            self.metrics.log_row_dropped();
        }
    }
}

impl RequestLogWriter {
    /// Waits until every queued row is written; call after all `RequestLog`s are dropped.
    pub async fn finish(self) -> Result<(), EdgeError> {
        self.task.await.map_err(|e| EdgeError::Internal(format!("request log writer: {e}")))?
    }
}

async fn write_rows(
    path: PathBuf,
    file: tokio::fs::File,
    mut rx: mpsc::Receiver<RequestLogRow>,
) -> Result<(), EdgeError> {
    let what = || format!("writing request log {}", path.display());
    let mut out = tokio::io::BufWriter::new(file);
    let mut line = String::new();
    while let Some(row) = rx.recv().await {
        let mut next = Some(row);
        // Write everything already queued, then flush once: rows reach the
        // file promptly without a write call per row under load.
        while let Some(row) = next {
            line.clear();
            line.push_str(&row.to_line());
            line.push('\n');
            out.write_all(line.as_bytes()).await.map_err(|e| EdgeError::io(what(), e))?;
            next = rx.try_recv().ok();
        }
        out.flush().await.map_err(|e| EdgeError::io(what(), e))?;
    }
    out.flush().await.map_err(|e| EdgeError::io(what(), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_the_header_once_and_appends_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.csv");
        for round in 0..2 {
            let (log, writer) = RequestLog::open(&path, Arc::new(EdgeMetrics::default())).await.unwrap();
            log.record("198.51.100.7".parse().unwrap(), format!("titles/t1/v1/{}.m4s", round + 1), 10);
            drop(log);
            writer.finish().await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let rows = vod::log::parse_log(&text).unwrap();
        assert_eq!(rows.len(), 2, "{text}");
        assert_eq!(rows[1].key, "titles/t1/v1/2.m4s");
        assert_eq!(text.matches(HEADER).count(), 1);
    }
}
