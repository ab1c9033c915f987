//! A partition made with iptables inside a network namespace of the test's own: the whole
//! cluster runs in it, so nothing outside is touched.

// Synchronous test code on plain threads: there is no async runtime here to block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{all_up, Cluster, Opts};

fn site_state(st: &serde_json::Value, site: &str) -> Option<String> {
    st["sites"].as_array()?.iter().find(|s| s["name"] == site)?["state"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn isolated_primary_fences_within_its_lease_others_take_over_and_it_rejoins() {
    let mut opts = Opts::new(7460);
    opts.netns = true;
    let mut c = Cluster::new(opts);
    c.start_all();
    c.wait_healthy();

    let t0 = Instant::now();
    c.isolate("east");
    c.wait_for("east", Duration::from_secs(5), "east fences itself", |st| {
        site_state(st, "east").as_deref() == Some("fenced")
            && st["services"][0]["primary_acting"] == false
    });
    let fenced_after = t0.elapsed();
    // Fencing at the door: east's gateway refuses the primary-standby service outright.
    let probe = format!(
        "import urllib.request,urllib.error\ntry:\n urllib.request.urlopen('http://{}/',timeout=3)\n print('served')\nexcept urllib.error.HTTPError as e:\n print(e.code, e.headers.get('Retry-After'))",
        c.gateway("east")
    );
    let out = c
        .command("python3")
        .args(["-c", &probe])
        .output()
        .expect("python3");
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        said,
        "503 1",
        "a fenced site's gateway must refuse with 503 and Retry-After (stderr: {})",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_acting("west", "west", Duration::from_secs(10));
    let takeover_after = t0.elapsed();
    println!(
        "isolated east: fenced after {} ms (lease 1000 ms), west acting after {} ms",
        fenced_after.as_millis(),
        takeover_after.as_millis()
    );
    // The lease runs from the send time of the last answered heartbeat, which is at or
    // before the cut; the rest is this test's polling through the namespace.
    assert!(
        fenced_after < Duration::from_millis(1250),
        "fenced only after {fenced_after:?}"
    );
    assert!(
        fenced_after < takeover_after,
        "the old primary must fence before the new one acts"
    );

    c.heal();
    c.wait_for(
        "east",
        Duration::from_secs(10),
        "east rejoins unfenced",
        all_up,
    );
    c.wait_acting("east", "east", Duration::from_secs(15));
}

/// Issue 38: east, the primary, cut off from every site. For a moment each other site sees
/// it as a cut link (the others still reach it, as their last reports say) before they
/// all lose it; west's gateway answered 10-21 requests 503 "cannot be reached from west
/// (the others reach it)" at once in that moment. They must be held while the move is
/// decided (up to the 5 s the gateway promises) and answered by the new primary.
#[test]
fn requests_for_a_primary_cut_off_from_everyone_wait_for_the_move() {
    let mut opts = Opts::new(11120);
    opts.netns = true;
    let mut c = Cluster::new(opts);
    c.start_all();
    c.wait_healthy();
    let gw = c.gateway("west");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/load.py");
    let load = c
        .command("python3")
        .args([
            script,
            &gw.ip().to_string(),
            &gw.port().to_string(),
            "100",
            "6",
            "5",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("load");
    std::thread::sleep(Duration::from_millis(1500));
    c.isolate("east");
    let out = load.wait_with_output().expect("load");
    let results: Vec<(f64, f64, String, String)> =
        serde_json::from_slice(&out.stdout).expect("load's JSON");
    let refused: Vec<&(f64, f64, String, String)> =
        results.iter().filter(|r| r.2 == "503").collect();
    let failed: Vec<&(f64, f64, String, String)> =
        results.iter().filter(|r| r.2 != "200").collect();
    let longest = results.iter().map(|r| r.1).fold(0.0, f64::max);
    println!(
        "{} GETs through west while east was cut off: {} answered 200, {} refused 503, longest {:.0} ms",
        results.len(),
        results.len() - failed.len(),
        refused.len(),
        longest * 1000.0
    );
    assert!(
        refused.is_empty(),
        "refused at once: {:?}",
        &refused[..refused.len().min(3)]
    );
    assert!(
        failed.is_empty(),
        "failed: {:?}\n{}",
        &failed[..failed.len().min(3)],
        c.logs()
    );
    c.heal();
}
