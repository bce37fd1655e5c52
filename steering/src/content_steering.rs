//! HLS and DASH Content Steering: the steering manifest players re-poll, and
//! pure helpers that add steering to a master playlist or an MPD. No I/O.
//!
//! How it fits together (HLS). The master playlist carries
//!
//! ```text
//! #EXT-X-CONTENT-STEERING:SERVER-URI="http://steer/v1/steering/bbb?format=hls",PATHWAY-ID="base"
//! #EXT-X-STREAM-INF:BANDWIDTH=1200000,PATHWAY-ID="base"
//! v720.m3u8
//! ```
//!
//! Every variant belongs to one pathway, `base`: whichever edge served the
//! master (variant URIs are relative, so they inherit that edge's host and the
//! path token). The steering manifest then declares one pathway per candidate
//! edge as a *clone* of `base` with the edge's host (`PATHWAY-CLONES`,
//! `URI-REPLACEMENT.HOST`) and lists them best first (`PATHWAY-PRIORITY`).
//! Tokens do not depend on the edge, so the cloned URIs are signed too. The
//! player re-polls `RELOAD-URI` every `TTL` seconds, sending `_HLS_pathway`
//! (its current pathway) and `_HLS_throughput`; each poll is a fresh
//! decision, so a dead or overloaded edge drops out of the list and players
//! move mid-stream. Pathway cloning needs edges whose base URL has no path.
//!
//! DASH. The MPD carries `<ContentSteering defaultServiceLocation="a1"
//! queryBeforeStart="true">SERVER-URI</ContentSteering>` and one
//! `<BaseURL serviceLocation="a1">http://a1/t/TOKEN/titles/bbb/dash/</BaseURL>`
//! per edge; the steering manifest lists the service locations best first
//! (`SERVICE-LOCATION-PRIORITY`; the same list is also sent as
//! `PATHWAY-PRIORITY`, which some DASH players read). Players send
//! `_DASH_pathway` and `_DASH_throughput` when they re-poll.

use std::collections::BTreeMap;

use serde::Serialize;
use vod::steering::Format;

pub use vod::content_steering::{
    is_pathway_id, master_uris, stable_id, steer_master_playlist, steer_mpd, MasterUris, BASE_PATHWAY,
};

/// One candidate as a pathway: its id, host, and the absolute URIs of its playlists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pathway {
    /// Pathway / service-location id (the edge name, or `origin`).
    pub id: String,
    /// Host name (no port) that replaces the base pathway's host.
    pub host: String,
    /// Absolute URI of each variant playlist on this pathway, by `STABLE-VARIANT-ID` (HLS).
    pub variants: BTreeMap<String, String>,
    /// Absolute URI of each rendition playlist on this pathway, by `STABLE-RENDITION-ID` (HLS).
    pub renditions: BTreeMap<String, String>,
}

/// `URI-REPLACEMENT` of a pathway clone. Players use a per-variant URI where one is given
/// and fall back to replacing the host, which cannot change the port: edges that differ
/// only by port are reached through the per-variant URIs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UriReplacement {
    /// New host name for URIs without a per-variant or per-rendition entry.
    #[serde(rename = "HOST")]
    pub host: String,
    /// Whole variant playlist URIs, by `STABLE-VARIANT-ID`.
    #[serde(rename = "PER-VARIANT-URIS", skip_serializing_if = "BTreeMap::is_empty")]
    pub per_variant_uris: BTreeMap<String, String>,
    /// Whole rendition playlist URIs, by `STABLE-RENDITION-ID`.
    #[serde(rename = "PER-RENDITION-URIS", skip_serializing_if = "BTreeMap::is_empty")]
    pub per_rendition_uris: BTreeMap<String, String>,
}

/// One entry of `PATHWAY-CLONES`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathwayClone {
    /// The pathway copied.
    #[serde(rename = "BASE-ID")]
    pub base_id: String,
    /// The new pathway's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// How its URIs differ from the base pathway's.
    #[serde(rename = "URI-REPLACEMENT")]
    pub uri_replacement: UriReplacement,
}

/// A steering manifest (HLS Content Steering / DASH-IF Content Steering, version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SteeringManifest {
    /// Always 1.
    #[serde(rename = "VERSION")]
    pub version: u32,
    /// Seconds until the player polls again.
    #[serde(rename = "TTL")]
    pub ttl: u64,
    /// Where to poll next.
    #[serde(rename = "RELOAD-URI")]
    pub reload_uri: String,
    /// Pathways best first (HLS; also sent for DASH).
    #[serde(rename = "PATHWAY-PRIORITY")]
    pub pathway_priority: Vec<String>,
    /// Service locations best first (DASH only).
    #[serde(rename = "SERVICE-LOCATION-PRIORITY", skip_serializing_if = "Option::is_none")]
    pub service_location_priority: Option<Vec<String>>,
    /// Pathways derived from the master's base pathway (HLS only).
    #[serde(rename = "PATHWAY-CLONES", skip_serializing_if = "Vec::is_empty")]
    pub pathway_clones: Vec<PathwayClone>,
}

/// The steering manifest for ranked `pathways` (best first).
pub fn steering_manifest(format: Format, ttl_s: u64, reload_uri: String, pathways: &[Pathway]) -> SteeringManifest {
    let ids: Vec<String> = pathways.iter().map(|p| p.id.clone()).collect();
    match format {
        Format::Hls => SteeringManifest {
            version: 1,
            ttl: ttl_s,
            reload_uri,
            pathway_priority: ids,
            service_location_priority: None,
            pathway_clones: pathways
                .iter()
                .map(|p| PathwayClone {
                    base_id: BASE_PATHWAY.to_owned(),
                    id: p.id.clone(),
                    uri_replacement: UriReplacement {
                        host: p.host.clone(),
                        per_variant_uris: p.variants.clone(),
                        per_rendition_uris: p.renditions.clone(),
                    },
                })
                .collect(),
        },
        Format::Dash => SteeringManifest {
            version: 1,
            ttl: ttl_s,
            reload_uri,
            pathway_priority: ids.clone(),
            service_location_priority: Some(ids),
            pathway_clones: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(id: &str, host: &str) -> Pathway {
        Pathway { id: id.into(), host: host.into(), variants: BTreeMap::new(), renditions: BTreeMap::new() }
    }

    #[test]
    fn hls_manifest_has_the_spec_keys_and_clones() {
        let m = steering_manifest(
            Format::Hls,
            10,
            "/v1/steering/bbb?format=hls".into(),
            &[pw("a1", "127.0.0.1:4567"), pw("b1", "edge-b:80")],
        );
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["VERSION"], 1);
        assert_eq!(v["TTL"], 10);
        assert_eq!(v["RELOAD-URI"], "/v1/steering/bbb?format=hls");
        assert_eq!(v["PATHWAY-PRIORITY"], serde_json::json!(["a1", "b1"]));
        assert_eq!(
            v["PATHWAY-CLONES"][1],
            serde_json::json!({"BASE-ID": "base", "ID": "b1", "URI-REPLACEMENT": {"HOST": "edge-b:80"}})
        );
        assert!(v.get("SERVICE-LOCATION-PRIORITY").is_none());
    }

    #[test]
    fn hls_clones_carry_per_variant_and_rendition_uris() {
        let mut p = pw("a1", "127.0.0.1");
        p.variants.insert("v360".into(), "http://127.0.0.1:4567/t/TOK/titles/bbb/hls/v360.m3u8".into());
        p.renditions.insert("audio".into(), "http://127.0.0.1:4567/t/TOK/titles/bbb/hls/audio.m3u8".into());
        let v = serde_json::to_value(steering_manifest(Format::Hls, 10, "r".into(), &[p])).unwrap();
        assert_eq!(
            v["PATHWAY-CLONES"][0]["URI-REPLACEMENT"],
            serde_json::json!({
                "HOST": "127.0.0.1",
                "PER-VARIANT-URIS": {"v360": "http://127.0.0.1:4567/t/TOK/titles/bbb/hls/v360.m3u8"},
                "PER-RENDITION-URIS": {"audio": "http://127.0.0.1:4567/t/TOK/titles/bbb/hls/audio.m3u8"}
            })
        );
    }

    #[test]
    fn dash_manifest_lists_service_locations() {
        let m = steering_manifest(Format::Dash, 5, "r".into(), &[pw("a1", "h")]);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["SERVICE-LOCATION-PRIORITY"], serde_json::json!(["a1"]));
        assert_eq!(v["PATHWAY-PRIORITY"], serde_json::json!(["a1"]));
        assert!(v.get("PATHWAY-CLONES").is_none());
    }
}
