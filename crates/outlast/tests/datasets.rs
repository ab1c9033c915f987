//! A PostgreSQL dataset the agents run, on 127.0.0.11 (east) and .12 (west), with a
//! witness on .13: made and cloned by the agents, written to through a gateway at 200
//! commits/s, and through a site loss (kill -9 of east's agent and postmaster) and the
//! failback after it, timed as the writer sees it and checked for lost commits. Skipped
//! (saying so) when PostgreSQL is not installed.

// A test stands outside the agents and times them by the machine's own clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, PgReaper};
use serde_json::Value;

fn postgres_installed() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().any(|e| e.path().join("bin/initdb").exists()))
        .unwrap_or(false)
}

fn dataset(st: &Value) -> &Value {
    &st["datasets"][0]
}

fn member<'a>(st: &'a Value, site: &str) -> &'a Value {
    dataset(st)["members"]
        .as_array()
        .and_then(|m| m.iter().find(|x| x["site"] == site))
        .unwrap_or(&Value::Null)
}

/// Commits with sequence numbers through `addr` at `rate`/s in all, over four connections
/// (one synchronous commit waits for a disk flush in each of two sites, so one connection
/// alone manages about 80/s on this machine), reconnecting on any error (2 s timeouts, as
/// a client would), until `stop`; every acknowledged number with the time it was
/// acknowledged.
fn writer(
    addr: String,
    rate: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i64, Instant)>>>,
) -> std::thread::JoinHandle<()> {
    const CONNS: i64 = 4;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for lane in 0..CONNS {
                tasks.push(tokio::spawn(lane_writer(
                    addr.clone(),
                    lane,
                    CONNS,
                    rate / CONNS as u64,
                    stop.clone(),
                    acked.clone(),
                )));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    })
}

/// One connection's share: numbers `lane`, `lane + lanes`, ...
async fn lane_writer(
    addr: String,
    lane: i64,
    lanes: i64,
    rate: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i64, Instant)>>>,
) {
    let Some((host, port)) = addr.split_once(':') else {
        return;
    };
    let conninfo = format!(
        "host={host} port={port} user=app password=app-password-1 dbname=app connect_timeout=2"
    );
    let mut client: Option<tokio_postgres::Client> = None;
    let mut n: i64 = lane;
    let every = Duration::from_micros(1_000_000 / rate.max(1));
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio::time::timeout(
                Duration::from_secs(2),
                tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok((c, conn))) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Some(c)
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        let done = tokio::time::timeout(
            Duration::from_secs(2),
            c.execute("INSERT INTO seq VALUES ($1)", &[&n]),
        )
        .await;
        match done {
            Ok(Ok(_)) => {
                acked.lock().expect("acked").push((n, Instant::now()));
                n += lanes;
            }
            // Not acknowledged: the same number is tried again (a retry of a commit that
            // did land shows as a duplicate key, which is an answer).
            Ok(Err(e)) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                acked.lock().expect("acked").push((n, Instant::now()));
                n += lanes;
            }
            _ => client = None,
        }
        next += every;
        tokio::time::sleep_until(next).await;
        if tokio::time::Instant::now() > next + Duration::from_secs(1) {
            next = tokio::time::Instant::now();
        }
    }
}

async fn present(addr: &str) -> Option<std::collections::BTreeSet<i64>> {
    let (host, port) = addr.split_once(':')?;
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host={host} port={port} user=app password=app-password-1 dbname=app connect_timeout=2"
        ),
        tokio_postgres::NoTls,
    )
    .await
    .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let rows = c.query("SELECT n FROM seq", &[]).await.ok()?;
    Some(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

/// Runs `sql` as the application's user at `addr` (host:port); panics saying why it failed.
fn app_sql(addr: &str, sql: &str) {
    let (host, port) = addr.split_once(':').expect("host:port");
    let conninfo = format!(
        "host={host} port={port} user=app password=app-password-1 dbname=app connect_timeout=2"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (cl, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        cl.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} at {addr}: {e}"));
    });
}

fn lost(addr: &str, acked: &[(i64, Instant)]) -> Vec<i64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let have = rt.block_on(present(addr)).expect("read the table back");
    acked
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !have.contains(n))
        .collect()
}

fn dataset_config(b: u16, replication: &str) -> String {
    format!(
        r#"
[[datasets]]
name = "orders"
port = {pg}
replication = "{replication}"
[datasets.members]
east = {{ data_dir = "east/pg" }}
west = {{ data_dir = "west/pg" }}
[datasets.postgres]
password = "app-password-1"
allow = ["127.0.0.1"]
settings = {{ shared_buffers = "16MB" }}

[[services]]
name = "pg"
dataset = "orders"
port = {gw}
"#,
        pg = b + 20,
        gw = b + 21
    )
}

fn psql() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

/// Cuts west's replication from east's server as the isolation of east's site would on
/// a network. On one machine every connection to another 127/8 address comes from
/// 127.0.0.1, which `isolate` (site address to site address) does not touch: so the
/// streaming connection of west's server (found by `ss`) is dropped both ways, and new
/// connections by the servers' user to east's port are refused. A client run by root (the
/// writer) still reaches east's server, as a client inside east's site would.
fn cut_replication(c: &Cluster, port: u16) {
    let out = c
        .command("ss")
        .args([
            "-tnpH",
            "state",
            "established",
            &format!("( dport = :{port} )"),
        ])
        .output()
        .expect("ss");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut cut = 0;
    for line in text.lines().filter(|l| l.contains("\"postgres\"")) {
        let Some(local) = line.split_whitespace().nth(2) else {
            continue;
        };
        let Some((_, lport)) = local.rsplit_once(':') else {
            continue;
        };
        for dir in ["--sport", "--dport"] {
            common::run(
                c.command("iptables")
                    .args(["-A", "INPUT", "-p", "tcp", dir, lport, "-j", "DROP"]),
            );
        }
        cut += 1;
    }
    assert!(cut >= 1, "no streaming connection to east found:\n{text}");
    common::run(c.command("iptables").args([
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        "127.0.0.11",
        "--dport",
        &port.to_string(),
        "-m",
        "owner",
        "--uid-owner",
        "postgres",
        "-j",
        "DROP",
    ]));
}

/// Found by the issue's acceptance: a writer connected straight to an isolated primary's
/// server. In async mode nothing else stops it taking writes: the agent must stop the
/// server before the site's lease ends. The others promote; after the heal the old
/// primary rejoins as a standby, and the commits it took alone are kept in its diverged
/// archive, which starts and shows them.
#[test]
fn an_isolated_primary_stops_taking_writes_before_its_lease_ends() {
    if !postgres_installed() {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    }
    let Some(psql) = psql() else {
        println!("psql is not installed: skipped");
        return;
    };
    let b = 8700u16;
    let mut opts = Opts::new(b);
    opts.netns = true;
    opts.failback = "manual";
    opts.extra = dataset_config(b, "async");
    let mut c = Cluster::new(opts);
    let _reaper = PgReaper(vec![
        c.dir.path().join("east/pg"),
        c.dir.path().join("west/pg"),
    ]);
    c.start_all();
    c.wait_healthy();
    c.wait_for(
        "east",
        Duration::from_secs(60),
        "east primary, west streaming",
        |st| member(st, "east")["role"] == "primary" && member(st, "west")["role"] == "standby",
    );
    let conn = |host: &str| {
        format!(
            "host={host} port={} user=app password=app-password-1 dbname=app connect_timeout=1",
            b + 20
        )
    };
    let out = c
        .command(&psql.to_string_lossy())
        .args([
            &conn("127.0.0.11"),
            "-Atc",
            "CREATE TABLE seq (n bigint PRIMARY KEY)",
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A writer inside the namespace, straight to east's server (not through a gateway),
    // printing each acknowledged number with the wall-clock ms it was acknowledged at.
    let script = format!(
        "for i in $(seq 1 100000); do if {psql} '{conn}' -Atqc \"INSERT INTO seq VALUES ($i)\" >/dev/null 2>&1; then echo \"$i $(date +%s%3N)\"; fi; sleep 0.01; done",
        psql = psql.display(),
        conn = conn("127.0.0.11")
    );
    let log = c.dir.path().join("writer.log");
    let mut w = c
        .command("bash")
        .args(["-c", &script])
        .stdout(std::fs::File::create(&log).expect("writer log"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("writer");
    std::thread::sleep(Duration::from_secs(2));
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    let cut_ms = wall();
    c.isolate("east");
    cut_replication(&c, b + 20);
    c.wait_for("west", Duration::from_secs(15), "west promoted", |st| {
        member(st, "west")["role"] == "primary"
    });
    let st = c.status("west").unwrap_or_default();
    // An async failover says how far behind the new primary was, by the last positions.
    let behind = st["failovers"]
        .as_array()
        .and_then(|f| {
            f.iter()
                .rev()
                .find(|x| x["what"] == "pg" && x["to"] == "west")
        })
        .map(|f| f["wal_behind_bytes"].clone());
    println!("west was {behind:?} bytes of WAL behind east's last reported position");
    assert!(
        behind.as_ref().is_some_and(|b| b.is_u64()),
        "the failover reports the WAL west may lack: {behind:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let _ = w.kill();
    let _ = w.wait();
    let acks: Vec<(i64, u64)> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, at) = l.split_once(' ')?;
            Some((n.parse().ok()?, at.parse().ok()?))
        })
        .collect();
    let after: Vec<&(i64, u64)> = acks.iter().filter(|(_, at)| *at > cut_ms).collect();
    let last = after.last().map(|(_, at)| at - cut_ms).unwrap_or(0);
    println!(
        "{} commits acknowledged straight at east, {} after the cut, the last {last} ms after it (lease 1000 ms)",
        acks.len(),
        after.len()
    );
    assert!(acks.len() > 20, "the writer wrote: {acks:?}");
    // The lease runs from the last answered heartbeat, at or before the cut; the date is
    // read after psql returned (a few ms late at most).
    assert!(
        last < 1000,
        "a commit was acknowledged {last} ms after the cut"
    );
    let alone: Vec<i64> = after.iter().map(|(n, _)| *n).collect();

    // Heal: east rejoins as a standby; what it took alone is archived and readable.
    c.heal();
    common::run(c.command("iptables").args(["-F", "OUTPUT"]));
    let st_at = c.wait_for(
        "west",
        Duration::from_secs(60),
        "east rejoined as a standby",
        |st| member(st, "east")["role"] == "standby",
    );
    println!("east rejoined as a standby {st_at:?} after the heal");
    // West may see east's server stream before east's own loop has said so (and listed
    // the history it archived): wait for east's word too.
    c.wait_for(
        "east",
        Duration::from_secs(30),
        "east says it is a standby",
        |st| member(st, "east")["role"] == "standby",
    );
    let st = c.status("east").expect("status");
    let diverged = dataset(&st)["diverged"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(diverged.len(), 1, "{st}");
    let archive = PathBuf::from(diverged[0]["path"].as_str().expect("path"));
    let copy_port = b + 30;
    let data = archive.join("data");
    let tail = std::fs::read_to_string(data.join("outlast.conf")).unwrap_or_default();
    std::fs::write(
        data.join("outlast.conf"),
        format!("{tail}\nport = {copy_port}\ndefault_transaction_read_only = on\n"),
    )
    .expect("configure the copy");
    let _copy = PgReaper(vec![data.clone()]);
    let pg_ctl = psql.with_file_name("pg_ctl");
    let started = c
        .command("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&pg_ctl)
        .args(["start", "-w", "-D"])
        .arg(&data)
        .arg("-l")
        .arg(archive.join("copy.log"))
        .output()
        .expect("pg_ctl");
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let got = c
        .command(&psql.to_string_lossy())
        .args([
            &format!(
                "host=127.0.0.11 port={copy_port} user=app password=app-password-1 dbname=app"
            ),
            "-Atc",
            "SELECT n FROM seq ORDER BY n",
        ])
        .output()
        .expect("psql");
    let in_copy: std::collections::BTreeSet<i64> = String::from_utf8_lossy(&got.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let missing: Vec<&i64> = alone.iter().filter(|n| !in_copy.contains(n)).collect();
    println!(
        "{} commits east took alone after the cut; all {} readable in the archived copy",
        alone.len(),
        alone.len() - missing.len()
    );
    assert!(missing.is_empty(), "not in the archive: {missing:?}");
    let _ = c
        .command("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&pg_ctl)
        .args(["stop", "-m", "immediate", "-D"])
        .arg(&data)
        .output();
}

#[test]
fn a_site_loss_moves_the_database_and_loses_no_acknowledged_commit() {
    if !postgres_installed() {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    }
    let b = 8600u16;
    let mut opts = Opts::new(b);
    opts.failback_after = "3s";
    opts.extra = dataset_config(b, "sync");
    let mut c = Cluster::new(opts);
    let _reaper = PgReaper(vec![
        c.dir.path().join("east/pg"),
        c.dir.path().join("west/pg"),
    ]);
    let t = Instant::now();
    c.start_all();
    c.wait_healthy();
    c.wait_for(
        "east",
        Duration::from_secs(60),
        "east primary, west a sync standby",
        |st| {
            member(st, "east")["role"] == "primary"
                && member(st, "west")["role"] == "standby"
                && member(st, "west")["sync"] == "quorum"
                && dataset(st)["sync_set"] == serde_json::json!(["west"])
        },
    );
    println!(
        "made and cloned by the agents, in sync (west recorded as the synchronous standby), {:?} after the start",
        t.elapsed()
    );
    // Issue 38: every site's public status page gives the same verdict for a healthy
    // dataset, the witness's too (it runs no member; it said "Major Service Outage: no
    // member takes writes").
    for site in ["east", "west", "witness"] {
        c.wait_for(
            site,
            Duration::from_secs(10),
            "the dataset seen whole",
            |st| member(st, "east")["role"] == "primary" && member(st, "west")["role"] == "standby",
        );
        let page: Value =
            serde_json::from_str(&c.get(site, "/status.json").expect("status.json")).expect("json");
        let orders = page["components"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["id"] == "dataset-orders"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(orders["status"], "operational", "{site}'s page: {orders}");
    }
    app_sql(
        &format!("127.0.0.11:{}", b + 20),
        "CREATE TABLE seq (n bigint PRIMARY KEY)",
    );

    // The writer goes through west's gateway: the surviving site's, as a client that
    // reached it by DNS after the loss would.
    let west_gw = format!("127.0.0.12:{}", b + 21);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = writer(west_gw.clone(), 200, stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_secs(3));
    let before = acked.lock().expect("acked").len();
    println!("{before} commits acknowledged in the first 3 s through west's gateway");
    assert!(
        before > 400,
        "the writer commits through the gateway: {before} in 3 s"
    );

    // Site loss: east's agent and its postmaster, kill -9 both.
    let east_dir = c.dir.path().join("east/pg");
    let pid = outlast_db::running_postmaster(&east_dir).expect("east's postmaster");
    let killed = Instant::now();
    c.kill9("east");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let mut first_after = None;
    let until = Instant::now() + Duration::from_secs(20);
    while first_after.is_none() && Instant::now() < until {
        first_after = acked
            .lock()
            .expect("acked")
            .iter()
            .find(|(_, at)| *at > killed)
            .map(|(_, at)| at.duration_since(killed));
        std::thread::sleep(Duration::from_millis(5));
    }
    let rto = first_after.expect("a commit acknowledged after the kill");
    println!(
        "kill -9 of east's agent and postmaster to the first acknowledged commit on west: {rto:?}"
    );
    c.wait_for(
        "west",
        Duration::from_secs(10),
        "west primary, going on alone as recorded",
        |st| {
            member(st, "west")["role"] == "primary"
                && dataset(st)["sync_set"] == serde_json::json!([])
                && dataset(st)["standby_lost"] == "degraded"
        },
    );
    std::thread::sleep(Duration::from_secs(2));

    // East comes back: rewound (its crash left a tail past the fork, archived), a standby,
    // then the primary again by a planned switchover after failback_after.
    let back = Instant::now();
    c.start("east");
    c.wait_for(
        "west",
        Duration::from_secs(60),
        "east rejoined as a standby",
        |st| member(st, "east")["role"] == "standby",
    );
    println!(
        "east rejoined as a standby {:?} after its restart",
        back.elapsed()
    );
    c.wait_for("east", Duration::from_secs(60), "failback to east", |st| {
        member(st, "east")["role"] == "primary"
            && st["services"]
                .as_array()
                .and_then(|s| s.iter().find(|x| x["name"] == "pg"))
                .is_some_and(|s| s["primary"] == "east" && s["primary_acting"] == true)
    });
    println!("failed back to east {:?} after its restart", back.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    w.join().expect("writer");

    let acked = acked.lock().expect("acked").clone();
    // The longest time the writer waited for an acknowledgement across the failback.
    let mut acked = acked;
    acked.sort_by_key(|(_, at)| *at);
    let failback_hold = acked
        .windows(2)
        .filter(|p| p[0].1 > back)
        .map(|p| p[1].1.duration_since(p[0].1))
        .max()
        .unwrap_or_default();
    let missing = lost(&format!("127.0.0.11:{}", b + 20), &acked);
    println!(
        "{} commits acknowledged, {} lost; longest wait for an acknowledgement after east's return {failback_hold:?}",
        acked.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(
        rto < Duration::from_secs(3),
        "site loss to first commit: {rto:?}"
    );
    let st = c.status("west").expect("status");
    assert_eq!(dataset(&st)["primary"], "east", "{st}");
}

/// Runs `outlast` with `args` and the API token in the environment: (success, stdout and
/// stderr).
fn outlast_cli(args: &[&str], token: &str) -> (bool, String) {
    let out = std::process::Command::new(common::bin())
        .args(args)
        .env("OUTLAST_TOKEN", token)
        .output()
        .expect("run outlast");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// "writes held N ms" in an answer of `outlast switchover` or `maintenance`.
fn held_ms(said: &str) -> u64 {
    said.split("writes held ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no hold time in {said:?}"))
}

/// The longest wait between two acknowledgements from `from` to `to`.
fn longest_gap(acked: &[(i64, Instant)], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = acked
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at >= from && *at <= to)
        .collect();
    times.sort();
    times
        .windows(2)
        .map(|p| p[1].duration_since(p[0]))
        .max()
        .unwrap_or_default()
}

#[test]
fn a_planned_switchover_and_maintenance_move_the_database_with_nothing_lost() {
    if !postgres_installed() {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    }
    let b = 8800u16;
    let token = "switch-token-0123";
    let mut opts = Opts::new(b);
    opts.failback_after = "2s";
    opts.extra = format!(
        "{}\n[api]\ntoken = \"{token}\"\n",
        dataset_config(b, "sync")
    );
    let mut c = Cluster::new(opts);
    let _reaper = PgReaper(vec![
        c.dir.path().join("east/pg"),
        c.dir.path().join("west/pg"),
    ]);
    c.start_all();
    c.wait_healthy();
    c.wait_for(
        "east",
        Duration::from_secs(60),
        "east primary, west a sync standby",
        |st| member(st, "east")["role"] == "primary" && member(st, "west")["sync"] == "quorum",
    );
    app_sql(
        &format!("127.0.0.11:{}", b + 20),
        "CREATE TABLE seq (n bigint PRIMARY KEY)",
    );
    let api = |site: &str| format!("http://{}", c.api(site));

    // Refused, changing nothing: a wrong token, an unknown site, a site with no member.
    let (ok, said) = outlast_cli(
        &[
            "switchover",
            "--dataset",
            "orders",
            "--to",
            "west",
            "--api",
            &api("east"),
        ],
        "wrong-token",
    );
    assert!(!ok && said.contains("401"), "{said}");
    let (ok, said) = outlast_cli(
        &[
            "switchover",
            "--dataset",
            "orders",
            "--to",
            "mars",
            "--api",
            &api("east"),
        ],
        token,
    );
    assert!(
        !ok && said.contains("404") && said.contains("mars"),
        "{said}"
    );
    let (ok, said) = outlast_cli(
        &[
            "switchover",
            "--dataset",
            "orders",
            "--to",
            "witness",
            "--api",
            &api("east"),
        ],
        token,
    );
    assert!(
        !ok && said.contains("409") && said.contains("no backends"),
        "{said}"
    );
    let (ok, said) = outlast_cli(
        &[
            "switchover",
            "--dataset",
            "orders",
            "--to",
            "east",
            "--api",
            &api("east"),
        ],
        token,
    );
    assert!(!ok && said.contains("already"), "{said}");

    let west_gw = format!("127.0.0.12:{}", b + 21);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = writer(west_gw, 200, stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_secs(3));

    // A switchover asked at the witness (which passes it to the leader when it does not
    // lead itself).
    let t0 = Instant::now();
    let (ok, said) = outlast_cli(
        &[
            "switchover",
            "--dataset",
            "orders",
            "--to",
            "west",
            "--api",
            &api("witness"),
        ],
        token,
    );
    let t1 = Instant::now();
    assert!(ok, "switchover: {said}");
    println!(
        "switchover east -> west: {} (answered in {:?})",
        said.trim(),
        t1 - t0
    );
    let held_switch = held_ms(&said);
    let st = c.status("west").expect("status");
    assert_eq!(dataset(&st)["primary"], "west", "{st}");
    assert_eq!(member(&st, "west")["role"], "primary", "{st}");
    // An operator's switchover is not undone by failback = "auto" (failback_after 2 s).
    std::thread::sleep(Duration::from_secs(4));
    let st = c.status("west").expect("status");
    assert_eq!(
        dataset(&st)["primary"],
        "west",
        "stayed where it was put: {st}"
    );
    c.wait_for(
        "west",
        Duration::from_secs(30),
        "east a standby again",
        |st| member(st, "east")["role"] == "standby",
    );

    // West into maintenance: the primary moves away to east, planned.
    let t2 = Instant::now();
    let (ok, said) = outlast_cli(&["maintenance", "west", "on", "--api", &api("east")], token);
    let t3 = Instant::now();
    assert!(ok, "maintenance on: {said}");
    println!(
        "maintenance west on: {} (answered in {:?})",
        said.trim(),
        t3 - t2
    );
    let held_maint = held_ms(&said);
    let st = c.status("east").expect("status");
    assert_eq!(dataset(&st)["primary"], "east", "{st}");
    let west = st["sites"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["name"] == "west"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(west["state"], "maintenance", "{st}");
    let (ok, said) = outlast_cli(
        &[
            "switchover",
            "--dataset",
            "orders",
            "--to",
            "west",
            "--api",
            &api("east"),
        ],
        token,
    );
    assert!(
        !ok && said.contains("maintenance"),
        "a site in maintenance is not chosen: {said}"
    );
    let (ok, said) = outlast_cli(
        &["maintenance", "west", "off", "--api", &api("east")],
        token,
    );
    assert!(ok, "maintenance off: {said}");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    w.join().expect("writer");

    let acked = acked.lock().expect("acked").clone();
    let gap_switch = longest_gap(&acked, t0, t1 + Duration::from_secs(1));
    let gap_maint = longest_gap(&acked, t2, t3 + Duration::from_secs(1));
    let missing = lost(&format!("127.0.0.11:{}", b + 20), &acked);
    println!(
        "{} commits acknowledged through west's gateway, {} lost; writes held (agent's word) {held_switch} ms and {held_maint} ms; longest wait for an acknowledgement (writer's clock) {gap_switch:?} and {gap_maint:?}",
        acked.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    // Each target promoted on the old server's word of where it stopped, having replayed
    // past it, not on a timeout.
    let logs = c.logs();
    assert_eq!(
        logs.matches("holds everything the old primary wrote")
            .count(),
        2,
        "both promotions waited for the old primary's last record"
    );
    assert!(
        !logs.contains("promoting on what this site has"),
        "no promotion on a timeout"
    );
    for gap in [gap_switch, gap_maint] {
        assert!(
            gap < Duration::from_secs(5),
            "writes held too long: {gap:?}"
        );
    }
}

/// The drill's dataset workload against a PostgreSQL dataset: `outlast drill` starts the
/// agents, inserts 200 rows/s through the dataset's service, kills east (its agent and
/// its server) and restarts it; the report's `db` figures come from the writer's own
/// acknowledgements and the final primary's rows.
#[test]
fn a_drill_reports_the_database_downtime_and_that_nothing_acknowledged_was_lost() {
    if !postgres_installed() {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    }
    let b = 8900u16;
    let mut opts = Opts::new(b);
    opts.failback_after = "3s";
    opts.extra = dataset_config(b, "sync");
    let c = Cluster::new(opts);
    let _reaper = PgReaper(vec![
        c.dir.path().join("east/pg"),
        c.dir.path().join("west/pg"),
    ]);
    let scenario = c.dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        r#"name = "db-site-loss"
duration = "24s"
[workload]
dataset = "orders"
write_rate = 200
[[steps]]
at = "5s"
fault = "kill"
site = "east"
[[steps]]
at = "12s"
fault = "restart"
site = "east"
[expect]
db_lost = "== 0"
db_rto_ms = "< 3000"
"#,
    )
    .expect("scenario");
    let report = c.dir.path().join("report");
    let out = std::process::Command::new(common::bin())
        .args(["drill", "--config"])
        .arg(&c.config)
        .arg("--scenario")
        .arg(&scenario)
        .arg("--report")
        .arg(&report)
        .output()
        .expect("outlast drill");
    let text = std::fs::read_to_string(report.join("report.json")).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let r: Value = serde_json::from_str(&text).expect("report json");
    let db = &r["db"];
    println!("db figures: {db}");
    assert_eq!(out.status.code(), Some(0), "every expectation holds: {r}");
    let acked = db["acked"].as_u64().unwrap_or(0);
    assert!(
        acked > 2000,
        "about 200 commits/s for 24 s less the outage: {db}"
    );
    assert_eq!(db["lost"], 0, "{db}");
    let rto = db["rto_ms"].as_u64().unwrap_or(u64::MAX);
    assert!(
        rto > 300 && rto < 3000,
        "a site loss stops writes for a while, not for free and not for long: {db}"
    );
    assert!(db["failed"].as_u64().unwrap_or(0) >= 1, "{db}");
    let html = std::fs::read_to_string(report.join("index.html")).expect("index.html");
    assert!(html.contains("database downtime") && html.contains("DB RTO"));
    assert!(
        r["phases"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["name"] == "db-promoted")),
        "the promotion is among the phases: {}",
        r["phases"]
    );
}

/// The acceptance's "losing the only standby": kill -9 of west's agent and postmaster while
/// a writer commits through east's gateway. `degrade`: once the quorum has declared west
/// down (and recorded going on alone), commits go on in east alone, with a `db-degraded`
/// alert, and `db-sync-restored` when west streams again. `block`: no commit is
/// acknowledged while west is down (`db-blocked`); they resume when it is back. Nothing
/// acknowledged is lost either way.
fn lose_the_only_standby(b: u16, standby_lost: &str) {
    if !postgres_installed() {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    }
    let mut opts = Opts::new(b);
    let alerts =
        std::env::temp_dir().join(format!("outlast-alerts-{b}-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&alerts);
    opts.extra = format!(
        "{}\n[[alerts]]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >> {}; echo >> {}\"]\n",
        dataset_config(b, "sync").replace(
            "replication = \"sync\"",
            &format!("replication = \"sync\"\nstandby_lost = \"{standby_lost}\""),
        ),
        alerts.display(),
        alerts.display()
    );
    let mut c = Cluster::new(opts);
    let _reaper = PgReaper(vec![
        c.dir.path().join("east/pg"),
        c.dir.path().join("west/pg"),
    ]);
    c.start_all();
    c.wait_healthy();
    c.wait_for(
        "east",
        Duration::from_secs(60),
        "east primary, west a sync standby",
        |st| {
            member(st, "west")["sync"] == "quorum"
                && dataset(st)["sync_set"] == serde_json::json!(["west"])
        },
    );
    app_sql(
        &format!("127.0.0.11:{}", b + 20),
        "CREATE TABLE seq (n bigint PRIMARY KEY)",
    );
    let east_gw = format!("127.0.0.11:{}", b + 21);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = writer(east_gw, 200, stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_secs(2));

    let west_dir = c.dir.path().join("west/pg");
    let pid = outlast_db::running_postmaster(&west_dir).expect("west's postmaster");
    let killed = Instant::now();
    c.kill9("west");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let word = if standby_lost == "block" {
        "blocked"
    } else {
        "degraded"
    };
    let said = c.wait_for("east", Duration::from_secs(15), word, |st| {
        dataset(st)["standby_lost"] == word
    });
    std::thread::sleep(Duration::from_secs(4));
    let down_until = Instant::now();
    let during: Vec<Duration> = acked
        .lock()
        .expect("acked")
        .iter()
        .filter(|(_, at)| *at > killed)
        .map(|(_, at)| at.duration_since(killed))
        .collect();
    println!(
        "{standby_lost}: east said {word} {said:?} after west's loss; {} commits acknowledged in the {:?} west was down, the first {:?} after the kill",
        during.len(),
        down_until.duration_since(killed),
        during.first()
    );

    let back = Instant::now();
    c.start("west");
    c.wait_for(
        "east",
        Duration::from_secs(60),
        "west streaming in sync again",
        |st| member(st, "west")["sync"] == "quorum" && dataset(st)["standby_lost"].is_null(),
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    w.join().expect("writer");
    let acked = acked.lock().expect("acked").clone();
    let resumed = acked.iter().filter(|(_, at)| *at > back).count();
    let missing = lost(&format!("127.0.0.11:{}", b + 20), &acked);
    let sent = std::fs::read_to_string(&alerts).unwrap_or_default();
    let _ = std::fs::remove_file(&alerts);
    let kinds: Vec<String> = sent
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["kind"].as_str().map(str::to_string))
        .filter(|k| k.starts_with("db-"))
        .collect();
    println!(
        "{standby_lost}: {} commits in all, {resumed} after west's return, {} lost; alerts {kinds:?}",
        acked.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(resumed > 50, "commits resumed once west was back");
    assert!(
        kinds.contains(&format!("db-{word}")) && kinds.contains(&"db-sync-restored".to_string()),
        "alerts: {kinds:?}"
    );
    let other = if word == "blocked" {
        "db-degraded"
    } else {
        "db-blocked"
    };
    assert!(!kinds.iter().any(|k| k == other), "alerts: {kinds:?}");
    if standby_lost == "block" {
        // A commit that was in flight at the kill may still land just after it; none once
        // the quorum has declared west down.
        let late = during
            .iter()
            .filter(|d| **d > Duration::from_millis(500))
            .count();
        assert_eq!(
            late, 0,
            "block: commits acknowledged while west was down: {during:?}"
        );
    } else {
        assert!(
            during.len() > 300,
            "degrade: commits go on without west: {} in {:?}",
            during.len(),
            down_until.duration_since(killed)
        );
        assert!(
            during.first().is_some_and(|d| *d < Duration::from_secs(3)),
            "degrade: the first commit without west came {:?} after the kill",
            during.first()
        );
    }
}

#[test]
fn losing_the_only_standby_degrades_and_writes_go_on() {
    lose_the_only_standby(9400, "degrade");
}

#[test]
fn losing_the_only_standby_with_block_holds_writes_until_it_returns() {
    lose_the_only_standby(9500, "block");
}

/// Async with `max_lag = "64kB"`: west's replay is paused, east writes a few MB and is lost
/// (kill -9 of its agent and postmaster). The failover is held back (west is too far
/// behind): no promotion, a `failover-held` alert naming west. An operator's switchover to
/// west then moves it anyway, and west takes writes.
#[test]
fn a_failover_max_lag_holds_back_alerts_and_a_switchover_still_moves_it() {
    if !postgres_installed() {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    }
    let b = 9600u16;
    let token = "held-token-0123";
    let alerts =
        std::env::temp_dir().join(format!("outlast-alerts-{b}-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&alerts);
    let mut opts = Opts::new(b);
    opts.failback = "manual";
    opts.extra = format!(
        "{}\n[api]\ntoken = \"{token}\"\n\n[[alerts]]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >> {}; echo >> {}\"]\n",
        dataset_config(b, "async").replace(
            "replication = \"async\"",
            "replication = \"async\"\nmax_lag = \"64kB\"",
        ),
        alerts.display(),
        alerts.display()
    );
    let mut c = Cluster::new(opts);
    let _reaper = PgReaper(vec![
        c.dir.path().join("east/pg"),
        c.dir.path().join("west/pg"),
    ]);
    c.start_all();
    c.wait_healthy();
    c.wait_for(
        "east",
        Duration::from_secs(60),
        "east primary, west streaming",
        |st| member(st, "east")["role"] == "primary" && member(st, "west")["role"] == "standby",
    );
    let admin = outlast_db::admin_password("test-secret-0123456789abcdef", "orders");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sql = |host: &str, user: &str, pw: &str, q: &str| {
        let conninfo = format!(
            "host={host} port={} user={user} password={pw} dbname=app connect_timeout=2",
            b + 20
        );
        let q = q.to_string();
        rt.block_on(async move {
            let (cl, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            cl.batch_execute(&q).await
        })
    };
    sql(
        "127.0.0.12",
        "outlast",
        &admin,
        "SELECT pg_wal_replay_pause()",
    )
    .expect("pause west");
    sql(
        "127.0.0.11",
        "app",
        "app-password-1",
        "CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    )
    .expect("write on east");
    // West's report of its (paused) position, then east's of its own, reach every site
    // (the leader among them): each sees west more than max_lag behind.
    for site in ["east", "west", "witness"] {
        c.wait_for(site, Duration::from_secs(20), "west's lag reported", |st| {
            member(st, "west")["lag_bytes"]
                .as_u64()
                .is_some_and(|l| l > 64 * 1024)
        });
    }
    let east_dir = c.dir.path().join("east/pg");
    let pid = outlast_db::running_postmaster(&east_dir).expect("east's postmaster");
    c.kill9("east");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let mut held = None;
    let until = Instant::now() + Duration::from_secs(15);
    while held.is_none() && Instant::now() < until {
        held = std::fs::read_to_string(&alerts)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["kind"] == "failover-held");
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = held.expect("a failover-held alert");
    println!("alert: {}", held["message"]);
    assert_eq!(held["to"], "west", "{held}");
    std::thread::sleep(Duration::from_secs(2));
    let st = c.status("west").expect("status");
    let svc = st["services"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["name"] == "pg"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(svc["primary"], "east", "no failover past max_lag: {svc}");
    assert_eq!(member(&st, "west")["role"], "standby", "{st}");

    let api = format!("http://{}", c.api("west"));
    let t = Instant::now();
    let (ok, said) = outlast_cli(
        &[
            "switchover",
            "--api",
            &api,
            "--service",
            "pg",
            "--to",
            "west",
        ],
        token,
    );
    println!("switchover to west: {said} ({:?})", t.elapsed());
    assert!(ok, "{said}");
    c.wait_for("west", Duration::from_secs(20), "west primary", |st| {
        member(st, "west")["role"] == "primary"
    });
    sql(
        "127.0.0.12",
        "app",
        "app-password-1",
        "CREATE TABLE after_move (n int)",
    )
    .expect("west takes writes");
    let _ = std::fs::remove_file(&alerts);
}

/// Issue 19's rebuild: east (the primary, and a `path:` backup's site) loses everything
/// (agent and server killed, its Raft dir, its data dir and the backed-up directory
/// deleted) while a writer commits through west; `outlast rebuild --site east` brings it
/// back as a standby with every acknowledged commit, the directory restored from its
/// snapshot, following the leader. Run again on the rebuilt site, it refuses and changes
/// nothing.
/// `outlast rebuild --site east`, as the machine's operator would run it (it goes on as
/// east's agent, reaped with the cluster): what it printed once east rejoined, checked to
/// hold the stopwatch's table.
fn rebuild_east(c: &mut Cluster) -> String {
    let out_path = c.dir.path().join("rebuild.out");
    let out = std::fs::File::create(&out_path).expect("out");
    let log_path = c.dir.path().join("rebuild.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let t = Instant::now();
    let child = c
        .command(common::bin())
        .args(["rebuild", "--config"])
        .arg(&c.config)
        .args(["--site", "east"])
        .env("OUTLAST_LOG", outlast::logging::DEFAULT_FILTER)
        .stdout(out)
        .stderr(log)
        .spawn()
        .expect("spawn rebuild");
    c.agents.insert("east".into(), child);
    let mut said = String::new();
    while t.elapsed() < Duration::from_secs(180) && !said.contains("the agent goes on running") {
        std::thread::sleep(Duration::from_millis(100));
        said = std::fs::read_to_string(&out_path).unwrap_or_default();
        let ended = c
            .agents
            .get_mut("east")
            .and_then(|ch| ch.try_wait().ok().flatten());
        if ended.is_some() {
            break;
        }
    }
    println!("outlast rebuild --site east ({:?}):\n{said}", t.elapsed());
    assert!(
        said.contains("rebuilt east in"),
        "{said}{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    said
}

#[test]
fn a_wiped_site_is_rebuilt_from_its_peers_with_every_acknowledged_commit() {
    if !postgres_installed() {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    }
    let b = 9900u16;
    let root = tempfile::tempdir().expect("tempdir");
    let uploads = root.path().join("uploads");
    std::fs::create_dir_all(uploads.join("img")).expect("mkdir");
    for i in 0..20u32 {
        let body: Vec<u8> = (0..50_000u32)
            .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i) >> 13) as u8)
            .collect();
        std::fs::write(uploads.join(format!("img/p{i}.bin")), body).expect("write");
    }
    std::fs::write(uploads.join("readme.txt"), "kept by outlast\n".repeat(100)).expect("write");
    let before = common::files(&uploads);
    let pass = root.path().join("backup.pass");
    std::fs::write(&pass, "rebuild test password\n").expect("write");
    let mut opts = Opts::new(b);
    // West stays the primary while east is rebuilt.
    opts.failback_after = "1h";
    opts.extra = format!(
        r#"{}
[[backups]]
name = "uploads"
source = "path:{}"
every = "1h"
verify_every = "1h"
[[backups.repos]]
url = "file://{}"
password_file = "{}"
"#,
        dataset_config(b, "sync"),
        uploads.display(),
        root.path().join("repo").display(),
        pass.display()
    );
    let mut c = Cluster::new(opts);
    let east_pg_dir = c.dir.path().join("east/pg");
    let east_state = c.dir.path().join("data/east");
    let _reaper = PgReaper(vec![east_pg_dir.clone(), c.dir.path().join("west/pg")]);
    c.start_all();
    c.wait_healthy();
    c.wait_for(
        "east",
        Duration::from_secs(60),
        "east primary, west a sync standby",
        |st| member(st, "east")["role"] == "primary" && member(st, "west")["role"] == "standby",
    );
    app_sql(&format!("127.0.0.11:{}", b + 20), "CREATE TABLE seq (n bigint PRIMARY KEY); CREATE TABLE bulk AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 100000) g");
    c.wait_for(
        "east",
        Duration::from_secs(60),
        "east backed up uploads",
        |st| {
            st["backups"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == "uploads"))
                .is_some_and(|x| x["last_ok"].is_object())
        },
    );

    let west_gw = format!("127.0.0.12:{}", b + 21);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = writer(west_gw, 200, stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_secs(2));

    // East is lost for good: agent and server killed, every byte it kept deleted.
    let pid = outlast_db::running_postmaster(&east_pg_dir).expect("east's postmaster");
    c.kill9("east");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    for dir in [&east_pg_dir, &east_state, &uploads] {
        assert!(dir.exists(), "{} to wipe", dir.display());
        std::fs::remove_dir_all(dir).expect("wipe");
    }
    c.wait_for(
        "west",
        Duration::from_secs(20),
        "west primary alone",
        |st| member(st, "west")["role"] == "primary",
    );
    std::thread::sleep(Duration::from_secs(2));
    let during = acked.lock().expect("acked").len();

    // The rebuild, as the machine's operator would run it, while the writer goes on.
    let said = rebuild_east(&mut c);
    assert!(said.contains("cloned from the primary at west"), "{said}");
    assert_eq!(
        common::files(&uploads),
        before,
        "uploads restored byte for byte"
    );

    c.wait_for(
        "west",
        Duration::from_secs(30),
        "east a sync standby again",
        |st| member(st, "east")["role"] == "standby" && member(st, "east")["sync"] == "quorum",
    );
    let st = c.status("east").expect("east answers");
    let leader = c.status("west").expect("west answers")["leader"].clone();
    assert!(leader.is_string(), "west names a leader");
    assert_eq!(st["leader"], leader, "east follows the leader: {st}");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    w.join().expect("writer");
    let acked = acked.lock().expect("acked").clone();
    c.wait_for("west", Duration::from_secs(30), "east caught up", |st| {
        member(st, "east")["lag_bytes"] == 0
    });
    let lost_west = lost(&format!("127.0.0.12:{}", b + 20), &acked);
    let lost_east = lost(&format!("127.0.0.11:{}", b + 20), &acked);
    println!(
        "{} commits acknowledged ({during} before the rebuild began); missing on west {}, on the rebuilt east {}",
        acked.len(),
        lost_west.len(),
        lost_east.len()
    );
    assert!(lost_west.is_empty(), "lost on west: {lost_west:?}");
    assert!(
        lost_east.is_empty(),
        "missing on the rebuilt east: {lost_east:?}"
    );

    // A site that has state is not rebuilt: refused, nothing touched.
    let again = std::process::Command::new(common::bin())
        .args(["rebuild", "--config"])
        .arg(&c.config)
        .args(["--site", "east"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&again.stderr).to_string();
    assert!(!again.status.success(), "{text}");
    assert!(text.contains("kept state"), "{text}");
    assert!(
        outlast_db::running_postmaster(&east_pg_dir).is_some(),
        "east's server still runs"
    );
}

#[test]
fn a_site_lost_with_its_only_member_is_rebuilt_from_the_backup_plus_its_wal() {
    if !postgres_installed() {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    }
    let b = 10_100u16;
    let root = tempfile::tempdir().expect("tempdir");
    let pass = root.path().join("backup.pass");
    std::fs::write(&pass, "rebuild test password\n").expect("write");
    let mut opts = Opts::new(b);
    // East runs the dataset's only member: nothing survives its loss but the backup.
    opts.extra = format!(
        r#"
[[datasets]]
name = "orders"
port = {pg}
replication = "async"
[datasets.members]
east = {{ data_dir = "east/pg" }}
[datasets.postgres]
password = "app-password-1"
allow = ["127.0.0.1"]
settings = {{ shared_buffers = "16MB" }}

[[services]]
name = "pg"
dataset = "orders"
port = {gw}

[[backups]]
name = "orders"
source = "dataset:orders"
every = "1h"
verify_every = "1h"
wal = true
wal_every = "1s"
[[backups.repos]]
url = "file://{repo}"
password_file = "{pass}"
"#,
        pg = b + 20,
        gw = b + 21,
        repo = root.path().join("repo").display(),
        pass = pass.display()
    );
    let mut c = Cluster::new(opts);
    let east_pg_dir = c.dir.path().join("east/pg");
    let east_spool = c.dir.path().join("east/pg.wal-spool");
    let east_state = c.dir.path().join("data/east");
    let _reaper = PgReaper(vec![east_pg_dir.clone()]);
    c.start_all();
    c.wait_healthy();
    c.wait_for("east", Duration::from_secs(60), "east primary", |st| {
        member(st, "east")["role"] == "primary"
    });
    app_sql(
        &format!("127.0.0.11:{}", b + 20),
        "CREATE TABLE seq (n bigint PRIMARY KEY)",
    );
    c.wait_for(
        "east",
        Duration::from_secs(90),
        "east took its base backup",
        |st| {
            st["backups"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == "orders"))
                .is_some_and(|x| x["last_ok"].is_object())
        },
    );

    let west_gw = format!("127.0.0.12:{}", b + 21);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = writer(west_gw, 200, stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_secs(5));

    // East is lost with everything it kept, its WAL spool included.
    let pid = outlast_db::running_postmaster(&east_pg_dir).expect("east's postmaster");
    c.kill9("east");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let lost_at = Instant::now();
    for dir in [&east_pg_dir, &east_spool, &east_state] {
        assert!(dir.exists(), "{} to wipe", dir.display());
        std::fs::remove_dir_all(dir).expect("wipe");
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    w.join().expect("writer");
    let acked = acked.lock().expect("acked").clone();

    // Started as a plain agent instead, the wiped site must not make an empty primary in
    // the data's place: its backup holds the data.
    c.start("east");
    c.wait_for(
        "east",
        Duration::from_secs(60),
        "east refuses to start empty",
        |st| {
            member(st, "east")["error"]
                .as_str()
                .is_some_and(|e| e.contains("will not start an empty primary"))
        },
    );
    let said = c.status("east").expect("status");
    println!(
        "a plain agent on the wiped east: {}",
        member(&said, "east")["error"]
    );
    assert!(
        outlast_db::running_postmaster(&east_pg_dir).is_none(),
        "no server runs on the empty dir"
    );
    c.kill9("east");
    for dir in [&east_pg_dir, &east_spool, &east_state] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).expect("wipe again");
        }
    }

    let said = rebuild_east(&mut c);
    assert!(said.contains("restored snapshot"), "{said}");
    assert!(said.contains("replayed"), "{said}");
    c.wait_for(
        "east",
        Duration::from_secs(60),
        "east's member primary again",
        |st| member(st, "east")["role"] == "primary",
    );
    let missing = lost(&format!("127.0.0.11:{}", b + 20), &acked);
    let when: std::collections::HashMap<i64, Instant> = acked.iter().cloned().collect();
    let oldest_lost_ms = missing
        .iter()
        .filter_map(|n| when.get(n))
        .map(|at| lost_at.saturating_duration_since(*at).as_millis())
        .max()
        .unwrap_or(0);
    println!(
        "{} commits acknowledged; {} lost, acknowledged at most {oldest_lost_ms} ms before the loss (every = 1h, wal_every = 1s)",
        acked.len(),
        missing.len()
    );
    assert!(acked.len() > 500, "the writer wrote {}", acked.len());
    // What was lost is what east had not yet shipped: a segment switch (archive_timeout =
    // wal_every) and a batch (wal_every) plus the shipping itself.
    assert!(
        oldest_lost_ms <= 4_000,
        "commits acknowledged {oldest_lost_ms} ms before the loss are missing: {missing:?}"
    );
}

/// A drill's `wipe` and `rebuild` faults: east (the primary) is lost with every byte it
/// kept while the drill commits 200 rows/s, then rebuilt by `outlast rebuild`; the report
/// times each step of the rebuild, shows the newest verified restore of the dataset's
/// backup, and no acknowledged commit is lost.
#[test]
fn a_drill_wipes_a_site_and_times_its_rebuild() {
    if !postgres_installed() {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    }
    let b = 10_200u16;
    let mut opts = Opts::new(b);
    // West stays the primary while east is rebuilt from it.
    opts.failback_after = "1h";
    let repo = tempfile::tempdir().expect("tempdir");
    let pass = repo.path().join("backup.pass");
    std::fs::write(&pass, "drill test password\n").expect("write");
    opts.extra = format!(
        r#"{}
[[backups]]
name = "orders"
source = "dataset:orders"
every = "1h"
verify_every = "1h"
wal = true
wal_every = "2s"
[[backups.repos]]
url = "file://{}"
password_file = "{}"
"#,
        dataset_config(b, "sync"),
        repo.path().join("repo").display(),
        pass.display()
    );
    let c = Cluster::new(opts);
    let _reaper = PgReaper(vec![
        c.dir.path().join("east/pg"),
        c.dir.path().join("west/pg"),
    ]);
    let scenario = c.dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        r#"name = "wipe-east"
duration = "30s"
[workload]
dataset = "orders"
write_rate = 200
[[steps]]
at = "6s"
fault = "wipe"
site = "east"
[[steps]]
at = "10s"
fault = "rebuild"
site = "east"
[expect]
db_lost = "== 0"
rebuild_ms = "< 60000"
"#,
    )
    .expect("scenario");
    let report = c.dir.path().join("report");
    let out = std::process::Command::new(common::bin())
        .args(["drill", "--config"])
        .arg(&c.config)
        .arg("--scenario")
        .arg(&scenario)
        .arg("--report")
        .arg(&report)
        .output()
        .expect("outlast drill");
    let text = std::fs::read_to_string(report.join("report.json")).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let r: Value = serde_json::from_str(&text).expect("report json");
    println!("rebuilds: {}", r["rebuilds"]);
    println!("restores: {}", r["restores"]);
    println!("db: {}", r["db"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "every expectation holds: {}",
        r["expectations"]
    );
    let rb = &r["rebuilds"][0];
    assert_eq!(rb["site"], "east", "{rb}");
    let total = rb["total_ms"].as_u64().expect("the rebuild rejoined");
    let steps = rb["steps"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    assert_eq!(
        names,
        [
            "cluster state",
            "dataset orders",
            "agent started",
            "rejoined"
        ],
        "{rb}"
    );
    assert!(
        steps[1]["said"]
            .as_str()
            .is_some_and(|s| s.contains("cloned from the primary at west")),
        "{rb}"
    );
    let sum: u64 = steps.iter().filter_map(|s| s["ms"].as_u64()).sum();
    assert!(sum <= total + 5, "the steps add up to the total: {rb}");
    assert_eq!(r["db"]["lost"], 0, "{}", r["db"]);
    let restore = &r["restores"][0];
    assert_eq!(restore["backup"], "orders", "{}", r["restores"]);
    assert!(restore["restore_ms"].as_u64().unwrap_or(0) > 0, "{restore}");
    let html = std::fs::read_to_string(report.join("index.html")).expect("index.html");
    assert!(
        html.contains("Rebuild of east"),
        "the page shows the rebuild"
    );
    assert!(
        html.contains("Restores from backup"),
        "the page shows the newest verified restore"
    );
}
