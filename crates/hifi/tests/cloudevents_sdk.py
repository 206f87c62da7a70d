"""The CloudEvents Python SDK (PyPI `cloudevents` 1.x) on both sides of hifi.

  serve RECORD      destination: parses every request to /structured and /binary with
                    the SDK's `from_http` and appends {"path", "headers", "event"} (or
                    "error" instead of "event") to RECORD as a JSON line; other paths
                    get "body" instead; prints "listening on http://127.0.0.1:PORT".
  send URL EXPECTED producer: posts events built with `to_structured` and `to_binary`
                    to URL (hifi's ingest), one per request, and writes the events it
                    sent (attributes and data) to EXPECTED as JSON.
"""

import json
import sys
import http.client
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http


def as_dict(event):
    attrs = {k: v for k, v in event.get_attributes().items()}
    return {"attributes": attrs, "data": event.get_data()}


def serve(record):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k: v for k, v in self.headers.items()}
            out = {"path": self.path, "headers": {k.lower(): v for k, v in headers.items()}}
            if self.path in ("/structured", "/binary"):
                try:
                    out["event"] = as_dict(from_http(headers, body))
                except Exception as e:  # what the SDK says is wrong is the finding
                    out["error"] = f"{type(e).__name__}: {e}"
            else:
                out["body"] = body.decode("utf-8")
            with open(record, "a") as f:
                f.write(json.dumps(out) + "\n")
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


def send(url, expected):
    sent = []
    for i in range(6):
        attrs = {
            "type": "com.example.order",
            "source": "/shop/checkout",
            "id": f"sdk-{i}",
            "time": f"2026-12-05T10:00:0{i}.250000+00:00",
            "subject": f"order-{i}",
            "myext": f"ext value \"{i}\"",
            "traceparent": f"00-0af7651916cd43dd8448eb211c80319{i}-b7ad6b7169203331-01",
        }
        data = {"amount": 10.5 + i, "items": ["a", "b"], "nested": {"ok": True}}
        event = CloudEvent(attrs, data)
        headers, body = (to_structured if i % 2 == 0 else to_binary)(event)
        # http.client sends the SDK's headers as they are (urllib would add a form
        # Content-Type to a binary-mode request that has none).
        target = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        conn.request("POST", target.path, body=body, headers=headers)
        resp = conn.getresponse()
        answer = resp.read().decode()
        conn.close()
        if resp.status != 200:
            sys.exit(f"event {i}: HTTP {resp.status}: {answer}")
        sent.append(as_dict(event))
    with open(expected, "w") as f:
        json.dump(sent, f)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        send(sys.argv[2], sys.argv[3])
