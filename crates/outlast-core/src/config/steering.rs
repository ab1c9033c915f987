//! DNS steering: a service's `steering` (which of its healthy sites a client is given) and
//! `[dns]`'s client networks (`networks`, `networks_file`) and latency probes (`probes`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

use super::raw::*;
use super::validate::{resolve, Ctx};

/// An IP network: an address with its host bits cleared, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// The network of `len` bits holding `addr` (`len` capped at the family's width).
    pub fn of(addr: IpAddr, len: u8) -> Cidr {
        let (bits, width) = Self::bits(addr);
        let len = len.min(width);
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        };
        let kept = (bits << (128 - u32::from(width))) & mask;
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::from(((kept >> 96) as u32).to_be_bytes()),
            IpAddr::V6(_) => IpAddr::from(kept.to_be_bytes()),
        };
        Cidr { addr, len }
    }

    /// The address as bits (IPv4 in the low 32) and the family's width.
    pub fn bits(addr: IpAddr) -> (u128, u8) {
        match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4() && Cidr::of(addr, self.len) == *self
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `ADDR/LEN`, or a bare address (a host). Host bits set are an error: "10.1.2.3/16"
    /// is more likely a typo than meant.
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("\"{a}\" is not an IP address"))?;
        let width = Cidr::bits(addr).1;
        let len = match l {
            None => width,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= width)
                .ok_or_else(|| format!("\"/{l}\" is not a prefix length from 0 to {width}"))?,
        };
        let c = Cidr::of(addr, len);
        if c.addr != addr {
            return Err(format!("{s} has host bits set (the network is {c})"));
        }
        Ok(c)
    }
}

/// How a steered name picks among its healthy sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    /// In proportion to `weights`, the same for every client of one /24 (IPv6: /56).
    Weighted,
    /// The sites listed for the client's network in `[dns] networks`/`networks_file`.
    Nearest,
    /// The sites with the lowest round trip to the client's network, as measured by
    /// `[[dns.probes]]`.
    Latency,
}

/// `steering` of a service: healthy sites → selector → the first `answers` → else the
/// service's usual answer (its committed primary, or the last known sites).
#[derive(Debug, Clone, Serialize)]
pub struct Steering {
    pub selector: Selector,
    pub answers: usize,
    /// Weighted: per site (sites left out weigh 1; 0 is used only when nothing else is).
    pub weights: BTreeMap<String, u32>,
}

/// `[[dns.probes]]`: a target in a client network whose round trip stands for it.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyProbe {
    pub network: Cidr,
    /// A TCP `host:port` answering in that network (connect time is measured).
    pub target: SocketAddr,
}

/// Client networks and the sites (nearest first) that serve them.
pub type NetworkSites = Vec<(Cidr, Vec<String>)>;

/// Reads a networks file: one `CIDR SITE [SITE ...]` per line, `#` starts a comment.
/// Every problem is `path:line:col: what; fix`.
pub fn read_networks(path: &Path, sites: &[String]) -> Result<NetworkSites, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    parse_networks(&path.display().to_string(), &text, sites)
}

pub fn parse_networks(
    file: &str,
    text: &str,
    sites: &[String],
) -> Result<NetworkSites, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut seen: HashMap<Cidr, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let body = line.split('#').next().unwrap_or("");
        let mut words = body.split_whitespace();
        let Some(first) = words.next() else { continue };
        let col = line.find(first).unwrap_or(0) + 1;
        let net = match first.parse::<Cidr>() {
            Ok(c) => c,
            Err(why) => {
                problems.push(format!(
                    "{file}:{n}:{col}: {why}; write a network like 203.0.113.0/24"
                ));
                continue;
            }
        };
        if let Some(prev) = seen.insert(net, n) {
            problems.push(format!(
                "{file}:{n}:{col}: {net} is listed twice (first on line {prev}); keep one line per network"
            ));
        }
        let mut list = Vec::new();
        for w in words {
            if !sites.iter().any(|s| s == w) {
                let c = line.find(w).unwrap_or(0) + 1;
                problems.push(format!(
                    "{file}:{n}:{c}: \"{w}\" is not a data site; name one of {}",
                    sites.join(", ")
                ));
            }
            list.push(w.to_string());
        }
        if list.is_empty() {
            problems.push(format!(
                "{file}:{n}:{col}: {net} names no site; add the sites that serve it, nearest first"
            ));
        }
        out.push((net, list));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// `[dns]`'s steering inputs, checked.
pub(super) struct DnsSteering {
    pub networks: NetworkSites,
    pub networks_file: Option<PathBuf>,
    pub probes: Vec<LatencyProbe>,
}

pub(super) fn dns_steering(
    ctx: &mut Ctx<'_>,
    d: &RawDns,
    base: &Path,
    data_sites: &[String],
) -> DnsSteering {
    let mut networks = Vec::new();
    for (net, list) in &d.networks {
        let c = match net.get_ref().parse::<Cidr>() {
            Ok(c) => c,
            Err(why) => {
                ctx.at(net.span(), why, "write a network like \"203.0.113.0/24\"");
                continue;
            }
        };
        let mut sites = Vec::new();
        for s in list.get_ref() {
            if !data_sites.iter().any(|x| x == s.get_ref()) {
                ctx.at(
                    s.span(),
                    format!("\"{}\" is not a data site", s.get_ref()),
                    format!("name one of {}", data_sites.join(", ")),
                );
            }
            sites.push(s.get_ref().clone());
        }
        if sites.is_empty() {
            ctx.at(
                list.span(),
                format!("{c} names no site"),
                "list the sites that serve it, nearest first",
            );
        }
        networks.push((c, sites));
    }
    let networks_file = d.networks_file.as_ref().map(|f| {
        let path = resolve(base, f.get_ref());
        if !path.exists() {
            ctx.warn(
                f.span(),
                format!("networks_file {} does not exist (yet)", path.display()),
                "create it: agents read it once it appears, and again whenever it changes",
            );
        } else if let Err(problems) = read_networks(&path, data_sites) {
            for p in problems.iter().take(5) {
                ctx.at(
                    f.span(),
                    format!("networks_file: {p}"),
                    "fix the file (it is read again whenever it changes)",
                );
            }
        }
        path
    });
    let mut probes = Vec::new();
    for p in &d.probes {
        let r = p.get_ref();
        let network = match r.network.get_ref().parse::<Cidr>() {
            Ok(c) => c,
            Err(why) => {
                ctx.at(
                    r.network.span(),
                    why,
                    "write a network like \"203.0.113.0/24\"",
                );
                continue;
            }
        };
        match r.target.get_ref().parse::<SocketAddr>() {
            Ok(target) => probes.push(LatencyProbe { network, target }),
            Err(_) => ctx.at(
                r.target.span(),
                format!("target \"{}\" is not an address:port", r.target.get_ref()),
                "give a TCP address in that network that accepts connections, like \"203.0.113.1:443\"",
            ),
        }
    }
    DnsSteering {
        networks,
        networks_file,
        probes,
    }
}

/// A service's `steering`, checked against the sites and `[dns]`.
pub(super) fn steering(
    ctx: &mut Ctx<'_>,
    raw: &S<RawSteering>,
    data_sites: &[String],
    dns: Option<&super::Dns>,
) -> Steering {
    let r = raw.get_ref();
    let selector = ctx.choice(
        "selector",
        Some(&r.selector),
        Selector::Weighted,
        &[
            ("weighted", Selector::Weighted),
            ("nearest", Selector::Nearest),
            ("latency", Selector::Latency),
        ],
    );
    let answers = match &r.answers {
        None => 1,
        Some(n) if (1..=16).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            ctx.at(
                n.span(),
                format!("answers = {} is out of range", n.get_ref()),
                "give how many site addresses an answer holds, 1 to 16",
            );
            1
        }
    };
    let mut weights = BTreeMap::new();
    for (site, w) in &r.weights {
        if !data_sites.iter().any(|s| s == site.get_ref()) {
            ctx.at(
                site.span(),
                format!("\"{}\" is not a data site", site.get_ref()),
                format!("name one of {}", data_sites.join(", ")),
            );
        }
        weights.insert(site.get_ref().clone(), *w.get_ref());
    }
    if !weights.is_empty() && selector != Selector::Weighted {
        ctx.at(
            raw.span(),
            "weights are read by selector = \"weighted\" only",
            "drop weights, or set selector = \"weighted\"",
        );
    }
    match (selector, dns) {
        (_, None) => ctx.at(
            raw.span(),
            "steering shapes DNS answers, and the config has no [dns]",
            "add a [dns] table, or drop steering",
        ),
        (Selector::Nearest, Some(d)) if d.networks.is_empty() && d.networks_file.is_none() => ctx
            .at(
                raw.span(),
                "selector = \"nearest\" needs client networks",
                "add [dns] networks = { \"203.0.113.0/24\" = [\"east\"] } or networks_file",
            ),
        (Selector::Latency, Some(d)) if d.probes.is_empty() => ctx.at(
            raw.span(),
            "selector = \"latency\" needs [[dns.probes]] to measure",
            "add [[dns.probes]] with network = \"203.0.113.0/24\" and target = \"203.0.113.1:443\"",
        ),
        _ => {}
    }
    Steering {
        selector,
        answers,
        weights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_refuse_with_line_and_column() {
        let c: Cidr = "203.0.113.0/24".parse().expect("cidr");
        assert!(c.contains("203.0.113.9".parse().expect("ip")));
        assert!(!c.contains("203.0.114.9".parse().expect("ip")));
        assert!("10.1.2.3/16".parse::<Cidr>().is_err(), "host bits");
        assert_eq!(
            Cidr::of("2001:db8::1".parse().expect("ip"), 56).to_string(),
            "2001:db8::/56"
        );
        let sites = vec!["east".to_string(), "west".to_string()];
        let ok = parse_networks(
            "n",
            "# nets\n10.0.0.0/8 east west\n\n2001:db8::/32 west # v6\n",
            &sites,
        )
        .expect("valid");
        assert_eq!(ok.len(), 2);
        let bad = parse_networks(
            "n",
            "10.0.0.0/8 east\n10.0.0.0/33 east\n  10.0.0.0/8 mars\n",
            &sites,
        )
        .expect_err("invalid");
        assert!(bad[0].starts_with("n:2:1:"), "{bad:?}");
        assert!(bad.iter().any(|p| p.starts_with("n:3:3:")), "{bad:?}");
        assert!(
            bad.iter()
                .any(|p| p.starts_with("n:3:14:") && p.contains("mars")),
            "{bad:?}"
        );
    }
}
