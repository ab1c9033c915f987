//! From raw config to [`Config`]: every problem found is collected, none stops the others.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::*;
use super::*;
use crate::duration::{format_duration, parse_duration};

/// The most probes `fall` or `rise` may count.
const MAX_COUNT: u32 = 1000;

pub(super) struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
    /// Things that work but are likely not what was meant.
    warnings: Vec<Problem>,
}

/// The one rule for names that become paths (sites, streams, datasets, backups,
/// dependencies): 1 to 64 ASCII letters, digits, '-' and '_'. So `..`, `.`, `a/b` never
/// reach a path join.
pub fn plain_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Ctx<'_> {
    pub(super) fn warn(
        &mut self,
        span: Range<usize>,
        what: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.warnings
            .push(Problem::at(self.file, self.text, span.start, what, fix));
    }

    pub(super) fn at(
        &mut self,
        span: Range<usize>,
        what: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems
            .push(Problem::at(self.file, self.text, span.start, what, fix));
    }

    /// The name of a site, stream, dataset, backup or dependency, trimmed; reported when
    /// it breaks [`plain_name`] (each becomes a file or folder name under `data_dir`).
    pub(super) fn plain_name(&mut self, kind: &str, raw: &S<String>) -> String {
        let name = raw.get_ref().trim().to_string();
        if !plain_name(&name) {
            self.at(
                raw.span(),
                format!("{kind} name \"{}\" is not a plain name", raw.get_ref()),
                "use letters, digits, '-' and '_' only (1 to 64 of them; the name becomes a file name)",
            );
        }
        name
    }

    pub(super) fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    /// Records `name` of a `kind` (service, stream, dataset) as seen at `span`, or reports
    /// that it was defined already.
    pub(super) fn unique(
        &mut self,
        seen: &mut HashMap<String, Range<usize>>,
        kind: &str,
        name: &str,
        span: Range<usize>,
    ) {
        if let Some(first) = seen.get(name) {
            let line = self.line_of(first);
            self.at(
                span,
                format!("{kind} \"{name}\" is defined twice (first on line {line})"),
                format!("give each {kind} its own name"),
            );
        } else {
            seen.insert(name.to_string(), span);
        }
    }

    pub(super) fn duration(
        &mut self,
        field: &str,
        value: Option<&S<String>>,
        default: Duration,
    ) -> Duration {
        let Some(v) = value else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) => d,
            Err(why) => {
                self.at(
                    v.span(),
                    format!("{field} = \"{}\" is not a duration ({why})", v.get_ref()),
                    "write it as a number and a unit, like \"200ms\", \"1s\" or \"1m30s\"",
                );
                default
            }
        }
    }

    /// A listener's connection cap: at least 1, at most a million.
    pub(super) fn connections(&mut self, value: Option<&S<u64>>, default: usize) -> usize {
        let Some(v) = value else { return default };
        match usize::try_from(*v.get_ref()) {
            Ok(n) if (1..=1_000_000).contains(&n) => n,
            _ => {
                self.at(
                    v.span(),
                    format!("max_connections = {} is not usable", v.get_ref()),
                    "give a number from 1 to 1000000",
                );
                default
            }
        }
    }

    /// A port something listens on: 0 would mean "any free port", which no peer can find.
    pub(super) fn port(&mut self, field: &str, value: &S<u16>) {
        if *value.get_ref() == 0 {
            self.at(
                value.span(),
                format!("{field} = 0 is not a port others can reach"),
                "give a port from 1 to 65535",
            );
        }
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        field: &str,
        value: Option<&S<String>>,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(v) = value else { return default };
        if let Some((_, t)) = options.iter().find(|(name, _)| *name == v.get_ref()) {
            return *t;
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.at(
            v.span(),
            format!("{field} = \"{}\" is not a known value", v.get_ref()),
            format!("use one of {}", names.join(", ")),
        );
        default
    }
}

/// 1-based line and column (in characters) of a byte offset: where config and scenario
/// problems are placed.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary_compat(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

fn fix_for_toml_error(message: &str) -> &'static str {
    if message.contains("missing field") {
        "add the missing field (docs/config.md lists every field)"
    } else if message.contains("invalid type") {
        "give the value the type shown (quote durations and names)"
    } else {
        "correct the TOML syntax at this place"
    }
}

/// Reads the raw config, going on past unknown fields (each one a problem with the nearest
/// known name) so that they do not hide the file's other problems. None when the text
/// cannot be read as a config at all (the problem is in `ctx`).
fn read_raw(ctx: &mut Ctx<'_>, text: &str) -> Option<RawConfig> {
    use super::recover;
    let mut work: Option<String> = None;
    // Each round blanks one unknown field; a file has only so many.
    for _ in 0..200 {
        let current = work.as_deref().unwrap_or(text);
        let e = match toml::from_str::<RawConfig>(current) {
            Ok(raw) => return Some(raw),
            Err(e) => e,
        };
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().replace('\n', " ");
        let Some((field, known)) = recover::unknown_field(&message) else {
            ctx.at(span, message.clone(), fix_for_toml_error(&message));
            return None;
        };
        let fix = match recover::nearest(&field, &known) {
            Some(n) => format!("did you mean `{n}`? (docs/config.md lists every field)"),
            None if known.is_empty() => "remove it: this table takes no fields".to_string(),
            None => format!(
                "remove it or correct its spelling; known here: {}",
                known.join(", ")
            ),
        };
        ctx.at(span.clone(), format!("unknown field `{field}`"), fix);
        let mut next = current.to_string();
        if !recover::blank_entry(&mut next, span.start) {
            return None;
        }
        work = Some(next);
    }
    None
}

pub(super) fn parse(file: &Path, text: &str) -> Result<Config, Vec<Problem>> {
    let mut ctx = Ctx {
        file,
        text,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let Some(raw) = read_raw(&mut ctx, text) else {
        ctx.problems.sort_by_key(|p| (p.line, p.col));
        return Err(ctx.problems);
    };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let config = build(&mut ctx, raw, &base, file);
    if ctx.problems.is_empty() {
        Ok(config)
    } else {
        ctx.problems.sort_by_key(|p| (p.line, p.col));
        Err(ctx.problems)
    }
}

/// A secret, token or key file: a small regular file only (see [`crate::files`]).
pub(super) fn read_secret(path: &Path) -> Result<String, crate::files::ReadError> {
    crate::files::read_text(path, crate::files::MAX_SECRET_BYTES)
}

pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn build(ctx: &mut Ctx<'_>, raw: RawConfig, base: &Path, file: &Path) -> Config {
    let cluster = cluster(ctx, &raw.cluster, base);
    let timing = timing(ctx, raw.timing.as_ref());
    let sites = sites(ctx, &raw.sites, base, &raw.cluster);
    let site_names: HashMap<String, usize> = sites
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    let data_sites: Vec<String> = sites
        .iter()
        .filter(|s| !s.witness)
        .map(|s| s.name.clone())
        .collect();
    let dns = raw.dns.as_ref().map(|d| dns(ctx, d, base, &data_sites));
    let mut datasets = super::datasets::datasets(ctx, &raw.datasets, &sites, &site_names, base);
    let services = services(
        ctx,
        &raw.services,
        &sites,
        &site_names,
        &timing,
        &datasets,
        dns.as_ref(),
    );
    super::datasets::link(ctx, &raw.services, &services, &mut datasets, &raw.datasets);
    let streams = streams(ctx, &raw.streams, &site_names, base);
    let backups = super::backups::backups(ctx, &raw.backups, &datasets, &site_names, base);
    let alerts = alerts(ctx, &raw.alerts, base);
    let api = api(ctx, raw.api.as_ref(), base);
    let tls = super::tls::peer_tls(ctx, raw.tls.as_ref(), base);
    let dependencies =
        super::dependencies::dependencies(ctx, &raw.dependencies, &services, &timing);
    clashes(
        ctx,
        &raw,
        &sites,
        dns.as_ref(),
        &services,
        &datasets,
        &dependencies,
    );
    let mut warnings = std::mem::take(&mut ctx.warnings);
    if dns.is_none() {
        for r in &raw.services {
            let r = r.get_ref();
            if let Some(d) = &r.dns_name {
                warnings.push(Problem::at(
                    ctx.file,
                    ctx.text,
                    d.span().start,
                    format!(
                        "service \"{}\" has dns_name \"{}\", but there is no [dns], so no site answers for it",
                        r.name.get_ref(),
                        d.get_ref()
                    ),
                    "add a [dns] table (zone, port) or drop dns_name",
                ));
            }
        }
    }
    Config {
        path: file.to_path_buf(),
        cluster,
        timing,
        sites,
        dns,
        services,
        streams,
        datasets,
        backups,
        alerts,
        api,
        tls,
        dependencies,
        warnings,
    }
}

fn cluster(ctx: &mut Ctx<'_>, raw: &S<RawCluster>, base: &Path) -> Cluster {
    let c = raw.get_ref();
    if c.name.get_ref().trim().is_empty() {
        ctx.at(
            c.name.span(),
            "the cluster name is empty",
            "give the cluster a name",
        );
    }
    let secret = match (&c.secret, &c.secret_file) {
        (Some(_), Some(f)) => {
            ctx.at(
                f.span(),
                "both secret and secret_file are set",
                "keep one of them (secret_file keeps the secret out of the config)",
            );
            String::new()
        }
        (Some(s), None) => {
            if s.get_ref().trim().is_empty() {
                ctx.at(
                    s.span(),
                    "the cluster secret is empty",
                    "set a long random secret",
                );
            }
            s.get_ref().trim().to_string()
        }
        (None, Some(f)) => {
            let path = resolve(base, f.get_ref());
            match read_secret(&path) {
                Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
                Ok(_) => {
                    ctx.at(
                        f.span(),
                        format!("secret_file {} is empty", path.display()),
                        "write a long random secret into it",
                    );
                    String::new()
                }
                Err(e) => {
                    ctx.at(
                        f.span(),
                        format!("cannot read secret_file {}: {e}", path.display()),
                        "create the file (relative paths start at the config's folder)",
                    );
                    String::new()
                }
            }
        }
        (None, None) => {
            ctx.at(
                raw.span(),
                "[cluster] has neither secret nor secret_file",
                "add secret_file = \"cluster.key\" (or secret = \"...\"): agents authenticate with it",
            );
            String::new()
        }
    };
    Cluster {
        name: c.name.get_ref().clone(),
        secret,
        unsafe_two_sites: c.unsafe_two_sites,
    }
}

fn timing(ctx: &mut Ctx<'_>, raw: Option<&S<RawTiming>>) -> Timing {
    let d = Timing::default();
    let Some(raw) = raw else { return d };
    let t = raw.get_ref();
    let problems_before = ctx.problems.len();
    let mut count = |field: &str, v: Option<&S<u32>>, default: u32| match v {
        Some(v) if *v.get_ref() == 0 => {
            ctx.at(
                v.span(),
                format!("{field} = 0 can never be reached"),
                "use 1 or more",
            );
            default
        }
        Some(v) if *v.get_ref() > MAX_COUNT => {
            ctx.at(
                v.span(),
                format!(
                    "{field} = {} is more probes than a failover can wait for",
                    v.get_ref()
                ),
                format!("use {MAX_COUNT} or fewer (detection is fall × probe_interval + grace)"),
            );
            default
        }
        Some(v) => *v.get_ref(),
        None => default,
    };
    let fall = count("fall", t.fall.as_ref(), d.fall);
    let rise = count("rise", t.rise.as_ref(), d.rise);
    let timing = Timing {
        probe_interval: ctx.duration(
            "probe_interval",
            t.probe_interval.as_ref(),
            d.probe_interval,
        ),
        fall,
        rise,
        grace: ctx.duration("grace", t.grace.as_ref(), d.grace),
        lease: ctx.duration("lease", t.lease.as_ref(), d.lease),
        failback_after: ctx.duration(
            "failback_after",
            t.failback_after.as_ref(),
            d.failback_after,
        ),
        max_rtt: ctx.duration("max_rtt", t.max_rtt.as_ref(), d.max_rtt),
    };
    // Bounds that keep every derived deadline (detection, lease, report freshness) in the
    // range a failover tool can use; far past them is a typo, not a setting.
    for (field, value, d, max) in [
        (
            "probe_interval",
            t.probe_interval.as_ref(),
            timing.probe_interval,
            60,
        ),
        ("grace", t.grace.as_ref(), timing.grace, 3600),
        ("lease", t.lease.as_ref(), timing.lease, 3600),
        ("max_rtt", t.max_rtt.as_ref(), timing.max_rtt, 10),
    ] {
        if d > Duration::from_secs(max) {
            let span = value.map(|s| s.span()).unwrap_or(raw.span());
            ctx.at(
                span,
                format!(
                    "{field} {} is too long to detect or fence anything",
                    format_duration(d)
                ),
                format!("use {} or less", format_duration(Duration::from_secs(max))),
            );
        }
    }
    if timing.probe_interval < Duration::from_millis(10) {
        let span = t
            .probe_interval
            .as_ref()
            .map(|s| s.span())
            .unwrap_or(raw.span());
        ctx.at(span, "probe_interval is under 10ms", "use 10ms or more");
    }
    if timing.max_rtt.is_zero() {
        let span = t.max_rtt.as_ref().map(|s| s.span()).unwrap_or(raw.span());
        ctx.at(
            span,
            "max_rtt = 0 is no network at all",
            "use the longest round trip between two of your sites, e.g. \"80ms\" (the default is 250ms)",
        );
    }
    // A duration that did not parse fell back to its default; judging the others against
    // that default would only report a problem the user does not have.
    let unparsed = ctx.problems.len() > problems_before;
    let detection = timing.worst_detection();
    if timing.lease <= detection && !unparsed {
        let span = t.lease.as_ref().map(|s| s.span()).unwrap_or(raw.span());
        let fall_rest = timing.fall.saturating_sub(1);
        ctx.at(
            span,
            format!(
                "lease {} is not longer than detection at the largest round trip ({fall_rest} × probe_interval {} + a heartbeat's timeout {} (max_rtt {} + probe_interval / 4) + grace {} = {}): \
                 a primary would fence itself on a blip the others do not even act on",
                format_duration(timing.lease),
                format_duration(timing.probe_interval),
                format_duration(timing.probe_timeout_cap()),
                format_duration(timing.max_rtt),
                format_duration(timing.grace),
                format_duration(detection)
            ),
            format!(
                "set lease above {}, or shorten probe_interval, fall, grace or max_rtt",
                format_duration(detection)
            ),
        );
    }
    timing
}

fn sites(ctx: &mut Ctx<'_>, raw: &[S<RawSite>], base: &Path, cluster: &S<RawCluster>) -> Vec<Site> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, Range<usize>> = HashMap::new();
    for s in raw {
        let r = s.get_ref();
        let name = ctx.plain_name("site", &r.name);
        if let Some(first) = seen.get(&name) {
            let line = ctx.line_of(first);
            ctx.at(
                r.name.span(),
                format!("site \"{name}\" is defined twice (first on line {line})"),
                "give each site its own name",
            );
        } else {
            seen.insert(name.clone(), r.name.span());
        }
        let address: IpAddr = match r.address.get_ref().parse() {
            Ok(a) => a,
            Err(_) => {
                ctx.at(
                    r.address.span(),
                    format!("address \"{}\" is not an IP address", r.address.get_ref()),
                    "write an IP address such as \"127.0.0.11\" (the address gateways bind and DNS publishes)",
                );
                IpAddr::from([127, 0, 0, 1])
            }
        };
        let data_dir = match &r.data_dir {
            Some(d) => resolve(base, d.get_ref()),
            None => base.join("data").join(&name),
        };
        if let Some(d) = &r.data_dir {
            if data_dir.exists() && !data_dir.is_dir() {
                ctx.at(
                    d.span(),
                    format!("data_dir {} is not a folder", data_dir.display()),
                    "name a folder (it is created when missing)",
                );
            }
        }
        ctx.port("peer_port", &r.peer_port);
        ctx.port("api_port", &r.api_port);
        out.push(Site {
            name,
            address,
            peer_port: *r.peer_port.get_ref(),
            api_port: *r.api_port.get_ref(),
            data_dir,
            witness: r.witness,
        });
    }
    let c = cluster.get_ref();
    if out.is_empty() {
        ctx.at(
            cluster.span(),
            "no [[sites]] are defined",
            "add a [[sites]] table for every site",
        );
    } else if out.len() < 3 && !c.unsafe_two_sites {
        ctx.at(
            cluster.span(),
            format!(
                "only {} voting site(s): with fewer than three, a site cannot tell a dead peer \
                 from a cut link, and one failure stops the cluster",
                out.len()
            ),
            "add a witness ([[sites]] with witness = true) on a third failure domain, \
             or set unsafe_two_sites = true in [cluster] to accept the risk",
        );
    }
    if !out.is_empty() && out.iter().all(|s| s.witness) {
        ctx.at(
            cluster.span(),
            "every site is a witness",
            "make at least one site a data site",
        );
    }
    out
}

fn dns(ctx: &mut Ctx<'_>, raw: &S<RawDns>, base: &Path, data_sites: &[String]) -> Dns {
    let d = raw.get_ref();
    let mut zone = d.zone.get_ref().trim().to_string();
    if zone.is_empty() || zone == "." {
        ctx.at(
            d.zone.span(),
            "the DNS zone is empty",
            "set zone = \"shop.example.\"",
        );
    }
    if !zone.ends_with('.') {
        zone.push('.');
    }
    let all_down = ctx.choice(
        "all_down",
        d.all_down.as_ref(),
        AllDown::FailOpen,
        &[
            ("fail-open", AllDown::FailOpen),
            ("fail-closed", AllDown::FailClosed),
        ],
    );
    let push = d
        .push
        .iter()
        .filter_map(|p| dns_push(ctx, p, &zone, base))
        .collect();
    ctx.port("port", &d.port);
    let steer = super::steering::dns_steering(ctx, d, base, data_sites);
    Dns {
        zone,
        port: *d.port.get_ref(),
        ttl: d.ttl.as_ref().map(|t| *t.get_ref()).unwrap_or(5),
        all_down,
        push,
        networks: steer.networks,
        networks_file: steer.networks_file,
        probes: steer.probes,
    }
}

fn services(
    ctx: &mut Ctx<'_>,
    raw: &[S<RawService>],
    sites: &[Site],
    site_names: &HashMap<String, usize>,
    timing: &Timing,
    datasets: &[Dataset],
    dns: Option<&Dns>,
) -> Vec<Service> {
    let data_sites: Vec<String> = sites
        .iter()
        .filter(|s| !s.witness)
        .map(|s| s.name.clone())
        .collect();
    let mut out = Vec::new();
    let mut seen: HashMap<String, Range<usize>> = HashMap::new();
    let mut dns_seen: HashMap<String, Range<usize>> = HashMap::new();
    for s in raw {
        let r = s.get_ref();
        let name = r.name.get_ref().trim().to_string();
        if name.is_empty() {
            ctx.at(
                r.name.span(),
                "the service name is empty",
                "give the service a name",
            );
        }
        ctx.unique(&mut seen, "service", &name, r.name.span());
        if let Some(d) = &r.dns_name {
            let key = d.get_ref().to_ascii_lowercase();
            if let Some(first) = dns_seen.get(&key) {
                let line = ctx.line_of(first);
                ctx.at(
                    d.span(),
                    format!("dns_name \"{key}\" is used twice (first on line {line})"),
                    "give each service its own dns_name",
                );
            } else {
                dns_seen.insert(key, d.span());
            }
        }
        // A service in front of a dataset is a TCP primary-standby service by default, and
        // can be nothing else.
        let dataset = r
            .dataset
            .as_ref()
            .and_then(|d| datasets.iter().find(|x| x.name == *d.get_ref()));
        let protocol = ctx.choice(
            "protocol",
            r.protocol.as_ref(),
            if dataset.is_some() {
                Protocol::Tcp
            } else {
                Protocol::Http
            },
            &[
                ("http", Protocol::Http),
                ("tcp", Protocol::Tcp),
                ("udp", Protocol::Udp),
            ],
        );
        let udp = udp_options(ctx, r, protocol);
        let mode = ctx.choice(
            "mode",
            r.mode.as_ref(),
            if dataset.is_some() {
                Mode::PrimaryStandby
            } else {
                Mode::ActiveActive
            },
            &[
                ("active-active", Mode::ActiveActive),
                ("primary-standby", Mode::PrimaryStandby),
            ],
        );
        let failback = ctx.choice(
            "failback",
            r.failback.as_ref(),
            dataset.map(|d| d.failback).unwrap_or(Failback::Auto),
            &[("auto", Failback::Auto), ("manual", Failback::Manual)],
        );
        if let Some(d) = dataset {
            let wrong = [
                (
                    protocol != Protocol::Tcp,
                    r.protocol.as_ref(),
                    "protocol = \"tcp\"",
                ),
                (
                    mode != Mode::PrimaryStandby,
                    r.mode.as_ref(),
                    "mode = \"primary-standby\"",
                ),
                (
                    failback != d.failback,
                    r.failback.as_ref(),
                    "the dataset's failback (or none)",
                ),
            ];
            for (bad, field, fix) in wrong {
                if let (true, Some(f)) = (bad, field) {
                    ctx.at(
                        f.span(),
                        format!(
                            "service \"{name}\" leads to dataset \"{}\" and cannot be {}",
                            d.name,
                            f.get_ref()
                        ),
                        format!("use {fix}"),
                    );
                }
            }
            if let Some(p) = r.primary.as_ref().filter(|p| *p.get_ref() != d.primary) {
                ctx.at(
                    p.span(),
                    format!(
                        "service \"{name}\" has primary \"{}\" but its dataset's is \"{}\"",
                        p.get_ref(),
                        d.primary
                    ),
                    "drop primary here: the service's primary is always its dataset's",
                );
            }
        }
        let mut backends: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
        for (site, list) in &r.backends {
            let site_name = site.get_ref().clone();
            match site_names.get(&site_name) {
                None => ctx.at(
                    site.span(),
                    format!("service \"{name}\" has backends at unknown site \"{site_name}\""),
                    format!("name one of the [[sites]]: {}", known(site_names)),
                ),
                Some(&i) if sites[i].witness => ctx.at(
                    site.span(),
                    format!("site \"{site_name}\" is a witness and hosts nothing"),
                    "move these backends to a data site, or set witness = false",
                ),
                Some(_) => {}
            }
            let mut addrs = Vec::new();
            for b in list.get_ref() {
                match b.get_ref().parse::<SocketAddr>() {
                    Ok(a) => addrs.push(a),
                    Err(_) => ctx.at(
                        b.span(),
                        format!("backend \"{}\" is not an address:port", b.get_ref()),
                        "write it as \"127.0.0.1:9001\"",
                    ),
                }
            }
            backends.insert(site_name, addrs);
        }
        // A dataset's service reaches each member's server unless told otherwise.
        if let (Some(d), true) = (dataset, backends.is_empty()) {
            for site in d.members.keys() {
                if let Some(s) = sites.iter().find(|s| s.name == *site) {
                    backends.insert(site.clone(), vec![SocketAddr::new(s.address, d.port)]);
                }
            }
        }
        let has_backends = |site: &str| backends.get(site).is_some_and(|b| !b.is_empty());
        let mut primary = match dataset {
            Some(d) => Some(d.primary.clone()),
            None => r.primary.as_ref().map(|p| p.get_ref().clone()),
        };
        if let Some(p) = &r.primary {
            if !site_names.contains_key(p.get_ref()) {
                ctx.at(
                    p.span(),
                    format!("primary \"{}\" is not a site", p.get_ref()),
                    format!("name one of the [[sites]]: {}", known(site_names)),
                );
            } else if !has_backends(p.get_ref()) {
                ctx.at(
                    p.span(),
                    format!("primary \"{}\" has no backends for service \"{name}\"", p.get_ref()),
                    format!(
                        "add {} = [\"host:port\"] under [services.backends], or name a site that has backends",
                        p.get_ref()
                    ),
                );
            }
        }
        if backends.values().all(|b| b.is_empty()) {
            ctx.at(
                r.name.span(),
                format!("service \"{name}\" has no backends at any site"),
                "add [services.backends] with site = [\"host:port\"] lines",
            );
        } else if mode == Mode::PrimaryStandby && primary.is_none() {
            primary = sites
                .iter()
                .map(|s| s.name.clone())
                .find(|n| has_backends(n));
        }
        ctx.port("port", &r.port);
        let max_connections =
            ctx.connections(r.max_connections.as_ref(), DEFAULT_GATEWAY_CONNECTIONS);
        let check = check(ctx, r.check.as_ref(), protocol, timing, false);
        let steering = r.steering.as_ref().map(|st| {
            if mode == Mode::PrimaryStandby {
                ctx.at(
                    st.span(),
                    format!("service \"{name}\" is primary-standby: one site serves it, so DNS has nothing to steer"),
                    "drop steering, or make the service mode = \"active-active\"",
                );
            }
            super::steering::steering(ctx, st, &data_sites, dns)
        });
        if let Some(c) = &r.check {
            let udp_check = matches!(check.kind, CheckKind::Udp { .. });
            if udp_check != (protocol == Protocol::Udp) {
                ctx.at(
                    c.get_ref().kind.span(),
                    format!(
                        "check kind \"{}\" cannot probe the backends of a {} service",
                        c.get_ref().kind.get_ref(),
                        if protocol == Protocol::Udp {
                            "UDP"
                        } else {
                            "TCP or HTTP"
                        }
                    ),
                    if protocol == Protocol::Udp {
                        "use kind = \"udp\" (with send and receive for an answer to check)"
                    } else {
                        "use kind = \"http\" or \"tcp\""
                    },
                );
            }
        }
        out.push(Service {
            name,
            protocol,
            mode,
            primary,
            failback,
            dns_name: r.dns_name.as_ref().map(|d| d.get_ref().clone()),
            port: *r.port.get_ref(),
            check,
            max_connections,
            dataset: dataset.map(|d| d.name.clone()),
            udp,
            steering,
            backends,
        });
    }
    out
}

/// A UDP service's options; the fields are refused on other protocols.
fn udp_options(ctx: &mut Ctx<'_>, r: &RawService, protocol: Protocol) -> Option<UdpOptions> {
    if protocol != Protocol::Udp {
        let given = [
            ("affinity", r.affinity.as_ref().map(|v| v.span())),
            ("idle_timeout", r.idle_timeout.as_ref().map(|v| v.span())),
            ("responses", r.responses.as_ref().map(|v| v.span())),
            (
                "max_sessions_per_source",
                r.max_sessions_per_source.as_ref().map(|v| v.span()),
            ),
        ];
        for (field, span) in given {
            if let Some(span) = span {
                ctx.at(
                    span,
                    format!("{field} is read by protocol = \"udp\" services only"),
                    format!("drop {field}, or set protocol = \"udp\""),
                );
            }
        }
        return None;
    }
    let affinity = ctx.choice(
        "affinity",
        r.affinity.as_ref(),
        Affinity::Session,
        &[
            ("session", Affinity::Session),
            ("ip", Affinity::Ip),
            ("packet", Affinity::Packet),
        ],
    );
    let idle_timeout = ctx.duration(
        "idle_timeout",
        r.idle_timeout.as_ref(),
        Duration::from_secs(30),
    );
    if let Some(v) = &r.idle_timeout {
        if idle_timeout < Duration::from_millis(100) || idle_timeout > Duration::from_secs(86_400) {
            ctx.at(
                v.span(),
                format!("idle_timeout = \"{}\" is out of range", v.get_ref()),
                "give a duration from 100ms to 24h (30s when unset)",
            );
        }
    }
    if let Some(v) = r.responses.as_ref().filter(|v| *v.get_ref() > 1000) {
        ctx.at(
            v.span(),
            format!(
                "responses = {} is more answers per datagram than any protocol gives",
                v.get_ref()
            ),
            "use 0 for one-way traffic (syslog), 1 for request/answer (DNS), or drop it",
        );
    }
    let cap = r
        .max_connections
        .as_ref()
        .map_or(DEFAULT_GATEWAY_CONNECTIONS as u64, |v| *v.get_ref());
    let max_per_source = match &r.max_sessions_per_source {
        None => (cap / 10).max(1),
        Some(v) => {
            let n = *v.get_ref();
            if n == 0 || n > cap {
                ctx.at(
                    v.span(),
                    format!("max_sessions_per_source = {n} is out of range"),
                    format!("give 1 to max_connections ({cap}); unset, it is a tenth of max_connections"),
                );
            }
            n.clamp(1, cap.max(1))
        }
    };
    Some(UdpOptions {
        affinity,
        idle_timeout,
        responses: r.responses.as_ref().map(|v| *v.get_ref()),
        max_per_source,
    })
}

/// Text, or bytes written as hex (spaces allowed), for a UDP check's payloads.
fn payload(
    ctx: &mut Ctx<'_>,
    field: &str,
    text: Option<&S<String>>,
    hex: Option<&S<String>>,
) -> Vec<u8> {
    match (text, hex) {
        (Some(t), Some(h)) => {
            ctx.at(
                h.span(),
                format!("{field} and {field}_hex are both given"),
                format!("keep one: {field} for text, {field}_hex for bytes"),
            );
            t.get_ref().as_bytes().to_vec()
        }
        (Some(t), None) => t.get_ref().as_bytes().to_vec(),
        (None, Some(h)) => {
            let digits: Vec<u8> = h
                .get_ref()
                .bytes()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
            let bytes: Option<Vec<u8>> = digits
                .len()
                .is_multiple_of(2)
                .then(|| {
                    digits
                        .chunks(2)
                        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
                        .collect()
                })
                .flatten();
            bytes.unwrap_or_else(|| {
                ctx.at(
                    h.span(),
                    format!("{field}_hex is not hex bytes"),
                    "write pairs of hex digits, like \"0001 0000\"",
                );
                Vec::new()
            })
        }
        (None, None) => Vec::new(),
    }
}

pub(super) fn check(
    ctx: &mut Ctx<'_>,
    raw: Option<&S<RawCheck>>,
    protocol: Protocol,
    timing: &Timing,
    dns_ok: bool,
) -> Check {
    let default_interval = timing.probe_interval;
    let default_timeout = timing.probe_interval.min(Duration::from_secs(1));
    let Some(raw) = raw else {
        let kind = match protocol {
            Protocol::Http => CheckKind::Http {
                path: "/".into(),
                expect: 200,
            },
            Protocol::Tcp => CheckKind::Tcp,
            Protocol::Udp => CheckKind::Udp {
                send: Vec::new(),
                expect: Vec::new(),
            },
        };
        return Check {
            kind,
            interval: default_interval,
            timeout: default_timeout,
        };
    };
    let c = raw.get_ref();
    let kind = match c.kind.get_ref().as_str() {
        "http" => CheckKind::Http {
            path: c
                .path
                .as_ref()
                .map(|p| p.get_ref().clone())
                .unwrap_or_else(|| "/".into()),
            expect: c.expect.as_ref().map(|e| *e.get_ref()).unwrap_or(200),
        },
        "tcp" => CheckKind::Tcp,
        "udp" if !dns_ok => CheckKind::Udp {
            send: payload(ctx, "send", c.send.as_ref(), c.send_hex.as_ref()),
            expect: payload(ctx, "receive", c.receive.as_ref(), c.receive_hex.as_ref()),
        },
        "dns" if dns_ok => CheckKind::Dns {
            query: c
                .query
                .as_ref()
                .map(|q| q.get_ref().trim_end_matches('.').to_string())
                .unwrap_or_default(),
        },
        other => {
            ctx.at(
                c.kind.span(),
                format!("check kind \"{other}\" is not known here"),
                if dns_ok {
                    "use \"http\", \"tcp\" or \"dns\""
                } else {
                    "use \"http\", \"tcp\" or \"udp\""
                },
            );
            CheckKind::Tcp
        }
    };
    if !matches!(kind, CheckKind::Udp { .. }) {
        let given = [
            ("send", c.send.as_ref()),
            ("send_hex", c.send_hex.as_ref()),
            ("receive", c.receive.as_ref()),
            ("receive_hex", c.receive_hex.as_ref()),
        ];
        for (field, v) in given {
            if let Some(v) = v {
                ctx.at(
                    v.span(),
                    format!("{field} is read by kind = \"udp\" checks only"),
                    format!("drop {field}, or set kind = \"udp\""),
                );
            }
        }
    }
    match (&kind, &c.query) {
        (CheckKind::Dns { query }, _) if query.is_empty() || query.len() > 253 => {
            ctx.at(
                raw.span(),
                "a dns check needs a query name",
                "add query = \"example.com\" (the name the endpoint must answer for)",
            );
        }
        (CheckKind::Dns { .. }, _) | (_, None) => {}
        (_, Some(q)) => ctx.at(
            q.span(),
            "query is read by kind = \"dns\" checks only",
            "drop query, or set kind = \"dns\"",
        ),
    }
    if let Some(e) = c
        .expect
        .as_ref()
        .filter(|e| !(100..=599).contains(e.get_ref()))
    {
        ctx.at(
            e.span(),
            format!("expect = {} is not an HTTP status", e.get_ref()),
            "give the status a healthy backend answers, from 100 to 599 (usually 200)",
        );
    }
    if let (CheckKind::Http { path, .. }, Some(p)) = (&kind, &c.path) {
        if !path.starts_with('/') {
            ctx.at(
                p.span(),
                format!("check path \"{path}\" does not start with '/'"),
                "write it as \"/healthz\"",
            );
        }
    }
    let interval = ctx.duration("interval", c.interval.as_ref(), default_interval);
    let timeout = ctx.duration("timeout", c.timeout.as_ref(), default_timeout.min(interval));
    if timeout > interval {
        let span = c.timeout.as_ref().map(|t| t.span()).unwrap_or(raw.span());
        ctx.at(
            span,
            format!(
                "check timeout {} is longer than its interval {}",
                format_duration(timeout),
                format_duration(interval)
            ),
            "make the timeout at most the interval",
        );
    }
    Check {
        kind,
        interval,
        timeout,
    }
}

fn streams(
    ctx: &mut Ctx<'_>,
    raw: &[S<RawStream>],
    site_names: &HashMap<String, usize>,
    base: &Path,
) -> Vec<Stream> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, Range<usize>> = HashMap::new();
    for s in raw {
        let r = s.get_ref();
        let name = ctx.plain_name("stream", &r.name);
        ctx.unique(&mut seen, "stream", &name, r.name.span());
        let ack = ctx.choice(
            "ack",
            r.ack.as_ref(),
            Ack::Replicated,
            &[("local", Ack::Local), ("replicated", Ack::Replicated)],
        );
        let mut sinks = Vec::new();
        for sink in &r.sinks {
            let k = sink.get_ref();
            let url = k.url.get_ref();
            if !["s3://", "gs://", "az://", "file://"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                ctx.at(
                    k.url.span(),
                    format!("sink url \"{url}\" has no known scheme"),
                    "start it with s3://, gs://, az:// or file://",
                );
            }
            if let Some(site) = &k.site {
                if !site_names.contains_key(site.get_ref()) {
                    ctx.at(
                        site.span(),
                        format!("sink site \"{}\" is not a site", site.get_ref()),
                        format!("name one of the [[sites]]: {}", known(site_names)),
                    );
                }
            }
            // `file://relative/dir` is taken relative to the config file's folder.
            let url = match url.strip_prefix("file://") {
                Some(rest) if !rest.starts_with('/') => {
                    let p = resolve(base, rest);
                    format!("file://{}", std::path::absolute(&p).unwrap_or(p).display())
                }
                _ => url.clone(),
            };
            sinks.push(Sink {
                url,
                site: k.site.as_ref().map(|s| s.get_ref().clone()),
                options: k.options.clone(),
            });
        }
        if sinks.is_empty() {
            ctx.at(
                r.name.span(),
                format!("stream \"{name}\" has no sink"),
                "add at least one [[streams.sinks]] with a url (s3://, gs://, az:// or file://)",
            );
        }
        let mut positive = |field: &str, v: &Option<S<u64>>, default: u64| match v {
            Some(v) if *v.get_ref() == 0 => {
                ctx.at(
                    v.span(),
                    format!("{field} = 0 is not usable"),
                    "give a number above zero",
                );
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        };
        let max_spool_bytes = positive("max_spool_bytes", &r.max_spool_bytes, 1 << 30);
        let max_body_bytes = positive("max_body_bytes", &r.max_body_bytes, 8 << 20);
        let max_event_bytes = positive("max_event_bytes", &r.max_event_bytes, 1 << 20);
        let min_free_bytes = r.min_free_bytes.as_ref().map_or(64 << 20, |v| *v.get_ref());
        let batch_events = positive("batch_events", &r.batch_events, 10_000);
        let replay_rate = positive("replay_rate", &r.replay_rate, 200_000);
        let batch_age = ctx.duration("batch_age", r.batch_age.as_ref(), Duration::from_secs(1));
        let dedup_window = ctx.duration(
            "dedup_window",
            r.dedup_window.as_ref(),
            Duration::from_secs(600),
        );
        if let Some(v) = r
            .max_event_bytes
            .as_ref()
            .filter(|v| *v.get_ref() > MAX_EVENT_BYTES)
        {
            ctx.at(
                v.span(),
                format!(
                    "max_event_bytes = {} is over the {MAX_EVENT_BYTES}-byte ceiling \
                     (an event must fit in one replication frame)",
                    v.get_ref()
                ),
                format!("use {MAX_EVENT_BYTES} or less"),
            );
        }
        out.push(Stream {
            name,
            ack,
            sinks,
            max_spool_bytes,
            max_body_bytes,
            max_event_bytes: max_event_bytes.min(MAX_EVENT_BYTES),
            min_free_bytes,
            batch_events,
            batch_age,
            replay_rate,
            dedup_window,
        });
    }
    out
}

fn alerts(ctx: &mut Ctx<'_>, raw: &[S<RawAlert>], base: &Path) -> Vec<Alert> {
    let mut out = Vec::new();
    for a in raw {
        let r = a.get_ref();
        stray_alert_fields(ctx, r);
        match r.kind.get_ref().as_str() {
            "webhook" => match &r.url {
                Some(u)
                    if u.get_ref().starts_with("http://")
                        || u.get_ref().starts_with("https://") =>
                {
                    out.push(Alert::Webhook {
                        url: u.get_ref().clone(),
                    })
                }
                Some(u) => ctx.at(
                    u.span(),
                    format!("webhook url \"{}\" is not http(s)", u.get_ref()),
                    "write it as \"https://hooks.example/outlast\"",
                ),
                None => ctx.at(
                    a.span(),
                    "a webhook alert needs a url",
                    "add url = \"https://...\"",
                ),
            },
            "smtp" => {
                let server = r.server.as_ref().map(|s| s.get_ref().clone());
                let from = r.from.as_ref().map(|s| s.get_ref().clone());
                match (server, from) {
                    (Some(server), Some(from)) if !r.to.is_empty() => {
                        if let Some(s) = &r.server {
                            if !server.contains(':') {
                                ctx.at(s.span(), format!("smtp server \"{server}\" has no port"), "write it as \"mail.example:25\"");
                            }
                        }
                        out.push(Alert::Smtp {
                            server,
                            from,
                            to: r.to.iter().map(|t| t.get_ref().clone()).collect(),
                        })
                    }
                    _ => ctx.at(
                        a.span(),
                        "an smtp alert needs server, from and to",
                        "add server = \"host:25\", from = \"outlast@...\" and to = [\"oncall@...\"]",
                    ),
                }
            }
            "command" => {
                if r.command.is_empty() {
                    ctx.at(
                        a.span(),
                        "a command alert needs a command",
                        "add command = [\"/usr/local/bin/page\", \"--team\", \"ops\"]",
                    );
                } else {
                    out.push(Alert::Command {
                        argv: r.command.iter().map(|c| c.get_ref().clone()).collect(),
                    });
                }
            }
            "slack" => {
                if let Some(url) = http_url(ctx, a, r, "slack", "https://hooks.slack.com/services/T000/B000/XXXX") {
                    out.push(Alert::Slack { url });
                }
            }
            "pagerduty" => {
                let url = match &r.url {
                    None => Some("https://events.pagerduty.com/v2/enqueue".to_string()),
                    Some(_) => http_url(ctx, a, r, "pagerduty", "https://events.pagerduty.com/v2/enqueue"),
                };
                let key = secret(ctx, a, base, r.routing_key.as_ref(), r.routing_key_file.as_ref(), "pagerduty", "routing_key");
                if let (Some(url), Some(routing_key)) = (url, key) {
                    out.push(Alert::PagerDuty { url, routing_key });
                }
            }
            "twilio" => {
                let url = match &r.url {
                    None => Some("https://api.twilio.com".to_string()),
                    Some(_) => http_url(ctx, a, r, "twilio", "https://api.twilio.com"),
                };
                let token = secret(ctx, a, base, None, r.auth_token_file.as_ref(), "twilio", "auth_token");
                let sid = r.account_sid.as_ref().map(|s| s.get_ref().trim().to_string()).filter(|s| !s.is_empty());
                let from = r.from.as_ref().map(|s| s.get_ref().trim().to_string()).filter(|s| !s.is_empty());
                if sid.is_none() || from.is_none() || r.to.is_empty() {
                    ctx.at(
                        a.span(),
                        "a twilio alert needs account_sid, from and to",
                        "add account_sid = \"AC...\", from = \"+15005550006\" and to = [\"+15551234567\"]",
                    );
                }
                if let (Some(url), Some(auth_token), Some(account_sid), Some(from)) = (url, token, sid, from) {
                    if !r.to.is_empty() {
                        out.push(Alert::Twilio {
                            url,
                            account_sid,
                            auth_token,
                            from,
                            to: r.to.iter().map(|t| t.get_ref().clone()).collect(),
                        });
                    }
                }
            }
            "heartbeat" => {
                let every = ctx.duration("every", r.every.as_ref(), Duration::from_secs(60));
                if every < Duration::from_secs(1) {
                    if let Some(e) = &r.every {
                        ctx.at(e.span(), format!("every = \"{}\" is shorter than a second", e.get_ref()), "give \"1m\" or so (the watcher's grace period is longer)");
                    }
                }
                if let Some(url) = http_url(ctx, a, r, "heartbeat", "https://hc-ping.com/YOUR-UUID") {
                    out.push(Alert::Heartbeat { url, every });
                }
            }
            other => ctx.at(
                r.kind.span(),
                format!("alert kind \"{other}\" is not known"),
                "use \"webhook\", \"smtp\", \"command\", \"slack\", \"pagerduty\", \"twilio\" or \"heartbeat\"",
            ),
        }
    }
    out
}

/// A field that the alert's kind does not read is an error, not silently ignored.
fn stray_alert_fields(ctx: &mut Ctx<'_>, r: &RawAlert) {
    let kind = r.kind.get_ref().as_str();
    type Field<'a> = (&'a str, Option<Range<usize>>, &'a [&'a str]);
    let fields: [Field<'_>; 8] = [
        (
            "url",
            r.url.as_ref().map(|x| x.span()),
            &["webhook", "slack", "pagerduty", "twilio", "heartbeat"],
        ),
        ("server", r.server.as_ref().map(|x| x.span()), &["smtp"]),
        (
            "from",
            r.from.as_ref().map(|x| x.span()),
            &["smtp", "twilio"],
        ),
        (
            "routing_key",
            r.routing_key.as_ref().map(|x| x.span()),
            &["pagerduty"],
        ),
        (
            "routing_key_file",
            r.routing_key_file.as_ref().map(|x| x.span()),
            &["pagerduty"],
        ),
        (
            "account_sid",
            r.account_sid.as_ref().map(|x| x.span()),
            &["twilio"],
        ),
        (
            "auth_token_file",
            r.auth_token_file.as_ref().map(|x| x.span()),
            &["twilio"],
        ),
        ("every", r.every.as_ref().map(|x| x.span()), &["heartbeat"]),
    ];
    for (field, span, kinds) in fields {
        if let Some(span) = span {
            if !kinds.contains(&kind) {
                ctx.at(
                    span,
                    format!("{field} is not read by a {kind} alert"),
                    format!("drop it (it is for kind = {})", kinds.join(" or ")),
                );
            }
        }
    }
}

/// The alert's `url`, which must be http(s).
fn http_url(
    ctx: &mut Ctx<'_>,
    a: &S<RawAlert>,
    r: &RawAlert,
    kind: &str,
    example: &str,
) -> Option<String> {
    match &r.url {
        Some(u) if u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://") => {
            Some(u.get_ref().clone())
        }
        Some(u) => {
            ctx.at(
                u.span(),
                format!("{kind} url \"{}\" is not http(s)", u.get_ref()),
                format!("write it as \"{example}\""),
            );
            None
        }
        None => {
            ctx.at(
                a.span(),
                format!("a {kind} alert needs a url"),
                format!("add url = \"{example}\""),
            );
            None
        }
    }
}

/// A secret given inline (`inline`) or in a file (`file`, relative to the config).
fn secret(
    ctx: &mut Ctx<'_>,
    a: &S<RawAlert>,
    base: &Path,
    inline: Option<&S<String>>,
    file: Option<&S<String>>,
    kind: &str,
    field: &str,
) -> Option<String> {
    if let Some(v) = inline.filter(|v| !v.get_ref().trim().is_empty()) {
        return Some(v.get_ref().trim().to_string());
    }
    let Some(f) = file else {
        ctx.at(a.span(), format!("a {kind} alert needs its {field}"), format!("add {field}_file = \"{field}.txt\" (a file holding it, readable by the agent only)"));
        return None;
    };
    match read_secret(&resolve(base, f.get_ref())) {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        Ok(_) => {
            ctx.at(
                f.span(),
                format!("the {field}_file is empty"),
                format!("write the {field} in it"),
            );
            None
        }
        Err(e) => {
            ctx.at(
                f.span(),
                format!("cannot read {field}_file: {e}"),
                "create the file or fix the path",
            );
            None
        }
    }
}

fn api(ctx: &mut Ctx<'_>, raw: Option<&S<RawApi>>, base: &Path) -> Api {
    let Some(raw) = raw else {
        return Api::default();
    };
    let r = raw.get_ref();
    let max_connections = ctx.connections(r.max_connections.as_ref(), DEFAULT_API_CONNECTIONS);
    let token = match (&r.token, &r.token_file) {
        (Some(t), None) => Some(t.get_ref().trim().to_string()),
        (None, Some(f)) => match read_secret(&resolve(base, f.get_ref())) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                ctx.at(
                    f.span(),
                    format!("cannot read token_file: {e}"),
                    "create the file or fix the path",
                );
                None
            }
        },
        (Some(_), Some(f)) => {
            ctx.at(
                f.span(),
                "both token and token_file are set",
                "keep one of them",
            );
            None
        }
        (None, None) => None,
    };
    let read_token = match (&r.read_token, &r.read_token_file) {
        (Some(_), Some(f)) => {
            ctx.at(
                f.span(),
                "both read_token and read_token_file are set",
                "keep one of them",
            );
            None
        }
        (inline, file) => inline_or_file(ctx, base, inline.as_ref(), file.as_ref(), "read_token"),
    };
    let tls = super::tls::api_tls(ctx, raw, base);
    let ingest_needs_token = ctx.choice(
        "ingest",
        r.ingest.as_ref(),
        false,
        &[("open", false), ("token", true)],
    );
    if let (true, None, Some(i)) = (ingest_needs_token, &token, &r.ingest) {
        ctx.at(
            i.span(),
            "ingest = \"token\" but [api] has no token",
            "add token_file = \"api.token\" (or token = \"...\") to [api]",
        );
    }
    Api {
        token,
        read_token,
        max_connections,
        ingest_needs_token,
        tls,
    }
}

/// An optional secret given inline or in a file (relative to the config); an empty one is
/// an error (it would let anyone in).
fn inline_or_file(
    ctx: &mut Ctx<'_>,
    base: &Path,
    inline: Option<&S<String>>,
    file: Option<&S<String>>,
    field: &str,
) -> Option<String> {
    let (value, span) = match (inline, file) {
        (Some(v), _) => (Ok(v.get_ref().clone()), v.span()),
        (None, Some(f)) => (read_secret(&resolve(base, f.get_ref())), f.span()),
        (None, None) => return None,
    };
    match value {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        Ok(_) => {
            ctx.at(
                span,
                format!("{field} is empty"),
                "write a long random token (or remove it)",
            );
            None
        }
        Err(e) => {
            ctx.at(
                span,
                format!("cannot read {field}_file: {e}"),
                "create the file or fix the path",
            );
            None
        }
    }
}

fn clashes(
    ctx: &mut Ctx<'_>,
    raw: &RawConfig,
    sites: &[Site],
    dns: Option<&Dns>,
    services: &[Service],
    datasets: &[Dataset],
    dependencies: &[Dependency],
) {
    let mut used: HashMap<SocketAddr, String> = HashMap::new();
    let mut claim = |ctx: &mut Ctx<'_>, addr: SocketAddr, who: String, span: Range<usize>| {
        if let Some(first) = used.get(&addr) {
            ctx.at(
                span,
                format!("{addr} is used twice: by {first} and by {who}"),
                "give each listener its own port or its site its own address",
            );
        } else {
            used.insert(addr, who);
        }
    };
    for (site, raw_site) in sites.iter().zip(&raw.sites) {
        let r = raw_site.get_ref();
        claim(
            ctx,
            site.peer_addr(),
            format!("site {}'s peer_port", site.name),
            r.peer_port.span(),
        );
        claim(
            ctx,
            site.api_addr(),
            format!("site {}'s api_port", site.name),
            r.api_port.span(),
        );
        if let (Some(d), Some(rd)) = (dns, &raw.dns) {
            claim(
                ctx,
                SocketAddr::new(site.address, d.port),
                format!("site {}'s DNS", site.name),
                rd.get_ref().port.span(),
            );
        }
        if site.witness {
            continue;
        }
        for (svc, raw_svc) in services.iter().zip(&raw.services) {
            claim(
                ctx,
                SocketAddr::new(site.address, svc.port),
                format!("service {}'s gateway on site {}", svc.name, site.name),
                raw_svc.get_ref().port.span(),
            );
        }
        for (d, raw_d) in dependencies.iter().zip(&raw.dependencies) {
            if let (Some(port), Some(span)) = (d.egress_port, raw_d.get_ref().egress_port.as_ref())
            {
                claim(
                    ctx,
                    SocketAddr::new(site.address, port),
                    format!("dependency {}'s egress on site {}", d.name, site.name),
                    span.span(),
                );
            }
        }
    }
    for (svc, raw_svc) in services.iter().zip(&raw.services) {
        for (site, list) in &raw_svc.get_ref().backends {
            for b in list.get_ref() {
                if let Ok(addr) = b.get_ref().parse::<SocketAddr>() {
                    if let Some(owner) = used.get(&addr) {
                        ctx.at(
                            b.span(),
                            format!(
                                "backend {addr} of service {} at site {} is outlast's own listener ({owner})",
                                svc.name,
                                site.get_ref()
                            ),
                            "point the backend at the application, not at outlast",
                        );
                    }
                }
            }
        }
    }
    // A dataset's servers listen on their sites' addresses (after the backend check: a
    // dataset service's backends are these servers).
    for (d, rd) in datasets.iter().zip(&raw.datasets) {
        for site in d.members.keys() {
            if let Some(s) = sites.iter().find(|s| s.name == *site) {
                let addr = SocketAddr::new(s.address, d.port);
                let who = format!("dataset {}'s server on site {site}", d.name);
                if let Some(first) = used.get(&addr) {
                    ctx.at(
                        rd.get_ref().port.span(),
                        format!("{addr} is used twice: by {first} and by {who}"),
                        "give each listener its own port or its site its own address",
                    );
                } else {
                    used.insert(addr, who);
                }
            }
        }
    }
}

pub(super) fn known(site_names: &HashMap<String, usize>) -> String {
    let mut v: Vec<(&usize, &String)> = site_names.iter().map(|(n, i)| (i, n)).collect();
    v.sort();
    v.into_iter()
        .map(|(_, n)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn dns_push(ctx: &mut Ctx<'_>, raw: &S<RawPush>, zone: &str, base: &Path) -> Option<DnsPush> {
    use base64::Engine;
    let p = raw.get_ref();
    let server = match p.server.get_ref().parse::<SocketAddr>() {
        Ok(s) => Some(s),
        Err(_) => {
            ctx.at(
                p.server.span(),
                format!(
                    "push server \"{}\" is not an address:port",
                    p.server.get_ref()
                ),
                "write it as \"192.0.2.53:53\"",
            );
            None
        }
    };
    if let Some(a) = &p.algorithm {
        if a.get_ref() != "hmac-sha256" {
            ctx.at(
                a.span(),
                format!("TSIG algorithm \"{}\" is not supported", a.get_ref()),
                "use \"hmac-sha256\"",
            );
        }
    }
    let (text, span) = match (&p.key_secret, &p.key_file) {
        (Some(s), None) => (Some(s.get_ref().clone()), s.span()),
        (None, Some(f)) => match read_secret(&resolve(base, f.get_ref())) {
            Ok(t) => (Some(t.trim().to_string()), f.span()),
            Err(e) => {
                ctx.at(
                    f.span(),
                    format!("cannot read key_file: {e}"),
                    "create the file (relative paths start at the config's folder)",
                );
                (None, f.span())
            }
        },
        _ => {
            ctx.at(
                raw.span(),
                "a [[dns.push]] needs key_secret or key_file (one of them)",
                "add key_secret = \"<base64, as in BIND's key statement>\"",
            );
            (None, raw.span())
        }
    };
    let secret =
        text.and_then(
            |t| match base64::engine::general_purpose::STANDARD.decode(t.trim()) {
                Ok(s) if !s.is_empty() => Some(s),
                _ => {
                    ctx.at(
                        span,
                        "the TSIG secret is not base64",
                        "copy the secret from BIND's key statement (tsig-keygen prints one)",
                    );
                    None
                }
            },
        );
    let mut zone = p
        .zone
        .as_ref()
        .map(|z| z.get_ref().clone())
        .unwrap_or_else(|| zone.to_string());
    if !zone.ends_with('.') {
        zone.push('.');
    }
    let mut key_name = p.key_name.get_ref().clone();
    if !key_name.ends_with('.') {
        key_name.push('.');
    }
    Some(DnsPush {
        server: server?,
        zone,
        key_name,
        key_secret: secret?,
    })
}
