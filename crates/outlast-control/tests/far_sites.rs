//! Sites far apart: each link's one-way delay drawn from 0 to 125 ms with ±20% jitter on
//! every message (round trips up to 300 ms, `max_rtt` 300 ms), heartbeats timed out from
//! the round trips measured as the agents do. Three properties, over random seeds:
//! - steady: with nothing broken, the preferred primary acts from the warm-up on, without
//!   a gap, and nothing moves (a far link is not taken for a lost site, and no site
//!   fences itself);
//! - never two primaries under random crashes, pauses, cuts and backend failures (checked
//!   at every step by `Sim::step`), and exactly one primary once everything heals;
//! - an outage of the primary ends in a new primary within the near-sites bound plus the
//!   detection's longer heartbeat timeout and two round trips.
//!
//! Clocks run up to 5% off true time at every site, as in the other properties.

mod sim;

use sim::{median_and_worst, outage_of_the_primary, random_schedule, seeds, Sim, SimConfig};

fn far() -> SimConfig {
    SimConfig {
        max_link_ms: 125,
        link_jitter: 0.2,
        max_rtt_ms: 300,
        // The lease must exceed detection at max_rtt: 2 × 100 + (300 + 25) + 500 = 1,025 ms.
        lease_ms: 1_200,
        ..SimConfig::three_sites()
    }
}

#[test]
fn far_links_move_nothing_while_nothing_breaks() {
    for seed in 0..seeds() / 4 {
        let cfg = far();
        let preferred = cfg.preferred.clone();
        let mut sim = Sim::new(cfg, seed);
        sim.run_until(4_000);
        let mut gaps = 0;
        while sim.now() < 20_000 {
            sim.step();
            if sim.acting() != vec![preferred.clone()] {
                gaps += 1;
            }
        }
        assert_eq!(
            gaps,
            0,
            "seed {seed}: the primary stopped acting\n{}",
            sim.trace()
        );
        assert_eq!(sim.moves(), 0, "seed {seed}: a move\n{}", sim.trace());
        assert_eq!(
            sim.site_downs(),
            0,
            "seed {seed}: a site declared down\n{}",
            sim.trace()
        );
    }
}

#[test]
fn far_links_never_give_two_primaries_and_heal_to_one() {
    let mut moves = 0;
    for seed in 0..seeds() / 2 {
        let mut sim = Sim::new(far(), seed);
        random_schedule(&mut sim, 3, 3_000, 6, false);
        sim.run_until(42_000);
        let acting = sim.acting();
        assert_eq!(
            acting.len(),
            1,
            "seed {seed}: after healing, acting = {acting:?}\n{}",
            sim.trace()
        );
        moves += sim.moves();
    }
    assert!(
        moves > seeds() as usize / 4,
        "only {moves} moves: the schedules prove nothing"
    );
}

#[test]
fn an_outage_of_a_far_primary_ends_in_a_new_primary() {
    let mut times = Vec::new();
    for seed in 0..seeds() / 2 {
        let cfg = far();
        let timing = cfg.timing();
        let longest_timeout = timing.probe_timeout_cap().as_millis() as u64;
        // The near-sites bound (see outage_ends_in_new_primary.rs), with the heartbeat's
        // longer timeout in detection, and two round trips more to commit and apply.
        let bound = (cfg.detection_ms() + longest_timeout).max(cfg.lease_ms + cfg.margin_ms())
            + 2 * cfg.probe_ms
            + 100
            + 2 * 2 * cfg.max_link_ms * 12 / 10;
        let mut sim = Sim::new(cfg, seed);
        let (fault, took) = outage_of_the_primary(&mut sim, seed, 4_000, 15_000);
        assert!(
            took <= bound,
            "seed {seed}: {fault:?} took {took} ms > {bound} ms\n{}",
            sim.trace()
        );
        times.push(took);
    }
    let (median, worst) = median_and_worst(&mut times);
    println!(
        "{} outages of a far primary: a new one after median {median} ms, worst {worst} ms",
        times.len()
    );
}
