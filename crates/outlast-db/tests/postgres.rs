//! Real PostgreSQL servers (Debian's), two members on 127.0.0.11 and 127.0.0.12, driven
//! by the member loop exactly as an agent drives them: made, cloned, promoted after a
//! crash, and the old primary rewound with what only it had archived and readable.
//! Skipped (with a line saying so) when PostgreSQL is not installed.

// A test stands outside the members and times them by the machine's own clock.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outlast_db::{member, MemberStatus, PgSpec, Postgres, Role, Want};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn bin_dir() -> Option<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn spec(me: &str, dir: &Path, port: u16, bin: &Path) -> PgSpec {
    let root = unsafe_root();
    PgSpec {
        dataset: "orders".into(),
        me: me.into(),
        port,
        data_dir: dir.join(me).join("pg"),
        bin_dir: bin.to_path_buf(),
        os_user: root.then(|| "postgres".to_string()),
        database: "app".into(),
        user: "app".into(),
        password: "app-pass".into(),
        admin_password: outlast_db::admin_password("a-cluster-secret-of-16", "orders"),
        members: [
            ("east".to_string(), IpAddr::from([127, 0, 0, 11])),
            ("west".to_string(), IpAddr::from([127, 0, 0, 12])),
        ]
        .into_iter()
        .collect(),
        replication_via: Default::default(),
        clients: vec!["127.0.0.1".into()],
        settings: [("shared_buffers".to_string(), "16MB".to_string())]
            .into_iter()
            .collect(),
        wal: None,
        refuse_initdb: None,
    }
}

fn unsafe_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

struct Site {
    pg: Postgres,
    want: watch::Sender<Want>,
    status: watch::Receiver<MemberStatus>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(pg: Postgres, want: Want) -> Site {
    let (wtx, wrx) = watch::channel(want);
    let (stx, srx) = watch::channel(MemberStatus::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(member::run(pg.clone(), wrx, stx, stop.clone()));
    Site {
        pg,
        want: wtx,
        status: srx,
        stop,
        task,
    }
}

async fn wait_for(
    site: &mut Site,
    what: &str,
    within: Duration,
    f: impl Fn(&MemberStatus) -> bool,
) -> MemberStatus {
    let until = Instant::now() + within;
    loop {
        let st = site.status.borrow().clone();
        if f(&st) {
            return st;
        }
        assert!(
            Instant::now() < until,
            "{what}: not within {within:?}: {st:?}\nlog: {}",
            std::fs::read_to_string(site.pg.log_path()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn app(addr: &str, port: u16) -> Option<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(
        &format!("host={addr} port={port} user=app password=app-pass dbname=app connect_timeout=2"),
        tokio_postgres::NoTls,
    )
    .await
    .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(c)
}

fn want(primary: &str, acting: bool, epoch: u64, sync: bool, down: &[&str]) -> Want {
    Want {
        primary: Some(primary.into()),
        acting,
        epoch,
        down: down.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        sync,
        block_when_alone: false,
        // Nothing asked of the cluster here: as if it had recorded going on alone, so the
        // primary names whichever standbys it wants (see `member::to_name`).
        sync_set: Some(Vec::new()),
        handover: None,
    }
}

/// Ends every server the test started, whatever happened (a failed assertion included).
struct Reaper(Vec<PathBuf>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = outlast_db::signal_postmaster(dir, "-QUIT");
        }
    }
}

fn kill9(pg: &Postgres) {
    if let Some(pid) = pg.postmaster_pid() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(5);
        while pg.postmaster_pid().is_some() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

async fn count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_primary_is_replaced_and_rejoins_with_its_diverged_writes_kept() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("outlast_db=info")
        .with_test_writer()
        .try_init();
    let Some(bin) = bin_dir() else {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = 25_432;
    let east_pg = Postgres::new(spec("east", tmp.path(), port, &bin));
    let west_pg = Postgres::new(spec("west", tmp.path(), port, &bin));
    let mut reaper = Reaper(vec![
        east_pg.spec.data_dir.clone(),
        west_pg.spec.data_dir.clone(),
    ]);

    // Made and cloned: east is the acting primary, west its standby; sync mode.
    let mut east = start(east_pg.clone(), want("east", true, 1, true, &[]));
    let mut west = start(west_pg.clone(), want("east", false, 1, true, &[]));
    let t = Instant::now();
    wait_for(&mut east, "east primary", Duration::from_secs(60), |s| {
        s.role == Role::Primary
    })
    .await;
    wait_for(&mut west, "west streaming", Duration::from_secs(60), |s| {
        s.role == Role::Standby
    })
    .await;
    let st = wait_for(
        &mut east,
        "west in the sync set",
        Duration::from_secs(30),
        |s| {
            s.sync_names.as_deref() == Some("ANY 1 (\"west\")")
                && s.standbys.get("west").map(String::as_str) == Some("quorum")
        },
    )
    .await;
    println!("made, cloned and in sync in {:?}: {st:?}", t.elapsed());

    let c = app("127.0.0.11", port)
        .await
        .expect("the app connects to east");
    c.batch_execute("CREATE TABLE t (n bigint PRIMARY KEY)")
        .await
        .expect("create");
    for n in 0..200i64 {
        c.execute("INSERT INTO t VALUES ($1)", &[&n])
            .await
            .expect("insert");
    }
    // A standby refuses writes.
    let w = app("127.0.0.12", port)
        .await
        .expect("the app connects to west");
    assert!(w.execute("INSERT INTO t VALUES (-1)", &[]).await.is_err());

    // East's server dies; the committed state moves the primary to west.
    kill9(&east_pg);
    east.want
        .send_replace(want("west", false, 2, true, &["east"]));
    let t = Instant::now();
    west.want
        .send_replace(want("west", true, 2, true, &["east"]));
    let st = wait_for(&mut west, "west promoted", Duration::from_secs(30), |s| {
        s.role == Role::Primary
    })
    .await;
    println!("promoted in {:?}: {st:?}", t.elapsed());
    let w = app("127.0.0.12", port).await.expect("connect west");
    assert_eq!(count(&w).await, 200, "every acknowledged commit is on west");
    assert_eq!(
        st.sync_names.as_deref(),
        Some(""),
        "with east declared down, sync degrades"
    );
    w.execute("INSERT INTO t VALUES (1000)", &[])
        .await
        .expect("west takes writes");

    // East comes back (not declared down any more): rewound, streaming from west.
    east.want.send_replace(want("west", false, 2, true, &[]));
    west.want.send_replace(want("west", true, 2, true, &[]));
    let st = wait_for(&mut east, "east rejoined", Duration::from_secs(60), |s| {
        s.role == Role::Standby
    })
    .await;
    println!("east rejoined as a standby: {st:?}");
    wait_for(
        &mut west,
        "east back in the sync set",
        Duration::from_secs(30),
        |s| s.sync_names.as_deref() == Some("ANY 1 (\"east\")"),
    )
    .await;
    tokio::time::timeout(
        Duration::from_secs(10),
        w.execute("INSERT INTO t VALUES (1001)", &[]),
    )
    .await
    .expect("a synchronous commit with east back, within 10 s")
    .expect("insert");
    let e = app("127.0.0.11", port).await.expect("connect east");
    let until = Instant::now() + Duration::from_secs(10);
    while count(&e).await != 202 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&e).await, 202, "east replays west's commits");

    // Async mode, and west's standby (east) cut off: west takes writes alone, then dies.
    // East is promoted without them; when west returns, they are archived before its
    // rewind, and the archived copy starts and shows them.
    for s in [&west, &east] {
        let mut w = s.want.borrow().clone();
        w.sync = false;
        s.want.send_replace(w);
    }
    wait_for(&mut west, "async", Duration::from_secs(10), |s| {
        s.sync_names.as_deref() == Some("")
    })
    .await;
    east.stop.cancel();
    let _ = (&mut east.task).await;
    east_pg
        .stop(outlast_db::postgres::StopMode::Fast, Duration::from_secs(5))
        .await
        .expect("stop east");
    for n in 5000..5010i64 {
        w.execute("INSERT INTO t VALUES ($1)", &[&n])
            .await
            .expect("west alone");
    }
    kill9(&west_pg);
    let mut east = start(east_pg.clone(), want("east", true, 3, false, &["west"]));
    west.want
        .send_replace(want("east", false, 3, false, &["west"]));
    wait_for(
        &mut east,
        "east promoted again",
        Duration::from_secs(30),
        |s| s.role == Role::Primary,
    )
    .await;
    let e = app("127.0.0.11", port).await.expect("connect east");
    assert_eq!(count(&e).await, 202, "east never had west's lone writes");
    west.want.send_replace(want("east", false, 3, false, &[]));
    let st = wait_for(&mut west, "west rewound", Duration::from_secs(60), |s| {
        s.role == Role::Standby
    })
    .await;
    assert_eq!(st.diverged.len(), 1, "{st:?}");
    assert!(
        !st.diverged[0].path.ends_with("-unrewound"),
        "rewound, not cloned afresh: {st:?}"
    );
    let archive = PathBuf::from(&st.diverged[0].path);
    println!("diverged history kept in {}", archive.display());
    let listing = std::fs::read_to_string(archive.join("wal.txt")).unwrap_or_default();
    assert!(listing.contains("COMMIT"), "pg_waldump listing: {listing}");

    // The archived copy starts read-only on its own port and shows the lone writes.
    let copy = Postgres::new(PgSpec {
        data_dir: archive.join("data"),
        port: 25_499,
        members: [("west".to_string(), IpAddr::from([127, 0, 0, 12]))]
            .into_iter()
            .collect(),
        settings: [(
            "default_transaction_read_only".to_string(),
            "on".to_string(),
        )]
        .into_iter()
        .collect(),
        ..west_pg.spec.clone()
    });
    reaper.0.push(copy.spec.data_dir.clone());
    copy.configure(false, None, "")
        .await
        .expect("configure the copy");
    copy.start().await.expect("start the copy");
    let r = app("127.0.0.12", 25_499).await.expect("connect the copy");
    let lone = r
        .query_one("SELECT count(*) FROM t WHERE n >= 5000", &[])
        .await
        .map(|row| row.get::<_, i64>(0))
        .unwrap_or(-1);
    copy.stop(outlast_db::postgres::StopMode::Fast, Duration::from_secs(5))
        .await
        .expect("stop the copy");
    assert_eq!(lone, 10, "the archived copy holds the ten lone writes");

    // A rewind that fails: east takes writes alone and stops cleanly, but the WAL segments
    // before its last one are lost (pg_rewind needs them to find what it changed). West is
    // promoted; east is kept aside as it was and cloned afresh, not left stuck.
    west.stop.cancel();
    let _ = (&mut west.task).await;
    west_pg
        .stop(outlast_db::postgres::StopMode::Fast, Duration::from_secs(5))
        .await
        .expect("stop west");
    for n in 7000..7010i64 {
        e.execute("INSERT INTO t VALUES ($1)", &[&n])
            .await
            .expect("east alone");
    }
    let admin = east_pg.connect("postgres").await.expect("admin on east");
    admin
        .simple_query("SELECT pg_switch_wal()")
        .await
        .expect("switch wal");
    e.execute("INSERT INTO t VALUES (7010)", &[])
        .await
        .expect("east alone, in a new segment");
    east.stop.cancel();
    let _ = (&mut east.task).await;
    east_pg
        .stop(outlast_db::postgres::StopMode::Fast, Duration::from_secs(5))
        .await
        .expect("stop east");
    let wal = east_pg.spec.data_dir.join("pg_wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&wal)
        .expect("east's pg_wal")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 24))
        .collect();
    segs.sort();
    segs.pop();
    assert!(!segs.is_empty(), "east has older WAL segments to lose");
    for seg in &segs {
        std::fs::remove_file(seg).expect("lose a WAL segment");
    }
    let mut west = start(west_pg.clone(), want("west", true, 4, false, &["east"]));
    wait_for(
        &mut west,
        "west promoted again",
        Duration::from_secs(30),
        |s| s.role == Role::Primary,
    )
    .await;
    let w = app("127.0.0.12", port).await.expect("connect west");
    w.execute("INSERT INTO t VALUES (8000)", &[])
        .await
        .expect("west takes writes");
    let mut east = start(east_pg.clone(), want("west", false, 4, false, &[]));
    let st = wait_for(
        &mut east,
        "east cloned afresh",
        Duration::from_secs(60),
        |s| s.role == Role::Standby,
    )
    .await;
    assert_eq!(st.diverged.len(), 1, "{st:?}");
    assert!(
        st.diverged[0].path.ends_with("4-unrewound"),
        "kept aside before the clone: {st:?}"
    );
    assert!(
        Path::new(&st.diverged[0].path)
            .join("data/PG_VERSION")
            .exists(),
        "the copy of east's data dir is kept"
    );
    let log = std::fs::read_to_string(east_pg.log_path()).unwrap_or_default();
    println!("east cloned afresh after a failed rewind: {st:?}");
    let e = app("127.0.0.11", port).await.expect("connect east");
    let until = Instant::now() + Duration::from_secs(10);
    let want_rows = count(&w).await;
    while count(&e).await != want_rows && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count(&e).await,
        want_rows,
        "east streams west's rows: {log}"
    );
    let lone = e
        .query_one("SELECT count(*) FROM t WHERE n >= 7000 AND n < 8000", &[])
        .await
        .map(|row| row.get::<_, i64>(0))
        .unwrap_or(-1);
    assert_eq!(lone, 0, "east's lone writes are only in the kept copy");

    for s in [&east, &west] {
        s.stop.cancel();
    }
    for pg in [&east_pg, &west_pg] {
        let _ = pg
            .stop(
                outlast_db::postgres::StopMode::Immediate,
                Duration::from_secs(5),
            )
            .await;
    }
}
