//! outlast-relay: events that are never lost. This first part is the spool, the durable
//! local log every accepted event goes to before it is acknowledged. Replication between
//! sites, shipping to sinks and the ingest API build on it (issue "Events that are never
//! lost"); they are not here yet.
//!
//! It must never acknowledge an event that is not fsync'd, and never crash-loop on a bad
//! file: a corrupt segment is quarantined and counted.

pub mod spool;

pub use spool::{Record, Spool, SpoolError, SpoolStats};
