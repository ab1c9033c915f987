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

use rand::Rng;
use sim::{seeds, Fault, Sim, SimConfig};

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
        let preferred = cfg.preferred.clone();
        let mut sim = Sim::new(cfg, seed);
        sim.run_until(3_000);
        assert_eq!(
            sim.acting(),
            vec![preferred.clone()],
            "seed {seed}: warm-up\n{}",
            sim.trace()
        );
        let p = sim.site_index(&preferred);
        let jitter = sim.rng().gen_range(0..100);
        let fault = match sim.rng().gen_range(0..3) {
            0 => Fault::Crash(p),
            1 => Fault::Pause(p),
            _ => Fault::Isolate(p),
        };
        let t0 = 3_000 + jitter;
        sim.schedule(t0, fault);
        let took = sim
            .run_until_true(t0 + 10_000, |s| s.acting().iter().any(|a| *a != preferred))
            .map(|t| t - t0);
        let took = took.unwrap_or_else(|| {
            panic!(
                "seed {seed}: no new primary after {fault:?}\n{}",
                sim.trace()
            )
        });
        assert!(
            took <= bound,
            "seed {seed}: {fault:?} took {took} ms > bound {bound} ms\n{}",
            sim.trace()
        );
        times.push(took);
    }
    times.sort_unstable();
    println!(
        "{} outages: new primary after median {} ms, worst {} ms",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
