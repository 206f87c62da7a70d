#!/usr/bin/env python3
"""Serve the admin dashboard with fixture data, to work on it without running hifi.

Serves crates/server/assets as hifi's admin port does (dashboard.html at /, files at
/assets/NAME) and plausible JSON at /v1/lag, /v1/loss, /v1/stats, /v1/lineage and
/v1/pii: three nodes
api (source) -> clean (stage) -> partner (sink), 30 history windows of 10 s and 10 loss
buckets, one of them lossy. Numbers are a deterministic function of wall-clock windows.

Usage: scripts/dashboard-fixture.py [--port 8081] [--mode normal|empty|error]
  empty: the APIs answer 200 with no nodes, history or buckets
  error: the APIs answer 500
then e.g.: scripts/check-dashboard http://127.0.0.1:8081 dashboard.png
"""

import argparse
import json
import math
import random
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "crates" / "server" / "assets"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}
WINDOW_S = 10
NODES = [("api", "source", 0.8), ("clean", "stage", 1.6), ("partner", "sink", 6.0)]
RATE = 1000  # events/s into the source
LOSSY_BUCKET = 4  # index (newest first) of the bucket that lost events
STARTED = time.time()


def rfc3339(ts):
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantiles(p50, rng):
    """p50/p95/p99/max around a median, with a heavier tail."""
    p50 = round(p50 * rng.uniform(0.9, 1.1), 3)
    return {"p50": p50, "p95": round(p50 * 2.2, 3), "p99": round(p50 * 3.5, 3),
            "max": round(p50 * rng.uniform(6, 12), 3)}


def window(start):
    """One 10-second window: per-node process p50 and events, and the e2e p95."""
    rng = random.Random(start)
    wave = 1 + 0.35 * math.sin(start / 120)
    events = int(RATE * WINDOW_S * wave * rng.uniform(0.95, 1.05))
    passed = int(events * 0.97)  # the stage filters ~3%
    nodes = {}
    for name, _, p50 in NODES:
        n = events if name == "api" else passed
        process = round(p50 * wave * rng.uniform(0.85, 1.15), 3)
        nodes[name] = {"process_p50_ms": process, "events": n,
                       "lag_out_p95_ms": round(process * 2.6, 3)}
    spike = 3.0 if rng.random() < 0.1 else 1.0
    e2e = sum(v["process_p50_ms"] for v in nodes.values()) * 2.4 * spike
    return {"t": rfc3339(start), "e2e_p95_ms": round(e2e, 3), "nodes": nodes}


def lag(now):
    current = int(now) // WINDOW_S * WINDOW_S
    history = [window(current - WINDOW_S * i) for i in range(30, 0, -1)]
    last = history[-1]
    rng = random.Random(current)
    nodes = []
    for name, kind, _ in NODES:
        w = last["nodes"][name]
        nodes.append({"node": name, "kind": kind, "events": w["events"],
                      "lag_in_ms": quantiles(w["process_p50_ms"] * 0.6, rng),
                      "lag_out_ms": quantiles(w["process_p50_ms"] * 1.3, rng),
                      "process_ms": quantiles(w["process_p50_ms"], rng)})
    return {"window_s": WINDOW_S, "nodes": nodes,
            "e2e_ms": quantiles(last["e2e_p95_ms"] / 2.2, rng), "history": history}


def loss(now):
    current = int(now) // 60 * 60
    buckets = []
    for i in range(10):
        start = current - 60 * i
        rng = random.Random(start)
        events = int(RATE * 60 * rng.uniform(0.9, 1.1))
        filtered = int(events * 0.03)
        dead = 1 if rng.random() < 0.3 else 0
        lost = 3 if i == LOSSY_BUCKET else 0
        retrying = rng.randint(1, 20) if i == 0 else 0
        node = lambda name, seen, **kw: {"node": name, "seen": seen, "lost": 0, "filtered": 0,
                                          "dead_lettered": 0, "delivered": 0,
                                          "retrying": 0, **kw}
        sink_seen = events - filtered
        buckets.append({
            "start": rfc3339(start), "settled": i > 0, "events": events,
            "nodes": [node("api", events),
                      node("clean", events, filtered=filtered),
                      node("partner", sink_seen, lost=lost, dead_lettered=dead,
                           retrying=retrying, delivered=sink_seen - lost - dead - retrying)],
            "e2e_lost": lost, "e2e_loss_percent": 100 * lost / events,
        })
    return {"buckets": buckets}


def stats(now):
    total = 8_000_000 + int((now - STARTED) * RATE)  # grows at ~1000/s
    filtered = int(total * 0.03)
    return {"nodes": [
        {"node": "api", "kind": "source", "events_in_total": total, "events_out_total": total,
         "filtered_total": 0, "delivered_total": 0, "retrying": 0, "dead_lettered_total": 0},
        {"node": "clean", "kind": "stage", "events_in_total": total,
         "events_out_total": total - filtered, "filtered_total": filtered,
         "delivered_total": 0, "retrying": 0, "dead_lettered_total": 0,
         "backlog_records": 12, "backlog_age_ms": 40},
        {"node": "partner", "kind": "sink", "events_in_total": total - filtered,
         "events_out_total": total - filtered - 7, "filtered_total": 0,
         "delivered_total": total - filtered - 7, "retrying": 3, "dead_lettered_total": 4,
         "backlog_records": 30, "backlog_age_ms": 85, "breaker_open": False,
         "concurrency_limit": 12, "concurrency_reason": "growing"},
    ]}


def lineage(_now):
    """api.email is redacted by clean; amount flows through and decides nothing."""
    fields = ["amount", "email", "id"]
    edges = [{"from": f"api.{f}", "to": f"clean.{f}", "use": "selected", "via": "clean"}
             for f in fields]
    edges[1]["note"], edges[1]["redacted"] = "redact (hash)", True
    edges += [{"from": "api.amount", "to": f"clean.{f}", "use": "non_selected", "via": "clean"}
              for f in fields if f != "amount"]
    edges += [{"from": f"clean.{f}", "to": f"partner.{f}", "use": "selected", "via": "partner"}
              for f in fields]
    return {"nodes": {"api": fields, "clean": fields, "partner": fields}, "edges": edges}


def pii(_now):
    return {"declared": {"api.email": "sources.api.pii"}, "sinks": {}, "alarms": [],
            "sources": {"api": {"sample_every": 100, "sampled_events": 80_000,
                                "fields_not_tracked": 0, "fields": {}}}}


EMPTY = {"/v1/lag": {"window_s": WINDOW_S, "nodes": [], "e2e_ms": None, "history": []},
         "/v1/loss": {"buckets": []}, "/v1/stats": {"nodes": []},
         "/v1/lineage": {"nodes": {}, "edges": []},
         "/v1/pii": {"declared": {}, "sinks": {}, "alarms": [], "sources": {}}}
API = {"/v1/lag": lag, "/v1/loss": loss, "/v1/stats": stats, "/v1/lineage": lineage,
       "/v1/pii": pii}


class Handler(BaseHTTPRequestHandler):
    mode = "normal"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path in API:
            if self.mode == "error":
                return self.send(500, "text/plain", b"fixture: failing on purpose\n")
            body = EMPTY[path] if self.mode == "empty" else API[path](time.time())
            return self.send(200, "application/json", json.dumps(body).encode())
        name = "dashboard.html" if path == "/" else path.removeprefix("/assets/")
        file = ASSETS / name
        if "/" in name or not file.is_file() or file.suffix not in TYPES:
            return self.send(404, "text/plain", b"not found\n")
        self.send(200, TYPES[file.suffix], file.read_bytes())

    def send(self, status, ctype, body):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass  # quiet; the dashboard polls every 2 s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--mode", choices=["normal", "empty", "error"], default="normal")
    args = ap.parse_args()
    Handler.mode = args.mode
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"dashboard fixture ({args.mode}) on http://{args.host}:{server.server_port}/",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
