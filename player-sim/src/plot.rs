//! CDF plots as SVG or PNG, drawn with `plotters`: one step curve per rule
//! over its per-session values, labelled axes, a legend.
//!
//! Text is laid out (both formats) and rasterised (PNG) with `ab_glyph` from a
//! TrueType font read once at run time: DejaVu Sans from Debian's
//! `fonts-dejavu-core` (`cargo xtask deps` installs it), or the file named by
//! `PLAYER_SIM_FONT`.

use std::path::PathBuf;
use std::sync::OnceLock;

use plotters::backend::RGBPixel;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Width and height of every plot, pixels.
pub const SIZE: (u32, u32) = (760, 460);
/// The font family the charts ask for; the loaded font is registered under it.
const FAMILY: &str = "sans-serif";
/// Where Debian's `fonts-dejavu-core` puts DejaVu Sans.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
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

/// The font file used for plot text: `PLAYER_SIM_FONT` if set, else [`DEFAULT_FONT`].
pub fn font_path() -> PathBuf {
    std::env::var_os("PLAYER_SIM_FONT").map_or_else(|| PathBuf::from(DEFAULT_FONT), PathBuf::from)
}

/// Read and register the plot font once per process (every later call returns the first outcome), so a
/// missing font can be reported before any work is done.
pub fn load_font() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = font_path();
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "no font for the plot text: {}: {e} (install Debian's fonts-dejavu-core, \
                     or set PLAYER_SIM_FONT to a TrueType font file)",
                    path.display()
                )
            })?;
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a TrueType/OpenType font", path.display()))
        })
        .clone()
}

/// Each series' finite values sorted, series without any left out, and the x range they span.
fn prepare(series: &[(String, Vec<f64>)]) -> (Vec<(&str, Vec<f64>)>, f64, f64) {
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
    (sorted, lo, hi)
}

/// Draw the CDF chart on `root` (any backend) and present it.
fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<f64>)],
) -> Result<(), PlotError> {
    let fail = |e: &dyn std::fmt::Display| PlotError { title: title.to_owned(), message: e.to_string() };
    load_font().map_err(|e| fail(&e))?;
    let (sorted, lo, hi) = prepare(series);
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 18))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(lo..hi, 0.0..1.0)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("fraction of sessions")
        .label_style((FAMILY, 12))
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
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

/// An SVG of the empirical CDF of each series' finite values (series with none are left out).
pub fn cdf_svg(title: &str, x_label: &str, series: &[(String, Vec<f64>)]) -> Result<String, PlotError> {
    let mut svg = String::new();
    draw(SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(), title, x_label, series)?;
    Ok(svg)
}

/// The same chart as [`cdf_svg`], as a PNG file's bytes (8-bit RGB, [`SIZE`] pixels).
pub fn cdf_png(title: &str, x_label: &str, series: &[(String, Vec<f64>)]) -> Result<Vec<u8>, PlotError> {
    let fail = |e: &dyn std::fmt::Display| PlotError { title: title.to_owned(), message: e.to_string() };
    let (w, h) = SIZE;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut rgb, SIZE).map_err(|e| fail(&e))?;
        draw(backend.into_drawing_area(), title, x_label, series)?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Flat colours and straight lines: the adaptive filter and best deflate make it several times smaller.
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header().map_err(|e| fail(&e))?;
    writer.write_image_data(&rgb).map_err(|e| fail(&e))?;
    writer.finish().map_err(|e| fail(&e))?;
    Ok(out)
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

    /// Decode a PNG: (width, height, RGB bytes).
    fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(bytes).read_info().expect("a PNG header");
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).expect("PNG image data");
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn draws_a_png_with_curves_text_and_a_white_background() {
        let series = [("a".to_owned(), vec![3.0, 1.0, 2.0]), ("b".to_owned(), vec![1.5, 4.0])];
        let bytes = cdf_png("bitrate", "kbps", &series).unwrap();
        let (w, h, rgb) = decode_png(&bytes);
        assert_eq!((w, h), SIZE);
        let pixels: Vec<[u8; 3]> = rgb.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
        assert_eq!(pixels.len(), (w * h) as usize);
        let count = |c: RGBColor| pixels.iter().filter(|p| **p == [c.0, c.1, c.2]).count();
        let white = count(WHITE);
        assert!(white > pixels.len() / 2, "mostly background: {white} of {}", pixels.len());
        // Each curve (2 px wide over hundreds of px) and its legend sample in its own colour.
        for c in &COLORS[..2] {
            assert!(count(*c) > 300, "{c:?}: {} pixels", count(*c));
        }
        assert_eq!(count(COLORS[2]), 0, "no third series");
        // Text and the axes: near-black pixels, in the caption's band at the top too.
        let dark = |p: &[u8; 3]| p.iter().all(|&v| v < 80);
        assert!(pixels.iter().filter(|p| dark(p)).count() > 1000);
        let caption_band = &pixels[..(w * 40) as usize];
        assert!(caption_band.iter().filter(|p| dark(p)).count() > 50, "caption text drawn");
    }

    #[test]
    fn png_without_values_is_still_a_full_size_image() {
        let (w, h, rgb) = decode_png(&cdf_png("nothing", "x", &[]).unwrap());
        assert_eq!((w, h), SIZE);
        assert!(rgb.chunks_exact(3).any(|p| p.iter().all(|&v| v < 80)), "axes and labels");
    }

    #[test]
    fn no_values_at_all_still_draws_axes() {
        let svg = cdf_svg("nothing", "x", &[]).unwrap();
        assert_valid_svg(&svg);
        assert!(svg.contains("fraction of sessions"));
    }
}
