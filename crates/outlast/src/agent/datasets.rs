//! This site's dataset members: what the committed state wants of each ([`want_for`]), the
//! server spec from the config ([`spec_for`]), and the status of every dataset as this
//! site sees it ([`status_of`]). The member loops themselves are `outlast_db::member`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use outlast_control::state::{ClusterState, SiteState};
use outlast_core::config::{
    Backup, BackupSource, Config, Dataset, DatasetKind, Replication, StandbyLost,
};
use outlast_core::status::{DatasetMemberStatus, DatasetStatus, DivergedStatus};
use outlast_db::member::{Alone, Handover, MemberStatus, Remote, Role, Want};
use outlast_db::{PgSpec, Postgres, Redis, RedisSpec, Server};
use tokio::sync::watch;

use super::alerts::{event, AlertEvent, Fields, Sender};
use super::workers::Workers;

/// What the committed state wants of `me`'s member of `d`. `handed_over`: where a site's
/// server stopped when it handed over in a planned move (site, service, epoch → position),
/// as this site has heard.
pub fn want_for(
    d: &Dataset,
    me: &str,
    state: &ClusterState,
    acting: &[String],
    handed_over: &dyn Fn(&str, &str, u64) -> Option<u64>,
) -> Want {
    let svc = state.services.get(&d.service);
    // A planned move from a primary whose site is up hands over: the old server stops
    // cleanly and says where, and this one promotes once it has everything up to there.
    let handover = svc.and_then(|s| {
        let from = s.from.as_ref()?;
        let planned = s.reason.is_some_and(|r| r.planned());
        let up = state.sites.get(from) != Some(&SiteState::Down);
        (planned && up && s.primary.as_deref() == Some(me) && from != me).then(|| Handover {
            from: from.clone(),
            stopped_at: handed_over(from, &d.service, s.epoch),
        })
    });
    Want {
        primary: svc.and_then(|s| s.primary.clone()),
        acting: svc.is_some_and(|s| s.primary.as_deref() == Some(me))
            && acting.contains(&d.service),
        epoch: svc.map(|s| s.epoch).unwrap_or(0),
        down: state
            .sites
            .iter()
            .filter(|(_, s)| **s == SiteState::Down)
            .map(|(n, _)| n.clone())
            .collect(),
        sync: d.replication == Replication::Sync,
        block_when_alone: d.standby_lost == StandbyLost::Block,
        sync_set: svc.and_then(|s| s.sync_set.clone()),
        handover,
    }
}

/// The server `me` runs for `d` (none when `me` is not a member). `root`: the agent runs as
/// root, so the server runs as `os_user`.
pub fn spec_for(
    config: &Config,
    d: &Dataset,
    me: &str,
    root: bool,
    bin_dir: std::path::PathBuf,
) -> Option<PgSpec> {
    let data_dir = d.members.get(me)?.clone();
    let members = d
        .members
        .keys()
        .filter_map(|m| config.site(m).map(|s| (m.clone(), s.address)))
        .collect();
    // Every data site's gateway dials the server from its site's address.
    let mut clients: Vec<String> = config
        .sites
        .iter()
        .filter(|s| !s.witness)
        .map(|s| s.address.to_string())
        .collect();
    clients.extend(d.postgres.allow.iter().cloned());
    let wal = config
        .backups
        .iter()
        .find(|b| b.wal && b.source == BackupSource::Dataset(d.name.clone()))
        .map(|b| outlast_db::postgres::WalArchive {
            spool: outlast_db::postgres::WalArchive::spool_for(&data_dir),
            every: b.wal_every,
        });
    Some(PgSpec {
        dataset: d.name.clone(),
        me: me.to_string(),
        port: d.port,
        data_dir,
        bin_dir,
        os_user: root.then(|| d.postgres.os_user.clone()),
        database: d.postgres.database.clone(),
        user: d.postgres.user.clone(),
        password: d.postgres.password.clone(),
        admin_password: outlast_db::admin_password(&config.cluster.secret, &d.name),
        members,
        replication_via: Default::default(),
        clients,
        settings: d.postgres.settings.clone(),
        wal,
        refuse_initdb: None,
    })
}

/// The Redis server `me` runs for `d` (none when `me` is not a member).
pub fn redis_spec_for(
    config: &Config,
    d: &Dataset,
    me: &str,
    root: bool,
    server_bin: std::path::PathBuf,
) -> Option<RedisSpec> {
    let data_dir = d.members.get(me)?.clone();
    Some(RedisSpec {
        dataset: d.name.clone(),
        me: me.to_string(),
        port: d.port,
        data_dir,
        server_bin,
        os_user: root.then(|| d.redis.os_user.clone()),
        password: d.redis.password.clone(),
        sync: d.replication == Replication::Sync,
        members: d
            .members
            .keys()
            .filter_map(|m| config.site(m).map(|s| (m.clone(), s.address)))
            .collect(),
        settings: d.redis.settings.clone(),
    })
}

/// This site's server of `d`, when it is a member; an error when it cannot run here (its
/// server's programs are not installed).
/// `via`: (dataset, site) → where to stream from that site's PostgreSQL server instead.
pub(crate) fn server_for(
    config: &Config,
    d: &Dataset,
    me: &str,
    root: bool,
    via: &BTreeMap<(String, String), std::net::SocketAddr>,
) -> anyhow::Result<Option<Server>> {
    if !d.members.contains_key(me) {
        return Ok(None);
    }
    Ok(match d.kind {
        DatasetKind::Postgres => {
            let bin_dir = match &d.postgres.bin_dir {
                Some(b) => b.clone(),
                None => outlast_db::find_bin_dir().ok_or_else(|| {
                    anyhow::anyhow!(
                        "dataset {} needs PostgreSQL on this machine, and none was found (no pg_config on the path, nothing in /usr/lib/postgresql); install it (apt-get install postgresql) or set bin_dir under [datasets.postgres]",
                        d.name
                    )
                })?,
            };
            if !bin_dir.join("initdb").exists() {
                anyhow::bail!(
                    "dataset {}: {} has no initdb; set bin_dir under [datasets.postgres] to PostgreSQL's bin directory",
                    d.name,
                    bin_dir.display()
                );
            }
            spec_for(config, d, me, root, bin_dir).map(|mut s| {
                s.replication_via = via
                    .iter()
                    .filter(|((ds, _), _)| *ds == d.name)
                    .map(|((_, site), a)| (site.clone(), *a))
                    .collect();
                Server::Postgres(Postgres::new(s))
            })
        }
        DatasetKind::Redis => {
            let bin = match &d.redis.server_bin {
                Some(b) if b.is_file() => b.clone(),
                Some(b) => anyhow::bail!(
                    "dataset {}: server_bin {} is not a file; set it under [datasets.redis] to redis-server's path",
                    d.name,
                    b.display()
                ),
                None => outlast_db::redis::find_server().ok_or_else(|| {
                    anyhow::anyhow!(
                        "dataset {} needs Redis on this machine, and no redis-server was found on the path; install it (apt-get install redis-server) or set server_bin under [datasets.redis]",
                        d.name
                    )
                })?,
            };
            redis_spec_for(config, d, me, root, bin).map(|s| Server::Redis(Redis::new(s)))
        }
    })
}

/// How long an empty member waits for its dataset's backups to say whether they hold it.
const BACKUPS_ASKED_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `dataset`'s data exists in one of its `backups` (then an empty member must not
/// start an empty cluster): why, or none when every repository is empty or not made yet. A
/// repository that cannot be read counts as holding it: an empty primary in place of real
/// data is the one outcome to avoid.
async fn data_elsewhere(dataset: &str, backups: Vec<Backup>) -> Option<String> {
    let d = dataset.to_string();
    let ask = tokio::task::spawn_blocking(move || {
        for b in &backups {
            for r in &b.repos {
                let open = match outlast_backup::open(r, outlast_backup::NoProgressBars) {
                    Ok(o) => o,
                    Err(outlast_backup::Error::Empty { .. }) => continue,
                    Err(e) => {
                        return Some(format!(
                            "backup {} of dataset {d} could not be read to tell whether it holds the data ({e})",
                            b.name
                        ))
                    }
                };
                match outlast_backup::snapshots(&open, &r.url, &b.name) {
                    Ok(s) if s.is_empty() => {}
                    Ok(s) => {
                        return Some(format!(
                            "backup {} holds {} snapshots of dataset {d} in {}: its data exists. Bring this site back with `outlast rebuild` (on an empty site) or the data with `outlast restore`, or make a member that has the data primary",
                            b.name,
                            s.len(),
                            r.url
                        ))
                    }
                    Err(e) => {
                        return Some(format!(
                            "backup {} of dataset {d} could not be listed to tell whether it holds the data ({e})",
                            b.name
                        ))
                    }
                }
            }
        }
        None
    });
    match tokio::time::timeout(BACKUPS_ASKED_WITHIN, ask).await {
        Ok(Ok(said)) => said,
        Ok(Err(e)) => Some(format!(
            "asking the backups of dataset {dataset} failed ({e})"
        )),
        Err(_) => Some(format!(
            "the backups of dataset {dataset} did not answer within {} s",
            BACKUPS_ASKED_WITHIN.as_secs()
        )),
    }
}

struct Member {
    dataset: String,
    service: String,
    server: Server,
    want: watch::Sender<Want>,
    status: watch::Receiver<MemberStatus>,
    others: watch::Receiver<BTreeMap<String, Remote>>,
}

/// A loop not yet spawned (see [`Datasets::spawn`]).
type Pending = (
    Server,
    watch::Receiver<Want>,
    watch::Sender<MemberStatus>,
    watch::Sender<BTreeMap<String, Remote>>,
);

/// This site's members.
pub struct Datasets {
    members: Vec<Member>,
    pending: Mutex<Vec<Pending>>,
    /// Each member's status when its alerts were last looked for (see [`Self::alerts`]).
    alerted: Mutex<BTreeMap<String, MemberStatus>>,
}

impl Datasets {
    /// This site's members of the config's datasets; an error when one cannot run here
    /// (PostgreSQL is not installed).
    pub fn new(
        config: &Config,
        me: &str,
        via: &BTreeMap<(String, String), std::net::SocketAddr>,
    ) -> anyhow::Result<Self> {
        let mut members = Vec::new();
        let mut pending = Vec::new();
        let root = outlast_db::os::is_root();
        for d in &config.datasets {
            let Some(server) = server_for(config, d, me, root, via)? else {
                continue;
            };
            let (want_tx, want_rx) = watch::channel(Want::default());
            let (status_tx, status_rx) = watch::channel(MemberStatus::default());
            let (others_tx, others_rx) = watch::channel(BTreeMap::new());
            pending.push((server.clone(), want_rx, status_tx, others_tx));
            members.push(Member {
                dataset: d.name.clone(),
                service: d.service.clone(),
                server,
                want: want_tx,
                status: status_rx,
                others: others_rx,
            });
        }
        Ok(Datasets {
            members,
            pending: Mutex::new(pending),
            alerted: Mutex::new(BTreeMap::new()),
        })
    }

    /// Starts the member loops (once) in `workers`. Until the first [`Self::update`] a loop
    /// wants nothing: no server starts writable before the committed state is known.
    pub fn spawn(&self, config: &Config, workers: &mut Workers) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for (server, want, status, others) in pending {
            let name = server.dataset().to_string();
            let backups: Vec<Backup> = config
                .backups
                .iter()
                .filter(|b| b.source == BackupSource::Dataset(name.clone()))
                .cloned()
                .collect();
            let run = server.clone();
            let token = workers.token();
            workers.spawn(format!("dataset {name}"), async move {
                let run = match run {
                    // An empty PostgreSQL member first asks its dataset's backups whether
                    // the data exists: if it does, it never makes an empty cluster.
                    Server::Postgres(mut pg) if !pg.has_data() && !backups.is_empty() => {
                        pg.spec.refuse_initdb = data_elsewhere(&pg.spec.dataset, backups).await;
                        Server::Postgres(pg)
                    }
                    other => other,
                };
                run.run(want, status, token).await
            });
            workers.spawn(
                format!("dataset {name} watch"),
                server.watch_others(others, workers.token()),
            );
        }
    }

    /// Tells each loop what the committed state wants now (see [`want_for`]).
    pub fn update(
        &self,
        config: &Config,
        me: &str,
        state: &ClusterState,
        acting: &[String],
        handed_over: &dyn Fn(&str, &str, u64) -> Option<u64>,
    ) {
        for m in &self.members {
            let Some(d) = config.datasets.iter().find(|d| d.name == m.dataset) else {
                continue;
            };
            let w = want_for(d, me, state, acting, handed_over);
            m.want.send_if_modified(|cur| {
                let changed = *cur != w;
                if changed {
                    *cur = w;
                }
                changed
            });
        }
    }

    /// What this site's servers are, for its reports: which are writable primaries, and
    /// where each stopped when it last handed over.
    pub fn report(&self) -> outlast_control::DbReport {
        let mut out = outlast_control::DbReport::default();
        for m in &self.members {
            let st = m.status.borrow();
            if st.role == Role::Primary {
                out.primary.push(m.service.clone());
            }
            if let Some(h) = st.handed_over {
                out.handed_over.insert(m.service.clone(), h);
            }
            if let (Role::Primary, Some(set)) = (st.role, &st.sync_want) {
                out.sync_want.insert(m.service.clone(), set.clone());
            }
            if let Some(lsn) = st.lsn_pos {
                out.lsn.insert(m.service.clone(), lsn);
            }
            out.role.insert(m.service.clone(), role_word(st.role));
            if let (Role::Standby, Some(age)) = (st.role, st.lag_ms) {
                out.replay_age_ms.insert(m.service.clone(), age);
            }
        }
        out
    }

    /// The alerts of what this site's members did since the last call (see [`alerts_for`]);
    /// each keyed by the epoch its member was told of.
    pub fn alerts(&self, cluster: &str, me: &str, unix_ms: u64) -> Vec<AlertEvent> {
        let mut alerted = self.alerted.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for m in &self.members {
            let now = m.status.borrow().clone();
            let by = Sender {
                cluster,
                me,
                epoch: m.want.borrow().epoch,
                unix_ms,
            };
            if let Some(was) = alerted.get(&m.dataset) {
                out.extend(alerts_for(&by, &m.dataset, was, &now));
            }
            alerted.insert(m.dataset.clone(), now);
        }
        out
    }

    /// The services whose server here still takes writes though this site does not act
    /// for them (it is being stopped).
    pub fn holding(&self) -> BTreeSet<String> {
        self.members
            .iter()
            .filter(|m| m.server.holds_writes(&m.want.borrow()))
            .map(|m| m.service.clone())
            .collect()
    }

    /// The datasets whose server here runs as a primary or a standby now (a base backup can
    /// be taken from it).
    pub fn serving(&self) -> BTreeSet<String> {
        self.members
            .iter()
            .filter(|m| matches!(m.status.borrow().role, Role::Primary | Role::Standby))
            .map(|m| m.dataset.clone())
            .collect()
    }

    /// This site's servers, by dataset (backups copy their data).
    pub fn servers(&self) -> BTreeMap<String, Server> {
        self.members
            .iter()
            .map(|m| (m.dataset.clone(), m.server.clone()))
            .collect()
    }

    /// Every dataset of the config as this site sees it.
    /// Every dataset as this site shows it. `reported` gives a site's fresh report, if
    /// any: each member is judged from what its own site says of it (so every site, the
    /// witness included, gives the same verdict), else from this site's own look at its
    /// server.
    pub fn status(
        &self,
        config: &Config,
        state: &ClusterState,
        reported: &dyn Fn(&str) -> Option<outlast_control::Report>,
    ) -> Vec<DatasetStatus> {
        config
            .datasets
            .iter()
            .map(|d| {
                let mine = self.members.iter().find(|m| m.dataset == d.name);
                let own = mine.map(|m| m.status.borrow().clone());
                let mut others = mine.map(|m| m.others.borrow().clone()).unwrap_or_default();
                for site in d.members.keys() {
                    if let Some(r) = reported(site).and_then(|r| member_of(&r, &d.service)) {
                        others.insert(site.clone(), r);
                    }
                }
                status_of(d, state, own.as_ref(), &others)
            })
            .collect()
    }
}

/// What a site's report says of its own server for `service`, if it says anything.
fn member_of(r: &outlast_control::Report, service: &str) -> Option<Remote> {
    let role = match r.db_role.get(service)?.as_str() {
        "primary" => Role::Primary,
        "standby" => Role::Standby,
        "fenced" => Role::Fenced,
        "cloning" => Role::Cloning,
        "rewinding" => Role::Rewinding,
        _ => Role::Down,
    };
    Some(Remote {
        role: Some(role),
        lsn: r.db_lsn.get(service).copied(),
        replay_age_ms: r.db_replay_age_ms.get(service).copied(),
    })
}

fn role_word(r: Role) -> String {
    match r {
        Role::Primary => "primary",
        Role::Standby => "standby",
        Role::Fenced => "fenced",
        Role::Down => "down",
        Role::Cloning => "cloning",
        Role::Rewinding => "rewinding",
    }
    .to_string()
}

/// One dataset's status from this site's member (`own`, none when this site has none) and
/// what it saw of the others' servers.
pub fn status_of(
    d: &Dataset,
    state: &ClusterState,
    own: Option<&MemberStatus>,
    others: &BTreeMap<String, Remote>,
) -> DatasetStatus {
    let svc = state.services.get(&d.service);
    // Per member: its role, WAL position and replay age as seen from here.
    let seen: Vec<(String, Remote)> = d
        .members
        .keys()
        .map(|site| {
            let r = match (own.filter(|o| o.site == *site), others.get(site)) {
                (Some(o), _) => Remote {
                    role: Some(o.role),
                    lsn: o.lsn_pos,
                    replay_age_ms: o.lag_ms,
                },
                (None, Some(r)) => r.clone(),
                (None, None) => Remote::default(),
            };
            (site.clone(), r)
        })
        .collect();
    let primary_lsn = seen
        .iter()
        .find(|(_, r)| r.role == Some(Role::Primary))
        .and_then(|(_, r)| r.lsn);
    let sync_states = own
        .filter(|o| o.role == Role::Primary)
        .map(|o| o.standbys.clone())
        .unwrap_or_default();
    let members = seen
        .into_iter()
        .map(
            |(
                site,
                Remote {
                    role,
                    lsn,
                    replay_age_ms: age,
                },
            )| {
                let standby = role == Some(Role::Standby);
                DatasetMemberStatus {
                    role: role.map(role_word).unwrap_or_else(|| "unknown".into()),
                    lsn: lsn.map(|l| match d.kind {
                        DatasetKind::Postgres => outlast_db::postgres::format_lsn(l),
                        DatasetKind::Redis => l.to_string(),
                    }),
                    lag_bytes: match (standby, primary_lsn, lsn) {
                        (true, Some(p), Some(l)) => Some(p.saturating_sub(l)),
                        _ => None,
                    },
                    lag_ms: if standby { age } else { None },
                    sync: sync_states.get(&site).cloned(),
                    error: own.filter(|o| o.site == site).and_then(|o| o.error.clone()),
                    site,
                }
            },
        )
        .collect();
    DatasetStatus {
        name: d.name.clone(),
        service: d.service.clone(),
        kind: match d.kind {
            DatasetKind::Postgres => "postgres".into(),
            DatasetKind::Redis => "redis".into(),
        },
        primary: svc.and_then(|s| s.primary.clone()),
        epoch: svc.map(|s| s.epoch).unwrap_or(0),
        replication: match d.replication {
            Replication::Sync => "sync".into(),
            Replication::Async => "async".into(),
        },
        members,
        sync_set: svc.and_then(|s| s.sync_set.clone()),
        standby_lost: own
            .filter(|o| o.role == Role::Primary)
            .and_then(|o| o.alone)
            .map(|a| {
                match a {
                    Alone::Degraded => "degraded",
                    Alone::Blocked => "blocked",
                }
                .to_string()
            }),
        diverged: own
            .map(|o| {
                o.diverged
                    .iter()
                    .map(|v| DivergedStatus {
                        site: v.site.clone(),
                        epoch: v.epoch,
                        to_lsn: v.to_lsn.clone(),
                        path: v.path.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The alerts this site sends when its member of `dataset` changes from `was` to `now`:
/// its server promoted (`db-promoted`), sync mode with every standby's site down
/// (`db-degraded`, `db-blocked`) and back (`db-sync-restored`), and each diverged history
/// archived (`db-diverged`). Sent by the member's site, which alone sees them.
pub fn alerts_for(
    by: &Sender<'_>,
    dataset: &str,
    was: &MemberStatus,
    now: &MemberStatus,
) -> Vec<AlertEvent> {
    let site = &now.site;
    let fields = || Fields {
        site: Some(site.clone()),
        service: Some(dataset.to_string()),
        ..Default::default()
    };
    let mut out = Vec::new();
    if now.role == Role::Primary
        && was.role == Role::Standby
        && now.promoted_at_ms.is_some()
        && now.promoted_at_ms != was.promoted_at_ms
    {
        let message = format!("dataset {dataset}: {site}'s server promoted; it takes writes");
        out.push(event(by, "db-promoted", dataset, fields(), message));
    }
    if now.alone != was.alone {
        let (kind, message) = match now.alone {
            Some(Alone::Degraded) => (
                "db-degraded",
                format!("dataset {dataset}: every standby's site is down; synchronous replication is off and commits are acknowledged on {site} alone"),
            ),
            Some(Alone::Blocked) => (
                "db-blocked",
                format!("dataset {dataset}: every standby's site is down; commits on {site} wait for one to return (standby_lost = \"block\")"),
            ),
            None => (
                "db-sync-restored",
                format!("dataset {dataset}: a standby is back; commits are in two sites again"),
            ),
        };
        // Back to sync only matters after a degrade or block, on the same primary.
        if now.alone.is_some() || now.role == Role::Primary {
            out.push(event(by, kind, dataset, fields(), message));
        }
    }
    for d in now.diverged.iter().skip(was.diverged.len()) {
        let message = format!(
            "dataset {dataset}: {site}'s server had writes the new primary does not have (to {}); kept in {} before it rejoined",
            d.to_lsn.as_deref().unwrap_or("an unknown position"),
            d.path
        );
        let tail = format!("{dataset}-{site}-{}", d.epoch);
        out.push(event(by, "db-diverged", &tail, fields(), message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use outlast_control::state::{MoveReason, ServiceState};
    use outlast_core::config::Mode;
    use std::path::Path;

    const CONFIG: &str = r#"[cluster]
name = "shop"
secret = "0123456789abcdef"
[[sites]]
name = "east"
address = "127.0.0.11"
peer_port = 7400
api_port = 7401
[[sites]]
name = "west"
address = "127.0.0.12"
peer_port = 7400
api_port = 7401
[[sites]]
name = "witness"
address = "127.0.0.13"
peer_port = 7400
api_port = 7401
witness = true
[[datasets]]
name = "orders"
port = 5432
standby_lost = "block"
[datasets.members]
east = { data_dir = "east/pg" }
west = { data_dir = "west/pg" }
[datasets.postgres]
password = "app-password"
allow = ["10.0.0.0/8"]
[[services]]
name = "db"
dataset = "orders"
port = 15432
"#;

    fn config() -> Config {
        Config::parse(Path::new("/srv/outlast.toml"), CONFIG).expect("valid")
    }

    fn state(primary: &str, epoch: u64, down: &[&str]) -> ClusterState {
        ClusterState {
            epoch,
            sites: ["east", "west", "witness"]
                .iter()
                .map(|s| {
                    let st = if down.contains(s) {
                        SiteState::Down
                    } else {
                        SiteState::Up
                    };
                    (s.to_string(), st)
                })
                .collect(),
            services: [(
                "db".to_string(),
                ServiceState {
                    mode: Mode::PrimaryStandby,
                    primary: Some(primary.into()),
                    active_sites: vec![primary.into()],
                    epoch,
                    hold_ms: 0,
                    from: None,
                    reason: None,
                    sync_set: None,
                },
            )]
            .into_iter()
            .collect(),
            maintenance: Default::default(),
            history: Default::default(),
            deps: Default::default(),
        }
    }

    #[test]
    fn a_member_acts_as_primary_only_where_its_service_acts() {
        let c = config();
        let d = &c.datasets[0];
        let w = want_for(
            d,
            "west",
            &state("west", 4, &["east"]),
            &["db".into()],
            &|_, _, _| None,
        );
        assert!(w.acting && w.sync && w.block_when_alone);
        assert_eq!(w.primary.as_deref(), Some("west"));
        assert_eq!(w.epoch, 4);
        assert!(w.down.contains("east"));
        // Committed primary but not acting yet (the old lease may run): not acting.
        assert!(!want_for(d, "west", &state("west", 4, &[]), &[], &|_, _, _| None).acting);
        // Acting for another service does not count.
        assert!(
            !want_for(
                d,
                "west",
                &state("west", 4, &[]),
                &["web".into()],
                &|_, _, _| None
            )
            .acting
        );
        // Another site's primary: a standby of it.
        let e = want_for(
            d,
            "east",
            &state("west", 4, &[]),
            &["db".into()],
            &|_, _, _| None,
        );
        assert!(!e.acting);
        assert_eq!(e.primary.as_deref(), Some("west"));
    }

    #[test]
    fn a_planned_move_from_a_live_primary_hands_over_and_a_failover_does_not() {
        let c = config();
        let d = &c.datasets[0];
        let moved = |reason, down: &[&str]| {
            let mut s = state("west", 4, down);
            if let Some(svc) = s.services.get_mut("db") {
                svc.from = Some("east".into());
                svc.reason = Some(reason);
            }
            s
        };
        let said = |site: &str, svc: &str, epoch: u64| {
            (site == "east" && svc == "db" && epoch == 4).then_some(77)
        };
        let s = moved(MoveReason::Switchover, &[]);
        let w = want_for(d, "west", &s, &["db".into()], &said);
        let want = Handover {
            from: "east".into(),
            stopped_at: Some(77),
        };
        assert_eq!(w.handover, Some(want));
        // Not said yet: it waits for the word.
        let w = want_for(d, "west", &s, &["db".into()], &|_, _, _| None);
        assert_eq!(w.handover.and_then(|h| h.stopped_at), None);
        // The old primary waits for nobody.
        assert_eq!(want_for(d, "east", &s, &[], &said).handover, None);
        // A failover, or a planned move whose old site was declared down since: no wait.
        let s = moved(MoveReason::Failover, &[]);
        assert_eq!(
            want_for(d, "west", &s, &["db".into()], &said).handover,
            None
        );
        let s = moved(MoveReason::Maintenance, &["east"]);
        assert_eq!(
            want_for(d, "west", &s, &["db".into()], &said).handover,
            None
        );
    }

    #[test]
    fn the_server_spec_follows_the_config() {
        let c = config();
        let d = &c.datasets[0];
        let bin = std::path::PathBuf::from("/usr/lib/postgresql/15/bin");
        assert!(spec_for(&c, d, "witness", true, bin.clone()).is_none());
        let s = spec_for(&c, d, "east", true, bin.clone()).expect("member");
        assert_eq!(s.os_user.as_deref(), Some("postgres"));
        assert_eq!(s.data_dir, Path::new("/srv/east/pg"));
        assert_eq!(s.address().to_string(), "127.0.0.11");
        assert_eq!(s.clients, vec!["127.0.0.11", "127.0.0.12", "10.0.0.0/8"]);
        assert_eq!(
            s.admin_password,
            outlast_db::admin_password("0123456789abcdef", "orders")
        );
        assert!(spec_for(&c, d, "east", false, bin)
            .expect("member")
            .os_user
            .is_none());
    }

    #[test]
    fn status_gives_each_member_its_role_and_lag_behind_the_primary() {
        let c = config();
        let d = &c.datasets[0];
        let own = MemberStatus {
            site: "west".into(),
            role: Role::Primary,
            lsn_pos: Some(0x5000),
            standbys: [("east".to_string(), "quorum".to_string())]
                .into_iter()
                .collect(),
            ..MemberStatus::default()
        };
        let others = [(
            "east".to_string(),
            Remote {
                role: Some(Role::Standby),
                lsn: Some(0x4800),
                replay_age_ms: Some(12),
            },
        )]
        .into_iter()
        .collect();
        let st = status_of(d, &state("west", 2, &[]), Some(&own), &others);
        assert_eq!(st.primary.as_deref(), Some("west"));
        assert_eq!(st.replication, "sync");
        let east = &st.members[0];
        assert_eq!(
            (east.site.as_str(), east.role.as_str()),
            ("east", "standby")
        );
        assert_eq!(east.lag_bytes, Some(0x800));
        assert_eq!(east.lag_ms, Some(12));
        assert_eq!(east.sync.as_deref(), Some("quorum"));
        assert_eq!(st.members[1].role, "primary");
        assert_eq!(st.members[1].lag_bytes, None);
        // Not reachable from here: unknown, not guessed.
        let st = status_of(d, &state("west", 2, &[]), None, &BTreeMap::new());
        assert!(st.members.iter().all(|m| m.role == "unknown"));
    }

    #[test]
    fn a_member_alerts_its_promotion_a_degrade_and_back_and_each_diverged_archive() {
        let by = Sender {
            cluster: "shop",
            me: "west",
            epoch: 4,
            unix_ms: 42,
        };
        let standby = MemberStatus {
            site: "west".into(),
            role: Role::Standby,
            ..MemberStatus::default()
        };
        let promoted = MemberStatus {
            role: Role::Primary,
            promoted_at_ms: Some(1000),
            ..standby.clone()
        };
        let kinds = |a: Vec<AlertEvent>| a.into_iter().map(|e| e.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(alerts_for(&by, "orders", &standby, &promoted)),
            ["db-promoted"]
        );
        assert!(alerts_for(&by, "orders", &promoted, &promoted).is_empty());
        // A fresh primary (made, not promoted) says nothing.
        let made = MemberStatus {
            role: Role::Down,
            ..standby.clone()
        };
        assert!(alerts_for(&by, "orders", &made, &promoted).is_empty());
        let degraded = MemberStatus {
            alone: Some(Alone::Degraded),
            ..promoted.clone()
        };
        let a = alerts_for(&by, "orders", &promoted, &degraded);
        assert_eq!(a[0].kind, "db-degraded");
        assert_eq!(a[0].idempotency_key, "shop-4-db-degraded-orders");
        assert_eq!(a[0].service.as_deref(), Some("orders"));
        assert_eq!(
            kinds(alerts_for(&by, "orders", &degraded, &promoted)),
            ["db-sync-restored"]
        );
        let blocked = MemberStatus {
            alone: Some(Alone::Blocked),
            ..promoted.clone()
        };
        assert_eq!(
            kinds(alerts_for(&by, "orders", &promoted, &blocked)),
            ["db-blocked"]
        );
        // Demoted while degraded: no "restored".
        assert!(alerts_for(&by, "orders", &degraded, &standby).is_empty());
        let rewound = MemberStatus {
            diverged: vec![outlast_db::member::Diverged {
                site: "west".into(),
                epoch: 4,
                to_lsn: Some("0/3000060".into()),
                path: "/var/lib/pg/diverged/4".into(),
            }],
            ..standby.clone()
        };
        let a = alerts_for(&by, "orders", &standby, &rewound);
        assert_eq!(kinds(a.clone()), ["db-diverged"]);
        assert!(
            a[0].message.contains("/var/lib/pg/diverged/4"),
            "{}",
            a[0].message
        );
        assert!(alerts_for(&by, "orders", &rewound, &rewound).is_empty());
    }
}
