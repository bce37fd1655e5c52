//! Fill plans: which objects an edge should hold before tomorrow's peak.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One object to prefill, in priority order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedObject {
    pub key: String,
    pub bytes: u64,
    /// Forecast requests for the object over the planned day.
    pub expected_requests: f64,
}

/// What one edge should hold, highest priority first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FillPlan {
    /// Capacity the plan was made for.
    pub edge_bytes: u64,
    /// Sum of `objects[].bytes`, never above `edge_bytes`.
    pub total_bytes: u64,
    pub objects: Vec<PlannedObject>,
}

/// Another edge of the same site, which prefill may fill from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEdge {
    pub name: String,
    /// Base URL of its unsigned fill path (`{url}/titles/...`); `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One edge's plan within a site: the contract's [`FillPlan`] fields (same
/// JSON, so `edge replay --prefill` and older edges read it) plus where else
/// in the site each object is planned, so prefill can fill from a peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeFillPlan {
    #[serde(flatten)]
    pub plan: FillPlan,
    /// The edge the plan is for.
    #[serde(default)]
    pub edge: String,
    /// Its site.
    #[serde(default)]
    pub site: String,
    /// The site's other edges.
    #[serde(default)]
    pub peers: Vec<PeerEdge>,
    /// Object key → names of peers planned to hold it too (objects no peer holds are absent).
    #[serde(default)]
    pub holders: std::collections::BTreeMap<String, Vec<String>>,
}

impl EdgeFillPlan {
    /// A plan with no site information (what the contract's `fill-plan` prints).
    pub fn standalone(plan: FillPlan) -> Self {
        Self { plan, edge: String::new(), site: String::new(), peers: Vec::new(), holders: Default::default() }
    }

    /// Base URLs of the peers planned to hold `key`, in the plan's order.
    pub fn peer_urls_for(&self, key: &str) -> Vec<&str> {
        let Some(names) = self.holders.get(key) else {
            return Vec::new();
        };
        names.iter().filter_map(|n| self.peers.iter().find(|p| &p.name == n).and_then(|p| p.url.as_deref())).collect()
    }
}

/// Every edge's plan for one site (`steering fill-plan --history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteFillPlan {
    pub site: String,
    /// The forecast method used (`last-day`, `decayed:H`, …).
    pub forecast: String,
    pub plans: Vec<EdgeFillPlan>,
}

/// Milliseconds in a (UTC) day.
pub const DAY_MS: u64 = 86_400_000;

/// Requests, largest size and distinct clients of one key on one day.
type KeyDay = (u64, u64, HashSet<IpAddr>);

/// Groups request-log rows into UTC days, per key: requests, largest size, distinct clients.
#[derive(Debug, Default)]
pub struct DayAggregator {
    by_day: BTreeMap<u32, HashMap<String, KeyDay>>,
}

impl DayAggregator {
    /// Counts one request.
    pub fn add(&mut self, row: &crate::log::RequestLogRow) {
        let day = (row.ts_ms / DAY_MS) as u32;
        let e = self.by_day.entry(day).or_default().entry(row.key.clone()).or_default();
        e.0 += 1;
        e.1 = e.1.max(row.bytes);
        e.2.insert(row.client_ip);
    }

    /// The days, oldest first, each labelled with `edge` and `site`.
    pub fn finish(self, edge: &str, site: Option<&str>) -> Vec<DailyPopularity> {
        self.by_day
            .into_iter()
            .map(|(day, keys)| {
                let mut objects: Vec<ObjectDay> = keys
                    .into_iter()
                    .map(|(key, (requests, bytes, clients))| ObjectDay {
                        key,
                        requests,
                        bytes,
                        clients: clients.len() as u64,
                    })
                    .collect();
                objects.sort_by(|a, b| a.key.cmp(&b.key));
                DailyPopularity { edge: edge.to_owned(), site: site.map(str::to_owned), day, objects }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_plan_reads_as_a_contract_plan_and_back() {
        let plan = FillPlan {
            edge_bytes: 10,
            total_bytes: 4,
            objects: vec![PlannedObject { key: "titles/t/v1/1.m4s".into(), bytes: 4, expected_requests: 2.0 }],
        };
        let mut edge = EdgeFillPlan::standalone(plan.clone());
        edge.edge = "a".into();
        edge.peers = vec![PeerEdge { name: "b".into(), url: Some("http://127.0.0.1:9".into()) }];
        edge.holders.insert("titles/t/v1/1.m4s".into(), vec!["b".into()]);
        let text = serde_json::to_string(&edge).unwrap();
        let back: FillPlan = serde_json::from_str(&text).unwrap();
        assert_eq!(back, plan);
        let contract = serde_json::to_string(&plan).unwrap();
        let as_edge: EdgeFillPlan = serde_json::from_str(&contract).unwrap();
        assert_eq!(as_edge, EdgeFillPlan::standalone(plan));
        let round: EdgeFillPlan = serde_json::from_str(&text).unwrap();
        assert_eq!(round.peer_urls_for("titles/t/v1/1.m4s"), vec!["http://127.0.0.1:9"]);
        assert!(round.peer_urls_for("titles/t/v1/2.m4s").is_empty());
    }
}

/// One object's demand at one edge or site over one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectDay {
    pub key: String,
    /// Requests that day.
    pub requests: u64,
    /// The object's size (the largest logged).
    pub bytes: u64,
    /// Distinct client addresses that asked for it.
    pub clients: u64,
}

/// One day of demand (`POST /v1/popularity` body from an edge; a day of a site's history in steering).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyPopularity {
    /// Reporting edge (empty for a site's merged day).
    #[serde(default)]
    pub edge: String,
    /// The edge's site; steering fills it from its registry when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// UTC day: days since the Unix epoch.
    pub day: u32,
    pub objects: Vec<ObjectDay>,
}
