//! Path tokens at the edge: forged, expired, unknown-key and other-title
//! tokens are refused with 403; during a key rotation the edge accepts the
//! current and the previous key.

mod common;

use common::*;
use edge::config::TokenKeyConfig;
use vod::token::TokenKey;
use vod::TitleId;

const SEG: &str = "titles/t1/v1/1.m4s";

fn signed(key: &TokenKey, title: &str, expiry: u64) -> String {
    key.sign(&TitleId::new(title).unwrap(), expiry)
}

async fn status(edge: &str, token: &str) -> u16 {
    client().get(format!("{edge}/t/{token}/{SEG}")).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_403_and_both_rotation_keys_work() {
    let (origin, _dir) = start_origin(&[(SEG, body(1, 4000))]).await;
    // Rotation: k2 is current, k1 (the old single-key settings) the previous one.
    let cfg = edge::EdgeConfig {
        token_key_id: "k1".into(),
        token_secret: Some("old-secret".into()),
        token_keys: vec![TokenKeyConfig { id: "k2".into(), secret: "new-secret".into() }],
        ..edge_config(&origin.url())
    };
    let edge = start_edge(cfg).await;
    let url = edge.url();
    let (old, new) = (TokenKey::new("k1", b"old-secret".to_vec()), TokenKey::new("k2", b"new-secret".to_vec()));
    let later = now_s() + 600;
    assert_eq!(status(&url, &signed(&new, "t1", later)).await, 200, "current key");
    assert_eq!(status(&url, &signed(&old, "t1", later)).await, 200, "previous key still works");

    let unknown = TokenKey::new("k9", b"new-secret".to_vec());
    assert_eq!(status(&url, &signed(&unknown, "t1", later)).await, 403, "unknown key id");
    let forged = TokenKey::new("k2", b"guessed".to_vec());
    assert_eq!(status(&url, &signed(&forged, "t1", later)).await, 403, "forged signature");
    assert_eq!(status(&url, &signed(&new, "t1", now_s().saturating_sub(1))).await, 403, "expired");
    assert_eq!(status(&url, &signed(&new, "t2", later)).await, 403, "another title's token");
    assert_eq!(status(&url, "bm90LWEtdG9rZW4").await, 403, "garbage");
    // Flipping one character of a valid token breaks it.
    let mut tampered = signed(&new, "t1", later).into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(status(&url, std::str::from_utf8(&tampered).unwrap()).await, 403, "tampered");
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_rotation_completes_the_old_key_is_refused() {
    let (origin, _dir) = start_origin(&[(SEG, body(2, 1000))]).await;
    let cfg = edge::EdgeConfig {
        token_secret: None,
        token_keys: vec![TokenKeyConfig { id: "k2".into(), secret: "new-secret".into() }],
        ..edge_config(&origin.url())
    };
    let edge = start_edge(cfg).await;
    let later = now_s() + 600;
    let old = TokenKey::new("k1", b"old-secret".to_vec());
    let new = TokenKey::new("k2", b"new-secret".to_vec());
    assert_eq!(status(&edge.url(), &signed(&new, "t1", later)).await, 200);
    assert_eq!(status(&edge.url(), &signed(&old, "t1", later)).await, 403);
    edge.stop().await;
    origin.stop().await;
}
