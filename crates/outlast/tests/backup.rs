//! Backups for real: a `path:` directory and a PostgreSQL dataset snapshotted by the agents
//! to a file:// repository and an s3:// one (s3s-fs), then read by Debian's `restic` 0.14
//! (list, `check --read-data`, restore byte for byte), restored by `outlast restore` (the
//! PostgreSQL one started and queried), verified by the agent, pruned by `keep`; a source
//! that cannot be read leaves no snapshot, and a corrupted pack fails the verify with an
//! alert. Skipped (saying so) without PostgreSQL or restic.

#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Opts, PgReaper, RedisReaper, S3};
use serde_json::Value;

const TOKEN: &str = "backup-test-token-0123456789";
const PASSWORD: &str = "repo password 1";

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// Unmounts a bind mount on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn member<'a>(st: &'a Value, site: &str) -> &'a Value {
    st["datasets"][0]["members"]
        .as_array()
        .and_then(|m| m.iter().find(|x| x["site"] == site))
        .unwrap_or(&Value::Null)
}

/// Runs `outlast` with the token; (success, stdout + stderr).
fn outlast(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::bin())
        .args(args)
        .env("OUTLAST_TOKEN", TOKEN)
        .output()
        .expect("run outlast");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs restic on `repo` (a restic repository string); (success, stdout, stderr).
fn restic(repo: &str, pass: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("restic")
        .args(["-r", repo, "--password-file"])
        .arg(pass)
        .args(["--no-cache"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "outlast")
        .env("AWS_SECRET_ACCESS_KEY", "outlast-secret")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("run restic");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// restic's snapshots of a repository, as JSON.
fn restic_snapshots(repo: &str, pass: &Path) -> Vec<Value> {
    let (ok, out, err) = restic(repo, pass, &["snapshots", "--json"]);
    assert!(ok, "restic snapshots {repo}: {err}");
    serde_json::from_str::<Vec<Value>>(&out).unwrap_or_else(|e| panic!("restic said {out}: {e}"))
}

fn same_tree(want: &Path, got: &Path) {
    let (a, b) = (common::files(want), common::files(got));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the restored files of {} differ from {}",
        got.display(),
        want.display()
    );
    for (k, v) in &a {
        assert!(b[k] == *v, "{} differs byte for byte", k.display());
    }
}

/// A directory of mixed files: random binary (incompressible), text, nested dirs, an empty
/// file.
fn make_uploads(dir: &Path) {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand_bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    std::fs::create_dir_all(dir.join("img/2026/12")).expect("mkdir");
    std::fs::create_dir_all(dir.join("docs")).expect("mkdir");
    std::fs::write(dir.join("img/2026/12/big.bin"), rand_bytes(3 << 20)).expect("write");
    for i in 0..40 {
        std::fs::write(
            dir.join(format!("img/2026/12/p{i}.jpg")),
            rand_bytes(20_000 + i * 997),
        )
        .expect("write");
    }
    for i in 0..30 {
        std::fs::write(
            dir.join(format!("docs/note{i}.txt")),
            format!("note {i}\n").repeat(200 + i),
        )
        .expect("write");
    }
    std::fs::write(dir.join("empty"), b"").expect("write");
}

fn psql_at(bin: &Path, socket_dir: &Path, port: u16, db: &str, sql: &str) -> String {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("psql"))
        .args(["-h"])
        .arg(socket_dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "outlast",
            "-d",
            db,
            "-XAtc",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts a restored data dir on a private socket under `sock` (as postgres), asks `sql`
/// of its `app` database, stops it; the answer.
fn query_restored(bin: &Path, restored: &Path, sock: &Path, port: u16, sql: &str) -> String {
    std::fs::create_dir_all(sock).expect("mkdir");
    assert!(Command::new("chown")
        .args(["-R", "postgres:"])
        .arg(sock)
        .status()
        .expect("chown")
        .success());
    if let Some(parent) = sock.parent() {
        let _ = Command::new("chmod").args(["o+x"]).arg(parent).status();
    }
    let hba = sock.join("hba.conf");
    std::fs::write(&hba, "local all all trust\n").expect("hba");
    let started = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("pg_ctl"))
        .arg("-D")
        .arg(restored)
        .args(["-w", "-t", "60", "-l"])
        .arg(sock.join("log"))
        .arg("-o")
        .arg(format!(
            "-c port={port} -c listen_addresses='' -c unix_socket_directories='{}' -c hba_file='{}' -c synchronous_standby_names='' -c archive_mode=off",
            sock.display(),
            hba.display()
        ))
        .arg("start")
        .output()
        .expect("pg_ctl");
    assert!(
        started.status.success(),
        "{}{}",
        String::from_utf8_lossy(&started.stderr),
        std::fs::read_to_string(sock.join("log")).unwrap_or_default()
    );
    let n = psql_at(bin, sock, port, "app", sql);
    let _ = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("pg_ctl"))
        .arg("-D")
        .arg(restored)
        .args(["-m", "fast", "-w", "stop"])
        .status();
    n
}

#[test]
fn backups_are_restored_by_restic_and_by_outlast_and_verified() {
    let Some(bin) = pg_bin() else {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    };
    if !installed("restic") {
        println!("restic is not installed (apt-get install restic): skipped");
        return;
    }
    let b = 9700u16;
    let root = tempfile::tempdir().expect("tempdir");
    let uploads = root.path().join("uploads");
    make_uploads(&uploads);
    let s3 = S3::start(root.path().join("s3"), b + 30, "backups");
    let pass = root.path().join("backup.pass");
    std::fs::write(&pass, format!("{PASSWORD}\n")).expect("write pass");
    let alerts = root.path().join("alerts.ndjson");
    let files_repo = root.path().join("repo-files");
    let pg_repo = root.path().join("repo-pg");

    let mut opts = Opts::new(b);
    opts.extra = format!(
        r#"
[api]
token = "{TOKEN}"

[[alerts]]
kind = "command"
command = ["sh", "-c", "cat >> {alerts}; echo >> {alerts}"]

[[datasets]]
name = "orders"
port = {pg}
replication = "sync"
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

[[backups]]
name = "uploads"
source = "path:{uploads}"
every = "1h"
verify_every = "1h"
keep = {{ last = 2 }}
[[backups.repos]]
url = "file://{files_repo}"
site = "west"
password_file = "{pass}"
[[backups.repos]]
url = "s3://backups/uploads"
password_file = "{pass}"
options = {s3opts}

[[backups]]
name = "orders"
source = "dataset:orders"
every = "1h"
verify_every = "1h"
[[backups.repos]]
url = "file://{pg_repo}"
password_file = "{pass}"
[[backups.repos]]
url = "s3://backups/orders"
site = "east"
password_file = "{pass}"
options = {s3opts}
"#,
        alerts = alerts.display(),
        pg = b + 20,
        gw = b + 21,
        uploads = uploads.display(),
        files_repo = files_repo.display(),
        pg_repo = pg_repo.display(),
        pass = pass.display(),
        s3opts = s3.options(),
    );
    let mut c = Cluster::new(opts);
    let _reaper = PgReaper(vec![
        c.dir.path().join("east/pg"),
        c.dir.path().join("west/pg"),
    ]);
    let config = c.config.to_string_lossy().to_string();
    c.start_all();
    c.wait_healthy();
    c.wait_for(
        "east",
        Duration::from_secs(90),
        "east primary, west streaming",
        |st| member(st, "east")["role"] == "primary" && member(st, "west")["role"] == "standby",
    );
    // Rows committed (synchronously: west has them) before the snapshot.
    let app = format!(
        "host=127.0.0.11 port={} user=app password=app-password-1 dbname=app connect_timeout=2",
        b + 20
    );
    let out = Command::new(bin.join("psql"))
        .args([
            &app,
            "-Atc",
            "CREATE TABLE orders (n bigint PRIMARY KEY, note text); INSERT INTO orders SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g",
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The scheduled first snapshots (every data site takes its own of a path; the standby's
    // site takes the dataset's) come within seconds of the agents' start.
    let taken = |st: &Value, name: &str| {
        st["backups"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name))
            .is_some_and(|x| x["last_ok"].is_object())
    };
    c.wait_for("east", Duration::from_secs(60), "east took uploads", |st| {
        taken(st, "uploads")
    });
    c.wait_for("west", Duration::from_secs(120), "west took orders", |st| {
        taken(st, "orders")
    });
    let st = c.status("east").expect("status");
    let orders_at_east = st["backups"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "orders"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        orders_at_east["takes"], false,
        "east (the primary) does not take the dataset's: {orders_at_east}"
    );

    // A snapshot now, through the CLI: for orders, east refuses (409) and names west.
    let (ok, said) = outlast(&["backup", "run", "orders", "--config", &config]);
    assert!(ok, "{said}");
    assert!(said.contains("written"), "{said}");
    println!("backup run orders: {said}");
    let (ok, said) = outlast(&["backup", "run", "uploads", "--config", &config]);
    assert!(ok, "{said}");
    println!("backup run uploads: {said}");

    // restic 0.14 lists, checks (reading every pack) and restores every repository.
    let s3_repo = |p: &str| format!("s3:http://127.0.0.1:{}/backups/{p}", s3.port);
    let repos = [
        ("uploads", format!("{}", files_repo.display())),
        ("uploads", s3_repo("uploads")),
        ("orders", format!("{}", pg_repo.display())),
        ("orders", s3_repo("orders")),
    ];
    for (name, repo) in &repos {
        let snaps = restic_snapshots(repo, &pass);
        assert!(!snaps.is_empty(), "{repo}: restic lists no snapshot");
        // s3s-fs 0.14.1 lists only one level of a prefix, so restic's check over s3 finds
        // no pack under data/xx/ (a repository restic itself writes there fails the same
        // way): the check reads the objects s3s-fs stored, as restic's local repository.
        let on_disk = match repo.strip_prefix(&format!("s3:http://127.0.0.1:{}/", s3.port)) {
            Some(key) => s3.root.join(key).to_string_lossy().to_string(),
            None => repo.clone(),
        };
        let (ok, out, err) = restic(&on_disk, &pass, &["check", "--read-data"]);
        assert!(ok, "restic check --read-data {on_disk}: {out}{err}");
        let target = root.path().join(format!("restic-{}", blake3_short(repo)));
        let (ok, _, err) = restic(
            repo,
            &pass,
            &[
                "restore",
                "latest",
                "--host",
                if *name == "uploads" { "east" } else { "west" },
                "--target",
            ]
            .iter()
            .copied()
            .chain([target.to_string_lossy().as_ref()])
            .collect::<Vec<_>>(),
        );
        assert!(ok, "restic restore {repo}: {err}");
        if *name == "uploads" {
            same_tree(
                &uploads,
                &target.join(uploads.strip_prefix("/").expect("absolute")),
            );
        } else {
            let data = target.join("orders");
            assert!(
                data.join("PG_VERSION").exists(),
                "restic restored no data dir from {repo}"
            );
            assert!(
                std::fs::metadata(data.join("global/pg_control"))
                    .map(|m| m.len())
                    .unwrap_or(0)
                    > 0,
                "pg_control restored empty from {repo}"
            );
        }
        println!(
            "restic 0.14: {repo}: {} snapshots, check --read-data passed, restored",
            snaps.len()
        );
    }

    // outlast restore of the dataset: a data dir that starts and holds every row.
    let restored = root.path().join("restored-pg");
    let t = Instant::now();
    let (ok, said) = outlast(&[
        "restore",
        "--config",
        &config,
        "orders",
        "--to",
        &restored.to_string_lossy(),
    ]);
    assert!(ok, "{said}");
    println!(
        "outlast restore orders: {} ms: {said}",
        t.elapsed().as_millis()
    );
    let _reaper2 = PgReaper(vec![restored.clone()]);
    // Started exactly as printed (a shell line a user pastes), then queried as the dataset's
    // user with its password, over loopback and over the socket in the copy's dir.
    let _ = Command::new("chmod").arg("o+x").arg(root.path()).status();
    let printed = |what: &str| {
        said.lines()
            .find_map(|l| l.trim().strip_prefix(what))
            .unwrap_or_else(|| panic!("no '{what}' line in: {said}"))
            .trim()
            .to_string()
    };
    let start = printed("start it with:");
    assert!(
        start.starts_with("runuser -u postgres -- /"),
        "a full path: {start}"
    );
    let out = Command::new("sh")
        .args(["-c", &start])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{start}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(restored.join("restored.log")).unwrap_or_default()
    );
    let query = printed("query it with:");
    let psql = query.split(" (or").next().unwrap_or_default().to_string();
    for line in [
        psql.clone(),
        psql.replace(&format!("-h {}", restored.display()), "-h 127.0.0.1"),
    ] {
        let out = Command::new("sh")
            .args([
                "-c",
                &format!("{line} -Atc 'SELECT count(*), max(n) FROM orders'"),
            ])
            .env("PGPASSWORD", "app-password-1")
            .output()
            .expect("psql");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "5000|5000",
            "{line}: {}; the restored dataset holds every row committed before the snapshot",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stop = printed("stop it with:");
    assert!(Command::new("sh")
        .args(["-c", &stop])
        .status()
        .expect("sh")
        .success());

    // outlast restore of the path, from the s3:// repository.
    let restored_files = root.path().join("restored-files");
    let (ok, said) = outlast(&[
        "restore",
        "--config",
        &config,
        "uploads",
        "--site",
        "east",
        "--repo",
        "s3://backups/uploads",
        "--to",
        &restored_files.to_string_lossy(),
    ]);
    assert!(ok, "{said}");
    same_tree(&uploads, &restored_files);

    // Verify by restoring: the dataset's is started on loopback and queried.
    let (ok, said) = outlast(&["backup", "verify", "orders", "--config", &config]);
    assert!(ok, "{said}");
    assert!(
        said.contains("verified") && said.contains("databases"),
        "{said}"
    );
    println!("backup verify orders: {said}");

    // Retention: keep = { last = 2 } leaves two of east's uploads snapshots.
    for _ in 0..2 {
        let (ok, said) = outlast(&[
            "backup",
            "run",
            "uploads",
            "--api",
            &format!("http://127.0.0.11:{}", b + 1),
        ]);
        assert!(ok, "{said}");
    }
    let east_snaps = |repo: &str| {
        restic_snapshots(repo, &pass)
            .into_iter()
            .filter(|s| s["hostname"] == "east")
            .count()
    };
    assert_eq!(
        east_snaps(&files_repo.to_string_lossy()),
        2,
        "keep last = 2 at the file repository"
    );
    assert_eq!(
        east_snaps(&s3_repo("uploads")),
        2,
        "keep last = 2 at the s3 repository"
    );
    let (ok, out, err) = restic(
        &files_repo.to_string_lossy(),
        &pass,
        &["check", "--read-data"],
    );
    assert!(ok, "restic check after the prune: {out}{err}");

    // A source entry that cannot be read: the backup fails, no snapshot is left behind.
    let unreadable = uploads.join("docs/unreadable");
    std::fs::write(&unreadable, b"").expect("write");
    let mounted = Command::new("mount")
        .args(["--bind", "/proc/self/clear_refs"])
        .arg(&unreadable)
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let _m = Mounted(unreadable.clone());
        let before = (
            east_snaps(&files_repo.to_string_lossy()),
            restic_snapshots(&s3_repo("uploads"), &pass).len(),
        );
        let (ok, said) = outlast(&[
            "backup",
            "run",
            "uploads",
            "--api",
            &format!("http://127.0.0.11:{}", b + 1),
        ]);
        assert!(
            !ok,
            "a backup that could not read an entry must fail: {said}"
        );
        assert!(
            said.contains("unreadable"),
            "the failure names the entry: {said}"
        );
        let after = (
            east_snaps(&files_repo.to_string_lossy()),
            restic_snapshots(&s3_repo("uploads"), &pass).len(),
        );
        assert_eq!(before, after, "a failed backup left a snapshot behind");
        println!("unreadable entry: {said}");
    } else {
        println!("cannot bind-mount here: the unreadable-source case was not run");
    }

    // A corrupted pack: the verify fails and alerts.
    let mut packs: Vec<PathBuf> = Vec::new();
    for e in walk(&files_repo.join("data")) {
        packs.push(e);
    }
    packs.sort_by_key(|p| {
        std::fs::metadata(p)
            .map(|m| std::cmp::Reverse(m.len()))
            .unwrap_or(std::cmp::Reverse(0))
    });
    let pack = packs
        .first()
        .expect("a pack in the file repository")
        .clone();
    let mut bytes = std::fs::read(&pack).expect("read pack");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&pack, bytes).expect("write pack");
    // Verifies take the repositories in turn: within two, one reads the file repository.
    let mut failed = None;
    let mut said_all = Vec::new();
    for _ in 0..2 {
        let (ok, said) = outlast(&[
            "backup",
            "verify",
            "uploads",
            "--api",
            &format!("http://127.0.0.11:{}", b + 1),
        ]);
        said_all.push(said.clone());
        if !ok {
            failed = Some(said);
            break;
        }
    }
    let said =
        failed.unwrap_or_else(|| panic!("a verify over a corrupted pack must fail: {said_all:?}"));
    assert!(
        said.contains("repo-files"),
        "the file repository failed: {said}"
    );
    println!("corrupted pack: {said}");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&alerts).unwrap_or_default();
        if text.contains("backup-verify-failed") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no backup-verify-failed alert; alerts: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = c.status("east").expect("status");
    let up = st["backups"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "uploads"))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        up["problem"]
            .as_str()
            .is_some_and(|p| p.contains("verify failed")),
        "{up}"
    );
    drop(s3);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn blake3_short(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex().as_str()[..8].to_string()
}

/// A Redis dataset's snapshot: an RDB the replica's site takes, that restic checks and
/// restores, that a verify loads into a server of its own and counts every key of.
#[test]
fn a_redis_dataset_is_backed_up_as_an_rdb_that_loads_with_every_key() {
    if !installed("redis-server") || !installed("restic") {
        println!("redis-server or restic is not installed: skipped");
        return;
    }
    let b = 9800u16;
    let root = tempfile::tempdir().expect("tempdir");
    let pass = root.path().join("backup.pass");
    std::fs::write(&pass, format!("{PASSWORD}\n")).expect("write pass");
    let repo = root.path().join("repo-redis");
    let mut opts = Opts::new(b);
    opts.extra = format!(
        r#"
[api]
token = "{TOKEN}"

[[datasets]]
name = "sessions"
kind = "redis"
port = {port}
replication = "sync"
[datasets.members]
east = {{ data_dir = "east/redis" }}
west = {{ data_dir = "west/redis" }}
[datasets.redis]
password = "redis-password-1"

[[services]]
name = "sessions"
dataset = "sessions"
port = {gw}

[[backups]]
name = "sessions"
source = "dataset:sessions"
every = "1h"
verify_every = "1h"
[[backups.repos]]
url = "file://{repo}"
password_file = "{pass}"
"#,
        port = b + 20,
        gw = b + 21,
        repo = repo.display(),
        pass = pass.display(),
    );
    let mut c = Cluster::new(opts);
    let _reaper = RedisReaper(vec![
        c.dir.path().join("east/redis"),
        c.dir.path().join("west/redis"),
    ]);
    let config = c.config.to_string_lossy().to_string();
    c.start_all();
    c.wait_healthy();
    c.wait_for(
        "east",
        Duration::from_secs(60),
        "east primary, west replica",
        |st| member(st, "east")["role"] == "primary" && member(st, "west")["role"] == "standby",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let addr: std::net::SocketAddr = format!("127.0.0.11:{}", b + 20).parse().expect("addr");
        let mut conn =
            outlast_db::resp::Conn::connect(addr, Some("redis-password-1"), Duration::from_secs(2))
                .await
                .expect("connect to east's redis");
        for i in 0..1000 {
            conn.ok(&["SET", &format!("session:{i}"), &format!("user {i}")])
                .await
                .expect("SET");
        }
    });
    // Every key is at the replica (sync mode: min-replicas-to-write 1) before the snapshot.
    let (ok, said) = outlast(&["backup", "run", "sessions", "--config", &config]);
    assert!(ok, "{said}");
    assert!(
        said.contains("at http://127.0.0.12"),
        "the replica's site takes it: {said}"
    );
    println!("backup run sessions: {said}");
    let repo_text = repo.to_string_lossy().to_string();
    let snaps = restic_snapshots(&repo_text, &pass);
    assert!(!snaps.is_empty(), "restic lists no snapshot");
    let (ok, out, err) = restic(&repo_text, &pass, &["check", "--read-data"]);
    assert!(ok, "restic check --read-data: {out}{err}");
    let target = root.path().join("restic-restore");
    let (ok, _, err) = restic(
        &repo_text,
        &pass,
        &["restore", "latest", "--target", &target.to_string_lossy()],
    );
    assert!(ok, "restic restore: {err}");
    let rdb = std::fs::metadata(target.join("sessions/dump.rdb"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(rdb > 10_000, "restic restored a dump.rdb of {rdb} bytes");

    let restored = root.path().join("restored");
    let (ok, said) = outlast(&[
        "restore",
        "--config",
        &config,
        "sessions",
        "--to",
        &restored.to_string_lossy(),
    ]);
    assert!(ok, "{said}");
    assert_eq!(
        std::fs::read(restored.join("dump.rdb")).expect("our restore"),
        std::fs::read(target.join("sessions/dump.rdb")).expect("restic's"),
        "outlast and restic restore the same bytes"
    );
    let (ok, said) = outlast(&["backup", "verify", "sessions", "--config", &config]);
    assert!(ok, "{said}");
    assert!(
        said.contains("1000 keys"),
        "the verify loads every key: {said}"
    );
    println!("backup verify sessions: {said}");
}

/// The status entry of backup `name` at a site.
fn backup_entry<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["backups"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .unwrap_or(&Value::Null)
}

#[test]
fn a_point_in_time_restore_holds_exactly_the_rows_committed_before_at() {
    let Some(bin) = pg_bin() else {
        println!("PostgreSQL is not installed (apt-get install postgresql): skipped");
        return;
    };
    if !installed("restic") {
        println!("restic is not installed (apt-get install restic): skipped");
        return;
    }
    let b = 10_000u16;
    let root = tempfile::tempdir().expect("tempdir");
    let pass = root.path().join("backup.pass");
    std::fs::write(&pass, format!("{PASSWORD}\n")).expect("write pass");
    let repo = root.path().join("repo-pg");
    let mut opts = Opts::new(b);
    opts.extra = format!(
        r#"
[api]
token = "{TOKEN}"

[[datasets]]
name = "orders"
port = {pg}
replication = "sync"
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
        repo = repo.display(),
        pass = pass.display(),
    );
    let mut c = Cluster::new(opts);
    let _reaper = PgReaper(vec![
        c.dir.path().join("east/pg"),
        c.dir.path().join("west/pg"),
    ]);
    let config = c.config.to_string_lossy().to_string();
    c.start_all();
    c.wait_healthy();
    c.wait_for(
        "east",
        Duration::from_secs(90),
        "east primary, west streaming",
        |st| member(st, "east")["role"] == "primary" && member(st, "west")["role"] == "standby",
    );
    let app = format!(
        "host=127.0.0.11 port={} user=app password=app-password-1 dbname=app connect_timeout=2",
        b + 20
    );
    let sql = |q: &str| {
        let out = Command::new(bin.join("psql"))
            .args([&app, "-XAtc", q])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{q}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    sql("CREATE TABLE pitr (n bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())");
    sql("INSERT INTO pitr (n) SELECT g FROM generate_series(1, 100) g");
    // The base backup (west, the standby, takes it at the agents' start).
    c.wait_for("west", Duration::from_secs(120), "west took orders", |st| {
        backup_entry(st, "orders")["last_ok"].is_object()
    });
    // Then rows one transaction each, 20 ms apart, while the WAL is shipped every second.
    sql("DO $$ BEGIN FOR i IN 101..400 LOOP INSERT INTO pitr (n) VALUES (i); COMMIT; PERFORM pg_sleep(0.02); END LOOP; END $$");
    let (at_201, at_300) = {
        let t = sql("SELECT (extract(epoch FROM at) * 1000)::bigint FROM pitr WHERE n IN (201, 300) ORDER BY n");
        let v: Vec<i64> = t.lines().filter_map(|l| l.parse().ok()).collect();
        assert_eq!(v.len(), 2, "{t}");
        (v[0], v[1])
    };
    // Row 200 committed before row 201 began (20 ms later): a target 5 ms before row 201's
    // insert holds exactly rows 1..=200.
    let target = at_201 - 5;
    let target_2 = at_300 - 5;
    // The segment holding the rows is switched out within archive_timeout (= wal_every).
    let seg = sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let pos = seg[8..].to_string();
    for site in ["east", "west"] {
        c.wait_for(
            site,
            Duration::from_secs(60),
            "the rows' WAL shipped",
            |st| {
                backup_entry(st, "orders")["wal"]["last_ok"]["upto"]
                    .as_str()
                    .is_some_and(|u| u.len() == 24 && u[8..] >= *pos)
            },
        );
    }
    let wal = backup_entry(&c.status("east").expect("status"), "orders")["wal"].clone();
    println!("east's WAL shipping: {wal}");

    // restic reads the WAL batches too.
    let repo_text = repo.to_string_lossy().to_string();
    let snaps = restic_snapshots(&repo_text, &pass);
    let batches = snaps
        .iter()
        .filter(|s| {
            s["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == "kind:wal"))
        })
        .count();
    assert!(batches >= 2, "restic lists {batches} WAL batches");
    let (ok, out, err) = restic(&repo_text, &pass, &["check", "--read-data"]);
    assert!(ok, "restic check --read-data: {out}{err}");

    for (i, (at, want)) in [(target, "200|200"), (target_2, "299|299")]
        .iter()
        .enumerate()
    {
        let restored = root.path().join(format!("pitr-{i}"));
        let _reaper2 = PgReaper(vec![restored.clone()]);
        let t = Instant::now();
        let (ok, said) = outlast(&[
            "restore",
            "--config",
            &config,
            "orders",
            "--at",
            &at.to_string(),
            "--to",
            &restored.to_string_lossy(),
        ]);
        assert!(ok, "{said}");
        assert!(said.contains("replayed"), "{said}");
        println!(
            "outlast restore orders --at {at}: {} ms: {said}",
            t.elapsed().as_millis()
        );
        let n = query_restored(
            &bin,
            &restored,
            &root.path().join(format!("sock-{i}")),
            b + 40 + i as u16,
            "SELECT count(*), max(n) FROM pitr",
        );
        assert_eq!(
            &n, want,
            "a restore --at {at} holds exactly the rows committed before it"
        );
    }

    // A time past everything archived is refused, not quietly cut short.
    let later = root.path().join("pitr-future");
    let _reaper3 = PgReaper(vec![later.clone()]);
    let future = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        + 3_600_000)
        .to_string();
    let (ok, said) = outlast(&[
        "restore",
        "--config",
        &config,
        "orders",
        "--at",
        &future,
        "--to",
        &later.to_string_lossy(),
    ]);
    assert!(!ok, "a target past the archive must fail: {said}");
    assert!(said.contains("the archived WAL ends before"), "{said}");
    assert!(!later.exists(), "a failed restore leaves nothing");
    println!("restore --at an hour ahead: {said}");
}
