//! `hifi log bench`: the engine's figures beside the disk's raw limits, measured in the
//! same run on the same file system, printed as a Markdown table for BENCHMARKS.md.
//!
//! Raw limits: sequential write bandwidth (1 MiB writes, one fsync at the end) and the
//! rate and latency of small (256 B) write + fdatasync pairs. Engine: append throughput
//! with `fsync = always` for 1/8/64 concurrent appenders × batches of 1/100 records of
//! 256-byte values, single-appender latency, and read throughput from the page cache.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use hifi_log::{EmbeddedLog, Log, LogConfig, ReadLimits, Record, TopicSpec};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scratch directory on the disk to measure (emptied first; default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per append measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// MiB written for the raw sequential bandwidth.
    #[arg(long, default_value_t = 256)]
    raw_mib: u64,
}

const VALUE_BYTES: usize = 256;

struct Raw {
    seq_mib_s: f64,
    fsync_rate: f64,
    fsync_p50_us: u64,
    fsync_p99_us: u64,
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let secs = Duration::from_secs_f64(args.seconds);
    let raw = raw_limits(&dir.join("raw.bin"), args.raw_mib, secs)?;
    let log_dir = dir.join("log");
    let _ = std::fs::remove_dir_all(&log_dir);
    let log = tokio::task::spawn_blocking({
        let d = log_dir.clone();
        move || EmbeddedLog::open(d, LogConfig::default())
    })
    .await??;

    outln!("| measurement | result | vs raw |");
    outln!("|---|---|---|");
    outln!(
        "| raw sequential write, 1 MiB writes + 1 fsync | {:.0} MiB/s | 1.00 |",
        raw.seq_mib_s
    );
    outln!(
        "| raw 256 B write + fdatasync | {:.0} /s, p50 {} µs, p99 {} µs | 1.00 |",
        raw.fsync_rate,
        raw.fsync_p50_us,
        raw.fsync_p99_us
    );
    let mut single = None;
    for appenders in [1usize, 8, 64] {
        for batch in [1usize, 100] {
            let topic = format!("a{appenders}b{batch}");
            let r = append_run(&log, &topic, appenders, batch, secs).await?;
            let written_mib_s = r.bytes as f64 / r.secs / (1 << 20) as f64;
            let events_s = r.events as f64 / r.secs;
            outln!(
                "| append, {appenders} appenders × batch {batch}, fsync always | {events_s:.0} events/s, {:.1} MiB/s payload ({written_mib_s:.1} MiB/s written), p50 {} µs, p99 {} µs per append | {:.2} of bandwidth, {:.1}× fsync rate |",
                events_s * VALUE_BYTES as f64 / (1 << 20) as f64,
                r.latency.value_at_quantile(0.5),
                r.latency.value_at_quantile(0.99),
                written_mib_s / raw.seq_mib_s,
                (r.appends as f64 / r.secs) / raw.fsync_rate,
            );
            if appenders == 1 && batch == 1 {
                single = Some((
                    r.latency.value_at_quantile(0.5),
                    r.latency.value_at_quantile(0.99),
                ));
            }
        }
    }
    if let Some((p50, p99)) = single {
        outln!(
            "| single appender latency (batch 1) | p50 {p50} µs, p99 {p99} µs | p99 = {:.2} × raw fsync p99 |",
            p99 as f64 / raw.fsync_p99_us.max(1) as f64
        );
    }
    let (records, read_secs) = read_run(&log, "a64b100").await?;
    outln!(
        "| read from page cache, 1 reader, 10 000-record batches | {:.0} records/s ({records} records) | |",
        records as f64 / read_secs
    );
    log.close().await;
    drop(log);
    let _ = std::fs::remove_dir_all(&log_dir);
    Ok(ExitCode::SUCCESS)
}

fn raw_limits(path: &std::path::Path, mib: u64, secs: Duration) -> Result<Raw> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    for i in 0..mib {
        file.write_all_at(&chunk, i << 20)?;
    }
    file.sync_data()?;
    let seq_mib_s = mib as f64 / started.elapsed().as_secs_f64();
    file.set_len(0)?;
    file.sync_all()?;

    let small = vec![0xa5u8; VALUE_BYTES];
    let mut hist = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < secs {
        let t = Instant::now();
        file.write_all_at(&small, n * VALUE_BYTES as u64)?;
        file.sync_data()?;
        hist.record(t.elapsed().as_micros() as u64)?;
        n += 1;
    }
    let fsync_rate = n as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(Raw {
        seq_mib_s,
        fsync_rate,
        fsync_p50_us: hist.value_at_quantile(0.5),
        fsync_p99_us: hist.value_at_quantile(0.99),
    })
}

struct AppendResult {
    events: u64,
    appends: u64,
    bytes: u64,
    secs: f64,
    latency: Histogram<u64>,
}

async fn append_run(
    log: &EmbeddedLog,
    topic: &str,
    appenders: usize,
    batch: usize,
    secs: Duration,
) -> Result<AppendResult> {
    log.ensure_topic(&TopicSpec::new(topic, 1)).await?;
    let template: Vec<Record> = (0..batch)
        .map(|_| Record::new(vec![b'v'; VALUE_BYTES], 1_700_000_000_000))
        .collect();
    let frame_bytes: u64 = template.iter().map(|r| r.frame_bytes() as u64).sum();
    let started = Instant::now();
    let deadline = started + secs;
    let template = Arc::new(template);
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (log, topic, template) = (log.clone(), topic.to_owned(), template.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut appends = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                log.append(&topic, 0, template.as_ref().clone()).await?;
                hist.record(t.elapsed().as_micros() as u64)?;
                appends += 1;
            }
            Ok::<_, anyhow::Error>((appends, hist))
        }));
    }
    let mut latency = Histogram::<u64>::new(3)?;
    let mut appends = 0;
    for t in tasks {
        let (n, h) = t.await??;
        appends += n;
        latency.add(h)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(AppendResult {
        events: appends * batch as u64,
        appends,
        bytes: appends * frame_bytes,
        secs,
        latency,
    })
}

async fn read_run(log: &EmbeddedLog, topic: &str) -> Result<(u64, f64)> {
    let end = log.offsets(topic, 0).await?.end;
    let limits = ReadLimits {
        max_records: 10_000,
        max_bytes: 8 << 20,
        wait: Duration::ZERO,
    };
    let started = Instant::now();
    let mut from = 0;
    while from < end {
        let batch = log.read(topic, 0, from, limits).await?;
        from = batch.last().map_or(end, |r| r.offset + 1);
    }
    Ok((end, started.elapsed().as_secs_f64()))
}
