//! outlast-drill: drills with a stopwatch. A scenario (faults at set times) runs against a
//! cluster while a workload sends requests through outlast's DNS and gateway and events to
//! a stream; every outcome is recorded with its time, analysed (RTO, failed requests,
//! writes acked/lost/duplicated, RPO, failback) and reported as JSON and as a page.

mod error;
mod proxy;
pub mod report;
mod run;
pub mod scenario;

pub use error::DrillError;
pub use report::{failover_rows, Report};
pub use run::{run, DrillOptions};
pub use scenario::Scenario;
