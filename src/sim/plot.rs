//! A tiny SVG line chart (no dependencies): farm utilisation and queue depth over time.

use std::fmt::Write as _;

pub struct Series<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    /// (seconds, value); values are scaled to the chart's own axis.
    pub points: &'a [(f64, f64)],
    pub max: f64,
    pub unit: &'a str,
}

/// Renders series sharing a time axis; each series is scaled to its own maximum, with its
/// scale written in the legend.
pub fn svg(title: &str, series: &[Series]) -> String {
    let (width, height, left, right, top, bottom) = (900.0, 420.0, 60.0, 20.0, 50.0, 50.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let t_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0_f64, f64::max);
    let mut out = String::new();
    let _ = writeln!(out, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{left}" y="24" font-size="16">{}</text>"#, escape(title));
    let _ = writeln!(out, r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##);
    for i in 0..=5 {
        let x = left + plot_w * f64::from(i) / 5.0;
        let _ = writeln!(out, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{:.0}s</text>"#, top + plot_h + 18.0, t_max * f64::from(i) / 5.0);
        let y = top + plot_h * f64::from(i) / 5.0;
        let _ = writeln!(out, r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/>"##, left + plot_w);
    }
    let mut legend_x = left;
    for s in series.iter() {
        let max = if s.max > 0.0 { s.max } else { 1.0 };
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", left + plot_w * t / t_max, top + plot_h * (1.0 - (v / max).clamp(0.0, 1.0))))
            .collect();
        let _ = writeln!(out, r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#, s.colour, points.join(" "));
        let ly = height - 12.0;
        let label = format!("{} (top = {:.0}{})", s.name, max, s.unit);
        let _ = writeln!(out, r#"<rect x="{legend_x:.1}" y="{:.1}" width="14" height="4" fill="{}"/>"#, ly - 4.0, s.colour);
        let _ = writeln!(out, r#"<text x="{:.1}" y="{ly:.1}">{}</text>"#, legend_x + 20.0, escape(&label));
        // About 6.5 px per character at 12 px sans-serif, plus the swatch and a gap.
        legend_x += 20.0 + 6.5 * label.chars().count() as f64 + 24.0;
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
