//! This site's backups: which it takes now ([`taker`]), a loop per `[[backups]]` that takes a
//! snapshot every `every` and verifies the newest every `verify_every`, and the runs an
//! operator asks for through the API. The snapshots, retention and restores themselves are
//! `outlast_backup`; base backups and the proof of a restored server are `outlast_db`.
//!
//! What was last taken and verified is kept in `<data_dir>/backups/state.json`, so an agent
//! that restarts neither takes a snapshot at once nor forgets how old its last verified
//! restore is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outlast_backup::{Label, NoProgressBars, Pick, Snapshot};
use outlast_control::state::{ClusterState, SiteState};
use outlast_core::config::{Backup, BackupRepo, BackupSource, Config};
use outlast_core::status::{BackupRun, BackupStatus, RepoRun, VerifyRun, WalRun, WalStatus};
use outlast_db::Server;
use tokio_util::sync::CancellationToken;

use super::alerts::{event, AlertEvent, Fields, Sender};
use super::lock;
use super::peer::unix_ms;

/// How often a loop looks whether a run is due.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long a site that does not create a repository waits for the one that does.
const CREATED_WITHIN: Duration = Duration::from_secs(60);
/// After a failed run, the next try comes after this (or `every`, when shorter).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The site that takes `b`'s snapshots now, by the committed state: for a dataset, the
/// first member (in the config's order of sites) that is a live standby, else the primary;
/// for a path, every data site takes its own (`None`).
pub fn taker(config: &Config, b: &Backup, state: &ClusterState) -> Option<String> {
    let BackupSource::Dataset(name) = &b.source else {
        return None;
    };
    let d = config.datasets.iter().find(|d| &d.name == name)?;
    let primary = state
        .services
        .get(&d.service)
        .and_then(|s| s.primary.clone());
    let live_standby = config
        .sites
        .iter()
        .filter(|s| d.members.contains_key(&s.name))
        .filter(|s| Some(&s.name) != primary.as_ref())
        .find(|s| state.sites.get(&s.name) != Some(&SiteState::Down))
        .map(|s| s.name.clone());
    live_standby.or(primary)
}

/// Whether `me` takes `b`'s snapshots now.
pub fn takes(config: &Config, b: &Backup, me: &str, state: &ClusterState) -> bool {
    let data_site = config.site(me).is_some_and(|s| !s.witness);
    match &b.source {
        BackupSource::Path(_) => data_site,
        BackupSource::Dataset(_) => taker(config, b, state).as_deref() == Some(me),
    }
}

/// The repositories in the order a snapshot goes to them: those outside `home` (the
/// dataset's primary's site, or this site for a path) first.
pub fn repo_order<'a>(b: &'a Backup, home: Option<&str>) -> Vec<&'a BackupRepo> {
    let mut repos: Vec<&BackupRepo> = b.repos.iter().collect();
    repos.sort_by_key(|r| home.is_some() && r.site.as_deref() == home);
    repos
}

/// What is kept across restarts, per backup.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Kept {
    #[serde(default)]
    last_ok: Option<BackupRun>,
    #[serde(default)]
    verify_ok: Option<VerifyRun>,
}

struct Entry {
    backup: Backup,
    status: Mutex<BackupStatus>,
    /// One run at a time per backup (scheduled or asked for).
    busy: tokio::sync::Mutex<()>,
    takes: AtomicBool,
    /// The dataset's primary's site (repositories outside it come first).
    home: Mutex<Option<String>>,
    /// The agent's start (Unix ms): a verify is late only once twice `verify_every` has
    /// passed since then or since the last verified restore.
    since_ms: u64,
    /// Which repository the next verify restores from (in [`repo_order`]): each in turn, so
    /// every repository is proven, not just the first.
    verify_next: std::sync::atomic::AtomicUsize,
    /// Whether this site may create the repositories when they are missing: for a path,
    /// only the first data site (every data site writes to them); for a dataset, the one
    /// site that takes its snapshots.
    may_create: bool,
}

/// This site's backups.
pub struct Backups {
    me: String,
    dir: PathBuf,
    entries: Vec<Arc<Entry>>,
    /// This site's dataset servers, by dataset (snapshots are copied from them).
    servers: BTreeMap<String, Server>,
    /// What each backup's alerts have said so far.
    alerted: Mutex<BTreeMap<String, Alerted>>,
}

/// What a backup's alerts have said: the run and the verify (by start time) whose
/// failures were alerted, and whether lateness was.
#[derive(Debug, Default)]
struct Alerted {
    backup_failed: Option<u64>,
    verify_failed: Option<u64>,
    wal_failed: Option<u64>,
    late: bool,
}

/// Why a run could not start.
#[derive(Debug)]
pub enum Refused {
    NoSuch(String),
    NotHere(String),
}

impl Backups {
    pub fn new(config: &Config, me: &str, servers: BTreeMap<String, Server>) -> Self {
        let dir = config
            .site(me)
            .map(|s| s.data_dir.join("backups"))
            .unwrap_or_else(|| PathBuf::from("backups"));
        let kept = load(&dir);
        let now = unix_ms();
        let entries = config
            .backups
            .iter()
            .map(|b| {
                let k = kept.get(&b.name).cloned().unwrap_or_default();
                Arc::new(Entry {
                    status: Mutex::new(BackupStatus {
                        name: b.name.clone(),
                        source: match &b.source {
                            BackupSource::Path(p) => format!("path:{}", p.display()),
                            BackupSource::Dataset(d) => format!("dataset:{d}"),
                        },
                        every_ms: b.every.as_millis() as u64,
                        verify_every_ms: b.verify_every.as_millis() as u64,
                        last: k.last_ok.clone(),
                        last_ok: k.last_ok,
                        verify: k.verify_ok.clone(),
                        verify_ok: k.verify_ok,
                        wal: ships_wal(b, &servers).then(|| WalStatus {
                            every_ms: b.wal_every.as_millis() as u64,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    backup: b.clone(),
                    busy: tokio::sync::Mutex::new(()),
                    takes: AtomicBool::new(false),
                    home: Mutex::new(None),
                    since_ms: now,
                    verify_next: std::sync::atomic::AtomicUsize::new(0),
                    may_create: match &b.source {
                        BackupSource::Path(_) => {
                            config
                                .sites
                                .iter()
                                .find(|s| !s.witness)
                                .map(|s| s.name.as_str())
                                == Some(me)
                        }
                        BackupSource::Dataset(_) => true,
                    },
                })
            })
            .collect();
        Backups {
            me: me.to_string(),
            dir,
            entries,
            servers,
            alerted: Mutex::new(BTreeMap::new()),
        }
    }

    /// Tells each backup whether this site takes it now (from the committed state); a
    /// dataset's only once this site's server of it is `serving` (a primary or a standby).
    pub fn update(&self, config: &Config, state: &ClusterState, serving: &BTreeSet<String>) {
        for e in &self.entries {
            let ready = match &e.backup.source {
                BackupSource::Path(_) => true,
                BackupSource::Dataset(d) => serving.contains(d),
            };
            let t = ready && takes(config, &e.backup, &self.me, state);
            e.takes.store(t, Ordering::SeqCst);
            let home = match &e.backup.source {
                BackupSource::Path(_) => Some(self.me.clone()),
                BackupSource::Dataset(d) => config
                    .datasets
                    .iter()
                    .find(|x| &x.name == d)
                    .and_then(|x| state.services.get(&x.service))
                    .and_then(|s| s.primary.clone()),
            };
            *lock(&e.home) = home;
            lock(&e.status).takes = t;
        }
    }

    pub fn status(&self) -> Vec<BackupStatus> {
        let now = unix_ms();
        self.entries
            .iter()
            .map(|e| {
                let mut s = lock(&e.status).clone();
                s.problem = problem(&s, e.since_ms, now);
                s
            })
            .collect()
    }

    /// The alerts since the last call: each failed run and each failed verify once, and a
    /// verified restore that became late once (again after it was on time).
    pub fn alerts(&self, by: &Sender<'_>) -> Vec<AlertEvent> {
        let mut alerted = lock(&self.alerted);
        let now = unix_ms();
        let mut out = Vec::new();
        for e in &self.entries {
            let s = lock(&e.status).clone();
            let seen = alerted.entry(s.name.clone()).or_default();
            let mut say = |kind: &str, key: String, text: String| {
                out.push(event(
                    by,
                    kind,
                    &format!("{}-{key}", s.name),
                    Fields {
                        site: Some(self.me.clone()),
                        ..Default::default()
                    },
                    format!("backup {} at {}: {text}", s.name, self.me),
                ));
            };
            if let Some(r) = s.last.as_ref().filter(|r| !r.ok && s.takes) {
                if seen.backup_failed != Some(r.at_ms) {
                    seen.backup_failed = Some(r.at_ms);
                    say(
                        "backup-failed",
                        r.at_ms.to_string(),
                        format!("backup failed: {}", r.error.as_deref().unwrap_or("unknown")),
                    );
                }
            }
            if let Some(v) = s.verify.as_ref().filter(|v| !v.ok && s.takes) {
                if seen.verify_failed != Some(v.at_ms) {
                    seen.verify_failed = Some(v.at_ms);
                    say(
                        "backup-verify-failed",
                        v.at_ms.to_string(),
                        format!("verify failed: {}", v.error.as_deref().unwrap_or("unknown")),
                    );
                }
            }
            if let Some(r) = wal_failed(&s) {
                if seen.wal_failed != Some(r.at_ms) {
                    seen.wal_failed = Some(r.at_ms);
                    say(
                        "backup-wal-failed",
                        format!("wal-{}", r.at_ms),
                        format!(
                            "WAL shipping failed: {}",
                            r.error.as_deref().unwrap_or("unknown")
                        ),
                    );
                }
            }
            match late(&s, e.since_ms, now) {
                Some(why) if !seen.late => {
                    seen.late = true;
                    say("backup-verify-late", now.to_string(), why);
                }
                Some(_) => {}
                None => seen.late = false,
            }
        }
        out
    }

    /// Starts a loop per backup in `workers`, and one more per backup whose WAL this site
    /// ships.
    pub fn spawn(self: &Arc<Self>, workers: &mut super::workers::Workers) {
        for e in self
            .entries
            .iter()
            .filter(|e| ships_wal(&e.backup, &self.servers))
        {
            let me = self.clone();
            let e = e.clone();
            let stop = workers.token();
            workers.spawn(format!("wal {}", e.backup.name), async move {
                me.ship_wal(e, stop).await;
            });
        }
        for e in &self.entries {
            let me = self.clone();
            let e = e.clone();
            let stop = workers.token();
            workers.spawn(format!("backup {}", e.backup.name), async move {
                me.schedule(e, stop).await;
            });
        }
    }

    async fn schedule(&self, e: Arc<Entry>, stop: CancellationToken) {
        let every = e.backup.every.as_millis() as u64;
        let verify_every = e.backup.verify_every.as_millis() as u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
            if !e.takes.load(Ordering::SeqCst) {
                continue;
            }
            let now = unix_ms();
            let (last, verified) = {
                let s = lock(&e.status);
                (s.last.clone(), s.verify.clone())
            };
            let backup_due = match &last {
                None => true,
                Some(r) if r.ok => now.saturating_sub(r.at_ms) >= every,
                Some(r) => now.saturating_sub(r.at_ms) >= every.min(RETRY_AFTER.as_millis() as u64),
            };
            if backup_due {
                let _ = self.run_backup(&e).await;
                continue;
            }
            let verify_due = match &verified {
                None => last.as_ref().is_some_and(|r| r.ok),
                Some(v) if v.ok => now.saturating_sub(v.at_ms) >= verify_every,
                Some(v) => {
                    now.saturating_sub(v.at_ms) >= verify_every.min(RETRY_AFTER.as_millis() as u64)
                }
            };
            if verify_due {
                let _ = self.run_verify(&e).await;
            }
        }
    }

    fn entry(
        &self,
        name: &str,
        config: &Config,
        state: &ClusterState,
    ) -> Result<Arc<Entry>, Refused> {
        let e = self
            .entries
            .iter()
            .find(|e| e.backup.name == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .entries
                    .iter()
                    .map(|e| e.backup.name.as_str())
                    .collect();
                Refused::NoSuch(format!(
                    "no backup {name:?}; the config has: {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?;
        if !takes(config, &e.backup, &self.me, state) {
            let who = taker(config, &e.backup, state);
            return Err(Refused::NotHere(match who {
                Some(w) => format!(
                    "{} does not take backup {name} now; {w} does: ask its agent",
                    self.me
                ),
                None if matches!(e.backup.source, BackupSource::Path(_)) => {
                    format!("{} is a witness and holds no data to back up", self.me)
                }
                None => format!(
                    "no site takes backup {name} now: its dataset has no primary or standby up"
                ),
            }));
        }
        Ok(e)
    }

    /// A backup now, as an operator asked (waits for a run already going).
    pub async fn run_now(
        &self,
        name: &str,
        config: &Config,
        state: &ClusterState,
    ) -> Result<BackupRun, Refused> {
        let e = self.entry(name, config, state)?;
        Ok(self.run_backup(&e).await)
    }

    /// A verify now, as an operator asked.
    pub async fn verify_now(
        &self,
        name: &str,
        config: &Config,
        state: &ClusterState,
    ) -> Result<VerifyRun, Refused> {
        let e = self.entry(name, config, state)?;
        Ok(self.run_verify(&e).await)
    }

    /// What each repository of backup `name` holds.
    pub async fn list(&self, name: &str) -> Result<Vec<RepoList>, Refused> {
        let e = self
            .entries
            .iter()
            .find(|e| e.backup.name == name)
            .cloned()
            .ok_or_else(|| Refused::NoSuch(format!("no backup {name:?}")))?;
        let mut out = Vec::new();
        for r in &e.backup.repos {
            let repo = r.clone();
            let name = name.to_string();
            let got = tokio::task::spawn_blocking(move || {
                let open = outlast_backup::open(&repo, NoProgressBars)?;
                outlast_backup::snapshots(&open, &repo.url, &name)
            })
            .await;
            let (snapshots, error) = match got {
                Ok(Ok(s)) => (s, None),
                Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
                Err(e) => (Vec::new(), Some(format!("the listing stopped: {e}"))),
            };
            out.push(RepoList {
                url: r.url.clone(),
                site: r.site.clone(),
                snapshots,
                error,
            });
        }
        Ok(out)
    }

    async fn run_backup(&self, e: &Entry) -> BackupRun {
        let _one = e.busy.lock().await;
        lock(&e.status).running = Some("backup".into());
        let started = outlast_core::clock::now();
        let at_ms = unix_ms();
        let home = lock(&e.home).clone();
        let result = self.backup_once(e, home.as_deref()).await;
        let mut run = match result {
            Ok(run) => run,
            Err(why) => BackupRun {
                error: Some(why),
                ..Default::default()
            },
        };
        run.at_ms = at_ms;
        run.duration_ms = started.elapsed().as_millis() as u64;
        if run.error.is_none() {
            if let Some(bad) = run.repos.iter().find(|r| r.error.is_some()) {
                run.error = Some(format!(
                    "{}: {}",
                    bad.url,
                    bad.error.clone().unwrap_or_default()
                ));
            }
        }
        run.ok = run.error.is_none();
        let name = &e.backup.name;
        if run.ok {
            tracing::info!(backup = %name, ms = run.duration_ms, bytes = run.bytes, added = run.added_bytes, "backup: snapshot written to every repository");
            metrics::gauge!("outlast_backup_last_success_timestamp_seconds", "backup" => name.clone())
                .set(run.at_ms as f64 / 1000.0);
            metrics::histogram!("outlast_backup_duration_seconds", "backup" => name.clone())
                .record(run.duration_ms as f64 / 1000.0);
            metrics::counter!("outlast_backup_bytes_total", "backup" => name.clone())
                .increment(run.bytes);
        } else {
            tracing::warn!(backup = %name, error = run.error.as_deref().unwrap_or(""), "backup failed");
            metrics::counter!("outlast_backup_failures_total", "backup" => name.clone())
                .increment(1);
        }
        {
            let mut s = lock(&e.status);
            s.running = None;
            s.last = Some(run.clone());
            if run.ok {
                s.last_ok = Some(run.clone());
            }
        }
        self.save();
        run
    }

    /// Where this backup's files wait (a base backup before it is stored, a verify's
    /// restore).
    fn work_dir(&self, e: &Entry, what: &str) -> PathBuf {
        self.dir.join(format!("{}.{what}", e.backup.name))
    }

    async fn backup_once(&self, e: &Entry, home: Option<&str>) -> Result<BackupRun, String> {
        let b = &e.backup;
        let (dir, kind, as_path, spool) = match &b.source {
            BackupSource::Path(p) => {
                if !p.is_dir() {
                    return Err(format!("{} is not a directory here", p.display()));
                }
                (p.clone(), "path", p.clone(), None)
            }
            BackupSource::Dataset(d) => {
                let server = self
                    .servers
                    .get(d)
                    .ok_or_else(|| format!("{} runs no member of dataset {d}", self.me))?;
                let spool = self.work_dir(e, "base");
                if spool.exists() {
                    tokio::fs::remove_dir_all(&spool)
                        .await
                        .map_err(|x| format!("cannot clear {}: {x}", spool.display()))?;
                }
                server
                    .copy_into(&spool)
                    .await
                    .map_err(|x| format!("copying {d} for its snapshot: {x}"))?;
                (
                    spool.clone(),
                    server.kind(),
                    PathBuf::from(format!("/{d}")),
                    Some(spool),
                )
            }
        };
        // Where a PostgreSQL base backup starts in the WAL: a restore fetches the WAL
        // batches from there on.
        let tags: Vec<String> = spool
            .as_deref()
            .and_then(outlast_db::pgbackup::start_segment)
            .and_then(|seg| outlast_db::pgbackup::segment_position(&seg).map(str::to_string))
            .map(|pos| format!("{}{pos}", outlast_backup::WAL_FROM))
            .into_iter()
            .collect();
        let mut run = BackupRun::default();
        for repo in repo_order(b, home) {
            let started = outlast_core::clock::now();
            let r = repo.clone();
            let dir = dir.clone();
            let as_path = as_path.clone();
            let name = b.name.clone();
            let me = self.me.clone();
            let keep = b.keep;
            let may_create = e.may_create;
            let tags = tags.clone();
            let got = tokio::task::spawn_blocking(move || {
                let open = if may_create {
                    outlast_backup::open_or_init(&r, NoProgressBars)?
                } else {
                    outlast_backup::open_when_created(&r, NoProgressBars, CREATED_WITHIN)?
                };
                let label = Label {
                    backup: &name,
                    kind,
                    host: &me,
                    as_path: &as_path,
                    tags: &tags,
                };
                let (snap, open) = outlast_backup::backup_dir(open, &r.url, &dir, &label)?;
                let pruned = outlast_backup::forget_and_prune(&open, &r.url, &name, &keep)?;
                Ok::<_, outlast_backup::Error>((snap, pruned))
            })
            .await;
            let mut rr = RepoRun {
                url: repo.url.clone(),
                duration_ms: 0,
                ..Default::default()
            };
            match got {
                Ok(Ok((snap, pruned))) => {
                    if run.repos.iter().all(|x| x.snapshot.is_none()) {
                        run.files = snap.files;
                        run.bytes = snap.bytes;
                        run.added_bytes = snap.added_bytes;
                    }
                    rr.snapshot = Some(snap.id);
                    rr.forgotten = pruned.forgotten.len() as u64;
                }
                Ok(Err(x)) => rr.error = Some(x.to_string()),
                Err(x) => rr.error = Some(format!("the backup stopped: {x}")),
            }
            rr.duration_ms = started.elapsed().as_millis() as u64;
            run.repos.push(rr);
        }
        if let Some(spool) = spool {
            if let Err(x) = tokio::fs::remove_dir_all(&spool).await {
                tracing::warn!(dir = %spool.display(), error = %x, "could not remove a base backup's spool");
            }
        }
        Ok(run)
    }

    async fn run_verify(&self, e: &Entry) -> VerifyRun {
        let _one = e.busy.lock().await;
        lock(&e.status).running = Some("verify".into());
        let at_ms = unix_ms();
        let mut v = match self.verify_once(e).await {
            Ok(v) => v,
            Err((url, why)) => VerifyRun {
                url,
                error: Some(why),
                ..Default::default()
            },
        };
        v.at_ms = at_ms;
        v.ok = v.error.is_none();
        let name = &e.backup.name;
        if v.ok {
            tracing::info!(backup = %name, restore_ms = v.restore_ms, age_ms = v.age_ms, files = v.files_checked, "backup: verified by restoring");
            metrics::gauge!("outlast_backup_verify_restore_seconds", "backup" => name.clone())
                .set(v.restore_ms as f64 / 1000.0);
            metrics::gauge!("outlast_backup_verify_age_seconds", "backup" => name.clone())
                .set(v.age_ms as f64 / 1000.0);
            metrics::gauge!("outlast_backup_last_verified_timestamp_seconds", "backup" => name.clone())
                .set(at_ms as f64 / 1000.0);
        } else {
            tracing::warn!(backup = %name, error = v.error.as_deref().unwrap_or(""), "backup: verify failed");
            metrics::counter!("outlast_backup_verify_failures_total", "backup" => name.clone())
                .increment(1);
        }
        {
            let mut s = lock(&e.status);
            s.running = None;
            s.verify = Some(v.clone());
            if v.ok {
                s.verify_ok = Some(v.clone());
            }
        }
        self.save();
        v
    }

    async fn verify_once(&self, e: &Entry) -> Result<VerifyRun, (String, String)> {
        let b = &e.backup;
        let home = lock(&e.home).clone();
        // A path's snapshots are this site's own; a dataset's newest from any site.
        let host = matches!(b.source, BackupSource::Path(_)).then(|| self.me.clone());
        let repos = repo_order(b, home.as_deref());
        let turn = e.verify_next.fetch_add(1, Ordering::SeqCst);
        let Some(repo) = repos.get(turn % repos.len().max(1)).map(|r| (*r).clone()) else {
            return Err((String::new(), "the backup has no repository".into()));
        };
        let url = repo.url.clone();
        let err = |why: String| (url.clone(), why);
        let scratch = self.work_dir(e, "verify");
        if scratch.exists() {
            tokio::fs::remove_dir_all(&scratch)
                .await
                .map_err(|x| err(format!("cannot clear {}: {x}", scratch.display())))?;
        }
        let started = outlast_core::clock::now();
        let name = b.name.clone();
        let s2 = scratch.clone();
        let got = tokio::task::spawn_blocking(move || {
            let open = outlast_backup::open(&repo, NoProgressBars)?;
            let all = outlast_backup::snapshots(&open, &repo.url, &name)?;
            let snap = outlast_backup::pick(
                &all,
                &Pick {
                    host,
                    ..Default::default()
                },
            )?;
            outlast_backup::verify(open, &repo.url, &snap, &s2)
        })
        .await;
        let verified = match got {
            Ok(Ok(v)) => v,
            Ok(Err(x)) => {
                let _ = tokio::fs::remove_dir_all(&scratch).await;
                return Err(err(x.to_string()));
            }
            Err(x) => {
                let _ = tokio::fs::remove_dir_all(&scratch).await;
                return Err(err(format!("the verify stopped: {x}")));
            }
        };
        let mut v = VerifyRun {
            url: url.clone(),
            snapshot: Some(verified.restored.snapshot.id.clone()),
            files_checked: verified.files_checked,
            bytes: verified.restored.bytes,
            ..Default::default()
        };
        if let BackupSource::Dataset(d) = &b.source {
            match self.check_server(d, &scratch).await {
                Ok(said) => v.server = Some(said),
                Err(x) => v.error = Some(format!("the restored server: {x}")),
            }
        }
        v.restore_ms = started.elapsed().as_millis() as u64;
        let snap_ms = verified.restored.snapshot.time_ms.max(0) as u64;
        v.age_ms = unix_ms().saturating_sub(snap_ms);
        if let Err(x) = tokio::fs::remove_dir_all(&scratch).await {
            tracing::warn!(dir = %scratch.display(), error = %x, "could not remove a verify's restore");
        }
        Ok(v)
    }

    /// Every `wal_every`, the segments this site's server archived into its spool go to
    /// every repository as one batch (a snapshot tagged `kind:wal`), then leave the spool.
    /// Segments a repository did not take stay and go with the next batch.
    async fn ship_wal(&self, e: Arc<Entry>, stop: CancellationToken) {
        let every = e.backup.wal_every;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let run = self.ship_once(&e).await;
            let name = &e.backup.name;
            let mut s = lock(&e.status);
            let Some(w) = s.wal.as_mut() else { continue };
            w.waiting = run.1;
            let Some(run) = run.0 else { continue };
            if run.ok {
                tracing::debug!(backup = %name, files = run.files, upto = run.upto.as_deref().unwrap_or(""), "backup: WAL shipped");
                metrics::gauge!("outlast_backup_wal_shipped_timestamp_seconds", "backup" => name.clone())
                    .set(run.at_ms as f64 / 1000.0);
                metrics::counter!("outlast_backup_wal_bytes_total", "backup" => name.clone())
                    .increment(run.bytes);
                w.last_ok = Some(run.clone());
            } else {
                tracing::warn!(backup = %name, error = run.error.as_deref().unwrap_or(""), "backup: WAL shipping failed");
                metrics::counter!("outlast_backup_wal_failures_total", "backup" => name.clone())
                    .increment(1);
            }
            metrics::gauge!("outlast_backup_wal_waiting_segments", "backup" => name.clone())
                .set(w.waiting as f64);
            w.last = Some(run);
        }
    }

    /// One batch: what it did (none when nothing waited) and how many files still wait.
    async fn ship_once(&self, e: &Entry) -> (Option<WalRun>, u64) {
        let b = &e.backup;
        let BackupSource::Dataset(d) = &b.source else {
            return (None, 0);
        };
        let Some(server) = self.servers.get(d) else {
            return (None, 0);
        };
        let spool = outlast_db::postgres::WalArchive::spool_for(server.data_dir());
        let batch = spool.join(".batch");
        let at_ms = unix_ms();
        let started = outlast_core::clock::now();
        let home = lock(&e.home).clone();
        let repos: Vec<BackupRepo> = repo_order(b, home.as_deref())
            .into_iter()
            .cloned()
            .collect();
        let name = b.name.clone();
        let me = self.me.clone();
        let got =
            tokio::task::spawn_blocking(move || ship_batch(&spool, &batch, &repos, &name, &me))
                .await;
        let (mut run, waiting) = match got {
            Ok(r) => r,
            Err(x) => (
                Some(WalRun {
                    error: Some(format!("the shipping stopped: {x}")),
                    ..Default::default()
                }),
                0,
            ),
        };
        if let Some(r) = run.as_mut() {
            r.at_ms = at_ms;
            r.duration_ms = started.elapsed().as_millis() as u64;
            r.ok = r.error.is_none();
        }
        (run, waiting)
    }

    async fn check_server(&self, dataset: &str, dir: &Path) -> Result<String, String> {
        let server = self
            .servers
            .get(dataset)
            .ok_or_else(|| format!("{} runs no member of {dataset} to check with", self.me))?;
        let port =
            outlast_db::os::free_port().map_err(|x| format!("no free port on 127.0.0.1: {x}"))?;
        server.check_restored(dir, port).await
    }

    fn save(&self) {
        let kept: BTreeMap<String, Kept> = self
            .entries
            .iter()
            .map(|e| {
                let s = lock(&e.status);
                (
                    e.backup.name.clone(),
                    Kept {
                        last_ok: s.last_ok.clone(),
                        verify_ok: s.verify_ok.clone(),
                    },
                )
            })
            .collect();
        let path = self.dir.join("state.json");
        let tmp = self.dir.join("state.json.tmp");
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|_| {
                std::fs::write(&tmp, serde_json::to_vec_pretty(&kept).unwrap_or_default())
            })
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(x) = written {
            tracing::warn!(path = %path.display(), error = %x, "could not keep the backups' state");
        }
    }
}

/// What one repository holds (`GET /v1/backups/{name}/snapshots`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RepoList {
    pub url: String,
    pub site: Option<String>,
    pub snapshots: Vec<Snapshot>,
    pub error: Option<String>,
}

fn load(dir: &Path) -> BTreeMap<String, Kept> {
    let path = dir.join("state.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "the backups' state is unreadable; starting afresh");
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

/// Whether this site ships `b`'s WAL: it archives a dataset's WAL and this site runs a
/// member of that dataset.
fn ships_wal(b: &Backup, servers: &BTreeMap<String, Server>) -> bool {
    matches!(&b.source, BackupSource::Dataset(d) if b.wal && servers.contains_key(d))
}

/// Moves the finished segments of `spool` into `batch` and writes `batch` to each
/// repository; empties `batch` once every repository holds it. Blocking.
fn ship_batch(
    spool: &Path,
    batch: &Path,
    repos: &[BackupRepo],
    name: &str,
    me: &str,
) -> (Option<WalRun>, u64) {
    let fail = |why: String| {
        (
            Some(WalRun {
                error: Some(why),
                ..Default::default()
            }),
            0,
        )
    };
    if let Err(x) = std::fs::create_dir_all(batch) {
        return fail(format!("cannot create {}: {x}", batch.display()));
    }
    let entries = match std::fs::read_dir(spool) {
        Ok(r) => r,
        Err(x) => {
            return fail(format!(
                "cannot read the WAL spool {}: {x}",
                spool.display()
            ))
        }
    };
    for f in entries.flatten() {
        let n = f.file_name().to_string_lossy().to_string();
        if n.starts_with('.') || n.ends_with(".part") || !f.path().is_file() {
            continue;
        }
        if let Err(x) = std::fs::rename(f.path(), batch.join(&n)) {
            return fail(format!("cannot move {n} into the batch: {x}"));
        }
    }
    let files: Vec<(String, u64)> = match std::fs::read_dir(batch) {
        Ok(r) => r
            .flatten()
            .map(|f| {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                (f.file_name().to_string_lossy().to_string(), len)
            })
            .collect(),
        Err(x) => return fail(format!("cannot read {}: {x}", batch.display())),
    };
    if files.is_empty() {
        return (None, 0);
    }
    // The newest segment in the batch; its position tags the batch.
    let last_name = files
        .iter()
        .filter_map(|(n, _)| Some((outlast_db::pgbackup::segment_position(n)?, n)))
        .max()
        .map(|(_, n)| n.clone());
    let tags: Vec<String> = last_name
        .as_deref()
        .and_then(outlast_db::pgbackup::segment_position)
        .map(|u| format!("{}{u}", outlast_backup::WAL_UPTO))
        .into_iter()
        .collect();
    let as_path = PathBuf::from(format!("/{name}.wal"));
    let label = Label {
        backup: name,
        kind: "wal",
        host: me,
        as_path: &as_path,
        tags: &tags,
    };
    let mut errors = Vec::new();
    for r in repos {
        // The first snapshot creates a repository (one site only, see `may_create`); until
        // then the WAL waits: it is of no use before a base backup anyway.
        match outlast_backup::open(r, NoProgressBars) {
            Err(outlast_backup::Error::Empty { .. }) => return (None, files.len() as u64),
            Err(x) => errors.push(format!("{}: {x}", r.url)),
            Ok(o) => {
                if let Err(x) = outlast_backup::backup_dir(o, &r.url, batch, &label) {
                    errors.push(format!("{}: {x}", r.url));
                }
            }
        }
    }
    let run = WalRun {
        files: files.len() as u64,
        bytes: files.iter().map(|(_, l)| l).sum(),
        upto: last_name,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        ..Default::default()
    };
    if !errors.is_empty() {
        return (Some(run), files.len() as u64);
    }
    for (n, _) in &files {
        if let Err(x) = std::fs::remove_file(batch.join(n)) {
            tracing::warn!(file = %n, error = %x, "could not remove a shipped WAL segment");
        }
    }
    (Some(run), 0)
}

/// Why a backup alerts, if it does: its last run failed, its last verify failed, its last
/// verified restore is late (see [`late`]), this site's last WAL batch failed; all that
/// hold, joined. Only the site that takes a backup alerts on the first three.
pub fn problem(s: &BackupStatus, since_ms: u64, now_ms: u64) -> Option<String> {
    let mut all = Vec::new();
    // Every member site ships its own WAL, whether or not it takes the snapshots.
    if let Some(r) = wal_failed(s) {
        all.push(format!(
            "WAL shipping failed ({} segments waiting): {}",
            s.wal.as_ref().map_or(0, |w| w.waiting),
            r.error.as_deref().unwrap_or("unknown")
        ));
    }
    if !s.takes {
        return (!all.is_empty()).then(|| all.join("; "));
    }
    if let Some(r) = s.last.as_ref().filter(|r| !r.ok) {
        all.push(format!(
            "backup failed: {}",
            r.error.as_deref().unwrap_or("unknown")
        ));
    }
    if let Some(v) = s.verify.as_ref().filter(|v| !v.ok) {
        all.push(format!(
            "verify failed: {}",
            v.error.as_deref().unwrap_or("unknown")
        ));
    }
    all.extend(late(s, since_ms, now_ms));
    (!all.is_empty()).then(|| all.join("; "))
}

/// This site's last WAL batch, when it failed.
fn wal_failed(s: &BackupStatus) -> Option<&WalRun> {
    s.wal.as_ref()?.last.as_ref().filter(|r| !r.ok)
}

/// The last verified restore is older than twice `verify_every` (counted from the agent's
/// start when there never was one), at the site that takes the backup.
pub fn late(s: &BackupStatus, since_ms: u64, now_ms: u64) -> Option<String> {
    if !s.takes {
        return None;
    }
    let late_after = s.verify_every_ms.saturating_mul(2);
    let from = s.verify_ok.as_ref().map_or(since_ms, |v| v.at_ms);
    if now_ms.saturating_sub(from) <= late_after {
        return None;
    }
    Some(match &s.verify_ok {
        Some(v) => format!(
            "the last verified restore is {} s old (verify_every is {} s)",
            now_ms.saturating_sub(v.at_ms) / 1000,
            s.verify_every_ms / 1000
        ),
        None => format!(
            "no verified restore in {} s (verify_every is {} s)",
            now_ms.saturating_sub(since_ms) / 1000,
            s.verify_every_ms / 1000
        ),
    })
}
