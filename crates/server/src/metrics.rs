//! `GET /metrics`: every metric of hifi, defined here in one place, read from the
//! nodes' and engine's counters at scrape time. Names follow `hifi_<what>_<unit>`;
//! counters get `_total` from the encoder.

use std::sync::atomic::{AtomicU64, Ordering};

use hifi_ledger::Quantiles;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::admin::AdminState;

fn v(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Renders the metrics of a running pipeline.
pub fn render(state: &AdminState) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(state.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct Snapshot(AdminState);

type Labels = Vec<(&'static str, String)>;

fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    rows: Vec<(Labels, f64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, value) in rows {
        let fam = m.encode_family(&labels)?;
        match ty {
            // Whole counts print as integers; fractional ones (seconds) keep their fraction.
            MetricType::Counter if value.fract() == 0.0 => {
                ConstCounter::new(value as u64).encode(fam)?
            }
            MetricType::Counter => ConstCounter::new(value).encode(fam)?,
            _ => ConstGauge::new(value).encode(fam)?,
        }
    }
    Ok(())
}

fn quantile_rows(base: Labels, q: &Quantiles) -> Vec<(Labels, f64)> {
    [
        ("0.5", q.p50),
        ("0.95", q.p95),
        ("0.99", q.p99),
        ("1", q.max),
    ]
    .into_iter()
    .map(|(quantile, ms)| {
        let mut l = base.clone();
        l.push(("quantile", quantile.to_owned()));
        (l, ms / 1000.0)
    })
    .collect()
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let c = MetricType::Counter;
        let g = MetricType::Gauge;
        let per_source =
            |f: &dyn Fn(&hifi_pipeline::source::SourceStats) -> &AtomicU64| -> Vec<(Labels, f64)> {
                s.sources
                    .iter()
                    .map(|x| (vec![("source", x.name.clone())], v(f(&x.stats)) as f64))
                    .collect()
            };
        family(
            &mut enc,
            "hifi_source_accepted_events",
            "Events stored by a source",
            c,
            per_source(&|st| &st.accepted_events_total),
        )?;
        family(
            &mut enc,
            "hifi_source_duplicate_events",
            "Events acknowledged again without storing (de-duplicated)",
            c,
            per_source(&|st| &st.duplicate_events_total),
        )?;
        family(
            &mut enc,
            "hifi_source_rejected_requests",
            "Requests refused for invalid input (4xx)",
            c,
            per_source(&|st| &st.rejected_requests_total),
        )?;
        family(
            &mut enc,
            "hifi_source_backpressure_rejections",
            "Requests refused with 503 because too many bytes were in flight",
            c,
            per_source(&|st| &st.backpressure_rejections_total),
        )?;
        family(
            &mut enc,
            "hifi_source_engine_errors",
            "Requests answered 503 because the engine failed",
            c,
            per_source(&|st| &st.engine_errors_total),
        )?;
        family(
            &mut enc,
            "hifi_source_clamped_event_times",
            "Event times outside event_time_window set to its nearest bound (outside = \"clamp\")",
            c,
            per_source(&|st| &st.clamped_event_times_total),
        )?;
        family(
            &mut enc,
            "hifi_source_dedup_evicted_ids",
            "Ids forgotten by de-duplication before their window ended (dedup_max_ids reached)",
            c,
            per_source(&|st| &st.dedup_evicted_total),
        )?;

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
        family(
            &mut enc,
            "hifi_stage_events",
            "Events a stage finished, by outcome (filtered = dropped on purpose)",
            c,
            stage_rows,
        )?;
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
        family(
            &mut enc,
            "hifi_stage_transform_errors",
            "Transforms that could not apply (event passed unchanged)",
            c,
            errs,
        )?;

        let per_sink =
            |f: &dyn Fn(&hifi_pipeline::sink::SinkStats) -> &AtomicU64| -> Vec<(Labels, f64)> {
                s.sinks
                    .iter()
                    .map(|x| (vec![("sink", x.name.clone())], v(f(&x.stats)) as f64))
                    .collect()
            };
        family(
            &mut enc,
            "hifi_sink_delivered_events",
            "Events the destination acknowledged",
            c,
            per_sink(&|st| &st.delivered_events_total),
        )?;
        family(
            &mut enc,
            "hifi_sink_requests",
            "Delivery requests that succeeded",
            c,
            per_sink(&|st| &st.requests_total),
        )?;
        family(
            &mut enc,
            "hifi_sink_failed_requests",
            "Delivery requests that failed (and were retried)",
            c,
            per_sink(&|st| &st.failed_requests_total),
        )?;
        family(
            &mut enc,
            "hifi_sink_retrying_events",
            "Events in the sink's retry topics now (waiting for a global retry)",
            g,
            per_sink(&|st| &st.retrying_events),
        )?;
        family(
            &mut enc,
            "hifi_sink_local_retries",
            "Requests sent again by local retries",
            c,
            per_sink(&|st| &st.local_retries_total),
        )?;
        family(
            &mut enc,
            "hifi_sink_retried_events",
            "Events moved to a retry topic (global retries)",
            c,
            per_sink(&|st| &st.retried_events_total),
        )?;
        family(
            &mut enc,
            "hifi_sink_dead_lettered_events",
            "Events moved to the dead-letter queue",
            c,
            per_sink(&|st| &st.dead_lettered_events_total),
        )?;
        family(
            &mut enc,
            "hifi_sink_breaker_opens",
            "Times the circuit breaker opened",
            c,
            per_sink(&|st| &st.breaker_opens_total),
        )?;
        family(
            &mut enc,
            "hifi_sink_breaker_open",
            "1 while the circuit breaker is open (delivery paused, probing)",
            g,
            per_sink(&|st| &st.breaker_open),
        )?;

        let lag = s.ledger.lag();
        let mut lag_rows = Vec::new();
        for n in &lag.nodes {
            for (what, q) in [
                ("lag_in", &n.lag.lag_in_ms),
                ("lag_out", &n.lag.lag_out_ms),
                ("process", &n.lag.process_ms),
            ] {
                lag_rows.extend(quantile_rows(
                    vec![("node", n.node.clone()), ("lag", what.into())],
                    q,
                ));
            }
        }
        family(&mut enc, "hifi_node_lag_seconds", "Lag per node since start: lag_in = arrival - event time, lag_out = departure - event time, process = departure - arrival", g, lag_rows)?;
        family(
            &mut enc,
            "hifi_e2e_lag_seconds",
            "End-to-end lag (lag_out at the sinks) since start",
            g,
            quantile_rows(Vec::new(), &lag.e2e_ms),
        )?;

        let ls = &s.ledger.stats;
        family(
            &mut enc,
            "hifi_event_time_skew_events",
            "Events whose event time was after their arrival (lag clamped to 0)",
            c,
            vec![(Vec::new(), v(&ls.skewed_events_total) as f64)],
        )?;
        family(
            &mut enc,
            "hifi_ledger_settled_buckets",
            "Loss buckets settled",
            c,
            vec![(Vec::new(), v(&ls.settled_buckets_total) as f64)],
        )?;
        family(
            &mut enc,
            "hifi_ledger_loss_alarms",
            "Settled buckets whose end-to-end loss exceeded loss_alarm_percent",
            c,
            vec![(Vec::new(), v(&ls.loss_alarms_total) as f64)],
        )?;
        family(
            &mut enc,
            "hifi_ledger_lost_events",
            "Events lost end to end in settled buckets",
            c,
            vec![(Vec::new(), v(&ls.lost_events_total) as f64)],
        )?;
        family(
            &mut enc,
            "hifi_ledger_untracked_events",
            "Outcomes not tracked because the most open loss buckets were open (widen no event_time_window that far)",
            c,
            vec![(Vec::new(), v(&ls.untracked_events_total) as f64)],
        )?;
        let (open, settled) = s.ledger.bucket_counts();
        family(
            &mut enc,
            "hifi_ledger_open_buckets",
            "Buckets not yet settled (held in memory)",
            g,
            vec![(Vec::new(), open as f64)],
        )?;
        family(
            &mut enc,
            "hifi_ledger_settled_buckets_kept",
            "Settled loss tables kept in memory (history)",
            g,
            vec![(Vec::new(), settled as f64)],
        )?;
        let now = s.ledger.clock().now_ms();
        if let Some(last) = s
            .ledger
            .loss(now - 24 * 3_600_000, now)
            .into_iter()
            .find(|t| t.settled)
        {
            family(
                &mut enc,
                "hifi_settled_bucket_lost_events",
                "End-to-end lost events of the latest settled bucket",
                g,
                vec![(vec![("bucket", last.start.clone())], last.e2e_lost as f64)],
            )?;
            family(
                &mut enc,
                "hifi_settled_bucket_loss_ratio",
                "End-to-end loss ratio of the latest settled bucket",
                g,
                vec![(
                    vec![("bucket", last.start.clone())],
                    last.e2e_loss_percent / 100.0,
                )],
            )?;
        }

        if let Some(e) = &s.engine {
            let st = e.stats();
            let (segments, bytes) = e.disk_usage();
            family(
                &mut enc,
                "hifi_log_segments",
                "Segment files of the embedded log",
                g,
                vec![(Vec::new(), segments as f64)],
            )?;
            family(
                &mut enc,
                "hifi_log_bytes",
                "Bytes in segment files of the embedded log",
                g,
                vec![(Vec::new(), bytes as f64)],
            )?;
            family(
                &mut enc,
                "hifi_log_appended_records",
                "Records appended durably",
                c,
                vec![(Vec::new(), v(&st.appended_records_total) as f64)],
            )?;
            family(
                &mut enc,
                "hifi_log_fsyncs",
                "fsync calls on segment data",
                c,
                vec![(Vec::new(), v(&st.fsyncs_total) as f64)],
            )?;
            family(
                &mut enc,
                "hifi_log_fsync_seconds",
                "Time spent in fsync calls on segment data (acknowledgements wait for it)",
                c,
                vec![(Vec::new(), v(&st.fsync_micros_total) as f64 / 1e6)],
            )?;
            family(
                &mut enc,
                "hifi_log_preallocated_bytes",
                "Zeroes written ahead of appends so that their fsyncs leave the file size alone",
                c,
                vec![(Vec::new(), v(&st.preallocated_bytes_total) as f64)],
            )?;
            family(
                &mut enc,
                "hifi_log_slow_fsyncs",
                "fsync calls that took 100 ms or more",
                c,
                vec![(Vec::new(), v(&st.slow_fsyncs_total) as f64)],
            )?;
            family(
                &mut enc,
                "hifi_log_corruptions",
                "Reads stopped by a record that failed verification",
                c,
                vec![(Vec::new(), v(&st.corruptions_total) as f64)],
            )?;
            family(
                &mut enc,
                "hifi_log_quarantined_regions",
                "Damaged regions of segments quarantined: copied to quarantine/, skipped by readers (their events are reported lost)",
                c,
                vec![(Vec::new(), v(&st.quarantined_regions_total) as f64)],
            )?;
            family(
                &mut enc,
                "hifi_log_quarantined_records",
                "Offsets skipped by readers because they lie in a quarantined region",
                c,
                vec![(Vec::new(), v(&st.quarantined_records_total) as f64)],
            )?;
            family(
                &mut enc,
                "hifi_log_torn_tails",
                "Torn tails truncated at open (never-acknowledged writes cut by a crash)",
                c,
                vec![(Vec::new(), v(&st.torn_tails_total) as f64)],
            )?;
            family(
                &mut enc,
                "hifi_log_failed_partitions",
                "Partitions failed after an fsync error",
                c,
                vec![(Vec::new(), v(&st.failed_partitions) as f64)],
            )?;
        }
        Ok(())
    }
}
