//! `outlast check` and `outlast status`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use outlast_core::{Config, ConfigError};

/// Exit status for an invalid config (EX_DATAERR would be 65; we follow the design: 64).
pub const EXIT_CONFIG: i32 = 64;

/// Loads a config, printing every problem to stderr; `Err` carries the exit status.
pub fn load_config(path: &Path) -> Result<Config, i32> {
    match Config::load(path) {
        Ok(c) => Ok(c),
        Err(e @ ConfigError::Read { .. }) => {
            eprintln!("{e}");
            Err(EXIT_CONFIG)
        }
        Err(ConfigError::Invalid(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "{} in {}; nothing was started",
                count(problems.len(), "problem", "problems"),
                path.display()
            );
            Err(EXIT_CONFIG)
        }
    }
}

/// "1 problem", "2 problems".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `outlast check`: 0 when valid, 64 with every problem listed when not. With `rtt`, also
/// what the timing means at that round trip (64 when it cannot work at it).
pub fn check(path: &Path, rtt: Option<std::time::Duration>) -> i32 {
    match load_config(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            if !check_certificates(&c) {
                return EXIT_CONFIG;
            }
            let witnesses = c.sites.iter().filter(|s| s.witness).count();
            println!(
                "{}: ok: cluster {}, {} ({} witness), quorum {}, {}, {}, {}{}",
                path.display(),
                c.cluster.name,
                count(c.sites.len(), "site", "sites"),
                witnesses,
                c.quorum(),
                count(c.services.len(), "service", "services"),
                count(c.streams.len(), "stream", "streams"),
                count(c.alerts.len(), "alert target", "alert targets"),
                if c.warnings.is_empty() {
                    String::new()
                } else {
                    format!("; {}", count(c.warnings.len(), "warning", "warnings"))
                }
            );
            match rtt.map(|r| c.timing.at(r)) {
                Some(at) => {
                    for line in at.lines(&c.timing) {
                        println!("{line}");
                    }
                    if at.fails.is_some() {
                        EXIT_CONFIG
                    } else {
                        0
                    }
                }
                None => 0,
            }
        }
        Err(code) => code,
    }
}

/// Where a command finds an agent's API: `--api`; else the sites of `--config` (only
/// `--site`, when given) in config order; else 127.0.0.1:7401 and then the sites of
/// `./outlast.toml` or `examples/local.toml`, whichever exists. The first that answers
/// is used.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ApiTarget {
    /// An agent's API, e.g. http://127.0.0.11:7401.
    #[arg(long, env = "OUTLAST_API")]
    pub api: Option<String>,
    /// A config whose sites are tried in order until one answers.
    #[arg(long, env = "OUTLAST_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// With --config: ask this site's agent only.
    #[arg(long, requires = "config")]
    pub site: Option<String>,
    /// A PEM CA certificate to trust for an https:// API (the cluster's tls/ca.pem).
    #[arg(long, env = "OUTLAST_CA")]
    pub ca: Option<std::path::PathBuf>,
}

impl ApiTarget {
    /// The API base URLs to try, in order.
    pub fn candidates(&self) -> anyhow::Result<Vec<String>> {
        if let Some(api) = &self.api {
            let api = api.trim_end_matches('/');
            return Ok(vec![if api.contains("://") {
                api.to_string()
            } else {
                format!("http://{api}")
            }]);
        }
        let of = |c: &Config| -> Vec<String> {
            let scheme = if c.api.tls.is_some() { "https" } else { "http" };
            c.sites
                .iter()
                .filter(|s| self.site.as_ref().is_none_or(|want| *want == s.name))
                .map(|s| format!("{scheme}://{}", s.api_addr()))
                .collect()
        };
        if let Some(path) = &self.config {
            let c = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let out = of(&c);
            if out.is_empty() {
                anyhow::bail!(
                    "site {:?} is not in {}; name one of: {}",
                    self.site.as_deref().unwrap_or(""),
                    path.display(),
                    c.sites
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            return Ok(out);
        }
        let mut out = vec!["http://127.0.0.1:7401".to_string()];
        for path in ["outlast.toml", "examples/local.toml"] {
            if let Ok(c) = Config::load(Path::new(path)) {
                out.extend(of(&c));
                break;
            }
        }
        Ok(out)
    }

    /// A client for the API: trusting `--ca` for https, and sending `OUTLAST_TOKEN` (which
    /// also opens reads under `[api] read_token`), or else `OUTLAST_READ_TOKEN`.
    pub fn client(&self, timeout: Duration) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder().timeout(timeout);
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("cannot read --ca {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("--ca {}: not PEM certificates: {e}", ca.display()))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let token = ["OUTLAST_TOKEN", "OUTLAST_READ_TOKEN"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|t| !t.trim().is_empty()));
        if let Some(t) = token {
            let mut h = reqwest::header::HeaderMap::new();
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot"))?;
            v.set_sensitive(true);
            h.insert(reqwest::header::AUTHORIZATION, v);
            b = b.default_headers(h);
        }
        Ok(b.build()?)
    }

    /// The first candidate whose agent answers `/v1/status`.
    pub async fn resolve(&self) -> anyhow::Result<String> {
        let candidates = self.candidates()?;
        let client = self.client(Duration::from_millis(1500))?;
        let mut why = Vec::new();
        for base in &candidates {
            match client.get(format!("{base}/v1/status")).send().await {
                Ok(r) if r.status().is_success() => return Ok(base.clone()),
                Ok(r) => why.push(format!("{base} answered {}", r.status())),
                Err(e) => why.push(format!("{base}: {e}")),
            }
        }
        anyhow::bail!(
            "no agent answered ({}); is one running? Name it with --api URL, or --config FILE [--site NAME]",
            why.join("; ")
        )
    }
}

/// `outlast status`: fetches `/v1/status` and prints it as tables (or raw JSON).
pub async fn status(target: &ApiTarget, json: bool) -> anyhow::Result<()> {
    let api = target.resolve().await?;
    let url = format!("{}/v1/status", api.trim_end_matches('/'));
    let client = target.client(Duration::from_secs(5))?;
    let resp = client.get(&url).send().await.map_err(|e| {
        anyhow::anyhow!("cannot reach {url}: {e}; is the agent running? (--api URL)")
    })?;
    if !resp.status().is_success() {
        anyhow::bail!("{url} answered {}", resp.status());
    }
    let text = resp.text().await?;
    let st: outlast_web::Status = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{url} did not answer a status: {e}"))?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&st)?)?;
        return Ok(());
    }
    write!(out, "{}", render_status(&st))?;
    Ok(())
}

/// `outlast dns explain`: what a site's DNS answers NAME for a client, and why.
pub async fn dns_explain(
    target: &ApiTarget,
    name: &str,
    client: &str,
    json: bool,
) -> anyhow::Result<()> {
    let api = target.resolve().await?;
    let url = format!("{}/v1/dns/explain", api.trim_end_matches('/'));
    let http = target.client(Duration::from_secs(5))?;
    let resp = http
        .get(&url)
        .query(&[("name", name), ("client", client)])
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot reach {url}: {e}; is the agent running? (--api URL)")
        })?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}: {}", text.trim());
    }
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{url} did not answer JSON: {e}"))?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let answer: Vec<&str> = v["answer"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    writeln!(
        out,
        "{} for {}: {} {} (scope /{})",
        v["name"].as_str().unwrap_or(name),
        client,
        v["rcode"].as_str().unwrap_or("?"),
        if answer.is_empty() {
            "-".to_string()
        } else {
            answer.join(", ")
        },
        v["scope"]
    )?;
    writeln!(out, "  {}", v["reason"].as_str().unwrap_or(""))?;
    Ok(())
}

/// The token a mutation sends: `--token-file`, else `OUTLAST_TOKEN`, else the config's own
/// `[api] token` / `token_file` when the command was given `--config`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TokenArg {
    /// A file holding the API token (`[api] token`); else OUTLAST_TOKEN, else the token the
    /// --config file names.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
}

impl TokenArg {
    /// The token for a command aimed at `target` (its `--config`, if any, is read last).
    pub fn token_for(&self, target: &ApiTarget) -> anyhow::Result<String> {
        match (self.token(), &target.config) {
            (Ok(t), _) => Ok(t),
            (Err(e), None) => Err(e),
            (Err(_), Some(path)) => {
                let c = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
                c.api.token.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
                    anyhow::anyhow!(
                        "this needs the API token: {} has no [api] token or token_file; set OUTLAST_TOKEN or pass --token-file FILE",
                        path.display()
                    )
                })
            }
        }
    }

    pub fn token(&self) -> anyhow::Result<String> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let t = text.trim();
            if t.is_empty() {
                anyhow::bail!("{} is empty; put the [api] token in it", path.display());
            }
            return Ok(t.to_string());
        }
        match std::env::var("OUTLAST_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            _ => anyhow::bail!(
                "this needs the API token: set OUTLAST_TOKEN or pass --token-file FILE"
            ),
        }
    }
}

/// POSTs `body` to `path` with the token; the answer's JSON, or why not (the agent's
/// reason when it refused).
async fn mutate<T: serde::de::DeserializeOwned>(
    target: &ApiTarget,
    auth: &TokenArg,
    path: &str,
    body: &impl serde::Serialize,
) -> anyhow::Result<T> {
    let token = auth.token_for(target)?;
    let api = target.resolve().await?;
    let url = format!("{}{path}", api.trim_end_matches('/'));
    // The agent answers once the move is done: its own bound is under two minutes.
    let client = target.client(Duration::from_secs(120))?;
    let resp = client
        .post(&url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let code = resp.status();
    let text = resp.text().await?;
    if !code.is_success() {
        let why = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        anyhow::bail!("{url} answered {code}: {}", why.trim());
    }
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{url} answered something else: {e}"))
}

fn said_move(m: &outlast_web::MoveAnswer) -> String {
    format!(
        "{}{}: {} -> {} (epoch {}), writes held {} ms",
        m.service,
        m.dataset
            .as_ref()
            .map(|d| format!(" (dataset {d})"))
            .unwrap_or_default(),
        m.from.as_deref().unwrap_or("none"),
        m.to,
        m.epoch,
        m.held_ms
    )
}

/// `outlast switchover`: moves a primary, planned; prints what moved.
pub async fn switchover(
    target: &ApiTarget,
    auth: &TokenArg,
    req: outlast_web::SwitchoverRequest,
) -> anyhow::Result<()> {
    let m: outlast_web::MoveAnswer = mutate(target, auth, "/v1/switchover", &req).await?;
    println!("{}", said_move(&m));
    Ok(())
}

/// `outlast maintenance`: a site in or out of maintenance; prints what moved away.
pub async fn maintenance(
    target: &ApiTarget,
    auth: &TokenArg,
    req: outlast_web::MaintenanceRequest,
) -> anyhow::Result<()> {
    let a: outlast_web::MaintenanceAnswer = mutate(target, auth, "/v1/maintenance", &req).await?;
    println!(
        "{} is {} maintenance (epoch {})",
        a.site,
        if a.on { "in" } else { "out of" },
        a.epoch
    );
    for m in &a.moved {
        println!("  moved {}", said_move(m));
    }
    Ok(())
}

/// `outlast incident open|update`: prints the incident as committed.
pub async fn incident(
    target: &ApiTarget,
    auth: &TokenArg,
    id: Option<u64>,
    req: outlast_core::status::IncidentRequest,
) -> anyhow::Result<()> {
    req.check(id.is_none()).map_err(|e| anyhow::anyhow!(e))?;
    let path = match id {
        Some(id) => format!("/v1/incidents/{id}"),
        None => "/v1/incidents".to_string(),
    };
    let i: outlast_core::incident::Incident = mutate(target, auth, &path, &req).await?;
    print!("{}", said_incident(&i));
    Ok(())
}

/// `outlast incident list`.
pub async fn incidents(target: &ApiTarget) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct All {
        incidents: Vec<outlast_core::incident::Incident>,
    }
    let api = target.resolve().await?;
    let url = format!("{}/v1/incidents", api.trim_end_matches('/'));
    let client = target.client(Duration::from_secs(10))?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let code = resp.status();
    let text = resp.text().await?;
    if !code.is_success() {
        anyhow::bail!("{url} answered {code}: {}", text.trim());
    }
    let all: All = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{url} answered something else: {e}"))?;
    if all.incidents.is_empty() {
        println!("no incidents recorded");
    }
    for i in &all.incidents {
        print!("{}", said_incident(i));
    }
    Ok(())
}

fn said_incident(i: &outlast_core::incident::Incident) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "#{} {} [{}, impact {}] since {}\n",
        i.id,
        i.title,
        i.status.word(),
        i.impact.word(),
        outlast_core::clock::rfc3339(i.started_ms as i64)
    );
    for u in i.updates.iter().rev() {
        let _ = writeln!(
            s,
            "  {} {:<13} {}{}",
            outlast_core::clock::rfc3339(u.at_ms as i64),
            u.status.word(),
            u.body,
            u.by.as_ref().map(|b| format!(" ({b})")).unwrap_or_default()
        );
    }
    s
}

/// `outlast events send`: posts NDJSON and prints the acknowledgement.
pub async fn events_send(target: &ApiTarget, stream: &str, file: &str) -> anyhow::Result<()> {
    let body = if file == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))?
    };
    let api = target.resolve().await?;
    let url = format!("{}/v1/streams/{stream}/events", api.trim_end_matches('/'));
    let client = target.client(Duration::from_secs(30))?;
    let mut post = client.post(&url);
    // A stream whose ingest wants the token ([api] ingest = "token").
    if let Some(token) = std::env::var("OUTLAST_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        post = post.bearer_auth(token.trim());
    }
    let resp = post
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot reach {url}: {e}; is the agent running? (--api URL)")
        })?;
    let code = resp.status();
    let text = resp.text().await?;
    if !code.is_success() {
        anyhow::bail!("{url} answered {code}: {}", text.trim());
    }
    println!("{}", text.trim());
    Ok(())
}

/// `outlast events tail`: prints `{"seq":N,"event":{...}}` lines.
pub async fn events_tail(
    target: &ApiTarget,
    stream: &str,
    from: u64,
    follow: bool,
) -> anyhow::Result<()> {
    let api = target.resolve().await?;
    let client = target.client(Duration::from_secs(10))?;
    let mut next = from;
    loop {
        let url = format!(
            "{}/v1/streams/{stream}/events?from={next}",
            api.trim_end_matches('/')
        );
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
        let code = resp.status();
        let text = resp.text().await?;
        if !code.is_success() {
            anyhow::bail!("{url} answered {code}: {}", text.trim());
        }
        let mut out = std::io::stdout().lock();
        for line in text.lines() {
            writeln!(out, "{line}")?;
            let seq = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["seq"].as_u64());
            if let Some(seq) = seq {
                next = next.max(seq + 1);
            }
        }
        drop(out);
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn render_status(st: &outlast_web::Status) -> String {
    let mut s = format!(
        "cluster {}  (answered by {}, leader {}, term {}, epoch {})\n\n",
        st.cluster,
        st.site,
        st.leader.as_deref().unwrap_or("none"),
        st.term,
        st.epoch
    );
    s.push_str(&format!(
        "{:<14} {:<12} {:<8} {}\n",
        "SITE", "STATE", "WITNESS", "LAST SEEN"
    ));
    for site in &st.sites {
        s.push_str(&format!(
            "{:<14} {:<12} {:<8} {}\n",
            site.name,
            site.state,
            if site.witness { "yes" } else { "" },
            site.last_seen_ms
                .map(|m| format!("{m} ms ago"))
                .unwrap_or_else(|| "never".into())
        ));
    }
    s.push_str(&format!(
        "\n{:<14} {:<16} {:<10} {:<8} {:<8} {}\n",
        "SERVICE", "MODE", "PRIMARY", "ACTING", "EPOCH", "ACTIVE AT"
    ));
    for svc in &st.services {
        s.push_str(&format!(
            "{:<14} {:<16} {:<10} {:<8} {:<8} {}\n",
            svc.name,
            svc.mode,
            svc.primary.as_deref().unwrap_or("-"),
            if svc.primary.is_none() {
                "-"
            } else if svc.primary_acting {
                "yes"
            } else {
                "no"
            },
            svc.epoch,
            svc.active_sites.join(", ")
        ));
    }
    if !st.streams.is_empty() {
        let rows: Vec<Vec<String>> = st.streams.iter().map(|x| x.cells().to_vec()).collect();
        s.push('\n');
        s.push_str(&table(&outlast_web::StreamStatus::HEADINGS, &rows));
    }
    if !st.datasets.is_empty() {
        let mut rows = Vec::new();
        for d in &st.datasets {
            for (i, m) in d.members.iter().enumerate() {
                let first = i == 0;
                rows.push(vec![
                    if first { d.name.clone() } else { String::new() },
                    if first {
                        format!("{} {}", d.kind, d.replication)
                    } else {
                        String::new()
                    },
                    m.site.clone(),
                    m.role.clone(),
                    m.lsn.clone().unwrap_or_else(|| "-".into()),
                    match (m.lag_bytes, m.lag_ms) {
                        (Some(b), Some(ms)) => format!("{b} B, {ms} ms"),
                        (Some(b), None) => format!("{b} B"),
                        (None, Some(ms)) => format!("{ms} ms"),
                        (None, None) => "-".into(),
                    },
                    m.sync.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
        }
        s.push('\n');
        s.push_str(&table(
            &["DATASET", "KIND", "MEMBER", "ROLE", "LSN", "LAG", "SYNC"],
            &rows,
        ));
    }
    if !st.backups.is_empty() {
        let now = outlast_core::clock::unix_ms();
        let ago = |at: u64| outlast_core::duration::human_ms(now.saturating_sub(at));
        let rows: Vec<Vec<String>> = st
            .backups
            .iter()
            .map(|b| {
                vec![
                    b.name.clone(),
                    b.source.clone(),
                    if b.takes { "yes" } else { "no" }.into(),
                    b.last_ok.as_ref().map_or("never".into(), |r| {
                        format!("{} ago, {:.1} MB", ago(r.at_ms), r.bytes as f64 / 1e6)
                    }),
                    b.verify_ok.as_ref().map_or("never".into(), |v| {
                        format!(
                            "{} ago, restored in {}",
                            ago(v.at_ms),
                            outlast_core::duration::human_ms(v.restore_ms)
                        )
                    }),
                    b.problem.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        s.push('\n');
        s.push_str(&table(
            &[
                "BACKUP",
                "SOURCE",
                "TAKEN HERE",
                "LAST SNAPSHOT",
                "LAST VERIFIED RESTORE",
                "PROBLEM",
            ],
            &rows,
        ));
    }
    s
}

/// Columns padded to their widest cell, two spaces apart, a heading row first.
fn table(heads: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = heads.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let heads: Vec<String> = heads.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&heads).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// With `[tls]` certificate files: each site's certificate that is on this machine must
/// load, chain to the CA and name its site (the CA must load). A site's files may be
/// missing here: each machine holds its own site's key only. False when any is wrong.
fn check_certificates(c: &Config) -> bool {
    let outlast_core::config::PeerTls::Certificates(f) = &c.tls else {
        return true;
    };
    let Some(ca) = f.ca.clone() else { return true };
    if let Err(e) = outlast_web::tls::read_certs(&ca) {
        eprintln!("{}: [tls] ca: {e}", c.path.display());
        return false;
    }
    let mut ok = true;
    let soon = outlast_core::clock::unix_ms() / 1000 + 30 * 86_400;
    for site in &c.sites {
        let (cert, key) = f.cert_for(&site.name);
        if !cert.exists() && !key.exists() {
            eprintln!(
                "note: no certificate for site {} here ({}): fine on a machine that runs another site; `outlast certs --config {}` makes them",
                site.name,
                cert.display(),
                c.path.display()
            );
            continue;
        }
        let files = outlast_web::tls::Files {
            ca: ca.clone(),
            cert,
            key,
        };
        match outlast_web::tls::PeerTls::new(outlast_web::tls::PeerTrust::Files(files), &site.name)
        {
            Ok(t) => {
                if let Some(end) = t.view().not_after {
                    let left = t.not_after_secs();
                    if left.is_some_and(|l| (l as u64) < soon) {
                        eprintln!(
                            "warning: the certificate of site {} ends {end}: renew it (outlast certs --config {} --renew {})",
                            site.name,
                            c.path.display(),
                            site.name
                        );
                    }
                }
            }
            Err(e) => {
                eprintln!("{}: [tls] site {}: {e}", c.path.display(), site.name);
                ok = false;
            }
        }
    }
    ok
}

/// `outlast certs`.
pub fn certs(config: &Path, dir: Option<std::path::PathBuf>, renew: &[String], days: u32) -> i32 {
    let c = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let base = config.parent().unwrap_or(Path::new("."));
    let dir = dir.unwrap_or_else(|| base.join("tls"));
    match crate::init::certs(&c, &dir, renew, days) {
        Ok(done) => {
            for d in &done {
                println!("{d}");
            }
            if done.is_empty() {
                println!(
                    "every site has a certificate in {}; --renew SITE makes a new one",
                    dir.display()
                );
            }
            if !matches!(c.tls, outlast_core::config::PeerTls::Certificates(_)) {
                let rel = dir.strip_prefix(base).unwrap_or(&dir);
                println!(
                    "\nadd to {}:\n[tls]\nca = \"{r}/ca.pem\"\ncert = \"{r}/{{site}}.pem\"\nkey = \"{r}/{{site}}.key\"",
                    config.display(),
                    r = rel.display()
                );
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Writes `bytes` to stdout: 0, or 1 on a write error. A reader that went away (`outlast
/// completions bash | head -1`) is not an error: exit quietly.
pub fn emit(bytes: &[u8]) -> i32 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: cannot write: {e}");
            1
        }
    }
}

/// `cmd` as man pages show it: without clap's `help` commands (every page's `--help` says
/// the same), so a page names only pages that exist.
pub fn for_man(cmd: clap::Command) -> clap::Command {
    let names: Vec<&'static str> = cmd
        .get_subcommands()
        .map(|s| &*Box::leak(s.get_name().to_string().into_boxed_str()))
        .collect();
    let mut cmd = cmd.disable_help_subcommand(true);
    for name in names {
        cmd = cmd.mut_subcommand(name, for_man);
    }
    cmd
}

/// `outlast man --dir DIR`: outlast.1 and a page per command, nested ones included
/// (outlast-backup-run.1), each named as the pages above it refer to it.
pub fn man_pages(cmd: clap::Command, dir: &std::path::Path) -> i32 {
    fn write_all(
        cmd: clap::Command,
        name: String,
        dir: &std::path::Path,
        n: &mut usize,
    ) -> Result<(), String> {
        // clap names are &'static str without its "string" feature; this command ends soon.
        let page = cmd.clone().name(&*Box::leak(name.clone().into_boxed_str()));
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .map_err(|e| format!("cannot render {name}.1: {e}"))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        *n += 1;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write_all(sub.clone(), format!("{name}-{}", sub.get_name()), dir, n)?;
        }
        Ok(())
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return 1;
    }
    let cmd = for_man(cmd);
    let mut n = 0;
    match write_all(cmd, "outlast".into(), dir, &mut n) {
        Ok(()) => {
            println!("{n} man pages in {}", dir.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream table lines its columns up under their headings, however long a cell.
    #[test]
    fn status_shows_streams_in_columns() {
        let st: outlast_web::Status = serde_json::from_value(serde_json::json!({
            "cluster": "shop", "site": "west", "leader": null, "term": 1, "epoch": 1,
            "sites": [], "services": [],
            "streams": [
                {"name": "clicks", "spool_events": 0, "spool_bytes": 0,
                 "oldest_unshipped_ms": null, "sink": "s3://a-long-bucket-name/raw"},
                {"name": "conversions-of-the-autumn-sale", "spool_events": 5,
                 "spool_bytes": 2048, "oldest_unshipped_ms": 900, "sink": null,
                 "replicas": {"east": 5}}
            ]
        }))
        .expect("a status");
        let text = render_status(&st);
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("STREAM"))
            .collect();
        assert_eq!(table.len(), 3, "{text}");
        let sink_at = table[0].find("SINK").expect("heading");
        assert_eq!(
            table[1].find("s3://a-long-bucket-name/raw"),
            Some(sink_at),
            "{text}"
        );
        assert_eq!(table[2].get(sink_at..sink_at + 1), Some("-"), "{text}");
        assert!(
            table[2].contains("5 (2.0 KiB)") && table[2].contains("0.9 s"),
            "{text}"
        );
        let cells: Vec<&str> = table[2]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells.len(), 9, "{text}");
        assert_eq!(cells[7..], ["east: 5", "-"], "{text}");
    }

    /// Datasets and backups have their own tables: one row per member, one per backup.
    #[test]
    fn status_shows_datasets_and_backups() {
        let st: outlast_web::Status = serde_json::from_value(serde_json::json!({
            "cluster": "shop", "site": "west", "leader": "west", "term": 1, "epoch": 1,
            "sites": [], "services": [], "streams": [],
            "datasets": [{"name": "orders", "kind": "postgres", "replication": "sync",
                "epoch": 2, "diverged": [],
                "members": [
                    {"site": "west", "role": "primary", "lsn": "0/3000060"},
                    {"site": "east", "role": "standby", "lsn": "0/3000060",
                     "lag_bytes": 0, "lag_ms": 12, "sync": "sync"}]}],
            "backups": [{"name": "nightly", "source": "dataset:orders", "takes": true,
                "every_ms": 3600000, "verify_every_ms": 86400000,
                "problem": "verify failed: MAC check failed"}]
        }))
        .expect("a status");
        let text = render_status(&st);
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("DATASET"))
            .collect();
        assert!(
            rows[1].starts_with("orders") && rows[1].contains("primary"),
            "{text}"
        );
        assert!(
            rows[2].trim_start().starts_with("east") && rows[2].contains("0 B, 12 ms"),
            "{text}"
        );
        let backup = text
            .lines()
            .find(|l| l.starts_with("nightly"))
            .expect(&text);
        assert!(
            backup.contains("yes") && backup.contains("never") && backup.contains("MAC check"),
            "{text}"
        );
    }
}
