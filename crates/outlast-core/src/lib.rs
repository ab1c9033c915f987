//! outlast-core: the config model (parsed raw, then validated with every problem reported at
//! once with file:line:col), durations, and the rise/fall counter shared by every room that
//! judges health, and the set of faults a drill injects into an agent.
//!
//! It must never do I/O beyond reading the config file and the secret file it names, and it
//! never depends on another outlast crate.

pub mod clock;
pub mod config;
pub mod duration;
pub mod faults;
pub mod files;
pub mod hysteresis;
pub mod incident;
pub mod net;
pub mod status;
pub mod throttle;

pub use config::{Config, ConfigError, Problem};
pub use duration::parse_duration;
pub use hysteresis::{Health, Hysteresis};
