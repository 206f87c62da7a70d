//! Crash test of the embedded engine with a real child process: `hifi log stress`
//! appends from many tasks and prints every acknowledged offset; we SIGKILL it at a
//! random moment, reopen the log and check that every acknowledged record is there with
//! identical bytes. Repeated over many kill cycles on the same data directory.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hifi_log::stress::stress_record;
use hifi_log::{EmbeddedLog, Log, LogConfig, ReadLimits, Record};
use rand::Rng;

const CYCLES: usize = 20;
const PARTITIONS: u32 = 2;
const VALUE_BYTES: usize = 200;

#[derive(Debug, Clone, Copy)]
struct Ack {
    partition: u32,
    offset: u64,
    task: u64,
    seq: u64,
}

fn parse(line: &str) -> Option<Ack> {
    let mut it = line
        .strip_prefix("ack ")?
        .split(' ')
        .map(|s| s.parse::<u64>().ok());
    Some(Ack {
        partition: it.next()?? as u32,
        offset: it.next()??,
        task: it.next()??,
        seq: it.next()??,
    })
}

/// Runs the child until it has acknowledged something, kills it a random moment later,
/// and returns (acks, time from the last ack to the kill).
fn run_and_kill(dir: &std::path::Path, rng: &mut impl Rng) -> (Vec<Ack>, Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hifi"))
        .args(["log", "stress"])
        .arg(dir)
        .args([
            "--partitions",
            &PARTITIONS.to_string(),
            "--tasks",
            "8",
            "--batch",
            "4",
        ])
        .args(["--value-bytes", &VALUE_BYTES.to_string()])
        .env("HIFI_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hifi log stress");
    let stdout = child.stdout.take().unwrap();
    let acks = Arc::new(Mutex::new((Vec::new(), Instant::now())));
    let reader = {
        let acks = acks.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ack = parse(&line).unwrap_or_else(|| panic!("bad line from child: {line:?}"));
                let mut a = acks.lock().unwrap();
                a.0.push(ack);
                a.1 = Instant::now();
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.lock().unwrap().0.is_empty() {
        assert!(
            Instant::now() < deadline,
            "child acknowledged nothing within 30 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(rng.gen_range(20..250)));
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    let killed_at = Instant::now();
    let status = child.wait().unwrap();
    assert!(!status.success(), "child must die by the signal");
    reader.join().unwrap();
    let mut guard = acks.lock().unwrap();
    let (acks, last_ack) = (std::mem::take(&mut guard.0), guard.1);
    (acks, killed_at.saturating_duration_since(last_ack))
}

async fn stored(log: &EmbeddedLog, partition: u32) -> Vec<Record> {
    let mut out = Vec::new();
    let end = log.offsets("stress", partition).await.unwrap().end;
    while (out.len() as u64) < end {
        let limits = ReadLimits {
            max_records: 10_000,
            ..ReadLimits::default()
        };
        let batch = log
            .read("stress", partition, out.len() as u64, limits)
            .await
            .unwrap();
        out.extend(batch.into_iter().map(|r| r.record));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let mut all_acks: Vec<Ack> = Vec::new();
    let mut mid_append_kills = 0;
    let mut unacked_tails = 0;
    for cycle in 0..CYCLES {
        let (acks, since_last_ack) = run_and_kill(dir.path(), &mut rng);
        assert!(!acks.is_empty());
        if since_last_ack < Duration::from_millis(50) {
            mid_append_kills += 1;
        }
        all_acks.extend(acks);

        let log = tokio::task::spawn_blocking({
            let d = dir.path().to_path_buf();
            move || EmbeddedLog::open(d, LogConfig::default())
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        let mut max_acked: HashMap<u32, u64> = HashMap::new();
        for p in 0..PARTITIONS {
            let records = stored(&log, p).await;
            for a in all_acks.iter().filter(|a| a.partition == p) {
                let got = records.get(a.offset as usize).unwrap_or_else(|| {
                    panic!(
                        "cycle {cycle}: acknowledged {p}/{} is missing (log ends at {})",
                        a.offset,
                        records.len()
                    )
                });
                assert_eq!(
                    got,
                    &stress_record(a.task, a.seq, VALUE_BYTES),
                    "cycle {cycle}: {p}/{} differs",
                    a.offset
                );
                let m = max_acked.entry(p).or_default();
                *m = (*m).max(a.offset + 1);
            }
            if records.len() as u64 > max_acked.get(&p).copied().unwrap_or(0) {
                unacked_tails += 1; // durable records whose ack the kill cut off: a kill mid-append
            }
        }
        log.close().await;
    }
    eprintln!(
        "{CYCLES} kills, {} acknowledged records all intact; {mid_append_kills} kills within 50 ms of an ack, \
         {unacked_tails} partitions held records written but not yet acknowledged when killed",
        all_acks.len()
    );
    // The scenario really happened: kills landed while appends were in flight.
    assert!(
        mid_append_kills >= CYCLES * 3 / 4,
        "only {mid_append_kills} of {CYCLES} kills landed mid-append"
    );
    assert!(
        unacked_tails > 0,
        "no kill ever cut off an in-flight append"
    );
}
