//! Operator commands against a running instance's admin API: `hifi lag`, `hifi loss`,
//! `hifi trace`. Each prints a table for a terminal (`--json` for the raw answer).

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

/// Where the admin API is.
#[derive(Debug, Args, Clone)]
pub struct Admin {
    /// Admin address of the running instance.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub(crate) admin: String,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Bearer token of `[admin.auth]`, for commands that change state (re-drive).
    #[arg(long, env = "HIFI_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub(crate) async fn get(admin: &Admin, path: &str) -> Result<Value> {
    let url = format!("http://{}{path}", admin.admin);
    answer(&url, reqwest::get(&url).await).await
}

/// GET of an admin API URL, as JSON (errors say what went wrong).
pub(crate) async fn get_url(url: &str) -> Result<Value> {
    answer(url, reqwest::get(url).await).await
}

pub(crate) async fn post(admin: &Admin, path: &str, body: &Value) -> Result<Value> {
    let url = format!("http://{}{path}", admin.admin);
    let mut req = reqwest::Client::new().post(&url).json(body);
    if let Some(t) = &admin.token {
        req = req.bearer_auth(t);
    }
    answer(&url, req.send().await).await
}

/// The JSON of an admin API answer, or an error saying what went wrong.
async fn answer(url: &str, resp: reqwest::Result<reqwest::Response>) -> Result<Value> {
    let resp = resp.with_context(|| {
        format!("cannot reach the admin API at {url} (is hifi running? --admin ADDR)")
    })?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("{url} did not answer JSON"))?;
    if !status.is_success() {
        bail!(
            "{url}: {status}: {}",
            body["error"].as_str().unwrap_or("error")
        );
    }
    Ok(body)
}

/// A duration in milliseconds with a unit that fits it: `0.42 ms`, `18.4 ms`,
/// `12.3 s`, `6.4 min`, `1.7 h`, `2.1 d`.
fn duration(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1_000.0 {
        format!("{ms:.1} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1_000.0)
    } else if ms < 3_600_000.0 {
        format!("{:.1} min", ms / 60_000.0)
    } else if ms < 86_400_000.0 {
        format!("{:.1} h", ms / 3_600_000.0)
    } else {
        format!("{:.1} d", ms / 86_400_000.0)
    }
}

/// p50 p95 p99 max of a quantiles object, each with its unit.
fn q(v: &Value) -> String {
    let f = |k: &str| duration(v[k].as_f64().unwrap_or(0.0));
    format!(
        "{:>9} {:>9} {:>9} {:>9}",
        f("p50"),
        f("p95"),
        f("p99"),
        f("max")
    )
}

/// `hifi lag`.
pub async fn lag(admin: Admin) -> Result<ExitCode> {
    let v = get(&admin, "/v1/lag").await?;
    if admin.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    // The latest closed 10-second window, when it is recent: what the lag is now.
    let latest = v["history"].as_array().and_then(|h| h.last()).filter(|p| {
        chrono::DateTime::parse_from_rfc3339(p["t"].as_str().unwrap_or(""))
            .is_ok_and(|t| (chrono::Utc::now() - t.to_utc()).num_seconds() < 30)
    });
    let now = |node: &str| match latest.map(|p| &p["nodes"][node]) {
        Some(n) if n["events"].as_u64().unwrap_or(0) > 0 => {
            duration(n["lag_out_p95_ms"].as_f64().unwrap_or(0.0))
        }
        _ => "-".to_owned(),
    };
    outln!("lag since start (p50 p95 p99 max); now = lag-out p95 of the last 10 s (- : nothing left the node)");
    outln!(
        "{:<16} {:<7} {:>9}  {:<39}  {:<39}  {:<39}  {:>9}",
        "node",
        "kind",
        "events",
        "lag-in",
        "lag-out",
        "process",
        "now"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let name = n["node"].as_str().unwrap_or("");
        outln!(
            "{:<16} {:<7} {:>9}  {}  {}  {}  {:>9}",
            name,
            n["kind"].as_str().unwrap_or(""),
            n["events"].as_u64().unwrap_or(0),
            q(&n["lag_in_ms"]),
            q(&n["lag_out_ms"]),
            q(&n["process_ms"]),
            now(name)
        );
    }
    let e2e_now = match latest {
        Some(p) if p["e2e_p95_ms"].as_f64().unwrap_or(0.0) > 0.0 => {
            duration(p["e2e_p95_ms"].as_f64().unwrap_or(0.0))
        }
        _ => "-".to_owned(),
    };
    outln!(
        "{:<16} {:<7} {:>9}  {:<39}  {}  {:<39}  {:>9}",
        "E2E",
        "",
        "",
        "",
        q(&v["e2e_ms"]),
        "",
        e2e_now
    );
    // Each sink's request limit: how far it may go now, and why.
    let stats = get(&admin, "/v1/stats").await?;
    let sinks: Vec<String> = stats["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["kind"] == "sink")
        .map(|n| {
            format!(
                "{} {} ({})",
                n["node"].as_str().unwrap_or(""),
                n["concurrency_limit"].as_u64().unwrap_or(0),
                n["concurrency_reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    if !sinks.is_empty() {
        outln!("requests in flight allowed: {}", sinks.join(", "));
    }
    // Sources with a standby ([engine.standby]): where ingest appends now.
    for n in stats["nodes"].as_array().into_iter().flatten() {
        let sb = &n["standby"];
        if !sb.is_object() {
            continue;
        }
        let u = |k: &str| sb[k].as_u64().unwrap_or(0);
        outln!(
            "standby: {} {}; {} events waiting to move into the cluster ({} through the standby, {} moved, {} failovers since start)",
            n["node"].as_str().unwrap_or(""),
            match sb["on_standby"].as_bool() {
                Some(true) => "appends to the standby (the cluster did not take its appends)",
                _ => "appends to the cluster",
            },
            u("waiting"),
            u("events_total"),
            u("moved_total"),
            u("failovers_total"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `hifi loss`.
pub async fn loss(admin: Admin, from: Option<String>, to: Option<String>) -> Result<ExitCode> {
    let mut path = "/v1/loss?".to_owned();
    if let Some(f) = from {
        path.push_str(&format!("from={f}&"));
    }
    if let Some(t) = to {
        path.push_str(&format!("to={t}&"));
    }
    let v = get(&admin, &path).await?;
    if admin.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let buckets = v["buckets"].as_array().cloned().unwrap_or_default();
    if buckets.is_empty() {
        outln!("no buckets in that range");
        return Ok(ExitCode::SUCCESS);
    }
    let mut lossy = false;
    for b in &buckets {
        let lost = b["e2e_lost"].as_u64().unwrap_or(0);
        lossy |= lost > 0 && b["settled"].as_bool() == Some(true);
        outln!(
            "{} {:<8} events {:>8}  e2e lost {:>6} ({:.4} %)",
            b["start"].as_str().unwrap_or(""),
            if b["settled"].as_bool() == Some(true) {
                "settled"
            } else {
                "open"
            },
            b["events"].as_u64().unwrap_or(0),
            lost,
            b["e2e_loss_percent"].as_f64().unwrap_or(0.0)
        );
        for n in b["nodes"].as_array().into_iter().flatten() {
            let g = |k: &str| n[k].as_u64().unwrap_or(0);
            outln!(
                "    {:<16} seen {:>8}  lost {:>6}  filtered {:>6}  dead-lettered {:>6}  delivered {:>8}  retrying {:>6}{}",
                n["node"].as_str().unwrap_or(""),
                g("seen"),
                g("lost"),
                g("filtered"),
                g("dead_lettered"),
                g("delivered"),
                g("retrying"),
                match g("redelivered") {
                    0 => String::new(),
                    r => format!("  (of them {r} re-delivered by a publish)"),
                }
            );
        }
        for l in b["lost"].as_array().into_iter().flatten().take(5) {
            outln!(
                "    lost: {} at {}",
                l["origin"].as_str().unwrap_or(""),
                l["node"].as_str().unwrap_or("")
            );
        }
    }
    Ok(if lossy {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `hifi trace`.
/// `hifi replay`.
pub async fn replay(
    admin: Admin,
    sink: String,
    from: String,
    to: Option<String>,
    dry_run: bool,
) -> Result<ExitCode> {
    let body = serde_json::json!({"from": from, "to": to, "dry_run": dry_run});
    let v = post(
        &admin,
        &format!("/v1/sinks/{}/replay", url_escape(&sink)),
        &body,
    )
    .await?;
    if admin.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!(
            "{} of {} records scanned are in the range; {}",
            v["matched"],
            v["scanned"],
            if dry_run {
                "nothing sent (dry run)"
            } else {
                "sent through the sink's first retry tier"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn trace(admin: Admin, origin: Option<String>, id: Option<String>) -> Result<ExitCode> {
    let path = match (origin, id) {
        (Some(o), None) => format!("/v1/events/{o}/trace"),
        (None, Some(id)) => format!("/v1/trace?id={}", url_escape(&id)),
        _ => bail!("give either an origin (topic/partition/offset) or --id EVENT_ID"),
    };
    let v = get(&admin, &path).await?;
    if admin.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "event {} (origin {}), event time {}, ingested {}",
        v["id"].as_str().unwrap_or("?"),
        v["origin"].as_str().unwrap_or("?"),
        v["event_time"].as_str().unwrap_or("?"),
        v["ingest_time"].as_str().unwrap_or("?")
    );
    outln!(
        "bucket {} ({})",
        v["bucket"].as_str().unwrap_or("?"),
        if v["settled"].as_bool() == Some(true) {
            "settled"
        } else {
            "open"
        }
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let outcomes: Vec<&str> = n["outcomes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str())
            .collect();
        let what = if n["lost_here"].as_bool() == Some(true) {
            "LOST HERE".to_owned()
        } else if outcomes.is_empty() {
            "-".to_owned()
        } else {
            outcomes.join(", ")
        };
        outln!(
            "  {:<16} {:<7} {what}",
            n["node"].as_str().unwrap_or(""),
            n["kind"].as_str().unwrap_or("")
        );
    }
    if let Some(note) = v["note"].as_str() {
        outln!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `hifi dlq ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter: event id, when, reason.
    List {
        #[command(flatten)]
        admin: Admin,
        /// The sink or stage.
        sink: String,
        /// Most recent N.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// One dead letter in full (reason and event).
    Show {
        #[command(flatten)]
        admin: Admin,
        /// The sink or stage.
        sink: String,
        /// The event id.
        event_id: String,
    },
    /// Send dead letters through the sink again (original ids and event times).
    Redrive {
        #[command(flatten)]
        admin: Admin,
        /// The sink or stage.
        sink: String,
        /// Only dead letters from this time on (RFC 3339 or epoch ms).
        #[arg(long)]
        since: Option<String>,
        /// Only those whose reason contains this text.
        #[arg(long)]
        reason_contains: Option<String>,
        /// Count what would be re-driven; send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `hifi dlq`.
pub async fn dlq(cmd: DlqCommand) -> Result<ExitCode> {
    match cmd {
        DlqCommand::List { admin, sink, limit } => {
            let v = get(
                &admin,
                &format!("/v1/sinks/{}/dlq?limit={limit}", url_escape(&sink)),
            )
            .await?;
            if admin.json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let items = v["dead_letters"].as_array().cloned().unwrap_or_default();
            if !items.is_empty() {
                outln!("{:<36}  {:<24}  reason", "id", "dead-lettered at");
            }
            for d in &items {
                let r = &d["reason"];
                outln!(
                    "{:<36}  {:<24}  {}{}: {}",
                    d["id"].as_str().unwrap_or("?"),
                    d["dead_lettered_at"].as_str().unwrap_or("?"),
                    r["class"].as_str().unwrap_or("?"),
                    if d["redriven"] == true {
                        " (re-driven)"
                    } else {
                        ""
                    },
                    r["body"].as_str().unwrap_or("")
                );
            }
            outln!(
                "{} dead letter(s) in sink {sink}",
                v["total"].as_u64().unwrap_or(0)
            );
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show {
            admin,
            sink,
            event_id,
        } => {
            let v = get(
                &admin,
                &format!(
                    "/v1/sinks/{}/dlq/{}",
                    url_escape(&sink),
                    url_escape(&event_id)
                ),
            )
            .await?;
            outln!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive {
            admin,
            sink,
            since,
            reason_contains,
            dry_run,
        } => {
            let body = serde_json::json!({ "since": since, "reason_contains": reason_contains, "dry_run": dry_run });
            let v = post(
                &admin,
                &format!("/v1/sinks/{}/dlq/redrive", url_escape(&sink)),
                &body,
            )
            .await?;
            if admin.json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else if dry_run {
                outln!(
                    "would re-drive {} dead letter(s) of sink {sink} (dry run)",
                    v["matched"]
                );
            } else {
                outln!("re-drove {} dead letter(s) of sink {sink}", v["redriven"]);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_get_a_unit_that_fits() {
        assert_eq!(duration(0.421), "0.42 ms");
        assert_eq!(duration(18.44), "18.4 ms");
        assert_eq!(duration(12_345.0), "12.3 s");
        assert_eq!(duration(383_778.8), "6.4 min");
        assert_eq!(duration(6_120_000.0), "1.7 h");
        assert_eq!(duration(181_440_000.0), "2.1 d");
    }
}
