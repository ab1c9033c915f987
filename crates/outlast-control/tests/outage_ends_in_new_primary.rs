//! Invariant: a real outage of the primary site (crash, pause, or full isolation) always
//! ends with another site acting as primary within max(detection, lease + margin), where
//! detection is fall × probe + grace (the majority declares the site down) and lease +
//! margin is when the voters' promises to the old primary run out (they go together, not
//! one after the other), plus the stated slack: two probe intervals (the report that
//! carries a verdict or a promise is up to one interval old; the leader decides, and the
//! new primary looks, on its next tick) and 100 ms for Raft to commit the move and the new
//! primary to apply it (two round trips). Clocks here run up to 1% off true time (real
//! monotonic clocks drift by parts per million; the safety tests use 5%).

mod sim;

use sim::{median_and_worst, outage_of_the_primary, seeds, Sim, SimConfig};

#[test]
fn outage_ends_in_new_primary_within_bound() {
    let mut times = Vec::new();
    for seed in 0..seeds() {
        let mut cfg = if seed % 4 == 3 {
            SimConfig::five_sites()
        } else {
            SimConfig::three_sites()
        };
        cfg.clock_jitter = 0.01;
        let bound = cfg.detection_ms().max(cfg.lease_ms + cfg.margin_ms()) + 2 * cfg.probe_ms + 100;
        let mut sim = Sim::new(cfg, seed);
        let (fault, took) = outage_of_the_primary(&mut sim, seed, 3_000, 10_000);
        assert!(
            took <= bound,
            "seed {seed}: {fault:?} took {took} ms > bound {bound} ms\n{}",
            sim.trace()
        );
        times.push(took);
    }
    let (median, worst) = median_and_worst(&mut times);
    println!(
        "{} outages: new primary after median {median} ms, worst {worst} ms",
        times.len()
    );
}
