//! The reconcile loop of one member: what the committed state wants of this site's server
//! ([`Want`], from the agent) against what the server is, one step at a time.
//!
//! The rules, in the order a step applies them:
//! 1. A server that takes writes while this site does not act as the dataset's primary is
//!    stopped at once (fast: sessions end and the standbys get every WAL record; immediate
//!    after a second). The gateway has refused already; this is the layer under it, for
//!    clients connected straight to the server. `default_transaction_read_only` is no fence
//!    (a session can turn it off), so the server stops.
//! 2. Acting primary: a cluster is made on an empty data dir only when no other member's
//!    server answers (a wiped disk never starts an empty primary beside a live copy); a
//!    standby is promoted; a stopped primary is started. Then every other member gets a
//!    replication slot, and `synchronous_standby_names` names the standbys that must hold
//!    each commit.
//! 3. Standby of another member: an empty data dir is cloned from it; a former primary is
//!    rewound to it once it is promoted (its diverged history archived first, a fresh clone
//!    when the rewind fails); a stopped standby is started; a running one is repointed.
//! 4. No primary committed yet: nothing starts writable.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::postgres::{format_lsn, sync_names, PgError, Postgres, StopMode};

/// What the committed state wants of this site's member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Want {
    /// The dataset's committed primary (its service's), if any.
    pub primary: Option<String>,
    /// This site acts as that primary now: it holds its lease and the old primary's lease is
    /// surely over.
    pub acting: bool,
    /// The epoch of the last move of the primary.
    pub epoch: u64,
    /// Sites the quorum has declared down.
    pub down: BTreeSet<String>,
    /// `replication = "sync"`.
    pub sync: bool,
    /// `standby_lost = "block"`: in sync mode, writes wait when every standby is down.
    pub block_when_alone: bool,
    /// The synchronous standbys the cluster has recorded for this dataset (none: nothing
    /// recorded yet; see [`to_name`]).
    pub sync_set: Option<Vec<String>>,
    /// A planned move (switchover, maintenance, failback) from a primary whose site is up:
    /// this site promotes only once it holds the old primary's WAL up to where it stopped.
    pub handover: Option<Handover>,
}

/// The old primary of a planned move, and where its server stopped (once it has said so).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handover {
    pub from: String,
    /// The old server's shutdown checkpoint: this site has everything once it has replayed
    /// past it.
    pub stopped_at: Option<u64>,
}

/// How long a promotion in a planned move waits for the old primary to say where it
/// stopped, and then for this site to replay up to there. Past these it promotes anyway,
/// with a warning: a dataset with no primary at all is the worse outcome.
const HANDOVER_WORD_WAIT: Duration = Duration::from_secs(5);
const HANDOVER_CATCH_UP_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
    Fenced,
    #[default]
    Down,
    Cloning,
    Rewinding,
}

/// A primary in sync mode whose every standby's site is declared down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Alone {
    /// `standby_lost = "degrade"`: synchronous replication is off; a commit is acknowledged
    /// when this site alone has it.
    Degraded,
    /// `standby_lost = "block"`: commits wait for a standby to come back.
    Blocked,
}

/// A diverged history kept before a rewind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diverged {
    pub site: String,
    pub epoch: u64,
    /// The member's last position before the rewind.
    pub to_lsn: Option<String>,
    pub path: String,
}

/// What this site's member is, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemberStatus {
    pub site: String,
    pub role: Role,
    pub lsn: Option<String>,
    /// Standby: bytes received but not replayed.
    pub lag_bytes: Option<u64>,
    /// Standby: ms since the last replayed commit was made on the primary.
    pub lag_ms: Option<u64>,
    /// Primary: each standby streaming from it, and its sync state (sync, quorum, async).
    pub standbys: BTreeMap<String, String>,
    /// Primary: `synchronous_standby_names` now.
    pub sync_names: Option<String>,
    /// Primary: writing without a standby (sync mode, every standby's site down).
    pub alone: Option<Alone>,
    /// Primary: the synchronous standbys it wants, for the cluster to record first.
    pub sync_want: Option<Vec<String>>,
    /// When this site's server last became the primary (ms since the epoch).
    pub promoted_at_ms: Option<u64>,
    /// Where this site's server stopped when it last gave up the primary cleanly: the epoch
    /// of that move and its shutdown checkpoint (see [`Handover`]).
    pub handed_over: Option<(u64, u64)>,
    pub diverged: Vec<Diverged>,
    pub error: Option<String>,
    /// `lsn` as a byte position.
    #[serde(skip)]
    pub lsn_pos: Option<u64>,
}

/// Another member's server as this site sees it (see [`watch_others`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Remote {
    /// None: its server did not answer.
    pub role: Option<Role>,
    pub lsn: Option<u64>,
    pub replay_age_ms: Option<u64>,
}

/// Asks every other member's server, once a second, whether it is a primary or a standby
/// and where its WAL is, for status. Apart from the member loop, so that a server that
/// does not answer never delays a fence or a promotion.
pub async fn watch_others(
    pg: Postgres,
    out: watch::Sender<BTreeMap<String, Remote>>,
    stop: CancellationToken,
) {
    let others: Vec<String> = pg
        .spec
        .members
        .keys()
        .filter(|s| **s != pg.spec.me)
        .cloned()
        .collect();
    let mut clients: BTreeMap<String, tokio_postgres::Client> = BTreeMap::new();
    loop {
        let mut seen = BTreeMap::new();
        for site in &others {
            let them = pg.of(site);
            if clients.get(site).is_some_and(|c| c.is_closed()) {
                clients.remove(site);
            }
            if !clients.contains_key(site) {
                if let Ok(c) = them.connect("postgres").await {
                    clients.insert(site.clone(), c);
                }
            }
            let mut r = Remote::default();
            if let Some(c) = clients.get(site) {
                match tokio::time::timeout(Duration::from_secs(2), them.observe(c)).await {
                    Ok(Ok(o)) => {
                        r.role = Some(if o.in_recovery {
                            Role::Standby
                        } else {
                            Role::Primary
                        });
                        r.lsn = Some(o.lsn);
                        r.replay_age_ms = o.replay_age_ms;
                    }
                    _ => {
                        clients.remove(site);
                    }
                }
            }
            seen.insert(site.clone(), r);
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

/// The loop: one step at least every 100 ms and at each change of `want`, until `stop`;
/// then the server is left as it is (a restarted agent adopts it).
pub async fn run(
    pg: Postgres,
    mut want: watch::Receiver<Want>,
    status: watch::Sender<MemberStatus>,
    stop: CancellationToken,
) {
    let mut m = Member::new(pg);
    let mut retry_at = outlast_core::clock::now();
    loop {
        let w = want.borrow_and_update().clone();
        if outlast_core::clock::now() >= retry_at {
            match m.step(&w).await {
                Ok(()) => m.status.error = m.waiting.take(),
                Err(e) => {
                    tracing::warn!(dataset = %m.pg.spec.dataset, error = %e, "db: a step failed; trying again");
                    m.status.error = Some(e.to_string());
                    m.client = None;
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
    pg: Postgres,
    client: Option<tokio_postgres::Client>,
    /// The primary the running standby was last pointed at.
    pointed_at: Option<String>,
    /// Slots made since this server became the primary.
    slots_made: bool,
    /// Since when a planned promotion has waited for the old primary (see [`Handover`]).
    handover_since: Option<std::time::Instant>,
    /// What the last step waits for, if anything (shown as the member's error).
    waiting: Option<String>,
    status: MemberStatus,
}

impl Member {
    fn new(pg: Postgres) -> Self {
        let site = pg.spec.me.clone();
        Member {
            pg,
            client: None,
            pointed_at: None,
            slots_made: false,
            handover_since: None,
            waiting: None,
            status: MemberStatus {
                site,
                ..MemberStatus::default()
            },
        }
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, PgError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            self.client = Some(self.pg.connect("postgres").await?);
        }
        self.client
            .as_ref()
            .ok_or_else(|| PgError::Refused("no connection".into()))
    }

    /// Whether the server on the data dir takes writes: it runs and is not a standby.
    fn writable(&self) -> bool {
        self.pg.postmaster_pid().is_some() && !self.pg.is_standby_dir()
    }

    async fn step(&mut self, w: &Want) -> Result<(), PgError> {
        let me = self.pg.spec.me.clone();
        let primary_here = w.acting && w.primary.as_deref() == Some(me.as_str());
        if !primary_here && self.writable() {
            tracing::warn!(dataset = %self.pg.spec.dataset, "db: this site does not act as the primary; stopping its writable server");
            self.client = None;
            self.pg.stop(StopMode::Fast, Duration::from_secs(1)).await?;
            self.status.role = Role::Fenced;
            self.status.handed_over = self.pg.clean_stop_lsn().await.map(|lsn| (w.epoch, lsn));
            if let Some((_, lsn)) = self.status.handed_over {
                tracing::info!(dataset = %self.pg.spec.dataset, at = %format_lsn(lsn), "db: stopped cleanly; the new primary takes over from there");
            }
            metrics::counter!("outlast_db_fenced_total", "dataset" => self.pg.spec.dataset.clone())
                .increment(1);
        }
        match w.primary.as_deref() {
            Some(p) if p == me && w.acting => self.be_primary(w).await,
            Some(p) if p != me => self.be_standby(p, w).await,
            _ => self.observe_only().await,
        }
    }

    async fn observe_only(&mut self) -> Result<(), PgError> {
        if self.pg.postmaster_pid().is_none() {
            if self.status.role != Role::Fenced {
                self.status.role = Role::Down;
            }
            return Ok(());
        }
        self.observe().await
    }

    async fn observe(&mut self) -> Result<(), PgError> {
        let pg = self.pg.clone();
        let c = self.client().await?;
        let o = pg.observe(c).await?;
        self.status.role = if o.in_recovery {
            Role::Standby
        } else {
            Role::Primary
        };
        self.status.lsn = Some(format_lsn(o.lsn));
        self.status.lsn_pos = Some(o.lsn);
        if o.in_recovery {
            self.status.lag_bytes = Some(o.received.saturating_sub(o.lsn));
            self.status.lag_ms = o.replay_age_ms;
            self.status.standbys.clear();
            self.status.sync_names = None;
            self.status.alone = None;
        } else {
            self.status.lag_bytes = None;
            self.status.lag_ms = None;
            self.status.standbys = o
                .standbys
                .iter()
                .map(|(k, (_, st))| (k.clone(), st.clone()))
                .collect();
            self.status.sync_names = Some(o.sync_names.clone());
        }
        Ok(())
    }

    async fn be_primary(&mut self, w: &Want) -> Result<(), PgError> {
        let pg = self.pg.clone();
        if !pg.has_data() {
            if self.another_member_answers().await {
                return Err(PgError::Refused(
                    "the data dir is empty and another member's server runs: this site will not start an empty primary beside it; move the primary to a member with data".into(),
                ));
            }
            if let Some(why) = &pg.spec.refuse_initdb {
                return Err(PgError::Refused(format!(
                    "the data dir is empty and no other member's server answers, but {why}: this site will not start an empty primary in its place"
                )));
            }
            self.status.role = Role::Cloning;
            pg.initdb().await?;
            self.slots_made = false;
            self.status.promoted_at_ms = Some(outlast_core::clock::unix_ms());
        }
        if pg.postmaster_pid().is_none() {
            // A standby dir starts as a standby and is promoted below; a primary dir starts
            // as the primary it was.
            let standby = pg.is_standby_dir();
            let up = if standby {
                self.pointed_at.clone()
            } else {
                None
            };
            pg.configure(standby, up.as_deref(), &self.current_sync_names())
                .await?;
            pg.start().await?;
            self.client = None;
        }
        if pg.is_standby_dir() {
            if !self.caught_up(w).await? {
                return Ok(());
            }
            let t = outlast_core::clock::now();
            let c = self.client().await?;
            pg.promote(c).await?;
            self.handover_since = None;
            self.pointed_at = None;
            self.slots_made = false;
            self.status.promoted_at_ms = Some(outlast_core::clock::unix_ms());
            metrics::histogram!("outlast_db_promote_seconds", "dataset" => pg.spec.dataset.clone())
                .record(t.elapsed().as_secs_f64());
            tracing::info!(dataset = %pg.spec.dataset, epoch = w.epoch, took_ms = t.elapsed().as_millis() as u64, "db: promoted this site's server");
        }
        if !self.slots_made {
            let c = self.client().await?;
            pg.ensure_slots(c).await?;
            self.slots_made = true;
        }
        self.observe().await?;
        let want = self.sync_set(w);
        self.status.sync_want = w.sync.then(|| want.clone());
        if let Some(set) = to_name(w.sync, &want, w.sync_set.as_deref()) {
            let names = sync_names(&set);
            if self.status.sync_names.as_deref() != Some(names.as_str()) {
                let c = self.client().await?;
                pg.set_sync(c, &names).await?;
                tracing::info!(dataset = %pg.spec.dataset, sync = %names, "db: synchronous standbys set");
                self.status.sync_names = Some(names);
            }
        }
        let others: Vec<&String> = pg
            .spec
            .members
            .keys()
            .filter(|s| **s != pg.spec.me)
            .collect();
        let named = self.current_sync_names();
        self.status.alone = alone(w, &others, named.is_empty());
        Ok(())
    }

    /// In a planned move: whether this standby has replayed past where the old primary
    /// stopped, so promoting it loses nothing (false: wait, and ask again next step).
    /// Bounded by [`HANDOVER_WORD_WAIT`] and [`HANDOVER_CATCH_UP_WAIT`].
    async fn caught_up(&mut self, w: &Want) -> Result<bool, PgError> {
        let Some(h) = &w.handover else {
            return Ok(true);
        };
        let since = *self
            .handover_since
            .get_or_insert_with(outlast_core::clock::now);
        let pg = self.pg.clone();
        let replayed = match h.stopped_at {
            Some(_) => {
                let c = self.client().await?;
                Some(pg.observe(c).await?.lsn)
            }
            None => None,
        };
        // The shutdown checkpoint is a record of its own: past it, not at it.
        let (go, waiting) = handover_check(
            &pg.spec.dataset,
            h,
            since.elapsed(),
            replayed,
            |have, stop| have > stop,
        );
        self.waiting = waiting;
        Ok(go)
    }

    /// `synchronous_standby_names` as the server has it now (empty when unknown).
    fn current_sync_names(&self) -> String {
        self.status.sync_names.clone().unwrap_or_default()
    }

    /// The standbys that must hold each commit. Sync mode: every other member whose site
    /// is not declared down and that streams now or is in the set already (so a member
    /// joins once it streams, and leaves only when the quorum declares its site down).
    /// With every one of them down, `block` keeps them all (writes wait) and `degrade` goes
    /// on alone. Async mode: none.
    fn sync_set(&self, w: &Want) -> Vec<String> {
        if !w.sync {
            return Vec::new();
        }
        let me = &self.pg.spec.me;
        let others: Vec<String> = self
            .pg
            .spec
            .members
            .keys()
            .filter(|s| *s != me)
            .cloned()
            .collect();
        let current = self.current_sync_names();
        wanted_sync_set(w, &others, |s| {
            self.status.standbys.contains_key(s) || current.contains(&format!("\"{s}\""))
        })
    }

    async fn another_member_answers(&self) -> bool {
        for (site, addr) in &self.pg.spec.members {
            if *site == self.pg.spec.me {
                continue;
            }
            let a = std::net::SocketAddr::new(*addr, self.pg.spec.port);
            if tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(a),
            )
            .await
            .is_ok_and(|r| r.is_ok())
            {
                return true;
            }
        }
        false
    }

    /// Whether `site`'s server is a primary now.
    async fn is_primary(&self, site: &str) -> bool {
        let Ok(c) = self.pg.of(site).connect("postgres").await else {
            return false;
        };
        c.query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .ok()
            .and_then(|r| r.try_get::<_, bool>(0).ok())
            .is_some_and(|rec| !rec)
    }

    async fn be_standby(&mut self, primary: &str, w: &Want) -> Result<(), PgError> {
        let pg = self.pg.clone();
        if !pg.has_data() {
            if !self.is_primary(primary).await {
                self.status.role = Role::Down;
                return Ok(());
            }
            self.status.role = Role::Cloning;
            pg.clone_from(primary).await?;
            self.pointed_at = Some(primary.to_string());
        } else if !pg.is_standby_dir() {
            // A former primary, stopped (rule 1 stopped it, or it crashed).
            if pg.postmaster_pid().is_some() {
                return Ok(());
            }
            if !self.is_primary(primary).await {
                self.status.role = Role::Fenced;
                return Ok(());
            }
            self.status.role = Role::Rewinding;
            let before = self.status.lsn.clone();
            if let Some(dir) = pg.rewind_to(primary, w.epoch).await? {
                metrics::counter!("outlast_db_diverged_total", "dataset" => pg.spec.dataset.clone())
                    .increment(1);
                self.status.diverged.push(Diverged {
                    site: pg.spec.me.clone(),
                    epoch: w.epoch,
                    to_lsn: before,
                    path: dir.display().to_string(),
                });
            }
            self.pointed_at = Some(primary.to_string());
        }
        if pg.postmaster_pid().is_none() {
            pg.configure(true, Some(primary), "").await?;
            pg.start().await?;
            self.client = None;
            self.pointed_at = Some(primary.to_string());
            self.slots_made = false;
        }
        if self.pointed_at.as_deref() != Some(primary) {
            let c = self.client().await?;
            pg.repoint(c, primary).await?;
            tracing::info!(dataset = %pg.spec.dataset, primary, "db: standby repointed");
            self.pointed_at = Some(primary.to_string());
        }
        self.observe().await?;
        // Slots kept from a time as primary would hold WAL for nobody.
        if !self.slots_made && self.status.role == Role::Standby {
            let c = self.client().await?;
            let _ = c
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active AND slot_name LIKE 'outlast\\_%'",
                    &[],
                )
                .await;
            self.slots_made = true;
        }
        Ok(())
    }
}

/// In a planned move, whether a standby at `have` (none: not asked, the old primary has
/// not said where it stopped) may be promoted, and what it waits for if not. `past(have,
/// stopped_at)`: it holds everything the old primary wrote. Bounded by
/// [`HANDOVER_WORD_WAIT`] and [`HANDOVER_CATCH_UP_WAIT`]: past them it promotes anyway, with
/// a warning (a dataset with no primary at all is the worse outcome).
pub(crate) fn handover_check(
    dataset: &str,
    h: &Handover,
    waited: Duration,
    have: Option<u64>,
    past: impl Fn(u64, u64) -> bool,
) -> (bool, Option<String>) {
    let (Some(stopped_at), Some(have)) = (h.stopped_at, have) else {
        if waited < HANDOVER_WORD_WAIT {
            return (
                false,
                Some(format!("waiting for {} to say where it stopped", h.from)),
            );
        }
        tracing::warn!(dataset, from = %h.from, "db: the old primary never said where it stopped; promoting on what this site has");
        return (true, None);
    };
    if past(have, stopped_at) {
        tracing::info!(dataset, from = %h.from, stopped_at, waited_ms = waited.as_millis() as u64, "db: holds everything the old primary wrote; promoting");
        return (true, None);
    }
    if waited < HANDOVER_CATCH_UP_WAIT {
        return (
            false,
            Some(format!(
                "waiting to reach {}'s position {stopped_at} (at {have})",
                h.from
            )),
        );
    }
    tracing::warn!(dataset, from = %h.from, stopped_at, have, "db: did not catch up with the old primary in time; promoting on what this site has");
    metrics::counter!("outlast_db_handover_short_total", "dataset" => dataset.to_string())
        .increment(1);
    (true, None)
}

/// The standbys that must hold each write (sync mode): every one of `others` whose site is
/// not declared down and that `counts_now` (it streams now, or is in the set already), so a
/// member joins once it streams and leaves only when the quorum declares its site down.
/// With every one of them down, `block` keeps them all (writes wait) and `degrade` goes on
/// alone.
pub(crate) fn wanted_sync_set(
    w: &Want,
    others: &[String],
    counts_now: impl Fn(&str) -> bool,
) -> Vec<String> {
    let live: Vec<String> = others
        .iter()
        .filter(|s| !w.down.contains(*s) && counts_now(s))
        .cloned()
        .collect();
    if live.is_empty() && w.block_when_alone {
        return others.to_vec();
    }
    live
}

/// Whether this site's server takes writes while the committed state does not want it
/// to (the agent reports the dataset's service as still acting until it stops).
pub fn holds_writes(pg: &Postgres, w: &Want) -> bool {
    let me = pg.spec.me.as_str();
    let wanted = w.acting && w.primary.as_deref() == Some(me);
    !wanted && pg.postmaster_pid().is_some() && !pg.is_standby_dir()
}

/// The standbys a sync primary names now, given those it `want`s and those the cluster
/// has `recorded` (none: no change yet). Every standby named must be recorded first, so a
/// failover, which promotes only a recorded one, never picks a server that may lack an
/// acknowledged commit:
/// - a member leaving the set (its site declared down) leaves at once (what is named stays
///   recorded);
/// - one joining is named once recorded; until then those of the wanted that are
///   recorded, or, when none is (nothing recorded, or recorded to go on alone), the wanted
///   (waiting for more standbys never loses a commit);
/// - going on alone (`degrade`) waits for the cluster to record it; writes wait till then.
pub fn to_name(sync: bool, want: &[String], recorded: Option<&[String]>) -> Option<Vec<String>> {
    if !sync {
        return Some(Vec::new());
    }
    if want.is_empty() {
        return (recorded == Some(&[][..])).then(Vec::new);
    }
    let recorded = recorded.unwrap_or_default();
    let both: Vec<String> = want
        .iter()
        .filter(|s| recorded.contains(s))
        .cloned()
        .collect();
    if !both.is_empty() {
        return Some(both);
    }
    recorded.is_empty().then(|| want.to_vec())
}

/// Whether a primary in sync mode writes alone because every other member's site (`others`)
/// is declared down: with no synchronous standby (degraded) or waiting for one (blocked).
pub(crate) fn alone(w: &Want, others: &[&String], none_named: bool) -> Option<Alone> {
    if !w.sync || others.is_empty() || !others.iter().all(|s| w.down.contains(*s)) {
        return None;
    }
    if none_named {
        Some(Alone::Degraded)
    } else if w.block_when_alone {
        Some(Alone::Blocked)
    } else {
        // Degrade, waiting for the cluster to record it: neither yet (no alert of a block
        // that lasts one report).
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PgSpec;
    use std::net::IpAddr;

    fn member(me: &str, sync_names: &str, streaming: &[&str]) -> Member {
        let spec = PgSpec {
            dataset: "orders".into(),
            me: me.into(),
            port: 5432,
            data_dir: "/nonexistent/pg".into(),
            bin_dir: "/nonexistent/bin".into(),
            os_user: None,
            database: "app".into(),
            user: "app".into(),
            password: "pw".into(),
            admin_password: "admin".into(),
            members: ["east", "west", "north"]
                .iter()
                .enumerate()
                .map(|(i, s)| (s.to_string(), IpAddr::from([127, 0, 0, 11 + i as u8])))
                .collect(),
            replication_via: Default::default(),
            clients: Vec::new(),
            settings: BTreeMap::new(),
            wal: None,
            refuse_initdb: None,
        };
        let mut m = Member::new(Postgres::new(spec));
        m.status.sync_names = Some(sync_names.into());
        m.status.standbys = streaming
            .iter()
            .map(|s| (s.to_string(), "quorum".to_string()))
            .collect();
        m
    }

    fn want(down: &[&str], sync: bool, block: bool) -> Want {
        Want {
            primary: Some("east".into()),
            acting: true,
            epoch: 1,
            down: down.iter().map(|s| s.to_string()).collect(),
            sync,
            block_when_alone: block,
            sync_set: None,
            handover: None,
        }
    }

    #[test]
    fn a_standby_joins_the_sync_set_once_it_streams_and_leaves_only_when_declared_down() {
        // West streams: it joins. North does not (yet).
        let m = member("east", "", &["west"]);
        assert_eq!(m.sync_set(&want(&[], true, false)), vec!["west"]);
        // West stopped streaming but is not declared down: it stays (commits wait).
        let m = member("east", "ANY 1 (\"west\")", &[]);
        assert_eq!(m.sync_set(&want(&[], true, false)), vec!["west"]);
        // Declared down: it leaves.
        assert!(m.sync_set(&want(&["west"], true, false)).is_empty());
        // Async: none.
        let m = member("east", "", &["west", "north"]);
        assert!(m.sync_set(&want(&[], false, false)).is_empty());
    }

    #[test]
    fn with_every_standby_down_degrade_goes_on_alone_and_block_waits() {
        let m = member("east", "ANY 1 (\"west\")", &[]);
        let all_down = ["west", "north"];
        assert!(
            m.sync_set(&want(&all_down, true, false)).is_empty(),
            "degrade: commits on one site"
        );
        assert_eq!(
            m.sync_set(&want(&all_down, true, true)),
            vec!["north", "west"],
            "block: every member stays in the set, commits wait"
        );
        let (west, north) = ("west".to_string(), "north".to_string());
        let others = [&west, &north];
        assert_eq!(
            alone(&want(&all_down, true, false), &others, true),
            Some(Alone::Degraded)
        );
        assert_eq!(
            alone(&want(&all_down, true, true), &others, false),
            Some(Alone::Blocked)
        );
        // Degrade before its record: not called blocked.
        assert_eq!(alone(&want(&all_down, true, false), &others, false), None);
        // One standby's site still up, or async: not alone.
        assert_eq!(alone(&want(&["west"], true, false), &others, true), None);
        assert_eq!(alone(&want(&all_down, false, false), &others, true), None);
    }

    #[test]
    fn a_standby_is_named_only_once_the_cluster_has_recorded_it() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (west, both) = (v(&["west"]), v(&["north", "west"]));
        // Async: none, whatever is recorded.
        assert_eq!(to_name(false, &west, None), Some(vec![]));
        // Joining: the recorded ones until the newcomer is recorded too.
        assert_eq!(to_name(true, &both, Some(&west)), Some(west.clone()));
        assert_eq!(to_name(true, &both, Some(&both)), Some(both.clone()));
        // Leaving (declared down): at once.
        assert_eq!(to_name(true, &west, Some(&both)), Some(west.clone()));
        // Nothing recorded, or recorded alone: more standbys wait for more, name them.
        assert_eq!(to_name(true, &west, None), Some(west.clone()));
        assert_eq!(to_name(true, &west, Some(&[])), Some(west.clone()));
        // A standby replaced by one not recorded: wait for the record.
        assert_eq!(to_name(true, &v(&["north"]), Some(&west)), None);
        // Going on alone waits for the cluster to record it.
        assert_eq!(to_name(true, &[], Some(&west)), None);
        assert_eq!(to_name(true, &[], None), None);
        assert_eq!(to_name(true, &[], Some(&[])), Some(vec![]));
    }

    #[test]
    fn only_a_server_that_takes_writes_where_it_should_not_is_held() {
        let pg = Postgres::new(member("east", "", &[]).pg.spec.clone());
        // No server runs on a data dir that does not exist: nothing is held.
        assert!(!holds_writes(&pg, &want(&[], true, false)));
        let mut w = want(&[], true, false);
        w.acting = false;
        assert!(!holds_writes(&pg, &w));
    }
}
