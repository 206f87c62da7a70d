//! `GET /v1/shadow?from=&to=`: each sink against its shadow (`[sinks.X] shadow =
//! "sinks.Y"`, the same events delivered to another destination): per 1-minute bucket of
//! event time, the events both destinations acknowledged, those only one did (with
//! examples of their origins), and what each dead-lettered; and the totals over the
//! range. Open buckets are provisional (deliveries still on their way show as "only
//! one"); settled ones are final.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::admin::AdminState;

/// `from` and `to`: RFC 3339 or epoch ms (default: the last hour).
#[derive(Debug, Deserialize)]
pub struct ShadowQuery {
    from: Option<String>,
    to: Option<String>,
}

/// Answers `GET /v1/shadow`.
pub async fn shadow(State(s): State<Arc<AdminState>>, Query(q): Query<ShadowQuery>) -> Response {
    let (from, to) = match crate::admin::range(&s, q.from.as_deref(), q.to.as_deref()) {
        Ok(r) => r,
        Err(why) => return crate::admin::bad_request(&why),
    };
    let mut totals: BTreeMap<(String, String), [u64; 6]> = BTreeMap::new();
    let mut buckets = Vec::new();
    for t in s.ledger.loss(from, to) {
        if t.shadow.is_empty() {
            continue;
        }
        for d in &t.shadow {
            let sum = totals
                .entry((d.primary.clone(), d.shadow.clone()))
                .or_default();
            let differs = d.only_primary + d.only_shadow > 0;
            for (acc, v) in sum.iter_mut().zip([
                d.both,
                d.only_primary,
                d.only_shadow,
                d.primary_dead_lettered,
                d.shadow_dead_lettered,
                u64::from(differs),
            ]) {
                *acc += v;
            }
        }
        buckets.push(json!({"start": t.start, "start_ms": t.start_ms, "settled": t.settled, "pairs": t.shadow}));
    }
    let totals: Vec<_> = totals
        .into_iter()
        .map(|((primary, shadow), v)| {
            json!({"primary": primary, "shadow": shadow, "both": v[0], "only_primary": v[1],
                "only_shadow": v[2], "primary_dead_lettered": v[3], "shadow_dead_lettered": v[4],
                "buckets_differing": v[5]})
        })
        .collect();
    Json(json!({"totals": totals, "buckets": buckets})).into_response()
}
