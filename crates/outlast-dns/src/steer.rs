//! DNS steering: which of a name's healthy sites one client is given, and for how wide a
//! network that choice holds (the ECS scope, RFC 7871).
//!
//! The chain per name: healthy sites → a selector orders them for the client → the first
//! `answers` are the answer. With no healthy site the name answers as an unsteered one
//! (its committed primary, or the last known sites); with no more healthy sites than
//! `answers` the answer does not depend on the client and is compiled as a plain name.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
pub use outlast_core::config::{Cidr, Selector};

/// A steered name's healthy sites and how to choose among them.
#[derive(Debug, Clone, PartialEq)]
pub struct Steered {
    pub selector: Selector,
    pub answers: usize,
    /// Healthy sites, in config order.
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub site: String,
    pub addr: Ipv4Addr,
    pub weight: u32,
}

/// Client networks, each with its sites in order of preference; longest prefix wins.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Networks {
    /// (IPv4?, prefix length) tiers, longest first: masked bits → entry.
    tiers: Vec<(bool, u8, HashMap<u128, usize>)>,
    entries: Vec<(Cidr, Vec<String>)>,
}

impl Networks {
    /// A later entry for the same network replaces an earlier one.
    pub fn new(list: impl IntoIterator<Item = (Cidr, Vec<String>)>) -> Self {
        let mut by_net: BTreeMap<Cidr, Vec<String>> = BTreeMap::new();
        for (c, sites) in list {
            by_net.insert(c, sites);
        }
        let entries: Vec<(Cidr, Vec<String>)> = by_net.into_iter().collect();
        let mut tiers: BTreeMap<(bool, u8), HashMap<u128, usize>> = BTreeMap::new();
        for (i, (c, _)) in entries.iter().enumerate() {
            tiers
                .entry((c.addr.is_ipv4(), c.len))
                .or_default()
                .insert(Cidr::bits(c.addr).0, i);
        }
        let mut tiers: Vec<(bool, u8, HashMap<u128, usize>)> =
            tiers.into_iter().map(|((v4, l), m)| (v4, l, m)).collect();
        tiers.sort_by_key(|t| std::cmp::Reverse(t.1));
        Networks { tiers, entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The most specific network holding `ip`, no longer than `max_len` bits (what the
    /// client told of its address).
    pub fn lookup(&self, ip: IpAddr, max_len: u8) -> Option<&(Cidr, Vec<String>)> {
        let v4 = ip.is_ipv4();
        self.tiers
            .iter()
            .filter(|(f, len, _)| *f == v4 && *len <= max_len)
            .find_map(|(_, len, m)| {
                let key = Cidr::bits(Cidr::of(ip, *len).addr).0;
                m.get(&key).and_then(|&i| self.entries.get(i))
            })
    }
}

/// Round trips from each site to each probed network: the order decides, the numbers
/// explain (a change of numbers that keeps the order changes no answer).
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    pub order: Networks,
    /// (network, site) → round trip, µs.
    pub rtt_us: BTreeMap<(Cidr, String), u64>,
}

impl PartialEq for Latencies {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

impl Latencies {
    /// From measurements: per network, per site, a round trip (µs); sites with none are
    /// left out of that network's order.
    pub fn new(measured: BTreeMap<(Cidr, String), u64>) -> Self {
        let mut per: BTreeMap<Cidr, Vec<(u64, String)>> = BTreeMap::new();
        for ((net, site), us) in &measured {
            per.entry(*net).or_default().push((*us, site.clone()));
        }
        let order = Networks::new(per.into_iter().map(|(net, mut v)| {
            v.sort();
            (net, v.into_iter().map(|(_, s)| s).collect())
        }));
        Latencies {
            order,
            rtt_us: measured,
        }
    }
}

/// Who asked: the client's network from EDNS Client Subnet, else the resolver's address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Client {
    pub addr: IpAddr,
    /// Bits of `addr` that are meaningful (ECS source prefix, or 32/128).
    pub source: u8,
    /// Whether it came in an ECS option (the answer then carries one back).
    pub ecs: bool,
}

impl Client {
    pub fn resolver(addr: IpAddr) -> Self {
        Client {
            addr,
            source: Cidr::bits(addr).1,
            ecs: false,
        }
    }
}

/// A query's EDNS Client Subnet option, if it has one.
pub fn ecs_option(edns: Option<&hickory_proto::op::Edns>) -> Option<ClientSubnet> {
    match edns?.options().get(EdnsCode::Subnet) {
        Some(EdnsOption::Subnet(s)) => Some(*s),
        _ => None,
    }
}

impl Client {
    /// Who asked: the ECS subnet when given (SOURCE 0 asks that it not be used), else the
    /// resolver at `from`.
    pub fn of(ecs: Option<ClientSubnet>, from: Option<IpAddr>) -> Option<Client> {
        match ecs {
            Some(s) if s.source_prefix() > 0 => Some(Client {
                addr: s.addr(),
                source: s.source_prefix(),
                ecs: true,
            }),
            _ => from.map(Client::resolver),
        }
    }

    /// The ECS option an answer echoes: the query's, with the scope that decided (0 when
    /// the answer did not depend on this client's subnet).
    pub fn echo(&self, mut asked: ClientSubnet, pick: Option<&Pick>) -> ClientSubnet {
        asked.set_scope_prefix(pick.filter(|_| self.ecs).map_or(0, |p| p.scope));
        asked
    }
}

/// The most sites an answer lists.
pub const MAX_ANSWERS: usize = 16;

/// One client's pick: candidate indices, first first, and the scope that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub sites: [u8; MAX_ANSWERS],
    pub len: usize,
    /// The prefix length the choice holds for (ECS SCOPE PREFIX-LENGTH).
    pub scope: u8,
    /// The network that decided (nearest, latency: the listed one; weighted: the client's
    /// /24 or /56), if any.
    pub network: Option<Cidr>,
}

impl Pick {
    pub fn indices(&self) -> &[u8] {
        &self.sites[..self.len]
    }
}

/// Weighted choices are the same for every client in one of these.
const WEIGHTED_V4: u8 = 24;
const WEIGHTED_V6: u8 = 56;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Steered {
    /// Orders the candidates for `client` and keeps the first `answers`.
    pub fn pick(&self, client: &Client, networks: &Networks, latencies: &Latencies) -> Pick {
        // At most MAX_ANSWERS candidates are ordered (more sites than that is not a case
        // this serves); on the stack, as this runs for every query.
        let n = self.candidates.len().min(MAX_ANSWERS);
        let mut order = [0usize; MAX_ANSWERS];
        for (i, o) in order.iter_mut().enumerate() {
            *o = i;
        }
        let order_n = &mut order[..n];
        let mut network = None;
        let scope;
        match self.selector {
            Selector::Weighted => {
                let width = if client.addr.is_ipv4() {
                    WEIGHTED_V4
                } else {
                    WEIGHTED_V6
                };
                let net = Cidr::of(client.addr, client.source.min(width));
                let bits = Cidr::bits(net.addr).0;
                let seed = mix((bits >> 64) as u64 ^ mix(bits as u64 ^ u64::from(net.len)));
                // Weighted sampling without replacement (Efraimidis–Spirakis): each site's
                // key is u^(1/w) for a u drawn from the client's network; highest first.
                let key = |c: &Candidate| -> f64 {
                    if c.weight == 0 {
                        return f64::NEG_INFINITY;
                    }
                    let u = (mix(seed ^ name_hash(&c.site)) >> 11) as f64 / (1u64 << 53) as f64;
                    u.max(f64::MIN_POSITIVE).ln() / f64::from(c.weight)
                };
                let mut keys = [0f64; MAX_ANSWERS];
                for (k, c) in keys.iter_mut().zip(&self.candidates) {
                    *k = key(c);
                }
                order_n.sort_unstable_by(|&a, &b| keys[b].total_cmp(&keys[a]).then(a.cmp(&b)));
                scope = net.len;
                network = Some(net);
            }
            Selector::Nearest | Selector::Latency => {
                let table = if self.selector == Selector::Nearest {
                    networks
                } else {
                    &latencies.order
                };
                match table.lookup(client.addr, client.source) {
                    Some((net, sites)) => {
                        let rank = |i: &usize| {
                            sites
                                .iter()
                                .position(|s| *s == self.candidates[*i].site)
                                .unwrap_or(usize::MAX)
                        };
                        order_n.sort_by_key(rank);
                        scope = net.len;
                        network = Some(*net);
                    }
                    // Not a listed network: config order, for this client's network only.
                    None => scope = client.source,
                }
            }
        }
        let mut p = Pick {
            sites: [0; MAX_ANSWERS],
            len: self.answers.min(n).min(MAX_ANSWERS),
            scope,
            network,
        };
        for (slot, i) in p.sites.iter_mut().zip(order_n.iter()) {
            *slot = *i as u8;
        }
        p
    }

    /// The pick in words, for `outlast dns explain` and debug logs.
    pub fn explain(&self, client: &Client, networks: &Networks, latencies: &Latencies) -> String {
        let p = self.pick(client, networks, latencies);
        let sites: Vec<String> = p
            .indices()
            .iter()
            .map(|&i| self.candidates[i as usize].site.clone())
            .collect();
        let healthy: Vec<&str> = self.candidates.iter().map(|c| c.site.as_str()).collect();
        let from = if client.ecs {
            format!("client subnet {}", Cidr::of(client.addr, client.source))
        } else {
            format!("resolver address {}", client.addr)
        };
        let how = match (self.selector, p.network) {
            (Selector::Weighted, net) => {
                let w: Vec<String> = self
                    .candidates
                    .iter()
                    .map(|c| format!("{} {}", c.site, c.weight))
                    .collect();
                format!(
                    "weighted ({}), drawn for {}",
                    w.join(", "),
                    net.map(|n| n.to_string()).unwrap_or_default()
                )
            }
            (Selector::Nearest, Some(net)) => {
                let listed = networks
                    .lookup(client.addr, client.source)
                    .map(|e| e.1.join(" "));
                format!("nearest: {net} is served by {}", listed.unwrap_or_default())
            }
            (Selector::Latency, Some(net)) => {
                let rtts: Vec<String> = self
                    .candidates
                    .iter()
                    .filter_map(|c| {
                        latencies
                            .rtt_us
                            .get(&(net, c.site.clone()))
                            .map(|us| format!("{} {:.1} ms", c.site, *us as f64 / 1000.0))
                    })
                    .collect();
                format!("latency to {net}: {}", rtts.join(", "))
            }
            (_, None) => {
                format!("{:?} has no entry for it: config order", self.selector).to_lowercase()
            }
        };
        format!(
            "healthy: {}; {how}; from {from}; answer {} (first {}); scope /{}",
            healthy.join(", "),
            sites.join(", "),
            self.answers,
            p.scope
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steered(selector: Selector, weights: &[u32]) -> Steered {
        Steered {
            selector,
            answers: 1,
            candidates: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Candidate {
                    site: ["east", "west", "north"][i].to_string(),
                    addr: Ipv4Addr::new(127, 0, 0, 11 + i as u8),
                    weight: *w,
                })
                .collect(),
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Client {
        Client::resolver(IpAddr::from([a, b, c, d]))
    }

    #[test]
    fn weights_hold_over_many_networks_and_one_network_always_gets_the_same() {
        let s = steered(Selector::Weighted, &[3, 1]);
        let (none, lat) = (Networks::default(), Latencies::default());
        let mut east = 0;
        for i in 0..10_000u32 {
            let b = i.to_be_bytes();
            let p = s.pick(&v4(10, b[2], b[3], 1), &none, &lat);
            assert_eq!(p.scope, 24);
            if p.sites[0] == 0 {
                east += 1;
            }
        }
        assert!(
            (7_250..=7_750).contains(&east),
            "east {east} of 10000 at 3:1"
        );
        let a = s.pick(&v4(10, 1, 2, 3), &none, &lat);
        let b = s.pick(&v4(10, 1, 2, 200), &none, &lat);
        assert_eq!(a.indices(), b.indices(), "one /24, one answer");
        // A weight of 0 is never chosen while another site is there.
        let z = steered(Selector::Weighted, &[0, 1]);
        for i in 0..100u8 {
            assert_eq!(z.pick(&v4(10, i, 0, 1), &none, &lat).sites[0], 1);
        }
    }

    #[test]
    fn nearest_takes_the_longest_listed_network_within_the_client_s_prefix() {
        let s = steered(Selector::Nearest, &[1, 1, 1]);
        let nets = Networks::new(vec![
            ("10.0.0.0/8".parse().expect("c"), vec!["west".into()]),
            (
                "10.1.0.0/16".parse().expect("c"),
                vec!["north".into(), "west".into()],
            ),
        ]);
        let lat = Latencies::default();
        let p = s.pick(&v4(10, 1, 2, 3), &nets, &lat);
        assert_eq!((p.sites[0], p.scope), (2, 16));
        let p = s.pick(&v4(10, 9, 2, 3), &nets, &lat);
        assert_eq!((p.sites[0], p.scope), (1, 8));
        // An ECS /12 cannot see the /16.
        let c = Client {
            addr: IpAddr::from([10, 0, 0, 0]),
            source: 12,
            ecs: true,
        };
        assert_eq!(s.pick(&c, &nets, &lat).scope, 8);
        // Unlisted: config order, scoped to the client's own prefix.
        let p = s.pick(&v4(192, 0, 2, 1), &nets, &lat);
        assert_eq!((p.sites[0], p.scope), (0, 32));
        // A listed site that is not healthy (not a candidate) is passed over.
        let mut two = s.clone();
        two.candidates.remove(2);
        assert_eq!(two.pick(&v4(10, 1, 2, 3), &nets, &lat).sites[0], 1);
        assert!(s
            .explain(&v4(10, 1, 2, 3), &nets, &lat)
            .contains("10.1.0.0/16"));
    }

    #[test]
    fn latency_orders_by_the_measured_round_trip() {
        let s = steered(Selector::Latency, &[1, 1]);
        let net: Cidr = "203.0.113.0/24".parse().expect("c");
        let mut m = BTreeMap::new();
        m.insert((net, "east".to_string()), 40_000);
        m.insert((net, "west".to_string()), 3_000);
        let lat = Latencies::new(m.clone());
        let p = s.pick(&v4(203, 0, 113, 9), &Networks::default(), &lat);
        assert_eq!((p.sites[0], p.scope), (1, 24));
        m.insert((net, "west".to_string()), 3_500);
        assert_eq!(Latencies::new(m), lat, "the same order is the same table");
        assert!(s
            .explain(&v4(203, 0, 113, 9), &Networks::default(), &lat)
            .contains("west 3.0 ms"));
    }
}
