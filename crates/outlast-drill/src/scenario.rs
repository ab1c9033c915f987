//! The drill scenario (docs/scenario.md): TOML, checked with line:col and a fix.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use outlast_core::config::{line_col, Config, Problem};
use outlast_core::duration::parse_duration;
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    duration: Spanned<String>,
    #[serde(default)]
    workload: RawWorkload,
    #[serde(default)]
    steps: Vec<RawStep>,
    #[serde(default)]
    expect: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    service: Option<Spanned<String>>,
    rate: Option<u64>,
    stream: Option<Spanned<String>>,
    event_rate: Option<u64>,
    ok_within: Option<Spanned<String>>,
    dataset: Option<Spanned<String>>,
    write_rate: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    at: Spanned<String>,
    fault: Spanned<String>,
    site: Option<Spanned<String>>,
    sites: Option<Vec<String>>,
    from: Option<Vec<String>>,
    ms: Option<u64>,
    jitter_ms: Option<u64>,
    loss: Option<Spanned<f64>>,
    bandwidth: Option<Spanned<String>>,
    dep: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
}

/// Which links a `delay` slows.
#[derive(Debug, Clone, PartialEq)]
pub enum DelayLinks {
    /// Every link to or from the site.
    Site(String),
    /// Every link between a site of `sites` and a site of `from`.
    Between {
        sites: Vec<String>,
        from: Vec<String>,
    },
    /// Every link of the cluster.
    All,
}

impl DelayLinks {
    pub fn describe(&self) -> String {
        match self {
            DelayLinks::Site(s) => s.clone(),
            DelayLinks::Between { sites, from } => {
                format!("{}-{}", sites.join(","), from.join(","))
            }
            DelayLinks::All => "all".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    Kill(String),
    Stop(String),
    Cont(String),
    Restart(String),
    /// The site is lost with its data: agent and dataset servers killed, its data dir and
    /// its members' data dirs (and WAL spools) deleted.
    Wipe(String),
    /// `outlast rebuild` of a wiped site, which then runs as its agent.
    Rebuild(String),
    Partition {
        sites: Vec<String>,
        from: Vec<String>,
    },
    /// Links carry `ms` more latency each way (each chunk `ms ± jitter_ms`, order kept),
    /// lose a share of chunks as TCP would (the chunk and those behind it wait a
    /// retransmission), and carry at most `bandwidth_bps` each way.
    Delay {
        links: DelayLinks,
        ms: u64,
        jitter_ms: u64,
        /// Chunks lost, per million.
        loss_ppm: u32,
        /// Bits per second each way; 0: no cap.
        bandwidth_bps: u64,
    },
    /// Writes to the sinks of the site (every sink when None) fail.
    SinkDown(Option<String>),
    SinkUp(Option<String>),
    /// A dependency's endpoint (its first when `endpoint` is none; every one with "all")
    /// is cut from `site` (every data site when none): probes fail, the egress forwarder
    /// goes elsewhere.
    DepDown {
        dep: String,
        site: Option<String>,
        endpoint: Option<String>,
    },
    /// Ends the `dep-down` of `dep` (at `site`, or everywhere).
    DepUp {
        dep: String,
        site: Option<String>,
    },
    Heal,
}

impl Fault {
    /// Whether this fault can take service away (downtime is counted from it): a kill, a
    /// stop, a wipe, a partition, a delay, a sink or a dependency down. Restarts, heals and
    /// the other ends of faults are not, though what they set off (a failback) is shown.
    pub fn disrupts(&self) -> bool {
        matches!(
            self,
            Fault::Kill(_)
                | Fault::Stop(_)
                | Fault::Wipe(_)
                | Fault::Partition { .. }
                | Fault::Delay { .. }
                | Fault::SinkDown(_)
                | Fault::DepDown { .. }
        )
    }

    pub fn describe(&self) -> String {
        match self {
            Fault::Kill(s) => format!("kill {s}"),
            Fault::Stop(s) => format!("stop {s}"),
            Fault::Cont(s) => format!("cont {s}"),
            Fault::Restart(s) => format!("restart {s}"),
            Fault::Wipe(s) => format!("wipe {s}"),
            Fault::Rebuild(s) => format!("rebuild {s}"),
            Fault::Partition { sites, from } => {
                format!("partition {} from {}", sites.join(","), from.join(","))
            }
            Fault::Delay {
                links,
                ms,
                jitter_ms,
                loss_ppm,
                bandwidth_bps,
            } => {
                let mut d = format!("delay {} {ms}", links.describe());
                if *jitter_ms > 0 {
                    d += &format!("±{jitter_ms}");
                }
                d += " ms";
                if *loss_ppm > 0 {
                    d += &format!(", {}% loss", *loss_ppm as f64 / 10_000.0);
                }
                if *bandwidth_bps > 0 {
                    d += &format!(", {}", bandwidth_words(*bandwidth_bps));
                }
                d
            }
            Fault::SinkDown(Some(s)) => format!("sink-down {s}"),
            Fault::SinkDown(None) => "sink-down".into(),
            Fault::SinkUp(Some(s)) => format!("sink-up {s}"),
            Fault::SinkUp(None) => "sink-up".into(),
            Fault::DepDown {
                dep,
                site,
                endpoint,
            } => format!(
                "dep-down {dep}{}{}",
                endpoint
                    .as_ref()
                    .map(|e| format!(" {e}"))
                    .unwrap_or_default(),
                site.as_ref()
                    .map(|s| format!(" at {s}"))
                    .unwrap_or_default()
            ),
            Fault::DepUp { dep, site } => format!(
                "dep-up {dep}{}",
                site.as_ref()
                    .map(|s| format!(" at {s}"))
                    .unwrap_or_default()
            ),
            Fault::Heal => "heal".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub at: Duration,
    pub fault: Fault,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = ">")]
    Gt,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Expect {
    pub metric: String,
    pub op: Op,
    pub value: f64,
}

impl Expect {
    pub fn holds(&self, actual: f64) -> bool {
        match self.op {
            Op::Lt => actual < self.value,
            Op::Le => actual <= self.value,
            Op::Eq => actual == self.value,
            Op::Ge => actual >= self.value,
            Op::Gt => actual > self.value,
        }
    }
}

/// Metrics an `[expect]` line may name.
pub const METRICS: &[&str] = &[
    "rto_ms",
    "rpo_ms",
    "failback_ms",
    "requests_failed",
    "requests_late",
    "longest_wait_ms",
    "writes_acked",
    "writes_lost",
    "writes_duplicated",
    "db_acked",
    "db_lost",
    "db_rto_ms",
    "db_diverged",
    "rebuild_ms",
    "dep_down_ms",
    "leader_changes",
    "rtt_ms_max",
];

#[derive(Debug, Clone)]
pub struct Workload {
    pub service: Option<String>,
    pub rate: u64,
    pub stream: Option<String>,
    pub event_rate: u64,
    /// A request counts as served only when answered within this (default 1 s).
    pub ok_within: Duration,
    /// The dataset to write numbered rows (PostgreSQL) or keys (Redis) to, through its
    /// service's gateways.
    pub dataset: Option<String>,
    /// Commits per second (default 200).
    pub write_rate: u64,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub duration: Duration,
    pub workload: Workload,
    pub steps: Vec<Step>,
    pub expect: Vec<Expect>,
}

impl Scenario {
    pub fn load(path: &Path, config: &Config) -> Result<Self, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
        Self::parse(path, &text, config)
    }

    /// Parses and checks a scenario against the config it runs on; every problem as
    /// `file:line:col: what; fix`.
    pub fn parse(path: &Path, text: &str, config: &Config) -> Result<Self, Vec<String>> {
        let file = path.display().to_string();
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let (l, c) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            vec![format!("{file}:{l}:{c}: {}", e.message())]
        })?;
        let mut problems = Vec::new();
        let mut at = |span: std::ops::Range<usize>, what: String, fix: &str| {
            problems.push(Problem::at(path, text, span.start, what, fix).to_string());
        };
        let dur = |s: &Spanned<String>,
                   at: &mut dyn FnMut(std::ops::Range<usize>, String, &str)| {
            parse_duration(s.get_ref()).unwrap_or_else(|why| {
                at(
                    s.span(),
                    format!("\"{}\" is not a duration ({why})", s.get_ref()),
                    "write it like \"5s\" or \"1m30s\"",
                );
                Duration::ZERO
            })
        };
        let duration = dur(&raw.duration, &mut at);
        let ok_within = match &raw.workload.ok_within {
            None => Duration::from_secs(1),
            Some(s) => {
                let d = dur(s, &mut at);
                if d.is_zero() || d > Duration::from_secs(60) {
                    at(
                        s.span(),
                        format!(
                            "ok_within \"{}\" must be above zero and at most 1m",
                            s.get_ref()
                        ),
                        "write it like \"1s\" or \"500ms\"",
                    );
                }
                d
            }
        };
        let sites: Vec<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
        let known = sites.join(", ");
        let site = |s: &Option<Spanned<String>>,
                    step: &Spanned<String>,
                    at: &mut dyn FnMut(std::ops::Range<usize>, String, &str)|
         -> String {
            match s {
                Some(s) if sites.contains(&s.get_ref().as_str()) => s.get_ref().clone(),
                Some(s) => {
                    at(
                        s.span(),
                        format!("site \"{}\" is not in the config", s.get_ref()),
                        &format!("name one of: {known}"),
                    );
                    String::new()
                }
                None => {
                    at(
                        step.span(),
                        format!("fault \"{}\" needs a site", step.get_ref()),
                        "add site = \"NAME\"",
                    );
                    String::new()
                }
            }
        };
        let mut steps = Vec::new();
        for st in &raw.steps {
            let when = dur(&st.at, &mut at);
            if when > duration {
                at(
                    st.at.span(),
                    format!("step at {} is after the drill ends", st.at.get_ref()),
                    "make it earlier than duration",
                );
            }
            let fault = match st.fault.get_ref().as_str() {
                "kill" => Fault::Kill(site(&st.site, &st.fault, &mut at)),
                "stop" => Fault::Stop(site(&st.site, &st.fault, &mut at)),
                "cont" => Fault::Cont(site(&st.site, &st.fault, &mut at)),
                "restart" => Fault::Restart(site(&st.site, &st.fault, &mut at)),
                "wipe" => Fault::Wipe(site(&st.site, &st.fault, &mut at)),
                "rebuild" => {
                    let s = site(&st.site, &st.fault, &mut at);
                    let wiped = raw.steps.iter().any(|w| {
                        w.fault.get_ref() == "wipe"
                            && w.site.as_ref().is_some_and(|x| x.get_ref() == &s)
                            && parse_duration(w.at.get_ref()).is_ok_and(|t| t < when)
                    });
                    if !s.is_empty() && !wiped {
                        at(
                            st.fault.span(),
                            format!("rebuild {s} comes after no wipe of {s}: a site with its state restarts, it is not rebuilt"),
                            &format!("add a step fault = \"wipe\", site = \"{s}\" before it, or use restart"),
                        );
                    }
                    Fault::Rebuild(s)
                }
                "heal" => Fault::Heal,
                "partition" => {
                    let list = |v: &Option<Vec<String>>| v.clone().unwrap_or_default();
                    let (p, f) = (list(&st.sites), list(&st.from));
                    let bad: Vec<&String> = p
                        .iter()
                        .chain(&f)
                        .filter(|s| !sites.contains(&s.as_str()))
                        .collect();
                    if p.is_empty() || f.is_empty() || !bad.is_empty() {
                        at(
                            st.fault.span(),
                            format!("partition needs sites and from, naming sites of the config (unknown: {bad:?})"),
                            &format!("write sites = [\"east\"], from = [\"west\", \"witness\"] with names from: {known}"),
                        );
                    }
                    Fault::Partition { sites: p, from: f }
                }
                "delay" => {
                    let links = match (&st.site, &st.sites, &st.from) {
                        (Some(_), None, None) => {
                            DelayLinks::Site(site(&st.site, &st.fault, &mut at))
                        }
                        (None, None, None) => DelayLinks::All,
                        (None, Some(p), Some(f)) => {
                            let bad: Vec<&String> = p
                                .iter()
                                .chain(f)
                                .filter(|s| !sites.contains(&s.as_str()))
                                .collect();
                            if p.is_empty() || f.is_empty() || !bad.is_empty() {
                                at(
                                    st.fault.span(),
                                    format!("delay's sites and from must name sites of the config (unknown: {bad:?})"),
                                    &format!("write sites = [\"east\"], from = [\"west\"] with names from: {known}"),
                                );
                            }
                            DelayLinks::Between {
                                sites: p.clone(),
                                from: f.clone(),
                            }
                        }
                        _ => {
                            at(
                                st.fault.span(),
                                "delay takes site (its links), or sites and from (the links between the two groups), or neither (every link)".into(),
                                "keep site alone, or sites with from",
                            );
                            DelayLinks::All
                        }
                    };
                    let loss_ppm = match &st.loss {
                        None => 0,
                        Some(l) if (0.0..=0.5).contains(l.get_ref()) => {
                            (l.get_ref() * 1e6).round() as u32
                        }
                        Some(l) => {
                            at(
                                l.span(),
                                format!("loss {} is not a share from 0 to 0.5", l.get_ref()),
                                "write loss = 0.01 for 1% of chunks lost",
                            );
                            0
                        }
                    };
                    let bandwidth_bps = match &st.bandwidth {
                        None => 0,
                        Some(b) => parse_bandwidth(b.get_ref()).unwrap_or_else(|| {
                            at(
                                b.span(),
                                format!("bandwidth \"{}\" is not a rate", b.get_ref()),
                                "write it like \"10mbit\", \"512kbit\" or \"1gbit\" (bits per second, each way)",
                            );
                            0
                        }),
                    };
                    let jitter_ms = st.jitter_ms.unwrap_or(0);
                    match st.ms {
                        Some(ms) if ms <= 60_000 && jitter_ms <= ms => Fault::Delay {
                            links,
                            ms,
                            jitter_ms,
                            loss_ppm,
                            bandwidth_bps,
                        },
                        Some(ms) if ms <= 60_000 => {
                            at(
                                st.fault.span(),
                                format!("jitter_ms {jitter_ms} is more than ms {ms}: a chunk cannot arrive before it was sent"),
                                &format!("use jitter_ms = {} or less", ms),
                            );
                            Fault::Heal
                        }
                        _ => {
                            at(
                                st.fault.span(),
                                "delay needs ms, the latency to add (at most 60000)".into(),
                                "add ms = 80",
                            );
                            Fault::Heal
                        }
                    }
                }
                "sink-down" | "sink-up" => {
                    let sink_site = st.site.as_ref().map(|s| {
                        let name = s.get_ref();
                        let known_sink = config
                            .streams
                            .iter()
                            .flat_map(|x| &x.sinks)
                            .any(|k| k.site.as_deref() == Some(name.as_str()));
                        if !known_sink {
                            at(
                                s.span(),
                                format!("no sink of any stream has site = \"{name}\""),
                                "name a site that a [[streams.sinks]] entry names, or leave site out for every sink",
                            );
                        }
                        name.clone()
                    });
                    if st.fault.get_ref() == "sink-down" {
                        Fault::SinkDown(sink_site)
                    } else {
                        Fault::SinkUp(sink_site)
                    }
                }
                "dep-down" | "dep-up" => {
                    let dep = match &st.dep {
                        Some(d) if config.dependencies.iter().any(|x| &x.name == d.get_ref()) => {
                            d.get_ref().clone()
                        }
                        Some(d) => {
                            let names: Vec<&str> = config
                                .dependencies
                                .iter()
                                .map(|x| x.name.as_str())
                                .collect();
                            at(
                                d.span(),
                                format!("dependency \"{}\" is not in the config", d.get_ref()),
                                &format!(
                                    "name one of: {}",
                                    if names.is_empty() {
                                        "(none: add a [[dependencies]])".to_string()
                                    } else {
                                        names.join(", ")
                                    }
                                ),
                            );
                            String::new()
                        }
                        None => {
                            at(
                                st.fault.span(),
                                format!("fault \"{}\" needs dep", st.fault.get_ref()),
                                "add dep = \"NAME\" (a [[dependencies]] of the config)",
                            );
                            String::new()
                        }
                    };
                    let on = st.site.as_ref().map(|_| site(&st.site, &st.fault, &mut at));
                    if let Some(s) = on
                        .as_deref()
                        .filter(|s| config.sites.iter().any(|x| x.name == *s && x.witness))
                    {
                        at(
                            st.site
                                .as_ref()
                                .map(|x| x.span())
                                .unwrap_or(st.fault.span()),
                            format!("{s} is a witness: it calls no dependency"),
                            "name a data site, or leave site out for every data site",
                        );
                    }
                    if st.fault.get_ref() == "dep-down" {
                        let endpoint = st.endpoint.as_ref().map(|e| {
                            let ok = e.get_ref() == "all"
                                || config.dependencies.iter().any(|x| {
                                    x.name == dep && x.endpoints.contains(e.get_ref())
                                });
                            if !ok && !dep.is_empty() {
                                at(
                                    e.span(),
                                    format!("dependency {dep} lists no endpoint \"{}\"", e.get_ref()),
                                    "name one of its endpoints, or \"all\", or leave endpoint out for its first",
                                );
                            }
                            e.get_ref().clone()
                        });
                        Fault::DepDown {
                            dep,
                            site: on,
                            endpoint,
                        }
                    } else {
                        if let Some(e) = &st.endpoint {
                            at(
                                e.span(),
                                "dep-up ends every dep-down of the dependency; it takes no endpoint".into(),
                                "drop endpoint",
                            );
                        }
                        Fault::DepUp { dep, site: on }
                    }
                }
                other => {
                    at(
                        st.fault.span(),
                        format!("fault \"{other}\" is not known"),
                        "use kill, stop, cont, restart, wipe, rebuild, partition, heal, delay, sink-down, sink-up, dep-down or dep-up",
                    );
                    Fault::Heal
                }
            };
            steps.push(Step { at: when, fault });
        }
        steps.sort_by_key(|s| s.at);
        let mut expect = Vec::new();
        for (metric, v) in &raw.expect {
            let text_v = v.get_ref().trim();
            let (op, rest) = [
                ("<=", Op::Le),
                (">=", Op::Ge),
                ("==", Op::Eq),
                ("<", Op::Lt),
                (">", Op::Gt),
            ]
            .iter()
            .find_map(|(p, op)| text_v.strip_prefix(p).map(|r| (*op, r.trim())))
            .unwrap_or((Op::Eq, text_v));
            if !METRICS.contains(&metric.as_str()) {
                at(
                    v.span(),
                    format!("expectation on unknown metric \"{metric}\""),
                    &format!("use one of: {}", METRICS.join(", ")),
                );
                continue;
            }
            match rest.parse::<f64>() {
                Ok(value) => expect.push(Expect {
                    metric: metric.clone(),
                    op,
                    value,
                }),
                Err(_) => at(
                    v.span(),
                    format!("\"{text_v}\" is not a comparison"),
                    "write it like \"< 3000\" or \"== 0\"",
                ),
            }
        }
        let service = raw.workload.service.as_ref().map(|s| {
            if !config.services.iter().any(|x| &x.name == s.get_ref()) {
                at(
                    s.span(),
                    format!("service \"{}\" is not in the config", s.get_ref()),
                    "name one of the config's [[services]]",
                );
            }
            s.get_ref().clone()
        });
        if service.is_some() && config.dns.is_none() {
            at(0..0, "the workload resolves the service through outlast's DNS, and the config has no [dns]".into(), "add a [dns] table to the config");
        }
        let stream = raw.workload.stream.as_ref().map(|s| {
            if !config.streams.iter().any(|x| &x.name == s.get_ref()) {
                at(
                    s.span(),
                    format!("stream \"{}\" is not in the config", s.get_ref()),
                    "name one of the config's [[streams]]",
                );
            }
            s.get_ref().clone()
        });
        let dataset = raw.workload.dataset.as_ref().map(|s| {
            if !config.datasets.iter().any(|x| &x.name == s.get_ref()) {
                at(
                    s.span(),
                    format!("dataset \"{}\" is not in the config", s.get_ref()),
                    "name one of the config's [[datasets]]",
                );
            }
            s.get_ref().clone()
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Scenario {
            name: raw.name,
            duration,
            workload: Workload {
                service,
                rate: raw.workload.rate.unwrap_or(100).max(1),
                stream,
                event_rate: raw.workload.event_rate.unwrap_or(100).max(1),
                ok_within,
                dataset,
                write_rate: raw.workload.write_rate.unwrap_or(200).clamp(1, 10_000),
            },
            steps,
            expect,
        })
    }
}

/// A rate in bits per second from "10mbit", "512kbit", "1gbit" or "800bit".
pub fn parse_bandwidth(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = [
        ("gbit", 1_000_000_000u64),
        ("mbit", 1_000_000),
        ("kbit", 1_000),
        ("bit", 1),
    ]
    .iter()
    .find_map(|(unit, m)| t.strip_suffix(unit).map(|n| (n.trim().to_string(), *m)))?;
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v > 0.0)
        .then(|| (v * mult as f64).round() as u64)
        .filter(|bps| *bps >= 8_000)
}

/// "10 Mbit/s" for a rate in bits per second.
pub fn bandwidth_words(bps: u64) -> String {
    if bps >= 1_000_000_000 {
        format!("{} Gbit/s", bps as f64 / 1e9)
    } else if bps >= 1_000_000 {
        format!("{} Mbit/s", bps as f64 / 1e6)
    } else {
        format!("{} kbit/s", bps as f64 / 1e3)
    }
}
