//! One PostgreSQL server of a dataset: made (initdb or a clone), configured, started,
//! stopped, promoted, repointed and rewound, through PostgreSQL's own programs and SQL.
//!
//! The server listens on this site's address and the dataset's port only (no Unix socket,
//! so members of several sites can share one machine). outlast's settings live in
//! `outlast.conf`, included at the end of `postgresql.conf`; what changes with the role
//! (`primary_conninfo`, `primary_slot_name`, `synchronous_standby_names`) lives in
//! `postgresql.auto.conf`. A clone or a rewind copies both files from the source, so both
//! are written again for this site after each.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// outlast's own role in every dataset: superuser and replication, password from the
/// cluster secret.
pub const ADMIN_ROLE: &str = "outlast";

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Program {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("SQL at {site}: {why}")]
    Sql { site: String, why: String },
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
    move |source| PgError::Io {
        what: what.into(),
        source,
    }
}

/// What one site's server is, from the config.
#[derive(Debug, Clone)]
pub struct PgSpec {
    pub dataset: String,
    /// This site.
    pub me: String,
    pub port: u16,
    /// Absolute.
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// The server runs as this user (the agent runs as root); none: as the agent's user.
    pub os_user: Option<String>,
    pub database: String,
    pub user: String,
    pub password: String,
    pub admin_password: String,
    /// Every member site and its address, this one included.
    pub members: BTreeMap<String, IpAddr>,
    /// Stream from these members at another address (a local drill puts its fault proxy
    /// there, to give replication the distance between sites).
    pub replication_via: BTreeMap<String, std::net::SocketAddr>,
    /// Addresses and networks (CIDR) allowed to log in as `user`: every data site's
    /// address (its gateway dials from there), and `allow` from the config.
    pub clients: Vec<String>,
    /// More `postgresql.conf` settings from the config.
    pub settings: BTreeMap<String, String>,
    /// WAL archived continuously into a local spool (a `[[backups]]` with `wal = true`).
    pub wal: Option<WalArchive>,
    /// Why this member must not make a new, empty cluster when its data dir is empty
    /// (its dataset's data exists elsewhere: a backup holds it); none: it may.
    pub refuse_initdb: Option<String>,
}

/// Continuous archiving of a member's WAL: every completed segment (a standby's too:
/// `archive_mode = always`) copied into `spool`, where the agent picks it up, and a segment
/// switch at least every `every` while there are writes.
#[derive(Debug, Clone)]
pub struct WalArchive {
    pub spool: PathBuf,
    pub every: Duration,
}

impl WalArchive {
    /// The spool of a member whose data dir is `data_dir`: beside it, so a copy into the
    /// spool never crosses file systems and a wiped data dir's spool goes with it.
    pub fn spool_for(data_dir: &Path) -> PathBuf {
        beside(data_dir, ".wal-spool")
    }

    /// Where a restore fetches archived WAL for a data dir restored into `data_dir`.
    pub fn restore_dir_for(data_dir: &Path) -> PathBuf {
        beside(data_dir, ".wal-restore")
    }

    /// `postgresql.conf` lines: each segment copied, flushed, then renamed into the spool,
    /// so the agent never ships half a segment.
    pub fn conf(&self) -> String {
        let spool = self.spool.to_string_lossy().replace('\'', "''");
        let part = format!("\"{spool}/%f.part\"");
        format!(
            "archive_mode = always\n\
             archive_command = 'cp \"%p\" {part} && sync {part} && mv -f {part} \"{spool}/%f\"'\n\
             archive_timeout = '{}s'\n",
            self.every.as_secs().max(1)
        )
    }
}

impl PgSpec {
    pub fn address(&self) -> IpAddr {
        self.members
            .get(&self.me)
            .copied()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    /// The replication slot a member streams from.
    pub fn slot(site: &str) -> String {
        let clean: String = site
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("outlast_{clean}")
    }

    fn conninfo(&self, site: &str, extra: &str) -> Option<String> {
        let addr = self.members.get(site)?;
        let (host, port) = match self.replication_via.get(site) {
            Some(via) => (via.ip(), via.port()),
            None => (*addr, self.port),
        };
        Some(format!(
            "host={host} port={port} user={ADMIN_ROLE} password={} {extra}",
            self.admin_password
        ))
    }

    /// The settings outlast owns (`outlast.conf`).
    pub fn outlast_conf(&self) -> String {
        let mut s = format!(
            "# Written by outlast for dataset {} at site {}; rewritten at every start.\n\
             listen_addresses = '{}'\n\
             port = {}\n\
             unix_socket_directories = ''\n\
             wal_level = replica\n\
             max_wal_senders = 16\n\
             max_replication_slots = 16\n\
             max_slot_wal_keep_size = '4GB'\n\
             wal_keep_size = '256MB'\n\
             hot_standby = on\n\
             hot_standby_feedback = on\n\
             wal_log_hints = on\n\
             password_encryption = 'scram-sha-256'\n\
             wal_sender_timeout = '5s'\n\
             wal_receiver_timeout = '5s'\n\
             wal_receiver_status_interval = '1s'\n\
             wal_retrieve_retry_interval = '200ms'\n\
             synchronous_commit = on\n\
             logging_collector = off\n",
            self.dataset,
            self.me,
            self.address(),
            self.port
        );
        for (k, v) in &self.settings {
            s.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        // After the operator's settings: a backup that archives WAL needs these.
        if let Some(w) = &self.wal {
            s.push_str(&w.conf());
        }
        s
    }

    /// `pg_hba.conf`: outlast's role from the member sites (replication and admin), the
    /// application's role from the allowed clients, nothing else.
    pub fn hba(&self) -> String {
        let mut s = String::from(
            "# Written by outlast; rewritten at every start.\n\
             # TYPE DATABASE USER ADDRESS METHOD\n",
        );
        // Connections to another address of 127/8 come from 127.0.0.1 (the kernel picks
        // it): members that share one machine's loopback reach each other from there.
        let mut from: Vec<String> = self.members.values().map(|a| a.to_string()).collect();
        if self.members.values().any(|a| a.is_loopback()) {
            from.push("127.0.0.1".into());
        }
        from.sort();
        from.dedup();
        for addr in &from {
            s.push_str(&format!(
                "host replication {ADMIN_ROLE} {} scram-sha-256\n",
                cidr(&addr.to_string())
            ));
            s.push_str(&format!(
                "host all {ADMIN_ROLE} {} scram-sha-256\n",
                cidr(&addr.to_string())
            ));
        }
        for c in &self.clients {
            s.push_str(&format!(
                "host {} {} {} scram-sha-256\n",
                self.database,
                self.user,
                cidr(c)
            ));
        }
        s
    }

    /// `postgresql.auto.conf` for a role: a standby of `primary` streams from its slot.
    pub fn auto_conf(&self, primary: Option<&str>, sync: &str) -> String {
        let mut s = String::from("# Written by outlast (and ALTER SYSTEM).\n");
        if let Some(p) =
            primary.and_then(|p| self.conninfo(p, &format!("application_name={}", self.me)))
        {
            s.push_str(&format!(
                "primary_conninfo = '{}'\nprimary_slot_name = '{}'\n",
                p.replace('\'', "''"),
                Self::slot(&self.me)
            ));
        }
        s.push_str(&format!(
            "synchronous_standby_names = '{}'\n",
            sync.replace('\'', "''")
        ));
        s
    }
}

fn cidr(addr: &str) -> String {
    if addr.contains('/') {
        addr.to_string()
    } else if addr.contains(':') {
        format!("{addr}/128")
    } else {
        format!("{addr}/32")
    }
}

/// Where PostgreSQL's programs are: `pg_config --bindir` when it is on the path, else the
/// newest `/usr/lib/postgresql/*/bin` (Debian's layout).
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// `synchronous_standby_names` for a set of standbys: any one of them must have each commit.
pub fn sync_names(standbys: &[String]) -> String {
    if standbys.is_empty() {
        return String::new();
    }
    let names: Vec<String> = standbys.iter().map(|s| format!("\"{s}\"")).collect();
    format!("ANY 1 ({})", names.join(", "))
}

/// What a running server says of itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub in_recovery: bool,
    /// Primary: the current WAL write position; standby: the last replayed.
    pub lsn: u64,
    /// Standby: the last received.
    pub received: u64,
    /// Standby: whether a WAL receiver is streaming now, and from which host.
    pub streaming_from: Option<String>,
    /// Primary: per standby (application_name), its flushed position and sync state.
    pub standbys: BTreeMap<String, (u64, String)>,
    pub sync_names: String,
    /// Standby: ms since the last replayed transaction committed on the primary.
    pub replay_age_ms: Option<u64>,
}

/// Parses `X/Y` into a byte position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// One site's server.
#[derive(Debug, Clone)]
pub struct Postgres {
    pub spec: PgSpec,
}

/// How to stop: `Fast` ends sessions and checkpoints (standbys get every WAL record first);
/// `Immediate` ends at once (crash recovery at the next start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Fast,
    Immediate,
}

impl Postgres {
    pub fn new(spec: PgSpec) -> Self {
        Postgres { spec }
    }

    pub(crate) fn bin(&self, program: &str) -> PathBuf {
        self.spec.bin_dir.join(program)
    }

    /// A path beside the data dir: `<data_dir><suffix>` (a clone or rewind never touches
    /// it).
    fn beside(&self, suffix: &str) -> PathBuf {
        beside(&self.spec.data_dir, suffix)
    }

    /// The server's log.
    pub fn log_path(&self) -> PathBuf {
        self.beside(".postgres.log")
    }

    /// Where diverged history is archived before a rewind.
    pub fn diverged_dir(&self) -> PathBuf {
        self.beside(".diverged")
    }

    /// Another member's server, as seen from here (to ask it, clone or rewind from it).
    pub fn of(&self, site: &str) -> Postgres {
        let mut other = self.clone();
        other.spec.me = site.to_string();
        other
    }

    /// A member's address.
    fn addr_of(&self, site: &str) -> Result<IpAddr, PgError> {
        self.spec
            .members
            .get(site)
            .copied()
            .ok_or_else(|| PgError::Refused(format!("{site} is not a member")))
    }

    /// Runs one of PostgreSQL's programs (as `os_user` when set); its stdout and stderr.
    async fn program(&self, program: &str, args: &[&str]) -> Result<(String, String), PgError> {
        run(
            &self.bin(program),
            self.spec.os_user.as_deref(),
            args,
            Some(&self.spec.admin_password),
        )
        .await
    }

    /// Gives a path to `os_user` (the server must own its data dir and log).
    async fn chown(&self, path: &Path) -> Result<(), PgError> {
        match &self.spec.os_user {
            Some(u) => crate::os::chown(u, path).await.map_err(PgError::Refused),
            None => Ok(()),
        }
    }

    /// Whether the data dir holds a cluster.
    pub fn has_data(&self) -> bool {
        self.spec.data_dir.join("PG_VERSION").exists()
    }

    /// Whether the data dir is set up as a standby.
    pub fn is_standby_dir(&self) -> bool {
        self.spec.data_dir.join("standby.signal").exists()
    }

    /// The postmaster's pid when one runs on the data dir.
    pub fn postmaster_pid(&self) -> Option<u32> {
        running_postmaster(&self.spec.data_dir)
    }

    async fn prepare_parent(&self) -> Result<(), PgError> {
        let parent = self
            .spec
            .data_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(io(format!("cannot create {}", parent.display())))?;
        if self.spec.os_user.is_some() {
            // The server's user must reach its data dir through the parents.
            crate::os::open_parents(&parent).await;
        }
        let log = self.log_path();
        if !log.exists() {
            tokio::fs::write(&log, b"")
                .await
                .map_err(io(format!("cannot create {}", log.display())))?;
        }
        self.chown(&log).await
    }

    /// Writes outlast's settings and pg_hba, and makes sure `postgresql.conf` includes them.
    async fn write_conf(
        &self,
        standby: bool,
        primary: Option<&str>,
        sync: &str,
    ) -> Result<(), PgError> {
        let d = &self.spec.data_dir;
        let write = |name: &str, text: String| {
            let path = d.join(name);
            async move {
                tokio::fs::write(&path, text)
                    .await
                    .map_err(io(format!("cannot write {}", path.display())))
            }
        };
        write("outlast.conf", self.spec.outlast_conf()).await?;
        write("pg_hba.conf", self.spec.hba()).await?;
        write("postgresql.auto.conf", self.spec.auto_conf(primary, sync)).await?;
        let main = d.join("postgresql.conf");
        let text = tokio::fs::read_to_string(&main).await.unwrap_or_default();
        if !text.lines().any(|l| l.trim() == "include 'outlast.conf'") {
            let text = format!("{text}\ninclude 'outlast.conf'\n");
            tokio::fs::write(&main, text)
                .await
                .map_err(io(format!("cannot write {}", main.display())))?;
        }
        if let Some(w) = &self.spec.wal {
            tokio::fs::create_dir_all(&w.spool)
                .await
                .map_err(io(format!("cannot create {}", w.spool.display())))?;
            self.chown(&w.spool).await?;
        }
        let signal = d.join("standby.signal");
        if standby {
            tokio::fs::write(&signal, b"")
                .await
                .map_err(io("cannot write standby.signal"))?;
        } else if signal.exists() {
            tokio::fs::remove_file(&signal)
                .await
                .map_err(io("cannot remove standby.signal"))?;
        }
        self.chown(d).await
    }

    /// A new cluster on an empty data dir (data checksums, scram-sha-256), then the
    /// application's role and database. Leaves it running as a primary.
    pub async fn initdb(&self) -> Result<(), PgError> {
        self.prepare_parent().await?;
        let d = &self.spec.data_dir;
        if self.has_data() {
            return Err(PgError::Refused(format!(
                "{} already holds a cluster",
                d.display()
            )));
        }
        make_private_dir(d).await?;
        self.chown(d).await?;
        let pwfile = d.with_extension("initpw");
        tokio::fs::write(&pwfile, &self.spec.admin_password)
            .await
            .map_err(io("cannot write the initdb password file"))?;
        self.chown(&pwfile).await?;
        let res = self
            .program(
                "initdb",
                &[
                    "-D",
                    &d.to_string_lossy(),
                    "--data-checksums",
                    "-U",
                    ADMIN_ROLE,
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    &format!("--pwfile={}", pwfile.display()),
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
            )
            .await;
        let _ = tokio::fs::remove_file(&pwfile).await;
        res?;
        self.write_conf(false, None, "").await?;
        self.start().await?;
        let c = self.connect("postgres").await?;
        let role = quote_ident(&self.spec.user);
        let exists = c
            .query_opt(
                "SELECT 1 FROM pg_roles WHERE rolname = $1",
                &[&self.spec.user],
            )
            .await
            .map_err(|e| self.sql(e))?;
        if exists.is_none() {
            c.batch_execute(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD {}",
                quote_literal(&self.spec.password)
            ))
            .await
            .map_err(|e| self.sql(e))?;
        }
        c.batch_execute(&format!(
            "CREATE DATABASE {} OWNER {role}",
            quote_ident(&self.spec.database)
        ))
        .await
        .map_err(|e| self.sql(e))?;
        tracing::info!(dataset = %self.spec.dataset, dir = %d.display(), "db: initialised a new cluster");
        Ok(())
    }

    /// A standby made from `primary`'s data (its slot must exist there). Leaves it stopped.
    pub async fn clone_from(&self, primary: &str) -> Result<(), PgError> {
        self.prepare_parent().await?;
        let d = &self.spec.data_dir;
        if d.exists() {
            tokio::fs::remove_dir_all(d)
                .await
                .map_err(io(format!("cannot empty {}", d.display())))?;
        }
        make_private_dir(d).await?;
        self.chown(d).await?;
        let addr = self.addr_of(primary)?;
        self.program(
            "pg_basebackup",
            &[
                "-h",
                &addr.to_string(),
                "-p",
                &self.spec.port.to_string(),
                "-U",
                ADMIN_ROLE,
                "-D",
                &d.to_string_lossy(),
                "-X",
                "stream",
                "-c",
                "fast",
                "-S",
                &PgSpec::slot(&self.spec.me),
                "-w",
            ],
        )
        .await?;
        self.write_conf(true, Some(primary), "").await?;
        tracing::info!(dataset = %self.spec.dataset, primary, "db: cloned from the primary");
        Ok(())
    }

    /// Makes a stopped former primary a standby of `primary`, without losing what only it
    /// had: when its history left the primary's, a copy of its data dir is kept under
    /// [`Self::diverged_dir`]`/{epoch}` first. Falls back to a fresh clone when the rewind
    /// fails. Returns the archive when one was made.
    pub async fn rewind_to(&self, primary: &str, epoch: u64) -> Result<Option<PathBuf>, PgError> {
        let addr = self.addr_of(primary)?;
        let source = format!(
            "host={addr} port={} user={ADMIN_ROLE} dbname=postgres",
            self.spec.port
        );
        let d = self.spec.data_dir.to_string_lossy().to_string();
        let from = format!("--source-server={source}");
        // A just promoted server's control file still names the old timeline until its
        // first checkpoint: pg_rewind would then see one timeline and rewind nothing.
        let source_pg = self.of(primary);
        let c = source_pg.connect("postgres").await?;
        c.simple_query("CHECKPOINT")
            .await
            .map_err(|e| source_pg.sql(e))?;
        let mut archive = None;
        let rewound = self.rewind(&d, &from, epoch, &mut archive).await;
        match rewound {
            Ok(()) => {
                self.write_conf(true, Some(primary), "").await?;
                tracing::info!(dataset = %self.spec.dataset, primary, diverged = archive.is_some(), "db: rewound to the new primary");
            }
            Err(e) => {
                tracing::warn!(dataset = %self.spec.dataset, primary, error = %e, "db: rewind failed; cloning afresh");
                metrics::counter!("outlast_db_rewind_failures_total", "dataset" => self.spec.dataset.clone()).increment(1);
                if archive.is_none() && self.has_data() {
                    let dir = self.diverged_dir().join(format!("{epoch}-unrewound"));
                    self.archive(&dir).await?;
                    archive = Some(dir);
                }
                self.clone_from(primary).await?;
            }
        }
        Ok(archive)
    }

    /// The steps of [`Self::rewind_to`] any of which failing leaves the data dir to be
    /// replaced by a clone: the crashed server's recovery, the dry run, the archive of a
    /// diverged history (put in `archive`), the rewind.
    async fn rewind(
        &self,
        d: &str,
        from: &str,
        epoch: u64,
        archive: &mut Option<PathBuf>,
    ) -> Result<(), PgError> {
        // pg_rewind wants a cleanly shut down target, and its dry run does not finish a
        // crashed member's recovery: do it here, in single-user mode (no client can reach
        // a single-user server).
        self.finish_crash_recovery().await?;
        // A dry run says whether the member's history left the primary's (it prints where
        // they diverged) or is a prefix of it ("no rewind required").
        let (_, said) = self
            .program("pg_rewind", &["-D", d, from, "--dry-run"])
            .await?;
        if !said.contains("no rewind required") {
            let dir = self.diverged_dir().join(epoch.to_string());
            self.archive(&dir).await?;
            *archive = Some(dir);
        }
        self.program("pg_rewind", &["-D", d, from])
            .await
            .map(|_| ())
    }

    /// Copies the stopped data dir (every file, WAL included) to `dir/data`, readable by a
    /// server started on it read-only, and lists its WAL with pg_waldump in `dir/wal.txt`.
    async fn archive(&self, dir: &Path) -> Result<(), PgError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io(format!("cannot create {}", dir.display())))?;
        let target = dir.join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&self.spec.data_dir)
            .arg(&target)
            .status()
            .await
            .map_err(io("cannot run cp"))?;
        if !status.success() {
            return Err(PgError::Refused(format!(
                "cannot copy {} to {}",
                self.spec.data_dir.display(),
                target.display()
            )));
        }
        // The copy must not stream from anyone or take the member's place when started.
        let _ = tokio::fs::remove_file(target.join("standby.signal")).await;
        let _ = tokio::fs::remove_file(target.join("postmaster.pid")).await;
        let wal = target.join("pg_wal");
        let mut listing = String::new();
        if let Ok(mut rd) = tokio::fs::read_dir(&wal).await {
            let mut segs = Vec::new();
            while let Ok(Some(e)) = rd.next_entry().await {
                let n = e.file_name().to_string_lossy().to_string();
                if n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()) {
                    segs.push(n);
                }
            }
            segs.sort();
            // One segment at a time: a range across a timeline switch stops at the switch.
            for seg in &segs {
                let out = Command::new(self.bin("pg_waldump"))
                    .arg("-p")
                    .arg(&wal)
                    .args(["-r", "Transaction", seg, seg])
                    .output()
                    .await;
                if let Ok(o) = out {
                    listing.push_str(&format!("# {seg}\n"));
                    listing.push_str(&String::from_utf8_lossy(&o.stdout));
                    listing.push_str(&String::from_utf8_lossy(&o.stderr));
                }
            }
        }
        tokio::fs::write(dir.join("wal.txt"), listing)
            .await
            .map_err(io("cannot write the WAL listing"))?;
        self.chown(dir).await?;
        tracing::warn!(dataset = %self.spec.dataset, dir = %dir.display(), "db: archived a diverged history before rewinding it");
        Ok(())
    }

    /// Starts the server as its data dir says (standby when `standby.signal` is there) and
    /// waits until it accepts connections.
    pub async fn start(&self) -> Result<(), PgError> {
        let d = self.spec.data_dir.to_string_lossy().to_string();
        let log = self.log_path().to_string_lossy().to_string();
        // A stale pid file from a killed server makes pg_ctl wait for nothing.
        self.drop_stale_pid_file().await;
        self.program(
            "pg_ctl",
            &["start", "-D", &d, "-l", &log, "-w", "-t", "120"],
        )
        .await
        .map(|_| ())
    }

    /// The shutdown checkpoint of a cleanly stopped server (none: it runs, crashed, or was
    /// stopped immediate, and its last WAL position is not known from its control file).
    pub async fn clean_stop_lsn(&self) -> Option<u64> {
        if self.postmaster_pid().is_some() {
            return None;
        }
        let d = self.spec.data_dir.to_string_lossy().to_string();
        let (out, _) = self.program("pg_controldata", &["-D", &d]).await.ok()?;
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if field("Database cluster state:").as_deref() != Some("shut down") {
            return None;
        }
        parse_lsn(&field("Latest checkpoint location:")?)
    }

    /// Runs a crashed server's recovery to a clean shutdown, without letting anyone in.
    async fn finish_crash_recovery(&self) -> Result<(), PgError> {
        let d = self.spec.data_dir.to_string_lossy().to_string();
        let (state, _) = self.program("pg_controldata", &["-D", &d]).await?;
        let clean = state.lines().any(|l| {
            l.starts_with("Database cluster state:")
                && (l.ends_with("shut down") || l.ends_with("shut down in recovery"))
        });
        if clean {
            return Ok(());
        }
        self.drop_stale_pid_file().await;
        self.program("postgres", &["--single", "-F", "-D", &d, "template1"])
            .await?;
        tracing::info!(dataset = %self.spec.dataset, "db: finished a crashed server's recovery before its rewind");
        Ok(())
    }

    async fn drop_stale_pid_file(&self) {
        if self.postmaster_pid().is_none() {
            let _ = tokio::fs::remove_file(self.spec.data_dir.join("postmaster.pid")).await;
        }
    }

    /// Stops the server; `Fast` falls back to `Immediate` after `fast_for`.
    pub async fn stop(&self, mode: StopMode, fast_for: Duration) -> Result<(), PgError> {
        let Some(pid) = self.postmaster_pid() else {
            return Ok(());
        };
        // Signals straight to the postmaster: SIGINT fast, SIGQUIT immediate (what pg_ctl
        // sends), without a process start in between.
        let sig = match mode {
            StopMode::Fast => "-INT",
            StopMode::Immediate => "-QUIT",
        };
        let _ = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .await;
        let deadline = outlast_core::clock::now() + fast_for;
        while self.postmaster_pid().is_some() {
            if outlast_core::clock::now() > deadline {
                if mode == StopMode::Fast {
                    let _ = Command::new("kill")
                        .args(["-QUIT", &pid.to_string()])
                        .status()
                        .await;
                    let until = outlast_core::clock::now() + Duration::from_secs(10);
                    while self.postmaster_pid().is_some() && outlast_core::clock::now() < until {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.postmaster_pid().is_some() {
            return Err(PgError::Refused(format!(
                "the server (pid {pid}) did not stop"
            )));
        }
        Ok(())
    }

    /// A connection as outlast's role to this site's server.
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client, PgError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(self.spec.address().to_string())
            .port(self.spec.port)
            .user(ADMIN_ROLE)
            .password(&self.spec.admin_password)
            .dbname(db)
            .application_name("outlast-agent")
            .connect_timeout(Duration::from_secs(2));
        let (client, conn) =
            tokio::time::timeout(Duration::from_secs(3), cfg.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| PgError::Sql {
                    site: self.spec.me.clone(),
                    why: "no connection within 3 s".into(),
                })?
                .map_err(|e| self.sql(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    fn sql(&self, e: tokio_postgres::Error) -> PgError {
        let why = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        PgError::Sql {
            site: self.spec.me.clone(),
            why,
        }
    }

    /// What the running server says of itself.
    pub async fn observe(&self, c: &tokio_postgres::Client) -> Result<Observed, PgError> {
        let row = c
            .query_one(
                "SELECT pg_is_in_recovery(), \
                 CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn()::text, '0/0') ELSE pg_current_wal_lsn()::text END, \
                 coalesce(pg_last_wal_receive_lsn()::text, '0/0'), \
                 (SELECT sender_host FROM pg_stat_wal_receiver WHERE status = 'streaming' LIMIT 1), \
                 current_setting('synchronous_standby_names'), \
                 CASE WHEN pg_is_in_recovery() THEN (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint END",
                &[],
            )
            .await
            .map_err(|e| self.sql(e))?;
        let lsn_at = |i: usize| -> u64 {
            row.try_get::<_, String>(i)
                .ok()
                .and_then(|s| parse_lsn(&s))
                .unwrap_or(0)
        };
        let mut o = Observed {
            in_recovery: row.try_get(0).unwrap_or(false),
            lsn: lsn_at(1),
            received: lsn_at(2),
            streaming_from: row.try_get(3).ok().flatten(),
            sync_names: row.try_get(4).unwrap_or_default(),
            replay_age_ms: row
                .try_get::<_, Option<i64>>(5)
                .ok()
                .flatten()
                .map(|v| v.max(0) as u64),
            ..Observed::default()
        };
        if !o.in_recovery {
            let rows = c
                .query(
                    "SELECT application_name, coalesce(flush_lsn::text, '0/0'), sync_state FROM pg_stat_replication",
                    &[],
                )
                .await
                .map_err(|e| self.sql(e))?;
            for r in rows {
                let name: String = r.try_get(0).unwrap_or_default();
                let flush = r
                    .try_get::<_, String>(1)
                    .ok()
                    .and_then(|s| parse_lsn(&s))
                    .unwrap_or(0);
                let state: String = r.try_get(2).unwrap_or_default();
                o.standbys.insert(name, (flush, state));
            }
        }
        Ok(o)
    }

    /// Promotes a standby and waits until it takes writes.
    pub async fn promote(&self, c: &tokio_postgres::Client) -> Result<(), PgError> {
        let done: bool = c
            .query_one("SELECT pg_promote(true, 30)", &[])
            .await
            .map_err(|e| self.sql(e))?
            .try_get(0)
            .unwrap_or(false);
        if !done {
            return Err(PgError::Refused("pg_promote did not finish in 30 s".into()));
        }
        Ok(())
    }

    /// On a primary: a replication slot for every other member; on a standby nothing (slots
    /// on a standby would hold WAL for nobody).
    pub async fn ensure_slots(&self, c: &tokio_postgres::Client) -> Result<(), PgError> {
        for site in self.spec.members.keys().filter(|s| **s != self.spec.me) {
            let slot = PgSpec::slot(site);
            c.execute(
                "SELECT pg_create_physical_replication_slot($1, true) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&slot],
            )
            .await
            .map_err(|e| self.sql(e))?;
        }
        Ok(())
    }

    /// Sets `synchronous_standby_names` (ALTER SYSTEM, reload) when it differs.
    pub async fn set_sync(&self, c: &tokio_postgres::Client, names: &str) -> Result<(), PgError> {
        self.alter_system(c, &[("synchronous_standby_names", names)])
            .await
    }

    /// Points a running standby at `primary` (ALTER SYSTEM, reload: no restart).
    pub async fn repoint(&self, c: &tokio_postgres::Client, primary: &str) -> Result<(), PgError> {
        let info = self
            .spec
            .conninfo(primary, &format!("application_name={}", self.spec.me))
            .ok_or_else(|| PgError::Refused(format!("{primary} is not a member")))?;
        let slot = PgSpec::slot(&self.spec.me);
        self.alter_system(
            c,
            &[("primary_conninfo", &info), ("primary_slot_name", &slot)],
        )
        .await
    }

    /// ALTER SYSTEM for each setting (each in a statement of its own: it refuses to run in
    /// a transaction block), then a reload.
    async fn alter_system(
        &self,
        c: &tokio_postgres::Client,
        settings: &[(&str, &str)],
    ) -> Result<(), PgError> {
        for (k, v) in settings {
            c.simple_query(&format!("ALTER SYSTEM SET {k} = {}", quote_literal(v)))
                .await
                .map_err(|e| self.sql(e))?;
        }
        c.simple_query("SELECT pg_reload_conf()")
            .await
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Rewrites this site's settings before a start (a clone or rewind copied the
    /// source's): a standby (of `primary`, or of nobody yet) or a primary.
    pub async fn configure(
        &self,
        standby: bool,
        primary: Option<&str>,
        sync: &str,
    ) -> Result<(), PgError> {
        self.prepare_parent().await?;
        self.write_conf(standby, primary, sync).await
    }
}

/// A data dir: created, and readable by its owner only (the server refuses anything else).
pub(crate) async fn make_private_dir(d: &Path) -> Result<(), PgError> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(d)
        .await
        .map_err(io(format!("cannot create {}", d.display())))?;
    tokio::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(io(format!("cannot make {} private", d.display())))
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Sends `sig` (as `kill` takes it: "-INT", "-QUIT", "-KILL") to the postmaster running on
/// `data_dir`, for whoever must end a server its agent left running (a drill's site loss,
/// the demo's clean-up, a test's). Ok(false): none runs there.
pub fn signal_postmaster(data_dir: &Path, sig: &str) -> std::io::Result<bool> {
    crate::os::signal(running_postmaster(data_dir), sig)
}

/// The pid of the postmaster running on `data_dir`, from its pid file, when that process is
/// alive and is a postgres server (a stale file's pid may belong to something else by now).
pub fn running_postmaster(data_dir: &Path) -> Option<u32> {
    crate::os::running_pid(&data_dir.join("postmaster.pid"), |c| {
        c == "postgres" || c == "postmaster"
    })
}

/// Runs one of PostgreSQL's programs (as `os_user` when set, with the admin `password` when
/// given); its stdout and stderr, or what it said when it failed.
pub(crate) async fn run(
    path: &Path,
    os_user: Option<&str>,
    args: &[&str],
    password: Option<&str>,
) -> Result<(String, String), PgError> {
    let mut cmd = crate::os::command_as(path, os_user);
    cmd.args(args)
        .env("PGCONNECT_TIMEOUT", "2")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    let program = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let out = cmd
        .output()
        .await
        .map_err(io(format!("cannot run {}", path.display())))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(PgError::Program {
            program,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok((String::from_utf8_lossy(&out.stdout).to_string(), stderr))
}

/// A path beside `dir`: `<dir><suffix>`.
pub(crate) fn beside(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "pg".into());
    dir.with_file_name(format!("{name}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PgSpec {
        PgSpec {
            dataset: "orders".into(),
            me: "west".into(),
            port: 5432,
            data_dir: PathBuf::from("/var/lib/outlast/west/pg"),
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            os_user: None,
            database: "app".into(),
            user: "app".into(),
            password: "pw".into(),
            admin_password: "adm'in".into(),
            members: [
                ("east".to_string(), IpAddr::from([127, 0, 0, 11])),
                ("west".to_string(), IpAddr::from([127, 0, 0, 12])),
            ]
            .into_iter()
            .collect(),
            replication_via: BTreeMap::new(),
            clients: vec!["127.0.0.11".into(), "10.0.0.0/8".into()],
            settings: [("shared_buffers".to_string(), "32MB".to_string())]
                .into_iter()
                .collect(),
            wal: None,
            refuse_initdb: None,
        }
    }

    #[test]
    fn lsns_read_and_write_as_postgres_writes_them() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(format_lsn(0x1_0300_0060), "1/3000060");
        assert_eq!(parse_lsn("nonsense"), None);
    }

    #[test]
    fn a_standby_streams_from_its_own_slot_under_its_site_name() {
        let s = spec().auto_conf(Some("east"), "");
        assert!(s.contains("host=127.0.0.11 port=5432 user=outlast"), "{s}");
        assert!(s.contains("password=adm''in"), "quoted: {s}");
        assert!(s.contains("application_name=west"), "{s}");
        assert!(s.contains("primary_slot_name = 'outlast_west'"), "{s}");
        let p = spec().auto_conf(None, "ANY 1 (\"east\")");
        assert!(!p.contains("primary_conninfo"), "{p}");
        assert!(
            p.contains("synchronous_standby_names = 'ANY 1 (\"east\")'"),
            "{p}"
        );
    }

    #[test]
    fn hba_lets_in_the_members_and_the_clients_only() {
        let h = spec().hba();
        assert!(h.contains("host replication outlast 127.0.0.11/32 scram-sha-256"));
        assert!(h.contains("host all outlast 127.0.0.12/32 scram-sha-256"));
        assert!(h.contains("host app app 10.0.0.0/8 scram-sha-256"));
        assert!(!h.contains("trust"));
        assert!(!h.contains("0.0.0.0/0"));
    }

    #[test]
    fn the_server_listens_on_its_site_address_only() {
        let c = spec().outlast_conf();
        assert!(c.contains("listen_addresses = '127.0.0.12'"));
        assert!(c.contains("unix_socket_directories = ''"));
        assert!(c.contains("shared_buffers = '32MB'"));
    }

    #[test]
    fn any_one_other_site_must_hold_each_commit() {
        assert_eq!(sync_names(&[]), "");
        assert_eq!(
            sync_names(&["east".into(), "north".into()]),
            "ANY 1 (\"east\", \"north\")"
        );
    }
}
