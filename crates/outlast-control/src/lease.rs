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
//!
//! # Its own vote
//!
//! The site counts itself too, but an entry in its own log that it has not applied yet may
//! be the move that demotes it. So while its log is ahead of what it applied, its own vote
//! counts as an answer sent at the last moment its log was seen current, not as one that
//! never ends. That moment comes before the entry was appended (the log's epoch is read,
//! and it is set before an append is acknowledged), so before the entry committed: the
//! argument above holds with the site itself as one of the majority. Counting the own vote
//! not at all while the log is ahead, as before, fenced a surviving primary for a moment at
//! every commit once one site was down (found by probing: a 503 "site west is fenced" a
//! second after the old primary's site was paused).

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
    /// `own` is this site's own vote: `None` when its log is current (it counts without
    /// end), else the last local time its log was seen current (it counts as an answer
    /// sent then; see "Its own vote" in the module header).
    pub fn expires_at(&self, own: Option<u64>) -> Option<u64> {
        let mut sent: Vec<u64> = self.acks.values().copied().collect();
        sent.push(own.unwrap_or(u64::MAX));
        sent.sort_unstable_by(|a, b| b.cmp(a));
        sent.get(self.quorum - 1)
            .map(|t| t.saturating_add(self.lease_ms))
    }

    pub fn holds(&self, now_ms: u64, own: Option<u64>) -> bool {
        self.expires_at(own).is_some_and(|t| now_ms < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_a_majority_of_fresh_answers() {
        let mut l = Lease::new(1000, 2);
        assert!(!l.holds(0, None), "no answers yet: no lease");
        l.record_answer("west", 100, 0, 0);
        assert!(l.holds(500, None));
        assert!(l.holds(1099, None));
        assert!(!l.holds(1100, None), "lease counts from the send time");
    }

    #[test]
    fn an_answer_from_a_peer_ahead_of_us_does_not_renew() {
        let mut l = Lease::new(1000, 2);
        l.record_answer("west", 100, 0, 0);
        l.record_answer("west", 900, 1, 0);
        assert_eq!(l.expires_at(None), Some(1100));
        l.record_answer("witness", 950, 0, 0);
        assert_eq!(l.expires_at(None), Some(1950));
    }

    #[test]
    fn own_log_ahead_counts_self_as_of_when_it_was_last_current() {
        let mut l = Lease::new(1000, 2);
        l.record_answer("west", 100, 0, 0);
        assert_eq!(
            l.expires_at(Some(50)),
            Some(1050),
            "self as of 50, west at 100: the older bounds it"
        );
        assert_eq!(l.expires_at(Some(300)), Some(1100), "now west bounds it");
        l.record_answer("witness", 200, 0, 0);
        assert_eq!(
            l.expires_at(Some(50)),
            Some(1100),
            "two peers newer than self: the second newest bounds it"
        );
        assert_eq!(
            l.expires_at(None),
            Some(1200),
            "caught up: self counts, the newest peer suffices"
        );
        let lone = Lease::new(1000, 2);
        assert_eq!(lone.expires_at(Some(50)), None, "no peer: no majority");
    }

    #[test]
    fn five_sites_need_two_peers() {
        let mut l = Lease::new(1000, 3);
        l.record_answer("a", 500, 0, 0);
        assert!(!l.holds(600, None));
        l.record_answer("b", 300, 0, 0);
        assert_eq!(l.expires_at(None), Some(1300));
    }
}
