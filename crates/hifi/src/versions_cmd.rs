//! `hifi versions [STAGE]`, `hifi versions gc` and `hifi publish STAGE VERSION`: a
//! running instance's stage versions (admin API `/v1/versions`), removing retired ones'
//! topics, and publishing a candidate.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::ops::{self, Admin};

/// `hifi versions` actions.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Delete the topics and consumer groups of retired versions (neither published
    /// nor the file's candidate): nothing reads them. A collected version that the
    /// file names again backfills anew. Its fingerprints go with its topics.
    Gc {
        #[command(flatten)]
        admin: Admin,
        /// Only this stage's versions.
        stage: Option<String>,
        /// Say what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also collect versions whose dead letters (of their life as a candidate) were
        /// not all re-driven: those dead letters are deleted with them.
        #[arg(long)]
        with_dead_letters: bool,
    },
}

/// How long `hifi publish` waits for the nodes to come back on the new version.
const PUBLISH_WAIT: Duration = Duration::from_secs(120);

/// `hifi versions [STAGE]`.
pub async fn versions(admin: Admin, stage: Option<String>) -> Result<ExitCode> {
    let path = match &stage {
        Some(s) => format!("/v1/versions?stage={}", ops::url_escape(s)),
        None => "/v1/versions".to_owned(),
    };
    let v = ops::get(&admin, &path).await?;
    if admin.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let stages = v["stages"].as_array().cloned().unwrap_or_default();
    if stages.is_empty() {
        outln!("no versioned stages (add `versions = {{ publish = \"auto\" }}` to a stage)");
    }
    for s in stages {
        outln!(
            "stages.{} → {} (publish = {})",
            s["stage"].as_str().unwrap_or(""),
            s["output"].as_str().unwrap_or(""),
            s["publish"].as_str().unwrap_or("")
        );
        let failed = &s["last_publish_failure"];
        if failed.is_object() {
            outln!(
                "  last publish failed: v{} at {}: {}",
                failed["version"].as_str().unwrap_or(""),
                failed["at"].as_str().unwrap_or(""),
                failed["error"].as_str().unwrap_or("")
            );
        }
        for v in s["versions"].as_array().cloned().unwrap_or_default() {
            outln!("  {}", version_line(&v));
            if v["state"] == "candidate" {
                let diff = v["diff_against_published"].as_str().unwrap_or("");
                for line in diff.lines() {
                    outln!("      {line}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn version_line(v: &Value) -> String {
    let mut line = format!(
        "v{}  {:<9}  {}  created {}",
        v["version"].as_str().unwrap_or(""),
        v["state"].as_str().unwrap_or(""),
        v["topic"].as_str().unwrap_or(""),
        v["created"].as_str().unwrap_or("")
    );
    if let Some(f) = v["fingerprint"].as_object() {
        line.push_str(&format!(
            "  {} events in {} buckets",
            f["count"], f["buckets"]
        ));
    }
    let st = &v["status"];
    if st.is_object() {
        // Buckets are judged only with a fingerprint.
        let buckets = if v["fingerprint"].is_object() {
            format!(
                "; audited buckets: {} passed, {} waiting to complete",
                st["buckets_passed"], st["buckets_waiting"]
            )
        } else {
            String::new()
        };
        line.push_str(&format!(
            "  [{}: {} done, {} left{}{buckets}]",
            st["state"].as_str().unwrap_or(""),
            st["done"],
            st["left"],
            st["eta_seconds"]
                .as_f64()
                .map(|s| format!(", ETA {s:.0} s"))
                .unwrap_or_default(),
        ));
        for b in st["blocked_by"].as_array().cloned().unwrap_or_default() {
            line.push_str(&format!(
                "\n      blocked: bucket {} ({} events) audit {:?} ({}) failed{}",
                b["bucket_start"].as_str().unwrap_or(""),
                b["count"],
                b["audit"].as_str().unwrap_or(""),
                b["check"].as_str().unwrap_or(""),
                b["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    line
}

/// `hifi publish STAGE VERSION`: asks, then waits for the nodes to run it.
pub async fn publish(
    admin: Admin,
    stage: String,
    version: String,
    redeliver_from: Option<String>,
) -> Result<ExitCode> {
    let version = version.trim_start_matches('v').to_owned();
    let path = format!(
        "/v1/versions/{}/{}/publish",
        ops::url_escape(&stage),
        ops::url_escape(&version)
    );
    let body = match &redeliver_from {
        Some(t) => serde_json::json!({ "redeliver_from": t }),
        None => serde_json::json!({}),
    };
    // A failure is told by its time changing (the instance's clock, not this one's).
    let query = format!("/v1/versions?stage={}", ops::url_escape(&stage));
    let failed_before =
        ops::get(&admin, &query).await?["stages"][0]["last_publish_failure"]["at_ms"].as_i64();
    ops::post(&admin, &path, &body).await?;
    outln!(
        "publishing v{version} of stages.{stage}: the nodes stop (draining) and start again on it"
    );
    let deadline = Instant::now() + PUBLISH_WAIT;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(v) = ops::get(&admin, &query).await else {
            continue; // the admin API is away while the nodes restart
        };
        let failed = &v["stages"][0]["last_publish_failure"];
        if failed["version"].as_str() == Some(version.as_str())
            && failed["at_ms"].as_i64() != failed_before
        {
            bail!(
                "v{version} of stages.{stage} was not published (the previous version goes on): {}",
                failed["error"].as_str().unwrap_or("")
            );
        }
        if v["stages"][0]["published"].as_str() == Some(version.as_str()) {
            outln!(
                "published: readers of {} now follow v{version}",
                v["stages"][0]["output"].as_str().unwrap_or("")
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    bail!(
        "v{version} of stages.{stage} was not published within {} s; see the instance's log",
        PUBLISH_WAIT.as_secs()
    )
}

/// `hifi versions gc [STAGE] [--dry-run] [--with-dead-letters]`.
pub async fn gc(
    admin: Admin,
    stage: Option<String>,
    dry_run: bool,
    with_dead_letters: bool,
) -> Result<ExitCode> {
    // `hifi versions gc` listed a stage named gc before this command existed.
    let listed = ops::get(&admin, "/v1/versions").await?;
    if !dry_run
        && listed["stages"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["stage"] == "gc"))
    {
        bail!("a versioned stage is named gc: to list its versions, `hifi versions -- gc`; to collect, `hifi versions gc --dry-run` first, then POST /v1/versions/gc");
    }
    let body = serde_json::json!({
        "stage": stage, "dry_run": dry_run, "with_dead_letters": with_dead_letters,
    });
    let v = ops::post(&admin, "/v1/versions/gc", &body).await?;
    if admin.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let collected = v["collected"].as_array().cloned().unwrap_or_default();
    let kept = v["kept"].as_array().cloned().unwrap_or_default();
    if collected.is_empty() && kept.is_empty() {
        outln!("no retired versions to collect");
    }
    for k in &kept {
        outln!(
            "stages.{}@{}: kept: {}",
            k["stage"].as_str().unwrap_or(""),
            k["version"].as_str().unwrap_or(""),
            k["reason"].as_str().unwrap_or("")
        );
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    for c in collected {
        let topics: Vec<&str> = c["topics"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        outln!(
            "stages.{}@{}: {verb} {} ({} records) and group {}{}{}",
            c["stage"].as_str().unwrap_or(""),
            c["version"].as_str().unwrap_or(""),
            if topics.is_empty() {
                "no topics".to_owned()
            } else {
                topics.join(", ")
            },
            c["records"]
                .as_u64()
                .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            c["group"].as_str().unwrap_or(""),
            match c["dead_letters"].as_u64() {
                Some(n) if n > 0 => format!(", with {n} dead letters of its life as a candidate"),
                _ => String::new(),
            },
            if c["resumed"] == true {
                " (finishing an earlier collection)"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
