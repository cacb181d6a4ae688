//! Line charts as plain SVG, for the benches' plots (`farmem bench policy`,
//! `farmem bench compare`): a stack of panels, one polyline a series, no
//! dependency beyond string formatting.

/// One line of a panel: its label and its points (x, y).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Shown in the legend, in the line's colour.
    pub label: String,
    /// The points, in the order they are joined.
    pub points: Vec<(f64, f64)>,
}

/// One chart of the stack: a title, the unit of its x axis, its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// What the y values are (e.g. "resident MiB").
    pub title: String,
    /// The unit of x, after its largest value in the title (e.g. "s").
    pub x_unit: String,
    /// The lines, coloured in order.
    pub series: Vec<Series>,
}

/// The colours of the series, in order (then again from the start).
const COLORS: [&str; 6] = ["#444444", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"];

/// Escapes the characters SVG text may not hold as they are.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;")
}

/// Renders the panels one above the other, each 900 by 300 pixels, y from 0
/// to just above the largest value, x from 0 (or the smallest x, if below 0)
/// to the largest x.
pub fn svg(panels: &[Panel]) -> String {
    let (w, h, pad) = (900.0, 300.0, 60.0);
    let height = panels.len() as f64 * (h + 20.0) + 20.0;
    let mut out = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{height}' font-family='sans-serif' font-size='12'>\n");
    for (p, panel) in panels.iter().enumerate() {
        let y0 = p as f64 * (h + 20.0);
        let all = || panel.series.iter().flat_map(|s| s.points.iter());
        let xmin = all().map(|&(x, _)| x).fold(0.0, f64::min);
        let xmax = all().map(|&(x, _)| x).fold(xmin + 1e-9, f64::max);
        let vmax = all().map(|&(_, y)| y).fold(1.0, f64::max) * 1.05;
        out += &format!("<rect x='{pad}' y='{}' width='{}' height='{}' fill='none' stroke='#999'/>\n", y0 + 20.0, w - 2.0 * pad, h - 60.0);
        out += &format!("<text x='{pad}' y='{}'>{} (max {:.0}) over {:.0} {}</text>\n", y0 + 14.0, escape(&panel.title), vmax, xmax, escape(&panel.x_unit));
        for (k, s) in panel.series.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let pts: Vec<String> = s
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", pad + (x - xmin) / (xmax - xmin) * (w - 2.0 * pad), y0 + 20.0 + (h - 60.0) * (1.0 - y / vmax)))
                .collect();
            out += &format!("<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\n", pts.join(" "));
            out += &format!("<text x='{}' y='{}' fill='{color}'>{}</text>\n", w - pad + 5.0, y0 + 40.0 + 16.0 * k as f64, escape(&s.label));
        }
    }
    out + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_polyline_and_label_a_series_in_each_panel() {
        let line = |label: &str, k: f64| Series { label: label.into(), points: (0..5).map(|i| (i as f64, k * i as f64)).collect() };
        let panels = [
            Panel { title: "resident MiB".into(), x_unit: "s".into(), series: vec![line("plain", 1.0), line("a<b", 2.0)] },
            Panel { title: "ops/s".into(), x_unit: "s".into(), series: vec![line("plain", 3.0)] },
        ];
        let s = svg(&panels);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<polyline").count(), 3);
        assert!(s.contains("a&lt;b") && s.contains("resident MiB (max 8) over 4 s"), "{s}");
        // An empty panel still renders, with no line.
        assert!(svg(&[Panel { title: "x".into(), x_unit: "%".into(), series: vec![] }]).contains("<rect"));
    }
}
