//! Hostile input, full disks, connection floods and odd partitions against real agents: the
//! defects a probe of a running cluster found, each shown fixed. Every test binds loopback
//! addresses (or its own network namespace) and cleans up what it started.

#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cluster, Opts};

/// A request over HTTP/1.1 with a body: status code and body, or `None` when nothing
/// answered within `wait`.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
    wait: Duration,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn post_events(addr: SocketAddr, body: &[u8]) -> Option<(u16, String)> {
    request(
        addr,
        "POST",
        "/v1/streams/clicks/events",
        "Content-Type: application/x-ndjson\r\n",
        body,
        Duration::from_secs(10),
    )
}

/// Every event line in the zstd objects under `dir` (a file:// sink), by id.
fn sink_events(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".ndjson.zst") {
                let bytes = std::fs::read(&p).expect("object");
                let text = zstd::decode_all(bytes.as_slice()).expect("zstd");
                for line in String::from_utf8(text).expect("utf-8").lines() {
                    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                    let id = v["id"].as_str().expect("id").to_string();
                    *out.entry(id).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

fn file_stream(sinks: &Path, extra: &str) -> String {
    format!(
        r#"
[[streams]]
name = "clicks"
ack = "replicated"
batch_age = "200ms"
{extra}
[[streams.sinks]]
url = "file://{east}"
site = "east"
[[streams.sinks]]
url = "file://{west}"
site = "west"
"#,
        east = sinks.join("east").display(),
        west = sinks.join("west").display(),
    )
}

/// Found by probing: one 2.2 MB event, or a 3 MB body of 4,000 events (both under the
/// body limit), was stored but could never be replicated (the peer port refused bodies over
/// 2 MB and the frame, capped in events only, was retried for ever): every later request
/// waited 5 s and got 503, nothing shipped, and a restart did not help.
#[test]
fn one_large_request_does_not_wedge_the_stream() {
    let sinks = tempfile::tempdir().expect("tmp");
    let mut o = Opts::new(7900);
    o.extra = file_stream(
        sinks.path(),
        "max_event_bytes = 2097152\nbatch_events = 1000",
    );
    let mut c = Cluster::new(o);
    c.start_all();
    c.wait_healthy();
    let east = c.api("east");

    // Over max_event_bytes: refused at once with the limit named, nothing stored.
    let big = format!("{{\"id\":\"huge\",\"p\":\"{}\"}}\n", "x".repeat(2_200_000));
    let (code, body) = post_events(east, big.as_bytes()).expect("an answer");
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("max_event_bytes (2097152)"), "{body}");

    // Under it but larger than the old 2 MB peer limit: acknowledged (replicated).
    let one = format!(
        "{{\"id\":\"single\",\"p\":\"{}\"}}\n",
        "y".repeat(1_900_000)
    );
    let t = Instant::now();
    let (code, body) = post_events(east, one.as_bytes()).expect("an answer");
    assert_eq!(code, 200, "{body}\n{}", c.logs());
    println!("a 1.9 MB event acked in {:?}", t.elapsed());

    // 4,000 events of 700 bytes in one body: acknowledged, then the stream goes on.
    let body: String = (0..4000)
        .map(|i| format!("{{\"id\":\"bulk-{i}\",\"p\":\"{}\"}}\n", "z".repeat(680)))
        .collect();
    assert!(body.len() > 2_800_000);
    let t = Instant::now();
    let (code, answer) = post_events(east, body.as_bytes()).expect("an answer");
    assert_eq!(code, 200, "{answer}\n{}", c.logs());
    println!(
        "a {} byte body of 4000 events acked in {:?}",
        body.len(),
        t.elapsed()
    );
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let t = Instant::now();
        let small = format!("{{\"id\":\"after-{i}\",\"n\":{i}}}\n");
        let (code, answer) = post_events(east, small.as_bytes()).expect("an answer");
        assert_eq!(code, 200, "request {i} after the large ones: {answer}");
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "small requests after the large ones waited up to {slowest:?}"
    );
    // Everything ships, once.
    let want = 1 + 4000 + 50;
    let start = Instant::now();
    let events = loop {
        let mut all = sink_events(&sinks.path().join("east"));
        for (id, n) in sink_events(&sinks.path().join("west")) {
            *all.entry(id).or_insert(0) += n;
        }
        if all.len() >= want || start.elapsed() > Duration::from_secs(20) {
            break all;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(events.len(), want, "events in the sinks\n{}", c.logs());
    assert!(events.values().all(|n| *n == 1), "an event stored twice");
    assert!(!events.contains_key("huge"));
    let st = c.status("east").expect("status");
    let repl = &st["streams"][0]["replication"];
    assert!(
        repl["west"]["last_error"].is_null() && repl["witness"]["last_error"].is_null(),
        "{repl}"
    );
}

/// A TCP relay on 127.0.0.1:`port` to `to` that records what clients send.
struct Recorder {
    sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    fn start(port: u16, to: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind recorder");
        listener.set_nonblocking(true).expect("nonblocking");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, st) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                let (mut c_in, mut s_out) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (mut s_in, mut c_out) = (server, client);
                let rec = rec.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        let mut r = rec.lock().expect("lock");
                        if r.len() < 1 << 20 {
                            r.extend_from_slice(&buf[..n]);
                        }
                    }
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                });
            }
        });
        Recorder { sent, stop }
    }

    /// Whole requests recorded so far (head and body), in order.
    fn requests(&self) -> Vec<Vec<u8>> {
        let bytes = self.sent.lock().expect("lock").clone();
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(end) = bytes[at..].windows(4).position(|w| w == b"\r\n\r\n") {
            let head_end = at + end + 4;
            let head = String::from_utf8_lossy(&bytes[at..head_end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if head_end + len > bytes.len() {
                break;
            }
            out.push(bytes[at..head_end + len].to_vec());
            at = head_end + len;
        }
        out
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Sends raw request bytes; the status code answered.
fn replay(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(request).ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.split(' ').nth(1)?.parse().ok()
}

/// Found by probing: captured peer requests (heartbeats, relay frames, step-downs) could be
/// replayed for 60 s from any address, uncounted; a step-down replayed once a second forced
/// an election every second. Requests east sends west are recorded on the way and sent
/// again, to west and to the witness: each is refused and counted, and the cluster does not
/// notice.
#[test]
fn captured_peer_requests_replayed_are_refused_and_counted() {
    // The request layer under TLS: peer traffic in clear so the recorder can read it
    // (peer_tls.rs replays captured TLS connections).
    let mut o = Opts::new(7920);
    o.tls = "off";
    let mut c = Cluster::new(o);
    let west_peer: SocketAddr = "127.0.0.12:7920".parse().expect("addr");
    let witness_peer: SocketAddr = "127.0.0.13:7920".parse().expect("addr");
    let rec = Recorder::start(7935, west_peer);
    c.start_with_args("east", &["--peer-via", "west=127.0.0.1:7935"]);
    c.start("west");
    c.start("witness");
    c.wait_healthy();
    let term = settled_term(&c, "west");
    let start = Instant::now();
    let mut captured = rec.requests();
    while captured.len() < 30 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        captured = rec.requests();
    }
    let heartbeats: Vec<&Vec<u8>> = captured
        .iter()
        .filter(|r| r.starts_with(b"POST /peer/heartbeat"))
        .collect();
    assert!(
        heartbeats.len() >= 3,
        "{} requests captured",
        captured.len()
    );
    let raft: Vec<&Vec<u8>> = captured
        .iter()
        .filter(|r| r.starts_with(b"POST /raft/"))
        .take(5)
        .collect();
    let mut replayed = 0;
    for req in heartbeats.iter().take(20).chain(raft.iter()) {
        assert_eq!(replay(west_peer, req), Some(401), "replayed to west");
        assert_eq!(
            replay(witness_peer, req),
            Some(401),
            "replayed to the witness"
        );
        replayed += 1;
    }
    let st = c.status("west").expect("status");
    let east = st["sites"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["name"] == "east"))
        .expect("east in status");
    assert!(
        east["replays_refused"].as_u64().expect("count") >= replayed,
        "{east}"
    );
    let m = c.get("west", "/metrics").expect("metrics");
    assert!(
        common::metric_value(&m, "outlast_peer_replays_refused_total{peer=\"east\"}")
            >= replayed as f64,
        "{m}"
    );
    assert_eq!(st["term"], term, "no election: {st}");
    assert!(common::all_up(&st), "{st}");
    // The refusal says nothing about why (not even whether a site name is a member).
    let stranger = b"POST /peer/heartbeat HTTP/1.1\r\nHost: x\r\nx-outlast-auth: site=mallory;to=west;n=1;mac=00\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let mut s = TcpStream::connect(west_peer).expect("connect");
    s.write_all(stranger).expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.ends_with("peer authentication failed"), "{answer}");
}

/// What a client saw of the requests it sent: ids acknowledged, ids refused (never resent),
/// and the refusals' codes.
#[derive(Default)]
struct Seen {
    acked: Vec<String>,
    refused: Vec<String>,
    codes: BTreeMap<u16, usize>,
    /// A refusal without Retry-After, or naming a file.
    bad_refusals: Vec<String>,
}

/// Sends bodies of 50 events with fresh ids to `addr` until `stop`; nothing is resent.
fn spray(
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut seen = Seen::default();
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let ids: Vec<String> = (0..50).map(|i| format!("f-{}", n + i)).collect();
            n += 50;
            let body: String = ids
                .iter()
                .map(|id| format!("{{\"id\":\"{id}\",\"pad\":\"{}\"}}\n", "p".repeat(900)))
                .collect();
            let answer = raw_post(addr, body.as_bytes());
            match answer {
                Some((200, _, _)) => seen.acked.extend(ids),
                other => {
                    let (code, head, text) = other.unwrap_or((0, String::new(), String::new()));
                    *seen.codes.entry(code).or_insert(0) += 1;
                    let retry = head.to_lowercase().contains("retry-after: ");
                    if code == 0 || !retry || text.contains("/data/") || text.contains(".seg") {
                        seen.bad_refusals.push(format!("{code} {head} {text}"));
                    }
                    seen.refused.extend(ids);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    })
}

/// POST of events: (code, head, body).
fn raw_post(addr: SocketAddr, body: &[u8]) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!(
        "POST /v1/streams/clicks/events HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, head.to_string(), body.to_string()))
}

/// Found by probing: with the spool's disk full, ingest answered 500 with the spool file's
/// path, the shipper could not write its marks so nothing shipped or was trimmed (9,000
/// acknowledged events unshipped after 12 minutes), and once space came back 67 events of a
/// body answered 500 reached a sink. Here the spool's disk (a 48 MiB tmpfs) is filled while
/// a client sends: refusals are 503 + Retry-After naming no file, what was acknowledged
/// still ships while the disk is full, and once space returns nothing refused is in a sink
/// and everything acknowledged is, once.
#[test]
fn a_full_disk_refuses_with_503_ships_what_it_acknowledged_and_loses_nothing() {
    full_disk_case(7940, 2 << 20);
}

/// The same with no headroom: writes fail on the disk itself (ENOSPC) and each failed
/// commit is taken back.
#[test]
fn a_commit_that_hits_a_full_disk_is_taken_back_whole() {
    full_disk_case(7980, 0);
    // (The log of that run says "spool write failed" where a commit met ENOSPC.)
}

fn full_disk_case(port: u16, min_free: u64) {
    let sinks = tempfile::tempdir().expect("tmp");
    let mut o = Opts::new(port);
    o.extra = file_stream(
        sinks.path(),
        &format!("min_free_bytes = {min_free}\nbatch_events = 200\ndedup_window = \"1s\""),
    )
    .replace("ack = \"replicated\"", "ack = \"local\"");
    let mut c = Cluster::new(o);
    let disk = common::Tmpfs::mount(&c.dir.path().join("data/east/streams"), "48m");
    c.start_all();
    c.wait_healthy();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = spray(c.api("east"), stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let filled = disk.fill();
    println!("filled the spool's disk with {filled} bytes");
    // The site says it is out of space, and still ships what it holds.
    c.wait_for(
        "east",
        Duration::from_secs(10),
        "east reports it is out of space",
        |st| st["streams"][0]["out_of_space"] == true,
    );
    c.wait_for(
        "east",
        Duration::from_secs(20),
        "east ships what it acknowledged while the disk is full",
        |st| st["streams"][0]["spool_events"] == 0 && st["streams"][0]["out_of_space"] == true,
    );
    let m = c.get("east", "/metrics").expect("metrics");
    assert!(
        common::metric_value(
            &m,
            "outlast_relay_refused_no_space_total{stream=\"clicks\"}"
        ) > 0.0,
        "{m}"
    );
    disk.empty();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = client.join().expect("client");
    println!(
        "{} acked, {} refused ({:?})",
        seen.acked.len(),
        seen.refused.len(),
        seen.codes
    );
    assert!(
        seen.bad_refusals.is_empty(),
        "{:?}",
        &seen.bad_refusals[..seen.bad_refusals.len().min(3)]
    );
    assert!(seen.codes.keys().all(|c| *c == 503), "{:?}", seen.codes);
    assert!(!seen.refused.is_empty(), "the disk never filled");
    let last_acked = seen.acked.last().cloned().expect("acks");
    // Acks came back once space did.
    let n = |id: &str| id.trim_start_matches("f-").parse::<u64>().unwrap_or(0);
    let first_refused = seen.refused.first().map(|id| n(id)).unwrap_or(0);
    assert!(
        n(&last_acked) > first_refused,
        "no ack after space returned"
    );
    let start = Instant::now();
    let events = loop {
        let mut all = sink_events(&sinks.path().join("east"));
        for (id, k) in sink_events(&sinks.path().join("west")) {
            *all.entry(id).or_insert(0) += k;
        }
        let done = seen.acked.iter().all(|id| all.contains_key(id));
        if done || start.elapsed() > Duration::from_secs(20) {
            break all;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let missing = seen
        .acked
        .iter()
        .filter(|id| !events.contains_key(*id))
        .count();
    assert_eq!(missing, 0, "acknowledged ids in no sink\n{}", c.logs());
    assert!(events.values().all(|k| *k == 1), "an id stored twice");
    let leaked: Vec<&String> = seen
        .refused
        .iter()
        .filter(|id| events.contains_key(*id))
        .collect();
    assert!(
        leaked.is_empty(),
        "{} refused ids reached a sink, e.g. {:?}",
        leaked.len(),
        leaked.first()
    );
    if min_free == 0 {
        let log = std::fs::read_to_string(c.log_path("east")).unwrap_or_default();
        assert!(
            log.contains("spool write failed"),
            "no commit met the full disk\n{log}"
        );
    }
    drop(c);
    drop(disk);
}

/// Found by probing: an agent restarted on a full disk kept running with Raft dead inside,
/// reporting itself fenced for ever. Raft's storage failing now ends the process with a
/// non-zero exit (a supervisor restarts it once the disk is mended).
#[test]
fn raft_storage_failing_ends_the_agent_with_an_error() {
    let mut c = Cluster::new(Opts::new(7960));
    let disk = common::Tmpfs::mount(&c.dir.path().join("data/witness"), "4m");
    c.start_all();
    c.wait_healthy();
    disk.fill();
    // A decision to commit: west goes away, the others append "west is down".
    c.kill9("west");
    let mut witness = c.agents.remove("witness").expect("witness");
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(st)) = witness.try_wait() {
            break Some(st);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = witness.kill();
            let _ = witness.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(c.log_path("witness")).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("the witness lived on with a full disk\n{log}"));
    assert!(!status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("Raft stopped"), "{log}");
    println!(
        "witness exited {status:?} {:?} after west was killed; its last line: {}",
        start.elapsed(),
        log.lines().last().unwrap_or_default()
    );
    drop(c);
    drop(disk);
}

/// Raises this test process's open file limit to its hard limit (it holds thousands of
/// client connections).
fn raise_own_fd_limit() {
    let pid = std::process::id().to_string();
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid,
            "--nofile",
            "--output",
            "HARD",
            "--noheadings",
        ])
        .output()
        .expect("prlimit");
    let hard = String::from_utf8_lossy(&out.stdout).trim().to_string();
    common::run(std::process::Command::new("prlimit").args([
        "--pid",
        &pid,
        &format!("--nofile={hard}:{hard}"),
    ]));
}

/// The soft open file limit of a running process.
fn soft_fd_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The worst time of `n` GETs of `path` at `addr` that each answer 200.
fn worst_get(addr: SocketAddr, path: &str, n: usize) -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        let got = common::http_get(addr, path);
        assert!(got.is_some(), "GET {path} at {addr} failed");
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    worst
}

/// How many of `conns` the server has closed (a read sees the end, or a refusal).
fn closed(conns: &mut [TcpStream]) -> usize {
    let mut n = 0;
    for c in conns.iter_mut() {
        let _ = c.set_nonblocking(true);
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(_) => n += 1, // EOF (0) or an answer before the close
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => n += 1,
        }
    }
    n
}

/// Found by probing: idle connections, partial headers and short bodies were held for 200 s
/// and more; 5,000 partial headers took an agent from 28 to 124 MB; under a 1,024 file
/// limit, 1,100 idle connections made a site's API and gateway time out while its peers
/// still counted it up; a `Content-Length` of 10 GB with a short body was held open. Here
/// east starts under a soft limit of 1,024 and takes 2,000 idle connections on its API and
/// 2,000 on its gateway, plus 200 slowloris heads: other clients are still answered within
/// 100 ms, the idle and slow ones are closed within the header deadline, and nothing fails
/// over.
#[test]
fn idle_crowds_and_slowloris_do_not_hold_the_doors() {
    raise_own_fd_limit();
    let mut c = Cluster::new(Opts::new(8000));
    c.start_wrapped("east", &["prlimit", "--nofile=1024:", "--"]);
    c.start("west");
    c.start("witness");
    c.wait_healthy();
    let pid = c.agents["east"].id();
    let soft = soft_fd_limit(pid);
    assert!(soft > 4096, "east kept a soft file limit of {soft}");
    let (api, gw) = (c.api("east"), c.gateway("east"));
    // 3 s per connect: a SYN dropped when a burst fills the listen queue is sent again by
    // the kernel after 1 s, as for any client; a 1 s timeout gave up at that very moment
    // (12 of 2,000 once on a loaded machine). What is under test is that the crowd does
    // not hold the doors, not how fast a burst of connects lands.
    let connect = |addr: SocketAddr, n: usize| -> Vec<TcpStream> {
        (0..n)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok())
            .collect()
    };
    let t0 = Instant::now();
    let mut idle_api = connect(api, 2000);
    let mut idle_gw = connect(gw, 2000);
    let mut slow: Vec<TcpStream> = connect(api, 100);
    slow.extend(connect(gw, 100));
    for s in slow.iter_mut() {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
    }
    let connected = Instant::now();
    // A burst of connects may overflow the listen backlog now and then.
    assert!(
        idle_api.len() >= 1990 && idle_gw.len() >= 1990 && slow.len() >= 198,
        "connected {} {} {}",
        idle_api.len(),
        idle_gw.len(),
        slow.len()
    );
    // A body announced as 10 GB: refused before a byte of it is read.
    let t = Instant::now();
    let mut s = TcpStream::connect(api).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s.write_all(b"POST /v1/streams/clicks/events HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{}")
        .expect("write");
    let mut answer = [0u8; 64];
    let n = s.read(&mut answer).unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    // Other clients are served at once while the crowd is held.
    let mut worst_api = Duration::ZERO;
    let mut worst_gw = Duration::ZERO;
    for _ in 0..3 {
        for s in slow.iter_mut() {
            let _ = s.write_all(b"X");
        }
        worst_api = worst_api.max(worst_get(api, "/v1/status", 10));
        worst_gw = worst_gw.max(worst_get(gw, "/", 10));
    }
    println!(
        "with 4,200 idle or slow connections: API worst {worst_api:?}, gateway worst {worst_gw:?}"
    );
    assert!(worst_api < Duration::from_millis(100), "API {worst_api:?}");
    assert!(
        worst_gw < Duration::from_millis(100),
        "gateway {worst_gw:?}"
    );
    // Idle and slow connections end within the header deadline (10 s), whatever they send.
    // The deadline runs from each connection's own start: on a loaded machine the last of
    // the 4,200 connects can come seconds after the first, so the wait counts from the
    // last one, and ends early once every connection is closed.
    let all_closed =
        |idle_api: &mut [TcpStream], idle_gw: &mut [TcpStream], slow: &mut [TcpStream]| {
            let (a, g, sl) = (closed(idle_api), closed(idle_gw), closed(slow));
            (
                a + 5 >= idle_api.len() && g + 5 >= idle_gw.len() && sl + 2 >= slow.len(),
                a,
                g,
                sl,
            )
        };
    let deadline = connected + Duration::from_secs(14);
    let mut took = Duration::ZERO;
    let (mut done, mut a, mut g, mut sl) = (false, 0, 0, 0);
    while !done && Instant::now() < deadline {
        for s in slow.iter_mut() {
            let _ = s.write_all(b"X");
        }
        std::thread::sleep(Duration::from_millis(1000));
        if connected.elapsed() >= Duration::from_secs(10) {
            (done, a, g, sl) = all_closed(&mut idle_api, &mut idle_gw, &mut slow);
            took = t0.elapsed();
        }
    }
    println!(
        "closed {took:?} after the first connect ({:?} after the last): API {a}/{}, gateway {g}/{}, slowloris {sl}/{}",
        connected - t0,
        idle_api.len(),
        idle_gw.len(),
        slow.len()
    );
    assert!(done, "still held: {a} {g} {sl}");
    let st = c.status("west").expect("status");
    assert!(common::all_up(&st), "{st}");
    assert_eq!(
        st["services"][0]["primary"], "east",
        "nothing failed over: {st}"
    );
}

/// Each listener has its cap: a crowd at the gateway past it is answered 503 at once and
/// counted, while the API and the peer port (which keeps the site up) are not starved.
#[test]
fn a_gateway_at_its_cap_answers_at_once_and_starves_nothing_else() {
    let mut o = Opts::new(8020);
    o.extra = "\n[api]\nmax_connections = 64\n".to_string();
    let mut c = Cluster::new(o);
    // The test service's gateway takes 50.
    let text = std::fs::read_to_string(&c.config).expect("config");
    let text = text.replacen("port = 8022\n", "port = 8022\nmax_connections = 50\n", 1);
    std::fs::write(&c.config, text).expect("config");
    c.start_all();
    c.wait_healthy();
    let gw = c.gateway("east");
    let held: Vec<TcpStream> = (0..50)
        .filter_map(|_| TcpStream::connect(gw).ok())
        .collect();
    assert_eq!(held.len(), 50);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let mut over = TcpStream::connect(gw).expect("connect");
    over.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let _ = over.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = over.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.to_lowercase().contains("retry-after: 1"), "{text}");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(worst_get(c.api("east"), "/v1/status", 10) < Duration::from_millis(100));
    drop(held);
    // Found by scripts/probe: the gateway held a request whose Content-Length was over its
    // limit, or whose body stalled, for as long as the client liked.
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let mut s = TcpStream::connect(gw).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{}")
        .expect("write");
    let mut answer = [0u8; 32];
    let n = s.read(&mut answer).unwrap_or(0);
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    let m = c.get("east", "/metrics").expect("metrics");
    assert!(
        common::metric_value(
            &m,
            "outlast_connections_refused_total{listener=\"gateway:db\"}"
        ) >= 1.0,
        "{m}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let st = c.status("west").expect("status");
    assert!(common::all_up(&st), "{st}");
    assert_eq!(st["services"][0]["primary"], "east", "{st}");
}

/// Found by probing: with east and west cut from each other (both reaching the witness)
/// for 20 s there was no leader for the whole cut (elections every 0.7 s, term 54 to 79),
/// every site still reported all sites up, west's gateway failed 948 of 1,001 GETs at a 2 s
/// client timeout (one hung 12 s), and the site cut off from the leader answered DNS with
/// SERVFAIL. Now one leader holds, the cut is reported, west's gateway answers 503 within
/// its connect timeout, and DNS answers from the committed routing everywhere.
#[test]
fn an_asymmetric_partition_keeps_one_leader_and_every_door_answers() {
    let mut o = Opts::new(8040);
    o.netns = true;
    o.dns = true;
    let mut c = Cluster::new(o);
    c.start_all();
    c.wait_healthy();
    // The case that matters: the leader is one of the two sites cut apart. A witness that
    // leads is restarted (it hands leadership over when it stops).
    let leader_now = |c: &Cluster| {
        c.status("east")
            .and_then(|s| s["leader"].as_str().map(str::to_string))
    };
    for _ in 0..5 {
        if leader_now(&c).is_some_and(|l| l != "witness") {
            break;
        }
        c.terminate("witness", Duration::from_secs(10));
        c.start("witness");
        c.wait_healthy();
        std::thread::sleep(Duration::from_millis(500));
    }
    let leader = leader_now(&c).expect("leader");
    assert_ne!(leader, "witness", "could not get a data site to lead");
    let terms: Vec<u64> = ["east", "west", "witness"]
        .iter()
        .map(|s| settled_term(&c, s).as_u64().expect("term"))
        .collect();
    let leader = leader_now(&c).expect("leader");
    assert_ne!(leader, "witness", "the leader changed while settling");
    c.cut_between("east", "west");
    // West's gateway, 10 GETs a second for 8 s, each with a 2 s client timeout, timed.
    let script = format!(
        "import urllib.request,urllib.error,time,json\nout=[]\nfor i in range(80):\n t=time.time()\n try:\n  urllib.request.urlopen('http://{gw}/',timeout=2).read(); code=200\n except urllib.error.HTTPError as e: code=e.code\n except Exception as e: code=0\n out.append([code,time.time()-t])\n time.sleep(max(0,0.1-(time.time()-t)))\nprint(json.dumps(out))",
        gw = c.gateway("west")
    );
    let gets = c.command("python3").args(["-c", &script]).spawn_output();
    // Meanwhile: the leader and the terms, and DNS at west, every 250 ms for 16 s.
    let mut leaders = std::collections::BTreeSet::new();
    let mut max_terms = terms.clone();
    let mut dns_failures = 0;
    let mut cut_reported = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(16) {
        for (i, site) in ["east", "west", "witness"].iter().enumerate() {
            if let Some(st) = c.status(site) {
                if let Some(l) = st["leader"].as_str() {
                    leaders.insert(l.to_string());
                }
                max_terms[i] = max_terms[i].max(st["term"].as_u64().unwrap_or(0));
                if *site == "witness" {
                    let east = st["sites"]
                        .as_array()
                        .and_then(|s| s.iter().find(|x| x["name"] == "east").cloned());
                    cut_reported |=
                        east.is_some_and(|e| e["cannot_reach"] == serde_json::json!(["west"]));
                }
            }
        }
        let dig = c
            .command("dig")
            .args([
                "@127.0.0.12",
                "-p",
                "8043",
                "db.shop.test",
                "A",
                "+short",
                "+time=1",
                "+tries=1",
            ])
            .output()
            .expect("dig");
        let answer = String::from_utf8_lossy(&dig.stdout).trim().to_string();
        if answer != "127.0.0.11" {
            dns_failures += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = gets.wait_with_output().expect("gets");
    let results: Vec<(u16, f64)> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let slowest = results.iter().map(|(_, t)| *t).fold(0.0, f64::max);
    let timed_out = results.iter().filter(|(code, _)| *code == 0).count();
    let codes: BTreeMap<u16, usize> = results.iter().fold(BTreeMap::new(), |mut m, (code, _)| {
        *m.entry(*code).or_insert(0) += 1;
        m
    });
    println!(
        "asymmetric cut: leaders seen {leaders:?}, terms {terms:?} -> {max_terms:?}, west's gateway {codes:?} slowest {slowest:.2} s, DNS failures at west {dns_failures}, cut reported {cut_reported}"
    );
    assert_eq!(
        leaders.len(),
        1,
        "one leader for the whole cut: {leaders:?}"
    );
    assert!(leaders.contains(&leader), "{leaders:?}");
    assert_eq!(max_terms[0], terms[0], "east's term moved");
    assert_eq!(max_terms[2], terms[2], "the witness's term moved");
    assert!(max_terms[1] <= terms[1] + 1, "west's term ran away");
    assert!(cut_reported, "the cut east-west was not reported");
    assert_eq!(
        dns_failures, 0,
        "west's DNS did not answer from the committed routing"
    );
    assert_eq!(timed_out, 0, "GETs through west timed out: {codes:?}");
    assert!(slowest < 1.5, "a GET through west waited {slowest:.2} s");
    assert!(codes.keys().all(|c| *c == 503 || *c == 200), "{codes:?}");
    // The heal deposes no one.
    c.heal();
    std::thread::sleep(Duration::from_secs(2));
    for (i, site) in ["east", "witness"].iter().enumerate() {
        let st = c.status(site).expect("status");
        assert_eq!(st["leader"].as_str(), Some(leader.as_str()), "{st}");
        assert_eq!(
            st["term"].as_u64(),
            Some(terms[if i == 0 { 0 } else { 2 }]),
            "{st}"
        );
    }
    c.wait_for(
        "west",
        Duration::from_secs(5),
        "west follows the leader again",
        |st| st["leader"].as_str() == Some(leader.as_str()) && common::all_up(st),
    );
}

trait SpawnOutput {
    fn spawn_output(&mut self) -> std::process::Child;
}

impl SpawnOutput for std::process::Command {
    fn spawn_output(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    }
}

/// `site`'s Raft term once it has stayed the same for a second (a start-up election may
/// still be running when the cluster first looks healthy).
fn settled_term(c: &Cluster, site: &str) -> serde_json::Value {
    let start = Instant::now();
    let mut term = c.status(site).expect("status")["term"].clone();
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_secs(1));
        let now = c.status(site).expect("status")["term"].clone();
        if now == term {
            break;
        }
        term = now;
    }
    term
}
