//! The zone as this site answers it (docs/config.md, `[dns]`: only healthy sites, short TTL): a pure
//! function of the committed state, with the memory `all_down = "fail-open"` needs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::rr::Name;
use outlast_control::{ClusterState, SiteState};
use outlast_core::config::{AllDown, Mode};
use outlast_core::Config;
use outlast_dns::steer::{Candidate, Latencies, Networks, Steered};
use outlast_dns::ZoneView;
use std::sync::Arc;

/// Per DNS name, the last non-empty answer (what `all_down = "fail-open"` keeps serving).
pub type LastKnown = BTreeMap<Name, Vec<Ipv4Addr>>;

/// The zone for `state` as site `me` answers it; `ready` false answers SERVFAIL for
/// everything. None without a `[dns]` section.
pub fn zone_view(
    config: &Config,
    me: &str,
    state: &ClusterState,
    ready: bool,
    last: &mut LastKnown,
    steering: &Steering,
) -> Option<ZoneView> {
    let dns = config.dns.as_ref()?;
    let zone = Name::from_ascii(&dns.zone).ok()?;
    let v4 = |site: &str| match config.site(site).map(|s| s.address) {
        Some(IpAddr::V4(ip)) => Some(ip),
        _ => None,
    };
    let up = |site: &String| state.sites.get(site) != Some(&SiteState::Down);
    let mut names = BTreeMap::new();
    let mut steered = BTreeMap::new();
    let mut own = std::collections::BTreeSet::new();
    for svc in &config.services {
        let (Some(label), Some(st)) = (&svc.dns_name, state.services.get(&svc.name)) else {
            continue;
        };
        let Ok(owner) = Name::from_ascii(label).and_then(|n| n.append_domain(&zone)) else {
            continue;
        };
        if svc.mode == Mode::PrimaryStandby && st.primary.as_deref() == Some(me) {
            own.insert(owner.to_lowercase());
        }
        let sites: Vec<&String> = match svc.mode {
            Mode::PrimaryStandby => st.primary.iter().filter(|p| up(p)).collect(),
            Mode::ActiveActive => st.active_sites.iter().filter(|s| up(s)).collect(),
        };
        let healthy: Vec<(&String, Ipv4Addr)> = sites
            .into_iter()
            .filter_map(|s| Some((s, v4(s)?)))
            .collect();
        if let Some(st) = svc
            .steering
            .as_ref()
            .filter(|st| healthy.len() > st.answers)
        {
            let candidates = healthy
                .iter()
                .map(|(site, addr)| Candidate {
                    site: site.to_string(),
                    addr: *addr,
                    weight: st.weights.get(*site).copied().unwrap_or(1),
                })
                .collect();
            steered.insert(
                owner.to_lowercase(),
                Steered {
                    selector: st.selector,
                    answers: st.answers,
                    candidates,
                },
            );
        }
        let addrs: Vec<Ipv4Addr> = healthy.iter().map(|(_, a)| *a).collect();
        let addrs = if !addrs.is_empty() {
            last.insert(owner.clone(), addrs.clone());
            addrs
        } else if dns.all_down == AllDown::FailOpen {
            last.get(&owner).cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        names.insert(owner.to_lowercase(), addrs);
    }
    Some(ZoneView {
        zone,
        ready,
        serial: u32::try_from(state.epoch).unwrap_or(u32::MAX),
        ttl: dns.ttl,
        name_servers: config
            .sites
            .iter()
            .filter_map(|s| Some((s.name.clone(), v4(&s.name)?)))
            .collect(),
        names,
        steered,
        networks: steering.networks.clone(),
        latencies: steering.latencies.clone(),
        own,
        withheld: false,
    })
}

/// What steered names choose with, kept by the agent: the client networks (config and
/// `networks_file`, read again when it changes) and the measured round trips.
#[derive(Debug, Clone, Default)]
pub struct Steering {
    pub networks: Arc<Networks>,
    pub latencies: Arc<Latencies>,
}

/// The client networks: the config's `networks`, then the file's (a file line for the same
/// network wins).
pub fn networks(config: &Config, file: Option<&std::path::Path>) -> Result<Networks, Vec<String>> {
    let Some(dns) = &config.dns else {
        return Ok(Networks::default());
    };
    let mut all = dns.networks.clone();
    if let Some(path) = file {
        let sites: Vec<String> = config
            .sites
            .iter()
            .filter(|s| !s.witness)
            .map(|s| s.name.clone())
            .collect();
        all.extend(outlast_core::config::read_networks(path, &sites)?);
    }
    Ok(Networks::new(all))
}

/// Round trips per probe network and site, from every site's latest report.
pub fn latencies(
    dns: &outlast_core::config::Dns,
    rtts: &[(String, BTreeMap<String, u64>)],
) -> Latencies {
    let mut measured = BTreeMap::new();
    for p in &dns.probes {
        let key = p.network.to_string();
        for (site, r) in rtts {
            if let Some(us) = r.get(&key) {
                measured.insert((p.network, site.clone()), *us);
            }
        }
    }
    Latencies::new(measured)
}

/// One TCP connect from `source` to `target` (the gateway's, within 1 s): how long it
/// took (µs), or none.
pub async fn round_trip(source: IpAddr, target: std::net::SocketAddr) -> Option<u64> {
    let t = outlast_core::clock::now();
    let stream = outlast_gateway::connect_from(source, target).await.ok()?;
    drop(stream);
    Some(t.elapsed().as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(all_down: &str) -> Config {
        Config::parse(std::path::Path::new("t.toml"), &config_text(all_down)).expect("valid")
    }

    fn config_text(all_down: &str) -> String {
        format!(
            r#"
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
[dns]
zone = "shop.test."
port = 5353
all_down = "{all_down}"
[[services]]
name = "db"
mode = "primary-standby"
primary = "east"
dns_name = "db"
port = 8080
[services.backends]
east = ["127.0.0.1:9001"]
west = ["127.0.0.1:9002"]
[[services]]
name = "web"
mode = "active-active"
dns_name = "www"
port = 8081
[services.backends]
east = ["127.0.0.1:9101"]
west = ["127.0.0.1:9102"]
"#
        )
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("name")
    }

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().expect("addr")
    }

    #[test]
    fn names_follow_the_committed_primary_and_the_active_sites() {
        let c = config("fail-open");
        let mut state = ClusterState::initial(&c);
        let mut last = LastKnown::new();
        let z =
            zone_view(&c, "witness", &state, true, &mut last, &Steering::default()).expect("zone");
        assert!(z.ready);
        assert_eq!(z.names[&name("db.shop.test.")], vec![addr("127.0.0.11")]);
        assert_eq!(
            z.names[&name("www.shop.test.")],
            vec![addr("127.0.0.11"), addr("127.0.0.12")]
        );
        assert_eq!(z.name_servers.len(), 3, "the witness answers too");
        state.sites.insert("east".into(), SiteState::Down);
        state.epoch = 4;
        let z =
            zone_view(&c, "witness", &state, true, &mut last, &Steering::default()).expect("zone");
        assert_eq!(z.names[&name("www.shop.test.")], vec![addr("127.0.0.12")]);
        assert_eq!(z.serial, 4, "SOA serial = epoch");
    }

    #[test]
    fn every_site_down_fails_open_to_the_last_answer_or_closed_to_nothing() {
        for (mode, want) in [
            ("fail-open", vec![addr("127.0.0.11")]),
            ("fail-closed", vec![]),
        ] {
            let c = config(mode);
            let mut state = ClusterState::initial(&c);
            let mut last = LastKnown::new();
            zone_view(&c, "witness", &state, true, &mut last, &Steering::default()).expect("zone");
            state.sites.insert("east".into(), SiteState::Down);
            state.sites.insert("west".into(), SiteState::Down);
            let z = zone_view(&c, "witness", &state, true, &mut last, &Steering::default())
                .expect("zone");
            assert_eq!(z.names[&name("db.shop.test.")], want, "{mode}");
        }
    }

    #[test]
    fn no_dns_section_no_zone() {
        let text = config_text("fail-open").replace(
            "[dns]\nzone = \"shop.test.\"\nport = 5353\nall_down = \"fail-open\"\n",
            "",
        );
        assert!(!text.contains("[dns]"));
        let c = Config::parse(std::path::Path::new("t.toml"), &text).expect("valid");
        let mut last = LastKnown::new();
        assert!(zone_view(
            &c,
            "witness",
            &ClusterState::initial(&c),
            true,
            &mut last,
            &Steering::default()
        )
        .is_none());
    }
}
