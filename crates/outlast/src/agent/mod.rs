//! The agent: one site's process. It wires the rooms together:
//! heartbeats and leases (this module), service probes (`outlast-health`), the policy and
//! Raft (`outlast-control`), the API (`outlast-web`) and alerts.
//!
//! Flow: probes → reports to every peer → the leader runs `decide` → Raft commits →
//! every agent applies (alerts, acting roles, metrics). Nothing acts on an uncommitted
//! decision.

pub mod alerts;
mod faults;
mod limits;
pub mod peer;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use openraft::BasicNode;
use outlast_control::store::{AppliedChange, LogStore, NodeId, Raft, StateMachineStore};
use outlast_control::{
    decide, ClusterState, Decision, Lease, MoveReason, Observations, Params, PeerView, Proposal,
    Received, Report, ServiceView, SiteState,
};
use outlast_core::faults::Faults;
use outlast_core::{Config, Health, Hysteresis};
use outlast_health::Monitor;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use outlast_gateway::limits::ConnLimit;

use self::alerts::{AlertEvent, Alerter};
use self::peer::{
    unix_ms, HeartbeatAck, NetworkFactory, PeerAuth, PeerClient, PeerHandler, PeerServer,
};

struct PeerTrack {
    counter: Hysteresis,
    since_ms: u64,
    last_heard_ms: Option<u64>,
}

/// Everything the agent's tasks share.
pub struct Agent {
    pub config: Config,
    pub me: String,
    pub my_id: NodeId,
    params: Params,
    start: Instant,
    start_std: std::time::Instant,
    monitor: Monitor,
    peers: Mutex<BTreeMap<String, PeerTrack>>,
    lease: Mutex<Lease>,
    reports: Mutex<BTreeMap<String, Received>>,
    log_epoch: Arc<AtomicU64>,
    applied_epoch: Arc<AtomicU64>,
    sm: StateMachineStore,
    raft: OnceLock<Raft>,
    fenced: AtomicBool,
    alerter: Alerter,
    prometheus: Option<PrometheusHandle>,
    names: Arc<BTreeMap<NodeId, String>>,
    election_timeout_max_ms: u64,
    election_timeout_min_ms: u64,
    routes: tokio::sync::watch::Sender<Arc<outlast_gateway::Routes>>,
    gateway_stats: BTreeMap<String, Arc<outlast_gateway::Stats>>,
    /// The lease deadline as the gateways check it on every request.
    lease_clock: Arc<outlast_gateway::LeaseClock>,
    zone: tokio::sync::watch::Sender<Arc<outlast_dns::ZoneView>>,
    /// Per DNS name, the last non-empty answer (what `all_down = "fail-open"` keeps serving).
    last_known: Mutex<BTreeMap<hickory_proto::rr::Name, Vec<std::net::Ipv4Addr>>>,
    relay: outlast_relay::Relay,
    /// Faults a drill injected through `/v1/faults`; they end by themselves.
    faults: Arc<Faults>,
    /// The token `/v1/faults` wants (`[api] token`, else the drill's own).
    fault_token: Option<String>,
    /// Signs and checks peer traffic; counts replays refused per peer.
    peer_auth: Arc<PeerAuth>,
    /// Each service gateway's connection cap and accept health at this site.
    gateway_limits: BTreeMap<String, Arc<ConnLimit>>,
    /// The site whose Raft entries this site last took as its leader's, and when (ms).
    leader_heard: Mutex<Option<(String, u64)>>,
    /// Whether this site may start Raft elections (see `Report::leader`).
    elect_on: AtomicBool,
    /// A leader has been known: DNS has had a committed state to answer from.
    dns_ready: AtomicBool,
    /// Pairs of sites the leader has alerted as unable to reach each other.
    links_alerted: Mutex<BTreeSet<(String, String)>>,
}

/// What `outlast agent` may be told beyond the config.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Dial these sites' peer ports at another address: a local drill puts its fault
    /// proxy there.
    pub peer_via: BTreeMap<String, SocketAddr>,
    /// A token for `/v1/faults` only, when the config sets none (given by a local drill).
    pub fault_token: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn raft(&self) -> &Raft {
        // Set once in `run` before any task or server starts.
        self.raft
            .get()
            .expect("raft is set before the agent serves")
    }

    fn is_leader(&self) -> bool {
        self.raft().metrics().borrow().current_leader == Some(self.my_id)
    }

    /// Publishes the lease deadline to the gateways.
    fn update_lease_clock(&self) {
        let expires = lock(&self.lease).expires_at(
            self.log_epoch.load(Ordering::SeqCst),
            self.applied_epoch.load(Ordering::SeqCst),
        );
        let until = expires.map(|ms| {
            let ms = ms.min(u64::MAX / 2);
            self.start_std + Duration::from_millis(ms)
        });
        self.lease_clock.set(until);
    }

    fn fenced_now(&self) -> bool {
        let now = self.now_ms();
        !lock(&self.lease).holds(
            now,
            self.log_epoch.load(Ordering::SeqCst),
            self.applied_epoch.load(Ordering::SeqCst),
        )
    }

    /// Local time (ms since this agent started) of a store timestamp.
    fn ms_of(&self, t: std::time::Instant) -> u64 {
        t.saturating_duration_since(self.start_std).as_millis() as u64
    }

    /// The committed state, with the local times of its promotions and site changes.
    fn view(&self) -> (ClusterState, BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let (state, times) = self.sm.view();
        let promoted = times
            .services
            .iter()
            .map(|(k, t)| (k.clone(), self.ms_of(*t)))
            .collect();
        let sites = times
            .sites
            .iter()
            .map(|(k, t)| (k.clone(), self.ms_of(*t)))
            .collect();
        (state, promoted, sites)
    }

    fn acting(&self) -> Vec<String> {
        let (state, promoted, _) = self.view();
        state.acting(&self.me, &promoted, self.now_ms(), !self.fenced_now())
    }

    /// This site's report, sent with every heartbeat.
    fn report(&self) -> Report {
        let now = self.now_ms();
        let peers = lock(&self.peers)
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    PeerView {
                        reachable: t.counter.state(),
                        for_ms: now.saturating_sub(t.since_ms),
                        last_heard_ms: t.last_heard_ms.map(|h| now.saturating_sub(h)),
                    },
                )
            })
            .collect();
        // A gateway that cannot accept (out of file descriptors) serves no one new: the
        // service counts as down here, so that the others take over.
        let stuck = self.config.timing.detection();
        let services = self
            .monitor
            .snapshot()
            .into_iter()
            .map(|(name, h)| {
                let failing = self
                    .gateway_limits
                    .get(&name)
                    .is_some_and(|l| l.failing_within(stuck));
                let view = if failing {
                    ServiceView {
                        healthy: Health::Down,
                        for_ms: 0,
                    }
                } else {
                    ServiceView {
                        healthy: h.health,
                        for_ms: h.since.elapsed().as_millis() as u64,
                    }
                };
                (name, view)
            })
            .collect();
        Report {
            site: self.me.clone(),
            applied_epoch: self.applied_epoch.load(Ordering::SeqCst),
            fenced: self.fenced_now(),
            peers,
            services,
            acting: self.acting(),
            leader: self.leader_heard_now(),
        }
    }

    /// The leader this site heard from within the shortest election timeout: itself while
    /// it leads with a quorum's recent acknowledgement, else the last site whose entries it
    /// took as its leader's.
    fn leader_heard_now(&self) -> Option<String> {
        let within = self.election_timeout_min_ms;
        let m = self.raft().metrics().borrow().clone();
        if m.current_leader == Some(self.my_id) {
            return m
                .millis_since_quorum_ack
                .is_some_and(|ms| ms <= within)
                .then(|| self.me.clone());
        }
        let now = self.now_ms();
        lock(&self.leader_heard)
            .as_ref()
            .filter(|(_, at)| now.saturating_sub(*at) <= within)
            .map(|(site, _)| site.clone())
    }

    /// Leader stickiness: a site that does not hear the leader but hears a peer that does
    /// starts no election (it could not win one, and each try would raise the term that
    /// deposes the leader once the link heals). Found by probing: with east and west cut
    /// from each other, elections ran every 0.7 s for the whole cut (term 54 to 79).
    fn update_elections(&self) {
        let me_leader = self.is_leader();
        let now = self.now_ms();
        // Reports come every probe: one two probes old is the latest word on the leader.
        let fresh = 2 * self.config.timing.probe_interval.as_millis() as u64;
        let someone_hears_a_leader = lock(&self.reports).values().any(|r| {
            r.report.site != self.me
                && now.saturating_sub(r.at_ms) <= fresh
                && r.report.leader.as_ref().is_some_and(|l| *l != self.me)
        });
        let allow = me_leader || !someone_hears_a_leader;
        if self.elect_on.swap(allow, Ordering::SeqCst) != allow {
            tracing::info!(
                elections = allow,
                "elections {}",
                if allow {
                    "allowed again"
                } else {
                    "held: a peer hears a live leader"
                }
            );
            self.raft().runtime_config().elect(allow);
        }
    }

    fn observations(&self, state: &ClusterState) -> Observations {
        let (_, promoted, sites) = self.view();
        let settles_at_ms = promoted
            .iter()
            .filter_map(|(svc, t)| Some((svc.clone(), t + state.services.get(svc)?.hold_ms)))
            .collect();
        Observations {
            reports: lock(&self.reports).clone(),
            settles_at_ms,
            site_changed_at_ms: sites,
        }
    }

    fn record_probe(&self, peer: &str, ok: bool) {
        let now = self.now_ms();
        let mut peers = lock(&self.peers);
        let Some(t) = peers.get_mut(peer) else { return };
        if ok {
            t.last_heard_ms = Some(now);
        }
        if let Some(h) = t.counter.record(ok) {
            t.since_ms = now;
            tracing::info!(peer, reachable = ?h, "peer reachability changed");
            metrics::gauge!("outlast_peer_reachable", "peer" => peer.to_string())
                .set(if h == Health::Up { 1.0 } else { 0.0 });
        }
    }

    fn alert(&self, epoch: u64, kind: &str, key_tail: &str, fields: AlertFields, message: String) {
        self.alerter.send(AlertEvent {
            cluster: self.config.cluster.name.clone(),
            epoch,
            idempotency_key: format!("{}-{epoch}-{kind}-{key_tail}", self.config.cluster.name),
            kind: kind.to_string(),
            site: fields.site,
            service: fields.service,
            from: fields.from,
            to: fields.to,
            message,
            sent_by: self.me.clone(),
            unix_ms: unix_ms(),
        });
    }

    /// Applies the effects of a committed change on this site.
    fn on_applied(&self, change: AppliedChange) {
        metrics::gauge!("outlast_epoch").set(change.epoch as f64);
        let leader = self.is_leader();
        for d in &change.decisions {
            match d {
                Decision::SiteDown { site } | Decision::SiteUp { site } => {
                    let down = matches!(d, Decision::SiteDown { .. });
                    tracing::warn!(site, epoch = change.epoch, down, "site state committed");
                    if leader {
                        let (kind, word) = if down {
                            ("site-down", "down")
                        } else {
                            ("site-up", "up")
                        };
                        self.alert(
                            change.epoch,
                            kind,
                            site,
                            AlertFields {
                                site: Some(site.clone()),
                                ..Default::default()
                            },
                            format!("site {site} is {word}"),
                        );
                    }
                }
                Decision::Active { service, sites } => {
                    tracing::info!(
                        service,
                        ?sites,
                        epoch = change.epoch,
                        "active sites committed"
                    );
                    if leader {
                        self.alert(
                            change.epoch,
                            "active-changed",
                            service,
                            AlertFields {
                                service: Some(service.clone()),
                                ..Default::default()
                            },
                            format!("service {service} now active at [{}]", sites.join(", ")),
                        );
                    }
                }
                Decision::PrimaryMove {
                    service,
                    from,
                    to,
                    reason,
                    hold_ms,
                } => {
                    metrics::counter!("outlast_failovers_total", "service" => service.clone(), "reason" => format!("{reason:?}").to_lowercase())
                        .increment(1);
                    tracing::warn!(
                        service,
                        ?from,
                        to,
                        ?reason,
                        hold_ms,
                        epoch = change.epoch,
                        "primary moved"
                    );
                    if leader {
                        let kind = if *reason == MoveReason::Failback {
                            "failback"
                        } else {
                            "primary-moved"
                        };
                        self.alert(
                            change.epoch,
                            kind,
                            service,
                            AlertFields {
                                service: Some(service.clone()),
                                from: from.clone(),
                                to: Some(to.clone()),
                                ..Default::default()
                            },
                            format!(
                                "service {service}: primary {} -> {to} ({reason:?})",
                                from.as_deref().unwrap_or("none")
                            ),
                        );
                    }
                }
            }
        }
        for (name, state) in &change.state.sites {
            let v = if *state == SiteState::Up { 1.0 } else { 0.0 };
            metrics::gauge!("outlast_site_up", "site" => name.clone()).set(v);
        }
    }

    /// Where each service's gateway at this site sends requests now: local backends when the
    /// service is active here (primary-standby: acting as primary), the gateways of the other
    /// active sites otherwise; refused outright for primary-standby while fenced.
    fn routes(&self) -> outlast_gateway::Routes {
        let (state, promoted, _) = self.view();
        let fenced = self.fenced_now();
        let acting = state.acting(&self.me, &promoted, self.now_ms(), !fenced);
        let health = self.monitor.snapshot();
        let cut = self.cut_from_here();
        let mut services = BTreeMap::new();
        for svc in &self.config.services {
            let Some(st) = state.services.get(&svc.name) else {
                continue;
            };
            let probed = health.get(&svc.name).map(|h| h.backends.as_slice());
            let down: Vec<SocketAddr> = probed
                .unwrap_or_default()
                .iter()
                .filter(|b| b.health == Health::Down)
                .map(|b| b.addr)
                .collect();
            let up_since = probed
                .unwrap_or_default()
                .iter()
                .filter(|b| b.health == Health::Up)
                .map(|b| (b.addr, b.since.into_std()))
                .collect();
            let backends = svc
                .backends
                .get(&self.me)
                .map(|b| b.iter().copied().filter(|a| !down.contains(a)).collect())
                .unwrap_or_default();
            let local = match svc.mode {
                outlast_core::config::Mode::ActiveActive => st.active_sites.contains(&self.me),
                outlast_core::config::Mode::PrimaryStandby => acting.contains(&svc.name),
            };
            let others: Vec<&String> = st
                .active_sites
                .iter()
                .filter(|s| **s != self.me && state.sites.get(*s) != Some(&SiteState::Down))
                .collect();
            // A site this one cannot reach while others can is behind a cut link: no
            // failover will come, so requests are not sent to wait on it.
            let reachable: Vec<&String> = others
                .iter()
                .copied()
                .filter(|s| !cut.contains(*s))
                .collect();
            let unreachable = !others.is_empty() && reachable.is_empty();
            let remotes = reachable
                .into_iter()
                .filter_map(|s| self.config.site(s))
                .map(|s| SocketAddr::new(s.address, svc.port))
                .collect();
            services.insert(
                svc.name.clone(),
                outlast_gateway::ServiceRoute {
                    epoch: st.epoch,
                    local,
                    refuse: svc.mode == outlast_core::config::Mode::PrimaryStandby && fenced,
                    primary_standby: svc.mode == outlast_core::config::Mode::PrimaryStandby,
                    backends,
                    remotes,
                    up_since,
                    unreachable,
                },
            );
        }
        outlast_gateway::Routes { services }
    }

    /// Sites this one cannot reach (its probes say so) while another site, in a fresh
    /// report, says it can: the links between are cut, the sites are not lost.
    fn cut_from_here(&self) -> BTreeSet<String> {
        let now = self.now_ms();
        let reports = lock(&self.reports);
        let reached_by_another = |site: &str| {
            reports.values().any(|r| {
                r.report.site != self.me
                    && r.report.site != site
                    && now.saturating_sub(r.at_ms) <= self.params.report_ttl_ms
                    && r.report
                        .peers
                        .get(site)
                        .is_some_and(|p| p.reachable == Health::Up)
            })
        };
        lock(&self.peers)
            .iter()
            .filter(|(_, t)| t.counter.state() == Health::Down)
            .map(|(n, _)| n.clone())
            .filter(|n| reached_by_another(n))
            .collect()
    }

    /// Pairs of sites that cannot reach each other, as the fresh reports (this site's own
    /// view included) say, leaving out sites the cluster declared down.
    fn cut_links(
        &self,
        state: &ClusterState,
        reports: &BTreeMap<String, Received>,
    ) -> BTreeSet<(String, String)> {
        let now = self.now_ms();
        let mut views: BTreeMap<String, Vec<String>> = BTreeMap::new();
        views.insert(
            self.me.clone(),
            lock(&self.peers)
                .iter()
                .filter(|(_, t)| t.counter.state() == Health::Down)
                .map(|(n, _)| n.clone())
                .collect(),
        );
        for r in reports.values() {
            if r.report.site == self.me || now.saturating_sub(r.at_ms) > self.params.report_ttl_ms {
                continue;
            }
            let down: Vec<String> = r
                .report
                .peers
                .iter()
                .filter(|(_, p)| p.reachable == Health::Down)
                .map(|(n, _)| n.clone())
                .collect();
            views.insert(r.report.site.clone(), down);
        }
        let lost = |s: &str| state.sites.get(s) == Some(&SiteState::Down);
        let mut pairs = BTreeSet::new();
        for (from, unreachable) in &views {
            for to in unreachable {
                // One side saying so is a cut only while the other side is heard from.
                if lost(from) || lost(to) || !views.contains_key(to) {
                    continue;
                }
                let pair = if from < to {
                    (from.clone(), to.clone())
                } else {
                    (to.clone(), from.clone())
                };
                pairs.insert(pair);
            }
        }
        pairs
    }

    /// The leader alerts once when two sites stop reaching each other, and once when they
    /// reach each other again.
    fn alert_cut_links(&self) {
        if !self.is_leader() {
            return;
        }
        let state = self.sm.state();
        let reports = lock(&self.reports).clone();
        let now = self.cut_links(&state, &reports);
        let mut known = lock(&self.links_alerted);
        for (a, b) in now.difference(&known) {
            tracing::warn!(a, b, "sites cannot reach each other");
            self.alert(
                state.epoch,
                "link-cut",
                &format!("{a}-{b}-{}", self.now_ms()),
                AlertFields {
                    site: Some(a.clone()),
                    to: Some(b.clone()),
                    ..Default::default()
                },
                format!("sites {a} and {b} cannot reach each other (both are up)"),
            );
        }
        for (a, b) in known.difference(&now) {
            tracing::info!(a, b, "sites reach each other again");
            self.alert(
                state.epoch,
                "link-restored",
                &format!("{a}-{b}-{}", self.now_ms()),
                AlertFields {
                    site: Some(a.clone()),
                    to: Some(b.clone()),
                    ..Default::default()
                },
                format!("sites {a} and {b} reach each other again"),
            );
        }
        *known = now;
    }

    /// The leader as this site knows it: Raft's word, else what fresh reports say (a site
    /// cut off from the leader still reaches a peer that hears it).
    fn leader_name(&self) -> Option<String> {
        let id = self.raft().metrics().borrow().current_leader;
        if let Some(name) = id.and_then(|id| self.names.get(&id).cloned()) {
            return Some(name);
        }
        let now = self.now_ms();
        lock(&self.reports)
            .values()
            .filter(|r| now.saturating_sub(r.at_ms) <= self.params.report_ttl_ms)
            .find_map(|r| r.report.leader.clone())
    }

    /// The zone as this site answers it (DESIGN.md: only healthy sites, short TTL).
    fn zone_view(&self) -> Option<outlast_dns::ZoneView> {
        use hickory_proto::rr::Name;
        use std::net::{IpAddr, Ipv4Addr};
        let dns = self.config.dns.as_ref()?;
        let zone = Name::from_ascii(&dns.zone).ok()?;
        let state = self.sm.state();
        let v4 = |site: &str| match self.config.site(site).map(|s| s.address) {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        };
        let up = |site: &String| state.sites.get(site) != Some(&SiteState::Down);
        // Ready once a leader is known, a majority has reported recently, and every local
        // backend has a verdict: the first health round has completed.
        let now = self.now_ms();
        let fresh = lock(&self.reports)
            .values()
            .filter(|r| now.saturating_sub(r.at_ms) <= self.params.report_ttl_ms)
            .count();
        let verdicts = self
            .monitor
            .snapshot()
            .values()
            .all(|h| h.backends.iter().all(|b| b.health != Health::Unknown));
        // Ready while this site hears a majority (its own view included): it then answers
        // from the committed routing whatever the leader's state (found by probing: a site
        // cut off from the leader answered SERVFAIL). A site cut off from the majority
        // answers SERVFAIL, so that resolvers ask a site whose routing is current. Before
        // the first leader there is no committed routing to answer from.
        let leader = self.raft().metrics().borrow().current_leader.is_some();
        let ever = self.dns_ready.load(Ordering::SeqCst) || leader;
        let ready = ever && verdicts && fresh >= self.config.quorum();
        if ready {
            self.dns_ready.store(true, Ordering::SeqCst);
        }
        let mut names = BTreeMap::new();
        let mut last = lock(&self.last_known);
        for svc in &self.config.services {
            let (Some(label), Some(st)) = (&svc.dns_name, state.services.get(&svc.name)) else {
                continue;
            };
            let Ok(owner) = Name::from_ascii(label).and_then(|n| n.append_domain(&zone)) else {
                continue;
            };
            let sites: Vec<&String> = match svc.mode {
                outlast_core::config::Mode::PrimaryStandby => {
                    st.primary.iter().filter(|p| up(p)).collect()
                }
                outlast_core::config::Mode::ActiveActive => {
                    st.active_sites.iter().filter(|s| up(s)).collect()
                }
            };
            let addrs: Vec<Ipv4Addr> = sites.into_iter().filter_map(|s| v4(s)).collect();
            let addrs = if !addrs.is_empty() {
                last.insert(owner.clone(), addrs.clone());
                addrs
            } else if dns.all_down == outlast_core::config::AllDown::FailOpen {
                last.get(&owner).cloned().unwrap_or_default()
            } else {
                Vec::new()
            };
            names.insert(owner.to_lowercase(), addrs);
        }
        Some(outlast_dns::ZoneView {
            zone,
            ready,
            serial: u32::try_from(state.epoch).unwrap_or(u32::MAX),
            ttl: dns.ttl,
            name_servers: self
                .config
                .sites
                .iter()
                .filter_map(|s| Some((s.name.clone(), v4(&s.name)?)))
                .collect(),
            names,
        })
    }

    /// Publishes the routes to the gateways and the zone to DNS when they changed.
    fn publish_routes(&self) {
        let state = self.sm.state();
        self.relay.set_down(
            state
                .sites
                .iter()
                .filter(|(_, s)| **s == SiteState::Down)
                .map(|(n, _)| n.clone())
                .collect(),
        );
        if let Some(view) = self.zone_view() {
            self.zone.send_if_modified(|cur| {
                if **cur == view {
                    false
                } else {
                    *cur = Arc::new(view);
                    true
                }
            });
        }
        let next = self.routes();
        self.routes.send_if_modified(|cur| {
            if **cur == next {
                false
            } else {
                *cur = Arc::new(next);
                true
            }
        });
    }

    /// Every site's state as this site sees it: its own from its lease, the others from
    /// the committed state and their latest fresh report.
    fn site_states(
        &self,
        state: &ClusterState,
        reports: &BTreeMap<String, Received>,
    ) -> Vec<outlast_web::SiteStatus> {
        let fenced = self.fenced_now();
        let now = self.now_ms();
        let fresh = |site: &str| {
            reports
                .get(site)
                .filter(|r| now.saturating_sub(r.at_ms) <= self.params.report_ttl_ms)
        };
        let cut = self.cut_links(state, reports);
        let peers = lock(&self.peers);
        let replays = self.peer_auth.replays_refused();
        self.config
            .sites
            .iter()
            .map(|s| {
                let committed_down = state.sites.get(&s.name) == Some(&SiteState::Down);
                let state_word = if s.name == self.me {
                    if fenced {
                        "fenced"
                    } else if committed_down {
                        "down"
                    } else {
                        "up"
                    }
                } else if committed_down {
                    "down"
                } else if fresh(&s.name).is_some_and(|r| r.report.fenced) {
                    "fenced"
                } else {
                    "up"
                };
                let last_seen_ms = if s.name == self.me {
                    Some(0)
                } else {
                    peers
                        .get(&s.name)
                        .and_then(|t| t.last_heard_ms)
                        .map(|h| now.saturating_sub(h))
                };
                let cannot_reach = cut
                    .iter()
                    .filter_map(|(a, b)| {
                        if *a == s.name {
                            Some(b.clone())
                        } else if *b == s.name {
                            Some(a.clone())
                        } else {
                            None
                        }
                    })
                    .collect();
                outlast_web::SiteStatus {
                    name: s.name.clone(),
                    state: state_word.to_string(),
                    witness: s.witness,
                    last_seen_ms,
                    replays_refused: replays.get(&s.name).copied().unwrap_or(0),
                    cannot_reach,
                }
            })
            .collect()
    }

    /// The status as this site sees it (DESIGN.md section 5).
    pub fn status(&self) -> outlast_web::Status {
        let state = self.sm.state();
        let metrics = self.raft().metrics().borrow().clone();
        let now = self.now_ms();
        let reports = lock(&self.reports).clone();
        let fresh = |site: &str| {
            reports
                .get(site)
                .filter(|r| now.saturating_sub(r.at_ms) <= self.params.report_ttl_ms)
        };
        let sites = self.site_states(&state, &reports);
        let my_acting = self.acting();
        let local = self.monitor.snapshot();
        let services = self
            .config
            .services
            .iter()
            .filter_map(|svc| {
                let s = state.services.get(&svc.name)?;
                let primary_acting = match s.primary.as_deref() {
                    Some(p) if p == self.me => my_acting.contains(&svc.name),
                    Some(p) => fresh(p).is_some_and(|r| r.report.acting.contains(&svc.name)),
                    None => false,
                };
                let stats = self.gateway_stats.get(&svc.name);
                let counts = stats.map(|s| s.targets()).unwrap_or_default();
                let local_addrs = svc.backends.get(&self.me).cloned().unwrap_or_default();
                let forwarded = counts
                    .iter()
                    .filter(|(a, _)| !local_addrs.contains(a))
                    .map(|(_, c)| c.served)
                    .sum();
                let backends = local
                    .get(&svc.name)
                    .map(|h| {
                        h.backends
                            .iter()
                            .map(|b| {
                                let c = counts.get(&b.addr).copied().unwrap_or_default();
                                outlast_web::BackendStatus {
                                    address: b.addr.to_string(),
                                    health: health_word(b.health).to_string(),
                                    since_ms: b.since.elapsed().as_millis() as u64,
                                    last_probe_ms: b.last_latency.as_secs_f64() * 1000.0,
                                    last_error: b.last_error.clone(),
                                    served: c.served,
                                    failed: c.failed,
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Some(outlast_web::ServiceStatus {
                    name: svc.name.clone(),
                    mode: match svc.mode {
                        outlast_core::config::Mode::ActiveActive => "active-active".into(),
                        outlast_core::config::Mode::PrimaryStandby => "primary-standby".into(),
                    },
                    primary: s.primary.clone(),
                    active_sites: s.active_sites.clone(),
                    epoch: s.epoch,
                    primary_acting,
                    local_health: local
                        .get(&svc.name)
                        .map(|h| health_word(h.health).to_string()),
                    requests: stats.map(|s| s.requests()).unwrap_or(0),
                    forwarded,
                    backends,
                })
            })
            .collect();
        outlast_web::Status {
            cluster: self.config.cluster.name.clone(),
            site: self.me.clone(),
            leader: self.leader_name(),
            term: metrics.current_term,
            epoch: state.epoch,
            sites,
            services,
            streams: self.relay.streams().map(|s| s.stats().into()).collect(),
            faults: self.faults.list(),
        }
    }
}

fn health_word(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Down => "down",
        Health::Unknown => "unknown",
    }
}

#[derive(Default)]
struct AlertFields {
    site: Option<String>,
    service: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

impl PeerHandler for Agent {
    fn raft(&self) -> &Raft {
        Agent::raft(self)
    }

    fn relay(&self) -> &outlast_relay::Relay {
        &self.relay
    }

    fn heartbeat(&self, from: &str, report: Report) -> HeartbeatAck {
        let at_ms = self.now_ms();
        lock(&self.reports).insert(from.to_string(), Received { at_ms, report });
        HeartbeatAck {
            site: self.me.clone(),
            log_epoch: self.log_epoch.load(Ordering::SeqCst),
            applied_epoch: self.applied_epoch.load(Ordering::SeqCst),
        }
    }

    fn heard_leader(&self, from: &str) {
        *lock(&self.leader_heard) = Some((from.to_string(), self.now_ms()));
    }

    fn step_down_requested(&self, from: &str, req: StepDown) {
        tracing::info!(
            from,
            elect_in_ms = req.elect_in_ms,
            "leader is stepping down; electing"
        );
        let raft = Agent::raft(self).clone();
        // The leader is going: an election must not be held back by its old reports.
        self.elect_on.store(true, Ordering::SeqCst);
        raft.runtime_config().elect(true);
        // Bounded: a peer cannot make us wait more than one election timeout's worth.
        let wait = Duration::from_millis(req.elect_in_ms.min(self.election_timeout_max_ms * 2));
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start an election");
            }
        });
    }
}

impl outlast_web::Source for Agent {
    fn status(&self) -> outlast_web::Status {
        Agent::status(self)
    }

    fn metrics(&self) -> String {
        let Some(h) = self.prometheus.as_ref() else {
            return String::new();
        };
        self.relay.record_metrics();
        h.render()
    }

    fn relay(&self) -> Option<&outlast_relay::Relay> {
        Some(&self.relay)
    }

    fn fault_token(&self) -> Option<&str> {
        self.fault_token.as_deref()
    }

    fn ingest_token(&self) -> Option<&str> {
        self.config
            .api
            .token
            .as_deref()
            .filter(|_| self.config.api.ingest_needs_token)
    }

    fn inject_fault(
        &self,
        kind: outlast_core::faults::FaultKind,
        lasting: Duration,
    ) -> Result<outlast_core::faults::FaultView, String> {
        let sites = self.config.sites.iter().map(|s| s.name.clone()).collect();
        faults::inject(&self.faults, &self.me, &sites, kind, lasting)
    }

    fn faults(&self) -> Vec<outlast_core::faults::FaultView> {
        self.faults.list()
    }

    fn clear_faults(&self, id: Option<u64>) -> usize {
        let n = self.faults.clear(id);
        if n > 0 {
            tracing::info!(ended = n, "faults ended on request");
        }
        n
    }
}

/// The relay reaches peers through the authenticated peer client.
struct RelayTransport {
    client: Arc<PeerClient>,
}

impl outlast_relay::Transport for RelayTransport {
    fn replicate<'a>(
        &'a self,
        peer: &'a str,
        frame: Vec<u8>,
    ) -> outlast_relay::BoxFut<'a, Result<outlast_relay::ReplicateResp, String>> {
        Box::pin(async move {
            self.client
                .call_with(
                    peer,
                    "/peer/relay-frame",
                    frame,
                    "application/octet-stream",
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The bounds (seconds) of every histogram's buckets: a request through the gateway (well
/// under a millisecond to its 30 s deadline), a probe, an object put.
///
/// Histograms, not summaries: a bucket count is a comparison per sample when samples are
/// folded in, where a summary's sketch took a logarithm and moved bins. At 50,000 gateway
/// requests a second the sketch cost about 25 ms of CPU every fold, in one piece, and the
/// gateway's workers waited behind it on a 2-core machine (its p99.9 rose by milliseconds).
/// Buckets also add up across sites, which quantiles do not.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// Installs the process-wide Prometheus recorder once; later calls reuse it.
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

async fn push_loop(agent: Arc<Agent>, dns: outlast_core::config::Dns, stop: CancellationToken) {
    use hickory_proto::rr::Name;
    use outlast_dns::push::{send_update, TsigKey};
    let source = agent.config.site(&agent.me).map(|s| s.address);
    let Some(source) = source else { return };
    let targets: Vec<(SocketAddr, Name, TsigKey)> = dns
        .push
        .iter()
        .filter_map(|p| {
            let zone = Name::from_ascii(&p.zone).ok()?;
            let key = TsigKey {
                name: Name::from_ascii(&p.key_name).ok()?,
                secret: p.key_secret.clone(),
            };
            Some((p.server, zone, key))
        })
        .collect();
    let mut acked: BTreeMap<(SocketAddr, Name), Vec<std::net::Ipv4Addr>> = BTreeMap::new();
    let mut retry_at: BTreeMap<SocketAddr, (Instant, Duration)> = BTreeMap::new();
    let mut tick = tokio::time::interval(agent.config.timing.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !agent.is_leader() {
            acked.clear();
            continue;
        }
        let view = agent.zone.borrow().clone();
        if !view.ready {
            continue;
        }
        for (server, zone, key) in &targets {
            if retry_at
                .get(server)
                .is_some_and(|(t, _)| Instant::now() < *t)
            {
                continue;
            }
            for (name, addrs) in &view.names {
                if !zone.zone_of(name) || acked.get(&(*server, name.clone())) == Some(addrs) {
                    continue;
                }
                match send_update(*server, source, zone, name, view.ttl, addrs, key).await {
                    Ok(()) => {
                        tracing::info!(%server, %name, ?addrs, "pushed");
                        metrics::counter!("outlast_dns_push_total", "outcome" => "ok").increment(1);
                        acked.insert((*server, name.clone()), addrs.clone());
                        retry_at.remove(server);
                    }
                    Err(e) => {
                        let wait = retry_at
                            .get(server)
                            .map(|(_, w)| (*w * 2).min(Duration::from_secs(30)));
                        let wait = wait.unwrap_or(Duration::from_millis(200));
                        tracing::warn!(%server, %name, error = %e, retry_in = ?wait, "push not acknowledged");
                        metrics::counter!("outlast_dns_push_total", "outcome" => "failed")
                            .increment(1);
                        retry_at.insert(*server, (Instant::now() + wait, wait));
                        break;
                    }
                }
            }
        }
    }
}

/// How long a stopping gateway lets requests in flight finish.
const GATEWAY_DRAIN: Duration = Duration::from_secs(5);

fn raft_config(config: &Config) -> anyhow::Result<openraft::Config> {
    let probe = config.timing.probe_interval.as_millis() as u64;
    let election_min = (probe * 3).max(150);
    let c = openraft::Config {
        cluster_name: config.cluster.name.clone(),
        heartbeat_interval: (probe / 2).max(20),
        election_timeout_min: election_min,
        election_timeout_max: election_min * 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(500),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    };
    Ok(c.validate()?)
}

/// Runs `site`'s agent until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    site: &str,
    opts: AgentOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let my_id = config
        .site_index(site)
        .with_context(|| format!("site {site:?} is not in {}", config.path.display()))?
        as NodeId;
    let me = config.sites[my_id as usize].clone();
    let raft_dir = me.data_dir.join("raft");
    std::fs::create_dir_all(&raft_dir)
        .with_context(|| format!("cannot create {}", raft_dir.display()))?;

    let names: Arc<BTreeMap<NodeId, String>> = Arc::new(
        config
            .sites
            .iter()
            .enumerate()
            .map(|(i, s)| (i as NodeId, s.name.clone()))
            .collect(),
    );
    let log = LogStore::open(&raft_dir)
        .with_context(|| format!("cannot open Raft log in {}", raft_dir.display()))?;
    let (changes_tx, mut changes_rx) = mpsc::unbounded_channel();
    let sm = StateMachineStore::open(&raft_dir, ClusterState::initial(&config), changes_tx)
        .with_context(|| format!("cannot open state in {}", raft_dir.display()))?;

    let auth = Arc::new(PeerAuth::new(
        &config.cluster.secret,
        &me.name,
        config.sites.iter().map(|s| s.name.clone()),
    ));
    let peer_addrs: BTreeMap<String, SocketAddr> = config
        .sites
        .iter()
        .filter(|s| s.name != me.name)
        .map(|s| (s.name.clone(), s.peer_addr()))
        .collect();
    for name in opts.peer_via.keys() {
        if !peer_addrs.contains_key(name) {
            anyhow::bail!("--peer-via names {name:?}, which is not another site of this cluster");
        }
    }
    let dial: BTreeMap<String, SocketAddr> = peer_addrs
        .iter()
        .map(|(n, a)| (n.clone(), opts.peer_via.get(n).copied().unwrap_or(*a)))
        .collect();
    let faults: Arc<Faults> = Arc::default();
    let client = Arc::new(PeerClient::new(
        auth.clone(),
        me.address,
        dial,
        faults.clone(),
    )?);

    let monitor = Monitor::start(
        &config.services,
        &me.name,
        me.address,
        &config.timing,
        shutdown.child_token(),
    );
    let now_peers = peer_addrs
        .keys()
        .map(|n| {
            (
                n.clone(),
                PeerTrack {
                    counter: Hysteresis::new(config.timing.fall, config.timing.rise),
                    since_ms: 0,
                    last_heard_ms: None,
                },
            )
        })
        .collect();
    let params = Params::from_config(&config);
    let caps = limits::caps(&config, limits::raise_fd_limit());
    let gateway_limits: BTreeMap<String, Arc<ConnLimit>> = caps
        .gateways
        .iter()
        .map(|(name, cap)| {
            (
                name.clone(),
                ConnLimit::new(format!("gateway:{name}"), *cap),
            )
        })
        .collect();
    let relay = outlast_relay::Relay::open(&config, &me.name, &me.data_dir, &faults)
        .context("cannot open the event relay")?;
    let agent = Arc::new(Agent {
        relay,
        me: me.name.clone(),
        my_id,
        lease: Mutex::new(Lease::new(params.lease_ms, config.quorum())),
        params,
        start: Instant::now(),
        start_std: std::time::Instant::now(),
        monitor,
        peers: Mutex::new(now_peers),
        reports: Mutex::new(BTreeMap::new()),
        log_epoch: log.log_epoch_handle(),
        applied_epoch: sm.applied_epoch_handle(),
        sm: sm.clone(),
        raft: OnceLock::new(),
        fenced: AtomicBool::new(true),
        alerter: Alerter::new(config.alerts.clone()),
        prometheus: prometheus(),
        names: names.clone(),
        election_timeout_max_ms: raft_config(&config)?.election_timeout_max,
        election_timeout_min_ms: raft_config(&config)?.election_timeout_min,
        routes: tokio::sync::watch::channel(Arc::new(outlast_gateway::Routes::default())).0,
        gateway_stats: config
            .services
            .iter()
            .map(|s| (s.name.clone(), Arc::default()))
            .collect(),
        lease_clock: Arc::default(),
        zone: tokio::sync::watch::channel(Arc::new(outlast_dns::ZoneView::not_ready(
            hickory_proto::rr::Name::root(),
        )))
        .0,
        last_known: Mutex::new(BTreeMap::new()),
        faults: faults.clone(),
        fault_token: config.api.token.clone().or(opts.fault_token),
        peer_auth: auth.clone(),
        gateway_limits,
        leader_heard: Mutex::new(None),
        elect_on: AtomicBool::new(true),
        dns_ready: AtomicBool::new(false),
        links_alerted: Mutex::new(BTreeSet::new()),
        config,
    });
    // A restarted primary acts again only once it holds a lease, and peers count for its
    // lease only when their log is not ahead of what it applied: a primary moved away while
    // it was down is learnt before it can act (see outlast-control's lease.rs).

    let factory = NetworkFactory {
        client: client.clone(),
        names: names.clone(),
    };
    let raft = Raft::new(
        my_id,
        Arc::new(raft_config(&agent.config)?),
        factory,
        log,
        sm,
    )
    .await?;
    let _ = agent.raft.set(raft.clone());
    if !raft.is_initialized().await? {
        let members: BTreeMap<NodeId, BasicNode> = agent
            .config
            .sites
            .iter()
            .enumerate()
            .map(|(i, s)| (i as NodeId, BasicNode::new(s.peer_addr().to_string())))
            .collect();
        // Every site initializes with the same membership; that is safe in openraft.
        match raft.initialize(members).await {
            Ok(()) => tracing::info!("initialized a new cluster"),
            Err(e) => tracing::debug!(error = %e, "already initialized"),
        }
    }

    let peer_listener = tokio::net::TcpListener::bind(me.peer_addr())
        .await
        .with_context(|| format!("cannot listen for peers on {}", me.peer_addr()))?;
    let api_listener = tokio::net::TcpListener::bind(me.api_addr())
        .await
        .with_context(|| format!("cannot serve the API on {}", me.api_addr()))?;

    // One gateway per service on every data site (a witness hosts nothing).
    let gateways_stop = CancellationToken::new();
    let mut gateway_tasks = Vec::new();
    if !me.witness {
        let site_addresses: std::collections::HashSet<std::net::IpAddr> =
            agent.config.sites.iter().map(|s| s.address).collect();
        for svc in &agent.config.services {
            let addr = SocketAddr::new(me.address, svc.port);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot open the gateway of {} on {addr}", svc.name))?;
            let routes = agent.routes.subscribe();
            let stop = gateways_stop.clone();
            let limit = agent
                .gateway_limits
                .get(&svc.name)
                .cloned()
                .unwrap_or_else(|| {
                    ConnLimit::new(format!("gateway:{}", svc.name), svc.max_connections)
                });
            let span = tracing::info_span!("gateway", service = %svc.name);
            let stats = agent
                .gateway_stats
                .get(&svc.name)
                .cloned()
                .unwrap_or_default();
            let task = match svc.protocol {
                outlast_core::config::Protocol::Http => {
                    let gw = Arc::new(outlast_gateway::HttpGateway::new(
                        &svc.name,
                        &me.name,
                        me.address,
                        routes,
                        stats.clone(),
                        agent.lease_clock.clone(),
                    ));
                    tokio::spawn(
                        outlast_gateway::serve_http(listener, gw, limit, stop, GATEWAY_DRAIN)
                            .instrument(span),
                    )
                }
                outlast_core::config::Protocol::Tcp => tokio::spawn(
                    outlast_gateway::serve_tcp(
                        listener,
                        svc.name.clone(),
                        me.address,
                        site_addresses.clone(),
                        routes,
                        stats.clone(),
                        agent.lease_clock.clone(),
                        limit,
                        stop,
                        GATEWAY_DRAIN,
                    )
                    .instrument(span),
                ),
            };
            gateway_tasks.push(task);
        }
    }

    // Every site answers DNS for the zone, the witness included.
    let dns_stop = CancellationToken::new();
    let dns_task = match &agent.config.dns {
        Some(dns) => {
            let addr = SocketAddr::new(me.address, dns.port);
            // Bind here so that a taken port fails the start, not a background task.
            std::net::UdpSocket::bind(addr)
                .map(drop)
                .with_context(|| format!("cannot serve DNS on {addr}"))?;
            let view = agent.zone.subscribe();
            let stop = dns_stop.clone();
            Some(tokio::spawn(
                async move {
                    if let Err(e) = outlast_dns::serve(addr, view, stop).await {
                        tracing::error!(%addr, error = %e, "DNS server failed");
                    }
                }
                .instrument(tracing::info_span!("dns")),
            ))
        }
        None => None,
    };

    let servers_stop = CancellationToken::new();
    let peer_server = Arc::new(PeerServer::new(auth, agent.clone(), faults));
    let peer_task = {
        let stop = servers_stop.clone();
        let limits = outlast_web::serve::Limits {
            conns: ConnLimit::new("peer", caps.peer),
            max_body: outlast_relay::PEER_MAX_BODY as u64,
            drain: Duration::from_secs(2),
        };
        tokio::spawn(
            outlast_web::serve::serve(
                peer_listener,
                peer::router(peer_server),
                limits,
                async move { stop.cancelled().await },
            )
            .instrument(tracing::info_span!("peer-server")),
        )
    };
    let api_stop = CancellationToken::new();
    let api_task = {
        let stop = api_stop.clone();
        let source: Arc<dyn outlast_web::Source> = agent.clone();
        let conns = ConnLimit::new("api", caps.api);
        tokio::spawn(
            outlast_web::run(api_listener, source, conns, async move {
                stop.cancelled().await
            })
            .instrument(tracing::info_span!("api-server")),
        )
    };

    let workers = CancellationToken::new();
    agent.relay.start(
        Arc::new(RelayTransport {
            client: client.clone(),
        }),
        workers.clone(),
    );
    // Histogram samples wait in the recorder until they are drained: by a scrape of
    // /metrics, or here. Without this, an agent nobody scrapes kept every request's timing
    // (8 bytes a request: hundreds of MB a day at a few thousand requests/s).
    if let Some(handle) = agent.prometheus.clone() {
        let stop = workers.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    // Off the runtime's workers: the fold takes a while at high rates.
                    _ = tick.tick() => {
                        let handle = handle.clone();
                        let _ = tokio::task::spawn_blocking(move || handle.run_upkeep()).await;
                    }
                }
            }
        });
    }
    // Heartbeats: one loop per peer, so a slow peer never delays the others.
    for peer_name in peer_addrs.into_keys() {
        let agent = agent.clone();
        let client = client.clone();
        let stop = workers.clone();
        let span = tracing::info_span!("heartbeat", peer = %peer_name);
        tokio::spawn(
            async move {
                let interval = agent.config.timing.probe_interval;
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let report = agent.report();
                    let sent_at = agent.now_ms();
                    let started = Instant::now();
                    let res: Result<HeartbeatAck, _> =
                        client.call(&peer_name, "/peer/heartbeat", &report, interval.max(Duration::from_millis(50))).await;
                    metrics::histogram!("outlast_probe_seconds", "kind" => "peer", "peer" => peer_name.clone())
                        .record(started.elapsed().as_secs_f64());
                    match res {
                        Ok(ack) => {
                            agent.record_probe(&peer_name, true);
                            lock(&agent.lease).record_answer(
                                &peer_name,
                                sent_at,
                                ack.log_epoch,
                                agent.applied_epoch.load(Ordering::SeqCst),
                            );
                            agent.update_lease_clock();
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "heartbeat failed");
                            agent.record_probe(&peer_name, false);
                        }
                    }
                }
            }
            .instrument(span),
        );
    }

    // Own report, fence watch, and the leader's decisions: one loop on the probe interval.
    {
        let agent = agent.clone();
        let stop = workers.clone();
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(agent.config.timing.probe_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last_leader = None;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let own = agent.report();
                    let now = agent.now_ms();
                    lock(&agent.reports).insert(agent.me.clone(), Received { at_ms: now, report: own });
                    watch_fence(&agent);
                    agent.update_elections();
                    agent.publish_routes();
                    export_site_states(&agent);
                    let m = agent.raft().metrics().borrow().clone();
                    metrics::gauge!("outlast_raft_term").set(m.current_term as f64);
                    if m.current_leader != last_leader {
                        metrics::counter!("outlast_leader_changes_total").increment(1);
                        tracing::info!(leader = ?m.current_leader.and_then(|id| agent.names.get(&id).cloned()), term = m.current_term, "leader changed");
                        last_leader = m.current_leader;
                    }
                    if m.current_leader == Some(agent.my_id) {
                        agent.alert_cut_links();
                        lead_once(&agent).await;
                    }
                }
            }
            .instrument(tracing::info_span!("control")),
        );
    }

    // RFC 2136: the leader makes every external primary hold what the zone answers,
    // retrying each server with back-off until it says NOERROR. A new leader pushes it all
    // again (the updates are idempotent replacements).
    if let Some(dns) = agent.config.dns.clone().filter(|d| !d.push.is_empty()) {
        let agent = agent.clone();
        let stop = workers.clone();
        tokio::spawn(
            async move { push_loop(agent, dns, stop).await }
                .instrument(tracing::info_span!("dns-push")),
        );
    }

    // Apply committed changes.
    {
        let agent = agent.clone();
        tokio::spawn(
            async move {
                while let Some(change) = changes_rx.recv().await {
                    agent.on_applied(change);
                    agent.publish_routes();
                }
            }
            .instrument(tracing::info_span!("apply")),
        );
    }

    // Raft stops for good when its storage fails (a full disk, a dead device). An agent
    // whose Raft is dead would live on half-dead, reporting itself fenced for ever: it
    // exits non-zero instead, so that its supervisor restarts it (or a person looks).
    let raft_died = {
        let mut metrics = raft.metrics();
        async move {
            loop {
                if let Err(fatal) = &metrics.borrow().running_state {
                    return fatal.to_string();
                }
                if metrics.changed().await.is_err() {
                    return "Raft stopped".to_string();
                }
            }
        }
    };

    tracing::info!(site = %agent.me, peer = %me.peer_addr(), api = %me.api_addr(), "agent ready");
    let died = tokio::select! {
        _ = shutdown.cancelled() => None,
        why = raft_died => Some(why),
    };
    if let Some(why) = &died {
        tracing::error!(error = %why, "Raft has stopped (its storage failed?): shutting down to be restarted");
    }

    // Shutdown in order: stop accepting API calls, stop deciding, stop Raft, hand over
    // leadership, stop serving peers.
    tracing::info!("shutting down");
    api_stop.cancel();
    dns_stop.cancel();
    if let Some(t) = dns_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    // Gateways stop accepting and drain what is in flight (bounded by GATEWAY_DRAIN).
    gateways_stop.cancel();
    for t in gateway_tasks {
        let _ = t.await;
    }
    let was_leader = agent.is_leader();
    workers.cancel();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not stop cleanly");
    }
    if was_leader {
        step_down(&agent, &client).await;
    }
    servers_stop.cancel();
    for (name, task) in [("api", api_task), ("peer", peer_task)] {
        match tokio::time::timeout(Duration::from_secs(3), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(server = name, error = %e, "server stopped with an error")
            }
            Ok(Err(e)) => tracing::warn!(server = name, error = %e, "server task failed"),
            Err(_) => tracing::warn!(server = name, "server still draining at the deadline"),
        }
    }
    tracing::info!("stopped");
    match died {
        Some(why) => Err(anyhow::anyhow!(
            "Raft stopped: {why}; check the disk under {} (free space, errors), then restart",
            raft_dir.display()
        )),
        None => Ok(()),
    }
}

/// `outlast_site_state{site, state}`: 1 for the state this site sees, 0 for the others.
fn export_site_states(agent: &Agent) {
    let state = agent.sm.state();
    metrics::gauge!("outlast_epoch").set(state.epoch as f64);
    let sites = agent.site_states(&state, &lock(&agent.reports));
    for site in sites {
        for state in ["up", "down", "fenced", "maintenance"] {
            let v = if site.state == state { 1.0 } else { 0.0 };
            metrics::gauge!("outlast_site_state", "site" => site.name.clone(), "state" => state)
                .set(v);
        }
    }
}

fn watch_fence(agent: &Agent) {
    agent.update_lease_clock();
    let fenced = agent.fenced_now();
    let was = agent.fenced.swap(fenced, Ordering::SeqCst);
    if fenced == was {
        return;
    }
    metrics::gauge!("outlast_fenced").set(if fenced { 1.0 } else { 0.0 });
    let epoch = agent.applied_epoch.load(Ordering::SeqCst);
    if fenced {
        tracing::warn!(
            epoch,
            "lost the majority: fenced, every primary role given up"
        );
    } else {
        tracing::info!(epoch, "lease held: unfenced");
    }
    // The startup transition (fenced until the first majority answers) is not news.
    if agent.now_ms() > agent.params.hold_ms() * 2 || fenced {
        let kind = if fenced { "fenced" } else { "unfenced" };
        let key = format!("{}-{}", agent.me, agent.now_ms());
        agent.alert(
            epoch,
            kind,
            &key,
            AlertFields {
                site: Some(agent.me.clone()),
                ..Default::default()
            },
            format!("site {} is {kind}", agent.me),
        );
    }
}

async fn lead_once(agent: &Arc<Agent>) {
    let state = agent.sm.state();
    let decisions = decide(
        &agent.params,
        &state,
        &agent.observations(&state),
        agent.now_ms(),
    );
    if decisions.is_empty() {
        return;
    }
    tracing::info!(epoch = state.epoch, ?decisions, "proposing");
    let proposal = Proposal {
        base_epoch: state.epoch,
        decisions,
    };
    let timeout = agent.config.timing.lease;
    match tokio::time::timeout(timeout, agent.raft().client_write(proposal)).await {
        Ok(Ok(r)) => tracing::debug!(epoch = r.data.epoch, "committed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "proposal not committed"),
        Err(_) => tracing::warn!(?timeout, "proposal not committed in time"),
    }
}

/// Asks the most caught-up reachable peer to start an election as soon as the followers'
/// Raft leader lease (`election_timeout_max` after our last heartbeat) has run out; before
/// that they would refuse to vote. Our Raft is already stopped, so no heartbeat renews it.
async fn step_down(agent: &Arc<Agent>, client: &PeerClient) {
    let reports = lock(&agent.reports).clone();
    let mut candidates: Vec<(u64, String)> = agent
        .config
        .sites
        .iter()
        .filter(|s| s.name != agent.me)
        .filter(|s| {
            lock(&agent.peers)
                .get(&s.name)
                .is_some_and(|t| t.counter.state() == Health::Up)
        })
        .map(|s| {
            (
                reports
                    .get(&s.name)
                    .map(|r| r.report.applied_epoch)
                    .unwrap_or(0),
                s.name.clone(),
            )
        })
        .collect();
    candidates.sort_by(|a, b| b.cmp(a));
    let elect_in_ms = agent.election_timeout_max_ms + 50;
    for (_, name) in candidates {
        let req = StepDown { elect_in_ms };
        let asked: Result<bool, _> = client
            .call(&name, "/peer/step-down", &req, Duration::from_millis(500))
            .await;
        match asked {
            Ok(_) => {
                tracing::info!(to = %name, elect_in_ms, "asked to take over leadership");
                return;
            }
            Err(e) => tracing::debug!(to = %name, error = %e, "could not hand over"),
        }
    }
}

/// Body of `/peer/step-down`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct StepDown {
    pub elect_in_ms: u64,
}
