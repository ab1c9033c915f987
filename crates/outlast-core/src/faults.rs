//! Faults a drill injects on purpose into a running agent (`POST /v1/faults`).
//!
//! Every fault carries its own end: an agent forgets it by itself when that time comes, so
//! a drill that dies half-way never leaves a site cut off. The set is pure state (no I/O):
//! the peer channel asks `cut` and `delay` before each call and on each request it takes,
//! and the relay asks `sink_down` before each object it writes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The longest a fault may last: a forgotten one still ends within the hour.
pub const MAX_FAULT: Duration = Duration::from_secs(3600);

/// What a fault does, as `POST /v1/faults` takes it (`{"kind": "partition", ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultKind {
    /// Peer traffic with these sites is cut, both ways, at this agent.
    Partition { from: BTreeSet<String> },
    /// Every peer call to these sites (all peers when empty) waits `ms` first.
    Delay {
        ms: u64,
        #[serde(default)]
        to: BTreeSet<String>,
    },
    /// Object writes to the sinks of this site (every sink when absent) fail.
    SinkDown {
        #[serde(default)]
        site: Option<String>,
    },
    /// A dependency's endpoint (`endpoint`; its first when absent; every one with "all")
    /// cannot be reached from this site: its probes fail and its egress forwarder does not
    /// connect to it, as in a real outage of that endpoint.
    DepDown {
        dep: String,
        #[serde(default)]
        endpoint: Option<String>,
    },
    /// The agent stops (SIGSTOP) and is continued when the fault ends.
    Stop {},
    /// The agent is killed (SIGKILL) at once; it comes back only if something restarts it.
    Kill {},
}

impl FaultKind {
    pub fn describe(&self) -> String {
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            FaultKind::Partition { from } => format!("partition from {}", list(from)),
            FaultKind::Delay { ms, to } if to.is_empty() => format!("delay {ms} ms"),
            FaultKind::Delay { ms, to } => format!("delay {ms} ms to {}", list(to)),
            FaultKind::SinkDown { site: Some(s) } => format!("sink-down {s}"),
            FaultKind::SinkDown { site: None } => "sink-down".into(),
            FaultKind::DepDown {
                dep,
                endpoint: None,
            } => format!("dep-down {dep}"),
            FaultKind::DepDown {
                dep,
                endpoint: Some(e),
            } => format!("dep-down {dep} {e}"),
            FaultKind::Stop {} => "stop".into(),
            FaultKind::Kill {} => "kill".into(),
        }
    }
}

/// One active fault as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultView {
    pub id: u64,
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Milliseconds until it ends by itself.
    pub remaining_ms: u64,
}

struct Active {
    id: u64,
    kind: FaultKind,
    until: Instant,
}

/// The faults active at one agent.
#[derive(Default)]
pub struct Faults {
    active: Mutex<Vec<Active>>,
    next: AtomicU64,
}

impl Faults {
    fn live(&self) -> std::sync::MutexGuard<'_, Vec<Active>> {
        let mut g = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::clock::now();
        g.retain(|a| a.until > now);
        g
    }

    /// Adds a fault for `lasting` (at most [`MAX_FAULT`]); its id.
    pub fn add(&self, kind: FaultKind, lasting: Duration) -> FaultView {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let lasting = lasting.min(MAX_FAULT);
        self.live().push(Active {
            id,
            kind: kind.clone(),
            until: crate::clock::now() + lasting,
        });
        FaultView {
            id,
            kind,
            remaining_ms: lasting.as_millis() as u64,
        }
    }

    /// Ends one fault (`Some(id)`) or all; how many ended.
    pub fn clear(&self, id: Option<u64>) -> usize {
        let mut g = self.live();
        let before = g.len();
        g.retain(|a| id.is_some_and(|id| a.id != id));
        before - g.len()
    }

    pub fn list(&self) -> Vec<FaultView> {
        let now = crate::clock::now();
        self.live()
            .iter()
            .map(|a| FaultView {
                id: a.id,
                kind: a.kind.clone(),
                remaining_ms: a.until.saturating_duration_since(now).as_millis() as u64,
            })
            .collect()
    }

    /// Whether peer traffic with `peer` is cut.
    pub fn cut(&self, peer: &str) -> bool {
        self.live()
            .iter()
            .any(|a| matches!(&a.kind, FaultKind::Partition { from } if from.contains(peer)))
    }

    /// How long a call to `peer` waits before it goes out (the longest delay that applies).
    pub fn delay(&self, peer: &str) -> Duration {
        self.live()
            .iter()
            .filter_map(|a| match &a.kind {
                FaultKind::Delay { ms, to } if to.is_empty() || to.contains(peer) => {
                    Some(Duration::from_millis(*ms))
                }
                _ => None,
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Whether writes to a sink of `sink_site` (None: a sink of no site) must fail.
    /// Whether a drill cut endpoint `endpoint` of dependency `dep` (`first`: it is the
    /// dependency's first endpoint).
    pub fn dep_cut(&self, dep: &str, endpoint: &str, first: bool) -> bool {
        self.live().iter().any(|a| match &a.kind {
            FaultKind::DepDown {
                dep: d,
                endpoint: e,
            } if d == dep => match e.as_deref() {
                None => first,
                Some("all") => true,
                Some(e) => e == endpoint,
            },
            _ => false,
        })
    }

    pub fn sink_down(&self, sink_site: Option<&str>) -> bool {
        self.live().iter().any(|a| match &a.kind {
            FaultKind::SinkDown { site: None } => true,
            FaultKind::SinkDown { site: Some(s) } => Some(s.as_str()) == sink_site,
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    // A plain test thread, no runtime to block.
    #[allow(clippy::disallowed_methods)]
    fn faults_apply_to_what_they_name_and_end_by_themselves() {
        let f = Faults::default();
        let p = f.add(
            FaultKind::Partition {
                from: set(&["west"]),
            },
            Duration::from_secs(60),
        );
        f.add(
            FaultKind::Delay {
                ms: 80,
                to: set(&[]),
            },
            Duration::from_millis(30),
        );
        f.add(
            FaultKind::SinkDown {
                site: Some("east".into()),
            },
            Duration::from_secs(60),
        );
        assert!(f.cut("west") && !f.cut("witness"));
        assert_eq!(f.delay("west"), Duration::from_millis(80));
        assert!(f.sink_down(Some("east")) && !f.sink_down(Some("west")) && !f.sink_down(None));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(f.delay("west"), Duration::ZERO, "the delay ended by itself");
        assert_eq!(f.list().len(), 2);
        assert_eq!(f.clear(Some(p.id)), 1);
        assert!(!f.cut("west"));
        assert_eq!(f.clear(None), 1);
        assert!(f.list().is_empty());
    }

    #[test]
    fn a_fault_never_outlasts_the_cap() {
        let f = Faults::default();
        let v = f.add(FaultKind::Stop {}, Duration::from_secs(1 << 30));
        assert_eq!(v.remaining_ms, MAX_FAULT.as_millis() as u64);
    }

    #[test]
    fn the_api_form_is_tagged_by_kind() {
        let k: FaultKind =
            serde_json::from_str(r#"{"kind":"delay","ms":80,"to":["west"]}"#).expect("delay");
        assert_eq!(
            k,
            FaultKind::Delay {
                ms: 80,
                to: set(&["west"])
            }
        );
        assert!(serde_json::from_str::<FaultKind>(r#"{"kind":"flood"}"#).is_err());
        assert!(serde_json::from_str::<FaultKind>(r#"{"kind":"stop","extra":1}"#).is_err());
    }
}
