//! `hifi lineage` on an example pipeline: what a sink field comes from, what a source
//! field reaches, as a table and as JSON; an unknown field named with the ones there are.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;

use support::HIFI;

fn lineage(args: &[&str]) -> (i32, String, String) {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/sql-stage.toml");
    let out = Command::new(HIFI)
        .arg("lineage")
        .arg(example)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn upstream_and_impact_follow_fields_through_the_sql_stage() {
    let (code, out, _) = lineage(&["--upstream", "partner.vat"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("partner.vat comes from:"), "{out}");
    assert!(
        out.contains("api.amount  selected      partner.vat → big.vat → api.amount"),
        "{out}"
    );

    let (code, out, _) = lineage(&["--impact", "api.amount", "--json"]);
    assert_eq!(code, 0);
    let reached: serde_json::Value = serde_json::from_str(&out).unwrap();
    let how = |f: &str| {
        reached
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["field"] == f)
            .map(|r| r["use"].as_str().unwrap().to_owned())
    };
    // amount flows into vat, and decides (WHERE amount >= 10) every other field's rows.
    assert_eq!(how("partner.vat").as_deref(), Some("selected"));
    assert_eq!(how("partner.id").as_deref(), Some("non_selected"));
    assert_eq!(how("api.amount"), None, "not its own impact");

    let (code, out, _) = lineage(&[]);
    assert_eq!(code, 0);
    assert!(
        out.lines().any(|l| l.starts_with("api.email")
            && l.contains("big.contact")
            && l.contains("selected")),
        "{out}"
    );
}

#[test]
fn an_unknown_field_is_refused_with_the_fields_there_are() {
    let (code, _, err) = lineage(&["--upstream", "partner.nope"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("partner has no field \"nope\"") && err.contains("vat"),
        "{err}"
    );
    let (code, _, err) = lineage(&["--impact", "nobody.x"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no node \"nobody\"") && err.contains("partner"),
        "{err}"
    );
}
