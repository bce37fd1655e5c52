//! Path tokens that steering signs and edges check.
//!
//! A token is base64url (no padding) of `"{key_id}|{expiry_unix_s}|{title}|"`
//! followed by the 32-byte HMAC-SHA256 of that text under the shared key. It
//! sits in the URL path (`/t/{token}/titles/...`) so every relative URI in a
//! manifest inherits it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::id::TitleId;

type HmacSha256 = Hmac<Sha256>;
const MAC_LEN: usize = 32;

/// A signing key shared between steering and edges.
#[derive(Clone)]
pub struct TokenKey {
    /// Short name that lets keys rotate: tokens carry it.
    pub id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Why a token was refused. Every variant maps to 403 at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not valid base64url or is too short")]
    Malformed,
    #[error("token names an unknown key id")]
    UnknownKey,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token is for another title")]
    WrongTitle,
}

/// The claims a valid token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub key_id: String,
    pub expiry_unix_s: u64,
    pub title: TitleId,
}

impl TokenKey {
    /// A key from its id and secret bytes. The id must not contain `|`.
    pub fn new(id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        let id: String = id.into();
        Self { id: id.replace('|', "_"), secret: secret.into() }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }

    /// Signs a token for `title` that expires at `expiry_unix_s`.
    pub fn sign(&self, title: &TitleId, expiry_unix_s: u64) -> String {
        let text = format!("{}|{}|{}|", self.id, expiry_unix_s, title);
        let mut mac = self.mac();
        mac.update(text.as_bytes());
        let mut raw = text.into_bytes();
        raw.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }
}

/// Checks `token` against the known keys, the clock and the requested title.
pub fn verify(keys: &[TokenKey], token: &str, title: &TitleId, now_unix_s: u64) -> Result<TokenClaims, TokenError> {
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
    if raw.len() <= MAC_LEN {
        return Err(TokenError::Malformed);
    }
    let (text, sig) = raw.split_at(raw.len() - MAC_LEN);
    let text_str = std::str::from_utf8(text).map_err(|_| TokenError::Malformed)?;
    let mut fields = text_str.split('|');
    let (Some(kid), Some(exp), Some(tok_title), Some(""), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(TokenError::Malformed);
    };
    let key = keys.iter().find(|k| k.id == kid).ok_or(TokenError::UnknownKey)?;
    let mut mac = key.mac();
    mac.update(text);
    mac.verify_slice(sig).map_err(|_| TokenError::BadSignature)?;
    let expiry_unix_s: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
    if now_unix_s >= expiry_unix_s {
        return Err(TokenError::Expired);
    }
    let tok_title = TitleId::new(tok_title).map_err(|_| TokenError::Malformed)?;
    if &tok_title != title {
        return Err(TokenError::WrongTitle);
    }
    Ok(TokenClaims { key_id: kid.to_owned(), expiry_unix_s, title: tok_title })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &TokenKey) -> &[TokenKey] {
        std::slice::from_ref(k)
    }

    fn t(s: &str) -> TitleId {
        TitleId::new(s).unwrap()
    }

    #[test]
    fn signed_token_verifies() {
        let k = TokenKey::new("k1", b"secret".to_vec());
        let tok = k.sign(&t("bbb"), 1000);
        let c = verify(&[k], &tok, &t("bbb"), 999).unwrap();
        assert_eq!(c.expiry_unix_s, 1000);
        assert!(!tok.contains(['/', '+', '=']), "token must be path-safe: {tok}");
    }

    #[test]
    fn expired_forged_and_other_title_are_refused() {
        let k = TokenKey::new("k1", b"secret".to_vec());
        let tok = k.sign(&t("bbb"), 1000);
        assert_eq!(verify(keys(&k), &tok, &t("bbb"), 1000), Err(TokenError::Expired));
        assert_eq!(verify(keys(&k), &tok, &t("other"), 10), Err(TokenError::WrongTitle));
        let other = TokenKey::new("k1", b"not-the-secret".to_vec());
        assert_eq!(verify(keys(&k), &other.sign(&t("bbb"), 1000), &t("bbb"), 10), Err(TokenError::BadSignature));
        let unknown = TokenKey::new("k9", b"secret".to_vec());
        assert_eq!(verify(keys(&k), &unknown.sign(&t("bbb"), 1000), &t("bbb"), 10), Err(TokenError::UnknownKey));
        assert_eq!(verify(keys(&k), "!!!", &t("bbb"), 10), Err(TokenError::Malformed));
        assert_eq!(verify(keys(&k), "", &t("bbb"), 10), Err(TokenError::Malformed));
    }

    #[test]
    fn tampering_with_any_byte_is_detected() {
        let k = TokenKey::new("k1", b"secret".to_vec());
        let tok = k.sign(&t("bbb"), 5000);
        let mut raw = URL_SAFE_NO_PAD.decode(&tok).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 0x01;
            let forged = URL_SAFE_NO_PAD.encode(&raw);
            assert!(verify(keys(&k), &forged, &t("bbb"), 10).is_err(), "flip at {i} accepted");
            raw[i] ^= 0x01;
        }
    }
}
