//! The speaker: one BGP session at a time with the configured peer, either
//! waiting for it on a listener or connecting to it, and the route table it
//! feeds. It sends OPEN, KEEPALIVE and NOTIFICATION only: it never announces.
//!
//! The session follows RFC 4271's FSM, simplified for a passive, receive-only
//! peer: OpenSent (our OPEN sent on connect) → OpenConfirm (theirs accepted,
//! KEEPALIVE sent) → Established (their KEEPALIVE received). Any error sends
//! the NOTIFICATION that names it and closes the connection; the hold timer
//! (the smaller of both OPENs' hold times) expiring sends 4/0.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::codec::{self, err, Message, Notification, Open, HEADER_LEN, MARKER};
use crate::table::RouteTable;

/// How the session is set up.
#[derive(Debug)]
pub enum Transport {
    /// Wait for the peer to connect (the router is configured with our address).
    Listen(TcpListener),
    /// Connect to the peer at this address, retrying every `connect_retry`.
    Connect(SocketAddr),
}

/// Session parameters.
#[derive(Debug, Clone)]
pub struct SpeakerConfig {
    /// Our AS number.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// The AS the peer must present.
    pub peer_as: u32,
    /// The hold time we offer, seconds (0, or at least 3).
    pub hold_time: u16,
    /// Only this address may connect (listen mode); None: any.
    pub peer_address: Option<IpAddr>,
    /// How long a lost session's prefixes are kept.
    pub grace: Duration,
    /// Time between connection attempts (connect mode).
    pub connect_retry: Duration,
    /// Prefixes shorter than these are ignored (a default route must not claim every client).
    pub min_prefix_len_v4: u8,
    pub min_prefix_len_v6: u8,
    /// The session is closed (Cease 6/1) when the peer announces more than this many prefixes.
    pub max_prefixes: usize,
}

impl SpeakerConfig {
    /// Defaults: hold 90 s, grace 60 s, retry 5 s, prefixes from /8 (IPv4) and /16 (IPv6), at most 100 000.
    pub fn new(local_as: u32, router_id: Ipv4Addr, peer_as: u32) -> Self {
        Self {
            local_as,
            router_id,
            peer_as,
            hold_time: 90,
            peer_address: None,
            grace: Duration::from_secs(60),
            connect_retry: Duration::from_secs(5),
            min_prefix_len_v4: 8,
            min_prefix_len_v6: 16,
            max_prefixes: 100_000,
        }
    }
}

/// Session state, as the speaker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Idle,
    OpenSent,
    OpenConfirm,
    Established,
}

impl SessionState {
    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Idle => "idle",
            SessionState::OpenSent => "open-sent",
            SessionState::OpenConfirm => "open-confirm",
            SessionState::Established => "established",
        }
    }
}

/// The table plus a watch that carries its union whenever it changes.
///
/// A full table arrives as many UPDATEs in a burst: changes mark the table dirty and the
/// publisher computes the union once per burst (after [`PUBLISH_DELAY`]), not once per UPDATE.
struct Shared {
    table: Mutex<RouteTable>,
    dirty: AtomicBool,
    kick: Notify,
    prefixes: watch::Sender<Arc<Vec<IpNet>>>,
    state: watch::Sender<SessionState>,
}

/// How long the publisher waits for more changes before publishing the union.
const PUBLISH_DELAY: Duration = Duration::from_millis(50);

impl Shared {
    fn modify(&self, f: impl FnOnce(&mut RouteTable)) {
        let Ok(mut t) = self.table.lock() else { return };
        f(&mut t);
        drop(t);
        self.dirty.store(true, Ordering::Release);
        self.kick.notify_one();
    }

    /// Publishes the union if anything changed since the last time.
    fn publish(&self) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let Ok(t) = self.table.lock() else { return };
        let now = t.prefixes();
        drop(t);
        self.prefixes.send_if_modified(|cur| {
            if **cur == now {
                false
            } else {
                *cur = Arc::new(now);
                true
            }
        });
    }
}

/// A running speaker.
#[derive(Debug)]
pub struct Speaker {
    prefixes: watch::Receiver<Arc<Vec<IpNet>>>,
    state: watch::Receiver<SessionState>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
}

impl Speaker {
    /// Starts the speaker on `transport`.
    pub fn spawn(config: SpeakerConfig, transport: Transport) -> Self {
        let (ptx, prx) = watch::channel(Arc::new(Vec::new()));
        let (stx, srx) = watch::channel(SessionState::Idle);
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            table: Mutex::new(RouteTable::new()),
            dirty: AtomicBool::new(false),
            kick: Notify::new(),
            prefixes: ptx,
            state: stx,
        });
        let local_addr = match &transport {
            Transport::Listen(l) => l.local_addr().ok(),
            Transport::Connect(_) => None,
        };
        let main = {
            let (shared, stop, config) = (Arc::clone(&shared), stop_rx.clone(), config.clone());
            tokio::spawn(async move {
                match transport {
                    Transport::Listen(l) => listen_loop(l, &config, &shared, stop).await,
                    Transport::Connect(addr) => connect_loop(addr, &config, &shared, stop).await,
                }
            })
        };
        // Publishes changes and expires stale prefixes.
        let publisher = {
            let mut stop = stop_rx;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = tick.tick() => {
                            let now = std::time::Instant::now();
                            shared.modify(|t| {
                                if t.expire(now) {
                                    tracing::info!("bgp: stale prefixes expired after the grace period");
                                }
                            });
                        }
                        () = shared.kick.notified() => tokio::time::sleep(PUBLISH_DELAY).await,
                    }
                    shared.publish();
                }
            })
        };
        Self { prefixes: prx, state: srx, stop: stop_tx, tasks: vec![main, publisher], local_addr }
    }

    /// The address the router connects to (listen mode).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The prefixes learned now (live or within their grace), sorted.
    pub fn prefixes(&self) -> Arc<Vec<IpNet>> {
        Arc::clone(&self.prefixes.borrow())
    }

    /// A receiver that sees every change of [`Self::prefixes`].
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<IpNet>>> {
        self.prefixes.clone()
    }

    /// The session's state now.
    pub fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    /// A receiver that sees every session state change.
    pub fn subscribe_state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// Closes the session (Cease, administrative shutdown) and waits for the tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn listen_loop(listener: TcpListener, config: &SpeakerConfig, shared: &Shared, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "bgp: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if config.peer_address.is_some_and(|want| want != peer.ip().to_canonical()) {
            tracing::warn!(%peer, "bgp: connection from an address that is not the configured peer; rejected");
            reject(stream).await;
            continue;
        }
        let mut next = Some((stream, peer));
        while let Some((stream, peer)) = next.take() {
            // A newer connection from the peer replaces this one: a router that reconnects has given up
            // on the old session (restart, or a connection that died without a FIN).
            let (replace_tx, replace_rx) = watch::channel(false);
            let session = run_session(stream, peer, config, shared, stop.clone(), replace_rx);
            tokio::pin!(session);
            loop {
                tokio::select! {
                    () = &mut session => break,
                    a = listener.accept(), if next.is_none() => match a {
                        Ok((s, p)) if config.peer_address.is_none_or(|want| want == p.ip().to_canonical()) => {
                            tracing::info!(peer = %p, "bgp: new connection from the peer replaces the session");
                            next = Some((s, p));
                            let _ = replace_tx.send(true);
                        }
                        Ok((s, p)) => {
                            tracing::warn!(peer = %p, "bgp: connection from an address that is not the configured peer; rejected");
                            reject(s).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "bgp: accept failed"),
                    }
                }
            }
        }
        if *stop.borrow() {
            return;
        }
    }
}

async fn reject(mut stream: TcpStream) {
    let n = Notification::new(err::CEASE, err::CEASE_CONNECTION_REJECTED, Vec::new());
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&n.encode())).await;
}

async fn connect_loop(addr: SocketAddr, config: &SpeakerConfig, shared: &Shared, mut stop: watch::Receiver<bool>) {
    loop {
        let connected = tokio::select! {
            _ = stop.changed() => return,
            c = tokio::time::timeout(config.connect_retry.max(Duration::from_secs(1)), TcpStream::connect(addr)) => c,
        };
        match connected {
            Ok(Ok(stream)) => {
                // Nothing replaces a session we dialled: the sender stays here, unused.
                let (_replace_tx, replace_rx) = watch::channel(false);
                run_session(stream, addr, config, shared, stop.clone(), replace_rx).await;
            }
            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "bgp: connect failed"),
            Err(_) => tracing::debug!(%addr, "bgp: connect timed out"),
        }
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(config.connect_retry) => {}
        }
    }
}

/// Why a session ended.
enum End {
    /// We sent this NOTIFICATION.
    Sent(Notification),
    /// The peer sent this NOTIFICATION.
    Received(Notification),
    /// The connection closed or failed.
    Closed(String),
}

struct Session<'a> {
    stream: TcpStream,
    peer: String,
    config: &'a SpeakerConfig,
    shared: &'a Shared,
    state: SessionState,
    four_octet: bool,
    hold: Option<Duration>,
    hold_deadline: Option<Instant>,
    keepalive_at: Option<Instant>,
}

async fn run_session(
    stream: TcpStream,
    addr: SocketAddr,
    config: &SpeakerConfig,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    replaced: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut s = Session {
        stream,
        peer: addr.ip().to_canonical().to_string(),
        config,
        shared,
        state: SessionState::OpenSent,
        four_octet: false,
        hold: None,
        hold_deadline: None,
        keepalive_at: None,
    };
    tracing::info!(peer = %addr, "bgp: connected; OPEN sent");
    let end = s.run(stop, replaced).await;
    if s.state == SessionState::Established {
        shared.modify(|t| t.session_down(&s.peer, std::time::Instant::now(), config.grace));
    }
    shared.state.send_replace(SessionState::Idle);
    match end {
        End::Sent(n) => tracing::warn!(peer = %addr, notification = %n, "bgp: session closed by us"),
        End::Received(n) => tracing::warn!(peer = %addr, notification = %n, "bgp: session closed by the peer"),
        End::Closed(why) => tracing::warn!(peer = %addr, reason = %why, "bgp: connection lost"),
    }
}

impl Session<'_> {
    fn set_state(&mut self, state: SessionState) {
        self.state = state;
        self.shared.state.send_replace(state);
    }

    /// Sends `n` and ends the session.
    async fn fail(&mut self, n: Notification) -> End {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.write_all(&n.encode())).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        End::Sent(n)
    }

    /// FSM error subcode for an unexpected message in the current state (RFC 6608).
    fn fsm_subcode(&self) -> u8 {
        match self.state {
            SessionState::OpenSent | SessionState::Idle => err::FSM_IN_OPEN_SENT,
            SessionState::OpenConfirm => err::FSM_IN_OPEN_CONFIRM,
            SessionState::Established => err::FSM_IN_ESTABLISHED,
        }
    }

    fn restart_hold(&mut self) {
        self.hold_deadline = self.hold.map(|h| Instant::now() + h);
    }

    async fn run(&mut self, mut stop: watch::Receiver<bool>, mut replaced: watch::Receiver<bool>) -> End {
        let open = Open::new(self.config.local_as, self.config.hold_time, self.config.router_id);
        self.set_state(SessionState::OpenSent);
        if let Err(e) = self.stream.write_all(&open.encode()).await {
            return End::Closed(e.to_string());
        }
        // Until the OPEN arrives our own hold time applies (RFC 4271 suggests 4 minutes, also used
        // when we offer none): a peer that connects and never speaks must not hold the session forever.
        let open_wait = if self.config.hold_time > 0 { self.config.hold_time } else { 240 };
        self.hold = Some(Duration::from_secs(open_wait.into()));
        self.restart_hold();
        let mut buf: Vec<u8> = Vec::with_capacity(2 * codec::MAX_MESSAGE_LEN);
        let mut chunk = vec![0u8; 16 * 1024];
        let far = || Instant::now() + Duration::from_secs(86_400);
        loop {
            // Every whole message in the buffer first; a bad header fails as soon as it is seen.
            loop {
                let seen = buf.len().min(16);
                if buf[..seen] != MARKER[..seen] {
                    return self.fail(Notification::new(err::HEADER, err::HEADER_NOT_SYNCHRONIZED, Vec::new())).await;
                }
                if buf.len() < HEADER_LEN {
                    break;
                }
                let (kind, len) = match codec::check_header(&buf[..HEADER_LEN]) {
                    Ok(h) => h,
                    Err(n) => return self.fail(n).await,
                };
                if buf.len() < len {
                    break;
                }
                // A message this state does not expect is an FSM error, whatever its content.
                let expected = match self.state {
                    SessionState::Idle | SessionState::OpenSent => kind == codec::msg_type::OPEN,
                    SessionState::OpenConfirm => kind == codec::msg_type::KEEPALIVE,
                    SessionState::Established => kind != codec::msg_type::OPEN,
                };
                if !expected && kind != codec::msg_type::NOTIFICATION {
                    return self.fail(Notification::new(err::FSM, self.fsm_subcode(), Vec::new())).await;
                }
                let parsed = codec::parse(&buf[..len], self.four_octet);
                buf.drain(..len);
                let msg = match parsed {
                    Ok(m) => m,
                    Err(n) => return self.fail(n).await,
                };
                if let Some(end) = self.handle(msg).await {
                    return end;
                }
            }
            let hold_at = self.hold_deadline.unwrap_or_else(far);
            let keepalive_at = self.keepalive_at.unwrap_or_else(far);
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    return self.fail(Notification::new(err::CEASE, err::CEASE_ADMIN_SHUTDOWN, Vec::new())).await;
                }
                _ = replaced.changed() => {
                    return self.fail(Notification::new(err::CEASE, err::CEASE_COLLISION, Vec::new())).await;
                }
                () = tokio::time::sleep_until(hold_at) => {
                    return self.fail(Notification::new(err::HOLD_TIMER_EXPIRED, 0, Vec::new())).await;
                }
                () = tokio::time::sleep_until(keepalive_at) => {
                    if let Err(e) = self.stream.write_all(&codec::keepalive()).await {
                        return End::Closed(e.to_string());
                    }
                    self.keepalive_at = self.hold.map(|h| Instant::now() + h / 3);
                }
                r = self.stream.read(&mut chunk) => match r {
                    Ok(0) => return End::Closed("closed by the peer".into()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return End::Closed(e.to_string()),
                },
            }
        }
    }

    /// Handles one message; Some when the session ends.
    async fn handle(&mut self, msg: Message) -> Option<End> {
        if let Message::Notification(n) = msg {
            return Some(End::Received(n));
        }
        self.restart_hold();
        match (self.state, msg) {
            (SessionState::OpenSent, Message::Open(open)) => {
                if open.asn() != self.config.peer_as {
                    let n = Notification::new(err::OPEN, err::OPEN_BAD_PEER_AS, Vec::new());
                    return Some(self.fail(n).await);
                }
                if open.router_id == self.config.router_id {
                    let n = Notification::new(err::OPEN, err::OPEN_BAD_BGP_ID, Vec::new());
                    return Some(self.fail(n).await);
                }
                self.four_octet = open.four_octet_as().is_some();
                let hold = self.config.hold_time.min(open.hold_time);
                self.hold = (hold > 0).then(|| Duration::from_secs(hold.into()));
                self.restart_hold();
                if let Err(e) = self.stream.write_all(&codec::keepalive()).await {
                    return Some(End::Closed(e.to_string()));
                }
                self.keepalive_at = self.hold.map(|h| Instant::now() + h / 3);
                tracing::info!(peer = %self.peer, asn = open.asn(), hold_s = hold, router_id = %open.router_id,
                    "bgp: OPEN accepted");
                self.set_state(SessionState::OpenConfirm);
                None
            }
            (SessionState::OpenConfirm, Message::Keepalive) => {
                let peer = self.peer.clone();
                self.shared.modify(|t| t.session_up(&peer));
                self.set_state(SessionState::Established);
                tracing::info!(peer = %self.peer, "bgp: session established");
                None
            }
            (SessionState::Established, Message::Update(up)) => self.apply(up).await,
            (SessionState::Established, Message::Keepalive | Message::RouteRefresh { .. }) => None,
            _ => Some(self.fail(Notification::new(err::FSM, self.fsm_subcode(), Vec::new())).await),
        }
    }

    async fn apply(&mut self, up: codec::Update) -> Option<End> {
        if up.withdrawn.is_empty() && up.announced.is_empty() {
            // End-of-RIB (RFC 4724): the peer has sent everything it has.
            let peer = self.peer.clone();
            self.shared.modify(|t| t.end_of_rib(&peer));
            return None;
        }
        let (v4, v6) = (self.config.min_prefix_len_v4, self.config.min_prefix_len_v6);
        let (announced, ignored): (Vec<IpNet>, Vec<IpNet>) = up.announced.into_iter().partition(|p| match p {
            IpNet::V4(n) => n.prefix_len() >= v4,
            IpNet::V6(n) => n.prefix_len() >= v6,
        });
        if !ignored.is_empty() {
            tracing::warn!(peer = %self.peer, ?ignored, "bgp: prefixes too short to name a client network; ignored");
        }
        let peer = self.peer.clone();
        let mut live = 0;
        self.shared.modify(|t| {
            t.apply(&peer, &up.withdrawn, &announced);
            live = t.live_count(&peer);
        });
        tracing::debug!(peer = %self.peer, withdrawn = up.withdrawn.len(), announced = announced.len(), live, "bgp: update");
        if live > self.config.max_prefixes {
            // Cease 6/1 with the limit (RFC 4486): AFI 0, SAFI 0, the count.
            let mut data = vec![0, 0, 0];
            data.extend_from_slice(&u32::try_from(self.config.max_prefixes).unwrap_or(u32::MAX).to_be_bytes());
            return Some(self.fail(Notification::new(err::CEASE, 1, data)).await);
        }
        None
    }
}
