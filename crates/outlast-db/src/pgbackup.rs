//! PostgreSQL for backups: a base backup of a member's server into a directory, and the
//! proof that a restored one is whole (`pg_verifybackup`, then the server started on
//! loopback and asked a question).

use std::path::Path;

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

/// Proves a restored base backup in `dir`: `pg_verifybackup` (when the backup has a
/// manifest), then the server started on 127.0.0.1:`port` with its socket in a private
/// folder beside `dir`, a query of its databases and of `database`'s tables, and a fast
/// stop. `dir` is handed to `os_user` (it must own a data dir). The server never listens
/// beyond loopback and only its own user may connect.
pub async fn check_restored(
    bin_dir: &Path,
    os_user: Option<&str>,
    dir: &Path,
    port: u16,
    database: &str,
) -> Result<RestoredCheck, PgError> {
    let manifest_checked = dir.join("backup_manifest").exists();
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
    let d = dir.to_string_lossy().to_string();
    if manifest_checked {
        run(&bin_dir.join("pg_verifybackup"), os_user, &["-q", &d], None).await?;
    }
    // Its own socket folder (private to the server's user) and a pg_hba that lets in only
    // whoever reaches that socket.
    let side = beside(dir, ".verify");
    let _ = tokio::fs::remove_dir_all(&side).await;
    make_private_dir(&side).await?;
    let hba = side.join("pg_hba.conf");
    tokio::fs::write(&hba, "local all all trust\n")
        .await
        .map_err(io("cannot write the verify pg_hba.conf"))?;
    if let Some(u) = os_user {
        crate::os::chown(u, &side).await.map_err(PgError::Refused)?;
    }
    for stale in ["postmaster.pid", "standby.signal", "recovery.signal"] {
        let _ = tokio::fs::remove_file(dir.join(stale)).await;
    }
    let s = side.to_string_lossy().to_string();
    let opts = format!(
        "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{s}' \
         -c hba_file='{}' -c archive_mode=off -c synchronous_standby_names='' \
         -c primary_conninfo='' -c restore_command=''",
        hba.display()
    );
    let log = side.join("postgres.log").to_string_lossy().to_string();
    let started = outlast_core::clock::now();
    let pg_ctl = bin_dir.join("pg_ctl");
    run(
        &pg_ctl,
        os_user,
        &[
            "-D", &d, "-o", &opts, "-l", &log, "-w", "-t", "120", "start",
        ],
        None,
    )
    .await
    .map_err(|e| with_log(e, &side.join("postgres.log")))?;
    let start_ms = started.elapsed().as_millis() as u64;
    let psql = bin_dir.join("psql");
    let p = port.to_string();
    let ask = |sql: String, db: String| {
        let psql = psql.clone();
        let s = s.clone();
        let p = p.clone();
        async move {
            run(
                &psql,
                os_user,
                &[
                    "-h", &s, "-p", &p, "-U", ADMIN_ROLE, "-d", &db, "-XAtc", &sql,
                ],
                None,
            )
            .await
        }
    };
    let result = async {
        let (out, _) = ask(
            "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1".into(),
            "postgres".into(),
        )
        .await?;
        let databases: Vec<String> = out.lines().map(str::to_string).collect();
        let tables = if databases.iter().any(|x| x == database) {
            let (out, _) = ask(
                "SELECT count(*) FROM pg_stat_user_tables".into(),
                database.to_string(),
            )
            .await?;
            out.trim().parse().unwrap_or(0)
        } else {
            0
        };
        Ok::<_, PgError>((databases, tables))
    }
    .await;
    let stopped = run(
        &pg_ctl,
        os_user,
        &["-D", &d, "-m", "fast", "-w", "-t", "60", "stop"],
        None,
    )
    .await;
    if let Err(e) = &stopped {
        tracing::warn!(dir = %d, error = %e, "verify: the restored server did not stop; killing it");
        let _ = crate::postgres::signal_postmaster(dir, "-KILL");
    }
    let (databases, tables) = result?;
    let _ = tokio::fs::remove_dir_all(&side).await;
    Ok(RestoredCheck {
        manifest_checked,
        start_ms,
        databases,
        tables,
    })
}

fn with_log(e: PgError, log: &Path) -> PgError {
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    PgError::Refused(format!("{e}; server log: {}", tail.join(" | ")))
}
