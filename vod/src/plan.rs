//! Fill plans: which objects an edge should hold before tomorrow's peak.

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
