//! `outlast rebuild --config F --site S`: a lost site brought back on an empty machine that
//! has the config and its secrets.
//!
//! The steps, each timed and printed as it ends:
//! 1. **cluster state**: the other sites are asked who leads and in which term (a majority
//!    of the cluster must answer and agree). The site's Raft dir gets that leader's vote, so
//!    the rebuilt site follows it at once and can never vote twice in a term it may have
//!    voted in before it was lost; the log and the state come from the leader once the agent
//!    runs.
//! 2. **each dataset member** of the site: cloned from the live primary (`pg_basebackup`,
//!    PostgreSQL) or left to the agent's full sync (Redis); when no member's server answers,
//!    restored from the newest snapshot of a `[[backups]]` of that dataset.
//! 3. **each `path:` backup** whose directory is missing or empty here: its newest snapshot
//!    (this site's own when there is one).
//! 4. **the agent** starts in this process, and the site has **rejoined** once it follows the
//!    leader at the epoch the cluster was in and every member here streams from the primary
//!    (or is it). The table of steps is printed then, and the agent goes on running until
//!    SIGTERM, as `outlast agent` would.
//!
//! It refuses a site that still has state (a Raft dir, a member's data): that site restarts
//! with `outlast agent`, and nothing here deletes what a site kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use outlast_backup::Pick;
use outlast_core::config::{BackupRepo, BackupSource, Config};
use outlast_core::status::Status;
use outlast_db::Server;
use tokio_util::sync::CancellationToken;

use crate::backup_cli::{mb, replay_wal, restore_from};

/// The longest the cluster's answer (step 1) and the rejoin (step 4) are waited for.
const PEERS_WAIT: Duration = Duration::from_secs(60);
const REJOIN_WAIT: Duration = Duration::from_secs(30 * 60);

/// Times the steps and prints each as it ends.
struct Stopwatch {
    started: tokio::time::Instant,
    step: tokio::time::Instant,
    done: Vec<(String, u64, String)>,
}

impl Stopwatch {
    fn new() -> Self {
        let now = tokio::time::Instant::now();
        Stopwatch {
            started: now,
            step: now,
            done: Vec::new(),
        }
    }

    fn lap(&mut self, step: impl Into<String>, said: impl Into<String>) {
        let now = tokio::time::Instant::now();
        let ms = now.duration_since(self.step).as_millis() as u64;
        let (step, said) = (step.into(), said.into());
        println!(
            "[{:>8.3} s] {step}: {said} ({})",
            now.duration_since(self.started).as_secs_f64(),
            seconds(ms)
        );
        self.done.push((step, ms, said));
        self.step = now;
    }

    /// `{site, total_ms, steps: [{step, ms, said}]}`.
    fn json(&self, site: &str) -> String {
        let steps: Vec<serde_json::Value> = self
            .done
            .iter()
            .map(|(step, ms, said)| serde_json::json!({"step": step, "ms": ms, "said": said}))
            .collect();
        serde_json::json!({
            "site": site,
            "total_ms": self.started.elapsed().as_millis() as u64,
            "steps": steps,
        })
        .to_string()
    }

    fn table(&self, site: &str) -> String {
        let width = self.done.iter().map(|d| d.0.len()).max().unwrap_or(0);
        let mut out = format!(
            "rebuilt {site} in {}:\n",
            seconds(self.started.elapsed().as_millis() as u64)
        );
        for (step, ms, said) in &self.done {
            out.push_str(&format!("  {step:<width$}  {:>10}  {said}\n", seconds(*ms)));
        }
        out
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.3} s", ms as f64 / 1000.0)
}

/// How the rebuilt site's agent runs, and where the stopwatch goes.
#[derive(Debug, Default)]
pub struct RebuildOptions {
    pub agent: crate::agent::AgentOptions,
    /// The stopwatch as JSON, written once the site rejoined (a drill reads it).
    pub steps_json: Option<PathBuf>,
}

/// `outlast rebuild`: the steps above, then the agent until `shutdown`.
pub async fn run(
    config: Config,
    site: &str,
    opts: RebuildOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let me = config
        .site(site)
        .with_context(|| {
            format!(
                "site {site:?} is not in {}; name one of: {}",
                config.path.display(),
                config
                    .sites
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?
        .clone();
    let root = outlast_db::os::is_root();
    let mut servers = Vec::new();
    for d in &config.datasets {
        if let Some(s) =
            crate::agent::datasets::server_for(&config, d, site, root, &Default::default())?
        {
            servers.push(s);
        }
    }
    refuse_kept_state(&me.data_dir.join("raft"), &servers)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    if client
        .get(format!("http://{}/v1/status", me.api_addr()))
        .send()
        .await
        .is_ok()
    {
        anyhow::bail!(
            "something answers on {}, {site}'s API address: is its agent running? A rebuild is for a site that was lost",
            me.api_addr()
        );
    }

    let mut watch = Stopwatch::new();
    println!("rebuilding {site} from its peers and the backups");

    // 1. Cluster state.
    let answers = leader_now(&config, site, &client, &shutdown).await?;
    let leader = answers[0].clone();
    let answered = answers.len();
    let leader_id = config
        .site_index(&leader.site)
        .with_context(|| format!("the leader {} is not in the config", leader.site))?
        as outlast_control::store::NodeId;
    outlast_control::store::seed_vote(&me.data_dir.join("raft"), leader.term, leader_id)
        .with_context(|| format!("cannot write {}'s Raft vote", me.name))?;
    watch.lap(
        "cluster state",
        format!(
            "leader {}, term {}, epoch {} ({answered} of {} peers answered)",
            leader.site,
            leader.term,
            leader.epoch,
            config.sites.len() - 1
        ),
    );

    // 2. Each dataset member of this site.
    for server in &servers {
        let said = dataset_member(&config, &answers, server).await?;
        watch.lap(format!("dataset {}", server.dataset()), said);
    }

    // 3. Each path: backup whose directory is gone.
    if !me.witness {
        for b in &config.backups {
            let BackupSource::Path(path) = &b.source else {
                continue;
            };
            if !is_empty_or_missing(path) {
                watch.lap(
                    format!("backup {}", b.name),
                    format!("{} holds files: left as it is", path.display()),
                );
                continue;
            }
            let said = tokio::task::block_in_place(|| restore_path(b, path, site))?;
            watch.lap(format!("backup {}", b.name), said);
        }
    }

    // 4. The agent, and the rejoin.
    let agent = crate::agent::run(config.clone(), site, opts.agent, shutdown.clone());
    tokio::pin!(agent);
    let api = me.api_addr().to_string();
    watch.lap("agent started", format!("serving on {api}"));
    let rejoined = tokio::select! {
        r = &mut agent => {
            r?;
            anyhow::bail!("the agent stopped before {site} rejoined");
        }
        said = rejoin(&client, &api, &leader, &servers, &shutdown) => said,
    };
    match rejoined {
        Some(said) => {
            watch.lap("rejoined", said);
            print!("{}", watch.table(site));
            if let Some(path) = &opts.steps_json {
                if let Err(e) = std::fs::write(path, watch.json(site)) {
                    eprintln!("cannot write {}: {e}", path.display());
                }
            }
            println!("the agent goes on running (SIGTERM stops it)");
        }
        None => eprintln!(
            "{site} has not rejoined after {} s; the agent goes on running (see outlast status)",
            REJOIN_WAIT.as_secs()
        ),
    }
    agent.await
}

/// A site with state restarts with `outlast agent`; a rebuild deletes nothing.
fn refuse_kept_state(raft: &Path, servers: &[Server]) -> anyhow::Result<()> {
    let mut kept: Vec<String> = Vec::new();
    if outlast_control::store::has_state(raft) {
        kept.push(format!("{} (Raft state)", raft.display()));
    }
    for s in servers {
        if !is_empty_or_missing(s.data_dir()) {
            kept.push(format!(
                "{} (dataset {}'s data)",
                s.data_dir().display(),
                s.dataset()
            ));
        }
    }
    if !kept.is_empty() {
        anyhow::bail!(
            "this site kept state: {}. A rebuild makes a lost site from nothing; restart a site that kept its state with `outlast agent`, or move these away first to rebuild it",
            kept.join(", ")
        );
    }
    Ok(())
}

fn is_empty_or_missing(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Every answer, the leader's own status first, once a majority of the cluster (this site
/// not counted as answering) answers and every answer names that leader in its term.
async fn leader_now(
    config: &Config,
    me: &str,
    client: &reqwest::Client,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Status>> {
    let majority = config.sites.len() / 2 + 1;
    let until = tokio::time::Instant::now() + PEERS_WAIT;
    let mut why;
    loop {
        let mut answers: Vec<Status> = Vec::new();
        let mut silent = Vec::new();
        for s in config.sites.iter().filter(|s| s.name != me) {
            let url = format!("http://{}/v1/status", s.api_addr());
            let got = async { client.get(&url).send().await?.json::<Status>().await }.await;
            match got {
                Ok(st) => answers.push(st),
                Err(e) => silent.push(format!("{}: {e}", s.name)),
            }
        }
        let leader = answers
            .iter()
            .find(|a| a.leader.as_deref() == Some(a.site.as_str()))
            .cloned();
        why = match &leader {
            _ if answers.len() < majority => format!(
                "{} of {} sites answered, and a majority ({majority}) must; silent: {}",
                answers.len(),
                config.sites.len(),
                silent.join("; ")
            ),
            None => "no site says it leads (an election is under way?)".to_string(),
            Some(l) => match answers
                .iter()
                .find(|a| a.term != l.term || a.leader.as_deref() != Some(l.site.as_str()))
            {
                Some(a) => format!(
                    "{} says leader {:?} in term {}, {} says itself in term {}",
                    a.site, a.leader, a.term, l.site, l.term
                ),
                None => {
                    answers.retain(|a| a.site != l.site);
                    answers.insert(0, l.clone());
                    return Ok(answers);
                }
            },
        };
        if tokio::time::Instant::now() > until || shutdown.is_cancelled() {
            anyhow::bail!(
                "the cluster did not name one leader within {} s: {why}",
                PEERS_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Step 2 for one member: from the live primary, else from the newest backup. The
/// committed primary is the leader's word (`answers[0]`); whether its server serves is
/// the primary's own site's.
async fn dataset_member(
    config: &Config,
    answers: &[Status],
    server: &Server,
) -> anyhow::Result<String> {
    let name = server.dataset();
    let of = |st: &Status| st.datasets.iter().find(|d| d.name == name).cloned();
    let ds = answers.first().and_then(of);
    let live_primary = ds.as_ref().and_then(|d| d.primary.clone()).filter(|p| {
        answers
            .iter()
            .filter(|a| &a.site == p)
            .filter_map(of)
            .any(|d| {
                d.members
                    .iter()
                    .any(|m| &m.site == p && m.role == "primary")
            })
    });
    if let Some(primary) = live_primary {
        return match server {
            Server::Postgres(pg) => {
                pg.clone_from(&primary)
                    .await
                    .with_context(|| format!("cannot clone dataset {name} from {primary}"))?;
                Ok(format!(
                    "cloned from the primary at {primary} (pg_basebackup, {})",
                    mb(dir_bytes(server.data_dir()))
                ))
            }
            Server::Redis(_) => Ok(format!(
                "the agent's server will sync in full from the primary at {primary}"
            )),
        };
    }
    // No member's server answers: the newest snapshot of a backup of this dataset.
    let Some(b) = config
        .backups
        .iter()
        .find(|b| b.source == BackupSource::Dataset(name.to_string()))
    else {
        anyhow::bail!(
            "dataset {name} has no live primary ({}) and no [[backups]] with source = \"dataset:{name}\": nothing to rebuild it from. Bring a member back, or start the agent by hand to begin it empty",
            member_roles(answers, name)
        );
    };
    let repos: Vec<&BackupRepo> = b.repos.iter().collect();
    let r = tokio::task::block_in_place(|| {
        restore_from(b, &repos, &Pick::default(), server.data_dir())
    })?;
    server
        .adopt_restored()
        .await
        .map_err(|e| anyhow::anyhow!("dataset {name}: {e}"))?;
    let age_ms = (outlast_core::clock::unix_ms() as i64).saturating_sub(r.snapshot.time_ms);
    let replayed = match server {
        Server::Postgres(pg) if b.wal => {
            let w = replay_wal(
                b,
                &repos,
                &r,
                server.data_dir(),
                None,
                &pg.spec.bin_dir,
                pg.spec.os_user.as_deref(),
            )
            .await
            .with_context(|| format!("dataset {name}"))?;
            format!("; {}", w.said())
        }
        Server::Postgres(_) => String::new(),
        Server::Redis(_) => "; the server loads its dump.rdb".into(),
    };
    Ok(format!(
        "no member's server answers ({}): restored snapshot {} (taken {} s before) from {}, {}{replayed}",
        member_roles(answers, name),
        r.snapshot.id.get(..8).unwrap_or(&r.snapshot.id),
        age_ms / 1000,
        r.url,
        mb(r.bytes),
    ))
}

fn member_roles(answers: &[Status], dataset: &str) -> String {
    let Some(d) = answers
        .first()
        .and_then(|l| l.datasets.iter().find(|d| d.name == dataset))
    else {
        return "unknown to the leader".into();
    };
    d.members
        .iter()
        .map(|m| {
            // Each member as its own site tells it (another site sees only what it asks).
            let own = answers
                .iter()
                .find(|a| a.site == m.site)
                .and_then(|a| a.datasets.iter().find(|x| x.name == dataset))
                .and_then(|x| x.members.iter().find(|y| y.site == m.site))
                .map(|y| y.role.clone());
            format!("{} {}", m.site, own.unwrap_or_else(|| "silent".to_string()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Step 3 for one `path:` backup.
fn restore_path(
    b: &outlast_core::config::Backup,
    path: &Path,
    site: &str,
) -> anyhow::Result<String> {
    let repos: Vec<&BackupRepo> = b.repos.iter().collect();
    let mine = Pick {
        host: Some(site.to_string()),
        ..Pick::default()
    };
    if path.exists() {
        // restore_from wants a new or empty directory; an empty one is removed so the
        // restore makes it with the snapshot's mode.
        std::fs::remove_dir(path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    let r = match restore_from(b, &repos, &mine, path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("no snapshot of {site}'s own ({e}); taking the newest of any site");
            restore_from(b, &repos, &Pick::default(), path)?
        }
    };
    let age_ms = (outlast_core::clock::unix_ms() as i64).saturating_sub(r.snapshot.time_ms);
    Ok(format!(
        "restored {} from snapshot {} of {} (taken {} s before) from {}, {}",
        path.display(),
        r.snapshot.id.get(..8).unwrap_or(&r.snapshot.id),
        r.snapshot.host,
        age_ms / 1000,
        r.url,
        mb(r.bytes)
    ))
}

/// Waits (polling the agent's own status) until the site follows the leader at the epoch
/// the cluster was in and every member here streams from the primary or is it.
async fn rejoin(
    client: &reqwest::Client,
    api: &str,
    leader: &Status,
    servers: &[Server],
    shutdown: &CancellationToken,
) -> Option<String> {
    let until = tokio::time::Instant::now() + REJOIN_WAIT;
    while tokio::time::Instant::now() < until && !shutdown.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(resp) = client.get(format!("http://{api}/v1/status")).send().await else {
            continue;
        };
        let Ok(st) = resp.json::<Status>().await else {
            continue;
        };
        let Some(now_leader) = st.leader.clone() else {
            continue;
        };
        if st.epoch < leader.epoch {
            continue;
        }
        let mut said = vec![format!("following {now_leader} at epoch {}", st.epoch)];
        let mut all = true;
        for s in servers {
            let role = st
                .datasets
                .iter()
                .find(|d| d.name == s.dataset())
                .and_then(|d| d.members.iter().find(|m| m.site == st.site))
                .map(|m| (m.role.clone(), m.lag_bytes));
            match role {
                Some((r, lag)) if r == "standby" || r == "primary" => said.push(format!(
                    "{} {r}{}",
                    s.dataset(),
                    lag.map(|l| format!(", {l} bytes behind"))
                        .unwrap_or_default()
                )),
                _ => all = false,
            }
        }
        if all {
            return Some(said.join("; "));
        }
    }
    None
}

/// The bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
