//! Request-log rows: what edges write and `edge replay` / `steering fill-plan` read.
//!
//! CSV with header `ts_ms,client_ip,key,bytes`; `ts_ms` is Unix epoch
//! milliseconds, `bytes` the object's full size.

use std::net::IpAddr;

/// The CSV header line.
pub const HEADER: &str = "ts_ms,client_ip,key,bytes";

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLogRow {
    pub ts_ms: u64,
    pub client_ip: IpAddr,
    pub key: String,
    pub bytes: u64,
}

/// A line that is not a request-log row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LogParseError {
    pub line: usize,
    pub reason: String,
}

impl RequestLogRow {
    /// Parses one data line (not the header). `line` is for the error message.
    pub fn parse(text: &str, line: usize) -> Result<Self, LogParseError> {
        let err = |reason: &str| LogParseError { line, reason: reason.to_owned() };
        let mut f = text.trim_end_matches(['\r', '\n']).split(',');
        let (Some(ts), Some(ip), Some(key), Some(bytes), None) = (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(err("expected 4 fields: ts_ms,client_ip,key,bytes"));
        };
        Ok(Self {
            ts_ms: ts.trim().parse().map_err(|_| err("ts_ms is not an unsigned integer"))?,
            client_ip: ip.trim().parse().map_err(|_| err("client_ip is not an IP address"))?,
            key: {
                let k = key.trim();
                if k.is_empty() {
                    return Err(err("key is empty"));
                }
                k.to_owned()
            },
            bytes: bytes.trim().parse().map_err(|_| err("bytes is not an unsigned integer"))?,
        })
    }

    /// The CSV line, without newline. Keys never contain commas (see `ObjectKey`).
    pub fn to_line(&self) -> String {
        format!("{},{},{},{}", self.ts_ms, self.client_ip, self.key, self.bytes)
    }
}

/// Parses a whole log held in memory; the header is required.
pub fn parse_log(text: &str) -> Result<Vec<RequestLogRow>, LogParseError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == HEADER => {}
        _ => return Err(LogParseError { line: 1, reason: format!("header must be {HEADER}") }),
    }
    lines.filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| RequestLogRow::parse(l, i + 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_bad_lines() {
        let text = format!("{HEADER}\n1760000000000,198.51.100.7,titles/t1/v720/3.m4s,1000\n");
        let rows = parse_log(&text).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].to_line(), "1760000000000,198.51.100.7,titles/t1/v720/3.m4s,1000");
        let bad = format!("{HEADER}\n1,2,3\n");
        assert_eq!(parse_log(&bad).unwrap_err().line, 2);
        assert!(parse_log("nope\n").is_err());
        assert!(parse_log(&format!("{HEADER}\nx,1.2.3.4,k,1\n")).is_err());
    }
}
