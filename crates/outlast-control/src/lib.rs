//! outlast-control: deciding who serves what.
//!
//! It owns the failover policy ([`policy::decide`], a pure function of the committed state,
//! the observations and the time), the lease that lets a site act as primary
//! ([`lease::Lease`]), and the Raft state machine and log that commit decisions
//! ([`store`]). It never probes anything and never opens a socket: observations and time
//! come from outside, so the deterministic simulation in `tests/` can drive it.

mod history;
pub mod lease;
pub mod node;
pub mod policy;
pub mod state;
pub mod store;

pub use lease::Lease;
pub use node::{Answer, DbReport, FailoverLog, Node, NodeConfig, SiteView, Tick};
pub use policy::{decide, Observations, Params, Received, Refusal};
pub use state::{
    ClusterState, Decision, DepState, MoveReason, PeerView, Proposal, Report, Request,
    ServiceState, ServiceView, SiteState,
};
