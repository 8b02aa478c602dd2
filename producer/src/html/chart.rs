//! Inline SVG charts for the report page: drawn by hand so the page needs no script and no network (it is
//! attached to tickets and opened offline). Every bar is a `rect` with `data-*` attributes naming what it shows,
//! which is also what the headless-browser test reads back.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::escape::escape;

/// One series of a grouped bar chart: its name and CSS colour.
pub struct Series {
    /// Shown in the legend and the tooltips.
    pub name: &'static str,
    /// Fill colour.
    pub color: &'static str,
}

/// One group of bars: a label (a tenant) and one value per series.
pub struct Group {
    /// The label above the group.
    pub label: String,
    /// One value per series, in series order.
    pub values: Vec<u64>,
}

const WIDTH: u32 = 760;
const LABEL_X: u32 = 110;
const BAR_H: u32 = 14;
const BAR_GAP: u32 = 3;
const GROUP_TITLE_H: u32 = 20;
const GROUP_GAP: u32 = 12;

/// Horizontal grouped bars: per group a title line, then one bar per series, scaled to the largest value.
pub fn grouped_bars(id: &str, series: &[Series], groups: &[Group]) -> String {
    let max = groups
        .iter()
        .flat_map(|g| g.values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot = f64::from(WIDTH - LABEL_X - 70);
    let per_group = GROUP_TITLE_H + series.len() as u32 * (BAR_H + BAR_GAP) + GROUP_GAP;
    let height = (groups.len() as u32 * per_group).max(1);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="{id}" class="chart" xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">"#,
        id = escape(id)
    );
    for (index, group) in groups.iter().enumerate() {
        let top = index as u32 * per_group;
        let label = escape(&group.label);
        let _ = write!(
            svg,
            r#"<text class="group-label" x="0" y="{}">{label}</text>"#,
            top + 14
        );
        for (row, (serie, value)) in series.iter().zip(&group.values).enumerate() {
            let y = top + GROUP_TITLE_H + row as u32 * (BAR_H + BAR_GAP);
            let width = (*value as f64 / max as f64 * plot).round();
            let _ = write!(
                svg,
                concat!(
                    r#"<text class="series-label" x="{lx}" y="{ty}" text-anchor="end">{name}</text>"#,
                    r#"<rect class="bar" data-group="{label}" data-series="{name}" data-value="{value}" "#,
                    r#"x="{x}" y="{y}" width="{width}" height="{BAR_H}" fill="{color}">"#,
                    r#"<title>{label}: {value} {name}</title></rect>"#,
                    r#"<text class="value" x="{vx}" y="{ty}">{value}</text>"#
                ),
                lx = LABEL_X - 6,
                ty = y + BAR_H - 3,
                name = serie.name,
                x = LABEL_X,
                color = serie.color,
                vx = f64::from(LABEL_X) + width + 4.0,
                label = label,
                value = value,
                y = y,
                width = width,
                BAR_H = BAR_H,
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// One tenant's 429s at points in time.
pub struct Timeline {
    /// The tenant.
    pub label: String,
    /// Fill colour.
    pub color: &'static str,
    /// (when, how many 429s).
    pub samples: Vec<(DateTime<Utc>, u64)>,
}

/// Number of time slices the run is cut into.
const BINS: usize = 24;
const PLOT_H: f64 = 180.0;
const AXIS_X: f64 = 50.0;

/// Vertical bars of 429s per time slice of the run, stacked by tenant.
pub fn stacked_timeline(
    id: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    lines: &[Timeline],
) -> String {
    let span_ms = (end - start).num_milliseconds().max(1) as f64;
    let bin_of = |at: DateTime<Utc>| -> usize {
        let offset = (at - start).num_milliseconds().max(0) as f64;
        ((offset / span_ms * BINS as f64) as usize).min(BINS - 1)
    };
    let mut bins = vec![vec![0u64; lines.len()]; BINS];
    for (tenant, line) in lines.iter().enumerate() {
        for (at, count) in &line.samples {
            bins[bin_of(*at)][tenant] += count;
        }
    }
    let max = bins
        .iter()
        .map(|b| b.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = f64::from(WIDTH) - AXIS_X - 10.0;
    let bin_w = plot_w / BINS as f64;
    let height = PLOT_H + 40.0;
    let secs = span_ms / 1000.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="{id}" class="chart" xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">"#,
        id = escape(id)
    );
    let _ = write!(
        svg,
        concat!(
            r#"<line class="axis" x1="{ax}" y1="0" x2="{ax}" y2="{ph}"/>"#,
            r#"<line class="axis" x1="{ax}" y1="{ph}" x2="{right}" y2="{ph}"/>"#,
            r#"<text class="tick" x="{tx}" y="12" text-anchor="end">{max}</text>"#,
            r#"<text class="tick" x="{tx}" y="{ph}" text-anchor="end">0</text>"#,
            r#"<text class="tick" x="{ax}" y="{ly}">+0 s</text>"#,
            r#"<text class="tick" x="{right}" y="{ly}" text-anchor="end">+{secs:.0} s</text>"#,
            r#"<text class="tick" x="{mid}" y="{ly2}" text-anchor="middle">time since the run started</text>"#
        ),
        ax = AXIS_X,
        ph = PLOT_H,
        right = AXIS_X + plot_w,
        tx = AXIS_X - 4.0,
        ly = PLOT_H + 16.0,
        ly2 = PLOT_H + 32.0,
        mid = AXIS_X + plot_w / 2.0,
        max = max,
        secs = secs,
    );
    for (bin, counts) in bins.iter().enumerate() {
        let mut top = PLOT_H;
        let from = secs * bin as f64 / BINS as f64;
        let to = secs * (bin + 1) as f64 / BINS as f64;
        for (line, count) in lines.iter().zip(counts) {
            if *count == 0 {
                continue;
            }
            let h = *count as f64 / max as f64 * PLOT_H;
            top -= h;
            let _ = write!(
                svg,
                concat!(
                    r#"<rect class="bar throttle" data-group="{label}" data-bin="{bin}" data-value="{count}" "#,
                    r#"x="{x:.1}" y="{top:.1}" width="{w:.1}" height="{h:.1}" fill="{color}">"#,
                    r#"<title>{label}: {count} × 429 between +{from:.0} s and +{to:.0} s</title></rect>"#
                ),
                label = escape(&line.label),
                x = AXIS_X + bin as f64 * bin_w + 1.0,
                w = (bin_w - 2.0).max(1.0),
                color = line.color,
                bin = bin,
                count = count,
                top = top,
                h = h,
                from = from,
                to = to,
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A legend: one swatch and name per entry.
pub fn legend(entries: &[(String, &'static str)]) -> String {
    let mut out = String::from(r#"<ul class="legend">"#);
    for (name, color) in entries {
        let _ = write!(
            out,
            r#"<li><span class="swatch" style="background:{color}"></span>{}</li>"#,
            escape(name)
        );
    }
    out.push_str("</ul>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_value_and_escape_labels() {
        let series = [
            Series {
                name: "created",
                color: "#000",
            },
            Series {
                name: "failed",
                color: "#f00",
            },
        ];
        let groups = [Group {
            label: "<evil>".into(),
            values: vec![10, 5],
        }];
        let svg = grouped_bars("c", &series, &groups);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains(r#"data-value="10""#));
        assert!(svg.contains(r#"width="580""#), "{svg}");
        assert!(svg.contains(r#"width="290""#), "{svg}");
        assert!(svg.contains("&lt;evil&gt;") && !svg.contains("<evil>"));
    }

    #[test]
    fn samples_land_in_their_time_slice() {
        let start = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("time");
        let end = start + chrono::Duration::seconds(240);
        let lines = [Timeline {
            label: "t".into(),
            color: "#123",
            samples: vec![
                (start, 2),
                (start + chrono::Duration::seconds(239), 3),
                (end + chrono::Duration::seconds(5), 1),
            ],
        }];
        let svg = stacked_timeline("x", start, end, &lines);
        assert!(svg.contains(r#"data-bin="0" data-value="2""#), "{svg}");
        assert!(svg.contains(r#"data-bin="23" data-value="4""#), "{svg}");
    }
}
