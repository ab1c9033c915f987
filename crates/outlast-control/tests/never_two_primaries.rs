//! Invariant: never two sites acting as primary of one service at the same instant, under
//! random schedules of crashes, restarts, pauses, partitions (full, one link, one way),
//! heals, backend failures and clock-rate jitter. `Sim::step` checks it at every step.
//! After everything heals, exactly one site must be acting again.

mod sim;

use sim::{random_schedule, seeds, Sim, SimConfig};

#[test]
fn never_two_primaries() {
    let mut moves = 0;
    for seed in 0..seeds() {
        let cfg = if seed % 4 == 3 {
            SimConfig::five_sites()
        } else {
            SimConfig::three_sites()
        };
        let n = cfg.sites.len();
        let mut sim = Sim::new(cfg, seed);
        random_schedule(&mut sim, n, 2_000, 8, true);
        sim.run_until(40_000);
        let acting = sim.acting();
        assert_eq!(
            acting.len(),
            1,
            "seed {seed}: after healing, acting = {acting:?}\n{}",
            sim.trace()
        );
        moves += sim.moves();
    }
    // The schedules must actually move primaries, or this test proves nothing.
    assert!(
        moves > seeds() as usize / 2,
        "only {moves} moves in {} schedules",
        seeds()
    );
    println!(
        "{} schedules, {moves} primary moves, never two primaries",
        seeds()
    );
}
