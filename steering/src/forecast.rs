//! Forecasts: tomorrow's requests per object at a site, from the site's
//! recent days of demand plus hints for titles that have no history yet.
//!
//! Pure functions over [`DailyPopularity`] days. Two history methods, picked
//! by measurement (`cargo xtask bench cache`): `last-day` (tomorrow looks
//! like today) and `decayed` (an exponentially decayed average whose
//! half-life is in days; each title is averaged only over the days since it
//! first appeared at the site, so a title launched yesterday is not diluted
//! by the days before it existed). Then launch hints: a new title with an
//! expected share of the site's viewing gets per-object demand from the
//! site's measured viewing profile (how many requests each rendition's init
//! and n-th segment get per title start), so its first minutes are planned
//! before its first viewer; the same happens for a title rising fast at
//! other sites.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use vod::plan::{DailyPopularity, ObjectDay, PlannedObject};

/// Milliseconds in a UTC day.
pub use vod::plan::{DayAggregator, DAY_MS};

/// How history becomes a forecast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Tomorrow's requests = the last day's.
    LastDay,
    /// Exponentially decayed average of the days since each title appeared.
    Decayed { half_life_days: f64 },
    /// Per title: decayed title starts × the title's viewing curve (share of
    /// starts reaching segment n, pooled over every day, non-increasing) ×
    /// the site's rendition mix at that segment index. Separates how many
    /// will start a title (changes daily) from how they watch it (stable),
    /// so one noisy segment count does not decide its priority.
    Profile { half_life_days: f64 },
}

impl Method {
    /// Parses `last-day`, `decayed` (half-life 1 day) or `decayed:H`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "last-day" => Ok(Method::LastDay),
            "decayed" => Ok(Method::Decayed { half_life_days: 1.0 }),
            "profile" => Ok(Method::Profile { half_life_days: 1.0 }),
            t => {
                let bad = || {
                    format!("forecast {t:?}: expected last-day, decayed[:HALF_LIFE_DAYS] or profile[:HALF_LIFE_DAYS]")
                };
                let (kind, h) = t.split_once(':').ok_or_else(bad)?;
                let h: f64 = h.parse().map_err(|_| bad())?;
                if !(h.is_finite() && h > 0.0) {
                    return Err(bad());
                }
                match kind {
                    "decayed" => Ok(Method::Decayed { half_life_days: h }),
                    "profile" => Ok(Method::Profile { half_life_days: h }),
                    _ => Err(bad()),
                }
            }
        }
    }

    /// Label in plans and reports.
    pub fn label(&self) -> String {
        match self {
            Method::LastDay => "last-day".into(),
            Method::Decayed { half_life_days } => format!("decayed:{half_life_days}"),
            Method::Profile { half_life_days } => format!("profile:{half_life_days}"),
        }
    }
}

/// A title about to launch, with the share of the site's title starts it is expected to get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchHint {
    pub title: String,
    /// Expected share (0..=1) of the site's title starts on launch day.
    pub expected_share: f64,
    /// The title's objects and sizes (from its catalog).
    pub objects: Vec<HintObject>,
}

/// One object of a hinted title.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintObject {
    pub key: String,
    pub bytes: u64,
}

/// The parts of an object key a forecast uses: `titles/{title}/{rendition}/{file}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyParts<'a> {
    pub title: &'a str,
    pub rendition: Option<&'a str>,
    /// Segment number (from 1); `None` for `init.mp4`, manifests and others.
    pub segment: Option<u32>,
}

/// Splits a key; `None` when it is not under `titles/`.
pub fn key_parts(key: &str) -> Option<KeyParts<'_>> {
    let rest = key.strip_prefix("titles/")?;
    let mut parts = rest.split('/');
    let title = parts.next().filter(|t| !t.is_empty())?;
    let (rendition, file) = match (parts.next(), parts.next(), parts.next()) {
        (Some(r), Some(f), None) => (Some(r), f),
        _ => (None, ""),
    };
    let segment = file.strip_suffix(".m4s").and_then(|n| n.parse().ok());
    Some(KeyParts { title, rendition, segment })
}

/// Merges several edges' reports into one day per UTC day (requests and
/// clients add up: a client of two edges counts twice, which is rare within a site).
pub fn merge_days(days: impl IntoIterator<Item = DailyPopularity>) -> Vec<DailyPopularity> {
    let mut merged: BTreeMap<u32, HashMap<String, ObjectDay>> = BTreeMap::new();
    let mut site = None;
    for d in days {
        site = site.or(d.site);
        let m = merged.entry(d.day).or_default();
        for o in d.objects {
            match m.get_mut(&o.key) {
                Some(e) => {
                    e.requests += o.requests;
                    e.clients += o.clients;
                    e.bytes = e.bytes.max(o.bytes);
                }
                None => {
                    m.insert(o.key.clone(), o);
                }
            }
        }
    }
    merged
        .into_iter()
        .map(|(day, m)| {
            let mut objects: Vec<ObjectDay> = m.into_values().collect();
            objects.sort_by(|a, b| a.key.cmp(&b.key));
            DailyPopularity { edge: String::new(), site: site.clone(), day, objects }
        })
        .collect()
}

/// Title starts in a day: requests for segment 1 of every rendition of the title.
fn starts_by_title(day: &DailyPopularity) -> HashMap<&str, u64> {
    let mut starts: HashMap<&str, u64> = HashMap::new();
    for o in &day.objects {
        if let Some(KeyParts { title, segment: Some(1), .. }) = key_parts(&o.key) {
            *starts.entry(title).or_default() += o.requests;
        }
    }
    starts
}

/// Forecast requests per object from `history` (days of one site, any
/// order); days after `target_day - 1` are ignored.
pub fn forecast_history(history: &[DailyPopularity], target_day: u32, method: Method) -> Vec<PlannedObject> {
    let mut days: Vec<&DailyPopularity> = history.iter().filter(|d| d.day < target_day).collect();
    days.sort_by_key(|d| d.day);
    let Some(last) = days.last() else {
        return Vec::new();
    };
    let use_days: Vec<&DailyPopularity> = match method {
        Method::LastDay => vec![last],
        Method::Decayed { .. } => days.clone(),
        Method::Profile { half_life_days } => return forecast_profile(&days, target_day, half_life_days),
    };
    // First day each title was seen at the site: averages start there.
    let mut first_seen: HashMap<&str, u32> = HashMap::new();
    for d in &use_days {
        for o in &d.objects {
            let t = key_parts(&o.key).map_or(o.key.as_str(), |p| p.title);
            first_seen.entry(t).and_modify(|f| *f = (*f).min(d.day)).or_insert(d.day);
        }
    }
    let weight = |day: u32| match method {
        Method::LastDay => 1.0,
        Method::Decayed { half_life_days } | Method::Profile { half_life_days } => {
            0.5f64.powf(f64::from(target_day - 1 - day) / half_life_days)
        }
    };
    let mut sums: HashMap<&str, (f64, u64)> = HashMap::new();
    for d in &use_days {
        let w = weight(d.day);
        for o in &d.objects {
            let e = sums.entry(o.key.as_str()).or_default();
            e.0 += w * o.requests as f64;
            e.1 = e.1.max(o.bytes);
        }
    }
    let mut out: Vec<PlannedObject> = sums
        .into_iter()
        .map(|(key, (sum, bytes))| {
            let title = key_parts(key).map_or(key, |p| p.title);
            let since = first_seen.get(title).copied().unwrap_or(last.day);
            let norm: f64 = use_days.iter().filter(|d| d.day >= since).map(|d| weight(d.day)).sum();
            PlannedObject { key: key.to_owned(), bytes, expected_requests: if norm > 0.0 { sum / norm } else { 0.0 } }
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Segment indexes up to this one get their own rendition mix; later ones share one.
const MIX_EXACT_UP_TO: u32 = 8;

fn mix_bucket(n: u32) -> u32 {
    n.min(MIX_EXACT_UP_TO + 1)
}

/// Pool-adjacent-violators: the closest non-increasing sequence (least squares, equal weights).
fn non_increasing(values: &[f64]) -> Vec<f64> {
    let mut blocks: Vec<(f64, usize)> = Vec::new();
    for &v in values {
        blocks.push((v, 1));
        while blocks.len() >= 2 {
            let (b, nb) = blocks[blocks.len() - 1];
            let (a, na) = blocks[blocks.len() - 2];
            if a >= b {
                break;
            }
            blocks.truncate(blocks.len() - 2);
            blocks.push(((a * na as f64 + b * nb as f64) / (na + nb) as f64, na + nb));
        }
    }
    blocks.into_iter().flat_map(|(v, n)| std::iter::repeat_n(v, n)).collect()
}

/// [`Method::Profile`] over `days` (sorted, before `target_day`).
fn forecast_profile(days: &[&DailyPopularity], target_day: u32, half_life_days: f64) -> Vec<PlannedObject> {
    let weight = |day: u32| 0.5f64.powf(f64::from(target_day - 1 - day) / half_life_days);
    // Title starts per day, each object's size, watch counts per (title, n) and the mix per (bucket, rendition).
    let mut starts: HashMap<&str, BTreeMap<u32, f64>> = HashMap::new();
    let mut first_seen: HashMap<&str, u32> = HashMap::new();
    let mut reached: HashMap<(&str, u32), f64> = HashMap::new();
    let mut mix: HashMap<(u32, &str), f64> = HashMap::new();
    let mut mix_total: HashMap<u32, f64> = HashMap::new();
    let mut sizes: HashMap<&str, u64> = HashMap::new();
    let mut others: HashMap<&str, f64> = HashMap::new();
    for d in days {
        for o in &d.objects {
            let size = sizes.entry(o.key.as_str()).or_default();
            *size = (*size).max(o.bytes);
            let Some(p) = key_parts(&o.key) else { continue };
            first_seen.entry(p.title).and_modify(|f| *f = (*f).min(d.day)).or_insert(d.day);
            let r = o.requests as f64;
            match (p.rendition, p.segment) {
                (Some(rend), Some(n)) => {
                    if n == 1 {
                        *starts.entry(p.title).or_default().entry(d.day).or_default() += r;
                    }
                    *reached.entry((p.title, n)).or_default() += r;
                    *mix.entry((mix_bucket(n), rend)).or_default() += r;
                    *mix_total.entry(mix_bucket(n)).or_default() += r;
                }
                _ => *others.entry(o.key.as_str()).or_default() += weight(d.day) * r,
            }
        }
    }
    // Level: decayed average of daily starts since the title's first day.
    let level = |title: &str| -> f64 {
        let since = first_seen.get(title).copied().unwrap_or(target_day - 1);
        let per_day = starts.get(title);
        let (mut sum, mut norm) = (0.0, 0.0);
        for d in days.iter().filter(|d| d.day >= since) {
            let w = weight(d.day);
            sum += w * per_day.and_then(|m| m.get(&d.day)).copied().unwrap_or(0.0);
            norm += w;
        }
        if norm > 0.0 {
            sum / norm
        } else {
            0.0
        }
    };
    // Viewing curve per title: share of all its starts that reached segment n, made non-increasing.
    let mut max_n: HashMap<&str, u32> = HashMap::new();
    for &(t, n) in reached.keys() {
        let m = max_n.entry(t).or_default();
        *m = (*m).max(n);
    }
    let mut curve: HashMap<&str, Vec<f64>> = HashMap::new();
    for (&t, &m) in &max_n {
        let total_starts: f64 = starts.get(t).map_or(0.0, |d| d.values().sum());
        if total_starts <= 0.0 {
            continue;
        }
        let raw: Vec<f64> = (1..=m).map(|n| reached.get(&(t, n)).copied().unwrap_or(0.0) / total_starts).collect();
        curve.insert(t, non_increasing(&raw));
    }
    let levels: HashMap<&str, f64> = curve.keys().map(|&t| (t, level(t))).collect();
    let norm: f64 = days.iter().map(|d| weight(d.day)).sum::<f64>().max(f64::MIN_POSITIVE);
    let mut out = Vec::with_capacity(sizes.len());
    for (&key, &bytes) in &sizes {
        let expected = match key_parts(key) {
            Some(KeyParts { title, rendition: Some(rend), segment: Some(n) }) if curve.contains_key(title) => {
                let reach = curve[title].get(n as usize - 1).copied().unwrap_or(0.0);
                let share = mix.get(&(mix_bucket(n), rend)).copied().unwrap_or(0.0)
                    / mix_total.get(&mix_bucket(n)).copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
                levels[title] * reach * share
            }
            Some(KeyParts { segment: Some(_), .. }) => 0.0,
            _ => others.get(key).copied().unwrap_or(0.0) / norm,
        };
        out.push(PlannedObject { key: key.to_owned(), bytes, expected_requests: expected });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Requests per title start for each (rendition, file) position, measured on a
/// site's day: how viewers pick renditions and how far they watch.
#[derive(Debug, Clone, Default)]
pub struct ViewingProfile {
    per_start: HashMap<(String, String), f64>,
    /// Title starts that day across the site.
    pub starts: f64,
}

impl ViewingProfile {
    /// Measures the profile on `day`.
    pub fn measure(day: &DailyPopularity) -> Self {
        let starts = starts_by_title(day);
        let total: u64 = starts.values().sum();
        let mut per_start: HashMap<(String, String), f64> = HashMap::new();
        if total == 0 {
            return Self::default();
        }
        for o in &day.objects {
            let Some(KeyParts { title, rendition: Some(r), .. }) = key_parts(&o.key) else {
                continue;
            };
            if !starts.contains_key(title) {
                continue;
            }
            let file = o.key.rsplit('/').next().unwrap_or_default();
            *per_start.entry((r.to_owned(), file.to_owned())).or_default() += o.requests as f64;
        }
        per_start.values_mut().for_each(|v| *v /= total as f64);
        Self { per_start, starts: total as f64 }
    }

    /// The profile of a site with no history yet, for a launch before its
    /// first viewer: one title start; every rendition's init segment is
    /// fetched once per start, and segment n by [`PRIOR_RETENTION`]`^(n-1)` of
    /// the starts (viewers leave as a title goes on, so the first minutes are
    /// worth most). Renditions weigh the same: the mix is unknown.
    pub fn prior() -> Self {
        Self { per_start: HashMap::new(), starts: 1.0 }
    }

    /// Expected requests for `key` per title start (0 when the position was never seen).
    pub fn per_start(&self, key: &str) -> f64 {
        let Some(KeyParts { rendition: Some(r), segment, .. }) = key_parts(key) else {
            return 0.0;
        };
        if self.per_start.is_empty() {
            return match segment {
                Some(n) => PRIOR_RETENTION.powf(f64::from(n.saturating_sub(1))),
                None => 1.0,
            };
        }
        let file = key.rsplit('/').next().unwrap_or_default();
        self.per_start.get(&(r.to_owned(), file.to_owned())).copied().unwrap_or(0.0)
    }
}

/// Share of viewers still watching from one segment to the next, assumed
/// where a site has no history ([`ViewingProfile::prior`]).
pub const PRIOR_RETENTION: f64 = 0.98;

/// Titles whose share of title starts elsewhere rose fast on the last day
/// (at least `factor` times the day before, or new): hints with their share
/// elsewhere. `objects` are the sizes seen elsewhere.
pub fn rising_elsewhere(other_sites: &[Vec<DailyPopularity>], factor: f64) -> Vec<LaunchHint> {
    let mut hints: BTreeMap<String, LaunchHint> = BTreeMap::new();
    for history in other_sites {
        let mut days: Vec<&DailyPopularity> = history.iter().collect();
        days.sort_by_key(|d| d.day);
        let Some(last) = days.last() else { continue };
        let prev = days.len().checked_sub(2).map(|i| days[i]);
        let share = |d: &DailyPopularity| {
            let s = starts_by_title(d);
            let total: u64 = s.values().sum::<u64>().max(1);
            s.into_iter().map(|(t, n)| (t.to_owned(), n as f64 / total as f64)).collect::<HashMap<String, f64>>()
        };
        let now = share(last);
        let before = prev.map(share).unwrap_or_default();
        for (title, s) in now {
            let b = before.get(&title).copied().unwrap_or(0.0);
            if s > 0.0 && s >= factor * b {
                let objects: Vec<HintObject> = last
                    .objects
                    .iter()
                    .filter(|o| key_parts(&o.key).is_some_and(|p| p.title == title))
                    .map(|o| HintObject { key: o.key.clone(), bytes: o.bytes })
                    .collect();
                let h = hints.entry(title.clone()).or_insert(LaunchHint { title, expected_share: 0.0, objects });
                h.expected_share = h.expected_share.max(s);
            }
        }
    }
    hints.into_values().collect()
}

/// The forecast with hints applied: each hinted object gets at least
/// `expected_share × site starts × profile` requests.
pub fn apply_hints(
    mut forecast: Vec<PlannedObject>,
    profile: &ViewingProfile,
    hints: &[LaunchHint],
) -> Vec<PlannedObject> {
    let mut index: HashMap<String, usize> = forecast.iter().enumerate().map(|(i, o)| (o.key.clone(), i)).collect();
    for hint in hints {
        let share = hint.expected_share.clamp(0.0, 1.0);
        for o in &hint.objects {
            let expected = share * profile.starts * profile.per_start(&o.key);
            if expected.is_nan() || expected <= 0.0 {
                continue;
            }
            match index.get(&o.key) {
                Some(&i) => {
                    let f = &mut forecast[i];
                    f.expected_requests = f.expected_requests.max(expected);
                    f.bytes = f.bytes.max(o.bytes);
                }
                None => {
                    index.insert(o.key.clone(), forecast.len());
                    forecast.push(PlannedObject { key: o.key.clone(), bytes: o.bytes, expected_requests: expected });
                }
            }
        }
    }
    forecast
}

/// The whole forecast for a site: history by `method`, then launch hints and
/// titles rising at other sites (only where they raise the forecast).
pub fn forecast_site(
    history: &[DailyPopularity],
    target_day: u32,
    method: Method,
    hints: &[LaunchHint],
    rising: &[LaunchHint],
) -> Vec<PlannedObject> {
    let base = forecast_history(history, target_day, method);
    // A site with no history yet still gets its launches, by the prior profile.
    let profile = match history.iter().filter(|d| d.day < target_day).max_by_key(|d| d.day) {
        Some(last) => ViewingProfile::measure(last),
        None => ViewingProfile::prior(),
    };
    let all: Vec<LaunchHint> = hints.iter().chain(rising).cloned().collect();
    apply_hints(base, &profile, &all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(day: u32, objects: &[(&str, u64)]) -> DailyPopularity {
        DailyPopularity {
            edge: String::new(),
            site: None,
            day,
            objects: objects
                .iter()
                .map(|(k, r)| ObjectDay { key: (*k).into(), requests: *r, bytes: 100, clients: *r })
                .collect(),
        }
    }

    fn expected(f: &[PlannedObject], key: &str) -> f64 {
        f.iter().find(|o| o.key == key).map_or(0.0, |o| o.expected_requests)
    }

    #[test]
    fn parses_methods_and_refuses_nonsense() {
        assert_eq!(Method::parse("last-day").unwrap(), Method::LastDay);
        assert_eq!(Method::parse("decayed:2.5").unwrap(), Method::Decayed { half_life_days: 2.5 });
        assert!(Method::parse("decayed:0").is_err());
        assert!(Method::parse("decayed:x").is_err());
        assert!(Method::parse("mean").unwrap_err().contains("last-day"));
    }

    #[test]
    fn key_parts_find_title_rendition_and_segment() {
        let p = key_parts("titles/t1/v720/12.m4s").unwrap();
        assert_eq!((p.title, p.rendition, p.segment), ("t1", Some("v720"), Some(12)));
        assert_eq!(key_parts("titles/t1/v720/init.mp4").unwrap().segment, None);
        assert_eq!(key_parts("titles/t1/hls/master.m3u8").unwrap().title, "t1");
        assert!(key_parts("other/x").is_none());
    }

    #[test]
    fn last_day_copies_the_last_day_and_decay_weighs_recent_days_more() {
        let h = vec![day(10, &[("titles/a/v/1.m4s", 100)]), day(11, &[("titles/a/v/1.m4s", 10)])];
        assert_eq!(expected(&forecast_history(&h, 12, Method::LastDay), "titles/a/v/1.m4s"), 10.0);
        let d = expected(&forecast_history(&h, 12, Method::Decayed { half_life_days: 1.0 }), "titles/a/v/1.m4s");
        // weights 0.5 (day 10) and 1 (day 11): (50 + 10) / 1.5 = 40
        assert!((d - 40.0).abs() < 1e-9, "{d}");
        // Days at or after the target day are not history.
        assert!(forecast_history(&h, 11, Method::LastDay).iter().all(|o| o.expected_requests == 100.0));
    }

    #[test]
    fn the_profile_forecast_smooths_a_title_curve_and_follows_its_level() {
        // Day 1: 100 starts, segment 2 reached by 48, segment 3 by 60 (noise above 2's 48).
        // Day 2: 200 starts at the same shape. Two renditions always split 3:1.
        let mut objs = Vec::new();
        for (n, reached) in [(1u32, 100u64), (2, 48), (3, 60)] {
            objs.push((format!("titles/a/hi/{n}.m4s"), reached * 3 / 4));
            objs.push((format!("titles/a/lo/{n}.m4s"), reached / 4));
        }
        let as_refs = |scale: u64| -> Vec<(String, u64)> { objs.iter().map(|(k, r)| (k.clone(), r * scale)).collect() };
        let d1: Vec<(String, u64)> = as_refs(1);
        let d2: Vec<(String, u64)> = as_refs(2);
        let day_of = |d: u32, v: &[(String, u64)]| {
            let refs: Vec<(&str, u64)> = v.iter().map(|(k, r)| (k.as_str(), *r)).collect();
            day(d, &refs)
        };
        let h = vec![day_of(1, &d1), day_of(2, &d2)];
        let f = forecast_history(&h, 3, Method::Profile { half_life_days: 1.0 });
        // Level: (0.5 x 100 + 1 x 200) / 1.5 = 166.7 starts; segment 1 on hi gets 3/4 of them.
        let s1 = expected(&f, "titles/a/hi/1.m4s");
        assert!((s1 - 166.666 * 0.75).abs() < 0.1, "{s1}");
        // Segments 2 and 3 share one reach (54%): the curve never rises.
        let (s2, s3) = (expected(&f, "titles/a/hi/2.m4s"), expected(&f, "titles/a/hi/3.m4s"));
        assert!((s2 - s3).abs() < 1e-9 && s2 < s1, "{s2} {s3}");
        assert!(expected(&f, "titles/a/lo/2.m4s") < s2);
        assert_eq!(non_increasing(&[3.0, 1.0, 2.0, 0.5]), vec![3.0, 1.5, 1.5, 0.5]);
        assert_eq!(Method::parse("profile:2").unwrap(), Method::Profile { half_life_days: 2.0 });
        assert!(Method::parse("profile:-1").is_err());
    }

    #[test]
    fn a_new_title_is_not_diluted_by_days_before_it_existed() {
        let h = vec![day(10, &[("titles/old/v/1.m4s", 10)]), day(11, &[("titles/new/v/1.m4s", 80)])];
        let f = forecast_history(&h, 12, Method::Decayed { half_life_days: 1.0 });
        assert_eq!(expected(&f, "titles/new/v/1.m4s"), 80.0);
        // The old title had no requests on day 11: its average falls.
        assert!(expected(&f, "titles/old/v/1.m4s") < 10.0);
    }

    #[test]
    fn hints_plan_a_launch_title_with_the_site_profile() {
        // 100 starts; segment 1 watched by all, segment 2 by half.
        let h = vec![day(5, &[("titles/a/v/1.m4s", 100), ("titles/a/v/2.m4s", 50), ("titles/a/v/init.mp4", 100)])];
        let hint = LaunchHint {
            title: "new".into(),
            expected_share: 0.5,
            objects: vec![
                HintObject { key: "titles/new/v/1.m4s".into(), bytes: 7 },
                HintObject { key: "titles/new/v/2.m4s".into(), bytes: 7 },
                HintObject { key: "titles/new/v/9.m4s".into(), bytes: 7 },
            ],
        };
        let f = forecast_site(&h, 6, Method::LastDay, &[hint], &[]);
        assert_eq!(expected(&f, "titles/new/v/1.m4s"), 50.0);
        assert_eq!(expected(&f, "titles/new/v/2.m4s"), 25.0);
        assert!(f.iter().all(|o| o.key != "titles/new/v/9.m4s"), "never-watched positions are not planned");
        assert_eq!(expected(&f, "titles/a/v/1.m4s"), 100.0);
    }

    #[test]
    fn a_site_without_history_plans_its_launches_by_the_prior_profile() {
        let hint = LaunchHint {
            title: "new".into(),
            expected_share: 1.0,
            objects: vec![
                HintObject { key: "titles/new/v/init.mp4".into(), bytes: 1 },
                HintObject { key: "titles/new/v/1.m4s".into(), bytes: 7 },
                HintObject { key: "titles/new/v/30.m4s".into(), bytes: 7 },
                HintObject { key: "titles/new/hls/master.m3u8".into(), bytes: 1 },
            ],
        };
        let f = forecast_site(&[], 1, Method::LastDay, &[hint], &[]);
        assert_eq!(f.len(), 4, "every hinted object is planned: {f:?}");
        assert_eq!(expected(&f, "titles/new/v/init.mp4"), 1.0);
        assert_eq!(expected(&f, "titles/new/v/1.m4s"), 1.0);
        let late = expected(&f, "titles/new/v/30.m4s");
        assert!((late - PRIOR_RETENTION.powi(29)).abs() < 1e-12 && late < 1.0, "{late}");
        // Without hints there is nothing to plan.
        assert!(forecast_site(&[], 1, Method::LastDay, &[], &[]).is_empty());
    }

    #[test]
    fn titles_rising_elsewhere_become_hints() {
        let other = vec![
            day(1, &[("titles/a/v/1.m4s", 100), ("titles/b/v/1.m4s", 10)]),
            day(2, &[("titles/a/v/1.m4s", 50), ("titles/b/v/1.m4s", 50), ("titles/c/v/1.m4s", 100)]),
        ];
        let rising = rising_elsewhere(&[other], 2.0);
        let titles: Vec<&str> = rising.iter().map(|h| h.title.as_str()).collect();
        assert_eq!(titles, vec!["b", "c"]);
        assert_eq!(rising[1].expected_share, 0.5);
    }

    #[test]
    fn aggregates_rows_per_day_with_distinct_clients() {
        let mut agg = DayAggregator::default();
        for (ts, ip) in [(1, "10.0.0.1"), (2, "10.0.0.1"), (3, "10.0.0.2"), (DAY_MS + 1, "10.0.0.1")] {
            agg.add(&vod::log::RequestLogRow { ts_ms: ts, client_ip: ip.parse().unwrap(), key: "k".into(), bytes: 9 });
        }
        let days = agg.finish("e1", Some("s1"));
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].objects[0], ObjectDay { key: "k".into(), requests: 3, bytes: 9, clients: 2 });
        assert_eq!(days[1].day, 1);
        let merged = merge_days(days.clone().into_iter().chain(days));
        assert_eq!(merged[0].objects[0].requests, 6);
    }
}
