//! `encoder encode --input FILE --title ID --store DIR|s3://bucket/prefix`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use encoder::EncodeSettings;
use origin::{BlockingStore, LocalStore, PublishTarget, StoreLocation};
use vod::TitleId;

#[derive(Parser)]
#[command(about = "Encodes titles into CMAF ABR ladders with HLS and DASH manifests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encode one source file and publish it to a store (a directory or S3).
    Encode {
        /// Source media file.
        #[arg(long)]
        input: PathBuf,
        /// Title id: [a-z0-9][a-z0-9_-]{0,63}.
        #[arg(long)]
        title: String,
        /// The origin's object store: a directory, or s3://bucket/prefix
        /// (AWS_ENDPOINT_URL, AWS_REGION, credentials from the environment).
        #[arg(long)]
        store: String,
        /// Segment duration in seconds.
        #[arg(long, default_value_t = 4.0)]
        segment_seconds: f64,
        /// x264 preset.
        #[arg(long, default_value = "veryfast")]
        preset: String,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
    },
}

fn main() -> Result<()> {
    svc::init_tracing("warn");
    let Command::Encode { input, title, store, segment_seconds, preset, quiet } = Cli::parse().command;
    let title = TitleId::new(title).context("--title")?;
    anyhow::ensure!(
        (0.5..=60.0).contains(&segment_seconds),
        "--segment-seconds must be between 0.5 and 60, got {segment_seconds}"
    );
    let settings = EncodeSettings { segment_ms: (segment_seconds * 1000.0).round() as u64, preset, progress: !quiet };
    let location = StoreLocation::parse(&store).context("--store")?;
    let store: Box<dyn PublishTarget> = match &location {
        StoreLocation::Local(dir) => Box::new(LocalStore::new(dir)),
        StoreLocation::S3 { .. } => {
            Box::new(BlockingStore::open(&location).with_context(|| format!("opening store {location}"))?)
        }
    };
    let cat = encoder::encode_and_publish(&input, &title, store.as_ref(), &settings)
        .with_context(|| format!("encoding {} as {title}", input.display()))?;
    let rungs: Vec<String> =
        cat.video().iter().map(|r| format!("{}@{}k", r.id, r.average_bandwidth_bps / 1000)).collect();
    println!(
        "published {} ({:.1}s, {} segments per rendition; {}; audio: {})",
        cat.title,
        cat.duration_ms as f64 / 1000.0,
        cat.video().first().map_or(0, |r| r.segments.len()),
        rungs.join(" "),
        if cat.audio().is_empty() { "none" } else { "aac" }
    );
    Ok(())
}
