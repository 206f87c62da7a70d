// hifi admin dashboard: polls /v1/lag, /v1/loss and /v1/stats (same origin, relative URLs)
// every 2 s and redraws in place. No framework, no build step; charts use the vendored uPlot.
//
// Markers kept stable for scripts/check-dashboard:
//   [data-chart=pie|process-history|backlog|lag-out|e2e|throughput] get data-rendered and
//   data-points="<n>" (pie: slices drawn; time charts: non-null values plotted, all series);
//   #loss-table has one tr[data-bucket=<start>] per bucket, class "lossy" when e2e_lost > 0;
//   [data-stat=retrying|dead_lettered|breaker|backlog_records|backlog_age_ms][data-node=<sink>]
//   hold the sink figures (the backlog ones also data-value=<number>, breaker "open"/"closed");
//   #sum-e2e has data-value=<ms>, #sum-breakers data-open=<count of open breakers>;
//   body[data-loaded="true"] once a refresh got all three APIs and drew them.
(function () {
  "use strict";

  const REFRESH_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const CHART_HEIGHT = 240;
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
                   "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

  const $ = (sel) => document.querySelector(sel);
  const chartEl = (name) => document.querySelector(`[data-chart="${name}"]`);

  // ---- formatting --------------------------------------------------------------------

  const intFmt = new Intl.NumberFormat("en-US");
  const fmtInt = (n) => (n == null ? "–" : intFmt.format(Math.round(n)));

  function fmtMs(ms) {
    if (ms == null || !isFinite(ms)) return "–";
    if (ms >= 3600000) return (ms / 3600000).toFixed(1) + " h";
    if (ms >= 60000) return (ms / 60000).toFixed(1) + " min";
    if (ms >= 1000) return (ms / 1000).toFixed(ms >= 10000 ? 0 : 2) + " s";
    return ms.toFixed(ms >= 100 ? 0 : ms >= 10 ? 1 : 2) + " ms";
  }

  // Axis labels in milliseconds, all in the unit that suits the largest tick (an axis
  // never mixes "0.00 ms" with "400 s").
  function msAxis(ticks) {
    const max = Math.max(0, ...ticks.filter((t) => t != null));
    const [div, unit] = max >= 3600000 ? [3600000, " h"] : max >= 60000 ? [60000, " min"]
      : max >= 1000 ? [1000, " s"] : [1, " ms"];
    const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) / div : max / div;
    const whole = (x) => Math.abs(x - Math.round(x)) < 1e-6;
    const digits = whole(step) ? 0 : whole(step * 10) ? 1 : 2;
    return ticks.map((t) => (t == null ? "" : (t / div).toFixed(digits) + unit));
  }

  function fmtPct(p) {
    if (p == null || !isFinite(p)) return "–";
    if (p === 0) return "0%";
    return (p < 0.01 ? p.toPrecision(2) : p.toFixed(2)) + "%";
  }

  // Local wall-clock time (24 h) of an RFC 3339 string or epoch milliseconds.
  function fmtTime(t) {
    const d = new Date(t);
    return isNaN(d) ? String(t) : d.toLocaleTimeString("en-GB");
  }

  function el(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text != null) e.textContent = text;
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }

  // ---- node colours: assigned in pipeline order on first sight, stable afterwards ----

  const nodeColor = new Map();
  function colorOf(node) {
    if (!nodeColor.has(node)) nodeColor.set(node, PALETTE[nodeColor.size % PALETTE.length]);
    return nodeColor.get(node);
  }

  // An opaque tint of a "#rrggbb" colour (stacked fills must not blend into each other).
  function tint(hex, amount) {
    const c = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    const m = c.map((v) => Math.round(v * amount + 255 * (1 - amount)));
    return `rgb(${m.join(",")})`;
  }

  function swatch(node) {
    const s = el("span", null, { class: "swatch" });
    s.style.background = colorOf(node);
    return s;
  }

  function markChart(elem, points) {
    elem.dataset.rendered = points > 0 ? "true" : "false";
    elem.dataset.points = String(points);
  }

  // ---- pie: share of each node's process p50 in the current window ------------------

  function renderPie(lag) {
    const box = chartEl("pie");
    const canvas = box.querySelector("canvas");
    const legend = box.querySelector(".legend tbody");
    const nodes = (lag.nodes || []).map((n) => ({
      node: n.node, kind: n.kind, p50: Math.max(0, n.process_ms?.p50 ?? 0),
    }));
    const total = nodes.reduce((s, n) => s + n.p50, 0);

    const size = 220, dpr = window.devicePixelRatio || 1, r = size / 2 - 4;
    canvas.width = size * dpr;
    canvas.height = size * dpr;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, size, size);

    let slices = 0;
    if (total > 0) {
      let angle = -Math.PI / 2;
      for (const n of nodes.filter((n) => n.p50 > 0)) {
        const sweep = (n.p50 / total) * 2 * Math.PI;
        ctx.beginPath();
        ctx.moveTo(size / 2, size / 2);
        ctx.arc(size / 2, size / 2, r, angle, angle + sweep);
        ctx.closePath();
        ctx.fillStyle = colorOf(n.node);
        ctx.fill();
        ctx.strokeStyle = "#fff";
        ctx.lineWidth = 2;
        ctx.stroke();
        angle += sweep;
        slices++;
      }
    } else {
      ctx.beginPath();
      ctx.arc(size / 2, size / 2, r, 0, 2 * Math.PI);
      ctx.fillStyle = "#e3e6ea";
      ctx.fill();
    }

    const rows = nodes.map((n) => {
      const tr = el("tr");
      const name = el("td");
      name.append(swatch(n.node), `${n.node} (${n.kind || "?"})`);
      tr.append(name, el("td", fmtMs(n.p50)),
                el("td", total > 0 ? fmtPct((100 * n.p50) / total) : "–"));
      return tr;
    });
    if (rows.length === 0) {
      rows.push(el("tr"));
      rows[0].append(el("td", "no data yet", { class: "empty" }));
    }
    legend.replaceChildren(...rows);
    markChart(box, slices);
  }

  // ---- time charts (uPlot) -----------------------------------------------------------

  const plots = new Map(); // chart name -> { plot, key }

  // Draws (or updates) a time chart. series: [{ label, color, values, fill, show }], where
  // values are what is plotted and show(i) is what the legend prints for point i.
  function drawTimeChart(name, xs, series, yAxis) {
    const box = chartEl(name);
    const points = series.reduce((s, ser) => s + ser.values.filter((v) => v != null).length, 0);
    const old = plots.get(name);
    if (points === 0) {
      if (old) old.plot.destroy();
      plots.delete(name);
      box.replaceChildren(el("p", "no data yet", { class: "empty" }));
      markChart(box, 0);
      return;
    }
    const data = [xs, ...series.map((s) => s.values)];
    const key = series.map((s) => s.label).join("\n");
    if (old && old.key === key) {
      old.plot.setData(data);
    } else {
      if (old) old.plot.destroy();
      box.replaceChildren();
      const opts = {
        width: Math.max(300, box.clientWidth),
        height: CHART_HEIGHT,
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        axes: [
          { space: 80, values: (u, ticks) => ticks.map((t) => fmtTime(t * 1000)) },
          { size: 70, values: (u, ticks) => yAxis(ticks) },
        ],
        series: [{}, ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          fill: s.fill,
          width: 1.5,
          value: (u, v, si, i) => (i == null ? "–" : s.show(i)),
        }))],
      };
      plots.set(name, { plot: new uPlot(opts, data, box), key });
    }
    markChart(box, points);
  }

  window.addEventListener("resize", () => {
    for (const [name, { plot }] of plots) {
      plot.setSize({ width: Math.max(300, chartEl(name).clientWidth), height: CHART_HEIGHT });
    }
  });

  function renderHistory(lag) {
    const history = (lag.history || []).filter((h) => !isNaN(Date.parse(h.t)));
    const xs = history.map((h) => Date.parse(h.t) / 1000);
    const nodes = (lag.nodes || []).map((n) => n.node);
    const windowS = lag.window_s > 0 ? lag.window_s : 10;
    const val = (h, node, field) => h.nodes?.[node]?.[field] ?? null;

    // Process p50, stacked: series k plots the sum of nodes 0..k. The biggest sum is drawn
    // first so each smaller band paints over it; the legend prints each node's own value.
    const raw = nodes.map((node) => history.map((h) => val(h, node, "process_p50_ms")));
    const sums = [];
    raw.forEach((values, k) => {
      sums.push(values.map((v, i) => (k > 0 ? sums[k - 1][i] : 0) + (v ?? 0)));
    });
    const stacked = nodes.map((node, k) => ({
      label: node, color: colorOf(node), fill: tint(colorOf(node), 0.45),
      values: raw[k].some((v) => v != null) ? sums[k] : raw[k],
      show: (i) => fmtMs(raw[k][i]),
    })).reverse();
    drawTimeChart("process-history", xs, stacked, msAxis);

    drawTimeChart("lag-out", xs, nodes.map((node) => {
      const values = history.map((h) => val(h, node, "lag_out_p95_ms"));
      return { label: node, color: colorOf(node), values, show: (i) => fmtMs(values[i]) };
    }), msAxis);

    const e2e = history.map((h) => h.e2e_p95_ms ?? null);
    drawTimeChart("e2e", xs, [{
      label: "e2e p95", color: "#c62828", fill: "rgba(198,40,40,0.08)",
      values: e2e, show: (i) => fmtMs(e2e[i]),
    }], msAxis);

    const rateFmt = (v) => (v == null ? "–" : v >= 100 ? fmtInt(v) : v.toFixed(1)) + "/s";
    drawTimeChart("throughput", xs, nodes.map((node) => {
      const rates = history.map((h) => {
        const n = val(h, node, "events");
        return n == null ? null : n / windowS;
      });
      return { label: node, color: colorOf(node), values: rates, show: (i) => rateFmt(rates[i]) };
    }), (ticks) => ticks.map((v) => (v >= 1000 ? (v / 1000).toFixed(1) + "k" : String(+v.toFixed(1)))));
  }

  // ---- backlog age per node: sampled at each refresh (the server keeps no history) ---

  const BACKLOG_KEEP = 300; // samples: 10 minutes at one per 2 s
  const backlogSamples = []; // { t: seconds, age: { node: ms } }

  function renderBacklog(stats) {
    const readers = (stats.nodes || []).filter((n) => n.backlog_age_ms != null);
    const age = {};
    for (const n of readers) age[n.node] = n.backlog_age_ms;
    backlogSamples.push({ t: Date.now() / 1000, age });
    if (backlogSamples.length > BACKLOG_KEEP) backlogSamples.shift();
    const xs = backlogSamples.map((p) => p.t);
    drawTimeChart("backlog", xs, readers.map((n) => {
      const values = backlogSamples.map((p) => p.age[n.node] ?? null);
      return { label: n.node, color: colorOf(n.node), values, show: (i) => fmtMs(values[i]) };
    }), msAxis);
  }

  // ---- loss table: one row per bucket, newest first ---------------------------------

  function renderLoss(loss, nodeOrder) {
    const buckets = loss.buckets || [];
    const nodes = [...nodeOrder];
    for (const b of buckets) for (const n of b.nodes || []) {
      if (!nodes.includes(n.node)) nodes.push(n.node);
    }
    const table = $("#loss-table");

    const head1 = el("tr"), head2 = el("tr");
    for (const h of ["start", "settled", "events"]) head1.append(el("th", h, { rowspan: 2 }));
    for (const n of nodes) {
      const th = el("th", null, { colspan: 2 });
      th.append(swatch(n), n);
      head1.append(th);
      head2.append(el("th", "seen"), el("th", "lost"));
    }
    for (const h of ["filtered", "dead-lettered", "e2e lost", "e2e loss"]) {
      head1.append(el("th", h, { rowspan: 2 }));
    }
    table.tHead.replaceChildren(head1, head2);

    const rows = buckets.map((b) => {
      const byNode = new Map((b.nodes || []).map((n) => [n.node, n]));
      const sum = (f) => (b.nodes || []).reduce((s, n) => s + (n[f] || 0), 0);
      const tr = el("tr", null, { "data-bucket": b.start });
      // An open bucket's missing events may still be on their way (a backlog): it
      // shows "pending", never loss; only a settled bucket can be lossy.
      if (b.settled && b.e2e_lost > 0) tr.classList.add("lossy");
      if (!b.settled) tr.classList.add("open");
      const state = b.settled ? (b.backlog > 0 ? `yes (${fmtInt(b.backlog)} in backlog)` : "yes") : "open";
      // Events that came in through the standby while the Kafka cluster was away.
      const viaStandby = Object.entries(b.origin_topics || {})
        .filter(([t]) => t.startsWith("standby:")).reduce((s, [, n]) => s + n, 0);
      const events = fmtInt(b.events) + (viaStandby > 0 ? ` (${fmtInt(viaStandby)} via standby)` : "");
      tr.append(el("td", fmtTime(b.start), { title: b.start }),
                el("td", state), el("td", events));
      for (const n of nodes) {
        const c = byNode.get(n);
        const lost = el("td", !c ? "–" : b.settled ? fmtInt(c.lost) : "pending");
        if (b.settled && c && c.lost > 0) lost.className = "bad";
        // Events a publish with --redeliver-from sent again (neither duplicates nor loss).
        const again = c && c.redelivered > 0 ? ` (${fmtInt(c.redelivered)} re-delivered)` : "";
        tr.append(el("td", c ? fmtInt(c.seen) + again : "–"), lost);
      }
      tr.append(el("td", fmtInt(sum("filtered"))), el("td", fmtInt(sum("dead_lettered"))),
                el("td", b.settled ? fmtInt(b.e2e_lost) : "pending"),
                el("td", b.settled ? fmtPct(b.e2e_loss_percent) : "pending"));
      return tr;
    });
    if (rows.length === 0) {
      rows.push(el("tr"));
      rows[0].append(el("td", "no buckets yet", { colspan: nodes.length * 2 + 7, class: "empty" }));
    }
    table.tBodies[0].replaceChildren(...rows);
  }

  // ---- sinks: delivered, retrying, dead-lettered -------------------------------------

  function renderSinks(stats) {
    const sinks = (stats.nodes || []).filter((n) => n.kind === "sink");
    const rows = sinks.map((s) => {
      const tr = el("tr");
      const name = el("td");
      name.append(swatch(s.node), s.node);
      const dead = el("td", fmtInt(s.dead_lettered_total ?? 0),
                      { "data-stat": "dead_lettered", "data-node": s.node });
      if (s.dead_lettered_total > 0) dead.className = "bad";
      const breaker = el("td", s.breaker_open ? "open" : "closed",
                         { "data-stat": "breaker", "data-node": s.node });
      if (s.breaker_open) breaker.className = "bad";
      const records = s.backlog_records ?? 0, age = s.backlog_age_ms ?? 0;
      const backlog = el("td", fmtInt(records),
                         { "data-stat": "backlog_records", "data-node": s.node, "data-value": String(records) });
      const oldest = el("td", records > 0 ? fmtMs(age) : "–",
                        { "data-stat": "backlog_age_ms", "data-node": s.node, "data-value": String(age) });
      if (records > 0 && age >= 10000) oldest.className = "bad";
      const reason = s.concurrency_reason ?? "";
      const requests = el("td", s.concurrency_limit == null ? "–" : `${fmtInt(s.concurrency_limit)} (${reason})`,
                          { "data-stat": "concurrency", "data-node": s.node,
                            title: "requests of fresh batches allowed in flight now, and why" });
      if (reason === "backpressure" || reason === "slow-responses") requests.className = "warn";
      tr.append(name, breaker, requests, backlog, oldest, el("td", fmtInt(s.delivered_total)),
                el("td", fmtInt(s.retrying ?? 0), { "data-stat": "retrying", "data-node": s.node }),
                dead);
      return tr;
    });
    if (rows.length === 0) {
      rows.push(el("tr"));
      rows[0].append(el("td", "no sinks", { colspan: 8, class: "empty" }));
    }
    $("#sink-table").tBodies[0].replaceChildren(...rows);
  }

  // ---- scaling and shadow sinks --------------------------------------------------------

  function renderScale(scale) {
    const rows = (scale.nodes || []).map((n) => {
      const tr = el("tr");
      const name = el("td");
      name.append(swatch(n.node), n.node);
      const rate = n.rate_in?.["10s"];
      const busy = n.busy_ratio;
      const busyCell = el("td", busy == null ? "–" : fmtPct(busy * 100),
                          { "data-stat": "busy", "data-node": n.node });
      if (busy != null && busy >= 0.8) busyCell.className = "warn";
      const per = n.sustainable_rate_per_replica;
      const replicas = el("td", fmtInt(n.recommended_replicas),
                          { "data-stat": "replicas", "data-node": n.node,
                            "data-value": String(n.recommended_replicas), title: n.reason || "" });
      if (n.recommended_replicas > 1) replicas.className = "warn";
      tr.append(name, el("td", rate == null ? "–" : fmtInt(Math.round(rate))), busyCell,
                el("td", fmtInt(n.backlog_records ?? 0)),
                el("td", per == null ? "–" : `${fmtInt(Math.round(per))} (${n.sustainable_from})`),
                replicas);
      return tr;
    });
    if (rows.length === 0) {
      rows.push(el("tr"));
      rows[0].append(el("td", "no stages or sinks here", { colspan: 6, class: "empty" }));
    }
    $("#scale-table").tBodies[0].replaceChildren(...rows);
  }

  function renderShadow(shadow) {
    const totals = shadow.totals || [];
    $("#shadow-card").hidden = totals.length === 0;
    const rows = totals.map((t) => {
      const tr = el("tr");
      const onlyPrimary = el("td", fmtInt(t.only_primary),
                             { "data-stat": "shadow_only_primary", "data-node": t.primary });
      const onlyShadow = el("td", fmtInt(t.only_shadow),
                            { "data-stat": "shadow_only_shadow", "data-node": t.primary });
      if (t.only_primary > 0) onlyPrimary.className = "bad";
      if (t.only_shadow > 0) onlyShadow.className = "bad";
      tr.append(el("td", t.primary), el("td", t.shadow), el("td", fmtInt(t.both)), onlyPrimary,
                onlyShadow,
                el("td", `${fmtInt(t.primary_dead_lettered)} / ${fmtInt(t.shadow_dead_lettered)}`),
                el("td", fmtInt(t.buckets_differing)));
      return tr;
    });
    $("#shadow-table").tBodies[0].replaceChildren(...rows);
  }

  // ---- fingerprints ---------------------------------------------------------------------

  function renderFingerprints(fp) {
    const nodes = fp.nodes || [];
    $("#fingerprint-card").hidden = nodes.length === 0;
    const rows = nodes.map((n) => {
      const tr = el("tr");
      const buckets = n.buckets || [];
      const last = buckets.at(-1);
      const before = buckets.at(-2);
      const name = el("td");
      name.append(swatch(n.node), n.node);
      if (!last) {
        tr.append(name, el("td", "no events yet", { colspan: 6, class: "empty" }));
        return tr;
      }
      const events = el("td", fmtInt(last.count),
                        { "data-stat": "fp_events", "data-node": n.node, "data-value": String(last.count) });
      const change = before && before.count > 0
        ? `${last.count >= before.count ? "+" : ""}${fmtPct((100 * (last.count - before.count)) / before.count)}`
        : "–";
      const fields = Object.entries(last.fields || {});
      const nulls = fields.filter(([, f]) => f.nulls > 0).sort((a, b) => b[1].null_rate - a[1].null_rate)
        .slice(0, 3).map(([k, f]) => `${k} ${fmtPct(100 * f.null_rate)}`).join(", ") || "none";
      const entropy = fields.filter(([, f]) => f.entropy)
        .map(([k, f]) => `${k} ${f.entropy.exact ? "" : "~"}${f.entropy.bits.toFixed(2)} bits`).join(", ") || "–";
      const verdicts = last.audits || [];
      const failed = verdicts.filter((v) => !v.passed);
      const audits = el("td", last.complete
        ? (verdicts.length === 0 ? "complete" : failed.length === 0 ? `${verdicts.length} passed`
          : `failed: ${failed.map((v) => v.audit).join(", ")}`)
        : "open", { "data-stat": "fp_audits", "data-node": n.node, "data-value": String(failed.length) });
      if (failed.length > 0) audits.className = "bad";
      tr.append(name, el("td", new Date(last.start_ms).toLocaleString("en-GB")), events, el("td", change),
                el("td", nulls), el("td", entropy), audits);
      return tr;
    });
    $("#fingerprint-table").tBodies[0].replaceChildren(...rows);
  }

  // ---- versions -------------------------------------------------------------------------

  // Each versioned stage: its published version and a candidate beside it, their events
  // counted by their fingerprints compared, the candidate's backfill and audits.
  function renderVersions(v, fp) {
    const stages = v.stages || [];
    $("#versions-card").hidden = stages.length === 0;
    const rows = stages.map((s) => {
      const tr = el("tr");
      const byState = (state) => (s.versions || []).find((x) => x.state === state);
      const pub = byState("published");
      const cand = byState("candidate");
      const count = (x) => (x && x.fingerprint ? x.fingerprint.count : null);
      const name = el("td");
      name.append(swatch(s.stage), `${s.stage} → ${s.output}`);
      const published = el("td", pub ? `v${pub.version} (${pub.topic})` : "–",
                           { "data-stat": "version_published", "data-node": s.stage, "data-value": pub ? pub.version : "" });
      const pc = count(pub);
      const cc = count(cand);
      let compare = "–";
      if (pc != null && cc != null) {
        compare = `${fmtInt(pc)} → ${fmtInt(cc)} events` +
          (pc > 0 ? ` (${cc >= pc ? "+" : ""}${fmtPct((100 * (cc - pc)) / pc)})` : "");
      } else if (pc != null) {
        compare = `${fmtInt(pc)} events`;
      }
      const st = cand && cand.status;
      let state = cand ? (st ? st.state : "starting") : "none";
      if (st && st.state === "backfilling") {
        state += ` ${fmtInt(st.done)} done, ${fmtInt(st.left)} left` +
          (st.eta_seconds != null ? `, ETA ${Math.round(st.eta_seconds)} s` : "");
      }
      if (st && st.blocked_by && st.blocked_by.length) {
        state += `: ${st.blocked_by.map((b) => `${b.audit} failed in ${b.bucket_start}`).join("; ")}`;
      }
      const candidate = el("td", cand ? `v${cand.version} — ${state}` : "none",
                           { "data-stat": "version_candidate", "data-node": s.stage, "data-value": cand ? cand.version : "" });
      if (st && st.state === "blocked") candidate.className = "bad";
      tr.append(name, published, candidate, el("td", compare), el("td", s.publish));
      return tr;
    });
    $("#versions-table").tBodies[0].replaceChildren(...rows);
    renderVersionCompare(stages, (fp && fp.nodes) || []);
  }

  // A bucket's metrics by name, as `hifi fingerprint diff` names them.
  function bucketMetrics(b) {
    const m = new Map([["count", b.count]]);
    for (const [k, f] of Object.entries(b.fields || {})) {
      for (const s of ["nulls", "null_rate", "distinct", "min", "max", "mean"]) {
        if (typeof f[s] === "number") m.set(`${k}.${s}`, f[s]);
      }
      if (f.entropy && typeof f.entropy.bits === "number") m.set(`${k}.entropy`, f.entropy.bits);
    }
    return m;
  }

  // The change from a (published) to b (candidate), labelled as `hifi fingerprint diff`
  // labels it ("+25.0 %", "gone", "new", "from 0"); with whether it is worth a look
  // (gone, new, from 0, or more than 10%).
  function changeOf(a, b) {
    if (a == null) return ["new", true];
    if (b == null) return ["gone", true];
    if (a === b) return ["+0.0 %", false];
    if (a === 0) return ["from 0", true];
    const rel = (b - a) / Math.abs(a);
    return [`${rel < 0 ? "-" : "+"}${Math.abs(100 * rel).toFixed(1)} %`, Math.abs(rel) > 0.1];
  }

  function fmtMetric(x) {
    if (x == null) return "–";
    return Number.isInteger(x) ? fmtInt(x) : x.toPrecision(4);
  }

  // Per versioned stage with a candidate: the newest bucket both fingerprints have
  // complete (else the newest both have: still filling, the candidate may trail), metric
  // by metric.
  function renderVersionCompare(stages, nodes) {
    const rows = [];
    for (const s of stages) {
      const byState = (state) => (s.versions || []).find((x) => x.state === state);
      const pub = byState("published");
      const cand = byState("candidate");
      const nodeOf = (x) => x && x.fingerprint && nodes.find((n) => n.node === x.fingerprint.node);
      const [pn, cn] = [nodeOf(pub), nodeOf(cand)];
      if (!pn || !cn) continue;
      const candBuckets = new Map((cn.buckets || []).map((b) => [b.start_ms, b]));
      const both = (pn.buckets || []).filter((b) => candBuckets.has(b.start_ms));
      const common = both.filter((b) => b.complete && candBuckets.get(b.start_ms).complete).at(-1) || both.at(-1);
      if (!common) continue;
      const [pm, cm] = [bucketMetrics(common), bucketMetrics(candBuckets.get(common.start_ms))];
      const names = [...new Set([...pm.keys(), ...cm.keys()])]
        .sort((a, b) => (a === "count" ? -1 : b === "count" ? 1 : a.localeCompare(b)));
      for (const metric of names) {
        const [label, notable] = changeOf(pm.get(metric), cm.get(metric));
        const tr = el("tr");
        const name = el("td");
        name.append(swatch(s.stage), s.stage);
        const change = el("td", label, {
          "data-stat": "vc_change", "data-node": s.stage, "data-metric": metric, "data-value": label,
        });
        if (notable) change.className = "bad";
        tr.append(name, el("td", new Date(common.start_ms).toLocaleString("en-GB")), el("td", metric),
                  el("td", fmtMetric(pm.get(metric))), el("td", fmtMetric(cm.get(metric))), change);
        rows.push(tr);
      }
    }
    $("#version-compare-card").hidden = rows.length === 0;
    $("#version-compare-table").tBodies[0].replaceChildren(...rows);
  }

  // ---- header summary -----------------------------------------------------------------

  function renderSummary(lag, loss, stats) {
    const sinks = (stats?.nodes || []).filter((n) => n.kind === "sink");
    if (lag || stats) {
      // Now: the last closed window's E2E p95 when it is recent, and the age of the
      // oldest event a sink has not delivered (what grows while a destination is down).
      const last = (lag?.history || []).at(-1);
      const recent = last && Date.now() - Date.parse(last.t) < 30000 ? last.e2e_p95_ms || 0 : 0;
      const waiting = Math.max(0, ...sinks.filter((n) => n.backlog_records > 0)
        .map((n) => n.backlog_age_ms || 0));
      const now = Math.max(recent, waiting);
      const dd = $("#sum-e2e");
      dd.textContent = now > 0 ? fmtMs(now) : "–";
      dd.dataset.value = String(now);
      dd.classList.toggle("bad", waiting >= 10000);
    }
    if (stats) {
      const delivered = sinks.reduce((s, n) => s + (n.delivered_total || 0), 0);
      $("#sum-delivered").textContent = fmtInt(delivered);
      const open = sinks.filter((n) => n.breaker_open).map((n) => n.node);
      const dd = $("#sum-breakers");
      dd.textContent = open.length ? `open: ${open.join(", ")}` : `${sinks.length} closed`;
      dd.dataset.open = String(open.length);
      dd.classList.toggle("bad", open.length > 0);
    }
    if (loss) {
      const settled = (loss.buckets || []).filter((b) => b.settled);
      const lost = settled.reduce((s, b) => s + (b.e2e_lost || 0), 0);
      const events = settled.reduce((s, b) => s + (b.events || 0), 0);
      const dd = $("#sum-loss");
      dd.textContent = `${fmtInt(lost)} of ${fmtInt(events)}` +
        (events > 0 ? ` (${fmtPct((100 * lost) / events)})` : "");
      dd.classList.toggle("bad", lost > 0);
    }
  }

  // ---- refresh loop -------------------------------------------------------------------

  async function getJSON(path) {
    let res;
    try {
      res = await fetch(path, { cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
    } catch (e) {
      throw new Error(`GET ${path}: ${e.message}`);
    }
    if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status} ${res.statusText}`);
    try {
      return await res.json();
    } catch (e) {
      throw new Error(`GET ${path}: invalid JSON (${e.message})`);
    }
  }

  async function refresh() {
    const errors = [];
    const [lag, loss, stats, scale, shadow, fingerprints, versions] = (await Promise.allSettled(
      ["v1/lag", "v1/loss", "v1/stats", "v1/scale", "v1/shadow", "v1/fingerprints", "v1/versions"].map(getJSON),
    )).map((r) => {
      if (r.status === "fulfilled") return r.value;
      errors.push(r.reason.message);
      return null;
    });

    // Each part draws on its own: one failing API (or drawing bug) leaves the rest current.
    const draw = (what, fn) => {
      try { fn(); } catch (e) { errors.push(`drawing ${what}: ${e.message}`); }
    };
    if (lag) {
      for (const n of lag.nodes || []) colorOf(n.node);
      draw("process share", () => renderPie(lag));
      draw("history charts", () => renderHistory(lag));
    }
    if (loss) draw("loss table", () => renderLoss(loss, (lag?.nodes || []).map((n) => n.node)));
    if (stats) {
      draw("sinks", () => renderSinks(stats));
      draw("backlog chart", () => renderBacklog(stats));
    }
    if (scale) draw("scaling", () => renderScale(scale));
    if (shadow) draw("shadow sinks", () => renderShadow(shadow));
    if (fingerprints) draw("fingerprints", () => renderFingerprints(fingerprints));
    if (versions) draw("versions", () => renderVersions(versions, fingerprints));
    draw("summary", () => renderSummary(lag, loss, stats));

    const banner = $("#error");
    banner.hidden = errors.length === 0;
    banner.textContent = errors.length ? `Refresh failed: ${errors.join("; ")}` : "";
    const now = new Date().toLocaleTimeString("en-GB");
    $("#updated").textContent = errors.length ? `last attempt ${now} (failed)` : `updated ${now}`;
    if (errors.length === 0) document.body.dataset.loaded = "true";
  }

  async function loop() {
    try {
      await refresh();
    } finally {
      setTimeout(loop, REFRESH_MS);
    }
  }

  loop();
})();
