//! What a `[timing]` means at one round trip between sites (`outlast check --rtt`): each
//! figure in milliseconds and in round trips, the failover a client should expect, and
//! whether the timing holds at that round trip at all.

use std::time::Duration;

use super::Timing;
use crate::duration::format_duration;

/// The timing at one round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct TimingAt {
    pub rtt: Duration,
    /// A heartbeat's wait for its answer on a link whose round trips measure `rtt`.
    pub heartbeat_timeout: Duration,
    /// From a site's loss until the majority calls it down, at most.
    pub detection: Duration,
    /// From the old primary's last renewal until a new primary may act.
    pub lease_wait: Duration,
    /// A client is served again about this long after its site is lost...
    pub failover: Duration,
    /// ...and up to this long when the lost site led Raft (an election first).
    pub failover_leader_lost: Duration,
    /// Why the timing does not work at this round trip, when it does not.
    pub fails: Option<String>,
}

impl Timing {
    /// The longest the majority takes to call a site down when a heartbeat waits `timeout`
    /// for its answer: the `fall`th missed heartbeat is known (fall - 1) probe intervals
    /// plus its timeout after the first, then `grace`; never under [`Self::detection`].
    pub fn detection_with(&self, timeout: Duration) -> Duration {
        self.probe_interval
            .saturating_mul(self.fall.saturating_sub(1))
            .saturating_add(timeout)
            .saturating_add(self.grace)
            .max(self.detection())
    }

    /// This timing at a round trip of `rtt` (see [`TimingAt`]). The failover estimate: the
    /// loss is called after [`Self::detection_with`] the link's heartbeat timeout, the move
    /// commits in a round trip, and the new primary acts once the old lease and its margin
    /// have run out, whichever is later; the followers learn it in a round trip more. When
    /// the lost site led Raft, a follower stands after up to twice the shortest election
    /// timeout and needs a round trip for the votes before the move can be proposed.
    pub fn at(&self, rtt: Duration) -> TimingAt {
        let heartbeat_timeout = self.probe_timeout(Some(rtt));
        let detection = self.detection_with(heartbeat_timeout);
        let lease_wait = self.lease.saturating_add(self.lease_margin());
        let decided = detection.saturating_add(rtt);
        let failover = decided.max(lease_wait).saturating_add(rtt);
        let elected = self
            .raft_election_min()
            .saturating_mul(2)
            .saturating_add(rtt.saturating_mul(2));
        let failover_leader_lost = decided.max(elected).max(lease_wait).saturating_add(rtt);
        let fails = (rtt > self.max_rtt).then(|| {
            format!(
                "a round trip of {} is above max_rtt {}: heartbeats would be counted missed after {} and Raft's calls time out after {}, so sites are taken for lost and proposals may never commit; set [timing] max_rtt to {} or more",
                format_duration(rtt),
                format_duration(self.max_rtt),
                format_duration(self.probe_timeout_cap()),
                format_duration(self.raft_heartbeat()),
                format_duration(rtt)
            )
        });
        TimingAt {
            rtt,
            heartbeat_timeout,
            detection,
            lease_wait,
            failover,
            failover_leader_lost,
            fails,
        }
    }
}

impl TimingAt {
    /// `d` in round trips, one decimal.
    fn n(&self, d: Duration) -> String {
        format!("{:.1}", d.as_secs_f64() / self.rtt.as_secs_f64().max(1e-3))
    }

    fn rt(&self, d: Duration) -> String {
        format!("{} round trips", self.n(d))
    }

    /// The lines `outlast check --rtt` prints.
    pub fn lines(&self, t: &Timing) -> Vec<String> {
        let f = format_duration;
        let mut out = vec![format!(
            "timing at a round trip of {} between sites (max_rtt {}):",
            f(self.rtt),
            f(t.max_rtt)
        )];
        if let Some(why) = &self.fails {
            out.push(format!("  does not hold: {why}"));
            return out;
        }
        out.push(format!(
            "  heartbeats  every {} ({}); each waits {} for its answer ({})",
            f(t.probe_interval),
            self.rt(t.probe_interval),
            f(self.heartbeat_timeout),
            self.rt(self.heartbeat_timeout)
        ));
        out.push(format!(
            "  site lost   called down at most {} after it goes ({}): {} more heartbeats missed after the first, its timeout, then grace {}",
            f(self.detection),
            self.rt(self.detection),
            t.fall.saturating_sub(1),
            f(t.grace)
        ));
        out.push(format!(
            "  lease       {} ({}); a new primary acts {} after the old one's last renewal at the earliest ({}: lease + lease/8 for clock rates within 5% + a probe interval)",
            f(t.lease),
            self.rt(t.lease),
            f(self.lease_wait),
            self.rt(self.lease_wait)
        ));
        out.push(format!(
            "  raft        heartbeat and call timeout {} ({}); elections after {} to {} ({} to {})",
            f(t.raft_heartbeat()),
            self.rt(t.raft_heartbeat()),
            f(t.raft_election_min()),
            f(t.raft_election_min().saturating_mul(2)),
            self.n(t.raft_election_min()),
            self.rt(t.raft_election_min().saturating_mul(2))
        ));
        out.push(format!(
            "  failover    clients served again about {} after their site is lost ({}); up to {} ({}) when it led Raft; the floor is the lease wait, {}",
            f(self.failover),
            self.rt(self.failover),
            f(self.failover_leader_lost),
            self.rt(self.failover_leader_lost),
            f(self.lease_wait)
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Timing {
        Timing {
            probe_interval: Duration::from_millis(100),
            fall: 3,
            grace: Duration::from_millis(500),
            lease: Duration::from_secs(1),
            ..Timing::default()
        }
    }

    #[test]
    fn the_estimate_follows_the_round_trip() {
        let t = fixture();
        // 80 ms: the heartbeat waits 3/2 × 80 + 10 ms; detection 2 × 100 + 130 + 500; the
        // lease wait (1 s + 125 ms + 100 ms) is later than the decision (830 + 80 ms).
        let at = t.at(Duration::from_millis(80));
        assert_eq!(at.heartbeat_timeout, Duration::from_millis(130));
        assert_eq!(at.detection, Duration::from_millis(830));
        assert_eq!(at.lease_wait, Duration::from_millis(1225));
        assert_eq!(at.failover, Duration::from_millis(1305));
        // Raft at max_rtt 250 ms: heartbeat 375 ms, elections 750-1,500 ms.
        assert_eq!(
            at.failover_leader_lost,
            Duration::from_millis(1500 + 160 + 80)
        );
        assert!(at.fails.is_none());
        // 240 ms: the heartbeat's wait is capped at max_rtt + probe / 4.
        let at = t.at(Duration::from_millis(240));
        assert_eq!(at.heartbeat_timeout, Duration::from_millis(275));
        assert_eq!(at.failover, Duration::from_millis(1225 + 240));
        let lines = at.lines(&t).join("\n");
        assert!(
            lines.contains("1.465s after their site is lost (6.1 round trips)"),
            "{lines}"
        );
    }

    #[test]
    fn a_round_trip_above_max_rtt_does_not_hold() {
        let at = fixture().at(Duration::from_millis(300));
        let why = at.fails.expect("fails");
        assert!(why.contains("above max_rtt 250ms"), "{why}");
        assert!(
            why.contains("set [timing] max_rtt to 300ms or more"),
            "{why}"
        );
    }
}
