"""An OpenLineage backend for tests, and a checker built on the OpenLineage Python client.

serve FILE  -- listens on 127.0.0.1 (a free port, printed as "listening on ADDR"); each
               POST is answered 201 and appended to FILE as one JSON line
               {"path", "authorization", "event"}.
check FILE  -- rebuilds every recorded event with the client's own classes
               (openlineage-python: RunEvent, Run, Job, datasets, and the facets hifi
               sends), which run the client's validators (run id a UUID, event time with
               a time, URIs), then serialises it with the client's Serde and requires the
               result to equal what hifi sent: no field the spec does not have, none
               missing, every facet's _schemaURL the one the client knows. Prints
               "ok N" or the first difference (exit 1).
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(path):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            line = {
                "path": self.path,
                "authorization": self.headers.get("authorization"),
                "event": json.loads(body),
            }
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")
            self.send_response(201)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("listening on %s:%d" % server.server_address, flush=True)
    server.serve_forever()


def rebuild(e):
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.generated import column_lineage_dataset as cl
    from openlineage.client.generated import job_type_job, schema_dataset, sql_job

    def checked(cls, f):
        want = cls._get_schema()
        if f["_schemaURL"] != want:
            raise ValueError("%s: _schemaURL %s, the client knows %s" % (cls.__name__, f["_schemaURL"], want))
        return {"producer": f["_producer"]}

    def dataset_facets(fs):
        out = {}
        for name, f in fs.items():
            if name == "schema":
                fields = [schema_dataset.SchemaDatasetFacetFields(**x) for x in f["fields"]]
                out[name] = schema_dataset.SchemaDatasetFacet(fields=fields, **checked(schema_dataset.SchemaDatasetFacet, f))
            elif name == "columnLineage":
                fields = {
                    k: cl.Fields(
                        inputFields=[
                            cl.InputField(
                                namespace=i["namespace"],
                                name=i["name"],
                                field=i["field"],
                                transformations=[cl.Transformation(**t) for t in i["transformations"]],
                            )
                            for i in v["inputFields"]
                        ]
                    )
                    for k, v in f["fields"].items()
                }
                out[name] = cl.ColumnLineageDatasetFacet(fields=fields, dataset=None, **checked(cl.ColumnLineageDatasetFacet, f))
            else:
                raise ValueError("unexpected dataset facet %s" % name)
        return out

    def job_facets(fs):
        out = {}
        for name, f in fs.items():
            if name == "jobType":
                out[name] = job_type_job.JobTypeJobFacet(
                    processingType=f["processingType"], integration=f["integration"], jobType=f["jobType"],
                    **checked(job_type_job.JobTypeJobFacet, f))
            elif name == "sql":
                out[name] = sql_job.SQLJobFacet(query=f["query"], **checked(sql_job.SQLJobFacet, f))
            else:
                raise ValueError("unexpected job facet %s" % name)
        return out

    event = RunEvent(
        eventType=RunState(e["eventType"]),
        eventTime=e["eventTime"],
        run=Run(runId=e["run"]["runId"]),
        job=Job(namespace=e["job"]["namespace"], name=e["job"]["name"], facets=job_facets(e["job"]["facets"])),
        inputs=[InputDataset(namespace=d["namespace"], name=d["name"], facets=dataset_facets(d["facets"])) for d in e["inputs"]],
        outputs=[OutputDataset(namespace=d["namespace"], name=d["name"], facets=dataset_facets(d["facets"])) for d in e["outputs"]],
        producer=e["producer"],
    )
    if e["schemaURL"] != RunEvent._get_schema():
        raise ValueError("schemaURL %s, the client knows %s" % (e["schemaURL"], RunEvent._get_schema()))
    return event


def strip_empty(x):
    """Empty maps and lists mean the same as absent ones (the client's Serde writes some
    that hifi leaves out, and the other way round)."""
    if isinstance(x, dict):
        return {k: strip_empty(v) for k, v in x.items() if v not in ({}, [], None)}
    if isinstance(x, list):
        return [strip_empty(v) for v in x]
    return x


def check(path):
    from openlineage.client.serde import Serde

    n = 0
    with open(path) as f:
        for line in f:
            e = json.loads(line)["event"]
            again = Serde.to_dict(rebuild(e))
            if strip_empty(again) != strip_empty(e):
                print("differs:\nsent:    %s\nclient:  %s" % (json.dumps(e, sort_keys=True), json.dumps(again, sort_keys=True)))
                sys.exit(1)
            n += 1
    print("ok %d" % n)


if __name__ == "__main__":
    {"serve": serve, "check": check}[sys.argv[1]](sys.argv[2])
