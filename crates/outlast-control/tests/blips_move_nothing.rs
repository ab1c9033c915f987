//! Invariant: blips shorter than `grace` (the primary cut off, or paused, for less than
//! grace) never declare a site down and never move a primary.

mod sim;

use rand::Rng;
use sim::{seeds, Fault, Sim, SimConfig};

#[test]
fn blips_shorter_than_grace_move_nothing() {
    for seed in 0..seeds() {
        let cfg = if seed % 4 == 3 {
            SimConfig::five_sites()
        } else {
            SimConfig::three_sites()
        };
        let grace = cfg.grace_ms;
        let n = cfg.sites.len();
        let preferred = cfg.preferred.clone();
        let mut sim = Sim::new(cfg, seed);
        let p = sim.site_index(&preferred);
        let mut at = 3_000;
        let blips = sim.rng().gen_range(1..=5);
        for _ in 0..blips {
            let d = sim.rng().gen_range(50..grace);
            let other = (p + sim.rng().gen_range(1..n)) % n;
            let (start, end) = match sim.rng().gen_range(0..4) {
                0 => (Fault::Isolate(p), Fault::HealAll),
                1 => (Fault::Pause(p), Fault::Resume(p)),
                2 => (Fault::Isolate(other), Fault::HealAll),
                _ => (Fault::Cut(p, other), Fault::HealAll),
            };
            sim.schedule(at, start);
            sim.schedule(at + d, end);
            at += d + sim.rng().gen_range(1_500..3_000);
        }
        sim.run_until(at + 3_000);
        assert_eq!(
            sim.site_downs(),
            0,
            "seed {seed}: a blip declared a site down\n{}",
            sim.trace()
        );
        assert_eq!(
            sim.moves(),
            0,
            "seed {seed}: a blip moved the primary\n{}",
            sim.trace()
        );
        assert_eq!(
            sim.acting(),
            vec![preferred],
            "seed {seed}\n{}",
            sim.trace()
        );
    }
}
