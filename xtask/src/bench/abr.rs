//! `cargo xtask bench abr`.

use anyhow::{bail, Result};

use super::BenchResult;

/// Runs the benchmark.
pub fn run() -> Result<BenchResult> {
    bail!("the abr benchmark is not implemented yet")
}
