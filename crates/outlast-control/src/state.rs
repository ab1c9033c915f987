//! The replicated state: what every agent applies, in the order Raft commits it.
//!
//! Each committed [`Proposal`] names the epoch it was decided on. A proposal whose base epoch
//! is not the current one was decided on a stale view and is refused without effect, so the
//! epoch only grows and every change carries the epoch that made it.

use std::collections::BTreeMap;

use outlast_core::config::{Config, Mode};
use outlast_core::incident::{History, Impact, Step};
use outlast_core::Health;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteState {
    Up,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub mode: Mode,
    /// The committed primary (primary-standby only).
    pub primary: Option<String>,
    /// Sites where the service is served (active-active: every healthy site; primary-standby:
    /// the primary).
    pub active_sites: Vec<String>,
    /// Epoch of the last change to this service.
    pub epoch: u64,
    /// A new primary waits at most this long after applying its promotion before it acts,
    /// so that the old primary's lease has surely run out (see `lease.rs`); it acts sooner
    /// when the old primary has let go or a majority's promises to it ran out (`node.rs`).
    pub hold_ms: u64,
    /// The primary before the last move (none: the service never moved).
    #[serde(default)]
    pub from: Option<String>,
    /// Why it last moved (none: it never moved). An operator's switchover is not undone by
    /// `failback = "auto"`.
    #[serde(default)]
    pub reason: Option<MoveReason>,
    /// A sync dataset's service: the standbys of which one must hold each commit, as the
    /// primary asked for them and the cluster recorded it before the primary named them in
    /// `synchronous_standby_names`. A failover promotes only one of these (the most
    /// advanced that is up). `Some([])`: recorded to go on without a standby (`degrade`);
    /// none: nothing recorded yet.
    #[serde(default)]
    pub sync_set: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub epoch: u64,
    pub sites: BTreeMap<String, SiteState>,
    pub services: BTreeMap<String, ServiceState>,
    /// Sites an operator put in maintenance: moved away from and never chosen until off.
    #[serde(default)]
    pub maintenance: std::collections::BTreeSet<String>,
    /// The incidents and outages, written by the committed entries (`history.rs`).
    #[serde(default)]
    pub history: History,
    /// Dependencies not up, as the data sites report them (absent: up).
    #[serde(default)]
    pub deps: BTreeMap<String, DepState>,
}

/// A dependency's committed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepState {
    /// `degraded` or `down` (the worst any data site reports).
    pub state: String,
    /// The data sites that report it so.
    pub seen_by: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveReason {
    Failover,
    Failback,
    /// An operator asked for it (`/v1/switchover`).
    Switchover,
    /// Its site went into maintenance.
    Maintenance,
}

impl MoveReason {
    /// A move away from a primary that still runs (it hands over, nothing is lost), as
    /// opposed to a failover from one that is gone.
    pub fn planned(self) -> bool {
        self != MoveReason::Failover
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Decision {
    SiteDown {
        site: String,
    },
    SiteUp {
        site: String,
    },
    Active {
        service: String,
        sites: Vec<String>,
    },
    PrimaryMove {
        service: String,
        from: Option<String>,
        to: String,
        reason: MoveReason,
        hold_ms: u64,
    },
    /// An operator put a site in maintenance (`on`) or took it out.
    Maintenance {
        site: String,
        on: bool,
    },
    /// The synchronous standbys of a dataset's service, as its primary asked (see
    /// [`ServiceState::sync_set`]).
    SyncSet {
        service: String,
        sites: Vec<String>,
    },
    /// A dependency's state changed, as the data sites report it: `up`, `degraded` or
    /// `down`, and the sites whose verdict that is.
    Dependency {
        name: String,
        state: String,
        seen_by: Vec<String>,
    },
    /// The first entry of a new cluster: the time its history (and uptime) begins.
    HistoryStart {},
    /// An operator's words on an incident (`id`), or a new incident (`id` none, `title`
    /// given): see `history.rs`.
    IncidentNote {
        id: Option<u64>,
        #[serde(default)]
        title: Option<String>,
        status: Step,
        #[serde(default)]
        impact: Option<Impact>,
        body: String,
        #[serde(default)]
        by: Option<String>,
        #[serde(default)]
        components: Vec<String>,
    },
}

/// What an operator asks of the cluster (`/v1/switchover`, `/v1/maintenance`); the leader
/// checks it and commits the decision it makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Request {
    Switchover {
        service: String,
        to: String,
    },
    Maintenance {
        site: String,
        on: bool,
    },
    /// Open an incident (`id` none) or add an update to one.
    IncidentNote {
        id: Option<u64>,
        title: Option<String>,
        status: Step,
        impact: Option<Impact>,
        body: String,
        by: Option<String>,
        components: Vec<String>,
    },
}

/// One Raft log entry: decisions taken on the state at `base_epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub base_epoch: u64,
    pub decisions: Vec<Decision>,
    /// The leader's clock (Unix ms) when it proposed: the time the incident history records
    /// (0: none, as in entries from before the history).
    #[serde(default)]
    pub at_ms: u64,
    /// For each site this entry declares down: how long the leader had not heard from it,
    /// so its outage is recorded from when it went silent, not from the verdict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub silent_ms: BTreeMap<String, u64>,
}

impl Proposal {
    /// The epoch this entry makes when it applies.
    pub fn epoch(&self) -> u64 {
        self.base_epoch + 1
    }
}

impl ClusterState {
    /// The state before anything is decided: every site up, every service where the config
    /// puts it.
    pub fn initial(config: &Config) -> Self {
        let sites = config
            .sites
            .iter()
            .map(|s| (s.name.clone(), SiteState::Up))
            .collect();
        let services = config
            .services
            .iter()
            .map(|svc| {
                let with_backends: Vec<String> = config
                    .sites
                    .iter()
                    .filter(|s| svc.backends.get(&s.name).is_some_and(|b| !b.is_empty()))
                    .map(|s| s.name.clone())
                    .collect();
                let (primary, active_sites) = match svc.mode {
                    Mode::ActiveActive => (None, with_backends),
                    Mode::PrimaryStandby => {
                        let p = svc.primary.clone();
                        (p.clone(), p.into_iter().collect())
                    }
                };
                let state = ServiceState {
                    mode: svc.mode,
                    primary,
                    active_sites,
                    epoch: 0,
                    hold_ms: 0,
                    from: None,
                    reason: None,
                    sync_set: None,
                };
                (svc.name.clone(), state)
            })
            .collect();
        ClusterState {
            epoch: 0,
            sites,
            services,
            maintenance: Default::default(),
            history: History::default(),
            deps: BTreeMap::new(),
        }
    }

    /// Applies a committed proposal. Returns the decisions that took effect, or `None` when
    /// the proposal was stale and changed nothing.
    pub fn apply(&mut self, p: &Proposal) -> Option<Vec<Decision>> {
        if p.base_epoch != self.epoch {
            return None;
        }
        let before = self.clone();
        self.epoch += 1;
        let epoch = self.epoch;
        for d in &p.decisions {
            match d {
                Decision::SiteDown { site } => {
                    self.sites.insert(site.clone(), SiteState::Down);
                }
                Decision::SiteUp { site } => {
                    self.sites.insert(site.clone(), SiteState::Up);
                }
                Decision::Active { service, sites } => {
                    if let Some(s) = self.services.get_mut(service) {
                        s.active_sites = sites.clone();
                        s.epoch = epoch;
                    }
                }
                Decision::PrimaryMove {
                    service,
                    from,
                    to,
                    hold_ms,
                    reason,
                } => {
                    if let Some(s) = self.services.get_mut(service) {
                        s.reason = Some(*reason);
                        s.from = from.clone();
                        s.primary = Some(to.clone());
                        s.active_sites = vec![to.clone()];
                        // The new primary was one of the standbys; the others still are
                        // until it asks for a set of its own.
                        if let Some(set) = &mut s.sync_set {
                            set.retain(|x| x != to);
                        }
                        s.hold_ms = *hold_ms;
                        s.epoch = epoch;
                    }
                }
                Decision::SyncSet { service, sites } => {
                    if let Some(s) = self.services.get_mut(service) {
                        s.sync_set = Some(sites.clone());
                    }
                }
                Decision::Maintenance { site, on } => {
                    if *on {
                        self.maintenance.insert(site.clone());
                    } else {
                        self.maintenance.remove(site);
                    }
                }
                Decision::IncidentNote { .. } | Decision::HistoryStart {} => {}
                Decision::Dependency {
                    name,
                    state,
                    seen_by,
                } => {
                    if state == "up" {
                        self.deps.remove(name);
                    } else {
                        self.deps.insert(
                            name.clone(),
                            DepState {
                                state: state.clone(),
                                seen_by: seen_by.clone(),
                            },
                        );
                    }
                }
            }
        }
        crate::history::record(self, &before, p);
        Some(p.decisions.clone())
    }
}

/// How one site sees a peer: its rise/fall verdict and how long it has held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub reachable: Health,
    pub for_ms: u64,
    /// Time since the last successful heartbeat exchange with this peer (None: never).
    pub last_heard_ms: Option<u64>,
}

/// How one site sees a service's local backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub healthy: Health,
    pub for_ms: u64,
}

/// What a site tells every peer on each heartbeat. Durations are relative ("for how long"),
/// so no two sites need to agree on a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub site: String,
    pub applied_epoch: u64,
    pub fenced: bool,
    pub peers: BTreeMap<String, PeerView>,
    pub services: BTreeMap<String, ServiceView>,
    /// Services this site is acting as primary of right now.
    #[serde(default)]
    pub acting: Vec<String>,
    /// The Raft leader this site heard from within an election timeout (itself, when it
    /// leads with a quorum's recent acknowledgement). A site cut off from the leader but
    /// hearing a peer that hears it does not start elections it cannot win: each one would
    /// raise the term and, on the heal, depose a leader that did nothing wrong.
    #[serde(default)]
    pub leader: Option<String>,
    /// Per peer: how long since this site last granted its lease (answered a heartbeat with
    /// a log not ahead of what the peer had applied); since this site started, when it has
    /// not since. A grant is a promise (see `node.rs`).
    #[serde(default)]
    pub grant_age_ms: BTreeMap<String, u64>,
    /// Services whose dataset server at this site is a writable primary now.
    #[serde(default)]
    pub db_primary: Vec<String>,
    /// Per service: where this site's dataset server stopped when it handed over in a
    /// planned move (the epoch of that move and the server's last WAL position), so the
    /// new primary promotes only once it holds everything up to there.
    #[serde(default)]
    pub handed_over: BTreeMap<String, (u64, u64)>,
    /// Per service whose dataset server here is the primary: the synchronous standbys it
    /// asks the cluster to record (see [`ServiceState::sync_set`]).
    #[serde(default)]
    pub db_sync: BTreeMap<String, Vec<String>>,
    /// Per service: this site's dataset server's WAL position (replayed, on a standby), so
    /// a failover promotes the most advanced.
    #[serde(default)]
    pub db_lsn: BTreeMap<String, u64>,
    /// Per service: this site's dataset server's role in words (see `DbReport::role`).
    #[serde(default)]
    pub db_role: BTreeMap<String, String>,
    /// Per service: a standby's replay age (ms).
    #[serde(default)]
    pub db_replay_age_ms: BTreeMap<String, u64>,
    /// Per dependency: this data site's verdict (`up`, `degraded`, `down`, `unknown`).
    #[serde(default)]
    pub deps: BTreeMap<String, String>,
    /// Per `[[dns.probes]]` network: this data site's smoothed round trip to it (µs), for
    /// DNS names steered by latency.
    #[serde(default)]
    pub rtt_us: BTreeMap<String, u64>,
}
