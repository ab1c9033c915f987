//! The failover policy: `decide(params, state, observations, now) -> decisions`.
//!
//! # Design
//!
//! Every agent sends a [`Report`] to every peer on each heartbeat: its rise/fall view of each
//! peer, the health of its local backends per service, whether it is fenced and the epoch it
//! has applied. The Raft leader runs [`decide`] over the freshest report of every site and
//! commits what it returns; it never acts on its own view alone.
//!
//! Rules, each one a property the simulation in `tests/sim.rs` checks:
//! - A site is declared down only when a majority of voters other than it report it
//!   unreachable (a `fall` verdict) and have not heard from it for `fall` probe intervals
//!   plus `grace`. Measuring from the last heartbeat heard, not from the verdict, keeps
//!   rise/fall counting from shifting the window: a blip shorter than `grace` never moves
//!   anything.
//! - A down site comes back up when it reports itself, unfenced and caught up with the
//!   committed epoch, and enough peers see it that with it they form a majority.
//! - A service is unhealthy at a site only after its checks there failed (`fall`) for
//!   `grace`; no fresh report means no verdict, and no verdict changes nothing.
//! - Active-active: active on every up site whose backends are healthy.
//! - Primary-standby: when the primary's site is down or its backends are unhealthy, the
//!   primary moves to the first healthy site in config order. With `failback = "auto"` it
//!   moves back to the preferred primary once that has been healthy for `failback_after`.
//! - At most one move in flight per service: a service does not move again until its last
//!   move has settled (the new primary's hold has passed where this leader applied it).
//! - A promotion carries `hold_ms = lease + margin`: the new primary acts only that long
//!   after applying it. Peers refuse to renew a lease for a site behind their log (see
//!   `lease.rs`), so by then the old primary has lost its lease, whatever it can still reach.
//!
//! Time is a millisecond counter from the caller's clock; reports are stamped with the time
//! they were received, and their "for N ms" durations are read back against that stamp, which
//! can only make a reporter's verdict look younger than it is (the safe direction).

use std::collections::BTreeMap;

use outlast_core::config::{Config, Failback, Mode, Replication};
use outlast_core::Health;

use crate::state::*;

/// What the policy needs from the config.
#[derive(Debug, Clone)]
pub struct Params {
    pub sites: Vec<String>,
    pub quorum: usize,
    pub grace_ms: u64,
    /// `fall` probe intervals plus `grace`: how long a majority must not hear a site.
    pub detection_ms: u64,
    pub lease_ms: u64,
    pub margin_ms: u64,
    pub failback_after_ms: u64,
    /// A report older than this is not evidence of anything.
    pub report_ttl_ms: u64,
    pub services: Vec<ServiceParams>,
}

#[derive(Debug, Clone)]
pub struct ServiceParams {
    pub name: String,
    pub mode: Mode,
    pub preferred: Option<String>,
    pub failback: Failback,
    /// Sites that have backends for this service.
    pub sites: Vec<String>,
    /// The service of an `async` dataset: how far (bytes of WAL) a standby may be behind
    /// the old primary's last reported position and still be promoted by a failover.
    pub max_lag_bytes: Option<u64>,
}

impl Params {
    pub fn from_config(config: &Config) -> Self {
        let t = &config.timing;
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        Params {
            sites: config.sites.iter().map(|s| s.name.clone()).collect(),
            quorum: config.quorum(),
            grace_ms: ms(t.grace),
            detection_ms: ms(t.detection()),
            lease_ms: ms(t.lease),
            margin_ms: ms(t.lease_margin()),
            failback_after_ms: ms(t.failback_after),
            report_ttl_ms: ms(t.probe_interval * 4).max(ms(t.lease)),
            services: config
                .services
                .iter()
                .map(|s| ServiceParams {
                    name: s.name.clone(),
                    mode: s.mode,
                    preferred: s.primary.clone(),
                    failback: s.failback,
                    sites: config
                        .sites
                        .iter()
                        .filter(|site| s.backends.get(&site.name).is_some_and(|b| !b.is_empty()))
                        .map(|site| site.name.clone())
                        .collect(),
                    max_lag_bytes: config
                        .datasets
                        .iter()
                        .find(|d| d.service == s.name && d.replication == Replication::Async)
                        .map(|d| d.max_lag_bytes),
                })
                .collect(),
        }
    }

    pub fn hold_ms(&self) -> u64 {
        self.lease_ms + self.margin_ms
    }
}

/// A report and the local time it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub at_ms: u64,
    pub report: Report,
}

/// What the deciding agent knows: the latest report of every site (its own included), and
/// the local times at which it applied recent changes.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    pub reports: BTreeMap<String, Received>,
    /// Per service: local time at which its last move settles (apply time + hold).
    pub settles_at_ms: BTreeMap<String, u64>,
    /// Per site: local time at which its last up/down change was applied.
    pub site_changed_at_ms: BTreeMap<String, u64>,
}

impl Observations {
    fn fresh(&self, p: &Params, site: &str, now: u64) -> Option<&Received> {
        self.reports
            .get(site)
            .filter(|r| now.saturating_sub(r.at_ms) <= p.report_ttl_ms)
    }
}

/// A service's health at a site as the site's latest report gives it: Some(true) healthy,
/// Some(false) unhealthy for at least `grace` (or no backends there), None no verdict.
fn health_at(
    p: &Params,
    obs: &Observations,
    svc: &ServiceParams,
    site: &str,
    now: u64,
) -> Option<bool> {
    if !svc.sites.iter().any(|s| s == site) {
        return Some(false);
    }
    let r = obs.fresh(p, site, now)?;
    let view = r.report.services.get(&svc.name)?;
    match view.healthy {
        Health::Up => Some(true),
        Health::Down => {
            let since = r.at_ms.saturating_sub(view.for_ms);
            (now.saturating_sub(since) >= p.grace_ms).then_some(false)
        }
        Health::Unknown => None,
    }
}

/// Why an operator's request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such service, dataset or site (404).
    Unknown(String),
    /// Not now, or not like this (409).
    Conflict(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unknown(s) | Refusal::Conflict(s) => f.write_str(s),
        }
    }
}

/// An operator's planned switchover of `service` to `to`: the move to commit, or why not.
/// The target must be up, out of maintenance, healthy for the service, and the service's
/// last move settled.
pub fn switchover(
    p: &Params,
    state: &ClusterState,
    obs: &Observations,
    service: &str,
    to: &str,
    now: u64,
) -> Result<Decision, Refusal> {
    let svc = p
        .services
        .iter()
        .find(|s| s.name == service)
        .ok_or_else(|| Refusal::Unknown(format!("no service named {service:?}")))?;
    let current = state
        .services
        .get(service)
        .ok_or_else(|| Refusal::Unknown(format!("no service named {service:?}")))?;
    if svc.mode != Mode::PrimaryStandby {
        return Err(Refusal::Conflict(format!(
            "{service} is active-active: every healthy site serves it, there is no primary to move"
        )));
    }
    if !p.sites.iter().any(|s| s == to) {
        return Err(Refusal::Unknown(format!(
            "no site named {to:?} (the sites: {})",
            p.sites.join(", ")
        )));
    }
    if !svc.sites.iter().any(|s| s == to) {
        return Err(Refusal::Conflict(format!(
            "{to} has no backends for {service}; it can move to {}",
            svc.sites.join(", ")
        )));
    }
    if current.primary.as_deref() == Some(to) {
        return Err(Refusal::Conflict(format!(
            "{to} is {service}'s primary already"
        )));
    }
    if state.sites.get(to) == Some(&SiteState::Down) {
        return Err(Refusal::Conflict(format!("{to} is down")));
    }
    if state.maintenance.contains(to) {
        return Err(Refusal::Conflict(format!(
            "{to} is in maintenance; take it out first (outlast maintenance {to} off)"
        )));
    }
    if let Some(t) = obs.settles_at_ms.get(service).filter(|t| now < **t) {
        return Err(Refusal::Conflict(format!(
            "{service}'s last move settles in {} ms; ask again then",
            t - now
        )));
    }
    match health_at(p, obs, svc, to, now) {
        Some(true) => {}
        Some(false) => {
            return Err(Refusal::Conflict(format!(
                "{service}'s backends at {to} fail their checks"
            )))
        }
        None => {
            return Err(Refusal::Conflict(format!(
                "no fresh word from {to} on {service}'s health; ask again"
            )))
        }
    }
    Ok(Decision::PrimaryMove {
        service: service.to_string(),
        from: current.primary.clone(),
        to: to.to_string(),
        reason: MoveReason::Switchover,
        hold_ms: if current.primary.is_some() {
            p.hold_ms()
        } else {
            0
        },
    })
}

/// An operator puts `site` in maintenance (`on`) or takes it out: the decision, or why
/// not. Going in is refused while a primary there would have nowhere healthy to go.
pub fn maintenance(
    p: &Params,
    state: &ClusterState,
    obs: &Observations,
    site: &str,
    on: bool,
    now: u64,
) -> Result<Decision, Refusal> {
    if !p.sites.iter().any(|s| s == site) {
        return Err(Refusal::Unknown(format!(
            "no site named {site:?} (the sites: {})",
            p.sites.join(", ")
        )));
    }
    if on == state.maintenance.contains(site) {
        return Err(Refusal::Conflict(format!(
            "{site} is {} maintenance already",
            if on { "in" } else { "out of" }
        )));
    }
    if on {
        for svc in &p.services {
            let here = state
                .services
                .get(&svc.name)
                .is_some_and(|s| s.primary.as_deref() == Some(site));
            if !here {
                continue;
            }
            let elsewhere = svc.sites.iter().any(|s| {
                s != site
                    && !state.maintenance.contains(s)
                    && state.sites.get(s) != Some(&SiteState::Down)
                    && health_at(p, obs, svc, s, now) == Some(true)
            });
            if !elsewhere {
                return Err(Refusal::Conflict(format!(
                    "{} has its primary at {site} and no other healthy site to move to",
                    svc.name
                )));
            }
        }
    }
    Ok(Decision::Maintenance {
        site: site.to_string(),
        on,
    })
}

/// An operator's incident note, checked against the committed history: the incident must
/// exist, a new one needs a title, and each component named must be a site or service of
/// the cluster (`site-NAME`, `service-NAME`).
pub fn incident_note(
    state: &ClusterState,
    req: &crate::state::Request,
) -> Result<Decision, Refusal> {
    let crate::state::Request::IncidentNote {
        id,
        title,
        status,
        impact,
        body,
        by,
        components,
    } = req
    else {
        return Err(Refusal::Conflict("not an incident note".into()));
    };
    match id {
        Some(id) if !state.history.incidents.iter().any(|i| i.id == *id) => {
            let known: Vec<String> = state
                .history
                .incidents
                .iter()
                .rev()
                .take(5)
                .map(|i| i.id.to_string())
                .collect();
            return Err(Refusal::Unknown(format!(
                "no incident {id} in the history (the newest: {})",
                if known.is_empty() {
                    "none yet".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        None if title.is_none() => {
            return Err(Refusal::Conflict(
                "a new incident needs a title (or give the id of one to update)".into(),
            ))
        }
        _ => {}
    }
    for c in components {
        let known = c
            .strip_prefix("site-")
            .is_some_and(|s| state.sites.contains_key(s))
            || c.strip_prefix("service-")
                .is_some_and(|s| state.services.contains_key(s));
        if !known {
            return Err(Refusal::Unknown(format!(
                "no component {c:?}: name a site-NAME or service-NAME of this cluster"
            )));
        }
    }
    Ok(Decision::IncidentNote {
        id: *id,
        title: title.clone(),
        status: *status,
        impact: *impact,
        body: body.clone(),
        by: by.clone(),
        components: components.clone(),
    })
}

/// A failover that `max_lag` holds back: the dataset's service has no live primary and its
/// most advanced standby is further behind the old primary's last reported position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub service: String,
    /// The most advanced standby up (the one a switchover would take).
    pub best: String,
    /// How far behind it is (none: it reports no position).
    pub behind_bytes: Option<u64>,
    pub max_lag_bytes: u64,
}

/// Computes the decisions the leader should commit now. Pure: same inputs, same output.
pub fn decide(p: &Params, state: &ClusterState, obs: &Observations, now: u64) -> Vec<Decision> {
    decide_and_hold(p, state, obs, now).0
}

/// [`decide`], and the failovers `max_lag` holds back now.
pub fn decide_and_hold(
    p: &Params,
    state: &ClusterState,
    obs: &Observations,
    now: u64,
) -> (Vec<Decision>, Vec<Held>) {
    let mut held = Vec::new();
    let mut out = Vec::new();
    let mut up: BTreeMap<&str, bool> = BTreeMap::new();

    for site in &p.sites {
        let is_up = state.sites.get(site) != Some(&SiteState::Down);
        let mut unreachable = 0;
        let mut reachable = 0;
        for other in p.sites.iter().filter(|o| *o != site) {
            let Some(r) = obs.fresh(p, other, now) else {
                continue;
            };
            let Some(view) = r.report.peers.get(site) else {
                continue;
            };
            match view.reachable {
                Health::Down => {
                    // Never heard at all: count from when the verdict was reached.
                    let silent_for = view.last_heard_ms.unwrap_or(view.for_ms);
                    let since = r.at_ms.saturating_sub(silent_for);
                    if now.saturating_sub(since) >= p.detection_ms {
                        unreachable += 1;
                    }
                }
                Health::Up => reachable += 1,
                Health::Unknown => {}
            }
        }
        let next_up = if is_up {
            unreachable < p.quorum
        } else {
            // Back up once it speaks for itself, unfenced and caught up, and with the peers
            // that see it forms a majority.
            let own = obs.fresh(p, site, now);
            own.is_some_and(|r| !r.report.fenced && r.report.applied_epoch >= state.epoch)
                && reachable + 1 >= p.quorum
        };
        if is_up && !next_up {
            out.push(Decision::SiteDown { site: site.clone() });
        } else if !is_up && next_up {
            out.push(Decision::SiteUp { site: site.clone() });
        }
        up.insert(site.as_str(), next_up);
    }

    for svc in &p.services {
        let Some(current) = state.services.get(&svc.name) else {
            continue;
        };
        let status = |site: &str| -> Option<bool> {
            if !up.get(site).copied().unwrap_or(false) {
                return Some(false);
            }
            health_at(p, obs, svc, site, now)
        };
        let kept = |s: &String| !state.maintenance.contains(s);
        match svc.mode {
            Mode::ActiveActive => {
                let serving = |s: &&String| match status(s) {
                    Some(h) => h,
                    None => current.active_sites.contains(s),
                };
                let mut next: Vec<String> = p
                    .sites
                    .iter()
                    .filter(serving)
                    .filter(|s| kept(s))
                    .cloned()
                    .collect();
                // Maintenance drains a site only while another one serves.
                if next.is_empty() {
                    next = p.sites.iter().filter(serving).cloned().collect();
                }
                if next != current.active_sites {
                    out.push(Decision::Active {
                        service: svc.name.clone(),
                        sites: next,
                    });
                }
            }
            Mode::PrimaryStandby => {
                let settled = obs.settles_at_ms.get(&svc.name).is_none_or(|t| now >= *t);
                if !settled {
                    continue;
                }
                let primary = current.primary.as_deref();
                let primary_ok = primary.is_some_and(|pr| status(pr) != Some(false));
                // Where a primary could go: up, healthy, not in maintenance; a dataset's
                // most advanced server first (by the WAL position its site reported).
                let mut candidates: Vec<&String> = p
                    .sites
                    .iter()
                    .filter(|s| Some(s.as_str()) != primary && kept(s) && status(s) == Some(true))
                    .collect();
                let lsn = |s: &String| {
                    obs.fresh(p, s, now)
                        .and_then(|r| r.report.db_lsn.get(&svc.name).copied())
                };
                candidates.sort_by_key(|s| std::cmp::Reverse(lsn(s)));
                let candidate = candidates.first().copied();
                if !primary_ok {
                    // A failover of a sync dataset promotes only a recorded synchronous
                    // standby: any other may lack acknowledged commits. None up: it waits.
                    let recorded = current.sync_set.as_ref().filter(|set| !set.is_empty());
                    // An async dataset: a standby further behind the old primary's last
                    // reported position than `max_lag` is not promoted by a failover (an
                    // operator's switchover can); so is one that reports no position. With
                    // the old primary's position unknown, nobody is held back.
                    let last_primary_lsn = primary
                        .and_then(|pr| obs.reports.get(pr))
                        .and_then(|r| r.report.db_lsn.get(&svc.name).copied());
                    let close_enough = |s: &&String| match (svc.max_lag_bytes, last_primary_lsn) {
                        (Some(max), Some(at)) => {
                            lsn(s).is_some_and(|l| at.saturating_sub(l) <= max)
                        }
                        _ => true,
                    };
                    let candidate = match recorded {
                        Some(set) => candidates.iter().find(|s| set.contains(s)).copied(),
                        None => candidates.iter().copied().find(close_enough),
                    };
                    if let (None, None, Some(max), Some(at), Some(best)) = (
                        candidate,
                        recorded,
                        svc.max_lag_bytes,
                        last_primary_lsn,
                        candidates.first(),
                    ) {
                        held.push(Held {
                            service: svc.name.clone(),
                            best: best.to_string(),
                            behind_bytes: lsn(best).map(|l| at.saturating_sub(l)),
                            max_lag_bytes: max,
                        });
                    }
                    if let Some(to) = candidate {
                        out.push(Decision::PrimaryMove {
                            service: svc.name.clone(),
                            from: primary.map(str::to_string),
                            to: to.clone(),
                            reason: MoveReason::Failover,
                            hold_ms: if primary.is_some() { p.hold_ms() } else { 0 },
                        });
                    }
                    continue;
                }
                if primary.is_some_and(|pr| state.maintenance.contains(pr)) {
                    if let Some(to) = candidate {
                        out.push(Decision::PrimaryMove {
                            service: svc.name.clone(),
                            from: primary.map(str::to_string),
                            to: to.clone(),
                            reason: MoveReason::Maintenance,
                            hold_ms: p.hold_ms(),
                        });
                    }
                    continue;
                }
                // The primary's dataset server asks for its synchronous standbys to be
                // recorded before it names them (see `ServiceState::sync_set`).
                if let Some(asked) = primary
                    .and_then(|pr| obs.fresh(p, pr, now))
                    .filter(|r| r.report.db_primary.contains(&svc.name))
                    .and_then(|r| r.report.db_sync.get(&svc.name))
                {
                    if current.sync_set.as_ref() != Some(asked) {
                        out.push(Decision::SyncSet {
                            service: svc.name.clone(),
                            sites: asked.clone(),
                        });
                    }
                }
                let Some(pref) = svc.preferred.as_deref() else {
                    continue;
                };
                // An operator's switchover stays where it was put.
                if svc.failback != Failback::Auto
                    || Some(pref) == primary
                    || current.reason == Some(MoveReason::Switchover)
                    || state.maintenance.contains(pref)
                {
                    continue;
                }
                if status(pref) != Some(true) {
                    continue;
                }
                let stable_health = obs
                    .fresh(p, pref, now)
                    .and_then(|r| {
                        let v = r.report.services.get(&svc.name)?;
                        Some(now.saturating_sub(r.at_ms.saturating_sub(v.for_ms)))
                    })
                    .is_some_and(|held| held >= p.failback_after_ms);
                let stable_site = obs
                    .site_changed_at_ms
                    .get(pref)
                    .is_none_or(|t| now.saturating_sub(*t) >= p.failback_after_ms);
                if stable_health && stable_site {
                    out.push(Decision::PrimaryMove {
                        service: svc.name.clone(),
                        from: primary.map(str::to_string),
                        to: pref.to_string(),
                        reason: MoveReason::Failback,
                        hold_ms: p.hold_ms(),
                    });
                }
            }
        }
    }
    (out, held)
}

#[cfg(test)]
mod tests;
