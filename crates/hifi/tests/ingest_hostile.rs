//! Slow and hostile clients cannot hold ingest: headers and bodies have time limits,
//! connections a cap, the in-flight budget counts bytes as they arrive, and a client
//! that writes a whole oversized body before reading still gets its 413 and reason.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::*;

fn pipeline(dir: &std::path::Path, extra: &str) -> Proc {
    let file = pipeline_file(dir, "http://127.0.0.1:9/never", extra, false);
    run_pipeline(dir, &file)
}

/// Reads until the server closes or `within` passes; what it sent.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (bool, String) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (true, String::from_utf8_lossy(&got).into_owned()),
        }
    }
    (false, String::from_utf8_lossy(&got).into_owned())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn post(addr: SocketAddr, body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_headers_are_cut_off_and_connections_are_capped() {
    let dir = test_dir();
    let proc = pipeline(
        dir.path(),
        "max_connections = 20\nheader_read_timeout = \"1s\"\n",
    );
    let addr = proc.addr("source api");
    let pid = proc.child.id();
    // Files the nodes open just after start (group offsets, segments) settle first.
    std::thread::sleep(Duration::from_secs(2));
    let before = open_fds(pid);
    // 200 slowloris connections: each sends part of a request line and stops.
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(b"POST /v1/events HTTP/1.1\r\nhost: x\r\n");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let during = open_fds(pid);
    // 20 connections, plus slack for what the nodes open meanwhile (an outgoing
    // delivery attempt, a file): far from the 200 a listener without a cap holds.
    assert!(
        during <= before + 20 + 10,
        "fds {before} -> {during}: more than the 20 allowed connections are open"
    );
    // The server closes each within about the header timeout; then new clients get in.
    let first = &mut slow[0];
    let (closed, _) = read_until_closed(first, Duration::from_secs(5));
    assert!(
        closed,
        "a connection that never finished its headers stayed open"
    );
    let t = Instant::now();
    assert_eq!(post(addr, r#"{"id":"after-slowloris"}"#), 200);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    drop(slow);
}

#[test]
fn a_trickling_body_times_out_and_holds_no_budget_it_has_not_sent() {
    let dir = test_dir();
    let proc = pipeline(
        dir.path(),
        "max_body_bytes = \"1MiB\"\nmax_inflight_bytes = \"4MiB\"\nbody_read_timeout = \"2s\"\n",
    );
    let addr = proc.addr("source api");
    // 16 clients declare 1 MiB bodies (4x the budget together) and send 1 KiB each.
    let mut slow: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(
                s,
                "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n[{}",
                1 << 20,
                " ".repeat(1023)
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Everyone else still gets in: the slow ones hold only what they sent.
    assert_eq!(post(addr, r#"{"id":"not-blocked"}"#), 200);
    // And each slow one gets 408 with the reason once its time is up.
    let (closed, answer) = read_until_closed(&mut slow[0], Duration::from_secs(10));
    assert!(closed, "{answer}");
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("body_read_timeout"),
        "{answer}"
    );
    drop(slow);
}

#[test]
fn a_client_that_writes_a_whole_oversized_body_first_still_reads_the_413() {
    let dir = test_dir();
    let proc = pipeline(dir.path(), "max_body_bytes = \"4MiB\"\n");
    let addr = proc.addr("source api");
    let body = format!("[{{\"id\":\"big\",\"pad\":\"{}\"}}]", "x".repeat(6_700_000));
    // Declared length over the limit, and (chunked) counted length over it.
    for chunked in [false, true] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let head = if chunked {
            "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n"
                .to_owned()
        } else {
            format!(
                "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n",
                body.len()
            )
        };
        s.write_all(head.as_bytes()).unwrap();
        let wrote = if chunked {
            body.as_bytes()
                .chunks(64 << 10)
                .try_for_each(|c| {
                    s.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
                    s.write_all(c)?;
                    s.write_all(b"\r\n")
                })
                .and_then(|()| s.write_all(b"0\r\n\r\n"))
        } else {
            s.write_all(body.as_bytes())
        };
        assert!(
            wrote.is_ok(),
            "chunked {chunked}: the write failed: {wrote:?}"
        );
        let (_, answer) = read_until_closed(&mut s, Duration::from_secs(10));
        assert!(
            answer.starts_with("HTTP/1.1 413") && answer.contains("max_body_bytes"),
            "chunked {chunked}: {answer:.300}"
        );
    }
    // The same with Python's http.client, which writes the whole body before reading.
    let script = format!(
        "import http.client, json\n\
         c = http.client.HTTPConnection('{}', {}, timeout=20)\n\
         c.request('POST', '/v1/events', body=b'[' + b' ' * 6_700_000 + b']', headers={{'content-type': 'application/json'}})\n\
         r = c.getresponse()\n\
         print(r.status, json.loads(r.read())['error'])\n",
        addr.ip(),
        addr.port()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 is needed for this test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("413") && text.contains("max_body_bytes"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
