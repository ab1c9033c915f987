//! Alerts end to end: a real webhook receiver (which refuses the first try of each alert
//! with 503, so the back-off path runs), a real SMTP server, a command, and a webhook that
//! nobody listens on (a failed delivery is logged and counted).

// Synchronous test code on plain threads: there is no async runtime here to block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use serde_json::Value;

#[derive(Debug, Clone)]
struct Delivery {
    key: Option<String>,
    status: u16,
    body: Value,
}

/// Records every POST; answers 503 the first time it sees an Idempotency-Key, 200 after.
fn webhook_receiver(port: u16) -> Arc<Mutex<Vec<Delivery>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind webhook receiver");
    let out = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut headers = BTreeMap::new();
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let key = headers.get("idempotency-key").cloned();
            let mut all = out.lock().expect("lock");
            let first = !all.iter().any(|d: &Delivery| d.key == key);
            let status = if first { 503 } else { 200 };
            all.push(Delivery {
                key,
                status,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            });
            drop(all);
            let mut stream = reader.into_inner();
            let reason = if status == 200 {
                "OK"
            } else {
                "Service Unavailable"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    seen
}

struct Smtp(Child);

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn smtp_server(dir: &std::path::Path, port: u16) -> Smtp {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(dir)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 for the SMTP server");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("smtp ready line");
    assert_eq!(line.trim(), "ready", "SMTP server did not start");
    Smtp(child)
}

fn wait<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {limit:?}");
}

#[test]
fn site_loss_alerts_reach_webhook_mail_and_command_from_a_survivor() {
    let base = 7500;
    let (hook, dead_hook, smtp_port) = (base + 20, base + 21, base + 22);
    let mail_dir = tempfile::tempdir().expect("tempdir");
    let cmd_dir = tempfile::tempdir().expect("tempdir");
    let deliveries = webhook_receiver(hook);
    let _smtp = smtp_server(mail_dir.path(), smtp_port);

    let mut opts = Opts::new(base);
    opts.extra = format!(
        r#"
[[alerts]]
kind = "webhook"
url = "http://127.0.0.1:{hook}/hook"
[[alerts]]
kind = "webhook"
url = "http://127.0.0.1:{dead_hook}/nobody-listens"
[[alerts]]
kind = "smtp"
server = "127.0.0.1:{smtp_port}"
from = "outlast@shop.test"
to = ["oncall@shop.test"]
[[alerts]]
kind = "command"
command = ["sh", "-c", "cat > '{dir}/'\"$OUTLAST_IDEMPOTENCY_KEY\".json"]
"#,
        dir = cmd_dir.path().display()
    );
    let mut c = Cluster::new(opts);
    c.start_all();
    c.wait_healthy();
    c.kill9("east");

    // Webhook: a site-down for east and the primary move, each delivered after a retry.
    let got = wait(Duration::from_secs(15), "webhook deliveries", || {
        let all = deliveries.lock().expect("lock").clone();
        let ok: Vec<Delivery> = all.iter().filter(|d| d.status == 200).cloned().collect();
        let down = ok
            .iter()
            .find(|d| d.body["kind"] == "site-down" && d.body["site"] == "east")?
            .clone();
        let moved = ok
            .iter()
            .find(|d| d.body["kind"] == "primary-moved" && d.body["to"] == "west")?
            .clone();
        Some((all, down, moved))
    });
    let (all, down, moved) = got;
    for d in [&down, &moved] {
        let key = d.key.clone().expect("Idempotency-Key header");
        assert_eq!(Some(key.as_str()), d.body["idempotency_key"].as_str());
        let epoch = d.body["epoch"].as_u64().expect("epoch");
        assert!(
            key.contains(&format!("-{epoch}-")),
            "the key carries the epoch: {key}"
        );
        assert!(
            all.iter().any(|x| x.key == d.key && x.status == 503),
            "first try refused, then retried"
        );
        let sender = d.body["sent_by"].as_str().expect("sent_by");
        assert_ne!(
            sender, "east",
            "an alert about a lost site comes from a survivor"
        );
    }
    let sender = down.body["sent_by"].as_str().expect("sent_by").to_string();
    // In commit order, one at a time per target: the alert committed first is delivered
    // (after its retry) before the other is even tried. That is the site-down when both
    // come in one commit (it is listed first) or it commits first, but the primary can
    // move one commit earlier (seen once in a full run: the move at epoch 1, the site-down
    // at epoch 2), so the order is taken from the epochs.
    let epoch = |d: &Delivery| d.body["epoch"].as_u64().expect("epoch");
    let (first, second) = if epoch(&moved) < epoch(&down) {
        (&moved, &down)
    } else {
        (&down, &moved)
    };
    let delivered_first = all
        .iter()
        .position(|d| d.key == first.key && d.status == 200)
        .expect("first");
    let second_try = all
        .iter()
        .position(|d| d.key == second.key)
        .expect("second");
    assert!(
        delivered_first < second_try,
        "alerts out of commit order: {all:?}"
    );

    // Mail over SMTP, with the idempotency key as Message-ID.
    let key = down.key.clone().expect("key");
    wait(Duration::from_secs(10), "mail about east", || {
        let mut found = false;
        for e in std::fs::read_dir(mail_dir.path()).ok()?.flatten() {
            let text = std::fs::read_to_string(e.path()).ok()?;
            if text.contains("site east is down") && text.contains(&format!("<{key}@outlast>")) {
                assert!(text.contains("X-Envelope-To: oncall@shop.test"));
                found = true;
            }
        }
        found.then_some(())
    });

    // The command got the JSON on stdin and the key in its environment.
    wait(Duration::from_secs(10), "command alert", || {
        let file = cmd_dir.path().join(format!("{key}.json"));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
        (v["kind"] == "site-down" && v["site"] == "east").then_some(())
    });

    // The webhook nobody listens on: given up after its retries, logged and counted.
    wait(Duration::from_secs(20), "failed delivery counted", || {
        let m = c.get(&sender, "/metrics")?;
        m.lines()
            .any(|l| {
                l.starts_with("outlast_alerts_failed_total{channel=\"webhook\"}")
                    && !l.ends_with(" 0")
            })
            .then_some(())
    });
    let log = std::fs::read_to_string(c.log_path(&sender)).expect("log");
    assert!(log.contains("alert not delivered"), "the failure is logged");
}

/// One request as a provider's endpoint got it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Records every request to 127.0.0.1:`port`; answers each path the way its provider does
/// (Slack 200 "ok", PagerDuty 202, Twilio 201, a heartbeat 200).
fn provider(port: u16) -> Arc<Mutex<Vec<Seen>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind provider");
    let out = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut headers = BTreeMap::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let (status, answer) = if path.starts_with("/slack") {
                (200, "ok")
            } else if path.starts_with("/v2/enqueue") {
                (202, r#"{"status":"success","message":"Event processed"}"#)
            } else if path.contains("/Messages.json") {
                (201, r#"{"sid":"SM123","status":"queued"}"#)
            } else {
                (200, "OK")
            };
            out.lock().expect("lock").push(Seen {
                at: Instant::now(),
                path,
                headers,
                body: String::from_utf8_lossy(&body).to_string(),
            });
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    seen
}

#[test]
fn alert_presets_speak_each_providers_request_and_the_heartbeat_follows_the_leader() {
    let base = 10_300;
    let port = base + 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("pd.key");
    std::fs::write(&key_file, "R0UTING0KEY0000000000000000000001\n").expect("write");
    let token_file = dir.path().join("twilio.token");
    std::fs::write(&token_file, "tw-token-1\n").expect("write");
    let seen = provider(port);
    let mut opts = Opts::new(base);
    opts.extra = format!(
        r#"
[[alerts]]
kind = "slack"
url = "http://127.0.0.1:{port}/slack/T000/B000/XXXX"
[[alerts]]
kind = "pagerduty"
url = "http://127.0.0.1:{port}/v2/enqueue"
routing_key_file = "{key}"
[[alerts]]
kind = "twilio"
url = "http://127.0.0.1:{port}"
account_sid = "AC123"
auth_token_file = "{token}"
from = "+15005550006"
to = ["+15551234567"]
[[alerts]]
kind = "heartbeat"
url = "http://127.0.0.1:{port}/beat"
every = "1s"
"#,
        key = key_file.display(),
        token = token_file.display()
    );
    let mut c = Cluster::new(opts);
    c.start_all();
    c.wait_healthy();
    let beats_from = |who: &str, after: Instant| -> usize {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|s| s.path == "/beat" && s.at > after)
            .filter(|s| serde_json::from_str::<Value>(&s.body).is_ok_and(|v| v["sent_by"] == who))
            .count()
    };
    let leader = c.status("west").expect("status")["leader"]
        .as_str()
        .expect("a leader")
        .to_string();
    let t = Instant::now();
    wait(
        Duration::from_secs(10),
        "heartbeats from the leader",
        || (beats_from(&leader, t) >= 2).then_some(()),
    );

    // The leader is lost: its pings stop, the new leader's begin, and the site-down goes
    // out through each preset.
    c.kill9(&leader);
    let killed = Instant::now();
    let new_leader = wait(Duration::from_secs(15), "a new leader", || {
        let site = ["east", "west", "witness"]
            .into_iter()
            .find(|s| *s != leader)?;
        let l = c.status(site)?["leader"].as_str()?.to_string();
        (l != leader).then_some(l)
    });
    wait(
        Duration::from_secs(10),
        "heartbeats from the new leader",
        || (beats_from(&new_leader, killed) >= 2).then_some(()),
    );
    assert_eq!(
        beats_from(&leader, killed + Duration::from_millis(200)),
        0,
        "a dead leader sends no heartbeat"
    );
    let gap = {
        let all = seen.lock().expect("lock");
        let first_new = all
            .iter()
            .filter(|s| s.path == "/beat" && s.at > killed)
            .map(|s| s.at)
            .min()
            .expect("a beat");
        first_new.duration_since(killed)
    };
    println!("heartbeat: {leader} killed, {new_leader} pinged {gap:?} later");

    let find = |pred: &dyn Fn(&Seen) -> bool| -> Option<Seen> {
        seen.lock().expect("lock").iter().find(|s| pred(s)).cloned()
    };
    let down_text = format!("site {leader} is down");
    let slack = wait(Duration::from_secs(15), "slack", || {
        find(&|s| s.path.starts_with("/slack") && s.body.contains(&down_text))
    });
    assert_eq!(slack.path, "/slack/T000/B000/XXXX");
    assert!(
        slack.headers["content-type"].starts_with("application/json"),
        "{slack:?}"
    );
    let v: Value = serde_json::from_str(&slack.body).expect("json");
    assert_eq!(
        v["text"],
        format!("[outlast shop] {down_text}"),
        "Slack's incoming webhook takes {{\"text\"}}: {v}"
    );

    let pd = wait(Duration::from_secs(15), "pagerduty trigger", || {
        find(&|s| s.path == "/v2/enqueue" && s.body.contains(&down_text))
    });
    let v: Value = serde_json::from_str(&pd.body).expect("json");
    assert_eq!(v["routing_key"], "R0UTING0KEY0000000000000000000001");
    assert_eq!(v["event_action"], "trigger");
    assert_eq!(v["dedup_key"], format!("shop-site-{leader}"));
    assert_eq!(v["payload"]["severity"], "critical");
    assert_eq!(v["payload"]["source"], leader.as_str());
    assert_eq!(v["payload"]["class"], "site-down");
    assert!(
        v["payload"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&down_text)),
        "{v}"
    );
    assert!(
        v["payload"]["timestamp"]
            .as_str()
            .is_some_and(|t| t.len() == 24 && t.ends_with('Z') && t.contains('T')),
        "an ISO 8601 timestamp: {v}"
    );

    let sms = wait(Duration::from_secs(15), "twilio", || {
        find(&|s| s.path.contains("/Messages.json") && s.body.contains("is+down"))
    });
    assert_eq!(sms.path, "/2010-04-01/Accounts/AC123/Messages.json");
    assert_eq!(
        sms.headers["authorization"], "Basic QUMxMjM6dHctdG9rZW4tMQ==",
        "HTTP basic auth with the account SID and auth token"
    );
    assert_eq!(
        sms.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert!(
        sms.body.contains("To=%2B15551234567") && sms.body.contains("From=%2B15005550006"),
        "{}",
        sms.body
    );

    // Back: PagerDuty's incident resolves under the same dedup key.
    c.start(&leader);
    let key = format!("\"dedup_key\":\"shop-site-{leader}\"");
    let resolve = wait(Duration::from_secs(30), "pagerduty resolve", || {
        find(&|s| {
            s.path == "/v2/enqueue" && s.body.contains("\"resolve\"") && s.body.contains(&key)
        })
    });
    let v: Value = serde_json::from_str(&resolve.body).expect("json");
    assert_eq!(v["dedup_key"], format!("shop-site-{leader}"), "{v}");
    assert_eq!(v["routing_key"], "R0UTING0KEY0000000000000000000001");
}
