//! `hifi fingerprint`: a fingerprinted node's figures per bucket (`show`), and two of them
//! compared bucket by bucket and metric by metric (`diff`) — e.g. a stage and a
//! candidate rewrite of it reading the same input, or one node in two instances.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// `hifi fingerprint …`
#[derive(Debug, Subcommand)]
pub enum FingerprintCommand {
    /// A node's figures per event-time bucket.
    Show {
        /// The node (`sources.X` or `stages.X`).
        node: String,
        #[command(flatten)]
        range: Range,
    },
    /// Two nodes' figures compared per bucket and metric, with the relative change.
    Diff {
        /// The node taken as the reference (`stages.big`, or a version: `big@3f2a9c1d`).
        a: String,
        /// The node compared with it (`stages.copy`, `big@77e01b2a`).
        b: String,
        /// Admin address of the instance running B, when not the one running A.
        #[arg(long)]
        admin_b: Option<String>,
        /// Also list the metrics that did not change.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        range: Range,
    },
}

/// Where and what range.
#[derive(Debug, Args)]
pub struct Range {
    /// Admin address of the running instance.
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin: String,
    /// From (RFC 3339 or epoch ms; default a day ago).
    #[arg(long)]
    from: Option<String>,
    /// To (RFC 3339 or epoch ms; default now).
    #[arg(long)]
    to: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: FingerprintCommand) -> Result<ExitCode> {
    match cmd {
        FingerprintCommand::Show { node, range } => {
            let f = fetch(&range.admin, &node, &range).await?;
            if range.json {
                outln!("{}", serde_json::to_string_pretty(&f)?);
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "{} (topic {}), buckets of {}, counted up to offsets {}",
                node,
                f["topic"].as_str().unwrap_or("?"),
                humantime::format_duration(std::time::Duration::from_millis(
                    f["bucket_ms"].as_u64().unwrap_or(0)
                )),
                f["read_to"]
            );
            for (start, b) in buckets(&f) {
                outln!("{start}  {} events", b["count"]);
                let fields = b["fields"].as_object().cloned().unwrap_or_default();
                for (name, m) in fields {
                    let mut line = format!(
                        "  {name:<20} nulls {:>6} ({:>5.1} %)  distinct ~{}",
                        m["nulls"],
                        m["null_rate"].as_f64().unwrap_or(0.0) * 100.0,
                        m["distinct"]
                    );
                    if m["numbers"].is_u64() {
                        line += &format!(
                            "  min {} max {} mean {:.4}",
                            m["min"],
                            m["max"],
                            m["mean"].as_f64().unwrap_or(f64::NAN)
                        );
                    }
                    if let Some(e) = m["entropy"].as_object() {
                        let bits = e["bits"].as_f64().unwrap_or(0.0);
                        line += &if e["exact"] == true {
                            format!("  entropy {bits:.4} bits")
                        } else {
                            format!(
                                "  entropy ~{bits:.4} bits ({:.4} to {:.4})",
                                e["low"].as_f64().unwrap_or(0.0),
                                e["high"].as_f64().unwrap_or(0.0)
                            )
                        };
                    }
                    outln!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        FingerprintCommand::Diff {
            a,
            b,
            admin_b,
            all,
            range,
        } => {
            let fa = fetch(&range.admin, &a, &range).await?;
            let fb = fetch(admin_b.as_deref().unwrap_or(&range.admin), &b, &range).await?;
            if fa["bucket_ms"] != fb["bucket_ms"] {
                bail!(
                    "{a} and {b} have different buckets ({} and {} ms): nothing to compare bucket by bucket",
                    fa["bucket_ms"],
                    fb["bucket_ms"]
                );
            }
            let rows = diff(&fa, &fb);
            if range.json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"a": a, "b": b, "rows": rows}))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "{:<24} {:<34} {:>14} {:>14} {:>9}",
                "bucket",
                "metric",
                a,
                b,
                "change"
            );
            let mut shown = 0;
            for r in &rows {
                if !all && r["a"] == r["b"] {
                    continue;
                }
                shown += 1;
                let change = change_label(r);
                outln!(
                    "{:<24} {:<34} {:>14} {:>14} {:>9}",
                    r["bucket"].as_str().unwrap_or(""),
                    r["metric"].as_str().unwrap_or(""),
                    show(&r["a"]),
                    show(&r["b"]),
                    change
                );
            }
            if shown == 0 {
                outln!("no differences in {} metrics", rows.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `hifi signals`: the newest bucket signals.
#[derive(Debug, Args)]
pub struct SignalsArgs {
    /// Only `complete`, `updated` or `hifi.audit.failed` signals.
    #[arg(long = "type")]
    kind: Option<String>,
    /// How many, newest last.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Admin address of the running instance.
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin: String,
    /// Print JSON instead of a line per signal.
    #[arg(long)]
    json: bool,
}

pub async fn signals(args: SignalsArgs) -> Result<ExitCode> {
    let SignalsArgs {
        kind,
        limit,
        admin,
        json,
    } = args;
    let mut params = vec![("limit", limit.to_string())];
    params.extend(kind.map(|k| ("type", k)));
    let url = reqwest::Url::parse_with_params(&format!("http://{admin}/v1/signals"), params)
        .with_context(|| format!("{admin:?} is not an address"))?;
    let v = crate::ops::get_url(url.as_str()).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in v["signals"].as_array().into_iter().flatten() {
        let d = &s["data"];
        let what = match s["type"].as_str() {
            Some("hifi.bucket.updated") => format!(
                "updated: {} late events, {} in all",
                d["late_events"], d["count"]
            ),
            Some("hifi.audit.failed") => format!(
                "audit failed{}: {:?} ({}){}, {} events",
                if d["blocking"] == true {
                    " (blocking)"
                } else {
                    ""
                },
                d["audit"].as_str().unwrap_or(""),
                d["check"].as_str().unwrap_or(""),
                d["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
                d["count"]
            ),
            _ => format!("complete: {} events", d["count"]),
        };
        outln!(
            "{}  {}  {}  {what}",
            s["time"].as_str().unwrap_or(""),
            d["node"].as_str().unwrap_or(""),
            s["subject"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The fingerprint of a node, or of `STAGE@VERSION` (a version of a versioned stage, as
/// `hifi versions` lists it: the server finds the node that version's fingerprint runs in).
async fn fetch(admin: &str, node: &str, range: &Range) -> Result<Value> {
    let mut params = match node.split_once('@') {
        Some((stage, version)) => vec![
            (
                "node",
                format!("stages.{}", stage.strip_prefix("stages.").unwrap_or(stage)),
            ),
            ("version", version.to_owned()),
        ],
        None => vec![("node", node.to_owned())],
    };
    params.extend(range.from.clone().map(|f| ("from", f)));
    params.extend(range.to.clone().map(|t| ("to", t)));
    let url = reqwest::Url::parse_with_params(&format!("http://{admin}/v1/fingerprints"), params)
        .with_context(|| format!("{admin:?} is not an address"))?;
    let v = crate::ops::get_url(url.as_str()).await?;
    Ok(v["nodes"][0].clone())
}

/// Buckets by start, as RFC 3339.
fn buckets(f: &Value) -> BTreeMap<String, Value> {
    f["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| (b["start"].as_str().unwrap_or("").to_owned(), b.clone()))
        .collect()
}

/// A row's change as printed: relative, or why there is none.
fn change_label(r: &Value) -> String {
    match r["change"].as_f64() {
        Some(c) => format!("{:+.1} %", c * 100.0),
        None if r["a"] == r["b"] => "=".to_owned(),
        None if r["b"].is_null() => "gone".to_owned(),
        None if r["a"].is_null() => "new".to_owned(),
        // From zero to something: no relative change.
        None => "from 0".to_owned(),
    }
}

/// Every metric of every bucket in either, as rows {bucket, metric, a, b, change}.
fn diff(a: &Value, b: &Value) -> Vec<Value> {
    let (ba, bb) = (buckets(a), buckets(b));
    let starts: std::collections::BTreeSet<&String> = ba.keys().chain(bb.keys()).collect();
    let mut rows = Vec::new();
    for start in starts {
        let (ma, mb) = (
            metrics(ba.get(start).unwrap_or(&Value::Null)),
            metrics(bb.get(start).unwrap_or(&Value::Null)),
        );
        let names: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
        for name in names {
            let (x, y) = (ma.get(name).copied(), mb.get(name).copied());
            let change = match (x, y) {
                (Some(x), Some(y)) if x != 0.0 => Some((y - x) / x.abs()),
                (Some(x), Some(y)) if x == y => Some(0.0),
                _ => None,
            };
            rows.push(json!({"bucket": start, "metric": name, "a": x, "b": y, "change": change}));
        }
    }
    rows
}

/// A bucket's metrics by name: `count`, `FIELD.nulls`, `FIELD.null_rate`,
/// `FIELD.distinct`, `FIELD.min|max|mean`, `FIELD.entropy`.
fn metrics(bucket: &Value) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    if let Some(c) = bucket["count"].as_f64() {
        m.insert("count".to_owned(), c);
    }
    for (field, f) in bucket["fields"].as_object().into_iter().flatten() {
        for k in ["nulls", "null_rate", "distinct", "min", "max", "mean"] {
            if let Some(v) = f[k].as_f64() {
                m.insert(format!("{field}.{k}"), v);
            }
        }
        if let Some(bits) = f["entropy"]["bits"].as_f64() {
            m.insert(format!("{field}.entropy"), bits);
        }
    }
    m
}

fn show(v: &Value) -> String {
    match v.as_f64() {
        None => "-".to_owned(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) => format!("{x:.4}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_name_every_metric_of_both_with_its_relative_change() {
        let a = json!({"buckets": [{"start": "t1", "count": 100, "fields": {
            "country": {"nulls": 0, "null_rate": 0.0, "distinct": 3, "entropy": {"bits": 1.5}}}}]});
        let b = json!({"buckets": [
            {"start": "t1", "count": 100, "fields": {
                "country": {"nulls": 100, "null_rate": 1.0, "distinct": 0, "entropy": {"bits": 0.0}}}},
            {"start": "t2", "count": 5, "fields": {}}]});
        let rows = diff(&a, &b);
        let find = |bucket: &str, metric: &str| {
            rows.iter()
                .find(|r| r["bucket"] == bucket && r["metric"] == metric)
                .cloned()
                .unwrap()
        };
        assert_eq!(find("t1", "count")["change"], 0.0);
        assert_eq!(find("t1", "country.entropy")["change"], -1.0);
        assert_eq!(
            find("t1", "country.nulls")["change"],
            Value::Null,
            "from 0: new"
        );
        assert_eq!(find("t2", "count")["a"], Value::Null);
        assert_eq!(rows.len(), 5 + 1);
        assert_eq!(change_label(&find("t1", "country.entropy")), "-100.0 %");
        assert_eq!(change_label(&find("t1", "country.nulls")), "from 0");
        assert_eq!(change_label(&find("t2", "count")), "new");
        let back = diff(&b, &a);
        let t2 = back.iter().find(|r| r["bucket"] == "t2").unwrap();
        assert_eq!(change_label(t2), "gone", "{t2}");
    }
}
