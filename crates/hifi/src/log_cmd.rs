//! `hifi log ...`: verify, dump and append to an embedded log by hand.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use hifi_log::verify::{dump, verify_dir};
use hifi_log::{EmbeddedLog, FsyncPolicy, Log, LogConfig, Record, StoredRecord, TopicSpec};

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Check every segment's framing and checksums; exit 0 when clean, 1 on damage.
    Verify {
        /// The data directory (the engine's `data_dir`).
        data_dir: PathBuf,
        /// Largest record the log was configured for (bytes).
        #[arg(long, default_value_t = 1 << 20)]
        record_bytes_max: usize,
    },
    /// Print records as JSON lines; stops with an error at a record it cannot verify.
    Dump {
        /// The data directory.
        data_dir: PathBuf,
        #[command(flatten)]
        at: TopicPartition,
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// Largest record the log was configured for (bytes).
        #[arg(long, default_value_t = 1 << 20)]
        record_bytes_max: usize,
    },
    /// Append each line of standard input as one record (durably), printing its offset.
    Append {
        /// The data directory (created if missing).
        data_dir: PathBuf,
        #[command(flatten)]
        at: TopicPartition,
        /// Partitions to create the topic with, if it does not exist.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Durability policy.
        #[arg(long, value_enum, default_value_t = Fsync::Always)]
        fsync: Fsync,
        /// Lines waiting on standard input are appended together, up to this many.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Append from many tasks until killed, printing `ack <partition> <offset> <task>
    /// <seq>` after each durable append (the crash test's child process).
    #[command(hide = true)]
    Stress(StressArgs),
    /// Measure the engine against the disk's raw limits; prints a Markdown table.
    Bench(crate::log_bench::BenchArgs),
    /// Damaged regions hifi quarantined (copied aside and skipped by readers).
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// One line per quarantined region: topic/partition, offsets skipped, where, why,
    /// when (`--json` for the records). Safe while hifi runs.
    List {
        /// The data directory.
        data_dir: PathBuf,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct TopicPartition {
    /// Topic name.
    #[arg(long)]
    topic: String,
    /// Partition number.
    #[arg(long, default_value_t = 0)]
    partition: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Fsync {
    Always,
    Interval,
    Never,
}

impl From<Fsync> for FsyncPolicy {
    fn from(f: Fsync) -> Self {
        match f {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Interval => FsyncPolicy::Interval(Duration::from_secs(1)),
            Fsync::Never => FsyncPolicy::Never,
        }
    }
}

#[derive(Debug, Args)]
pub struct StressArgs {
    data_dir: PathBuf,
    #[arg(long, default_value = "stress")]
    topic: String,
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    #[arg(long, default_value_t = 8)]
    tasks: u64,
    #[arg(long, default_value_t = 4)]
    batch: u64,
    #[arg(long, default_value_t = 200)]
    value_bytes: usize,
}

pub async fn run(cmd: LogCommand) -> Result<ExitCode> {
    match cmd {
        LogCommand::Verify {
            data_dir,
            record_bytes_max,
        } => verify(data_dir, record_bytes_max),
        LogCommand::Dump {
            data_dir,
            at,
            from,
            limit,
            record_bytes_max,
        } => dump_cmd(
            data_dir,
            at,
            from,
            limit.unwrap_or(u64::MAX),
            record_bytes_max,
        ),
        LogCommand::Append {
            data_dir,
            at,
            partitions,
            fsync,
            batch,
        } => append(data_dir, at, partitions, fsync, batch).await,
        LogCommand::Stress(args) => stress(args).await,
        LogCommand::Bench(args) => crate::log_bench::run(args).await,
        LogCommand::Quarantine(QuarantineCommand::List { data_dir, json }) => {
            quarantine_list(&data_dir, json)
        }
    }
}

fn quarantine_list(data_dir: &std::path::Path, json: bool) -> Result<ExitCode> {
    let entries = hifi_log::quarantine::list(data_dir).with_context(|| {
        format!(
            "reading the quarantine folders under {}",
            data_dir.display()
        )
    })?;
    let mut out = std::io::stdout().lock();
    if json {
        for e in &entries {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        writeln!(out, "no quarantined regions under {}", data_dir.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<24} {:>21}  {:<40} reason (quarantined at)",
        "topic/partition", "offsets skipped", "segment:bytes"
    )?;
    for e in &entries {
        let at = rfc3339_seconds(e.quarantined_at_ms);
        writeln!(
            out,
            "{:<24} {:>21}  {:<40} {} ({at})",
            format!("{}/{}", e.topic, e.partition),
            format!("{}..{}", e.first_offset, e.next_offset),
            format!(
                "{}:{}..{}",
                e.segment
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
                e.position,
                e.end_position
            ),
            e.reason
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Epoch ms as RFC 3339 (UTC, seconds).
fn rfc3339_seconds(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

fn verify(data_dir: PathBuf, record_bytes_max: usize) -> Result<ExitCode> {
    let reports = verify_dir(&data_dir, record_bytes_max)
        .with_context(|| format!("verifying {}", data_dir.display()))?;
    let mut damaged = false;
    for r in &reports {
        let range = match (r.first_offset, r.last_offset) {
            (Some(a), Some(b)) => format!("offsets {a}..={b}"),
            _ => "empty".to_owned(),
        };
        let status = if r.problems.is_empty() {
            "ok"
        } else {
            "DAMAGED"
        };
        outln!(
            "{}/{}: {status}: {} records, {range}, {} segments",
            r.topic,
            r.partition,
            r.records,
            r.segments
        );
        for p in &r.problems {
            outln!("  {p}");
            damaged = true;
        }
    }
    if reports.is_empty() {
        outln!("no topics in {}", data_dir.display());
    }
    Ok(if damaged {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn dump_cmd(
    data_dir: PathBuf,
    at: TopicPartition,
    from: u64,
    limit: u64,
    body_max: usize,
) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_err = None;
    let result = dump(
        &data_dir,
        &at.topic,
        at.partition,
        from,
        limit,
        body_max,
        |r| {
            if write_err.is_none() {
                if let Err(e) = writeln!(out, "{}", record_json(r)) {
                    write_err = Some(e);
                }
            }
        },
    );
    out.flush()?;
    if let Some(e) = write_err {
        return Err(e).context("writing to standard output");
    }
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// A record as one JSON object: text stays text, other bytes are base64.
fn record_json(r: &StoredRecord) -> serde_json::Value {
    let bytes = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => serde_json::json!(s),
        Err(_) => {
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) })
        }
    };
    let headers: serde_json::Map<String, serde_json::Value> = r
        .record
        .headers
        .iter()
        .map(|h| (h.name.to_string(), bytes(&h.value)))
        .collect();
    serde_json::json!({
        "offset": r.offset,
        "timestamp_ms": r.record.timestamp_ms,
        "key": r.record.key.as_deref().map(bytes),
        "headers": headers,
        "value": bytes(&r.record.value),
    })
}

async fn open_log(data_dir: PathBuf, config: LogConfig) -> Result<EmbeddedLog> {
    let shown = data_dir.display().to_string();
    tokio::task::spawn_blocking(move || EmbeddedLog::open(&data_dir, config))
        .await?
        .with_context(|| format!("opening the log in {shown}"))
}

async fn append(
    data_dir: PathBuf,
    at: TopicPartition,
    partitions: u32,
    fsync: Fsync,
    batch: usize,
) -> Result<ExitCode> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let log = open_log(
        data_dir,
        LogConfig {
            fsync: fsync.into(),
            ..LogConfig::default()
        },
    )
    .await?;
    let actual = log
        .ensure_topic(&TopicSpec::new(&at.topic, partitions))
        .await;
    let actual = match actual {
        Err(hifi_log::LogError::PartitionCountMismatch { existing, .. }) => existing,
        other => other?,
    };
    if at.partition >= actual {
        bail!(
            "topic {:?} has {actual} partitions; there is no partition {}",
            at.topic,
            at.partition
        );
    }
    // A thread reads lines so that lines already waiting go into one append.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(batch);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let mut total = 0u64;
    while let Some(first) = rx.recv().await {
        let mut lines = vec![first?];
        while lines.len() < batch {
            match rx.try_recv() {
                Ok(line) => lines.push(line?),
                Err(_) => break,
            }
        }
        let ts = hifi_pipeline::now_ms();
        let records: Vec<Record> = lines.into_iter().map(|l| Record::new(l, ts)).collect();
        let offsets = log.append(&at.topic, at.partition, records).await?;
        let mut out = std::io::stdout().lock();
        for o in &offsets {
            writeln!(out, "{o}")?;
        }
        out.flush()?;
        total += offsets.len() as u64;
    }
    log.close().await;
    eprintln!("appended {total} records to {}/{}", at.topic, at.partition);
    Ok(ExitCode::SUCCESS)
}

async fn stress(args: StressArgs) -> Result<ExitCode> {
    let log = open_log(args.data_dir, LogConfig::default()).await?;
    log.ensure_topic(&TopicSpec::new(&args.topic, args.partitions))
        .await?;
    let mut tasks = Vec::new();
    for task in 0..args.tasks {
        let (log, topic) = (log.clone(), args.topic.clone());
        let (batch, value_bytes, partition) = (
            args.batch,
            args.value_bytes,
            (task % args.partitions as u64) as u32,
        );
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                let records = (seq..seq + batch)
                    .map(|s| hifi_log::stress::stress_record(task, s, value_bytes))
                    .collect();
                let offsets = log.append(&topic, partition, records).await?;
                let mut line = String::new();
                for (i, o) in offsets.into_iter().enumerate() {
                    line.push_str(&format!("ack {partition} {o} {task} {}\n", seq + i as u64));
                }
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes())?;
                out.flush()?;
                seq += batch;
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(ExitCode::SUCCESS)
}
