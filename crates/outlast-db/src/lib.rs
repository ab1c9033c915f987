//! outlast-db: the dataset members an agent runs.
//!
//! A member is one server of a dataset on this site. Its role comes only from the committed
//! cluster state (the primary of the dataset's service, and whether this site acts as that
//! primary now): [`member::run`] reconciles the server to it, over and over. It never makes
//! a server writable on its own say: it promotes only while the agent says this site acts,
//! and it stops a writable server as soon as the agent says this site does not.

pub mod member;
pub mod os;
pub mod pgbackup;
pub mod postgres;
pub mod redis;
pub mod redisbackup;
pub mod resp;

pub use member::{holds_writes, watch_others, Alone, MemberStatus, Remote, Role, Want};
pub use postgres::{
    find_bin_dir, running_postmaster, signal_postmaster, PgError, PgSpec, Postgres,
};

pub use redis::{Redis, RedisSpec};

use std::collections::BTreeMap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One member's server, of either kind: what the agent runs and asks.
#[derive(Debug, Clone)]
pub enum Server {
    Postgres(Postgres),
    Redis(Redis),
}

impl Server {
    pub fn dataset(&self) -> &str {
        match self {
            Server::Postgres(p) => &p.spec.dataset,
            Server::Redis(r) => &r.spec.dataset,
        }
    }

    /// The member loop (until `stop`).
    pub async fn run(
        self,
        want: watch::Receiver<Want>,
        status: watch::Sender<MemberStatus>,
        stop: CancellationToken,
    ) {
        match self {
            Server::Postgres(p) => member::run(p, want, status, stop).await,
            Server::Redis(r) => redis::run(r, want, status, stop).await,
        }
    }

    /// Asks the other members' servers what they are, once a second (until `stop`).
    pub async fn watch_others(
        self,
        out: watch::Sender<BTreeMap<String, Remote>>,
        stop: CancellationToken,
    ) {
        match self {
            Server::Postgres(p) => member::watch_others(p, out, stop).await,
            Server::Redis(r) => redis::watch_others(r, out, stop).await,
        }
    }

    /// `postgres` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Server::Postgres(_) => "postgres",
            Server::Redis(_) => "redis",
        }
    }

    /// A consistent copy of this member's data in `into` (a new directory), for a backup: a
    /// PostgreSQL base backup, or a Redis RDB snapshot (`dump.rdb`).
    pub async fn copy_into(&self, into: &std::path::Path) -> Result<(), String> {
        match self {
            Server::Postgres(p) => p.base_backup(into).await.map_err(|e| e.to_string()),
            Server::Redis(r) => r.rdb_into(into).await.map_err(|e| e.to_string()),
        }
    }

    /// Proves a restored copy in `dir`: a server started from it on 127.0.0.1:`port` and
    /// asked what it holds (then stopped); what it showed.
    pub async fn check_restored(&self, dir: &std::path::Path, port: u16) -> Result<String, String> {
        match self {
            Server::Postgres(p) => pgbackup::check_restored(
                &p.spec.bin_dir,
                p.spec.os_user.as_deref(),
                dir,
                port,
                &p.spec.database,
            )
            .await
            .map(|c| {
                format!(
                    "manifest {}; started in {} ms; databases {}; {} tables",
                    if c.manifest_checked {
                        "verified"
                    } else {
                        "missing"
                    },
                    c.start_ms,
                    c.databases.join(", "),
                    c.tables
                )
            })
            .map_err(|e| e.to_string()),
            Server::Redis(r) => redisbackup::check_restored(
                &r.spec.server_bin,
                r.spec.os_user.as_deref(),
                dir,
                port,
            )
            .await
            .map(|keys| format!("loaded by redis-server; {keys} keys"))
            .map_err(|e| e.to_string()),
        }
    }

    /// The member's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        match self {
            Server::Postgres(p) => &p.spec.data_dir,
            Server::Redis(r) => &r.spec.data_dir,
        }
    }

    /// Makes a copy restored into [`Self::data_dir`] the server's own: private (PostgreSQL
    /// refuses a data dir others can read), owned by the user the server runs as, its
    /// parents passable by that user.
    pub async fn adopt_restored(&self) -> Result<(), String> {
        let dir = self.data_dir();
        if let Server::Postgres(_) = self {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
        }
        let user = match self {
            Server::Postgres(p) => p.spec.os_user.as_deref(),
            Server::Redis(r) => r.spec.os_user.as_deref(),
        };
        if let Some(user) = user {
            os::chown(user, dir).await?;
            os::open_parents(dir).await;
        }
        Ok(())
    }

    /// Whether the server takes writes while the committed state does not want it to.
    pub fn holds_writes(&self, w: &Want) -> bool {
        match self {
            Server::Postgres(p) => member::holds_writes(p, w),
            Server::Redis(r) => redis::holds_writes(r, w),
        }
    }
}

/// The password of outlast's own role in a dataset (superuser and replication), derived from
/// the cluster secret so every agent knows it and no file holds it.
pub fn admin_password(cluster_secret: &str, dataset: &str) -> String {
    let mut h = blake3::Hasher::new_derive_key("outlast 2026 dataset admin password");
    h.update(cluster_secret.as_bytes());
    h.update(b"\0");
    h.update(dataset.as_bytes());
    hex::encode(&h.finalize().as_bytes()[..24])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_password_depends_on_the_secret_and_the_dataset() {
        let a = admin_password("s3cret-s3cret-s3cret", "orders");
        assert_eq!(a, admin_password("s3cret-s3cret-s3cret", "orders"));
        assert_ne!(a, admin_password("s3cret-s3cret-s3cret", "carts"));
        assert_ne!(a, admin_password("other-secret-value", "orders"));
        assert_eq!(a.len(), 48);
    }
}
