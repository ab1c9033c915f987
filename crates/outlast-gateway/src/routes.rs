//! What the gateway follows: per service, where to send requests right now.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The routing of every service as this site sees it, rebuilt by the agent on each commit
/// and each health change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    pub services: BTreeMap<String, ServiceRoute>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceRoute {
    /// Epoch of the decision this route follows.
    pub epoch: u64,
    /// Serve with local backends: active here and, for primary-standby, acting as primary.
    pub local: bool,
    /// Refuse with 503 + Retry-After: primary-standby on a fenced site.
    pub refuse: bool,
    /// Primary-standby: served locally only while [`LeaseClock`] says the lease holds.
    pub primary_standby: bool,
    /// Local backends not known to be down, in config order.
    pub backends: Vec<SocketAddr>,
    /// When the health check last saw each local backend come up (absent: never yet). A
    /// backend ejected for a refused connection is used again as soon as it comes up after
    /// the ejection, not only when the ejection runs out (a backend still starting when the
    /// first request came).
    pub up_since: BTreeMap<SocketAddr, Instant>,
    /// Gateways of the other sites where the service is active.
    pub remotes: Vec<SocketAddr>,
    /// Served only at sites this site cannot reach while others can (a cut link, not a
    /// site loss: no failover is coming). Answered 503 + `Retry-After` at once, where a
    /// request would otherwise wait out connect timeouts for a route change that never
    /// comes (found by probing: a GET hung 12 s).
    #[doc(alias = "cut")]
    pub unreachable: bool,
}

impl ServiceRoute {
    /// Whether this site must refuse the service: fenced, or a primary-standby service
    /// served here whose lease has just run out.
    pub fn refuses(&self, lease: &LeaseClock) -> bool {
        self.refuse || (self.primary_standby && self.local && !lease.holds())
    }
}

pub use outlast_core::clock::LeaseClock;

/// Where one attempt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// Another site's gateway (one hop) rather than a local backend.
    pub remote: bool,
}

/// Per-target counters of one service's gateway, read by the agent for its status. The
/// request path only touches atomics and metric handles registered once per target.
#[derive(Debug, Default)]
pub struct Stats {
    requests: std::sync::atomic::AtomicU64,
    targets: std::sync::RwLock<FxHashMap<SocketAddr, Arc<TargetCounters>>>,
}

#[derive(Debug)]
struct TargetCounters {
    served: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    served_metric: metrics::Counter,
    failed_metric: metrics::Counter,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TargetStats {
    /// Requests (or TCP connections) that got an answer from this target.
    pub served: u64,
    /// Attempts that failed at this target (connect errors, or failures after sending).
    pub failed: u64,
}

impl Stats {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn counters(&self, service: &str, target: &Target) -> Arc<TargetCounters> {
        if let Some(c) = self
            .targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&target.addr)
        {
            return c.clone();
        }
        let kind = if target.remote { "site" } else { "backend" };
        let labels = |outcome: &'static str| metrics::counter!("outlast_gateway_target_requests_total", "service" => service.to_string(), "target" => target.addr.to_string(), "kind" => kind, "outcome" => outcome);
        let fresh = Arc::new(TargetCounters {
            served: Default::default(),
            failed: Default::default(),
            served_metric: labels("served"),
            failed_metric: labels("failed"),
        });
        let mut all = self.targets.write().unwrap_or_else(|p| p.into_inner());
        all.entry(target.addr).or_insert(fresh).clone()
    }

    pub(crate) fn record(&self, service: &str, target: &Target, ok: bool) {
        let c = self.counters(service, target);
        if ok {
            c.served.fetch_add(1, Ordering::Relaxed);
            c.served_metric.increment(1);
        } else {
            c.failed.fetch_add(1, Ordering::Relaxed);
            c.failed_metric.increment(1);
        }
    }

    /// Requests (HTTP) or connections (TCP) received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn targets(&self) -> BTreeMap<SocketAddr, TargetStats> {
        self.targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(a, c)| {
                (
                    *a,
                    TargetStats {
                        served: c.served.load(Ordering::Relaxed),
                        failed: c.failed.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }
}

/// Round-robin position and passive ejections of one service's backends.
#[derive(Default)]
pub(crate) struct Balancer {
    next: AtomicUsize,
    /// Ejected backends and when they were ejected.
    ejected: Mutex<FxHashMap<SocketAddr, Instant>>,
}

/// How long a backend that refused a connection is skipped before it is tried again.
pub(crate) const EJECT_FOR: Duration = Duration::from_secs(2);

impl Balancer {
    pub(crate) fn eject(&self, addr: SocketAddr) {
        let mut e = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        e.insert(addr, outlast_core::clock::now());
        metrics::counter!("outlast_gateway_ejections_total", "backend" => addr.to_string())
            .increment(1);
    }

    /// The targets to try, in order: usable local backends starting at the round-robin
    /// position, then (unless this request already made its hop) the remote gateways, then,
    /// when every local backend is ejected, those. Ejection is a hint, not a verdict: an
    /// ejected backend is still tried, but after the other sites, so that a dead backend
    /// does not cost every request a retry (and the retry budget) while its health check
    /// catches up.
    pub(crate) fn targets(&self, route: &ServiceRoute, may_hop: bool) -> Vec<Target> {
        let mut out = Vec::new();
        let mut ejected = Vec::new();
        if route.local && !route.backends.is_empty() {
            let now = outlast_core::clock::now();
            let n = route.backends.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
            let mut e = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
            if !e.is_empty() {
                e.retain(|addr, at| {
                    now.duration_since(*at) < EJECT_FOR
                        && route.up_since.get(addr).is_none_or(|up| up <= at)
                });
            }
            for addr in (0..n).map(|i| route.backends[(start + i) % n]) {
                let t = Target {
                    addr,
                    remote: false,
                };
                if e.contains_key(&addr) {
                    ejected.push(t);
                } else {
                    out.push(t);
                }
            }
        }
        // While some local backend is usable, the ejected ones are skipped.
        if !out.is_empty() {
            ejected.clear();
        }
        if may_hop {
            out.extend(
                route
                    .remotes
                    .iter()
                    .map(|&addr| Target { addr, remote: true }),
            );
        }
        out.extend(ejected);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> ServiceRoute {
        ServiceRoute {
            epoch: 1,
            local: true,
            refuse: false,
            primary_standby: false,
            backends: vec![
                "127.0.0.1:1".parse().expect("a"),
                "127.0.0.1:2".parse().expect("b"),
            ],
            remotes: vec!["127.0.0.12:80".parse().expect("r")],
            up_since: BTreeMap::new(),
            unreachable: false,
        }
    }

    #[test]
    fn local_first_round_robin_then_remote() {
        let b = Balancer::default();
        let t1 = b.targets(&route(), true);
        let t2 = b.targets(&route(), true);
        assert_eq!(t1.len(), 3);
        assert_ne!(t1[0], t2[0], "round-robin moves the first choice");
        assert!(t1[2].remote && t2[2].remote);
    }

    #[test]
    fn hopped_requests_never_hop_again() {
        let b = Balancer::default();
        assert!(b.targets(&route(), false).iter().all(|t| !t.remote));
        let mut r = route();
        r.local = false;
        assert!(b.targets(&r, false).is_empty());
    }

    #[test]
    fn ejected_backends_are_skipped_until_all_are() {
        let b = Balancer::default();
        let r = route();
        b.eject(r.backends[0]);
        let t = b.targets(&r, false);
        assert_eq!(
            t,
            vec![Target {
                addr: r.backends[1],
                remote: false
            }]
        );
        b.eject(r.backends[1]);
        assert_eq!(b.targets(&r, false).len(), 2);
        // With every local backend ejected, another site's gateway comes first; the ejected
        // ones are still tried after it.
        let t = b.targets(&r, true);
        assert_eq!(t.len(), 3);
        assert!(t[0].remote && !t[1].remote && !t[2].remote, "{t:?}");
    }

    #[test]
    fn an_ejection_ends_when_the_backend_comes_up_after_it() {
        let b = Balancer::default();
        let mut r = route();
        r.up_since.insert(r.backends[0], outlast_core::clock::now());
        b.eject(r.backends[0]);
        // Up before the ejection: still ejected.
        assert_eq!(b.targets(&r, false).len(), 1);
        r.up_since.insert(
            r.backends[0],
            outlast_core::clock::now() + Duration::from_millis(1),
        );
        let t = b.targets(&r, false);
        assert_eq!(t.len(), 2, "{t:?}");
    }
}
