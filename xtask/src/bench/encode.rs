//! `cargo xtask bench encode`: our encoder against one `ffmpeg` process that
//! makes the same rungs with a `split`+`scale` graph, on a 1080p 10 s clip
//! with motion. Same x264 preset, profile, rate control (bitrate, 1.5x VBV
//! maxrate, 2x buffer) and keyframe cadence on both sides. Reports CPU
//! seconds, wall time and PSNR per rung against the source.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::BenchResult;
use crate::env;

const SEGMENT_S: u32 = 4;
const PRESET: &str = "veryfast";

/// (height, kbps) of the default ladder for a 1080p source, as the encoder plans it.
const RUNGS: &[(u32, u32)] = &[(1080, 5000), (720, 3000), (480, 1400), (360, 800), (240, 400), (144, 200)];

fn even_width(h: u32) -> u32 {
    ((f64::from(h) * 16.0 / 9.0 / 2.0).round() as u32) * 2
}

/// CPU seconds (user + system) used by all reaped children so far.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs a command to completion; returns (wall s, CPU s).
fn timed(cmd: &mut Command) -> Result<(f64, f64)> {
    let cpu0 = children_cpu_s();
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((t.elapsed().as_secs_f64(), children_cpu_s() - cpu0))
}

fn ffmpeg() -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-y"]);
    c
}

fn source_clip() -> Result<PathBuf> {
    let dir = env::target_dir().join("media");
    std::fs::create_dir_all(&dir)?;
    let clip = dir.join("bench-1080p-10s.mp4");
    if !clip.exists() {
        let part = dir.join("bench-1080p-10s.part.mp4");
        timed(
            ffmpeg()
                .args([
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc2=size=1920x1080:rate=25",
                    "-f",
                    "lavfi",
                    "-i",
                    "sine=frequency=440:sample_rate=48000",
                    "-t",
                    "10",
                    "-c:v",
                    "libx264",
                    "-preset",
                    "fast",
                    "-crf",
                    "16",
                    "-pix_fmt",
                    "yuv420p",
                    "-c:a",
                    "aac",
                    "-b:a",
                    "192k",
                    "-shortest",
                ])
                .arg(&part),
        )?;
        std::fs::rename(&part, &clip)?;
    }
    Ok(clip)
}

/// The baseline: one ffmpeg, decode once, split, scale, encode every rung and the audio.
fn baseline_command(src: &Path, out: &Path) -> Command {
    let n = RUNGS.len();
    let labels: String = (0..n).map(|i| format!("[s{i}]")).collect();
    let mut graph = format!("[0:v]split={n}{labels}");
    for (i, (h, _)) in RUNGS.iter().enumerate() {
        graph.push_str(&format!(";[s{i}]scale={}:{h}:flags=bicubic[o{i}]", even_width(*h)));
    }
    let mut c = ffmpeg();
    c.arg("-i").arg(src).arg("-filter_complex").arg(graph);
    let gop = (SEGMENT_S * 25).to_string();
    for (i, (h, kbps)) in RUNGS.iter().enumerate() {
        c.args(["-map", &format!("[o{i}]"), "-c:v", "libx264", "-preset", PRESET, "-profile:v", "high"]);
        c.args([
            "-b:v",
            &format!("{kbps}k"),
            "-maxrate",
            &format!("{}k", kbps * 3 / 2),
            "-bufsize",
            &format!("{}k", kbps * 2),
        ]);
        c.args(["-g", &gop, "-x264-params", "scenecut=0:open-gop=0", "-pix_fmt", "yuv420p", "-an"]);
        c.arg(out.join(format!("v{h}.mp4")));
    }
    c.args(["-map", "0:a", "-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2", "-vn"])
        .arg(out.join("audio.mp4"));
    c
}

/// Joins a published rendition (init + segments) into one file.
fn join_rendition(store: &Path, title: &str, rendition: &str, out: &Path) -> Result<()> {
    let dir = store.join("titles").join(title).join(rendition);
    let mut bytes = std::fs::read(dir.join("init.mp4"))?;
    for n in 1.. {
        match std::fs::read(dir.join(format!("{n}.m4s"))) {
            Ok(b) => bytes.extend(b),
            Err(_) => break,
        }
    }
    std::fs::write(out, bytes)?;
    Ok(())
}

/// Average PSNR (dB) of `encoded` against `src` scaled to the rung's size.
fn psnr(encoded: &Path, src: &Path, h: u32) -> Result<f64> {
    let out = ffmpeg()
        .args(["-loglevel", "info", "-i"])
        .arg(encoded)
        .arg("-i")
        .arg(src)
        .args([
            "-lavfi",
            &format!("[1:v]scale={}:{h}:flags=bicubic[ref];[0:v][ref]psnr", even_width(h)),
            "-f",
            "null",
            "-",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .filter(|l| l.contains("PSNR"))
        .find_map(|l| l.split("average:").nth(1)?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no PSNR in ffmpeg output for {}", encoded.display()))
}

/// Runs the benchmark.
pub fn run() -> Result<BenchResult> {
    env::cargo(&["build", "--release", "-p", "encoder"])?;
    let src = source_clip()?;
    let work = tempfile_dir()?;
    let store = work.join("store");
    let encoder = env::target_dir().join("release").join("encoder");
    eprintln!("bench encode: ours");
    let (ours_wall, ours_cpu) = timed(
        Command::new(&encoder)
            .args(["encode", "--quiet", "--preset", PRESET, "--title", "bench", "--input"])
            .arg(&src)
            .arg("--store")
            .arg(&store),
    )?;
    let base_out = work.join("ffmpeg");
    std::fs::create_dir_all(&base_out)?;
    eprintln!("bench encode: ffmpeg split+scale");
    let (base_wall, base_cpu) = timed(&mut baseline_command(&src, &base_out))?;

    let mut rungs = Vec::new();
    let mut worst_gap = f64::NEG_INFINITY;
    for (h, kbps) in RUNGS {
        let joined = work.join(format!("ours-v{h}.mp4"));
        join_rendition(&store, "bench", &format!("v{h}"), &joined)?;
        let ours = psnr(&joined, &src, *h)?;
        let base = psnr(&base_out.join(format!("v{h}.mp4")), &src, *h)?;
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        worst_gap = worst_gap.max(base - ours);
        rungs.push(json!({
            "rung": format!("v{h}"), "kbps": kbps,
            "psnr_ours_db": ours, "psnr_ffmpeg_db": base, "psnr_gap_db": base - ours,
            "bytes_ours": size(&joined), "bytes_ffmpeg": size(&base_out.join(format!("v{h}.mp4"))),
        }));
    }
    let fleet = super::encode_fleet::run(&encoder, &src, PRESET, &work)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(BenchResult {
        name: "encode",
        unit: "cpu_seconds",
        ours: ours_cpu,
        baseline: base_cpu,
        baseline_name: format!("ffmpeg (one process, split+scale, libx264 {PRESET})"),
        ratio: base_cpu / ours_cpu,
        details: json!({
            "source": src.display().to_string(),
            "wall_s_ours": ours_wall, "wall_s_ffmpeg": base_wall,
            "cpu_s_ours": ours_cpu, "cpu_s_ffmpeg": base_cpu,
            "cpu_ratio_ours_over_ffmpeg": ours_cpu / base_cpu,
            "target": "cpu_s_ours <= 1.05 x ffmpeg with PSNR within 0.1 dB per rung",
            "worst_psnr_gap_db": worst_gap,
            "rungs": rungs,
            "fleet": fleet,
            "note": "includes publishing (manifests, catalog, atomic writes) on our side; the audio is encoded on both sides",
        }),
    })
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = env::target_dir().join("bench").join("encode-work");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
