//! `outlast drill`, `outlast demo` and the demo's click-tracking backend.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// The events line: what the stream workload saw, or that there was none to see (an RPO
/// of 0 ms would claim a loss measured that never was).
fn events_line(r: &outlast_drill::Report) -> String {
    let w = &r.writes;
    if w.acked == 0 && w.lost == 0 && w.duplicated == 0 && w.refused == 0 {
        return "none sent (the scenario has no stream workload)".into();
    }
    format!(
        "{} acked, {} lost, {} duplicated (RPO {} ms)",
        w.acked, w.lost, w.duplicated, r.rpo_ms
    )
}

fn summary(r: &outlast_drill::Report, dir: &Path) -> String {
    let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
    let mut s = format!(
        "drill {}: {}\n  downtime (RTO)   {}\n  requests         {} sent, {} served within {} ms, {} late, {} failed; longest wait {} ms\n  events           {}\n  failback         {}\n",
        r.scenario,
        if r.passed { "PASSED" } else { "FAILED" },
        ms(r.rto_ms),
        r.requests.sent,
        r.requests.ok,
        r.ok_within_ms,
        r.requests.late,
        r.requests.failed,
        r.longest_wait_ms,
        events_line(r),
        ms(r.failback_ms),
    );
    if let Some(db) = &r.db {
        s.push_str(&format!(
            "  database         {} commits acked, {} lost; write downtime {}; {}\n",
            db.acked,
            db.lost
                .map(|l| l.to_string())
                .unwrap_or_else(|| "unknown".into()),
            ms(db.rto_ms),
            match db.diverged {
                0 => "no diverged history".to_string(),
                1 => "1 diverged history kept".to_string(),
                n => format!("{n} diverged histories kept"),
            }
        ));
    }
    for f in r.faults.iter().filter(|f| f.disrupts) {
        s.push_str(&format!(
            "  fault            {} at {:.1} s: downtime {}{}\n",
            f.what,
            f.at_ms as f64 / 1000.0,
            ms(f.rto_ms),
            f.db_rto_ms
                .map(|d| format!(", write downtime {d} ms"))
                .unwrap_or_default()
        ));
    }
    for d in &r.dips {
        s.push_str(&format!(
            "  below 99%        {} {:.2}-{:.2} s (worst {}%, {} not served): {}\n",
            d.of,
            d.from_ms as f64 / 1000.0,
            d.to_ms as f64 / 1000.0,
            d.worst_pct,
            d.not_served,
            d.cause
        ));
    }
    for row in outlast_drill::failover_rows(&r.phases) {
        let first = row[0];
        s.push_str(&format!(
            "  failover         {} {} -> {}:",
            first.what,
            first.from.as_deref().unwrap_or("none"),
            first.to
        ));
        for p in &row {
            s.push_str(&format!(
                " {} +{} ms",
                p.name,
                p.at_ms.saturating_sub(first.at_ms)
            ));
        }
        s.push('\n');
    }
    for v in &r.expectations {
        s.push_str(&format!(
            "  expect {} {} {}: {} ({})\n",
            v.metric,
            v.op,
            v.value,
            if v.pass { "pass" } else { "FAIL" },
            v.actual
                .map(|a| a.to_string())
                .unwrap_or_else(|| "no value".into())
        ));
    }
    s.push_str(&format!(
        "  report           {}\n",
        dir.join("index.html").display()
    ));
    s
}

fn run_drill(opts: outlast_drill::DrillOptions) -> i32 {
    let rt = match rt() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    match rt.block_on(outlast_drill::run(&opts)) {
        Ok((report, dir)) => {
            print!("{}", summary(&report, &dir));
            i32::from(!report.passed)
        }
        // A bad scenario (or config): every problem, one a line, and exit 64 as `check`.
        Err(outlast_drill::DrillError::Invalid(problems)) => {
            eprintln!("{problems}");
            64
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

pub fn drill_command(
    config: PathBuf,
    scenario: PathBuf,
    report: Option<PathBuf>,
    attach: bool,
) -> i32 {
    let bin = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot find the outlast executable: {e}");
            return 1;
        }
    };
    if let Err(code) = crate::commands::load_config(&config) {
        return code;
    }
    run_drill(outlast_drill::DrillOptions {
        config,
        scenario,
        report,
        bin,
        progress: true,
        attach,
        history: None,
    })
}

const DEMO_CONFIG: &str = r#"# Written by `outlast demo`: three sites on this machine (127.0.0.11-13).
[cluster]
name = "demo"
secret = "SECRET"

[timing]
probe_interval = "100ms"
fall = 3
rise = 3
grace = "500ms"
lease = "1s"
failback_after = "3s"
# The sites share one machine: round trips are microseconds, Raft's timeouts can be short.
max_rtt = "50ms"

[[sites]]
name = "east"
address = "127.0.0.11"
peer_port = 7900
api_port = 7901

[[sites]]
name = "west"
address = "127.0.0.12"
peer_port = 7900
api_port = 7901

[[sites]]
name = "witness"
address = "127.0.0.13"
peer_port = 7900
api_port = 7901
witness = true

[dns]
zone = "demo.test."
port = 7953
ttl = 1

[[services]]
name = "web"
protocol = "http"
mode = "primary-standby"
primary = "east"
failback = "auto"
dns_name = "www"
port = 7980
check = { kind = "http", path = "/healthz", interval = "100ms", timeout = "100ms" }
[services.backends]
east = ["127.0.0.1:7911"]
west = ["127.0.0.1:7912"]

[[streams]]
name = "clicks"
ack = "replicated"
batch_age = "250ms"
[[streams.sinks]]
url = "file://sinks/east"
site = "east"
[[streams.sinks]]
url = "file://sinks/west"
site = "west"
"#;

const DEMO_SCENARIO: &str = r#"# The standard region-loss drill: steady load, lose east, bring it back, fail back.
name = "region-loss"
duration = "26s"
[workload]
service = "web"
rate = 100
stream = "clicks"
event_rate = 200
[[steps]]
at = "5s"
fault = "kill"
site = "east"
[[steps]]
at = "12s"
fault = "restart"
site = "east"
[expect]
rto_ms = "< 3000"
writes_lost = "== 0"
writes_duplicated = "== 0"
"#;

/// With PostgreSQL on the machine: a dataset the agents run (east primary, west a sync
/// standby) and its service.
const DEMO_DATASET: &str = r#"
[[datasets]]
name = "orders"
port = 7932
replication = "sync"
[datasets.members]
east = { data_dir = "east/pg" }
west = { data_dir = "west/pg" }
[datasets.postgres]
password = "PASSWORD"
settings = { shared_buffers = "16MB" }

[[services]]
name = "orders-db"
dataset = "orders"
port = 7933
"#;

/// The scenario's lines for the dataset: its workload and expectations.
const DEMO_DATASET_WORKLOAD: &str = "dataset = \"orders\"\nwrite_rate = 200\n";
const DEMO_DATASET_EXPECT: &str = "db_lost = \"== 0\"\ndb_rto_ms = \"< 3000\"\n";

/// The demo's dataset servers: stopped (fast) when dropped, since a server outlives its
/// agent by design.
struct Servers(Vec<PathBuf>);

impl Drop for Servers {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = outlast_db::signal_postmaster(dir, "-INT");
        }
    }
}

/// The demo's backends, stopped by pid when dropped.
struct Backends(Vec<Child>);

impl Drop for Backends {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn demo_command(dir: Option<PathBuf>) -> i32 {
    match demo(dir) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn demo(dir: Option<PathBuf>) -> anyhow::Result<i32> {
    let bin = std::env::current_exe().context("cannot find the outlast executable")?;
    // Without --dir, every run gets its own folder under ./outlast-demo and the drills are
    // kept in one place beside them, so the second run shows a trend of two.
    let (dir, history) = match dir {
        Some(d) => (d, None),
        None => {
            let home = std::path::absolute("outlast-demo")
                .unwrap_or_else(|_| PathBuf::from("outlast-demo"));
            keep_latest_runs(&home, 3);
            let stamp = outlast_core::clock::unix_ms();
            (home.join(format!("run-{stamp}")), Some(home.join("drills")))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let secret = format!("demo-{:032x}", rand::random::<u128>());
    let config = dir.join("outlast.toml");
    let postgres = outlast_db::find_bin_dir().filter(|b| b.join("initdb").exists());
    let mut config_text = DEMO_CONFIG.replace("SECRET", &secret);
    let mut scenario_text = DEMO_SCENARIO.to_string();
    if postgres.is_some() {
        let password = format!("demo-{:016x}", rand::random::<u64>());
        config_text.push_str(&DEMO_DATASET.replace("PASSWORD", &password));
        scenario_text = scenario_text
            .replace(
                "event_rate = 200\n",
                &format!("event_rate = 200\n{DEMO_DATASET_WORKLOAD}"),
            )
            .replace(
                "writes_duplicated = \"== 0\"\n",
                &format!("writes_duplicated = \"== 0\"\n{DEMO_DATASET_EXPECT}"),
            );
    }
    std::fs::write(&config, config_text)?;
    let scenario = dir.join("region-loss.toml");
    std::fs::write(&scenario, scenario_text)?;
    println!("outlast demo in {}", dir.display());
    println!("  three sites: east 127.0.0.11, west 127.0.0.12, witness 127.0.0.13");
    println!("  service web (primary east) at www.demo.test:7980, clicks stream to file sinks");
    let _servers = match &postgres {
        Some(bin) => {
            println!(
                "  dataset orders: PostgreSQL ({}) on east and west :7932, sync; its service orders-db at :7933; 200 commits/s",
                bin.display()
            );
            Servers(vec![dir.join("east/pg"), dir.join("west/pg")])
        }
        None => {
            println!("  no PostgreSQL on this machine: the demo runs without a database (apt-get install postgresql adds one)");
            Servers(Vec::new())
        }
    };
    let mut backends = Backends(Vec::new());
    for (site, port, api) in [("east", 7911, "127.0.0.11"), ("west", 7912, "127.0.0.12")] {
        let log = std::fs::File::create(dir.join(format!("backend-{site}.log")))?;
        let child = Command::new(&bin)
            .args(["demo-backend", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--relay", &format!("http://{api}:7901"), "--site", site])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start a demo backend")?;
        backends.0.push(child);
    }
    println!("  running the region-loss drill: steady load, kill east at 5 s, restart it at 12 s");
    let code = run_drill(outlast_drill::DrillOptions {
        config,
        scenario,
        report: Some(dir.join("report")),
        bin,
        progress: true,
        attach: false,
        history: history.clone(),
    });
    drop(backends);
    println!("stopped everything the demo started");
    if let Some(h) = history {
        println!(
            "drills are kept in {} (run the demo again: its report shows the trend)",
            h.display()
        );
    }
    Ok(code)
}

/// Removes all but the `keep - 1` newest `run-*` folders under `home` (their agents' data
/// and sinks), so repeated demos do not fill the disk; the drills' reports stay.
fn keep_latest_runs(home: &Path, keep: usize) {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(home)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("run-"))
        })
        .collect();
    runs.sort();
    let excess = runs.len().saturating_sub(keep.saturating_sub(1));
    for old in runs.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_dir_all(&old) {
            eprintln!("warning: cannot remove {}: {e}", old.display());
        }
    }
}

#[derive(Clone)]
struct Backend {
    http: reqwest::Client,
    relay: String,
    site: String,
    boot: u64,
}

/// A click: record it through the site's relay, then redirect to the landing page.
async fn click(State(b): State<Backend>, UrlPath(id): UrlPath<String>) -> Response {
    let event = serde_json::json!({
        "id": format!("click-{}-{id}", b.boot),
        "click": id,
        "site": b.site,
    });
    let sent = b
        .http
        .post(format!("{}/v1/streams/clicks/events", b.relay))
        .body(format!("{event}\n"))
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => (
            StatusCode::FOUND,
            [(
                header::LOCATION,
                format!("https://shop.test/landing?c={id}"),
            )],
            "",
        )
            .into_response(),
        Ok(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the relay answered {}", r.status()),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the relay is unreachable: {e}"),
        )
            .into_response(),
    }
}

pub async fn backend(listen: SocketAddr, relay: String, site: String) -> anyhow::Result<()> {
    let b = Backend {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(6))
            .build()?,
        relay: relay.trim_end_matches('/').to_string(),
        site,
        boot: crate::agent::peer::unix_ms(),
    };
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/c/:id", get(click))
        .with_state(b);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}
