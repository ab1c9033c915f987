//! PostgreSQL for backups: a base backup of a member's server into a directory, and the
//! proof that a restored one is whole (`pg_verifybackup`, then the server started on
//! loopback and asked a question).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::postgres::{beside, io, make_private_dir, run, PgError, Postgres, ADMIN_ROLE};

impl Postgres {
    /// A base backup of this site's server (a standby serves one as well as a primary)
    /// into `into`, which must not exist yet: plain files, the WAL that makes them
    /// consistent streamed alongside, and a `backup_manifest` for `pg_verifybackup`. The
    /// files are whole on disk before this returns, so a snapshot of them records each
    /// file's size (a stream would not).
    pub async fn base_backup(&self, into: &Path) -> Result<(), PgError> {
        if into.exists() {
            return Err(PgError::Refused(format!(
                "{} exists; a base backup goes into a new directory",
                into.display()
            )));
        }
        if let Some(parent) = into.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io(format!("cannot create {}", parent.display())))?;
            if self.spec.os_user.is_some() {
                crate::os::open_parents(parent).await;
            }
        }
        make_private_dir(into).await?;
        if let Some(u) = &self.spec.os_user {
            crate::os::chown(u, into).await.map_err(PgError::Refused)?;
        }
        let addr = self
            .spec
            .members
            .get(&self.spec.me)
            .copied()
            .ok_or_else(|| PgError::Refused(format!("{} is not a member", self.spec.me)))?;
        let dir = into.to_string_lossy().to_string();
        let port = self.spec.port.to_string();
        let host = addr.to_string();
        let args = [
            "-h", &host, "-p", &port, "-U", ADMIN_ROLE, "-D", &dir, "-X", "stream", "-c", "fast",
            "-w",
        ];
        run(
            &self.bin("pg_basebackup"),
            self.spec.os_user.as_deref(),
            &args,
            Some(&self.spec.admin_password),
        )
        .await
        .map(|_| ())
    }
}

/// What a restored data dir showed when it was started.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoredCheck {
    /// `pg_verifybackup` passed (every file against the backup's manifest, and its WAL).
    pub manifest_checked: bool,
    /// From the start of the server until it answered.
    pub start_ms: u64,
    /// The databases it holds, and the tables of `database`.
    pub databases: Vec<String>,
    pub tables: u64,
}

/// A restored data dir's server, started on 127.0.0.1 with its socket and `pg_hba` in a
/// private folder beside the data dir: it never listens beyond loopback, only its own user
/// may connect, and it never archives or streams from anyone.
struct Private<'a> {
    bin_dir: &'a Path,
    os_user: Option<&'a str>,
    dir: &'a Path,
    side: PathBuf,
    port: String,
}

impl<'a> Private<'a> {
    /// Starts it (`extra`: more `-c` options for the shell pg_ctl runs postgres through),
    /// waiting at most `wait` for it to accept connections; the time that took.
    async fn start(
        bin_dir: &'a Path,
        os_user: Option<&'a str>,
        dir: &'a Path,
        port: u16,
        extra: &str,
        wait: Duration,
    ) -> Result<(Private<'a>, u64), PgError> {
        if let Some(u) = os_user {
            crate::os::chown(u, dir).await.map_err(PgError::Refused)?;
            if let Some(parent) = dir.parent() {
                crate::os::open_parents(parent).await;
            }
        }
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(io(format!("cannot make {} private", dir.display())))?;
        let side = beside(dir, ".verify");
        let _ = tokio::fs::remove_dir_all(&side).await;
        make_private_dir(&side).await?;
        let hba = side.join("pg_hba.conf");
        tokio::fs::write(&hba, "local all all trust\n")
            .await
            .map_err(io("cannot write the restored server's pg_hba.conf"))?;
        if let Some(u) = os_user {
            crate::os::chown(u, &side).await.map_err(PgError::Refused)?;
        }
        let _ = tokio::fs::remove_file(dir.join("postmaster.pid")).await;
        let s = side.to_string_lossy().to_string();
        let opts = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{s}' \
             -c hba_file='{}' -c archive_mode=off -c synchronous_standby_names='' \
             -c primary_conninfo='' {extra}",
            hba.display()
        );
        let log = side.join("postgres.log").to_string_lossy().to_string();
        let d = dir.to_string_lossy().to_string();
        let started = outlast_core::clock::now();
        let wait_s = wait.as_secs().max(1).to_string();
        run(
            &bin_dir.join("pg_ctl"),
            os_user,
            &[
                "-D", &d, "-o", &opts, "-l", &log, "-w", "-t", &wait_s, "start",
            ],
            None,
        )
        .await
        .map_err(|e| with_log(e, &side.join("postgres.log")))?;
        let ms = started.elapsed().as_millis() as u64;
        Ok((
            Private {
                bin_dir,
                os_user,
                dir,
                side,
                port: port.to_string(),
            },
            ms,
        ))
    }

    async fn ask(&self, db: &str, sql: &str) -> Result<String, PgError> {
        let s = self.side.to_string_lossy().to_string();
        let (out, _) = run(
            &self.bin_dir.join("psql"),
            self.os_user,
            &[
                "-h", &s, "-p", &self.port, "-U", ADMIN_ROLE, "-d", db, "-XAtc", sql,
            ],
            None,
        )
        .await?;
        Ok(out)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.side.join("postgres.log")).unwrap_or_default()
    }

    /// A fast stop (a kill when that fails), and the private folder removed.
    async fn stop(self) {
        let d = self.dir.to_string_lossy().to_string();
        if crate::postgres::running_postmaster(self.dir).is_none() {
            let _ = tokio::fs::remove_dir_all(&self.side).await;
            return;
        }
        let stopped = run(
            &self.bin_dir.join("pg_ctl"),
            self.os_user,
            &["-D", &d, "-m", "fast", "-w", "-t", "60", "stop"],
            None,
        )
        .await;
        if let Err(e) = &stopped {
            tracing::warn!(dir = %d, error = %e, "the restored server did not stop; killing it");
            let _ = crate::postgres::signal_postmaster(self.dir, "-KILL");
        }
        let _ = tokio::fs::remove_dir_all(&self.side).await;
    }
}

/// Proves a restored base backup in `dir`: `pg_verifybackup` (when the backup has a
/// manifest), then the server started on 127.0.0.1:`port` (see [`Private`]), a query of
/// its databases and of `database`'s tables, and a fast stop. `dir` is handed to `os_user`
/// (it must own a data dir).
pub async fn check_restored(
    bin_dir: &Path,
    os_user: Option<&str>,
    dir: &Path,
    port: u16,
    database: &str,
) -> Result<RestoredCheck, PgError> {
    let manifest_checked = dir.join("backup_manifest").exists();
    if manifest_checked {
        let d = dir.to_string_lossy().to_string();
        run(&bin_dir.join("pg_verifybackup"), os_user, &["-q", &d], None).await?;
    }
    for stale in ["standby.signal", "recovery.signal"] {
        let _ = tokio::fs::remove_file(dir.join(stale)).await;
    }
    let (server, start_ms) = Private::start(
        bin_dir,
        os_user,
        dir,
        port,
        "-c restore_command=''",
        Duration::from_secs(120),
    )
    .await?;
    let result = async {
        let out = server
            .ask(
                "postgres",
                "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1",
            )
            .await?;
        let databases: Vec<String> = out.lines().map(str::to_string).collect();
        let tables = if databases.iter().any(|x| x == database) {
            let out = server
                .ask(database, "SELECT count(*) FROM pg_stat_user_tables")
                .await?;
            out.trim().parse().unwrap_or(0)
        } else {
            0
        };
        Ok::<_, PgError>((databases, tables))
    }
    .await;
    server.stop().await;
    let (databases, tables) = result?;
    Ok(RestoredCheck {
        manifest_checked,
        start_ms,
        databases,
        tables,
    })
}

/// The WAL segment a base backup in `dir` starts at (from its `backup_label`), e.g.
/// `000000010000000000000004`.
pub fn start_segment(dir: &Path) -> Option<String> {
    let label = std::fs::read_to_string(dir.join("backup_label")).ok()?;
    let line = label
        .lines()
        .find(|l| l.starts_with("START WAL LOCATION:"))?;
    let file = line.split("(file ").nth(1)?.trim_end_matches(')').trim();
    is_segment(file).then(|| file.to_string())
}

/// A WAL segment's file name: 24 hex digits (timeline, log, segment).
pub fn is_segment(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where a segment is in the WAL whatever its timeline: its log and segment numbers, as a
/// string that sorts as they do (`.partial` segments included).
pub fn segment_position(name: &str) -> Option<&str> {
    let base = name.strip_suffix(".partial").unwrap_or(name);
    is_segment(base).then(|| &base[8..24])
}

/// What a point-in-time recovery did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recovered {
    /// From the start of the server until it was promoted and answered.
    pub recover_ms: u64,
    /// The last transaction replayed, as the server's log says it (a time), when it does.
    pub last_transaction: Option<String>,
}

/// Replays archived WAL from `archive` onto a restored base backup in `dir`, up to
/// `target_ms` (Unix ms; every transaction committed at or before it) or, without one, to
/// the end of the archive, then ends recovery (a new timeline) and stops the server: `dir`
/// is then a consistent data dir a server starts as a primary. Runs on 127.0.0.1:`port`
/// like [`check_restored`]. Fails, with the server's words, when the WAL ends before the
/// target (a restore must not quietly stop short).
pub async fn recover(
    bin_dir: &Path,
    os_user: Option<&str>,
    dir: &Path,
    archive: &Path,
    target_ms: Option<i64>,
    port: u16,
) -> Result<Recovered, PgError> {
    let _ = tokio::fs::remove_file(dir.join("standby.signal")).await;
    tokio::fs::write(dir.join("recovery.signal"), b"")
        .await
        .map_err(io("cannot write recovery.signal"))?;
    if let Some(u) = os_user {
        crate::os::chown(u, archive)
            .await
            .map_err(PgError::Refused)?;
    }
    let a = archive.to_string_lossy();
    let mut extra = format!(
        "-c \"restore_command=cp {a}/%f %p\" -c recovery_target_timeline=latest \
         -c recovery_target_action=promote -c hot_standby=on"
    );
    if let Some(t) = target_ms {
        extra.push_str(&format!(
            " -c \"recovery_target_time={}\" -c recovery_target_inclusive=on",
            outlast_core::clock::utc_text(t)
        ));
    }
    // pg_ctl's wait ends once the server is consistent; recovery goes on until the target
    // (or the end of the archive), then the server promotes itself, or it stops when the
    // WAL ends before the target.
    let started = outlast_core::clock::now();
    let (server, _) = Private::start(
        bin_dir,
        os_user,
        dir,
        port,
        &extra,
        Duration::from_secs(6 * 3600),
    )
    .await?;
    let until = started + Duration::from_secs(6 * 3600);
    let promoted = loop {
        if crate::postgres::running_postmaster(dir).is_none() {
            let log = server.log();
            let last = last_transaction(&log);
            break Err(PgError::Refused(
                if log.contains("recovery ended before configured recovery target was reached") {
                    format!(
                        "the archived WAL ends before {}: the last transaction it holds committed at {}; restore with an earlier time, or without one for everything archived",
                        target_ms.map_or("the target".into(), outlast_core::clock::utc_text),
                        last.as_deref().unwrap_or("(none in it)")
                    )
                } else {
                    format!(
                        "the server stopped during recovery; its log: {}",
                        tail(&log, 8)
                    )
                },
            ));
        }
        match server.ask("postgres", "SELECT pg_is_in_recovery()").await {
            Ok(t) if t.trim() == "f" => break Ok(()),
            _ if outlast_core::clock::now() > until => {
                break Err(PgError::Refused("recovery went on for 6 hours".into()))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let recover_ms = started.elapsed().as_millis() as u64;
    let log = server.log();
    server.stop().await;
    promoted?;
    Ok(Recovered {
        recover_ms,
        last_transaction: last_transaction(&log),
    })
}

/// The time of the last transaction a recovery replayed, as its log says it.
fn last_transaction(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| {
            l.split("last completed transaction was at log time ")
                .nth(1)
        })
        .next_back()
        .map(|t| t.trim().to_string())
}

fn with_log(e: PgError, log: &Path) -> PgError {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    PgError::Refused(format!("{e}; server log: {}", tail(&text, 8)))
}

/// The last `n` lines of a log, joined.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
