//! How committed decisions write the incident history ([`outlast_core::incident`]).
//!
//! Every site applies the same entries in the same order, and these rules read nothing but
//! the entry, its time (the leader's clock when it proposed) and the state before and after
//! it: every site holds the same incidents, updates and outages.
//!
//! - A site declared down opens `site:NAME` (investigating). Each primary that then moves
//!   away from it adds an update (identified); the site's return makes it `monitoring` while
//!   services that left it have not moved back, and `resolved` once none waits.
//! - A failover with no site down (its backends there failed) opens `service:NAME`.
//! - Maintenance opens `maintenance:NAME`, closed when it ends; a planned move outside any
//!   incident is recorded as a resolved one of impact none.
//! - A dataset's service recorded with no synchronous standby opens `sync:NAME`.
//! - An operator's note opens an incident or updates one.
//!
//! Outages are derived from the state alone: after each entry, each component's state
//! (site down, a primary-standby service whose primary's site is down, an active-active
//! service with some or all of its sites down, a synchronous service gone asynchronous,
//! a site in maintenance) is compared with the open outages, which are ended or begun.

use std::collections::BTreeMap;

use outlast_core::incident::{
    History, Impact, Incident, Outage, Step, Update, KEEP_INCIDENTS, KEEP_OUTAGE_MS,
};

use crate::state::{ClusterState, Decision, MoveReason, Proposal, SiteState};

fn site_c(s: &str) -> String {
    format!("site-{s}")
}

fn service_c(s: &str) -> String {
    format!("service-{s}")
}

/// Each component's state now, when not operational.
fn component_states(st: &ClusterState) -> BTreeMap<String, &'static str> {
    let down = |s: &str| st.sites.get(s) == Some(&SiteState::Down);
    let mut out = BTreeMap::new();
    for (name, s) in &st.sites {
        if *s == SiteState::Down {
            out.insert(site_c(name), "major_outage");
        } else if st.maintenance.contains(name) {
            out.insert(site_c(name), "under_maintenance");
        }
    }
    for (name, d) in &st.deps {
        out.insert(
            format!("dependency-{name}"),
            if d.state == "down" {
                "major_outage"
            } else {
                "degraded_performance"
            },
        );
    }
    for (name, s) in &st.services {
        let state = match &s.primary {
            Some(p) if s.mode == outlast_core::config::Mode::PrimaryStandby => {
                if down(p) {
                    Some("major_outage")
                } else if s.sync_set.as_ref().is_some_and(|x| x.is_empty()) {
                    Some("degraded_performance")
                } else {
                    None
                }
            }
            None if s.mode == outlast_core::config::Mode::PrimaryStandby => Some("major_outage"),
            _ => {
                let up = s.active_sites.iter().filter(|x| !down(x)).count();
                if s.active_sites.is_empty() || up == 0 {
                    Some("major_outage")
                } else if up < s.active_sites.len() {
                    Some("partial_outage")
                } else {
                    None
                }
            }
        };
        if let Some(state) = state {
            out.insert(service_c(name), state);
        }
    }
    out
}

/// Records the entry `decisions`, committed at `at_ms`, that turned `before` into `st`.
pub(crate) fn record(st: &mut ClusterState, before: &ClusterState, p: &Proposal) {
    let (decisions, at_ms) = (&p.decisions, p.at_ms);
    if at_ms == 0 {
        // An entry from before the history existed (or a test's): no time to record.
        return;
    }
    // What went down in this entry went down when its site went silent.
    let silent = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::SiteDown { site } => p.silent_ms.get(site).copied(),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let mut h = std::mem::take(&mut st.history);
    h.since_ms.get_or_insert(at_ms.saturating_sub(silent));
    let mut w = Writer { h: &mut h, at_ms };
    for d in decisions {
        w.decision(d, before, st);
    }
    // Outages from the state.
    let now = component_states(st);
    for o in h.outages.iter_mut().filter(|o| o.end_ms.is_none()) {
        if now.get(&o.component).copied() != Some(o.state.as_str()) {
            o.end_ms = Some(at_ms);
        }
    }
    for (c, state) in now {
        let open = h
            .outages
            .iter()
            .any(|o| o.end_ms.is_none() && o.component == c && o.state == state);
        if !open {
            let start = if state == "major_outage" || state == "partial_outage" {
                at_ms.saturating_sub(silent)
            } else {
                at_ms
            };
            h.outages.push(Outage {
                component: c,
                state: state.to_string(),
                start_ms: start,
                end_ms: None,
            });
        }
    }
    // A component down and back within one entry (a site declared down and its primary
    // moved at once) was still out from the silence to the move.
    if silent > 0 {
        for d in decisions {
            let Decision::PrimaryMove {
                service,
                from: Some(from),
                ..
            } = d
            else {
                continue;
            };
            let gone = decisions
                .iter()
                .any(|x| matches!(x, Decision::SiteDown { site } if site == from));
            let c = service_c(service);
            let recorded = h
                .outages
                .iter()
                .any(|o| o.component == c && o.end_ms == Some(at_ms));
            if gone && !recorded {
                h.outages.push(Outage {
                    component: c,
                    state: "major_outage".into(),
                    start_ms: at_ms.saturating_sub(silent),
                    end_ms: Some(at_ms),
                });
            }
        }
    }
    h.outages
        .retain(|o| o.end_ms.is_none_or(|e| e + KEEP_OUTAGE_MS >= at_ms));
    while h.incidents.len() > KEEP_INCIDENTS {
        match h.incidents.iter().position(|i| !i.is_open()) {
            Some(i) => h.incidents.remove(i),
            None => h.incidents.remove(0),
        };
    }
    st.history = h;
}

/// A failover committed at most this long before its site's verdict joins the site's
/// incident.
const JOIN_MS: u64 = 30_000;

struct Writer<'a> {
    h: &'a mut History,
    at_ms: u64,
}

impl Writer<'_> {
    fn open_keyed(&mut self, key: &str) -> Option<&mut Incident> {
        self.h
            .incidents
            .iter_mut()
            .rev()
            .find(|i| i.is_open() && i.key.as_deref() == Some(key))
    }

    fn open(
        &mut self,
        key: Option<String>,
        title: String,
        impact: Impact,
        step: Step,
        body: String,
    ) -> &mut Incident {
        self.h.next_id += 1;
        let resolved = (step == Step::Resolved).then_some(self.at_ms);
        self.h.incidents.push(Incident {
            id: self.h.next_id,
            title,
            status: step,
            impact,
            key,
            components: Default::default(),
            started_ms: self.at_ms,
            resolved_ms: resolved,
            updates: vec![Update {
                at_ms: self.at_ms,
                status: step,
                body,
                by: None,
            }],
            moved: Default::default(),
        });
        let last = self.h.incidents.len() - 1;
        &mut self.h.incidents[last]
    }

    fn decision(&mut self, d: &Decision, before: &ClusterState, st: &ClusterState) {
        let at = self.at_ms;
        match d {
            Decision::SiteDown { site } => {
                let key = format!("site:{site}");
                if self.open_keyed(&key).is_some() {
                    return;
                }
                // Services served from there alone lose their writes until they move.
                let hit: Vec<String> = before
                    .services
                    .iter()
                    .filter(|(_, s)| {
                        s.primary.as_deref() == Some(site.as_str())
                            || (s.primary.is_none() && s.active_sites == [site.clone()])
                    })
                    .map(|(n, _)| n.clone())
                    .collect();
                let impact = if hit.is_empty() {
                    Impact::Major
                } else {
                    Impact::Critical
                };
                let body = if hit.is_empty() {
                    format!("Site {site} stopped answering; a majority of sites declared it down.")
                } else {
                    format!(
                        "Site {site} stopped answering; a majority of sites declared it down. Affected until they move: {}.",
                        hit.join(", ")
                    )
                };
                // A failover from this site committed just before the verdict (its backends
                // stopped answering first) is the same event: it joins this incident.
                let (joined, kept): (Vec<Incident>, Vec<Incident>) =
                    std::mem::take(&mut self.h.incidents)
                        .into_iter()
                        .partition(|i| {
                            i.is_open()
                                && i.key.as_deref().is_some_and(|k| k.starts_with("service:"))
                                && i.moved.values().all(|from| from == site)
                                && i.started_ms + JOIN_MS >= at
                        });
                self.h.incidents = kept;
                let i = self.open(
                    Some(key),
                    format!("Site {site} is down"),
                    impact,
                    Step::Investigating,
                    body,
                );
                i.components.insert(site_c(site));
                i.components.extend(hit.iter().map(|s| service_c(s)));
                for j in joined {
                    i.started_ms = i.started_ms.min(j.started_ms);
                    i.impact = i.impact.max(j.impact);
                    i.components.extend(j.components);
                    i.moved.extend(j.moved);
                    for mut u in j.updates {
                        u.status = Step::Identified;
                        i.updates.push(u);
                    }
                    i.status = Step::Identified;
                }
                i.updates.sort_by_key(|u| u.at_ms);
            }
            Decision::SiteUp { site } => {
                let Some(i) = self.open_keyed(&format!("site:{site}")) else {
                    return;
                };
                if i.moved.is_empty() {
                    i.note(
                        at,
                        Step::Resolved,
                        format!("Site {site} answers again; nothing waits for it."),
                    );
                } else {
                    i.status = Step::Monitoring;
                    let waiting: Vec<&str> = i.moved.keys().map(|s| s.as_str()).collect();
                    let body = format!(
                        "Site {site} answers again and catches up; {} will move back to it.",
                        waiting.join(", ")
                    );
                    i.updates.push(Update {
                        at_ms: at,
                        status: Step::Monitoring,
                        body,
                        by: None,
                    });
                }
            }
            Decision::PrimaryMove {
                service,
                from,
                to,
                reason,
                ..
            } => self.moved(service, from.as_deref(), to, *reason, st),
            Decision::Maintenance { site, on } => {
                let key = format!("maintenance:{site}");
                if *on {
                    if self.open_keyed(&key).is_none() {
                        let i = self.open(
                            Some(key),
                            format!("Site {site} is in maintenance"),
                            Impact::Maintenance,
                            Step::Identified,
                            format!("An operator put site {site} in maintenance: its primaries move away."),
                        );
                        i.components.insert(site_c(site));
                    }
                } else if let Some(i) = self.open_keyed(&key) {
                    i.moved.clear();
                    i.note(
                        at,
                        Step::Resolved,
                        format!("Maintenance of site {site} is over."),
                    );
                }
            }
            Decision::SyncSet { service, sites } => {
                let key = format!("sync:{service}");
                let was = before
                    .services
                    .get(service)
                    .and_then(|s| s.sync_set.clone());
                if sites.is_empty() && was.as_ref().is_none_or(|w| !w.is_empty()) {
                    if self.open_keyed(&key).is_none() {
                        let i = self.open(
                            Some(key),
                            format!("{service} writes without a synchronous standby"),
                            Impact::Minor,
                            Step::Identified,
                            format!("No standby of {service} can hold each commit now: writes go on, and a site lost now would lose the newest of them."),
                        );
                        i.components.insert(service_c(service));
                    }
                } else if !sites.is_empty() {
                    if let Some(i) = self.open_keyed(&key) {
                        i.note(
                            at,
                            Step::Resolved,
                            format!("{} holds each commit of {service} again.", sites.join(", ")),
                        );
                    }
                }
            }
            Decision::IncidentNote {
                id,
                title,
                status,
                impact,
                body,
                by,
                components,
            } => {
                let i = match id {
                    Some(id) => match self.h.incidents.iter_mut().find(|i| i.id == *id) {
                        Some(i) => i,
                        None => return,
                    },
                    None => self.open(
                        None,
                        title.clone().unwrap_or_else(|| "Incident".into()),
                        impact.unwrap_or(Impact::Minor),
                        *status,
                        body.clone(),
                    ),
                };
                if let Some(t) = title.as_ref().filter(|_| id.is_some()) {
                    i.title = t.clone();
                }
                if let Some(x) = impact {
                    i.impact = *x;
                }
                i.components.extend(components.iter().cloned());
                if id.is_some() {
                    i.updates.push(Update {
                        at_ms: at,
                        status: *status,
                        body: body.clone(),
                        by: by.clone(),
                    });
                } else if let Some(u) = i.updates.last_mut() {
                    u.by = by.clone();
                }
                i.status = *status;
                i.resolved_ms = (*status == Step::Resolved).then_some(i.resolved_ms.unwrap_or(at));
                if *status == Step::Resolved {
                    i.moved.clear();
                }
            }
            Decision::Dependency {
                name,
                state,
                seen_by,
            } => {
                let key = format!("dep:{name}");
                let from = if seen_by.is_empty() {
                    String::new()
                } else {
                    format!(" from {}", seen_by.join(", "))
                };
                if state == "up" {
                    if let Some(i) = self.open_keyed(&key) {
                        i.note(
                            at,
                            Step::Resolved,
                            format!("Every endpoint of {name} answers again."),
                        );
                    }
                    return;
                }
                let body = if state == "down" {
                    format!("No endpoint of {name} answers{from}.")
                } else {
                    format!("Some endpoints of {name} do not answer{from}; the others carry its traffic.")
                };
                let impact = if state == "down" {
                    Impact::Major
                } else {
                    Impact::Minor
                };
                match self.open_keyed(&key) {
                    Some(i) => {
                        i.impact = i.impact.max(impact);
                        i.title = format!("Dependency {name} is {state}");
                        let status = i.status;
                        i.updates.push(Update {
                            at_ms: at,
                            status,
                            body,
                            by: None,
                        });
                    }
                    None => {
                        let i = self.open(
                            Some(key),
                            format!("Dependency {name} is {state}"),
                            impact,
                            Step::Identified,
                            body,
                        );
                        i.components.insert(format!("dependency-{name}"));
                    }
                }
            }
            Decision::Active { .. } | Decision::HistoryStart {} => {}
        }
    }

    fn moved(
        &mut self,
        service: &str,
        from: Option<&str>,
        to: &str,
        reason: MoveReason,
        st: &ClusterState,
    ) {
        let at = self.at_ms;
        let from_word = from.unwrap_or("nowhere");
        // A move back to where a service left from, in any open incident.
        let mut back = false;
        for i in self.h.incidents.iter_mut().filter(|i| i.is_open()) {
            if i.moved.get(service).map(|s| s.as_str()) != Some(to) {
                continue;
            }
            back = true;
            i.moved.remove(service);
            let site_up = i
                .key
                .as_deref()
                .and_then(|k| k.strip_prefix("site:"))
                .is_none_or(|s| st.sites.get(s) == Some(&SiteState::Up));
            let done = i.moved.is_empty()
                && site_up
                && !i
                    .key
                    .as_deref()
                    .is_some_and(|k| k.starts_with("maintenance:"));
            let step = if done { Step::Resolved } else { i.status };
            i.updates.push(Update {
                at_ms: at,
                status: step,
                body: format!("{service} is served from {to} again ({}).", word(reason)),
                by: None,
            });
            i.status = step;
            if done {
                i.resolved_ms = Some(at);
            }
        }
        if back {
            return;
        }
        let Some(from) = from else {
            return;
        };
        let body = format!(
            "{service} now served from {to} ({}; it left {from}).",
            word(reason)
        );
        for key in [format!("site:{from}"), format!("maintenance:{from}")] {
            if let Some(i) = self.open_keyed(&key) {
                if i.status < Step::Identified {
                    i.status = Step::Identified;
                }
                let status = i.status;
                i.updates.push(Update {
                    at_ms: at,
                    status,
                    body,
                    by: None,
                });
                i.components.insert(service_c(service));
                i.moved.insert(service.to_string(), from.to_string());
                return;
            }
        }
        if reason == MoveReason::Failover {
            let key = format!("service:{service}");
            let i = self.open(
                Some(key),
                format!("{service} failed over from {from_word} to {to}"),
                Impact::Major,
                Step::Monitoring,
                format!("{service}'s backends at {from_word} failed; it is served from {to}."),
            );
            i.components.insert(service_c(service));
            i.moved.insert(service.to_string(), from.to_string());
        } else {
            let i = self.open(
                None,
                format!(
                    "{service} moved from {from_word} to {to} ({})",
                    word(reason)
                ),
                Impact::None,
                Step::Resolved,
                body,
            );
            i.components.insert(service_c(service));
        }
    }
}

fn word(r: MoveReason) -> &'static str {
    match r {
        MoveReason::Failover => "failover",
        MoveReason::Failback => "failback",
        MoveReason::Switchover => "switchover",
        MoveReason::Maintenance => "maintenance",
    }
}
