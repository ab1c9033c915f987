//! A Redis dataset (`kind = "redis"`) the agents run on 127.0.0.11 (east) and .12 (west),
//! with a witness on .13: a session workload through west's gateway (SET with 2 s
//! timeouts, reconnecting on error) through the loss of east's site (kill -9 of its agent
//! and redis-server), the promotion of west, east's return as a replica (its files kept)
//! and the failback to it by a planned switchover. Skipped (saying so) when redis-server
//! is not installed.

// A test stands outside the agents and times them by the machine's own clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, RedisReaper};
use outlast_db::resp::Conn;
use serde_json::Value;

const PASSWORD: &str = "session-secret-1";

fn dataset(st: &Value) -> &Value {
    &st["datasets"][0]
}

fn member<'a>(st: &'a Value, site: &str) -> &'a Value {
    dataset(st)["members"]
        .as_array()
        .and_then(|m| m.iter().find(|x| x["site"] == site))
        .unwrap_or(&Value::Null)
}

/// Sessions written through `addr` at `rate`/s: `SET session:N`, each answer waited for
/// at most 2 s, a new connection after any error, the same key again until it is
/// acknowledged. Every acknowledged number with when.
fn sessions(
    addr: SocketAddr,
    rate: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let every = Duration::from_micros(1_000_000 / rate.max(1));
            let mut next = tokio::time::Instant::now();
            let mut conn: Option<Conn> = None;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if conn.is_none() {
                    conn = Conn::connect(addr, Some(PASSWORD), Duration::from_secs(2))
                        .await
                        .ok();
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let key = format!("session:{n}");
                let value = format!("user-{n}-cart-{}", n * 7);
                match c.ok(&["SET", &key, &value, "EX", "86400"]).await {
                    Ok(()) => {
                        acked.lock().expect("acked").push((n, Instant::now()));
                        n += 1;
                    }
                    Err(_) => conn = None,
                }
                next += every;
                tokio::time::sleep_until(next).await;
                if tokio::time::Instant::now() > next + Duration::from_secs(1) {
                    next = tokio::time::Instant::now();
                }
            }
        })
    })
}

/// The session numbers the server at `addr` holds.
fn held(addr: SocketAddr) -> BTreeSet<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = Conn::connect(addr, Some(PASSWORD), Duration::from_secs(5))
            .await
            .expect("connect");
        match c.cmd(&["KEYS", "session:*"]).await.expect("KEYS") {
            outlast_db::resp::Reply::Array(Some(keys)) => keys
                .iter()
                .filter_map(|k| k.text())
                .filter_map(|k| k.strip_prefix("session:").and_then(|n| n.parse().ok()))
                .collect(),
            other => panic!("KEYS answered {other:?}"),
        }
    })
}

fn config(b: u16, failback: &str) -> String {
    format!(
        r#"
[[datasets]]
name = "sessions"
kind = "redis"
port = {port}
replication = "sync"
failback = "{failback}"
[datasets.members]
east = {{ data_dir = "east/redis" }}
west = {{ data_dir = "west/redis" }}
[datasets.redis]
password = "{PASSWORD}"
settings = {{ maxmemory = "64mb" }}

[[services]]
name = "sessions"
dataset = "sessions"
port = {gw}
"#,
        port = b + 20,
        gw = b + 21
    )
}

#[test]
fn a_redis_dataset_follows_a_site_loss_and_fails_back_with_its_sessions() {
    if outlast_db::redis::find_server().is_none() {
        println!("redis-server is not installed (apt-get install redis-server): skipped");
        return;
    }
    let b = 9100u16;
    let mut opts = Opts::new(b);
    opts.failback_after = "3s";
    opts.extra = config(b, "auto");
    let mut c = Cluster::new(opts);
    let east_dir = c.dir.path().join("east/redis");
    let west_dir = c.dir.path().join("west/redis");
    let _reaper = RedisReaper(vec![east_dir.clone(), west_dir.clone()]);
    let t = Instant::now();
    c.start_all();
    c.wait_healthy();
    c.wait_for(
        "east",
        Duration::from_secs(30),
        "east primary, west a replica online, recorded",
        |st| {
            member(st, "east")["role"] == "primary"
                && member(st, "west")["role"] == "standby"
                && member(st, "west")["sync"] == "online"
                && dataset(st)["sync_set"] == serde_json::json!(["west"])
        },
    );
    println!(
        "east primary, west replicating and recorded, {:?} after the start",
        t.elapsed()
    );

    let west_gw: SocketAddr = format!("127.0.0.12:{}", b + 21).parse().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = sessions(west_gw, 200, stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_secs(3));
    let before = acked.lock().expect("acked").len();
    println!("{before} sessions written in the first 3 s through west's gateway");
    assert!(
        before > 400,
        "the workload writes through the gateway: {before}"
    );

    // Site loss: east's agent and its redis-server, kill -9 both.
    let pid = outlast_db::redis::running_server(&east_dir).expect("east's redis-server");
    let killed = Instant::now();
    c.kill9("east");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let mut first_after = None;
    let until = Instant::now() + Duration::from_secs(20);
    while first_after.is_none() && Instant::now() < until {
        first_after = acked
            .lock()
            .expect("acked")
            .iter()
            .find(|(_, at)| *at > killed)
            .map(|(_, at)| at.duration_since(killed));
        std::thread::sleep(Duration::from_millis(5));
    }
    let rto = first_after.expect("a session written after the kill");
    println!(
        "kill -9 of east's agent and redis-server to the first session written on west: {rto:?}"
    );
    c.wait_for(
        "west",
        Duration::from_secs(10),
        "west primary, going on alone as recorded",
        |st| {
            member(st, "west")["role"] == "primary"
                && dataset(st)["sync_set"] == serde_json::json!([])
                && dataset(st)["standby_lost"] == "degraded"
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    // What the site loss cost: sessions acknowledged by east and never replicated.
    let west_addr: SocketAddr = format!("127.0.0.12:{}", b + 20).parse().expect("addr");
    let at_loss: Vec<u64> = {
        let have = held(west_addr);
        acked
            .lock()
            .expect("acked")
            .iter()
            .filter(|(_, at)| *at < killed)
            .map(|(n, _)| *n)
            .filter(|n| !have.contains(n))
            .collect()
    };
    println!(
        "sessions acknowledged by east before the kill and missing on west: {} {:?}",
        at_loss.len(),
        at_loss.iter().take(10).collect::<Vec<_>>()
    );

    // East comes back: its files are kept, it resyncs as a replica, then takes the
    // primary back by a planned switchover after failback_after.
    let back = Instant::now();
    c.start("east");
    c.wait_for(
        "west",
        Duration::from_secs(30),
        "east rejoined as a replica",
        |st| member(st, "east")["role"] == "standby",
    );
    println!(
        "east rejoined as a replica {:?} after its restart",
        back.elapsed()
    );
    c.wait_for("east", Duration::from_secs(30), "failback to east", |st| {
        member(st, "east")["role"] == "primary"
            && st["services"]
                .as_array()
                .and_then(|s| s.iter().find(|x| x["name"] == "sessions"))
                .is_some_and(|s| s["primary"] == "east" && s["primary_acting"] == true)
    });
    println!("failed back to east {:?} after its restart", back.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    w.join().expect("workload");

    let st = c.status("east").expect("status");
    let kept = dataset(&st)["diverged"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        kept.len(),
        1,
        "east's files kept once, before its resync: {st}"
    );
    let kept_dir = PathBuf::from(kept[0]["path"].as_str().expect("path"));
    assert!(
        kept_dir.join("appendonlydir").exists() || kept_dir.join("dump.rdb").exists(),
        "{} holds east's files",
        kept_dir.display()
    );
    assert_eq!(
        member(&st, "west")["role"],
        "standby",
        "west rejoined as a replica: {st}"
    );

    let mut acked = acked.lock().expect("acked").clone();
    acked.sort_by_key(|(_, at)| *at);
    let failback_hold = acked
        .windows(2)
        .filter(|p| p[0].1 > back)
        .map(|p| p[1].1.duration_since(p[0].1))
        .max()
        .unwrap_or_default();
    let east_addr: SocketAddr = format!("127.0.0.11:{}", b + 20).parse().expect("addr");
    let have = held(east_addr);
    let after_loss: Vec<u64> = acked
        .iter()
        .filter(|(_, at)| *at > killed)
        .map(|(n, _)| *n)
        .filter(|n| !have.contains(n))
        .collect();
    println!(
        "{} sessions acknowledged; after the loss {} missing on the final primary; longest wait for an acknowledgement after east's return {failback_hold:?}",
        acked.len(),
        after_loss.len()
    );
    assert!(
        after_loss.is_empty(),
        "acknowledged after the loss (on west, through the failback) but missing: {after_loss:?}"
    );
    // Redis replicates asynchronously: a kill -9 may cost the writes east acknowledged in
    // its last moments. At 200/s over loopback that is a few at most.
    assert!(
        at_loss.len() <= 20,
        "{} acknowledged sessions lost at the site loss",
        at_loss.len()
    );
    assert!(
        rto < Duration::from_secs(3),
        "site loss to first write: {rto:?}"
    );
}

/// A writer straight at east's server (not through a gateway) while east's site is cut off:
/// no write is acknowledged there after east's lease ends (the agent pauses writes and
/// stops the server first); west is promoted; after the heal east rejoins as a replica and
/// the writes it took alone are in the files it kept, which a server started on them reads.
#[test]
fn an_isolated_redis_primary_stops_taking_writes_and_keeps_what_it_took_alone() {
    if outlast_db::redis::find_server().is_none() {
        println!("redis-server is not installed (apt-get install redis-server): skipped");
        return;
    }
    let b = 9200u16;
    let mut opts = Opts::new(b);
    opts.netns = true;
    opts.extra = config(b, "manual");
    let mut c = Cluster::new(opts);
    let _reaper = RedisReaper(vec![
        c.dir.path().join("east/redis"),
        c.dir.path().join("west/redis"),
    ]);
    c.start_all();
    c.wait_healthy();
    c.wait_for(
        "east",
        Duration::from_secs(30),
        "east primary, west a replica online",
        |st| member(st, "east")["role"] == "primary" && member(st, "west")["sync"] == "online",
    );
    // Inside the namespace, from 127.0.0.1 (which the cut leaves alone, as a client inside
    // east's site), each acknowledged number with the wall-clock ms of its answer.
    let script = format!(
        "for i in $(seq 1 100000); do if [ \"$(timeout 2 redis-cli -h 127.0.0.11 -p {port} -a {PASSWORD} --no-auth-warning SET alone:$i v 2>/dev/null)\" = OK ]; then echo \"$i $(date +%s%3N)\"; fi; sleep 0.01; done",
        port = b + 20
    );
    let log = c.dir.path().join("writer.log");
    let mut w = c
        .command("bash")
        .args(["-c", &script])
        .stdout(std::fs::File::create(&log).expect("writer log"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("writer");
    std::thread::sleep(Duration::from_secs(2));
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    let cut_ms = wall();
    c.isolate("east");
    c.wait_for("west", Duration::from_secs(15), "west promoted", |st| {
        member(st, "west")["role"] == "primary"
    });
    std::thread::sleep(Duration::from_secs(2));
    let _ = w.kill();
    let _ = w.wait();
    let acks: Vec<(u64, u64)> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, at) = l.split_once(' ')?;
            Some((n.parse().ok()?, at.parse().ok()?))
        })
        .collect();
    let after: Vec<u64> = acks
        .iter()
        .filter(|(_, at)| *at > cut_ms)
        .map(|(n, _)| *n)
        .collect();
    let last = acks
        .iter()
        .filter(|(_, at)| *at > cut_ms)
        .map(|(_, at)| at - cut_ms)
        .max()
        .unwrap_or(0);
    println!(
        "{} writes acknowledged straight at east, {} after the cut, the last {last} ms after it (lease 1000 ms)",
        acks.len(),
        after.len()
    );
    assert!(acks.len() > 20, "the writer wrote: {acks:?}");
    assert!(
        last < 1000,
        "a write was acknowledged {last} ms after the cut"
    );

    c.heal();
    let back = c.wait_for(
        "west",
        Duration::from_secs(30),
        "east rejoined as a replica",
        |st| member(st, "east")["role"] == "standby",
    );
    println!("east rejoined as a replica {back:?} after the heal");
    let st = c.status("east").expect("status");
    let kept = dataset(&st)["diverged"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(kept.len(), 1, "{st}");
    let dir = PathBuf::from(kept[0]["path"].as_str().expect("path"));
    // A server of its own on the kept files: the writes east took alone are there.
    let copy_port = (b + 30).to_string();
    common::run(c.command("redis-server").args([
        "--port",
        &copy_port,
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir.to_string_lossy(),
        "--appendonly",
        "yes",
        "--daemonize",
        "yes",
        "--pidfile",
        &dir.join("redis.pid").to_string_lossy(),
        "--logfile",
        &dir.join("copy.log").to_string_lossy(),
    ]));
    let _copy = RedisReaper(vec![dir.clone()]);
    let mut found = BTreeSet::new();
    for _ in 0..50 {
        let out = c
            .command("redis-cli")
            .args(["-p", &copy_port, "--raw", "KEYS", "alone:*"])
            .output()
            .expect("redis-cli");
        found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|k| k.strip_prefix("alone:").and_then(|n| n.parse::<u64>().ok()))
            .collect();
        if !found.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let missing: Vec<&u64> = after.iter().filter(|n| !found.contains(n)).collect();
    println!(
        "the kept files hold {} keys; of the {} writes east took after the cut, {} are missing",
        found.len(),
        after.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "taken alone but not kept: {missing:?}");
    assert!(
        acks.iter().all(|(n, _)| found.contains(n)),
        "every write east acknowledged is in its kept files"
    );
}

/// `outlast drill` with the `dataset` workload on a Redis dataset: keys written through the
/// gateways at 200/s across a site loss and the site's return; the report's `db` figures.
#[test]
fn a_drill_writes_sessions_through_a_redis_site_loss_and_reports_them() {
    if outlast_db::redis::find_server().is_none() {
        println!("redis-server is not installed (apt-get install redis-server): skipped");
        return;
    }
    let b = 9300u16;
    let mut opts = Opts::new(b);
    opts.failback_after = "3s";
    opts.extra = config(b, "auto");
    let c = Cluster::new(opts);
    let _reaper = RedisReaper(vec![
        c.dir.path().join("east/redis"),
        c.dir.path().join("west/redis"),
    ]);
    let scenario = c.dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        r#"name = "redis-site-loss"
duration = "20s"
[workload]
dataset = "sessions"
write_rate = 200
[[steps]]
at = "5s"
fault = "kill"
site = "east"
[[steps]]
at = "11s"
fault = "restart"
site = "east"
[expect]
db_lost = "<= 20"
db_rto_ms = "< 3000"
"#,
    )
    .expect("scenario");
    let report = c.dir.path().join("report");
    let out = std::process::Command::new(common::bin())
        .args(["drill", "--config"])
        .arg(&c.config)
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
    let r: Value = serde_json::from_str(&text).expect("report json");
    let db = &r["db"];
    println!("db figures: {db}");
    assert_eq!(out.status.code(), Some(0), "every expectation holds: {r}");
    assert!(db["acked"].as_u64().unwrap_or(0) > 2000, "{db}");
    let rto = db["rto_ms"].as_u64().unwrap_or(u64::MAX);
    assert!(rto > 300 && rto < 3000, "{db}");
    assert!(
        db["archives"].as_array().is_some_and(|a| !a.is_empty()),
        "east's files were kept before it resynced: {db}"
    );
}
