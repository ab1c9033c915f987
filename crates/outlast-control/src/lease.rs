//! The lease: how long a site may act as primary without hearing from the majority.
//!
//! # Design
//!
//! A site sends a heartbeat to every peer each `probe_interval` and stamps it with its local
//! send time. A peer answers with the highest epoch found in its Raft log, committed or not
//! (its *log epoch*). The sender keeps, per peer, the send time of the latest answered
//! heartbeat whose log epoch was not ahead of the epoch the sender has applied.
//!
//! The site holds its lease at time `now` while it can count a majority of voters among:
//! itself (when its own log is not ahead of what it applied) and every peer whose latest good
//! answer was *sent* less than `lease` ago. Past that it is fenced: it gives up every primary
//! role, and its status says `fenced`.
//!
//! # Why two primaries cannot act at once
//!
//! A move of a primary is a Raft entry; it commits at time `c` only once a majority has
//! appended it. From then on every member of that majority answers with a log epoch ahead of
//! what the old primary has applied, and the old primary can never again count a majority of
//! good answers without first applying the move, which demotes it. Answers it already holds
//! were sent before `c`, so its lease ends before `c + lease`. The new primary applies the
//! move at some time after `c` and then waits `hold = lease + margin` before acting. The
//! margin covers the rate difference between two sites' clocks over one lease and the
//! granularity of the fence check. Using send times rather than receive times makes every
//! error fall on the safe side: a lease can only look shorter than it really is.

use std::collections::BTreeMap;

/// A site's lease, fed with heartbeat answers. Pure: time comes from the caller.
#[derive(Debug, Clone)]
pub struct Lease {
    lease_ms: u64,
    quorum: usize,
    /// Per peer: send time of the latest good answer.
    acks: BTreeMap<String, u64>,
}

impl Lease {
    pub fn new(lease_ms: u64, quorum: usize) -> Self {
        Self {
            lease_ms,
            quorum,
            acks: BTreeMap::new(),
        }
    }

    /// Records a heartbeat answer from `peer` to a heartbeat sent at `sent_at_ms`.
    /// An answer from a peer whose log is ahead of what this site applied is not counted.
    pub fn record_answer(
        &mut self,
        peer: &str,
        sent_at_ms: u64,
        peer_log_epoch: u64,
        applied_epoch: u64,
    ) {
        if peer_log_epoch > applied_epoch {
            return;
        }
        let entry = self.acks.entry(peer.to_string()).or_insert(sent_at_ms);
        *entry = (*entry).max(sent_at_ms);
    }

    /// The local time at which the lease ends, or `None` when it is not held at all.
    pub fn expires_at(&self, own_log_epoch: u64, applied_epoch: u64) -> Option<u64> {
        let own = usize::from(own_log_epoch <= applied_epoch);
        if own >= self.quorum {
            return Some(u64::MAX);
        }
        let needed = self.quorum - own;
        let mut sent: Vec<u64> = self.acks.values().copied().collect();
        sent.sort_unstable_by(|a, b| b.cmp(a));
        sent.get(needed - 1)
            .map(|t| t.saturating_add(self.lease_ms))
    }

    pub fn holds(&self, now_ms: u64, own_log_epoch: u64, applied_epoch: u64) -> bool {
        self.expires_at(own_log_epoch, applied_epoch)
            .is_some_and(|t| now_ms < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_a_majority_of_fresh_answers() {
        let mut l = Lease::new(1000, 2);
        assert!(!l.holds(0, 0, 0), "no answers yet: no lease");
        l.record_answer("west", 100, 0, 0);
        assert!(l.holds(500, 0, 0));
        assert!(l.holds(1099, 0, 0));
        assert!(!l.holds(1100, 0, 0), "lease counts from the send time");
    }

    #[test]
    fn an_answer_from_a_peer_ahead_of_us_does_not_renew() {
        let mut l = Lease::new(1000, 2);
        l.record_answer("west", 100, 0, 0);
        l.record_answer("west", 900, 1, 0);
        assert_eq!(l.expires_at(0, 0), Some(1100));
        l.record_answer("witness", 950, 0, 0);
        assert_eq!(l.expires_at(0, 0), Some(1950));
    }

    #[test]
    fn own_log_ahead_means_self_does_not_count() {
        let mut l = Lease::new(1000, 2);
        l.record_answer("west", 100, 0, 0);
        assert_eq!(
            l.expires_at(1, 0),
            None,
            "one answer, self not counted: below quorum"
        );
        l.record_answer("witness", 200, 0, 0);
        assert_eq!(
            l.expires_at(1, 0),
            Some(1100),
            "two peers needed: the older one bounds it"
        );
        assert_eq!(
            l.expires_at(1, 1),
            Some(1200),
            "caught up: self counts, newest peer suffices"
        );
    }

    #[test]
    fn five_sites_need_two_peers() {
        let mut l = Lease::new(1000, 3);
        l.record_answer("a", 500, 0, 0);
        assert!(!l.holds(600, 0, 0));
        l.record_answer("b", 300, 0, 0);
        assert_eq!(l.expires_at(0, 0), Some(1300));
    }
}
