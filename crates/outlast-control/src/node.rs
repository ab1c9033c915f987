//! One site's whole control logic as a state machine without I/O: the [`Node`].
//!
//! The agent feeds it what happened (a heartbeat answered or missed, a peer's report, a
//! committed change applied, Raft's view of the leader, the local backends' health) with the
//! local time, and asks it what follows: the report to send, whether this site is fenced,
//! which services it acts as primary of, what the leader should propose. Transport, Raft,
//! timers and clocks stay outside, so the deterministic simulation in `tests/` drives this
//! same type with its own network and clocks.
//!
//! # Acting as primary
//! A site acts as primary of a service while (1) the committed state names it, (2) it holds
//! its lease (see `lease.rs`), and (3) the site it took over from can no longer act. The
//! third is known in one of three ways, whichever comes first:
//! - the old primary said so: a fresh report from it shows it has applied the move (its
//!   applied epoch is at least the move's) and does not act as primary of the service;
//! - the old primary's lease has surely ended: a majority of voters report that their last
//!   grant to it is older than `lease + margin` on their own clocks, in reports made after
//!   the move was in their logs (see "Leases as promises" below);
//! - the hold: `lease + margin` has passed on this site's clock since it applied the move
//!   (the rule before promises; it bounds the wait when reports do not get through).
//!
//! # Leases as promises
//! A voter *grants* a site's lease when it answers that site's heartbeat with a log that is
//! not ahead of what the site has applied: only such answers count for the site's lease.
//! A grant is a promise: for `lease + margin` on the voter's own clock it helps no other
//! site act as primary of what the granted site holds. Why the old primary's lease always
//! ends before a new primary acts, with clocks drifting:
//! 1. The old primary O counts an answer to a heartbeat it sent at its time `s` until
//!    `s + lease` on its clock. A voter V answered it at V's time `g`, and in real time the
//!    answer came after the heartbeat was sent, so `real(g) >= real(s)`.
//! 2. With clock rates within `ρ` of true time, O's count lasts at most `lease / (1 - ρ)` of
//!    real time past `real(s)`, and V's promise at least `(lease + margin) / (1 + ρ)` past
//!    `real(g)`. The margin is at least `lease · 2ρ / (1 - ρ)` (lease / 8 covers ρ = 5%)
//!    plus one probe interval (O's fence is checked on every request at its gateways and on
//!    every tick elsewhere), so every promise outlives the answer it was given for.
//! 3. Once the move is in V's log, V's log is ahead of what O has applied until O applies
//!    the move, and then O is not primary any more: V grants O nothing more. A report V
//!    makes after the move is in its log therefore gives the age of V's last grant to a
//!    primary-capable O, and that age only grows.
//! 4. O's lease needs a majority of grants (itself counting while its own log is not
//!    ahead). When a majority of voters report promises older than `lease + margin`, every
//!    majority O could count includes one of them, whose grant has run out: O's lease is
//!    over, in real time, before the new primary acts.
//!
//! A voter that restarted forgot its grants: it counts its start as its last grant, so its
//! first promise runs out `lease + margin` after it started.
//!
//! Reports are read as of when they arrived, which can only make a promise look younger
//! than it is (the safe direction).

use std::collections::{BTreeMap, BTreeSet};

use outlast_core::{Health, Hysteresis};
use serde::{Deserialize, Serialize};

use crate::lease::Lease;
use crate::policy::{self, decide, decide_and_hold, Observations, Params, Received, Refusal};
use crate::state::{
    ClusterState, Decision, PeerView, Proposal, Report, Request, ServiceView, SiteState,
};

/// What a [`Node`] is told about the cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub me: String,
    /// Every site in config order: (name, witness).
    pub sites: Vec<(String, bool)>,
    pub params: Params,
    pub fall: u32,
    pub rise: u32,
    pub probe_ms: u64,
    /// Raft's shortest election timeout: how recently a leader must have been heard.
    pub election_timeout_min_ms: u64,
}

/// What a site answers a peer's heartbeat with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The highest epoch in the answering site's Raft log (see the lease design).
    pub log_epoch: u64,
    pub applied_epoch: u64,
}

#[derive(Debug, Clone)]
struct PeerTrack {
    counter: Hysteresis,
    since_ms: u64,
    last_heard_ms: Option<u64>,
}

/// What one tick asks of the agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tick {
    /// The site's fence changed: `Some(true)` it just lost its lease.
    pub fenced_changed: Option<bool>,
    /// Whether Raft may start elections changed (leader stickiness).
    pub elections_changed: Option<bool>,
    /// Pairs of sites newly unable to reach each other, and pairs that reach each other
    /// again (reported by the leader only).
    pub links_cut: Vec<(String, String)>,
    pub links_restored: Vec<(String, String)>,
    /// Failovers `max_lag` newly holds back (reported by the leader only).
    pub failovers_held: Vec<crate::policy::Held>,
    /// Failover phases first seen in this tick: (service, phase, ms since the failover
    /// began as this site knows it).
    pub phases: Vec<(String, &'static str, u64)>,
}

/// The phases of a failover as one site saw them, in its local ms (docs/api.md,
/// `failovers[]`): `last-heard` (the old primary's site, last heard from here),
/// `declared` (the move committed and applied here), `old-lease-over` (at the new primary:
/// the old one let go or a majority's promises to it ran out), `acting` (the new primary
/// acts; at other sites, when its report first said so), `dns-published` (this site's DNS
/// answers the new routing), `gateway-switched` (this site's gateway routes by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverLog {
    pub service: String,
    pub epoch: u64,
    pub from: Option<String>,
    pub to: String,
    pub reason: crate::state::MoveReason,
    pub phases: Vec<(&'static str, u64)>,
    /// A failover of an `async` dataset's service: how far (bytes of WAL) the new primary's
    /// server was behind the old one's, by the positions their sites last reported here. At
    /// least that much of what the old primary wrote is not on the new one.
    pub wal_behind_bytes: Option<u64>,
}

impl FailoverLog {
    fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|(p, _)| *p == phase)
    }

    /// When the failure began as far as this site knows: the old primary's site last
    /// heard, else the move's commit.
    pub fn start_ms(&self) -> Option<u64> {
        let at = |name| {
            self.phases
                .iter()
                .find(|(p, _)| *p == name)
                .map(|(_, t)| *t)
        };
        at("last-heard").or_else(|| at("declared"))
    }
}

/// How many failovers a node remembers.
const FAILOVERS_KEPT: usize = 10;

/// How a site sees one site of the cluster (for status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteView {
    pub name: String,
    /// up | down | fenced
    pub state: &'static str,
    pub witness: bool,
    pub last_seen_ms: Option<u64>,
    pub cannot_reach: Vec<String>,
}

/// One site's control logic. Every method takes the local time in ms (a monotonic clock
/// of the caller's, never read here).
#[derive(Debug, Clone)]
pub struct Node {
    cfg: NodeConfig,
    started_ms: u64,
    peers: BTreeMap<String, PeerTrack>,
    lease: Lease,
    reports: BTreeMap<String, Received>,
    /// Per peer: when this site last granted its lease.
    grants: BTreeMap<String, u64>,
    state: ClusterState,
    /// Per service: local time its last move (or this node's start) was applied.
    promoted_at: BTreeMap<String, u64>,
    /// Per site: local time its last up/down change was applied.
    site_changed_at: BTreeMap<String, u64>,
    /// The highest epoch in this site's Raft log (kept current by the caller).
    log_epoch: u64,
    /// The last local time the log was seen not ahead of the applied state.
    log_current_ms: u64,
    /// The local services' health, as the probes see it.
    health: BTreeMap<String, ServiceView>,
    /// This site's verdict per dependency (data sites).
    deps: BTreeMap<String, String>,
    rtt_us: BTreeMap<String, u64>,
    /// This site's own clock runs off the majority's past the bound: it holds no lease.
    clock_odd: bool,
    /// Peers whose clocks run off this site's past the bound (while this one's agrees
    /// with the majority), and since when (local ms): their heartbeats get no promise, and
    /// this site's reports count them unreachable, so the majority moves their primaries.
    clock_odd_peers: BTreeMap<String, u64>,
    fenced: bool,
    /// The site whose entries this site last took as its leader's, and when.
    leader_heard: Option<(String, u64)>,
    /// Raft's current leader as Raft says, and how long ago a quorum acknowledged it when
    /// this site leads.
    raft_leader: Option<String>,
    quorum_ack_ms: Option<u64>,
    elections: bool,
    links_alerted: BTreeSet<(String, String)>,
    /// Links seen cut, and since when (local ms).
    links_since: BTreeMap<(String, String), u64>,
    /// The services whose failover `max_lag` holds back, as last told (leader only).
    held_alerted: BTreeSet<String>,
    /// The latest failovers, newest last.
    failovers: std::collections::VecDeque<FailoverLog>,
    /// Phases seen outside a tick (published), reported with the next tick.
    new_phases: Vec<(String, &'static str, u64)>,
    /// Services whose state here still takes writes though this site no longer acts for
    /// them (a database server being stopped): reported as acting until they let go, so a
    /// successor does not act on "it said so" before then.
    holding: BTreeSet<String>,
    /// What this site's dataset servers are (see [`Node::set_db`]).
    db: DbReport,
}

/// What this site's dataset servers are, for its reports: the services whose server here is
/// a writable primary, and where a server stopped when it handed over in a planned move.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbReport {
    pub primary: Vec<String>,
    /// Per service: (epoch of the move, last WAL position).
    pub handed_over: BTreeMap<String, (u64, u64)>,
    /// Per service whose server here is the primary: the synchronous standbys it wants.
    pub sync_want: BTreeMap<String, Vec<String>>,
    /// Per service: this site's server's WAL position.
    pub lsn: BTreeMap<String, u64>,
    /// Per service: this site's server's role in words (`primary`, `standby`, `fenced`,
    /// `down`, `cloning`, `rewinding`), so that every site, the witness included, judges
    /// a dataset from what its members say of themselves.
    pub role: BTreeMap<String, String>,
    /// Per service whose server here is a standby: how long since the last commit it
    /// replayed was made (ms).
    pub replay_age_ms: BTreeMap<String, u64>,
}

impl Node {
    /// A node starting at `now_ms` with the committed `state` it found on disk.
    pub fn new(cfg: NodeConfig, state: ClusterState, now_ms: u64) -> Self {
        let peers = cfg
            .sites
            .iter()
            .filter(|(n, _)| *n != cfg.me)
            .map(|(n, _)| {
                let track = PeerTrack {
                    counter: Hysteresis::new(cfg.fall, cfg.rise),
                    since_ms: now_ms,
                    last_heard_ms: None,
                };
                (n.clone(), track)
            })
            .collect();
        let lease = Lease::new(cfg.params.lease_ms, cfg.params.quorum);
        // A (re)started process dates every service and site from when it opened its state:
        // not knowing when a promotion happened is never a licence.
        let promoted_at = state.services.keys().map(|k| (k.clone(), now_ms)).collect();
        let site_changed_at = state.sites.keys().map(|k| (k.clone(), now_ms)).collect();
        Node {
            started_ms: now_ms,
            peers,
            lease,
            reports: BTreeMap::new(),
            grants: BTreeMap::new(),
            log_epoch: state.epoch,
            log_current_ms: now_ms,
            state,
            promoted_at,
            site_changed_at,
            health: BTreeMap::new(),
            deps: BTreeMap::new(),
            rtt_us: BTreeMap::new(),
            clock_odd: false,
            clock_odd_peers: BTreeMap::new(),
            fenced: true,
            leader_heard: None,
            raft_leader: None,
            quorum_ack_ms: None,
            elections: true,
            links_alerted: BTreeSet::new(),
            links_since: BTreeMap::new(),
            held_alerted: BTreeSet::new(),
            failovers: std::collections::VecDeque::new(),
            new_phases: Vec::new(),
            holding: BTreeSet::new(),
            db: DbReport::default(),
            cfg,
        }
    }

    pub fn me(&self) -> &str {
        &self.cfg.me
    }

    pub fn params(&self) -> &Params {
        &self.cfg.params
    }

    /// The committed state this node has applied.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn applied_epoch(&self) -> u64 {
        self.state.epoch
    }

    /// The highest epoch in this site's Raft log, as Raft has it now (read at `now_ms`).
    /// The caller keeps it current: a voter must never grant a lease with a log it thinks
    /// older than it is, and a site's own vote for its lease ages from the last moment its
    /// log was seen current (see lease.rs).
    pub fn set_log_epoch(&mut self, epoch: u64, now_ms: u64) {
        self.log_epoch = self.log_epoch.max(epoch);
        self.see_log(now_ms);
    }

    /// Notes `now_ms` as a moment the log was seen current, if it is.
    fn see_log(&mut self, now_ms: u64) {
        if self.log_epoch <= self.state.epoch {
            self.log_current_ms = self.log_current_ms.max(now_ms);
        }
    }

    /// This site's own vote for its lease: None while its log is current, else when it
    /// last was.
    fn own_vote(&self) -> Option<u64> {
        (self.log_epoch > self.state.epoch).then_some(self.log_current_ms)
    }

    /// What the links' clock rates say (measured by the caller from the heartbeats): this
    /// site's own clock is the odd one (it then holds no lease, so it fences itself and
    /// takes no primary role), or these peers' clocks are (they get no promise from here,
    /// and count as unreachable in this site's reports: a site whose clock runs off is
    /// declared down and its primaries move). Leases are sound only for clocks within the
    /// bound of each other.
    pub fn set_clocks(&mut self, own_odd: bool, odd_peers: BTreeSet<String>, now_ms: u64) {
        self.clock_odd = own_odd;
        self.clock_odd_peers.retain(|p, _| odd_peers.contains(p));
        for p in odd_peers {
            self.clock_odd_peers.entry(p).or_insert(now_ms);
        }
    }

    /// What this site's dataset servers are now (reported with every heartbeat).
    pub fn set_db(&mut self, db: DbReport) {
        self.db = db;
    }

    /// Where `site`'s dataset server of `service` stopped when it handed over in the move
    /// of `epoch` (its fresh report, or this site's own).
    pub fn handed_over(&self, site: &str, service: &str, epoch: u64, now_ms: u64) -> Option<u64> {
        let map = if site == self.cfg.me {
            &self.db.handed_over
        } else {
            &self.fresh(site, now_ms)?.report.handed_over
        };
        map.get(service)
            .filter(|(e, _)| *e >= epoch)
            .map(|(_, lsn)| *lsn)
    }

    /// An operator's request, checked against the committed state and what this site
    /// observes: the proposal to commit, or why not (call on the leader).
    pub fn request(&self, req: &Request, now_ms: u64) -> Result<Proposal, Refusal> {
        let obs = self.observations();
        let p = &self.cfg.params;
        let d = match req {
            Request::Switchover { service, to } => {
                policy::switchover(p, &self.state, &obs, service, to, now_ms)?
            }
            Request::Maintenance { site, on } => {
                policy::maintenance(p, &self.state, &obs, site, *on, now_ms)?
            }
            Request::IncidentNote { .. } => policy::incident_note(&self.state, req)?,
        };
        Ok(Proposal {
            base_epoch: self.state.epoch,
            decisions: vec![d],
            at_ms: 0,
            silent_ms: Default::default(),
        })
    }

    /// Whether `site` acts as primary of `service` at `epoch` or later, as far as this site
    /// knows (its own acting, or a fresh report), and, with `db`, its dataset server is a
    /// writable primary too.
    pub fn acts(&self, site: &str, service: &str, epoch: u64, db: bool, now_ms: u64) -> bool {
        if site == self.cfg.me {
            return self.state.epoch >= epoch
                && self.acting(now_ms).iter().any(|s| s == service)
                && (!db || self.db.primary.iter().any(|s| s == service));
        }
        self.fresh(site, now_ms).is_some_and(|r| {
            r.report.applied_epoch >= epoch
                && r.report.acting.iter().any(|s| s == service)
                && (!db || r.report.db_primary.iter().any(|s| s == service))
        })
    }

    /// The services whose local state still takes writes (see `holding`).
    pub fn set_holding(&mut self, holding: BTreeSet<String>) {
        self.holding = holding;
    }

    pub fn set_health(&mut self, health: BTreeMap<String, ServiceView>) {
        self.health = health;
    }

    /// This site's verdict per dependency, for its reports.
    /// This site's round trips to the DNS probe networks, sent in its reports.
    pub fn set_rtt(&mut self, rtt_us: BTreeMap<String, u64>) {
        self.rtt_us = rtt_us;
    }

    /// Every site's latest round trips to the DNS probe networks (reports no older than
    /// `max_age_ms`), this site's included.
    pub fn rtts(&self, now_ms: u64, max_age_ms: u64) -> Vec<(String, BTreeMap<String, u64>)> {
        let mut out: Vec<(String, BTreeMap<String, u64>)> = self
            .reports
            .values()
            .filter(|r| {
                r.report.site != self.cfg.me && now_ms.saturating_sub(r.at_ms) <= max_age_ms
            })
            .map(|r| (r.report.site.clone(), r.report.rtt_us.clone()))
            .collect();
        out.push((self.cfg.me.clone(), self.rtt_us.clone()));
        out
    }

    pub fn set_deps(&mut self, deps: BTreeMap<String, String>) {
        self.deps = deps;
    }

    /// Each site's verdict per dependency: this site's own, and the fresh reports'.
    pub fn deps_seen(&self, now_ms: u64) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        if !self.deps.is_empty() {
            out.insert(self.cfg.me.clone(), self.deps.clone());
        }
        for site in self.reports.keys() {
            if *site == self.cfg.me {
                continue;
            }
            if let Some(r) = self
                .fresh_report(site, now_ms)
                .filter(|r| !r.deps.is_empty())
            {
                out.insert(site.clone(), r.deps.clone());
            }
        }
        out
    }

    /// Dependency changes to commit: each dependency's worst verdict among the data sites
    /// that report one (`unknown` counts as nothing), against the committed state.
    fn dep_decisions(&self, now_ms: u64) -> Vec<Decision> {
        let seen = self.deps_seen(now_ms);
        let mut names: BTreeSet<&String> = seen.values().flat_map(|m| m.keys()).collect();
        names.extend(self.state.deps.keys());
        let mut out = Vec::new();
        for name in names {
            let mut worst = "up";
            let mut by: Vec<String> = Vec::new();
            let mut any = false;
            for (site, m) in &seen {
                let Some(v) = m.get(name) else { continue };
                let rank = |x: &str| match x {
                    "down" => 2,
                    "degraded" => 1,
                    _ => 0,
                };
                if v != "unknown" {
                    any = true;
                }
                if rank(v) > rank(worst) {
                    worst = if v == "down" { "down" } else { "degraded" };
                    by.clear();
                }
                if rank(v) == rank(worst) && worst != "up" {
                    by.push(site.clone());
                }
            }
            if !any {
                continue;
            }
            let now = self.state.deps.get(name);
            let same = match now {
                None => worst == "up",
                Some(c) => c.state == worst && c.seen_by == by,
            };
            if !same {
                out.push(Decision::Dependency {
                    name: name.clone(),
                    state: worst.to_string(),
                    seen_by: by,
                });
            }
        }
        out
    }

    /// Raft's view: the leader's name, and (when this site leads) how long ago a quorum
    /// acknowledged it.
    pub fn set_raft(&mut self, leader: Option<String>, quorum_ack_ms: Option<u64>) {
        self.raft_leader = leader;
        self.quorum_ack_ms = quorum_ack_ms;
    }

    /// `from` sent Raft entries (or a heartbeat) this site took as its leader's.
    pub fn heard_leader(&mut self, from: &str, now_ms: u64) {
        self.leader_heard = Some((from.to_string(), now_ms));
    }

    /// A committed change applied (or a snapshot installed): the new state and the
    /// decisions that took effect.
    pub fn applied(&mut self, state: &ClusterState, decisions: &[Decision], now_ms: u64) {
        if state.epoch < self.state.epoch {
            return;
        }
        for d in decisions {
            match d {
                Decision::PrimaryMove {
                    service,
                    from,
                    to,
                    reason,
                    ..
                } => {
                    self.promoted_at.insert(service.clone(), now_ms);
                    // Only a site that takes part when the move is committed records its
                    // phases: one the move counts down, or that learns of it while
                    // catching up (after a restart), would time its catching up.
                    let counted_down = state.sites.get(&self.cfg.me) == Some(&SiteState::Down);
                    if counted_down || !self.hears_majority(now_ms) {
                        continue;
                    }
                    let mut phases = Vec::new();
                    let lost = from
                        .as_ref()
                        .filter(|f| **f != self.cfg.me)
                        .and_then(|f| self.peers.get(f))
                        .filter(|t| t.counter.state() == Health::Down);
                    if let Some(heard) = lost.and_then(|t| t.last_heard_ms) {
                        phases.push(("last-heard", heard));
                    }
                    phases.push(("declared", now_ms));
                    let is_async = self
                        .cfg
                        .params
                        .services
                        .iter()
                        .any(|s| s.name == *service && s.max_lag_bytes.is_some());
                    let last_lsn = |site: &str| {
                        self.reports
                            .get(site)
                            .and_then(|r| r.report.db_lsn.get(service).copied())
                    };
                    let failover = *reason == crate::state::MoveReason::Failover;
                    let wal_behind_bytes = match (from, is_async && failover) {
                        (Some(f), true) => last_lsn(f)
                            .zip(last_lsn(to))
                            .map(|(old, new)| old.saturating_sub(new)),
                        _ => None,
                    };
                    if self.failovers.len() >= FAILOVERS_KEPT {
                        self.failovers.pop_front();
                    }
                    self.failovers.push_back(FailoverLog {
                        service: service.clone(),
                        epoch: state.epoch,
                        from: from.clone(),
                        to: to.clone(),
                        reason: *reason,
                        phases,
                        wal_behind_bytes,
                    });
                }
                Decision::SiteDown { site }
                | Decision::SiteUp { site }
                | Decision::Maintenance { site, .. } => {
                    self.site_changed_at.insert(site.clone(), now_ms);
                }
                Decision::Active { .. }
                | Decision::SyncSet { .. }
                | Decision::IncidentNote { .. }
                | Decision::HistoryStart {}
                | Decision::Dependency { .. } => {}
            }
        }
        // A jump without decisions (a snapshot): whatever changed dates from now.
        if decisions.is_empty() && state.epoch > self.state.epoch {
            for (name, svc) in &state.services {
                if self.state.services.get(name).map(|s| s.epoch) != Some(svc.epoch) {
                    self.promoted_at.insert(name.clone(), now_ms);
                }
            }
            for (name, s) in &state.sites {
                if self.state.sites.get(name) != Some(s) {
                    self.site_changed_at.insert(name.clone(), now_ms);
                }
            }
        }
        self.state = state.clone();
        self.log_epoch = self.log_epoch.max(state.epoch);
        self.see_log(now_ms);
    }

    /// A heartbeat to `peer` sent at `sent_ms` was answered; the peer's reachability when
    /// it changed.
    pub fn on_answer(
        &mut self,
        peer: &str,
        sent_ms: u64,
        answer: Answer,
        now_ms: u64,
    ) -> Option<Health> {
        self.lease
            .record_answer(peer, sent_ms, answer.log_epoch, self.state.epoch);
        self.record_probe(peer, true, now_ms)
    }

    /// A heartbeat to `peer` got no (authentic) answer in time; the peer's reachability
    /// when it changed.
    pub fn on_miss(&mut self, peer: &str, now_ms: u64) -> Option<Health> {
        self.record_probe(peer, false, now_ms)
    }

    /// Whether this site hears a majority now: fresh reports (its own included) from at
    /// least a quorum of sites.
    pub fn hears_majority(&self, now_ms: u64) -> bool {
        let fresh = self
            .reports
            .values()
            .filter(|r| now_ms.saturating_sub(r.at_ms) <= self.cfg.params.report_ttl_ms)
            .count();
        fresh >= self.cfg.params.quorum
    }

    /// Whether `peer` is reachable now, as the rise/fall counter has it.
    pub fn peer_health(&self, peer: &str) -> Health {
        self.peers
            .get(peer)
            .map_or(Health::Unknown, |t| t.counter.state())
    }

    /// Since when (local ms) this site's probes have counted `peer` unreachable; None while
    /// they count it reachable.
    pub fn unreachable_since(&self, peer: &str) -> Option<u64> {
        self.peers
            .get(peer)
            .filter(|t| t.counter.state() == Health::Down)
            .map(|t| t.since_ms)
    }

    fn record_probe(&mut self, peer: &str, ok: bool, now_ms: u64) -> Option<Health> {
        let t = self.peers.get_mut(peer)?;
        if ok {
            t.last_heard_ms = Some(now_ms);
        }
        let changed = t.counter.record(ok);
        if changed.is_some() {
            t.since_ms = now_ms;
        }
        changed
    }

    /// A peer's heartbeat: its report is kept, and the answer is a grant of its lease when
    /// this site's log is not ahead of what the peer has applied.
    /// A site whose clock runs off the bound gets an answer with the largest log epoch
    /// there is: no site counts it for its lease (nor did any version before this rule).
    pub fn on_report(&mut self, report: Report, now_ms: u64) -> Answer {
        let odd = self.clock_odd_peers.contains_key(&report.site);
        let answer = Answer {
            log_epoch: if odd { u64::MAX } else { self.log_epoch },
            applied_epoch: self.state.epoch,
        };
        if self.log_epoch <= report.applied_epoch && !odd {
            self.grants.insert(report.site.clone(), now_ms);
        }
        self.reports.insert(
            report.site.clone(),
            Received {
                at_ms: now_ms,
                report,
            },
        );
        answer
    }

    /// The lease ends at this local time (None: not held at all).
    pub fn lease_expires(&self) -> Option<u64> {
        if self.clock_odd {
            return None;
        }
        self.lease.expires_at(self.own_vote())
    }

    pub fn holds_lease(&self, now_ms: u64) -> bool {
        !self.clock_odd && self.lease.holds(now_ms, self.own_vote())
    }

    /// How long since this site last granted each peer's lease (since it started, for a
    /// peer it has not granted since).
    fn grant_ages(&self, now_ms: u64) -> BTreeMap<String, u64> {
        self.peers
            .keys()
            .map(|p| {
                let at = self.grants.get(p).copied().unwrap_or(self.started_ms);
                (p.clone(), now_ms.saturating_sub(at))
            })
            .collect()
    }

    fn promise_ms(&self) -> u64 {
        self.cfg.params.lease_ms + self.cfg.params.margin_ms
    }

    fn fresh(&self, site: &str, now_ms: u64) -> Option<&Received> {
        self.reports
            .get(site)
            .filter(|r| now_ms.saturating_sub(r.at_ms) <= self.cfg.params.report_ttl_ms)
    }

    /// Whether `old` can no longer act as primary of `service`, moved from it at `epoch`
    /// (see "Acting as primary" in the module header).
    fn predecessor_gone(&self, service: &str, old: &str, epoch: u64, now_ms: u64) -> bool {
        if old == self.cfg.me {
            return true;
        }
        // It said so.
        if let Some(r) = self.fresh(old, now_ms) {
            if r.report.applied_epoch >= epoch && !r.report.acting.iter().any(|s| s == service) {
                return true;
            }
        }
        // A majority's promises to it have run out.
        let promise = self.promise_ms();
        let mut out = 0;
        if self.state.epoch >= epoch
            && self.grant_ages(now_ms).get(old).copied().unwrap_or(0) >= promise
        {
            out += 1;
        }
        for (site, r) in &self.reports {
            if *site == self.cfg.me
                || now_ms.saturating_sub(r.at_ms) > self.cfg.params.report_ttl_ms
            {
                continue;
            }
            if r.report.applied_epoch >= epoch
                && r.report
                    .grant_age_ms
                    .get(old)
                    .is_some_and(|age| *age >= promise)
            {
                out += 1;
            }
        }
        out >= self.cfg.params.quorum
    }

    /// The services this site acts as primary of at `now_ms`.
    pub fn acting(&self, now_ms: u64) -> Vec<String> {
        if !self.holds_lease(now_ms) {
            return Vec::new();
        }
        self.state
            .services
            .iter()
            .filter(|(_, s)| s.primary.as_deref() == Some(self.cfg.me.as_str()))
            .filter(|(name, s)| {
                let Some(at) = self.promoted_at.get(*name) else {
                    return false;
                };
                if now_ms >= at.saturating_add(s.hold_ms) {
                    return true;
                }
                match s.from.as_deref() {
                    None => s.hold_ms == 0,
                    Some(old) => self.predecessor_gone(name, old, s.epoch, now_ms),
                }
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The services this site acts as primary of and will still act for `lead_ms` from now
    /// on the lease it holds: what a server that must stop before the lease ends (a
    /// database) may act for.
    pub fn acting_ahead(&self, now_ms: u64, lead_ms: u64) -> Vec<String> {
        if self
            .lease_expires()
            .is_some_and(|until| until > now_ms.saturating_add(lead_ms))
        {
            self.acting(now_ms)
        } else {
            Vec::new()
        }
    }

    /// The leader this site heard from within the shortest election timeout: itself while
    /// it leads with a quorum's recent acknowledgement, else the last site whose entries it
    /// took as its leader's.
    pub fn leader_heard(&self, now_ms: u64) -> Option<String> {
        let within = self.cfg.election_timeout_min_ms;
        if self.raft_leader.as_deref() == Some(self.cfg.me.as_str()) {
            return self
                .quorum_ack_ms
                .is_some_and(|ms| ms <= within)
                .then(|| self.cfg.me.clone());
        }
        self.leader_heard
            .as_ref()
            .filter(|(_, at)| now_ms.saturating_sub(*at) <= within)
            .map(|(site, _)| site.clone())
    }

    /// The leader as this site knows it: Raft's word, else what fresh reports say (a site
    /// cut off from the leader still reaches a peer that hears it).
    pub fn leader(&self, now_ms: u64) -> Option<String> {
        self.raft_leader.clone().or_else(|| {
            self.reports
                .values()
                .filter(|r| now_ms.saturating_sub(r.at_ms) <= self.cfg.params.report_ttl_ms)
                .find_map(|r| r.report.leader.clone())
        })
    }

    pub fn is_leader(&self) -> bool {
        self.raft_leader.as_deref() == Some(self.cfg.me.as_str())
    }

    /// This site's report, sent with every heartbeat.
    pub fn report(&self, now_ms: u64) -> Report {
        let peers = self
            .peers
            .iter()
            .map(|(name, t)| {
                let view = match self.clock_odd_peers.get(name) {
                    Some(since) => PeerView {
                        reachable: Health::Down,
                        for_ms: now_ms.saturating_sub(*since),
                        last_heard_ms: Some(now_ms.saturating_sub(*since)),
                    },
                    None => PeerView {
                        reachable: t.counter.state(),
                        for_ms: now_ms.saturating_sub(t.since_ms),
                        last_heard_ms: t.last_heard_ms.map(|h| now_ms.saturating_sub(h)),
                    },
                };
                (name.clone(), view)
            })
            .collect();
        Report {
            site: self.cfg.me.clone(),
            applied_epoch: self.state.epoch,
            fenced: !self.holds_lease(now_ms),
            peers,
            services: self.health.clone(),
            acting: {
                let mut acting = self.acting(now_ms);
                for s in &self.holding {
                    if !acting.contains(s) {
                        acting.push(s.clone());
                    }
                }
                acting
            },
            leader: self.leader_heard(now_ms),
            grant_age_ms: self.grant_ages(now_ms),
            db_primary: self.db.primary.clone(),
            handed_over: self.db.handed_over.clone(),
            db_sync: self.db.sync_want.clone(),
            db_lsn: self.db.lsn.clone(),
            db_role: self.db.role.clone(),
            db_replay_age_ms: self.db.replay_age_ms.clone(),
            deps: self.deps.clone(),
            rtt_us: self.rtt_us.clone(),
        }
    }

    /// Leader stickiness: a site that does not lead but hears a peer that hears a leader
    /// starts no election (it could not win one, and each try would raise the term that
    /// deposes the leader once the link heals). Reports come every probe: one two probes
    /// old is the latest word on the leader.
    fn elections_allowed(&self, now_ms: u64) -> bool {
        if self.is_leader() {
            return true;
        }
        let fresh = 2 * self.cfg.probe_ms;
        !self.reports.values().any(|r| {
            r.report.site != self.cfg.me
                && now_ms.saturating_sub(r.at_ms) <= fresh
                && r.report.leader.as_ref().is_some_and(|l| *l != self.cfg.me)
        })
    }

    /// A leader is stepping down: elections must not be held back by its old reports.
    pub fn allow_elections(&mut self) {
        self.elections = true;
    }

    /// Sites this one cannot reach (its probes say so) while another site, in a fresh
    /// report, says it can: the links between are cut, the sites are not lost.
    pub fn cut_from_here(&self, now_ms: u64) -> BTreeSet<String> {
        let reached_by_another = |site: &str| {
            self.reports.values().any(|r| {
                r.report.site != self.cfg.me
                    && r.report.site != site
                    && now_ms.saturating_sub(r.at_ms) <= self.cfg.params.report_ttl_ms
                    && r.report
                        .peers
                        .get(site)
                        .is_some_and(|p| p.reachable == Health::Up)
            })
        };
        self.peers
            .iter()
            .filter(|(_, t)| t.counter.state() == Health::Down)
            .map(|(n, _)| n.clone())
            .filter(|n| reached_by_another(n))
            .collect()
    }

    /// Pairs of sites that cannot reach each other, as the fresh reports (this site's own
    /// view included) say, leaving out sites the cluster declared down.
    pub fn cut_links(&self, now_ms: u64) -> BTreeSet<(String, String)> {
        let mut views: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        views.insert(
            &self.cfg.me,
            self.peers
                .iter()
                .filter(|(_, t)| t.counter.state() == Health::Down)
                .map(|(n, _)| n.as_str())
                .collect(),
        );
        for r in self.reports.values() {
            if r.report.site == self.cfg.me
                || now_ms.saturating_sub(r.at_ms) > self.cfg.params.report_ttl_ms
            {
                continue;
            }
            let down = r
                .report
                .peers
                .iter()
                .filter(|(_, p)| p.reachable == Health::Down)
                .map(|(n, _)| n.as_str())
                .collect();
            views.insert(&r.report.site, down);
        }
        let lost = |s: &str| self.state.sites.get(s) == Some(&SiteState::Down);
        // Heard from: its own report is fresh here, or a fresh report says it is reachable.
        let reached: BTreeSet<&str> = self
            .reports
            .values()
            .filter(|r| now_ms.saturating_sub(r.at_ms) <= self.cfg.params.report_ttl_ms)
            .flat_map(|r| {
                r.report
                    .peers
                    .iter()
                    .filter(|(_, p)| p.reachable == Health::Up)
                    .map(|(n, _)| n.as_str())
            })
            .collect();
        let alive = |s: &str| views.contains_key(s) || reached.contains(s);
        let mut pairs = BTreeSet::new();
        for (from, unreachable) in &views {
            for to in unreachable {
                // One side saying so is a cut only while the other side is alive.
                if lost(from) || lost(to) || !alive(to) {
                    continue;
                }
                let (a, b) = if from < to { (from, to) } else { (to, from) };
                pairs.insert((a.to_string(), b.to_string()));
            }
        }
        pairs
    }

    /// Every site as this one sees it: its own state from its lease, the others' from the
    /// committed state and their latest fresh report.
    pub fn site_views(&self, now_ms: u64) -> Vec<SiteView> {
        let fenced = !self.holds_lease(now_ms);
        let cut = self.cut_links(now_ms);
        self.cfg
            .sites
            .iter()
            .map(|(name, witness)| {
                let committed_down = self.state.sites.get(name) == Some(&SiteState::Down);
                let state = if *name == self.cfg.me {
                    if fenced {
                        "fenced"
                    } else if committed_down {
                        "down"
                    } else {
                        "up"
                    }
                } else if committed_down {
                    "down"
                } else if self.fresh(name, now_ms).is_some_and(|r| r.report.fenced) {
                    "fenced"
                } else {
                    "up"
                };
                let state = if state == "up" && self.state.maintenance.contains(name) {
                    "maintenance"
                } else {
                    state
                };
                let last_seen_ms = if *name == self.cfg.me {
                    Some(0)
                } else {
                    self.peers
                        .get(name)
                        .and_then(|t| t.last_heard_ms)
                        .map(|h| now_ms.saturating_sub(h))
                };
                let cannot_reach = cut
                    .iter()
                    .filter_map(|(a, b)| match (a == name, b == name) {
                        (true, _) => Some(b.clone()),
                        (_, true) => Some(a.clone()),
                        _ => None,
                    })
                    .collect();
                SiteView {
                    name: name.clone(),
                    state,
                    witness: *witness,
                    last_seen_ms,
                    cannot_reach,
                }
            })
            .collect()
    }

    /// The fresh reports of the sites (for status: who acts as primary where).
    pub fn fresh_report(&self, site: &str, now_ms: u64) -> Option<&Report> {
        self.fresh(site, now_ms).map(|r| &r.report)
    }

    /// The observations the policy decides on.
    fn observations(&self) -> Observations {
        let settles_at_ms = self
            .promoted_at
            .iter()
            .filter_map(|(svc, t)| Some((svc.clone(), t + self.state.services.get(svc)?.hold_ms)))
            .collect();
        Observations {
            reports: self.reports.clone(),
            settles_at_ms,
            site_changed_at_ms: self.site_changed_at.clone(),
        }
    }

    /// What the leader proposes now, if anything (call on the leader only).
    pub fn propose(&self, now_ms: u64) -> Option<Proposal> {
        let mut decisions = decide(&self.cfg.params, &self.state, &self.observations(), now_ms);
        decisions.extend(self.dep_decisions(now_ms));
        // A new cluster's first entry dates its history, so a quiet cluster has uptime too.
        if decisions.is_empty() && self.state.epoch == 0 && self.state.history.since_ms.is_none() {
            decisions.push(Decision::HistoryStart {});
        }
        (!decisions.is_empty()).then_some(Proposal {
            base_epoch: self.state.epoch,
            decisions,
            at_ms: 0,
            silent_ms: Default::default(),
        })
    }

    /// The periodic step (each probe interval): this site's own report joins the others,
    /// and what changed is returned for the agent to carry out.
    pub fn tick(&mut self, now_ms: u64) -> Tick {
        let mut out = Tick::default();
        let own = self.report(now_ms);
        self.reports.insert(
            self.cfg.me.clone(),
            Received {
                at_ms: now_ms,
                report: own,
            },
        );
        let fenced = !self.holds_lease(now_ms);
        if fenced != self.fenced {
            self.fenced = fenced;
            out.fenced_changed = Some(fenced);
        }
        let allow = self.elections_allowed(now_ms);
        if allow != self.elections {
            self.elections = allow;
            out.elections_changed = Some(allow);
        }
        if self.is_leader() {
            // A cut is told once it has lasted past detection: a site lost whole, or one
            // still starting, looks cut for a moment to each other site (that was a warning
            // and two alerts at every start and every site loss).
            let cut = self.cut_links(now_ms);
            self.links_since.retain(|pair, _| cut.contains(pair));
            for pair in &cut {
                self.links_since.entry(pair.clone()).or_insert(now_ms);
            }
            let settled = self.cfg.params.detection_ms;
            let now: BTreeSet<(String, String)> = self
                .links_since
                .iter()
                .filter(|(_, since)| now_ms.saturating_sub(**since) >= settled)
                .map(|(pair, _)| pair.clone())
                .collect();
            out.links_cut = now.difference(&self.links_alerted).cloned().collect();
            out.links_restored = self.links_alerted.difference(&now).cloned().collect();
            self.links_alerted = now;
            let (_, held) =
                decide_and_hold(&self.cfg.params, &self.state, &self.observations(), now_ms);
            let names: BTreeSet<String> = held.iter().map(|h| h.service.clone()).collect();
            out.failovers_held = held
                .into_iter()
                .filter(|h| !self.held_alerted.contains(&h.service))
                .collect();
            self.held_alerted = names;
        }
        self.follow_failovers(now_ms);
        out.phases = std::mem::take(&mut self.new_phases);
        out
    }

    /// Notes the phases of open failovers that this tick shows.
    fn follow_failovers(&mut self, now_ms: u64) {
        let acting = self.acting(now_ms);
        let mut seen = Vec::new();
        for (i, f) in self.failovers.iter().enumerate() {
            if f.to == self.cfg.me {
                let gone = match &f.from {
                    None => true,
                    Some(old) => {
                        let hold = self.state.services.get(&f.service).map_or(0, |s| s.hold_ms);
                        let at = self.promoted_at.get(&f.service).copied().unwrap_or(now_ms);
                        now_ms >= at.saturating_add(hold)
                            || self.predecessor_gone(&f.service, old, f.epoch, now_ms)
                    }
                };
                if gone && !f.has("old-lease-over") {
                    seen.push((i, "old-lease-over"));
                }
                if acting.contains(&f.service) && !f.has("acting") {
                    seen.push((i, "acting"));
                }
                if self.db.primary.contains(&f.service) && !f.has("db-promoted") {
                    seen.push((i, "db-promoted"));
                }
            } else if let Some(r) = self
                .fresh(&f.to, now_ms)
                .filter(|r| r.report.applied_epoch >= f.epoch)
            {
                if !f.has("acting") && r.report.acting.contains(&f.service) {
                    seen.push((i, "acting"));
                }
                if !f.has("db-promoted") && r.report.db_primary.contains(&f.service) {
                    seen.push((i, "db-promoted"));
                }
            }
        }
        for (i, phase) in seen {
            self.note_phase(i, phase, now_ms);
        }
    }

    fn note_phase(&mut self, i: usize, phase: &'static str, now_ms: u64) {
        let Some(f) = self.failovers.get_mut(i) else {
            return;
        };
        f.phases.push((phase, now_ms));
        let since = f.start_ms().map_or(0, |s| now_ms.saturating_sub(s));
        self.new_phases.push((f.service.clone(), phase, since));
    }

    /// This site now publishes routing of `epoch` or later: its DNS zone
    /// (`dns-published`, every service) or a service's gateway route
    /// (`gateway-switched`).
    pub fn published(
        &mut self,
        phase: &'static str,
        service: Option<&str>,
        epoch: u64,
        now_ms: u64,
    ) {
        let due: Vec<usize> = self
            .failovers
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                f.epoch <= epoch && service.is_none_or(|s| s == f.service) && !f.has(phase)
            })
            .map(|(i, _)| i)
            .collect();
        for i in due {
            self.note_phase(i, phase, now_ms);
        }
    }

    /// The latest failovers this site saw, newest first.
    pub fn failovers(&self) -> impl Iterator<Item = &FailoverLog> {
        self.failovers.iter().rev()
    }
}

#[cfg(test)]
mod tests;
