//! The process's log: `tracing` to stderr, filtered by `OUTLAST_LOG` (default
//! `info,openraft=warn,rustic_core=warn,opendal=error`), plain text with colour only when stderr is a terminal (a
//! redirected agent log was full of escape codes), or one JSON object a line with
//! `OUTLAST_LOG_FORMAT=json` for log shippers.
//!
//! A peer that cannot be reached is ordinary in this trade (it is what failover is for):
//! openraft reports each failed call to one at ERROR level, many times a second. Those are
//! left out; the agent logs a peer's reachability when it changes, at info level, and
//! counts every failed call in metrics.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The filter used when `OUTLAST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,openraft=error,rustic_core=warn,opendal=error";

/// Installs the process's logger; call once, first thing.
pub fn init() {
    let filter =
        EnvFilter::try_from_env("OUTLAST_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("OUTLAST_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(QuietUnreachable);
    if json {
        let fmt = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr);
        let _ = registry.with(fmt).try_init();
    } else {
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        let _ = registry.with(fmt).try_init();
    }
}

/// Leaves out openraft's events about a peer it could not reach (see the module header).
struct QuietUnreachable;

impl<S: Subscriber> Layer<S> for QuietUnreachable {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        if !event.metadata().target().starts_with("openraft") {
            return true;
        }
        let mut seen = Unreachable(false);
        event.record(&mut seen);
        !seen.0
    }
}

/// Whether any field of an event says a node is unreachable.
struct Unreachable(bool);

impl Visit for Unreachable {
    fn record_debug(&mut self, _: &Field, value: &dyn std::fmt::Debug) {
        if !self.0 {
            self.0 = format!("{value:?}").contains("Unreachable");
        }
    }

    fn record_str(&mut self, _: &Field, value: &str) {
        self.0 |= value.contains("Unreachable");
    }
}
