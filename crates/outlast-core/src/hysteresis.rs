//! Rise/fall counting: a target changes state only after `fall` consecutive failures or
//! `rise` consecutive passes, so one lost probe never moves anything.

/// What a counter currently believes about its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No verdict yet: fewer than `rise` passes and fewer than `fall` failures since start.
    Unknown,
    Up,
    Down,
}

/// A rise/fall counter. Pure: the caller feeds it probe results.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    fall: u32,
    rise: u32,
    state: Health,
    passes: u32,
    failures: u32,
}

impl Hysteresis {
    pub fn new(fall: u32, rise: u32) -> Self {
        Self {
            fall: fall.max(1),
            rise: rise.max(1),
            state: Health::Unknown,
            passes: 0,
            failures: 0,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Feeds one probe result; returns the new state when it changed.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if self.state != Health::Up && self.passes >= self.rise {
                self.state = Health::Up;
                return Some(Health::Up);
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.state != Health::Down && self.failures >= self.fall {
                self.state = Health::Down;
                return Some(Health::Down);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_fall_consecutive_failures() {
        let mut h = Hysteresis::new(3, 2);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Health::Up));
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None, "a pass resets the failure count");
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Health::Up));
    }

    #[test]
    fn starts_unknown_and_can_go_straight_down() {
        let mut h = Hysteresis::new(2, 2);
        assert_eq!(h.state(), Health::Unknown);
        h.record(false);
        assert_eq!(h.record(false), Some(Health::Down));
    }
}
