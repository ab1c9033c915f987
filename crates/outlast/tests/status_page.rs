//! The public status page, as a browser without JavaScript and a Statuspage client read it
//! from the witness: a site loss shows as an active incident with the affected components,
//! and once the site is back and the primary has failed back, the incident is resolved and
//! the page is green again. Every site holds the same committed history; an operator's
//! words need the token and show at every site; the uptime bars count the outage. The
//! Atom feed parses as XML.

#![allow(clippy::disallowed_methods)]

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use serde_json::Value;

const TOKEN: &str = "status-page-token-0123456789";

/// A POST with an optional bearer token: (status code, body).
fn post(addr: std::net::SocketAddr, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

fn component<'a>(j: &'a Value, id: &str) -> &'a Value {
    j["components"]
        .as_array()
        .and_then(|c| c.iter().find(|x| x["id"] == id))
        .unwrap_or(&Value::Null)
}

/// Statuspage's summary shape: the fields its clients read.
fn check_shape(j: &Value) {
    for f in ["id", "name", "url", "time_zone", "updated_at"] {
        assert!(j["page"][f].is_string(), "page.{f}: {j}");
    }
    let indicator = j["status"]["indicator"].as_str().unwrap_or("");
    assert!(
        ["none", "minor", "major", "critical"].contains(&indicator),
        "{j}"
    );
    assert!(j["status"]["description"].is_string());
    for c in j["components"].as_array().expect("components") {
        for f in [
            "id",
            "name",
            "status",
            "created_at",
            "updated_at",
            "page_id",
        ] {
            assert!(c[f].is_string(), "component {f}: {c}");
        }
        assert!(c["position"].is_u64() && c["group"].is_boolean(), "{c}");
        let s = c["status"].as_str().unwrap_or("");
        assert!(
            [
                "operational",
                "degraded_performance",
                "partial_outage",
                "major_outage",
                "under_maintenance"
            ]
            .contains(&s),
            "{c}"
        );
    }
    for key in ["incidents", "past_incidents"] {
        for i in j[key].as_array().expect("incidents") {
            for f in [
                "id",
                "name",
                "status",
                "impact",
                "created_at",
                "updated_at",
                "shortlink",
            ] {
                assert!(i[f].is_string(), "incident {f}: {i}");
            }
            for u in i["incident_updates"].as_array().expect("updates") {
                for f in [
                    "id",
                    "status",
                    "body",
                    "incident_id",
                    "created_at",
                    "display_at",
                ] {
                    assert!(u[f].is_string(), "update {f}: {u}");
                }
            }
        }
    }
    assert!(j["scheduled_maintenances"].is_array());
}

fn atom_parses(c: &Cluster, site: &str) -> String {
    let feed = c.get(site, "/status/feed.atom").expect("feed");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("feed.xml");
    std::fs::write(&path, &feed).expect("write");
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E; t = E.parse(sys.argv[1]); ns = '{http://www.w3.org/2005/Atom}'; print(len(t.getroot().findall(ns + 'entry')))",
        ])
        .arg(&path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the feed is not XML: {}\n{feed}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Where the screenshots stay after the test (a CI artefact): `target/tmp/screenshots`.
fn shots() -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&d).expect("screenshots dir");
    d
}

/// A screenshot of `url` by Debian's Chromium, headless; its size in bytes (0 when
/// Chromium is not installed: the test says so and goes on). The page holds no script, so
/// what it shows is what a browser with JavaScript off shows.
fn screenshot(url: &str, name: &str) -> u64 {
    let Ok(found) = which_chromium() else {
        println!("chromium is not installed (apt-get install chromium): no screenshot");
        return 0;
    };
    let path = shots().join(name);
    let _ = std::fs::remove_file(&path);
    let mut cmd = std::process::Command::new(found);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1000,1500",
    ]);
    let out = cmd
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(
        len > 10_000,
        "chromium wrote no screenshot of {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("screenshot {} ({len} bytes)", path.display());
    len
}

fn which_chromium() -> Result<String, ()> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
        .ok_or(())
}

#[test]
fn the_witness_status_page_shows_a_site_loss_and_its_recovery() {
    let b = 10_400;
    let mut o = Opts::new(b);
    o.extra = format!("\n[api]\ntoken = \"{TOKEN}\"\n");
    let mut c = Cluster::new(o);
    c.start_all();
    c.wait_healthy();
    let json = |c: &Cluster| -> Value {
        serde_json::from_str(&c.get("witness", "/status.json").expect("status.json")).expect("json")
    };
    let j = json(&c);
    check_shape(&j);
    assert_eq!(j["status"]["description"], "All Systems Operational", "{j}");
    assert_eq!(component(&j, "service-db")["status"], "operational");
    println!(
        "history before the loss: {}",
        c.get("witness", "/v1/incidents").unwrap_or_default()
    );
    // A quiet cluster's history has begun: its first entry dates it.
    let since = |c: &Cluster| -> Option<u64> {
        let v: Value = serde_json::from_str(&c.get("witness", "/v1/status")?).ok()?;
        v["history"]["since_ms"].as_u64()
    };
    let t0 = Instant::now();
    while since(&c).is_none() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        since(&c).is_some(),
        "the history begins at the cluster's start"
    );
    // Real Chromium through WebDriver: one browser with JavaScript on at west's dashboard,
    // one with it off for the status page.
    let dash = webdriver::Browser::start(b + 50, true)
        .expect("chromedriver and chromium (apt-get install chromium-driver)");
    let plain = webdriver::Browser::start(b + 51, false).expect("a second browser");
    plain.goto("data:text/html,<p id=x>off</p><script>document.getElementById('x').textContent='on'</script>");
    assert_eq!(plain.text("#x"), "off", "this browser runs no JavaScript");
    dash.goto(&format!("http://{}/", c.api("west")));
    let first = dash.text("#live");
    assert!(first.contains("Sites") && first.contains("east"), "{first}");
    // A mark that a reload would wipe: the page must update itself in place.
    dash.script("window.__mark = 42; return 0;");

    c.kill9("east");
    c.wait_for("witness", Duration::from_secs(20), "east down", |st| {
        st["sites"].as_array().is_some_and(|s| {
            s.iter()
                .any(|x| x["name"] == "east" && x["state"] == "down")
        })
    });
    let j = json(&c);
    check_shape(&j);
    println!("while east is down: {}", j["status"]);
    assert_eq!(component(&j, "site-east")["status"], "major_outage", "{j}");
    assert_ne!(j["status"]["indicator"], "none", "{j}");
    let inc = j["incidents"]
        .as_array()
        .and_then(|i| i.iter().find(|x| x["name"] == "Site east is down"))
        .cloned()
        .expect("an active incident for east");
    let id = inc["id"].as_str().unwrap_or("").to_string();
    // The failover's update arrives as the primary moves.
    let moved = |c: &Cluster| {
        json(c)["incidents"].as_array().is_some_and(|i| {
            i.iter().any(|x| {
                x["id"] == id.as_str()
                    && x["incident_updates"].as_array().is_some_and(|u| {
                        u.iter().any(|u| {
                            u["body"]
                                .as_str()
                                .is_some_and(|b| b.contains("served from west"))
                        })
                    })
            })
        })
    };
    let t0 = Instant::now();
    while !moved(&c) && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(moved(&c), "the incident tells the failover: {}", json(&c));
    let j = json(&c);
    let inc = j["incidents"]
        .as_array()
        .and_then(|i| i.iter().find(|x| x["id"] == id.as_str()))
        .cloned()
        .unwrap_or_default();
    for id in ["site-east", "service-db"] {
        assert!(
            inc["components"]
                .as_array()
                .is_some_and(|c| c.iter().any(|x| x["id"] == id)),
            "{id}: {inc}"
        );
    }
    // Every site that is up holds the same history, committed through Raft.
    let history = |c: &Cluster, site: &str| -> Value {
        let v: Value =
            serde_json::from_str(&c.get(site, "/v1/incidents").expect("incidents")).expect("json");
        v["incidents"].clone()
    };
    let t0 = Instant::now();
    while history(&c, "west") != history(&c, "witness") && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(history(&c, "west"), history(&c, "witness"));
    // An operator's words: refused without the token, committed with it, shown everywhere.
    let (code, body) = post(
        c.api("west"),
        &format!("/v1/incidents/{id}"),
        None,
        r#"{"status": "identified", "message": "no token"}"#,
    );
    assert_eq!(code, 401, "{body}");
    let (code, body) = post(
        c.api("west"),
        &format!("/v1/incidents/{id}/updates"),
        Some(TOKEN),
        r#"{"status": "bogus", "message": "x"}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("investigating, identified"), "{body}");
    let (code, body) = post(
        c.api("west"),
        "/v1/incidents/999",
        Some(TOKEN),
        r#"{"status": "identified", "message": "x"}"#,
    );
    assert_eq!(code, 404, "{body}");
    let out = std::process::Command::new(common::bin())
        .args(["incident", "update", &id, "--status", "identified"])
        .arg("The east data centre lost power; its provider is on it.")
        .args(["--by", "ops on call"])
        .args(["--api", &format!("http://{}", c.api("west"))])
        .env("OUTLAST_TOKEN", TOKEN)
        .output()
        .expect("outlast incident update");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && said.contains("lost power"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("outlast incident update said:\n{said}");
    let t0 = Instant::now();
    while !c
        .get("witness", "/status")
        .is_some_and(|p| p.contains("lost power") && p.contains("ops on call"))
        && t0.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c
        .get("witness", "/status")
        .is_some_and(|p| p.contains("lost power")));
    let page = c.get("witness", "/status").expect("page");
    assert!(page.contains("Site east is down") && page.contains("Active incidents"));
    assert!(!page.contains("<script"), "the page needs no JavaScript");
    let entries: u64 = atom_parses(&c, "witness").parse().unwrap_or(0);
    assert!(entries >= 1, "the feed holds the incident");
    let url = format!("http://{}/status", c.api("witness"));
    screenshot(&url, "status-east-down.png");
    // The dashboard, never reloaded, now shows the incident.
    let t0 = Instant::now();
    while !dash.text("#live").contains("Site east is down")
        && t0.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    let live = dash.text("#live");
    assert!(
        live.contains("Site east is down"),
        "the dashboard updated itself: {live}"
    );
    assert_eq!(
        dash.script("return window.__mark;"),
        42,
        "updated in place, not reloaded"
    );
    let n = dash.screenshot(&shots().join("dashboard-east-down.png"));
    assert!(n > 10_000, "a dashboard screenshot");
    // The status page with JavaScript off: the incident and the affected components.
    plain.goto(&url);
    let text = plain.text("body");
    assert!(
        text.contains("Site east is down") && text.contains("Major outage"),
        "{text}"
    );
    let n = plain.screenshot(&shots().join("status-east-down-no-js.png"));
    assert!(n > 10_000, "a status page screenshot");

    // Back: green again, and the moves are past incidents, resolved.
    c.start("east");
    c.wait_for(
        "witness",
        Duration::from_secs(30),
        "east up and primary",
        |st| common::all_up(st) && common::acting_primary_is("east")(st),
    );
    let j = json(&c);
    check_shape(&j);
    assert_eq!(j["status"]["description"], "All Systems Operational", "{j}");
    assert!(
        j["incidents"].as_array().is_some_and(|i| i.is_empty()),
        "{j}"
    );
    let past = j["past_incidents"].as_array().cloned().unwrap_or_default();
    let done = past
        .iter()
        .find(|i| i["id"] == id.as_str())
        .cloned()
        .expect("east's incident among the past ones");
    assert_eq!(done["status"], "resolved", "{done}");
    let bodies: Vec<String> = done["incident_updates"]
        .as_array()
        .map(|u| {
            u.iter()
                .filter_map(|x| x["body"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    println!("east's incident, newest update first: {bodies:#?}");
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("served from east again (failback)")),
        "{bodies:?}"
    );
    assert!(
        bodies.iter().any(|b| b.contains("answers again")),
        "{bodies:?}"
    );
    // The outage counts against today's uptime, the same at every site.
    let up = component(&j, "service-db")["uptime_90d"]
        .as_f64()
        .unwrap_or(1.0);
    // The history starts with the cluster's first committed entry (at its start), so the
    // share is of the minutes since then, not of the whole day.
    println!("db's uptime today: {:.4} %", up * 100.0);
    assert!(up < 1.0 && up > 0.0, "db's uptime counts the outage: {up}");
    assert_eq!(history(&c, "west"), history(&c, "witness"));
    let page = c.get("west", "/status").expect("west serves it too");
    assert!(page.contains("Past incidents") && page.contains("% uptime"));
    atom_parses(&c, "west");
    plain.goto(&format!("http://{}/status", c.api("witness")));
    let text = plain.text("body");
    assert!(
        text.contains("All Systems Operational") && text.contains("resolved"),
        "{text}"
    );
    plain.screenshot(&shots().join("status-recovered-no-js.png"));
    dash.screenshot(&shots().join("dashboard-recovered.png"));
    screenshot(
        &format!("http://{}/status", c.api("west")),
        "status-recovered.png",
    );
}
