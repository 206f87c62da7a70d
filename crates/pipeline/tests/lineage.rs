//! Field-level lineage composed across a pipeline: SQL and transform stages, sinks, a
//! topic without a schema; upstream and impact queries, written out by hand.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::path::Path;

use hifi_pipeline::config::LoadedConfig;
use hifi_pipeline::lineage::{Graph, Use};
use hifi_pipeline::topology::Topology;

const ORDERS: &str = r#"
[engine]
kind = "embedded"
data_dir = "./data"

[topics.orders]
schema = { id = "string", ts = "timestamp", amount = "float64", email = "string", card = "string", country = "string" }

[sources.api]
type = "http"
topic = "orders"

[stages.big]
input = "orders"
output = "big-orders"
sql = "SELECT id, ts, amount, upper(country) AS country, amount * 0.2 AS vat, email AS contact FROM input WHERE amount >= 10"

[stages.mask]
input = "big-orders"
output = "masked"
[[stages.mask.transforms]]
type = "filter"
condition = "event.country != 'XX'"
[[stages.mask.transforms]]
type = "redact"
field = "/contact"
mode = "mask"
[[stages.mask.transforms]]
type = "rename"
from = "/vat"
to = "/tax"
[[stages.mask.transforms]]
type = "remove"
fields = ["/ts"]

[sinks.partner]
type = "http"
input = "masked"
url = "http://127.0.0.1:9000/"

[sinks.archive]
type = "http"
input = "orders"
url = "http://127.0.0.1:9001/"
"#;

fn graph(text: &str) -> Graph {
    let loaded = LoadedConfig::parse(Path::new("p.toml"), text.to_owned()).unwrap();
    Topology::build(&loaded).unwrap().lineage
}

/// Field → how it is reached (order-free).
fn uses(r: Vec<hifi_pipeline::lineage::Reached>) -> BTreeMap<String, Use> {
    r.into_iter().map(|r| (r.field, r.how)).collect()
}

fn expect(list: &[(&str, Use)]) -> BTreeMap<String, Use> {
    list.iter().map(|(f, u)| (f.to_string(), *u)).collect()
}

use Use::{NonSelected as N, Selected as S};

#[test]
fn a_sink_field_traces_back_through_a_transform_stage_and_a_sql_stage() {
    let g = graph(ORDERS);
    assert_eq!(
        g.nodes["mask"],
        vec!["amount", "contact", "country", "id", "tax"],
        "ts removed, vat renamed to tax"
    );
    let up = g.upstream("partner.tax").unwrap();
    // Nearest first, with the path that makes each.
    assert_eq!(up[0].field, "mask.tax");
    let vat = up.iter().find(|r| r.field == "api.amount").unwrap();
    assert_eq!(
        vat.path,
        vec!["partner.tax", "mask.tax", "big.vat", "api.amount"]
    );
    assert_eq!(
        uses(up),
        expect(&[
            ("mask.tax", S),
            ("big.vat", S),
            ("big.country", N), // the filter on country
            ("api.amount", S),
            ("api.country", N),
        ])
    );
}

#[test]
fn a_source_field_shows_every_field_it_reaches() {
    let g = graph(ORDERS);
    assert_eq!(
        uses(g.impact("api.email").unwrap()),
        expect(&[
            ("big.contact", S),
            ("mask.contact", S),
            ("partner.contact", S),
            ("archive.email", S),
        ])
    );
    // amount decides every row of big (WHERE) and flows into amount and vat.
    let amount = uses(g.impact("api.amount").unwrap());
    assert_eq!(amount["big.vat"], S);
    assert_eq!(amount["partner.tax"], S);
    assert_eq!(amount["partner.id"], N);
    assert_eq!(amount["archive.amount"], S);
    assert!(
        !amount.contains_key("partner.ts"),
        "ts is removed: {amount:?}"
    );
    assert!(
        !amount.contains_key("archive.id"),
        "archive has no filter: {amount:?}"
    );
    // The card reaches only the sink that reads the source's topic as it is.
    assert_eq!(
        uses(g.impact("api.card").unwrap()),
        expect(&[("archive.card", S)])
    );
}

#[test]
fn edges_name_the_stage_and_what_it_does_to_the_value() {
    let g = graph(ORDERS);
    let e = g
        .edges
        .iter()
        .find(|e| e.from == "big.contact" && e.to == "mask.contact" && e.how == S)
        .unwrap();
    assert_eq!(
        (e.via.as_str(), e.note.as_deref()),
        ("mask", Some("redact (mask)"))
    );
    let e = g.edges.iter().find(|e| e.to == "big.vat").unwrap();
    assert_eq!(
        (e.from.as_str(), e.note.as_deref()),
        ("api.amount", Some("sql"))
    );
    let json = serde_json::to_value(&g).unwrap();
    assert!(json["edges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["use"] == "non_selected"));
}

#[test]
fn fields_of_a_topic_without_schema_pass_as_a_wildcard_minus_what_is_removed() {
    let g = graph(
        r#"
[engine]
kind = "embedded"
data_dir = "./data"
[sources.raw]
type = "http"
topic = "raw"
[stages.clean]
input = "raw"
output = "clean"
[[stages.clean.transforms]]
type = "filter"
condition = "event.level == 'error'"
[[stages.clean.transforms]]
type = "remove"
fields = ["/password"]
[[stages.clean.transforms]]
type = "rename"
from = "/msg"
to = "/message"
[sinks.s]
type = "http"
input = "clean"
url = "http://127.0.0.1:9000/"
"#,
    );
    assert_eq!(g.nodes["s"], vec!["*", "message"]);
    assert_eq!(g.impact("raw.password").unwrap(), vec![], "removed");
    assert_eq!(
        uses(g.impact("raw.user").unwrap()),
        expect(&[("clean.user", S), ("s.user", S)])
    );
    assert_eq!(
        uses(g.upstream("s.message").unwrap()),
        expect(&[("clean.message", S), ("raw.msg", S), ("raw.level", N)])
    );
    // The filter's field decides every row of clean.
    let level = uses(g.impact("raw.level").unwrap());
    assert_eq!(level["clean.*"], N);
    assert_eq!(level["s.*"], N);
    assert_eq!(level["clean.level"], S);
}

#[test]
fn queries_name_what_is_wrong_with_the_field() {
    let g = graph(ORDERS);
    let e = g.upstream("partner").unwrap_err();
    assert!(e.contains("NODE.FIELD"), "{e}");
    let e = g.upstream("nobody.x").unwrap_err();
    assert!(
        e.contains("no node \"nobody\"") && e.contains("partner"),
        "{e}"
    );
    let e = g.impact("api.vat").unwrap_err();
    assert!(
        e.contains("api has no field \"vat\"") && e.contains("amount"),
        "{e}"
    );
}
