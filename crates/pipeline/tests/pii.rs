//! PII along lineage: declared at a source or a topic, carried by selected fields through
//! SQL and transform stages, ended by `redact` and `remove`, not carried by filters; a
//! sink receiving PII it does not allow stops the pipeline with the path.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;

use hifi_pipeline::config::LoadedConfig;
use hifi_pipeline::pii::Policy;
use hifi_pipeline::topology::Topology;

const HEAD: &str = r#"
[engine]
kind = "embedded"
data_dir = "./data"
"#;

fn derive(body: &str) -> (LoadedConfig, Topology) {
    let text = format!("{HEAD}{body}");
    let loaded = LoadedConfig::parse(Path::new("p.toml"), text).unwrap();
    let t = Topology::derive(&loaded).unwrap();
    (loaded, t)
}

/// Sink → [(field, route, allowed)].
fn received(p: &Policy) -> Vec<(String, String, String, bool)> {
    let mut out = Vec::new();
    for (sink, list) in &p.sinks {
        for r in list {
            out.push((sink.clone(), r.field.clone(), r.route(), r.allowed));
        }
    }
    out.sort();
    out
}

fn row(sink: &str, field: &str, route: &str, allowed: bool) -> (String, String, String, bool) {
    (sink.into(), field.into(), route.into(), allowed)
}

const SQL: &str = r#"
[topics.orders]
schema = { id = "string", amount = "float64", email = "string", card = "string", country = "string" }

[sources.api]
type = "http"
topic = "orders"
pii = ["email", "card"]

[stages.big]
input = "orders"
output = "big-orders"
sql = "SELECT id, amount, email AS contact, amount * 0.2 AS vat FROM input WHERE card IS NOT NULL"

[sinks.partner]
type = "http"
input = "big-orders"
url = "http://127.0.0.1:9000/"
"#;

#[test]
fn pii_follows_selected_fields_through_sql_and_a_filter_on_it_carries_none() {
    let (loaded, t) = derive(SQL);
    assert_eq!(
        received(&t.pii),
        vec![row(
            "partner",
            "contact",
            "api.email → big.contact → partner",
            false
        )],
        "card is only filtered on: not carried"
    );
    let e = t.pii.check(&loaded).unwrap_err().to_string();
    assert!(e.contains("sinks.partner.allow_pii"), "{e}");
    assert!(
        e.contains("contact (api.email → big.contact → partner)"),
        "{e}"
    );
    assert!(e.contains("allow_pii = [\"contact\"]"), "{e}");
    // `build` (what validate and run use) refuses it too.
    assert!(Topology::build(&loaded).is_err());

    let allowed = SQL.replace(
        "url = \"http://127.0.0.1:9000/\"",
        "url = \"http://127.0.0.1:9000/\"\nallow_pii = [\"contact\"]",
    );
    let (loaded, t) = derive(&allowed);
    t.pii.check(&loaded).unwrap();
    assert_eq!(
        received(&t.pii),
        vec![row(
            "partner",
            "contact",
            "api.email → big.contact → partner",
            true
        )]
    );
}

#[test]
fn redact_and_remove_end_pii_and_a_partial_redact_or_a_rename_does_not() {
    // No schema: the fields are not known in advance (`*`).
    let body = r#"
[sources.api]
type = "http"
topic = "raw"
pii = ["email", "card", "phone", "user", "ssn"]

[stages.clean]
input = "raw"
output = "clean"
[[stages.clean.transforms]]
type = "filter"
condition = "event.ssn != ''"
[[stages.clean.transforms]]
type = "redact"
field = "/email"
mode = "hash"
salt = "s"
[[stages.clean.transforms]]
type = "remove"
fields = ["/card", "/ssn"]
[[stages.clean.transforms]]
type = "redact"
field = "/user/email"
mode = "mask"
[[stages.clean.transforms]]
type = "rename"
from = "/phone"
to = "/tel"

[sinks.partner]
type = "http"
input = "clean"
url = "http://127.0.0.1:9000/"
allow_pii = ["tel"]

[sinks.raw]
type = "http"
input = "raw"
url = "http://127.0.0.1:9001/"
allow_pii = ["*"]
"#;
    let (loaded, t) = derive(body);
    let got = received(&t.pii);
    assert_eq!(
        got,
        vec![
            row("partner", "tel", "api.phone → clean.tel → partner", true),
            row("partner", "user", "api.user → clean.user → partner", false),
            row("raw", "card", "api.card → raw", true),
            row("raw", "email", "api.email → raw", true),
            row("raw", "phone", "api.phone → raw", true),
            row("raw", "ssn", "api.ssn → raw", true),
            row("raw", "user", "api.user → raw", true),
        ]
    );
    let e = t.pii.check(&loaded).unwrap_err().to_string();
    assert!(
        e.contains("sinks.partner receives PII it does not allow: user"),
        "{e}"
    );
}

#[test]
fn a_topic_declares_pii_for_every_writer_and_bad_declarations_are_refused() {
    let body = r#"
[topics.out]
pii = ["score"]

[sources.api]
type = "http"
topic = "raw"

[stages.a]
input = "raw"
output = "out"

[sinks.partner]
type = "http"
input = "out"
url = "http://127.0.0.1:9000/"
"#;
    let (_, t) = derive(body);
    assert_eq!(t.pii.declared["a.score"], "topics.out.pii");
    assert_eq!(
        received(&t.pii),
        vec![row("partner", "score", "a.score → partner", false)]
    );

    let load = |body: &str| {
        let loaded = LoadedConfig::parse(Path::new("p.toml"), format!("{HEAD}{body}")).unwrap();
        Topology::derive(&loaded).unwrap_err().to_string()
    };
    let unknown = SQL.replace("pii = [\"email\", \"card\"]", "pii = [\"emial\"]");
    let e = load(&unknown);
    assert!(e.contains("sources.api.pii"), "{e}");
    assert!(
        e.contains("api writes no field \"emial\"; its fields: amount, card, country, email, id"),
        "{e}"
    );
    let pointer = SQL.replace("pii = [\"email\", \"card\"]", "pii = [\"/email\"]");
    assert!(load(&pointer).contains("is not a field name"));
}

#[test]
fn nested_changes_and_weak_masks_do_not_end_pii() {
    // No schema: fields not known in advance.
    let body = r#"
[sources.api]
type = "http"
topic = "raw"
pii = ["user", "email", "card"]

[stages.clean]
input = "raw"
output = "clean"
[[stages.clean.transforms]]
type = "set"
field = "/user/checked"
value = true
[[stages.clean.transforms]]
type = "redact"
field = "/email"
mode = "hash"
salt = "s"
[[stages.clean.transforms]]
type = "rename"
from = "/email"
to = "/meta/email_hash"
[[stages.clean.transforms]]
type = "redact"
field = "/card"
mode = "mask"
keep_last = 8

[sinks.partner]
type = "http"
input = "clean"
url = "http://127.0.0.1:9000/"
"#;
    let (_, t) = derive(body);
    let got: Vec<(String, String)> = received(&t.pii)
        .into_iter()
        .map(|(_, field, route, _)| (field, route))
        .collect();
    assert_eq!(
        got,
        vec![
            // A mask that leaves 8 characters visible hides little.
            (
                "card".to_owned(),
                "api.card → clean.card → partner".to_owned()
            ),
            // Setting part of `user` keeps the rest of it flowing.
            (
                "user".to_owned(),
                "api.user → clean.user → partner".to_owned()
            ),
        ],
        "the hashed email moved into `meta` is redacted, `meta` itself carries no PII"
    );
}

#[test]
fn a_node_name_with_a_dot_is_refused() {
    let text = format!(
        "{HEAD}[sources.api]\ntype = \"http\"\ntopic = \"raw\"\n\
         [sinks.\"partner.eu\"]\ntype = \"http\"\ninput = \"raw\"\nurl = \"http://127.0.0.1:9000/\"\n"
    );
    let loaded = LoadedConfig::parse(Path::new("p.toml"), text).unwrap();
    let e = Topology::derive(&loaded).unwrap_err().to_string();
    assert!(
        e.contains("sinks.partner.eu") && e.contains("\"partner_eu\""),
        "{e}"
    );
}
