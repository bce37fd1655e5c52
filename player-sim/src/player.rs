//! One live session: ask steering where to play, fetch the master playlist
//! from the first edge that answers, then audio and video segments with the
//! ABR choosing each video rung, keeping a wall-clock buffer. When a request
//! to the current edge fails or times out, the session moves to the next URL
//! of steering's ranked list (same path and token, another host) and retries
//! there: a failover.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use reqwest::{Client, Url};
use serde::Serialize;
use vod::steering::{Format, PlayResponse};

use crate::abr::{AbrConfig, AbrContext, AbrKind, DownloadReport};
use crate::estimate::Ewma;
use crate::hls::{self, HlsError, Master, MediaTrack};
use crate::playback::Playback;
use crate::report::{PlayedSegment, SessionQoe};
use crate::shaping::Shaper;
use vod::trace::NetworkTrace;

/// Playlists larger than this are refused rather than buffered.
const MAX_PLAYLIST_BYTES: usize = 8 << 20;

/// Why a session (or one request of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: body larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("steering {url}: bad answer: {reason}")]
    Steering { url: String, reason: String },
    #[error("steering {url} returned no edge URLs")]
    NoUrls { url: String },
    #[error("every edge URL failed; last: {last}")]
    AllEdgesFailed { last: Box<SessionError> },
    #[error(transparent)]
    Playlist(#[from] HlsError),
    #[error("{url} has {have} segments, the title {want}")]
    ShortPlaylist { url: String, have: usize, want: usize },
}

/// What a session needs to know, shared by all sessions of a run.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    pub steering: Url,
    pub title: String,
    pub format: Format,
    pub abr: AbrKind,
    pub abr_config: AbrConfig,
    /// Session i is shaped by `networks[i % len]`; none when empty.
    pub networks: Vec<NetworkTrace>,
    pub request_timeout: Duration,
    /// Playback runs this many times faster than real time (the trace is scaled to match).
    pub speed: f64,
}

/// One session's outcome (also for failed sessions: what happened up to the failure).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveSession {
    /// Position in the run.
    pub index: usize,
    /// Sent as `X-Forwarded-For`.
    pub client_ip: Option<String>,
    /// Edge that served the session.
    pub edge: Option<String>,
    /// Master playlist URL played.
    pub url: Option<String>,
    /// Bytes received from edges (playlists, init and media segments).
    pub bytes: u64,
    /// Bytes received per edge name.
    pub bytes_by_edge: BTreeMap<String, u64>,
    /// Times the session moved to the next edge of the ranked list after an error or a timeout.
    pub failovers: u32,
    /// Audio segments received.
    pub audio_segments: usize,
    #[serde(flatten)]
    pub qoe: SessionQoe,
    /// Why the session failed, if it did.
    pub error: Option<String>,
}

struct Fetched {
    body: Vec<u8>,
    ttfb: Duration,
    total: Duration,
}

/// One candidate of steering's ranked list.
struct Candidate {
    edge: String,
    url: Url,
}

/// HTTP GETs of one session: timeouts, optional shaping, byte counting, failover.
struct Fetcher<'a> {
    client: &'a Client,
    timeout: Duration,
    shaper: Option<Shaper>,
    bytes: u64,
    /// Ranked candidates and the one in use.
    candidates: Vec<Candidate>,
    current: usize,
    failovers: u32,
    bytes_by_edge: BTreeMap<String, u64>,
}

/// Adds `bytes` received from `edge` (edges that sent nothing are not listed).
fn count_bytes(by_edge: &mut BTreeMap<String, u64>, edge: &str, bytes: u64) {
    if bytes > 0 {
        *by_edge.entry(edge.to_owned()).or_insert(0) += bytes;
    }
}

/// `url` with the scheme, host and port of `base` (path and token stay).
fn rebase(url: &Url, base: &Url) -> Url {
    let mut out = url.clone();
    // Both are http(s) URLs with a host, so these cannot fail; keep the original if they do.
    if out.set_scheme(base.scheme()).is_err()
        || out.set_host(base.host_str()).is_err()
        || out.set_port(base.port()).is_err()
    {
        return url.clone();
    }
    out
}

impl Fetcher<'_> {
    /// GET `url` from the current edge; on an error or a timeout, move down the ranked list
    /// and try the same path there, until one answers or none is left.
    async fn get_edge(&mut self, url: &Url, keep_body: bool) -> Result<Fetched, SessionError> {
        loop {
            let target = match self.candidates.get(self.current) {
                Some(c) => rebase(url, &c.url),
                None => url.clone(),
            };
            let before = self.bytes;
            let result = self.get(&target, keep_body).await;
            if let Some(c) = self.candidates.get(self.current) {
                count_bytes(&mut self.bytes_by_edge, &c.edge, self.bytes - before);
            }
            match result {
                Ok(f) => return Ok(f),
                Err(e @ (SessionError::Http { .. } | SessionError::Timeout { .. } | SessionError::Status { .. }))
                    if self.current + 1 < self.candidates.len() =>
                {
                    self.current += 1;
                    self.failovers += 1;
                    tracing::info!(error = %e, next = %self.candidates[self.current].edge, "failing over");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn get(&mut self, url: &Url, keep_body: bool) -> Result<Fetched, SessionError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.get_inner(url, keep_body)).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Timeout { url: url.to_string(), timeout }),
        }
    }

    async fn get_inner(&mut self, url: &Url, keep_body: bool) -> Result<Fetched, SessionError> {
        let started = Instant::now();
        let http = |e: reqwest::Error| SessionError::Http { url: url.to_string(), reason: error_chain(&e) };
        if let Some(s) = &self.shaper {
            // The trace's latency stands for the round trip a real network adds.
            tokio::time::sleep(s.latency(started)).await;
        }
        let mut resp = self.client.get(url.clone()).send().await.map_err(http)?;
        let ttfb = started.elapsed();
        if !resp.status().is_success() {
            return Err(SessionError::Status { url: url.to_string(), status: resp.status() });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http)? {
            self.bytes += chunk.len() as u64;
            if keep_body {
                if body.len() + chunk.len() > MAX_PLAYLIST_BYTES {
                    return Err(SessionError::TooLarge { url: url.to_string(), limit: MAX_PLAYLIST_BYTES });
                }
                body.extend_from_slice(&chunk);
            }
            if let Some(s) = &mut self.shaper {
                let until = s.pace(Instant::now(), chunk.len());
                tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            }
        }
        Ok(Fetched { body, ttfb, total: started.elapsed() })
    }
}

/// Mutable progress of a session, kept so a failure still reports what happened.
struct State {
    edge: Option<String>,
    url: Option<String>,
    audio_segments: usize,
    playback: Playback,
}

/// An error and its causes on one line: reqwest's own message hides "connection refused" in its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

/// Play one session to the end (or to its first fatal error).
pub(crate) async fn play_session(
    client: &Client,
    settings: &SessionSettings,
    index: usize,
    client_ip: Option<String>,
) -> LiveSession {
    let t0 = Instant::now();
    let mut fetcher = Fetcher {
        client,
        timeout: settings.request_timeout,
        shaper: (!settings.networks.is_empty()).then(|| {
            let trace = &settings.networks[index % settings.networks.len()];
            Shaper::new(crate::shaping::time_scaled(trace, settings.speed), t0)
        }),
        bytes: 0,
        candidates: Vec::new(),
        current: 0,
        failovers: 0,
        bytes_by_edge: BTreeMap::new(),
    };
    let mut state = State { edge: None, url: None, audio_segments: 0, playback: Playback::new() };
    let result = run_session(&mut fetcher, &mut state, settings, client_ip.as_deref(), t0).await;
    if state.edge.is_some() {
        // After failovers, the edge the session ended on.
        state.edge = fetcher.candidates.get(fetcher.current).map(|c| c.edge.clone());
    }
    if let Err(e) = &result {
        tracing::warn!(session = index, error = %e, "session failed");
    }
    LiveSession {
        index,
        client_ip,
        edge: state.edge,
        url: state.url,
        bytes: fetcher.bytes,
        bytes_by_edge: fetcher.bytes_by_edge,
        failovers: fetcher.failovers,
        audio_segments: state.audio_segments,
        qoe: state.playback.finish(),
        error: result.err().map(|e| e.to_string()),
    }
}

async fn ask_steering(
    client: &Client,
    settings: &SessionSettings,
    client_ip: Option<&str>,
) -> Result<PlayResponse, SessionError> {
    let mut url = settings.steering.clone();
    let base = url.to_string();
    url.path_segments_mut()
        .map_err(|()| SessionError::Steering { url: base, reason: "not a base URL".into() })?
        .pop_if_empty()
        .extend(["v1", "play", settings.title.as_str()]);
    let format = match settings.format {
        Format::Hls => "hls",
        Format::Dash => "dash",
    };
    url.query_pairs_mut().append_pair("format", format);
    let mut req = client.get(url.clone());
    if let Some(ip) = client_ip {
        req = req.header("X-Forwarded-For", ip);
    }
    let u = url.to_string();
    let fut = async {
        let resp = req.send().await.map_err(|e| SessionError::Http { url: u.clone(), reason: error_chain(&e) })?;
        if !resp.status().is_success() {
            return Err(SessionError::Status { url: u.clone(), status: resp.status() });
        }
        let body = resp.bytes().await.map_err(|e| SessionError::Http { url: u.clone(), reason: error_chain(&e) })?;
        serde_json::from_slice::<PlayResponse>(&body)
            .map_err(|e| SessionError::Steering { url: u.clone(), reason: e.to_string() })
    };
    tokio::time::timeout(settings.request_timeout, fut)
        .await
        .map_err(|_| SessionError::Timeout { url: u.clone(), timeout: settings.request_timeout })?
}

/// Fetch and parse a media playlist.
async fn media_track(fetcher: &mut Fetcher<'_>, url: &Url) -> Result<MediaTrack, SessionError> {
    let f = fetcher.get_edge(url, true).await?;
    Ok(hls::parse_media(&f.body, url)?)
}

async fn run_session(
    fetcher: &mut Fetcher<'_>,
    state: &mut State,
    settings: &SessionSettings,
    client_ip: Option<&str>,
    t0: Instant,
) -> Result<(), SessionError> {
    let play = ask_steering(fetcher.client, settings, client_ip).await?;
    if play.urls.is_empty() {
        return Err(SessionError::NoUrls { url: settings.steering.to_string() });
    }

    // Ranked edge URLs: the first that serves the master playlist wins; the rest are the failovers.
    let mut last_error = None;
    for candidate in &play.urls {
        match Url::parse(&candidate.url) {
            Ok(url) => fetcher.candidates.push(Candidate { edge: candidate.edge.clone(), url }),
            Err(e) => last_error = Some(SessionError::Steering { url: candidate.url.clone(), reason: e.to_string() }),
        }
    }
    let mut chosen: Option<(Url, Master)> = None;
    for k in 0..fetcher.candidates.len() {
        let url = fetcher.candidates[k].url.clone();
        fetcher.current = k;
        let before = fetcher.bytes;
        let result = match fetcher.get(&url, true).await {
            Ok(f) => hls::parse_master(&f.body, &url).map_err(SessionError::from),
            Err(e) => Err(e),
        };
        let edge = fetcher.candidates[k].edge.clone();
        count_bytes(&mut fetcher.bytes_by_edge, &edge, fetcher.bytes - before);
        match result {
            Ok(master) => {
                state.edge = Some(edge);
                state.url = Some(url.to_string());
                chosen = Some((url, master));
                break;
            }
            Err(e) => {
                tracing::info!(%edge, error = %e, "edge failed, trying the next");
                last_error = Some(e);
            }
        }
    }
    let Some((_, master)) = chosen else {
        let last = last_error.unwrap_or(SessionError::NoUrls { url: settings.steering.to_string() });
        return Err(SessionError::AllEdgesFailed { last: Box::new(last) });
    };

    let bitrates = master.bitrates_kbps();
    let audio = match &master.audio {
        Some(u) => Some(media_track(fetcher, u).await?),
        None => None,
    };
    // The lowest rung's playlist gives the timeline every rung shares.
    let mut tracks: HashMap<usize, MediaTrack> = HashMap::new();
    tracks.insert(0, media_track(fetcher, &master.variants[0].playlist).await?);
    let timeline: Vec<f64> = tracks[&0].segments.iter().map(|s| s.duration_ms).collect();
    let nominal_ms = timeline.iter().sum::<f64>() / timeline.len() as f64;
    let mut abr = settings.abr.build(&settings.abr_config);
    let mut estimator = Ewma::new(nominal_ms.max(1.0));
    let mut video_init: Option<Url> = None;
    let mut audio_init: Option<Url> = None;
    let max_buffer_ms = settings.abr_config.max_buffer_ms;
    // Everything the player sees runs on media time: real time × speed.
    let speed = if settings.speed.is_finite() && settings.speed > 0.0 { settings.speed } else { 1.0 };
    let media_ms = |t0: Instant| ms_since(t0) * speed;

    for (i, &duration_ms) in timeline.iter().enumerate() {
        // Wait for room in the buffer (at most one buffer's worth).
        let over = state.playback.level_ms(media_ms(t0)) + duration_ms - max_buffer_ms;
        if over > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(over.min(max_buffer_ms) / 1000.0 / speed)).await;
            abr.report_delay(over.min(max_buffer_ms));
        }
        let ctx = AbrContext {
            segment_index: i,
            segment_count: timeline.len(),
            segment_duration_ms: duration_ms.max(1.0),
            buffer_level_ms: state.playback.level_ms(media_ms(t0)),
            bitrates_kbps: &bitrates,
            estimate: estimator.estimate(),
            next_sizes_bits: None,
            all_sizes_bits: None,
        };
        let rung = abr.choose(&ctx).rung.min(bitrates.len() - 1);
        if let Entry::Vacant(slot) = tracks.entry(rung) {
            slot.insert(media_track(fetcher, &master.variants[rung].playlist).await?);
        }
        let track = &tracks[&rung];
        if track.segments.len() < timeline.len() {
            let url = master.variants[rung].playlist.to_string();
            return Err(SessionError::ShortPlaylist { url, have: track.segments.len(), want: timeline.len() });
        }
        let segment = track.segments[i].clone();

        if let Some(a) = audio.as_ref().and_then(|t| t.segments.get(i)) {
            if let Some(init) = &a.init {
                if audio_init.as_ref() != Some(init) {
                    fetcher.get_edge(init, false).await?;
                    audio_init = Some(init.clone());
                }
            }
            fetcher.get_edge(&a.url, false).await?;
            state.audio_segments += 1;
        }
        // A rendition switch needs that rendition's init segment first.
        if let Some(init) = &segment.init {
            if video_init.as_ref() != Some(init) {
                fetcher.get_edge(init, false).await?;
                video_init = Some(init.clone());
            }
        }
        let before = fetcher.bytes;
        let f = fetcher.get_edge(&segment.url, false).await?;
        let bits = (fetcher.bytes - before) as f64 * 8.0;
        // Loopback can deliver a whole segment with its headers: floor the time so the sample stays finite.
        let transfer_ms = ((f.total - f.ttfb).as_secs_f64() * 1000.0 * speed).max(1.0);
        estimator.push(transfer_ms, bits / transfer_ms, f.ttfb.as_secs_f64() * 1000.0 * speed);
        state
            .playback
            .push(media_ms(t0), PlayedSegment { bitrate_kbps: bitrates[rung], duration_ms: segment.duration_ms });
        let ttfb_ms = f.ttfb.as_secs_f64() * 1000.0 * speed;
        abr.report_download(&DownloadReport {
            segment_index: i,
            rung,
            size_bits: bits,
            downloaded_bits: bits,
            time_ms: ttfb_ms + transfer_ms,
            time_to_first_bit_ms: ttfb_ms,
            abandoned_to: None,
            buffer_level_ms: state.playback.level_ms(media_ms(t0)),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_keeps_path_and_token_and_swaps_the_edge() {
        let seg = Url::parse("http://127.0.0.1:4001/t/TOK/titles/bbb/v360/7.m4s").unwrap();
        let next = Url::parse("http://10.0.0.2:4002/t/TOK/titles/bbb/hls/master.m3u8").unwrap();
        assert_eq!(rebase(&seg, &next).as_str(), "http://10.0.0.2:4002/t/TOK/titles/bbb/v360/7.m4s");
        let default_port = Url::parse("https://edge.example/t/TOK/titles/bbb/hls/master.m3u8").unwrap();
        assert_eq!(rebase(&seg, &default_port).as_str(), "https://edge.example/t/TOK/titles/bbb/v360/7.m4s");
    }

    #[test]
    fn only_edges_that_sent_bytes_are_counted() {
        let mut m = BTreeMap::new();
        count_bytes(&mut m, "dead", 0);
        count_bytes(&mut m, "b", 10);
        count_bytes(&mut m, "b", 5);
        assert_eq!(m.into_iter().collect::<Vec<_>>(), [("b".to_owned(), 15)]);
    }
}
