//! `[[datasets]]`: checked, with every default filled in, and tied to the one service that
//! names each dataset.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use super::raw::*;
use super::validate::{known, read_secret, resolve, Ctx};
use super::*;

/// The default `max_lag` (async): 16 MiB.
const DEFAULT_MAX_LAG: u64 = 16 << 20;

/// Reads "16MB", "512kB", "1GB" or a number of bytes.
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "it does not start with a whole number".to_string())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        other => return Err(format!("\"{other}\" is not a unit of size")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "it is too large".to_string())
}

/// The datasets, before their services are known (`service` is filled by [`link`]).
pub(super) fn datasets(
    ctx: &mut Ctx<'_>,
    raw: &[S<RawDataset>],
    sites: &[Site],
    site_names: &HashMap<String, usize>,
    base: &Path,
) -> Vec<Dataset> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, Range<usize>> = HashMap::new();
    for d in raw {
        let r = d.get_ref();
        let name = ctx.plain_name("dataset", &r.name);
        ctx.unique(&mut seen, "dataset", &name, r.name.span());
        let kind = ctx.choice(
            "kind",
            r.kind.as_ref(),
            DatasetKind::Postgres,
            &[
                ("postgres", DatasetKind::Postgres),
                ("redis", DatasetKind::Redis),
            ],
        );
        // Each kind's options, and none of the other's.
        let (wrong, section) = match kind {
            DatasetKind::Postgres => (r.redis.as_ref().map(|x| x.span()), "redis"),
            DatasetKind::Redis => (r.postgres.as_ref().map(|x| x.span()), "postgres"),
        };
        if let Some(span) = wrong {
            ctx.at(
                span,
                format!("dataset \"{name}\" is not kind = \"{section}\", so [datasets.{section}] does not apply"),
                format!("drop [datasets.{section}], or set kind = \"{section}\""),
            );
        }
        let failback = ctx.choice(
            "failback",
            r.failback.as_ref(),
            Failback::Auto,
            &[("auto", Failback::Auto), ("manual", Failback::Manual)],
        );
        let replication = ctx.choice(
            "replication",
            r.replication.as_ref(),
            Replication::Sync,
            &[("sync", Replication::Sync), ("async", Replication::Async)],
        );
        let standby_lost = ctx.choice(
            "standby_lost",
            r.standby_lost.as_ref(),
            StandbyLost::Degrade,
            &[
                ("degrade", StandbyLost::Degrade),
                ("block", StandbyLost::Block),
            ],
        );
        let max_lag_bytes = match &r.max_lag {
            None => DEFAULT_MAX_LAG,
            Some(v) => match parse_size(v.get_ref()) {
                Ok(n) => n,
                Err(why) => {
                    ctx.at(
                        v.span(),
                        format!("max_lag = \"{}\" is not a size ({why})", v.get_ref()),
                        "write it like \"16MB\", \"512kB\" or \"1GB\"",
                    );
                    DEFAULT_MAX_LAG
                }
            },
        };
        ctx.port("port", &r.port);
        let mut members = BTreeMap::new();
        let mut dirs_seen: HashMap<PathBuf, String> = HashMap::new();
        for (site, m) in &r.members {
            let site_name = site.get_ref().clone();
            match site_names.get(&site_name) {
                None => ctx.at(
                    site.span(),
                    format!("dataset \"{name}\" has a member at unknown site \"{site_name}\""),
                    format!("name one of the [[sites]]: {}", known(site_names)),
                ),
                Some(&i) if sites[i].witness => ctx.at(
                    site.span(),
                    format!("site \"{site_name}\" is a witness and holds no data"),
                    "make the member a data site, or set witness = false",
                ),
                Some(_) => {}
            }
            let dir = resolve(base, m.get_ref().data_dir.get_ref());
            if let Some(other) = dirs_seen.insert(dir.clone(), site_name.clone()) {
                ctx.at(
                    m.get_ref().data_dir.span(),
                    format!(
                        "members {other} and {site_name} share the data dir {}",
                        dir.display()
                    ),
                    "give each member a data dir of its own",
                );
            }
            members.insert(site_name, dir);
        }
        if members.is_empty() {
            ctx.at(
                r.name.span(),
                format!("dataset \"{name}\" has no members"),
                "add [datasets.members] with site = { data_dir = \"...\" } for each data site that holds a copy",
            );
        } else if members.len() == 1 && replication == Replication::Sync {
            ctx.at(
                r.name.span(),
                format!("dataset \"{name}\" has one member, so no commit can be in two sites"),
                "add a member at another data site, or set replication = \"async\"",
            );
        }
        let primary = match &r.primary {
            Some(p) if !members.contains_key(p.get_ref()) => {
                ctx.at(
                    p.span(),
                    format!(
                        "primary \"{}\" is not a member of dataset \"{name}\"",
                        p.get_ref()
                    ),
                    format!(
                        "name one of its members: {}",
                        members.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
                p.get_ref().clone()
            }
            Some(p) => p.get_ref().clone(),
            // The first member in the order of [[sites]].
            None => sites
                .iter()
                .map(|s| s.name.clone())
                .find(|n| members.contains_key(n))
                .unwrap_or_default(),
        };
        let (postgres, redis) = match kind {
            DatasetKind::Postgres => (postgres(ctx, r, &name, base), RedisOptions::default()),
            DatasetKind::Redis => (PostgresOptions::default(), redis(ctx, r, &name, base)),
        };
        out.push(Dataset {
            name,
            kind,
            primary,
            failback,
            replication,
            standby_lost,
            max_lag_bytes,
            port: *r.port.get_ref(),
            members,
            postgres,
            redis,
            service: String::new(),
        });
    }
    out
}

/// The application's password of a dataset, from `password` or `password_file` under
/// `[datasets.<section>]` (exactly one of them, at least 8 characters).
fn password(
    ctx: &mut Ctx<'_>,
    r: &RawDataset,
    name: &str,
    base: &Path,
    section: &str,
    inline: Option<&S<String>>,
    file: Option<&S<String>>,
) -> String {
    let password = match (inline, file) {
        (Some(pw), None) => pw.get_ref().clone(),
        (None, Some(f)) => match read_secret(&resolve(base, f.get_ref())) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                ctx.at(
                    f.span(),
                    format!("cannot read password_file: {e}"),
                    "create the file or fix the path",
                );
                String::new()
            }
        },
        (Some(_), Some(f)) => {
            ctx.at(
                f.span(),
                "both password and password_file are set",
                "keep one of them",
            );
            String::new()
        }
        (None, None) => {
            ctx.at(
                r.name.span(),
                format!("dataset \"{name}\" has no password for its application role"),
                format!("add password_file = \"app.pass\" (or password = \"...\") under [datasets.{section}]"),
            );
            String::new()
        }
    };
    if let (Some(pw), true) = (inline, password.len() < 8) {
        ctx.at(
            pw.span(),
            "the password is shorter than 8 characters",
            "use a longer password (a password_file keeps it out of the config)",
        );
    }
    password
}

fn redis(ctx: &mut Ctx<'_>, r: &RawDataset, name: &str, base: &Path) -> RedisOptions {
    let x = r.redis.as_ref().map(|x| x.get_ref());
    let password = password(
        ctx,
        r,
        name,
        base,
        "redis",
        x.and_then(|x| x.password.as_ref()),
        x.and_then(|x| x.password_file.as_ref()),
    );
    let mut settings = BTreeMap::new();
    for (k, v) in x.map(|x| &x.settings).into_iter().flatten() {
        let key = k.get_ref().to_ascii_lowercase();
        if OWNED_REDIS_SETTINGS.contains(&key.as_str()) {
            ctx.at(
                k.span(),
                format!("directive {key} is outlast's to set"),
                "drop it: outlast sets it for each member's role and address",
            );
        } else if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            ctx.at(
                k.span(),
                format!("\"{key}\" is not a redis.conf directive"),
                "write it like maxmemory",
            );
        } else if v.get_ref().contains(['\n', '\r']) {
            ctx.at(v.span(), "the value spans lines", "write it on one line");
        } else {
            settings.insert(key, v.get_ref().clone());
        }
    }
    RedisOptions {
        server_bin: x
            .and_then(|x| x.server_bin.as_ref())
            .map(|b| resolve(base, b.get_ref())),
        os_user: x
            .and_then(|x| x.os_user.as_ref())
            .map(|u| u.get_ref().clone())
            .unwrap_or_else(|| "redis".into()),
        password,
        settings,
    }
}

fn postgres(ctx: &mut Ctx<'_>, r: &RawDataset, name: &str, base: &Path) -> PostgresOptions {
    let p = r.postgres.as_ref().map(|p| p.get_ref());
    let text = |v: Option<&S<String>>, default: &str| {
        v.map(|v| v.get_ref().clone())
            .unwrap_or_else(|| default.to_string())
    };
    let password = password(
        ctx,
        r,
        name,
        base,
        "postgres",
        p.and_then(|p| p.password.as_ref()),
        p.and_then(|p| p.password_file.as_ref()),
    );
    let mut allow = Vec::new();
    if let Some(list) = p.and_then(|p| p.allow.as_ref()) {
        for a in list.get_ref() {
            let v = a.get_ref();
            let (addr, bits) = v.split_once('/').unwrap_or((v.as_str(), ""));
            let ok_addr = addr.parse::<IpAddr>().is_ok();
            let ok_bits = bits.is_empty() || bits.parse::<u8>().is_ok_and(|b| b <= 128);
            if ok_addr && ok_bits {
                allow.push(v.clone());
            } else {
                ctx.at(
                    a.span(),
                    format!("allow entry \"{v}\" is not an address or a network"),
                    "write it as \"10.0.0.5\" or \"10.0.0.0/8\"",
                );
            }
        }
    }
    let mut settings = BTreeMap::new();
    for (k, v) in p.map(|p| &p.settings).into_iter().flatten() {
        let key = k.get_ref();
        let owned = [
            "listen_addresses",
            "port",
            "unix_socket_directories",
            "primary_conninfo",
            "primary_slot_name",
            "synchronous_standby_names",
            "wal_level",
            "hot_standby",
        ];
        if owned.contains(&key.as_str()) {
            ctx.at(
                k.span(),
                format!("setting {key} is outlast's to set"),
                "drop it: outlast sets it for each member's role and address",
            );
        } else if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            ctx.at(
                k.span(),
                format!("\"{key}\" is not a setting name"),
                "write it like shared_buffers",
            );
        } else {
            settings.insert(key.clone(), v.get_ref().clone());
        }
    }
    PostgresOptions {
        bin_dir: p
            .and_then(|p| p.bin_dir.as_ref())
            .map(|b| resolve(base, b.get_ref())),
        os_user: text(p.and_then(|p| p.os_user.as_ref()), "postgres"),
        database: text(p.and_then(|p| p.database.as_ref()), "app"),
        user: text(p.and_then(|p| p.user.as_ref()), "app"),
        password,
        allow,
        settings,
    }
}

/// Ties each dataset to the one service that names it; each such service must be a TCP
/// primary-standby service whose primary is the dataset's.
pub(super) fn link(
    ctx: &mut Ctx<'_>,
    raw: &[S<RawService>],
    services: &[Service],
    datasets: &mut [Dataset],
    raw_datasets: &[S<RawDataset>],
) {
    for (svc, rs) in services.iter().zip(raw) {
        let Some(dname) = &rs.get_ref().dataset else {
            continue;
        };
        let Some(d) = datasets.iter_mut().find(|d| d.name == *dname.get_ref()) else {
            let names: Vec<String> = datasets.iter().map(|d| format!("\"{}\"", d.name)).collect();
            ctx.at(
                dname.span(),
                format!(
                    "service \"{}\" names dataset \"{}\", which is not defined",
                    svc.name,
                    dname.get_ref()
                ),
                if names.is_empty() {
                    "add a [[datasets]] with that name".to_string()
                } else {
                    format!("name one of {}", names.join(", "))
                },
            );
            continue;
        };
        if !d.service.is_empty() {
            ctx.at(
                dname.span(),
                format!(
                    "dataset \"{}\" is named by services \"{}\" and \"{}\"",
                    d.name, d.service, svc.name
                ),
                "let one service lead clients to a dataset",
            );
            continue;
        }
        d.service = svc.name.clone();
    }
    for (d, rd) in datasets.iter().zip(raw_datasets) {
        if d.service.is_empty() {
            ctx.at(
                rd.get_ref().name.span(),
                format!("no service leads clients to dataset \"{}\"", d.name),
                format!(
                    "add a [[services]] with protocol = \"tcp\", mode = \"primary-standby\", dataset = \"{}\" and a port for its gateways",
                    d.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"[cluster]
name = "shop"
secret = "0123456789abcdef"
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
"#;

    const DATASET: &str = r#"
[[datasets]]
name = "orders"
port = 5432
[datasets.members]
east = { data_dir = "data/east/pg" }
west = { data_dir = "data/west/pg" }
[datasets.postgres]
password = "app-password"

[[services]]
name = "db"
dataset = "orders"
port = 15432
"#;

    fn parse(extra: &str) -> Result<Config, Vec<String>> {
        Config::parse(
            Path::new("/etc/outlast/outlast.toml"),
            &format!("{BASE}{extra}"),
        )
        .map_err(|e| e.problems().iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn a_dataset_takes_its_defaults_and_its_service_follows_it() {
        let c = parse(DATASET).expect("valid");
        let d = &c.datasets[0];
        assert_eq!(d.kind, DatasetKind::Postgres);
        assert_eq!(d.primary, "east", "the first member in site order");
        assert_eq!(d.replication, Replication::Sync);
        assert_eq!(d.standby_lost, StandbyLost::Degrade);
        assert_eq!(d.max_lag_bytes, 16 << 20);
        assert_eq!(d.service, "db");
        assert_eq!(
            d.members["east"],
            PathBuf::from("/etc/outlast/data/east/pg")
        );
        assert_eq!(d.postgres.os_user, "postgres");
        assert_eq!(
            (d.postgres.database.as_str(), d.postgres.user.as_str()),
            ("app", "app")
        );
        let s = &c.services[0];
        assert_eq!(s.mode, Mode::PrimaryStandby);
        assert_eq!(s.protocol, Protocol::Tcp);
        assert!(matches!(s.check.kind, CheckKind::Tcp));
        assert_eq!(s.primary.as_deref(), Some("east"));
        assert_eq!(s.dataset.as_deref(), Some("orders"));
        assert_eq!(
            s.backends["west"],
            vec!["127.0.0.12:5432".parse::<SocketAddr>().expect("addr")]
        );
    }

    #[test]
    fn every_dataset_mistake_is_named_at_once() {
        let bad = r#"
[[datasets]]
name = "orders"
kind = "redis"
primary = "north"
replication = "sync"
max_lag = "lots"
port = 5432
[datasets.members]
witness = { data_dir = "w" }
[datasets.postgres]
settings = { port = "6000" }

[[datasets]]
name = "carts"
port = 6379
[datasets.members]
east = { data_dir = "c" }
[datasets.postgres]
password = "0123456789"
settings = { port = "6000" }

[[services]]
name = "db"
dataset = "orders"
mode = "active-active"
port = 15432
"#;
        let problems = parse(bad).expect_err("invalid").join("\n");
        for want in [
            "is not kind = \"postgres\", so [datasets.postgres] does not apply",
            "primary \"north\" is not a member",
            "max_lag = \"lots\" is not a size",
            "site \"witness\" is a witness and holds no data",
            "setting port is outlast's to set",
            "has no password",
            "dataset \"carts\" has one member",
            "no service leads clients to dataset \"carts\"",
            "cannot be active-active",
        ] {
            assert!(problems.contains(want), "missing {want:?} in:\n{problems}");
        }
    }

    #[test]
    fn a_service_cannot_name_a_dataset_that_is_not_there_or_move_its_primary() {
        let problems = parse(&format!(
            "{DATASET}\n[[services]]\nname = \"db2\"\ndataset = \"ordres\"\nport = 15433\nprimary = \"west\"\n"
        ))
        .expect_err("invalid")
        .join("\n");
        assert!(
            problems.contains("names dataset \"ordres\", which is not defined"),
            "{problems}"
        );
        assert!(problems.contains("name one of \"orders\""), "{problems}");
    }

    #[test]
    fn a_dataset_server_port_cannot_clash_with_a_listener() {
        let clash = DATASET.replace("port = 5432", "port = 7401");
        let problems = parse(&clash).expect_err("invalid").join("\n");
        assert!(
            problems.contains("dataset orders's server on site east"),
            "{problems}"
        );
    }

    #[test]
    fn a_redis_dataset_takes_its_own_options_and_refuses_outlasts_directives() {
        let redis = r#"
[[datasets]]
name = "sessions"
kind = "redis"
port = 6379
replication = "async"
[datasets.members]
east = { data_dir = "data/east/redis" }
west = { data_dir = "data/west/redis" }
[datasets.redis]
password = "session-pass"
settings = { maxmemory = "100mb", "maxmemory-policy" = "allkeys-lru" }

[[services]]
name = "sessions"
dataset = "sessions"
port = 16379
"#;
        let c = parse(redis).expect("valid");
        let d = &c.datasets[0];
        assert_eq!(d.kind, DatasetKind::Redis);
        assert_eq!(d.redis.os_user, "redis");
        assert_eq!(d.redis.password, "session-pass");
        assert_eq!(d.redis.settings["maxmemory-policy"], "allkeys-lru");
        let bad = redis
            .replace("maxmemory = \"100mb\"", "replicaof = \"10.0.0.1 6379\"")
            .replace("password = \"session-pass\"", "")
            .replace(
                "[[services]]",
                "[datasets.postgres]\npassword = \"0123456789\"\n\n[[services]]",
            );
        let problems = parse(&bad).expect_err("invalid").join("\n");
        for want in [
            "directive replicaof is outlast's to set",
            "has no password for its application role",
            "add password_file = \"app.pass\" (or password = \"...\") under [datasets.redis]",
            "dataset \"sessions\" is not kind = \"postgres\", so [datasets.postgres] does not apply",
        ] {
            assert!(problems.contains(want), "missing {want:?} in:\n{problems}");
        }
    }

    #[test]
    fn sizes_read_with_or_without_a_unit() {
        assert_eq!(parse_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_size("512kB"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1 GB"), Ok(1 << 30));
        assert!(parse_size("MB").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert!(parse_size("99999999999999TB").is_err());
    }
}
