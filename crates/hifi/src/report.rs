//! `hifi loadtest --report out.html`: a self-contained page (inline SVG, no scripts, no
//! external files) with the date and command line, the figures, the acknowledged rate,
//! ingest latency and end-to-end delay over time, and the rating search.

use serde_json::Value;

const COLORS: [&str; 4] = ["#2b6cb0", "#dd6b20", "#c53030", "#2f855a"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG line chart of several series over a shared x axis.
fn chart(
    title: &str,
    y_label: &str,
    x_label: &str,
    x_fmt: &dyn Fn(f64) -> String,
    series: &[(&str, Vec<(f64, f64)>)],
    hline: Option<(f64, &str)>,
) -> String {
    let (w, h, ml, mr, mt, mb) = (760.0, 260.0, 60.0, 20.0, 30.0, 40.0);
    let pts: Vec<&(f64, f64)> = series.iter().flat_map(|s| s.1.iter()).collect();
    if pts.is_empty() {
        return format!("<h3>{}</h3><p>no data</p>", esc(title));
    }
    let xmax = pts.iter().map(|p| p.0).fold(f64::MIN, f64::max).max(1.0);
    let xmin = pts
        .iter()
        .map(|p| p.0)
        .fold(f64::MAX, f64::min)
        .min(xmax - 1.0);
    let ymax = pts
        .iter()
        .map(|p| p.1)
        .chain(hline.map(|h| h.0))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let sx = |x: f64| ml + (x - xmin) / (xmax - xmin) * (w - ml - mr);
    let sy = |y: f64| h - mb - y / ymax * (h - mt - mb);
    let mut out = format!(
        r#"<h3>{}</h3><svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">"#,
        esc(title)
    );
    out.push_str(&format!(
        r##"<rect x="{ml}" y="{mt}" width="{}" height="{}" fill="#fafafa" stroke="#ccc"/>"##,
        w - ml - mr,
        h - mt - mb
    ));
    for i in 0..=4 {
        let y = ymax * i as f64 / 4.0;
        out.push_str(&format!(
            r##"<text x="{}" y="{}" font-size="11" text-anchor="end" fill="#555">{}</text><line x1="{ml}" x2="{}" y1="{}" y2="{}" stroke="#eee"/>"##,
            ml - 6.0, sy(y) + 4.0, fmt(y), w - mr, sy(y), sy(y)
        ));
    }
    out.push_str(&format!(
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="#555">{}</text>"##,
        (ml + w - mr) / 2.0,
        h - 8.0,
        esc(x_label)
    ));
    out.push_str(&format!(r##"<text x="12" y="{}" font-size="11" fill="#555" transform="rotate(-90 12 {})">{}</text>"##, h / 2.0, h / 2.0, esc(y_label)));
    for x in ticks(xmin, xmax) {
        out.push_str(&format!(
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#eee"/><text x="{0:.1}" y="{3}" font-size="11" text-anchor="middle" fill="#555">{4}</text>"##,
            sx(x),
            mt,
            h - mb,
            h - mb + 14.0,
            x_fmt(x)
        ));
    }
    if let Some((y, label)) = hline {
        out.push_str(&format!(r##"<line x1="{ml}" x2="{}" y1="{}" y2="{}" stroke="#c53030" stroke-dasharray="6 4"/><text x="{}" y="{}" font-size="11" fill="#c53030">{}</text>"##,
            w - mr, sy(y), sy(y), ml + 4.0, sy(y) - 4.0, esc(label)));
    }
    for (i, (name, data)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = data
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        out.push_str(&format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        ));
        for (x, y) in data {
            out.push_str(&format!(
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                sx(*x),
                sy(*y)
            ));
        }
        out.push_str(&format!(
            r#"<text x="{}" y="{}" font-size="12" fill="{color}">■ {}</text>"#,
            ml + 10.0 + 130.0 * i as f64,
            mt - 10.0,
            esc(name)
        ));
    }
    out.push_str("</svg>");
    out
}

/// About six x-axis ticks on round steps (1, 2, 5 × 10ⁿ) between `min` and `max`.
fn ticks(min: f64, max: f64) -> Vec<f64> {
    let raw = (max - min) / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
        .max(f64::MIN_POSITIVE);
    let mut x = (min / step).ceil() * step;
    let mut out = Vec::new();
    while x <= max + step * 1e-9 && out.len() < 20 {
        out.push(x);
        x += step;
    }
    out
}

/// Seconds since the start as `42 s` or `3:05` (minutes:seconds).
fn seconds(v: f64) -> String {
    if v < 60.0 && v.fract() == 0.0 {
        format!("{v:.0} s")
    } else if v < 60.0 {
        format!("{} s", fmt(v))
    } else {
        format!("{}:{:02}", (v / 60.0).floor(), (v % 60.0).floor())
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn q(v: &Value) -> String {
    let f = |k: &str| v[k].as_f64().map_or("–".into(), |x| format!("{x:.1}"));
    format!(
        "p50 {} · p95 {} · p99 {} · max {} ms",
        f("p50"),
        f("p95"),
        f("p99"),
        f("max")
    )
}

/// The report page for `{"outcome": ..., "rating": ...}`.
pub fn html(doc: &Value) -> String {
    let o = &doc["outcome"];
    let t = o["timeline"].as_array().cloned().unwrap_or_default();
    let e2e = |k: &str| -> Vec<(f64, f64)> {
        t.iter()
            .filter_map(|s| Some((s["t"].as_f64()?, s["e2e_ms"].get(k)?.as_f64()?)))
            .collect()
    };
    let rate: Vec<(f64, f64)> = t
        .iter()
        .map(|s| {
            (
                s["t"].as_f64().unwrap_or(0.0),
                s["acked"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let lat = |k: &str| -> Vec<(f64, f64)> {
        t.iter()
            .map(|s| {
                (
                    s["t"].as_f64().unwrap_or(0.0),
                    s["ingest_ms"][k].as_f64().unwrap_or(0.0),
                )
            })
            .collect()
    };
    let mut rows = vec![
        ("target rate (events/s)", o["target_rate"].to_string()),
        (
            "achieved rate (events/s)",
            format!("{:.0}", o["achieved_rate"].as_f64().unwrap_or(0.0)),
        ),
        ("acknowledged", o["acked"].to_string()),
        ("delivered", o["delivered"].to_string()),
        ("lost", o["lost"].to_string()),
        (
            "not delivered, accounted for by the pipeline's ledger",
            o.get("accounted").filter(|a| !a.is_null()).map_or("–".into(), |a| {
                format!(
                    "filtered {}, dead-lettered {}, retrying {}, delivered by another sink {}, ended without loss {}",
                    a["filtered"], a["dead_lettered"], a["retrying"], a["delivered_elsewhere"], a["ended_not_lost"]
                )
            }),
        ),
        ("duplicates", o["duplicates"].to_string()),
        ("ingest latency", q(&o["ingest_ms"])),
        ("end-to-end delay", q(&o["e2e_ms"])),
    ];
    if let Some(c) = o.get("chaos").filter(|c| !c.is_null()) {
        rows.push((
            "chaos",
            format!(
                "{} kills, {} receiver outages",
                c["kills"], c["receiver_flaps"]
            ),
        ));
    }
    let lost = o["lost"].as_u64().unwrap_or(0);
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>hifi load test</h1><p class=\"meta\">{} · <code>{}</code></p><p class=\"{}\">{}</p><table>",
        esc(doc["date"].as_str().unwrap_or("")),
        esc(doc["command"].as_str().unwrap_or("")),
        if lost > 0 { "bad" } else { "good" },
        if lost > 0 {
            format!("{lost} acknowledged events were LOST")
        } else {
            "zero loss: every acknowledged event was delivered".to_owned()
        }
    ));
    for (k, v) in rows {
        body.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v)));
    }
    body.push_str("</table>");
    if let Some(r) = doc.get("rating").filter(|r| !r.is_null()) {
        body.push_str(&format!(
            "<h2>Traffic rating: {} events/s at p95 E2E {:.1} ms (SLO {} ms), {} events checked</h2>",
            r["events_per_s"], r["e2e_p95_ms"].as_f64().unwrap_or(0.0), r["slo_p95_ms"], r["events_checked"]
        ));
        let steps = r["steps"].as_array().cloned().unwrap_or_default();
        let pts: Vec<(f64, f64)> = steps
            .iter()
            .map(|s| {
                (
                    s["rate"].as_f64().unwrap_or(0.0),
                    s["e2e_p95_ms"].as_f64().unwrap_or(0.0).min(1e7),
                )
            })
            .collect();
        let slo = r["slo_p95_ms"].as_f64().unwrap_or(0.0);
        body.push_str(&chart(
            "Rating search: E2E p95 per step",
            "ms",
            "target events/s",
            &fmt,
            &[("E2E p95", pts)],
            Some((slo, "SLO")),
        ));
        body.push_str("<table><tr><th>step</th><th>rate</th><th>achieved</th><th>E2E p95 (ms)</th><th>lost</th><th>SLO</th></tr>");
        for (i, s) in steps.iter().enumerate() {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                i + 1,
                s["rate"],
                s["achieved_rate"].as_f64().unwrap_or(0.0),
                s["e2e_p95_ms"].as_f64().unwrap_or(0.0),
                s["lost"],
                if s["meets_slo"] == true {
                    "met"
                } else {
                    "missed"
                }
            ));
        }
        body.push_str("</table>");
    }
    body.push_str(&chart(
        "Acknowledged events per second (last run)",
        "events/s",
        "time since the start",
        &seconds,
        &[("acknowledged", rate)],
        None,
    ));
    body.push_str(&chart(
        "Ingest latency per second (last run)",
        "ms",
        "time since the start",
        &seconds,
        &[
            ("p50", lat("p50")),
            ("p95", lat("p95")),
            ("p99", lat("p99")),
        ],
        None,
    ));
    body.push_str(&chart(
        "End-to-end delay by second sent (last run; delivered events)",
        "ms",
        "time since the start (when the event was sent)",
        &seconds,
        &[
            ("p50", e2e("p50")),
            ("p95", e2e("p95")),
            ("max", e2e("max")),
        ],
        None,
    ));
    if let Some(readings) = doc["scale"].as_array().filter(|r| !r.is_empty()) {
        let series = |k: &str| -> Vec<(f64, f64)> {
            readings
                .iter()
                .filter_map(|r| Some((r["t"].as_f64()?, r[k].as_f64()?)))
                .collect()
        };
        body.push_str(&chart(
            "Replicas (hifi scale --record)",
            "replicas",
            "time since the start",
            &seconds,
            &[
                ("running", series("replicas")),
                ("recommended", series("recommended")),
            ],
            None,
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>hifi load test</title><style>\
         body{{font:14px system-ui,sans-serif;margin:24px;color:#1a202c}}table{{border-collapse:collapse;margin:8px 0}}\
         th,td{{padding:4px 10px;border-bottom:1px solid #e2e8f0;text-align:left}}.good{{color:#2f855a;font-weight:600}}\
         .bad{{color:#c53030;font-weight:700}}.meta{{color:#555}}svg{{display:block;margin:4px 0 18px}}</style></head><body>{body}</body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_ticks_fall_on_round_steps() {
        assert_eq!(ticks(0.0, 9.0), vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(
            ticks(0.0, 120.0),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0]
        );
        assert_eq!(seconds(5.0), "5 s");
        assert_eq!(seconds(2.5), "2.50 s");
        assert_eq!(seconds(185.0), "3:05");
    }

    #[test]
    fn the_report_has_the_date_the_command_and_e2e_over_time() {
        let doc = serde_json::json!({
            "date": "2026-12-05T16:00:00Z",
            "command": "hifi loadtest --rate 10 --data '{\"a\": 1}'",
            "outcome": {
                "lost": 0, "acked": 20, "delivered": 20,
                "timeline": [
                    {"t": 0, "acked": 10, "ingest_ms": {"p50": 1.0}, "e2e_ms": {"p50": 3.0, "p95": 4.0, "max": 5.0}},
                    {"t": 1, "acked": 10, "ingest_ms": {"p50": 1.0}, "e2e_ms": {"p50": 6.0, "p95": 7.0, "max": 9.0}}
                ]
            }
        });
        let page = html(&doc);
        assert!(page.contains("2026-12-05T16:00:00Z"));
        assert!(page.contains("--data '{\"a\": 1}'"), "{page}");
        assert!(page.contains("End-to-end delay by second sent"));
        assert!(!page.contains(
            "<h3>End-to-end delay by second sent (last run; delivered events)</h3><p>no data</p>"
        ));
        assert!(!page.contains("Replicas"), "no scale record, no chart");
    }

    #[test]
    fn a_scale_record_draws_replicas_over_time() {
        let doc = serde_json::json!({
            "date": "2026-12-06T16:00:00Z",
            "command": "hifi loadtest --ramp 10:1s,40:1s --scale-record scale.jsonl",
            "outcome": {"lost": 0, "acked": 50, "delivered": 50, "timeline": []},
            "scale": [
                {"t": 0.5, "replicas": 1, "recommended": 1},
                {"t": 1.5, "replicas": 1, "recommended": 3},
                {"t": 2.5, "replicas": 3, "recommended": 3}
            ]
        });
        let page = html(&doc);
        assert!(page.contains("Replicas (hifi scale --record)"), "{page}");
        assert!(page.contains("recommended"), "{page}");
    }
}
