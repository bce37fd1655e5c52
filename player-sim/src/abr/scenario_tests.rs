//! Each rule on hand-made situations: empty buffer, full buffer, throughput
//! collapse, abandonment, as the papers (and Sabre's code) define them.

use super::*;

/// Sabre's bbb ladder, 3 s segments, 100 segments of nominal size.
const LADDER: [f64; 10] = [230.0, 331.0, 477.0, 688.0, 991.0, 1427.0, 2056.0, 2962.0, 5027.0, 6000.0];
const TOP: usize = LADDER.len() - 1;

fn ctx(index: usize, buffer_ms: f64, tput: Option<f64>) -> AbrContext<'static> {
    AbrContext {
        segment_index: index,
        segment_count: 100,
        segment_duration_ms: 3000.0,
        buffer_level_ms: buffer_ms,
        bitrates_kbps: &LADDER,
        estimate: tput.map(|t| ThroughputEstimate { throughput_kbps: t, latency_ms: 100.0 }),
        next_sizes_bits: None,
        all_sizes_bits: None,
    }
}

/// Tell a rule that `rung` of segment `index` arrived in `time_ms` leaving `level` ms of buffer.
fn arrived(abr: &mut dyn Abr, index: usize, rung: usize, time_ms: f64, level: f64) {
    let size = LADDER[rung] * 3000.0;
    abr.report_download(&DownloadReport {
        segment_index: index,
        rung,
        size_bits: size,
        downloaded_bits: size,
        time_ms,
        time_to_first_bit_ms: 100.0,
        abandoned_to: None,
        buffer_level_ms: level,
    });
}

#[test]
fn every_online_rule_starts_at_the_lowest_rung_with_nothing_known() {
    for kind in AbrKind::ALL {
        let mut abr = kind.build(&AbrConfig::default());
        assert_eq!(abr.choose(&ctx(0, 0.0, None)).rung, 0, "{kind}");
    }
}

#[test]
fn bolae_starts_from_throughput_then_climbs_with_the_buffer() {
    let mut b = BolaE::new(&AbrConfig::default());
    // Startup: the rung the throughput sustains, whatever the (empty) buffer says.
    let first = b.choose(&ctx(1, 3000.0, Some(1400.0))).rung;
    assert_eq!(first, rung_for_throughput(&ctx(1, 3000.0, Some(1400.0)), 1400.0));
    assert_eq!(first, 4, "991 kbps fits 1400 kbps after 100 ms latency; 1427 does not");
    arrived(&mut b, 1, first, 2000.0, 4000.0);
    // Full buffer, ample throughput: one rung above the sustainable one at most, up to the top over time.
    let mut rung = first;
    for i in 2..12 {
        rung = b.choose(&ctx(i, 22_000.0, Some(50_000.0))).rung;
        arrived(&mut b, i, rung, 500.0, 22_000.0);
    }
    assert_eq!(rung, TOP);
}

#[test]
fn bolae_insufficient_buffer_rule_drops_on_collapse() {
    let mut b = BolaE::new(&AbrConfig::default());
    b.choose(&ctx(1, 3000.0, Some(50_000.0)));
    arrived(&mut b, 1, TOP, 500.0, 20_000.0);
    // Throughput collapses to 300 kbps with 2 s of buffer: only what 2 s can fetch.
    let r = b.choose(&ctx(2, 2000.0, Some(300.0))).rung;
    assert_eq!(r, 0, "{r}");
}

#[test]
fn bolae_abandons_a_hopeless_download_only_when_the_buffer_is_low() {
    let mut b = BolaE::new(&AbrConfig::default());
    let c = ctx(10, 10_000.0, Some(6000.0));
    b.choose(&c);
    let p = DownloadProgress {
        rung: TOP,
        size_bits: 18_000_000.0,
        downloaded_bits: 200_000.0,
        elapsed_ms: 2100.0,
        time_to_first_bit_ms: 100.0,
    };
    assert!(b.check_abandon(&c, &p, 1000.0).is_some_and(|q| q < TOP));
    let done = DownloadProgress { downloaded_bits: 17_900_000.0, ..p };
    assert_eq!(b.check_abandon(&c, &done, 1000.0), None, "almost done: finishing is cheaper");
}

#[test]
fn dynamic_uses_throughput_when_low_and_bola_when_high() {
    let mut d = Dynamic::new(&AbrConfig::default());
    let mut t = ThroughputRule::new();
    // Low buffer: the throughput rule's decision.
    let c = ctx(20, 5000.0, Some(2500.0));
    assert_eq!(d.choose(&c).rung, t.choose(&c).rung);
    // High buffer and BOLA at least as high: BOLA's.
    let mut d = Dynamic::new(&AbrConfig::default());
    let mut bola = Bola::new(&AbrConfig::default());
    let c = ctx(20, 21_000.0, Some(2500.0));
    assert_eq!(d.choose(&c).rung, bola.choose(&c).rung);
    assert!(d.is_bola);
    // Abandonment is always the throughput rule's.
    let p = DownloadProgress {
        rung: TOP,
        size_bits: 18_000_000.0,
        downloaded_bits: 100_000.0,
        elapsed_ms: 1100.0,
        time_to_first_bit_ms: 100.0,
    };
    assert_eq!(d.check_abandon(&c, &p, 9000.0), ThroughputRule::new().check_abandon(&c, &p, 9000.0));
}

#[test]
fn dynamicdash_switches_at_5_and_10_seconds() {
    let mut d = DynamicDash::new(&AbrConfig::default());
    d.choose(&ctx(5, 9000.0, Some(2000.0)));
    assert!(!d.is_bola, "not above 10 s yet");
    d.choose(&ctx(6, 11_000.0, Some(2000.0)));
    assert!(d.is_bola);
    d.choose(&ctx(7, 6000.0, Some(2000.0)));
    assert!(d.is_bola, "hysteresis: stays until below 5 s");
    d.choose(&ctx(8, 4000.0, Some(2000.0)));
    assert!(!d.is_bola);
}

#[test]
fn bba_maps_buffer_to_rate_with_hysteresis() {
    let cfg = AbrConfig::default();
    let mut b = Bba::new(&cfg);
    // Inside the reservoir: lowest, whatever the throughput.
    assert_eq!(b.choose(&ctx(5, 4000.0, Some(1e6))).rung, 0);
    // Past reservoir + cushion: highest.
    assert_eq!(b.choose(&ctx(6, 15_500.0, Some(1.0))).rung, TOP);
    // f(10 s) = 230 + 5770 · 5/10 = 3115: from the top, the lowest rung above f is 5027.
    assert_eq!(b.choose(&ctx(7, 10_000.0, None)).rung, 8);
    // f(9.9 s) = 3057 lies between 2962 and 5027 (the neighbours of 8): keep the rung.
    assert_eq!(b.choose(&ctx(8, 9_900.0, None)).rung, 8);
    // Going up from the bottom, f must pass the next rung: highest rung below f.
    let mut b = Bba::new(&cfg);
    assert_eq!(b.choose(&ctx(5, 4000.0, None)).rung, 0);
    assert_eq!(b.choose(&ctx(6, 10_000.0, None)).rung, 7, "2962 < 3115 ≤ 5027");
}

#[test]
fn robustmpc_follows_throughput_and_buffer() {
    let mut m = RobustMpc::new();
    arrived(&mut m, 0, 0, 100.0, 3000.0);
    // 690 kbps sample (size/time), no error yet: with ample buffer it may
    // aim above it, with an empty one it must not stall.
    let low = m.choose(&ctx(1, 0.0, Some(690.0))).rung;
    assert!(low <= 2, "{low}");
    // Fast, steady samples and a full buffer: the top rung.
    let mut m = RobustMpc::new();
    for i in 0..5 {
        arrived(&mut m, i, TOP, 1000.0, 20_000.0);
        m.choose(&ctx(i + 1, 20_000.0, Some(18_000.0)));
    }
    assert_eq!(m.choose(&ctx(6, 20_000.0, Some(18_000.0))).rung, TOP);
    // Throughput collapses to a tenth: the prediction error makes it drop hard.
    arrived(&mut m, 6, TOP, 10_000.0, 13_000.0);
    let after = m.choose(&ctx(7, 13_000.0, Some(1800.0))).rung;
    assert!(after <= 5, "{after}");
}

#[test]
fn robustmpc_search_matches_exhaustive_enumeration() {
    // Five positions, four rungs: compare with brute force over all 1024 sequences,
    // for RobustMPC's objective and for `ours`' (heavier switch cost, a buffer
    // target at the horizon, a cap on the buffer).
    let mbps = [0.3, 0.75, 1.5, 4.0];
    let mut download_ms = [[0.0; mpc::MAX_RUNGS]; 5];
    for (j, row) in download_ms.iter_mut().enumerate() {
        for q in 0..4 {
            row[q] = mbps[q] * 2000.0 / (0.6 + 0.5 * ((j * 3) % 4) as f64);
        }
    }
    let objectives = [
        mpc::Objective::LINEAR_QOE,
        mpc::Objective { switch_weight: 3.0, ..mpc::Objective::LINEAR_QOE },
        mpc::Objective { target_ms: 6000.0, shortfall_weight: 1.0, ..mpc::Objective::LINEAR_QOE },
        mpc::Objective { switch_weight: 2.0, target_ms: 9000.0, shortfall_weight: 3.0, ..mpc::Objective::LINEAR_QOE },
        // A shortfall dearer than stalling.
        mpc::Objective { target_ms: 7000.0, shortfall_weight: 6.0, ..mpc::Objective::LINEAR_QOE },
    ];
    for o in objectives {
        for cap in [f64::INFINITY, 5000.0] {
            for (buffer, last) in [(0.0, 0), (4000.0, 1), (9000.0, 3), (1500.0, 2)] {
                let mut best = (f64::NEG_INFINITY, 0);
                for code in 0..1024usize {
                    let seq: Vec<usize> = (0..5).map(|j| (code >> (2 * (4 - j))) & 3).collect();
                    let (mut b, mut prev, mut r) = (buffer, last, 0.0);
                    for (j, &q) in seq.iter().enumerate() {
                        let dl = download_ms[j][q];
                        b = f64::min(b, cap);
                        r += mbps[q]
                            - o.penalty * (dl - b).max(0.0) / 1000.0
                            - o.switch_weight * (mbps[q] - mbps[prev]).abs();
                        b = (b - dl).max(0.0) + 2000.0;
                        prev = q;
                    }
                    r -= o.shortfall_weight * (o.target_ms - b).max(0.0) / 1000.0;
                    if r >= best.0 {
                        best = (r, seq[0]);
                    }
                }
                let got = mpc::best_first_rung(&download_ms, &mbps, 2000.0, buffer, last, &o, cap);
                assert_eq!(got, best.1, "{o:?} cap {cap} buffer {buffer} last {last}");
            }
        }
    }
}

#[test]
fn ours_climbs_on_a_full_buffer_and_drops_on_collapse() {
    let cfg = AbrConfig::default();
    let mut o = Ours::new(&cfg);
    assert_eq!(o.choose(&ctx(1, 0.0, Some(200.0))).rung, 0, "empty buffer, slow link: lowest");
    let mut o = Ours::new(&cfg);
    let mut rung = 0;
    for i in 1..8 {
        rung = o.choose(&ctx(i, 22_000.0, Some(40_000.0))).rung;
        arrived(&mut o, i, rung, 500.0, 22_000.0);
    }
    assert_eq!(rung, TOP);
    let r = o.choose(&ctx(9, 4000.0, Some(400.0))).rung;
    assert!(r <= 1, "{r}");
}

#[test]
fn ours_builds_buffer_below_its_target_and_spends_it_above() {
    let cfg = AbrConfig::default();
    let at = |params: OursParams, buffer_ms: f64| {
        let mut o = Ours::with_params(&cfg, params);
        o.choose(&ctx(1, 3000.0, Some(1500.0)));
        // Settled on rung 5 (1427 kbps), which 1500 kbps just sustains.
        arrived(&mut o, 1, 5, 2950.0, buffer_ms);
        o.choose(&ctx(2, buffer_ms, Some(1500.0))).rung
    };
    let default = OursParams::default();
    let no_target = OursParams { shortfall_weight: 0.0, ..default };
    // A full buffer: spend some of it one rung above what the link sustains;
    // two rungs above would end the lookahead far below the target.
    assert_eq!(at(default, 22_000.0), 6);
    // 8 s, short of the 12 s target: step down to rebuild the buffer,
    // where the same planner without the target spends it.
    let low = at(default, 8_000.0);
    let spend = at(no_target, 8_000.0);
    assert!(low < 5, "{low}");
    assert!(low < spend, "{low} vs {spend}");
}

#[test]
fn ours_does_not_refetch_what_it_just_abandoned() {
    let cfg = AbrConfig::default();
    let mut o = Ours::new(&cfg);
    let c = ctx(10, 15_000.0, Some(8000.0));
    let first = o.choose(&c).rung;
    o.report_download(&DownloadReport {
        segment_index: 10,
        rung: first,
        size_bits: LADDER[first] * 3000.0,
        downloaded_bits: 100_000.0,
        time_ms: 2100.0,
        time_to_first_bit_ms: 100.0,
        abandoned_to: Some(1),
        buffer_level_ms: 13_000.0,
    });
    assert!(o.choose(&ctx(10, 13_000.0, Some(8000.0))).rung <= 1);
}

#[test]
fn planned_replays_its_plan() {
    let mut p = Planned::new(vec![0, 3, 2]);
    assert_eq!(p.choose(&ctx(1, 0.0, None)).rung, 3);
    assert_eq!(p.choose(&ctx(2, 0.0, None)).rung, 2);
    assert_eq!(p.choose(&ctx(7, 0.0, None)).rung, 0, "past the plan: lowest");
}
