//! The pipeline's lineage for an OpenLineage backend (`[lineage] openlineage_url`): each
//! node a process runs is a job; when the pipeline starts (also after a reload) it sends
//! a `START` RunEvent per job, and when it stops a `COMPLETE` one with the same run id.
//!
//! A job's inputs and outputs are datasets: topics (namespace `kafka://BROKER` with the
//! Kafka engine, `hifi://DATA_DIR` with the embedded one), a source's listener, a sink's
//! destination (an HTTP sink: its URL's origin, named after the sink — the path may hold a
//! token). A stage's and a sink's output carries the column-lineage facet from
//! [`crate::lineage`]: selected = `DIRECT` (`IDENTITY`, or `TRANSFORMATION` when the node
//! changes the value; `masking` when it redacts it), non-selected = `INDIRECT`. Fields
//! not known in advance (a topic without a schema) are left out. Topics with a schema
//! carry the schema facet; SQL stages the SQL facet; every job the job-type facet
//! (`STREAMING`).
//!
//! Sending never holds up the pipeline: a failed POST is retried twice, then logged.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{EngineKind, LoadedConfig, SinkType, SourceType};
use crate::lineage::{Use, ANY};
use crate::runtime::NodeFilter;
use crate::topology::Topology;

/// The OpenLineage spec version of the events.
const RUN_EVENT_SCHEMA: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const COLUMN_LINEAGE_SCHEMA: &str = "https://openlineage.io/spec/facets/1-2-0/ColumnLineageDatasetFacet.json#/$defs/ColumnLineageDatasetFacet";
const SCHEMA_SCHEMA: &str =
    "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet";
const SQL_SCHEMA: &str =
    "https://openlineage.io/spec/facets/1-1-0/SQLJobFacet.json#/$defs/SQLJobFacet";
const JOB_TYPE_SCHEMA: &str =
    "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet";
/// Who produced the events (a URI, as the spec asks).
pub const PRODUCER: &str = concat!("urn:hifi:v", env!("CARGO_PKG_VERSION"));
/// Longest wait for the `COMPLETE` events when the pipeline stops.
pub const COMPLETE_WITHIN: Duration = Duration::from_secs(5);

/// One job (node) of the pipeline, ready to be sent at each state.
#[derive(Debug, Clone)]
pub struct Job {
    /// `stages.big`.
    pub name: String,
    /// The event without `eventType` and `eventTime`.
    body: Map<String, Value>,
}

impl Job {
    /// The RunEvent of this job in `state` (`START`, `COMPLETE`, …) at `time` (RFC 3339).
    pub fn event(&self, state: &str, time: &str) -> Value {
        let mut e = self.body.clone();
        e.insert("eventType".into(), state.into());
        e.insert("eventTime".into(), time.into());
        Value::Object(e)
    }
}

/// The jobs of the nodes `only` selects, each with a new run id.
pub fn jobs(loaded: &LoadedConfig, topology: &Topology, only: &NodeFilter) -> Vec<Job> {
    let cfg = &loaded.config;
    let ns = dataset_namespace(loaded);
    let topic = |t: &str| dataset(&ns, &topic_name(loaded, t), schema_facet(topology, t));
    let mut out = Vec::new();
    let mut job = |kind: &str,
                   name: &str,
                   inputs: Vec<Value>,
                   outputs: Vec<Value>,
                   facets: Map<String, Value>| {
        let mut jf = facets;
        jf.insert(
            "jobType".into(),
            facet(
                JOB_TYPE_SCHEMA,
                json!({"processingType": "STREAMING", "integration": "HIFI", "jobType": kind.to_uppercase()}),
            ),
        );
        let body = json!({
            "run": {"runId": uuid::Uuid::now_v7().to_string()},
            "job": {"namespace": cfg.lineage.namespace, "name": format!("{kind}s.{name}"), "facets": jf},
            "inputs": inputs,
            "outputs": outputs,
            "producer": PRODUCER,
            "schemaURL": RUN_EVENT_SCHEMA,
        });
        let Value::Object(body) = body else {
            unreachable!("a JSON object")
        };
        out.push(Job {
            name: format!("{kind}s.{name}"),
            body,
        });
    };
    for (name, s) in cfg.sources.iter().filter(|(n, _)| only.runs("sources", n)) {
        let inputs = match s.kind {
            SourceType::Http => vec![dataset(&format!("http://{}", s.listen), "/v1/events", None)],
            SourceType::Kafka => {
                let ns = kafka_namespace(s.brokers.as_deref().unwrap_or_default());
                s.topics.iter().map(|t| dataset(&ns, t, None)).collect()
            }
        };
        job(
            "source",
            name,
            inputs,
            vec![topic(s.topic.get_ref())],
            Map::new(),
        );
    }
    for (name, s) in cfg.stages.iter().filter(|(n, _)| only.runs("stages", n)) {
        let input = s.input.get_ref();
        let mut output = topic(s.output.get_ref());
        add_column_lineage(&mut output, topology, name, &ns, &topic_name(loaded, input));
        let mut facets = Map::new();
        if let Some(sql) = &s.sql {
            facets.insert(
                "sql".into(),
                facet(SQL_SCHEMA, json!({"query": sql.get_ref().trim()})),
            );
        }
        job("stage", name, vec![topic(input)], vec![output], facets);
    }
    for (name, s) in cfg.sinks.iter().filter(|(n, _)| only.runs("sinks", n)) {
        let input = s.input.get_ref();
        let mut output = match s.kind {
            // The destination's origin; not its path, which often holds a token (webhooks).
            SinkType::Http => {
                let ns = reqwest::Url::parse(&s.url)
                    .map(|u| u.origin().ascii_serialization())
                    .unwrap_or_else(|_| "http://invalid".into());
                dataset(&ns, &format!("sinks.{name}"), None)
            }
            SinkType::Kafka => dataset(
                &kafka_namespace(s.brokers.as_deref().unwrap_or_default()),
                s.topic.as_deref().unwrap_or_default(),
                None,
            ),
        };
        add_column_lineage(&mut output, topology, name, &ns, &topic_name(loaded, input));
        job("sink", name, vec![topic(input)], vec![output], Map::new());
    }
    out
}

/// A topic's name in the engine (with the Kafka engine, prefixed).
fn topic_name(loaded: &LoadedConfig, t: &str) -> String {
    match loaded.config.engine.kind {
        EngineKind::Kafka => format!("{}{t}", loaded.config.engine.topic_prefix),
        EngineKind::Embedded => t.to_owned(),
    }
}

/// Where the topics live, as an OpenLineage namespace.
fn dataset_namespace(loaded: &LoadedConfig) -> String {
    let cfg = &loaded.config;
    if let Some(ns) = &cfg.lineage.dataset_namespace {
        return ns.clone();
    }
    match cfg.engine.kind {
        EngineKind::Kafka => kafka_namespace(cfg.engine.brokers.as_deref().unwrap_or_default()),
        EngineKind::Embedded => {
            let dir = loaded.resolve(&cfg.engine.data_dir);
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            format!("hifi://{}", dir.display())
        }
    }
}

/// `kafka://HOST:PORT` of the first bootstrap broker (OpenLineage's naming for Kafka).
fn kafka_namespace(brokers: &str) -> String {
    let first = brokers.split(',').next().unwrap_or_default().trim();
    format!("kafka://{first}")
}

fn facet(schema: &str, fields: Value) -> Value {
    let mut f = json!({"_producer": PRODUCER, "_schemaURL": schema});
    if let (Value::Object(f), Value::Object(more)) = (&mut f, fields) {
        f.extend(more);
    }
    f
}

fn dataset(namespace: &str, name: &str, schema: Option<Value>) -> Value {
    let mut facets = Map::new();
    if let Some(s) = schema {
        facets.insert("schema".into(), s);
    }
    json!({"namespace": namespace, "name": name, "facets": facets})
}

fn schema_facet(topology: &Topology, topic: &str) -> Option<Value> {
    let s = topology.derived.schemas.get(topic)?;
    let fields: Vec<Value> = s
        .fields
        .iter()
        .map(|f| json!({"name": f.name, "type": format!("{:?}", f.ty).to_lowercase()}))
        .collect();
    Some(facet(SCHEMA_SCHEMA, json!({ "fields": fields })))
}

/// The column-lineage facet of what `node` puts out, from the lineage graph's edges into
/// it (their upstream fields are all of `input`, the topic the node reads).
fn add_column_lineage(output: &mut Value, topology: &Topology, node: &str, ns: &str, input: &str) {
    let mut fields: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for e in topology.lineage.edges.iter().filter(|e| e.via == node) {
        let (Some((_, to)), Some((_, from))) = (e.to.split_once('.'), e.from.split_once('.'))
        else {
            continue;
        };
        if to == ANY || from == ANY {
            continue;
        }
        let mut t = match e.how {
            Use::Selected => {
                let subtype = if e.note.is_some() {
                    "TRANSFORMATION"
                } else {
                    "IDENTITY"
                };
                json!({"type": "DIRECT", "subtype": subtype, "masking": e.redacted})
            }
            Use::NonSelected => json!({"type": "INDIRECT", "masking": false}),
        };
        if let Some(n) = &e.note {
            t["description"] = n.clone().into();
        }
        let input_field =
            json!({"namespace": ns, "name": input, "field": from, "transformations": [t]});
        // Several writers of the input topic give the same edge once each.
        let list = fields.entry(to).or_default();
        if !list.contains(&input_field) {
            list.push(input_field);
        }
    }
    if fields.is_empty() {
        return;
    }
    let fields: Map<String, Value> = fields
        .into_iter()
        .map(|(f, inputs)| (f.to_owned(), json!({ "inputFields": inputs })))
        .collect();
    output["facets"]["columnLineage"] = facet(COLUMN_LINEAGE_SCHEMA, json!({ "fields": fields }));
}

/// Sends `START` for every job now, and `COMPLETE` when `token` is cancelled (within
/// [`COMPLETE_WITHIN`]).
pub async fn run(url: String, api_key: Option<String>, jobs: Vec<Job>, token: CancellationToken) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let send_all = |state: &'static str| {
        let (client, url, key, jobs) = (client.clone(), url.clone(), api_key.clone(), jobs.clone());
        async move {
            let time = now_rfc3339();
            for j in &jobs {
                send(
                    &client,
                    &url,
                    key.as_deref(),
                    &j.name,
                    &j.event(state, &time),
                )
                .await;
            }
        }
    };
    // Stopping while the backend is slow abandons what is left to send.
    tokio::select! {
        _ = send_all("START") => info!(%url, jobs = jobs.len(), "OpenLineage: START sent"),
        _ = token.cancelled() => return,
    }
    token.cancelled().await;
    if tokio::time::timeout(COMPLETE_WITHIN, send_all("COMPLETE"))
        .await
        .is_err()
    {
        warn!(%url, "OpenLineage: COMPLETE not sent within {COMPLETE_WITHIN:?} of stopping");
    }
}

async fn send(client: &reqwest::Client, url: &str, key: Option<&str>, job: &str, event: &Value) {
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        let mut req = client.post(url).json(event);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => last = format!("answered {}", r.status()),
            Err(e) => last = format!("{e}"),
        }
    }
    warn!(%url, job, "OpenLineage backend did not take the event: {last}");
}

/// Now, as OpenLineage wants it (RFC 3339, UTC, milliseconds).
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The URL events are POSTed to.
pub fn endpoint(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}
