//! The load test's sending side: the schedule, the events of each request, and the
//! target they go to — an ingest URL (one POST per request) or a Kafka topic (one record
//! per event, for a pipeline with a Kafka source), retried like a real producer until
//! acknowledged or the run gives up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::Semaphore;

use super::schedule::Schedule;
use super::{EventKind, LoadtestArgs, Timeline};

/// One request's events: a JSON array, and where each event ends in it.
struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// Where the events go.
pub(super) enum Target {
    /// An ingest URL: each request's events in one POST.
    Http(reqwest::Url),
    /// A Kafka topic: each event one record, acknowledged by the cluster (`acks=all`).
    Kafka(hifi_kafka::TopicProducer),
}

impl Target {
    /// The target the arguments name (`--target URL` or `--kafka BROKERS --topic T`).
    pub(super) fn of(args: &LoadtestArgs) -> Result<Target> {
        match (&args.target, &args.kafka, &args.topic) {
            (Some(url), None, None) => Ok(Target::Http(
                reqwest::Url::parse(url)
                    .with_context(|| format!("--target {url:?} is not a URL"))?,
            )),
            (None, Some(brokers), Some(topic)) => Ok(Target::Kafka(
                hifi_kafka::TopicProducer::new(brokers, topic, &Default::default())
                    .map_err(anyhow::Error::msg)?,
            )),
            (None, Some(_), None) => bail!("--kafka needs --topic, the topic the events go to"),
            _ => bail!("name one target: --target URL (HTTP ingest) or --kafka BROKERS --topic T"),
        }
    }

    /// Connects ahead of the load where connecting is slow (a Kafka producer: the
    /// cluster's metadata, the topic's limits, the producer id).
    pub(super) async fn connect(&self) -> Result<()> {
        match self {
            Target::Http(_) => Ok(()),
            Target::Kafka(topic) => {
                topic
                    .connect(Duration::from_secs(30))
                    .await
                    .map_err(|e| match e {
                        hifi_kafka::SendFailure::Refused { reason }
                        | hifi_kafka::SendFailure::Recoverable { reason, .. } => {
                            anyhow::anyhow!("cannot send to the Kafka topic: {reason}")
                        }
                    })
            }
        }
    }
}

/// The event ids of a run: `<prefix><request>-<position>`, so a run of millions of
/// events keeps per-event state in arrays indexed by (request × batch + position)
/// instead of keeping ids.
#[derive(Debug, Clone, Default)]
pub(super) struct Ids {
    pub(super) prefix: String,
    pub(super) batch: u64,
    /// Requests the schedule sends.
    pub(super) requests: usize,
}

impl Ids {
    /// Events scheduled.
    pub(super) fn scheduled(&self) -> usize {
        self.requests * self.batch as usize
    }

    /// The id of an event index.
    pub(super) fn id(&self, event: usize) -> String {
        let batch = self.batch as usize;
        format!("{}{}-{}", self.prefix, event / batch, event % batch)
    }

    /// The event index of an id of this run; `None` for any other id.
    pub(super) fn index(&self, id: &str) -> Option<usize> {
        let (request, position) = id.strip_prefix(&self.prefix)?.split_once('-')?;
        let (request, position): (usize, u64) = (request.parse().ok()?, position.parse().ok()?);
        (request < self.requests && position < self.batch)
            .then(|| request * self.batch as usize + position as usize)
    }
}

/// Which scheduled requests were acknowledged: one flag per request.
#[derive(Debug, Default)]
pub(super) struct Acked {
    pub(super) ids: Ids,
    pub(super) requests: Vec<bool>,
}

impl Acked {
    /// Events acknowledged.
    pub(super) fn count(&self) -> u64 {
        self.requests.iter().filter(|&&a| a).count() as u64 * self.ids.batch
    }

    /// The acknowledged events, as indexes.
    pub(super) fn events(&self) -> impl Iterator<Item = usize> + '_ {
        let batch = self.ids.batch as usize;
        self.requests
            .iter()
            .enumerate()
            .filter(|(_, &a)| a)
            .flat_map(move |(i, _)| i * batch..(i + 1) * batch)
    }
}

/// Most events one run schedules: the outcome keeps a delivery count and a first delay
/// (8 bytes) per event.
pub(super) const MAX_EVENTS_PER_RUN: u64 = 250_000_000;

/// Sends the scheduled requests.
pub(super) struct Sender {
    args: LoadtestArgs,
    target: Arc<Target>,
    /// Every event id of this run is `lt-<run id>-<request>-<position>`.
    ids: Ids,
    /// When each request is due.
    pub(super) schedule: Schedule,
    client: reqwest::Client,
    /// What follows an event's id up to its time: `","source":...,"time":"`.
    /// An event's JSON up to its id.
    event_start: &'static str,
    after_id: String,
    /// What follows an event's time: `","data":{"pad":"xx..."}}`.
    after_time: String,
    pub(super) sent: AtomicU64,
    pub(super) retried: AtomicU64,
}

impl Sender {
    pub(super) fn new(
        args: &LoadtestArgs,
        target: Arc<Target>,
        run_id: String,
    ) -> Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections)
            .timeout(Duration::from_secs(30))
            .build()?;
        let overhead = 130 + run_id.len();
        let schedule = Schedule::new(&args.steps(), args.batch);
        let requests = schedule.requests();
        let events = requests.saturating_mul(args.batch);
        if events > MAX_EVENTS_PER_RUN {
            bail!(
                "{} schedules {events} events; one run checks at most \
                 {MAX_EVENTS_PER_RUN} (it keeps 8 bytes per event, so its memory stays under \
                 2 GiB): lower the rate or shorten the run",
                match &args.ramp {
                    Some(r) => format!("--ramp {r}"),
                    None => format!("--rate {} for --duration {:?}", args.rate, args.duration),
                }
            );
        }
        Ok(Arc::new(Sender {
            args: args.clone(),
            target,
            ids: Ids {
                prefix: format!("lt-{run_id}-"),
                batch: args.batch,
                requests: requests as usize,
            },
            schedule,
            client,
            event_start: match args.events {
                EventKind::Cloudevents => r#"{"specversion":"1.0","id":""#,
                EventKind::Json => r#"{"id":""#,
            },
            after_id: match args.events {
                EventKind::Cloudevents => {
                    r#"","source":"hifi-loadtest","type":"loadtest","time":""#
                }
                EventKind::Json => r#"","ts":""#,
            }
            .into(),
            after_time: {
                let fields: String = args
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| format!("{}:{v},", serde_json::Value::from(k.as_str())))
                    .collect();
                let pad = "x".repeat(args.payload_bytes.saturating_sub(overhead + fields.len()));
                match args.events {
                    EventKind::Cloudevents => format!(r#"","data":{{{fields}"pad":"{pad}"}}}}"#),
                    EventKind::Json => format!(r#"",{fields}"pad":"{pad}"}}"#),
                }
            },
            sent: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        }))
    }

    /// The event ids of this run.
    pub(super) fn ids(&self) -> Ids {
        self.ids.clone()
    }

    /// Runs the schedule; returns the acknowledged ids and the ingest latency histogram
    /// (µs from the scheduled time to the acknowledgement).
    pub(super) async fn send_all(self: &Arc<Self>) -> (Acked, Timeline) {
        let requests = self.ids.requests as u64;
        let permits = Arc::new(Semaphore::new(self.args.connections));
        let acked = Arc::new(Mutex::new(Acked {
            ids: self.ids.clone(),
            requests: vec![false; requests as usize],
        }));
        let hist = Arc::new(Mutex::new(Timeline::default()));
        let give_up = Instant::now() + self.args.duration + self.args.drain;
        // The schedule runs on a thread of its own: the OS sleeps to within a fraction of
        // a millisecond, where tokio's timer rounds up to the next millisecond (measured:
        // requests started 1.3 ms late on average, all of it counted as latency). Each
        // body is built ahead, with its scheduled moment as event time, so the request
        // goes out at that moment; a late one (the sender busy) counts its lateness.
        let start = Instant::now() + Duration::from_millis(5);
        let start_ms = hifi_pipeline::now_ms() + 5;
        let (tx, mut scheduled_rx) = tokio::sync::mpsc::channel(64);
        let scheduler = {
            let me = self.clone();
            std::thread::spawn(move || {
                for i in 0..requests {
                    let offset = me.schedule.offset(i);
                    let body = me.batch(i, start_ms + offset.as_millis() as i64);
                    let scheduled = start + offset;
                    if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    if tx.blocking_send((i, scheduled, body)).is_err() {
                        return;
                    }
                }
            })
        };
        let mut tasks = tokio::task::JoinSet::new();
        let progress_every = (requests / 10).max(1);
        while let Some((i, scheduled, body)) = scheduled_rx.recv().await {
            let (me, permits, acked_by_task, hist) =
                (self.clone(), permits.clone(), acked.clone(), hist.clone());
            let second = scheduled.duration_since(start).as_secs() as usize;
            hist.lock().unwrap_or_else(|p| p.into_inner()).start(second);
            tasks.spawn(async move {
                let _permit = permits.acquire().await;
                let ok = me.send_until_acked(body, give_up).await;
                let us = ok.then(|| scheduled.elapsed().as_micros() as u64);
                hist.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .finish(second, us, me.args.batch);
                if ok {
                    acked_by_task
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .requests[i as usize] = true;
                }
            });
            while tasks.try_join_next().is_some() {}
            if i % progress_every == 0 && i > 0 {
                eprint!(
                    "\r{:>3}% sent, {} events acknowledged",
                    i * 100 / requests,
                    acked.lock().unwrap_or_else(|p| p.into_inner()).count()
                );
            }
        }
        let _ = scheduler.join();
        while tasks.join_next().await.is_some() {}
        eprintln!("\r100% sent                                   ");
        let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|p| p.into_inner()));
        let hist = hist.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (acked, hist)
    }

    /// A batch of `--events` (in a CloudEvents batch, ids and event times are standard
    /// attributes, so any pipeline carries them without extra settings), with event time
    /// `time_ms` (the scheduled send moment).
    #[cfg(test)]
    fn body(&self, request: u64, time_ms: i64) -> Vec<u8> {
        self.batch(request, time_ms).bytes
    }

    /// [`Sender::body`] and where each event's JSON ends in it.
    fn batch(&self, request: u64, time_ms: i64) -> Batch {
        use std::io::Write;
        let time = hifi_pipeline::event::rfc3339_ms(time_ms);
        let mut before_position = Vec::with_capacity(64);
        // Writing to a Vec cannot fail.
        let _ = write!(
            before_position,
            "{}{}{request}-",
            self.event_start, self.ids.prefix
        );
        let batch = self.args.batch;
        let event_bytes =
            before_position.len() + 20 + self.after_id.len() + time.len() + self.after_time.len();
        let mut out = Vec::with_capacity(batch as usize * (event_bytes + 1) + 2);
        let mut ends = Vec::with_capacity(batch as usize);
        out.push(b'[');
        for j in 0..batch {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&before_position);
            let _ = write!(out, "{j}");
            out.extend_from_slice(self.after_id.as_bytes());
            out.extend_from_slice(time.as_bytes());
            out.extend_from_slice(self.after_time.as_bytes());
            ends.push(out.len());
        }
        out.push(b']');
        Batch { bytes: out, ends }
    }

    /// Sends one request's events until the target acknowledges them (true) or until
    /// `give_up` (false: never acknowledged).
    async fn send_until_acked(&self, batch: Batch, give_up: Instant) -> bool {
        match &*self.target {
            Target::Http(url) => self.post_until_acked(url, batch.bytes, give_up).await,
            Target::Kafka(topic) => self.produce_until_acked(topic, &batch, give_up).await,
        }
    }

    /// Produces each event as one record (a CloudEvent in structured mode, with its
    /// content type) until the cluster acknowledged all of them.
    async fn produce_until_acked(
        &self,
        topic: &hifi_kafka::TopicProducer,
        batch: &Batch,
        give_up: Instant,
    ) -> bool {
        let ce: &[(&str, &[u8])] = &[("content-type", b"application/cloudevents+json")];
        let headers = match self.args.events {
            EventKind::Cloudevents => ce,
            EventKind::Json => &[],
        };
        let mut start = 1; // after '['
        let records: Vec<hifi_kafka::OutRecord<'_>> = batch
            .ends
            .iter()
            .map(|&end| {
                let value = &batch.bytes[start..end];
                start = end + 1; // after ','
                hifi_kafka::OutRecord {
                    key: None,
                    value,
                    headers,
                    timestamp_ms: None,
                }
            })
            .collect();
        let mut backoff = Duration::from_millis(10);
        loop {
            self.sent.fetch_add(1, Ordering::Relaxed);
            let left = give_up.saturating_duration_since(Instant::now());
            match topic
                .send(&records, left.min(Duration::from_secs(30)))
                .await
            {
                Ok(()) => return true,
                Err(hifi_kafka::SendFailure::Refused { reason }) => {
                    eprintln!("the cluster refused the events: {reason}");
                    return false;
                }
                Err(hifi_kafka::SendFailure::Recoverable { .. }) => {}
            }
            if Instant::now() + backoff > give_up {
                return false;
            }
            self.retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Posts until a 2xx (true) or until `give_up` (false: never acknowledged).
    async fn post_until_acked(&self, url: &reqwest::Url, body: Vec<u8>, give_up: Instant) -> bool {
        let body = bytes::Bytes::from(body);
        let mut backoff = Duration::from_millis(10);
        loop {
            let mut req = self
                .client
                .post(url.clone())
                .header(
                    "content-type",
                    match self.args.events {
                        EventKind::Cloudevents => "application/cloudevents-batch+json",
                        EventKind::Json => "application/json",
                    },
                )
                .body(body.clone());
            if let Some(t) = &self.args.token {
                req = req.bearer_auth(t);
            }
            self.sent.fetch_add(1, Ordering::Relaxed);
            if let Ok(r) = req.send().await {
                if r.status().is_success() {
                    return true;
                }
            }
            if Instant::now() + backoff > give_up {
                return false;
            }
            self.retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::test_args;
    use super::*;

    #[test]
    fn a_run_too_large_to_check_is_refused_before_it_starts() {
        let args = test_args(&["--rate", "1000000", "--duration", "300s"]);
        let url = Arc::new(Target::of(&args).unwrap());
        let err = Sender::new(&args, url, "r".into())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("schedules 300000000 events"), "{err}");
        let args = test_args(&["--rate", "1000000", "--duration", "250s"]);
        let url = Arc::new(Target::of(&args).unwrap());
        assert!(Sender::new(&args, url, "r".into()).is_ok());
    }

    #[test]
    fn a_request_body_is_a_cloudevents_batch_with_the_run_ids_and_the_asked_size() {
        let args = test_args(&["--batch", "12", "--payload-bytes", "300"]);
        let url = Arc::new(Target::of(&args).unwrap());
        let sender = Sender::new(&args, url, "r7".into()).unwrap();
        let body = sender.body(41, 1_700_000_000_123);
        let events: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(events.len(), 12);
        let ids = sender.ids();
        for (j, e) in events.iter().enumerate() {
            assert_eq!(e["id"], ids.id(41 * 12 + j), "{e}");
            assert_eq!(e["specversion"], "1.0");
            assert_eq!(e["source"], "hifi-loadtest");
            assert_eq!(e["time"], "2023-11-14T22:13:20.123Z");
            let bytes = serde_json::to_vec(e).unwrap().len();
            assert!((280..=320).contains(&bytes), "{bytes} bytes: {e}");
        }
    }

    #[test]
    fn each_event_of_a_batch_is_found_whole_for_its_own_record() {
        for kind in ["cloudevents", "json"] {
            let args = test_args(&["--batch", "11", "--events", kind]);
            let sender =
                Sender::new(&args, Arc::new(Target::of(&args).unwrap()), "r3".into()).unwrap();
            let batch = sender.batch(5, 1_700_000_000_123);
            let all: Vec<serde_json::Value> = serde_json::from_slice(&batch.bytes).unwrap();
            let mut start = 1;
            for (j, &end) in batch.ends.iter().enumerate() {
                let one: serde_json::Value =
                    serde_json::from_slice(&batch.bytes[start..end]).unwrap();
                assert_eq!(one, all[j]);
                assert_eq!(one["id"], sender.ids().id(5 * 11 + j));
                start = end + 1;
            }
            assert_eq!(batch.ends.len(), 11);
        }
    }

    #[test]
    fn a_target_is_a_url_or_a_kafka_topic() {
        let kafka = |more: &[&str]| {
            #[derive(clap::Parser)]
            struct Cli {
                #[command(flatten)]
                args: LoadtestArgs,
            }
            let fixed = ["loadtest", "--kafka", "127.0.0.1:9092"];
            <Cli as clap::Parser>::try_parse_from(fixed.iter().chain(more)).map(|c| c.args)
        };
        assert!(kafka(&[]).is_err(), "--kafka needs --topic");
        assert!(kafka(&["--topic", "t", "--target", "http://127.0.0.1:1/"]).is_err());
        let args = kafka(&["--topic", "t"]).unwrap();
        assert!(matches!(Target::of(&args), Ok(Target::Kafka(_))));
    }

    #[test]
    fn plain_json_events_carry_id_time_and_the_asked_fields() {
        let args = test_args(&[
            "--batch",
            "3",
            "--events",
            "json",
            "--data",
            r#"{"amount": 42, "tag": "a\"b"}"#,
        ]);
        let url = Arc::new(Target::of(&args).unwrap());
        let sender = Sender::new(&args, url, "r8".into()).unwrap();
        let events: Vec<serde_json::Value> =
            serde_json::from_slice(&sender.body(2, 1_700_000_000_123)).unwrap();
        assert_eq!(events.len(), 3);
        for (j, e) in events.iter().enumerate() {
            assert_eq!(e["id"], sender.ids().id(2 * 3 + j), "{e}");
            assert_eq!(e["ts"], "2023-11-14T22:13:20.123Z");
            assert_eq!(
                (e["amount"].as_i64(), e["tag"].as_str()),
                (Some(42), Some("a\"b"))
            );
            assert!(e.get("specversion").is_none());
        }
        let ce = test_args(&["--data", r#"{"amount": 42}"#]);
        let url = Arc::new(Target::of(&ce).unwrap());
        let sender = Sender::new(&ce, url, "r9".into()).unwrap();
        let events: Vec<serde_json::Value> = serde_json::from_slice(&sender.body(0, 0)).unwrap();
        assert_eq!(events[0]["data"]["amount"], 42);
    }

    #[test]
    fn event_ids_map_to_indexes_and_back_and_other_ids_are_not_counted() {
        let acked = Acked {
            ids: Ids {
                prefix: "lt-r1-".into(),
                batch: 3,
                requests: 3,
            },
            requests: vec![true, false, true],
        };
        let ids = &acked.ids;
        assert_eq!(acked.count(), 6);
        assert_eq!(acked.events().collect::<Vec<_>>(), vec![0, 1, 2, 6, 7, 8]);
        for e in 0..ids.scheduled() {
            assert_eq!(ids.index(&ids.id(e)), Some(e));
        }
        assert_eq!(ids.id(7), "lt-r1-2-1");
        for other in [
            "lt-r2-0-0",
            "lt-r1-3-0",
            "lt-r1-0-3",
            "lt-r1-0",
            "lt-r1-x-0",
            "x",
        ] {
            assert_eq!(ids.index(other), None, "{other}");
        }
    }
}
