//! outlast-relay: events that are never lost.
//!
//! An event accepted at any site is written to that site's spool and fsync'd (group commit)
//! before it is acknowledged; with `ack = "replicated"` it is also in another site's replica
//! first. Each site ships its own events to sinks (its own first, the others in list order
//! when its own fail) and deletes them once a sink has the object. When a site is declared
//! down, one survivor, chosen from the committed cluster state the same way by everyone,
//! ships that site's replicated events; the site, back, learns how far that went and does
//! not ship them again.
//!
//! Exactly once by key: an object's key and bytes follow only from the events in it, and
//! the range of an object is written down (and told to the peers) before it is uploaded, so
//! a retry after a crash, or a survivor taking over, writes the same key with the same
//! bytes. An id held twice (a client that retried on another site) is settled between the
//! sites when they replicate: the copy that is already shipped wins, else the one from the
//! site whose name sorts first; the other is marked never to ship.

pub mod event;
pub mod log;
mod recent;
mod ship;
pub mod spool;
mod stream;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use outlast_core::config::Config;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use event::{BadLine, Event};
pub use ship::{object_key, read_sinks, utc_timestamp};
pub use spool::{Record, Spool, SpoolError, SpoolMark, SpoolStats};
pub use stream::{Accepted, IngestError, PeerReplication, StreamRelay, StreamStats};

/// Locks a mutex, taking it over from a thread that panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One event as it travels between sites.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRecord {
    pub seq: u64,
    pub id: String,
    pub ts: u64,
    pub line: String,
}

/// An origin's events (maybe none) and its shipping progress, to a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicateReq {
    pub stream: String,
    pub origin: String,
    /// The origin has shipped (or skipped) everything through this number.
    pub shipped: u64,
    /// The range of the object the origin is about to write, if any.
    pub intent: Option<(u64, u64)>,
    pub records: Vec<WireRecord>,
    /// Numbers of the records the origin has skipped (absent from agents before it).
    #[serde(default)]
    pub skipped: Vec<u64>,
    /// A request in order: the receiver takes it only when it holds the origin's events
    /// through this number, no further (see [`wire`]). Absent from agents before it.
    #[serde(default)]
    pub after: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicateResp {
    /// The highest sequence number of the origin's this site holds (durably).
    pub high: u64,
    /// Numbers of the request's events whose id this site holds from elsewhere and keeps:
    /// the origin must not ship them.
    pub conflicts: Vec<u64>,
    /// This site shipped the origin's events through this number while it was down.
    pub taken_over: u64,
    /// This site is shipping the origin's events right now.
    pub taking_over: bool,
    /// This site takes requests in order (`after`), so the origin may have several in
    /// flight to it. False from agents before them.
    #[serde(default)]
    pub in_order: bool,
    /// The request was not taken: this site holds the origin's events through `high`, not
    /// through the request's `after`. The origin sends again from `high` on.
    #[serde(default)]
    pub out_of_step: bool,
}

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The largest request body a site's peer port takes: a replication frame is at most
/// [`stream::FRAME_MAX_BYTES`] of events plus its skips and header.
pub const PEER_MAX_BODY: usize = 16 << 20;

const _: () = assert!(stream::FRAME_MAX_BYTES * 2 <= PEER_MAX_BODY);
const _: () =
    assert!(outlast_core::config::MAX_EVENT_BYTES as usize * 2 <= stream::FRAME_MAX_BYTES);

/// How the relay reaches peer sites (the agent's authenticated peer client).
pub trait Transport: Send + Sync + 'static {
    /// Sends a [`ReplicateReq`] in its binary form (see [`wire`]).
    fn replicate<'a>(
        &'a self,
        peer: &'a str,
        frame: Vec<u8>,
    ) -> BoxFut<'a, Result<ReplicateResp, String>>;
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("stream {stream}: sink {url}: {why}")]
    Sink {
        stream: String,
        url: String,
        why: String,
    },
    #[error("no stream named {0:?}")]
    UnknownStream(String),
    #[error("{0} is not a site of this cluster")]
    Stranger(String),
    #[error("cannot decode relay frame: {0}")]
    BadFrame(String),
}

impl RelayError {
    /// A blocking task of the relay that ended without its answer (the runtime stopping).
    pub(crate) fn stopped(_: tokio::task::JoinError) -> Self {
        RelayError::UnknownStream("relay task stopped".into())
    }
}

/// The sites in config order: (name, witness).
#[derive(Debug, Clone)]
pub struct Sites {
    pub me: String,
    pub all: Vec<(String, bool)>,
}

impl Sites {
    /// Who ships `origin`'s events while it is down: the first data site in config order
    /// that is not down, else the first witness that is not. Every site computes the same
    /// from the same committed state.
    pub fn taker(&self, origin: &str, down: &BTreeSet<String>) -> Option<&str> {
        let alive = |(n, _): &&(String, bool)| n != origin && !down.contains(n);
        self.all
            .iter()
            .filter(alive)
            .find(|(_, w)| !w)
            .or_else(|| self.all.iter().filter(alive).find(|(_, w)| *w))
            .map(|(n, _)| n.as_str())
    }

    pub fn peers(&self) -> Vec<String> {
        self.all
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n != &self.me)
            .collect()
    }

    pub fn is_witness(&self) -> bool {
        self.all.iter().any(|(n, w)| n == &self.me && *w)
    }
}

/// Every stream's relay at one site.
pub struct Relay {
    sites: Sites,
    streams: BTreeMap<String, Arc<StreamRelay>>,
    down: watch::Sender<BTreeSet<String>>,
}

impl Relay {
    /// Opens every stream's spools under `data_dir/streams/` and its sinks.
    /// `faults`: what a drill injected into this agent (a `sink-down` fails writes here).
    pub fn open(
        config: &Config,
        me: &str,
        data_dir: &Path,
        faults: &Arc<outlast_core::faults::Faults>,
    ) -> Result<Self, RelayError> {
        let sites = Sites {
            me: me.to_string(),
            all: config
                .sites
                .iter()
                .map(|s| (s.name.clone(), s.witness))
                .collect(),
        };
        if !sites.all.iter().any(|(n, _)| n == me) {
            return Err(RelayError::Stranger(me.to_string()));
        }
        let (down, _) = watch::channel(BTreeSet::new());
        let mut streams = BTreeMap::new();
        for s in &config.streams {
            let dir = data_dir.join("streams").join(&s.name);
            let relay = StreamRelay::open(
                s.clone(),
                sites.clone(),
                &dir,
                down.subscribe(),
                faults,
                config.timing.lease + config.timing.lease_margin(),
            )?;
            streams.insert(s.name.clone(), Arc::new(relay));
        }
        Ok(Self {
            sites,
            streams,
            down,
        })
    }

    /// Starts the group-commit writers, replicators and shippers; they stop with `stop`.
    pub fn start(&self, transport: Arc<dyn Transport>, stop: CancellationToken) {
        for s in self.streams.values() {
            s.start(transport.clone(), stop.clone());
        }
    }

    /// Waits for every stream's tasks and writer on shutdown (after `stop` was cancelled),
    /// up to `deadline` per stream; stragglers are logged.
    pub async fn join(&self, deadline: std::time::Duration) {
        for s in self.streams.values() {
            s.join(deadline).await;
        }
    }

    pub fn stream(&self, name: &str) -> Result<&Arc<StreamRelay>, RelayError> {
        self.streams
            .get(name)
            .ok_or_else(|| RelayError::UnknownStream(name.to_string()))
    }

    pub fn streams(&self) -> impl Iterator<Item = &Arc<StreamRelay>> {
        self.streams.values()
    }

    pub fn is_witness(&self) -> bool {
        self.sites.is_witness()
    }

    /// Sets every stream's state metrics ([`StreamRelay::record_metrics`]).
    pub fn record_metrics(&self) {
        for s in self.streams.values() {
            s.record_metrics();
        }
    }

    /// The sites the committed cluster state declares down.
    pub fn set_down(&self, down: BTreeSet<String>) {
        self.down.send_if_modified(|d| {
            let changed = *d != down;
            *d = down;
            changed
        });
    }

    /// The stream a peer's request is for; a site may only send its own events, or copies
    /// of a down site's events to the site that takes them over (see `stream/forward.rs`).
    fn addressed(
        &self,
        from: &str,
        stream: &str,
        origin: &str,
    ) -> Result<Arc<StreamRelay>, RelayError> {
        if origin != from {
            let down = self.down.borrow();
            let taking = down.contains(origin)
                && self.sites.taker(origin, &down) == Some(self.sites.me.as_str());
            if !taking {
                return Err(RelayError::Stranger(format!("{from} sending for {origin}")));
            }
        }
        Ok(self.stream(stream)?.clone())
    }

    /// A peer's replication request.
    pub async fn receive(
        &self,
        from: &str,
        req: ReplicateReq,
    ) -> Result<ReplicateResp, RelayError> {
        let s = self.addressed(from, &req.stream, &req.origin)?;
        s.receive(req).await
    }

    /// [`Self::receive`] of a request in its binary form, read in place.
    pub async fn receive_frame(
        &self,
        from: &str,
        frame: bytes::Bytes,
    ) -> Result<ReplicateResp, RelayError> {
        let (stream, origin) = wire::FrameRef::peek(&frame).map_err(RelayError::BadFrame)?;
        let s = self.addressed(from, stream, origin)?;
        s.receive_frame(frame).await
    }
}
