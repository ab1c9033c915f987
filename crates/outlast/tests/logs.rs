//! What an agent writes to its log and how the API guards what it should: the log that
//! operators and their shippers read (no colour codes when redirected, JSON on request, no
//! ERROR for the ordinary), and the token on the fault list and, when asked, on ingest.

#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Cluster, Opts};

/// Found by trying the project as a new user: a redirected agent log was full of ANSI
/// colour codes, and a peer's ordinary restart filled it with ERROR lines from Raft.
#[test]
fn a_redirected_log_is_plain_and_a_peer_restart_is_no_error() {
    let mut c = Cluster::new(Opts::new(8060));
    c.start_all();
    c.wait_healthy();
    c.kill9("west");
    std::thread::sleep(Duration::from_secs(2));
    c.start("west");
    c.wait_healthy();
    std::thread::sleep(Duration::from_secs(1));
    for site in ["east", "witness", "west"] {
        let log = std::fs::read_to_string(c.log_path(site)).expect("log");
        assert!(
            !log.contains('\u{1b}'),
            "{site}'s log has escape codes:\n{log}"
        );
        let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(
            errors.is_empty(),
            "{site}: ERROR for an ordinary restart:\n{}",
            errors.join("\n")
        );
    }
}

/// Issue 38: every start warned of routine things (the file limit, links "cut" while the
/// peers came up, Raft's election chatter). A healthy start logs no WARN: one is kept for
/// what a person must act on.
#[test]
fn a_healthy_start_logs_no_warning() {
    let mut c = Cluster::new(Opts::new(11160));
    c.start_all();
    c.wait_healthy();
    std::thread::sleep(Duration::from_millis(1500));
    for site in ["east", "west", "witness"] {
        let log = std::fs::read_to_string(c.log_path(site)).expect("log");
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
        assert!(
            warnings.is_empty(),
            "{site} warned at a healthy start:\n{}",
            warnings.join("\n")
        );
    }
}

#[test]
fn json_logs_are_one_object_a_line() {
    let mut c = Cluster::new(Opts::new(8080));
    c.start_wrapped("east", &["env", "OUTLAST_LOG_FORMAT=json"]);
    c.start("west");
    c.start("witness");
    c.wait_healthy();
    let log = std::fs::read_to_string(c.log_path("east")).expect("log");
    let mut lines = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines > 3, "{log}");
    assert!(log.contains("agent ready"));
}

/// A request with an optional bearer token: the status code.
fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Found by trying the project as a new user: `GET /v1/faults` answered 200 without the
/// token the rest of `/v1/faults` wants, and event ingest could not be closed.
#[test]
fn the_fault_list_wants_the_token_and_ingest_can() {
    let sinks = tempfile::tempdir().expect("tmp");
    let mut o = Opts::new(8100);
    o.extra = format!(
        "\n[api]\ntoken = \"t0ken\"\ningest = \"token\"\n\n[[streams]]\nname = \"clicks\"\n[[streams.sinks]]\nurl = \"file://{}\"\n",
        sinks.path().display()
    );
    let mut c = Cluster::new(o);
    c.start_all();
    c.wait_healthy();
    let api = c.api("east");
    assert_eq!(call(api, "GET", "/v1/faults", None, ""), 401);
    assert_eq!(call(api, "GET", "/v1/faults", Some("nope"), ""), 401);
    assert_eq!(call(api, "GET", "/v1/faults", Some("t0ken"), ""), 200);
    let event = "{\"id\":\"a\"}\n";
    assert_eq!(
        call(api, "POST", "/v1/streams/clicks/events", None, event),
        401
    );
    assert_eq!(
        call(
            api,
            "POST",
            "/v1/streams/clicks/events",
            Some("t0ken"),
            event
        ),
        200
    );
    // The status stays readable without a token.
    assert!(c.status("east").is_some());
}
