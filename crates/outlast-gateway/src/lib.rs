//! outlast-gateway: each service's front door on every data site, `address:port`.
//!
//! It follows the committed routing ([`Routes`], published by the agent on every change)
//! and never decides anything itself. HTTP (1.1 and h2c, WebSocket upgrades passed through)
//! raw TCP, and UDP datagrams in sessions. Local healthy backends first, round-robin, with passive ejection on connect
//! errors; when none is usable here, or the service is not active here, one hop to the
//! gateway of a site where it is active (a header, or for TCP the peer's site address, stops
//! a second hop). Retries only where safe: a request that never reached a backend (connect
//! refused or timed out) is retried whatever its method; after that, only idempotent methods
//! or requests with an `Idempotency-Key`, always on a different target, within a retry
//! budget. A target that takes a request and gives no answer within 30 s has the request
//! answered 504, not retried; a response body that goes 30 s without a byte is cut. It must
//! never serve a primary-standby service locally on a fenced site: it answers 503 with
//! `Retry-After` there instead.

mod codec;
pub mod egress;
mod headers;
mod http;
pub mod limits;
mod pool;
mod routes;
mod server;
mod tcp;
pub mod udp;

pub use http::HttpGateway;
pub use routes::{LeaseClock, Routes, ServiceRoute, Stats, Target, TargetStats};
pub use server::serve_http;
pub use tcp::{accept as tcp_accept, connect_from, serve_tcp};
pub use udp::{serve_udp, udp_sockets, udp_workers, UdpGateway, UdpStatus};

/// Header that marks a request forwarded by another site's gateway.
pub const HOP_HEADER: &str = "x-outlast-hop";
