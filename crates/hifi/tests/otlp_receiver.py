"""An OTLP/HTTP trace receiver for tests: decodes each POST /v1/traces body (protobuf,
optionally gzip) with the `opentelemetry-proto` package and appends one JSON line per
span to RECORD: {"name", "trace_id", "span_id", "parent_span_id", "links": [trace ids],
"attributes": {...}, "service"}. Prints "listening on http://127.0.0.1:PORT" first.

Usage: otlp_receiver.py RECORD
"""

import gzip
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def main(record):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            lines = []
            for rs in req.resource_spans:
                resource = {a.key: value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        lines.append(json.dumps({
                            "path": self.path,
                            "name": s.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "links": [l.trace_id.hex() for l in s.links],
                            "attributes": {a.key: value(a.value) for a in s.attributes},
                            "service": resource.get("service.name"),
                        }))
            with open(record, "a") as f:
                for line in lines:
                    f.write(line + "\n")
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1])
