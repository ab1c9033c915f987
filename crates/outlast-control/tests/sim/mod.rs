//! A deterministic simulation of the control plane, shared by the property tests beside it
//! (one property a file).
//!
//! What is real: every site runs the [`Node`] the agents run (peer tracking, reports,
//! leases and promises, acting, leader stickiness, the policy through `Node::propose`) and
//! [`ClusterState::apply`]. What is modelled: the network (per-direction links, random
//! delays, random loss, drops at cuts), processes (crash with the log kept, restart with
//! memory lost, pause/resume), the local probes of backends, and Raft, abstracted to its
//! guarantees: a leader is elected only by a majority whose logs are not ahead of its own
//! (and only among sites that allow elections), an entry commits once a majority holds it,
//! and every site applies committed entries in order. Each site has its own clock running
//! at a rate a few percent off true time.
//!
//! Time advances in steps of [`STEP_MS`]; everything is driven by one seeded RNG, so a
//! failing seed replays exactly.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};

use outlast_control::policy::ServiceParams;
use outlast_control::{
    Answer, ClusterState, Decision, Node, NodeConfig, Params, Proposal, Report, ServiceState,
    ServiceView, SiteState,
};
use outlast_core::config::{Failback, Mode};
use outlast_core::{Health, Hysteresis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const STEP_MS: u64 = 5;
pub const SERVICE: &str = "db";

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub sites: Vec<String>,
    /// Sites with backends for the service, in config order.
    pub backends: Vec<String>,
    pub preferred: String,
    pub probe_ms: u64,
    pub fall: u32,
    pub rise: u32,
    pub grace_ms: u64,
    pub lease_ms: u64,
    pub failback_after_ms: u64,
    /// Largest clock-rate error, as a fraction (0.05 = 5%).
    pub clock_jitter: f64,
    /// Chance that a message is lost on the way.
    pub loss: f64,
    /// Each link's one-way delay is drawn once from 0 to this (ms), the same both ways:
    /// sites far apart. 0 keeps the near-sites model (and every seed's draws) as it was.
    pub max_link_ms: u64,
    /// Each message's share of its link's delay added or taken at random (0.2 = ±20%).
    pub link_jitter: f64,
    /// `[timing] max_rtt`: the heartbeats' longest timeout follows from it.
    pub max_rtt_ms: u64,
}

impl SimConfig {
    /// The timing: probe 100ms, fall 3, grace 500ms, lease 1s.
    pub fn three_sites() -> Self {
        SimConfig {
            sites: vec!["east".into(), "west".into(), "witness".into()],
            backends: vec!["east".into(), "west".into()],
            preferred: "east".into(),
            probe_ms: 100,
            fall: 3,
            rise: 3,
            grace_ms: 500,
            lease_ms: 1000,
            failback_after_ms: 3000,
            clock_jitter: 0.05,
            loss: 0.01,
            max_link_ms: 0,
            link_jitter: 0.0,
            max_rtt_ms: 250,
        }
    }

    pub fn five_sites() -> Self {
        SimConfig {
            sites: ["a", "b", "c", "d", "e"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            backends: vec!["a".into(), "b".into(), "c".into()],
            preferred: "a".into(),
            ..Self::three_sites()
        }
    }

    pub fn quorum(&self) -> usize {
        self.sites.len() / 2 + 1
    }

    pub fn margin_ms(&self) -> u64 {
        // The same formula as outlast_core::config::Timing::lease_margin.
        self.lease_ms / 8 + self.probe_ms
    }

    pub fn detection_ms(&self) -> u64 {
        self.probe_ms * u64::from(self.fall) + self.grace_ms
    }

    /// The agents' timing, for what follows from it (a heartbeat's timeout).
    pub fn timing(&self) -> outlast_core::config::Timing {
        let ms = std::time::Duration::from_millis;
        outlast_core::config::Timing {
            probe_interval: ms(self.probe_ms),
            fall: self.fall,
            rise: self.rise,
            grace: ms(self.grace_ms),
            lease: ms(self.lease_ms),
            failback_after: ms(self.failback_after_ms),
            max_rtt: ms(self.max_rtt_ms),
        }
    }

    pub fn params(&self) -> Params {
        Params {
            sites: self.sites.clone(),
            quorum: self.quorum(),
            grace_ms: self.grace_ms,
            detection_ms: self.detection_ms(),
            lease_ms: self.lease_ms,
            margin_ms: self.margin_ms(),
            failback_after_ms: self.failback_after_ms,
            report_ttl_ms: (self.probe_ms * 4).max(self.lease_ms),
            services: vec![ServiceParams {
                name: SERVICE.into(),
                mode: Mode::PrimaryStandby,
                preferred: Some(self.preferred.clone()),
                failback: Failback::Auto,
                sites: self.backends.clone(),
                max_lag_bytes: None,
            }],
        }
    }

    /// What a site's node is told: the same as an agent's, from this config.
    pub fn node_config(&self, me: &str) -> NodeConfig {
        NodeConfig {
            me: me.to_string(),
            sites: self
                .sites
                .iter()
                .map(|s| {
                    (
                        s.clone(),
                        !self.backends.contains(s) && s != &self.preferred,
                    )
                })
                .collect(),
            params: self.params(),
            fall: self.fall,
            rise: self.rise,
            probe_ms: self.probe_ms,
            election_timeout_min_ms: 300,
        }
    }

    fn initial_state(&self) -> ClusterState {
        let mut services = BTreeMap::new();
        services.insert(
            SERVICE.to_string(),
            ServiceState {
                mode: Mode::PrimaryStandby,
                primary: Some(self.preferred.clone()),
                active_sites: vec![self.preferred.clone()],
                epoch: 0,
                hold_ms: 0,
                from: None,
                reason: None,
                sync_set: None,
            },
        );
        ClusterState {
            epoch: 0,
            sites: self
                .sites
                .iter()
                .map(|s| (s.clone(), SiteState::Up))
                .collect(),
            services,
            maintenance: Default::default(),
            history: Default::default(),
            deps: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Crash(usize),
    Restart(usize),
    Pause(usize),
    Resume(usize),
    /// Cut every link to and from a site.
    Isolate(usize),
    /// Cut both directions between two sites.
    Cut(usize, usize),
    /// Cut one direction only (from, to).
    CutOneWay(usize, usize),
    HealAll,
    BackendDown(usize),
    BackendUp(usize),
}

#[derive(Clone)]
struct Entry {
    term: u64,
    proposal: Option<Proposal>,
}

struct Site {
    name: String,
    alive: bool,
    paused: bool,
    rate: f64,
    offset: f64,
    phase: u64,
    /// The control logic the agents run.
    node: Node,
    /// Heartbeats sent and not answered yet, by request id: (peer, local ms by which it
    /// counts as missed). As in the agent, several may be in flight to one peer, and an
    /// answer after its deadline still counts (the lease uses the send time).
    pending: BTreeMap<u64, (String, u64)>,
    /// The last round trips measured to each peer (local ms), for the timeout.
    rtts: BTreeMap<String, VecDeque<u64>>,
    /// Whether this site may start elections (the node's word).
    elections: bool,
    log: Vec<Entry>,
    known_term: u64,
    commit: usize,
    applied: usize,
    /// The committed state as the site's store holds it (kept across restarts).
    state: ClusterState,
    has_backends: bool,
    backend_ok: bool,
    svc_counter: Hysteresis,
    svc_since: u64,
}

impl Msg {
    /// (from, to).
    fn ends(&self) -> (usize, usize) {
        match self {
            Msg::HbReq { from, to, .. }
            | Msg::HbResp { from, to, .. }
            | Msg::Append { from, to, .. }
            | Msg::AppendAck { from, to, .. } => (*from, *to),
        }
    }
}

enum Msg {
    HbReq {
        from: usize,
        to: usize,
        id: u64,
        sent_local: u64,
        report: Box<Report>,
    },
    HbResp {
        from: usize,
        to: usize,
        id: u64,
        sent_local: u64,
        answer: Answer,
    },
    Append {
        from: usize,
        to: usize,
        term: u64,
        log: Vec<Entry>,
        commit: usize,
    },
    AppendAck {
        from: usize,
        to: usize,
        term: u64,
        len: usize,
    },
}

pub struct Sim {
    pub cfg: SimConfig,
    pub seed: u64,
    rng: StdRng,
    now: u64,
    sites: Vec<Site>,
    links: Vec<Vec<bool>>,
    /// Each link's one-way delay (ms).
    base: Vec<Vec<u64>>,
    msgs: Vec<(u64, Msg)>,
    faults: Vec<(u64, Fault)>,
    leader: Option<usize>,
    term: u64,
    leader_lost_at: Option<u64>,
    election_timeout: u64,
    match_len: Vec<usize>,
    next_id: u64,
    sent_len: usize,
    /// Every decision committed, with the global time it was first applied anywhere.
    pub committed: Vec<(u64, Decision)>,
    committed_len: usize,
    trace: VecDeque<String>,
}

impl Sim {
    pub fn new(cfg: SimConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let initial = cfg.initial_state();
        let n = cfg.sites.len();
        let sites = cfg
            .sites
            .iter()
            .map(|name| Site {
                name: name.clone(),
                alive: true,
                paused: false,
                rate: 1.0 + rng.gen_range(-cfg.clock_jitter..=cfg.clock_jitter),
                offset: rng.gen_range(0.0..100_000.0),
                phase: rng.gen_range(0..cfg.probe_ms / STEP_MS) * STEP_MS,
                node: Node::new(cfg.node_config(name), initial.clone(), 0),
                pending: BTreeMap::new(),
                rtts: BTreeMap::new(),
                elections: true,
                log: Vec::new(),
                known_term: 0,
                commit: 0,
                applied: 0,
                state: initial.clone(),
                has_backends: cfg.backends.contains(name),
                backend_ok: true,
                svc_counter: Hysteresis::new(cfg.fall, cfg.rise),
                svc_since: 0,
            })
            .collect();
        let mut base = vec![vec![0u64; n]; n];
        if cfg.max_link_ms > 0 {
            let pairs: Vec<(usize, usize)> = (0..n)
                .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
                .collect();
            for (a, b) in pairs {
                let d = rng.gen_range(0..=cfg.max_link_ms);
                base[a][b] = d;
                base[b][a] = d;
            }
        }
        let mut sim = Sim {
            base,
            election_timeout: rng.gen_range(300..=600),
            cfg,
            seed,
            rng,
            now: 0,
            sites,
            links: vec![vec![true; n]; n],
            msgs: Vec::new(),
            faults: Vec::new(),
            leader: None,
            term: 0,
            leader_lost_at: Some(0),
            match_len: vec![0; n],
            next_id: 0,
            sent_len: 0,
            committed: Vec::new(),
            committed_len: 0,
            trace: VecDeque::new(),
        };
        for i in 0..n {
            sim.reset_volatile(i);
        }
        sim
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn site_index(&self, name: &str) -> usize {
        self.cfg
            .sites
            .iter()
            .position(|s| s == name)
            .expect("known site")
    }

    pub fn schedule(&mut self, at: u64, fault: Fault) {
        self.faults.push((at, fault));
        self.faults.sort_by_key(|(t, _)| *t);
    }

    fn local(&self, i: usize) -> u64 {
        let s = &self.sites[i];
        (s.offset + self.now as f64 * s.rate) as u64
    }

    fn note(&mut self, what: String) {
        if self.trace.len() > 300 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>6}ms {what}", self.now));
    }

    /// A (re)started process: a new node over the state its store kept, nothing else.
    fn reset_volatile(&mut self, i: usize) {
        let local = self.local(i);
        let cfg = self.cfg.clone();
        let s = &mut self.sites[i];
        s.node = Node::new(cfg.node_config(&s.name), s.state.clone(), local);
        s.pending.clear();
        s.rtts.clear();
        s.elections = true;
        s.svc_counter = Hysteresis::new(cfg.fall, cfg.rise);
        s.svc_since = local;
        s.commit = s.applied;
        self.sync_log(i);
    }

    /// The node learns its log's epoch whenever the log changes (the agent reads it from
    /// the log store on every call).
    fn sync_log(&mut self, i: usize) {
        let e = self.log_epoch(i);
        let local = self.local(i);
        self.sites[i].node.set_log_epoch(e, local);
    }

    fn log_epoch(&self, i: usize) -> u64 {
        self.sites[i]
            .log
            .iter()
            .filter_map(|e| e.proposal.as_ref().map(|p| p.epoch()))
            .max()
            .unwrap_or(0)
    }

    fn runs(&self, i: usize) -> bool {
        self.sites[i].alive && !self.sites[i].paused
    }

    fn holds_lease(&self, i: usize) -> bool {
        self.sites[i].node.holds_lease(self.local(i))
    }

    /// Sites acting as primary of the service right now, by the agents' own rule.
    pub fn acting(&self) -> Vec<String> {
        (0..self.sites.len())
            .filter(|&i| self.runs(i))
            .filter(|&i| !self.sites[i].node.acting(self.local(i)).is_empty())
            .map(|i| self.sites[i].name.clone())
            .collect()
    }

    fn send(&mut self, msg: Msg) {
        if self.rng.gen_bool(self.cfg.loss) {
            return;
        }
        let delay = if self.rng.gen_bool(0.02) {
            self.rng.gen_range(20..=60)
        } else {
            self.rng.gen_range(1..=15)
        };
        let (from, to) = msg.ends();
        let mut far = self.base[from][to] as f64;
        if self.cfg.link_jitter > 0.0 && far > 0.0 {
            far *= 1.0
                + self
                    .rng
                    .gen_range(-self.cfg.link_jitter..=self.cfg.link_jitter);
        }
        self.msgs.push((self.now + delay + far as u64, msg));
    }

    fn apply_fault(&mut self, f: Fault) {
        self.note(format!("fault {f:?}"));
        let n = self.sites.len();
        match f {
            Fault::Crash(i) => self.sites[i].alive = false,
            Fault::Restart(i) => {
                if !self.sites[i].alive {
                    self.sites[i].alive = true;
                    self.sites[i].paused = false;
                    self.reset_volatile(i);
                }
            }
            Fault::Pause(i) => self.sites[i].paused = true,
            Fault::Resume(i) => self.sites[i].paused = false,
            Fault::Isolate(i) => {
                for j in 0..n {
                    if j != i {
                        self.links[i][j] = false;
                        self.links[j][i] = false;
                    }
                }
            }
            Fault::Cut(a, b) => {
                self.links[a][b] = false;
                self.links[b][a] = false;
            }
            Fault::CutOneWay(a, b) => self.links[a][b] = false,
            Fault::HealAll => self.links = vec![vec![true; n]; n],
            Fault::BackendDown(i) => self.sites[i].backend_ok = false,
            Fault::BackendUp(i) => self.sites[i].backend_ok = true,
        }
    }

    fn deliver(&mut self, msg: Msg) {
        let (from, to) = msg.ends();
        if !self.links[from][to] || !self.runs(to) {
            return;
        }
        match msg {
            Msg::HbReq {
                from,
                to,
                id,
                sent_local,
                report,
            } => {
                let local = self.local(to);
                self.sync_log(to);
                let answer = self.sites[to].node.on_report(*report, local);
                self.send(Msg::HbResp {
                    from: to,
                    to: from,
                    id,
                    sent_local,
                    answer,
                });
            }
            Msg::HbResp {
                from,
                to,
                id,
                sent_local,
                answer,
            } => {
                let local = self.local(to);
                let peer = self.cfg.sites[from].clone();
                let s = &mut self.sites[to];
                // In time, or late (its miss already counted): a round trip and a grant.
                s.pending.remove(&id);
                let rtts = s.rtts.entry(peer.clone()).or_default();
                if rtts.len() == 32 {
                    rtts.pop_front();
                }
                rtts.push_back(local.saturating_sub(sent_local));
                s.node.on_answer(&peer, sent_local, answer, local);
            }
            Msg::Append {
                from,
                to,
                term,
                log,
                commit,
            } => {
                let local = self.local(to);
                let leader = self.cfg.sites[from].clone();
                let s = &mut self.sites[to];
                if term < s.known_term {
                    return;
                }
                s.known_term = term;
                s.log = log;
                s.commit = s.commit.max(commit.min(s.log.len()));
                s.node.heard_leader(&leader, local);
                let len = s.log.len();
                self.sync_log(to);
                self.send(Msg::AppendAck {
                    from: to,
                    to: from,
                    term,
                    len,
                });
            }
            Msg::AppendAck {
                from,
                to,
                term,
                len,
            } => {
                if Some(to) == self.leader && term == self.term {
                    self.match_len[from] = len;
                }
            }
        }
    }

    fn reaches(&self, a: usize, b: usize) -> bool {
        a == b || (self.links[a][b] && self.links[b][a] && self.runs(b))
    }

    fn raft_step(&mut self) {
        let n = self.sites.len();
        let q = self.cfg.quorum();
        let leader_ok = self
            .leader
            .is_some_and(|l| self.runs(l) && (0..n).filter(|&j| self.reaches(l, j)).count() >= q);
        if leader_ok {
            self.leader_lost_at = None;
        } else {
            let lost = *self.leader_lost_at.get_or_insert(self.now);
            if self.now >= lost + self.election_timeout {
                self.elect();
            }
        }
        let Some(l) = self.leader else { return };
        if !self.runs(l) {
            return;
        }
        // Commit: the largest prefix a majority holds whose last entry is of this term.
        self.match_len[l] = self.sites[l].log.len();
        let mut lens: Vec<usize> = self.match_len.clone();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        let majority_len = lens[q - 1];
        let mut changed = false;
        if majority_len > self.sites[l].commit
            && self.sites[l].log[majority_len - 1].term == self.term
        {
            self.sites[l].commit = majority_len;
            changed = true;
        }
        // Replicate on every new entry or commit, as openraft does, and every 50ms anyway.
        let new_entry = self.sites[l].log.len() > self.sent_len;
        if new_entry || changed || self.now.is_multiple_of(50) {
            self.sent_len = self.sites[l].log.len();
            for j in 0..n {
                if j != l {
                    let msg = Msg::Append {
                        from: l,
                        to: j,
                        term: self.term,
                        log: self.sites[l].log.clone(),
                        commit: self.sites[l].commit,
                    };
                    self.send(msg);
                }
            }
        }
    }

    fn elect(&mut self) {
        let n = self.sites.len();
        let q = self.cfg.quorum();
        let key = |s: &Site| (s.log.last().map(|e| e.term).unwrap_or(0), s.log.len());
        let winners: Vec<usize> = (0..n)
            .filter(|&c| self.runs(c) && self.sites[c].elections)
            .filter(|&c| {
                let mine = key(&self.sites[c]);
                (0..n)
                    .filter(|&v| self.reaches(c, v) && key(&self.sites[v]) <= mine)
                    .count()
                    >= q
            })
            .collect();
        self.election_timeout = self.rng.gen_range(300..=600);
        if winners.is_empty() {
            self.leader_lost_at = Some(self.now);
            return;
        }
        let l = winners[self.rng.gen_range(0..winners.len())];
        self.term += 1;
        self.leader = Some(l);
        self.leader_lost_at = None;
        self.match_len = vec![0; n];
        let term = self.term;
        self.sites[l].known_term = term;
        self.sites[l].log.push(Entry {
            term,
            proposal: None,
        });
        self.sync_log(l);
        self.note(format!("{} elected leader, term {term}", self.cfg.sites[l]));
    }

    fn apply_committed(&mut self, i: usize) {
        while self.sites[i].applied < self.sites[i].commit {
            let local = self.local(i);
            let idx = self.sites[i].applied;
            let entry = self.sites[i].log[idx].clone();
            self.sites[i].applied += 1;
            let Some(p) = entry.proposal else { continue };
            let Some(decisions) = self.sites[i].state.apply(&p) else {
                continue;
            };
            let epoch = self.sites[i].state.epoch;
            if epoch as usize > self.committed_len {
                self.committed_len = epoch as usize;
                for d in &decisions {
                    self.committed.push((self.now, d.clone()));
                }
                self.note(format!("commit epoch {epoch}: {decisions:?}"));
            }
            let s = &mut self.sites[i];
            s.node.applied(&s.state, &decisions, local);
        }
    }

    fn site_tick(&mut self, i: usize) {
        let local = self.local(i);
        self.sync_log(i);
        let leader = self.leader.map(|l| self.cfg.sites[l].clone());
        // As the agent reads openraft: the leader's name; on the leader, how long since a
        // quorum acknowledged it (here: now, when it reaches one).
        let quorum_ack = (self.leader == Some(i)).then_some(0);
        let s = &mut self.sites[i];
        let missed: Vec<u64> = s
            .pending
            .iter()
            .filter(|(_, (_, by))| *by <= local)
            .map(|(id, _)| *id)
            .collect();
        for id in missed {
            if let Some((peer, _)) = s.pending.remove(&id) {
                s.node.on_miss(&peer, local);
            }
        }
        if s.has_backends && s.svc_counter.record(s.backend_ok).is_some() {
            s.svc_since = local;
        }
        let health = if s.has_backends {
            [(
                SERVICE.to_string(),
                ServiceView {
                    healthy: s.svc_counter.state(),
                    for_ms: local.saturating_sub(s.svc_since),
                },
            )]
            .into_iter()
            .collect()
        } else {
            BTreeMap::new()
        };
        s.node.set_health(health);
        s.node.set_raft(leader, quorum_ack);
        let tick = s.node.tick(local);
        if let Some(allow) = tick.elections_changed {
            s.elections = allow;
        }
        let report: Report = s.node.report(local);
        let n = self.sites.len();
        for j in 0..n {
            if j == i {
                continue;
            }
            self.next_id += 1;
            let id = self.next_id;
            let peer = self.cfg.sites[j].clone();
            // The agent's timeout: from the p99 of the last round trips measured.
            let p99 = self.sites[i].rtts.get(&peer).and_then(|r| {
                let mut v: Vec<u64> = r.iter().copied().collect();
                v.sort_unstable();
                v.get((v.len() * 99).div_ceil(100).saturating_sub(1))
                    .copied()
            });
            let timeout = self
                .cfg
                .timing()
                .probe_timeout(p99.map(std::time::Duration::from_millis))
                .as_millis() as u64;
            self.sites[i].pending.insert(id, (peer, local + timeout));
            self.send(Msg::HbReq {
                from: i,
                to: j,
                id,
                sent_local: local,
                report: Box::new(report.clone()),
            });
        }
        if self.leader == Some(i) {
            let pending = self.sites[i].log.len() > self.sites[i].commit;
            if !pending {
                if let Some(proposal) = self.sites[i].node.propose(local) {
                    let term = self.term;
                    self.sites[i].log.push(Entry {
                        term,
                        proposal: Some(proposal),
                    });
                    self.sync_log(i);
                }
            }
        }
    }

    /// Advances one step; panics if two sites act as primary at once.
    pub fn step(&mut self) {
        self.now += STEP_MS;
        while self.faults.first().is_some_and(|(t, _)| *t <= self.now) {
            let (_, f) = self.faults.remove(0);
            self.apply_fault(f);
        }
        let due: Vec<Msg> = {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.msgs)
                .into_iter()
                .partition(|(t, _)| *t <= self.now);
            self.msgs = later;
            due.into_iter().map(|(_, m)| m).collect()
        };
        for m in due {
            self.deliver(m);
        }
        self.raft_step();
        for i in 0..self.sites.len() {
            if !self.runs(i) {
                continue;
            }
            self.apply_committed(i);
            if (self.now + self.sites[i].phase).is_multiple_of(self.cfg.probe_ms) {
                self.site_tick(i);
            }
        }
        let acting = self.acting();
        if acting.len() > 1 {
            panic!(
                "seed {}: two primaries at {} ms: {acting:?}\n--- trace ---\n{}",
                self.seed,
                self.now,
                self.trace.iter().cloned().collect::<Vec<_>>().join("\n")
            );
        }
    }

    pub fn run_until(&mut self, t: u64) {
        while self.now < t {
            self.step();
        }
    }

    /// Runs until `pred` holds or `limit` passes; returns the time it first held.
    pub fn run_until_true(
        &mut self,
        limit: u64,
        mut pred: impl FnMut(&Sim) -> bool,
    ) -> Option<u64> {
        while self.now < limit {
            self.step();
            if pred(self) {
                return Some(self.now);
            }
        }
        None
    }

    pub fn moves(&self) -> usize {
        self.committed
            .iter()
            .filter(|(_, d)| matches!(d, Decision::PrimaryMove { .. }))
            .count()
    }

    pub fn site_downs(&self) -> usize {
        self.committed
            .iter()
            .filter(|(_, d)| matches!(d, Decision::SiteDown { .. }))
            .count()
    }

    pub fn trace(&self) -> String {
        self.trace.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    pub fn health_of(&self, i: usize) -> Health {
        self.sites[i].svc_counter.state()
    }
}

/// How many seeds a test runs: 1,000 unless OUTLAST_SIM_SEEDS says otherwise.
pub fn seeds() -> u64 {
    std::env::var("OUTLAST_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

/// A random fault schedule for the `n` sites of `sim`: 2 to `most` faults starting between
/// `from_ms` and 25 s, each lasting 50 ms to 6 s (crash, pause, isolation, a cut link, a
/// backend down, and with `one_way` a link cut one way), and everything mended at 26 s.
pub fn random_schedule(sim: &mut Sim, n: usize, from_ms: u64, most: usize, one_way: bool) {
    let count = sim.rng().gen_range(2..=most);
    let kinds = if one_way { 6 } else { 5 };
    for _ in 0..count {
        let at = sim.rng().gen_range(from_ms..25_000);
        let a = sim.rng().gen_range(0..n);
        let b = (a + sim.rng().gen_range(1..n)) % n;
        let dur = sim.rng().gen_range(50..6_000);
        let (start, end) = match sim.rng().gen_range(0..kinds) {
            0 => (Fault::Crash(a), Fault::Restart(a)),
            1 => (Fault::Pause(a), Fault::Resume(a)),
            2 => (Fault::Isolate(a), Fault::HealAll),
            3 => (Fault::Cut(a, b), Fault::HealAll),
            4 => (Fault::BackendDown(a), Fault::BackendUp(a)),
            _ => (Fault::CutOneWay(a, b), Fault::HealAll),
        };
        sim.schedule(at, start);
        sim.schedule(at + dur, end);
    }
    sim.schedule(26_000, Fault::HealAll);
    for i in 0..n {
        sim.schedule(26_000, Fault::Restart(i));
        sim.schedule(26_000, Fault::Resume(i));
        sim.schedule(26_000, Fault::BackendUp(i));
    }
}

/// Runs `sim` to `warmup_ms` (its preferred site must act as primary by then), then takes
/// that site out within the next 100 ms by a crash, a pause or an isolation (drawn at
/// random): the fault and how long until another site acts. Panics when none does within
/// `limit_ms`.
pub fn outage_of_the_primary(
    sim: &mut Sim,
    seed: u64,
    warmup_ms: u64,
    limit_ms: u64,
) -> (Fault, u64) {
    let preferred = sim.cfg.preferred.clone();
    sim.run_until(warmup_ms);
    assert_eq!(
        sim.acting(),
        vec![preferred.clone()],
        "seed {seed}: warm-up\n{}",
        sim.trace()
    );
    let p = sim.site_index(&preferred);
    let fault = match sim.rng().gen_range(0..3) {
        0 => Fault::Crash(p),
        1 => Fault::Pause(p),
        _ => Fault::Isolate(p),
    };
    let t0 = warmup_ms + sim.rng().gen_range(0..100);
    sim.schedule(t0, fault);
    let took = sim
        .run_until_true(t0 + limit_ms, |s| {
            s.acting().iter().any(|a| *a != preferred)
        })
        .map(|t| t - t0)
        .unwrap_or_else(|| {
            panic!(
                "seed {seed}: no new primary after {fault:?}\n{}",
                sim.trace()
            )
        });
    (fault, took)
}

/// The median and the worst of `times`, sorted in place.
pub fn median_and_worst(times: &mut [u64]) -> (u64, u64) {
    times.sort_unstable();
    (times[times.len() / 2], times[times.len() - 1])
}
