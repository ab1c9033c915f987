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
