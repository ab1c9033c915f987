//! `outlast init` on a fresh folder: its config passes `outlast check`, its units pass
//! `systemd-analyze verify`, a second init refuses and changes nothing, and a drill runs
//! the cluster it describes (three agents on 127.0.0.11-13 with its certificates) through
//! the loss of a site.

#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const BASE: u16 = 10800;

fn init(dir: &Path) -> std::process::Output {
    Command::new(common::bin())
        .arg("init")
        .arg("--dir")
        .arg(dir)
        .args([
            "--cluster",
            "shop",
            "--site",
            "east=127.0.0.11",
            "--site",
            "west=127.0.0.12",
            "--witness",
            "witness=127.0.0.13",
            "--service",
            &format!("web:{}:{}", BASE + 2, BASE + 10),
            "--peer-port",
            &BASE.to_string(),
            "--api-port",
            &(BASE + 1).to_string(),
            "--binary",
            common::bin(),
            "--dns-zone",
            "shop.test",
            "--dns-port",
            &(BASE + 3).to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--install-dir")
        .arg(dir)
        .output()
        .expect("outlast init")
}

/// A unit file's sections and keys, where systemd-analyze is absent.
fn parse_unit(text: &str) -> Result<(), String> {
    let mut section = None;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with('[') && l.ends_with(']') {
            section = Some(l.to_string());
            continue;
        }
        match (section.as_deref(), l.split_once('=')) {
            (Some(_), Some((k, _)))
                if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()) => {}
            _ => return Err(format!("line {}: {line}", i + 1)),
        }
    }
    Ok(())
}

#[test]
fn init_writes_a_cluster_that_checks_verifies_refuses_to_overwrite_and_survives_a_drill() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("shop");
    let out = init(&dir);
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "outlast.toml",
        "cluster.key",
        "api.token",
        "tls/ca.pem",
        "tls/ca.key",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    for site in ["east", "west", "witness"] {
        for f in [
            format!("tls/{site}.pem"),
            format!("systemd/outlast-{site}.service"),
        ] {
            assert!(dir.join(&f).is_file(), "{f}");
        }
        let key = dir.join(format!("tls/{site}.key"));
        let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is private", key.display());
    }
    assert_eq!(
        std::fs::metadata(dir.join("cluster.key"))
            .expect("secret")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let config = dir.join("outlast.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(
        text.lines().filter(|l| l.starts_with('#')).count() >= 10,
        "commented"
    );

    let check = Command::new(common::bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // The units.
    for site in ["east", "west", "witness"] {
        let unit = dir.join(format!("systemd/outlast-{site}.service"));
        let text = std::fs::read_to_string(&unit).expect("unit");
        for must in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            &format!("--site {site}"),
        ] {
            assert!(text.contains(must), "{must} in {}", unit.display());
        }
        parse_unit(&text).expect("unit parses");
        if Command::new("systemd-analyze")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok()
        {
            let v = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&unit)
                .output()
                .expect("verify");
            assert!(
                v.status.success(),
                "systemd-analyze verify {}: {}",
                unit.display(),
                String::from_utf8_lossy(&v.stderr)
            );
        } else {
            println!("systemd-analyze is absent: the unit was parse-checked only");
        }
    }

    // A second init into the same folder refuses and writes nothing.
    let before = std::fs::read(dir.join("cluster.key")).expect("secret");
    let again = init(&dir);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read(dir.join("cluster.key")).expect("secret"),
        before
    );

    // The cluster it describes runs: a backend beside the sites, and the shipped
    // region-loss drill, first with --attach against agents started as its units start
    // them (the token from the config's token_file), then in local mode.
    let mut backend = common::http_backend(BASE + 10, "app");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/region-loss.toml");
    let mut agents = Vec::new();
    for site in ["east", "west", "witness"] {
        let log = std::fs::File::create(dir.join(format!("{site}.log"))).expect("log");
        let child = Command::new(common::bin())
            .args(["agent", "--config"])
            .arg(&config)
            .args(["--site", site])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("agent");
        agents.push(child);
    }
    let api = std::net::SocketAddr::from(([127, 0, 0, 11], BASE + 1));
    let t = std::time::Instant::now();
    loop {
        let st = common::http_get(api, "/v1/status")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok());
        if st
            .as_ref()
            .is_some_and(|st| common::all_up(st) && st["dns"]["ready"] == true)
        {
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "init's cluster never came up: {st:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let drill = |report: &Path, attach: bool| {
        let mut cmd = Command::new(common::bin());
        cmd.args(["drill", "--config"])
            .arg(&config)
            .arg("--scenario")
            .arg(&scenario)
            .arg("--report")
            .arg(report)
            .env_remove("OUTLAST_TOKEN");
        if attach {
            cmd.arg("--attach");
        }
        let out = cmd.output().expect("drill");
        let json = std::fs::read_to_string(report.join("report.json")).unwrap_or_default();
        (out, json)
    };
    let (attached, json) = drill(&dir.join("report-attach"), true);
    for mut a in agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    assert!(
        attached.status.success(),
        "the shipped drill, attached to init's cluster: {}\n{}\n{json}",
        String::from_utf8_lossy(&attached.stdout),
        String::from_utf8_lossy(&attached.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&json).expect("report");
    println!("attached drill on init's cluster: rto_ms {}", r["rto_ms"]);
    assert!(r["rto_ms"].as_u64().is_some());

    let (local, json) = drill(&dir.join("report"), false);
    let _ = backend.kill();
    let _ = backend.wait();
    assert!(
        local.status.success(),
        "the drill on init's cluster: {}\n{}\n{json}",
        String::from_utf8_lossy(&local.stdout),
        String::from_utf8_lossy(&local.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&json).expect("report");
    println!("drill on init's cluster: rto_ms {}", r["rto_ms"]);
    assert!(r["rto_ms"].as_u64().is_some());
}
