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
    admin: String,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Bearer token of `[admin.auth]`, for commands that change state (re-drive).
    #[arg(long, env = "HIFI_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

async fn get(admin: &Admin, path: &str) -> Result<Value> {
    let url = format!("http://{}{path}", admin.admin);
    answer(&url, reqwest::get(&url).await).await
}

async fn post(admin: &Admin, path: &str, body: &Value) -> Result<Value> {
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

fn q(v: &Value) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    format!(
        "{:>8.1} {:>8.1} {:>8.1} {:>8.1}",
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
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("lag in ms since start (p50 p95 p99 max)");
    println!(
        "{:<16} {:<7} {:>9}  {:<35}  {:<35}  {:<35}",
        "node", "kind", "events", "lag-in", "lag-out", "process"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<7} {:>9}  {}  {}  {}",
            n["node"].as_str().unwrap_or(""),
            n["kind"].as_str().unwrap_or(""),
            n["events"].as_u64().unwrap_or(0),
            q(&n["lag_in_ms"]),
            q(&n["lag_out_ms"]),
            q(&n["process_ms"])
        );
    }
    println!(
        "{:<16} {:<7} {:>9}  {:<35}  {}",
        "E2E",
        "",
        "",
        "",
        q(&v["e2e_ms"])
    );
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
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let buckets = v["buckets"].as_array().cloned().unwrap_or_default();
    if buckets.is_empty() {
        println!("no buckets in that range");
        return Ok(ExitCode::SUCCESS);
    }
    let mut lossy = false;
    for b in &buckets {
        let lost = b["e2e_lost"].as_u64().unwrap_or(0);
        lossy |= lost > 0 && b["settled"].as_bool() == Some(true);
        println!(
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
            println!(
                "    {:<16} seen {:>8}  lost {:>6}  filtered {:>6}  dead-lettered {:>6}  delivered {:>8}  retrying {:>6}",
                n["node"].as_str().unwrap_or(""),
                g("seen"),
                g("lost"),
                g("filtered"),
                g("dead_lettered"),
                g("delivered"),
                g("retrying")
            );
        }
        for l in b["lost"].as_array().into_iter().flatten().take(5) {
            println!(
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
pub async fn trace(admin: Admin, origin: Option<String>, id: Option<String>) -> Result<ExitCode> {
    let path = match (origin, id) {
        (Some(o), None) => format!("/v1/events/{o}/trace"),
        (None, Some(id)) => format!("/v1/trace?id={}", url_escape(&id)),
        _ => bail!("give either an origin (topic/partition/offset) or --id EVENT_ID"),
    };
    let v = get(&admin, &path).await?;
    if admin.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "event {} (origin {}), event time {}, ingested {}",
        v["id"].as_str().unwrap_or("?"),
        v["origin"].as_str().unwrap_or("?"),
        v["event_time"].as_str().unwrap_or("?"),
        v["ingest_time"].as_str().unwrap_or("?")
    );
    println!(
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
        println!(
            "  {:<16} {:<7} {what}",
            n["node"].as_str().unwrap_or(""),
            n["kind"].as_str().unwrap_or("")
        );
    }
    if let Some(note) = v["note"].as_str() {
        println!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

fn url_escape(s: &str) -> String {
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
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let items = v["dead_letters"].as_array().cloned().unwrap_or_default();
            for d in &items {
                let r = &d["reason"];
                println!(
                    "{}  {}  {}{}: {}",
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
            println!(
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
            println!("{}", serde_json::to_string_pretty(&v)?);
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
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if dry_run {
                println!(
                    "would re-drive {} dead letter(s) of sink {sink} (dry run)",
                    v["matched"]
                );
            } else {
                println!("re-drove {} dead letter(s) of sink {sink}", v["redriven"]);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
