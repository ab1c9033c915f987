//! The cluster's incident history, as committed through Raft: every site applies the same
//! entries in the same order, so every site shows the same incidents, the same updates and
//! the same uptime. The rules that write it live in `outlast-control` (`history.rs`); this
//! is the data, shared with the status page and the API.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// How many incidents the history keeps (the oldest resolved ones go first).
pub const KEEP_INCIDENTS: usize = 200;
/// How long an ended outage is kept: the status page draws 90 days.
pub const KEEP_OUTAGE_MS: u64 = 91 * 86_400_000;

/// The four steps of an incident, in Statuspage's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Investigating,
    Identified,
    Monitoring,
    Resolved,
}

impl Step {
    pub fn word(self) -> &'static str {
        match self {
            Step::Investigating => "investigating",
            Step::Identified => "identified",
            Step::Monitoring => "monitoring",
            Step::Resolved => "resolved",
        }
    }

    /// Parses an operator's word; the error lists the accepted ones.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "investigating" => Ok(Step::Investigating),
            "identified" => Ok(Step::Identified),
            "monitoring" => Ok(Step::Monitoring),
            "resolved" => Ok(Step::Resolved),
            other => Err(format!(
                "unknown status {other:?}: use investigating, identified, monitoring or resolved"
            )),
        }
    }
}

/// An incident's impact, in Statuspage's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Impact {
    None,
    Maintenance,
    Minor,
    Major,
    Critical,
}

impl Impact {
    pub fn word(self) -> &'static str {
        match self {
            Impact::None => "none",
            Impact::Maintenance => "maintenance",
            Impact::Minor => "minor",
            Impact::Major => "major",
            Impact::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Impact::None),
            "maintenance" => Ok(Impact::Maintenance),
            "minor" => Ok(Impact::Minor),
            "major" => Ok(Impact::Major),
            "critical" => Ok(Impact::Critical),
            other => Err(format!(
                "unknown impact {other:?}: use none, maintenance, minor, major or critical"
            )),
        }
    }
}

/// One update of an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Unix ms, as the leader that committed it read its clock.
    pub at_ms: u64,
    pub status: Step,
    pub body: String,
    /// Who wrote it: none for the cluster itself, else what the operator gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// One incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// 1, 2, 3, … in commit order, the same at every site.
    pub id: u64,
    pub title: String,
    pub status: Step,
    pub impact: Impact,
    /// What opened it (`site:east`, `service:orders`, `maintenance:east`, `sync:orders`);
    /// none for one an operator opened. At most one open incident per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Components it touched: `site-NAME`, `service-NAME`.
    pub components: BTreeSet<String>,
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<u64>,
    /// Oldest first.
    pub updates: Vec<Update>,
    /// Services that moved away during it, each with the site it left; emptied as they move
    /// back. A site incident resolves once its site is up and this is empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub moved: BTreeMap<String, String>,
}

impl Incident {
    pub fn is_open(&self) -> bool {
        self.resolved_ms.is_none()
    }

    /// Adds the cluster's own update and takes its status (resolving it when `resolved`).
    pub fn note(&mut self, at_ms: u64, status: Step, body: String) {
        self.status = status;
        if status == Step::Resolved {
            self.resolved_ms = Some(at_ms);
        }
        self.updates.push(Update {
            at_ms,
            status,
            body,
            by: None,
        });
    }
}

/// A span of time a component was not operational, derived from the committed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    /// `site-NAME` or `service-NAME`.
    pub component: String,
    /// `major_outage`, `partial_outage`, `degraded_performance` or `under_maintenance`.
    pub state: String,
    pub start_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
}

/// The whole history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// When the first entry carrying a time was committed: uptime is not known before.
    #[serde(default)]
    pub since_ms: Option<u64>,
    #[serde(default)]
    pub next_id: u64,
    #[serde(default)]
    pub incidents: Vec<Incident>,
    #[serde(default)]
    pub outages: Vec<Outage>,
}

/// One day's bar of a component: its uptime and its worst state that day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// Unix ms of the day's start (UTC midnight).
    pub day_ms: u64,
    /// None: the cluster's history does not reach that day.
    pub uptime: Option<f64>,
    /// Ms of outage that day (maintenance not counted).
    pub down_ms: u64,
    /// The worst state that day, none when operational throughout.
    pub worst: Option<String>,
}

const DAY_MS: u64 = 86_400_000;

fn rank(state: &str) -> u8 {
    match state {
        "major_outage" => 4,
        "partial_outage" => 3,
        "degraded_performance" => 2,
        "under_maintenance" => 1,
        _ => 0,
    }
}

impl History {
    /// `days` daily bars for `component`, oldest first, the last one being today (UTC) up to
    /// `now_ms`. A day counts its downtime as the union of its outages (maintenance is not
    /// downtime); partial outages and degraded spans count half and a tenth, so a bar tells
    /// how much of the day the component failed its users.
    pub fn days(&self, component: &str, days: u64, now_ms: u64) -> Vec<Day> {
        let today = now_ms / DAY_MS * DAY_MS;
        let first = today.saturating_sub((days.saturating_sub(1)) * DAY_MS);
        let mine: Vec<&Outage> = self
            .outages
            .iter()
            .filter(|o| o.component == component)
            .collect();
        (0..days)
            .map(|i| {
                let start = first + i * DAY_MS;
                let end = (start + DAY_MS).min(now_ms.max(start));
                let known_from = self.since_ms.unwrap_or(u64::MAX).max(start);
                if known_from >= end {
                    return Day {
                        day_ms: start,
                        uptime: None,
                        down_ms: 0,
                        worst: None,
                    };
                }
                let mut weighted = 0.0;
                let mut down_ms = 0;
                let mut worst: Option<&str> = None;
                for o in &mine {
                    let a = o.start_ms.max(known_from);
                    let b = o.end_ms.unwrap_or(now_ms).min(end);
                    if b <= a {
                        continue;
                    }
                    if worst.is_none_or(|w| rank(&o.state) > rank(w)) {
                        worst = Some(&o.state);
                    }
                    let weight = match o.state.as_str() {
                        "major_outage" => 1.0,
                        "partial_outage" => 0.5,
                        "degraded_performance" => 0.1,
                        _ => 0.0,
                    };
                    if weight > 0.0 {
                        down_ms += b - a;
                    }
                    weighted += weight * (b - a) as f64;
                }
                let span = (end - known_from) as f64;
                Day {
                    day_ms: start,
                    uptime: Some((1.0 - weighted / span).clamp(0.0, 1.0)),
                    down_ms,
                    worst: worst.map(str::to_string),
                }
            })
            .collect()
    }

    /// The uptime over the days drawn, weighted by how much of each is known.
    pub fn uptime(&self, component: &str, days: u64, now_ms: u64) -> Option<f64> {
        let bars = self.days(component, days, now_ms);
        let known: Vec<&Day> = bars.iter().filter(|d| d.uptime.is_some()).collect();
        if known.is_empty() {
            return None;
        }
        let n = known.len() as f64;
        Some(known.iter().filter_map(|d| d.uptime).sum::<f64>() / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_with_an_hour_down_shows_its_share() {
        let day0 = 20_000 * DAY_MS;
        let h = History {
            since_ms: Some(day0),
            outages: vec![
                Outage {
                    component: "service-a".into(),
                    state: "major_outage".into(),
                    start_ms: day0 + 3_600_000,
                    end_ms: Some(day0 + 7_200_000),
                },
                Outage {
                    component: "service-a".into(),
                    state: "under_maintenance".into(),
                    start_ms: day0 + DAY_MS,
                    end_ms: Some(day0 + DAY_MS + 1000),
                },
            ],
            ..Default::default()
        };
        let bars = h.days("service-a", 3, day0 + 2 * DAY_MS + DAY_MS / 2);
        assert_eq!(bars.len(), 3);
        let up0 = bars[0].uptime.unwrap_or(0.0);
        assert!((up0 - 23.0 / 24.0).abs() < 1e-9, "{up0}");
        assert_eq!(bars[0].down_ms, 3_600_000);
        assert_eq!(bars[0].worst.as_deref(), Some("major_outage"));
        assert_eq!(bars[1].uptime, Some(1.0));
        assert_eq!(bars[1].worst.as_deref(), Some("under_maintenance"));
        assert_eq!(bars[2].uptime, Some(1.0));
        // Before the history starts, nothing is known.
        let early = h.days("service-a", 5, day0 + DAY_MS / 2);
        assert!(early[..4].iter().all(|d| d.uptime.is_none()));
        // Today so far: 12 h known, one of them down.
        let today = early[4].uptime.unwrap_or(0.0);
        assert!((today - 11.0 / 12.0).abs() < 1e-9, "{today}");
    }
}
