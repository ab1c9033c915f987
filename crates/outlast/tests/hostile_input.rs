//! Hostile input to the parsers that take text from outside (stable Rust has no
//! cargo-fuzz here, so proptest mutates real inputs and makes random ones): the config
//! parser, the drill scenario parser, NDJSON ingest and Raft RPC decoding. Each: no panic,
//! done within a bound, and a refusal that says where and why. PROPTEST_CASES sets the
//! count (256 by default; `scripts/fuzz` runs long ones). The replication frame decoder,
//! the gateway's response head parser and DNS packets have theirs beside their code.

#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use proptest::prelude::*;

const CONFIG: &str = r#"[cluster]
name = "shop"
secret = "s3cret-0123456789"

[timing]
probe_interval = "100ms"
grace = "500ms"
lease = "1s"

[[sites]]
name = "east"
address = "127.0.0.11"
peer_port = 7400
api_port = 7401

[[sites]]
name = "west"
address = "127.0.0.12"
peer_port = 7400
api_port = 7401

[[sites]]
name = "witness"
address = "127.0.0.13"
peer_port = 7400
api_port = 7401
witness = true

[dns]
zone = "shop.test."
port = 7453

[tls]
peer = "secret"

[[services]]
name = "web"
protocol = "http"
primary = "east"
dns_name = "www"
port = 7480
check = { kind = "http", path = "/", interval = "100ms", timeout = "100ms" }
[services.backends]
east = ["127.0.0.1:7411"]
west = ["127.0.0.1:7412"]

[[streams]]
name = "clicks"
ack = "replicated"
[[streams.sinks]]
url = "file://sinks/east"
site = "east"
"#;

const SCENARIO: &str = r#"name = "loss"
duration = "20s"
[workload]
service = "web"
rate = 100
stream = "clicks"
event_rate = 50
[[steps]]
at = "5s"
fault = "kill"
site = "east"
[[steps]]
at = "8s"
fault = "partition"
sites = ["west", "witness"]
[expect]
rto_ms = "< 3000"
"#;

/// Pieces a hostile or careless writer puts in TOML.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"".to_string()),
        Just("[".to_string()),
        Just("]]".to_string()),
        Just("=".to_string()),
        Just("\n[[sites]]\n".to_string()),
        Just("{".to_string()),
        Just("#".to_string()),
        Just("\n".to_string()),
        Just("99999999999999999999".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("\"\u{202e}é\u{0}\"".to_string()),
        "[a-z_]{1,12}",
        ".{0,8}",
    ]
}

/// `text` with up to four edits: a piece inserted, a span deleted, or both.
fn mutated(text: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec((any::<usize>(), 0usize..40, piece()), 1..4).prop_map(move |edits| {
        let mut t = text.to_string();
        for (at, del, ins) in edits {
            let mut i = at % (t.len() + 1);
            while !t.is_char_boundary(i) {
                i -= 1;
            }
            let mut j = (i + del).min(t.len());
            while !t.is_char_boundary(j) {
                j -= 1;
            }
            t.replace_range(i..j, &ins);
        }
        t
    })
}

fn load(
    dir: &std::path::Path,
    text: &str,
) -> Result<outlast_core::config::Config, outlast_core::config::ConfigError> {
    let path = dir.join("outlast.toml");
    std::fs::write(&path, text).expect("write");
    outlast_core::config::Config::load(&path)
}

proptest! {
    #[test]
    fn hostile_config_is_refused_with_file_line_col_never_a_panic(text in mutated(CONFIG)) {
        let dir = tempfile::tempdir().expect("dir");
        let start = Instant::now();
        let r = load(dir.path(), &text);
        prop_assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
        if let Err(outlast_core::config::ConfigError::Invalid(problems)) = r {
            prop_assert!(!problems.is_empty());
            for p in problems {
                let line = p.to_string();
                // file:line:col: what; fix
                let mut parts = line.splitn(4, ':');
                let (_, l, c) = (parts.next(), parts.next(), parts.next());
                prop_assert!(
                    l.and_then(|v| v.parse::<usize>().ok()).is_some()
                        && c.and_then(|v| v.parse::<usize>().ok()).is_some(),
                    "no line:col in {line}"
                );
            }
        }
    }

    #[test]
    fn hostile_scenario_is_refused_with_a_reason_never_a_panic(text in mutated(SCENARIO)) {
        let dir = tempfile::tempdir().expect("dir");
        let config = load(dir.path(), CONFIG).expect("the base config is valid");
        let start = Instant::now();
        let r = outlast_drill::Scenario::parse(&dir.path().join("s.toml"), &text, &config);
        prop_assert!(start.elapsed() < Duration::from_secs(2));
        if let Err(why) = r {
            prop_assert!(!why.is_empty() && why.iter().all(|w| !w.trim().is_empty()));
        }
    }

    #[test]
    fn hostile_ndjson_is_stored_or_refused_never_a_panic(
        lines in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                ".{0,200}".prop_map(|s| s.into_bytes()),
                "\\{(\"[a-z]{1,3}\":(\"[^\"]{0,20}\"|[0-9]{1,5}|\\[|\\{|null),?){0,6}\\}?"
                    .prop_map(|s| s.into_bytes()),
            ],
            0..20,
        ),
    ) {
        let body = lines.join(&b'\n');
        let mut n = 0u64;
        let start = Instant::now();
        let r = outlast_relay::event::parse_ndjson(&body, 256, || { n += 1; format!("id-{n}") });
        prop_assert!(start.elapsed() < Duration::from_secs(1));
        match r {
            Ok(events) => {
                for e in events {
                    prop_assert!(e.line.len() <= 256 + 64, "an event over the limit was taken");
                    prop_assert!(std::str::from_utf8(&e.line).is_ok());
                }
            }
            Err(bad) => prop_assert!(!bad.to_string().is_empty()),
        }
    }

    #[test]
    fn hostile_raft_rpcs_are_refused_never_a_panic(
        text in mutated(r#"{"vote":{"leader_id":{"term":3,"node_id":1},"committed":true},"prev_log_id":{"leader_id":{"term":3,"node_id":1},"index":7},"entries":[],"leader_commit":{"leader_id":{"term":3,"node_id":1},"index":7}}"#),
        random in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        use outlast_control::store::{NodeId, TypeConfig};
        for body in [text.as_bytes(), &random[..]] {
            let _ = serde_json::from_slice::<openraft::raft::AppendEntriesRequest<TypeConfig>>(body);
            let _ = serde_json::from_slice::<openraft::raft::VoteRequest<NodeId>>(body);
            let _ = serde_json::from_slice::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(body);
            let _ = serde_json::from_slice::<outlast_control::Report>(body);
            let _ = serde_json::from_slice::<outlast_control::Request>(body);
        }
    }
}
