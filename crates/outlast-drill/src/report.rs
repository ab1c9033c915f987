//! Analysis of a drill's recording, and the report: `report.json` and `index.html` with the
//! timeline drawn as SVG, the stopwatch table, each expectation's verdict and the trend of
//! earlier drills.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::scenario::{Expect, Scenario};

/// Width of a timeline bucket.
pub const BUCKET_MS: u64 = 250;
/// The RTO window: requests succeed again once a window this long is at 99%.
const WINDOW_MS: u64 = 1000;

/// One request of the workload: sent at `t_ms` (drill time), answered (or failed) after
/// `latency_ms`; `ok` when an answer came back below 500.
#[derive(Debug, Clone, Copy)]
pub struct RequestOutcome {
    pub t_ms: u64,
    pub ok: bool,
    pub latency_ms: f64,
}

impl RequestOutcome {
    /// Drill time of the answer (or of the failure).
    pub fn answered_ms(&self) -> u64 {
        self.t_ms + self.latency_ms.max(0.0) as u64
    }

    /// Served: answered well within `ok_within_ms`, as a client with that patience sees it.
    pub fn served(&self, ok_within_ms: u64) -> bool {
        self.ok && self.latency_ms <= ok_within_ms as f64
    }
}

#[derive(Debug, Default)]
pub struct Recording {
    pub duration_ms: u64,
    pub requests: Vec<RequestOutcome>,
    /// Acknowledged write ids and when they were acknowledged.
    pub acked: Vec<(String, u64)>,
    pub writes_refused: u64,
    /// Times each id was found in the sinks (a key held by two sinks counts once).
    pub stored: BTreeMap<String, usize>,
    pub faults: Vec<FaultAt>,
    pub failback_ms: Option<u64>,
    /// The phases of each primary move during the drill, as the agents recorded them.
    pub phases: Vec<PhaseAt>,
    /// The dataset workload, when there is one.
    pub db: Option<DbRecording>,
    /// Each `rebuild` step's stopwatch.
    pub rebuilds: Vec<RebuildRun>,
    /// The newest verified restore of each backup, as the sites told it after the drill.
    pub restores: Vec<VerifiedRestore>,
    /// Each dependency as the sites saw it during the drill.
    pub dependencies: Vec<DepRun>,
    /// Each link as its sites measured it during the drill.
    pub links: Vec<LinkRun>,
    /// Each Raft term seen during the drill, with its leader.
    pub leaders: Vec<LeaderSeen>,
}

/// One link during a drill, as the site at its near end measured it (its `/v1/status`
/// `links[]`, sampled every 250 ms): the worst figures seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LinkRun {
    pub site: String,
    pub peer: String,
    /// The largest moving-average round trip seen, ms.
    pub rtt_ms_max: Option<f64>,
    /// The largest p99 round trip seen, ms.
    pub rtt_p99_ms_max: Option<f64>,
    /// The largest share of heartbeats unanswered in time seen.
    pub loss_max: f64,
    /// The peer's clock rate against the site's, as last seen (ppm).
    pub clock_ppm: Option<i64>,
}

/// A Raft term first seen during the drill (drill time), and its leader as then known.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LeaderSeen {
    pub at_ms: u64,
    pub term: u64,
    pub leader: Option<String>,
}

/// One dependency during a drill: its committed state over time, where each site's egress
/// forwarder sent new connections, and what the forwarders counted per endpoint at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DepRun {
    pub name: String,
    /// Drill time when its committed state first left `up` (none: it never did).
    pub first_not_up_ms: Option<u64>,
    /// How long it was not `up`, in total, as sampled every 100 ms.
    pub not_up_ms: u64,
    /// The worst committed state seen.
    pub worst: String,
    /// Each change of a site's egress target: (drill ms, site, from, to).
    pub egress_moves: Vec<EgressMove>,
    /// At the end, per site and endpoint: connections, errors, bytes sent and received.
    pub endpoints: Vec<EndpointCount>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EgressMove {
    pub at_ms: u64,
    pub site: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointCount {
    pub site: String,
    pub endpoint: String,
    pub connections: u64,
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// One `outlast rebuild` during the drill.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RebuildRun {
    pub site: String,
    /// When it started, in drill time.
    pub at_ms: u64,
    /// From its start until the site rejoined (none: it had not when the drill ended).
    pub total_ms: Option<u64>,
    pub steps: Vec<RebuildStep>,
}

/// A step of a rebuild, as its stopwatch timed it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RebuildStep {
    pub step: String,
    pub ms: u64,
    pub said: String,
}

/// A backup's newest verified restore: how long restoring it took and how old what it
/// restored was (the RTO and RPO of restoring from backup).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VerifiedRestore {
    pub backup: String,
    /// The site that verified it.
    pub site: String,
    /// When the verify started (Unix ms).
    pub at_ms: u64,
    pub restore_ms: u64,
    pub age_ms: u64,
    pub snapshot: Option<String>,
}

/// What the dataset workload did and found.
#[derive(Debug, Default)]
pub struct DbRecording {
    /// Every commit tried: when, whether it was acknowledged, how long it took.
    pub commits: Vec<RequestOutcome>,
    /// Each acknowledged row's number, and when it was acknowledged.
    pub acked: Vec<(u64, u64)>,
    /// The rows the final primary holds (None: it could not be read).
    pub found: Option<std::collections::BTreeSet<u64>>,
    /// Diverged histories the members archived during the drill.
    pub archives: Vec<String>,
}

/// One phase of one primary move, in drill time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseAt {
    /// The service (or dataset) that moved.
    pub what: String,
    pub epoch: u64,
    pub from: Option<String>,
    pub to: String,
    /// last-heard | declared | old-lease-over | acting | dns-published | gateway-switched
    pub name: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultAt {
    pub at_ms: u64,
    pub what: String,
    /// Whether the fault can take service away (see [`crate::scenario::Fault::disrupts`]).
    #[serde(default)]
    pub disrupts: bool,
    /// For a disruptive fault with a service workload: the downtime it caused, from the
    /// fault to recovery (0 when service did not degrade before the next step).
    #[serde(default)]
    pub rto_ms: Option<u64>,
    /// The same for the dataset workload's commits.
    #[serde(default)]
    pub db_rto_ms: Option<u64>,
}

/// A stretch of the drill in which fewer than 99% of the answers (or commits) of each
/// 250 ms were served in time: every dip, the ones inside a fault's downtime and the
/// ones after it (a failback, clients still sent to a dead site by a cached DNS answer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Dip {
    /// `"requests"` or `"commits"`.
    pub of: String,
    pub from_ms: u64,
    pub to_ms: u64,
    /// The lowest share served in one bucket of the dip, in percent.
    pub worst_pct: f64,
    /// Answers (commits) in the dip that were not served in time.
    pub not_served: u64,
    /// What the drill knows of why: the step or the primary move it follows.
    pub cause: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Requests {
    pub sent: u64,
    /// Answered within the scenario's `ok_within`.
    pub ok: u64,
    /// Answered below 500, but after `ok_within`.
    #[serde(default)]
    pub late: u64,
    /// Refused (500 or more), timed out or not connected.
    pub failed: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Writes {
    pub acked: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Tries refused by a site (retried elsewhere with the same ids).
    #[serde(default)]
    pub refused: u64,
}

/// The `pct`th percentile of the acknowledged commits' waits, ms, one decimal.
fn acked_percentile(commits: &[RequestOutcome], pct: usize) -> Option<f64> {
    let mut waits: Vec<f64> = commits
        .iter()
        .filter(|c| c.ok)
        .map(|c| c.latency_ms)
        .collect();
    if waits.is_empty() {
        return None;
    }
    waits.sort_by(f64::total_cmp);
    let i = (waits.len() * pct).div_ceil(100).saturating_sub(1);
    Some((waits[i.min(waits.len() - 1)] * 10.0).round() / 10.0)
}

/// The dataset workload's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Db {
    /// Commits acknowledged to the workload.
    pub acked: u64,
    /// Acknowledged commits missing from the final primary (None: it could not be read).
    pub lost: Option<u64>,
    /// Write downtime, by the same rule as `rto_ms` over commits (0: none).
    pub rto_ms: Option<u64>,
    /// Diverged histories archived during the drill.
    pub diverged: u64,
    /// Their paths.
    pub archives: Vec<String>,
    /// Commits tried and not acknowledged (failed or timed out; each retried).
    pub failed: u64,
    /// The longest a commit waited for its acknowledgement or its failure.
    pub longest_wait_ms: u64,
    /// The median and the 99th percentile of the acknowledged commits' waits (ms): what a
    /// synchronous commit costs, a round trip to the standby included.
    #[serde(default)]
    pub commit_p50_ms: Option<f64>,
    #[serde(default)]
    pub commit_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    pub t_ms: u64,
    /// Requests sent in the bucket, and of those served within `ok_within`.
    pub sent: u64,
    pub ok: u64,
    /// Requests answered (or failed) in the bucket, and of those served: what a client
    /// saw at that moment, drawn as the success rate.
    #[serde(default)]
    pub answered: u64,
    #[serde(default)]
    pub served: u64,
    /// Latency of the answers of the bucket.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Dataset workload: commits answered (acknowledged or failed) in the bucket, and of
    /// those acknowledged within `ok_within`.
    #[serde(default)]
    pub commits: u64,
    #[serde(default)]
    pub commits_ok: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub metric: String,
    pub op: String,
    pub value: f64,
    pub actual: Option<f64>,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub started: String,
    pub started_ms: u64,
    pub duration_ms: u64,
    pub faults: Vec<FaultAt>,
    pub rto_ms: Option<u64>,
    /// A request counts as served when answered within this.
    #[serde(default = "default_ok_within")]
    pub ok_within_ms: u64,
    /// The longest any request waited for its answer (or its failure).
    #[serde(default)]
    pub longest_wait_ms: u64,
    pub requests: Requests,
    pub writes: Writes,
    pub rpo_ms: u64,
    pub failback_ms: Option<u64>,
    /// The dataset workload's figures (none without one).
    #[serde(default)]
    pub db: Option<Db>,
    pub timeline: Vec<Bucket>,
    /// Phases of the primary moves during the drill.
    #[serde(default)]
    pub phases: Vec<PhaseAt>,
    /// Each `rebuild` fault's stopwatch.
    #[serde(default)]
    pub rebuilds: Vec<RebuildRun>,
    /// The newest verified restore of each backup when the drill ended.
    #[serde(default)]
    pub restores: Vec<VerifiedRestore>,
    /// Each `[[dependencies]]` during the drill.
    #[serde(default)]
    pub dependencies: Vec<DepRun>,
    /// Each link as its near site measured it (the worst seen).
    #[serde(default)]
    pub links: Vec<LinkRun>,
    /// The Raft terms seen, each with its leader: more than one is a leader change.
    #[serde(default)]
    pub leaders: Vec<LeaderSeen>,
    /// Every stretch served below 99%, with its likely cause.
    #[serde(default)]
    pub dips: Vec<Dip>,
    pub expectations: Vec<Verdict>,
    pub passed: bool,
}

fn default_ok_within() -> u64 {
    1000
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// RTO: from the first fault to the start of the first 1 s window, by answer time, in
/// which 99% of the answers were served within `ok_within_ms`, looking from the first
/// request after the fault that was not served (failed, or answered late); a window
/// starts with a served answer, so the RTO ends at an answer a client got. A request held
/// past `ok_within_ms` is downtime though it got an answer. None: nothing went wrong.
pub fn rto(
    requests: &[RequestOutcome],
    fault_ms: u64,
    end_ms: u64,
    ok_within_ms: u64,
) -> Option<u64> {
    rto_before(requests, fault_ms, u64::MAX, end_ms, ok_within_ms)
}

/// [`rto`] for a fault whose downtime must start before `bad_before` (the next step): a
/// failure after that belongs to the next step, not to this fault.
pub fn rto_before(
    requests: &[RequestOutcome],
    fault_ms: u64,
    bad_before: u64,
    end_ms: u64,
    ok_within_ms: u64,
) -> Option<u64> {
    let first_bad = requests
        .iter()
        .filter(|r| r.answered_ms() >= fault_ms && !r.served(ok_within_ms))
        .map(RequestOutcome::answered_ms)
        .min()
        .filter(|t| *t < bad_before)?;
    let last = requests
        .iter()
        .map(RequestOutcome::answered_ms)
        .max()
        .unwrap_or(end_ms)
        .max(end_ms);
    // Answers in time order, with a running count of the served ones: each window is then
    // two indexes, not a pass over every request (a long drill has hundreds of thousands).
    let mut answers: Vec<(u64, bool)> = requests
        .iter()
        .map(|r| (r.answered_ms(), r.served(ok_within_ms)))
        .collect();
    answers.sort_unstable();
    let mut served_before = Vec::with_capacity(answers.len() + 1);
    served_before.push(0u64);
    for (_, served) in &answers {
        let n = served_before.last().copied().unwrap_or(0);
        served_before.push(n + u64::from(*served));
    }
    // A window starts with a served answer: a stretch in which clients wait and nothing
    // comes back is downtime, not a clean window.
    let (mut hi, mut group, mut tried) = (0, 0, None);
    for (i, &(t, served)) in answers.iter().enumerate() {
        // Answers at the same time form one group; a window from t counts all of them.
        if i == 0 || answers[i - 1].0 != t {
            group = i;
        }
        if !served || tried == Some(t) || t < first_bad || t + WINDOW_MS > last {
            continue;
        }
        tried = Some(t);
        let lo = group;
        hi = hi.max(lo);
        while hi < answers.len() && answers[hi].0 < t + WINDOW_MS {
            hi += 1;
        }
        let n = (hi - lo) as u64;
        let ok = served_before[hi] - served_before[lo];
        if ok * 100 >= n * 99 {
            return Some(t - fault_ms);
        }
    }
    // Never recovered within the drill: the whole rest of it.
    Some(end_ms.saturating_sub(fault_ms))
}

pub fn analyse(sc: &Scenario, rec: &Recording, started_ms: u64) -> Report {
    let within = u64::try_from(sc.workload.ok_within.as_millis()).unwrap_or(u64::MAX);
    let ok = rec.requests.iter().filter(|r| r.served(within)).count() as u64;
    let failed = rec.requests.iter().filter(|r| !r.ok).count() as u64;
    let requests = Requests {
        sent: rec.requests.len() as u64,
        ok,
        late: rec.requests.len() as u64 - ok - failed,
        failed,
    };
    let longest_wait_ms = rec
        .requests
        .iter()
        .map(|r| r.latency_ms.max(0.0).ceil() as u64)
        .max()
        .unwrap_or(0);
    // Downtime is counted from each disruptive fault, up to the next step: a delay at 1 s
    // and a kill at 10 s is the kill's downtime, not 11 s.
    let per_fault = |outcomes: &[RequestOutcome]| -> Vec<Option<u64>> {
        rec.faults
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let next = rec.faults[i + 1..]
                    .iter()
                    .map(|n| n.at_ms)
                    .find(|t| *t > f.at_ms)
                    .unwrap_or(u64::MAX);
                f.disrupts.then(|| {
                    rto_before(outcomes, f.at_ms, next, rec.duration_ms, within).unwrap_or(0)
                })
            })
            .collect()
    };
    let mut faults = rec.faults.clone();
    let rto_ms = if sc.workload.service.is_some() {
        let each = per_fault(&rec.requests);
        for (f, r) in faults.iter_mut().zip(&each) {
            f.rto_ms = *r;
        }
        Some(each.into_iter().flatten().max().unwrap_or(0))
    } else {
        None
    };
    let db_each = rec
        .db
        .as_ref()
        .map(|d| per_fault(&d.commits))
        .unwrap_or_default();
    for (f, r) in faults.iter_mut().zip(&db_each) {
        f.db_rto_ms = *r;
    }
    let db = rec.db.as_ref().map(|d| {
        let acked: std::collections::BTreeSet<u64> = d.acked.iter().map(|(n, _)| *n).collect();
        Db {
            acked: acked.len() as u64,
            lost: d
                .found
                .as_ref()
                .map(|f| acked.iter().filter(|n| !f.contains(n)).count() as u64),
            rto_ms: Some(db_each.iter().flatten().copied().max().unwrap_or(0)),
            diverged: d.archives.len() as u64,
            archives: d.archives.clone(),
            failed: d.commits.iter().filter(|c| !c.ok).count() as u64,
            longest_wait_ms: d
                .commits
                .iter()
                .map(|c| c.latency_ms.max(0.0).ceil() as u64)
                .max()
                .unwrap_or(0),
            commit_p50_ms: acked_percentile(&d.commits, 50),
            commit_p99_ms: acked_percentile(&d.commits, 99),
        }
    });
    let lost: Vec<u64> = rec
        .acked
        .iter()
        .filter(|(id, _)| !rec.stored.contains_key(id))
        .map(|(_, t)| *t)
        .collect();
    let rpo_ms = match (lost.iter().min(), lost.iter().max()) {
        (Some(a), Some(b)) => b - a + 1,
        _ => 0,
    };
    let writes = Writes {
        acked: rec.acked.len() as u64,
        lost: lost.len() as u64,
        duplicated: rec.stored.values().filter(|n| **n > 1).count() as u64,
        refused: rec.writes_refused,
    };
    // Each request lands in one bucket by the time it was sent and one by the time it was
    // answered; one pass fills them.
    let buckets = usize::try_from(rec.duration_ms.div_ceil(BUCKET_MS)).unwrap_or(0);
    let bucket = |t: u64| usize::try_from(t / BUCKET_MS).ok().filter(|i| *i < buckets);
    let mut timeline: Vec<Bucket> = (0..buckets as u64)
        .map(|i| Bucket {
            t_ms: i * BUCKET_MS,
            sent: 0,
            ok: 0,
            answered: 0,
            served: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            commits: 0,
            commits_ok: 0,
        })
        .collect();
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); buckets];
    for r in &rec.requests {
        let served = r.served(within);
        if let Some(b) = bucket(r.t_ms).and_then(|i| timeline.get_mut(i)) {
            b.sent += 1;
            b.ok += u64::from(served);
        }
        if let Some(i) = bucket(r.answered_ms()) {
            timeline[i].answered += 1;
            timeline[i].served += u64::from(served);
            if r.ok {
                latencies[i].push(r.latency_ms);
            }
        }
    }
    for c in rec.db.iter().flat_map(|d| &d.commits) {
        if let Some(b) = bucket(c.answered_ms()).and_then(|i| timeline.get_mut(i)) {
            b.commits += 1;
            b.commits_ok += u64::from(c.served(within));
        }
    }
    for (b, lat) in timeline.iter_mut().zip(&mut latencies) {
        lat.sort_by(f64::total_cmp);
        b.p50_ms = pct(lat, 0.5);
        b.p99_ms = pct(lat, 0.99);
    }
    let mut dips = dips_of(
        &timeline,
        "requests",
        |b| (b.answered, b.served),
        &faults,
        &rec.phases,
    );
    dips.extend(dips_of(
        &timeline,
        "commits",
        |b| (b.commits, b.commits_ok),
        &faults,
        &rec.phases,
    ));
    let actual = |e: &Expect| -> Option<f64> {
        Some(match e.metric.as_str() {
            "rto_ms" => rto_ms? as f64,
            "rpo_ms" => rpo_ms as f64,
            "failback_ms" => rec.failback_ms? as f64,
            "requests_failed" => requests.failed as f64,
            "requests_late" => requests.late as f64,
            "longest_wait_ms" => longest_wait_ms as f64,
            "writes_acked" => writes.acked as f64,
            "writes_lost" => writes.lost as f64,
            "writes_duplicated" => writes.duplicated as f64,
            "db_acked" => db.as_ref()?.acked as f64,
            "db_lost" => db.as_ref()?.lost? as f64,
            "db_rto_ms" => db.as_ref()?.rto_ms? as f64,
            "db_diverged" => db.as_ref()?.diverged as f64,
            "rebuild_ms" => rec.rebuilds.last()?.total_ms? as f64,
            "dep_down_ms" => rec.dependencies.iter().map(|d| d.not_up_ms).max()? as f64,
            "leader_changes" => rec.leaders.len().saturating_sub(1) as f64,
            "rtt_ms_max" => rec
                .links
                .iter()
                .filter_map(|l| l.rtt_p99_ms_max)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))?,
            _ => return None,
        })
    };
    let expectations: Vec<Verdict> = sc
        .expect
        .iter()
        .map(|e| {
            let a = actual(e);
            Verdict {
                metric: e.metric.clone(),
                op: serde_json::to_value(e.op)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                value: e.value,
                actual: a,
                pass: a.is_some_and(|a| e.holds(a)),
            }
        })
        .collect();
    Report {
        scenario: sc.name.clone(),
        started: outlast_relay::utc_timestamp(started_ms),
        started_ms,
        duration_ms: rec.duration_ms,
        faults,
        rto_ms,
        ok_within_ms: within,
        longest_wait_ms,
        requests,
        writes,
        rpo_ms,
        failback_ms: rec.failback_ms,
        db,
        passed: expectations.iter().all(|v| v.pass),
        timeline,
        phases: rec.phases.clone(),
        rebuilds: rec.rebuilds.clone(),
        restores: rec.restores.clone(),
        dependencies: rec.dependencies.clone(),
        links: rec.links.clone(),
        leaders: rec.leaders.clone(),
        dips,
        expectations,
    }
}

/// Every run of buckets in which fewer than 99% of the answers were served (`count` gives
/// a bucket's answered and served), each with the likeliest cause the drill knows: the
/// last step before it, or a primary move in it or just before it.
fn dips_of(
    timeline: &[Bucket],
    of: &str,
    count: impl Fn(&Bucket) -> (u64, u64),
    faults: &[FaultAt],
    phases: &[PhaseAt],
) -> Vec<Dip> {
    let mut dips: Vec<Dip> = Vec::new();
    let mut open: Option<Dip> = None;
    for b in timeline {
        let (answered, served) = count(b);
        let low = answered > 0 && served * 100 < answered * 99;
        match (&mut open, low) {
            (Some(d), true) => {
                d.to_ms = b.t_ms + BUCKET_MS;
                d.worst_pct = d.worst_pct.min(pct_of(served, answered));
                d.not_served += answered - served;
            }
            (None, true) => {
                open = Some(Dip {
                    of: of.to_string(),
                    from_ms: b.t_ms,
                    to_ms: b.t_ms + BUCKET_MS,
                    worst_pct: pct_of(served, answered),
                    not_served: answered - served,
                    cause: String::new(),
                })
            }
            (Some(_), false) if answered > 0 => dips.extend(open.take()),
            _ => {}
        }
    }
    dips.extend(open);
    for d in &mut dips {
        d.cause = dip_cause(d, faults, phases);
    }
    dips
}

fn pct_of(part: u64, whole: u64) -> f64 {
    (1000.0 * part as f64 / whole.max(1) as f64).round() / 10.0
}

fn dip_cause(d: &Dip, faults: &[FaultAt], phases: &[PhaseAt]) -> String {
    let step = faults.iter().rev().find(|f| f.at_ms <= d.to_ms);
    // A move whose acting phase falls in the dip, or up to 2 s before it.
    // Commits dip with the dataset's moves (those with a db-promoted phase).
    let is_db = |what: &str| {
        phases
            .iter()
            .any(|p| p.what == what && p.name == "db-promoted")
    };
    let moved = phases
        .iter()
        .filter(|p| p.name == "acting" || p.name == "declared")
        .filter(|p| {
            (d.of == "commits") == is_db(&p.what) || !phases.iter().any(|q| q.name == "db-promoted")
        })
        .rev()
        .find(|p| p.at_ms <= d.to_ms && p.at_ms + 2000 >= d.from_ms);
    let downtime = |f: &FaultAt| {
        if d.of == "commits" {
            f.db_rto_ms
        } else {
            f.rto_ms
        }
    };
    let mut why = match step {
        Some(f) if f.disrupts && downtime(f).is_some_and(|r| d.from_ms <= f.at_ms + r) => {
            format!("the downtime after {} at {} ms", f.what, f.at_ms)
        }
        Some(f) if f.disrupts => format!(
            "{} ms after {} (past its downtime: clients still sent to where a cached DNS answer or an open connection points, or retries)",
            d.from_ms.saturating_sub(f.at_ms),
            f.what
        ),
        Some(f) => format!("{} ms after {}", d.from_ms.saturating_sub(f.at_ms), f.what),
        None => "before any step".to_string(),
    };
    if let Some(p) = moved {
        let from = p.from.as_deref().unwrap_or("none");
        why.push_str(&format!(
            "; {} moved {from} -> {} (epoch {})",
            p.what, p.to, p.epoch
        ));
        if step.is_some_and(|f| !f.disrupts && f.what.starts_with("restart")) {
            why.push_str(": the failback, whose hand-over fails or retries what was in flight");
        }
    }
    why
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The timeline: success rate (green) and p99 latency (blue) over time, faults in red,
/// the RTO span shaded.
pub fn timeline_svg(r: &Report) -> String {
    // A service and a dataset, each failing over and back, are four moves.
    let mut moves = failover_rows(&r.phases);
    moves.truncate(4);
    let (w, left, right, top, bottom) = (960.0, 56.0, 56.0, 24.0, 36.0);
    let chart_h = 320.0;
    let h = chart_h + BAND_ROW * moves.len() as f64;
    let pw = w - left - right;
    let ph = chart_h - top - bottom;
    let dur = r.duration_ms.max(1) as f64;
    let x = |t: f64| left + pw * t / dur;
    let max_lat = nice_ceiling(
        r.timeline
            .iter()
            .map(|b| b.p99_ms)
            .fold(1.0f64, f64::max)
            .max(4.0),
    );
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" style="max-width:{w}px" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r##"<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>"##
    );
    // Every dip below 99% shaded pale, then each fault's downtimes over them, their labels
    // after, so no shade hides a label.
    let mut labels = String::new();
    for d in &r.dips {
        let (a, b) = (x(d.from_ms as f64), x(d.to_ms as f64));
        let _ = write!(
            s,
            r##"<rect x="{a:.1}" y="{top}" width="{:.1}" height="{ph}" fill="#fff1b8" opacity="0.8"><title>{} below 99%: {} ({} not served, worst {}%)</title></rect>"##,
            (b - a).max(1.0),
            esc(&d.of),
            esc(&d.cause),
            d.not_served,
            d.worst_pct
        );
    }
    let mut shades = Vec::new();
    for f in &r.faults {
        shades.push((f.at_ms, f.db_rto_ms, "#fdebd0", "#b60", "DB RTO", 22.0));
        shades.push((f.at_ms, f.rto_ms, "#fde2e2", "#b00", "RTO", 6.0));
    }
    for (at_ms, rto, fill, ink, name, above) in shades {
        let Some(rto) = rto.filter(|v| *v > 0) else {
            continue;
        };
        let (a, b) = (x(at_ms as f64), x((at_ms + rto) as f64));
        let _ = write!(
            s,
            r##"<rect x="{a:.1}" y="{top}" width="{:.1}" height="{ph}" fill="{fill}" opacity="0.8"/>"##,
            (b - a).max(1.0),
        );
        let _ = write!(
            labels,
            r##"<text x="{:.1}" y="{:.1}" fill="{ink}">{name} {rto} ms</text>"##,
            a + 4.0,
            top + ph - above
        );
    }
    s.push_str(&labels);
    // Axes and grid.
    for i in 0..=4 {
        let y = top + ph * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#2a7">{}%</text><text x="{:.1}" y="{:.1}" fill="#36c">{:.0} ms</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            100 - i * 25,
            left + pw + 6.0,
            y + 4.0,
            max_lat * (1.0 - f64::from(i) / 4.0)
        );
    }
    let step = if dur > 60_000.0 { 10_000 } else { 5_000 };
    let mut t = 0;
    while (t as f64) <= dur {
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}s</text>"##,
            x(t as f64),
            chart_h - 12.0,
            t / 1000
        );
        t += step;
    }
    let line = |pts: Vec<(f64, f64)>, color: &str| -> String {
        let d: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            d.join(" ")
        )
    };
    let mid = |b: &Bucket| x(b.t_ms as f64 + BUCKET_MS as f64 / 2.0);
    // A part of a whole, 0 when there was nothing (nothing came back is drawn at 0%).
    let share = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64
        }
    };
    // What clients saw: served answers over all answers, by answer time; a bucket in which
    // requests were sent but nothing came back is drawn at 0%.
    let success: Vec<(f64, f64)> = r
        .timeline
        .iter()
        .filter(|b| b.sent > 0 || b.answered > 0)
        .map(|b| (mid(b), top + ph * (1.0 - share(b.served, b.answered))))
        .collect();
    let latency: Vec<(f64, f64)> = r
        .timeline
        .iter()
        .filter(|b| b.answered > 0 && b.p99_ms > 0.0)
        .map(|b| (mid(b), top + ph * (1.0 - b.p99_ms / max_lat)))
        .collect();
    // The dataset workload: commits acknowledged within ok_within over commits answered.
    s.push_str(&line(latency, "#36c"));
    s.push_str(&line(success, "#2a7"));
    if r.db.is_some() {
        let commits = r
            .timeline
            .iter()
            .map(|b| (mid(b), top + ph * (1.0 - share(b.commits_ok, b.commits))))
            .collect();
        s.push_str(&line(commits, "#e80"));
    }
    for (i, f) in r.faults.iter().enumerate() {
        let fx = x(f.at_ms as f64);
        let _ = write!(
            s,
            r##"<line x1="{fx:.1}" x2="{fx:.1}" y1="{top}" y2="{:.1}" stroke="#d22" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#d22" stroke="#fff" stroke-width="3" paint-order="stroke">{}</text>"##,
            top + ph,
            fx + 3.0,
            top + 12.0 + 14.0 * (i % 3) as f64,
            esc(&f.what)
        );
    }
    if let Some((at, what)) = failback_mark(r) {
        let fx = x(at as f64);
        let _ = write!(
            s,
            r##"<line x1="{fx:.1}" x2="{fx:.1}" y1="{top}" y2="{:.1}" stroke="#2a7" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#2a7" stroke="#fff" stroke-width="3" paint-order="stroke">{what}</text>"##,
            top + ph,
            fx + 3.0,
            top + 12.0 + 14.0 * (r.faults.len() % 3) as f64,
        );
    }
    for (k, row) in moves.iter().enumerate() {
        phase_band(&mut s, row, k, chart_h, (left, pw, top + ph), &x);
    }
    let _ = write!(
        s,
        r##"<text x="{left}" y="14" fill="#2a7">served within {} ms</text><text x="{:.1}" y="14" fill="#36c">p99 latency</text>"##,
        r.ok_within_ms,
        left + 170.0
    );
    if r.db.is_some() {
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="14" fill="#e80">commits acknowledged within {} ms</text>"##,
            left + 270.0,
            r.ok_within_ms
        );
    }
    s.push_str("</svg>");
    s
}

/// Height of one failover's band under the timeline.
const BAND_ROW: f64 = 120.0;

/// The phases grouped into moves (one thing's primary changing in one epoch), each in time
/// order, the moves in the order they began.
pub fn failover_rows(phases: &[PhaseAt]) -> Vec<Vec<&PhaseAt>> {
    let mut rows: Vec<Vec<&PhaseAt>> = Vec::new();
    for p in phases {
        match rows
            .iter_mut()
            .find(|r| r[0].what == p.what && r[0].epoch == p.epoch)
        {
            Some(row) => row.push(p),
            None => rows.push(vec![p]),
        }
    }
    for row in &mut rows {
        row.sort_by_key(|p| p.at_ms);
    }
    rows.sort_by_key(|r| r[0].at_ms);
    rows
}

fn phase_colour(name: &str) -> &'static str {
    match name {
        "last-heard" => "#888",
        "declared" => "#d22",
        "old-lease-over" => "#e80",
        "acting" => "#2a7",
        "dns-published" => "#36c",
        "gateway-switched" => "#84c",
        _ => "#555",
    }
}

/// One move drawn as a band under the timeline: its span marked on the time axis and
/// zoomed out to the full width, each phase a tick labelled with its offset from the first.
fn phase_band(
    s: &mut String,
    row: &[&PhaseAt],
    k: usize,
    chart_h: f64,
    (left, pw, axis_y): (f64, f64, f64),
    x: &dyn Fn(f64) -> f64,
) {
    let (Some(first), Some(last)) = (row.first(), row.last()) else {
        return;
    };
    let (a, b) = (first.at_ms as f64, last.at_ms as f64);
    let pad = ((b - a) * 0.08).max(50.0);
    let (lo, hi) = (a - pad, b + pad);
    let xz = |t: f64| left + pw * (t - lo) / (hi - lo);
    let y0 = chart_h + BAND_ROW * k as f64;
    let bar_y = y0 + 66.0;
    let _ = write!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="6" fill="#e80"/>"##,
        x(a),
        axis_y - 3.0,
        (x(b) - x(a)).max(2.0)
    );
    if k == 0 {
        let _ = write!(
            s,
            r##"<path d="M{:.1},{:.1} L{left:.1},{:.1} M{:.1},{:.1} L{:.1},{:.1}" stroke="#bbb" stroke-dasharray="3 3" fill="none"/>"##,
            x(a),
            axis_y + 3.0,
            y0 + 20.0,
            x(b),
            axis_y + 3.0,
            left + pw,
            y0 + 20.0
        );
    }
    let _ = write!(
        s,
        r##"<text x="{left:.1}" y="{:.1}" fill="#222" font-weight="bold">{}: {} → {} (epoch {}), {:.2}–{:.2} s, {} ms</text>"##,
        y0 + 14.0,
        esc(&first.what),
        esc(first.from.as_deref().unwrap_or("none")),
        esc(&first.to),
        first.epoch,
        a / 1000.0,
        b / 1000.0,
        last.at_ms - first.at_ms
    );
    for pair in row.windows(2) {
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="8" fill="{}" opacity="0.5"/>"##,
            xz(pair[0].at_ms as f64),
            bar_y - 4.0,
            (xz(pair[1].at_ms as f64) - xz(pair[0].at_ms as f64)).max(1.0),
            phase_colour(&pair[1].name)
        );
    }
    for p in row.iter() {
        let px = xz(p.at_ms as f64);
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"/>"##,
            bar_y - 8.0,
            bar_y + 8.0,
            phase_colour(&p.name)
        );
    }
    // Phases closer than a label's width share one label, a line each; labels alternate
    // above and below the bar.
    let mut groups: Vec<Vec<&PhaseAt>> = Vec::new();
    for p in row.iter().copied() {
        match groups.last_mut() {
            Some(g) if xz(p.at_ms as f64) - xz(g[0].at_ms as f64) < 110.0 => g.push(p),
            _ => groups.push(vec![p]),
        }
    }
    for (i, g) in groups.iter().enumerate() {
        let gx = xz(g[0].at_ms as f64);
        let above = i % 2 == 0;
        for (j, p) in g.iter().enumerate() {
            let ly = if above {
                bar_y - 12.0 - 13.0 * (g.len() - 1 - j) as f64
            } else {
                bar_y + 22.0 + 13.0 * j as f64
            };
            let _ = write!(
                s,
                r##"<text x="{gx:.1}" y="{ly:.1}" text-anchor="middle" fill="{}">{} +{} ms</text>"##,
                phase_colour(&p.name),
                esc(&p.name),
                p.at_ms - first.at_ms
            );
        }
    }
}

/// The dataset workload's rows of the stopwatch.
fn db_rows(d: &Db) -> String {
    let lost = d
        .lost
        .map(|l| l.to_string())
        .unwrap_or_else(|| "unknown (the final primary could not be read)".into());
    let archives: String = d
        .archives
        .iter()
        .map(|a| format!("<br><code>{}</code>", esc(a)))
        .collect();
    format!(
        r#"<tr><th>database downtime</th><td class="big">{}</td></tr>
<tr><th>commits</th><td>{} acknowledged, {lost} lost, {} tries failed (retried); longest wait {} ms</td></tr>
<tr><th>diverged histories kept</th><td>{}{archives}</td></tr>"#,
        fmt_ms(d.rto_ms),
        d.acked,
        d.failed,
        d.longest_wait_ms,
        d.diverged
    )
}

fn fmt_ms(v: Option<u64>) -> String {
    v.map(|v| format!("{v} ms")).unwrap_or_else(|| "—".into())
}

/// The page: headline verdict, timeline, stopwatch, expectations, trend.
pub fn html(r: &Report, history: &[Report], logs: &[String]) -> String {
    let mut s = String::new();
    let verdict = if r.passed {
        ("PASSED", "#2a7")
    } else {
        ("FAILED", "#d22")
    };
    let _ = write!(
        s,
        r##"<!doctype html><html><head><meta charset="utf-8"><title>drill {name}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}}table{{border-collapse:collapse;margin:12px 0}}td,th{{padding:4px 12px;border-bottom:1px solid #ddd;text-align:left}}.big{{font-size:28px;font-weight:bold}}</style></head><body>
<h1>Drill “{name}” <span style="color:{c}">{v}</span></h1><p>started {started}, {dur:.1} s</p>"##,
        name = esc(&r.scenario),
        c = verdict.1,
        v = verdict.0,
        started = esc(&r.started),
        dur = r.duration_ms as f64 / 1000.0
    );
    s.push_str(&timeline_svg(r));
    let _ = write!(
        s,
        r#"<h2>Stopwatch</h2><table>
<tr><th>downtime (RTO)</th><td class="big">{rto}</td></tr>
<tr><th>requests</th><td>{sent} sent, {ok} served within {within} ms, {late} answered later, {failed} failed</td></tr>
<tr><th>longest wait</th><td>{wait} ms</td></tr>
<tr><th>writes</th><td>{acked} acknowledged, {lost} lost, {dup} duplicated ({refused} refused and retried elsewhere)</td></tr>
<tr><th>data lost (RPO)</th><td>{rpo} ms</td></tr>
<tr><th>failback</th><td>{fb}</td></tr>{db}</table>"#,
        rto = fmt_ms(r.rto_ms),
        sent = r.requests.sent,
        ok = r.requests.ok,
        within = r.ok_within_ms,
        late = r.requests.late,
        wait = r.longest_wait_ms,
        failed = r.requests.failed,
        acked = r.writes.acked,
        lost = r.writes.lost,
        dup = r.writes.duplicated,
        refused = if r.writes.refused == 1 {
            "1 try".to_string()
        } else {
            format!("{} tries", r.writes.refused)
        },
        rpo = r.rpo_ms,
        fb = fmt_ms(r.failback_ms),
        db = r.db.as_ref().map(db_rows).unwrap_or_default(),
    );
    s.push_str("<h2>Faults</h2><table><tr><th>at</th><th>fault</th><th>downtime</th><th>write downtime</th></tr>");
    let downtime = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_default();
    let mut events: Vec<(u64, String, String, String)> = r
        .faults
        .iter()
        .map(|f| {
            (
                f.at_ms,
                esc(&f.what),
                downtime(f.rto_ms),
                downtime(f.db_rto_ms),
            )
        })
        .collect();
    if let Some((at, what)) = failback_mark(r) {
        events.push((at, what, String::new(), String::new()));
    }
    events.sort_by_key(|e| e.0);
    for (at, what, rto, db_rto) in events {
        let _ = write!(
            s,
            "<tr><td>{:.2} s</td><td>{what}</td><td>{rto}</td><td>{db_rto}</td></tr>",
            at as f64 / 1000.0
        );
    }
    s.push_str("</table>");
    s.push_str(&rebuild_rows(&r.rebuilds));
    s.push_str(&restore_rows(&r.restores, r.started_ms + r.duration_ms));
    s.push_str(&dependency_rows(&r.dependencies));
    s.push_str(&link_rows(r));
    if !r.dips.is_empty() {
        s.push_str("<h2>Served below 99%</h2><table><tr><th>of</th><th>from</th><th>to</th><th>worst</th><th>not served</th><th>likely cause</th></tr>");
        for d in &r.dips {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{:.2} s</td><td>{:.2} s</td><td>{}%</td><td>{}</td><td>{}</td></tr>",
                esc(&d.of),
                d.from_ms as f64 / 1000.0,
                d.to_ms as f64 / 1000.0,
                d.worst_pct,
                d.not_served,
                esc(&d.cause)
            );
        }
        s.push_str("</table>");
    }
    let rows = failover_rows(&r.phases);
    if !rows.is_empty() {
        s.push_str("<h2>Failover phases</h2><table><tr><th>move</th><th>phase</th><th>at</th><th>since the first</th></tr>");
        for row in rows {
            let Some(first) = row.first() else { continue };
            for p in &row {
                let _ = write!(
                    s,
                    r#"<tr><td>{} epoch {}</td><td style="color:{}">{}</td><td>{:.3} s</td><td>+{} ms</td></tr>"#,
                    esc(&p.what),
                    p.epoch,
                    phase_colour(&p.name),
                    esc(&p.name),
                    p.at_ms as f64 / 1000.0,
                    p.at_ms - first.at_ms
                );
            }
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Expectations</h2><table><tr><th>metric</th><th>expected</th><th>actual</th><th></th></tr>");
    for v in &r.expectations {
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td>{} {}</td><td>{}</td><td style="color:{}">{}</td></tr>"#,
            esc(&v.metric),
            esc(&v.op),
            v.value,
            v.actual
                .map(|a| a.to_string())
                .unwrap_or_else(|| "—".into()),
            if v.pass { "#2a7" } else { "#d22" },
            if v.pass { "pass" } else { "FAIL" }
        );
    }
    s.push_str("</table>");
    if !history.is_empty() {
        s.push_str("<h2>Trend (this scenario, earlier drills)</h2><table><tr><th>started</th><th>RTO</th><th>failed requests</th><th>writes lost</th><th>rebuild</th><th></th></tr>");
        let max = history
            .iter()
            .filter_map(|h| h.rto_ms)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        for h in history {
            let bar = h.rto_ms.map(|v| 200.0 * v as f64 / max).unwrap_or(0.0);
            let _ = write!(
                s,
                r##"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><svg width="210" height="12"><rect width="{bar:.0}" height="12" fill="#36c"/></svg></td></tr>"##,
                esc(&h.started),
                fmt_ms(h.rto_ms),
                h.requests.failed,
                h.writes.lost,
                fmt_ms(h.rebuilds.last().and_then(|b| b.total_ms))
            );
        }
        s.push_str("</table>");
    }
    if !logs.is_empty() {
        s.push_str("<h2>Logs</h2><p>");
        for l in logs {
            let name = l.rsplit('/').next().unwrap_or(l);
            let _ = write!(s, r#"<a href="{}">{}</a> "#, esc(l), esc(name));
        }
        s.push_str("</p>");
    }
    s.push_str("</body></html>\n");
    s
}

/// The stopwatch of each rebuild: its steps, their times, what each said.
fn rebuild_rows(rebuilds: &[RebuildRun]) -> String {
    let mut s = String::new();
    for b in rebuilds {
        let _ = write!(
            s,
            r#"<h2>Rebuild of {} at {:.2} s: <span class="big">{}</span></h2><table><tr><th>step</th><th>took</th><th></th></tr>"#,
            esc(&b.site),
            b.at_ms as f64 / 1000.0,
            b.total_ms
                .map(|t| format!("{:.3} s", t as f64 / 1000.0))
                .unwrap_or_else(|| "not rejoined when the drill ended".into())
        );
        for st in &b.steps {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{:.3} s</td><td>{}</td></tr>",
                esc(&st.step),
                st.ms as f64 / 1000.0,
                esc(&st.said)
            );
        }
        s.push_str("</table>");
    }
    s
}

/// Each dependency: how long it was out, where the egress forwarders went, what they saw.
fn dependency_rows(deps: &[DepRun]) -> String {
    let mut s = String::new();
    for d in deps {
        let _ = write!(
            s,
            r#"<h2>Dependency {}: <span class="big">{}</span></h2><p>{}</p>"#,
            esc(&d.name),
            if d.not_up_ms == 0 {
                "up throughout".to_string()
            } else {
                format!("{} for {:.2} s", esc(&d.worst), d.not_up_ms as f64 / 1000.0)
            },
            d.first_not_up_ms
                .map(|t| format!("First seen not up at {:.2} s.", t as f64 / 1000.0))
                .unwrap_or_default()
        );
        if !d.egress_moves.is_empty() {
            s.push_str("<table><tr><th>at</th><th>site</th><th>egress from</th><th>to</th></tr>");
            for m in &d.egress_moves {
                let _ = write!(
                    s,
                    "<tr><td>{:.2} s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    m.at_ms as f64 / 1000.0,
                    esc(&m.site),
                    esc(m.from.as_deref().unwrap_or("none")),
                    esc(m.to.as_deref().unwrap_or("none"))
                );
            }
            s.push_str("</table>");
        }
        if !d.endpoints.is_empty() {
            s.push_str("<table><tr><th>site</th><th>endpoint</th><th>connections</th><th>errors</th><th>sent</th><th>received</th></tr>");
            for e in &d.endpoints {
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} B</td><td>{} B</td></tr>",
                    esc(&e.site),
                    esc(&e.endpoint),
                    e.connections,
                    e.errors,
                    e.bytes_sent,
                    e.bytes_received
                );
            }
            s.push_str("</table>");
        }
    }
    s
}

/// Each backup's newest verified restore, and how old it was at the drill's end.
fn restore_rows(restores: &[VerifiedRestore], end_ms: u64) -> String {
    if restores.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "<h2>Restores from backup (the newest verified)</h2><table><tr><th>backup</th><th>verified</th><th>restore took</th><th>age of what it restored</th><th>snapshot</th></tr>",
    );
    for v in restores {
        let _ =
            write!(
            s,
            "<tr><td>{}</td><td>{} ago at {}</td><td>{:.3} s</td><td>{:.0} s</td><td>{}</td></tr>",
            esc(&v.backup),
            ago(end_ms.saturating_sub(v.at_ms)),
            esc(&v.site),
            v.restore_ms as f64 / 1000.0,
            v.age_ms as f64 / 1000.0,
            esc(v.snapshot.as_deref().map_or("", |x| x.get(..8).unwrap_or(x)))
        );
    }
    s.push_str("</table>");
    s
}

fn ago(ms: u64) -> String {
    match ms / 1000 {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

/// When the preferred primary acted again after its restart, and what to call it.
fn failback_mark(r: &Report) -> Option<(u64, String)> {
    let fb = r.failback_ms?;
    let restart = r.faults.iter().find(|f| f.what.starts_with("restart "))?;
    let site = restart.what.trim_start_matches("restart ");
    Some((
        restart.at_ms + fb,
        format!("failback: {} primary again", esc(site)),
    ))
}

/// A round axis top at or above `v`: 1, 2 or 5 times a power of ten.
fn nice_ceiling(v: f64) -> f64 {
    let v = v.max(1.0);
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

/// Earlier reports of the same scenario under `history_dir`, oldest first.
pub fn history(history_dir: &Path, scenario: &str) -> Vec<Report> {
    let mut out: Vec<Report> = std::fs::read_dir(history_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("report.json")).ok())
        .filter_map(|b| serde_json::from_slice::<Report>(&b).ok())
        .filter(|r| r.scenario == scenario)
        .collect();
    out.sort_by_key(|r| r.started_ms);
    out
}

/// The links as the sites measured them, and the Raft terms seen.
fn link_rows(r: &Report) -> String {
    if r.links.is_empty() {
        return String::new();
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    let mut s = String::from(
        "<h2>Links (the worst each site measured)</h2><table><tr><th>site</th><th>to</th><th>round trip</th><th>p99</th><th>heartbeats lost</th><th>clock rate</th></tr>",
    );
    for l in &r.links {
        s.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{}</td></tr>",
            esc(&l.site),
            esc(&l.peer),
            ms(l.rtt_ms_max),
            ms(l.rtt_p99_ms_max),
            l.loss_max * 100.0,
            l.clock_ppm
                .map_or("-".to_string(), |p| format!("{:+.2}%", p as f64 / 10_000.0)),
        ));
    }
    s.push_str("</table>");
    let terms: Vec<String> = r
        .leaders
        .iter()
        .map(|l| {
            format!(
                "term {} at {:.2} s ({})",
                l.term,
                l.at_ms as f64 / 1000.0,
                l.leader.as_deref().map_or("no leader".to_string(), esc)
            )
        })
        .collect();
    if !terms.is_empty() {
        s.push_str(&format!(
            "<p>Raft: {} ({} leader change{}).</p>",
            terms.join(", "),
            terms.len() - 1,
            if terms.len() == 2 { "" } else { "s" }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reqs(fail: std::ops::Range<u64>) -> Vec<RequestOutcome> {
        (0..200)
            .map(|i| {
                let t = i * 50;
                RequestOutcome {
                    t_ms: t,
                    ok: !fail.contains(&t),
                    latency_ms: 0.0,
                }
            })
            .collect()
    }

    fn web_scenario() -> Scenario {
        Scenario {
            name: "x".into(),
            duration: std::time::Duration::from_secs(10),
            workload: crate::scenario::Workload {
                service: Some("web".into()),
                rate: 20,
                stream: None,
                event_rate: 1,
                ok_within: std::time::Duration::from_secs(1),
                dataset: None,
                write_rate: 1,
            },
            steps: Vec::new(),
            expect: Vec::new(),
        }
    }

    fn step(at_ms: u64, what: &str, disrupts: bool) -> FaultAt {
        FaultAt {
            at_ms,
            what: what.into(),
            disrupts,
            rto_ms: None,
            db_rto_ms: None,
        }
    }

    /// A delay at 1 s that hurts nobody and a kill at 5 s: the downtime is the kill's,
    /// counted from the kill (it was counted from the delay, 4 s too long), each fault
    /// carries its own, and a later dip after the restart is listed with its cause.
    #[test]
    fn downtime_counts_from_the_fault_that_caused_it_and_every_dip_is_listed() {
        let mut requests = reqs(5200..6000);
        for r in &mut requests {
            if (8000..8300).contains(&r.t_ms) {
                r.ok = false;
            }
        }
        let rec = Recording {
            duration_ms: 10_000,
            requests,
            faults: vec![
                step(1000, "delay east 40 ms", true),
                step(5000, "kill east", true),
                step(7500, "restart east", false),
            ],
            phases: vec![PhaseAt {
                what: "web".into(),
                epoch: 3,
                from: Some("west".into()),
                to: "east".into(),
                name: "acting".into(),
                at_ms: 7900,
            }],
            ..Recording::default()
        };
        let r = analyse(&web_scenario(), &rec, 0);
        assert_eq!(r.faults[0].rto_ms, Some(0), "{:?}", r.faults);
        assert_eq!(r.faults[1].rto_ms, Some(1000), "{:?}", r.faults);
        assert_eq!(r.faults[2].rto_ms, None, "a restart is not a fault start");
        assert_eq!(r.rto_ms, Some(1000));
        let dips: Vec<(u64, u64)> = r.dips.iter().map(|d| (d.from_ms, d.to_ms)).collect();
        assert_eq!(dips, [(5000, 6000), (8000, 8500)], "{:?}", r.dips);
        assert!(
            r.dips[0].cause.contains("downtime after kill east"),
            "{:?}",
            r.dips
        );
        assert!(
            r.dips[1].cause.contains("after restart east")
                && r.dips[1].cause.contains("web moved west -> east")
                && r.dips[1].cause.contains("failback"),
            "{:?}",
            r.dips
        );
        assert_eq!(r.dips[1].not_served, 6);
        let page = html(&r, &[], &[]);
        assert!(
            page.contains("after restart east"),
            "the page lists the dips"
        );
    }

    #[test]
    fn rto_is_the_outage_not_zero_and_not_the_whole_drill() {
        // Fault at 2 s, failures from 2.3 s to 4.5 s, drill 10 s.
        let r = rto(&reqs(2300..4500), 2000, 10_000, 1000).expect("rto");
        assert_eq!(r, 2500, "recovery at 4.5 s is 2.5 s after the fault");
        assert_eq!(rto(&reqs(0..0), 2000, 10_000, 1000), None);
        // Never recovers: the rest of the drill.
        assert_eq!(rto(&reqs(3000..20_000), 2000, 10_000, 1000), Some(8000));
    }

    #[test]
    fn a_request_held_past_ok_within_is_downtime_though_it_was_answered() {
        // Every 10 ms; the gateway holds whatever is sent from 2 s to 3.4 s and answers it
        // all at 3.4 s. Nothing failed, yet a client that sent at 2 s waited 1.4 s.
        let reqs: Vec<RequestOutcome> = (0..1000)
            .map(|i| {
                let t = i * 10;
                let held = (2000..3400).contains(&t);
                RequestOutcome {
                    t_ms: t,
                    ok: true,
                    latency_ms: if held { (3400 - t) as f64 } else { 2.0 },
                }
            })
            .collect();
        let r = rto(&reqs, 2000, 10_000, 1000).expect("held requests are downtime");
        assert!((1400..=1500).contains(&r), "rto {r} ms");
        // With a patient client (2 s), nothing was late: no downtime.
        assert_eq!(rto(&reqs, 2000, 10_000, 2000), None);
    }

    #[test]
    fn the_dataset_workload_counts_lost_commits_and_write_downtime() {
        // One commit every 10 ms; a site loss at 2 s: the commit sent then waits until
        // 3.3 s, two tries fail, and commits flow again from 3.3 s.
        let mut commits = Vec::new();
        let mut acked = Vec::new();
        let mut t = 0;
        let mut n = 0;
        while t < 6000 {
            let (ok, latency) = match t {
                2000 => (false, 2000),
                4000 => (false, 0),
                _ => (true, 1),
            };
            let latency = if t == 2000 { 1300 } else { latency };
            commits.push(RequestOutcome {
                t_ms: t,
                ok,
                latency_ms: latency as f64,
            });
            if ok {
                acked.push((n, t + latency));
                n += 1;
            }
            t = if t == 2000 { 3300 } else { t + 10 };
        }
        let found: std::collections::BTreeSet<u64> =
            acked.iter().map(|(n, _)| *n).filter(|n| *n != 7).collect();
        let rec = Recording {
            duration_ms: 6000,
            faults: vec![FaultAt {
                at_ms: 2000,
                what: "kill east".into(),
                disrupts: true,
                rto_ms: None,
                db_rto_ms: None,
            }],
            db: Some(DbRecording {
                commits,
                acked: acked.clone(),
                found: Some(found),
                archives: vec!["east: /srv/pg.diverged/2".into()],
            }),
            ..Recording::default()
        };
        let mut sc = Scenario {
            name: "db".into(),
            duration: std::time::Duration::from_secs(6),
            workload: crate::scenario::Workload {
                service: None,
                rate: 1,
                stream: None,
                event_rate: 1,
                ok_within: std::time::Duration::from_secs(1),
                dataset: Some("orders".into()),
                write_rate: 100,
            },
            steps: Vec::new(),
            expect: Vec::new(),
        };
        for (metric, value) in [
            ("db_lost", 1.0),
            ("db_rto_ms", 1301.0),
            ("db_diverged", 1.0),
        ] {
            sc.expect.push(Expect {
                metric: metric.into(),
                op: crate::scenario::Op::Eq,
                value,
            });
        }
        let r = analyse(&sc, &rec, 0);
        let db = r.db.clone().expect("db figures");
        assert_eq!(db.acked, acked.len() as u64);
        assert_eq!(db.lost, Some(1), "row 7 is not on the final primary");
        assert_eq!(db.failed, 2);
        assert_eq!(db.longest_wait_ms, 1300);
        // The first clean second of commits starts with the one answered at 3.301 s (the
        // held one failed); the one failed at 4 s is one try in a hundred.
        assert_eq!(db.rto_ms, Some(1301), "{db:?}");
        let rto = r.expectations.iter().find(|v| v.metric == "db_rto_ms");
        assert_eq!(rto.and_then(|v| v.actual), Some(1301.0));
        assert!(r
            .expectations
            .iter()
            .any(|v| v.metric == "db_lost" && v.pass));
        let busy = r.timeline.iter().find(|b| b.t_ms == 1000).expect("bucket");
        assert_eq!((busy.commits, busy.commits_ok), (25, 25));
        let svg = timeline_svg(&r);
        assert!(
            svg.contains("DB RTO 1301 ms") && svg.contains("#e80"),
            "{svg}"
        );
        let page = html(&r, &[], &[]);
        assert!(page.contains("east: /srv/pg.diverged/2"));
        // Unread final primary: lost is unknown and its expectation fails.
        let rec = Recording {
            db: Some(DbRecording {
                found: None,
                ..DbRecording::default()
            }),
            ..rec
        };
        let r = analyse(&sc, &rec, 0);
        assert_eq!(r.db.and_then(|d| d.lost), None);
        assert!(r
            .expectations
            .iter()
            .any(|v| v.metric == "db_lost" && !v.pass));
    }

    #[test]
    fn phases_are_drawn_under_the_timeline_and_listed() {
        let phase = |name: &str, at_ms: u64| PhaseAt {
            what: "web".into(),
            epoch: 1,
            from: Some("east".into()),
            to: "west".into(),
            name: name.into(),
            at_ms,
        };
        let rec = Recording {
            duration_ms: 10_000,
            requests: reqs(2300..3500),
            faults: vec![FaultAt {
                at_ms: 2000,
                what: "kill east".into(),
                disrupts: true,
                rto_ms: None,
                db_rto_ms: None,
            }],
            phases: vec![
                phase("last-heard", 1990),
                phase("declared", 2900),
                phase("acting", 3300),
                phase("gateway-switched", 3301),
            ],
            ..Recording::default()
        };
        let r = analyse(&web_scenario(), &rec, 0);
        assert_eq!(r.phases.len(), 4);
        let svg = timeline_svg(&r);
        assert!(svg.contains("web: east → west (epoch 1)"), "{svg}");
        // acting and gateway-switched are 1 ms apart: one label group, two lines.
        assert!(svg.contains("acting +1310 ms") && svg.contains("gateway-switched +1311 ms"));
        let page = html(&r, &[], &["logs/east.log".into()]);
        assert!(page.contains(r#"<a href="logs/east.log">east.log</a>"#));
        assert_eq!(nice_ceiling(304.0), 500.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert!(page.contains("<h2>Failover phases</h2>"));
    }
}
