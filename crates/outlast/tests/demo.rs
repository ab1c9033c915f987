//! `outlast demo` as a newcomer runs it: exit 0, nothing lost or stored twice, an RTO under
//! 3 s, and a report page with the timeline; with PostgreSQL installed, its dataset loses
//! no acknowledged commit either.

// A test stands outside the agents and times them by the machine's own clock.
#![allow(clippy::disallowed_methods)]

use std::process::Command;

#[test]
fn the_demo_passes_and_draws_its_report() {
    let dir = tempfile::tempdir().expect("tmp");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_outlast"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .expect("outlast demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "demo failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed().as_secs() < 90,
        "the demo must finish in 90 s"
    );
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("report/report.json")).expect("report.json"),
    )
    .expect("json");
    assert_eq!(r["writes"]["lost"], 0);
    assert_eq!(r["writes"]["duplicated"], 0);
    assert!(r["writes"]["acked"].as_u64().unwrap_or(0) > 1000, "{r}");
    let rto = r["rto_ms"].as_u64().expect("rto");
    assert!(rto > 0 && rto < 3000, "{r}");
    assert!(
        r["failback_ms"].as_u64().is_some(),
        "failback measured: {r}"
    );
    // The failover's phases, as the surviving agents recorded them, in drill time.
    let phases = r["phases"].as_array().expect("phases[]");
    for name in ["declared", "acting", "dns-published", "gateway-switched"] {
        assert!(
            phases.iter().any(|p| p["name"] == name),
            "phase {name} missing: {phases:?}"
        );
    }
    assert!(r["longest_wait_ms"].as_u64().is_some(), "{r}");
    let html = std::fs::read_to_string(dir.path().join("report/index.html")).expect("page");
    assert!(html.contains("<svg") && html.contains("polyline") && html.contains("kill east"));
    assert!(html.contains("Failover phases") && html.contains("gateway-switched"));
    assert!(stdout.contains("report"), "the summary names the report");
    // With PostgreSQL on the machine the demo runs a dataset too, and says so either way.
    let postgres = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().any(|e| e.path().join("bin/initdb").exists()))
        .unwrap_or(false);
    if postgres {
        let db = &r["db"];
        assert_eq!(db["lost"], 0, "{db}");
        assert!(db["acked"].as_u64().unwrap_or(0) > 1000, "{db}");
        let rto = db["rto_ms"].as_u64().unwrap_or(u64::MAX);
        assert!(rto < 3000, "{db}");
        assert!(stdout.contains("database") && stdout.contains("dataset orders"));
    } else {
        assert!(stdout.contains("apt-get install postgresql"), "{stdout}");
    }
}
