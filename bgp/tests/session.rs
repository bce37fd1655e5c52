//! The speaker over real TCP on loopback, against a raw client playing the router:
//! sessions, announcements and withdrawals, the grace period, malformed input
//! answered with the right NOTIFICATION, the hold timer.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bgp::codec::{self, err, Message, Notification, Open, PathAttributes, Update};
use bgp::{SessionState, Speaker, SpeakerConfig, Transport};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;

const LOCAL_AS: u32 = 64_512;
const PEER_AS: u32 = 65_001;
const DEADLINE: Duration = Duration::from_secs(5);

async fn speaker(grace: Duration) -> (Speaker, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = SpeakerConfig::new(LOCAL_AS, Ipv4Addr::new(192, 0, 2, 1), PEER_AS);
    cfg.grace = grace;
    cfg.hold_time = 30;
    (Speaker::spawn(cfg, Transport::Listen(listener)), addr)
}

/// Reads one whole message, or None when the connection closed.
async fn read_msg(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; codec::HEADER_LEN];
    timeout(DEADLINE, s.read_exact(&mut head)).await.expect("no message within the deadline").ok()?;
    let len = usize::from(u16::from_be_bytes([head[16], head[17]]));
    let mut msg = head.to_vec();
    msg.resize(len, 0);
    timeout(DEADLINE, s.read_exact(&mut msg[codec::HEADER_LEN..])).await.expect("body within the deadline").ok()?;
    Some(msg)
}

/// Reads until a NOTIFICATION arrives (KEEPALIVEs may come first), then expects the close.
async fn expect_notification(s: &mut TcpStream) -> Notification {
    loop {
        let msg = read_msg(s).await.expect("connection closed without a NOTIFICATION");
        match codec::parse(&msg, true).expect("the speaker sent a malformed message") {
            Message::Notification(n) => {
                let mut rest = Vec::new();
                let closed = timeout(DEADLINE, s.read_to_end(&mut rest)).await;
                assert!(closed.is_ok(), "the connection stays open after the NOTIFICATION");
                return n;
            }
            Message::Keepalive => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Connects and reads the speaker's OPEN.
async fn connect(addr: std::net::SocketAddr) -> (TcpStream, Open) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let msg = read_msg(&mut s).await.expect("no OPEN");
    let Message::Open(open) = codec::parse(&msg, false).unwrap() else { panic!("first message is not an OPEN") };
    (s, open)
}

/// Connects and brings the session to Established.
async fn establish(addr: std::net::SocketAddr) -> TcpStream {
    let (mut s, open) = connect(addr).await;
    assert_eq!(open.asn(), LOCAL_AS);
    assert_eq!(open.hold_time, 30);
    s.write_all(&Open::new(PEER_AS, 30, Ipv4Addr::new(198, 51, 100, 1)).encode()).await.unwrap();
    let ka = read_msg(&mut s).await.expect("no KEEPALIVE after our OPEN");
    assert_eq!(codec::parse(&ka, true), Ok(Message::Keepalive));
    s.write_all(&codec::keepalive()).await.unwrap();
    s
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

fn announce(list: &[&str]) -> Vec<u8> {
    Update {
        announced: nets(list),
        attributes: PathAttributes {
            origin: Some(0),
            as_path: Some(vec![PEER_AS]),
            next_hop: Some(Ipv4Addr::new(198, 51, 100, 1)),
            ..Default::default()
        },
        ..Default::default()
    }
    .encode(true)
}

fn withdraw(list: &[&str]) -> Vec<u8> {
    Update { withdrawn: nets(list), ..Default::default() }.encode(true)
}

async fn wait_for(rx: &mut watch::Receiver<Arc<Vec<IpNet>>>, want: &[&str]) {
    let want = nets(want);
    let seen = timeout(DEADLINE, rx.wait_for(|p| **p == want)).await.is_ok();
    assert!(seen, "prefixes never became {want:?}; now {:?}", rx.borrow());
}

#[tokio::test]
async fn learns_and_withdraws_v4_and_v6_and_keeps_routes_for_the_grace_period() {
    let (sp, addr) = speaker(Duration::from_millis(800)).await;
    let mut rx = sp.subscribe();
    let mut s = establish(addr).await;
    let mut state = sp.subscribe_state();
    timeout(DEADLINE, state.wait_for(|s| *s == SessionState::Established)).await.unwrap().unwrap();
    s.write_all(&announce(&["10.1.0.0/16", "10.2.0.0/16", "2001:db8:a::/48"])).await.unwrap();
    wait_for(&mut rx, &["10.1.0.0/16", "10.2.0.0/16", "2001:db8:a::/48"]).await;
    s.write_all(&withdraw(&["10.2.0.0/16", "2001:db8:a::/48"])).await.unwrap();
    wait_for(&mut rx, &["10.1.0.0/16"]).await;
    // A default route and a /4 name no client network: ignored, the session stays up.
    s.write_all(&announce(&["0.0.0.0/0", "16.0.0.0/4", "2001:db8:b::/48"])).await.unwrap();
    wait_for(&mut rx, &["10.1.0.0/16", "2001:db8:b::/48"]).await;
    // Session lost: the prefixes stay for the grace period, then go.
    let lost = tokio::time::Instant::now();
    drop(s);
    timeout(DEADLINE, state.wait_for(|s| *s == SessionState::Idle)).await.unwrap().unwrap();
    assert_eq!(sp.prefixes().len(), 2, "kept right after the session loss");
    wait_for(&mut rx, &[]).await;
    let held = lost.elapsed();
    assert!(held >= Duration::from_millis(700), "dropped after {held:?}, before the 800 ms grace");
    // The speaker takes a new session afterwards.
    let mut s = establish(addr).await;
    s.write_all(&announce(&["10.3.0.0/16"])).await.unwrap();
    wait_for(&mut rx, &["10.3.0.0/16"]).await;
    sp.shutdown().await;
    // Shutting down sends Cease / administrative shutdown.
    assert_eq!(expect_notification(&mut s).await, Notification::new(err::CEASE, err::CEASE_ADMIN_SHUTDOWN, vec![]));
}

#[tokio::test]
async fn a_reconnect_within_the_grace_keeps_clients_covered() {
    let (sp, addr) = speaker(Duration::from_secs(30)).await;
    let mut rx = sp.subscribe();
    let mut s = establish(addr).await;
    s.write_all(&announce(&["10.1.0.0/16", "10.2.0.0/16"])).await.unwrap();
    wait_for(&mut rx, &["10.1.0.0/16", "10.2.0.0/16"]).await;
    drop(s);
    let mut s = establish(addr).await;
    s.write_all(&announce(&["10.1.0.0/16"])).await.unwrap();
    // End-of-RIB: what was not re-announced goes.
    s.write_all(&Update::default().encode(true)).await.unwrap();
    wait_for(&mut rx, &["10.1.0.0/16"]).await;
    sp.shutdown().await;
}

/// Sends `bytes` on a fresh session (established first when `established`) and returns the NOTIFICATION.
async fn answer_to(addr: std::net::SocketAddr, established: bool, bytes: &[u8]) -> Notification {
    let mut s = if established { establish(addr).await } else { connect(addr).await.0 };
    s.write_all(bytes).await.unwrap();
    expect_notification(&mut s).await
}

#[tokio::test]
async fn malformed_messages_get_the_right_notification_and_the_speaker_carries_on() {
    let (sp, addr) = speaker(Duration::from_secs(30)).await;
    let mut rx = sp.subscribe();
    let ka = codec::keepalive();

    let mut bad_marker = ka.clone();
    bad_marker[0] = 0;
    assert_eq!(answer_to(addr, false, &bad_marker).await, Notification::new(1, 1, vec![]));

    let mut bad_len = ka.clone();
    bad_len[17] = 18;
    assert_eq!(answer_to(addr, true, &bad_len).await, Notification::new(1, 2, vec![0, 18]));
    let mut too_long = ka.clone();
    too_long[16..18].copy_from_slice(&5000u16.to_be_bytes());
    assert_eq!(answer_to(addr, true, &too_long).await.subcode, err::HEADER_BAD_LENGTH);

    let mut bad_type = ka.clone();
    bad_type[18] = 42;
    assert_eq!(answer_to(addr, true, &bad_type).await, Notification::new(1, 3, vec![42]));

    let wrong_as = Open::new(65_099, 30, Ipv4Addr::new(198, 51, 100, 1)).encode();
    assert_eq!(answer_to(addr, false, &wrong_as).await, Notification::new(2, 2, vec![]));

    let mut hold_2 = Open::new(PEER_AS, 30, Ipv4Addr::new(198, 51, 100, 1)).encode();
    hold_2[22..24].copy_from_slice(&2u16.to_be_bytes());
    assert_eq!(answer_to(addr, false, &hold_2).await, Notification::new(2, 6, vec![]));

    let mut version = Open::new(PEER_AS, 30, Ipv4Addr::new(198, 51, 100, 1)).encode();
    version[19] = 3;
    assert_eq!(answer_to(addr, false, &version).await, Notification::new(2, 1, vec![0, 4]));

    // UPDATE before the session is up: an FSM error.
    assert_eq!(answer_to(addr, false, &announce(&["10.1.0.0/16"])).await.code, err::FSM);

    // An unrecognized well-known attribute, carried back as data.
    let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 127, 0, 0, 1];
    attrs.extend_from_slice(&[0x40, 200, 2, 0xab, 0xcd]);
    let unknown = update_body(&attrs, &[16, 10, 1]);
    assert_eq!(answer_to(addr, true, &unknown).await, Notification::new(3, 2, vec![0x40, 200, 2, 0xab, 0xcd]));

    // ORIGIN flagged optional: attribute flags error.
    let flags = update_body(&[0xc0, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 127, 0, 0, 1], &[16, 10, 1]);
    assert_eq!(answer_to(addr, true, &flags).await, Notification::new(3, 4, vec![0xc0, 1, 1, 0]));

    // NEXT_HOP of 5 bytes: attribute length error.
    let length = update_body(&[0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 5, 127, 0, 0, 1, 9], &[16, 10, 1]);
    assert_eq!(answer_to(addr, true, &length).await.subcode, err::UPDATE_ATTRIBUTE_LENGTH);

    // Attribute list longer than the message: malformed attribute list.
    let mut overrun = update_body(&[0x40, 1, 1, 0], &[]);
    overrun[codec::HEADER_LEN + 3] = 200;
    assert_eq!(answer_to(addr, true, &overrun).await, Notification::new(3, 1, vec![]));

    // A /40 IPv4 prefix: invalid network field.
    let nlri = update_body(&[0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 127, 0, 0, 1], &[40, 10, 1, 2, 3, 4]);
    assert_eq!(answer_to(addr, true, &nlri).await, Notification::new(3, 10, vec![]));

    // Routes without NEXT_HOP: missing well-known attribute, with its type code.
    let missing = update_body(&[0x40, 1, 1, 0, 0x40, 2, 0], &[16, 10, 1]);
    assert_eq!(answer_to(addr, true, &missing).await, Notification::new(3, 3, vec![3]));

    // None of it took anything down: a good session still learns routes.
    let mut s = establish(addr).await;
    s.write_all(&announce(&["10.7.0.0/16"])).await.unwrap();
    wait_for(&mut rx, &["10.7.0.0/16"]).await;
    sp.shutdown().await;
}

fn update_body(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(attrs);
    body.extend_from_slice(nlri);
    codec::frame(codec::msg_type::UPDATE, &body)
}

#[tokio::test]
async fn the_hold_timer_closes_a_silent_session() {
    let (sp, addr) = speaker(Duration::from_secs(30)).await;
    let (mut s, _) = connect(addr).await;
    // Offer 3 s, the smallest allowed: the negotiated hold time is the smaller one.
    s.write_all(&Open::new(PEER_AS, 3, Ipv4Addr::new(198, 51, 100, 1)).encode()).await.unwrap();
    assert_eq!(codec::parse(&read_msg(&mut s).await.unwrap(), true), Ok(Message::Keepalive));
    s.write_all(&codec::keepalive()).await.unwrap();
    let t0 = std::time::Instant::now();
    // The speaker keeps the session alive from its side (a KEEPALIVE every hold/3), then gives up on us.
    let mut keepalives = 0;
    let n = loop {
        let msg = read_msg(&mut s).await.expect("closed without a NOTIFICATION");
        match codec::parse(&msg, true).unwrap() {
            Message::Keepalive => keepalives += 1,
            Message::Notification(n) => break n,
            other => panic!("unexpected {other:?}"),
        }
    };
    let waited = t0.elapsed();
    assert_eq!(n, Notification::new(err::HOLD_TIMER_EXPIRED, 0, vec![]));
    assert!(waited >= Duration::from_millis(2900) && waited < Duration::from_secs(5), "after {waited:?}");
    assert!(keepalives >= 1, "no KEEPALIVE from the speaker within the hold time");
    sp.shutdown().await;
}

#[tokio::test]
async fn connect_mode_dials_the_router() {
    let router = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = SpeakerConfig::new(LOCAL_AS, Ipv4Addr::new(192, 0, 2, 1), PEER_AS);
    cfg.connect_retry = Duration::from_millis(200);
    let sp = Speaker::spawn(cfg, Transport::Connect(router.local_addr().unwrap()));
    let mut rx = sp.subscribe();
    let (mut s, _) = timeout(DEADLINE, router.accept()).await.unwrap().unwrap();
    let Message::Open(_) = codec::parse(&read_msg(&mut s).await.unwrap(), false).unwrap() else { panic!("no OPEN") };
    s.write_all(&Open::new(PEER_AS, 90, Ipv4Addr::new(198, 51, 100, 1)).encode()).await.unwrap();
    assert_eq!(codec::parse(&read_msg(&mut s).await.unwrap(), true), Ok(Message::Keepalive));
    s.write_all(&codec::keepalive()).await.unwrap();
    s.write_all(&announce(&["2001:db8:c::/48"])).await.unwrap();
    wait_for(&mut rx, &["2001:db8:c::/48"]).await;
    // The router closes; the speaker dials again.
    drop(s);
    let again = timeout(DEADLINE, router.accept()).await;
    assert!(again.is_ok(), "no new connection after the session dropped");
    sp.shutdown().await;
}

/// xorshift64*: deterministic bytes for the fuzz tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn the_codec_never_panics_on_random_or_mutated_input() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = [
        Open::new(PEER_AS, 90, Ipv4Addr::new(1, 2, 3, 4)).encode(),
        announce(&["10.1.0.0/16", "2001:db8::/32", "192.0.2.0/24"]),
        withdraw(&["10.1.0.0/16", "2001:db8::/32"]),
        Notification::new(3, 1, vec![1, 2, 3]).encode(),
        codec::keepalive(),
    ];
    for i in 0..200_000 {
        let msg = if i % 2 == 0 {
            // A valid header with a random body of a random length and type.
            let n = (rng.next() % 120) as usize;
            let kind = (rng.next() % 7) as u8;
            codec::frame(kind, &rng.bytes(n))
        } else {
            // A real message with a few bytes flipped.
            let mut m = seeds[(rng.next() % seeds.len() as u64) as usize].clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % m.len() as u64) as usize;
                m[at] = rng.next() as u8;
            }
            m
        };
        // Either a message or a NOTIFICATION to send; never a panic.
        let _ = codec::parse(&msg, i % 3 == 0);
        let _ = codec::check_header(&msg);
    }
}

#[tokio::test]
async fn random_bytes_on_the_wire_never_take_the_speaker_down() {
    let (sp, addr) = speaker(Duration::from_secs(30)).await;
    let mut rx = sp.subscribe();
    let mut rng = Rng(42);
    for round in 0..40 {
        let mut s = if round % 2 == 0 { establish(addr).await } else { connect(addr).await.0 };
        let mut junk = if round % 4 < 2 {
            let n = 1 + (rng.next() % 300) as usize;
            rng.bytes(n)
        } else {
            // A valid marker so the junk reaches the length, type and body checks.
            let mut m = codec::MARKER.to_vec();
            let n = 3 + (rng.next() % 300) as usize;
            m.extend(rng.bytes(n));
            m
        };
        if round % 8 == 7 {
            junk.truncate(10);
        }
        let _ = s.write_all(&junk).await;
        // Whatever the speaker makes of it, it answers with a NOTIFICATION or waits for more bytes; close then.
        let mut rest = Vec::new();
        let _ = timeout(Duration::from_millis(200), s.read_to_end(&mut rest)).await;
        if !rest.is_empty() {
            assert!(rest.len() >= codec::HEADER_LEN && rest[..16] == codec::MARKER, "garbage answered with garbage");
        }
    }
    let mut s = establish(addr).await;
    s.write_all(&announce(&["10.9.0.0/16"])).await.unwrap();
    wait_for(&mut rx, &["10.9.0.0/16"]).await;
    sp.shutdown().await;
}

#[tokio::test]
async fn a_full_table_arrives_in_many_updates_and_is_learned_whole() {
    let (sp, addr) = speaker(Duration::from_secs(30)).await;
    let mut rx = sp.subscribe();
    let mut s = establish(addr).await;
    let all: Vec<IpNet> =
        (0..50_000u32).map(|i| IpNet::new(Ipv4Addr::from(0x6440_0000 + (i << 8)).into(), 24).unwrap()).collect();
    let t0 = std::time::Instant::now();
    // About 900 /24s (4 bytes each) fit in one 4096-byte UPDATE.
    for chunk in all.chunks(900) {
        let up = Update {
            announced: chunk.to_vec(),
            attributes: PathAttributes {
                origin: Some(0),
                as_path: Some(vec![PEER_AS]),
                next_hop: Some(Ipv4Addr::new(198, 51, 100, 1)),
                ..Default::default()
            },
            ..Default::default()
        };
        let bytes = up.encode(true);
        assert!(bytes.len() <= codec::MAX_MESSAGE_LEN);
        s.write_all(&bytes).await.unwrap();
    }
    let whole = timeout(Duration::from_secs(20), rx.wait_for(|p| p.len() == all.len())).await.is_ok();
    assert!(whole, "{} of {} prefixes learned", rx.borrow().len(), all.len());
    eprintln!("bgp: {} prefixes in {} UPDATEs learned in {:?}", all.len(), all.len().div_ceil(900), t0.elapsed());
    assert_eq!(*sp.prefixes(), {
        let mut sorted = all.clone();
        sorted.sort();
        sorted
    });
    sp.shutdown().await;
}

#[tokio::test]
async fn only_the_configured_peer_may_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = SpeakerConfig::new(LOCAL_AS, Ipv4Addr::new(192, 0, 2, 1), PEER_AS);
    cfg.peer_address = Some("127.0.0.2".parse().unwrap());
    let sp = Speaker::spawn(cfg, Transport::Listen(listener));
    let mut s = TcpStream::connect(addr).await.unwrap();
    // No OPEN for a stranger: Cease, connection rejected.
    assert_eq!(
        expect_notification(&mut s).await,
        Notification::new(err::CEASE, err::CEASE_CONNECTION_REJECTED, vec![])
    );
    assert_eq!(sp.state(), SessionState::Idle);
    sp.shutdown().await;
}
