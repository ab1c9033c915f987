//! The answers of `GET /v1/status` (docs/api.md), shared by the agent that builds them
//! and the clients that read them (`outlast status`, the drill, the dashboard). Fields
//! are only ever added.

use serde::{Deserialize, Serialize};

use crate::faults::FaultView;

/// `GET /v1/status` (docs/api.md). Fields are only ever added.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub cluster: String,
    /// The site that answers.
    pub site: String,
    pub leader: Option<String>,
    pub term: u64,
    pub epoch: u64,
    pub sites: Vec<SiteStatus>,
    pub services: Vec<ServiceStatus>,
    pub streams: Vec<StreamStatus>,
    /// Faults a drill injected into the answering agent, still active.
    #[serde(default)]
    pub faults: Vec<FaultView>,
    /// The latest primary moves the answering site saw, newest first, with the time of
    /// each phase as it saw it.
    #[serde(default)]
    pub failovers: Vec<FailoverStatus>,
    /// When the answering site made this answer (Unix ms, its clock).
    #[serde(default)]
    pub at_ms: u64,
    /// The datasets (databases the agents run), as the answering site sees them.
    #[serde(default)]
    pub datasets: Vec<DatasetStatus>,
    /// The backups (`[[backups]]`) as the answering site takes and verifies them.
    #[serde(default)]
    pub backups: Vec<BackupStatus>,
    /// The committed incident history (the same at every site): incidents with their
    /// updates, and each component's outages over the last 91 days.
    #[serde(default)]
    pub history: crate::incident::History,
    /// The dependencies (`[[dependencies]]`): the committed state, each data site's
    /// verdict, and this site's probes and egress counts per endpoint.
    #[serde(default)]
    pub dependencies: Vec<DependencyStatus>,
    /// The latest alerts this site tried to deliver (one entry per target), newest first.
    #[serde(default)]
    pub alerts_sent: Vec<AlertSent>,
    /// How the answering site's peer port is encrypted, and what it refused.
    #[serde(default)]
    pub peer_tls: PeerTlsView,
    /// Whether the answering site's DNS answers from the committed routing now (absent
    /// without `[dns]`).
    #[serde(default)]
    pub dns: Option<DnsStatus>,
    /// The answering site's links to every other site, measured from its heartbeats.
    #[serde(default)]
    pub links: Vec<LinkStatus>,
    /// When the answering site's own clock runs more than the bound (5%) off every peer's,
    /// all the same way: the mean rate it measures for them, in ppm. Such a site takes no
    /// primary role and renews no lease.
    #[serde(default)]
    pub clock_odd_ppm: Option<i64>,
}

/// One link of the answering site, as its heartbeats measure it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkStatus {
    pub peer: String,
    /// The round trip's moving average (a new sample weighs 1/8), ms.
    pub rtt_ms: Option<f64>,
    /// The p99 of the last 128 round trips, ms.
    pub rtt_p99_ms: Option<f64>,
    /// The share of the last 100 heartbeats not answered within their timeout (0 to 1).
    pub loss: f64,
    /// How long a heartbeat to this peer waits now before it counts as missed, ms.
    pub probe_timeout_ms: u64,
    /// The peer's clock rate against the answering site's, in ppm (+: the peer runs fast);
    /// absent until 5 s of answers.
    pub clock_ppm: Option<i64>,
    /// The peer's clock runs more than the bound off this site's while this site's agrees
    /// with the others: it gets no lease promise from here.
    #[serde(default)]
    pub clock_odd: bool,
}

/// The answering site's authoritative DNS.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DnsStatus {
    /// True once it answers from the committed routing; false: every query in the zone
    /// gets SERVFAIL.
    pub ready: bool,
    /// Why it is not ready, in words.
    pub why: Option<String>,
}

/// The peer port's TLS at the answering site.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerTlsView {
    /// "certificates", "secret" or "off".
    pub mode: String,
    /// Connections or requests refused, by reason (`unknown-ca`, `expired`, `wrong-name`,
    /// `claims-other-site`, `no-certificate`, ...).
    pub refused: std::collections::BTreeMap<String, u64>,
    /// This site's certificate's end of validity (RFC 3339), with certificate files.
    pub not_after: Option<String>,
    /// When the material in force was loaded (Unix ms).
    pub loaded_ms: u64,
    /// Reloads that failed (the previous material stayed in force).
    pub reload_failures: u64,
}

/// One delivery of an alert to one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AlertSent {
    pub unix_ms: u64,
    pub kind: String,
    pub message: String,
    /// The target's kind: webhook, email, command, slack, pagerduty, twilio.
    pub channel: String,
    pub ok: bool,
    pub error: Option<String>,
}

/// One `[[dependencies]]` as the answering site sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DependencyStatus {
    pub name: String,
    pub services: Vec<String>,
    /// `http`, `tcp` or `dns`.
    pub check: String,
    pub egress_port: Option<u16>,
    /// The committed state: `up`, `degraded` or `down` (the worst any data site reports).
    pub state: String,
    /// The data sites whose verdict made `state` (none when up).
    pub seen_by: Vec<String>,
    /// Each data site's own verdict, from its latest report.
    pub sites: std::collections::BTreeMap<String, String>,
    /// This site's verdict (none at a witness).
    pub here: Option<String>,
    /// The endpoint this site's egress forwarder sends a new connection to now.
    pub in_use: Option<String>,
    pub endpoints: Vec<DependencyEndpoint>,
}

/// One endpoint of a dependency, from the answering site.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DependencyEndpoint {
    pub address: String,
    pub health: String,
    pub since_ms: u64,
    pub last_probe_ms: f64,
    pub last_error: Option<String>,
    /// A drill's `dep-down` cuts it from this site now.
    pub cut: bool,
    /// What this site's egress forwarder saw of it.
    pub connections: u64,
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub active: u64,
    pub egress_error: Option<String>,
}

/// One `[[backups]]` at the answering site.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupStatus {
    pub name: String,
    /// As configured: `path:/dir` or `dataset:name`.
    pub source: String,
    /// Whether the answering site takes (and verifies) this backup's snapshots now: every
    /// data site for a `path:` source; for a dataset, the first live standby's site (the
    /// primary's when no standby is up).
    pub takes: bool,
    pub every_ms: u64,
    pub verify_every_ms: u64,
    /// `backup` or `verify` while one runs.
    #[serde(default)]
    pub running: Option<String>,
    /// The last backup run here, and the last one that succeeded.
    #[serde(default)]
    pub last: Option<BackupRun>,
    #[serde(default)]
    pub last_ok: Option<BackupRun>,
    /// The last verify run here, and the last one that succeeded.
    #[serde(default)]
    pub verify: Option<VerifyRun>,
    #[serde(default)]
    pub verify_ok: Option<VerifyRun>,
    /// Why the backup is alerting, when it is: the last run failed, or the last verified
    /// restore is older than twice `verify_every` (or there never was one).
    #[serde(default)]
    pub problem: Option<String>,
    /// `wal = true`, at a member site of the dataset: this site's WAL shipping.
    #[serde(default)]
    pub wal: Option<WalStatus>,
}

/// A member site's shipping of the WAL its server archived.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WalStatus {
    pub every_ms: u64,
    /// Segments archived here and not yet in every repository.
    pub waiting: u64,
    #[serde(default)]
    pub last: Option<WalRun>,
    #[serde(default)]
    pub last_ok: Option<WalRun>,
}

/// One batch of archived WAL written to the repositories.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WalRun {
    /// When it started (Unix ms).
    pub at_ms: u64,
    pub ok: bool,
    pub duration_ms: u64,
    pub files: u64,
    pub bytes: u64,
    /// The last segment it held (timeline, log, segment).
    #[serde(default)]
    pub upto: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// One backup run: a snapshot written to each repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupRun {
    /// When it started (Unix ms).
    pub at_ms: u64,
    pub ok: bool,
    pub duration_ms: u64,
    pub files: u64,
    pub bytes: u64,
    /// New data the snapshot added to the first repository, after deduplication.
    pub added_bytes: u64,
    pub repos: Vec<RepoRun>,
    #[serde(default)]
    pub error: Option<String>,
}

/// A backup run's result at one repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RepoRun {
    pub url: String,
    #[serde(default)]
    pub snapshot: Option<String>,
    pub duration_ms: u64,
    /// Snapshots of this backup the retention forgot after this one was written.
    pub forgotten: u64,
    #[serde(default)]
    pub error: Option<String>,
}

/// A verify: the newest snapshot restored into a scratch dir and checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VerifyRun {
    /// When it started (Unix ms).
    pub at_ms: u64,
    pub ok: bool,
    pub url: String,
    #[serde(default)]
    pub snapshot: Option<String>,
    /// From the start of the restore until its files were checked (and, for PostgreSQL,
    /// the restored server answered): the RTO of restoring from this backup.
    pub restore_ms: u64,
    /// How old the restored snapshot was when the restore ended: the RPO of restoring now.
    pub age_ms: u64,
    pub files_checked: u64,
    pub bytes: u64,
    /// PostgreSQL: what the restored server answered (its databases, tables).
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// One dataset: its committed primary and each member as the answering site sees it (its
/// own member from its own loop, the others by asking their servers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetStatus {
    pub name: String,
    /// The service that carries it (its primary is the service's).
    #[serde(default)]
    pub service: String,
    pub kind: String,
    /// The committed primary (its service's).
    pub primary: Option<String>,
    pub epoch: u64,
    /// `sync` or `async`.
    pub replication: String,
    pub members: Vec<DatasetMemberStatus>,
    /// Sync mode with every standby's site down, as the primary's site answers:
    /// `degraded` (commits acknowledged on one site) or `blocked` (commits wait).
    #[serde(default)]
    pub standby_lost: Option<String>,
    /// Sync mode: the standbys the cluster has recorded as synchronous (a failover
    /// promotes only one of them); `[]`: recorded to go on without one; none: nothing
    /// recorded yet.
    #[serde(default)]
    pub sync_set: Option<Vec<String>>,
    /// Diverged histories kept before rewinds, on this site.
    pub diverged: Vec<DivergedStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetMemberStatus {
    pub site: String,
    /// primary | standby | fenced | down | cloning | rewinding (unknown: not reachable from
    /// the answering site).
    pub role: String,
    /// The WAL position (primary: written; standby: replayed), as PostgreSQL writes it.
    pub lsn: Option<String>,
    /// Standby: bytes behind the primary's position.
    pub lag_bytes: Option<u64>,
    /// Standby: ms since the last replayed commit was made on the primary.
    pub lag_ms: Option<u64>,
    /// Standby: its state in the primary's eyes (sync, quorum, async, potential).
    pub sync: Option<String>,
    /// The last error of the member's loop (answering site's member only).
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DivergedStatus {
    pub site: String,
    pub epoch: u64,
    /// Where the member's history ended before the rewind.
    pub to_lsn: Option<String>,
    /// The archive: `data/` (starts read-only) and `wal.txt` (pg_waldump listing).
    pub path: String,
}

/// One primary move and its phases (wall-clock ms since the Unix epoch, as the answering
/// site saw them): `last-heard`, `declared`, `old-lease-over`, `acting`, `dns-published`,
/// `gateway-switched`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailoverStatus {
    /// The service (or dataset) that moved.
    pub what: String,
    pub epoch: u64,
    pub from: Option<String>,
    pub to: String,
    /// failover | failback | switchover
    pub reason: String,
    pub phases: Vec<PhaseStatus>,
    /// A failover of an `async` dataset: bytes of WAL the new primary was behind the old
    /// one, by their last reported positions (at least that much is not on the new one).
    #[serde(default)]
    pub wal_behind_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseStatus {
    pub name: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SiteStatus {
    pub name: String,
    /// up | down | fenced | maintenance
    pub state: String,
    pub witness: bool,
    /// Milliseconds since the answering site last exchanged a heartbeat with this one.
    pub last_seen_ms: Option<u64>,
    /// Peer requests signed by this site that the answering site refused as replays (seen
    /// before, or older than the replay window).
    #[serde(default)]
    pub replays_refused: u64,
    /// Authentic peer requests of this site that the answering site refused because this
    /// site's clock was more than 60 s off its own.
    #[serde(default)]
    pub clock_refused: u64,
    /// While this site gets nothing through to the answering site for its clock: how far
    /// its clock is off the answering site's (ms, + ahead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
    /// Sites this one and it cannot reach each other, though neither is down (a cut link,
    /// from the fresh reports of both sides as the answering site has them).
    #[serde(default)]
    pub cannot_reach: Vec<String>,
    /// The site's API (`http://address:api_port`), for clients that move to another site
    /// when this one stops answering.
    #[serde(default)]
    pub api: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub mode: String,
    pub primary: Option<String>,
    pub active_sites: Vec<String>,
    pub epoch: u64,
    /// Whether the primary is acting now (its hold has passed and it holds its lease), as
    /// far as the answering site knows.
    pub primary_acting: bool,
    /// Local backend health at the answering site: up | down | unknown (absent: none here).
    pub local_health: Option<String>,
    /// Requests (HTTP) or connections (TCP) received by the answering site's gateway.
    #[serde(default)]
    pub requests: u64,
    /// Of those, served through another site's gateway (one hop).
    #[serde(default)]
    pub forwarded: u64,
    /// The answering site's backends for this service.
    #[serde(default)]
    pub backends: Vec<BackendStatus>,
    /// protocol = "udp": the answering site's gateway counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpStatus>,
}

/// A UDP gateway's counters at one site, since its start.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct UdpStatus {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub sessions_open: u64,
    pub sessions_opened: u64,
    /// Sessions moved to another target (a refusal, or their target left the routing).
    pub sessions_moved: u64,
    pub dropped_no_backend: u64,
    pub dropped_cap: u64,
    pub dropped_truncated: u64,
    pub dropped_send_failed: u64,
    /// Datagrams that would have opened a session past `max_sessions_per_source` while
    /// none of that client address's sessions was idle enough to give way.
    #[serde(default)]
    pub dropped_source_cap: u64,
    /// Idle sessions ended to make room (at the per-source limit, or at the cap for a
    /// client address holding more than its share).
    #[serde(default)]
    pub sessions_evicted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub address: String,
    /// up | down | unknown
    pub health: String,
    /// How long it has had that health.
    pub since_ms: u64,
    pub last_probe_ms: f64,
    pub last_error: Option<String>,
    /// Requests it answered through the gateway.
    pub served: u64,
    /// Attempts that failed at it.
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamStatus {
    pub name: String,
    /// Own events not yet in a sink.
    pub spool_events: u64,
    pub spool_bytes: u64,
    pub oldest_unshipped_ms: Option<u64>,
    /// The sink the last object went to.
    pub sink: Option<String>,
    #[serde(default)]
    pub objects_shipped: u64,
    /// Objects shipped from a backlog (after a sink or site outage), at the replay pace.
    #[serde(default)]
    pub replays: u64,
    #[serde(default)]
    pub quarantined_segments: u64,
    /// Events acknowledged, duplicates included.
    #[serde(default)]
    pub accepted: u64,
    /// Events written to this site's spool, acknowledged or not (a client that left
    /// before the answer); each ships once.
    #[serde(default)]
    pub stored: u64,
    #[serde(default)]
    pub duplicates: u64,
    /// Per origin site: its events held here as a replica, not yet shipped.
    #[serde(default)]
    pub replicas: std::collections::BTreeMap<String, u64>,
    /// Down sites whose events this site ships.
    #[serde(default)]
    pub taking_over: Vec<String>,
    /// Per peer: the highest own event it holds, and the frames it refused or did not
    /// answer (with the last reason while it is failing).
    #[serde(default)]
    pub replication: std::collections::BTreeMap<String, PeerReplication>,
    /// Bytes free on the disk under the spool.
    #[serde(default)]
    pub disk_free_bytes: Option<u64>,
    /// Ingest was refused in the last seconds because the disk is full or under
    /// `min_free_bytes`.
    #[serde(default)]
    pub out_of_space: bool,
}

impl StreamStatus {
    /// Column headings of [`Self::cells`].
    pub const HEADINGS: [&'static str; 9] = [
        "STREAM",
        "UNSHIPPED",
        "OLDEST",
        "SINK",
        "OBJECTS",
        "REPLAYS",
        "QUARANTINED",
        "REPLICAS HELD",
        "TAKING OVER",
    ];

    /// The stream's figures as a person reads them, one per heading: `outlast status`
    /// and the dashboard show the same.
    pub fn cells(&self) -> [String; 9] {
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "-".to_string()
            } else {
                items.join(", ")
            }
        };
        [
            self.name.clone(),
            format!("{} ({})", self.spool_events, size(self.spool_bytes)),
            self.oldest_unshipped_ms
                .map_or_else(|| "-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
            self.sink.clone().unwrap_or_else(|| "-".into()),
            self.objects_shipped.to_string(),
            self.replays.to_string(),
            self.quarantined_segments.to_string(),
            list(
                self.replicas
                    .iter()
                    .map(|(origin, n)| format!("{origin}: {n}"))
                    .collect(),
            ),
            list(self.taking_over.clone()),
        ]
    }
}

/// Bytes in the largest binary unit that keeps a whole number in front.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// How a site's own events reach one peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerReplication {
    /// The highest own event the peer holds, as it last said.
    pub holds_through: Option<u64>,
    /// Frames it refused or did not answer since this site started.
    pub errors: u64,
    /// Why the last frame failed, while replication to it is failing.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_the_largest_whole_unit() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 40), "5.0 TiB");
    }
}

/// `POST /v1/switchover`: move a service's primary (or a dataset's, through its service)
/// to `to`, planned and with nothing lost. Exactly one of `service` and `dataset`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub dataset: Option<String>,
    pub to: String,
}

/// `POST /v1/maintenance`: put a site in maintenance (`on`) or take it out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub site: String,
    pub on: bool,
}

/// One planned move carried out: the answer of `/v1/switchover`, and each move of
/// `/v1/maintenance`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MoveAnswer {
    pub service: String,
    /// The dataset that moved with the service, if it has one.
    pub dataset: Option<String>,
    pub from: Option<String>,
    pub to: String,
    /// The epoch the move made.
    pub epoch: u64,
    /// How long writes were held: from the move's commit (the old primary stops taking
    /// writes as it applies it) until the new primary acts and, for a dataset, its server
    /// takes writes. As the answering site saw it, to within one probe interval.
    pub held_ms: u64,
}

/// The answer of `POST /v1/maintenance`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MaintenanceAnswer {
    pub site: String,
    pub on: bool,
    pub epoch: u64,
    /// The primaries that moved away from the site (going in only).
    pub moved: Vec<MoveAnswer>,
}

/// `POST /v1/incidents` (a new incident; `title` required) and `POST /v1/incidents/ID` (an
/// update): an operator's words, committed through the cluster so every site shows them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IncidentRequest {
    #[serde(default)]
    pub title: Option<String>,
    /// investigating | identified | monitoring | resolved (absent: a new incident is
    /// investigating, an update keeps the incident's status)
    #[serde(default)]
    pub status: Option<String>,
    /// none | maintenance | minor | major | critical (a new incident: minor when absent)
    #[serde(default)]
    pub impact: Option<String>,
    pub message: String,
    /// Who writes (shown beside the words).
    #[serde(default)]
    pub by: Option<String>,
    /// Components it touches: `site-NAME`, `service-NAME`.
    #[serde(default)]
    pub components: Vec<String>,
}

/// The longest title and message an incident request may carry.
pub const INCIDENT_TITLE_MAX: usize = 200;
pub const INCIDENT_MESSAGE_MAX: usize = 4000;

impl IncidentRequest {
    /// Checks the words and their lengths; why not, for a 400.
    pub fn check(&self, new: bool) -> Result<(), String> {
        if let Some(s) = &self.status {
            crate::incident::Step::parse(s)?;
        }
        if let Some(i) = &self.impact {
            crate::incident::Impact::parse(i)?;
        }
        if new && self.title.as_deref().is_none_or(|t| t.trim().is_empty()) {
            return Err("a new incident needs a \"title\"".into());
        }
        if self
            .title
            .as_ref()
            .is_some_and(|t| t.chars().count() > INCIDENT_TITLE_MAX)
        {
            return Err(format!(
                "the title is longer than {INCIDENT_TITLE_MAX} characters"
            ));
        }
        if self.message.trim().is_empty() {
            return Err("the \"message\" is empty: say what is happening".into());
        }
        if self.message.chars().count() > INCIDENT_MESSAGE_MAX {
            return Err(format!(
                "the message is longer than {INCIDENT_MESSAGE_MAX} characters"
            ));
        }
        if self.by.as_ref().is_some_and(|b| b.chars().count() > 100) {
            return Err("\"by\" is longer than 100 characters".into());
        }
        if self.components.len() > 64 {
            return Err("more than 64 components".into());
        }
        Ok(())
    }
}
