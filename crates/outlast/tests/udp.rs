//! UDP services through real agents, with real UDP backends (python processes) and real
//! clients (our own sockets, and dig): a session keeps its backend, a killed backend's
//! sessions move without a lost request, a site with no backend left hops to another
//! site's gateway, idle and answered sessions end, and a drill times the loss of a site
//! for a UDP service.

// Synchronous test code on plain threads.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/udp_backend.py");

/// A UDP backend process, killed (SIGKILL) when dropped or asked.
struct Backend(Option<Child>);

impl Backend {
    fn start(port: u16, tag: &str, mode: &str) -> Backend {
        let child = Command::new("/usr/bin/python3")
            .args([SCRIPT, &port.to_string(), tag, mode])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("udp backend");
        Backend(Some(child))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The voip service (echo, session affinity) and a DNS-like one (one answer per
/// request, checked with a real SOA query).
fn services(b: u16) -> String {
    format!(
        r#"
[[services]]
name = "voip"
protocol = "udp"
dns_name = "voip"
port = {voip}
idle_timeout = "1s"
check = {{ kind = "udp", send = "PING", receive = "", interval = "100ms", timeout = "100ms" }}
[services.backends]
east = ["127.0.0.1:{e1}", "127.0.0.1:{e2}"]
west = ["127.0.0.1:{w1}"]

[[services]]
name = "resolver"
protocol = "udp"
port = {dns}
responses = 1
check = {{ kind = "udp", send_hex = "abcd 0000 0001 0000 0000 0000 0765 7861 6d70 6c65 0363 6f6d 0000 0600 01", receive_hex = "abcd 8400", interval = "100ms", timeout = "100ms" }}
[services.backends]
east = ["127.0.0.1:{de}"]
west = ["127.0.0.1:{dw}"]
"#,
        voip = b + 4,
        dns = b + 5,
        e1 = b + 20,
        e2 = b + 21,
        w1 = b + 22,
        de = b + 23,
        dw = b + 24,
    )
}

fn service<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or(&Value::Null)
}

fn client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").expect("client");
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    c
}

/// Sends `msg` until its echo comes back (up to 5 tries, 200 ms apart, as a SIP client
/// retransmits); the tag of the backend that answered, and how many tries it took.
fn ask(c: &UdpSocket, to: SocketAddr, msg: &str) -> Option<(String, u32)> {
    let mut buf = [0u8; 2048];
    for attempt in 1..=5 {
        c.send_to(msg.as_bytes(), to).ok()?;
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            let Ok((n, _)) = c.recv_from(&mut buf) else {
                break;
            };
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Some((tag, body)) = text.split_once(':') {
                if body == msg {
                    return Some((tag.to_string(), attempt));
                }
            }
        }
    }
    None
}

#[test]
fn udp_sessions_keep_their_backend_move_when_it_dies_hop_when_a_site_has_none_and_end() {
    let b = 10_900;
    let mut o = Opts::new(b);
    o.extra = services(b);
    let mut c = Cluster::new(o);
    let mut e1 = Backend::start(b + 20, "E1", "echo");
    let mut e2 = Backend::start(b + 21, "E2", "echo");
    let _w1 = Backend::start(b + 22, "W1", "echo");
    let _de = Backend::start(b + 23, "DE", "dns");
    let _dw = Backend::start(b + 24, "DW", "dns");
    c.start_all();
    c.wait_healthy();
    for site in ["east", "west"] {
        c.wait_for(site, Duration::from_secs(10), "UDP backends up", |st| {
            service(st, "voip")["local_health"] == "up"
                && service(st, "resolver")["local_health"] == "up"
        });
    }
    let east: SocketAddr = format!("127.0.0.11:{}", b + 4).parse().expect("addr");

    // Affinity: one client, 1,000 datagrams, one backend.
    let c1 = client();
    let (first, _) = ask(&c1, east, "hello").expect("answered");
    for i in 0..1000 {
        let (tag, _) = ask(&c1, east, &format!("a{i}")).expect("answered");
        assert_eq!(tag, first, "datagram {i} of one session went elsewhere");
    }
    println!("1000 datagrams of one session, all answered by {first}");

    // A stream from a second client; its backend is killed in the middle.
    let c2 = client();
    let (mine, _) = ask(&c2, east, "start").expect("answered");
    let (mut lost, mut retried, mut after) = (0, 0, Vec::new());
    let killed_at = 200;
    let mut moved_in = None;
    let t = Instant::now();
    for i in 0..600 {
        if i == killed_at {
            if mine == "E1" {
                e1.kill();
            } else {
                e2.kill();
            }
        }
        match ask(&c2, east, &format!("s{i}")) {
            Some((tag, tries)) => {
                if tries > 1 {
                    retried += 1;
                }
                if i >= killed_at {
                    after.push(tag.clone());
                    if tag != mine && moved_in.is_none() {
                        moved_in = Some(i - killed_at);
                    }
                }
            }
            None => lost += 1,
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    println!(
        "stream of 600 in {:?}: lost {lost}, answered only after a retry {retried}, moved off {mine} at datagram {:?} after the kill",
        t.elapsed(),
        moved_in
    );
    assert_eq!(lost, 0, "no datagram of the stream went unanswered");
    assert!(
        after.iter().all(|t| *t != mine),
        "nothing answered by the killed backend"
    );
    let st = c.status("east").expect("status");
    let udp = &service(&st, "voip")["udp"];
    println!("east voip gateway: {udp}");
    assert!(udp["sessions_moved"].as_u64().unwrap_or(0) >= 1, "{udp}");

    // East loses its last voip backend: datagrams to east hop to west's gateway.
    let survivor = if mine == "E1" { &mut e2 } else { &mut e1 };
    survivor.kill();
    let c3 = client();
    let t = Instant::now();
    let mut tags = Vec::new();
    for i in 0..100 {
        let (tag, _) = ask(&c3, east, &format!("h{i}")).expect("answered by another site");
        tags.push(tag);
    }
    println!("with no backend at east: 100 requests in {:?}", t.elapsed());
    assert!(tags.iter().all(|t| t == "W1"), "{tags:?}");

    // A DNS-like service through the gateway, asked by dig: each answered request ends
    // its session.
    let out = Command::new("dig")
        .args([
            "@127.0.0.11",
            "-p",
            &(b + 5).to_string(),
            "example.com",
            "SOA",
            "+tries=1",
            "+time=2",
        ])
        .output()
        .expect("dig");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status: NOERROR"), "{text}");
    assert!(text.contains("flags: qr aa"), "{text}");

    // Idle voip sessions end after idle_timeout (1s); the answered resolver session at once.
    let waited = c.wait_for("east", Duration::from_secs(5), "sessions end", |st| {
        service(st, "voip")["udp"]["sessions_open"] == 0
            && service(st, "resolver")["udp"]["sessions_open"] == 0
            && service(st, "resolver")["udp"]["sessions_opened"]
                .as_u64()
                .unwrap_or(0)
                >= 1
    });
    println!("every session ended {waited:?} after the last datagram");
}

#[test]
fn a_drill_with_a_udp_service_reports_its_rto() {
    let b = 11_000;
    let dir = tempfile::tempdir().expect("tmp");
    let mut o = Opts::new(b);
    o.dns = true;
    o.extra = services(b);
    let config = dir.path().join("outlast.toml");
    common::write_config(
        &config,
        &common::config_text(&o, "udp-drill-0123456789abcdef"),
    );
    let scenario = dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        r#"name = "udp"
duration = "10s"
[workload]
service = "voip"
rate = 100
[[steps]]
at = "3s"
fault = "kill"
site = "east"
[expect]
rto_ms = "< 5000"
"#,
    )
    .expect("scenario");
    let _backends: Vec<Backend> = [
        (b + 10, "east", "http"),
        (b + 11, "west", "http"),
        (b + 20, "E1", "echo"),
        (b + 21, "E2", "echo"),
        (b + 22, "W1", "echo"),
        (b + 23, "DE", "dns"),
        (b + 24, "DW", "dns"),
    ]
    .into_iter()
    .map(|(port, tag, mode)| {
        if mode == "http" {
            Backend(Some(common::http_backend(port, tag)))
        } else {
            Backend::start(port, tag, mode)
        }
    })
    .collect();
    let report = dir.path().join("report");
    let out = Command::new(common::bin())
        .args(["drill", "--config"])
        .arg(&config)
        .arg("--scenario")
        .arg(&scenario)
        .arg("--report")
        .arg(&report)
        .output()
        .expect("outlast drill");
    let text = std::fs::read_to_string(report.join("report.json")).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let r: Value = serde_json::from_str(&text).expect("report");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let rto = r["rto_ms"].as_u64().expect("rto_ms");
    println!("UDP service, loss of east: rto_ms {rto}");
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert!(rto > 0 && rto < 5000, "{r}");
}
