//! Only cluster members count: an agent started with another secret is refused by its
//! peers and never counted for a vote, a heartbeat or a lease.

// Synchronous test code on plain threads: there is no async runtime here to block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{config_text, metric_value, Cluster, Opts};

#[test]
fn agent_with_wrong_secret_is_not_counted() {
    let mut c = Cluster::new(Opts::new(7480));
    let wrong = c.dir.path().join("wrong.toml");
    common::write_config(&wrong, &config_text(&c.opts, "a-different-secret-entirely"));
    c.start_with_config("east", &wrong);
    c.start("west");
    c.start("witness");

    // The members see east as down and run the service without it.
    c.wait_for(
        "west",
        Duration::from_secs(15),
        "west and witness run without east",
        |st| {
            st["leader"].is_string()
                && st["leader"] != "east"
                && st["sites"][0]["state"] == "down"
                && st["services"][0]["primary"] == "west"
                && st["services"][0]["primary_acting"] == true
        },
    );
    // East, counted by nobody, holds no lease and leads nothing.
    let st = c.status("east").expect("east answers its own API");
    assert_eq!(st["sites"][0]["state"], "fenced", "{st}");
    assert_ne!(st["leader"], "east");
    assert_eq!(st["services"][0]["primary_acting"], false);
    let metrics = c.get("west", "/metrics").expect("metrics");
    let refused = metric_value(&metrics, "outlast_peer_auth_failures_total");
    assert!(
        refused > 0.0,
        "west counted no refused peer requests:\n{metrics}"
    );
}
