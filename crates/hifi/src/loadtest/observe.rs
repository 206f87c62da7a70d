//! What the load test observed at the destination: each event's deliveries and first
//! delay (from the in-process receiver, or a receiver's record file), and the ledger's
//! account of the acknowledged events that never arrived.

use super::*;

/// Asks the pipeline's ledger what became of `ids` (acknowledged, not delivered): the
/// events it accounts for, how many are lost (no terminal outcome, or listed lost, or
/// not found), and up to 20 lost ids.
pub(super) async fn account(admin: &str, ids: &[String]) -> Result<(Accounted, u64, Vec<String>)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let url = format!("http://{admin}/v1/outcomes");
    let mut accounted = Accounted::default();
    let mut lost = 0;
    let mut examples = Vec::new();
    for chunk in ids.chunks(hifi_server::outcomes::IDS_MAX) {
        let resp = client
            .post(&url)
            .json(&serde_json::json!({ "ids": chunk, "since": "24h" }))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        if !resp.status().is_success() {
            bail!("{url} answered {}", resp.status());
        }
        let v: serde_json::Value = resp.json().await?;
        let n = |class: &str| v["counts"][class].as_u64().unwrap_or(0);
        // Taken into a window's result: ended on purpose, like a filtered event.
        accounted.filtered += n("filtered") + n("aggregated");
        accounted.dead_lettered += n("dead_lettered");
        accounted.retrying += n("retrying");
        accounted.delivered_elsewhere += n("delivered");
        accounted.ended_not_lost += n("settled_not_lost");
        let counted: u64 = v["counts"]
            .as_object()
            .map(|c| c.values().filter_map(|x| x.as_u64()).sum())
            .unwrap_or(0);
        if counted != chunk.len() as u64 {
            bail!("{url} accounted for {counted} of {} ids", chunk.len());
        }
        for class in ["lost", "in_flight", "unknown", "not_found"] {
            lost += n(class);
            for id in v["examples"][class].as_array().into_iter().flatten() {
                if examples.len() < 20 {
                    examples.push(id.as_str().unwrap_or("?").to_owned());
                }
            }
        }
    }
    Ok((accounted, lost, examples))
}

/// Deliveries of this run's events.
pub(super) struct Deliveries {
    pub(super) ids: Ids,
    /// Per event index: times received.
    pub(super) count: Vec<u32>,
    /// Per event index: receive time − event time of the first receipt, ms.
    pub(super) first_delay_ms: Vec<u32>,
}

impl Deliveries {
    pub(super) fn new(ids: Ids) -> Self {
        Deliveries {
            count: vec![0; ids.scheduled()],
            first_delay_ms: vec![0; ids.scheduled()],
            ids,
        }
    }

    /// Counts one delivery; ids of other runs are ignored.
    pub(super) fn add(
        &mut self,
        id: &str,
        event_time_ms: Option<i64>,
        received_at_ms: Option<i64>,
    ) {
        let Some(e) = self.ids.index(id) else {
            return;
        };
        if self.count[e] == 0 {
            let delay = received_at_ms.unwrap_or(0) - event_time_ms.unwrap_or(0);
            self.first_delay_ms[e] = delay.clamp(0, i64::from(u32::MAX)) as u32;
        }
        self.count[e] = self.count[e].saturating_add(1);
    }
}

/// Where the outcome's deliveries come from.
pub(super) enum Observed {
    /// The in-process receiver counts each accepted request's events as it answers.
    Live(Arc<Mutex<Deliveries>>),
    /// A receiver's record file, read as it grows: each refresh reads only the complete
    /// lines appended since the last one.
    File {
        path: PathBuf,
        /// Bytes of the file already read.
        read: u64,
        deliveries: Deliveries,
    },
}

/// The fields of a record line that the outcome needs.
#[derive(serde::Deserialize)]
pub(super) struct RecordLine<'a> {
    #[serde(borrow)]
    pub(super) id: std::borrow::Cow<'a, str>,
    pub(super) event_time_ms: Option<i64>,
    pub(super) received_at_ms: Option<i64>,
}

impl Observed {
    pub(super) fn file(path: PathBuf, ids: Ids) -> Self {
        Observed::File {
            path,
            read: 0,
            deliveries: Deliveries::new(ids),
        }
    }

    /// Catches up with the record file (nothing to do for live deliveries).
    pub(super) fn refresh(&mut self) -> Result<&Self> {
        use std::io::{Read, Seek, SeekFrom};
        let Observed::File {
            path,
            read,
            deliveries,
        } = self
        else {
            return Ok(self);
        };
        let mut file = match std::fs::File::open(&*path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        file.seek(SeekFrom::Start(*read))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        // A line still being written is read next time.
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        *read += complete as u64;
        for line in buf[..complete].split(|&b| b == b'\n') {
            if let Ok(l) = serde_json::from_slice::<RecordLine>(line) {
                deliveries.add(&l.id, l.event_time_ms, l.received_at_ms);
            }
        }
        Ok(self)
    }

    pub(super) fn with<R>(&self, f: impl FnOnce(&Deliveries) -> R) -> R {
        match self {
            Observed::Live(d) => f(&d.lock().unwrap_or_else(|p| p.into_inner())),
            Observed::File { deliveries, .. } => f(deliveries),
        }
    }
}
