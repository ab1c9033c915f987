//! Local mode: the drill starts the config's sites on this machine, owns their processes,
//! injects the faults, drives the workload and records every outcome with its time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{agent, create, io, DrillError, Result};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use indicatif::{ProgressBar, ProgressStyle};
use outlast_core::clock::unix_ms;
use outlast_core::config::{Config, DatasetKind, Mode};
use outlast_core::status::Status;
use serde_json::{json, Value};

use crate::proxy::{Endpoint, FaultProxy};
use crate::report::{self, FaultAt, Recording, Report, RequestOutcome};
use crate::scenario::{DelayLinks, Fault, Scenario};

pub struct DrillOptions {
    pub config: PathBuf,
    pub scenario: PathBuf,
    /// Where report.json and index.html go (also kept under the data dir's `drills/`).
    pub report: Option<PathBuf>,
    /// The outlast executable to start agents with.
    pub bin: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
    /// Drill a cluster that is already running: faults go to the agents' `/v1/faults`.
    pub attach: bool,
    /// Where drills are kept for the trend (default: `drills/` beside the first site's
    /// data folder).
    pub history: Option<PathBuf>,
}

/// When, who was the service's primary, and whether it acted.
type PrimarySeen = (u64, Option<String>, bool);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The agents this drill started, by site (local mode).
struct Sites {
    bin: PathBuf,
    config: PathBuf,
    logs: PathBuf,
    children: BTreeMap<String, Child>,
    stopped: BTreeSet<String>,
    /// On every link between two sites: partitions and delays.
    proxy: FaultProxy,
    /// Per site, the data dirs of its dataset members (a site loss takes their servers).
    data_dirs: BTreeMap<String, Vec<PathBuf>>,
    /// Per site, what a `wipe` deletes: its data dir, its members' data dirs and their WAL
    /// spools.
    wipe_dirs: BTreeMap<String, Vec<PathBuf>>,
    /// Each `rebuild` started: the site and where it writes its stopwatch.
    rebuilds: Vec<(String, PathBuf)>,
    /// The token the agents take on `/v1/faults` (for sink faults).
    token: String,
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map_err(io("cannot run kill"))?
        .success();
    if !ok {
        return Err(DrillError::Refused(format!("kill {sig} {pid} failed")));
    }
    Ok(())
}

impl Sites {
    fn start(&mut self, site: &str) -> Result<()> {
        self.start_as(site, &["agent"])
    }

    /// `outlast rebuild` of the site, which goes on as its agent; its stopwatch goes to
    /// `logs/rebuild-SITE-N.json`.
    fn start_rebuild(&mut self, site: &str) -> Result<()> {
        let n = self.rebuilds.iter().filter(|(s, _)| s == site).count();
        let json = self.logs.join(format!("rebuild-{site}-{n}.json"));
        let text = json.to_string_lossy().to_string();
        self.start_as(site, &["rebuild", "--steps-json", &text])?;
        self.rebuilds.push((site.to_string(), json));
        Ok(())
    }

    fn start_as(&mut self, site: &str, command: &[&str]) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{site}.log")))
            .map_err(io(format!("cannot open the agent log of {site}")))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(command)
            .arg("--config")
            .arg(&self.config)
            .args(["--site", site]);
        for (to, via) in self.proxy.dial_map(site) {
            cmd.arg("--peer-via").arg(format!("{to}={via}"));
        }
        // `rebuild` takes no --dataset-via: a rebuilt site streams over the direct link.
        if command.first() == Some(&"agent") {
            for (dataset, to, via) in self.proxy.dataset_dial_map(site) {
                cmd.arg("--dataset-via")
                    .arg(format!("{dataset}/{to}={via}"));
            }
        }
        let child = cmd
            .env(
                "OUTLAST_LOG",
                "info,openraft=warn,rustic_core=warn,opendal=error",
            )
            .env("OUTLAST_FAULT_TOKEN", &self.token)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("cannot share the agent log"))?)
            .stderr(log)
            .spawn()
            .map_err(|e| agent(site, format!("cannot start its agent: {e}")))?;
        self.children.insert(site.to_string(), child);
        Ok(())
    }

    fn kill(&mut self, site: &str) {
        if let Some(mut c) = self.children.remove(site) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stopped.remove(site);
    }

    /// SIGKILL of the site's dataset servers (PostgreSQL's postmasters and Redis servers, by
    /// the pid file in each member's data dir): with its agent, the whole site is gone.
    fn kill_servers(&self, site: &str) {
        for dir in self.data_dirs.get(site).into_iter().flatten() {
            let killed = outlast_db::signal_postmaster(dir, "-KILL")
                .and_then(|_| outlast_db::redis::signal_server(dir, "-KILL"));
            if let Err(e) = killed {
                tracing::warn!(site, dir = %dir.display(), error = %e, "could not kill a dataset server");
            }
        }
    }

    fn pid(&self, site: &str) -> Result<u32> {
        self.children
            .get(site)
            .map(|c| c.id())
            .ok_or_else(|| agent(site, "is not running"))
    }

    /// The faults that act on processes and links; sink faults go through the agents' API.
    fn apply(&mut self, fault: &Fault) -> Result<()> {
        match fault {
            Fault::Kill(s) => {
                self.kill(s);
                self.kill_servers(s);
            }
            Fault::Stop(s) => {
                signal(self.pid(s)?, "-STOP")?;
                self.stopped.insert(s.clone());
            }
            Fault::Cont(s) => {
                signal(self.pid(s)?, "-CONT")?;
                self.stopped.remove(s);
            }
            Fault::Restart(s) => {
                self.kill(s);
                self.start(s)?;
            }
            Fault::Wipe(s) => {
                self.kill(s);
                self.kill_servers(s);
                for dir in self.wipe_dirs.get(s).into_iter().flatten() {
                    if dir.exists() {
                        std::fs::remove_dir_all(dir)
                            .map_err(io(format!("cannot wipe {}", dir.display())))?;
                    }
                }
            }
            Fault::Rebuild(s) => {
                self.kill(s);
                self.start_rebuild(s)?;
            }
            Fault::Partition { sites, from } => self.proxy.between(sites, from, |l| l.cut = true),
            Fault::Delay {
                links,
                ms,
                jitter_ms,
                loss_ppm,
                bandwidth_bps,
            } => {
                let set = |l: &mut crate::proxy::LinkState| {
                    l.delay_ms = *ms;
                    l.jitter_ms = *jitter_ms;
                    l.loss_ppm = *loss_ppm;
                    l.bandwidth_bps = *bandwidth_bps;
                };
                match links {
                    DelayLinks::Site(site) => self.proxy.around(site, set),
                    DelayLinks::Between { sites, from } => self.proxy.between(sites, from, set),
                    DelayLinks::All => self.proxy.all(set),
                }
            }
            Fault::Heal => self.proxy.heal(),
            Fault::SinkDown(_) | Fault::SinkUp(_) | Fault::DepDown { .. } | Fault::DepUp { .. } => {
            }
        }
        Ok(())
    }

    /// Stops everything: CONT what was stopped, SIGTERM, then SIGKILL after 5 s.
    // Blocking on purpose: it runs when the workload is over, and from Drop.
    #[allow(clippy::disallowed_methods)]
    fn stop_all(&mut self) {
        self.proxy.heal();
        for s in std::mem::take(&mut self.stopped) {
            if let Ok(pid) = self.pid(&s) {
                let _ = signal(pid, "-CONT");
            }
        }
        for c in self.children.values() {
            let _ = signal(c.id(), "-TERM");
        }
        let deadline = outlast_core::clock::now() + Duration::from_secs(5);
        for (_, mut c) in std::mem::take(&mut self.children) {
            while outlast_core::clock::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// What a fault sent to `/v1/faults` is undone by.
#[derive(Debug, Clone, PartialEq)]
enum Undo {
    Heal,
    Sink(Option<String>),
    /// A dependency's fault at a site.
    Dep(String, String),
}

/// Faults sent to the agents' `/v1/faults` (attach mode; sink faults in local mode too).
struct FaultApi {
    http: reqwest::Client,
    token: String,
    apis: BTreeMap<String, SocketAddr>,
    /// (site, fault id, what ends it early).
    active: Vec<(String, u64, Option<Undo>)>,
}

impl FaultApi {
    async fn inject(&mut self, site: &str, body: Value, undo: Option<Undo>) -> Result<()> {
        let api = self
            .apis
            .get(site)
            .ok_or_else(|| agent(site, "is not in the config"))?;
        let r = self
            .http
            .post(format!("http://{api}/v1/faults"))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                agent(
                    site,
                    format!("cannot reach its agent at {api} to inject a fault: {e}"),
                )
            })?;
        let code = r.status();
        let answer: Value = r.json().await.unwrap_or(Value::Null);
        if !code.is_success() {
            return Err(agent(
                site,
                format!("refused the fault ({code}): {}", answer["error"]),
            ));
        }
        if let Some(id) = answer["id"].as_u64() {
            self.active.push((site.to_string(), id, undo));
        }
        Ok(())
    }

    /// Ends early the injected faults that `which` picks (the others end by themselves).
    async fn undo(&mut self, which: impl Fn(&Option<Undo>) -> bool) {
        let (ending, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|(_, _, u)| which(u));
        self.active = keep;
        for (site, id, _) in ending {
            let Some(api) = self.apis.get(&site) else {
                continue;
            };
            let r = self
                .http
                .delete(format!("http://{api}/v1/faults/{id}"))
                .bearer_auth(&self.token)
                .send()
                .await;
            if let Err(e) = r {
                tracing::warn!(site, id, error = %e, "could not end a fault early; it ends by itself");
            }
        }
    }

    /// A sink or dependency fault goes to every data site that runs (or the one it names).
    async fn sink(&mut self, fault: &Fault, sites: &[String], lasting: Duration) -> Result<()> {
        match fault {
            Fault::SinkDown(which) => {
                let body = serde_json::json!({
                    "kind": "sink-down",
                    "site": which,
                    "for_ms": lasting.as_millis() as u64,
                });
                for s in sites {
                    self.inject(s, body.clone(), Some(Undo::Sink(which.clone())))
                        .await?;
                }
            }
            Fault::DepDown {
                dep,
                site,
                endpoint,
            } => {
                let body = serde_json::json!({
                    "kind": "dep-down",
                    "dep": dep,
                    "endpoint": endpoint,
                    "for_ms": lasting.as_millis() as u64,
                });
                for s in sites
                    .iter()
                    .filter(|s| site.as_ref().is_none_or(|x| x == *s))
                {
                    self.inject(s, body.clone(), Some(Undo::Dep(dep.clone(), s.clone())))
                        .await?;
                }
            }
            Fault::DepUp { dep, site } => {
                self.undo(|u| match u {
                    Some(Undo::Dep(d, s)) => d == dep && site.as_ref().is_none_or(|x| x == s),
                    _ => false,
                })
                .await
            }
            Fault::SinkUp(which) => {
                self.undo(|u| match (u, which) {
                    (Some(Undo::Sink(_)), None) => true,
                    (Some(Undo::Sink(x)), Some(w)) => x.as_ref() == Some(w),
                    _ => false,
                })
                .await
            }
            _ => {}
        }
        Ok(())
    }
}

/// How the drill reaches the cluster: its own agents (local) or running ones (attach).
enum Driver {
    Local(Box<Sites>, FaultApi),
    Attach(FaultApi),
}

impl Driver {
    /// Whether the drill should count `site` as running (for draining and reading status).
    fn running(&self, site: &str) -> bool {
        match self {
            Driver::Local(sites, _) => sites.children.contains_key(site),
            Driver::Attach(_) => true,
        }
    }

    /// Carries out one step. `until_cont` is how long a `stop` lasts in attach mode (the
    /// agent cannot be reached while stopped, so its own fault ends it).
    async fn apply(
        &mut self,
        fault: &Fault,
        config: &Config,
        lasting: Duration,
        until_cont: Duration,
    ) -> Result<()> {
        if matches!(
            fault,
            Fault::SinkDown(_) | Fault::SinkUp(_) | Fault::DepDown { .. } | Fault::DepUp { .. }
        ) {
            // Every data site that runs writes to the sinks, so each must see the fault.
            let targets: Vec<String> = config
                .sites
                .iter()
                .filter(|s| !s.witness && self.running(&s.name))
                .map(|s| s.name.clone())
                .collect();
            let api = match self {
                Driver::Local(_, api) | Driver::Attach(api) => api,
            };
            return api.sink(fault, &targets, lasting).await;
        }
        match self {
            Driver::Local(sites, _) => sites.apply(fault),
            Driver::Attach(api) => {
                let ms = |d: Duration| d.as_millis() as u64;
                match fault {
                    Fault::Kill(s) => api.inject(s, json!({"kind": "kill"}), None).await,
                    Fault::Stop(s) => {
                        api.inject(s, json!({"kind": "stop", "for_ms": ms(until_cont)}), None)
                            .await
                    }
                    // The stop sent with the matching `stop` step ends now by itself.
                    Fault::Cont(_) => Ok(()),
                    Fault::Restart(s) | Fault::Wipe(s) | Fault::Rebuild(s) => Err(agent(
                        s,
                        "this fault needs the agent's process and files, which attach mode does not own",
                    )),
                    Fault::Partition { sites, from } => {
                        for (side, other) in [(sites, from), (from, sites)] {
                            for s in side {
                                let body = json!({"kind": "partition", "from": other, "for_ms": ms(lasting)});
                                api.inject(s, body, Some(Undo::Heal)).await?;
                            }
                        }
                        Ok(())
                    }
                    Fault::Delay {
                        links,
                        ms: d,
                        jitter_ms,
                        loss_ppm,
                        bandwidth_bps,
                    } => {
                        if *jitter_ms > 0 || *loss_ppm > 0 || *bandwidth_bps > 0 {
                            return Err(DrillError::Refused(
                                "jitter_ms, loss and bandwidth need local mode (the drill's fault proxy); an attached agent can only add a fixed delay to its calls".into(),
                            ));
                        }
                        // An agent delays the calls it makes; the proxy delays each
                        // direction. Twice the delay on calls gives round trips the same
                        // growth in both modes. Each pair of sites: (caller, callees).
                        let names: Vec<String> = config.sites.iter().map(|x| x.name.clone()).collect();
                        let pairs: Vec<(String, Vec<String>)> = match links {
                            DelayLinks::Site(site) => std::iter::once((site.clone(), names.iter().filter(|x| *x != site).cloned().collect()))
                                .chain(names.iter().filter(|x| *x != site).map(|x| (x.clone(), vec![site.clone()])))
                                .collect(),
                            DelayLinks::Between { sites, from } => sites
                                .iter()
                                .map(|s| (s.clone(), from.clone()))
                                .chain(from.iter().map(|f| (f.clone(), sites.clone())))
                                .collect(),
                            DelayLinks::All => names
                                .iter()
                                .map(|s| (s.clone(), names.iter().filter(|x| *x != s).cloned().collect()))
                                .collect(),
                        };
                        for (site, to) in pairs {
                            let body = json!({"kind": "delay", "ms": d * 2, "to": to, "for_ms": ms(lasting)});
                            api.inject(&site, body, Some(Undo::Heal)).await?;
                        }
                        Ok(())
                    }
                    Fault::Heal => {
                        api.undo(|u| *u == Some(Undo::Heal)).await;
                        Ok(())
                    }
                    Fault::SinkDown(_)
                    | Fault::SinkUp(_)
                    | Fault::DepDown { .. }
                    | Fault::DepUp { .. } => Ok(()),
                }
            }
        }
    }

    /// Undoes what is still in force: heals links, continues stopped agents, ends faults.
    async fn clear(&mut self) {
        match self {
            Driver::Local(sites, api) => {
                sites.proxy.heal();
                for s in sites.stopped.clone() {
                    let _ = sites.apply(&Fault::Cont(s));
                }
                api.undo(|_| true).await;
            }
            Driver::Attach(api) => api.undo(|_| true).await,
        }
    }
}

async fn status(http: &reqwest::Client, api: SocketAddr) -> Option<Status> {
    let r = http
        .get(format!("http://{api}/v1/status"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Asks outlast's DNS (any site that answers) for the service's A records: (ip, ttl).
async fn resolve(servers: &[SocketAddr], name: &Name) -> Option<(Ipv4Addr, u32)> {
    // Like a stub resolver: start with the server that answered last.
    static LAST: AtomicU64 = AtomicU64::new(0);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let first = LAST.load(Ordering::Relaxed) as usize % servers.len().max(1);
    for (i, server) in servers
        .iter()
        .enumerate()
        .cycle()
        .skip(first)
        .take(servers.len())
    {
        let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
        m.add_query(Query::query(name.clone(), RecordType::A));
        let bytes = m.to_vec().ok()?;
        if sock.send_to(&bytes, server).await.is_err() {
            continue;
        }
        let mut buf = [0u8; 1500];
        let got = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await;
        let Ok(Ok((n, _))) = got else { continue };
        let Ok(msg) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let a = msg.answers.iter().find_map(|r| match &r.data {
            RData::A(a) => Some((a.0, r.ttl)),
            _ => None,
        });
        if a.is_some() {
            LAST.store(i as u64, Ordering::Relaxed);
            return a;
        }
    }
    None
}

fn rand_id() -> u16 {
    static N: AtomicU64 = AtomicU64::new(1);
    (N.fetch_add(1, Ordering::Relaxed) % 65_000) as u16 + 1
}

/// Where the workload's requests go: the service's DNS name and gateway port, and the
/// resolved address with its TTL (like a stub resolver's cache).
struct Target {
    servers: Vec<SocketAddr>,
    name: Name,
    port: u16,
    /// A `protocol = "udp"` service: a request is a datagram that must be answered.
    udp: bool,
}

type DnsCache = Mutex<Option<(Ipv4Addr, Instant)>>;

/// One workload request: resolved through outlast's DNS (honouring the TTL), sent to the
/// gateway with its sequence number; whether it succeeded.
async fn request(http: &reqwest::Client, to: &Target, seq: u64, cache: &DnsCache) -> bool {
    let cached = lock(cache).filter(|(_, until)| outlast_core::clock::now() < *until);
    let ip = match cached {
        Some((ip, _)) => Some(ip),
        None => match resolve(&to.servers, &to.name).await {
            Some((ip, ttl)) => {
                *lock(cache) = Some((
                    ip,
                    outlast_core::clock::now() + Duration::from_secs(u64::from(ttl)),
                ));
                Some(ip)
            }
            None => None,
        },
    };
    let ok = match ip {
        Some(ip) if to.udp => udp_request(SocketAddr::new(IpAddr::V4(ip), to.port), seq).await,
        Some(ip) => http
            .get(format!(
                "http://{}/c/{seq}?seq={seq}",
                SocketAddr::new(IpAddr::V4(ip), to.port)
            ))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() < 500),
        None => false,
    };
    if !ok {
        // Like most HTTP clients: a failed connection forgets the address.
        *lock(cache) = None;
    }
    ok
}

/// One datagram to a UDP service from a new client port, on a connected socket as a
/// stub resolver or SIP stack uses (so "port unreachable" fails it at once): sent again
/// once after a second without an answer; answered within two seconds.
async fn udp_request(to: SocketAddr, seq: u64) -> bool {
    let Ok(sock) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        return false;
    };
    if sock.connect(to).await.is_err() {
        return false;
    }
    let msg = format!("drill {seq}");
    let mut buf = [0u8; 2048];
    for _ in 0..2 {
        if sock.send(msg.as_bytes()).await.is_err() {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
            Ok(Ok(n)) => return n > 0,
            Ok(Err(_)) => return false,
            Err(_) => {}
        }
    }
    false
}

/// Where the dataset workload writes: the dataset's service on each data site's gateway,
/// as its users' applications reach it, with the dataset's user.
struct DbTarget {
    gateways: Vec<SocketAddr>,
    kind: DatasetKind,
    user: String,
    password: String,
    database: String,
    /// This drill's rows carry it, so that rows of earlier drills do not count.
    run: i64,
}

/// The drill's table (PostgreSQL), made by its first writer; its keys' prefix (Redis).
const DB_TABLE: &str = "outlast_drill";
/// A real client's patience with a connect or a commit.
const DB_TIMEOUT: Duration = Duration::from_secs(2);

/// One connection of the dataset workload, of the dataset's kind.
enum DbConn {
    Pg(tokio_postgres::Client),
    Redis(outlast_db::resp::Conn),
}

impl DbConn {
    fn is_closed(&self) -> bool {
        match self {
            DbConn::Pg(c) => c.is_closed(),
            // A Redis connection that failed is dropped by the writer.
            DbConn::Redis(_) => false,
        }
    }

    /// Writes row `n` of drill `run` (an INSERT, or a SET of `outlast_drill:RUN:N`);
    /// whether it was acknowledged within [`DB_TIMEOUT`].
    async fn write(&mut self, run: i64, n: u64) -> bool {
        match self {
            DbConn::Pg(c) => {
                let insert = format!(
                    "INSERT INTO {DB_TABLE} (run, n) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                );
                let row = i64::try_from(n).unwrap_or(i64::MAX);
                let done =
                    tokio::time::timeout(DB_TIMEOUT, c.execute(&insert, &[&run, &row])).await;
                matches!(done, Ok(Ok(_)))
            }
            DbConn::Redis(c) => {
                let key = format!("{DB_TABLE}:{run}:{n}");
                c.ok(&["SET", &key, &unix_ms().to_string()]).await.is_ok()
            }
        }
    }
}

impl DbTarget {
    /// A connection through the gateway of data site `at` (a timeout or a refusal: None).
    async fn connect(&self, at: usize) -> Option<DbConn> {
        let gw = self.gateways.get(at % self.gateways.len().max(1))?;
        if self.kind == DatasetKind::Redis {
            let c = outlast_db::resp::Conn::connect(*gw, Some(&self.password), DB_TIMEOUT)
                .await
                .ok()?;
            return Some(DbConn::Redis(c));
        }
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(gw.ip().to_string())
            .port(gw.port())
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.database)
            .connect_timeout(DB_TIMEOUT);
        let (client, conn) = tokio::time::timeout(DB_TIMEOUT, cfg.connect(tokio_postgres::NoTls))
            .await
            .ok()?
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(DbConn::Pg(client))
    }

    /// Makes the drill's table (PostgreSQL) or writes a first key (Redis); whether the
    /// primary took it.
    async fn prepare(&self) -> bool {
        for at in 0..self.gateways.len() {
            let ok = match self.connect(at).await {
                Some(DbConn::Pg(c)) => {
                    let sql = format!(
                        "CREATE TABLE IF NOT EXISTS {DB_TABLE} (run bigint NOT NULL, n bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run, n))"
                    );
                    matches!(
                        tokio::time::timeout(DB_TIMEOUT, c.batch_execute(&sql)).await,
                        Ok(Ok(()))
                    )
                }
                Some(DbConn::Redis(mut c)) => {
                    let key = format!("{DB_TABLE}:{}:ready", self.run);
                    c.ok(&["SET", &key, "1"]).await.is_ok()
                }
                None => false,
            };
            if ok {
                return true;
            }
        }
        false
    }

    /// The numbers of this drill's rows on the primary (None: no gateway answered).
    async fn rows(&self) -> Option<BTreeSet<u64>> {
        for at in 0..self.gateways.len() {
            match self.connect(at).await {
                Some(DbConn::Pg(c)) => {
                    let sql = format!("SELECT n FROM {DB_TABLE} WHERE run = $1");
                    let q =
                        tokio::time::timeout(Duration::from_secs(10), c.query(&sql, &[&self.run]))
                            .await;
                    if let Ok(Ok(rows)) = q {
                        return Some(
                            rows.iter()
                                .filter_map(|r| r.try_get::<_, i64>(0).ok())
                                .filter_map(|n| u64::try_from(n).ok())
                                .collect(),
                        );
                    }
                }
                Some(DbConn::Redis(mut c)) => {
                    let prefix = format!("{DB_TABLE}:{}:", self.run);
                    let pattern = format!("{prefix}*");
                    if let Ok(outlast_db::resp::Reply::Array(Some(keys))) =
                        c.cmd(&["KEYS", &pattern]).await
                    {
                        return Some(
                            keys.iter()
                                .filter_map(|k| k.text())
                                .filter_map(|k| k.strip_prefix(&prefix)?.parse().ok())
                                .collect(),
                        );
                    }
                }
                None => {}
            }
        }
        None
    }
}

/// The dataset workload: one client writing numbered rows at `rate` per second, one at a
/// time, each with a 2 s timeout; on any error it reconnects (to the next data site's
/// gateway when one does not answer) and tries the same number again.
async fn db_writer(
    target: Arc<DbTarget>,
    rate: u64,
    until: Duration,
    t0: Instant,
    out: Arc<Mutex<report::DbRecording>>,
) {
    let now_ms = || t0.elapsed().as_millis() as u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut n, mut at) = (0u64, 0usize);
    let mut client: Option<DbConn> = None;
    while t0.elapsed() < until {
        tick.tick().await;
        let t = now_ms();
        let start = outlast_core::clock::now();
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = target.connect(at).await;
        }
        let ok = match client.as_mut() {
            Some(c) => c.write(target.run, n).await,
            None => false,
        };
        let mut rec = lock(&out);
        rec.commits.push(RequestOutcome {
            t_ms: t,
            ok,
            latency_ms: start.elapsed().as_secs_f64() * 1000.0,
        });
        if ok {
            rec.acked.push((n, now_ms()));
            n += 1;
        } else {
            if client.is_none() {
                at += 1;
            }
            client = None;
        }
    }
}

/// Runs a drill in local mode; returns the report and the folder it was written to.
pub async fn run(opts: &DrillOptions) -> Result<(Report, PathBuf)> {
    let config = Config::load(&opts.config).map_err(|e| DrillError::Invalid(e.to_string()))?;
    let sc = Scenario::load(&opts.scenario, &config)
        .map_err(|problems| DrillError::Invalid(problems.join("\n")))?;
    let started_ms = unix_ms();
    let history_root = opts.history.clone().unwrap_or_else(|| {
        config
            .sites
            .first()
            .and_then(|s| s.data_dir.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("data"))
            .join("drills")
    });
    let stamp = outlast_relay::utc_timestamp(started_ms).replace([':', '-'], "");
    let kept = history_root.join(format!("{stamp}-{}", sc.name));
    let out_dir = opts.report.clone().unwrap_or_else(|| kept.clone());
    std::fs::create_dir_all(out_dir.join("logs")).map_err(create(&out_dir))?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| DrillError::Refused(format!("cannot make an HTTP client: {e}")))?;
    let api_of: BTreeMap<String, SocketAddr> = config
        .sites
        .iter()
        .map(|s| (s.name.clone(), s.api_addr()))
        .collect();
    let mut driver = if opts.attach {
        let token = config.api.token.clone().ok_or_else(|| DrillError::Refused(
            "attach mode sends faults to the agents' /v1/faults, which needs [api] token in the config".into(),
        ))?;
        if let Some(st) = sc.steps.iter().find(|s| {
            matches!(
                s.fault,
                Fault::Restart(_) | Fault::Wipe(_) | Fault::Rebuild(_)
            )
        }) {
            return Err(DrillError::Refused(format!(
                "{} needs the agent's process (and for wipe and rebuild its files), which attach mode does not own; use kill (and let the site's supervisor restart it) or stop and cont, and run outlast rebuild on the site's machine yourself",
                st.fault.describe()
            )));
        }
        Driver::Attach(FaultApi {
            http: http.clone(),
            token,
            apis: api_of.clone(),
            active: Vec::new(),
        })
    } else {
        for s in &config.sites {
            if std::net::TcpListener::bind(s.api_addr()).is_err() {
                return Err(DrillError::Refused(format!(
                    "{} is taken: is a cluster already running? local mode starts its own agents (use --attach to drill a running cluster)",
                    s.api_addr()
                )));
            }
        }
        let endpoints: Vec<Endpoint> = config
            .sites
            .iter()
            .map(|s| Endpoint {
                name: s.name.clone(),
                address: s.address,
                peer: s.peer_addr(),
                datasets: config
                    .datasets
                    .iter()
                    .filter(|d| d.kind == outlast_core::config::DatasetKind::Postgres)
                    .filter(|d| d.members.contains_key(&s.name))
                    .map(|d| (d.name.clone(), SocketAddr::new(s.address, d.port)))
                    .collect(),
            })
            .collect();
        let token = config
            .api
            .token
            .clone()
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        let mut sites = Sites {
            bin: opts.bin.clone(),
            config: opts.config.clone(),
            logs: out_dir.join("logs"),
            children: BTreeMap::new(),
            stopped: BTreeSet::new(),
            proxy: FaultProxy::start(&endpoints).await?,
            data_dirs: config
                .sites
                .iter()
                .map(|site| {
                    let dirs = config
                        .datasets
                        .iter()
                        .filter_map(|d| d.members.get(&site.name).cloned())
                        .collect();
                    (site.name.clone(), dirs)
                })
                .collect(),
            wipe_dirs: config
                .sites
                .iter()
                .map(|site| {
                    let mut dirs = vec![site.data_dir.clone()];
                    for d in config
                        .datasets
                        .iter()
                        .filter_map(|d| d.members.get(&site.name))
                    {
                        dirs.push(d.clone());
                        dirs.push(outlast_db::postgres::WalArchive::spool_for(d));
                    }
                    (site.name.clone(), dirs)
                })
                .collect(),
            rebuilds: Vec::new(),
            token: token.clone(),
        };
        for s in &config.sites {
            sites.start(&s.name)?;
        }
        Driver::Local(
            Box::new(sites),
            FaultApi {
                http: http.clone(),
                token,
                apis: api_of.clone(),
                active: Vec::new(),
            },
        )
    };
    let apis: Vec<(String, SocketAddr)> = config
        .sites
        .iter()
        .map(|s| (s.name.clone(), s.api_addr()))
        .collect();
    let service = sc
        .workload
        .service
        .as_ref()
        .and_then(|n| config.services.iter().find(|s| &s.name == n))
        .cloned();

    let target: Option<Arc<Target>> = match (&service, &config.dns) {
        (Some(svc), Some(dns)) => {
            let host = svc.dns_name.clone().unwrap_or_else(|| svc.name.clone());
            Some(Arc::new(Target {
                servers: config
                    .sites
                    .iter()
                    .map(|s| SocketAddr::new(s.address, dns.port))
                    .collect(),
                name: Name::from_ascii(format!("{host}.{}", dns.zone.trim_end_matches('.')))
                    .map_err(|e| DrillError::Invalid(format!("the service's DNS name: {e}")))?,
                port: svc.port,
                udp: svc.protocol == outlast_core::config::Protocol::Udp,
            }))
        }
        _ => None,
    };

    let dataset = sc
        .workload
        .dataset
        .as_ref()
        .and_then(|n| config.datasets.iter().find(|d| &d.name == n))
        .cloned();
    let db_target: Option<Arc<DbTarget>> = dataset.as_ref().and_then(|d| {
        let svc = config.services.iter().find(|s| s.name == d.service)?;
        Some(Arc::new(DbTarget {
            gateways: config
                .sites
                .iter()
                .filter(|s| !s.witness)
                .map(|s| SocketAddr::new(s.address, svc.port))
                .collect(),
            kind: d.kind,
            user: d.postgres.user.clone(),
            password: match d.kind {
                DatasetKind::Postgres => d.postgres.password.clone(),
                DatasetKind::Redis => d.redis.password.clone(),
            },
            database: d.postgres.database.clone(),
            run: i64::try_from(started_ms).unwrap_or(i64::MAX),
        }))
    });

    // Wait until the cluster is whole: a leader, every site up, the service's primary acting,
    // and one request through DNS and the gateway served (so start-up is not downtime). With
    // a dataset, also its table made through the gateway and, in sync mode, a standby in the
    // synchronous set (a first start makes and clones the servers: more time).
    let ready_by = outlast_core::clock::now()
        + if db_target.is_some() {
            Duration::from_secs(120)
        } else {
            Duration::from_secs(30)
        };
    let mut db_ready = db_target.is_none();
    loop {
        let mut all = true;
        let mut in_sync = dataset
            .as_ref()
            .is_none_or(|d| d.replication != outlast_core::config::Replication::Sync);
        for (_, api) in &apis {
            let st = status(&http, *api).await;
            all &= st.as_ref().is_some_and(|st| {
                st.leader.is_some()
                    && st.sites.iter().all(|s| s.state == "up")
                    && st
                        .services
                        .iter()
                        .all(|s| s.mode != "primary-standby" || s.primary_acting)
            });
            in_sync |= st.is_some_and(|st| {
                st.datasets.iter().any(|x| {
                    Some(&x.name) == sc.workload.dataset.as_ref()
                        && x.members.iter().any(|m| {
                            // A PostgreSQL standby in the synchronous quorum, a Redis
                            // replica streaming.
                            matches!(m.sync.as_deref(), Some("quorum") | Some("online"))
                        })
                })
            });
        }
        if all && !db_ready {
            if let Some(t) = &db_target {
                db_ready = in_sync && t.prepare().await;
            }
        }
        if all && db_ready {
            match &target {
                Some(t) => {
                    let fresh = DnsCache::default();
                    if request(&http, t, 0, &fresh).await {
                        break;
                    }
                }
                None => break,
            }
        }
        if outlast_core::clock::now() > ready_by {
            return Err(DrillError::NotReady {
                logs: out_dir.join("logs").display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let t0 = outlast_core::clock::now();
    let t0_unix_ms = unix_ms();
    let now_ms = move || t0.elapsed().as_millis() as u64;
    let end = sc.duration;
    let requests: Arc<Mutex<Vec<RequestOutcome>>> = Arc::default();
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let primaries: Arc<Mutex<Vec<PrimarySeen>>> = Arc::default();
    let mut tasks = Vec::new();

    // Requests: resolved through outlast's DNS (honouring the TTL), sent to the gateway.
    if let Some(target) = target.clone() {
        let rate = sc.workload.rate;
        let (http, requests) = (http.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            let cache: Arc<DnsCache> = Arc::default();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut seq = 0u64;
            let mut inflight = Vec::new();
            while t0.elapsed() < end {
                tick.tick().await;
                seq += 1;
                let (http, requests, cache, target) = (
                    http.clone(),
                    requests.clone(),
                    cache.clone(),
                    target.clone(),
                );
                inflight.push(tokio::spawn(async move {
                    let t = now_ms();
                    let start = outlast_core::clock::now();
                    let ok = request(&http, &target, seq, &cache).await;
                    lock(&requests).push(RequestOutcome {
                        t_ms: t,
                        ok,
                        latency_ms: start.elapsed().as_secs_f64() * 1000.0,
                    });
                }));
                inflight.retain(|h| !h.is_finished());
            }
            for h in inflight {
                let _ = h.await;
            }
        }));
    }

    // Events: batches every 100 ms to a data site; a failure moves to the next site with the
    // same ids.
    if let Some(stream) = sc.workload.stream.clone() {
        let targets: Vec<SocketAddr> = config
            .sites
            .iter()
            .filter(|s| !s.witness)
            .map(|s| s.api_addr())
            .collect();
        let per_batch = (sc.workload.event_rate / 10).max(1);
        let (http, acked, refused) = (http.clone(), acked.clone(), refused.clone());
        let ingest_token = config
            .api
            .token
            .clone()
            .filter(|_| config.api.ingest_needs_token);
        let name = sc.name.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut at = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while t0.elapsed() < end {
                tick.tick().await;
                let ids: Vec<String> = (0..per_batch)
                    .map(|i| format!("{name}-{started_ms}-{}", n + i))
                    .collect();
                n += per_batch;
                let body: String = ids
                    .iter()
                    .map(|id| format!("{{\"id\":\"{id}\",\"kind\":\"drill\"}}\n"))
                    .collect();
                for _ in 0..(targets.len() * 10) {
                    let url = format!("http://{}/v1/streams/{stream}/events", targets[at]);
                    let mut post = http.post(&url);
                    if let Some(t) = &ingest_token {
                        post = post.bearer_auth(t);
                    }
                    let ok = post
                        .body(body.clone())
                        .timeout(Duration::from_secs(6))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        let t = now_ms();
                        lock(&acked).extend(ids.iter().map(|id| (id.clone(), t)));
                        break;
                    }
                    refused.fetch_add(1, Ordering::Relaxed);
                    at = (at + 1) % targets.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }

    let db_rec: Arc<Mutex<report::DbRecording>> = Arc::default();
    if let Some(target) = db_target.clone() {
        tasks.push(tokio::spawn(db_writer(
            target,
            sc.workload.write_rate,
            end,
            t0,
            db_rec.clone(),
        )));
    }

    // The dependencies as every data site sees them, every 100 ms.
    let dep_samples: Arc<Mutex<Vec<DepSample>>> = Arc::default();
    if !config.dependencies.is_empty() {
        let (http, samples, apis) = (http.clone(), dep_samples.clone(), apis.clone());
        let data: BTreeSet<String> = config
            .sites
            .iter()
            .filter(|s| !s.witness)
            .map(|s| s.name.clone())
            .collect();
        tasks.push(tokio::spawn(async move {
            while t0.elapsed() < end + Duration::from_secs(1) {
                let at = t0.elapsed().as_millis() as u64;
                for (site, api) in apis.iter().filter(|(s, _)| data.contains(s)) {
                    if let Some(st) = status(&http, *api).await {
                        for d in st.dependencies {
                            lock(&samples).push(DepSample {
                                at_ms: at,
                                site: site.clone(),
                                status: d,
                            });
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    // Who is primary, as the first live site tells it (for the failback time).
    {
        let (http, primaries, apis) = (http.clone(), primaries.clone(), apis.clone());
        let svc_name = service.as_ref().map(|s| s.name.clone());
        tasks.push(tokio::spawn(async move {
            while t0.elapsed() < end + Duration::from_secs(1) {
                for (_, api) in &apis {
                    if let Some(st) = status(&http, *api).await {
                        let s = st
                            .services
                            .iter()
                            .find(|s| Some(s.name.as_str()) == svc_name.as_deref());
                        if let Some(s) = s {
                            lock(&primaries).push((now_ms(), s.primary.clone(), s.primary_acting));
                        }
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    // Every site's links and Raft term, every 250 ms: the worst each link measured, and
    // each term as first seen.
    let link_runs: Arc<Mutex<BTreeMap<(String, String), report::LinkRun>>> = Arc::default();
    let leaders: Arc<Mutex<Vec<report::LeaderSeen>>> = Arc::default();
    {
        let (http, apis) = (http.clone(), apis.clone());
        let (link_runs, leaders) = (link_runs.clone(), leaders.clone());
        tasks.push(tokio::spawn(async move {
            while t0.elapsed() < end + Duration::from_secs(1) {
                for (_, api) in &apis {
                    let Some(st) = status(&http, *api).await else {
                        continue;
                    };
                    let mut runs = lock(&link_runs);
                    for l in &st.links {
                        let r = runs
                            .entry((st.site.clone(), l.peer.clone()))
                            .or_insert_with(|| report::LinkRun {
                                site: st.site.clone(),
                                peer: l.peer.clone(),
                                ..Default::default()
                            });
                        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            (a, b) => a.or(b),
                        };
                        r.rtt_ms_max = max(r.rtt_ms_max, l.rtt_ms);
                        r.rtt_p99_ms_max = max(r.rtt_p99_ms_max, l.rtt_p99_ms);
                        r.loss_max = r.loss_max.max(l.loss);
                        r.clock_ppm = l.clock_ppm.or(r.clock_ppm);
                    }
                    drop(runs);
                    let mut seen = lock(&leaders);
                    let newest = seen.iter().map(|l| l.term).max();
                    if st.leader.is_some() && newest.is_none_or(|t| st.term > t) {
                        seen.push(report::LeaderSeen {
                            at_ms: t0.elapsed().as_millis() as u64,
                            term: st.term,
                            leader: st.leader.clone(),
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }));
    }

    // The faults, on time, with a progress bar.
    let bar = if opts.progress {
        let b = ProgressBar::new(end.as_millis() as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} drill {prefix} [{bar:40}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(sc.name.clone());
        b
    } else {
        ProgressBar::hidden()
    };
    let mut faults = Vec::new();
    let mut restarts = Vec::new();
    let mut rebuilt: Vec<(String, u64)> = Vec::new();
    let mut steps = sc.steps.iter().peekable();
    while t0.elapsed() < end {
        while let Some(step) = steps.next_if(|s| t0.elapsed() >= s.at) {
            let at_ms = now_ms();
            // Faults sent to agents end by themselves: just after the drill, or for a
            // stop at the matching cont.
            let lasting = end.saturating_sub(step.at) + Duration::from_secs(10);
            let until_cont = sc
                .steps
                .iter()
                .find(|c| c.at >= step.at && matches!(&c.fault, Fault::Cont(x) if step.fault == Fault::Stop(x.clone())))
                .map(|c| c.at - step.at)
                .unwrap_or(lasting);
            if let Err(e) = driver
                .apply(
                    &step.fault,
                    &config,
                    lasting,
                    until_cont.max(Duration::from_millis(1)),
                )
                .await
            {
                bar.abandon();
                driver.clear().await;
                return Err(DrillError::Fault {
                    fault: step.fault.describe(),
                    source: Box::new(e),
                });
            }
            if let Fault::Restart(s) = &step.fault {
                restarts.push((s.clone(), at_ms));
            }
            if let Fault::Rebuild(s) = &step.fault {
                rebuilt.push((s.clone(), at_ms));
            }
            bar.println(format!(
                "  {:>6.2} s  {}",
                at_ms as f64 / 1000.0,
                step.fault.describe()
            ));
            faults.push(FaultAt {
                at_ms,
                what: step.fault.describe(),
                disrupts: step.fault.disrupts(),
                rto_ms: None,
                db_rto_ms: None,
            });
        }
        let ok = lock(&requests)
            .iter()
            .rev()
            .take(50)
            .filter(|r| r.ok)
            .count();
        bar.set_position(now_ms());
        let commits = lock(&db_rec).acked.len();
        bar.set_message(format!(
            "{} requests, {} writes acked, {commits} commits, last 50 ok: {ok}",
            lock(&requests).len(),
            lock(&acked).len()
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    bar.finish_and_clear();
    driver.clear().await;
    let rebuilds = match &mut driver {
        Driver::Local(sites, _) => rebuild_stopwatches(sites, &rebuilt).await,
        Driver::Attach(_) => Vec::new(),
    };

    // Let the spools drain, then read every sink back.
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(stream) = sc
        .workload
        .stream
        .as_ref()
        .and_then(|n| config.streams.iter().find(|s| &s.name == n))
    {
        let mut running: Vec<SocketAddr> = Vec::new();
        for s in config.sites.iter().filter(|s| driver.running(&s.name)) {
            // In attach mode a killed agent may stay down: drain the ones that answer.
            if !opts.attach || status(&http, s.api_addr()).await.is_some() {
                running.push(s.api_addr());
            }
        }
        let drain_by = outlast_core::clock::now() + Duration::from_secs(30);
        while outlast_core::clock::now() < drain_by {
            let mut drained = true;
            for api in &running {
                let d = status(&http, *api).await.is_some_and(|st| {
                    st.streams
                        .iter()
                        .all(|s| s.spool_events == 0 && s.replicas.values().all(|x| *x == 0))
                });
                drained &= d;
            }
            if drained {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (objects, differ) = outlast_relay::read_sinks(stream)
            .await
            .map_err(|e| DrillError::Sinks(e.to_string()))?;
        if !differ.is_empty() {
            tracing::error!(?differ, "the same key holds different bytes in two sinks");
        }
        for bytes in objects.values() {
            let text = zstd::decode_all(bytes.as_slice())
                .map_err(|e| DrillError::Sinks(format!("an object is not zstd: {e}")))?;
            for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if let Some(id) = serde_json::from_slice::<Value>(line)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                {
                    *stored.entry(id).or_default() += 1;
                }
            }
        }
    }
    // The dataset's rows as its final primary has them (a failover may still be finishing:
    // up to 30 s), and the diverged histories its members kept.
    let db = match &db_target {
        Some(t) => {
            let read_by = outlast_core::clock::now() + Duration::from_secs(30);
            let mut found = t.rows().await;
            while found.is_none() && outlast_core::clock::now() < read_by {
                tokio::time::sleep(Duration::from_millis(500)).await;
                found = t.rows().await;
            }
            let mut rec = std::mem::take(&mut *lock(&db_rec));
            rec.found = found;
            Some(rec)
        }
        None => None,
    };
    let mut phases = Vec::new();
    let mut archives = BTreeSet::new();
    let mut restores: BTreeMap<String, report::VerifiedRestore> = BTreeMap::new();
    for s in config.sites.iter().filter(|s| driver.running(&s.name)) {
        if let Some(st) = status(&http, s.api_addr()).await {
            for b in &st.backups {
                let Some(v) = &b.verify_ok else { continue };
                if restores.get(&b.name).is_none_or(|x| x.at_ms < v.at_ms) {
                    restores.insert(
                        b.name.clone(),
                        report::VerifiedRestore {
                            backup: b.name.clone(),
                            site: st.site.clone(),
                            at_ms: v.at_ms,
                            restore_ms: v.restore_ms,
                            age_ms: v.age_ms,
                            snapshot: v.snapshot.clone(),
                        },
                    );
                }
            }
            phases.push(st.failovers);
            for d in st
                .datasets
                .iter()
                .filter(|d| Some(&d.name) == sc.workload.dataset.as_ref())
            {
                archives.extend(d.diverged.iter().map(|v| format!("{}: {}", v.site, v.path)));
            }
        }
    }
    let db = db.map(|mut d| {
        d.archives = archives.into_iter().collect();
        d
    });
    let phases = merge_phases(phases, t0_unix_ms);
    drop(driver);

    // Failback: from a restart of the preferred primary until it acts as primary again.
    let failback_ms = service
        .as_ref()
        .filter(|s| s.mode == Mode::PrimaryStandby)
        .and_then(|svc| {
            let preferred = svc.primary.clone()?;
            let (_, at) = restarts.iter().find(|(s, _)| *s == preferred)?;
            lock(&primaries)
                .iter()
                .find(|(t, p, acting)| t >= at && p.as_deref() == Some(&preferred) && *acting)
                .map(|(t, _, _)| t - at)
        });
    let acked_all = std::mem::take(&mut *lock(&acked));
    let acked_ids: BTreeSet<&String> = acked_all.iter().map(|(id, _)| id).collect();
    // Only this drill's writes count (the sinks may hold others: the demo's clicks).
    stored.retain(|id, _| {
        acked_ids.contains(id) || id.starts_with(&format!("{}-{started_ms}-", sc.name))
    });
    let dependencies = dep_runs(&config, std::mem::take(&mut *lock(&dep_samples)));
    let rec = Recording {
        dependencies,
        duration_ms: end.as_millis() as u64,
        requests: std::mem::take(&mut *lock(&requests)),
        acked: acked_all.clone(),
        writes_refused: refused.load(Ordering::Relaxed),
        stored,
        faults,
        failback_ms,
        phases,
        db,
        rebuilds,
        restores: restores.into_values().collect(),
        links: std::mem::take(&mut *lock(&link_runs))
            .into_values()
            .collect(),
        leaders: std::mem::take(&mut *lock(&leaders)),
    };
    let mut rec = rec;
    rec.requests.sort_by_key(|r| r.t_ms);
    let report = report::analyse(&sc, &rec, started_ms);
    let history = report::history(&history_root, &sc.name);
    let logs = out_dir.join("logs");
    write_report(&out_dir, &report, &history, &logs)?;
    if out_dir != kept {
        write_report(&kept, &report, &history, &logs)?;
    }
    Ok((report, out_dir))
}

/// The longest the drill waits after its workload for a rebuild's site to rejoin.
const REBUILD_WAIT: Duration = Duration::from_secs(300);

/// Each rebuild's stopwatch, as `outlast rebuild --steps-json` wrote it once the site
/// rejoined (waiting for those not done yet, up to [`REBUILD_WAIT`]).
async fn rebuild_stopwatches(sites: &mut Sites, at: &[(String, u64)]) -> Vec<report::RebuildRun> {
    let until = outlast_core::clock::now() + REBUILD_WAIT;
    let mut out = Vec::new();
    let started = sites.rebuilds.clone();
    for ((site, json), (_, at_ms)) in started.iter().zip(at) {
        let mut run = report::RebuildRun {
            site: site.clone(),
            at_ms: *at_ms,
            ..Default::default()
        };
        loop {
            if let Some(v) = std::fs::read(json)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                run.total_ms = v["total_ms"].as_u64();
                run.steps = v["steps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| report::RebuildStep {
                        step: s["step"].as_str().unwrap_or_default().to_string(),
                        ms: s["ms"].as_u64().unwrap_or(0),
                        said: s["said"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect();
                break;
            }
            let ended = sites
                .children
                .get_mut(site)
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if ended || outlast_core::clock::now() > until {
                tracing::warn!(
                    site,
                    ended,
                    "the rebuild did not rejoin (see the site's log)"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        out.push(run);
    }
    out
}

/// One site's view of one dependency at a moment of the drill.
struct DepSample {
    at_ms: u64,
    site: String,
    status: outlast_core::status::DependencyStatus,
}

/// What the samples tell of each dependency.
fn dep_runs(config: &Config, mut samples: Vec<DepSample>) -> Vec<report::DepRun> {
    samples.sort_by_key(|s| s.at_ms);
    config
        .dependencies
        .iter()
        .map(|d| {
            let mine: Vec<&DepSample> =
                samples.iter().filter(|s| s.status.name == d.name).collect();
            let mut run = report::DepRun {
                name: d.name.clone(),
                worst: "up".into(),
                ..Default::default()
            };
            // Committed state, one reading per sampling round (the first site's).
            let mut last_round: Option<u64> = None;
            let mut last_not_up: Option<u64> = None;
            let mut in_use: BTreeMap<&str, Option<String>> = BTreeMap::new();
            for s in &mine {
                if last_round != Some(s.at_ms) {
                    let not_up = s.status.state != "up";
                    // The span since the last round counts when that round saw it out.
                    if let Some(t) = last_not_up {
                        run.not_up_ms += s.at_ms.saturating_sub(t);
                    }
                    last_not_up = not_up.then_some(s.at_ms);
                    if not_up {
                        run.first_not_up_ms.get_or_insert(s.at_ms);
                        if run.worst != "down" {
                            run.worst = s.status.state.clone();
                        }
                    }
                    last_round = Some(s.at_ms);
                }
                if s.status.egress_port.is_some() {
                    let before = in_use.insert(&s.site, s.status.in_use.clone());
                    if let Some(before) = before.filter(|b| *b != s.status.in_use) {
                        run.egress_moves.push(report::EgressMove {
                            at_ms: s.at_ms,
                            site: s.site.clone(),
                            from: before,
                            to: s.status.in_use.clone(),
                        });
                    }
                }
            }
            let mut last_by_site: BTreeMap<&str, &DepSample> = BTreeMap::new();
            for s in &mine {
                last_by_site.insert(&s.site, s);
            }
            for (site, s) in last_by_site {
                for e in &s.status.endpoints {
                    run.endpoints.push(report::EndpointCount {
                        site: site.to_string(),
                        endpoint: e.address.clone(),
                        connections: e.connections,
                        errors: e.errors,
                        bytes_sent: e.bytes_sent,
                        bytes_received: e.bytes_received,
                    });
                }
            }
            run
        })
        .collect()
}

/// The phases of the moves of the drill as the sites saw them, in drill time. Where
/// sites differ, the first to see it marks a phase, except that DNS and gateways have
/// switched once the last site did.
fn merge_phases(
    seen: Vec<Vec<outlast_core::status::FailoverStatus>>,
    t0_unix_ms: u64,
) -> Vec<report::PhaseAt> {
    let mut out: Vec<report::PhaseAt> = Vec::new();
    for f in seen.into_iter().flatten() {
        for p in &f.phases {
            if p.at_ms < t0_unix_ms {
                continue;
            }
            let at_ms = p.at_ms - t0_unix_ms;
            let last_site_counts = matches!(p.name.as_str(), "dns-published" | "gateway-switched");
            match out
                .iter_mut()
                .find(|o| o.what == f.what && o.epoch == f.epoch && o.name == p.name)
            {
                Some(o) if last_site_counts => o.at_ms = o.at_ms.max(at_ms),
                Some(o) => o.at_ms = o.at_ms.min(at_ms),
                None => out.push(report::PhaseAt {
                    what: f.what.clone(),
                    epoch: f.epoch,
                    from: f.from.clone(),
                    to: f.to.clone(),
                    name: p.name.clone(),
                    at_ms,
                }),
            }
        }
    }
    out.sort_by_key(|p| (p.epoch, p.at_ms));
    out
}

fn write_report(dir: &Path, r: &Report, history: &[Report], logs: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(create(dir))?;
    let json = serde_json::to_vec_pretty(r)
        .map_err(std::io::Error::other)
        .map_err(create(dir))?;
    std::fs::write(dir.join("report.json"), json).map_err(create(&dir.join("report.json")))?;
    let mut all: Vec<Report> = history.to_vec();
    if !all.iter().any(|h| h.started_ms == r.started_ms) {
        all.push(r.clone());
    }
    // The agents' logs, linked from the page: relative beside it, else by absolute path.
    let mut links: Vec<String> = std::fs::read_dir(logs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| match p.strip_prefix(dir) {
            Ok(rel) => rel.display().to_string(),
            Err(_) => format!("file://{}", p.display()),
        })
        .collect();
    links.sort();
    std::fs::write(dir.join("index.html"), report::html(r, &all, &links))
        .map_err(create(&dir.join("index.html")))?;
    Ok(())
}
