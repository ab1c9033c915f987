//! The public status page every site serves, the witness included: `/status` (HTML that
//! needs no JavaScript), `/status.json` (Statuspage's summary shape, so the tools that read
//! Statuspage read it) and `/status/feed.atom`.
//!
//! All three come from one [`Summary`] of what the answering site sees: each site, service,
//! dataset and stream as a component with a Statuspage state; an open incident per site
//! that is down or in maintenance, updated by the primary moves it caused; and the latest
//! primary moves the site saw as past incidents, each with its phases.

use std::fmt::Write as _;

use outlast_core::clock::rfc3339;
use outlast_core::status::{DatasetStatus, FailoverStatus, ServiceStatus, Status};
use serde_json::{json, Value};

/// A component's state, in Statuspage's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Operational,
    UnderMaintenance,
    Degraded,
    PartialOutage,
    MajorOutage,
}

impl State {
    pub fn word(self) -> &'static str {
        match self {
            State::Operational => "operational",
            State::UnderMaintenance => "under_maintenance",
            State::Degraded => "degraded_performance",
            State::PartialOutage => "partial_outage",
            State::MajorOutage => "major_outage",
        }
    }

    fn said(self) -> &'static str {
        match self {
            State::Operational => "Operational",
            State::UnderMaintenance => "Under maintenance",
            State::Degraded => "Degraded",
            State::PartialOutage => "Partial outage",
            State::MajorOutage => "Major outage",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            State::Operational => "#2a7",
            State::UnderMaintenance => "#36c",
            State::Degraded => "#e90",
            State::PartialOutage => "#e60",
            State::MajorOutage => "#d22",
        }
    }
}

/// One component.
#[derive(Debug, Clone)]
pub struct Component {
    pub id: String,
    pub name: String,
    pub group: &'static str,
    pub state: State,
    pub description: String,
    /// Daily bars from the committed history, oldest first (empty: none kept for it).
    pub days: Vec<outlast_core::incident::Day>,
    /// Uptime over the days known.
    pub uptime: Option<f64>,
}

/// One incident: open (a site down or in maintenance) or past (a primary move).
#[derive(Debug, Clone)]
pub struct Incident {
    pub id: String,
    pub name: String,
    /// `investigating`, `identified`, `monitoring` or `resolved`.
    pub status: &'static str,
    /// `none`, `minor`, `major` or `critical`.
    pub impact: &'static str,
    pub started_ms: u64,
    pub updated_ms: u64,
    pub resolved_ms: Option<u64>,
    /// (Unix ms, status, what happened), oldest first.
    pub updates: Vec<(u64, &'static str, String)>,
    pub components: Vec<String>,
    /// The phases this site saw of the primary moves the incident covers (its own clock,
    /// not committed): (Unix ms, what).
    pub phases: Vec<(u64, String)>,
}

/// The page's content.
#[derive(Debug, Clone)]
pub struct Summary {
    pub cluster: String,
    pub seen_by: String,
    pub at_ms: u64,
    pub components: Vec<Component>,
    pub incidents: Vec<Incident>,
}

pub const GROUPS: [&str; 5] = ["Services", "Datasets", "Streams", "Dependencies", "Sites"];

fn service_state(s: &ServiceStatus, st: &Status) -> (State, String) {
    let down = |site: &str| st.sites.iter().any(|x| x.name == site && x.state == "down");
    if s.mode == "primary-standby" {
        return match &s.primary {
            None => (State::MajorOutage, "no primary".into()),
            Some(p) if !s.primary_acting || down(p) => (
                State::MajorOutage,
                format!("primary {p} is not serving; a failover is under way"),
            ),
            Some(p) => (State::Operational, format!("served from {p}")),
        };
    }
    let up: Vec<&String> = s.active_sites.iter().filter(|x| !down(x)).collect();
    if up.is_empty() {
        (State::MajorOutage, "no active site".into())
    } else {
        (
            State::Operational,
            format!(
                "served from {}",
                up.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )
    }
}

fn dataset_state(d: &DatasetStatus) -> (State, String) {
    let primary = d.members.iter().find(|m| m.role == "primary");
    let Some(p) = primary else {
        return (State::MajorOutage, "no member takes writes".into());
    };
    let standbys = d.members.iter().filter(|m| m.role == "standby").count();
    let others = d.members.len().saturating_sub(1);
    if standbys < others {
        (
            State::Degraded,
            format!(
                "writes at {}; {standbys} of {others} other members stream from it",
                p.site
            ),
        )
    } else {
        (State::Operational, format!("writes at {}", p.site))
    }
}

/// What the answering site sees, as a status page.
pub fn summary(st: &Status) -> Summary {
    let mut components = Vec::new();
    for s in &st.services {
        let (state, description) = service_state(s, st);
        components.push(Component {
            id: format!("service-{}", s.name),
            name: s.name.clone(),
            group: "Services",
            days: Vec::new(),
            uptime: None,
            state,
            description,
        });
    }
    for d in &st.datasets {
        let (state, description) = dataset_state(d);
        components.push(Component {
            id: format!("dataset-{}", d.name),
            name: d.name.clone(),
            group: "Datasets",
            days: Vec::new(),
            uptime: None,
            state,
            description,
        });
    }
    for s in &st.streams {
        let late = s
            .oldest_unshipped_ms
            .is_some_and(|t| st.at_ms.saturating_sub(t) > 60_000);
        components.push(Component {
            id: format!("stream-{}", s.name),
            name: s.name.clone(),
            group: "Streams",
            days: Vec::new(),
            uptime: None,
            state: if late {
                State::Degraded
            } else {
                State::Operational
            },
            description: if late {
                format!(
                    "events accepted; {} wait to be shipped, the oldest for over a minute",
                    s.spool_events
                )
            } else {
                "events accepted and shipped".into()
            },
        });
    }
    for d in &st.dependencies {
        let state = match d.state.as_str() {
            "down" => State::MajorOutage,
            "degraded" => State::Degraded,
            _ => State::Operational,
        };
        let mut description = if d.services.is_empty() {
            format!("{} endpoint(s)", d.endpoints.len())
        } else {
            format!("used by {}", d.services.join(", "))
        };
        if !d.seen_by.is_empty() {
            let _ = write!(description, "; {} from {}", d.state, d.seen_by.join(", "));
        }
        components.push(Component {
            id: format!("dependency-{}", d.name),
            name: d.name.clone(),
            group: "Dependencies",
            days: Vec::new(),
            uptime: None,
            state,
            description,
        });
    }
    for s in &st.sites {
        let state = match s.state.as_str() {
            "up" => State::Operational,
            "down" => State::MajorOutage,
            "maintenance" => State::UnderMaintenance,
            _ => State::Degraded,
        };
        components.push(Component {
            id: format!("site-{}", s.name),
            name: s.name.clone(),
            group: "Sites",
            days: Vec::new(),
            uptime: None,
            state,
            description: format!("{}{}", if s.witness { "witness, " } else { "" }, s.state),
        });
    }
    // Uptime: from the committed outages, the same at every site.
    let dataset_service: std::collections::BTreeMap<&str, &str> = st
        .datasets
        .iter()
        .map(|d| (d.name.as_str(), d.service.as_str()))
        .collect();
    for c in &mut components {
        let key = match c.group {
            "Services" => Some(format!("service-{}", c.name)),
            "Sites" => Some(format!("site-{}", c.name)),
            "Dependencies" => Some(format!("dependency-{}", c.name)),
            "Datasets" => dataset_service
                .get(c.name.as_str())
                .filter(|s| !s.is_empty())
                .map(|s| format!("service-{s}")),
            _ => None,
        };
        if let Some(k) = key {
            c.days = st.history.days(&k, UPTIME_DAYS, st.at_ms);
            c.uptime = st.history.uptime(&k, UPTIME_DAYS, st.at_ms);
        }
    }
    let incidents = st
        .history
        .incidents
        .iter()
        .rev()
        .map(|i| committed(i, st, &dataset_service))
        .collect();
    Summary {
        cluster: st.cluster.clone(),
        seen_by: st.site.clone(),
        at_ms: st.at_ms,
        components,
        incidents,
    }
}

/// How many days of uptime the page draws.
pub const UPTIME_DAYS: u64 = 90;

/// A committed incident, with the phases this site saw of the moves it covers.
fn committed(
    i: &outlast_core::incident::Incident,
    st: &Status,
    dataset_service: &std::collections::BTreeMap<&str, &str>,
) -> Incident {
    let mut components: Vec<String> = i.components.iter().cloned().collect();
    for (d, s) in dataset_service {
        if i.components.contains(&format!("service-{s}")) {
            components.push(format!("dataset-{d}"));
        }
    }
    let end = i.resolved_ms.unwrap_or(st.at_ms);
    let mut phases = Vec::new();
    for f in &st.failovers {
        let Some(first) = f.phases.iter().map(|p| p.at_ms).min() else {
            continue;
        };
        let ours = i.components.contains(&format!("service-{}", f.what))
            && first + 60_000 >= i.started_ms
            && first <= end + 1000;
        if !ours {
            continue;
        }
        let mut ps = f.phases.clone();
        ps.sort_by_key(|p| p.at_ms);
        for p in ps {
            phases.push((p.at_ms, format!("{}: {}", f.what, phase_text(&p.name, f))));
        }
    }
    phases.sort_by_key(|p| p.0);
    Incident {
        id: i.id.to_string(),
        name: i.title.clone(),
        status: i.status.word(),
        impact: i.impact.word(),
        started_ms: i.started_ms,
        updated_ms: i.updates.last().map_or(i.started_ms, |u| u.at_ms),
        resolved_ms: i.resolved_ms,
        updates: i
            .updates
            .iter()
            .map(|u| {
                let body = match &u.by {
                    Some(by) => format!("{} ({by})", u.body),
                    None => u.body.clone(),
                };
                (u.at_ms, u.status.word(), body)
            })
            .collect(),
        components,
        phases,
    }
}

fn phase_text(name: &str, f: &FailoverStatus) -> String {
    let from = f.from.as_deref().unwrap_or("the old primary");
    let failover = f.reason.eq_ignore_ascii_case("failover");
    match name {
        "last-heard" => format!("{from} was last heard from."),
        "declared" if failover => format!("{from} was declared down by a majority of sites."),
        "declared" => format!(
            "The cluster decided to move the primary ({}).",
            f.reason.to_lowercase()
        ),
        "old-lease-over" => format!("{from}'s lease ran out: it can no longer take writes."),
        "acting" => format!("{} acts as the primary.", f.to),
        "db-promoted" => format!("The database at {} was promoted.", f.to),
        "dns-published" => "DNS answers name the new primary.".into(),
        "gateway-switched" => "Every gateway sends traffic to the new primary.".into(),
        other => other.to_string(),
    }
}

impl Summary {
    /// The worst state of any component.
    pub fn worst(&self) -> State {
        self.components
            .iter()
            .map(|c| c.state)
            .max()
            .unwrap_or(State::Operational)
    }

    /// Statuspage's overall indicator and its description: `critical` when a service or
    /// dataset is out, `major` when a site is, `minor` when anything is degraded.
    pub fn indicator(&self) -> (&'static str, &'static str) {
        let out = |groups: &[&str]| {
            self.components.iter().any(|c| {
                groups.contains(&c.group)
                    && matches!(c.state, State::MajorOutage | State::PartialOutage)
            })
        };
        if out(&["Services", "Datasets"]) {
            ("critical", "Major Service Outage")
        } else if out(&["Sites", "Streams", "Dependencies"]) {
            ("major", "Partial System Outage")
        } else if self.worst() == State::Degraded {
            ("minor", "Minor Service Outage")
        } else if self.worst() == State::UnderMaintenance {
            ("none", "Service Under Maintenance")
        } else {
            ("none", "All Systems Operational")
        }
    }

    /// `/status.json`: Statuspage's `summary.json` shape.
    pub fn json(&self) -> Value {
        let page_id = format!("outlast-{}", self.cluster);
        let at = rfc3339(self.at_ms as i64);
        let mut components: Vec<Value> = Vec::new();
        for (gi, g) in GROUPS.iter().enumerate() {
            let members: Vec<&Component> =
                self.components.iter().filter(|c| c.group == *g).collect();
            if members.is_empty() {
                continue;
            }
            let group_id = format!("group-{}", g.to_lowercase());
            let worst = members
                .iter()
                .map(|c| c.state)
                .max()
                .unwrap_or(State::Operational);
            components.push(json!({
                "id": group_id, "name": g, "status": worst.word(), "created_at": at,
                "updated_at": at, "position": gi * 100, "description": null, "showcase": false,
                "start_date": null, "group_id": null, "page_id": page_id, "group": true,
                "only_show_if_degraded": false,
                "components": members.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
            }));
            for (i, c) in members.iter().enumerate() {
                components.push(json!({
                    "id": c.id, "name": c.name, "status": c.state.word(), "created_at": at,
                    "updated_at": at, "position": gi * 100 + i + 1,
                    "description": c.description, "showcase": true, "start_date": null,
                    "group_id": group_id, "page_id": page_id, "group": false,
                    "only_show_if_degraded": false,
                    "uptime_90d": c.uptime,
                }));
            }
        }
        let incident = |i: &Incident| {
            let updates: Vec<Value> = i
                .updates
                .iter()
                .enumerate()
                .rev()
                .map(|(n, (t, status, body))| {
                    let t = rfc3339(*t as i64);
                    json!({
                        "id": format!("{}-{n}", i.id), "status": status, "body": body,
                        "incident_id": i.id, "created_at": t, "updated_at": t,
                        "display_at": t, "affected_components": null,
                    })
                })
                .collect();
            json!({
                "id": i.id, "name": i.name, "status": i.status, "impact": i.impact,
                "created_at": rfc3339(i.started_ms as i64),
                "updated_at": rfc3339(i.updated_ms as i64),
                "started_at": rfc3339(i.started_ms as i64),
                "monitoring_at": i.updates.iter().find(|u| u.1 == "monitoring").map(|u| rfc3339(u.0 as i64)),
                "resolved_at": i.resolved_ms.map(|t| rfc3339(t as i64)),
                "shortlink": format!("/status#{}", i.id), "page_id": page_id,
                "incident_updates": updates,
                "phases_seen_here": i.phases.iter().map(|(t, what)| json!({"at": rfc3339(*t as i64), "what": what})).collect::<Vec<_>>(),
                "components": self.components.iter().filter(|c| i.components.contains(&c.id))
                    .map(|c| json!({"id": c.id, "name": c.name, "status": c.state.word()}))
                    .collect::<Vec<_>>(),
            })
        };
        let (indicator, description) = self.indicator();
        json!({
            "page": {
                "id": page_id,
                "name": format!("{} status", self.cluster),
                "url": "/status",
                "time_zone": "Etc/UTC",
                "updated_at": at,
            },
            "status": {"indicator": indicator, "description": description},
            "components": components,
            "incidents": self.incidents.iter().filter(|i| i.resolved_ms.is_none()).map(incident).collect::<Vec<_>>(),
            "scheduled_maintenances": [],
            "past_incidents": self.incidents.iter().filter(|i| i.resolved_ms.is_some()).map(incident).collect::<Vec<_>>(),
        })
    }

    /// `/status/feed.atom`: an entry per incident, newest update first.
    pub fn atom(&self) -> String {
        let updated = self
            .incidents
            .iter()
            .map(|i| i.updated_ms)
            .max()
            .unwrap_or(self.at_ms);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
<title>{} status</title>
<id>urn:outlast:{}:status</id>
<link href="/status"/>
<updated>{}</updated>
<author><name>outlast at {}</name></author>
"#,
            esc(&self.cluster),
            esc(&self.cluster),
            rfc3339(updated as i64),
            esc(&self.seen_by)
        );
        let mut all: Vec<&Incident> = self.incidents.iter().collect();
        all.sort_by_key(|i| std::cmp::Reverse(i.updated_ms));
        for i in all {
            let mut body = String::new();
            for (t, status, text) in i.updates.iter().rev() {
                let _ = write!(
                    body,
                    "<p><b>{}</b> ({}) {}</p>",
                    esc(status),
                    esc(&rfc3339(*t as i64)),
                    esc(text)
                );
            }
            let _ = write!(
                s,
                r#"<entry>
<id>urn:outlast:{}:{}</id>
<title>{} ({})</title>
<link href="/status#{}"/>
<published>{}</published>
<updated>{}</updated>
<content type="html">{}</content>
</entry>
"#,
                esc(&self.cluster),
                esc(&i.id),
                esc(&i.name),
                esc(i.status),
                esc(&i.id),
                rfc3339(i.started_ms as i64),
                rfc3339(i.updated_ms as i64),
                esc(&body)
            );
        }
        s.push_str("</feed>\n");
        s
    }

    /// `/status`: the page, readable without JavaScript.
    pub fn html(&self) -> String {
        let (_, description) = self.indicator();
        let worst = self.worst();
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>{c} status</title>
<link rel="alternate" type="application/atom+xml" href="/status/feed.atom" title="{c} incidents">
<style>body{{font-family:system-ui,sans-serif;margin:0 auto;padding:24px;max-width:820px;color:#222}}.banner{{padding:18px 20px;border-radius:6px;color:#fff;font-size:22px;font-weight:600}}h2{{margin-top:32px;font-size:18px;border-bottom:1px solid #ddd;padding-bottom:6px}}.row{{display:flex;justify-content:space-between;padding:10px 4px;border-bottom:1px solid #eee}}.row small{{color:#666;display:block}}.state{{font-weight:600;white-space:nowrap}}.inc{{border-left:4px solid #ccc;padding:4px 12px;margin:14px 0}}.inc p{{margin:4px 0}}.meta{{color:#666;font-size:13px}}.bars{{display:flex;gap:2px;height:26px;margin:6px 4px 0}}.bars span{{flex:1;border-radius:2px}}.axis{{display:flex;justify-content:space-between;color:#888;font-size:12px;margin:2px 4px 10px}}.phase{{color:#555;font-size:13px;margin-left:14px}}footer{{margin-top:40px;color:#888;font-size:13px}}</style></head><body>
<h1>{c}</h1>
<div class="banner" style="background:{bg}">{d}</div>
"#,
            c = esc(&self.cluster),
            bg = match self.indicator().0 {
                "critical" => State::MajorOutage.colour(),
                "major" => State::PartialOutage.colour(),
                "minor" => State::Degraded.colour(),
                _ if worst == State::UnderMaintenance => worst.colour(),
                _ => State::Operational.colour(),
            },
            d = esc(description)
        );
        let open: Vec<&Incident> = self
            .incidents
            .iter()
            .filter(|i| i.resolved_ms.is_none())
            .collect();
        if !open.is_empty() {
            s.push_str("<h2>Active incidents</h2>");
            for i in open {
                incident_html(&mut s, i, "#d22");
            }
        }
        for g in GROUPS {
            let members: Vec<&Component> =
                self.components.iter().filter(|c| c.group == g).collect();
            if members.is_empty() {
                continue;
            }
            let _ = write!(s, "<h2>{g}</h2>");
            for c in members {
                let _ = write!(
                    s,
                    r#"<div class="row" id="{}"><div>{}<small>{}</small></div><div class="state" style="color:{}">● {}</div></div>"#,
                    esc(&c.id),
                    esc(&c.name),
                    esc(&c.description),
                    c.state.colour(),
                    c.state.said()
                );
                bars_html(&mut s, c);
            }
        }
        let past: Vec<&Incident> = self
            .incidents
            .iter()
            .filter(|i| i.resolved_ms.is_some())
            .collect();
        s.push_str("<h2>Past incidents</h2>");
        if past.is_empty() {
            s.push_str("<p class=\"meta\">None recorded.</p>");
        }
        for i in past {
            incident_html(&mut s, i, "#2a7");
        }
        let _ = writeln!(
            s,
            r#"<footer>As seen by site {} at {}. Every site of the cluster serves this page; <a href="/status.json">JSON</a> · <a href="/status/feed.atom">Atom feed</a>.</footer></body></html>"#,
            esc(&self.seen_by),
            rfc3339(self.at_ms as i64)
        );
        s
    }
}

/// A component's daily bars (none drawn when the history keeps none for it).
fn bars_html(s: &mut String, c: &Component) {
    if c.days.is_empty() {
        return;
    }
    s.push_str(r#"<div class="bars">"#);
    for d in &c.days {
        let (y, m, day) = outlast_core::clock::civil((d.day_ms / 86_400_000) as i64);
        let (colour, text) = match d.uptime {
            None => ("#ddd", "no data".to_string()),
            Some(u) => {
                let colour = match d.worst.as_deref() {
                    None => State::Operational.colour(),
                    Some("under_maintenance") if u >= 1.0 => State::UnderMaintenance.colour(),
                    _ if u >= 0.9999 => "#8c4",
                    _ if u >= 0.99 => State::Degraded.colour(),
                    _ if u >= 0.9 => State::PartialOutage.colour(),
                    _ => State::MajorOutage.colour(),
                };
                let mut text = format!("{:.2} % up", u * 100.0);
                if d.down_ms > 0 {
                    let _ = write!(text, ", {} down", human_ms(d.down_ms));
                }
                if let Some(w) = &d.worst {
                    let _ = write!(text, " (worst: {})", w.replace('_', " "));
                }
                (colour, text)
            }
        };
        let _ = write!(
            s,
            r#"<span style="background:{colour}" title="{y:04}-{m:02}-{day:02}: {}"></span>"#,
            esc(&text)
        );
    }
    let _ = write!(
        s,
        r#"</div><div class="axis"><span>{} days ago</span><span>{}</span><span>today</span></div>"#,
        c.days.len(),
        c.uptime
            .map_or("no uptime known yet".to_string(), |u| format!(
                "{:.3} % uptime",
                u * 100.0
            ))
    );
}

use outlast_core::duration::human_ms;

fn incident_html(s: &mut String, i: &Incident, colour: &str) {
    let _ = write!(
        s,
        r#"<div class="inc" id="{}" style="border-color:{colour}"><b>{}</b> <span class="meta">{} · impact {} · from {}</span>"#,
        esc(&i.id),
        esc(&i.name),
        esc(i.status),
        esc(i.impact),
        rfc3339(i.started_ms as i64)
    );
    for (t, status, text) in i.updates.iter().rev() {
        let _ = write!(
            s,
            "<p><b>{}</b> <span class=\"meta\">{}</span> {}</p>",
            esc(status),
            rfc3339(*t as i64),
            esc(text)
        );
    }
    for (t, what) in &i.phases {
        let _ = write!(
            s,
            "<div class=\"phase\">{} · {}</div>",
            rfc3339(*t as i64),
            esc(what)
        );
    }
    s.push_str("</div>");
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
