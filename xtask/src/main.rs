//! `cargo xtask demo [--serve]`, `cargo xtask test`, `cargo xtask deps`,
//! `cargo xtask media`, `cargo xtask deb` (the vod-edge Debian package).
//! Each installs what it needs before it builds, so the two README commands
//! work on a fresh Debian 12 machine.

mod bench;
mod deb;
mod demo;
mod env;

use anyhow::Result;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo::run(args[1..].iter().any(|a| a == "--serve")),
        Some("test") => test(),
        Some("deps") => env::install_system_deps(),
        Some("media") => env::bbb_clip().map(|p| println!("{}", p.display())),
        Some("bench") => bench::run(args.get(1).map(String::as_str)),
        Some("deb") => deb::run(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <demo [--serve] | test | bench NAME | deps | media | deb [--binary PATH] [--out DIR] [--fast]>");
            std::process::exit(2);
        }
    }
}

/// Installs system packages, checks formatting and lints, builds the
/// binaries the end-to-end tests start, and runs every test.
fn test() -> Result<()> {
    env::install_system_deps()?;
    env::cargo(&["fmt", "--all", "--check"])?;
    env::cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    env::cargo(&["build", "--workspace", "--bins"])?;
    // Tests that would skip for a missing tool (moto, nginx) fail instead: this command installs them all.
    std::env::set_var("VOD_TESTS_REQUIRE_TOOLS", "1");
    env::cargo(&["test", "--workspace", "--no-fail-fast"])?;
    println!("xtask test: all checks and tests passed");
    Ok(())
}
