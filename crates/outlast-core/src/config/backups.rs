//! `[[backups]]`: checked, with every default filled in.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::*;
use super::validate::{known, read_secret, resolve, Ctx};
use super::*;

/// The repository url schemes a backup may use.
pub const REPO_SCHEMES: &[&str] = &["file://", "s3://", "gs://", "az://", "rest:"];

/// The shortest `every` and `verify_every`: a snapshot takes at least a scan of its source.
const MIN_EVERY: Duration = Duration::from_secs(1);

pub(super) fn backups(
    ctx: &mut Ctx<'_>,
    raw: &[S<RawBackup>],
    datasets: &[Dataset],
    site_names: &HashMap<String, usize>,
    base: &Path,
) -> Vec<Backup> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, Range<usize>> = HashMap::new();
    // Which backup archives each dataset's WAL (one may: the spool is the dataset's).
    let mut wal_of: HashMap<String, String> = HashMap::new();
    for b in raw {
        let r = b.get_ref();
        let name = ctx.plain_name("backup", &r.name);
        ctx.unique(&mut seen, "backup", &name, r.name.span());
        let source = source(ctx, &r.source, datasets);
        let every = at_least(ctx, "every", r.every.as_ref(), Duration::from_secs(3600));
        let verify_every = at_least(
            ctx,
            "verify_every",
            r.verify_every.as_ref(),
            Duration::from_secs(24 * 3600),
        );
        let wal = r.wal.as_ref().is_some_and(|w| *w.get_ref());
        if let Some(w) = r.wal.as_ref().filter(|w| *w.get_ref()) {
            let postgres = matches!(&source, Some(BackupSource::Dataset(d))
                if datasets.iter().any(|x| &x.name == d && x.kind == DatasetKind::Postgres));
            if !postgres {
                ctx.at(
                    w.span(),
                    "wal = true needs a PostgreSQL dataset as the source",
                    "drop wal, or set source = \"dataset:NAME\" of a kind = \"postgres\" dataset",
                );
            } else if let Some(BackupSource::Dataset(d)) = &source {
                if let Some(other) = wal_of.insert(d.clone(), name.clone()) {
                    ctx.at(
                        w.span(),
                        format!("backup \"{other}\" already archives the WAL of dataset {d}"),
                        "keep wal = true on one backup of a dataset (give that one every repository)",
                    );
                }
            }
        }
        let wal_every = at_least(
            ctx,
            "wal_every",
            r.wal_every.as_ref(),
            Duration::from_secs(30),
        );
        if let (Some(w), false) = (r.wal_every.as_ref(), wal) {
            ctx.at(
                w.span(),
                "wal_every is set but wal is not",
                "add wal = true (a PostgreSQL dataset), or drop wal_every",
            );
        }
        let keep = keep(ctx, r.keep.as_ref());
        let mut repos = Vec::new();
        for repo in &r.repos {
            repos.push(self::repo(ctx, repo, site_names, base));
        }
        if repos.is_empty() {
            ctx.at(
                r.name.span(),
                format!("backup \"{name}\" has no repository"),
                "add a [[backups.repos]] with url and password_file",
            );
        }
        let mut urls: HashMap<String, Range<usize>> = HashMap::new();
        for (repo, raw) in repos.iter().zip(&r.repos) {
            ctx.unique(&mut urls, "repository", &repo.url, raw.get_ref().url.span());
        }
        if let Some(source) = source {
            out.push(Backup {
                name,
                source,
                every,
                wal,
                wal_every,
                keep,
                verify_every,
                repos,
            });
        }
    }
    out
}

fn source(ctx: &mut Ctx<'_>, raw: &S<String>, datasets: &[Dataset]) -> Option<BackupSource> {
    let text = raw.get_ref().trim();
    if let Some(p) = text.strip_prefix("path:") {
        let path = PathBuf::from(p);
        if !path.is_absolute() {
            ctx.at(
                raw.span(),
                format!("source path \"{p}\" is not absolute"),
                "write the directory from the root, like \"path:/srv/uploads\"",
            );
            return None;
        }
        return Some(BackupSource::Path(path));
    }
    if let Some(d) = text.strip_prefix("dataset:") {
        if !datasets.iter().any(|x| x.name == d) {
            let names: Vec<&str> = datasets.iter().map(|x| x.name.as_str()).collect();
            ctx.at(
                raw.span(),
                format!("source dataset \"{d}\" is not a [[datasets]]"),
                if names.is_empty() {
                    "define the [[datasets]] first, or back up a directory with \"path:/dir\""
                        .to_string()
                } else {
                    format!("name one of the datasets: {}", names.join(", "))
                },
            );
            return None;
        }
        return Some(BackupSource::Dataset(d.to_string()));
    }
    ctx.at(
        raw.span(),
        format!("source \"{text}\" is neither a path nor a dataset"),
        "write \"path:/srv/uploads\" or \"dataset:orders\"",
    );
    None
}

fn at_least(ctx: &mut Ctx<'_>, field: &str, v: Option<&S<String>>, default: Duration) -> Duration {
    let d = ctx.duration(field, v, default);
    match v {
        Some(v) if d < MIN_EVERY => {
            ctx.at(
                v.span(),
                format!("{field} = \"{}\" is shorter than a second", v.get_ref()),
                "give \"1s\" or more (an hour, \"1h\", is usual)",
            );
            default
        }
        _ => d,
    }
}

fn keep(ctx: &mut Ctx<'_>, raw: Option<&S<RawKeep>>) -> Keep {
    let Some(k) = raw else {
        return Keep::default();
    };
    let r = k.get_ref();
    let n = |v: &Option<S<u32>>| v.as_ref().map_or(0, |v| *v.get_ref());
    let keep = Keep {
        last: n(&r.last),
        daily: n(&r.daily),
        weekly: n(&r.weekly),
        monthly: n(&r.monthly),
    };
    if keep
        == (Keep {
            last: 0,
            daily: 0,
            weekly: 0,
            monthly: 0,
        })
    {
        ctx.at(
            k.span(),
            "keep keeps nothing: every snapshot would be pruned",
            "give at least one of last, daily, weekly, monthly above zero",
        );
        return Keep::default();
    }
    keep
}

fn repo(
    ctx: &mut Ctx<'_>,
    raw: &S<RawRepo>,
    site_names: &HashMap<String, usize>,
    base: &Path,
) -> BackupRepo {
    let r = raw.get_ref();
    let url = r.url.get_ref().trim();
    if !REPO_SCHEMES.iter().any(|p| url.starts_with(p)) {
        ctx.at(
            r.url.span(),
            format!("repository url \"{url}\" has no known scheme"),
            "start it with file://, s3://, gs://, az:// or rest:",
        );
    } else if let Some(rest) = url
        .split("://")
        .nth(1)
        .filter(|_| !url.starts_with("rest:"))
    {
        if rest.trim_matches('/').is_empty() {
            ctx.at(
                r.url.span(),
                format!("repository url \"{url}\" names no place"),
                "add the directory or bucket, like \"s3://backups-west/orders\"",
            );
        }
    }
    if let Some(site) = &r.site {
        if !site_names.contains_key(site.get_ref()) {
            ctx.at(
                site.span(),
                format!("repository site \"{}\" is not a site", site.get_ref()),
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
        _ => url.to_string(),
    };
    let password = match &r.password_file {
        Some(f) => match read_secret(&resolve(base, f.get_ref())) {
            Ok(t) if t.trim().is_empty() => {
                ctx.at(
                    f.span(),
                    "the password_file is empty",
                    "write the repository's password in it",
                );
                String::new()
            }
            Ok(t) => t.trim_end_matches(['\r', '\n']).to_string(),
            Err(e) => {
                ctx.at(
                    f.span(),
                    format!("cannot read password_file: {e}"),
                    "create the file (and keep a copy outside every site) or fix the path",
                );
                String::new()
            }
        },
        None => {
            ctx.at(
                r.url.span(),
                format!("repository \"{url}\" has no password_file"),
                "add password_file = \"backup.pass\" (a file holding the repository's password)",
            );
            String::new()
        }
    };
    BackupRepo {
        url,
        site: r.site.as_ref().map(|s| s.get_ref().clone()),
        password,
        options: r.options.clone().into_iter().collect::<BTreeMap<_, _>>(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn base(extra: &str, dir: &Path) -> Result<Config, ConfigError> {
        std::fs::write(dir.join("backup.pass"), "correct horse\n").expect("write pass");
        let text = format!(
            r#"
[cluster]
name = "t"
secret = "0123456789abcdef0123"
[[sites]]
name = "west"
address = "127.0.0.11"
peer_port = 7000
api_port = 8000
[[sites]]
name = "east"
address = "127.0.0.12"
peer_port = 7000
api_port = 8000
[[sites]]
name = "witness"
address = "127.0.0.13"
peer_port = 7000
api_port = 8000
witness = true
{extra}
"#
        );
        Config::parse(&dir.join("outlast.toml"), &text)
    }

    fn problems(r: Result<Config, ConfigError>) -> Vec<String> {
        match r {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(p)) => p
                .iter()
                .map(|p| format!("{}:{} {} / {}", p.line, p.col, p.what, p.fix))
                .collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn a_path_backup_takes_its_defaults_and_reads_its_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = base(
            r#"
[[backups]]
name = "uploads"
source = "path:/srv/uploads"
[[backups.repos]]
url = "file://repo"
password_file = "backup.pass"
"#,
            dir.path(),
        )
        .expect("valid");
        let b = &c.backups[0];
        assert_eq!(b.source, BackupSource::Path("/srv/uploads".into()));
        assert_eq!(b.every, Duration::from_secs(3600));
        assert_eq!(b.verify_every, Duration::from_secs(86400));
        assert_eq!(b.keep, Keep::default());
        assert!(!b.wal);
        assert_eq!(b.repos[0].password, "correct horse");
        assert!(b.repos[0].url.starts_with("file:///"), "{}", b.repos[0].url);
        assert!(b.repos[0].url.ends_with("/repo"));
    }

    #[test]
    fn bad_backups_name_their_place_and_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = problems(base(
            r#"
[[backups]]
name = "a"
source = "path:relative"
every = "10ms"
keep = { last = 0 }
[[backups.repos]]
url = "ftp://x"
[[backups]]
name = "b"
source = "dataset:nope"
wal = true
[[backups.repos]]
url = "s3://bucket/p"
site = "mars"
password_file = "missing.pass"
"#,
            dir.path(),
        ));
        let all = p.join("\n");
        for want in [
            "24:10 source path \"relative\" is not absolute",
            "25:9 every = \"10ms\" is shorter than a second",
            "26:8 keep keeps nothing",
            "28:7 repository url \"ftp://x\" has no known scheme",
            "28:7 repository \"ftp://x\" has no password_file",
            "31:10 source dataset \"nope\" is not a [[datasets]]",
            "32:7 wal = true needs a PostgreSQL dataset",
            "35:8 repository site \"mars\" is not a site",
            "36:17 cannot read password_file",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn wal_is_archived_by_one_backup_of_a_postgres_dataset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dataset = r#"
[[datasets]]
name = "orders"
port = 5432
[datasets.members]
west = { data_dir = "west/pg" }
east = { data_dir = "east/pg" }
[datasets.postgres]
password = "app-password-1"
[[services]]
name = "pg"
dataset = "orders"
port = 6432
"#;
        let one = |name: &str, extra: &str| {
            format!(
                "[[backups]]\nname = \"{name}\"\nsource = \"dataset:orders\"\n{extra}\n[[backups.repos]]\nurl = \"file:///r/{name}\"\npassword_file = \"backup.pass\"\n"
            )
        };
        let c = base(&format!("{dataset}{}", one("a", "wal = true")), dir.path()).expect("valid");
        assert!(c.backups[0].wal);
        assert_eq!(c.backups[0].wal_every, Duration::from_secs(30));
        let p = problems(base(
            &format!(
                "{dataset}{}{}{}",
                one("a", "wal = true\nwal_every = \"5s\""),
                one("b", "wal = true"),
                one("c", "wal_every = \"10s\"")
            ),
            dir.path(),
        ))
        .join("\n");
        assert!(
            p.contains("backup \"a\" already archives the WAL of dataset orders"),
            "{p}"
        );
        assert!(p.contains("wal_every is set but wal is not"), "{p}");
        assert!(!p.contains("\"5s\""), "{p}");
    }
}
