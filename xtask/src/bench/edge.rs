//! `cargo xtask bench edge`.

use anyhow::{bail, Result};

use super::BenchResult;

/// Runs the benchmark.
pub fn run() -> Result<BenchResult> {
    bail!("the edge benchmark is not implemented yet")
}
