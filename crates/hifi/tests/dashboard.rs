//! The dashboard in a real headless browser against a running pipeline: every chart
//! rendered with real numbers, the loss table has rows, and a screenshot is saved
//! (`target/tmp/dashboard.png`). Needs Debian's `chromium`; CI installs it and sets
//! `HIFI_REQUIRE_CHROMIUM=1` so that the test cannot pass by skipping there.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_real_figures_in_a_headless_browser() {
    if !tool_present(
        "chromium",
        &["--version"],
        "HIFI_REQUIRE_CHROMIUM",
        "apt-get install chromium; the dashboard was not checked",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received.jsonl");
    let receiver = run_receiver(dir.path(), "127.0.0.1:0", &record);
    let sink_url = format!("http://{}/ingest", receiver.addr("receiver"));
    let file = pipeline_file(dir.path(), &sink_url, "", true);
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let client = reqwest::Client::new();
    // Traffic for a little over one 10-second lag window, so history has points.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(12) {
        let body: Vec<_> = (0..20)
            .map(|i| serde_json::json!({"id": format!("d-{n}-{i}")}))
            .collect();
        assert_eq!(
            client.post(&url).json(&body).send().await.unwrap().status(),
            200
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // In the target directory's scratch space for tests (wherever CARGO_TARGET_DIR is).
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let out = tokio::task::spawn_blocking({
        let admin = format!("http://{}", proc.addr("admin"));
        let shot = shot.clone();
        move || {
            std::process::Command::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../scripts/check-dashboard"
            ))
            .args([admin.as_str(), shot.to_str().unwrap()])
            .output()
            .unwrap()
        }
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "dashboard check failed:\n{text}");
    assert!(shot.exists());
    proc.sigterm(Duration::from_secs(20));
    receiver.sigterm(Duration::from_secs(10));
}

/// The DOM of the dashboard at `admin` after its scripts ran for a few seconds.
fn dashboard_dom(admin: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=5000",
            "--dump-dom",
            &format!("http://{admin}/"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text and `data-value` of the element marked `data-stat=stat data-node=node`.
fn stat(dom: &str, stat: &str, node: &str) -> (String, Option<f64>) {
    let re = regex::Regex::new(&format!(
        r#"<td[^>]*data-stat="{stat}"[^>]*data-node="{node}"(?:[^>]*data-value="([0-9.]+)")?[^>]*>([^<]*)<"#
    ))
    .unwrap();
    let c = re
        .captures(dom)
        .unwrap_or_else(|| panic!("no {stat} of {node} in the dashboard:\n{dom}"));
    (
        c[2].to_owned(),
        c.get(1).map(|v| v.as_str().parse().unwrap()),
    )
}

/// During a destination outage the dashboard says so: the breaker is open, the backlog
/// holds the undelivered events, and the E2E lag "now" is their age and keeps rising
/// (it does not show the last good p95).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shows_on_the_dashboard_as_an_open_breaker_and_a_growing_backlog() {
    if !tool_present(
        "chromium",
        &["--version"],
        "HIFI_REQUIRE_CHROMIUM",
        "apt-get install chromium; the dashboard was not checked",
    ) {
        return;
    }
    let dir = test_dir();
    let down = free_addr();
    let file = pipeline_file_holding(dir.path(), down);
    let proc = run_pipeline(dir.path(), &file);
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let admin = proc.addr("admin").to_string();
    let client = reqwest::Client::new();
    for b in 0..10 {
        let body: Vec<_> = (0..20)
            .map(|i| serde_json::json!({"id": format!("o-{b}-{i}")}))
            .collect();
        assert_eq!(
            client.post(&url).json(&body).send().await.unwrap().status(),
            200
        );
    }
    // The outage is real: the breaker opened and the events wait.
    let mut opened = false;
    for _ in 0..100 {
        let v = get_json(&format!("http://{admin}/v1/stats")).await;
        let sink = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "out")
            .cloned()
            .unwrap();
        if sink["breaker_open"] == true && sink["backlog_records"] == 200 {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(opened, "the breaker never opened with 200 events waiting");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let first = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || dashboard_dom(&admin)
    })
    .await
    .unwrap();
    assert_eq!(stat(&first, "breaker", "out").0, "open");
    // The adaptive request limit starts at one and a destination that is down keeps it
    // there.
    let requests = stat(&first, "concurrency", "out").0;
    assert!(requests.starts_with("1 ("), "requests cell: {requests:?}");
    // The scaling table has the sink, with the replicas it needs (one: no measure of a
    // replica's rate while its destination is down).
    assert_eq!(stat(&first, "replicas", "out"), ("1".to_owned(), Some(1.0)));
    // No shadow sinks in this pipeline: their card stays hidden.
    assert!(first.contains(r#"id="shadow-card" hidden"#), "{first}");
    assert_eq!(stat(&first, "backlog_records", "out").1, Some(200.0));
    let age1 = stat(&first, "backlog_age_ms", "out").1.unwrap();
    assert!(age1 >= 2000.0, "the oldest waiting event is {age1} ms old");
    assert!(
        first.contains(r#"id="sum-breakers" data-open="1""#) || first.contains("data-open=\"1\""),
        "{first}"
    );
    let e2e_now: f64 = regex::Regex::new(r#"id="sum-e2e"[^>]*data-value="([0-9.]+)""#)
        .unwrap()
        .captures(&first)
        .unwrap_or_else(|| panic!("no E2E now in {first}"))[1]
        .parse()
        .unwrap();
    assert!(
        e2e_now >= age1,
        "E2E lag now {e2e_now} ms < backlog age {age1} ms"
    );
    assert!(
        first.contains(r#"data-chart="backlog" data-rendered="true""#)
            || regex::Regex::new(r#"data-chart="backlog"[^>]*data-rendered="true""#)
                .unwrap()
                .is_match(&first),
        "the backlog chart is not drawn"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = tokio::task::spawn_blocking(move || dashboard_dom(&admin))
        .await
        .unwrap();
    let age2 = stat(&second, "backlog_age_ms", "out").1.unwrap();
    assert!(
        age2 >= age1 + 2500.0,
        "the backlog's age did not rise: {age1} → {age2} ms"
    );
    proc.sigterm(Duration::from_secs(20));
}

/// The lineage view draws every node's fields with the selected edges between them, and
/// the PII card lists what each sink receives, from where and whether it is allowed; the
/// fields on the way are marked PII in the lineage view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lineage_view_and_the_pii_card_show_where_pii_goes() {
    if !tool_present(
        "chromium",
        &["--version"],
        "HIFI_REQUIRE_CHROMIUM",
        "apt-get install chromium; the dashboard was not checked",
    ) {
        return;
    }
    let dir = test_dir();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\npartitions = 1\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [topics.orders]\nschema = {{ id = \"string\", amount = \"float64\", email = \"string\" }}\n\
             [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\npii = [\"email\"]\n\
             fingerprint = {{ entropy = [\"email\"], checkpoint_every = \"1s\" }}\n\
             [stages.big]\ninput = \"orders\"\noutput = \"big\"\nversions = {{}}\n\
             sql = \"SELECT id, amount * 0.2 AS vat, email AS contact FROM input WHERE amount >= 10\"\n\
             [sinks.partner]\ntype = \"http\"\ninput = \"big\"\nurl = \"http://{}/in\"\nallow_pii = [\"contact\"]\n",
            free_addr()
        ),
    )
    .unwrap();
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin").to_string();
    // Three events, so the fingerprint card has a bucket (three emails: log2 3 bits).
    let body = serde_json::json!([
        {"id": "o1", "amount": 12.0, "email": "a@example.com"},
        {"id": "o2", "amount": 5.0, "email": "b@example.com"},
        {"id": "o3", "amount": 30.0, "email": "c@example.com"}
    ]);
    let ingest = format!("http://{}/v1/events", proc.addr("source api"));
    let r = reqwest::Client::new()
        .post(&ingest)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_json(&format!("http://{admin}/v1/fingerprints?node=sources.api")).await["nodes"][0]
        ["buckets"][0]["count"]
        != 3
    {
        assert!(
            Instant::now() < deadline,
            "the fingerprint never counted 3 events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dom = off_workers(|| dashboard_dom(&admin));
    let has = |needle: &str| dom.contains(needle);
    assert!(!has(r#"id="fingerprint-card" hidden"#), "{dom}");
    let published = get_json(&format!("http://{admin}/v1/versions")).await["stages"][0]
        ["published"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!has(r#"id="versions-card" hidden"#), "{dom}");
    assert!(
        has(&format!(
            r#"data-stat="version_published" data-node="big" data-value="{published}""#
        )),
        "the versions card names the published version {published}: {dom}"
    );
    assert_eq!(stat(&dom, "fp_events", "sources.api").1, Some(3.0), "{dom}");
    assert!(has("email 1.58 bits"), "the entropy: {dom}");
    assert!(
        has(r#"data-chart="lineage""#) && has(r#"data-rendered="true""#),
        "{dom}"
    );
    let points = regex::Regex::new(r#"data-chart="lineage"[^>]*data-points="(\d+)""#)
        .unwrap()
        .captures(&dom)
        .map(|c| c[1].parse::<u32>().unwrap());
    // Selected edges: id, amount → vat, email → contact into big; id, vat, contact into partner.
    assert_eq!(points, Some(6), "{dom}");
    for node in ["api", "big", "partner"] {
        assert!(has(&format!(r#"data-node="{node}""#)), "no node {node}");
    }
    for f in ["api.email", "big.contact", "partner.contact"] {
        assert!(
            has(&format!(r#"class="ln-field pii" data-field="{f}""#)),
            "{f} is not marked PII:\n{dom}"
        );
    }
    assert!(
        has(r#"class="ln-field" data-field="big.vat""#),
        "vat is no PII"
    );
    assert!(
        has(r#"data-sink="partner" data-field="contact" data-allowed="true""#),
        "{dom}"
    );
    assert!(has("api.email → big.contact → partner.contact"), "{dom}");
    proc.sigterm(Duration::from_secs(20));
}

/// With a candidate version running beside the published one, the dashboard compares
/// their fingerprints metric by metric (the newest bucket both have): the same events
/// (count unchanged), a computed field 25 % higher, marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_compares_a_candidate_with_the_published_version() {
    if !tool_present(
        "chromium",
        &["--version"],
        "HIFI_REQUIRE_CHROMIUM",
        "apt-get install chromium; the dashboard was not checked",
    ) {
        return;
    }
    let dir = test_dir();
    let file = dir.path().join("p.toml");
    let write = |factor: &str| {
        std::fs::write(
            &file,
            format!(
                "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\npartitions = 1\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\
                 [topics.orders]\nschema = {{ id = \"string\", amount = \"float64\" }}\n\
                 [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"orders\"\n\
                 [stages.big]\ninput = \"orders\"\noutput = \"big\"\nversions = {{}}\n\
                 fingerprint = {{ checkpoint_every = \"1s\" }}\n\
                 sql = \"SELECT id, amount * {factor} AS vat FROM input\"\n"
            ),
        )
        .unwrap();
    };
    write("0.2");
    let proc = run_pipeline(dir.path(), &file);
    let body = serde_json::json!([
        {"id": "o1", "amount": 10.0}, {"id": "o2", "amount": 20.0},
        {"id": "o3", "amount": 30.0}, {"id": "o4", "amount": 40.0}
    ]);
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/events", proc.addr("source api")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    proc.sigterm(Duration::from_secs(20));

    // A new definition: a candidate beside version one (published by hand, so it stays
    // a candidate), both fingerprinted.
    write("0.25");
    let proc = run_pipeline(dir.path(), &file);
    let admin = proc.addr("admin").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get_json(&format!("http://{admin}/v1/versions?stage=big")).await;
        let counted = |state: &str| {
            v["stages"][0]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["state"] == state && x["fingerprint"]["count"] == 4)
        };
        if counted("published") && counted("candidate") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both versions' fingerprints never counted 4 events: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dom = off_workers(|| dashboard_dom(&admin));
    let has = |needle: &str| dom.contains(needle);
    assert!(!has(r#"id="version-compare-card" hidden"#), "{dom}");
    let change = |metric: &str| {
        regex::Regex::new(&format!(
            r#"data-stat="vc_change" data-node="big" data-metric="{metric}" data-value="([^"]*)"( class="bad")?"#
        ))
        .unwrap()
        .captures(&dom)
        .map(|c| (c.get(2).is_some(), c[1].to_owned()))
    };
    assert_eq!(change("count"), Some((false, "+0.0 %".to_owned())), "{dom}");
    assert_eq!(
        change("vat.mean"),
        Some((true, "+25.0 %".to_owned())),
        "{dom}"
    );
    assert_eq!(
        change("vat.min"),
        Some((true, "+25.0 %".to_owned())),
        "{dom}"
    );
    assert_eq!(
        change("id.distinct"),
        Some((false, "+0.0 %".to_owned())),
        "{dom}"
    );
    proc.sigterm(Duration::from_secs(20));
}
