//! A small, dependency-free SVG line chart for loss curves (x: step, y: loss), written next
//! to checkpoints. Pulling in a plotting crate (and its font stack) would cost more compile
//! time on 2 cores than these ~100 lines.

use std::fmt::Write as _;

/// One named series of `(x, y)` points; `dots` draws markers instead of a line.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points (non-finite ones are skipped).
    pub points: Vec<(f64, f64)>,
    /// CSS colour.
    pub color: &'static str,
    /// Markers instead of a polyline.
    pub dots: bool,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A tick label for `v` on ticks `step` apart: enough decimals that neighbouring ticks
/// read differently (0.008 to 0.07 ms is not six zeros), at least `min`.
fn tick(v: f64, step: f64, min: usize) -> String {
    let dec = if step >= 1.0 || step <= 0.0 || !step.is_finite() {
        0
    } else {
        ((-step.log10()).ceil() as usize + 1).min(9)
    };
    format!("{v:.*}", dec.max(min))
}

/// A 720×420 SVG chart of `series` with a title and axis labels.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h) = (720.0, 420.0);
    let (l, r, t, b) = (70.0, 20.0, 40.0, 50.0);
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    let pad = 0.05 * (y1 - y0);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| t + (y1 - y) / (y1 - y0) * (h - t - b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    // axes and ticks
    let _ = writeln!(
        s,
        r#"<path d="M{l} {t} V{} H{}" stroke="black" fill="none"/>"#,
        h - b,
        w - r
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (xv, yv) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
        let (px, py) = (sx(xv), sy(yv));
        let _ = writeln!(
            s,
            r##"<path d="M{px} {} v5 M{l} {py} h-5" stroke="black"/><path d="M{l} {py} H{}" stroke="#ddd"/>"##,
            h - b,
            w - r
        );
        let _ = writeln!(
            s,
            r#"<text x="{px}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="end">{:.3}</text>"#,
            h - b + 18.0,
            tick(xv, (x1 - x0) / 5.0, 0),
            l - 8.0,
            py + 4.0,
            tick(yv, (y1 - y0) / 5.0, 3)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (l + w - r) / 2.0,
        h - 10.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0,
        esc(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        let ok: Vec<_> = se
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        if se.dots {
            for p in &ok {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#,
                    sx(p.0),
                    sy(p.1),
                    se.color
                );
            }
        } else if !ok.is_empty() {
            let path: Vec<String> = ok
                .iter()
                .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                path.join(" "),
                se.color
            );
        }
        let ly = t + 8.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="3" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            w - r - 170.0,
            ly - 4.0,
            se.color,
            w - r - 150.0,
            ly,
            esc(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_every_series_and_escapes_text() {
        let svg = line_chart(
            "loss <a&b>",
            "step",
            "nats",
            &[
                Series {
                    name: "train".into(),
                    points: vec![(1.0, 5.0), (2.0, 4.0), (3.0, f64::NAN)],
                    color: "steelblue",
                    dots: false,
                },
                Series {
                    name: "validation".into(),
                    points: vec![(2.0, 4.5)],
                    color: "crimson",
                    dots: true,
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("loss &lt;a&amp;b&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(!svg.contains("NaN"));
        // empty input still gives a valid picture
        assert!(line_chart("x", "y", "z", &[]).ends_with("</svg>\n"));
    }
}
