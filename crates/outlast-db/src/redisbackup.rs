//! Redis for backups: an RDB snapshot of a member's server copied into a directory, and the
//! proof that a restored one loads (a server started on loopback from it, asked how many
//! keys it holds).

use std::path::Path;
use std::time::Duration;

use crate::redis::{io, Redis, RedisError};
use crate::resp::{info_fields, Conn, Reply};

/// How long a background save may take before the backup gives up.
const SAVE_WITHIN: Duration = Duration::from_secs(600);

impl Redis {
    /// Has this site's server write a fresh RDB snapshot (`BGSAVE`, a replica serves one as
    /// well as a primary) and copies it into `into` (a new directory) as `dump.rdb`, whole
    /// on disk before this returns.
    pub async fn rdb_into(&self, into: &Path) -> Result<(), RedisError> {
        if into.exists() {
            return Err(RedisError::Refused(format!(
                "{} exists; a snapshot goes into a new directory",
                into.display()
            )));
        }
        let mut c = self.connect().await?;
        let mut before = last_save(&mut c).await?;
        if let Err(e) = c.cmd(&["BGSAVE"]).await {
            if !e.to_string().contains("already in progress") {
                return Err(e.into());
            }
            // One already running (Redis's own `save` schedule) began before this backup:
            // wait for it, then take ours.
            wait_saved(&mut c, before).await?;
            before = last_save(&mut c).await?;
            c.cmd(&["BGSAVE"]).await?;
        }
        wait_saved(&mut c, before).await?;
        self.copy_rdb(&mut c, into).await
    }

    async fn copy_rdb(&self, c: &mut Conn, into: &Path) -> Result<(), RedisError> {
        let dir = config_get(c, "dir").await?;
        let file = config_get(c, "dbfilename").await?;
        let from = Path::new(&dir).join(&file);
        tokio::fs::create_dir_all(into)
            .await
            .map_err(io(format!("cannot create {}", into.display())))?;
        let to = into.join("dump.rdb");
        tokio::fs::copy(&from, &to).await.map_err(io(format!(
            "cannot copy {} to {}",
            from.display(),
            to.display()
        )))?;
        Ok(())
    }
}

async fn last_save(c: &mut Conn) -> Result<i64, RedisError> {
    match c.cmd(&["LASTSAVE"]).await? {
        Reply::Int(n) => Ok(n),
        other => Err(RedisError::Refused(format!("LASTSAVE answered {other:?}"))),
    }
}

async fn config_get(c: &mut Conn, name: &str) -> Result<String, RedisError> {
    match c.cmd(&["CONFIG", "GET", name]).await? {
        Reply::Array(Some(v)) if v.len() == 2 => v[1]
            .text()
            .ok_or_else(|| RedisError::Refused(format!("CONFIG GET {name} gave no text"))),
        other => Err(RedisError::Refused(format!(
            "CONFIG GET {name} answered {other:?}"
        ))),
    }
}

/// Waits until a background save that started after `before` (LASTSAVE's Unix second) has
/// ended well; Redis's LASTSAVE has whole seconds, so a save in the same second as the last
/// one is told by `rdb_bgsave_in_progress` going back to 0 with a good status.
async fn wait_saved(c: &mut Conn, before: i64) -> Result<(), RedisError> {
    let start = tokio::time::Instant::now();
    let mut seen_running = false;
    loop {
        let info = c.text(&["INFO", "persistence"]).await?.unwrap_or_default();
        let f = info_fields(&info);
        let running = f.get("rdb_bgsave_in_progress").map(String::as_str) == Some("1");
        seen_running |= running;
        if !running {
            let now = last_save(c).await?;
            if now > before || seen_running {
                return match f.get("rdb_last_bgsave_status").map(String::as_str) {
                    Some("ok") => Ok(()),
                    other => Err(RedisError::Refused(format!(
                        "the background save failed (rdb_last_bgsave_status {})",
                        other.unwrap_or("missing")
                    ))),
                };
            }
        }
        if start.elapsed() > SAVE_WITHIN {
            return Err(RedisError::Refused(format!(
                "the background save did not end within {SAVE_WITHIN:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Proves a restored RDB snapshot in `dir` (`dump.rdb`): a server (`server_bin`, as
/// `os_user` when set) started on 127.0.0.1:`port` from it, with no persistence of its own,
/// asked how many keys it holds, and shut down without saving. Returns the key count.
pub async fn check_restored(
    server_bin: &Path,
    os_user: Option<&str>,
    dir: &Path,
    port: u16,
) -> Result<u64, RedisError> {
    if !dir.join("dump.rdb").is_file() {
        return Err(RedisError::Refused(format!(
            "{} holds no dump.rdb",
            dir.display()
        )));
    }
    if let Some(u) = os_user {
        crate::os::chown(u, dir)
            .await
            .map_err(RedisError::Refused)?;
        if let Some(parent) = dir.parent() {
            crate::os::open_parents(parent).await;
        }
    }
    let mut cmd = crate::os::command_as(server_bin, os_user);
    let d = dir.to_string_lossy().to_string();
    cmd.args([
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--dir",
        &d,
    ])
    .args([
        "--dbfilename",
        "dump.rdb",
        "--appendonly",
        "no",
        "--save",
        "",
    ])
    .args([
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--logfile",
        "",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(io(format!("cannot run {}", server_bin.display())))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let start = tokio::time::Instant::now();
    let result = loop {
        match Conn::connect(addr, None, Duration::from_secs(5)).await {
            Ok(mut c) => match c.cmd(&["DBSIZE"]).await {
                Ok(Reply::Int(n)) => {
                    let _ = c.cmd(&["SHUTDOWN", "NOSAVE"]).await;
                    break Ok(n.max(0) as u64);
                }
                // Still loading the snapshot.
                Err(e) if e.to_string().contains("LOADING") => {}
                Ok(other) => break Err(RedisError::Refused(format!("DBSIZE answered {other:?}"))),
                Err(e) => break Err(e.into()),
            },
            Err(_) if start.elapsed() < SAVE_WITHIN => {}
            Err(e) => break Err(e.into()),
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(RedisError::Refused(format!(
                "the restored server exited ({status}) before it answered"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    result
}
