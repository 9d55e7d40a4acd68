//! Server-rendered SVG bar charts: no script, nothing fetched, every label
//! escaped by the template engine like any other text.

use maud::{html, Markup};

/// One bar: a label under it and one value per series (stacked).
pub struct Bar {
    pub label: String,
    pub values: Vec<u64>,
}

/// A stacked bar chart. `series` names each value position and its CSS class.
pub fn bar_chart(title: &str, series: &[(&str, &str)], bars: &[Bar]) -> Markup {
    const W: u64 = 720;
    const H: u64 = 220;
    const LEFT: u64 = 44;
    const BOTTOM: u64 = 28;
    const TOP: u64 = 12;
    let plot_h = H - BOTTOM - TOP;
    let max = bars
        .iter()
        .map(|b| b.values.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let scale_max = nice_ceiling(max);
    let n = bars.len().max(1) as u64;
    let slot = (W - LEFT - 8) / n;
    let bar_w = (slot * 7 / 10).max(2);
    let y_of = |v: u64| TOP + plot_h - v * plot_h / scale_max;
    // Show at most ~10 x labels so they do not overlap.
    let label_every = (bars.len() / 10).max(1);
    html! {
        figure.chart {
            figcaption { (title) }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) xmlns="http://www.w3.org/2000/svg" {
                @for i in 0..=4u64 {
                    @let v = scale_max * i / 4;
                    line.grid x1=(LEFT) x2=(W - 4) y1=(y_of(v)) y2=(y_of(v)) {}
                    text.axis x=(LEFT - 6) y=(y_of(v) + 4) text-anchor="end" { (v) }
                }
                @for (i, bar) in bars.iter().enumerate() {
                    @let x = LEFT + 4 + i as u64 * slot + (slot - bar_w) / 2;
                    @let mut base = 0u64;
                    g {
                        title { (bar.label) ": " @for (j, v) in bar.values.iter().enumerate() { @if j > 0 { ", " } (series.get(j).map_or("", |s| s.0)) " " (v) } }
                        @for (j, v) in bar.values.iter().enumerate() {
                            @if *v > 0 {
                                rect class=(series.get(j).map_or("s0", |s| s.1)) x=(x) y=(y_of(base + v)) width=(bar_w) height=(y_of(base) - y_of(base + v)) {}
                            }
                            ({ base += v; "" })
                        }
                    }
                    @if i % label_every == 0 {
                        text.axis x=(x + bar_w / 2) y=(H - 10) text-anchor="middle" { (bar.label) }
                    }
                }
                line.baseline x1=(LEFT) x2=(W - 4) y1=(y_of(0)) y2=(y_of(0)) {}
            }
            @if series.len() > 1 {
                ul.legend {
                    @for (name, class) in series {
                        li { svg.swatch viewBox="0 0 10 10" { rect class=(class) width="10" height="10" {} } (name) }
                    }
                }
            }
        }
    }
}

/// The smallest of 4, 8, 20 × 10^k that is ≥ `v`: quarter gridlines then
/// land on whole, round numbers.
fn nice_ceiling(v: u64) -> u64 {
    let mut p = 1u64;
    while let (Some(a), Some(b), Some(c)) = (p.checked_mul(4), p.checked_mul(8), p.checked_mul(20))
    {
        for candidate in [a, b, c] {
            if candidate >= v {
                return candidate;
            }
        }
        match p.checked_mul(10) {
            Some(next) => p = next,
            None => break,
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_round_and_covers_max() {
        assert_eq!(nice_ceiling(1), 4);
        assert_eq!(nice_ceiling(7), 8);
        assert_eq!(nice_ceiling(20), 20);
        assert_eq!(nice_ceiling(41), 80);
        assert_eq!(nice_ceiling(150), 200);
    }

    #[test]
    fn bars_have_heights_proportional_to_values_and_labels_are_escaped() {
        let bars = vec![
            Bar {
                label: "<b>".into(),
                values: vec![10, 10],
            },
            Bar {
                label: "d2".into(),
                values: vec![5, 0],
            },
        ];
        let svg = bar_chart("Volume", &[("Allowed", "s0"), ("Flagged", "s1")], &bars).into_string();
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
        // Scale 20 over a 180 px plot: 10 → 90 px, 5 → 45 px.
        assert!(svg.contains("height=\"90\""), "{svg}");
        assert!(svg.contains("height=\"45\""), "{svg}");
        let plot = svg.split("</svg>").next().unwrap();
        assert_eq!(
            plot.matches("<rect class=").count(),
            3,
            "zero-height segments are not drawn"
        );
    }
}
