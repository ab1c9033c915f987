//! Drills in local mode, one per fault kind: the report's figures are checked against what
//! was injected. Each drill starts its own three agents (the drill owns the processes) on
//! its own ports.

#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod common;

/// Writes a config (on `base` ports) with a python backend per site, and the scenario.
fn setup(
    dir: &Path,
    base: u16,
    steps: &str,
    extra_expect: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut o = common::Opts::new(base);
    o.dns = true;
    o.extra = r#"
[[streams]]
name = "clicks"
ack = "replicated"
batch_age = "200ms"
[[streams.sinks]]
url = "file://sinks/east"
site = "east"
[[streams.sinks]]
url = "file://sinks/west"
site = "west"
"#
    .to_string();
    let config = dir.join("outlast.toml");
    std::fs::write(
        &config,
        common::config_text(&o, "drill-secret-0123456789abcdef"),
    )
    .expect("config");
    let scenario = dir.join("scenario.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"name = "t{base}"
duration = "12s"
[workload]
service = "db"
rate = 100
stream = "clicks"
event_rate = 200
{steps}
[expect]
writes_lost = "== 0"
writes_duplicated = "== 0"
{extra_expect}
"#
        ),
    )
    .expect("scenario");
    (config, scenario)
}

/// Runs a drill with python backends on base+10/+11; returns the report and the exit code.
fn drill(base: u16, steps: &str, extra_expect: &str) -> (Value, i32) {
    let dir = tempfile::tempdir().expect("tmp");
    let (config, scenario) = setup(dir.path(), base, steps, extra_expect);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/backend.py");
    let mut backends: Vec<std::process::Child> = [("east", base + 10), ("west", base + 11)]
        .iter()
        .map(|(site, port)| {
            Command::new("python3")
                .args([script, &port.to_string(), site])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("backend")
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
    for b in &mut backends {
        let _ = b.kill();
        let _ = b.wait();
    }
    let text = std::fs::read_to_string(report.join("report.json")).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let html = std::fs::read_to_string(report.join("index.html")).expect("index.html");
    assert!(
        html.contains("<svg") && html.contains("polyline"),
        "the page draws the timeline"
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    (
        serde_json::from_str(&text).expect("report json"),
        out.status.code().unwrap_or(-1),
    )
}

fn rto(r: &Value) -> u64 {
    r["rto_ms"].as_u64().expect("rto_ms")
}

#[test]
fn kill_of_the_primary_gives_an_rto_near_detection_and_loses_nothing() {
    let (r, code) = drill(
        7840,
        "[[steps]]\nat = \"3s\"\nfault = \"kill\"\nsite = \"east\"\n",
        "rto_ms = \"< 3000\"",
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["faults"][0]["what"], "kill east");
    assert!(rto(&r) > 0, "a kill of the primary is not free: {r}");
    assert!(rto(&r) < 3000, "{r}");
    assert_eq!(r["writes"]["lost"], 0);
    assert_eq!(r["writes"]["duplicated"], 0);
    assert!(r["writes"]["acked"].as_u64().unwrap_or(0) > 1500, "{r}");
}

#[test]
fn a_4s_cut_gives_an_rto_near_detection_not_zero_and_not_the_whole_drill() {
    // Cut east (the primary) from west and the witness for 4 s, then heal.
    let (r, code) = drill(
        7860,
        "[[steps]]\nat = \"3s\"\nfault = \"partition\"\nsites = [\"east\"]\nfrom = [\"west\", \"witness\"]\n[[steps]]\nat = \"7s\"\nfault = \"heal\"\n",
        "",
    );
    assert_eq!(code, 0, "{r}");
    let rto = rto(&r);
    println!("4 s cut: RTO {rto} ms");
    assert!(
        rto > 0 && rto < 4000,
        "near detection: not zero, not the whole cut: {r}"
    );
    assert_eq!(r["writes"]["lost"], 0);
}

#[test]
fn stop_and_cont_of_the_primary_then_restart_and_failback() {
    let (r, code) = drill(
        7880,
        "[[steps]]\nat = \"2s\"\nfault = \"stop\"\nsite = \"east\"\n[[steps]]\nat = \"5s\"\nfault = \"cont\"\nsite = \"east\"\n",
        "",
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["faults"].as_array().map(|a| a.len()), Some(2));
    let rto = rto(&r);
    println!("SIGSTOP 3 s: RTO {rto} ms");
    assert!(rto > 0 && rto < 3500, "{r}");
}

#[test]
fn restart_of_the_primary_measures_failback() {
    let (r, code) = drill(
        7900,
        "[[steps]]\nat = \"2s\"\nfault = \"kill\"\nsite = \"east\"\n[[steps]]\nat = \"5s\"\nfault = \"restart\"\nsite = \"east\"\n",
        "failback_ms = \"< 7000\"",
    );
    assert_eq!(code, 0, "{r}");
    let fb = r["failback_ms"].as_u64().expect("failback measured");
    println!("failback after restart: {fb} ms");
    // failback_after is 2 s in the test config: it cannot be faster.
    assert!(fb >= 2000, "{r}");
}

#[test]
fn a_bad_scenario_is_refused_with_line_and_column() {
    let dir = tempfile::tempdir().expect("tmp");
    let (config, scenario) = setup(
        dir.path(),
        7920,
        "[[steps]]\nat = \"3s\"\nfault = \"explode\"\nsite = \"mars\"\n",
        "",
    );
    let out = Command::new(common::bin())
        .args(["drill", "--config"])
        .arg(&config)
        .arg("--scenario")
        .arg(&scenario)
        .output()
        .expect("outlast drill");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("scenario.toml:10:9: fault \"explode\" is not known"),
        "{err}"
    );
    // Nothing was started: the ports are free.
    assert!(std::net::TcpListener::bind("127.0.0.11:7921").is_ok());
}
