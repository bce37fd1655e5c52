//! Edge enrollment end to end with the real binaries on loopback:
//! `steering edges add` → `edge enroll` → `edge serve --config` with the
//! written file → its signed heartbeats are accepted and steering routes to
//! it → reused, forged and expired enrollment tokens are refused → tampered,
//! wrongly keyed and stale heartbeats are refused → an edge cannot read
//! another edge's fill plan → a URL-signing key rotated on steering (a new
//! config and SIGHUP, no restart; a bad config changes nothing) signs new
//! URLs at once and is accepted by the edge after a heartbeat → `steering
//! edges revoke` cuts the edge off and takes it out of routing at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::blocking::Client;
use serde_json::Value;
use stack::{bin, run, wait_until, Service};
use vod::edge_auth::EdgeSigner;
use vod::steering::Heartbeat;
use vod::token::TokenKey;
use vod::TitleId;

const WAIT: Duration = Duration::from_secs(30);
const SEGMENT: &str = "titles/t1/v1/1.m4s";

fn s(x: &str) -> String {
    x.to_owned()
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn require_bins() {
    for b in ["origin", "edge", "steering"] {
        assert!(
            bin(b).exists(),
            "{} is missing: build the binaries first (`cargo build --workspace --bins`; `cargo xtask test` does)",
            bin(b).display()
        );
    }
}

fn client() -> Client {
    Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
}

/// Steering's config: signs with `key`, accepts `older` too, enrolled edges in `edges_dir`.
fn steering_config(dir: &Path, origin: &str, key: (&str, &str), older: &[(&str, &str)]) -> PathBuf {
    let mut cfg = format!(
        "listen = \"127.0.0.1:0\"\ntoken_key_id = \"{}\"\ntoken_secret = \"{}\"\ntrust_forwarded_for = true\n\
         edges_dir = \"{}\"\norigin_url = \"{origin}\"\n",
        key.0,
        key.1,
        dir.join("edges").display()
    );
    for (id, secret) in older {
        cfg.push_str(&format!("[[token_keys]]\nid = \"{id}\"\nsecret = \"{secret}\"\n"));
    }
    let path = dir.join("steering.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn steering_cli(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| s(a)).collect();
    let (status, out, err) = run(&bin("steering"), &args).unwrap();
    (status.success(), out, err)
}

/// `steering edges add`: (token, expiry).
fn add_edge(cfg: &Path, name: &str, ttl: &str) -> (String, u64) {
    let cfg = cfg.display().to_string();
    let (ok, out, err) =
        steering_cli(&["edges", "add", "--config", &cfg, "--site", "isp-a", "--name", name, "--ttl", ttl]);
    assert!(ok, "edges add failed: {out}{err}");
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {k} in {out}"))
            .to_owned()
    };
    (field("token "), field("expires_unix_s ").parse().unwrap())
}

fn enroll_cli(steering: &str, token: &str, dir: &Path, out: &Path) -> (bool, String) {
    let args: Vec<String> = [
        "enroll",
        "--steering",
        steering,
        "--token",
        token,
        "--disk-path",
        &dir.join("disk").display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--disk-bytes",
        "67108864",
        "--ram-bytes",
        "16777216",
        "--out",
        &out.display().to_string(),
    ]
    .iter()
    .map(|a| s(a))
    .collect();
    let (status, so, se) = run(&bin("edge"), &args).unwrap();
    (status.success(), format!("{so}{se}"))
}

fn edges(c: &Client, steering: &str) -> Vec<Value> {
    let v: Value = c.get(format!("{steering}/v1/edges")).send().unwrap().json().unwrap();
    v["edges"].as_array().cloned().unwrap_or_default()
}

fn edge_state(c: &Client, steering: &str, name: &str) -> Option<Value> {
    edges(c, steering).into_iter().find(|e| e["name"] == name)
}

fn routed_edges(c: &Client, steering: &str) -> Vec<String> {
    let r = c.get(format!("{steering}/v1/play/t1")).header("x-forwarded-for", "10.9.0.1").send().unwrap();
    if !r.status().is_success() {
        return Vec::new();
    }
    let v: Value = r.json().unwrap();
    v["urls"].as_array().unwrap().iter().map(|u| u["edge"].as_str().unwrap().to_owned()).collect()
}

/// A string value of a top-level key of the written config.
fn config_value(text: &str, key: &str) -> String {
    let line = text.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("no {key}"));
    line.split_once(" = ").unwrap().1.trim().trim_matches('"').to_owned()
}

/// Posts `body` to `/v1/heartbeat` with the signature of `signer` computed over `signed_body` at `ts`.
fn signed_heartbeat(
    c: &Client,
    steering: &str,
    signer: &EdgeSigner,
    body: &[u8],
    signed_body: &[u8],
    ts: u64,
) -> (u16, String) {
    let mut req = c.post(format!("{steering}/v1/heartbeat")).header("content-type", "application/json");
    for (k, v) in signer.headers("POST", "/v1/heartbeat", signed_body, ts) {
        req = req.header(k, v);
    }
    let r = req.body(body.to_vec()).send().unwrap();
    (r.status().as_u16(), r.text().unwrap_or_default())
}

fn signed_get(c: &Client, base: &str, path: &str, signer: &EdgeSigner) -> u16 {
    let mut req = c.get(format!("{base}{path}"));
    for (k, v) in signer.headers("GET", path, b"", now_s()) {
        req = req.header(k, v);
    }
    req.send().unwrap().status().as_u16()
}

/// Posts a one-object popularity day for `edge`, signed by `signer`.
fn signed_report(c: &Client, base: &str, edge: &str, signer: &EdgeSigner) -> u16 {
    let day = serde_json::json!({
        "edge": edge, "site": "elsewhere", "day": now_s() / 86_400,
        "objects": [{ "key": SEGMENT, "requests": 3, "bytes": 1000, "clients": 2 }],
    });
    let body = serde_json::to_vec(&day).unwrap();
    let mut req = c.post(format!("{base}/v1/popularity")).header("content-type", "application/json");
    for (k, v) in signer.headers("POST", "/v1/popularity", &body, now_s()) {
        req = req.header(k, v);
    }
    req.body(body).send().unwrap().status().as_u16()
}

fn token_status(c: &Client, edge: &str, key: &TokenKey) -> u16 {
    let token = key.sign(&TitleId::new("t1").unwrap(), now_s() + 600);
    c.get(format!("{edge}/t/{token}/{SEGMENT}")).send().unwrap().status().as_u16()
}

/// Sends SIGHUP to `service` (steering re-reads its config).
fn hangup(service: &Service) {
    // SAFETY: signalling a child this test started, by its pid.
    assert_eq!(unsafe { libc::kill(service.pid() as libc::pid_t, libc::SIGHUP) }, 0);
}

/// The id of the key that signed the token of steering's first URL for `t1`, among `keys`.
fn play_token_key(c: &Client, steering: &str, keys: &[&TokenKey]) -> Option<String> {
    let r = c.get(format!("{steering}/v1/play/t1")).header("x-forwarded-for", "10.9.0.1").send().ok()?;
    let v: Value = r.json().ok()?;
    let url = v["urls"][0]["url"].as_str()?;
    let token = url.split("/t/").nth(1)?.split('/').next()?;
    let title = TitleId::new("t1").unwrap();
    keys.iter().find(|k| vod::token::verify(&[(**k).clone()], token, &title, now_s()).is_ok()).map(|k| k.id.clone())
}

fn start_steering(cfg: &Path, logs: &Path, name: &str, listen: &str) -> Service {
    let args = vec![s("serve"), s("--config"), cfg.display().to_string(), s("--listen"), s(listen)];
    Service::start(name, &bin("steering"), &args, logs, WAIT).unwrap()
}

#[test]
fn enroll_heartbeat_rotate_and_revoke() {
    require_bins();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("titles/t1/v1")).unwrap();
    std::fs::write(store.join(SEGMENT), vec![7u8; 1000]).unwrap();
    let origin_args = vec![s("serve"), s("--root"), store.display().to_string(), s("--listen"), s("127.0.0.1:0")];
    let origin = Service::start("origin", &bin("origin"), &origin_args, &logs, WAIT).unwrap();
    let old_key = ("k1", "old-url-secret");
    let cfg = steering_config(dir.path(), &origin.url(), old_key, &[]);
    let mut steering = start_steering(&cfg, &logs, "steering", "127.0.0.1:0");
    let st = steering.url();
    let c = client();

    // Operator: create the edge; on the box: enroll, then serve the written config unchanged.
    let (token, expires) = add_edge(&cfg, "edge-a", "1h");
    assert!(expires > now_s() + 3000 && token.starts_with("edge-a."), "{token} {expires}");
    let edge_cfg = dir.path().join("edge-a.toml");
    let (ok, out) = enroll_cli(&st, &token, dir.path(), &edge_cfg);
    assert!(ok, "edge enroll failed: {out}");
    let text = std::fs::read_to_string(&edge_cfg).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&edge_cfg).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(config_value(&text, "upstream"), origin.url(), "upstream from steering's origin_url");
    assert_eq!(config_value(&text, "name"), "edge-a");
    // Never overwritten without --force, and the token is not spent by the refusal.
    let (ok, out) = enroll_cli(&st, &token, dir.path(), &edge_cfg);
    assert!(!ok && out.contains("--force"), "{out}");
    assert_eq!(std::fs::read_to_string(&edge_cfg).unwrap(), text);

    let serve_args = vec![s("serve"), s("--config"), edge_cfg.display().to_string()];
    let edge = Service::start("edge-a", &bin("edge"), &serve_args, &logs, WAIT).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || edge_state(&c, &st, "edge-a")
            .is_some_and(|e| e["available"] == true && e["heartbeat"].is_object() && e["site"] == "isp-a")),
        "the enrolled edge never showed up available: {:?}\nedge log:\n{}",
        edges(&c, &st),
        edge.log()
    );
    assert!(routed_edges(&c, &st).contains(&s("edge-a")));
    assert_eq!(edge_state(&c, &st, "edge-a").unwrap()["url"], edge.url());
    // It serves with the key it was handed.
    assert_eq!(token_status(&c, &edge.url(), &TokenKey::new("k1", old_key.1.as_bytes().to_vec())), 200);

    // The token worked once: reuse, forgery and unknown names are refused, and logged.
    let post_enroll = |t: &str| {
        let r = c.post(format!("{st}/v1/enroll")).json(&serde_json::json!({ "token": t })).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (code, body) = post_enroll(&token);
    assert!(code == 403 && body.contains("already used"), "{code} {body}");
    let forged = format!("edge-a.{}", "A".repeat(43));
    assert_eq!(post_enroll(&forged).0, 401);
    assert_eq!(post_enroll("nobody.abc").0, 401);
    let other_cfg = dir.path().join("again.toml");
    let (ok, out) = enroll_cli(&st, &token, dir.path(), &other_cfg);
    assert!(!ok && out.contains("already used") && !other_cfg.exists(), "{out}");
    // An expired token.
    let (late, late_expiry) = add_edge(&cfg, "edge-b", "1");
    assert!(wait_until(Duration::from_secs(5), || now_s() > late_expiry), "clock did not pass the expiry");
    let (ok, out) = enroll_cli(&st, &late, dir.path(), &other_cfg);
    assert!(!ok && out.contains("expired") && !other_cfg.exists(), "{out}");
    let log = steering.log();
    for reason in ["token reused", "token does not match", "no such edge", "token expired"] {
        assert!(log.contains(reason), "steering did not log {reason:?}:\n{log}");
    }

    // Heartbeats signed with the edge's secret: only the untouched, fresh one passes.
    let signer = EdgeSigner::new("edge-a", &config_value(&text, "edge_secret")).unwrap();
    let mut hb = Heartbeat::new("edge-a");
    hb.url = Some(edge.url());
    let body = serde_json::to_vec(&hb).unwrap();
    let (code, answer) = signed_heartbeat(&c, &st, &signer, &body, &body, now_s());
    assert_eq!(code, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["token_keys"][0]["id"], "k1", "enrolled edges get the key set: {answer}");
    let mut drained = hb.clone();
    drained.drained = true;
    let tampered = serde_json::to_vec(&drained).unwrap();
    assert_eq!(signed_heartbeat(&c, &st, &signer, &tampered, &body, now_s()).0, 401, "body changed after signing");
    let wrong = EdgeSigner::new("edge-a", &vod::edge_auth::encode_secret(&[9; 32])).unwrap();
    assert_eq!(signed_heartbeat(&c, &st, &wrong, &body, &body, now_s()).0, 401, "wrong secret");
    assert_eq!(signed_heartbeat(&c, &st, &signer, &body, &body, now_s() - 120).0, 401, "stale timestamp");
    assert_eq!(signed_heartbeat(&c, &st, &signer, &body, &body, now_s() + 120).0, 401, "future timestamp");
    let mut other = Heartbeat::new("edge-b");
    other.url = Some(edge.url());
    let other = serde_json::to_vec(&other).unwrap();
    assert_eq!(signed_heartbeat(&c, &st, &signer, &other, &other, now_s()).0, 403, "a heartbeat for another edge");
    let unsigned = c.post(format!("{st}/v1/heartbeat")).json(&hb).send().unwrap().status().as_u16();
    assert_eq!(unsigned, 401);
    let hb_state = &edge_state(&c, &st, "edge-a").unwrap()["heartbeat"];
    assert_eq!(hb_state["drained"], false, "a refused heartbeat changed the registry: {hb_state}");
    let log = steering.log();
    assert!(log.contains("signature does not match") && log.contains("clock skew or replay"), "{log}");

    // Fill plans: an edge reads its own (the site has no history yet: 404/409, not refused), never another's.
    assert_eq!(signed_get(&c, &st, "/v1/fill-plan/edge-b?edge_bytes=1000", &signer), 403);
    let own = signed_get(&c, &st, "/v1/fill-plan/edge-a?edge_bytes=1000", &signer);
    assert!(own != 401 && own != 403, "own plan refused: {own}");
    assert_eq!(c.get(format!("{st}/v1/fill-plan/edge-a?edge_bytes=1000")).send().unwrap().status().as_u16(), 401);

    // Popularity reports: for itself only, filed under its enrolled site whatever it claims.
    assert_eq!(signed_report(&c, &st, "edge-a", &signer), 200);
    assert_eq!(signed_report(&c, &st, "edge-b", &signer), 403);
    let days: Value = c.get(format!("{st}/v1/popularity/isp-a")).send().unwrap().json().unwrap();
    assert_eq!(days["days"].as_array().map(Vec::len), Some(1), "{days}");

    // Rotation without a restart: a config that does not parse changes nothing; then one signing
    // with k2 and still accepting k1, both on SIGHUP.
    let old_token_key = TokenKey::new("k1", old_key.1.as_bytes().to_vec());
    let new_key = TokenKey::new("k2", b"new-url-secret".to_vec());
    assert_eq!(token_status(&c, &edge.url(), &new_key), 403, "k2 accepted before the rotation");
    assert_eq!(play_token_key(&c, &st, &[&old_token_key, &new_key]), Some(s("k1")));
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, "token_secret = ").unwrap();
    hangup(&steering);
    assert!(
        wait_until(Duration::from_secs(5), || steering.log().contains("config not reloaded")),
        "a bad config was not refused: {}",
        steering.log()
    );
    assert_eq!(play_token_key(&c, &st, &[&old_token_key, &new_key]), Some(s("k1")), "keys changed by a bad config");
    std::fs::write(&cfg, &good).unwrap();
    steering_config(dir.path(), &origin.url(), ("k2", "new-url-secret"), &[old_key]);
    hangup(&steering);
    assert!(
        wait_until(Duration::from_secs(5), || play_token_key(&c, &st, &[&old_token_key, &new_key]) == Some(s("k2"))),
        "steering still signs with k1 after SIGHUP: {}",
        steering.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || token_status(&c, &edge.url(), &new_key) == 200),
        "the edge never accepted the new key; edge log:\n{}",
        edge.log()
    );
    assert_eq!(token_status(&c, &edge.url(), &old_token_key), 200);
    assert_eq!(token_status(&c, &edge.url(), &TokenKey::new("k3", b"never".to_vec())), 403);
    assert!(edge.log().contains("URL-signing keys updated by steering"));
    assert!(steering.log().contains("URL-signing keys reloaded"));
    // A restart (same address) knows the enrolled edge from the shared records.
    let listen = steering.addr.to_string();
    steering.stop(Duration::from_secs(5));
    let steering = start_steering(&cfg, &logs, "steering-restarted", &listen);
    assert_eq!(steering.url(), st);
    assert!(wait_until(Duration::from_secs(10), || routed_edges(&c, &st).contains(&s("edge-a"))));
    assert_eq!(play_token_key(&c, &st, &[&old_token_key, &new_key]), Some(s("k2")));

    // Revocation: refused from the next request on, and out of routing at once.
    let (ok, out, err) = steering_cli(&["edges", "revoke", "--config", &cfg.display().to_string(), "edge-a"]);
    assert!(ok, "{out}{err}");
    assert_eq!(signed_heartbeat(&c, &st, &signer, &body, &body, now_s()).0, 401, "revoked edge's heartbeat");
    assert!(
        wait_until(Duration::from_secs(3), || edge_state(&c, &st, "edge-a")
            .is_some_and(|e| e["available"] == false && e["out_reason"] == "revoked")
            && !routed_edges(&c, &st).contains(&s("edge-a"))),
        "revoked edge still routed: {:?}",
        edges(&c, &st)
    );
    assert_eq!(signed_get(&c, &st, "/v1/fill-plan/edge-a?edge_bytes=1000", &signer), 401);
    assert_eq!(signed_report(&c, &st, "edge-a", &signer), 401);
    assert!(
        wait_until(Duration::from_secs(5), || edge.log().contains("heartbeat refused")),
        "the edge did not notice: {}",
        edge.log()
    );
    assert!(steering.log().contains("edge revoked"));
    let (ok, listed, _) = steering_cli(&["edges", "list", "--config", &cfg.display().to_string()]);
    assert!(
        ok && listed.contains("edge-a\tisp-a\trevoked") && listed.contains("edge-b\tisp-a\ttoken-expired"),
        "{listed}"
    );
}
