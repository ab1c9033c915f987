//! Keeps a repeating error from filling the log: the first occurrence of each kind is
//! logged, the same kind again only once per period. The count of every occurrence belongs
//! in a metric, not in the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Kinds of message not yet forgotten are kept, at most this many (a flood of distinct
/// messages cannot grow it without bound).
const KINDS_MAX: usize = 1024;

#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl LogThrottle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a message of this kind should be logged now (and, if so, notes that it is).
    pub fn allow(&self, kind: &str) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = crate::clock::now();
        if last
            .get(kind)
            .is_some_and(|t| now.duration_since(*t) < self.every)
        {
            return false;
        }
        if last.len() >= KINDS_MAX {
            let every = self.every;
            last.retain(|_, t| now.duration_since(*t) < every);
            if last.len() >= KINDS_MAX {
                // A flood of distinct kinds: start over (some are logged twice).
                last.clear();
            }
        }
        last.insert(kind.to_string(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_once_per_period() {
        let t = LogThrottle::new(Duration::from_secs(60));
        assert!(t.allow("disk full"));
        assert!(!t.allow("disk full"));
        assert!(t.allow("peer refused"));
        let quick = LogThrottle::new(Duration::ZERO);
        assert!(quick.allow("a") && quick.allow("a"));
        for i in 0..5000 {
            t.allow(&format!("kind {i}"));
        }
        assert!(t.last.lock().expect("lock").len() <= KINDS_MAX + 1);
    }
}
