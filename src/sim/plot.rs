//! A tiny SVG line chart (no dependencies): series over a shared time axis, each drawn
//! against a labelled left or right y-axis with tick values.

use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

/// A y-axis: its label and its top value (the bottom is 0).
pub struct Axis<'a> {
    pub label: &'a str,
    pub max: f64,
}

pub struct Series<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    /// (seconds, value) in the unit of its axis.
    pub points: &'a [(f64, f64)],
    pub side: Side,
}

fn tick(value: f64) -> String {
    if value >= 10.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Renders `series` against a left axis and, when given, a right axis.
pub fn svg(title: &str, left_axis: Axis, right_axis: Option<Axis>, series: &[Series]) -> String {
    svg_with_x(title, "time since start (s)", left_axis, right_axis, series)
}

/// As `svg`, with another label under the x axis (its values are still seconds, e.g. a
/// distribution of waits).
pub fn svg_with_x(title: &str, x_label: &str, left_axis: Axis, right_axis: Option<Axis>, series: &[Series]) -> String {
    let (width, height, left, right, top, bottom) = (900.0, 440.0, 70.0, 70.0, 50.0, 70.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let t_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0_f64, f64::max);
    let left_max = if left_axis.max > 0.0 { left_axis.max } else { 1.0 };
    let right_max = right_axis.as_ref().map_or(1.0, |a| if a.max > 0.0 { a.max } else { 1.0 });
    let mut out = String::new();
    let _ = writeln!(out, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{left}" y="24" font-size="16">{}</text>"#, escape(title));
    let _ = writeln!(out, r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##);
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let x = left + plot_w * f;
        let _ = writeln!(out, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{:.0}s</text>"#, top + plot_h + 18.0, t_max * f);
        let y = top + plot_h * (1.0 - f);
        let _ = writeln!(out, r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/>"##, left + plot_w);
        let _ = writeln!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, left - 6.0, y + 4.0, tick(left_max * f));
        if right_axis.is_some() {
            let _ = writeln!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="start">{}</text>"#, left + plot_w + 6.0, y + 4.0, tick(right_max * f));
        }
    }
    let mid = top + plot_h / 2.0;
    let _ = writeln!(
        out,
        r#"<text x="18" y="{mid:.1}" text-anchor="middle" transform="rotate(-90 18 {mid:.1})">{}</text>"#,
        escape(left_axis.label)
    );
    if let Some(axis) = &right_axis {
        let x = width - 14.0;
        let _ = writeln!(out, r#"<text x="{x:.1}" y="{mid:.1}" text-anchor="middle" transform="rotate(90 {x:.1} {mid:.1})">{}</text>"#, escape(axis.label));
    }
    let _ = writeln!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, left + plot_w / 2.0, top + plot_h + 36.0, escape(x_label));
    let mut legend_x = left;
    for s in series.iter() {
        let max = if s.side == Side::Left { left_max } else { right_max };
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", left + plot_w * t / t_max, top + plot_h * (1.0 - (v / max).clamp(0.0, 1.0))))
            .collect();
        let _ = writeln!(out, r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#, s.colour, points.join(" "));
        let ly = height - 10.0;
        let label = format!("{} ({} axis)", s.name, if s.side == Side::Left { "left" } else { "right" });
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
