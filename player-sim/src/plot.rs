//! CDF plots as SVG, drawn with `plotters`: one step curve per rule over its
//! per-session values, labelled axes, a legend.

use plotters::prelude::*;

const SIZE: (u32, u32) = (760, 460);
/// Matplotlib's tab10: distinct on white, none too pale.
const COLORS: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// A plot that could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the plot {title:?}: {message}")]
pub struct PlotError {
    title: String,
    message: String,
}

/// An SVG of the empirical CDF of each series' finite values (series with none are left out).
pub fn cdf_svg(title: &str, x_label: &str, series: &[(String, Vec<f64>)]) -> Result<String, PlotError> {
    let fail = |e: &dyn std::fmt::Display| PlotError { title: title.to_owned(), message: e.to_string() };
    let sorted: Vec<(&str, Vec<f64>)> = series
        .iter()
        .map(|(name, values)| {
            let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            (name.as_str(), v)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let (mut lo, mut hi) = sorted
        .iter()
        .flat_map(|(_, v)| [v[0], v[v.len() - 1]])
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(lo..hi, 0.0..1.0)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("fraction of sessions")
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| fail(&e))?;
        for (k, (name, v)) in sorted.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let n = v.len() as f64;
            // A step per session: up by 1/n at each value.
            let mut points = Vec::with_capacity(2 * v.len() + 2);
            points.push((v[0], 0.0));
            for (i, &x) in v.iter().enumerate() {
                points.push((x, i as f64 / n));
                points.push((x, (i + 1) as f64 / n));
            }
            points.push((hi, 1.0));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            // A CDF rises from lower left to upper right: the upper left stays free.
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well-formed XML with an `<svg>` root: every element closed, in order.
    fn assert_valid_svg(svg: &str) {
        let mut open: Vec<String> = Vec::new();
        let mut roots = 0;
        for token in xmlparser::Tokenizer::from(svg) {
            match token.unwrap_or_else(|e| panic!("not XML: {e}\n{svg}")) {
                xmlparser::Token::ElementStart { local, .. } => {
                    if open.is_empty() {
                        roots += 1;
                        assert_eq!(local.as_str(), "svg", "root element");
                    }
                    open.push(local.as_str().to_owned());
                }
                xmlparser::Token::ElementEnd { end, .. } => match end {
                    xmlparser::ElementEnd::Open => {}
                    xmlparser::ElementEnd::Empty => {
                        open.pop();
                    }
                    xmlparser::ElementEnd::Close(_, name) => {
                        assert_eq!(open.pop().as_deref(), Some(name.as_str()), "mismatched </{}>", name.as_str());
                    }
                },
                _ => {}
            }
        }
        assert!(open.is_empty(), "unclosed: {open:?}");
        assert_eq!(roots, 1);
    }

    /// The text nodes, trimmed, entities as written.
    fn texts(svg: &str) -> Vec<String> {
        xmlparser::Tokenizer::from(svg)
            .filter_map(|t| match t {
                Ok(xmlparser::Token::Text { text }) => Some(text.as_str().trim().to_owned()),
                _ => None,
            })
            .filter(|t| !t.is_empty())
            .collect()
    }

    #[test]
    fn draws_a_valid_svg_with_a_curve_and_a_legend_entry_per_series() {
        let svg = cdf_svg(
            "bitrate <CDF>",
            "kbps",
            &[
                ("a".into(), vec![3.0, 1.0, 2.0]),
                ("b&c".into(), vec![f64::NAN, 5.0]),
                ("empty".into(), vec![]),
                ("nan only".into(), vec![f64::NAN]),
            ],
        )
        .unwrap();
        assert_valid_svg(&svg);
        let texts = texts(&svg);
        for wanted in ["bitrate &lt;CDF&gt;", "kbps", "a", "b&amp;c"] {
            assert!(texts.iter().any(|t| t == wanted), "{wanted} in {texts:?}");
        }
        assert!(!texts.iter().any(|t| t == "empty" || t == "nan only"), "no entry for series without values");
        // One curve (width 2) and one legend sample (width 3) per series with values.
        assert_eq!(svg.matches(r#"stroke-width="2""#).count(), 2, "{svg}");
        assert_eq!(svg.matches(r#"stroke-width="3""#).count(), 2, "{svg}");
        assert!(!svg.contains("NaN"), "{svg}");
    }

    #[test]
    fn no_values_at_all_still_draws_axes() {
        let svg = cdf_svg("nothing", "x", &[]).unwrap();
        assert_valid_svg(&svg);
        assert!(svg.contains("fraction of sessions"));
    }
}
