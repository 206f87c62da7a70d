//! SIGHUP reloads the pipeline file: a valid change is applied (a sink added, a stage
//! changed) without dropping an acknowledged event; an invalid file, or one that changes
//! `[engine]`, leaves the running pipeline as it was and says why.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use support::*;

/// The pipeline file: api → clean (with `filter`, if any) → first (and second).
fn pipeline(
    dir: &std::path::Path,
    first: &str,
    second: Option<&str>,
    filter: Option<&str>,
) -> String {
    let filter = filter.map_or(String::new(), |c| {
        format!("[[stages.clean.transforms]]\ntype = \"filter\"\ncondition = '{c}'\n")
    });
    let second = second.map_or(String::new(), |url| {
        format!("[sinks.second]\ntype = \"http\"\ninput = \"clean\"\nurl = \"{url}\"\n")
    });
    let text = format!(
        "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\ntopic = \"events\"\nid_field = \"/id\"\n\n\
         [stages.clean]\ninput = \"events\"\noutput = \"clean\"\n{filter}\n\
         [sinks.first]\ntype = \"http\"\ninput = \"clean\"\nurl = \"{first}\"\n\n{second}"
    );
    std::fs::write(dir.join("pipeline.toml"), &text).unwrap();
    text
}

/// The addresses a running `hifi run` printed after its latest (re)start; every line it
/// printed.
fn addresses_after_reload(proc: &mut Proc) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = proc.stdout_rest.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no reload within 30 s: {}",
                std::fs::read_to_string(&proc.log).unwrap_or_default()
            )
        });
        if let Some((name, addr)) = line
            .strip_prefix("source api: POST http://")
            .map(|a| ("source api", a.trim_end_matches("/v1/events")))
            .or_else(|| line.strip_prefix("admin: http://").map(|a| ("admin", a)))
        {
            proc.addrs.insert(name.to_owned(), addr.parse().unwrap());
        }
        if line.starts_with("hifi is running") {
            return seen;
        }
        seen.push(line);
    }
}

fn hup(proc: &Proc) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &proc.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn send(proc: &Proc, prefix: &str, n: usize) {
    let url = format!("http://{}/v1/events", proc.addr("source api"));
    let body: Vec<_> = (0..n)
        .map(|i| serde_json::json!({"id": format!("{prefix}-{i}")}))
        .collect();
    let r = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_change_and_keeps_the_pipeline_on_a_bad_one() {
    let dir = test_dir();
    let (rec1, rec2) = (
        dir.path().join("first.jsonl"),
        dir.path().join("second.jsonl"),
    );
    let first = run_receiver(dir.path(), "127.0.0.1:0", &rec1);
    let second = run_receiver(dir.path(), "127.0.0.1:0", &rec2);
    let url1 = format!("http://{}/ingest", first.addr("receiver"));
    let url2 = format!("http://{}/ingest", second.addr("receiver"));
    pipeline(dir.path(), &url1, None, None);
    let mut proc = run_pipeline(dir.path(), &dir.path().join("pipeline.toml"));
    send(&proc, "a", 50).await;

    // A valid change: the stage gets a filter, and a second sink appears.
    let drop_b1 = Some("!event.id.startsWith(\"b-1\")");
    pipeline(dir.path(), &url1, Some(&url2), drop_b1);
    hup(&proc);
    addresses_after_reload(&mut proc);
    send(&proc, "b", 50).await;
    // 50 + 50 less b-1 and b-10..b-19, filtered by the changed stage.
    assert!(
        wait_until(Duration::from_secs(30), || received_ids(&rec1).len() == 89),
        "the first sink lost events across the reload, or the change did not apply: {}",
        received_ids(&rec1).len()
    );
    let got = received_ids(&rec1);
    assert!(got.contains_key("a-49") && got.contains_key("b-20") && !got.contains_key("b-15"));
    assert!(
        wait_until(Duration::from_secs(30), || received_ids(&rec2)
            .contains_key("b-49")),
        "the added sink delivers"
    );

    // An invalid file: the pipeline goes on as it was, and the log says why.
    std::fs::write(dir.path().join("pipeline.toml"), "[sinks.broken\n").unwrap();
    hup(&proc);
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&proc.log)
            .unwrap()
            .contains("reload refused")
    }));
    send(&proc, "c", 10).await;
    assert!(wait_until(Duration::from_secs(30), || received_ids(&rec1)
        .len()
        == 99));

    // A changed [engine] needs a restart: refused too.
    let text = pipeline(dir.path(), &url1, Some(&url2), drop_b1)
        .replace("data_dir = \"data\"", "data_dir = \"elsewhere\"");
    std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
    hup(&proc);
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&proc.log)
            .unwrap()
            .contains("[engine] changed")
    }));
    send(&proc, "d", 10).await;
    assert!(wait_until(Duration::from_secs(30), || received_ids(&rec1)
        .len()
        == 109));
    let (status, _) = proc.sigterm(Duration::from_secs(20));
    assert!(status.success());
    first.sigterm(Duration::from_secs(10));
    second.sigterm(Duration::from_secs(10));
}

/// A reload keeps the listeners bound: a producer sending all the time over keep-alive
/// connections, never retrying, gets every request answered 200 across reloads (the
/// requests that come while the nodes restart wait for them), the `:0` ports stay, and
/// every event it sent is delivered. The source's de-duplication window is handed to
/// the next nodes (not read again from the log): an event sent before the reloads is
/// a duplicate after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_ingest_answering_on_the_same_ports() {
    let dir = test_dir();
    let rec = dir.path().join("first.jsonl");
    let first = run_receiver(dir.path(), "127.0.0.1:0", &rec);
    let url1 = format!("http://{}/ingest", first.addr("receiver"));
    pipeline(dir.path(), &url1, None, None);
    let file = dir.path().join("pipeline.toml");
    let mut proc = Proc::start_logging(
        &["run", file.to_str().unwrap(), "--drain", "5s"],
        "hifi is running",
        dir.path(),
        "warn,hifi_pipeline::source=info",
    );
    let (source, admin) = (proc.addr("source api"), proc.addr("admin"));
    let once = |n: u64| async move {
        let r = reqwest::Client::new()
            .post(format!("http://{source}/v1/events"))
            .json(&serde_json::json!([{"id": "once"}]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["duplicates"], n, "{v}");
    };
    once(0).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = tokio::spawn({
        let stop = stop.clone();
        let url = format!("http://{source}/v1/events");
        async move {
            let client = reqwest::Client::new();
            let (mut sent, mut refused) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body: Vec<_> = (0..10)
                    .map(|i| serde_json::json!({"id": format!("p-{sent}-{i}")}))
                    .collect();
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == 200 => sent += 1,
                    Ok(r) => refused.push(format!("request {sent}: {}", r.status())),
                    Err(e) => refused.push(format!("request {sent}: {e}")),
                }
                if refused.len() > 20 {
                    break;
                }
            }
            (sent, refused)
        }
    });
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let filter = (round % 2 == 0).then_some("event.id != \"none\"");
        pipeline(dir.path(), &url1, None, filter);
        hup(&proc);
        addresses_after_reload(&mut proc);
        assert_eq!(proc.addr("source api"), source, "the source's port changed");
        assert_eq!(proc.addr("admin"), admin, "the admin port changed");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, refused) = producer.await.unwrap();
    assert!(
        refused.is_empty(),
        "requests not answered 200 across reloads: {refused:?}"
    );
    assert!(sent > 10, "the producer hardly sent anything: {sent}");
    once(1).await;
    let log = std::fs::read_to_string(&proc.log).unwrap();
    assert_eq!(
        log.matches("de-duplication window kept from the previous start")
            .count(),
        3,
        "{log}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || received_ids(&rec).len()
            == sent * 10 + 1),
        "delivered {} of {} acknowledged events",
        received_ids(&rec).len(),
        sent * 10 + 1
    );
    let (status, _) = proc.sigterm(Duration::from_secs(20));
    assert!(status.success());
    first.sigterm(Duration::from_secs(10));
}

/// A port passes from one listener to another in a reload: two sources swap their
/// ports, then one is renamed keeping its port (the old listeners are unbound before
/// the new ones bind, or the bind would find the port taken and the reload fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_can_swap_ports_and_rename_a_source() {
    let dir = test_dir();
    let (p1, p2) = (free_addr(), free_addr());
    let write = |a: (&str, std::net::SocketAddr), b: (&str, std::net::SocketAddr)| {
        let text = format!(
            "[engine]\nkind = \"embedded\"\ndata_dir = \"data\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [sources.{}]\ntype = \"http\"\nlisten = \"{}\"\ntopic = \"events\"\n\n\
             [sources.{}]\ntype = \"http\"\nlisten = \"{}\"\ntopic = \"events\"\n\n\
             [sinks.out]\ntype = \"http\"\ninput = \"events\"\nurl = \"http://127.0.0.1:9/never\"\n",
            a.0, a.1, b.0, b.1
        );
        std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
    };
    write(("one", p1), ("two", p2));
    let mut proc = run_pipeline(dir.path(), &dir.path().join("pipeline.toml"));
    assert_eq!(proc.addr("source one"), p1);
    let reload = |proc: &mut Proc| {
        hup(proc);
        addresses_after_reload(proc)
    };
    write(("one", p2), ("two", p1));
    let lines = reload(&mut proc);
    assert!(
        lines.contains(&format!("source one: POST http://{p2}/v1/events"))
            && lines.contains(&format!("source two: POST http://{p1}/v1/events")),
        "the ports were not swapped: {lines:?}\n{}",
        std::fs::read_to_string(&proc.log).unwrap()
    );
    write(("three", p2), ("two", p1));
    let lines = reload(&mut proc);
    assert!(
        lines.contains(&format!("source three: POST http://{p2}/v1/events")),
        "the renamed source did not get the port: {lines:?}\n{}",
        std::fs::read_to_string(&proc.log).unwrap()
    );
    support::versions::post_events(p2, &[serde_json::json!({"id": "x"})]).await;
    let (status, _) = proc.sigterm(Duration::from_secs(20));
    assert!(status.success());
}
