//! `GET /metrics`: every metric of hifi, defined here in one place, read from the
//! nodes' and engine's counters at scrape time, in Prometheus text format 0.0.4 or, when
//! the scraper asks for it, OpenMetrics ([`exposition`]). Names follow
//! `hifi_<what>_<unit>`; counters get `_total` from the encoder.

pub mod exposition;
mod scale;
pub use hifi_pipeline::process;

use std::sync::atomic::{AtomicU64, Ordering};

use hifi_ledger::lag::LagSet;
use hifi_ledger::NodeKind;

use crate::admin::AdminState;
use exposition::{Family, Histogram, Kind, Labels, Value};

fn v(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The families being gathered.
#[derive(Default)]
struct Families(Vec<Family>);

impl Families {
    fn add(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        rows: Vec<(Labels, f64)>,
    ) {
        self.0.push(Family {
            name,
            help,
            kind,
            samples: rows
                .into_iter()
                .map(|(l, x)| (l, Value::Number(x)))
                .collect(),
        });
    }

    fn histograms(
        &mut self,
        name: &'static str,
        help: &'static str,
        rows: Vec<(Labels, Histogram)>,
    ) {
        self.0.push(Family {
            name,
            help,
            kind: Kind::Histogram,
            samples: rows
                .into_iter()
                .map(|(l, h)| (l, Value::Histogram(h)))
                .collect(),
        });
    }
}

/// Upper bounds of the lag histograms' buckets, seconds: from a millisecond to a day.
const LAG_BUCKETS_S: [f64; 19] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 21600.0, 86400.0,
];

/// A lag histogram from recorded (µs, count) pairs.
fn lag_histogram(recorded: impl Iterator<Item = (u64, u64)>) -> Histogram {
    let mut h = Histogram {
        buckets: LAG_BUCKETS_S.iter().map(|le| (*le, 0)).collect(),
        ..Histogram::default()
    };
    for (us, n) in recorded {
        let secs = us as f64 / 1e6;
        h.sum += secs * n as f64;
        h.count += n;
        let at = LAG_BUCKETS_S.partition_point(|le| *le < secs);
        if let Some(b) = h.buckets.get_mut(at) {
            b.1 += n;
        }
    }
    h
}

/// Every family of a running pipeline, read now.
pub fn families(
    s: &AdminState,
    backlogs: &[crate::backlog::NodeBacklog],
    dead_letters: &[(String, u64)],
) -> Vec<Family> {
    let mut out = Families::default();
    out.add(
        "hifi_dlq_records",
        "Dead letters retained in a node's dead-letter topic (__dlq.<node>), re-driven ones included until retention removes them",
        Kind::Gauge,
        dead_letters
            .iter()
            .map(|(node, n)| (vec![("node", node.clone())], *n as f64))
            .collect(),
    );
    out.add(
        "hifi_node_backlog_records",
        "Records of a node's input it has not finished (committed past) yet",
        Kind::Gauge,
        backlogs
            .iter()
            .map(|b| (vec![("node", b.node.clone())], b.records as f64))
            .collect(),
    );
    out.add(
        "hifi_node_backlog_age_seconds",
        "Now minus the event time of the oldest record a node has not finished (0 without backlog): the lag that grows while a destination is down",
        Kind::Gauge,
        backlogs
            .iter()
            .map(|b| (vec![("node", b.node.clone())], b.age_ms as f64 / 1000.0))
            .collect(),
    );
    {
        let c = Kind::Counter;
        let g = Kind::Gauge;
        let per_source =
            |f: &dyn Fn(&hifi_pipeline::source::SourceStats) -> &AtomicU64| -> Vec<(Labels, f64)> {
                s.sources
                    .iter()
                    .map(|x| (vec![("source", x.name.clone())], v(f(&x.stats)) as f64))
                    .collect()
            };
        out.add(
            "hifi_source_accepted_events",
            "Events stored by a source",
            c,
            per_source(&|st| &st.accepted_events_total),
        );
        out.add(
            "hifi_source_duplicate_events",
            "Events acknowledged again without storing (de-duplicated)",
            c,
            per_source(&|st| &st.duplicate_events_total),
        );
        out.add(
            "hifi_source_rejected_requests",
            "Requests refused for invalid input (4xx)",
            c,
            per_source(&|st| &st.rejected_requests_total),
        );
        out.add(
            "hifi_source_backpressure_rejections",
            "Requests refused with 503 because too many bytes were in flight",
            c,
            per_source(&|st| &st.backpressure_rejections_total),
        );
        out.add(
            "hifi_source_engine_errors",
            "Requests answered 503 because the engine failed",
            c,
            per_source(&|st| &st.engine_errors_total),
        );
        out.add(
            "hifi_source_clamped_event_times",
            "Event times outside event_time_window set to its nearest bound (outside = \"clamp\")",
            c,
            per_source(&|st| &st.clamped_event_times_total),
        );
        out.add(
            "hifi_source_dead_lettered_events",
            "Records of a Kafka source that were not valid events, kept in its dead letters",
            c,
            per_source(&|st| &st.dead_lettered_events_total),
        );
        out.add(
            "hifi_source_dedup_evicted_ids",
            "Ids forgotten by de-duplication before their window ended (dedup_max_ids reached)",
            c,
            per_source(&|st| &st.dedup_evicted_total),
        );
        let per_standby =
            |f: &dyn Fn(&hifi_pipeline::standby::Failover) -> f64| -> Vec<(Labels, f64)> {
                s.sources
                    .iter()
                    .filter_map(|x| {
                        let sb = x.standby.as_ref()?;
                        Some((vec![("source", x.name.clone())], f(&sb.failover)))
                    })
                    .collect()
            };
        out.add(
            "hifi_source_on_standby",
            "1 while the source appends to the standby ([engine.standby]) because the engine did not take its appends",
            g,
            per_standby(&|f| if f.primary_up() { 0.0 } else { 1.0 }),
        );
        out.add(
            "hifi_source_failovers",
            "Times the source turned to the standby",
            c,
            per_standby(&|f| v(&f.failovers_total) as f64),
        );
        out.add(
            "hifi_source_standby_events",
            "Events the source appended to the standby",
            c,
            per_standby(&|f| v(&f.standby_events_total) as f64),
        );
        out.add(
            "hifi_source_standby_moved_events",
            "Records moved from the standby into the engine",
            c,
            per_standby(&|f| v(&f.moved_events_total) as f64),
        );
        out.add(
            "hifi_source_standby_waiting_events",
            "Records in the standby not yet moved into the engine",
            g,
            per_standby(&|f| v(&f.waiting) as f64),
        );

        let mut stage_rows = Vec::new();
        for st in &s.stages {
            stage_rows.push((
                vec![("stage", st.name.clone()), ("outcome", "passed".into())],
                v(&st.stats.passed_events_total) as f64,
            ));
            stage_rows.push((
                vec![("stage", st.name.clone()), ("outcome", "filtered".into())],
                v(&st.stats.filtered_events_total) as f64,
            ));
        }
        out.add(
            "hifi_stage_events",
            "Events a stage finished, by outcome (filtered = dropped on purpose)",
            c,
            stage_rows,
        );
        let errs = s
            .stages
            .iter()
            .map(|st| {
                (
                    vec![("stage", st.name.clone())],
                    v(&st.stats.transform_errors_total) as f64,
                )
            })
            .collect();
        out.add(
            "hifi_stage_transform_errors",
            "Transforms that could not apply (event passed unchanged)",
            c,
            errs,
        );

        let per_sink =
            |f: &dyn Fn(&hifi_pipeline::sink::SinkStats) -> &AtomicU64| -> Vec<(Labels, f64)> {
                s.sinks
                    .iter()
                    .map(|x| (vec![("sink", x.name.clone())], v(f(&x.stats)) as f64))
                    .collect()
            };
        out.add(
            "hifi_sink_delivered_events",
            "Events the destination acknowledged",
            c,
            per_sink(&|st| &st.delivered_events_total),
        );
        let mut requests = Vec::new();
        for x in &s.sinks {
            let st = &x.stats;
            let (ok, failed, refused) = (
                v(&st.requests_total),
                v(&st.failed_requests_total),
                v(&st.refused_requests_total),
            );
            for (outcome, n) in [
                ("success", ok),
                ("refused", refused),
                ("failed", failed.saturating_sub(refused)),
            ] {
                requests.push((
                    vec![("sink", x.name.clone()), ("outcome", outcome.into())],
                    n as f64,
                ));
            }
        }
        out.add(
            "hifi_sink_requests",
            "Delivery requests by outcome: success (2xx), refused (a 4xx that is not retried: its events are isolated and dead-lettered), failed (retried: 5xx, 408, 429, timeouts, connection errors)",
            c,
            requests,
        );
        out.add(
            "hifi_sink_failed_requests",
            "Delivery requests that did not succeed (refused and failed outcomes of hifi_sink_requests together)",
            c,
            per_sink(&|st| &st.failed_requests_total),
        );
        out.add(
            "hifi_sink_retrying_events",
            "Events in the sink's retry topics now (waiting for a global retry)",
            g,
            per_sink(&|st| &st.retrying_events),
        );
        out.add(
            "hifi_sink_local_retries",
            "Requests sent again by local retries",
            c,
            per_sink(&|st| &st.local_retries_total),
        );
        out.add(
            "hifi_sink_retried_events",
            "Events moved to a retry topic (global retries)",
            c,
            per_sink(&|st| &st.retried_events_total),
        );
        out.add(
            "hifi_sink_dead_lettered_events",
            "Events moved to the dead-letter queue",
            c,
            per_sink(&|st| &st.dead_lettered_events_total),
        );
        out.add(
            "hifi_sink_breaker_opens",
            "Times the circuit breaker opened",
            c,
            per_sink(&|st| &st.breaker_opens_total),
        );
        out.add(
            "hifi_sink_breaker_open",
            "1 while the circuit breaker is open (delivery paused, probing)",
            g,
            per_sink(&|st| &st.breaker_open),
        );
        out.add(
            "hifi_sink_concurrency_limit",
            "Requests of fresh batches the sink may have in flight now (adaptive or fixed)",
            g,
            s.sinks
                .iter()
                .map(|x| (vec![("sink", x.name.clone())], v(&x.slots.limit) as f64))
                .collect(),
        );
        out.add(
            "hifi_sink_concurrency_cuts",
            "Times the adaptive concurrency limit went down, by cause (backpressure: 429, 503, timeouts; slow_responses: response times rose)",
            c,
            s.sinks
                .iter()
                .flat_map(|x| {
                    [
                        ("backpressure", &x.slots.backpressure_cuts_total),
                        ("slow_responses", &x.slots.slow_response_cuts_total),
                    ]
                    .map(|(cause, n)| {
                        (
                            vec![("sink", x.name.clone()), ("cause", cause.to_owned())],
                            v(n) as f64,
                        )
                    })
                })
                .collect(),
        );

        let mut node_lag = Vec::new();
        let mut e2e = Histogram::default();
        s.ledger.visit_lag(|node, kind, set| {
            for (what, h) in [
                ("lag_in", &set.lag_in),
                ("lag_out", &set.lag_out),
                ("process", &set.process),
            ] {
                let hist = lag_histogram(LagSet::recorded(h));
                if kind == NodeKind::Sink && what == "lag_out" {
                    e2e.add(&hist);
                }
                node_lag.push((vec![("node", node.to_owned()), ("lag", what.into())], hist));
            }
        });
        out.histograms(
            "hifi_node_lag_seconds",
            "Lag per node since start: lag_in = arrival - event time, lag_out = departure - event time, process = departure - arrival (HDR-recorded: bucket edges within 1 %)",
            node_lag,
        );
        out.histograms(
            "hifi_e2e_lag_seconds",
            "End-to-end lag (lag_out at the sinks) since start",
            vec![(Vec::new(), e2e)],
        );

        let ls = &s.ledger.stats;
        out.add(
            "hifi_event_time_skew_events",
            "Events whose event time was after their arrival (lag clamped to 0)",
            c,
            vec![(Vec::new(), v(&ls.skewed_events_total) as f64)],
        );
        out.add(
            "hifi_ledger_settled_buckets",
            "Loss buckets settled",
            c,
            vec![(Vec::new(), v(&ls.settled_buckets_total) as f64)],
        );
        out.add(
            "hifi_ledger_loss_alarms",
            "Settled buckets whose end-to-end loss exceeded loss_alarm_percent",
            c,
            vec![(Vec::new(), v(&ls.loss_alarms_total) as f64)],
        );
        out.add(
            "hifi_ledger_lost_events",
            "Events lost end to end in settled buckets",
            c,
            vec![(Vec::new(), v(&ls.lost_events_total) as f64)],
        );
        out.add(
            "hifi_ledger_untracked_events",
            "Outcomes not tracked because the most open loss buckets were open (widen no event_time_window that far)",
            c,
            vec![(Vec::new(), v(&ls.untracked_events_total) as f64)],
        );
        let pii = hifi_pipeline::pii::report::of_sources(&s.pii, &s.lineage, &s.sources);
        out.add(
            "hifi_pii_sampled_events",
            "Ingested events the PII detector looked at ([pii] sample_every)",
            c,
            pii.sources
                .iter()
                .map(|(n, r)| (vec![("source", n.clone())], r.sampled_events as f64))
                .collect(),
        );
        out.add(
            "hifi_pii_alarms",
            "Undeclared fields that look like PII and reach a sink not allowing them (GET /v1/pii)",
            g,
            vec![(Vec::new(), pii.alarms.len() as f64)],
        );
        let (open, settled) = s.ledger.bucket_counts();
        out.add(
            "hifi_ledger_open_buckets",
            "Buckets not yet settled (held in memory)",
            g,
            vec![(Vec::new(), open as f64)],
        );
        out.add(
            "hifi_ledger_settled_buckets_kept",
            "Settled loss tables kept in memory (history)",
            g,
            vec![(Vec::new(), settled as f64)],
        );
        let now = s.ledger.clock().now_ms();
        if let Some(last) = s
            .ledger
            .loss(now - 24 * 3_600_000, now)
            .into_iter()
            .find(|t| t.settled)
        {
            out.add(
                "hifi_settled_bucket_lost_events",
                "End-to-end lost events of the latest settled bucket",
                g,
                vec![(vec![("bucket", last.start.clone())], last.e2e_lost as f64)],
            );
            out.add(
                "hifi_settled_bucket_loss_ratio",
                "End-to-end loss ratio of the latest settled bucket",
                g,
                vec![(
                    vec![("bucket", last.start.clone())],
                    last.e2e_loss_percent / 100.0,
                )],
            );
        }

        if let Some(e) = &s.engine {
            let st = e.stats();
            let (segments, bytes) = e.disk_usage();
            out.add(
                "hifi_log_segments",
                "Segment files of the embedded log",
                g,
                vec![(Vec::new(), segments as f64)],
            );
            out.add(
                "hifi_log_bytes",
                "Bytes in segment files of the embedded log",
                g,
                vec![(Vec::new(), bytes as f64)],
            );
            out.add(
                "hifi_log_appended_records",
                "Records appended durably",
                c,
                vec![(Vec::new(), v(&st.appended_records_total) as f64)],
            );
            out.add(
                "hifi_log_fsyncs",
                "fsync calls on segment data",
                c,
                vec![(Vec::new(), v(&st.fsyncs_total) as f64)],
            );
            out.add(
                "hifi_log_fsync_seconds",
                "Time spent in fsync calls on segment data (acknowledgements wait for it)",
                c,
                vec![(Vec::new(), v(&st.fsync_micros_total) as f64 / 1e6)],
            );
            out.add(
                "hifi_log_preallocated_bytes",
                "Zeroes written ahead of appends so that their fsyncs leave the file size alone",
                c,
                vec![(Vec::new(), v(&st.preallocated_bytes_total) as f64)],
            );
            out.add(
                "hifi_log_slow_fsyncs",
                "fsync calls that took 100 ms or more",
                c,
                vec![(Vec::new(), v(&st.slow_fsyncs_total) as f64)],
            );
            out.add(
                "hifi_log_corruptions",
                "Reads stopped by a record that failed verification",
                c,
                vec![(Vec::new(), v(&st.corruptions_total) as f64)],
            );
            out.add(
                "hifi_log_quarantined_regions",
                "Damaged regions of segments quarantined: copied to quarantine/, skipped by readers (their events are reported lost)",
                c,
                vec![(Vec::new(), v(&st.quarantined_regions_total) as f64)],
            );
            out.add(
                "hifi_log_quarantined_records",
                "Offsets skipped by readers because they lie in a quarantined region",
                c,
                vec![(Vec::new(), v(&st.quarantined_records_total) as f64)],
            );
            out.add(
                "hifi_log_torn_tails",
                "Torn tails truncated at open (never-acknowledged writes cut by a crash)",
                c,
                vec![(Vec::new(), v(&st.torn_tails_total) as f64)],
            );
            out.add(
                "hifi_log_failed_partitions",
                "Partitions failed after an fsync error",
                c,
                vec![(Vec::new(), v(&st.failed_partitions) as f64)],
            );
        }
    }
    let mut durations = Vec::new();
    for x in &s.sources {
        for (status, counts) in x.stats.request_durations.snapshot() {
            let mut buckets: Vec<(f64, u64)> = hifi_pipeline::durations::BUCKETS_S
                .iter()
                .copied()
                .zip(counts.buckets)
                .collect();
            buckets.truncate(hifi_pipeline::durations::BUCKETS_S.len());
            durations.push((
                vec![("source", x.name.clone()), ("code", status.to_string())],
                Histogram {
                    buckets,
                    sum: counts.sum_s,
                    count: counts.count,
                },
            ));
        }
    }
    out.histograms(
        "hifi_source_request_duration_seconds",
        "Time from a POST /v1/events request's arrival to its answer, by status code",
        durations,
    );
    out.add(
        "hifi_build",
        "The running hifi: version and engine kind",
        Kind::Info,
        vec![(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                (
                    "engine",
                    if s.engine.is_some() {
                        "embedded"
                    } else {
                        "kafka"
                    }
                    .to_owned(),
                ),
            ],
            1.0,
        )],
    );
    scale::add(&mut out, &s.scale);
    if let Some(p) = process::Process::read() {
        let one = |x: f64| vec![(Vec::new(), x)];
        out.add(
            "process_cpu_seconds",
            "User and system CPU time of the process",
            Kind::Counter,
            one(p.cpu_seconds),
        );
        out.add(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            Kind::Gauge,
            one(p.resident_bytes as f64),
        );
        out.add(
            "process_virtual_memory_bytes",
            "Virtual memory of the process",
            Kind::Gauge,
            one(p.virtual_bytes as f64),
        );
        out.add(
            "process_open_fds",
            "Open file descriptors of the process",
            Kind::Gauge,
            one(p.open_fds as f64),
        );
        if let Some(max) = p.max_fds {
            out.add(
                "process_max_fds",
                "Most file descriptors the process may open",
                Kind::Gauge,
                one(max as f64),
            );
        }
        if let Some(t) = p.start_time_seconds {
            out.add(
                "process_start_time_seconds",
                "Start time of the process, seconds since the epoch",
                Kind::Gauge,
                one(t),
            );
        }
    }
    out.0
}
