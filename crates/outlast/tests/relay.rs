//! The relay against a real S3-compatible server (s3s-fs): kill -9 of a site mid-stream
//! while the client fails over with the same ids, a sink down for 30 s, and a restart of
//! everything. A checker reads every object back and proves that every acknowledged id is
//! stored and none twice (the same key in two sinks must hold the same bytes; it counts
//! once).

#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, Opts, S3};

fn stream_config(east: &S3, west: &S3, ack: &str) -> String {
    format!(
        r#"
[[streams]]
name = "clicks"
ack = "{ack}"
batch_events = 400
batch_age = "200ms"
replay_rate = 20000
[[streams.sinks]]
url = "s3://east-bucket/raw"
site = "east"
options = {eo}
[[streams.sinks]]
url = "s3://west-bucket/raw"
site = "west"
options = {wo}
"#,
        eo = east.options(),
        wo = west.options()
    )
}

/// POST over HTTP/1.1: status code and body, or `None` when nothing answered in time.
fn post(addr: SocketAddr, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(8))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// A client that sends batches of 20 events with ids and, when a site fails, sends the
/// same batch to the next one. Returns the acknowledged ids.
struct Client {
    acked: Arc<Mutex<BTreeSet<String>>>,
    refused: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(sites: Vec<SocketAddr>, prefix: &str, per_second: u64) -> Self {
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let refused = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, r, st, prefix) = (
            acked.clone(),
            refused.clone(),
            stop.clone(),
            prefix.to_string(),
        );
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut at = 0usize;
            let pause = Duration::from_millis(1000 * 20 / per_second.max(1));
            while !st.load(Ordering::SeqCst) {
                let ids: Vec<String> = (0..20).map(|i| format!("{prefix}-{}", n + i)).collect();
                n += 20;
                let body: String = ids
                    .iter()
                    .map(|id| format!("{{\"id\":\"{id}\",\"url\":\"https://shop.test/p/{id}\",\"pad\":\"{}\"}}\n", "x".repeat(120)))
                    .collect();
                // Up to 40 tries over the sites, the same ids each time.
                for _ in 0..40 {
                    match post(sites[at], "/v1/streams/clicks/events", &body) {
                        Some((200, _)) => {
                            a.lock().expect("lock").extend(ids.iter().cloned());
                            break;
                        }
                        other => {
                            if let Some((code, _)) = other {
                                assert!(code == 503 || code == 500, "unexpected answer {other:?}");
                            }
                            *r.lock().expect("lock") += 1;
                            at = (at + 1) % sites.len();
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                std::thread::sleep(pause);
            }
        });
        Client {
            acked,
            refused,
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (BTreeSet<String>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("client thread");
        }
        let acked = std::mem::take(&mut *self.acked.lock().expect("lock"));
        let refused = *self.refused.lock().expect("lock");
        (acked, refused)
    }
}

/// Every object in the sinks, by key (relative to the bucket), checked for equal bytes.
fn objects(sinks: &[&S3]) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for s in sinks {
        let mut stack = vec![s.root.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).expect("read sink").flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.to_string_lossy().ends_with(".ndjson.zst") {
                    let rel = p
                        .strip_prefix(&s.root)
                        .expect("rel")
                        .to_string_lossy()
                        .to_string();
                    // Drop the bucket: the same key may be in both buckets.
                    let key = rel
                        .split_once('/')
                        .map(|(_, k)| k.to_string())
                        .unwrap_or(rel);
                    let bytes = std::fs::read(&p).expect("object");
                    if let Some(prev) = out.get(&key) {
                        assert_eq!(prev, &bytes, "{key} differs between sinks");
                    }
                    out.insert(key, bytes);
                }
            }
        }
    }
    out
}

/// Proves the rule: every acked id stored, none twice. Returns (objects, events stored).
/// A missing id is reported with the objects each sink holds (key and events) and the
/// agents' last log lines, to tell a batch never shipped from one overwritten.
fn check(c: &Cluster, sinks: &[&S3], acked: &BTreeSet<String>) -> (usize, usize) {
    let objs = objects(sinks);
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut total = 0;
    let mut per_object: Vec<(String, usize)> = Vec::new();
    for (key, bytes) in &objs {
        assert!(
            key.starts_with("raw/clicks/") && key.ends_with(".ndjson.zst"),
            "key {key} is not of the contract's shape"
        );
        let text = zstd::decode_all(bytes.as_slice()).expect("zstd object");
        let mut in_object = 0;
        for line in String::from_utf8(text).expect("utf-8").lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            let id = v["id"].as_str().expect("id").to_string();
            if let Some(first) = seen.insert(id.clone(), key.clone()) {
                panic!("id {id} stored twice: in {first} and in {key}");
            }
            total += 1;
            in_object += 1;
        }
        per_object.push((key.clone(), in_object));
    }
    let missing: Vec<&String> = acked.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged ids are in no sink, e.g. {:?}\nobjects (key: events): {:?}\n{}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        per_object,
        c.logs()
    );
    (objs.len(), total)
}

/// Waits until no data site holds unshipped events, own or replicated.
fn wait_drained(c: &Cluster, sites: &[&str], limit: Duration) {
    for site in sites {
        c.wait_for(site, limit, "spools drained", |st| {
            st["streams"][0]["spool_events"] == 0
                && st["streams"][0]["replicas"]
                    .as_object()
                    .is_some_and(|m| m.values().all(|v| v == 0))
        });
    }
}

fn gateway_sites(c: &Cluster, order: &[&str]) -> Vec<SocketAddr> {
    order.iter().map(|s| c.api(s)).collect()
}

#[test]
fn kill9_mid_stream_client_fails_over_nothing_lost_nothing_twice() {
    let mut o = Opts::new(7720);
    let tmp = tempfile::tempdir().expect("tmp");
    let east_s3 = S3::start(tmp.path().join("s3-east"), 7740, "east-bucket");
    let west_s3 = S3::start(tmp.path().join("s3-west"), 7741, "west-bucket");
    o.extra = stream_config(&east_s3, &west_s3, "replicated");
    let mut c = Cluster::new(o);
    c.start_all();
    c.wait_healthy();

    let client = Client::start(gateway_sites(&c, &["east", "west"]), "k", 1000);
    std::thread::sleep(Duration::from_secs(2));
    c.kill9("east");
    std::thread::sleep(Duration::from_secs(4));
    let (acked, refused) = client.finish();
    // West ships east's replicated events while east is down.
    c.wait_for(
        "west",
        Duration::from_secs(10),
        "west takes over east's events",
        |st| st["streams"][0]["replicas"]["east"] == 0,
    );
    c.start("east");
    for s in ["east", "west", "witness"] {
        c.wait_for(s, Duration::from_secs(20), "all up again", common::all_up);
    }
    wait_drained(&c, &["east", "west", "witness"], Duration::from_secs(20));
    let (objs, stored) = check(&c, &[&east_s3, &west_s3], &acked);
    println!(
        "kill -9 mid-stream: {} acked, {refused} refusals retried elsewhere, {stored} stored in {objs} objects, none twice",
        acked.len()
    );
    assert!(
        acked.len() >= 3000,
        "too few acks to mean anything: {}",
        acked.len()
    );
}

#[test]
fn a_sink_down_for_30s_ships_to_the_next_and_comes_back() {
    let mut o = Opts::new(7760);
    let tmp = tempfile::tempdir().expect("tmp");
    let mut east_s3 = S3::start(tmp.path().join("s3-east"), 7780, "east-bucket");
    let west_s3 = S3::start(tmp.path().join("s3-west"), 7781, "west-bucket");
    o.extra = stream_config(&east_s3, &west_s3, "local");
    let mut c = Cluster::new(o);
    c.start_all();
    c.wait_healthy();

    let client = Client::start(gateway_sites(&c, &["east", "west"]), "s", 400);
    std::thread::sleep(Duration::from_secs(1));
    east_s3.down();
    let east_url = "s3://east-bucket/raw";
    let west_url = "s3://west-bucket/raw";
    c.wait_for(
        "east",
        Duration::from_secs(10),
        "east ships to west's sink",
        |st| st["streams"][0]["sink"] == west_url,
    );
    // The metrics tell what the status tells.
    let metric = |m: &str, series: &str| {
        common::metric(m, series).unwrap_or_else(|| panic!("no {series}:\n{m}"))
    };
    let sinks_now = |site: &str| {
        let m = c.get(site, "/metrics").expect("metrics");
        let current = |url: &str| {
            metric(
                &m,
                &format!("outlast_relay_sink_current{{stream=\"clicks\",sink=\"{url}\"}}"),
            )
        };
        (current(east_url), current(west_url), m)
    };
    let (east_now, west_now, m) = sinks_now("east");
    assert_eq!((east_now, west_now), (0.0, 1.0), "{m}");
    std::thread::sleep(Duration::from_secs(30));
    east_s3.up();
    let back = c.wait_for(
        "east",
        Duration::from_secs(15),
        "east back on its own sink",
        |st| st["streams"][0]["sink"] == east_url,
    );
    std::thread::sleep(Duration::from_secs(2));
    let (acked, refused) = client.finish();
    wait_drained(&c, &["east", "west", "witness"], Duration::from_secs(20));
    let (objs, stored) = check(&c, &[&east_s3, &west_s3], &acked);
    let (east_now, west_now, m) = sinks_now("east");
    assert_eq!((east_now, west_now), (1.0, 0.0), "{m}");
    for series in [
        "outlast_relay_spool_events{stream=\"clicks\"}",
        "outlast_relay_spool_bytes{stream=\"clicks\"}",
        "outlast_relay_oldest_unshipped_seconds{stream=\"clicks\"}",
    ] {
        assert_eq!(metric(&m, series), 0.0, "east drained: {series}\n{m}");
    }
    let shipped = metric(&m, "outlast_relay_objects_shipped_total{stream=\"clicks\"");
    assert!(shipped > 0.0, "{m}");
    // Every event a data site stored, acknowledged or not (the client's last requests
    // may be answered after it stopped reading), is in exactly one object: no site failed
    // here, so no id was held twice.
    let stored_at = |site: &str| {
        let st = c.status(site).expect("status");
        st["streams"][0]["stored"].as_u64().expect("stored")
    };
    assert_eq!(
        stored_at("east") + stored_at("west"),
        stored as u64,
        "events stored at the sites against events in objects"
    );
    assert_eq!(
        metric(&m, "outlast_relay_conflicts_total{stream=\"clicks\"}"),
        0.0
    );
    let m = c.get("west", "/metrics").expect("metrics");
    let east_copy = "{stream=\"clicks\",origin=\"east\"}";
    assert_eq!(
        metric(&m, &format!("outlast_relay_replica_events{east_copy}")),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, &format!("outlast_relay_taking_over{east_copy}")),
        0.0,
        "{m}"
    );
    println!(
        "sink down 30 s: {} acked ({refused} refusals), {stored} stored in {objs} objects; east back on its own sink {back:?} after it returned",
        acked.len()
    );
    let during = objects(&[&west_s3])
        .keys()
        .filter(|k| k.contains("/east-"))
        .count();
    assert!(
        during > 0,
        "east's events did not go to west's sink while its own was down"
    );
}

#[test]
fn restart_everything_mid_stream() {
    let mut o = Opts::new(7800);
    let tmp = tempfile::tempdir().expect("tmp");
    let east_s3 = S3::start(tmp.path().join("s3-east"), 7820, "east-bucket");
    let west_s3 = S3::start(tmp.path().join("s3-west"), 7821, "west-bucket");
    o.extra = stream_config(&east_s3, &west_s3, "replicated");
    let mut c = Cluster::new(o);
    c.start_all();
    c.wait_healthy();
    let client = Client::start(gateway_sites(&c, &["east", "west"]), "r", 1000);
    std::thread::sleep(Duration::from_secs(2));
    for s in ["east", "west", "witness"] {
        c.kill9(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    c.start_all();
    std::thread::sleep(Duration::from_secs(4));
    let (acked, refused) = client.finish();
    for s in ["east", "west", "witness"] {
        c.wait_for(s, Duration::from_secs(20), "all up again", common::all_up);
    }
    wait_drained(&c, &["east", "west", "witness"], Duration::from_secs(20));
    let (objs, stored) = check(&c, &[&east_s3, &west_s3], &acked);
    println!(
        "restart of everything: {} acked ({refused} refusals), {stored} stored in {objs} objects, none twice",
        acked.len()
    );
    assert!(acked.len() >= 2000, "too few acks: {}", acked.len());
}
