//! One delivery: the breaker's gate, the request in the sink's format, local retries
//! with backoff, and splitting refused batches to isolate the events refused.

use super::*;

/// Parts a refused batch is split into.
const SPLIT_WAYS: usize = 4;

impl Sink {
    /// Waits until the breaker lets a request go; false at shutdown. A waiting delivery
    /// goes as soon as the breaker closes, not at the next probe time: fresh events must
    /// not overtake it while the destination is up (the committed position would stay
    /// behind, and a crash would re-send everything delivered since).
    pub(super) async fn gate(&self, stop: &CancellationToken) -> bool {
        loop {
            if stop.is_cancelled() {
                return false;
            }
            // Registered before the breaker is read, so a close in between still wakes it.
            let closed = self.breaker_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            let gate = self
                .breaker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .gate(tokio::time::Instant::now());
            match gate {
                Gate::Go => return true,
                Gate::WaitUntil(t) => {
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep_until(t) => {}
                        _ = &mut closed => {}
                    }
                }
            }
        }
    }

    pub(super) fn breaker_result(&self, ok: bool) {
        let changed = self
            .breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(ok, tokio::time::Instant::now());
        match changed {
            Some(true) => {
                self.stats
                    .breaker_opens_total
                    .fetch_add(1, Ordering::Relaxed);
                self.stats.breaker_open.store(1, Ordering::Relaxed);
                warn!(sink = %self.name, first_probe_in = ?self.cfg.breaker.probe_min.0.min(self.cfg.breaker.probe.0),
                    probes_at_most_every = ?self.cfg.breaker.probe.0,
                    "destination keeps failing: circuit breaker open, pausing delivery and probing");
            }
            Some(false) => {
                self.breaker_closed.notify_waiters();
                self.stats.breaker_open.store(0, Ordering::Relaxed);
                info!(sink = %self.name, "destination answers again: circuit breaker closed");
            }
            None => {}
        }
    }

    /// Sends one request; returns its class.
    pub(super) async fn send(&self, batch: &[Item]) -> Class {
        let span = tracing::info_span!(target: crate::otel::TARGET, "deliver",
            sink = %self.name, events = batch.len(), outcome = tracing::field::Empty);
        if !span.is_disabled() {
            crate::otel::link(&span, batch.iter().filter_map(|i| i.trace.as_ref()));
        }
        let class = tracing::Instrument::instrument(self.send_request(batch), span.clone()).await;
        span.record(
            "outcome",
            match &class {
                Class::Success => "success",
                Class::Recoverable { .. } => "failed",
                Class::NonRecoverable { .. } => "refused",
            },
        );
        class
    }

    pub(super) async fn send_request(&self, batch: &[Item]) -> Class {
        #[cfg(feature = "kafka")]
        if let Some(producer) = &self.kafka {
            let bodies = batch.iter().map(|i| &i.body[..]);
            let timeout = self.cfg.request_timeout.0;
            return crate::kafka_sink::send(producer, &self.cfg, bodies, timeout).await;
        }
        let mut key = xxhash_rust::xxh3::Xxh3::new();
        for item in batch {
            key.update(item.id.as_bytes());
            key.update(&[0]);
        }
        let req = match self.request(batch) {
            Ok(r) => r,
            // A stored event that cannot be put in this format (never decided by the
            // destination, and never going to work): dead-lettered like a refusal.
            Err(reason) => return Class::NonRecoverable { status: 0, reason },
        };
        let mut req = req.header("idempotency-key", format!("{:032x}", key.digest128()));
        for (k, v) in &self.cfg.headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                let snippet = if resp.status().is_success() {
                    String::new()
                } else {
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let cut = &bytes[..bytes.len().min(BODY_SNIPPET_BYTES)];
                    String::from_utf8_lossy(cut).trim().to_owned()
                };
                self.classifier.status(status, &snippet, retry_after)
            }
            Err(e) => {
                let what = if e.is_timeout() {
                    format!("timeout after {:?}", self.cfg.request_timeout.0)
                } else {
                    // With its causes: "error sending request: … connection refused".
                    format!("{:#}", anyhow::Error::from(e))
                };
                self.classifier.transport(&what)
            }
        }
    }

    /// The request carrying `batch` in the sink's format (single-event formats get
    /// batches of one).
    pub(super) fn request(&self, batch: &[Item]) -> Result<reqwest::RequestBuilder, String> {
        let post = self.client.post(&self.cfg.url);
        let joined = |open: &[u8], sep: u8, close: &[u8]| {
            let size = batch.iter().map(|i| i.body.len() + 1).sum::<usize>() + 2;
            let mut body = Vec::with_capacity(size);
            body.extend_from_slice(open);
            for (i, item) in batch.iter().enumerate() {
                if i > 0 {
                    body.push(sep);
                }
                body.extend_from_slice(&item.body);
            }
            body.extend_from_slice(close);
            body
        };
        // The trace context goes as W3C headers in single-event formats.
        let traced = |mut req: reqwest::RequestBuilder, m: &BinaryMessage| {
            for (name, value) in m.headers.iter().filter(|(n, _)| !n.starts_with("ce-")) {
                req = req.header(name, value);
            }
            req
        };
        let typed = |req: reqwest::RequestBuilder, m: &BinaryMessage| match &m.content_type {
            Some(ct) => req.header("content-type", ct),
            None => req,
        };
        Ok(match self.cfg.format() {
            SinkFormat::Batch => post
                .header("content-type", "application/cloudevents-batch+json")
                .body(joined(b"[", b',', b"]")),
            SinkFormat::Ndjson => post
                .header("content-type", "application/x-ndjson")
                .body(joined(b"", b'\n', b"\n")),
            SinkFormat::Structured => {
                let m = ce_binary::from_structured(&batch[0].body)?;
                traced(post, &m)
                    .header("content-type", "application/cloudevents+json")
                    .body(batch[0].body.clone())
            }
            SinkFormat::Binary => {
                let m = ce_binary::from_structured(&batch[0].body)?;
                let mut req = typed(traced(post, &m), &m);
                for (name, value) in m.headers.iter().filter(|(n, _)| n.starts_with("ce-")) {
                    req = req.header(name, value);
                }
                req.body(m.body)
            }
            SinkFormat::Raw => {
                let m = ce_binary::from_structured(&batch[0].body)?;
                typed(traced(post, &m), &m).body(m.body)
            }
        })
    }

    /// Delivers a batch: local retries, splitting of non-recoverable answers. Returns a
    /// fate per event, or `None` at shutdown (nothing decided; the events stay pending).
    ///
    /// A fresh batch comes in `Lane::Fast`, holding one of the batcher's request slots.
    /// Once a request fails, the batch gives that slot back and goes on (backoff,
    /// splitting) in the recovery lane, whose requests take slots of their own: events
    /// behind a failing batch are not held up by its retries (no head-of-line blocking).
    pub(super) async fn deliver(
        &self,
        batch: &[Item],
        stop: &CancellationToken,
        lane: &mut Lane,
    ) -> Option<Vec<Fate>> {
        let attempts_max = self.cfg.retry.local.attempts.max(1);
        let mut attempt = 0u32;
        loop {
            if !self.gate(stop).await {
                return None;
            }
            let class = match lane {
                Lane::Fast { .. } => {
                    let sent = tokio::time::Instant::now();
                    let class = self.send(batch).await;
                    // A retried failure (429, 503, a timeout) is the destination asking
                    // for less; a refusal is about the data, and answered in time.
                    let backpressure = matches!(class, Class::Recoverable { .. });
                    self.slots.record(sent.elapsed(), backpressure);
                    class
                }
                Lane::Recovering { .. } => {
                    let _slot = self.recovery_slots.acquire(stop).await?;
                    let sent = tokio::time::Instant::now();
                    let class = self.send(batch).await;
                    let backpressure = matches!(class, Class::Recoverable { .. });
                    self.recovery_slots.record(sent.elapsed(), backpressure);
                    class
                }
            };
            if matches!(lane, Lane::Fast { .. }) && !matches!(class, Class::Success) {
                // Wait for room in the recovery lane while still holding the fast slot,
                // so a destination failing everything slows the batcher instead of
                // piling up batches.
                *lane = Lane::Recovering {
                    _place: Some(acquire(&self.recovering_events, batch.len(), stop).await?),
                };
            }
            attempt += 1;
            let prior = batch
                .iter()
                .map(|i| i.retry.map_or(0, |r| r.attempts))
                .max()
                .unwrap_or(0);
            match class {
                Class::Success => {
                    self.breaker_result(true);
                    self.on_delivered(batch);
                    self.refusals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(batch.len(), 0);
                    return Some(vec![Fate::Delivered; batch.len()]);
                }
                Class::NonRecoverable { status, reason } => {
                    self.breaker_result(true); // the destination is up; the data is bad
                    self.stats
                        .failed_requests_total
                        .fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .refused_requests_total
                        .fetch_add(1, Ordering::Relaxed);
                    if batch.len() == 1 {
                        let unlogged = {
                            let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
                            r.record(0, 1);
                            r.take_log_turn(tokio::time::Instant::now())
                        };
                        // At most one line a second: a destination refusing everything
                        // (an expired token) must not flood the log.
                        if let Some(more) = unlogged {
                            warn!(sink = %self.name, id = %batch[0].id, %reason, refused_since_last_line = more,
                                "event refused; dead-lettering it");
                        }
                        return Some(vec![Fate::Dead {
                            status,
                            body: reason,
                            attempts: prior + attempt,
                        }]);
                    }
                    // Split into SPLIT_WAYS parts, all sent at once: isolating a bad event
                    // takes about log4(batch) rounds, half of halving's, for as many
                    // requests (k·log_k(n) is the same for k = 2 and 4).
                    let parts = batch.chunks(batch.len().div_ceil(SPLIT_WAYS));
                    let fates = futures_util::future::join_all(parts.map(|part| async move {
                        Box::pin(self.deliver(part, stop, &mut Lane::part())).await
                    }))
                    .await;
                    let mut all = Vec::with_capacity(batch.len());
                    for f in fates {
                        all.extend(f?);
                    }
                    return Some(all);
                }
                Class::Recoverable {
                    reason,
                    retry_after,
                    transport,
                } => {
                    self.breaker_result(false);
                    self.stats
                        .failed_requests_total
                        .fetch_add(1, Ordering::Relaxed);
                    if transport {
                        // Unreachable: wait behind the breaker; the attempts are for
                        // failures that may be this batch's own.
                        attempt -= 1;
                    }
                    if attempt >= attempts_max {
                        warn!(sink = %self.name, events = batch.len(), attempts = attempt, %reason,
                            "local retries exhausted; moving the events to the retry topic");
                        return Some(vec![
                            Fate::Retry {
                                reason,
                                attempts: prior + attempt
                            };
                            batch.len()
                        ]);
                    }
                    let local = &self.cfg.retry.local;
                    let wait = backoff(
                        local.backoff_min.0,
                        local.backoff_max.0,
                        attempt.saturating_sub(1),
                        retry_after,
                    );
                    self.stats
                        .local_retries_total
                        .fetch_add(1, Ordering::Relaxed);
                    if !sleep_or_cancel(stop, wait).await {
                        return None;
                    }
                }
            }
        }
    }

    pub(super) fn on_delivered(&self, batch: &[Item]) {
        let departure_us = self.ledger.now_us();
        self.ledger.outcomes(
            batch
                .iter()
                .map(|i| (Outcome::Delivered, i.origin.as_ref(), i.event_time_ms)),
        );
        let again = |i: &&Item| i.record.header(crate::event::header::REDELIVERY).is_some();
        if batch.iter().any(|i| again(&i)) {
            self.ledger.outcomes(
                batch
                    .iter()
                    .filter(again)
                    .map(|i| (Outcome::Redelivered, i.origin.as_ref(), i.event_time_ms)),
            );
        }
        self.ledger.lags(
            batch.iter().map(|i| (i.event_time_ms, i.arrival_us)),
            departure_us,
        );
        self.stats.requests_total.fetch_add(1, Ordering::Relaxed);
        self.stats
            .delivered_events_total
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }

    /// Waits for rate-limit tokens for `n` global retries; false at shutdown.
    pub(super) async fn pace(&self, n: u64, stop: &CancellationToken) -> bool {
        crate::delivery::pace(&self.retry_rate, n, stop).await
    }
}
