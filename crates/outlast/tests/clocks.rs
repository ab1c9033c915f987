//! Clocks that run at the wrong rate, with libfaketime (Debian `faketime`) preloaded into a
//! site's agent: the odd clock is found from the heartbeats and named in status, its site holds
//! no lease (fenced), the others count it unreachable so its primary moves, and no two
//! sites act as primary at once. Leases are sound only for clocks within 5% of each other.

#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{acting_primary_is, Cluster, Opts};
use serde_json::Value;

/// Whether `site` acts as the service's primary, by its own status.
fn acts(st: &Value, site: &str) -> bool {
    st["site"] == site && acting_primary_is_any(st, site)
}

fn acting_primary_is_any(st: &Value, site: &str) -> bool {
    st["services"][0]["primary"] == site && st["services"][0]["primary_acting"] == true
}

/// Starts the cluster with `fake` sites under `faketime -f "+0 xRATE"`; waits until the
/// site named `odd` is found odd by the others and by itself, the service acts at
/// `new_primary`, and no moment had two sites acting (polled every 20 ms from the start).
fn odd_clock(base: u16, fake: &[(&str, &str)], odd: &str, new_primary: &'static str) {
    // The library itself, preloaded through `env` (which execs): the agent keeps the pid
    // the harness stops it by. (The `faketime` command forks, and its child outlived it.)
    let lib = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|arch| format!("/usr/lib/{arch}/faketime/libfaketimeMT.so.1"))
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("libfaketime is missing: apt-get install faketime (scripts/test installs it)")
        });
    let mut c = Cluster::new(Opts::new(base));
    for site in ["east", "west", "witness"] {
        match fake.iter().find(|(s, _)| *s == site) {
            Some((_, rate)) => {
                let preload = format!("LD_PRELOAD={lib}");
                let f = format!("FAKETIME=+0 x{rate}");
                c.start_wrapped(site, &["env", &preload, &f]);
            }
            None => c.start(site),
        }
    }
    let start = Instant::now();
    let mut both = Vec::new();
    let mut moved = None;
    let mut named = false;
    let mut own = false;
    while start.elapsed() < Duration::from_secs(45) {
        let east = c.status("east");
        let west = c.status("west");
        let east_acts = east.as_ref().is_some_and(|s| acts(s, "east"));
        let west_acts = west.as_ref().is_some_and(|s| acts(s, "west"));
        if east_acts && west_acts {
            both.push(start.elapsed());
        }
        let judge = if odd == "east" { "west" } else { "east" };
        named |= c.status(judge).is_some_and(|st| {
            st["links"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x["peer"] == odd && x["clock_odd"] == true))
        });
        own |= c
            .status(odd)
            .is_some_and(|st| st["clock_odd_ppm"].as_i64().is_some());
        if moved.is_none()
            && c.status(new_primary)
                .is_some_and(|st| acting_primary_is(new_primary)(&st))
            && odd != new_primary
            && named
        {
            moved = Some(start.elapsed());
        }
        if named
            && own
            && moved.is_some()
            && start.elapsed() > moved.unwrap_or_default() + Duration::from_secs(3)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = c.logs();
    assert!(named, "no site named {odd}'s clock odd\n{logs}");
    assert!(own, "{odd} did not find its own clock odd\n{logs}");
    assert!(
        moved.is_some(),
        "the service did not move to {new_primary}\n{logs}"
    );
    assert!(both.is_empty(), "two primaries acting at {both:?}\n{logs}");
    assert!(
        logs.contains("the clock of site"),
        "the clock problem is logged in words\n{logs}"
    );
    println!(
        "{fake:?}: {odd}'s clock named odd, service at {new_primary} after {:?}, never two primaries",
        moved.unwrap_or_default()
    );
}

#[test]
fn a_primary_whose_clock_runs_at_half_rate_is_fenced_and_its_service_moves() {
    odd_clock(11200, &[("east", "0.5")], "east", "west");
}

#[test]
fn a_primary_whose_clock_runs_at_three_quarters_is_fenced_and_its_service_moves() {
    odd_clock(11220, &[("east", "0.75")], "east", "west");
}

#[test]
fn a_standby_and_witness_whose_clocks_run_twice_as_fast_outvote_the_primary() {
    // The majority's clocks agree with each other: east's is the odd one.
    odd_clock(11240, &[("west", "2"), ("witness", "2")], "east", "west");
}

#[test]
fn a_standby_whose_clock_runs_four_times_as_fast_takes_no_primary_role() {
    // West would be the new primary; its clock is the odd one, so it fences itself and
    // the others promise it nothing: east stays primary.
    odd_clock(11260, &[("west", "4")], "west", "east");
}
