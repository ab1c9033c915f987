//! Where each service's gateway at this site sends requests: a pure function of the
//! committed state and what this site knows now, published to the gateways on every change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use outlast_control::{ClusterState, SiteState};
use outlast_core::config::Mode;
use outlast_core::{Config, Health};
use outlast_gateway::{Routes, ServiceRoute};
use outlast_health::ServiceHealth;

/// What the routes are made from.
pub struct Inputs<'a> {
    pub config: &'a Config,
    pub me: &'a str,
    pub state: &'a ClusterState,
    /// Services this site acts as primary of now.
    pub acting: &'a [String],
    pub fenced: bool,
    /// The local backends' health, per service.
    pub health: &'a BTreeMap<String, ServiceHealth>,
    /// Sites this one cannot reach while others can (see `Node::cut_from_here`).
    pub cut: &'a BTreeSet<String>,
    /// Of those, the ones cut for longer than a failover takes to be decided: a site lost
    /// whole looks cut for a moment, until every other site has lost it too.
    pub cut_settled: &'a BTreeSet<String>,
}

/// Local backends when the service is active here (primary-standby: acting as primary),
/// the gateways of the other active sites otherwise; refused outright for primary-standby
/// while fenced; answered 503 at once when it is served only beyond a cut link.
pub fn routes(i: &Inputs<'_>) -> Routes {
    let mut services = BTreeMap::new();
    for svc in &i.config.services {
        let Some(st) = i.state.services.get(&svc.name) else {
            continue;
        };
        let probed = i.health.get(&svc.name).map(|h| h.backends.as_slice());
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
            .get(i.me)
            .map(|b| b.iter().copied().filter(|a| !down.contains(a)).collect())
            .unwrap_or_default();
        let local = match svc.mode {
            Mode::ActiveActive => st.active_sites.iter().any(|s| s == i.me),
            Mode::PrimaryStandby => i.acting.contains(&svc.name),
        };
        let others: Vec<&String> = st
            .active_sites
            .iter()
            .filter(|s| s.as_str() != i.me && i.state.sites.get(*s) != Some(&SiteState::Down))
            .collect();
        // A site this one cannot reach while others can is behind a cut link: no failover
        // will come, so requests are not sent to wait on it.
        let reachable: Vec<&String> = others
            .iter()
            .copied()
            .filter(|s| !i.cut.contains(*s))
            .collect();
        // Answered 503 at once only once the cut has lasted past the time a failover takes
        // to be decided; until then requests wait for the routing (a primary cut off from
        // every site is first seen as a cut by each: found by probing, 10-21 requests got a
        // 503 at once while the move was being decided).
        let unreachable = !local
            && !others.is_empty()
            && reachable.is_empty()
            && others.iter().all(|s| i.cut_settled.contains(*s));
        let remotes = reachable
            .into_iter()
            .filter_map(|s| i.config.site(s))
            .map(|s| SocketAddr::new(s.address, svc.port))
            .collect();
        services.insert(
            svc.name.clone(),
            ServiceRoute {
                epoch: st.epoch,
                local,
                refuse: svc.mode == Mode::PrimaryStandby && i.fenced,
                primary_standby: svc.mode == Mode::PrimaryStandby,
                backends,
                remotes,
                up_since,
                unreachable,
            },
        );
    }
    Routes { services }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outlast_control::ClusterState;
    use outlast_health::BackendHealth;

    const CONFIG: &str = r#"
[cluster]
name = "shop"
secret = "s"
[[sites]]
name = "east"
address = "127.0.0.11"
peer_port = 7400
api_port = 7401
[[sites]]
name = "west"
address = "127.0.0.12"
peer_port = 7400
api_port = 7401
[[sites]]
name = "witness"
address = "127.0.0.13"
peer_port = 7400
api_port = 7401
witness = true
[[services]]
name = "db"
mode = "primary-standby"
primary = "east"
port = 8080
[services.backends]
east = ["127.0.0.1:9001", "127.0.0.1:9003"]
west = ["127.0.0.1:9002"]
[[services]]
name = "web"
mode = "active-active"
port = 8081
[services.backends]
east = ["127.0.0.1:9101"]
west = ["127.0.0.1:9102"]
"#;

    fn config() -> Config {
        Config::parse(std::path::Path::new("t.toml"), CONFIG).expect("valid")
    }

    fn route(r: &Routes, s: &str) -> ServiceRoute {
        r.services.get(s).cloned().expect("service")
    }

    fn make(me: &str, acting: &[&str], fenced: bool, cut: &[&str]) -> Routes {
        make_with(me, acting, fenced, cut, cut)
    }

    fn make_with(
        me: &str,
        acting: &[&str],
        fenced: bool,
        cut: &[&str],
        settled: &[&str],
    ) -> Routes {
        let config = config();
        let settled: BTreeSet<String> = settled.iter().map(|s| s.to_string()).collect();
        let state = ClusterState::initial(&config);
        let acting: Vec<String> = acting.iter().map(|s| s.to_string()).collect();
        let cut: BTreeSet<String> = cut.iter().map(|s| s.to_string()).collect();
        let now = tokio::time::Instant::now();
        let health: BTreeMap<String, ServiceHealth> = [(
            "db".to_string(),
            ServiceHealth {
                health: Health::Up,
                since: now,
                backends: vec![
                    BackendHealth {
                        addr: "127.0.0.1:9001".parse().expect("addr"),
                        health: Health::Up,
                        since: now,
                        last_error: None,
                        last_latency: std::time::Duration::ZERO,
                    },
                    BackendHealth {
                        addr: "127.0.0.1:9003".parse().expect("addr"),
                        health: Health::Down,
                        since: now,
                        last_error: Some("refused".into()),
                        last_latency: std::time::Duration::ZERO,
                    },
                ],
            },
        )]
        .into_iter()
        .collect();
        routes(&Inputs {
            config: &config,
            me,
            state: &state,
            acting: &acting,
            fenced,
            health: &health,
            cut: &cut,
            cut_settled: &settled,
        })
    }

    #[test]
    fn the_acting_primary_serves_locally_without_its_down_backends() {
        let r = make("east", &["db"], false, &[]);
        let db = route(&r, "db");
        assert!(db.local && !db.refuse && db.primary_standby && !db.unreachable);
        assert_eq!(db.backends, vec!["127.0.0.1:9001".parse().expect("addr")]);
        assert!(db.remotes.is_empty(), "the primary is the only active site");
        let web = route(&r, "web");
        assert!(web.local && !web.primary_standby);
        assert_eq!(web.remotes, vec!["127.0.0.12:8081".parse().expect("addr")]);
    }

    #[test]
    fn a_standby_forwards_and_a_committed_primary_not_yet_acting_does_not_serve() {
        let west = route(&make("west", &[], false, &[]), "db");
        assert!(!west.local);
        assert_eq!(west.remotes, vec!["127.0.0.11:8080".parse().expect("addr")]);
        let east = route(&make("east", &[], false, &[]), "db");
        assert!(!east.local, "committed but not acting (its lease or hold)");
    }

    #[test]
    fn fenced_refuses_primary_standby_only() {
        let r = make("east", &[], true, &[]);
        assert!(route(&r, "db").refuse);
        assert!(!route(&r, "web").refuse);
    }

    #[test]
    fn a_service_served_only_beyond_a_cut_is_unreachable_not_forwarded() {
        let db = route(&make("west", &[], false, &["east"]), "db");
        assert!(db.unreachable && db.remotes.is_empty());
        let web = route(&make("west", &[], false, &["east"]), "web");
        assert!(web.local && !web.unreachable, "served here anyway");
    }

    #[test]
    fn a_young_cut_holds_requests_for_the_routing_instead_of_refusing_them() {
        let db = route(&make_with("west", &[], false, &["east"], &[]), "db");
        assert!(!db.unreachable, "not answered 503 at once");
        assert!(db.remotes.is_empty(), "nor sent beyond the cut: they wait");
    }
}
