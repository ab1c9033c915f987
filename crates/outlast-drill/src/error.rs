//! Why a drill could not run (or could not finish): one type, so a caller can tell a bad
//! config from an agent that would not start or a fault that could not be applied.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The config or the scenario is not valid (the problems, one a line).
    #[error("{0}")]
    Invalid(String),
    /// The drill cannot run as asked (a port taken, attach mode without a token...).
    #[error("{0}")]
    Refused(String),
    /// A file or a process could not be made or used.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// An agent would not start, answer or take a fault.
    #[error("{site}: {why}")]
    Agent { site: String, why: String },
    /// The cluster never got whole before the first fault.
    #[error("the cluster did not come up within 30 s; see the logs in {logs}")]
    NotReady { logs: String },
    /// A scenario step failed; the faults already applied were undone.
    #[error("fault {fault} failed: {source}")]
    Fault {
        fault: String,
        #[source]
        source: Box<DrillError>,
    },
    /// The sinks could not be read back to count what was shipped.
    #[error("cannot read the sinks back: {0}")]
    Sinks(String),
}

pub type Result<T> = std::result::Result<T, DrillError>;

/// Maps an I/O error to [`DrillError::Io`] saying what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DrillError {
    move |source| DrillError::Io {
        what: what.into(),
        source,
    }
}

/// [`io`] for "cannot create <path>".
pub(crate) fn create(path: &Path) -> impl FnOnce(std::io::Error) -> DrillError {
    io(format!("cannot create {}", path.display()))
}

/// An agent's error.
pub(crate) fn agent(site: &str, why: impl ToString) -> DrillError {
    DrillError::Agent {
        site: site.to_string(),
        why: why.to_string(),
    }
}
