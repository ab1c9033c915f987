//! The links to the other sites, measured from the heartbeats all the time: the round
//! trip (a moving average and the p99 of the last samples), the share of heartbeats left
//! unanswered, and each peer's clock rate against this site's.
//!
//! A heartbeat's timeout follows the measured round trip ([`Timing::probe_timeout`]): on a
//! near link a lost site is found as fast as the probe interval allows, and a far one is
//! not taken for lost. An answer that comes after its timeout still counts as a sample, so
//! a link that slows down is learnt at once, not only once it speeds up again.
//!
//! Clock rates: each answer carries the peer's clock (ms since its agent started). Against
//! the middle of the round trip on this site's clock, the slope of those pairs over the
//! last [`CLOCK_WINDOW`] is the peer's rate; its error is about the round trip's jitter
//! over the window, a few hundred ppm, far under the bound it is judged by.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outlast_control::Answer;
use outlast_core::config::Timing;
use outlast_core::status::LinkStatus;
use outlast_core::Health;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::peer::{CallError, HeartbeatAck, PeerClient};
use super::{alerts, Agent};

/// Round trips kept for the p99.
const RTT_SAMPLES: usize = 128;
/// Heartbeats kept for the loss share.
const OUTCOMES: usize = 100;
/// How far back the clock-rate estimate looks (ms of this site's clock).
pub const CLOCK_WINDOW: u64 = 30_000;
/// The least span the estimate needs before it says anything (ms).
const CLOCK_MIN_SPAN: u64 = 5_000;

/// The clock-rate bound the leases assume, in ppm: every clock within 5% of the
/// majority's (see docs/config.md, "Clocks").
pub const CLOCK_BOUND_PPM: i64 = 50_000;
/// A peer whose signed requests were refused for its wall clock within this many ms, with
/// none accepted since, is cut off by its clock (see `PeerAuth::cut_by_clock`).
pub const CLOCK_CUT_WITHIN_MS: u64 = 10_000;

#[derive(Default)]
struct Link {
    ewma_us: Option<f64>,
    samples: VecDeque<u32>,
    outcomes: VecDeque<bool>,
    /// (this site's clock at the middle of the round trip, the peer's clock), both ms.
    clock: VecDeque<(f64, f64)>,
    /// When this site last logged that the peer refuses its requests for its clock.
    clock_refusal_logged: Option<Instant>,
}

impl Link {
    fn p99(&self) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v: Vec<u32> = self.samples.iter().copied().collect();
        v.sort_unstable();
        let i = ((v.len() * 99).div_ceil(100)).saturating_sub(1);
        Some(Duration::from_micros(u64::from(v[i.min(v.len() - 1)])))
    }

    fn outcome(&mut self, answered: bool) {
        if self.outcomes.len() == OUTCOMES {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back(answered);
    }

    /// The peer's rate against ours, in ppm (positive: the peer's clock runs fast), once
    /// the samples span [`CLOCK_MIN_SPAN`]: the least-squares slope.
    fn clock_ppm(&self) -> Option<i64> {
        let (first, last) = (self.clock.front()?, self.clock.back()?);
        if last.0 - first.0 < CLOCK_MIN_SPAN as f64 {
            return None;
        }
        let n = self.clock.len() as f64;
        let (mx, my) = self
            .clock
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (x, y) in &self.clock {
            sxy += (x - mx) * (y - my);
            sxx += (x - mx) * (x - mx);
        }
        (sxx > 0.0).then(|| ((sxy / sxx - 1.0) * 1e6).round() as i64)
    }
}

/// Every link of this site.
pub struct Links {
    timing: Timing,
    links: Mutex<BTreeMap<String, Link>>,
    /// The clock verdict last told (own clock odd; odd peers), for the alerts.
    told: Mutex<(bool, BTreeSet<String>)>,
    /// Peers last told cut off from this site by their wall clock.
    told_cut: Mutex<BTreeSet<String>>,
}

impl Links {
    pub fn new(timing: &Timing, peers: impl IntoIterator<Item = String>) -> Self {
        Links {
            timing: *timing,
            links: Mutex::new(peers.into_iter().map(|p| (p, Link::default())).collect()),
            told: Mutex::default(),
            told_cut: Mutex::default(),
        }
    }

    fn with<T>(&self, peer: &str, f: impl FnOnce(&mut Link) -> T) -> Option<T> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get_mut(peer).map(f)
    }

    /// How long the next heartbeat to `peer` waits for its answer.
    pub fn timeout(&self, peer: &str) -> Duration {
        let p99 = self.with(peer, |l| l.p99()).flatten();
        self.timing.probe_timeout(p99)
    }

    /// An answer from `peer`, `rtt` after its heartbeat left at `sent_ms` (this site's
    /// clock), carrying the peer's clock `peer_clock_ms`; `in_time` when it came within
    /// the heartbeat's timeout.
    pub fn answered(
        &self,
        peer: &str,
        sent_ms: u64,
        rtt: Duration,
        peer_clock_ms: Option<u64>,
        in_time: bool,
    ) {
        self.with(peer, |l| {
            let us = rtt.as_micros().min(u128::from(u32::MAX)) as u32;
            l.ewma_us = Some(match l.ewma_us {
                Some(e) => e + (f64::from(us) - e) / 8.0,
                None => f64::from(us),
            });
            if l.samples.len() == RTT_SAMPLES {
                l.samples.pop_front();
            }
            l.samples.push_back(us);
            if in_time {
                l.outcome(true);
            }
            if let Some(theirs) = peer_clock_ms {
                let mid = sent_ms as f64 + rtt.as_secs_f64() * 500.0;
                // The peer restarted (its clock went back): its old samples say nothing.
                if l.clock.back().is_some_and(|&(_, y)| (theirs as f64) < y) {
                    l.clock.clear();
                }
                l.clock.push_back((mid, theirs as f64));
                while l
                    .clock
                    .front()
                    .is_some_and(|&(x, _)| mid - x > CLOCK_WINDOW as f64)
                {
                    l.clock.pop_front();
                }
            }
        });
        metrics::gauge!("outlast_link_rtt_seconds", "peer" => peer.to_string())
            .set(rtt.as_secs_f64());
    }

    /// A heartbeat to `peer` went unanswered within its timeout.
    pub fn missed(&self, peer: &str) {
        self.with(peer, |l| l.outcome(false));
    }

    /// The peer's clock rate against ours, ppm, when known.
    pub fn clock_ppm(&self, peer: &str) -> Option<i64> {
        self.with(peer, |l| l.clock_ppm()).flatten()
    }

    pub fn views(&self) -> Vec<LinkStatus> {
        let odd = self.odd_peers();
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .iter()
            .map(|(peer, l)| {
                let ms = |d: Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
                let lost = l.outcomes.iter().filter(|a| !**a).count();
                LinkStatus {
                    clock_odd: odd.contains(peer),
                    peer: peer.clone(),
                    rtt_ms: l.ewma_us.map(|us| (us / 100.0).round() / 10.0),
                    rtt_p99_ms: l.p99().map(ms),
                    loss: if l.outcomes.is_empty() {
                        0.0
                    } else {
                        lost as f64 / l.outcomes.len() as f64
                    },
                    probe_timeout_ms: self.timing.probe_timeout(l.p99()).as_millis() as u64,
                    clock_ppm: l.clock_ppm(),
                }
            })
            .collect()
    }

    /// Exports the loss share and the clock rate of every link.
    pub fn export_metrics(&self) {
        for v in self.views() {
            metrics::gauge!("outlast_link_loss_ratio", "peer" => v.peer.clone()).set(v.loss);
            if let Some(ppm) = v.clock_ppm {
                metrics::gauge!("outlast_link_clock_ppm", "peer" => v.peer.clone()).set(ppm as f64);
            }
        }
    }

    /// Whether `err` is `peer` refusing this site's request for its wall clock, and that was
    /// not logged within the last minute.
    pub fn refused_for_clock(&self, peer: &str, err: &CallError) -> bool {
        let CallError::Status {
            code: 401, reason, ..
        } = err
        else {
            return false;
        };
        if !reason.starts_with("clock:") {
            return false;
        }
        self.with(peer, |l| {
            let due = l
                .clock_refusal_logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
            if due {
                l.clock_refusal_logged = Some(Instant::now());
            }
            due
        })
        .unwrap_or(false)
    }

    /// Whether this site's own clock is the odd one: every peer it measures (and at least
    /// one) runs more than the bound off it, all the same way. Then the majority's clocks
    /// agree with each other, not with this one.
    pub fn own_clock_odd(&self) -> Option<i64> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let rates: Vec<i64> = links.values().filter_map(|l| l.clock_ppm()).collect();
        if rates.len() < links.len() || rates.is_empty() {
            return None;
        }
        let all_fast = rates.iter().all(|r| *r > CLOCK_BOUND_PPM);
        let all_slow = rates.iter().all(|r| *r < -CLOCK_BOUND_PPM);
        (all_fast || all_slow).then(|| rates.iter().sum::<i64>() / rates.len() as i64)
    }

    /// Peers whose clock this site measures more than the bound off its own while this
    /// site's own clock is not the odd one: they get no lease promises from here.
    pub fn odd_peers(&self) -> BTreeSet<String> {
        if self.own_clock_odd().is_some() {
            return BTreeSet::new();
        }
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .iter()
            .filter(|(_, l)| l.clock_ppm().is_some_and(|r| r.abs() > CLOCK_BOUND_PPM))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// Once a control step: the clock verdict goes to the node (an odd own clock fences this
/// site; odd peers get no promise), and a change of it to the logs and the alerts.
pub(super) fn clock_step(agent: &Agent, node: &mut outlast_control::Node, by: &alerts::Sender<'_>) {
    wall_clock_step(agent, by);
    let own = agent.links.own_clock_odd();
    let peers = agent.links.odd_peers();
    node.set_clocks(own.is_some(), peers.clone(), agent.now_ms());
    let mut told = agent.links.told.lock().unwrap_or_else(|e| e.into_inner());
    if (own.is_some(), &peers) == (told.0, &told.1) {
        return;
    }
    let mut news = Vec::new();
    match (own, told.0) {
        (Some(ppm), false) => news.push((
            agent.me.clone(),
            format!(
                "the clock of site {} runs {:+.1}% off every other site's (the bound is ±5%): it gives up every primary role and renews no lease until its clock agrees again; fix its time source (NTP, a VM's clock)",
                agent.me,
                (1.0 / (1.0 + ppm as f64 / 1e6) - 1.0) * 100.0
            ),
        )),
        (None, true) => news.push((
            agent.me.clone(),
            format!("the clock of site {} agrees with the others again", agent.me),
        )),
        _ => {}
    }
    for p in peers.difference(&told.1) {
        let ppm = agent.links.clock_ppm(p).unwrap_or_default();
        news.push((
            p.clone(),
            format!(
                "site {} sees the clock of site {p} run {:+.1}% off its own (the bound is ±5%): it promises {p} no lease and counts it unreachable, so {p} cannot stay primary on its word and its primaries move",
                agent.me,
                ppm as f64 / 10_000.0
            ),
        ));
    }
    for p in told.1.difference(&peers) {
        news.push((
            p.clone(),
            format!(
                "site {} sees the clock of site {p} within the bound again",
                agent.me
            ),
        ));
    }
    *told = (own.is_some(), peers);
    drop(told);
    tell_clock(agent, by, "rate", news);
}

/// Each (site, words) to the log and as a `clock` alert about that site; `what` keeps the
/// alerts of the rate and of the wall clock apart in their keys.
fn tell_clock(agent: &Agent, by: &alerts::Sender<'_>, what: &str, news: Vec<(String, String)>) {
    for (site, msg) in news {
        tracing::warn!(site, "{msg}");
        let fields = alerts::Fields {
            site: Some(site.clone()),
            ..Default::default()
        };
        let key = format!("{}-{what}-{site}-{}", agent.me, by.unix_ms);
        agent.alert(alerts::event(by, "clock", &key, fields, msg));
    }
}

/// Peers whose signed requests this site refuses for their wall clock (more than a minute
/// off): a change of that set goes to the logs and the alerts, in words. (Such a peer is
/// cut off from this site: it gets no heartbeat, vote or entry through.)
fn wall_clock_step(agent: &Agent, by: &alerts::Sender<'_>) {
    let cut = agent
        .peer_auth
        .cut_by_clock(outlast_core::clock::unix_ms(), CLOCK_CUT_WITHIN_MS);
    let mut told = agent
        .links
        .told_cut
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut news = Vec::new();
    for (p, offset) in &cut {
        if !told.contains(p) {
            news.push((
                p.clone(),
                format!(
                    "site {} refuses every request from site {p}: the wall clock of {p} is {} s {} its own, and signed peer requests may differ by 60 s at most; {p} is cut off from {} until one of the clocks is set right (NTP, a VM's clock)",
                    agent.me,
                    offset.unsigned_abs() / 1000,
                    if *offset > 0 { "ahead of" } else { "behind" },
                    agent.me
                ),
            ));
        }
    }
    for p in told.iter().filter(|p| !cut.contains_key(*p)) {
        news.push((
            p.clone(),
            format!(
                "site {} takes requests from site {p} again: their wall clocks agree within 60 s",
                agent.me
            ),
        ));
    }
    *told = cut.into_keys().collect();
    drop(told);
    tell_clock(agent, by, "wall", news);
}

/// The heartbeat loop to one peer: this site's report each probe interval, without waiting
/// for the answer to the one before (on a link whose round trip passes the probe interval,
/// a heartbeat that waited would renew the lease less often than the interval says). Each
/// answer, or its absence within the link's timeout, goes to the node and to the link.
pub(super) async fn heartbeats(
    agent: Arc<Agent>,
    client: Arc<PeerClient>,
    peer: String,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(agent.config.timing.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        while in_flight.try_join_next().is_some() {}
        in_flight.spawn(heartbeat(agent.clone(), client.clone(), peer.clone()));
    }
    in_flight.abort_all();
}

/// One heartbeat to `peer`: counted missed at its timeout, and its answer, should it come
/// later (up to twice the largest timeout), still taken as a round trip and as a grant.
async fn heartbeat(agent: Arc<Agent>, client: Arc<PeerClient>, peer: String) {
    let sent_at = agent.now_ms();
    let report = agent.node().report(sent_at);
    let started = Instant::now();
    let timeout = agent.links.timeout(&peer);
    let horizon = agent.config.timing.probe_timeout_cap() * 2;
    let call = client.call::<_, HeartbeatAck>(&peer, "/peer/heartbeat", &report, horizon);
    tokio::pin!(call);
    let (res, in_time) = match tokio::time::timeout(timeout, &mut call).await {
        Ok(res) => (res, true),
        Err(_) => {
            agent.links.missed(&peer);
            let changed = agent.node().on_miss(&peer, agent.now_ms());
            reachability_changed(&peer, changed);
            (call.await, false)
        }
    };
    let rtt = started.elapsed();
    metrics::histogram!("outlast_probe_seconds", "kind" => "peer", "peer" => peer.clone())
        .record(rtt.as_secs_f64());
    let now = agent.now_ms();
    let changed = match res {
        Ok(ack) => {
            agent
                .links
                .answered(&peer, sent_at, rtt, ack.clock_ms, in_time);
            let answer = Answer {
                log_epoch: ack.log_epoch,
                applied_epoch: ack.applied_epoch,
            };
            let mut node = agent.node();
            let changed = node.on_answer(&peer, sent_at, answer, now);
            agent.update_lease_clock(&node);
            changed
        }
        Err(e) if in_time => {
            if agent.links.refused_for_clock(&peer, &e) {
                tracing::warn!(
                    peer,
                    "{peer} refuses this site's requests (logged once a minute): {e}"
                );
            }
            tracing::debug!(peer, error = %e, "heartbeat failed");
            agent.links.missed(&peer);
            agent.node().on_miss(&peer, now)
        }
        Err(e) => {
            tracing::debug!(peer, error = %e, "heartbeat failed after its timeout");
            None
        }
    };
    reachability_changed(&peer, changed);
}

fn reachability_changed(peer: &str, changed: Option<Health>) {
    if let Some(h) = changed {
        tracing::info!(peer, reachable = ?h, "peer reachability changed");
        metrics::gauge!("outlast_peer_reachable", "peer" => peer.to_string())
            .set(if h == Health::Up { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            probe_interval: Duration::from_millis(100),
            ..Timing::default()
        }
    }

    #[test]
    fn the_timeout_follows_the_round_trip_within_its_bounds() {
        let links = Links::new(&timing(), ["west".to_string()]);
        // Before any sample: the largest timeout, max_rtt 250 ms + 25 ms.
        assert_eq!(links.timeout("west"), Duration::from_millis(275));
        for n in 0..20u64 {
            links.answered("west", n * 100, Duration::from_millis(1), None, true);
        }
        // A near link: one probe interval.
        assert_eq!(links.timeout("west"), Duration::from_millis(100));
        for n in 20..40u64 {
            links.answered("west", n * 100, Duration::from_millis(80), None, true);
        }
        // 80 ms round trips: 3/2 of them plus 10 ms.
        assert_eq!(links.timeout("west"), Duration::from_millis(130));
        links.answered("west", 4_000, Duration::from_millis(400), None, false);
        assert_eq!(links.timeout("west"), Duration::from_millis(275), "capped");
        links.missed("west");
        let v = &links.views()[0];
        assert!((v.loss - 1.0 / 41.0).abs() < 1e-9, "{v:?}");
    }

    #[test]
    fn a_clock_at_half_rate_is_found_and_named() {
        let links = Links::new(&timing(), ["west".to_string(), "witness".to_string()]);
        for n in 0..100u64 {
            let mine = n * 100;
            // west's clock runs at half rate; the witness's at ours, 2 ms of jitter.
            links.answered("west", mine, Duration::from_millis(4), Some(mine / 2), true);
            let jitter = Duration::from_millis(2 + n % 3);
            links.answered("witness", mine, jitter, Some(mine + 7), true);
        }
        let west = links.clock_ppm("west").expect("west's rate");
        assert!((west + 500_000).abs() < 2_000, "{west}");
        let witness = links.clock_ppm("witness").expect("witness's rate");
        assert!(witness.abs() < 2_000, "{witness}");
        assert_eq!(links.own_clock_odd(), None);
        assert_eq!(links.odd_peers(), BTreeSet::from(["west".to_string()]));

        // Seen from the slow site, both others run fast: its own clock is the odd one.
        let slow = Links::new(&timing(), ["east".to_string(), "witness".to_string()]);
        for n in 0..100u64 {
            let mine = n * 60;
            slow.answered("east", mine, Duration::from_millis(2), Some(mine * 2), true);
            slow.answered(
                "witness",
                mine,
                Duration::from_millis(2),
                Some(mine * 2 + 3),
                true,
            );
        }
        let odd = slow.own_clock_odd().expect("its own clock is odd");
        assert!((odd - 1_000_000).abs() < 2_000, "{odd}");
        assert!(slow.odd_peers().is_empty());
    }
}
