//! Real agents on 127.0.0.11-13: kill -9 of the primary's agent, restart, failback, SIGTERM.

// Synchronous test code on plain threads: there is no async runtime here to block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{all_up, median_and_worst, Cluster, Opts};

/// With probe_interval 100ms, fall 3, grace 500ms, lease 1s: kill -9 of the primary's
/// agent, 20 runs, timed as a client sees it: from the kill until a GET through the
/// surviving site's gateway (2 s client timeout, a new one every 10 ms) is answered by the
/// new primary's backend. The worst must be under 1.6 s: the new primary acts once the
/// voters' promises to the old one ran out (lease + margin = 1.225 s after their last
/// grants), not a whole lease after the move was committed.
#[test]
fn kill_primary_agent_moves_primary_within_1_6s_over_20_runs() {
    let runs: usize = std::env::var("OUTLAST_FAILOVER_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut times = Vec::new();
    for run in 0..runs {
        let mut c = Cluster::new(Opts::new(7400));
        c.start_all();
        c.wait_healthy();
        let gw = c.gateway("west");
        let t0 = Instant::now();
        c.kill9("east");
        let served = first_answer_from(gw, "backend west", t0, Duration::from_secs(10));
        c.wait_acting("west", "west", Duration::from_secs(10));
        let took = served.unwrap_or_else(|| panic!("run {run}: west never served\n{}", c.logs()));
        let st = c.status("west").expect("status");
        let east = st["sites"]
            .as_array()
            .expect("sites")
            .iter()
            .find(|s| s["name"] == "east")
            .cloned();
        assert_eq!(
            east.expect("east")["state"],
            "down",
            "the survivors declared east down"
        );
        println!(
            "run {run}: kill -9 east -> first GET answered by west's backend after {} ms",
            took.as_millis()
        );
        times.push(took);
    }
    let (median, worst) = median_and_worst(times);
    println!(
        "failover over {runs} runs, as a client sees it: median {} ms, worst {} ms",
        median.as_millis(),
        worst.as_millis()
    );
    assert!(
        worst < Duration::from_millis(1600),
        "worst failover {worst:?} is not under 1.6 s"
    );
}

/// GETs `addr` (each on a new connection, with a 2 s timeout, one every 10 ms, several in
/// flight) until one is answered with a body starting `want`: the time since `t0` at which
/// that answer came, or None by `limit`.
fn first_answer_from(
    addr: std::net::SocketAddr,
    want: &'static str,
    t0: Instant,
    limit: Duration,
) -> Option<Duration> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    while t0.elapsed() < limit {
        if let Ok(at) = rx.try_recv() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            for h in handles {
                let _ = std::thread::JoinHandle::join(h);
            }
            return Some(at);
        }
        let (tx, stop) = (tx.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if common::http_get(addr, "/").is_some_and(|b| b.starts_with(want)) {
                let _ = tx.send(t0.elapsed());
            }
        }));
        handles.retain(|h| !h.is_finished());
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn killed_agent_restarts_with_its_state_rejoins_and_gets_its_role_back() {
    let mut c = Cluster::new(Opts::new(7420));
    c.start_all();
    c.wait_healthy();
    c.kill9("east");
    c.wait_acting("west", "west", Duration::from_secs(10));
    let epoch_after_failover = c.status("west").expect("status")["epoch"]
        .as_u64()
        .expect("epoch");

    c.start("east");
    // Its first answer already carries the state it had on disk (epoch 0 plus anything it
    // applied before the kill), never less.
    let first = loop {
        if let Some(st) = c.status("east") {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(first["epoch"].as_u64().is_some());
    // It catches up with the cluster, is declared up, unfences...
    c.wait_for("east", Duration::from_secs(10), "east rejoins", |st| {
        st["epoch"].as_u64() >= Some(epoch_after_failover)
            && st["sites"]
                .as_array()
                .is_some_and(|s| s.iter().all(|x| x["state"] == "up"))
    });
    // ...and with failback = "auto" gets its role back once stable for failback_after (2s).
    let took = c.wait_acting("east", "east", Duration::from_secs(15));
    println!("east rejoined; failback done {} ms later", took.as_millis());
    let west = c.status("west").expect("status");
    assert_eq!(west["services"][0]["primary"], "east");
}

#[test]
fn manual_failback_never_moves_back() {
    let mut opts = Opts::new(7430);
    opts.failback = "manual";
    opts.failback_after = "1s";
    let mut c = Cluster::new(opts);
    c.start_all();
    c.wait_healthy();
    c.kill9("east");
    c.wait_acting("west", "west", Duration::from_secs(10));
    // `outlast status` given only the config finds a live site though the first is down.
    let out = std::process::Command::new(common::bin())
        .args(["status", "--config"])
        .arg(&c.config)
        .env_remove("OUTLAST_API")
        .output()
        .expect("outlast status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("answered by west"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.start("east");
    c.wait_for("east", Duration::from_secs(10), "east rejoins", all_up);
    // Three times failback_after: an automatic failback would have happened by now.
    std::thread::sleep(Duration::from_secs(3));
    let st = c.status("east").expect("status");
    assert_eq!(
        st["services"][0]["primary"], "west",
        "failback = manual moved the primary"
    );
}

#[test]
fn sigterm_steps_down_from_leadership_and_exits_0() {
    let mut c = Cluster::new(Opts::new(7440));
    c.start_all();
    c.wait_healthy();
    let leader = c.status("east").expect("status")["leader"]
        .as_str()
        .expect("leader")
        .to_string();
    let other = if leader == "west" { "east" } else { "west" };
    let t0 = Instant::now();
    let status = c
        .terminate(&leader, Duration::from_secs(10))
        .expect("exits within 10 s");
    assert!(status.success(), "SIGTERM exit status {status:?}");
    c.wait_for(
        other,
        Duration::from_secs(2),
        "a new leader within 2 s",
        |st| st["leader"].is_string() && st["leader"] != leader.as_str(),
    );
    println!(
        "leader {leader} stopped; new leader known {} ms after SIGTERM",
        t0.elapsed().as_millis()
    );
}
