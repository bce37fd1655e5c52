//! `cargo xtask bench cache`: does popularity-based prefill beat a cache that
//! only learns from misses?
//!
//! A seeded VOD workload over several days (a catalog with a five-rung
//! bitrate ladder and 6 s segments; Zipf-like title popularity that drifts
//! day over day; new releases every day, hot at launch and fading; viewers
//! who start low on the ladder and abandon, so early segments are hotter; a
//! diurnal curve peaking in the evening) is written as request logs. The
//! last day is the evaluation day; the days before are the history.
//!
//! The forecast method and the share of the disk the plan may fill are
//! chosen by a backtest (plan the day before the evaluation day from the
//! days before it), never on the evaluation day. Then, at cache sizes of 1%,
//! 5% and 10% of the evaluation day's unique bytes: `steering fill-plan
//! --history` (with launch hints for that day's releases), `edge replay`
//! with and without the plan, and beside them a byte-weighted LRU and
//! Belady's furthest-next-use (offline, byte-weighted approximation of the
//! optimum), both computed here. Headline: ours = byte-hit ratio with
//! prefill at 5%, baseline = LRU at 5%.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::BenchResult;
use crate::env;

const DAY_MS: u64 = 86_400_000;
/// First day of the workload (UTC days since the epoch; 2026-01-05).
const FIRST_DAY: u64 = 20_458;
const HISTORY_DAYS: u64 = 4;
const SEGMENT_MS: u64 = 6_000;
const LADDER_KBPS: [u64; 5] = [235, 750, 1750, 3000, 5800];
/// Share of sessions whose throughput settles on each rung.
const RUNG_SHARE: [f64; 5] = [0.06, 0.12, 0.22, 0.30, 0.30];
const CATALOG_TITLES: usize = 300;
const RELEASES_PER_DAY: usize = 4;
const SESSIONS_PER_DAY: usize = 6_000;
const VIEWERS: u32 = 4_000;
const SIZES_PERCENT: [f64; 3] = [1.0, 5.0, 10.0];
/// Standard deviation of a title's daily log-popularity step: popularity moves ±35% a day.
const DEFAULT_CHURN: f64 = 0.35;

/// Runs the benchmark.
pub fn run() -> Result<BenchResult> {
    env::cargo(&["build", "--release", "-p", "steering", "-p", "edge"])?;
    let bin = env::target_dir().join("release");
    let work = env::target_dir().join("bench/cache-work");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let seed: u64 = std::env::var("CACHE_BENCH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    // Day-over-day drift of each title's log popularity (standard deviation).
    let churn: f64 = std::env::var("CACHE_BENCH_CHURN").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_CHURN);
    let workload = Workload::generate(seed, churn);
    let eval_day = FIRST_DAY + HISTORY_DAYS;
    let backtest_day = eval_day - 1;
    // History directories: days before the backtest day, and days before the evaluation day.
    let backtest_dir = work.join("history-backtest");
    let history_dir = work.join("history");
    std::fs::create_dir_all(&backtest_dir)?;
    std::fs::create_dir_all(&history_dir)?;
    for day in FIRST_DAY..eval_day {
        let path = history_dir.join(format!("{day}.csv"));
        workload.write_day(day, &path)?;
        if day < backtest_day {
            std::fs::hard_link(&path, backtest_dir.join(format!("{day}.csv")))
                .or_else(|_| std::fs::copy(&path, backtest_dir.join(format!("{day}.csv"))).map(|_| ()))?;
        }
    }
    let backtest_log = history_dir.join(format!("{backtest_day}.csv"));
    let eval_log = work.join(format!("{eval_day}.csv"));
    workload.write_day(eval_day, &eval_log)?;
    let backtest_hints = work.join("hints-backtest.json");
    let eval_hints = work.join("hints.json");
    workload.write_hints(backtest_day, &backtest_hints)?;
    workload.write_hints(eval_day, &eval_hints)?;

    let tools = Tools { bin: bin.clone(), work: work.clone() };
    // Backtest at 5%: forecast method first (plan filling 90% of the disk), then the fill share.
    let back_rows = Rows::read(&backtest_log)?;
    let back_cache = cache_bytes(back_rows.unique_bytes, 5.0);
    let mut backtest = Vec::new();
    let mut best_method = ("decayed:1".to_owned(), f64::MIN);
    for method in ["last-day", "decayed:0.5", "decayed:1", "decayed:2", "profile:0.5", "profile:1", "profile:2"] {
        let r = tools.prefill_ratio(&backtest_dir, &backtest_hints, &backtest_log, back_cache, method, 0.9)?;
        eprintln!("cache bench: backtest {method} fill 0.9 → byte-hit {r:.4}");
        backtest.push(json!({"forecast": method, "fill_fraction": 0.9, "byte_hit_ratio": r}));
        if r > best_method.1 {
            best_method = (method.to_owned(), r);
        }
    }
    let mut best_fill = (0.9, best_method.1);
    // A plan that pins the whole disk leaves only the RAM tier for what the forecast missed;
    // the backtest decides whether that pays.
    for fill in [0.6, 0.75, 0.8, 0.85, 0.95, 0.98, 1.0] {
        let r = tools.prefill_ratio(&backtest_dir, &backtest_hints, &backtest_log, back_cache, &best_method.0, fill)?;
        eprintln!("cache bench: backtest {} fill {fill} → byte-hit {r:.4}", best_method.0);
        backtest.push(json!({"forecast": best_method.0, "fill_fraction": fill, "byte_hit_ratio": r}));
        if r > best_fill.1 {
            best_fill = (fill, r);
        }
    }
    let (method, fill) = (best_method.0.clone(), best_fill.0);

    let rows = Rows::read(&eval_log)?;
    let mut sizes = Vec::new();
    let mut headline = None;
    for pct in SIZES_PERCENT {
        let cache = cache_bytes(rows.unique_bytes, pct);
        let with =
            tools.replay(&eval_log, cache, Some(tools.plan(&history_dir, Some(&eval_hints), cache, &method, fill)?))?;
        let without = tools.replay(&eval_log, cache, None)?;
        // The contract's plan: yesterday's log alone, no hints, at the same fill share.
        let last_day = tools.replay(&eval_log, cache, Some(tools.contract_plan(&backtest_log, cache, fill)?))?;
        let lru = rows.lru(cache);
        let belady = rows.belady(cache);
        let oracle = rows.static_oracle(cache);
        let ratio = |v: &Value| v["byte_hit_ratio"].as_f64().unwrap_or(0.0);
        let gap_closed = if belady > lru { (ratio(&with) - lru) / (belady - lru) } else { 0.0 };
        println!(
            "cache {pct:>4}% ({:>6.2} GB): prefill {:.4}  no prefill {:.4}  contract plan {:.4}  LRU {:.4}  Belady {:.4}  static oracle {:.4}  gap LRU→Belady closed {:.0}%",
            cache as f64 / 1e9,
            ratio(&with),
            ratio(&without),
            ratio(&last_day),
            lru,
            belady,
            oracle,
            gap_closed * 100.0
        );
        if pct == 5.0 {
            headline = Some((ratio(&with), lru));
        }
        sizes.push(json!({
            "percent_of_unique_bytes": pct, "cache_bytes": cache,
            "prefill": ratio(&with), "no_prefill": ratio(&without),
            "contract_plan_last_day": ratio(&last_day),
            "lru": lru, "belady": belady, "static_oracle_plan": oracle, "gap_closed": gap_closed,
            "prefill_replay": with, "no_prefill_replay": without,
        }));
    }
    let Some((ours, baseline)) = headline else { bail!("the 5% size did not run") };
    Ok(BenchResult {
        name: "cache",
        unit: "byte-hit ratio",
        ours,
        baseline,
        baseline_name: "byte-weighted LRU".into(),
        ratio: if baseline > 0.0 { ours / baseline } else { 0.0 },
        details: json!({
            "seed": seed,
            "churn": churn,
            "workload": {
                "history_days": HISTORY_DAYS, "sessions_per_day": SESSIONS_PER_DAY,
                "catalog_titles": CATALOG_TITLES, "releases_per_day": RELEASES_PER_DAY,
                "ladder_kbps": LADDER_KBPS, "segment_ms": SEGMENT_MS,
                "eval_day_requests": rows.keys.len(), "eval_day_bytes": rows.total_bytes,
                "eval_day_unique_bytes": rows.unique_bytes,
            },
            "chosen": {"forecast": method, "fill_fraction": fill, "by": "backtest on the day before"},
            "backtest": backtest,
            "sizes": sizes,
            "cache_split": "RAM 1/64, disk 63/64 of the cache size for edge replay; LRU and Belady get the whole size",
        }),
    })
}

fn cache_bytes(unique: u64, pct: f64) -> u64 {
    (unique as f64 * pct / 100.0) as u64
}

/// The release binaries and a scratch directory.
struct Tools {
    bin: PathBuf,
    work: PathBuf,
}

impl Tools {
    /// RAM and disk of an edge with `cache` bytes: RAM is a small share, as on real
    /// appliances (hundreds of GB of RAM beside hundreds of TB of disk).
    fn disk_of(cache: u64) -> (u64, u64) {
        let ram = cache / 64;
        (ram, cache - ram)
    }

    /// Writes the single-edge site plan for a cache of `cache` bytes; returns its path.
    fn plan(&self, history: &Path, hints: Option<&Path>, cache: u64, method: &str, fill: f64) -> Result<PathBuf> {
        let (_, disk) = Self::disk_of(cache);
        let mut cmd = Command::new(self.bin.join("steering"));
        cmd.arg("fill-plan").arg("--history").arg(history);
        cmd.args(["--site", "bench", "--edges", &format!("edge:{disk}"), "--forecast", method]);
        cmd.args(["--fill-fraction", &fill.to_string()]);
        if let Some(h) = hints {
            cmd.arg("--hints").arg(h);
        }
        let out = cmd.output().context("running steering fill-plan")?;
        if !out.status.success() {
            bail!("steering fill-plan failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let site: Value = serde_json::from_slice(&out.stdout).context("steering fill-plan output")?;
        let plan = site["plans"].get(0).context("steering fill-plan printed no plan")?;
        let path = self.work.join("plan.json");
        std::fs::write(&path, serde_json::to_vec(plan)?)?;
        Ok(path)
    }

    /// The contract mode's plan (`--log DAY.csv --edge-bytes N`) for `fill` of the disk; returns its path.
    fn contract_plan(&self, log: &Path, cache: u64, fill: f64) -> Result<PathBuf> {
        let (_, disk) = Self::disk_of(cache);
        let out = Command::new(self.bin.join("steering"))
            .arg("fill-plan")
            .arg("--log")
            .arg(log)
            .args(["--edge-bytes", &((disk as f64 * fill) as u64).to_string()])
            .output()
            .context("running steering fill-plan --log")?;
        if !out.status.success() {
            bail!("steering fill-plan --log failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let path = self.work.join("contract-plan.json");
        std::fs::write(&path, &out.stdout)?;
        Ok(path)
    }

    /// `edge replay --json` of `log` at `cache` bytes.
    fn replay(&self, log: &Path, cache: u64, plan: Option<PathBuf>) -> Result<Value> {
        let (ram, disk) = Self::disk_of(cache);
        let mut cmd = Command::new(self.bin.join("edge"));
        cmd.arg("replay").arg("--log").arg(log);
        cmd.args(["--ram-bytes", &ram.to_string(), "--disk-bytes", &disk.to_string(), "--json"]);
        if let Some(p) = &plan {
            cmd.arg("--prefill").arg(p);
        }
        let out = cmd.output().context("running edge replay")?;
        if !out.status.success() {
            bail!("edge replay failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("edge replay output")
    }

    fn prefill_ratio(
        &self,
        history: &Path,
        hints: &Path,
        log: &Path,
        cache: u64,
        method: &str,
        fill: f64,
    ) -> Result<f64> {
        let plan = self.plan(history, Some(hints), cache, method, fill)?;
        Ok(self.replay(log, cache, Some(plan))?["byte_hit_ratio"].as_f64().unwrap_or(0.0))
    }
}

/// splitmix64: small, seeded, good enough for a workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn pick(&mut self, cumulative: &[f64]) -> usize {
        let x = self.unit() * cumulative.last().copied().unwrap_or(0.0);
        cumulative.partition_point(|&c| c <= x).min(cumulative.len().saturating_sub(1))
    }
}

struct Title {
    name: String,
    segments: u32,
    /// Day it becomes available (before the first day for the back catalog).
    released: i64,
    /// Log popularity, drifting day by day.
    log_weight: Vec<f64>,
}

/// The generated catalog and every day's requests.
struct Workload {
    titles: Vec<Title>,
    seed: u64,
}

impl Workload {
    fn generate(seed: u64, churn: f64) -> Self {
        let mut rng = Rng(seed);
        let days = (HISTORY_DAYS + 1) as usize;
        let mut titles = Vec::new();
        let length = |rng: &mut Rng| -> u32 {
            let minutes = match rng.unit() {
                x if x < 0.25 => 24.0,
                x if x < 0.7 => 45.0,
                _ => 100.0,
            };
            (minutes * 60_000.0 / SEGMENT_MS as f64) as u32
        };
        let drift = |rng: &mut Rng, start: f64| -> Vec<f64> {
            let mut w = vec![start];
            for _ in 1..days {
                let last = *w.last().unwrap_or(&start);
                w.push(last + churn * rng.normal());
            }
            w
        };
        for rank in 1..=CATALOG_TITLES {
            let start = -0.9 * (rank as f64).ln();
            let w = drift(&mut rng, start);
            let segments = length(&mut rng);
            titles.push(Title { name: format!("c{rank:03}"), segments, released: -100, log_weight: w });
        }
        for day in 0..days {
            for i in 0..RELEASES_PER_DAY {
                // Launch popularity like a top-20 title.
                let rank = 1.0 + rng.unit() * 20.0;
                let start = -0.9 * rank.ln();
                let mut w = drift(&mut rng, start);
                for (d, v) in w.iter_mut().enumerate() {
                    // Hot at launch, fading by about a third a day.
                    let age = d as f64 - day as f64;
                    if age >= 0.0 {
                        *v += 1.2 - 0.4 * age;
                    }
                }
                let segments = length(&mut rng);
                titles.push(Title { name: format!("n{day}x{i}"), segments, released: day as i64, log_weight: w });
            }
        }
        Self { titles, seed }
    }

    /// Titles available on day index `d` and their weights.
    fn weights(&self, d: usize) -> Vec<(usize, f64)> {
        self.titles
            .iter()
            .enumerate()
            .filter(|(_, t)| t.released <= d as i64)
            .map(|(i, t)| (i, t.log_weight[d].exp()))
            .collect()
    }

    fn segment_bytes(title: &str, kbps: u64, n: u32) -> u64 {
        let mut h = Rng(kbps ^ u64::from(n).rotate_left(20) ^ title.bytes().fold(0u64, |a, b| a * 131 + u64::from(b)));
        let scale = 0.7 + 0.6 * h.unit();
        (kbps as f64 * 1000.0 / 8.0 * (SEGMENT_MS as f64 / 1000.0) * scale) as u64
    }

    /// Writes day `day`'s request log, rows in time order.
    fn write_day(&self, day: u64, path: &Path) -> Result<()> {
        let d = (day - FIRST_DAY) as usize;
        let mut rng = Rng(self.seed ^ (day.wrapping_mul(0x2545_f491_4f6c_dd1d)));
        let weights = self.weights(d);
        let mut cum = Vec::with_capacity(weights.len());
        let mut acc = 0.0;
        for (_, w) in &weights {
            acc += w;
            cum.push(acc);
        }
        let mut rung_cum = Vec::new();
        let mut a = 0.0;
        for s in RUNG_SHARE {
            a += s;
            rung_cum.push(a);
        }
        // Diurnal: sessions start mostly in the evening (peak 21:00), least at 05:00.
        let hour_weight: Vec<f64> = (0..24)
            .map(|h| {
                let x = ((h as f64 - 21.0) / 24.0 * std::f64::consts::TAU).cos();
                0.15 + (1.0 + x).powi(3)
            })
            .collect();
        let mut hour_cum = Vec::new();
        let mut a = 0.0;
        for w in &hour_weight {
            a += w;
            hour_cum.push(a);
        }
        let mut rows: Vec<(u64, u32, String, u64)> = Vec::new();
        for _ in 0..SESSIONS_PER_DAY {
            let title = &self.titles[weights[rng.pick(&cum)].0];
            let rung = rng.pick(&rung_cum);
            let hour = rng.pick(&hour_cum) as u64;
            let start = day * DAY_MS + hour * 3_600_000 + (rng.unit() * 3_600_000.0) as u64;
            let viewer = (rng.unit() * f64::from(VIEWERS)) as u32;
            // A quarter abandon within the first two minutes; the rest watch an
            // exponential share of the title (mean 45%), some to the end.
            let watched = if rng.unit() < 0.25 {
                1 + (rng.unit() * 20.0) as u32
            } else {
                let share = -0.45 * (1.0 - rng.unit()).ln();
                ((share * f64::from(title.segments)) as u32).clamp(1, title.segments)
            };
            let mut ts = start;
            let mut last_rung = usize::MAX;
            for n in 1..=watched {
                // Start low and climb: segments 1-2 two rungs down, 3-4 one rung down.
                let r = match n {
                    1 | 2 => rung.saturating_sub(2),
                    3 | 4 => rung.saturating_sub(1),
                    _ => rung,
                };
                let kbps = LADDER_KBPS[r];
                if r != last_rung {
                    rows.push((ts, viewer, format!("titles/{}/v{kbps}/init.mp4", title.name), 900));
                    last_rung = r;
                }
                let bytes = Self::segment_bytes(&title.name, kbps, n);
                rows.push((ts, viewer, format!("titles/{}/v{kbps}/{n}.m4s", title.name), bytes));
                ts += SEGMENT_MS;
            }
        }
        rows.retain(|r| r.0 / DAY_MS == day);
        rows.sort_by_key(|r| r.0);
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::new(file);
        writeln!(out, "ts_ms,client_ip,key,bytes")?;
        for (ts, viewer, key, bytes) in rows {
            writeln!(out, "{ts},10.{}.{}.{},{key},{bytes}", 1 + viewer / 65_536, (viewer / 256) % 256, viewer % 256)?;
        }
        out.flush()?;
        Ok(())
    }

    /// Launch hints for the titles released on `day`: an editor's guess of
    /// their share of title starts (the true expected share, off by up to 2x).
    fn write_hints(&self, day: u64, path: &Path) -> Result<()> {
        let d = (day - FIRST_DAY) as usize;
        let weights = self.weights(d);
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        let mut rng = Rng(self.seed ^ day ^ 0x4849_4e54);
        let mut hints = Vec::new();
        for (i, w) in weights {
            let t = &self.titles[i];
            if t.released != d as i64 {
                continue;
            }
            let guess = w / total * 2f64.powf(rng.unit() * 2.0 - 1.0);
            let mut objects = Vec::new();
            for kbps in LADDER_KBPS {
                objects.push(json!({"key": format!("titles/{}/v{kbps}/init.mp4", t.name), "bytes": 900}));
                for n in 1..=t.segments {
                    objects.push(json!({"key": format!("titles/{}/v{kbps}/{n}.m4s", t.name),
                        "bytes": Self::segment_bytes(&t.name, kbps, n)}));
                }
            }
            hints.push(json!({"title": t.name, "expected_share": guess, "objects": objects}));
        }
        std::fs::write(path, serde_json::to_vec(&hints)?).with_context(|| format!("writing {}", path.display()))
    }
}

/// A day's requests held in memory for the LRU and Belady runs.
struct Rows {
    keys: Vec<u32>,
    bytes: Vec<u64>,
    total_bytes: u64,
    unique_bytes: u64,
}

impl Rows {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut ids: HashMap<&str, (u32, u64)> = HashMap::new();
        let (mut keys, mut bytes) = (Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate().skip(1) {
            let mut f = line.split(',');
            let (Some(_), Some(_), Some(key), Some(b)) = (f.next(), f.next(), f.next(), f.next()) else {
                bail!("{}: line {}: not a request-log row", path.display(), i + 1);
            };
            let b: u64 = b.parse().with_context(|| format!("{}: line {}", path.display(), i + 1))?;
            let next = ids.len() as u32;
            let id = ids.entry(key).or_insert((next, b));
            id.1 = id.1.max(b);
            keys.push(id.0);
            bytes.push(b);
        }
        let unique_bytes = ids.values().map(|(_, b)| b).sum();
        let total_bytes = bytes.iter().sum();
        Ok(Self { keys, bytes, total_bytes, unique_bytes })
    }

    /// Byte-hit ratio of a byte-weighted LRU of `capacity`.
    fn lru(&self, capacity: u64) -> f64 {
        let mut at: HashMap<u32, u64> = HashMap::new();
        let mut order: BTreeSet<(u64, u32)> = BTreeSet::new();
        let mut sizes: HashMap<u32, u64> = HashMap::new();
        let (mut used, mut hit) = (0u64, 0u64);
        for (tick, (&k, &b)) in self.keys.iter().zip(&self.bytes).enumerate() {
            let tick = tick as u64;
            if let Some(t) = at.get_mut(&k) {
                hit += b;
                order.remove(&(*t, k));
                *t = tick;
                order.insert((tick, k));
                continue;
            }
            if b > capacity {
                continue;
            }
            while used + b > capacity {
                let Some((t, victim)) = order.pop_first() else { break };
                debug_assert!(at.get(&victim) == Some(&t));
                at.remove(&victim);
                used -= sizes.remove(&victim).unwrap_or(0);
            }
            at.insert(k, tick);
            order.insert((tick, k));
            sizes.insert(k, b);
            used += b;
        }
        hit as f64 / self.total_bytes.max(1) as f64
    }

    /// Byte-hit ratio of the best static set of `capacity` bytes chosen knowing
    /// the day's requests (the most requested objects first): the ceiling of any prefill plan.
    fn static_oracle(&self, capacity: u64) -> f64 {
        let mut per_key: HashMap<u32, (u64, u64)> = HashMap::new();
        for (&k, &b) in self.keys.iter().zip(&self.bytes) {
            let e = per_key.entry(k).or_default();
            e.0 += 1;
            e.1 = e.1.max(b);
        }
        let mut objs: Vec<(u64, u64)> = per_key.into_values().collect();
        objs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let (mut used, mut hit) = (0u64, 0u64);
        for (count, bytes) in objs {
            if used + bytes <= capacity {
                used += bytes;
                hit += count * bytes;
            }
        }
        hit as f64 / self.total_bytes.max(1) as f64
    }

    /// Byte-hit ratio of Belady's rule over bytes: evict the object used
    /// furthest in the future; never admit one used later than every held one.
    fn belady(&self, capacity: u64) -> f64 {
        let n = self.keys.len();
        let mut next = vec![u64::MAX; n];
        let mut seen: HashMap<u32, u64> = HashMap::new();
        for i in (0..n).rev() {
            if let Some(&j) = seen.get(&self.keys[i]) {
                next[i] = j;
            }
            seen.insert(self.keys[i], i as u64);
        }
        let mut held: HashMap<u32, (u64, u64)> = HashMap::new();
        let mut by_next: BTreeSet<(u64, u32)> = BTreeSet::new();
        let (mut used, mut hit) = (0u64, 0u64);
        for ((&k, &b), &nx) in self.keys.iter().zip(&self.bytes).zip(&next) {
            if let Some((when, _)) = held.get_mut(&k) {
                hit += b;
                by_next.remove(&(*when, k));
                *when = nx;
                by_next.insert((nx, k));
                continue;
            }
            if nx == u64::MAX || b > capacity {
                continue;
            }
            let mut admit = true;
            while used + b > capacity {
                let Some(&(far, victim)) = by_next.last() else { break };
                if far <= nx {
                    admit = false;
                    break;
                }
                by_next.pop_last();
                used -= held.remove(&victim).map_or(0, |(_, s)| s);
            }
            if admit {
                held.insert(k, (nx, b));
                by_next.insert((nx, k));
                used += b;
            }
        }
        hit as f64 / self.total_bytes.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(seq: &[(u32, u64)]) -> Rows {
        let mut uniq: HashMap<u32, u64> = HashMap::new();
        for (k, b) in seq {
            uniq.insert(*k, *b);
        }
        Rows {
            keys: seq.iter().map(|s| s.0).collect(),
            bytes: seq.iter().map(|s| s.1).collect(),
            total_bytes: seq.iter().map(|s| s.1).sum(),
            unique_bytes: uniq.values().sum(),
        }
    }

    #[test]
    fn belady_beats_lru_on_a_loop_larger_than_the_cache() {
        // A loop over 3 objects with room for 2: LRU always misses; Belady keeps one.
        let seq: Vec<(u32, u64)> = (0..30).map(|i| (i % 3, 10)).collect();
        let r = rows(&seq);
        assert_eq!(r.lru(20), 0.0);
        assert!(r.belady(20) > 0.4, "{}", r.belady(20));
        assert!(r.belady(30) >= r.lru(30));
        assert_eq!(r.lru(1000), 27.0 / 30.0);
        assert_eq!(r.belady(1000), 27.0 / 30.0);
        // Room for one of three equally asked-for objects, held from the start: a third of the bytes.
        assert_eq!(r.static_oracle(10), 10.0 / 30.0);
    }

    #[test]
    fn the_workload_is_seeded_and_early_segments_are_hotter() {
        let dir = tempdir();
        let w = Workload::generate(3, DEFAULT_CHURN);
        let (a, b) = (dir.join("a.csv"), dir.join("b.csv"));
        w.write_day(FIRST_DAY, &a).unwrap();
        Workload::generate(3, DEFAULT_CHURN).write_day(FIRST_DAY, &b).unwrap();
        let text = std::fs::read_to_string(&a).unwrap();
        assert_eq!(text, std::fs::read_to_string(&b).unwrap(), "same seed, same log");
        let count = |suffix: &str| text.lines().filter(|l| l.contains(suffix)).count();
        assert!(count("/1.m4s,") > 3 * count("/200.m4s,"), "segment 1 is hotter than segment 200");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("cache-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
