//! CDF plots as standalone SVG (no plotting dependency): one step curve per
//! rule over its per-session values, a labelled x axis, a legend.

use std::fmt::Write as _;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An SVG of the empirical CDF of each series' finite values.
pub fn cdf_svg(title: &str, x_label: &str, series: &[(String, Vec<f64>)]) -> String {
    let finite = |v: &Vec<f64>| v.iter().copied().filter(|x| x.is_finite()).collect::<Vec<f64>>();
    let all: Vec<f64> = series.iter().flat_map(|(_, v)| finite(v)).collect();
    let (mut lo, mut hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + (v - lo) / (hi - lo) * plot_w;
    let y = |p: f64| TOP + (1.0 - p) * plot_h;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ =
        write!(out, r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#, WIDTH / 2.0, escape(title));
    // Axes, ticks and grid.
    let _ =
        write!(out, r##"<path d="M{LEFT},{TOP} V{} H{}" fill="none" stroke="#333"/>"##, TOP + plot_h, LEFT + plot_w);
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let (vx, py) = (lo + f * (hi - lo), y(f));
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{py}" y2="{py}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{f:.1}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0
        );
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x(vx),
            TOP + plot_h + 18.0,
            format_tick(vx)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        escape(x_label)
    );
    let _ = write!(
        out,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">fraction of sessions</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (k, (name, values)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let mut v = finite(values);
        v.sort_by(f64::total_cmp);
        if !v.is_empty() {
            let n = v.len() as f64;
            let mut d = format!("M{:.1},{:.1}", x(v[0]), y(0.0));
            for (i, &val) in v.iter().enumerate() {
                let _ = write!(d, " H{:.1} V{:.1}", x(val), y((i + 1) as f64 / n));
            }
            let _ = write!(d, " H{:.1}", x(hi));
            let _ = write!(out, r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.6"/>"#);
        }
        let ly = TOP + 14.0 + 18.0 * k as f64;
        let lx = WIDTH - RIGHT + 16.0;
        let _ = write!(
            out,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            escape(name)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn format_tick(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_curve_and_one_legend_entry_per_series() {
        let svg = cdf_svg(
            "bitrate <CDF>",
            "kbps",
            &[("a".into(), vec![3.0, 1.0, 2.0]), ("b&c".into(), vec![f64::NAN, 5.0]), ("empty".into(), vec![])],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("stroke-width=\"1.6\"").count(), 2, "no curve for an empty series");
        assert_eq!(svg.matches("stroke-width=\"3\"").count(), 3);
        assert!(svg.contains("bitrate &lt;CDF&gt;") && svg.contains("b&amp;c"));
        assert!(!svg.contains("NaN"), "{svg}");
    }
}
