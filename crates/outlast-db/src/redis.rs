//! One Redis server of a dataset (`kind = "redis"`): configured, started, stopped, promoted
//! (`REPLICAOF NO ONE`) and repointed (`REPLICAOF host port`), and its member loop.
//!
//! The server listens on this site's address and the dataset's port, daemonized with its
//! pid file in the data dir, so a restarted agent adopts it. outlast writes `redis.conf`
//! before each start. Which role the server was last given lives in `outlast.role` (written
//! before the server can take that role): a server whose file says `primary` may take
//! writes, whatever it answers. Redis replicates asynchronously: `min-replicas-to-write`
//! makes a primary refuse writes while no replica is connected and recent (so a primary cut
//! off refuses writes within `min-replicas-max-lag` seconds, and the agent stops it when
//! its lease ends), but a write it acknowledged may still be missing from a replica that is
//! promoted. A former primary's files are kept under `diverged/EPOCH/` before it resyncs
//! from the new primary (Redis cannot say which of its keys were written alone).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::member::{
    alone, handover_check, to_name, wanted_sync_set, Diverged, MemberStatus, Remote, Role, Want,
};
use crate::resp::{info_fields, Conn, RespError};

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Resp(#[from] RespError),
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RedisError {
    move |source| RedisError::Io {
        what: what.into(),
        source,
    }
}

/// What one site's Redis server is, from the config.
#[derive(Debug, Clone)]
pub struct RedisSpec {
    pub dataset: String,
    pub me: String,
    pub port: u16,
    /// Absolute.
    pub data_dir: PathBuf,
    /// `redis-server`.
    pub server_bin: PathBuf,
    /// The server runs as this user (the agent runs as root).
    pub os_user: Option<String>,
    /// `requirepass` and `masterauth`: clients and replicas use it.
    pub password: String,
    /// Sync mode: a primary refuses writes while no replica is connected and recent.
    pub sync: bool,
    /// Every member site and its address, this one included.
    pub members: BTreeMap<String, IpAddr>,
    /// More `redis.conf` directives from the config.
    pub settings: BTreeMap<String, String>,
}

fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

impl RedisSpec {
    pub fn address(&self) -> IpAddr {
        self.members
            .get(&self.me)
            .copied()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    /// `redis.conf` for a start in a role: replica of `primary`, or a primary.
    pub fn conf(&self, primary: Option<SocketAddr>) -> String {
        let d = self.data_dir.display().to_string();
        let mut out = format!(
            "# Written by outlast before each start: edit the dataset in outlast.toml instead.\n\
             bind {addr}\nport {port}\nprotected-mode no\nunixsocket \"\"\n\
             daemonize yes\npidfile {pid}\nlogfile {log}\ndir {dir}\n\
             requirepass {pw}\nmasterauth {pw}\n\
             appendonly yes\nappendfsync everysec\n\
             repl-diskless-sync yes\nrepl-diskless-sync-delay 0\n\
             replica-announce-ip {addr}\nbind-source-addr {addr}\nreplica-read-only yes\n\
             min-replicas-max-lag 2\nmin-replicas-to-write {min}\n",
            addr = self.address(),
            port = self.port,
            pid = quote(&format!("{d}/redis.pid")),
            log = quote(&format!("{d}/redis.log")),
            dir = quote(&d),
            pw = quote(&self.password),
            min = u8::from(self.sync && self.members.len() > 1),
        );
        if let Some(p) = primary {
            out.push_str(&format!("replicaof {} {}\n", p.ip(), p.port()));
        }
        for (k, v) in &self.settings {
            out.push_str(&format!("{k} {v}\n"));
        }
        out
    }
}

/// Finds `redis-server` on the path or where Debian puts it.
pub fn find_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

/// The pid of the Redis server running on `data_dir`, from its pid file, when that process
/// is alive and is a Redis server.
pub fn running_server(data_dir: &Path) -> Option<u32> {
    crate::os::running_pid(&data_dir.join("redis.pid"), |c| {
        c.starts_with("redis-server")
    })
}

/// Sends `sig` ("-TERM", "-KILL") to the Redis server on `data_dir`; Ok(false): none runs.
pub fn signal_server(data_dir: &Path, sig: &str) -> std::io::Result<bool> {
    crate::os::signal(running_server(data_dir), sig)
}

/// What a server said of its replication (INFO replication).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub primary: bool,
    /// Its replication offset.
    pub offset: u64,
    /// Primary: each replica's site (by address), its state and offset.
    pub replicas: BTreeMap<String, (String, u64)>,
    /// Replica: the link to the primary is up.
    pub link_up: bool,
    /// Replica: seconds since it last heard from the primary.
    pub last_io_s: Option<u64>,
}

/// One Redis server of a dataset.
#[derive(Debug, Clone)]
pub struct Redis {
    pub spec: RedisSpec,
}

impl Redis {
    pub fn new(spec: RedisSpec) -> Self {
        Redis { spec }
    }

    /// Another member's server, as seen from here.
    pub fn of(&self, site: &str) -> Redis {
        let mut other = self.clone();
        other.spec.me = site.to_string();
        other
    }

    pub fn addr_of(&self, site: &str) -> Result<SocketAddr, RedisError> {
        self.spec
            .members
            .get(site)
            .map(|a| SocketAddr::new(*a, self.spec.port))
            .ok_or_else(|| RedisError::Refused(format!("{site} is not a member")))
    }

    pub async fn connect(&self) -> Result<Conn, RedisError> {
        let addr = self.addr_of(&self.spec.me)?;
        Ok(Conn::connect(addr, Some(&self.spec.password), TIMEOUT).await?)
    }

    pub fn pid(&self) -> Option<u32> {
        running_server(&self.spec.data_dir)
    }

    fn role_file(&self) -> PathBuf {
        self.spec.data_dir.join("outlast.role")
    }

    /// Whether the server was last given the primary's role (it may take writes).
    pub fn primary_on_disk(&self) -> bool {
        std::fs::read_to_string(self.role_file()).is_ok_and(|t| t.trim() == "primary")
    }

    async fn set_role_file(&self, primary: bool) -> Result<(), RedisError> {
        let text = if primary { "primary\n" } else { "replica\n" };
        let path = self.role_file();
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(io(format!("cannot write {}", path.display())))
    }

    /// Whether the data dir holds data (a snapshot or an append-only file).
    pub fn has_data(&self) -> bool {
        let d = &self.spec.data_dir;
        d.join("dump.rdb").exists() || d.join("appendonlydir").exists()
    }

    /// Whether the server on the data dir may take writes: it runs and was made a primary.
    pub fn writable(&self) -> bool {
        self.pid().is_some() && self.primary_on_disk()
    }

    async fn chown(&self, path: &Path) -> Result<(), RedisError> {
        match &self.spec.os_user {
            Some(u) => crate::os::chown(u, path).await.map_err(RedisError::Refused),
            None => Ok(()),
        }
    }

    /// Starts the server as a replica of `primary`, or as a primary; returns once it answers.
    pub async fn start(&self, primary: Option<&str>) -> Result<(), RedisError> {
        let d = &self.spec.data_dir;
        tokio::fs::create_dir_all(d)
            .await
            .map_err(io(format!("cannot create {}", d.display())))?;
        if let (Some(_), Some(parent)) = (&self.spec.os_user, d.parent()) {
            crate::os::open_parents(parent).await;
        }
        let up = primary.map(|p| self.addr_of(p)).transpose()?;
        let conf = d.join("redis.conf");
        tokio::fs::write(&conf, self.spec.conf(up))
            .await
            .map_err(io(format!("cannot write {}", conf.display())))?;
        self.set_role_file(primary.is_none()).await?;
        // The password is in the file: readable by the server's user only.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600));
        self.chown(d).await?;
        let bin = &self.spec.server_bin;
        let out = crate::os::command_as(bin, self.spec.os_user.as_deref())
            .arg(&conf)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io(format!("cannot run {}", bin.display())))?;
        if !out.status.success() {
            return Err(RedisError::Refused(format!(
                "redis-server failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let t = outlast_core::clock::now();
        loop {
            if let Ok(mut c) = self.connect().await {
                // A server loading its data answers LOADING: not ready yet.
                if c.ok(&["PING"]).await.is_ok() {
                    return Ok(());
                }
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err(RedisError::Refused(format!(
                    "the Redis server on {} did not answer within 30 s (see {}/redis.log)",
                    d.display(),
                    d.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server: TERM (it writes its files and ends), KILL after `fast_for`.
    pub async fn stop(&self, fast_for: Duration) -> Result<(), RedisError> {
        if signal_server(&self.spec.data_dir, "-TERM").map_err(io("kill"))? {
            let t = outlast_core::clock::now();
            while self.pid().is_some() {
                if t.elapsed() > fast_for {
                    tracing::warn!(dataset = %self.spec.dataset, "db: the Redis server did not stop in time; killing it");
                    signal_server(&self.spec.data_dir, "-KILL").map_err(io("kill"))?;
                }
                if t.elapsed() > fast_for + Duration::from_secs(5) {
                    return Err(RedisError::Refused("the Redis server does not stop".into()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// INFO replication of a server.
    pub async fn observe(&self, c: &mut Conn) -> Result<Observed, RedisError> {
        let text = c.text(&["INFO", "replication"]).await?.unwrap_or_default();
        let f = info_fields(&text);
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
        let primary = f.get("role").is_some_and(|r| r == "master");
        let mut o = Observed {
            primary,
            offset: num(if primary {
                "master_repl_offset"
            } else {
                "slave_repl_offset"
            })
            .or_else(|| num("master_repl_offset"))
            .unwrap_or(0),
            link_up: f.get("master_link_status").is_some_and(|s| s == "up"),
            last_io_s: num("master_last_io_seconds_ago"),
            ..Observed::default()
        };
        for (k, v) in &f {
            if !k.starts_with("slave") || !k[5..].chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let kv: BTreeMap<&str, &str> = v.split(',').filter_map(|p| p.split_once('=')).collect();
            let ip: Option<IpAddr> = kv.get("ip").and_then(|i| i.parse().ok());
            let site = self
                .spec
                .members
                .iter()
                .find(|(_, a)| Some(**a) == ip)
                .map(|(s, _)| s.clone());
            if let Some(site) = site {
                let state = kv.get("state").unwrap_or(&"unknown").to_string();
                let off = kv.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
                o.replicas.insert(site, (state, off));
            }
        }
        Ok(o)
    }

    /// Keeps the data files of a former primary under `diverged/EPOCH/` before it resyncs
    /// from the new primary (which replaces them); the directory kept.
    pub async fn keep_files(&self, epoch: u64) -> Result<Option<PathBuf>, RedisError> {
        let d = &self.spec.data_dir;
        let files: Vec<PathBuf> = ["dump.rdb", "appendonlydir"]
            .iter()
            .map(|f| d.join(f))
            .filter(|p| p.exists())
            .collect();
        if files.is_empty() {
            return Ok(None);
        }
        let dir = d.join("diverged").join(epoch.to_string());
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io(format!("cannot create {}", dir.display())))?;
        for f in files {
            let Some(name) = f.file_name() else { continue };
            let to = dir.join(name);
            if to.exists() {
                continue;
            }
            tokio::fs::rename(&f, &to).await.map_err(io(format!(
                "cannot move {} to {}",
                f.display(),
                to.display()
            )))?;
        }
        self.chown(&dir).await?;
        Ok(Some(dir))
    }
}

/// Asks every other member's server once a second what it is, for status.
pub async fn watch_others(
    r: Redis,
    out: watch::Sender<BTreeMap<String, Remote>>,
    stop: CancellationToken,
) {
    let others: Vec<String> = r
        .spec
        .members
        .keys()
        .filter(|s| **s != r.spec.me)
        .cloned()
        .collect();
    let mut conns: BTreeMap<String, Conn> = BTreeMap::new();
    loop {
        let mut seen = BTreeMap::new();
        for site in &others {
            let them = r.of(site);
            if !conns.contains_key(site) {
                if let Ok(c) = them.connect().await {
                    conns.insert(site.clone(), c);
                }
            }
            let mut remote = Remote::default();
            if let Some(c) = conns.get_mut(site) {
                match them.observe(c).await {
                    Ok(o) => {
                        remote.role = Some(if o.primary {
                            Role::Primary
                        } else {
                            Role::Standby
                        });
                        remote.lsn = Some(o.offset);
                        remote.replay_age_ms = o.last_io_s.map(|s| s * 1000);
                    }
                    Err(_) => {
                        conns.remove(site);
                    }
                }
            }
            seen.insert(site.clone(), remote);
        }
        out.send_if_modified(|cur| {
            let changed = *cur != seen;
            if changed {
                *cur = seen;
            }
            changed
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Whether this site's server takes writes while the committed state does not want it to.
pub fn holds_writes(r: &Redis, w: &Want) -> bool {
    let wanted = w.acting && w.primary.as_deref() == Some(r.spec.me.as_str());
    !wanted && r.writable()
}

/// The member loop of a Redis dataset (see [`crate::member::run`] for PostgreSQL's): one
/// step at least every 100 ms and at each change of `want`.
pub async fn run(
    r: Redis,
    mut want: watch::Receiver<Want>,
    status: watch::Sender<MemberStatus>,
    stop: CancellationToken,
) {
    let site = r.spec.me.clone();
    let mut m = Member {
        r,
        conn: None,
        pointed_at: None,
        named: None,
        handover_since: None,
        waiting: None,
        status: MemberStatus {
            site,
            ..MemberStatus::default()
        },
    };
    let mut retry_at = outlast_core::clock::now();
    loop {
        let w = want.borrow_and_update().clone();
        if outlast_core::clock::now() >= retry_at {
            match m.step(&w).await {
                Ok(()) => m.status.error = m.waiting.take(),
                Err(e) => {
                    tracing::warn!(dataset = %m.r.spec.dataset, error = %e, "db: a step failed; trying again");
                    m.status.error = Some(e.to_string());
                    m.conn = None;
                    retry_at = outlast_core::clock::now() + Duration::from_millis(500);
                }
            }
        }
        status.send_if_modified(|cur| {
            let changed = *cur != m.status;
            if changed {
                *cur = m.status.clone();
            }
            changed
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = want.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

struct Member {
    r: Redis,
    conn: Option<Conn>,
    pointed_at: Option<String>,
    /// The replicas a write needs now (sync mode; none known: not set since start).
    named: Option<Vec<String>>,
    handover_since: Option<std::time::Instant>,
    waiting: Option<String>,
    status: MemberStatus,
}

impl Member {
    async fn conn(&mut self) -> Result<&mut Conn, RedisError> {
        if self.conn.is_none() {
            self.conn = Some(self.r.connect().await?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| RedisError::Refused("no connection".into()))
    }

    async fn step(&mut self, w: &Want) -> Result<(), RedisError> {
        let me = self.r.spec.me.clone();
        let primary_here = w.acting && w.primary.as_deref() == Some(me.as_str());
        if !primary_here && self.r.writable() {
            self.fence(w).await?;
        }
        match w.primary.as_deref() {
            Some(p) if p == me && w.acting => self.be_primary(w).await,
            Some(p) if p != me => self.be_replica(p, w).await,
            _ => {
                if self.r.pid().is_some() {
                    self.observe().await.map(|_| ())
                } else {
                    if self.status.role != Role::Fenced {
                        self.status.role = Role::Down;
                    }
                    Ok(())
                }
            }
        }
    }

    /// Stops a server that takes writes where it should not. Writes are paused first, so the
    /// offset read is where it stopped: a planned move's new primary waits until it has it.
    async fn fence(&mut self, w: &Want) -> Result<(), RedisError> {
        tracing::warn!(dataset = %self.r.spec.dataset, "db: this site does not act as the primary; stopping its writable Redis server");
        let r = self.r.clone();
        let stopped_at = async {
            let c = self.conn().await.ok()?;
            c.ok(&["CLIENT", "PAUSE", "10000", "WRITE"]).await.ok()?;
            let offset = r.observe(c).await.ok().map(|o| o.offset);
            // NOW: without waiting for the replicas to acknowledge (up to a second, or
            // `shutdown-timeout` for one cut off); a planned move's new primary checks
            // that it has everything itself. The files are still synced and saved.
            let _ = c.cmd(&["SHUTDOWN", "NOW"]).await;
            offset
        }
        .await;
        self.conn = None;
        let t = outlast_core::clock::now();
        while self.r.pid().is_some() && t.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.r.stop(Duration::from_secs(1)).await?;
        self.status.role = Role::Fenced;
        self.status.handed_over = stopped_at.map(|o| (w.epoch, o));
        if let Some(o) = stopped_at {
            tracing::info!(dataset = %self.r.spec.dataset, offset = o, "db: stopped cleanly; the new primary takes over from there");
        }
        metrics::counter!("outlast_db_fenced_total", "dataset" => self.r.spec.dataset.clone())
            .increment(1);
        Ok(())
    }

    async fn observe(&mut self) -> Result<crate::redis::Observed, RedisError> {
        let r = self.r.clone();
        let c = self.conn().await?;
        let o = r.observe(c).await?;
        let s = &mut self.status;
        s.role = if o.primary {
            Role::Primary
        } else {
            Role::Standby
        };
        s.lsn = Some(o.offset.to_string());
        s.lsn_pos = Some(o.offset);
        if o.primary {
            s.lag_bytes = None;
            s.lag_ms = None;
            s.standbys = o
                .replicas
                .iter()
                .map(|(k, (state, _))| (k.clone(), state.clone()))
                .collect();
        } else {
            s.lag_bytes = None;
            s.lag_ms = o.last_io_s.map(|x| x * 1000);
            s.standbys.clear();
            s.sync_names = None;
            s.alone = None;
        }
        Ok(o)
    }

    async fn be_primary(&mut self, w: &Want) -> Result<(), RedisError> {
        let r = self.r.clone();
        if r.pid().is_none() {
            if !r.has_data() && self.another_member_answers().await {
                return Err(RedisError::Refused(
                    "the data dir is empty and another member's server runs: this site will not start an empty primary beside it; move the primary to a member with data".into(),
                ));
            }
            r.start(None).await?;
            self.conn = None;
            self.named = None;
            self.status.promoted_at_ms = Some(outlast_core::clock::unix_ms());
            tracing::info!(dataset = %r.spec.dataset, epoch = w.epoch, "db: started this site's Redis server as the primary");
        } else if !r.primary_on_disk() {
            if let Some(h) = &w.handover {
                let since = *self
                    .handover_since
                    .get_or_insert_with(outlast_core::clock::now);
                let offset = match h.stopped_at {
                    Some(_) => Some(self.observe().await?.offset),
                    None => None,
                };
                let (go, waiting) =
                    handover_check(&r.spec.dataset, h, since.elapsed(), offset, |have, stop| {
                        have >= stop
                    });
                if !go {
                    self.waiting = waiting;
                    return Ok(());
                }
            }
            let t = outlast_core::clock::now();
            // The file first: from here the server may take writes.
            r.set_role_file(true).await?;
            let c = self.conn().await?;
            c.ok(&["REPLICAOF", "NO", "ONE"]).await?;
            self.handover_since = None;
            self.pointed_at = None;
            self.named = None;
            self.status.promoted_at_ms = Some(outlast_core::clock::unix_ms());
            metrics::histogram!("outlast_db_promote_seconds", "dataset" => r.spec.dataset.clone())
                .record(t.elapsed().as_secs_f64());
            tracing::info!(dataset = %r.spec.dataset, epoch = w.epoch, took_ms = t.elapsed().as_millis() as u64, "db: promoted this site's Redis server");
        }
        let o = self.observe().await?;
        let me = r.spec.me.clone();
        let others: Vec<String> = r
            .spec
            .members
            .keys()
            .filter(|s| **s != me)
            .cloned()
            .collect();
        let current = self.named.clone().unwrap_or_default();
        let want = if w.sync {
            wanted_sync_set(w, &others, |s| {
                o.replicas.get(s).is_some_and(|(st, _)| st == "online")
                    || current.iter().any(|c| c == s)
            })
        } else {
            Vec::new()
        };
        self.status.sync_want = w.sync.then(|| want.clone());
        if let Some(set) = to_name(w.sync, &want, w.sync_set.as_deref()) {
            if self.named.as_ref() != Some(&set) {
                let min = u8::from(!set.is_empty()).to_string();
                let c = self.conn().await?;
                c.ok(&["CONFIG", "SET", "min-replicas-to-write", &min])
                    .await?;
                tracing::info!(dataset = %r.spec.dataset, replicas = ?set, "db: replicas a write needs set");
                self.named = Some(set);
            }
        }
        let named = self.named.clone().unwrap_or_default();
        self.status.sync_names = Some(if named.is_empty() {
            String::new()
        } else {
            format!("min-replicas-to-write 1 ({})", named.join(", "))
        });
        let refs: Vec<&String> = others.iter().collect();
        self.status.alone = alone(w, &refs, named.is_empty());
        Ok(())
    }

    async fn another_member_answers(&self) -> bool {
        for site in self.r.spec.members.keys() {
            if *site == self.r.spec.me {
                continue;
            }
            if self.r.of(site).connect().await.is_ok() {
                return true;
            }
        }
        false
    }

    async fn is_primary(&self, site: &str) -> bool {
        let them = self.r.of(site);
        let Ok(mut c) = them.connect().await else {
            return false;
        };
        them.observe(&mut c).await.is_ok_and(|o| o.primary)
    }

    async fn be_replica(&mut self, primary: &str, w: &Want) -> Result<(), RedisError> {
        let r = self.r.clone();
        if r.pid().is_none() {
            if r.primary_on_disk() && r.has_data() {
                // A former primary: it waits for the new one, then keeps its files before
                // the resync replaces them, unless it handed over cleanly in this move.
                if !self.is_primary(primary).await {
                    self.status.role = Role::Fenced;
                    return Ok(());
                }
                let clean = self.status.handed_over.is_some_and(|(e, _)| e == w.epoch);
                if !clean {
                    let before = self.status.lsn.clone();
                    if let Some(dir) = r.keep_files(w.epoch).await? {
                        tracing::warn!(dataset = %r.spec.dataset, dir = %dir.display(), "db: a former Redis primary's files kept before it resyncs");
                        metrics::counter!("outlast_db_diverged_total", "dataset" => r.spec.dataset.clone())
                            .increment(1);
                        self.status.diverged.push(Diverged {
                            site: r.spec.me.clone(),
                            epoch: w.epoch,
                            to_lsn: before,
                            path: dir.display().to_string(),
                        });
                    }
                }
            }
            if !r.has_data() && !self.is_primary(primary).await {
                self.status.role = Role::Down;
                return Ok(());
            }
            r.start(Some(primary)).await?;
            self.conn = None;
            self.pointed_at = Some(primary.to_string());
            self.named = None;
        }
        if self.pointed_at.as_deref() != Some(primary) {
            let up = r.addr_of(primary)?;
            r.set_role_file(false).await?;
            let (ip, port) = (up.ip().to_string(), up.port().to_string());
            let c = self.conn().await?;
            c.ok(&["REPLICAOF", &ip, &port]).await?;
            tracing::info!(dataset = %r.spec.dataset, primary, "db: Redis replica repointed");
            self.pointed_at = Some(primary.to_string());
        }
        self.observe().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RedisSpec {
        RedisSpec {
            dataset: "sessions".into(),
            me: "west".into(),
            port: 6379,
            data_dir: PathBuf::from("/var/lib/outlast/west/redis"),
            server_bin: PathBuf::from("/usr/bin/redis-server"),
            os_user: None,
            password: "pa\"ss".into(),
            sync: true,
            members: [
                ("east".to_string(), IpAddr::from([127, 0, 0, 11])),
                ("west".to_string(), IpAddr::from([127, 0, 0, 12])),
            ]
            .into_iter()
            .collect(),
            settings: [("maxmemory".to_string(), "100mb".to_string())].into(),
        }
    }

    #[test]
    fn the_conf_binds_the_site_and_names_the_primary_only_for_a_replica() {
        let s = spec();
        let east = SocketAddr::from(([127, 0, 0, 11], 6379));
        let replica = s.conf(Some(east));
        assert!(
            replica.contains("bind 127.0.0.12\nport 6379\n"),
            "{replica}"
        );
        assert!(replica.contains("replicaof 127.0.0.11 6379\n"));
        assert!(replica.contains("requirepass \"pa\\\"ss\"\n"));
        assert!(replica.contains("min-replicas-to-write 1\n"));
        assert!(replica.ends_with("maxmemory 100mb\n"));
        let primary = s.conf(None);
        assert!(!primary.contains("replicaof"));
        let mut alone = spec();
        alone.sync = false;
        assert!(alone.conf(None).contains("min-replicas-to-write 0\n"));
    }

    #[test]
    fn no_server_runs_on_a_dir_without_a_pid_file() {
        let r = Redis::new(spec());
        assert_eq!(r.pid(), None);
        assert!(!r.writable());
        let w = Want::default();
        assert!(!holds_writes(&r, &w));
    }
}
