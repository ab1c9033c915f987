//! `GET /v1/status` as this site sees it (docs/api.md).

use outlast_core::config::Mode;
use outlast_core::Health;

use super::{lock, Agent};

pub(super) fn health_word(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Down => "down",
        Health::Unknown => "unknown",
    }
}

impl Agent {
    /// The status as this site sees it.
    pub fn status(&self) -> outlast_web::Status {
        let now = self.now_ms();
        let term = self.raft().metrics().borrow().current_term;
        let node = self.node();
        let state = node.state().clone();
        let my_acting = node.acting(now);
        let replays = self.peer_auth.replays_refused();
        let clock_refused = self.peer_auth.clock_refused();
        let cut_by_clock = self.peer_auth.cut_by_clock(
            outlast_core::clock::unix_ms(),
            super::links::CLOCK_CUT_WITHIN_MS,
        );
        let sites = node
            .site_views(now)
            .into_iter()
            .map(|v| outlast_web::SiteStatus {
                replays_refused: replays.get(&v.name).copied().unwrap_or(0),
                clock_refused: clock_refused.get(&v.name).map_or(0, |k| k.refused),
                clock_offset_ms: cut_by_clock.get(&v.name).copied(),
                api: self
                    .config
                    .site(&v.name)
                    .map(|s| format!("http://{}", s.api_addr())),
                name: v.name,
                state: v.state.to_string(),
                witness: v.witness,
                last_seen_ms: v.last_seen_ms,
                cannot_reach: v.cannot_reach,
            })
            .collect();
        let local = self.monitor.snapshot();
        let services = self
            .config
            .services
            .iter()
            .filter_map(|svc| {
                let s = state.services.get(&svc.name)?;
                let primary_acting = match s.primary.as_deref() {
                    Some(p) if p == self.me => my_acting.contains(&svc.name),
                    Some(p) => node
                        .fresh_report(p, now)
                        .is_some_and(|r| r.acting.contains(&svc.name)),
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
                        Mode::ActiveActive => "active-active".into(),
                        Mode::PrimaryStandby => "primary-standby".into(),
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
                    udp: super::lock(&self.udp_gateways)
                        .get(&svc.name)
                        .map(|g| g.counters()),
                })
            })
            .collect();
        let leader = node.leader(now);
        // Local ms to wall-clock ms: phases are compared across sites and with a drill.
        let wall_now = super::peer::unix_ms();
        let wall = |ms: u64| wall_now.saturating_sub(now.saturating_sub(ms));
        let failovers = node
            .failovers()
            .map(|f| outlast_web::FailoverStatus {
                what: f.service.clone(),
                epoch: f.epoch,
                from: f.from.clone(),
                to: f.to.clone(),
                reason: format!("{:?}", f.reason).to_lowercase(),
                wal_behind_bytes: f.wal_behind_bytes,
                phases: f
                    .phases
                    .iter()
                    .map(|(name, at)| outlast_web::PhaseStatus {
                        name: name.to_string(),
                        at_ms: wall(*at),
                    })
                    .collect(),
            })
            .collect();
        let deps_seen = node.deps_seen(now);
        drop(node);
        let dependencies = self.deps.status(&self.config, &state.deps, &deps_seen);
        outlast_web::Status {
            cluster: self.config.cluster.name.clone(),
            site: self.me.clone(),
            leader,
            term,
            epoch: state.epoch,
            sites,
            services,
            streams: self.relay.streams().map(|s| s.stats().into()).collect(),
            faults: self.faults.list(),
            failovers,
            at_ms: wall_now,
            datasets: {
                let node = self.node();
                self.datasets.status(&self.config, &state, &|site| {
                    node.fresh_report(site, now).cloned()
                })
            },
            backups: self.backups.status(),
            history: state.history,
            dependencies,
            alerts_sent: self.alerter.recent(),
            dns: self.config.dns.as_ref().map(|_| {
                let why = *lock(&self.dns_not_ready);
                outlast_core::status::DnsStatus {
                    ready: why.is_none(),
                    why: why.map(str::to_string),
                }
            }),
            peer_tls: match &self.peer_tls {
                Some(t) => t.view(),
                None => outlast_core::status::PeerTlsView {
                    mode: "off".into(),
                    ..Default::default()
                },
            },
            links: self.links.views(),
            clock_odd_ppm: self.links.own_clock_odd(),
        }
    }
}
