//! Metric families as plain values, and the two text formats a scraper may ask for:
//! Prometheus text 0.0.4 (the default; what `promtool check metrics` reads) and
//! OpenMetrics 1.0 (when `Accept` names `application/openmetrics-text`).
//!
//! Written here rather than with `prometheus-client`: that crate writes OpenMetrics only,
//! and leaves `"`, `\` and newlines in label values and help unescaped.

use std::fmt::Write as _;

/// Label pairs of one sample.
pub type Labels = Vec<(&'static str, String)>;

/// What a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; the sample name gets `_total`.
    Counter,
    /// Any value.
    Gauge,
    /// Cumulative buckets, `_sum` and `_count`.
    Histogram,
    /// Constant 1 with informative labels; the sample name gets `_info`.
    Info,
}

/// A histogram's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// (upper bound, observations in this bucket alone), ascending; observations above
    /// the last bound count only in `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// Adds another histogram with the same buckets.
    pub fn add(&mut self, other: &Histogram) {
        if self.buckets.is_empty() {
            self.buckets = other.buckets.iter().map(|(le, _)| (*le, 0)).collect();
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            mine.1 += theirs.1;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// One sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter's or gauge's value (1 for an info).
    Number(f64),
    /// A histogram's.
    Histogram(Histogram),
}

/// A metric family: name (without `_total`/`_info`), help, kind and samples.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<(Labels, Value)>,
}

/// The content type of [`text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of [`openmetrics`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (a media range of that type whose
/// quality is not 0).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let ty = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        ty.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// The two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn for_accept(accept: &str) -> Format {
        if wants_openmetrics(accept) {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// Its content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The families in `format`.
pub fn encode(families: &[Family], format: Format) -> String {
    let om = format == Format::OpenMetrics;
    let mut out = String::new();
    for f in families {
        let sample_name = match f.kind {
            Kind::Counter => format!("{}_total", f.name),
            Kind::Info => format!("{}_info", f.name),
            _ => f.name.to_owned(),
        };
        // Text 0.0.4 knows no info type, and names a counter's family with `_total`.
        let (family_name, ty) = match (f.kind, om) {
            (Kind::Counter, true) => (f.name, "counter"),
            (Kind::Counter, false) => (sample_name.as_str(), "counter"),
            (Kind::Gauge, _) => (f.name, "gauge"),
            (Kind::Histogram, _) => (f.name, "histogram"),
            (Kind::Info, true) => (f.name, "info"),
            (Kind::Info, false) => (sample_name.as_str(), "gauge"),
        };
        let _ = writeln!(out, "# TYPE {family_name} {ty}");
        let _ = writeln!(out, "# HELP {family_name} {}", escape(f.help, om));
        for (labels, value) in &f.samples {
            match value {
                Value::Number(v) => sample(&mut out, &sample_name, labels, None, *v),
                Value::Histogram(h) => {
                    let bucket = format!("{sample_name}_bucket");
                    let mut cumulative = 0;
                    for (le, n) in &h.buckets {
                        cumulative += n;
                        let le = if om { float(*le) } else { number(*le) };
                        sample(&mut out, &bucket, labels, Some(&le), cumulative as f64);
                    }
                    sample(&mut out, &bucket, labels, Some("+Inf"), h.count as f64);
                    sample(&mut out, &format!("{sample_name}_sum"), labels, None, h.sum);
                    let count = format!("{sample_name}_count");
                    sample(&mut out, &count, labels, None, h.count as f64);
                }
            }
        }
    }
    if om {
        out.push_str("# EOF\n");
    }
    out
}

fn sample(out: &mut String, name: &str, labels: &Labels, le: Option<&str>, v: f64) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let le = le.map(|le| ("le", le));
        let all = labels.iter().map(|(k, v)| (*k, v.as_str())).chain(le);
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v, true));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&number(v));
    out.push('\n');
}

/// A sample value: whole numbers without a fraction.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A float in OpenMetrics' canonical form (`1.0`, `0.25`).
fn float(v: f64) -> String {
    format!("{v:?}")
}

/// Escapes help text (`\` and newline; also `"` in OpenMetrics) or a label value
/// (all three).
fn escape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families() -> Vec<Family> {
        vec![
            Family {
                name: "hifi_x_events",
                help: "Events, with a \\ and\na newline",
                kind: Kind::Counter,
                samples: vec![(vec![("node", "a\"b".into())], Value::Number(3.0))],
            },
            Family {
                name: "hifi_lag_seconds",
                help: "Lag",
                kind: Kind::Histogram,
                samples: vec![(
                    vec![("node", "n".into())],
                    Value::Histogram(Histogram {
                        buckets: vec![(0.5, 2), (1.0, 1)],
                        sum: 2.25,
                        count: 4,
                    }),
                )],
            },
            Family {
                name: "hifi_build",
                help: "Build",
                kind: Kind::Info,
                samples: vec![(vec![("version", "1.0".into())], Value::Number(1.0))],
            },
        ]
    }

    #[test]
    fn text_format_names_counters_with_total_and_buckets_cumulatively() {
        let t = encode(&families(), Format::Text);
        let want = "# TYPE hifi_x_events_total counter\n\
            # HELP hifi_x_events_total Events, with a \\\\ and\\na newline\n\
            hifi_x_events_total{node=\"a\\\"b\"} 3\n\
            # TYPE hifi_lag_seconds histogram\n\
            # HELP hifi_lag_seconds Lag\n\
            hifi_lag_seconds_bucket{node=\"n\",le=\"0.5\"} 2\n\
            hifi_lag_seconds_bucket{node=\"n\",le=\"1\"} 3\n\
            hifi_lag_seconds_bucket{node=\"n\",le=\"+Inf\"} 4\n\
            hifi_lag_seconds_sum{node=\"n\"} 2.25\n\
            hifi_lag_seconds_count{node=\"n\"} 4\n\
            # TYPE hifi_build_info gauge\n\
            # HELP hifi_build_info Build\n\
            hifi_build_info{version=\"1.0\"} 1\n";
        assert_eq!(t, want);
    }

    #[test]
    fn openmetrics_names_families_without_suffixes_and_ends_with_eof() {
        let o = encode(&families(), Format::OpenMetrics);
        assert!(o.starts_with("# TYPE hifi_x_events counter\n# HELP hifi_x_events Events, with a \\\\ and\\na newline\n"), "{o}");
        assert!(
            o.contains("hifi_x_events_total{node=\"a\\\"b\"} 3\n"),
            "{o}"
        );
        assert!(
            o.contains("hifi_lag_seconds_bucket{node=\"n\",le=\"1.0\"} 3\n"),
            "{o}"
        );
        assert!(o.contains("# TYPE hifi_build info\nhifi_build_info") || o.contains("# TYPE hifi_build info\n# HELP hifi_build Build\nhifi_build_info{version=\"1.0\"} 1\n"), "{o}");
        assert!(o.ends_with("# EOF\n"), "{o}");
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        ));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
    }
}
