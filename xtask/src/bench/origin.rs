//! `cargo xtask bench origin`.

use anyhow::{bail, Result};

use super::BenchResult;

/// Runs the benchmark.
pub fn run() -> Result<BenchResult> {
    bail!("the origin benchmark is not implemented yet")
}
