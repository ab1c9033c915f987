//! The agent: one site's process. It is wiring only: the site's control logic is the
//! [`Node`] of `outlast-control` (fed here with heartbeats, reports, Raft's view and the
//! local time), its effects are pure functions in their own files ([`routes`], [`zone`],
//! [`alerts::for_change`], [`status`]), and the rooms do the rest: probes
//! (`outlast-health`), Raft (`outlast-control`), gateways, DNS, the relay, the API.
//!
//! Flow: probes → reports to every peer → the leader's node proposes → Raft commits →
//! every agent applies (its node, alerts, routes, DNS). Nothing acts on an uncommitted
//! decision. Every worker is spawned from [`run`], by name, and joined on shutdown.

pub mod alerts;
pub mod backups;
pub(crate) mod datasets;
mod deps;
mod faults;
mod limits;
mod links;
mod moves;
pub mod peer;
mod routes;
mod status;
mod workers;
mod zone;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use openraft::BasicNode;
use outlast_control::store::{AppliedChange, LogStore, NodeId, Raft, StateMachineStore};
use outlast_control::{ClusterState, Node, NodeConfig, Params, Report, ServiceView, SiteState};
use outlast_core::faults::Faults;
use outlast_core::{Config, Health};
use outlast_gateway::limits::ConnLimit;
use outlast_health::Monitor;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::alerts::{AlertEvent, Alerter};
use self::peer::{
    unix_ms, HeartbeatAck, NetworkFactory, PeerAuth, PeerClient, PeerHandler, PeerServer,
};
use self::workers::Workers;

/// Everything the agent's tasks share.
pub struct Agent {
    pub config: Config,
    pub me: String,
    my_id: NodeId,
    start: Instant,
    start_std: std::time::Instant,
    monitor: Monitor,
    /// The dependencies' probes and egress forwarders at this site.
    deps: deps::Deps,
    /// The site's control logic.
    node: Mutex<Node>,
    /// The highest epoch in this site's Raft log, kept current by the log store.
    log_epoch: Arc<AtomicU64>,
    sm: StateMachineStore,
    raft: OnceLock<Raft>,
    alerter: Alerter,
    prometheus: Option<PrometheusHandle>,
    names: Arc<BTreeMap<NodeId, String>>,
    election_timeout_max_ms: u64,
    routes: tokio::sync::watch::Sender<Arc<outlast_gateway::Routes>>,
    gateway_stats: BTreeMap<String, Arc<outlast_gateway::Stats>>,
    /// Each service gateway's connection cap and accept health at this site.
    gateway_limits: BTreeMap<String, Arc<ConnLimit>>,
    /// The UDP services' gateways at this site (their counters, for the status).
    udp_gateways: Mutex<BTreeMap<String, Arc<outlast_gateway::UdpGateway>>>,
    /// The lease deadline as the gateways check it on every request.
    lease_clock: Arc<outlast_gateway::LeaseClock>,
    zone: tokio::sync::watch::Sender<Arc<outlast_dns::ZoneView>>,
    last_known: Mutex<zone::LastKnown>,
    /// Client networks and round trips that steered DNS names choose with.
    steering: Mutex<zone::Steering>,
    /// A leader has been known: DNS has had a committed state to answer from.
    dns_ready: AtomicBool,
    /// Why DNS answers SERVFAIL now (None: it answers from the committed routing).
    dns_not_ready: Mutex<Option<&'static str>>,
    relay: outlast_relay::Relay,
    /// Faults a drill injected through `/v1/faults`; they end by themselves.
    faults: Arc<Faults>,
    /// The token `/v1/faults` wants (`[api] token`, else the drill's own).
    fault_token: Option<String>,
    /// Signs and checks peer traffic; counts replays refused per peer.
    peer_auth: Arc<PeerAuth>,
    /// TLS on the peer port (None only with `[tls] peer = "off"`).
    peer_tls: Option<Arc<outlast_web::tls::PeerTls>>,
    /// This site's dataset members (database servers it runs).
    datasets: datasets::Datasets,
    /// This site's backups (snapshots, verifies).
    backups: Arc<backups::Backups>,
    /// Asks the leader to commit an operator's request when this site does not lead.
    peer_client: OnceLock<Arc<PeerClient>>,
    /// The links to the other sites as the heartbeats measure them.
    links: links::Links,
}

/// What `outlast agent` may be told beyond the config.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Dial these sites' peer ports at another address: a local drill puts its fault
    /// proxy there.
    pub peer_via: BTreeMap<String, SocketAddr>,
    /// (dataset, site) → where this site's PostgreSQL standby of that dataset streams from
    /// that site's server instead (a local drill's fault proxy).
    pub dataset_via: BTreeMap<(String, String), SocketAddr>,
    /// A token for `/v1/faults` only, when the config sets none (given by a local drill).
    pub fault_token: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    /// This agent's clock: ms since it started (tokio's clock).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn raft(&self) -> &Raft {
        // Set once in `run` before any task or server starts.
        self.raft
            .get()
            .expect("raft is set before the agent serves")
    }

    /// The node, with its view of the Raft log and leader brought up to date first: a
    /// voter must never grant a lease with a log it thinks older than it is.
    fn node(&self) -> MutexGuard<'_, Node> {
        let mut node = lock(&self.node);
        // The time first, then the log: the log's epoch is set before an append is
        // acknowledged, so a log read as current was current at this time (the site's own
        // lease vote ages from it).
        let now = self.now_ms();
        node.set_log_epoch(self.log_epoch.load(Ordering::SeqCst), now);
        if let Some(raft) = self.raft.get() {
            let m = raft.metrics().borrow().clone();
            let leader = m.current_leader.and_then(|id| self.names.get(&id).cloned());
            node.set_raft(leader, m.millis_since_quorum_ack);
        }
        node
    }

    fn is_leader(&self) -> bool {
        self.raft().metrics().borrow().current_leader == Some(self.my_id)
    }

    /// The local services' health for the report. A gateway that cannot accept (out of
    /// file descriptors) serves no one new: its service counts as down here, so that the
    /// others take over.
    fn health_views(&self) -> BTreeMap<String, ServiceView> {
        let stuck = self.config.timing.detection();
        self.monitor
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
            .collect()
    }

    /// Publishes the lease deadline to the gateways.
    fn update_lease_clock(&self, node: &Node) {
        let until = node.lease_expires().map(|ms| {
            let ms = ms.min(u64::MAX / 2);
            self.start_std + Duration::from_millis(ms)
        });
        self.lease_clock.set(until);
    }

    fn alert(&self, event: AlertEvent) {
        self.alerter.send(event);
    }

    /// Applies the effects of a committed change on this site.
    fn on_applied(&self, change: AppliedChange) {
        let now = self.now_ms();
        self.node().applied(&change.state, &change.decisions, now);
        metrics::gauge!("outlast_epoch").set(change.epoch as f64);
        for d in &change.decisions {
            match d {
                outlast_control::Decision::SiteDown { site }
                | outlast_control::Decision::SiteUp { site } => {
                    let down = matches!(d, outlast_control::Decision::SiteDown { .. });
                    tracing::warn!(site, epoch = change.epoch, down, "site state committed");
                }
                outlast_control::Decision::Active { service, sites } => {
                    tracing::info!(
                        service,
                        ?sites,
                        epoch = change.epoch,
                        "active sites committed"
                    );
                }
                outlast_control::Decision::SyncSet { service, sites } => {
                    tracing::info!(
                        service,
                        ?sites,
                        epoch = change.epoch,
                        "synchronous standbys recorded"
                    );
                }
                outlast_control::Decision::Dependency {
                    name,
                    state,
                    seen_by,
                } => {
                    tracing::warn!(
                        dependency = name,
                        state,
                        ?seen_by,
                        epoch = change.epoch,
                        "dependency state committed"
                    );
                }
                outlast_control::Decision::HistoryStart {} => {
                    tracing::info!(epoch = change.epoch, "the cluster's history begins");
                }
                outlast_control::Decision::IncidentNote { id, status, .. } => {
                    tracing::info!(
                        ?id,
                        status = status.word(),
                        epoch = change.epoch,
                        "incident note committed"
                    );
                }
                outlast_control::Decision::PrimaryMove {
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
                }
                outlast_control::Decision::Maintenance { site, on } => {
                    tracing::warn!(site, on, epoch = change.epoch, "maintenance committed");
                }
            }
        }
        if self.is_leader() {
            let by = alerts::Sender {
                cluster: &self.config.cluster.name,
                me: &self.me,
                epoch: change.epoch,
                unix_ms: unix_ms(),
            };
            let behind: std::collections::BTreeMap<String, u64> = self
                .node()
                .failovers()
                .filter(|f| f.epoch == change.epoch)
                .filter_map(|f| Some((f.service.clone(), f.wal_behind_bytes?)))
                .collect();
            for a in alerts::for_change(&by, &change.decisions, &|s| behind.get(s).copied()) {
                self.alert(a);
            }
        }
        for (name, state) in &change.state.sites {
            let v = if *state == SiteState::Up { 1.0 } else { 0.0 };
            metrics::gauge!("outlast_site_up", "site" => name.clone()).set(v);
        }
    }

    /// Publishes the routes to the gateways and the zone to DNS when they changed.
    fn publish(&self) {
        let now = self.now_ms();
        let node = self.node();
        let state = node.state().clone();
        self.relay.set_down(
            state
                .sites
                .iter()
                .filter(|(_, s)| **s == SiteState::Down)
                .map(|(n, _)| n.clone())
                .collect(),
        );
        // DNS is ready while this site hears a majority (its own view included): it then
        // answers from the committed routing whatever the leader's state (found by
        // probing: a site cut off from the leader answered SERVFAIL). A site cut off from
        // the majority answers SERVFAIL, so that resolvers ask a site whose routing is
        // current. Before the first leader there is no committed routing to answer from.
        // A site whose lease ran out does not name itself as a primary (the DNS server
        // checks the lease clock on every answer): after a pause its committed state may be
        // stale (found by probing: a paused primary's DNS named itself for a second after it
        // resumed, while its status already said fenced).
        let verdicts = self
            .monitor
            .snapshot()
            .values()
            .all(|h| h.backends.iter().all(|b| b.health != Health::Unknown));
        let ever = self.dns_ready.load(Ordering::SeqCst) || node.leader(now).is_some();
        let acting = node.acting(now);
        let fenced = !node.holds_lease(now);
        let not_ready = if !ever {
            Some("no leader yet: nothing committed to answer from")
        } else if !verdicts {
            Some("waiting for the first health verdict of every backend")
        } else if !node.hears_majority(now) {
            Some("this site does not hear a majority")
        } else {
            None
        };
        let ready = not_ready.is_none();
        if ready {
            self.dns_ready.store(true, Ordering::SeqCst);
        }
        *lock(&self.dns_not_ready) = not_ready;
        let cut = node.cut_from_here(now);
        let settle = self.config.timing.detection().as_millis() as u64;
        let cut_settled: std::collections::BTreeSet<String> = cut
            .iter()
            .filter(|s| {
                node.unreachable_since(s)
                    .is_some_and(|t| now.saturating_sub(t) >= settle)
            })
            .cloned()
            .collect();
        // A database server must stop taking writes before the lease ends, not at its end:
        // it is let act only while a quarter of the lease is still ahead (renewals come
        // every probe, so this trips only after most of a lease without one).
        let db_acting = node.acting_ahead(now, node.params().lease_ms / 4);
        self.datasets.update(
            &self.config,
            &self.me,
            &state,
            &db_acting,
            &|site, service, epoch| node.handed_over(site, service, epoch, now),
        );
        self.backups
            .update(&self.config, &state, &self.datasets.serving());
        drop(node);
        if let Some(dns) = self.config.dns.as_ref().filter(|d| !d.probes.is_empty()) {
            let fresh = 3 * self.config.timing.probe_interval.as_millis() as u64 + 2_000;
            let lat = zone::latencies(dns, &self.node().rtts(now, fresh));
            let mut st = lock(&self.steering);
            if *st.latencies != lat {
                st.latencies = Arc::new(lat);
            }
        }
        let steering = lock(&self.steering).clone();
        let view = zone::zone_view(
            &self.config,
            &self.me,
            &state,
            ready,
            &mut lock(&self.last_known),
            &steering,
        );
        if let Some(view) = view {
            let serial = view.ready.then_some(u64::from(view.serial));
            self.zone.send_if_modified(|cur| {
                let changed = **cur != view;
                if changed {
                    *cur = Arc::new(view);
                }
                changed
            });
            if let Some(serial) = serial {
                self.node().published("dns-published", None, serial, now);
            }
        }
        let health = self.monitor.snapshot();
        let next = routes::routes(&routes::Inputs {
            config: &self.config,
            me: &self.me,
            state: &state,
            acting: &acting,
            fenced,
            health: &health,
            cut: &cut,
            cut_settled: &cut_settled,
        });
        // A gateway has switched once it routes somewhere by the service's committed epoch.
        let switched: Vec<(String, u64)> = next
            .services
            .iter()
            .filter(|(_, r)| r.local || !r.remotes.is_empty())
            .map(|(name, r)| (name.clone(), r.epoch))
            .collect();
        self.routes.send_if_modified(|cur| {
            let changed = **cur != next;
            if changed {
                *cur = Arc::new(next);
            }
            changed
        });
        let mut node = self.node();
        for (service, epoch) in switched {
            node.published("gateway-switched", Some(&service), epoch, now);
        }
    }

    /// The control step, once a probe interval: the node's tick, and what it asks for.
    async fn tick(&self) {
        let now = self.now_ms();
        let health = self.health_views();
        let (tick, epoch, proposal) = {
            let mut node = self.node();
            // A snapshot installed, or a change whose message is still on its way: the
            // node catches up with the store (never the other way).
            let committed = self.sm.state();
            if committed.epoch > node.applied_epoch() {
                node.applied(&committed, &[], now);
            }
            node.set_health(health);
            node.set_deps(self.deps.verdicts());
            node.set_holding(self.datasets.holding());
            node.set_db(self.datasets.report());
            let by = alerts::Sender {
                cluster: &self.config.cluster.name,
                me: &self.me,
                epoch: node.applied_epoch(),
                unix_ms: unix_ms(),
            };
            links::clock_step(self, &mut node, &by);
            let tick = node.tick(now);
            self.update_lease_clock(&node);
            let proposal = node.is_leader().then(|| node.propose(now)).flatten();
            (tick, node.applied_epoch(), proposal)
        };
        let by = alerts::Sender {
            cluster: &self.config.cluster.name,
            me: &self.me,
            epoch,
            unix_ms: unix_ms(),
        };
        for a in self
            .datasets
            .alerts(&self.config.cluster.name, &self.me, by.unix_ms)
        {
            self.alert(a);
        }
        for a in self.backups.alerts(&by) {
            self.alert(a);
        }
        if let Some(fenced) = tick.fenced_changed {
            metrics::gauge!("outlast_fenced").set(if fenced { 1.0 } else { 0.0 });
            if fenced {
                tracing::warn!(
                    epoch,
                    "lost the majority: fenced, every primary role given up"
                );
            } else {
                tracing::info!(epoch, "lease held: unfenced");
            }
            // The startup transition (fenced until the first majority answers) is no news.
            if fenced || now > self.node().params().hold_ms() * 2 {
                let kind = if fenced { "fenced" } else { "unfenced" };
                let fields = alerts::Fields {
                    site: Some(self.me.clone()),
                    ..Default::default()
                };
                let key = format!("{}-{now}", self.me);
                let msg = format!("site {} is {kind}", self.me);
                self.alert(alerts::event(&by, kind, &key, fields, msg));
            }
        }
        if let Some(allow) = tick.elections_changed {
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
        for (cut, word, kind) in [
            (
                &tick.links_cut,
                "cannot reach each other (both are up)",
                "link-cut",
            ),
            (
                &tick.links_restored,
                "reach each other again",
                "link-restored",
            ),
        ] {
            for (a, b) in cut {
                tracing::warn!(a, b, "sites {word}");
                let fields = alerts::Fields {
                    site: Some(a.clone()),
                    to: Some(b.clone()),
                    ..Default::default()
                };
                let key = format!("{a}-{b}-{now}");
                let msg = format!("sites {a} and {b} {word}");
                self.alert(alerts::event(&by, kind, &key, fields, msg));
            }
        }
        for h in &tick.failovers_held {
            let behind = h
                .behind_bytes
                .map_or("reports no position".to_string(), |b| {
                    format!("is {b} bytes behind")
                });
            let msg = format!(
                "the failover of {} is held back: its most advanced standby, {}, {behind} (max_lag {} bytes); move it by hand with outlast switchover --service {} --to {} if losing that much is acceptable",
                h.service, h.best, h.max_lag_bytes, h.service, h.best
            );
            tracing::warn!(service = %h.service, best = %h.best, behind_bytes = ?h.behind_bytes, "{msg}");
            let fields = alerts::Fields {
                service: Some(h.service.clone()),
                to: Some(h.best.clone()),
                ..Default::default()
            };
            let key = format!("{}-{}", h.service, h.best);
            self.alert(alerts::event(&by, "failover-held", &key, fields, msg));
        }
        for (service, phase, since) in &tick.phases {
            tracing::info!(service, phase, since_ms = since, "failover phase");
            metrics::histogram!("outlast_failover_phase_seconds", "phase" => *phase)
                .record(*since as f64 / 1000.0);
        }
        self.publish();
        self.export_metrics();
        if let Some(proposal) = proposal {
            self.propose(proposal).await;
        }
    }

    async fn propose(&self, mut proposal: outlast_control::Proposal) {
        proposal.at_ms = unix_ms();
        let now = self.now_ms();
        let views = self.node().site_views(now);
        for d in &proposal.decisions {
            if let outlast_control::Decision::SiteDown { site } = d {
                if let Some(ms) = views
                    .iter()
                    .find(|v| v.name == *site)
                    .and_then(|v| v.last_seen_ms)
                {
                    proposal.silent_ms.insert(site.clone(), ms);
                }
            }
        }
        tracing::info!(epoch = proposal.base_epoch, decisions = ?proposal.decisions, "proposing");
        let timeout = self.config.timing.lease;
        match tokio::time::timeout(timeout, self.raft().client_write(proposal)).await {
            Ok(Ok(r)) => tracing::debug!(epoch = r.data.epoch, "committed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "proposal not committed"),
            Err(_) => tracing::warn!(?timeout, "proposal not committed in time"),
        }
    }

    /// `outlast_site_state{site, state}` (1 for the state this site sees, 0 for the
    /// others), the epoch and the Raft term.
    fn export_metrics(&self) {
        let now = self.now_ms();
        let node = self.node();
        metrics::gauge!("outlast_epoch").set(node.applied_epoch() as f64);
        for site in node.site_views(now) {
            for state in ["up", "down", "fenced", "maintenance"] {
                let v = if site.state == state { 1.0 } else { 0.0 };
                metrics::gauge!("outlast_site_state", "site" => site.name.clone(), "state" => state)
                    .set(v);
            }
        }
        drop(node);
        let m = self.raft().metrics().borrow().clone();
        metrics::gauge!("outlast_raft_term").set(m.current_term as f64);
        self.links.export_metrics();
    }
}

impl PeerHandler for Agent {
    fn raft(&self) -> &Raft {
        Agent::raft(self)
    }

    fn relay(&self) -> &outlast_relay::Relay {
        &self.relay
    }

    fn heartbeat(&self, _from: &str, report: Report) -> HeartbeatAck {
        let now = self.now_ms();
        let answer = self.node().on_report(report, now);
        HeartbeatAck {
            site: self.me.clone(),
            log_epoch: answer.log_epoch,
            applied_epoch: answer.applied_epoch,
            clock_ms: Some(now),
        }
    }

    fn heard_leader(&self, from: &str) {
        let now = self.now_ms();
        self.node().heard_leader(from, now);
    }

    fn request(
        &self,
        req: outlast_control::Request,
    ) -> outlast_web::BoxFuture<'_, Result<moves::Committed, moves::Failed>> {
        Box::pin(self.commit_here(req))
    }

    fn step_down_requested(&self, from: &str, req: StepDown) {
        tracing::info!(
            from,
            elect_in_ms = req.elect_in_ms,
            "leader is stepping down; electing"
        );
        let raft = Agent::raft(self).clone();
        // The leader is going: an election must not be held back by its old reports.
        self.node().allow_elections();
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
        deps::check_fault(&self.config, &kind)?;
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

    fn admin_token(&self) -> Option<&str> {
        self.config.api.token.as_deref()
    }

    fn dns_explain(&self, name: &str, client: &str) -> Result<serde_json::Value, (u16, String)> {
        use outlast_dns::steer::{Cidr, Client};
        let Some(dns) = &self.config.dns else {
            return Err((404, "the config has no [dns]".into()));
        };
        let (addr, source, ecs) = match client.split_once('/') {
            Some(_) => {
                let c: Cidr = client.parse().map_err(|e: String| (400, e))?;
                (c.addr, c.len, true)
            }
            None => {
                let a: std::net::IpAddr = client
                    .parse()
                    .map_err(|_| (400, format!("\"{client}\" is not an IP address")))?;
                (a, Cidr::bits(a).1, false)
            }
        };
        let client = Client { addr, source, ecs };
        let mut fqdn = name.trim_end_matches('.').to_string();
        let zone = dns.zone.trim_end_matches('.');
        if !fqdn.eq_ignore_ascii_case(zone)
            && !fqdn
                .to_ascii_lowercase()
                .ends_with(&format!(".{}", zone.to_ascii_lowercase()))
        {
            fqdn = format!("{fqdn}.{zone}");
        }
        let owner = hickory_proto::rr::Name::from_ascii(format!("{fqdn}."))
            .map_err(|e| (400, format!("\"{name}\" is not a DNS name: {e}")))?;
        let view = self.zone.borrow().clone();
        let lower = hickory_proto::rr::LowerName::from(owner.clone());
        let (answer, pick) =
            view.answer_for(&lower, hickory_proto::rr::RecordType::A, Some(&client));
        let addrs: Vec<String> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                hickory_proto::rr::RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        Ok(serde_json::json!({
            "name": owner.to_string(),
            "client": client.addr.to_string(),
            "client_prefix": client.source,
            "rcode": answer.code.to_string(),
            "answer": addrs,
            "scope": pick.map_or(0, |p| p.scope),
            "reason": view.explain(&owner, &client),
        }))
    }

    fn read_token(&self) -> Option<&str> {
        self.config.api.read_token.as_deref()
    }

    fn switchover(
        &self,
        req: outlast_web::SwitchoverRequest,
    ) -> outlast_web::BoxFuture<'_, Result<outlast_web::MoveAnswer, (u16, String)>> {
        Box::pin(moves::switchover(self, req))
    }

    fn maintenance(
        &self,
        req: outlast_web::MaintenanceRequest,
    ) -> outlast_web::BoxFuture<'_, Result<outlast_web::MaintenanceAnswer, (u16, String)>> {
        Box::pin(moves::maintenance(self, req))
    }

    fn incident(
        &self,
        id: Option<u64>,
        req: outlast_core::status::IncidentRequest,
    ) -> outlast_web::BoxFuture<'_, Result<outlast_core::incident::Incident, (u16, String)>> {
        Box::pin(moves::incident(self, id, req))
    }

    fn backup(
        &self,
        name: &str,
        action: outlast_web::backups::BackupAction,
    ) -> outlast_web::BoxFuture<'_, Result<serde_json::Value, (u16, String)>> {
        use outlast_web::backups::BackupAction;
        let name = name.to_string();
        Box::pin(async move {
            let state = self.node().state().clone();
            let refused = |r: backups::Refused| match r {
                backups::Refused::NoSuch(why) => (404, why),
                backups::Refused::NotHere(why) => (409, why),
            };
            let json = |v: Result<serde_json::Value, serde_json::Error>| {
                v.map_err(|e| (500, format!("cannot write the answer: {e}")))
            };
            match action {
                BackupAction::Run => {
                    let r = self
                        .backups
                        .run_now(&name, &self.config, &state)
                        .await
                        .map_err(refused)?;
                    json(serde_json::to_value(r))
                }
                BackupAction::Verify => {
                    let r = self
                        .backups
                        .verify_now(&name, &self.config, &state)
                        .await
                        .map_err(refused)?;
                    json(serde_json::to_value(r))
                }
                BackupAction::List => {
                    let r = self.backups.list(&name).await.map_err(refused)?;
                    json(serde_json::to_value(r))
                }
            }
        })
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

/// How long a stopping gateway lets requests in flight finish.
const GATEWAY_DRAIN: Duration = Duration::from_secs(5);

/// Raft's timing from the config's (see `Timing::raft_heartbeat`): openraft takes its
/// heartbeat interval as the timeout of every AppendEntries and vote call, so it follows
/// the largest round trip allowed, not the probe interval alone.
fn raft_config(config: &Config) -> anyhow::Result<openraft::Config> {
    let ms = |d: Duration| d.as_millis() as u64;
    let election_min = ms(config.timing.raft_election_min());
    let c = openraft::Config {
        cluster_name: config.cluster.name.clone(),
        heartbeat_interval: ms(config.timing.raft_heartbeat()),
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
    for (dataset, site) in opts.dataset_via.keys() {
        let member = config
            .datasets
            .iter()
            .find(|d| d.name == *dataset)
            .is_some_and(|d| d.members.contains_key(site));
        if !member || *site == me.name {
            anyhow::bail!("--dataset-via names {dataset}/{site}, which is not another member of a dataset of this cluster");
        }
    }
    let dial: BTreeMap<String, SocketAddr> = peer_addrs
        .iter()
        .map(|(n, a)| (n.clone(), opts.peer_via.get(n).copied().unwrap_or(*a)))
        .collect();
    let faults: Arc<Faults> = Arc::default();
    let peer_tls = peer_tls(&config, &me.name)?;
    let client = Arc::new(PeerClient::new(
        auth.clone(),
        me.address,
        dial,
        faults.clone(),
        peer_tls.as_deref(),
    )?);

    let monitor = Monitor::start(
        &config.services,
        &me.name,
        me.address,
        &config.timing,
        shutdown.child_token(),
    );
    let raft_cfg = raft_config(&config)?;
    let node = Node::new(
        NodeConfig {
            me: me.name.clone(),
            sites: config
                .sites
                .iter()
                .map(|s| (s.name.clone(), s.witness))
                .collect(),
            params: Params::from_config(&config),
            fall: config.timing.fall,
            rise: config.timing.rise,
            probe_ms: config.timing.probe_interval.as_millis() as u64,
            election_timeout_min_ms: raft_cfg.election_timeout_min,
        },
        sm.state(),
        0,
    );
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
    let datasets = datasets::Datasets::new(&config, &me.name, &opts.dataset_via)?;
    let agent = Arc::new(Agent {
        relay,
        me: me.name.clone(),
        my_id,
        start: Instant::now(),
        start_std: outlast_core::clock::now(),
        monitor,
        deps: deps::Deps::start(
            &config,
            me.witness,
            me.address,
            faults.clone(),
            shutdown.child_token(),
        ),
        node: Mutex::new(node),
        log_epoch: log.log_epoch_handle(),
        sm: sm.clone(),
        raft: OnceLock::new(),
        peer_client: OnceLock::new(),
        alerter: Alerter::new(config.alerts.clone()),
        prometheus: prometheus(),
        names: names.clone(),
        election_timeout_max_ms: raft_cfg.election_timeout_max,
        routes: tokio::sync::watch::channel(Arc::new(outlast_gateway::Routes::default())).0,
        gateway_stats: config
            .services
            .iter()
            .map(|s| (s.name.clone(), Arc::default()))
            .collect(),
        gateway_limits,
        udp_gateways: Mutex::default(),
        lease_clock: Arc::default(),
        zone: tokio::sync::watch::channel(Arc::new(outlast_dns::ZoneView::not_ready(
            hickory_proto::rr::Name::root(),
        )))
        .0,
        last_known: Mutex::new(BTreeMap::new()),
        steering: Mutex::new(zone::Steering {
            networks: Arc::new(zone::networks(&config, None).unwrap_or_default()),
            latencies: Arc::default(),
        }),
        dns_ready: AtomicBool::new(false),
        dns_not_ready: Mutex::new(Some("starting")),
        faults: faults.clone(),
        fault_token: config.api.token.clone().or(opts.fault_token),
        peer_auth: auth.clone(),
        peer_tls: peer_tls.clone(),
        links: links::Links::new(&config.timing, peer_addrs.keys().cloned()),
        backups: Arc::new(backups::Backups::new(&config, &me.name, datasets.servers())),
        datasets,
        config,
    });
    // A restarted primary acts again only once it holds a lease, and peers count for its
    // lease only when their log is not ahead of what it applied: a primary moved away while
    // it was down is learnt before it can act (see outlast-control's lease.rs).

    let factory = NetworkFactory {
        client: client.clone(),
        names: names.clone(),
    };
    let raft = Raft::new(my_id, Arc::new(raft_cfg), factory, log, sm).await?;
    let _ = agent.raft.set(raft.clone());
    let _ = agent.peer_client.set(client.clone());
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

    let api_tls = match &agent.config.api.tls {
        Some(f) => {
            let (cert, key) = f.cert_for(&me.name);
            Some(
                outlast_web::tls::api_server_config(&cert, &key)
                    .context("cannot load the API's certificate ([api] tls_cert, tls_key)")?,
            )
        }
        None => None,
    };
    let peer_listener = tokio::net::TcpListener::bind(me.peer_addr())
        .await
        .with_context(|| format!("cannot listen for peers on {}", me.peer_addr()))?;
    let api_listener = tokio::net::TcpListener::bind(me.api_addr())
        .await
        .with_context(|| format!("cannot serve the API on {}", me.api_addr()))?;

    // Servers stop in this order: the API, DNS, the gateways (draining), then, once Raft
    // has stopped and leadership is handed over, the peer port.
    let mut front = Workers::new("front");
    let mut back = Workers::new("back");
    let mut peers = Workers::new("peer");

    // One gateway per service on every data site (a witness hosts nothing).
    if !me.witness {
        let site_addresses: std::collections::HashSet<std::net::IpAddr> =
            agent.config.sites.iter().map(|s| s.address).collect();
        for svc in &agent.config.services {
            let addr = SocketAddr::new(me.address, svc.port);
            let routes = agent.routes.subscribe();
            let stop = front.token();
            let limit = agent
                .gateway_limits
                .get(&svc.name)
                .cloned()
                .unwrap_or_else(|| {
                    ConnLimit::new(format!("gateway:{}", svc.name), svc.max_connections)
                });
            let stats = agent
                .gateway_stats
                .get(&svc.name)
                .cloned()
                .unwrap_or_default();
            let name = format!("gateway {}", svc.name);
            if let (outlast_core::config::Protocol::Udp, Some(udp)) = (svc.protocol, svc.udp) {
                let sockets = outlast_gateway::udp_sockets(addr, outlast_gateway::udp_workers())
                    .with_context(|| {
                        format!("cannot open the UDP gateway of {} on {addr}", svc.name)
                    })?;
                let gw = outlast_gateway::UdpGateway::new(
                    &svc.name,
                    me.address,
                    site_addresses.clone(),
                    routes,
                    stats,
                    agent.lease_clock.clone(),
                    udp,
                    limit,
                );
                lock(&agent.udp_gateways).insert(svc.name.clone(), gw.clone());
                front.spawn(name, outlast_gateway::serve_udp(sockets, gw, stop));
                continue;
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot open the gateway of {} on {addr}", svc.name))?;
            match svc.protocol {
                outlast_core::config::Protocol::Http => {
                    let gw = Arc::new(outlast_gateway::HttpGateway::new(
                        &svc.name,
                        &me.name,
                        me.address,
                        routes,
                        stats,
                        agent.lease_clock.clone(),
                    ));
                    front.spawn(
                        name,
                        outlast_gateway::serve_http(listener, gw, limit, stop, GATEWAY_DRAIN),
                    );
                }
                outlast_core::config::Protocol::Tcp | outlast_core::config::Protocol::Udp => front
                    .spawn(
                        name,
                        outlast_gateway::serve_tcp(
                            listener,
                            svc.name.clone(),
                            me.address,
                            site_addresses.clone(),
                            routes,
                            stats,
                            agent.lease_clock.clone(),
                            limit,
                            stop,
                            GATEWAY_DRAIN,
                        ),
                    ),
            }
        }
    }

    // One egress forwarder per dependency with an egress_port, on every data site.
    for dep in &agent.deps.list {
        let (Some(port), Some(egress)) = (dep.cfg.egress_port, dep.egress.clone()) else {
            continue;
        };
        let addr = SocketAddr::new(me.address, port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot open the egress of {} on {addr}", dep.cfg.name))?;
        let limit = ConnLimit::new(format!("egress:{}", dep.cfg.name), 10_000);
        let steer: Arc<dyn outlast_gateway::egress::Steer> = dep.clone();
        front.spawn(
            format!("egress {}", dep.cfg.name),
            egress.serve(listener, me.address, steer, limit, front.token()),
        );
    }

    // Every site answers DNS for the zone, the witness included.
    if let Some(dns) = &agent.config.dns {
        let addr = SocketAddr::new(me.address, dns.port);
        // Bind here so that a taken port fails the start, not a background task.
        std::net::UdpSocket::bind(addr)
            .map(drop)
            .with_context(|| format!("cannot serve DNS on {addr}"))?;
        let view = agent.zone.subscribe();
        let stop = front.token();
        let lease = agent.lease_clock.clone();
        front.spawn("dns", async move {
            if let Err(e) = outlast_dns::serve(addr, view, lease, stop).await {
                tracing::error!(%addr, error = %e, "DNS server failed");
            }
        });
    }
    // Steering inputs: the networks file, read again when it changes; round trips to the
    // probe networks, measured by each data site and shared in its reports.
    if let Some(path) = agent
        .config
        .dns
        .as_ref()
        .and_then(|d| d.networks_file.clone())
    {
        let agent = agent.clone();
        let stop = back.token();
        back.spawn("dns networks", async move {
            let mut seen = None;
            loop {
                let stamp = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                if stamp != seen {
                    seen = stamp;
                    match zone::networks(&agent.config, Some(&path)) {
                        Ok(n) => {
                            tracing::info!(file = %path.display(), networks = n.len(), "DNS networks loaded");
                            lock(&agent.steering).networks = Arc::new(n);
                        }
                        Err(problems) => {
                            metrics::counter!("outlast_dns_networks_reload_failures_total").increment(1);
                            tracing::warn!(problems = %problems.join("; "), "DNS networks file not loaded; the previous networks stay");
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
    }
    let probes = agent
        .config
        .dns
        .as_ref()
        .map(|d| d.probes.clone())
        .unwrap_or_default();
    if !probes.is_empty() && !me.witness {
        let agent = agent.clone();
        let stop = back.token();
        let source = me.address;
        back.spawn("dns probes", async move {
            let mut smooth: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                for p in &probes {
                    let key = p.network.to_string();
                    match zone::round_trip(source, p.target).await {
                        Some(us) => {
                            let prev = smooth.get(&key).copied().unwrap_or(us);
                            // EWMA, a new sample weighing 0.3.
                            smooth.insert(key, (prev * 7 + us * 3) / 10);
                        }
                        None => {
                            smooth.remove(&key);
                        }
                    }
                }
                agent.node().set_rtt(smooth.clone());
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    if let Some(tls) = peer_tls.clone() {
        let stop = back.token();
        back.spawn("peer certificates", reload_certificates(tls, stop));
    }
    {
        let source: Arc<dyn outlast_web::Source> = agent.clone();
        let conns = ConnLimit::new("api", caps.api);
        let stop = front.token();
        front.spawn("api", async move {
            let served = outlast_web::run(api_listener, source, conns, api_tls, async move {
                stop.cancelled().await
            })
            .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the API server stopped with an error");
            }
        });
    }
    {
        let peer_server = Arc::new(PeerServer::new(
            auth,
            peer_tls.clone(),
            agent.clone(),
            faults,
        ));
        let limits = outlast_web::serve::Limits {
            conns: ConnLimit::new("peer", caps.peer),
            max_body: outlast_relay::PEER_MAX_BODY as u64,
            drain: Duration::from_secs(2),
            tls: peer_tls.as_ref().map(|t| t.server_config()),
        };
        let stop = peers.token();
        peers.spawn("peer server", async move {
            let router = peer::router(peer_server);
            let served = outlast_web::serve::serve(peer_listener, router, limits, async move {
                stop.cancelled().await
            })
            .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the peer server stopped with an error");
            }
        });
    }

    agent.datasets.spawn(&agent.config, &mut back);
    agent.backups.spawn(&mut back);
    agent.relay.start(
        Arc::new(RelayTransport {
            client: client.clone(),
        }),
        back.token(),
    );
    // Histogram samples wait in the recorder until they are drained: by a scrape of
    // /metrics, or here. Without this, an agent nobody scrapes kept every request's timing
    // (8 bytes a request: hundreds of MB a day at a few thousand requests/s).
    if let Some(handle) = agent.prometheus.clone() {
        let stop = back.token();
        back.spawn("metrics upkeep", async move {
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
        let stop = back.token();
        back.spawn(format!("heartbeat {peer_name}"), async move {
            links::heartbeats(agent, client, peer_name, stop).await
        });
    }
    // The control step on the probe interval: the node's tick and the leader's proposals.
    {
        let agent = agent.clone();
        let stop = back.token();
        back.spawn("control", async move {
            let mut tick = tokio::time::interval(agent.config.timing.probe_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_leader = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let leader = agent.raft().metrics().borrow().current_leader;
                if leader != last_leader {
                    metrics::counter!("outlast_leader_changes_total").increment(1);
                    let name = leader.and_then(|id| agent.names.get(&id).cloned());
                    tracing::info!(leader = ?name, "leader changed");
                    last_leader = leader;
                }
                agent.tick().await;
            }
        });
    }
    // RFC 2136: the leader keeps every external primary in step with the zone.
    if let Some(dns) = agent.config.dns.clone().filter(|d| !d.push.is_empty()) {
        let stop = back.token();
        let every = agent.config.timing.probe_interval;
        let zone = agent.zone.subscribe();
        let leads = {
            let agent = agent.clone();
            move || agent.is_leader()
        };
        let targets = outlast_dns::push::targets(&dns);
        back.spawn("dns push", async move {
            outlast_dns::push::run(me.address, targets, zone, leads, every, stop).await
        });
    }
    // The dead-man's switch: the leader pings each heartbeat target.
    if agent
        .config
        .alerts
        .iter()
        .any(|a| matches!(a, outlast_core::config::Alert::Heartbeat { .. }))
    {
        let stop = back.token();
        let leads = {
            let agent = agent.clone();
            move || agent.is_leader()
        };
        let (targets, cluster) = (
            agent.config.alerts.clone(),
            agent.config.cluster.name.clone(),
        );
        let me = agent.me.clone();
        back.spawn("heartbeat", async move {
            alerts::heartbeat(targets, cluster, me, leads, stop).await
        });
    }
    // Apply committed changes.
    {
        let agent = agent.clone();
        let stop = back.token();
        back.spawn("apply", async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    change = changes_rx.recv() => match change {
                        Some(change) => {
                            agent.on_applied(change);
                            agent.publish();
                        }
                        None => break,
                    },
                }
            }
        });
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

    // Shutdown in order: stop accepting API calls and DNS, drain the gateways, stop the
    // workers (control, heartbeats, relay), stop Raft, hand over leadership, stop serving
    // peers.
    tracing::info!("shutting down");
    front.stop(GATEWAY_DRAIN + Duration::from_secs(1)).await;
    let was_leader = agent.is_leader();
    back.stop(Duration::from_secs(3)).await;
    agent.relay.join(Duration::from_secs(3)).await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not stop cleanly");
    }
    if was_leader {
        step_down(&agent, &client).await;
    }
    peers.stop(Duration::from_secs(3)).await;
    tracing::info!("stopped");
    match died {
        Some(why) => Err(anyhow::anyhow!(
            "Raft stopped: {why}; check the disk under {} (free space, errors), then restart",
            raft_dir.display()
        )),
        None => Ok(()),
    }
}

/// Asks the most caught-up reachable peer to start an election as soon as the followers'
/// Raft leader lease (`election_timeout_max` after our last heartbeat) has run out; before
/// that they would refuse to vote. Our Raft is already stopped, so no heartbeat renews it.
async fn step_down(agent: &Arc<Agent>, client: &PeerClient) {
    let now = agent.now_ms();
    let mut candidates: Vec<(u64, String)> = {
        let node = agent.node();
        agent
            .config
            .sites
            .iter()
            .filter(|s| s.name != agent.me && node.peer_health(&s.name) == Health::Up)
            .map(|s| {
                let epoch = node
                    .fresh_report(&s.name, now)
                    .map_or(0, |r| r.applied_epoch);
                (epoch, s.name.clone())
            })
            .collect()
    };
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

/// The peer port's TLS from `[tls]`: certificate files for this site, a CA keyed from
/// the cluster secret, or none (`peer = "off"`).
fn peer_tls(config: &Config, site: &str) -> anyhow::Result<Option<Arc<outlast_web::tls::PeerTls>>> {
    use outlast_core::config::PeerTls as Mode;
    use outlast_web::tls::{Files, PeerTls, PeerTrust};
    let trust = match &config.tls {
        Mode::Off => {
            tracing::warn!("[tls] peer = \"off\": peer traffic travels in clear (signed only)");
            return Ok(None);
        }
        Mode::Secret => PeerTrust::Secret(config.cluster.secret.clone()),
        Mode::Certificates(f) => {
            let (cert, key) = f.cert_for(site);
            let Some(ca) = f.ca.clone() else {
                anyhow::bail!("[tls] has no ca");
            };
            PeerTrust::Files(Files { ca, cert, key })
        }
    };
    let tls = PeerTls::new(trust, site).context("cannot set up TLS on the peer port ([tls])")?;
    Ok(Some(Arc::new(tls)))
}

/// Reads the peer certificate files again when they change, and at once on SIGHUP.
async fn reload_certificates(
    tls: Arc<outlast_web::tls::PeerTls>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; certificate files are still checked every 2 s");
            None
        }
    };
    let mut tick = tokio::time::interval(outlast_web::tls::RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let force = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => false,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        match tls.reload(force) {
            Ok(true) => tracing::info!(
                not_after = ?tls.view().not_after,
                "peer certificates reloaded: new connections use them"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(
                error = %e,
                "peer certificates did not reload: the previous ones stay in force"
            ),
        }
    }
}
