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
