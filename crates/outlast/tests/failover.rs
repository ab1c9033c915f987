//! Real agents on 127.0.0.11-13: kill -9 of the primary's agent, restart, failback, SIGTERM.

// Synchronous test code on plain threads: there is no async runtime here to block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{all_up, median_and_worst, Cluster, Opts};

/// The acceptance: with probe_interval 100ms, fall 3, grace 500ms, lease 1s, the
/// worst of 20 kill -9 failovers (kill until west acts as primary) is under 3 s.
#[test]
fn kill_primary_agent_moves_primary_within_3s_over_20_runs() {
    let runs: usize = std::env::var("OUTLAST_FAILOVER_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut times = Vec::new();
    for run in 0..runs {
        let mut c = Cluster::new(Opts::new(7400));
        c.start_all();
        c.wait_healthy();
        let t0 = Instant::now();
        c.kill9("east");
        c.wait_acting("west", "west", Duration::from_secs(10));
        let took = t0.elapsed();
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
            "run {run}: kill -9 east -> west acting in {} ms",
            took.as_millis()
        );
        times.push(took);
    }
    let (median, worst) = median_and_worst(times);
    println!(
        "failover over {runs} runs: median {} ms, worst {} ms",
        median.as_millis(),
        worst.as_millis()
    );
    assert!(
        worst < Duration::from_secs(3),
        "worst failover {worst:?} is not under 3 s"
    );
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
