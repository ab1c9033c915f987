//! The config: one TOML file for all sites (docs/config.md).
//!
//! Parsing goes in two steps, as vector's compiler does: serde reads the raw form (which keeps
//! spans), then [`validate`] checks the meaning and collects every problem, each with the
//! file, line, column and a fix, before anything starts.

mod backups;
mod datasets;
mod dependencies;
mod explain;
mod raw;
mod recover;
mod steering;
mod tls;
mod validate;

pub use dependencies::split_endpoint;
pub use explain::TimingAt;
pub use steering::{
    parse_networks, read_networks, Cidr, LatencyProbe, NetworkSites, Selector, Steering,
};
pub use tls::{for_site, PeerTls, SiteFiles};
pub use validate::{line_col, plain_name};

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// One thing wrong with a config, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// What is wrong.
    pub what: String,
    /// How to fix it.
    pub fix: String,
}

impl Problem {
    /// A problem at byte `offset` of `text` (the file `file`), placed by line and column.
    pub fn at(
        file: &Path,
        text: &str,
        offset: usize,
        what: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        let (line, col) = line_col(text, offset);
        Problem {
            file: file.to_path_buf(),
            line,
            col,
            what: what.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}; {}",
            self.file.display(),
            self.line,
            self.col,
            self.what,
            self.fix
        )
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}; check the path given to --config")]
    Read {
        path: PathBuf,
        #[source]
        source: crate::files::ReadError,
    },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            ConfigError::Read { .. } => &[],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub path: PathBuf,
    pub cluster: Cluster,
    pub timing: Timing,
    pub sites: Vec<Site>,
    pub dns: Option<Dns>,
    pub services: Vec<Service>,
    pub streams: Vec<Stream>,
    pub datasets: Vec<Dataset>,
    pub backups: Vec<Backup>,
    pub alerts: Vec<Alert>,
    pub api: Api,
    /// `[tls]`: how peer traffic is encrypted.
    pub tls: PeerTls,
    /// `[[dependencies]]`: what the services need from outside, probed from every data site.
    pub dependencies: Vec<Dependency>,
    /// Things that work but are likely not what was meant (`outlast check` prints them).
    #[serde(skip)]
    pub warnings: Vec<Problem>,
}

/// One `[[dependencies]]`: an outside service the applications call (a payment API, an
/// object store, a mail relay), probed from every data site; with `egress_port`, each data
/// site forwards a local port to its first healthy endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Dependency {
    pub name: String,
    /// `host:port`, in order of preference.
    pub endpoints: Vec<String>,
    pub check: Check,
    /// The services that use it (shown with it; nothing moves because of it).
    pub services: Vec<String>,
    /// The local port (on each data site's address) the applications reach it through.
    pub egress_port: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub name: String,
    #[serde(skip)]
    pub secret: String,
    pub unsafe_two_sites: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    pub probe_interval: Duration,
    pub fall: u32,
    pub rise: u32,
    pub grace: Duration,
    pub lease: Duration,
    pub failback_after: Duration,
    /// The longest round trip between two sites the timings must work at.
    pub max_rtt: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(200),
            fall: 3,
            rise: 3,
            grace: Duration::from_secs(1),
            lease: Duration::from_secs(2),
            failback_after: Duration::from_secs(30),
            max_rtt: Duration::from_millis(250),
        }
    }
}

impl Timing {
    /// How long a site must stay unheard before the majority calls it down: `fall` probe
    /// intervals, then `grace` (and `fall` heartbeats in a row must have gone unanswered,
    /// see [`Self::worst_detection`]).
    pub fn detection(&self) -> Duration {
        self.probe_interval
            .saturating_mul(self.fall)
            .saturating_add(self.grace)
    }

    /// The longest a heartbeat waits for its answer before it counts as missed: the round
    /// trip allowed (`max_rtt`) and a quarter probe interval, and never under one probe
    /// interval.
    pub fn probe_timeout_cap(&self) -> Duration {
        self.probe_interval
            .max(self.max_rtt.saturating_add(self.probe_interval / 4))
    }

    /// How long a heartbeat waits for its answer on a link whose round trips measure
    /// `rtt_p99` (None before the first): 3/2 of it plus 10 ms, at least one probe
    /// interval, at most [`Self::probe_timeout_cap`]. On a near link a lost site is found
    /// as fast as the probe interval allows; a far one is not taken for lost.
    pub fn probe_timeout(&self, rtt_p99: Option<Duration>) -> Duration {
        let wanted = rtt_p99.map_or(self.probe_timeout_cap(), |r| {
            r.saturating_mul(3) / 2 + Duration::from_millis(10)
        });
        wanted
            .max(self.probe_interval)
            .min(self.probe_timeout_cap())
    }

    /// The longest the majority can take to call a site down at a round trip of
    /// `max_rtt`: the `fall`th missed heartbeat is known (fall - 1) probe intervals plus
    /// its timeout after the first, then `grace`, and never under [`Self::detection`].
    pub fn worst_detection(&self) -> Duration {
        self.detection_with(self.probe_timeout_cap())
    }

    /// Raft's heartbeat interval, which openraft also takes as the timeout of every
    /// AppendEntries and vote call: it must outlast the longest round trip allowed with
    /// room for jitter and the follower's disk (3/2 of `max_rtt`, at least half a probe
    /// interval and 20 ms). Under a round trip a commit never completes, and a proposal
    /// that never commits wedges the cluster; a call that times out now and then ages the
    /// leader's quorum acknowledgement, and the others may depose it.
    pub fn raft_heartbeat(&self) -> Duration {
        (self.probe_interval / 2)
            .max(self.max_rtt.saturating_mul(3) / 2)
            .max(Duration::from_millis(20))
    }

    /// Raft's shortest election timeout: three probe intervals, at least two Raft
    /// heartbeats (a follower hears the leader at least twice before it may stand), and
    /// 150 ms. The longest is twice this.
    pub fn raft_election_min(&self) -> Duration {
        self.probe_interval
            .saturating_mul(3)
            .max(self.raft_heartbeat().saturating_mul(2))
            .max(Duration::from_millis(150))
    }

    /// Extra wait past a lease before a new primary acts, and how long past its lease a
    /// voter's promise to a primary lasts (see outlast-control's `node.rs`): it covers the
    /// rate difference of two clocks over one lease (`lease · 2ρ / (1 - ρ)`, under
    /// `lease / 8` for clocks within 5% of true time) and one probe interval (a fence
    /// checked once a tick outside the gateways, which check it on every request).
    pub fn lease_margin(&self) -> Duration {
        (self.lease / 8).saturating_add(self.probe_interval)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub name: String,
    pub address: IpAddr,
    pub peer_port: u16,
    pub api_port: u16,
    pub data_dir: PathBuf,
    pub witness: bool,
}

impl Site {
    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.peer_port)
    }
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.api_port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllDown {
    FailOpen,
    FailClosed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dns {
    pub zone: String,
    pub port: u16,
    pub ttl: u32,
    pub all_down: AllDown,
    /// External primaries that get RFC 2136 updates.
    pub push: Vec<DnsPush>,
    /// Client networks and the sites that serve them, nearest first (`networks`).
    pub networks: NetworkSites,
    /// More of them in a file, read again whenever it changes.
    pub networks_file: Option<PathBuf>,
    /// Round trips measured by every data site, for `selector = "latency"`.
    pub probes: Vec<LatencyProbe>,
}

/// `[[dns.push]]`: an external primary server updated with TSIG-signed RFC 2136 updates.
#[derive(Debug, Clone, Serialize)]
pub struct DnsPush {
    pub server: SocketAddr,
    pub zone: String,
    pub key_name: String,
    /// The decoded TSIG secret (HMAC-SHA256).
    #[serde(skip)]
    pub key_secret: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
    Udp,
}

/// protocol = "udp": which client datagrams go to the same backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// One client address and port keeps its backend (the default).
    Session,
    /// One client IP keeps its backend, whatever its ports (a phone's SIP and RTP).
    Ip,
    /// Each datagram goes to the next backend (syslog, metrics).
    Packet,
}

/// The UDP side of a `protocol = "udp"` service.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UdpOptions {
    pub affinity: Affinity,
    /// A session with no datagram either way for this long ends.
    pub idle_timeout: Duration,
    /// Answers expected per client datagram: a session ends once it has had this many for
    /// every datagram it sent (0: one-way, ends after its datagram is forwarded). None:
    /// only the idle timeout ends it.
    pub responses: Option<u32>,
    /// Sessions one client address may hold at once (`max_sessions_per_source`).
    pub max_per_source: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    ActiveActive,
    PrimaryStandby,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    Auto,
    Manual,
}

#[derive(Debug, Clone, Serialize)]
pub enum CheckKind {
    Http {
        path: String,
        expect: u16,
    },
    Tcp,
    /// A DNS server answers `query` (type A) with NOERROR (dependencies only).
    Dns {
        query: String,
    },
    /// A datagram `send` gets an answer starting with `expect` within the timeout; with an
    /// empty `expect`, up means no "port unreachable" came back within the timeout.
    Udp {
        send: Vec<u8>,
        expect: Vec<u8>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub name: String,
    pub protocol: Protocol,
    pub mode: Mode,
    /// The preferred primary (primary-standby); always set after validation for that mode.
    pub primary: Option<String>,
    pub failback: Failback,
    pub dns_name: Option<String>,
    pub port: u16,
    pub check: Check,
    /// Client connections the gateway holds open at once on each site; over it a new one
    /// is answered at once (HTTP 503 + `Retry-After`; TCP closed).
    pub max_connections: usize,
    /// The dataset whose primary this service follows (its primary is the dataset's).
    pub dataset: Option<String>,
    /// protocol = "udp" only.
    pub udp: Option<UdpOptions>,
    /// How DNS picks among the service's healthy sites per client (none: all of them).
    pub steering: Option<Steering>,
    /// Backends per site name.
    pub backends: BTreeMap<String, Vec<SocketAddr>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Postgres,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// A commit returns once a member in another site has it.
    Sync,
    /// Standbys may trail; a failover can lose what they had not received.
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StandbyLost {
    /// The primary goes on alone (and alerts) once every standby's site is declared down.
    Degrade,
    /// Writes wait until a standby is back.
    Block,
}

/// `[[datasets]]`: state with one writable primary, run and moved by the agents.
#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub name: String,
    pub kind: DatasetKind,
    /// The preferred primary.
    pub primary: String,
    pub failback: Failback,
    pub replication: Replication,
    pub standby_lost: StandbyLost,
    /// Async: a standby further behind is never promoted by itself.
    pub max_lag_bytes: u64,
    pub port: u16,
    /// Member site → its data dir (absolute).
    pub members: BTreeMap<String, PathBuf>,
    pub postgres: PostgresOptions,
    pub redis: RedisOptions,
    /// The service clients reach it through (exactly one names it in `dataset`).
    pub service: String,
}

/// The `redis.conf` directives outlast writes for each member (not the config's to set).
pub const OWNED_REDIS_SETTINGS: &[&str] = &[
    "bind",
    "port",
    "dir",
    "daemonize",
    "pidfile",
    "logfile",
    "requirepass",
    "masterauth",
    "replicaof",
    "slaveof",
    "min-replicas-to-write",
    "min-slaves-to-write",
    "replica-announce-ip",
    "bind-source-addr",
    "unixsocket",
    "include",
    "rename-command",
];

/// `[datasets.redis]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisOptions {
    /// `redis-server`; none: found on the path at start.
    pub server_bin: Option<PathBuf>,
    /// The server runs as this user when the agent runs as root.
    pub os_user: String,
    /// `requirepass` (clients) and `masterauth` (replicas).
    #[serde(skip)]
    pub password: String,
    /// More `redis.conf` directives.
    pub settings: BTreeMap<String, String>,
}

/// `[datasets.postgres]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PostgresOptions {
    /// Where initdb, pg_ctl, pg_basebackup and pg_rewind are; none: found at start.
    pub bin_dir: Option<PathBuf>,
    /// The server runs as this user when the agent runs as root.
    pub os_user: String,
    pub database: String,
    pub user: String,
    #[serde(skip)]
    pub password: String,
    /// More addresses or networks (CIDR) that may log in as `user`, besides the data sites.
    pub allow: Vec<String>,
    pub settings: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    Local,
    Replicated,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stream {
    pub name: String,
    pub ack: Ack,
    pub sinks: Vec<Sink>,
    /// Above this many bytes in a site's spool for the stream, ingest answers 503.
    pub max_spool_bytes: u64,
    /// Largest accepted request body; above it, 413.
    pub max_body_bytes: u64,
    /// Largest accepted event (one line, with its id); above it, 413. At most
    /// [`MAX_EVENT_BYTES`], so that every event fits in a replication frame.
    pub max_event_bytes: u64,
    /// Ingest answers 503 when the disk under the spool has less free than this, so that a
    /// full disk never stops shipping (which frees it) or the control plane beside it.
    pub min_free_bytes: u64,
    /// A batch (one object) closes at this many events...
    pub batch_events: u64,
    /// ...or when its oldest event is this old.
    pub batch_age: Duration,
    /// Events per second when replaying a backlog (after a sink or site outage), per log
    /// (a site's own events, and each down site's it ships). Live traffic is not held to
    /// it; a replay is, until less than one batch is left, so set it above the stream's
    /// live rate or a backlog never drains.
    pub replay_rate: u64,
    /// Shipped events are kept (for duplicate detection by id) this long.
    pub dedup_window: Duration,
}

/// The largest `max_event_bytes` a stream may set: an event travels to a peer in one
/// replication frame, and frames are bounded in bytes.
pub const MAX_EVENT_BYTES: u64 = 2 << 20;

/// `[[backups]]`: snapshots of a directory or a dataset to restic-format repositories.
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    pub name: String,
    pub source: BackupSource,
    /// A snapshot this often.
    pub every: Duration,
    /// PostgreSQL datasets: WAL archived continuously between snapshots.
    pub wal: bool,
    /// How often each member site ships the WAL it archived to the repositories (and
    /// PostgreSQL's `archive_timeout`): what a restore from backup loses at most.
    pub wal_every: Duration,
    pub keep: Keep,
    /// The newest snapshot is restored and checked this often.
    pub verify_every: Duration,
    pub repos: Vec<BackupRepo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupSource {
    /// A directory (absolute) that every data site holds; each backs up its own.
    Path(PathBuf),
    /// A `[[datasets]]` by name.
    Dataset(String),
}

/// Retention: how many snapshots of each kind survive a prune (0: none of that kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Keep {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Default for Keep {
    fn default() -> Self {
        Self {
            last: 24,
            daily: 7,
            weekly: 4,
            monthly: 6,
        }
    }
}

/// One repository of a backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupRepo {
    /// `file:///abs`, `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`
    /// or `rest:http://host:port/path`.
    pub url: String,
    /// The site the repository lives in, when it is in one.
    pub site: Option<String>,
    #[serde(skip)]
    pub password: String,
    /// Object store keys (endpoint, region, access_key_id, secret_access_key, ...).
    #[serde(skip)]
    pub options: BTreeMap<String, String>,
}

impl Config {
    pub fn backup(&self, name: &str) -> Option<&Backup> {
        self.backups.iter().find(|b| b.name == name)
    }

    /// The dataset a backup is of (none for a `path:` source).
    pub fn dataset_of(&self, b: &Backup) -> Option<&Dataset> {
        match &b.source {
            BackupSource::Dataset(d) => self.datasets.iter().find(|x| &x.name == d),
            BackupSource::Path(_) => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sink {
    pub url: String,
    pub site: Option<String>,
    /// object_store configuration keys (endpoint, region, allow_http, credentials, ...).
    #[serde(skip)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub enum Alert {
    Webhook {
        url: String,
    },
    Smtp {
        server: String,
        from: String,
        to: Vec<String>,
    },
    Command {
        argv: Vec<String>,
    },
    /// A Slack incoming webhook (`{"text": ...}`).
    Slack {
        url: String,
    },
    /// PagerDuty Events API v2: trigger, and resolve with the same dedup key.
    PagerDuty {
        url: String,
        #[serde(skip)]
        routing_key: String,
    },
    /// SMS through Twilio's Messages API (or a compatible one at `url`).
    Twilio {
        url: String,
        account_sid: String,
        #[serde(skip)]
        auth_token: String,
        from: String,
        to: Vec<String>,
    },
    /// Pinged by the leader every `every`: an outside watcher notices the silence.
    Heartbeat {
        url: String,
        every: Duration,
    },
}

impl Alert {
    /// What it is called in logs and metrics.
    pub fn channel(&self) -> &'static str {
        match self {
            Alert::Webhook { .. } => "webhook",
            Alert::Smtp { .. } => "smtp",
            Alert::Command { .. } => "command",
            Alert::Slack { .. } => "slack",
            Alert::PagerDuty { .. } => "pagerduty",
            Alert::Twilio { .. } => "twilio",
            Alert::Heartbeat { .. } => "heartbeat",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Api {
    #[serde(skip)]
    pub token: Option<String>,
    /// With it, reads (status, metrics, events, pages but the public status page) want
    /// this token or the mutation token.
    #[serde(skip)]
    pub read_token: Option<String>,
    /// The API served over TLS with these files (`{site}` in them is the site's name).
    pub tls: Option<SiteFiles>,
    /// Client connections the API holds open at once; over it a new one gets 503.
    pub max_connections: usize,
    /// Whether event ingest wants the token (`ingest = "token"`) or is open to whoever
    /// reaches the API (`"open"`, the default: the trackers and apps that send events are
    /// often many and outside the operators' hands).
    pub ingest_needs_token: bool,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            token: None,
            read_token: None,
            max_connections: DEFAULT_API_CONNECTIONS,
            ingest_needs_token: false,
            tls: None,
        }
    }
}

/// Default `[api] max_connections`.
pub const DEFAULT_API_CONNECTIONS: usize = 8192;
/// Default `max_connections` of a service's gateway.
pub const DEFAULT_GATEWAY_CONNECTIONS: usize = 10_000;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            crate::files::read_text(path, crate::files::MAX_CONFIG_BYTES).map_err(|source| {
                ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        Self::parse(path, &text)
    }

    /// Validates config text; `path` names it in problems and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        validate::parse(path, text).map_err(ConfigError::Invalid)
    }

    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    pub fn site_index(&self, name: &str) -> Option<usize> {
        self.sites.iter().position(|s| s.name == name)
    }

    /// Every site votes, witnesses included.
    pub fn voters(&self) -> usize {
        self.sites.len()
    }

    /// How many voters make a majority.
    pub fn quorum(&self) -> usize {
        self.voters() / 2 + 1
    }
}
