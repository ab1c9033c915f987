//! The config as written: every field that validation may complain about keeps its span.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub cluster: S<RawCluster>,
    #[serde(default)]
    pub timing: Option<S<RawTiming>>,
    #[serde(default)]
    pub sites: Vec<S<RawSite>>,
    #[serde(default)]
    pub dns: Option<S<RawDns>>,
    #[serde(default)]
    pub services: Vec<S<RawService>>,
    #[serde(default)]
    pub streams: Vec<S<RawStream>>,
    #[serde(default)]
    pub datasets: Vec<S<RawDataset>>,
    #[serde(default)]
    pub backups: Vec<S<RawBackup>>,
    #[serde(default)]
    pub alerts: Vec<S<RawAlert>>,
    #[serde(default)]
    pub api: Option<S<RawApi>>,
    #[serde(default)]
    pub tls: Option<S<RawTls>>,
    #[serde(default)]
    pub dependencies: Vec<S<RawDependency>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDependency {
    pub name: S<String>,
    pub endpoints: Vec<S<String>>,
    pub check: Option<S<RawCheck>>,
    pub services: Option<Vec<S<String>>>,
    pub egress_port: Option<S<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: S<String>,
    pub secret: Option<S<String>>,
    pub secret_file: Option<S<String>>,
    #[serde(default)]
    pub unsafe_two_sites: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTiming {
    pub probe_interval: Option<S<String>>,
    pub fall: Option<S<u32>>,
    pub rise: Option<S<u32>>,
    pub grace: Option<S<String>>,
    pub lease: Option<S<String>>,
    pub failback_after: Option<S<String>>,
    pub max_rtt: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub name: S<String>,
    pub address: S<String>,
    pub peer_port: S<u16>,
    pub api_port: S<u16>,
    pub data_dir: Option<S<String>>,
    #[serde(default)]
    pub witness: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub zone: S<String>,
    pub port: S<u16>,
    pub ttl: Option<S<u32>>,
    pub all_down: Option<S<String>>,
    #[serde(default)]
    pub push: Vec<S<RawPush>>,
    /// Client networks → the sites that serve them, nearest first.
    #[serde(default)]
    pub networks: BTreeMap<S<String>, S<Vec<S<String>>>>,
    pub networks_file: Option<S<String>>,
    #[serde(default)]
    pub probes: Vec<S<RawProbe>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    pub network: S<String>,
    pub target: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSteering {
    pub selector: S<String>,
    pub answers: Option<S<u32>>,
    #[serde(default)]
    pub weights: BTreeMap<S<String>, S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPush {
    pub server: S<String>,
    pub zone: Option<S<String>>,
    pub key_name: S<String>,
    pub key_secret: Option<S<String>>,
    pub key_file: Option<S<String>>,
    pub algorithm: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: S<String>,
    pub protocol: Option<S<String>>,
    pub mode: Option<S<String>>,
    pub primary: Option<S<String>>,
    pub failback: Option<S<String>>,
    pub dns_name: Option<S<String>>,
    pub port: S<u16>,
    pub check: Option<S<RawCheck>>,
    pub max_connections: Option<S<u64>>,
    pub dataset: Option<S<String>>,
    /// protocol = "udp": which datagrams share a backend (session, ip, packet).
    pub affinity: Option<S<String>>,
    /// protocol = "udp": a session with no datagram either way for this long ends.
    pub idle_timeout: Option<S<String>>,
    /// protocol = "udp": answers expected per client datagram (0 one-way, 1 request/answer).
    pub responses: Option<S<u32>>,
    /// protocol = "udp": sessions one client address may hold at once.
    pub max_sessions_per_source: Option<S<u64>>,
    /// How DNS picks among the service's healthy sites for each client.
    pub steering: Option<S<RawSteering>>,
    #[serde(default)]
    pub backends: BTreeMap<S<String>, S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub kind: S<String>,
    pub path: Option<S<String>>,
    /// kind = "dns" (dependencies): the name asked.
    pub query: Option<S<String>>,
    pub expect: Option<S<u16>>,
    /// kind = "udp": the datagram sent (text), or `send_hex` for bytes.
    pub send: Option<S<String>>,
    pub send_hex: Option<S<String>>,
    /// kind = "udp": what the answer must start with (text), or `receive_hex`.
    pub receive: Option<S<String>>,
    pub receive_hex: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub name: S<String>,
    pub ack: Option<S<String>>,
    pub max_spool_bytes: Option<S<u64>>,
    pub max_body_bytes: Option<S<u64>>,
    pub max_event_bytes: Option<S<u64>>,
    pub min_free_bytes: Option<S<u64>>,
    pub batch_events: Option<S<u64>>,
    pub batch_age: Option<S<String>>,
    pub replay_rate: Option<S<u64>>,
    pub dedup_window: Option<S<String>>,
    #[serde(default)]
    pub sinks: Vec<S<RawSink>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub url: S<String>,
    pub site: Option<S<String>>,
    /// Passed to object_store as configuration (endpoint, region, allow_http, ...).
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlert {
    pub kind: S<String>,
    pub url: Option<S<String>>,
    pub server: Option<S<String>>,
    pub from: Option<S<String>>,
    #[serde(default)]
    pub to: Vec<S<String>>,
    #[serde(default)]
    pub command: Vec<S<String>>,
    /// pagerduty: the integration's routing key (or from a file).
    pub routing_key: Option<S<String>>,
    pub routing_key_file: Option<S<String>>,
    /// twilio: the account, and its auth token from a file.
    pub account_sid: Option<S<String>>,
    pub auth_token_file: Option<S<String>>,
    /// heartbeat: how often the leader pings.
    pub every: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub token: Option<S<String>>,
    pub token_file: Option<S<String>>,
    pub read_token: Option<S<String>>,
    pub read_token_file: Option<S<String>>,
    pub tls_cert: Option<S<String>>,
    pub tls_key: Option<S<String>>,
    pub max_connections: Option<S<u64>>,
    pub ingest: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataset {
    pub name: S<String>,
    pub kind: Option<S<String>>,
    pub primary: Option<S<String>>,
    pub failback: Option<S<String>>,
    pub replication: Option<S<String>>,
    pub standby_lost: Option<S<String>>,
    pub max_lag: Option<S<String>>,
    pub port: S<u16>,
    #[serde(default)]
    pub members: BTreeMap<S<String>, S<RawMember>>,
    pub postgres: Option<S<RawPostgres>>,
    pub redis: Option<S<RawRedis>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    pub data_dir: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub server_bin: Option<S<String>>,
    pub os_user: Option<S<String>>,
    pub password: Option<S<String>>,
    pub password_file: Option<S<String>>,
    #[serde(default)]
    pub settings: BTreeMap<S<String>, S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    pub bin_dir: Option<S<String>>,
    pub os_user: Option<S<String>>,
    pub database: Option<S<String>>,
    pub user: Option<S<String>>,
    pub password: Option<S<String>>,
    pub password_file: Option<S<String>>,
    pub allow: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    pub settings: BTreeMap<S<String>, S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    pub name: S<String>,
    pub source: S<String>,
    pub every: Option<S<String>>,
    pub wal: Option<S<bool>>,
    pub wal_every: Option<S<String>>,
    pub keep: Option<S<RawKeep>>,
    pub verify_every: Option<S<String>>,
    #[serde(default)]
    pub repos: Vec<S<RawRepo>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeep {
    pub last: Option<S<u32>>,
    pub daily: Option<S<u32>>,
    pub weekly: Option<S<u32>>,
    pub monthly: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepo {
    pub url: S<String>,
    pub site: Option<S<String>>,
    pub password_file: Option<S<String>>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub peer: Option<S<String>>,
    pub ca: Option<S<String>>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
}
