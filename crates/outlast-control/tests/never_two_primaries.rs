//! Invariant: never two sites acting as primary of one service at the same instant, under
//! random schedules of crashes, restarts, pauses, partitions (full, one link, one way),
//! heals, backend failures and clock-rate jitter. `Sim::step` checks it at every step.
//! After everything heals, exactly one site must be acting again.

mod sim;

use rand::Rng;
use sim::{seeds, Fault, Sim, SimConfig};

fn random_schedule(sim: &mut Sim, n: usize) {
    let count = sim.rng().gen_range(2..=8);
    for _ in 0..count {
        let at = sim.rng().gen_range(2_000..25_000);
        let a = sim.rng().gen_range(0..n);
        let mut b = sim.rng().gen_range(0..n);
        if b == a {
            b = (a + 1) % n;
        }
        let dur = sim.rng().gen_range(50..6_000);
        let (start, end) = match sim.rng().gen_range(0..6) {
            0 => (Fault::Crash(a), Fault::Restart(a)),
            1 => (Fault::Pause(a), Fault::Resume(a)),
            2 => (Fault::Isolate(a), Fault::HealAll),
            3 => (Fault::Cut(a, b), Fault::HealAll),
            4 => (Fault::CutOneWay(a, b), Fault::HealAll),
            _ => (Fault::BackendDown(a), Fault::BackendUp(a)),
        };
        sim.schedule(at, start);
        sim.schedule(at + dur, end);
    }
    // Whatever is still broken is mended at 26s.
    sim.schedule(26_000, Fault::HealAll);
    for i in 0..n {
        sim.schedule(26_000, Fault::Restart(i));
        sim.schedule(26_000, Fault::Resume(i));
        sim.schedule(26_000, Fault::BackendUp(i));
    }
}

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
        random_schedule(&mut sim, n);
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
