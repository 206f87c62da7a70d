//! Every configuration error is caught at start-up (and by `hifi validate`) with a
//! message naming the file, the key and the fix; nothing starts.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;

use support::HIFI;

const HEAD: &str = "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n";
const SOURCE: &str =
    "[sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\n";

fn check(name: &str, body: &str, expect: &[&str]) {
    check_file(name, &format!("{HEAD}{body}"), expect);
}

/// [`check`] of a whole file (its own `[engine]`).
fn check_file(name: &str, text: &str, expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, text).unwrap();
    for cmd in ["validate", "run"] {
        let out = Command::new(HIFI)
            .args([cmd, file.to_str().unwrap()])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name} ({cmd}): {err}");
        assert!(
            err.contains("p.toml"),
            "{name} ({cmd}): no file name in {err}"
        );
        for e in expect {
            assert!(err.contains(e), "{name} ({cmd}): expected {e:?} in {err}");
        }
    }
    assert!(
        !dir.path().join("data").exists(),
        "{name}: nothing may start"
    );
}

#[test]
fn configuration_errors_name_the_file_the_key_and_the_fix() {
    check(
        "unknown key",
        &format!("{SOURCE}colour = \"red\"\n"),
        &["p.toml:8", "unknown field `colour`", "expected one of"],
    );
    check(
        "misspelled section",
        "[sourcs.api]\ntype = \"http\"\ntopic = \"e\"\n",
        &["p.toml:4", "unknown field `sourcs`", "sources"],
    );
    check(
        "topic nobody writes",
        &format!("{SOURCE}[sinks.out]\ntype = \"http\"\ninput = \"evnts\"\nurl = \"http://127.0.0.1:9/\"\n"),
        &["p.toml:10", "sinks.out.input", "no source or stage writes topic \"evnts\"", "Did you mean \"events\"?"],
    );
    check(
        "cycle",
        &format!("{SOURCE}[stages.a]\ninput = \"events\"\noutput = \"x\"\n[stages.b]\ninput = \"x\"\noutput = \"events\"\n"),
        &["cycle", "[stages.a]", "[stages.b]"],
    );
    check(
        "unknown topic",
        &format!("{SOURCE}[topics.evnts]\npartitions = 2\n"),
        &["topics.evnts", "unknown topic"],
    );
    check(
        "bad duration",
        &format!("{SOURCE}dedup_window = \"ten minutes\"\n"),
        &["invalid duration", "250ms"],
    );
    check(
        "bad size",
        &format!("{SOURCE}max_body_bytes = \"4 megs\"\n"),
        &["invalid size", "4MiB"],
    );
    check(
        "bad condition",
        &format!("{SOURCE}[stages.s]\ninput = \"events\"\noutput = \"o\"\n[[stages.s.transforms]]\ntype = \"filter\"\ncondition = \"event.a >\"\n"),
        &["stages.s.transforms[0] (filter)", "cannot parse condition"],
    );
    check(
        "bad url",
        &format!("{SOURCE}[sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"ftp://x/\"\n"),
        &["sinks.out.url", "http://"],
    );
    let sink = "[sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://127.0.0.1:9/\"\n";
    for bad in ["0", "\"lots\"", "-3"] {
        check(
            "bad concurrency",
            &format!("{SOURCE}{sink}concurrency = {bad}\n"),
            &["concurrency", "\"adaptive\" or a number"],
        );
    }
    check(
        "headroom out of range",
        &format!("[scale]\nheadroom = 0.5\n{SOURCE}"),
        &["scale.headroom", "out of range", "1 … 10"],
    );
    check(
        "rating of an unknown node",
        &format!("[scale]\nratings = {{ partnr = 500 }}\n{SOURCE}{sink}"),
        &[
            "scale.ratings.partnr",
            "no stage or sink is named `partnr`",
            "out",
        ],
    );
    check(
        "rating that is not a rate",
        &format!("[scale]\nratings = {{ out = -5 }}\n{SOURCE}{sink}"),
        &["scale.ratings.out", "is not a rate"],
    );
    check(
        "zero scale-down wait",
        &format!("[scale]\nscale_down_after = \"0s\"\n{SOURCE}"),
        &["scale.scale_down_after", "more than zero"],
    );
    let other = "[sinks.b]\ntype = \"http\"\ninput = \"other\"\nurl = \"http://127.0.0.1:9/\"\n";
    check(
        "shadow of an unknown sink",
        &format!("{SOURCE}{sink}shadow = \"sinks.nope\"\n"),
        &["sinks.out.shadow", "not a sink of this pipeline"],
    );
    check(
        "shadow reading another topic",
        &format!("{SOURCE}{sink}shadow = \"sinks.b\"\n{other}"),
        &["sinks.out.shadow", "must read the same topic"],
    );
    check(
        "too many requests",
        &format!("{SOURCE}{sink}concurrency_max = 5000\n"),
        &["sinks.out", "at most 1024 requests"],
    );
    check("port clash", "[admin]\nlisten = \"127.0.0.1:7000\"\n[sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:7000\"\ntopic = \"e\"\n", &["already used by admin.listen"]);
    check("no nodes", "", &["no nodes"]);
    check(
        "engine size out of range",
        &format!("preallocate_bytes = \"2GiB\"\n{SOURCE}"),
        &["engine.preallocate_bytes", "out of range", "0 … 1GiB"],
    );
    let kafka_sink =
        "[sinks.k]\ntype = \"kafka\"\ninput = \"events\"\nbrokers = \"127.0.0.1:9092\"\n";
    check(
        "kafka sink without a topic",
        &format!("{SOURCE}{kafka_sink}"),
        &["sinks.k.topic", "needs the topic"],
    );
    check(
        "kafka sink with a batch format",
        &format!("{SOURCE}{kafka_sink}topic = \"t\"\nformat = \"batch\"\n"),
        &["sinks.k.format", "\"structured\"", "\"raw\""],
    );
    check(
        "kafka sink with a url",
        &format!("{SOURCE}{kafka_sink}topic = \"t\"\nurl = \"http://x/\"\n"),
        &["sinks.k.url", "type = \"http\" sinks"],
    );
    check(
        "kafka source without topics",
        "[sources.k]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"events\"\n",
        &["sources.k.topics", "needs the topics"],
    );
    check(
        "two kafka sources reading one topic name",
        "[sources.a]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"o\"]\ntopic = \"events\"\n\
         [sources.b]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:9093\"\ntopics = [\"x\", \"o\"]\ntopic = \"events\"\n",
        &["sources.b.topics", "also read by sources.a"],
    );
    check(
        "http source with kafka settings",
        &format!("{SOURCE}brokers = \"127.0.0.1:9092\"\n"),
        &["sources.api.brokers", "type = \"kafka\" sources"],
    );
    check(
        "http sink without a url",
        &format!("{SOURCE}[sinks.h]\ntype = \"http\"\ninput = \"events\"\n"),
        &["sinks.h.url", "needs the destination"],
    );
    check(
        "standby on the embedded engine",
        &format!("[engine.standby]\nkind = \"embedded\"\n{SOURCE}"),
        &["engine.standby", "for the Kafka engine"],
    );
    let kafka = "[engine]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\n";
    check_file(
        "standby failover_after of zero",
        &format!("{kafka}[engine.standby]\nkind = \"embedded\"\nfailover_after = \"0s\"\n{SOURCE}"),
        &["engine.standby.failover_after", "more than zero"],
    );
    check_file(
        "standby on the same cluster",
        &format!(
            "{kafka}[engine.standby]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\n{SOURCE}"
        ),
        &["engine.standby.brokers", "is the primary cluster"],
    );
    check_file(
        "kafka standby without brokers",
        &format!("{kafka}[engine.standby]\nkind = \"kafka\"\n{SOURCE}"),
        &["engine.standby.brokers", "bootstrap brokers"],
    );
    check_file(
        "spool with brokers",
        &format!(
            "{kafka}[engine.standby]\nkind = \"embedded\"\nbrokers = \"127.0.0.1:9093\"\n{SOURCE}"
        ),
        &["engine.standby", "data_dir"],
    );
    check_file(
        "standby unknown key",
        &format!("{kafka}[engine.standby]\nkind = \"embedded\"\nfailover = \"1s\"\n{SOURCE}"),
        &["failover", "unknown field"],
    );
    check(
        "zero ack timeout",
        &format!("ack_timeout = \"0s\"\n{SOURCE}"),
        &["engine.ack_timeout", "more than zero"],
    );
    check(
        "fingerprint bucket of zero",
        &format!("{SOURCE}fingerprint = {{ bucket = \"0s\" }}\n"),
        &[
            "sources.api.fingerprint",
            "fingerprint.bucket must be between 1s and 7d",
        ],
    );
    check(
        "fingerprint unknown key",
        &format!("{SOURCE}fingerprint = {{ entropie = [\"country\"] }}\n"),
        &["unknown field `entropie`", "entropy"],
    );
    check(
        "one topic fingerprinted twice",
        &format!("{SOURCE}fingerprint = {{}}\n[sources.more]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nfingerprint = {{}}\n"),
        &["fingerprinted by sources.api already"],
    );
    check(
        "audits without a fingerprint",
        &format!("{SOURCE}[[sources.api.audits]]\ncheck = \"v.count > 0\"\n"),
        &["sources.api.audits", "add `fingerprint = {}`"],
    );
    check(
        "a blocking audit",
        &format!("{SOURCE}fingerprint = {{}}\n[[sources.api.audits]]\ncheck = \"v.count > 0\"\nblocking = true\n"),
        &["sources.api.audits[0].blocking", "needs `versions"],
    );
    check(
        "an audit naming published without versions",
        &format!("{SOURCE}[stages.s]\ninput = \"events\"\noutput = \"o\"\nfingerprint = {{}}\n[[stages.s.audits]]\ncheck = \"v.count >= published.count\"\n"),
        &["stages.s.audits[0].check", "needs `versions"],
    );
    check(
        "a bad backfill_from",
        &format!("{SOURCE}[stages.s]\ninput = \"events\"\noutput = \"o\"\nversions = {{ backfill_from = \"yesterday\" }}\n"),
        &["stages.s.versions.backfill_from", "\"retention\""],
    );
    check(
        "redeliver with a publish by hand",
        &format!("{SOURCE}[stages.s]\ninput = \"events\"\noutput = \"o\"\nversions = {{ redeliver = true }}\n"),
        &["stages.s.versions.redeliver", "--redeliver-from"],
    );
    check(
        "an unknown publish mode",
        &format!("{SOURCE}[stages.s]\ninput = \"events\"\noutput = \"o\"\nversions = {{ publish = \"now\" }}\n"),
        &["unknown variant `now`", "auto"],
    );
    check(
        "a window stage reading a versioned window stage's output",
        &format!("{SOURCE}[topics.events]\nschema = {{ id = \"string\" }}\n[topics.o]\nschema = {{ n = \"int\" }}\n[stages.r]\ninput = \"events\"\noutput = \"o\"\nversions = {{}}\nsql = \"SELECT count(*) AS n FROM input\"\nwindow = {{ size = \"1m\" }}\n[stages.w]\ninput = \"o\"\noutput = \"per-hour\"\nsql = \"SELECT sum(n) AS n FROM input\"\nwindow = {{ size = \"1h\" }}\n"),
        &["stages.w.input", "window stage reading a versioned window stage"],
    );
    check(
        "a window stage reading a versioned stage that does not read an HTTP source",
        &format!("{SOURCE}[topics.o]\nschema = {{ id = \"string\" }}\n[stages.pre]\ninput = \"events\"\noutput = \"clean\"\n[stages.r]\ninput = \"clean\"\noutput = \"o\"\nversions = {{}}\n[[stages.r.transforms]]\ntype = \"set\"\nfield = \"/x\"\nvalue = \"1\"\n[stages.w]\ninput = \"o\"\noutput = \"per-minute\"\nsql = \"SELECT count(*) AS n FROM input\"\nwindow = {{ size = \"1m\" }}\n"),
        &["stages.w.input", "only when that stage reads an HTTP source's topic", "\"clean\""],
    );
    check(
        "an audit of a source naming input",
        &format!("{SOURCE}fingerprint = {{}}\n[[sources.api.audits]]\ncheck = \"v.count == input.count\"\n"),
        &["sources.api.audits[0].check", "`input` is for stages"],
    );
    check(
        "an audit that is not CEL",
        &format!("{SOURCE}fingerprint = {{}}\n[[sources.api.audits]]\ncheck = \"v.count >\"\n"),
        &["sources.api.audits[0].check", "does not parse as CEL"],
    );
}

#[test]
fn a_valid_file_validates() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, format!("{HEAD}{SOURCE}")).unwrap();
    let out = Command::new(HIFI)
        .args(["validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ok") && text.contains("events (4 partitions)"),
        "{text}"
    );
    assert!(text.contains("warning: topic \"events\""), "{text}");
}

#[test]
fn every_example_pipeline_validates() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = Command::new(HIFI)
            .args(["validate", path.to_str().unwrap()])
            .env_remove("KAFKA_BROKERS")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        seen += 1;
    }
    assert!(
        seen >= 4,
        "only {seen} examples found in {}",
        examples.display()
    );
}

/// `${VAR}`, `${VAR:-default}` and `${file:PATH}` are resolved when the file is read;
/// an unset variable is an error naming its line; `validate --print` shows the resolved
/// file with secrets masked.
#[test]
fn environment_variables_and_secret_files_fill_the_config_and_print_masked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("partner.token"), "tok-from-file\n").unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "{HEAD}{SOURCE}\n[sinks.out]\ntype = \"http\"\ninput = \"events\"\n\
             url = \"${{HIFI_TEST_PARTNER_URL}}\"\nconcurrency = 4\n\
             headers = {{ Authorization = \"Bearer ${{file:partner.token}}\", X-Env = \"${{HIFI_TEST_ENV:-staging}}\" }}\n"
        ),
    )
    .unwrap();
    let validate = |env: Option<&str>| {
        let mut cmd = Command::new(HIFI);
        cmd.args(["validate", "--print", file.to_str().unwrap()])
            .env_remove("HIFI_TEST_PARTNER_URL")
            .env_remove("HIFI_TEST_ENV");
        if let Some(url) = env {
            cmd.env("HIFI_TEST_PARTNER_URL", url);
        }
        cmd.output().unwrap()
    };
    let out = validate(Some("http://127.0.0.1:9/partner"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("url = \"http://127.0.0.1:9/partner\""),
        "{text}"
    );
    assert!(text.contains("X-Env = \"staging\""), "{text}");
    assert!(text.contains("Authorization = \"****\""), "{text}");
    assert!(!text.contains("tok-from-file"), "{text}");
    let out = validate(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("p.toml:12:") && err.contains("HIFI_TEST_PARTNER_URL is not set"),
        "{err}"
    );
}

#[test]
fn schemas_and_sql_stages_are_checked_before_anything_starts() {
    let orders = "[topics.events]\nschema = { id = \"string\", amount = \"float64\", country = \"string\" }\n";
    let stage = |sql: &str| {
        format!(
            "{SOURCE}{orders}[stages.big]\ninput = \"events\"\noutput = \"big\"\nsql = \"{sql}\"\n"
        )
    };
    check(
        "unknown schema type",
        &format!("{SOURCE}[topics.events]\nschema = {{ id = \"text\" }}\n"),
        &[
            "p.toml:9",
            "topics.events.schema",
            "unknown type \"text\"",
            "float64",
        ],
    );
    check(
        "sql without an input schema",
        &format!("{SOURCE}[stages.big]\ninput = \"events\"\noutput = \"big\"\nsql = \"SELECT 1 AS one FROM input\"\n"),
        &["p.toml:11", "stages.big.sql", "needs a schema on its input", "[topics.events]"],
    );
    check(
        "aggregate without a window",
        &stage("SELECT country, count(*) AS n FROM input GROUP BY country"),
        &["p.toml:13", "stages.big.sql", "aggregate", "window"],
    );
    check(
        "unknown column",
        &stage("SELECT amout FROM input"),
        &["stages.big.sql", "amout", "amount"],
    );
    check(
        "syntax error",
        &stage("SELEC id FROM input"),
        &["stages.big.sql", "SELEC"],
    );
    check(
        "sql and transforms",
        &format!(
            "{}[[stages.big.transforms]]\ntype = \"remove\"\nfields = [\"/x\"]\n",
            stage("SELECT id FROM input")
        ),
        &["stages.big.sql", "either sql or transforms"],
    );
    check(
        "output not of the declared schema",
        &format!(
            "{}[topics.big]\nschema = {{ id = \"string\", vat = \"int64\" }}\n",
            stage("SELECT id, amount * 0.2 AS vat FROM input")
        ),
        &[
            "stages.big.sql",
            "topics.big.schema",
            "`vat` is float64 in the query, int64",
        ],
    );
    let window = |w: &str, sql: &str| {
        format!(
            "{SOURCE}{orders}[stages.per_minute]\ninput = \"events\"\noutput = \"pm\"\nwindow = {w}\n{sql}"
        )
    };
    check(
        "a window without sql",
        &window("{ size = \"1m\" }", ""),
        &["p.toml:13", "stages.per_minute.window", "needs a query"],
    );
    check(
        "a window of no length",
        &window(
            "{ size = \"0s\" }",
            "sql = \"SELECT count(*) AS n FROM input\"\n",
        ),
        &["stages.per_minute.window.size", "at least 1ms"],
    );
    check(
        "an unknown late mode",
        &window(
            "{ size = \"1m\", late = \"drop\" }",
            "sql = \"SELECT count(*) AS n FROM input\"\n",
        ),
        &[
            "p.toml:13",
            "unknown variant `drop`",
            "dead-letter",
            "update",
        ],
    );
    check(
        "a query selecting the window's bounds",
        &window(
            "{ size = \"1m\" }",
            "sql = \"SELECT count(*) AS window_end FROM input\"\n",
        ),
        &["stages.per_minute.sql", "window_end", "the stage adds it"],
    );
}
