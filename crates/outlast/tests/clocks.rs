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

/// libfaketime's library, preloaded through `env` (which execs): the agent keeps the pid the
/// harness stops it by. (The `faketime` command forks, and its child outlived it.)
fn faketime_lib() -> String {
    ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|arch| format!("/usr/lib/{arch}/faketime/libfaketimeMT.so.1"))
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("libfaketime is missing: apt-get install faketime (scripts/test installs it)")
        })
}

/// Starts every site, those in `fake` with their clock at the given rate.
fn start_sites(c: &mut Cluster, fake: &[(&str, &str)]) {
    for site in ["east", "west", "witness"] {
        match fake.iter().find(|(s, _)| *s == site) {
            Some((_, rate)) => start_faked(c, site, &format!("FAKETIME=+0 x{rate}"), &[]),
            None => c.start(site),
        }
    }
}

/// Starts `site` with libfaketime set by `faketime` (`FAKETIME=...`) and `more` variables.
fn start_faked(c: &mut Cluster, site: &str, faketime: &str, more: &[&str]) {
    let preload = format!("LD_PRELOAD={}", faketime_lib());
    let mut wrapper = vec!["env", preload.as_str(), faketime];
    wrapper.extend_from_slice(more);
    c.start_wrapped(site, &wrapper);
}

/// An alert channel that appends every alert to a file in `dir`: the config text and the file.
fn alert_file(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let file = dir.join("alerts.jsonl");
    let f = file.display();
    (
        format!("\n[[alerts]]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >> '{f}'; echo >> '{f}'\"]\n"),
        file,
    )
}

/// Whether `judge`'s status names `odd`'s clock as off the bound.
fn names_odd(c: &Cluster, judge: &str, odd: &str) -> bool {
    c.status(judge).is_some_and(|st| {
        st["links"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["peer"] == odd && x["clock_odd"] == true))
    })
}

/// Starts the cluster with `fake` sites under `faketime -f "+0 xRATE"`; waits until the
/// site named `odd` is found odd by the others and by itself, the service acts at
/// `new_primary`, and no moment had two sites acting (polled every 20 ms from the start).
fn odd_clock(base: u16, fake: &[(&str, &str)], odd: &str, new_primary: &'static str) {
    let mut c = Cluster::new(Opts::new(base));
    start_sites(&mut c, fake);
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
        named |= names_odd(&c, judge, odd);
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

/// The acceptance with a cut: clocks set by libfaketime, the cluster in a network
/// namespace of its own, 100 GETs/s from clients to each data site's gateway. Once the odd
/// clock (if any) is named in status and an alert went out, east (the configured primary)
/// is cut off from both other sites. The backends log when they answer a client, in true
/// time: east's backend must never answer after west's first answer (0 ms of overlap),
/// whichever way the service moved (for the odd clock before the cut, or for the cut).
/// `west_serves`: whether west may take the service at all (not when its clock is odd).
fn cut_east_with_clocks(base: u16, fake: &[(&str, &str)], odd: Option<&str>, west_serves: bool) {
    let alerts = tempfile::tempdir().expect("tempdir");
    let (channel, alert_file) = alert_file(alerts.path());
    let mut opts = Opts::new(base);
    opts.netns = true;
    opts.backend_logs = true;
    opts.extra = channel;
    let mut c = Cluster::new(opts);
    start_sites(&mut c, fake);
    let start = Instant::now();
    match odd {
        Some(odd) => {
            let judge = if odd == "east" { "west" } else { "east" };
            let settled = |c: &Cluster| {
                let acting = if odd == "east" { "west" } else { "east" };
                names_odd(c, judge, odd)
                    && std::fs::read_to_string(&alert_file)
                        .is_ok_and(|a| a.contains(&format!("the clock of site {odd}")))
                    && c.status(acting)
                        .is_some_and(|st| acting_primary_is(acting)(&st))
            };
            while !settled(&c) {
                assert!(
                    start.elapsed() < Duration::from_secs(45),
                    "{odd}'s clock not named in status and an alert, or the service not settled\n{}",
                    c.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        None => {
            c.wait_healthy();
            // Long enough for a rate estimate (a window of 5 s at least), which must name
            // nobody: a clock within the bound is not odd.
            std::thread::sleep(Duration::from_secs(7));
            for judge in ["east", "west", "witness"] {
                let st = c.status(judge).expect("status");
                let links = st["links"].as_array().cloned().unwrap_or_default();
                assert!(
                    links.iter().all(|l| l["clock_odd"] == false),
                    "{judge} names a clock within the bound: {links:?}"
                );
                assert!(
                    links.iter().any(|l| l["clock_ppm"].as_i64().is_some()),
                    "{judge} has no rate estimate yet: {links:?}"
                );
            }
        }
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/load.py");
    let loads: Vec<_> = ["east", "west"]
        .iter()
        .map(|site| {
            let gw = c.gateway(site);
            c.command("python3")
                .args([script, &gw.ip().to_string(), &gw.port().to_string()])
                .args(["100", "10", "2", "/load"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("load")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let cut_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    c.isolate("east");
    let mut answered_after_cut = 0;
    for load in loads {
        let out = load.wait_with_output().expect("load");
        let results: Vec<(f64, f64, String, String)> =
            serde_json::from_slice(&out.stdout).expect("load's JSON");
        answered_after_cut += results.iter().filter(|r| r.0 > 2.5 && r.2 == "200").count();
    }
    let east = c.served("east", "/load");
    let west = c.served("west", "/load");
    let logs = c.logs();
    println!(
        "{fake:?}, east cut off: east's backend answered {} (last {:+.0} ms from the cut), west's {} (first {:+.0} ms from the cut); {answered_after_cut} client answers after the cut",
        east.len(),
        east.last().map_or(f64::NAN, |t| (t - cut_at) * 1000.0),
        west.len(),
        west.first().map_or(f64::NAN, |t| (t - cut_at) * 1000.0),
    );
    if let (Some(last_east), Some(first_west)) = (east.last(), west.first()) {
        assert!(
            last_east < first_west,
            "east's backend answered {:.0} ms after west's first answer\n{logs}",
            (last_east - first_west) * 1000.0
        );
    }
    if west_serves {
        assert!(
            west.last().is_some_and(|t| *t > cut_at + 3.0),
            "west does not serve after the cut\n{logs}"
        );
    } else {
        assert!(west.is_empty(), "west (odd clock) served\n{logs}");
        assert!(
            east.last().is_some_and(|t| *t < cut_at + 1.2),
            "east served past its lease after the cut\n{logs}"
        );
    }
}

#[test]
fn a_primary_whose_clock_runs_slow_within_the_bound_cut_off_never_overlaps_the_new_one() {
    cut_east_with_clocks(11280, &[("east", "0.96")], None, true);
}

#[test]
fn a_primary_whose_clock_runs_at_three_quarters_cut_off_never_overlaps_the_new_one() {
    cut_east_with_clocks(11300, &[("east", "0.75")], Some("east"), true);
}

#[test]
fn a_new_primary_and_witness_at_double_rate_cut_from_the_primary_never_overlap_it() {
    cut_east_with_clocks(
        11320,
        &[("west", "2"), ("witness", "2")],
        Some("east"),
        true,
    );
}

#[test]
fn a_standby_at_four_times_the_rate_takes_nothing_when_the_primary_is_cut_off() {
    cut_east_with_clocks(11340, &[("west", "4")], Some("west"), false);
}

/// Issue 39: signed peer requests carry the sender's wall clock and are refused beyond 60 s
/// of difference; a site whose wall clock was a minute and a half behind was cut off in
/// silence. Now the others name it in status and in an alert, in words, and it logs why
/// its requests are refused.
#[test]
fn a_site_whose_wall_clock_is_ninety_seconds_behind_is_named_not_cut_off_in_silence() {
    let alerts = tempfile::tempdir().expect("tempdir");
    let (channel, file) = alert_file(alerts.path());
    let mut opts = Opts::new(11360);
    opts.extra = channel;
    let mut c = Cluster::new(opts);
    c.start("east");
    c.start("witness");
    // The wall clock only: its monotonic clock (leases, timers) runs true.
    start_faked(&mut c, "west", "FAKETIME=-90", &["DONT_FAKE_MONOTONIC=1"]);
    c.wait_for(
        "east",
        Duration::from_secs(20),
        "west named for its clock",
        |st| {
            st["sites"].as_array().is_some_and(|s| {
                s.iter().any(|x| {
                    x["name"] == "west"
                        && x["clock_refused"].as_u64() > Some(0)
                        && x["clock_offset_ms"]
                            .as_i64()
                            .is_some_and(|o| (-95_000..=-85_000).contains(&o))
                })
            })
        },
    );
    println!(
        "east sees west: {:?}",
        c.status("east").map(|s| s["sites"].clone())
    );
    let t0 = Instant::now();
    let said = |c: &Cluster| {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains("the wall clock of west is 90 s behind")
            && std::fs::read_to_string(c.log_path("west"))
                .unwrap_or_default()
                .contains("refuses this site's requests")
    };
    while !said(&c) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no alert or log line in words:\n{}\n{}",
            std::fs::read_to_string(&file).unwrap_or_default(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
