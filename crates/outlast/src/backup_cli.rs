//! `outlast backup run|list|verify` (through an agent's API) and `outlast restore` (here,
//! from the repositories themselves: it works with every site lost).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use outlast_backup::{Pick, ProgressBars};
use outlast_core::config::{Backup, BackupRepo, BackupSource, Config, DatasetKind};
use outlast_core::status::{BackupRun, BackupStatus, VerifyRun};
use rustic_core::{Progress, ProgressType, RusticProgress};

use crate::commands::{count, ApiTarget, TokenArg};

/// The longest a CLI waits for an agent's backup or verify (a large base backup takes a
/// while; the agent's own run goes on if this gives up).
const RUN_WAIT: Duration = Duration::from_secs(6 * 3600);

/// rustic's progress drawn by indicatif on stderr (hidden when stderr is no terminal).
#[derive(Debug, Clone, Copy)]
pub struct Bars;

#[derive(Debug)]
struct Bar(ProgressBar);

impl RusticProgress for Bar {
    fn is_hidden(&self) -> bool {
        self.0.is_hidden()
    }
    fn set_length(&self, len: u64) {
        self.0.set_length(len);
    }
    fn set_title(&self, title: &str) {
        self.0.set_prefix(title.to_string());
    }
    fn inc(&self, inc: u64) {
        self.0.inc(inc);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl ProgressBars for Bars {
    fn progress(&self, kind: ProgressType, prefix: &str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let bar = match kind {
            ProgressType::Spinner => ProgressBar::new_spinner(),
            ProgressType::Counter | ProgressType::Bytes => ProgressBar::new(0),
        };
        let template = match kind {
            ProgressType::Spinner => "{spinner} {prefix} {elapsed}",
            ProgressType::Counter => "{prefix} [{bar:30}] {pos}/{len} {elapsed}",
            ProgressType::Bytes => {
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            }
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(prefix.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress::new(Bar(bar))
    }
}

/// A spinner while an agent works (stderr, terminals only).
fn waiting(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Asks each candidate agent in turn: a site that does not take the backup (409) says
/// which does, and the next candidate is tried.
async fn ask(
    target: &ApiTarget,
    auth: &TokenArg,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<(String, serde_json::Value)> {
    let token = auth.token_for(target)?;
    let client = target.client(RUN_WAIT)?;
    let mut why = Vec::new();
    for base in target.candidates()? {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let resp = match client
            .request(method.clone(), &url)
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                why.push(format!("{base}: {e}"));
                continue;
            }
        };
        let code = resp.status();
        let text = resp.text().await?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{url} answered something else ({e})"))?;
        if code.is_success() {
            return Ok((base, value));
        }
        let reason = value
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no reason given")
            .to_string();
        if code.as_u16() == 409 {
            why.push(format!("{base}: {reason}"));
            continue;
        }
        anyhow::bail!("{url} answered {code}: {reason}");
    }
    anyhow::bail!("no agent could: {}", why.join("; "))
}

/// Every backup as the sites see it, each taken from the site that takes it now (else the
/// one whose last snapshot is the newest), with that site's API address: a site that does
/// not take a backup knows nothing of its runs.
async fn every_site_backups(
    target: &ApiTarget,
    auth: &TokenArg,
) -> anyhow::Result<Vec<(String, BackupStatus)>> {
    let token = auth.token_for(target)?;
    let client = target.client(Duration::from_secs(5))?;
    let mut best: std::collections::BTreeMap<String, (String, BackupStatus)> = Default::default();
    let mut why = Vec::new();
    for base in target.candidates()? {
        let url = format!("{}/v1/backups", base.trim_end_matches('/'));
        let got = match client.get(&url).bearer_auth(&token).send().await {
            Ok(r) if r.status().is_success() => r.json::<Vec<BackupStatus>>().await,
            Ok(r) => {
                why.push(format!("{base} answered {}", r.status()));
                continue;
            }
            Err(e) => {
                why.push(format!("{base}: {e}"));
                continue;
            }
        };
        let Ok(list) = got else {
            why.push(format!("{base}: not a backup list"));
            continue;
        };
        for b in list {
            let newest = |x: &BackupStatus| x.last_ok.as_ref().map_or(0, |r| r.at_ms);
            let better = best
                .get(&b.name)
                .is_none_or(|(_, have)| (b.takes, newest(&b)) > (have.takes, newest(have)));
            if better {
                best.insert(b.name.clone(), (base.clone(), b));
            }
        }
    }
    if best.is_empty() && !why.is_empty() {
        anyhow::bail!("no agent answered: {}", why.join("; "));
    }
    Ok(best.into_values().collect())
}

/// `outlast backup run NAME`: a snapshot now, at the site that takes it.
pub async fn run(target: &ApiTarget, auth: &TokenArg, name: &str) -> anyhow::Result<i32> {
    let bar = waiting(&format!("backup {name}: taking a snapshot"));
    let (base, v) = ask(
        target,
        auth,
        reqwest::Method::POST,
        &format!("/v1/backups/{name}/run"),
    )
    .await?;
    bar.finish_and_clear();
    let r: BackupRun = serde_json::from_value(v)?;
    println!(
        "backup {name} at {base}: {} in {} ms ({} files, {}, {} new)",
        if r.ok { "written" } else { "FAILED" },
        r.duration_ms,
        r.files,
        mb(r.bytes),
        mb(r.added_bytes)
    );
    for repo in &r.repos {
        match (&repo.snapshot, &repo.error) {
            (_, Some(e)) => println!("  {}: failed: {e}", repo.url),
            (Some(id), None) => println!(
                "  {}: snapshot {} in {} ms{}",
                repo.url,
                id.get(..8).unwrap_or(id),
                repo.duration_ms,
                if repo.forgotten > 0 {
                    format!(
                        ", {} forgotten by keep",
                        count(repo.forgotten as usize, "snapshot", "snapshots")
                    )
                } else {
                    String::new()
                }
            ),
            (None, None) => println!("  {}: nothing written", repo.url),
        }
    }
    if let Some(e) = &r.error {
        eprintln!("error: {e}");
    }
    Ok(if r.ok { 0 } else { 1 })
}

/// `outlast backup verify NAME`: restore the newest snapshot into a scratch dir and check it.
pub async fn verify(target: &ApiTarget, auth: &TokenArg, name: &str) -> anyhow::Result<i32> {
    let bar = waiting(&format!("backup {name}: restoring the newest snapshot"));
    let (base, v) = ask(
        target,
        auth,
        reqwest::Method::POST,
        &format!("/v1/backups/{name}/verify"),
    )
    .await?;
    bar.finish_and_clear();
    let r: VerifyRun = serde_json::from_value(v)?;
    let snap = r.snapshot.as_deref().unwrap_or("none");
    if r.ok {
        println!(
            "backup {name} at {base}: verified snapshot {} from {}: restored and checked in {} ms ({} files, {}), {} s old{}",
            snap.get(..8).unwrap_or(snap),
            r.url,
            r.restore_ms,
            r.files_checked,
            mb(r.bytes),
            r.age_ms / 1000,
            r.server.as_ref().map(|s| format!("; {s}")).unwrap_or_default()
        );
        Ok(0)
    } else {
        println!("backup {name} at {base}: verify FAILED ({})", r.url);
        eprintln!("error: {}", r.error.as_deref().unwrap_or("unknown"));
        Ok(1)
    }
}

/// `outlast backup list [NAME]`: without a name, each backup's last run and verify at the
/// answering site; with one, every snapshot each repository holds.
pub async fn list(target: &ApiTarget, auth: &TokenArg, name: Option<&str>) -> anyhow::Result<i32> {
    let Some(name) = name else {
        let all = every_site_backups(target, auth).await?;
        println!("backups (each as the site that takes it reports it):");
        for (site, b) in all {
            let last = b.last_ok.as_ref().map_or("never".to_string(), |r| {
                format!(
                    "{} s ago ({})",
                    crate::agent::peer::unix_ms().saturating_sub(r.at_ms) / 1000,
                    mb(r.bytes)
                )
            });
            let ver = b.verify_ok.as_ref().map_or("never".to_string(), |v| {
                format!("restore {} ms, {} s old", v.restore_ms, v.age_ms / 1000)
            });
            println!(
                "  {:<12} {:<24} at {:<22} last snapshot: {last}; last verified: {ver}{}",
                b.name,
                b.source,
                site,
                b.problem
                    .map(|p| format!("; PROBLEM: {p}"))
                    .unwrap_or_default()
            );
        }
        return Ok(0);
    };
    let (_, v) = ask(
        target,
        auth,
        reqwest::Method::GET,
        &format!("/v1/backups/{name}/snapshots"),
    )
    .await?;
    let repos: Vec<crate::agent::backups::RepoList> = serde_json::from_value(v)?;
    let mut bad = 0;
    for r in repos {
        println!(
            "{}{}",
            r.url,
            r.site.map(|s| format!(" (site {s})")).unwrap_or_default()
        );
        if let Some(e) = r.error {
            println!("  cannot list: {e}");
            bad += 1;
            continue;
        }
        if r.snapshots.is_empty() {
            println!("  no snapshots");
        }
        for s in r.snapshots {
            println!(
                "  {}  {}  {:<8} {:>10}  {} files  {}",
                s.id.get(..8).unwrap_or(&s.id),
                time_text(s.time_ms),
                s.host,
                mb(s.bytes),
                s.files,
                s.paths.join(",")
            );
        }
    }
    Ok(if bad > 0 { 1 } else { 0 })
}

fn time_text(ms: i64) -> String {
    rustic_core::jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// A time as `--at` takes it: RFC 3339 (`2026-12-04T10:00:00Z`) or Unix milliseconds.
pub fn parse_at(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Ok(ms);
    }
    rustic_core::jiff::Timestamp::from_str(text.trim())
        .map(|t| t.as_millisecond())
        .map_err(|e| anyhow::anyhow!("--at {text:?} is not a time ({e}); write it like 2026-12-04T10:00:00Z or as Unix milliseconds"))
}

/// What `outlast restore` is told.
pub struct RestoreArgs<'a> {
    pub config: &'a Path,
    pub name: &'a str,
    pub snapshot: Option<String>,
    pub at: Option<String>,
    pub site: Option<String>,
    pub repo: Option<String>,
    pub to: PathBuf,
}

/// `outlast restore`: a snapshot into `--to`, from the first repository that answers; for
/// a backup that archives WAL (unless `--snapshot` names one), the WAL replayed onto it up
/// to `--at` (else to the end of what was archived).
pub async fn restore(a: RestoreArgs<'_>) -> anyhow::Result<i32> {
    let config = match Config::load(a.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(64);
        }
    };
    let Some(b) = config.backup(a.name) else {
        let names: Vec<&str> = config.backups.iter().map(|b| b.name.as_str()).collect();
        anyhow::bail!(
            "no backup {:?} in {}; it has: {}",
            a.name,
            a.config.display(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
    };
    let at_ms = a.at.as_deref().map(parse_at).transpose()?;
    let pick = Pick {
        id: a.snapshot.clone(),
        at_or_before_ms: at_ms,
        host: a.site.clone(),
    };
    let repos: Vec<&BackupRepo> = b
        .repos
        .iter()
        .filter(|r| a.repo.as_ref().is_none_or(|u| &r.url == u))
        .collect();
    if repos.is_empty() {
        anyhow::bail!(
            "backup {} has no repository {:?}",
            a.name,
            a.repo.as_deref().unwrap_or("")
        );
    }
    let r = tokio::task::block_in_place(|| restore_from(b, &repos, &pick, &a.to))?;
    println!(
        "restored {} ({}) in {} ms (repository opened and listed in {} ms; {} ms in all)",
        a.to.display(),
        mb(r.bytes),
        r.restore_ms,
        r.opened_ms,
        r.total_ms
    );
    let said = ready_for_server(&config, b, &a.to)?;
    if let (true, None, Some(ds)) = (b.wal, &a.snapshot, config.dataset_of(b)) {
        let bin_dir = match &ds.postgres.bin_dir {
            Some(d) => d.clone(),
            None => outlast_db::find_bin_dir().ok_or_else(|| {
                anyhow::anyhow!("replaying WAL needs PostgreSQL on this machine (pg_config or /usr/lib/postgresql); install it, or set bin_dir under [datasets.postgres]")
            })?,
        };
        let user = outlast_db::os::is_root().then_some(ds.postgres.os_user.as_str());
        match replay_wal(b, &repos, &r, &a.to, at_ms, &bin_dir, user).await {
            Ok(w) => println!("{}", w.said()),
            Err(e) => {
                // A base backup without its WAL is not what was asked for: nothing is left.
                let _ = std::fs::remove_dir_all(&a.to);
                anyhow::bail!(
                    "{e:#}; {} was removed (--snapshot ID restores a base backup alone)",
                    a.to.display()
                );
            }
        }
    }
    if let Some(said) = said {
        println!("{said}");
    }
    Ok(0)
}

/// What [`replay_wal`] did.
pub struct Replayed {
    pub files: u64,
    pub bytes: u64,
    pub batches: usize,
    /// When the newest batch fetched was shipped (Unix ms).
    pub newest_ms: Option<i64>,
    pub fetch_ms: u64,
    pub recover_ms: u64,
    pub target_ms: Option<i64>,
    /// The last transaction replayed, as the server's log gave its time.
    pub last_transaction: Option<String>,
}

impl Replayed {
    pub fn said(&self) -> String {
        format!(
            "replayed {} WAL files ({}, {} batches, the newest shipped {}) {} in {} ms (fetched in {} ms); last transaction replayed: {}",
            self.files,
            mb(self.bytes),
            self.batches,
            self.newest_ms.map_or("never".into(), time_text),
            match self.target_ms {
                Some(t) => format!("up to {}", time_text(t)),
                None => "to the end of the archive".into(),
            },
            self.recover_ms,
            self.fetch_ms,
            self.last_transaction.as_deref().unwrap_or("none in the archived WAL")
        )
    }
}

/// Replays the archived WAL of backup `b` onto its base backup restored in `to` (from
/// [`restore_from`]): the batches that reach the base's start fetched from the repository it
/// came from (else the others), then PostgreSQL's recovery up to `target_ms` (else the end
/// of the archive), which ends in a new timeline. `to` is then a data dir its server
/// starts as a primary. The fetched WAL is removed after.
pub async fn replay_wal(
    b: &Backup,
    repos: &[&BackupRepo],
    base: &RestoredFrom,
    to: &Path,
    target_ms: Option<i64>,
    bin_dir: &Path,
    os_user: Option<&str>,
) -> anyhow::Result<Replayed> {
    let archive = outlast_db::postgres::WalArchive::restore_dir_for(to);
    if archive.exists() {
        std::fs::remove_dir_all(&archive)
            .map_err(|e| anyhow::anyhow!("cannot clear {}: {e}", archive.display()))?;
    }
    let from = outlast_backup::tag_value(&base.snapshot.tags, outlast_backup::WAL_FROM);
    let mut order: Vec<&&BackupRepo> = repos.iter().filter(|r| r.url == base.url).collect();
    order.extend(repos.iter().filter(|r| r.url != base.url));
    let mut why = Vec::new();
    let mut fetched = None;
    for repo in order {
        let got = tokio::task::block_in_place(|| {
            let open = outlast_backup::open(repo, Bars)?;
            outlast_backup::restore_wal(open, &repo.url, &b.name, from, &archive)
        });
        match got {
            Ok(w) => {
                fetched = Some(w);
                break;
            }
            Err(e) => {
                eprintln!("{}: the WAL: {e}; trying the next repository", repo.url);
                why.push(e.to_string());
                let _ = std::fs::remove_dir_all(&archive);
            }
        }
    }
    let Some(w) = fetched else {
        anyhow::bail!("no repository gave the archived WAL: {}", why.join("; "));
    };
    eprintln!(
        "replaying {} WAL files from {} batches onto the base backup{}",
        w.files,
        w.batches,
        target_ms.map_or(String::new(), |t| format!(" up to {}", time_text(t)))
    );
    let port = outlast_db::os::free_port()?;
    let recovered =
        outlast_db::pgbackup::recover(bin_dir, os_user, to, &archive, target_ms, port).await;
    let _ = std::fs::remove_dir_all(&archive);
    let recovered = recovered.map_err(|e| anyhow::anyhow!("replaying the archived WAL: {e}"))?;
    Ok(Replayed {
        files: w.files,
        bytes: w.bytes,
        batches: w.batches,
        newest_ms: w.newest_ms,
        fetch_ms: w.restore_ms,
        recover_ms: recovered.recover_ms,
        target_ms,
        last_transaction: recovered.last_transaction,
    })
}

/// What [`restore_from`] restored, and from where.
pub struct RestoredFrom {
    pub url: String,
    pub snapshot: outlast_backup::Snapshot,
    pub bytes: u64,
    pub restore_ms: u64,
    /// Opening the repository and listing its snapshots.
    pub opened_ms: u64,
    pub total_ms: u64,
}

/// The snapshot of backup `b` that `pick` names, restored into `to` (new or empty) from
/// the first of `repos` that opens and has one; each repository passed over is said on
/// stderr with why.
pub fn restore_from(
    b: &Backup,
    repos: &[&BackupRepo],
    pick: &Pick,
    to: &Path,
) -> anyhow::Result<RestoredFrom> {
    let started = outlast_core::clock::now();
    let mut why = Vec::new();
    for repo in repos {
        let step = outlast_core::clock::now();
        let open = match outlast_backup::open(repo, Bars) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{}: {e}; trying the next repository", repo.url);
                why.push(e.to_string());
                continue;
            }
        };
        let all = outlast_backup::snapshots(&open, &repo.url, &b.name)?;
        let snap = match outlast_backup::pick(&all, pick) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{}: {e}; trying the next repository", repo.url);
                why.push(e.to_string());
                continue;
            }
        };
        let opened_ms = step.elapsed().as_millis() as u64;
        eprintln!(
            "restoring snapshot {} of {} (host {}, taken {}) from {} into {}",
            snap.id.get(..8).unwrap_or(&snap.id),
            b.name,
            snap.host,
            time_text(snap.time_ms),
            repo.url,
            to.display()
        );
        let r = outlast_backup::restore(open, &repo.url, &snap, to)?;
        return Ok(RestoredFrom {
            url: repo.url.clone(),
            snapshot: snap,
            bytes: r.bytes,
            restore_ms: r.restore_ms,
            opened_ms,
            total_ms: started.elapsed().as_millis() as u64,
        });
    }
    anyhow::bail!("no repository could restore it: {}", why.join("; "))
}

/// Makes a restored copy of a dataset ready for its server: a PostgreSQL data dir private
/// and owned by the server's user (when we are root). What the user should know of it;
/// None for a `path:` backup.
pub fn ready_for_server(config: &Config, b: &Backup, to: &Path) -> anyhow::Result<Option<String>> {
    let BackupSource::Dataset(d) = &b.source else {
        return Ok(None);
    };
    let Some(ds) = config.datasets.iter().find(|x| &x.name == d) else {
        return Ok(None);
    };
    if ds.kind == DatasetKind::Redis {
        return Ok(Some(format!(
            "{} holds dump.rdb, a Redis snapshot of dataset {}: copy it into a server's dir (as its dbfilename) before the server starts",
            to.display(),
            ds.name
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))?;
    // A restored copy never acts as a member by accident: it listens on localhost only,
    // archives nowhere (the member's archive_command would feed the live dataset's WAL
    // spool) and streams from no one. Its socket is in its own dir, where the user who
    // runs it can write.
    let conf = to.join("outlast.conf");
    let member = std::fs::read_to_string(&conf).unwrap_or_default();
    std::fs::write(
        &conf,
        format!(
            "{member}\n# A copy of dataset {d} restored by outlast restore: not a member of the cluster.\n\
             listen_addresses = 'localhost'\n\
             unix_socket_directories = '{}'\n\
             archive_mode = off\n\
             synchronous_standby_names = ''\n",
            to.display()
        ),
    )?;
    std::fs::write(
        to.join("postgresql.auto.conf"),
        "# Cleared by outlast restore (the member's primary_conninfo and slot).\n",
    )?;
    let _ = std::fs::remove_file(to.join("standby.signal"));
    // The member's pg_hba.conf admits the dataset's user from the sites' addresses only:
    // the copy admits it (and any role with its password) from this machine.
    let hba = to.join("pg_hba.conf");
    let member_hba = std::fs::read_to_string(&hba).unwrap_or_default();
    std::fs::write(
        &hba,
        format!(
            "# Added by outlast restore: password logins from this machine (socket and loopback).\n\
             local all all scram-sha-256\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n\
             # The member's own lines:\n{member_hba}"
        ),
    )?;
    let user = ds.postgres.os_user.clone();
    let root = outlast_db::os::is_root();
    if root {
        let owned = std::process::Command::new("chown")
            .args(["-R", &format!("{user}:")])
            .arg(to)
            .status()?;
        if !owned.success() {
            anyhow::bail!("chown -R {user}: {} failed", to.display());
        }
    }
    // The server programs of the copy's own major version (Debian keeps them off PATH).
    let version = std::fs::read_to_string(to.join("PG_VERSION")).unwrap_or_default();
    let bin = Some(PathBuf::from(format!(
        "/usr/lib/postgresql/{}/bin",
        version.trim()
    )))
    .filter(|b| !version.trim().is_empty() && b.join("pg_ctl").exists())
    .or_else(outlast_db::postgres::find_bin_dir);
    let pg_ctl = bin.map_or_else(
        || "pg_ctl".to_string(),
        |b| b.join("pg_ctl").display().to_string(),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(5432, |a| a.port());
    let run_as = if root {
        format!("runuser -u {user} -- ")
    } else {
        String::new()
    };
    let dir = to.display();
    Ok(Some(format!(
        "{dir} is a PostgreSQL data dir of dataset {d}{}, not a member of the cluster\n\
         start it with: {run_as}{pg_ctl} -D {dir} -l {dir}/restored.log -o \"-c port={port}\" -w start\n\
         query it with: psql -h {dir} -p {port} -U {} {} (or -h 127.0.0.1; the dataset's password)\n\
         stop it with:  {run_as}{pg_ctl} -D {dir} -m fast stop",
        if root { format!(", owned by {user}") } else { String::new() },
        ds.postgres.user,
        ds.postgres.database,
    )))
}
