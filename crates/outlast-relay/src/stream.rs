//! One stream at one site: its own spool, replicas of the peers' events, the group-commit
//! writer, the replicators (one per peer) and the shipper.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use outlast_core::config::{Ack, Stream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::event::{self, Event};
use crate::log::Log;
use crate::recent::{Chunk, Recent};
use crate::ship::{open_sinks, shipper, Shippable, Shipping, Sink};
use crate::spool::{IdKey, Record, SpoolError, TouchAhead};
use crate::wire::{FrameRef, FrameWriter};
use crate::{lock, RelayError, ReplicateReq, ReplicateResp, Sites, Transport};

mod forward;

/// A peer that answered within this long counts as live: its copy gates shipping.
const LIVE: Duration = Duration::from_secs(2);
/// Most events in one replication request.
const REPLICATE_MAX: usize = 4000;
/// Most bytes of events in one replication request: well below what a peer takes in one
/// request ([`crate::PEER_MAX_BODY`]), and above the largest event a stream accepts
/// (`max_event_bytes`, at most [`outlast_core::config::MAX_EVENT_BYTES`]), so every event
/// fits in a frame of its own.
pub(crate) const FRAME_MAX_BYTES: usize = 4 << 20;
/// Own events kept in memory for the replicators: this many at most, and at most
/// RECENT_MAX_BYTES of them (a replicator further behind reads the spool).
const RECENT_MAX: usize = 200_000;
const RECENT_MAX_BYTES: usize = 24 << 20;
/// How long an ingest waits for a second site before answering 503.
const REPLICATED_WAIT: Duration = Duration::from_secs(5);
/// Frames in flight at once to a peer that takes them in order.
const IN_FLIGHT: usize = 4;
/// The fewest events of a frame sent while others are in flight.
const PIPELINE_MIN: usize = REPLICATE_MAX / 4;
/// How long a frame in order waits for the frames before it.
const ORDER_WAIT: Duration = Duration::from_secs(1);
/// How long status says a stream is out of space after an ingest was refused for it.
const NO_SPACE_SHOWN: Duration = Duration::from_secs(5);
/// A replication error that stays the same is logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often a replicator sends its shipping progress when no events go.
const HEARTBEAT: Duration = Duration::from_millis(300);

pub(crate) use outlast_core::clock::unix_ms as now_ms;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "this site is a witness: it holds copies but takes no events; send them to a data site"
    )]
    Witness,
    #[error("the spool for {stream} holds {bytes} bytes, over its {max}-byte limit; retry later")]
    Full {
        stream: String,
        bytes: u64,
        max: u64,
    },
    #[error("stored here but no other site confirmed it within {0:?}; retry with the same ids")]
    NotReplicated(Duration),
    #[error(
        "the disk under {stream}'s spool has {free} bytes free, under min_free_bytes ({min}); \
         retry later"
    )]
    LowDisk { stream: String, free: u64, min: u64 },
    #[error("the disk under {stream}'s spool is full; nothing was stored, retry later")]
    DiskFull { stream: String },
    /// The detail (a path, an OS error) is in the agent's log, not in the answer.
    #[error("this site could not write its spool; nothing was stored (the agent's log says why)")]
    Spool,
    #[error("the relay is stopping")]
    Stopping,
}

/// What an ingest request got.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Accepted {
    pub accepted: usize,
    pub ids: Vec<String>,
    /// Events whose id this site already held (acknowledged, not stored again).
    pub duplicates: usize,
    pub site: String,
}

/// Where an event ended up.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// In the own spool: sequence number, and whether it was there before.
    Own(u64, bool),
    /// Held as another site's event (replica): already on two sites.
    Replica,
}

struct Job {
    events: Vec<Event>,
    /// Each event's id key, made by the ingesting task (in parallel) for the writer.
    keys: Vec<IdKey>,
    /// The outcomes, and the events given back so that they are freed by the task that
    /// made them rather than by the writer (a cross-thread free is slow, and the writer is
    /// every request's critical path).
    reply: oneshot::Sender<Committed>,
}

/// A job's answer: each event's outcome and the events themselves, or why none was kept.
type Committed = Result<(Vec<Outcome>, Vec<Event>), Failed>;

/// Why a commit stored nothing.
#[derive(Debug, Clone, Copy)]
enum Failed {
    /// The disk under the spool is full.
    NoSpace,
    /// Any other write or sync error (logged with its detail by the writer).
    Io,
}

#[derive(Debug, Clone, Default)]
struct PeerView {
    /// The highest own sequence number the peer holds.
    high: Option<u64>,
    last_ok: Option<Instant>,
    taken_over: u64,
    taking_over: bool,
    /// The peer takes frames in order: several may be in flight to it.
    in_order: bool,
    /// The first own number in a frame sent to the peer and not answered yet: the peer's
    /// verdict on any copy of those ids it holds (which of the two is kept) is still on
    /// its way, so none of them may go into an intent (which wins every later settlement).
    in_flight_from: Option<u64>,
    /// Frames it refused or did not answer, and the last reason.
    errors: u64,
    last_error: Option<String>,
}

#[derive(Default)]
pub(crate) struct Counters {
    /// Events acknowledged (duplicates included).
    pub accepted: AtomicU64,
    /// Events written to the own spool (durable), acknowledged or not: a request whose
    /// client left, or whose replication wait ran out, was still stored and will ship.
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub conflicts: AtomicU64,
}

/// A stream's figures for status and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamStats {
    pub name: String,
    pub spool_events: u64,
    pub spool_bytes: u64,
    pub oldest_unshipped_ms: Option<u64>,
    pub sink: Option<String>,
    pub objects_shipped: u64,
    pub replays: u64,
    pub quarantined_segments: u64,
    pub accepted: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    /// Per origin site: events held as its replica and not yet shipped.
    pub replicas: BTreeMap<String, u64>,
    /// Origins whose events this site is shipping because they are down.
    pub taking_over: Vec<String>,
    /// Per peer: how this site's events reach it.
    pub replication: BTreeMap<String, PeerReplication>,
    /// Bytes free on the disk under the spool.
    pub disk_free_bytes: Option<u64>,
    /// Ingest was refused in the last seconds because the disk is full (or under
    /// `min_free_bytes`).
    pub out_of_space: bool,
}

pub use outlast_core::status::PeerReplication;

pub struct StreamRelay {
    pub(crate) cfg: Stream,
    pub(crate) sites: Sites,
    dir: PathBuf,
    pub(crate) own: Mutex<Log>,
    pub(crate) replicas: Mutex<BTreeMap<String, Log>>,
    recent: Mutex<Recent>,
    /// Commit jobs for the writer thread; `None` tells it to stop.
    jobs: mpsc::UnboundedSender<Option<Job>>,
    jobs_rx: Mutex<Option<mpsc::UnboundedReceiver<Option<Job>>>>,
    /// The writer thread and the async tasks, joined on shutdown.
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The own spool's last durable sequence number.
    pub(crate) durable: watch::Sender<u64>,
    /// The highest own sequence number another site holds.
    replicated: watch::Sender<u64>,
    peers: Mutex<BTreeMap<String, PeerView>>,
    pub(crate) down: watch::Receiver<BTreeSet<String>>,
    pub(crate) counters: Counters,
    /// The shipper's own state: its sink, its takeovers, its figures.
    shipping: Shipping,
    id_prefix: String,
    id_next: AtomicU64,
    /// The secret key of assigned ids' numbers (see `assign_id`).
    id_key: std::hash::RandomState,
    sinks: Mutex<Option<Vec<Sink>>>,
    /// Held while a peer's frame is taken (one at a time), with the newest shipping
    /// progress taken from each origin; `received` wakes frames in order waiting their turn.
    receiving: Mutex<BTreeMap<String, (u64, u64)>>,
    received: std::sync::Condvar,
    /// Repeating errors (a peer refusing frames, a full disk) are logged once per kind per
    /// [`ERROR_LOG_EVERY`]; every occurrence is counted in metrics.
    pub(crate) log_throttle: outlast_core::throttle::LogThrottle,
    /// When an ingest was last refused for lack of disk space.
    no_space_at: Mutex<Option<Instant>>,
}

/// A frame for a peer, and the numbers of its first and last events (none: progress only).
struct Built {
    frame: Vec<u8>,
    span: Option<(u64, u64)>,
    /// The skipped numbers the frame carries.
    skipped: Vec<u64>,
}

/// See [`StreamRelay::progress`].
struct Progress {
    shipped: u64,
    intent: Option<(u64, u64)>,
    /// Skipped own events still in the spool, ascending.
    skipped: Vec<u64>,
    /// The first own event still in the spool.
    kept_from: u64,
}

/// Pushes own records to a replication frame while it stays within [`FRAME_MAX_BYTES`]
/// (the first always goes: no event is larger than a frame, see `max_event_bytes`), with
/// room made for all of them first (a frame of megabytes grown by doubling copies itself
/// over and over). Records are (seq, id, stored payload).
fn push_all<'a>(
    w: &mut FrameWriter,
    recs: impl Iterator<Item = (u64, &'a [u8], &'a [u8])> + Clone,
) -> Result<(), String> {
    let mut bytes = w.len();
    let fits = recs
        .clone()
        .map(|(_, id, payload)| FrameWriter::record_bytes(id, event::unstored(payload).1.len()))
        .enumerate()
        .take_while(|(i, n)| {
            bytes += n;
            *i == 0 || bytes <= FRAME_MAX_BYTES
        })
        .count();
    w.reserve(bytes.min(FRAME_MAX_BYTES));
    for (seq, id, payload) in recs.take(fits) {
        let (ts, line) = event::unstored(payload);
        w.push(seq, ts, id, line)?;
    }
    Ok(())
}

/// A keyed permutation of 64-bit numbers: a balanced Feistel network of four rounds whose
/// round function is SipHash under `key` (a pseudo-random permutation to whoever lacks it).
fn permute(key: &std::hash::RandomState, n: u64) -> u64 {
    use std::hash::BuildHasher;
    let (mut l, mut r) = ((n >> 32) as u32, n as u32);
    for round in 0u8..4 {
        let f = key.hash_one((round, r)) as u32;
        (l, r) = (r, l ^ f);
    }
    (u64::from(l) << 32) | u64::from(r)
}

/// Appends `n` as 11 base62 digits (0-9, A-Z, a-z): fixed width, and nothing JSON escapes.
fn base62(mut n: u64, out: &mut String) {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut buf = [b'0'; 11];
    for d in buf.iter_mut().rev() {
        *d = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    out.extend(buf.iter().map(|&b| char::from(b)));
}

impl StreamRelay {
    pub(crate) fn open(
        cfg: Stream,
        sites: Sites,
        dir: &Path,
        down: watch::Receiver<BTreeSet<String>>,
        faults: &Arc<outlast_core::faults::Faults>,
        takeover_hold: Duration,
    ) -> Result<Self, RelayError> {
        let own = Log::open(&dir.join("own"))?;
        let mut replicas = BTreeMap::new();
        let rdir = dir.join("replica");
        if let Ok(entries) = std::fs::read_dir(&rdir) {
            for e in entries.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if sites.all.iter().any(|(n, _)| *n == name) && name != sites.me {
                    replicas.insert(name.clone(), Log::open(&e.path())?);
                }
            }
        }
        let last = own.last_seq();
        let (jobs, jobs_rx) = mpsc::unbounded_channel();
        let quarantined = own.spool.stats().quarantined_segments;
        if quarantined > 0 {
            metrics::counter!("outlast_relay_quarantined_segments_total", "stream" => cfg.name.clone())
                .increment(quarantined);
        }
        let sinks = open_sinks(&cfg, &sites.me, faults)?;
        Ok(Self {
            sinks: Mutex::new(Some(sinks)),
            id_prefix: {
                let mut p = format!("{}-", sites.me);
                base62(rand::random::<u64>(), &mut p);
                p
            },
            id_next: AtomicU64::new(0),
            id_key: std::hash::RandomState::new(),
            cfg,
            sites,
            dir: dir.to_path_buf(),
            own: Mutex::new(own),
            replicas: Mutex::new(replicas),
            recent: Mutex::new(Recent::new(RECENT_MAX, RECENT_MAX_BYTES)),
            jobs,
            jobs_rx: Mutex::new(Some(jobs_rx)),
            writer_thread: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            durable: watch::channel(last).0,
            replicated: watch::channel(0).0,
            peers: Mutex::new(BTreeMap::new()),
            down,
            counters: Counters::default(),
            shipping: Shipping::new(takeover_hold),
            receiving: Mutex::new(BTreeMap::new()),
            received: std::sync::Condvar::new(),
            log_throttle: outlast_core::throttle::LogThrottle::new(ERROR_LOG_EVERY),
            no_space_at: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn max_body_bytes(&self) -> u64 {
        self.cfg.max_body_bytes
    }

    pub fn max_event_bytes(&self) -> u64 {
        self.cfg.max_event_bytes
    }

    /// A fresh id for an event that came without one: `{site}-{process}-{number}`, both
    /// parts 11 base62 digits. `process` is random per process (ids stay unique across
    /// restarts); `number` is the process's counter through a keyed permutation (a 4-round
    /// Feistel network over SipHash, its key drawn per process), so ids never repeat within
    /// a process and a client that has seen assigned ids cannot foretell the next one. An
    /// explicit id equal to a future assigned id would make that later event look like a
    /// retry: acknowledged and never stored.
    pub fn assign_id(&self) -> String {
        let n = self.id_next.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(self.id_prefix.len() + 12);
        id.push_str(&self.id_prefix);
        id.push('-');
        base62(permute(&self.id_key, n), &mut id);
        id
    }

    pub(crate) fn start(self: &Arc<Self>, transport: Arc<dyn Transport>, stop: CancellationToken) {
        if let Some(rx) = lock(&self.jobs_rx).take() {
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("spool-{}", self.cfg.name))
                .spawn(move || me.writer(rx));
            match spawned {
                Ok(t) => *lock(&self.writer_thread) = Some(t),
                Err(e) => tracing::error!(error = %e, "relay: could not start the spool writer"),
            }
        }
        let mut tasks = lock(&self.tasks);
        for peer in self.sites.peers() {
            let me = self.clone();
            let t = transport.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(
                async move { me.replicator(peer, t, stop).await },
            ));
        }
        {
            let me = self.clone();
            let t = transport.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move { me.forwarder(t, stop).await }));
        }
        let me = self.clone();
        let sinks = lock(&self.sinks).take().unwrap_or_default();
        // A backlog held before the site started (it was down) is a replay. Read here, not
        // in the task: events taken once this returns are live, however late it first runs.
        let replaying = lock(&self.own).unshipped().0 >= self.cfg.batch_events;
        tasks.push(tokio::spawn(async move {
            shipper(me, sinks, transport, stop, replaying).await
        }));
    }

    /// Waits for the stream's tasks (stopped by the token given to `start`) and its writer
    /// thread (told to stop here, after the commits queued before), up to `deadline`; what
    /// is still running then is logged and left.
    pub(crate) async fn join(&self, deadline: std::time::Duration) {
        let until = tokio::time::Instant::now() + deadline;
        let _ = self.jobs.send(None);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        let n = tasks.len();
        for (i, mut t) in tasks.into_iter().enumerate() {
            if tokio::time::timeout_at(until, &mut t).await.is_err() {
                tracing::warn!(stream = %self.cfg.name, left = n - i, "relay: tasks still running at the deadline; aborted");
                t.abort();
            }
        }
        let thread = lock(&self.writer_thread).take();
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout_at(until, joined).await.is_err() {
                tracing::warn!(stream = %self.cfg.name, "relay: the spool writer is still writing at the deadline");
            }
        }
    }

    /// Bytes free for this site on the disk under the stream's spool, when it can be told.
    pub fn disk_free(&self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    /// Notes that an ingest was refused for lack of space (status says so for a while).
    fn no_space_now(&self) {
        *lock(&self.no_space_at) = Some(outlast_core::clock::now());
    }

    /// Whether ingest was refused for lack of space in the last [`NO_SPACE_SHOWN`].
    pub fn out_of_space(&self) -> bool {
        lock(&self.no_space_at).is_some_and(|t| t.elapsed() < NO_SPACE_SHOWN)
    }

    /// Bytes held for this stream at this site, own and replicas, not yet shipped.
    fn held_bytes(&self) -> u64 {
        let own = lock(&self.own).unshipped().1;
        let reps: u64 = lock(&self.replicas).values().map(|l| l.unshipped().1).sum();
        own + reps
    }

    /// Takes a request's events: answers once the stream's `ack` policy holds.
    pub async fn ingest(&self, events: Vec<Event>) -> Result<Accepted, IngestError> {
        if self.sites.is_witness() {
            return Err(IngestError::Witness);
        }
        if let Some(free) = self.disk_free() {
            if free < self.cfg.min_free_bytes {
                self.no_space_now();
                metrics::counter!("outlast_relay_refused_no_space_total", "stream" => self.cfg.name.clone())
                    .increment(1);
                return Err(IngestError::LowDisk {
                    stream: self.cfg.name.clone(),
                    free,
                    min: self.cfg.min_free_bytes,
                });
            }
        }
        let held = self.held_bytes();
        if held > self.cfg.max_spool_bytes {
            metrics::counter!("outlast_relay_refused_full_total", "stream" => self.cfg.name.clone())
                .increment(1);
            return Err(IngestError::Full {
                stream: self.cfg.name.clone(),
                bytes: held,
                max: self.cfg.max_spool_bytes,
            });
        }
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Some(Job {
                keys: events.iter().map(|e| IdKey::of(&e.id)).collect(),
                events,
                reply: tx,
            }))
            .map_err(|_| IngestError::Stopping)?;
        let (outcomes, events) =
            rx.await
                .map_err(|_| IngestError::Stopping)?
                .map_err(|f| match f {
                    Failed::NoSpace => IngestError::DiskFull {
                        stream: self.cfg.name.clone(),
                    },
                    Failed::Io => IngestError::Spool,
                })?;
        let ids: Vec<String> = events.into_iter().map(|e| e.id).collect();
        let mut need = 0;
        let mut duplicates = 0;
        for o in &outcomes {
            match o {
                Outcome::Own(seq, dup) => {
                    need = need.max(*seq);
                    duplicates += usize::from(*dup);
                }
                Outcome::Replica => duplicates += 1,
            }
        }
        if self.cfg.ack == Ack::Replicated && need > 0 {
            let mut rx = self.replicated.subscribe();
            let ok = matches!(
                tokio::time::timeout(REPLICATED_WAIT, rx.wait_for(|r| *r >= need)).await,
                Ok(Ok(_))
            );
            if !ok {
                return Err(IngestError::NotReplicated(REPLICATED_WAIT));
            }
        }
        self.counters
            .accepted
            .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        self.counters
            .duplicates
            .fetch_add(duplicates as u64, Ordering::Relaxed);
        metrics::counter!("outlast_relay_events_accepted_total", "stream" => self.cfg.name.clone())
            .increment(outcomes.len() as u64);
        Ok(Accepted {
            accepted: outcomes.len(),
            ids,
            duplicates,
            site: self.sites.me.clone(),
        })
    }

    /// The group-commit writer: takes every request waiting, appends them all, one fsync.
    fn writer(&self, mut rx: mpsc::UnboundedReceiver<Option<Job>>) {
        let mut stopping = false;
        while let Some(Some(first)) = (!stopping).then(|| rx.blocking_recv()).flatten() {
            let mut jobs = vec![first];
            while jobs.len() < 1024 {
                match rx.try_recv() {
                    Ok(Some(j)) => jobs.push(j),
                    Ok(None) => {
                        stopping = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let result = self.commit(&jobs);
            match result {
                Ok(per_job) => {
                    for (job, outcomes) in jobs.into_iter().zip(per_job) {
                        let _ = job.reply.send(Ok((outcomes, job.events)));
                    }
                }
                Err(e) => {
                    let failed = if e.is_no_space() {
                        self.no_space_now();
                        metrics::counter!("outlast_relay_refused_no_space_total", "stream" => self.cfg.name.clone())
                            .increment(1);
                        Failed::NoSpace
                    } else {
                        Failed::Io
                    };
                    if self.log_throttle.allow(&format!("commit: {e}")) {
                        tracing::error!(stream = %self.cfg.name, error = %e, "relay: spool write failed; the commit was taken back and refused (logged once per 10 s)");
                    }
                    for job in jobs {
                        let _ = job.reply.send(Err(failed));
                    }
                }
            }
        }
    }

    fn commit(&self, jobs: &[Job]) -> Result<Vec<Vec<Outcome>>, SpoolError> {
        // Ids held as another site's event are not taken again.
        let keys: Vec<IdKey> = jobs.iter().flat_map(|j| j.keys.iter().copied()).collect();
        let mut in_replica = vec![false; keys.len()];
        for l in lock(&self.replicas).values() {
            let mut ahead = TouchAhead::start(&keys, &l.spool);
            for (k, held) in keys.iter().zip(in_replica.iter_mut()) {
                ahead.step(&l.spool);
                *held |= l.spool.lookup_key(*k).is_some_and(|s| !l.is_skipped(s));
            }
        }
        let ts = event::stored_prefix(now_ms());
        let (records, bytes) = jobs
            .iter()
            .flat_map(|j| &j.events)
            .fold((0, 0), |(n, b), e| {
                (n + 1, b + e.id.len() + ts.len() + e.line.len())
            });
        // The new events, for the replicators: written once, in one buffer.
        let mut fresh = Chunk::with_capacity(records, bytes);
        let mut own = lock(&self.own);
        let mark = own.spool.mark();
        let mut out = Vec::with_capacity(jobs.len());
        let staged = (|| {
            let mut ahead = TouchAhead::start(&keys, &own.spool);
            let mut in_replica = in_replica.iter();
            for job in jobs {
                let mut outcomes = Vec::with_capacity(job.events.len());
                for (e, key) in job.events.iter().zip(&job.keys) {
                    ahead.step(&own.spool);
                    if in_replica.next().copied().unwrap_or(false) {
                        outcomes.push(Outcome::Replica);
                        continue;
                    }
                    let payload = fresh.stage(&e.id, &[&ts, &e.line]);
                    let (seq, dup) = own.spool.append_keyed(&e.id, *key, payload)?;
                    if !dup {
                        fresh.keep(seq);
                    }
                    outcomes.push(Outcome::Own(seq, dup));
                }
                out.push(outcomes);
            }
            drop(ahead);
            own.spool.start_sync()
        })();
        // A commit that fails is taken back whole: none of it was acknowledged, so none of
        // it may be counted, replicated or shipped (found by probing: after a full disk,
        // events of a body answered 500 reached a sink).
        let sync = match staged {
            Ok(sync) => sync,
            Err(e) => {
                self.take_back(&mut own, mark);
                return Err(e);
            }
        };
        fresh.settle();
        // The fsync runs without the stream's lock: ingests (which read the spool's size)
        // and replicators need it, and the disk is the slowest step of a commit.
        let last = own.last_seq();
        drop(own);
        if let Err(e) = sync.finish() {
            self.take_back(&mut lock(&self.own), mark);
            return Err(e);
        }
        let stored = out
            .iter()
            .flatten()
            .filter(|o| matches!(o, Outcome::Own(_, false)))
            .count() as u64;
        self.counters.stored.fetch_add(stored, Ordering::Relaxed);
        metrics::counter!("outlast_relay_events_stored_total", "stream" => self.cfg.name.clone())
            .increment(stored);
        lock(&self.recent).push(fresh);
        self.durable.send_replace(last);
        Ok(out)
    }

    /// [`Spool::rollback`] of a failed commit. One that fails too (the disk refuses even to
    /// cut a file) is logged: the index has forgotten the records and the next write starts
    /// a new segment, but the bytes may come back when the spool is opened again.
    fn take_back(&self, own: &mut Log, mark: crate::spool::SpoolMark) {
        if let Err(e) = own.spool.rollback(mark) {
            tracing::error!(stream = %self.cfg.name, error = %e, "relay: taking back a failed commit");
        }
    }

    /// This site's shipping progress as a frame tells it, read in one piece: the shipped
    /// mark, the intent, and which own events still in the spool are skipped.
    fn progress(&self) -> Progress {
        let own = lock(&self.own);
        // Records before the spool's first are not sent: their skips may be forgotten,
        // and a record sent as shipped and not skipped must be in an object.
        let kept_from = own
            .spool
            .first_seq()
            .unwrap_or_else(|| own.spool.next_seq());
        // Every skip still kept, not only those of the records framed: a peer that got a
        // record before it was skipped here must not take it, once the shipped mark passes
        // it, for a copy in an object (found by probing: a third site then told the other
        // copy's site to skip its own, and the id was in no object).
        Progress {
            shipped: own.shipped(),
            intent: own.intent(),
            skipped: own.skips_from(kept_from),
            kept_from,
        }
    }

    /// A replicator's frame: this site's shipping progress and, when the peer's position
    /// is known, up to `max` own events from `from` on (with which of them are skipped),
    /// written straight from the recent events in memory (or read from the spool when they
    /// are older). A spool that cannot be read still lets the progress through. `after`
    /// makes it a frame in order (see [`crate::wire`]).
    fn own_frame(
        &self,
        from: Option<u64>,
        progress: &Progress,
        max: usize,
        disk: bool,
        after: Option<u64>,
    ) -> Result<Option<Built>, String> {
        let mut w = FrameWriter::new(
            &self.cfg.name,
            &self.sites.me,
            progress.shipped,
            progress.intent,
            after,
        )?;
        if let Some(from) = from.map(|f| f.max(progress.kept_from)) {
            let in_memory = {
                let recent = lock(&self.recent);
                let held = recent.first_seq().is_some_and(|first| first <= from);
                if held {
                    push_all(&mut w, recent.from(from).take(max))?;
                }
                held
            };
            if !in_memory {
                if !disk {
                    return Ok(None);
                }
                match self.read_durable(from, max) {
                    Ok(recs) => push_all(
                        &mut w,
                        recs.iter()
                            .map(|r| (r.seq, r.id.as_bytes(), r.payload.as_slice())),
                    )?,
                    Err(e) => {
                        tracing::error!(stream = %self.cfg.name, error = %e, "relay: reading the spool to replicate");
                    }
                }
            }
        }
        w.skipped(&progress.skipped);
        let span = w.span();
        Ok(Some(Built {
            frame: w.finish(),
            span,
            skipped: progress.skipped.clone(),
        }))
    }

    /// A replicator's frame from `from` on: from the events in memory, else read from the
    /// spool on a blocking thread. None (logged) when it cannot be framed.
    async fn replica_frame(
        self: &Arc<Self>,
        from: Option<u64>,
        after: Option<u64>,
        told: &mut BTreeSet<u64>,
    ) -> Option<Built> {
        let mut progress = self.progress();
        // The skips of the records framed, and the earlier ones the peer has not
        // acknowledged yet (each in an answered frame once is enough: it keeps them).
        told.retain(|s| *s >= progress.kept_from);
        progress
            .skipped
            .retain(|s| from.is_some_and(|f| *s >= f) || !told.contains(s));
        let built = match self.own_frame(from, &progress, REPLICATE_MAX, false, after) {
            Ok(None) => {
                let me = self.clone();
                tokio::task::spawn_blocking(move || {
                    me.own_frame(from, &progress, REPLICATE_MAX, true, after)
                })
                .await
                .unwrap_or_else(|_| Err("the framing task stopped".into()))
            }
            other => other,
        };
        match built {
            Ok(Some(b)) => Some(b),
            framed => {
                let e = framed.err().unwrap_or_else(|| "no frame".into());
                tracing::error!(stream = %self.cfg.name, error = %e, "relay: cannot frame events to replicate");
                None
            }
        }
    }

    /// Sends own events to one peer, in order, for ever. To a peer that takes frames in
    /// order, up to [`IN_FLIGHT`] go out before the first is answered, each after the first
    /// with [`PIPELINE_MIN`] events or more: a peer far away gets up to [`IN_FLIGHT`]
    /// frames per round trip, not one, and takes one while the next travels.
    async fn replicator(
        self: Arc<Self>,
        peer: String,
        transport: Arc<dyn Transport>,
        stop: CancellationToken,
    ) {
        let mut durable = self.durable.subscribe();
        let mut backoff = Duration::from_millis(100);
        // Frames sent and not answered yet, oldest first, with the peer's answer; and the
        // own numbers each carries.
        let mut pending = futures::stream::FuturesOrdered::new();
        let mut spans: std::collections::VecDeque<Option<(u64, u64)>> = Default::default();
        // The skips each frame in flight carries, and those the peer has acknowledged.
        let mut sent_skips: std::collections::VecDeque<Vec<u64>> = Default::default();
        let mut told: BTreeSet<u64> = BTreeSet::new();
        // While frames go in order: the number the next one starts from, and the number the
        // peer holds through before it.
        let mut cursor: Option<(u64, u64)> = None;
        // A frame goes now even without events (shipping progress, and where the peer is).
        let mut due = true;
        // The last frame had no events though some seemed due (they were trimmed, or the
        // spool could not be read): none again until new events come.
        let mut quiet = false;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let (known, ordered) = lock(&self.peers)
                .get(&peer)
                .map_or((None, false), |p| (p.high, p.in_order));
            let depth = if ordered { IN_FLIGHT } else { 1 };
            let room = pending.len() < depth;
            if room {
                let from = cursor.map(|(next, _)| next).or(known.map(|h| h + 1));
                // Beside frames in flight, only one worth its cost goes: many small frames
                // cost the peer a sync each, and near peers answer before more build up.
                let least = if pending.is_empty() { 1 } else { PIPELINE_MIN };
                let fresh = !quiet
                    && from.is_some_and(|f| {
                        (*self.durable.borrow() + 1).saturating_sub(f) >= least as u64
                    });
                if fresh || (due && pending.is_empty()) {
                    let after = if ordered {
                        cursor.map(|(_, after)| after).or(known)
                    } else {
                        None
                    };
                    let Some(b) = self.replica_frame(from, after, &mut told).await else {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    };
                    due = false;
                    quiet = b.span.is_none();
                    if let (true, Some((_, last))) = (ordered, b.span) {
                        cursor = Some((last + 1, last));
                    }
                    let events = b.span.map_or(0, |(first, last)| last + 1 - first);
                    let labels = [("stream", self.cfg.name.clone()), ("peer", peer.clone())];
                    metrics::counter!("outlast_relay_replicate_frames_total", &labels).increment(1);
                    metrics::counter!("outlast_relay_replicate_events_total", &labels)
                        .increment(events);
                    let (t, p) = (transport.clone(), peer.clone());
                    pending.push_back(async move {
                        tokio::time::timeout(Duration::from_secs(5), t.replicate(&p, b.frame)).await
                    });
                    spans.push_back(b.span);
                    sent_skips.push_back(b.skipped);
                    self.in_flight(&peer, &spans);
                    continue;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(answer) = pending.next(), if !pending.is_empty() => {
                    spans.pop_front();
                    let skips = sent_skips.pop_front().unwrap_or_default();
                    match answer {
                        Ok(Ok(resp)) if resp.out_of_step => {
                            // The peer holds other than the frames in flight follow: what
                            // it holds is where the next frame starts.
                            pending.clear();
                            spans.clear();
                            sent_skips.clear();
                            cursor = Some((resp.high + 1, resp.high));
                            due = true;
                        }
                        Ok(Ok(resp)) => {
                            backoff = Duration::from_millis(100);
                            self.answered(&peer, &resp);
                            told.extend(skips);
                        }
                        other => {
                            let why = match &other {
                                Ok(Err(e)) => e.clone(),
                                _ => "no answer within 5 s".to_string(),
                            };
                            self.replication_failed(&peer, why);
                            // What the frames still in flight did is unknown: start again
                            // from the peer's last answer.
                            pending.clear();
                            spans.clear();
                            sent_skips.clear();
                            cursor = None;
                            due = true;
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                        }
                    }
                },
                _ = durable.changed(), if room => quiet = false,
                _ = tokio::time::sleep(HEARTBEAT), if pending.is_empty() => due = true,
            }
            // After the answer was applied (its verdicts first), the frames still in flight.
            self.in_flight(&peer, &spans);
        }
    }

    /// Notes the first own number of the frames in flight to `peer` (see
    /// [`PeerView::in_flight_from`]).
    fn in_flight(&self, peer: &str, spans: &std::collections::VecDeque<Option<(u64, u64)>>) {
        let from = spans.iter().flatten().map(|(first, _)| *first).min();
        lock(&self.peers)
            .entry(peer.to_string())
            .or_default()
            .in_flight_from = from;
    }

    /// A frame the peer refused or did not answer: counted, shown in status, and logged at
    /// warn level once per reason per [`ERROR_LOG_EVERY`] (a peer that refuses every frame
    /// would otherwise fill the log once a second).
    fn replication_failed(&self, peer: &str, why: String) {
        let labels = [
            ("stream", self.cfg.name.clone()),
            ("peer", peer.to_string()),
        ];
        metrics::counter!("outlast_relay_replicate_errors_total", &labels).increment(1);
        let mut peers = lock(&self.peers);
        let v = peers.entry(peer.to_string()).or_default();
        v.errors += 1;
        if self.log_throttle.allow(&format!("replicate {peer}: {why}")) {
            tracing::warn!(stream = %self.cfg.name, peer, errors = v.errors, error = %why, "relay: replication to a peer failed");
        }
        v.last_error = Some(why);
    }

    fn answered(&self, peer: &str, resp: &ReplicateResp) {
        if !resp.conflicts.is_empty() {
            let mut own = lock(&self.own);
            let shipped = own.shipped();
            tracing::debug!(stream = %self.cfg.name, peer, conflicts = ?resp.conflicts, shipped, intent = ?own.intent(), "relay: a peer kept its copies of ids held twice");
            // A copy already in an object, or in the intent (which wins every settlement
            // from then on, and may have told the peer to skip its own copy meanwhile), is
            // kept: the peer's verdict came too late for it. Skipping it could leave the id
            // in no object at all (found by a restart of every site mid-stream); keeping it
            // leaves it twice at worst.
            let (late, skip): (Vec<u64>, Vec<u64>) = resp
                .conflicts
                .iter()
                .partition(|s| own.shipped_or_intended(**s));
            if !late.is_empty() {
                tracing::error!(stream = %self.cfg.name, peer, late = late.len(), "relay: a peer kept its copy of ids this site had already put in an object or its intent; both copies may be stored");
            }
            if let Err(e) = own.skip(&skip) {
                tracing::error!(stream = %self.cfg.name, error = %e, "relay: could not record skips");
            }
            self.counters
                .conflicts
                .fetch_add(resp.conflicts.len() as u64, Ordering::Relaxed);
        }
        {
            let mut own = lock(&self.own);
            // A peer holding numbers past ours means this spool lost data (a new disk):
            // never reuse a number that may already name an object.
            if resp.high > own.last_seq() {
                own.spool.skip_to(resp.high + 1);
            }
            if resp.taken_over > own.shipped() && !resp.taking_over {
                tracing::info!(stream = %self.cfg.name, peer, through = resp.taken_over, "relay: a peer shipped our events while we were down");
                let through = resp.taken_over;
                let clear = own.intent().is_some_and(|(a, _)| a <= through);
                if let Err(e) = own.set_shipped(through) {
                    tracing::error!(stream = %self.cfg.name, error = %e, "relay: could not record shipped mark");
                }
                if clear {
                    let _ = own.set_intent(None);
                }
            }
        }
        let mut peers = lock(&self.peers);
        let v = peers.entry(peer.to_string()).or_default();
        if v.last_error.take().is_some() {
            tracing::info!(stream = %self.cfg.name, peer, "relay: replication to the peer works again");
        }
        v.high = Some(resp.high);
        v.in_order = resp.in_order;
        v.last_ok = Some(outlast_core::clock::now());
        v.taken_over = resp.taken_over;
        v.taking_over = resp.taking_over;
        let best = peers.values().filter_map(|p| p.high).max().unwrap_or(0);
        drop(peers);
        self.replicated.send_if_modified(|r| {
            let changed = best > *r;
            *r = (*r).max(best);
            changed
        });
    }

    /// How far own events may ship: every peer whose copy settles ids held twice holds
    /// them first. Those are the live peers and every data site not declared down, live or
    /// not (one not heard from since this site started holds nothing yet, as far as it
    /// knows). Otherwise a range could be put in the intent, which wins every settlement,
    /// while the peer still holds its own copy of an id unsettled: if that copy is in the
    /// peer's intent too, each side skips its own and the event is in no object. Nor past
    /// a frame to such a peer whose answer has not come back: the peer holds those events
    /// (another answer may say so first) but its verdict on a copy of its own is in that
    /// answer. Nothing ships while a live peer is shipping these events for this site.
    fn own_shippable(&self) -> Option<u64> {
        let mut floor = *self.durable.borrow();
        let down = self.down.borrow().clone();
        let peers = lock(&self.peers);
        for (name, witness) in self.sites.all.iter().filter(|(n, _)| *n != self.sites.me) {
            let view = peers.get(name);
            let live = view.is_some_and(|p| p.last_ok.is_some_and(|t| t.elapsed() < LIVE));
            if live && view.is_some_and(|p| p.taking_over) {
                return None;
            }
            if live || (!witness && !down.contains(name)) {
                floor = floor.min(view.and_then(|p| p.high).unwrap_or(0));
                // Nor past what the peer has not given its verdict on yet.
                if let Some(from) = view.and_then(|p| p.in_flight_from) {
                    floor = floor.min(from.saturating_sub(1));
                }
            }
        }
        Some(floor)
    }

    /// Tells the peers the object range about to be written; whether it may be written.
    ///
    /// Every data site that could take these events over (any other data site not declared
    /// down) must hold the range before it is written: a survivor that takes over then
    /// writes that same range first, under the same key, so one event never lands in two
    /// objects. A site that cannot reach such a peer (it is the one cut off) ships nothing
    /// of its own until it can, and none once a peer says it is taking over.
    pub(crate) async fn tell_intent(&self, transport: &Arc<dyn Transport>) -> bool {
        // The replicators' frame without events: the progress and the intent only.
        let frame = match self.own_frame(None, &self.progress(), 0, false, None) {
            Ok(Some(b)) => b.frame,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(stream = %self.cfg.name, error = %e, "relay: cannot frame the intent");
                return false;
            }
        };
        let down = self.down.borrow().clone();
        let required: Vec<String> = self
            .sites
            .all
            .iter()
            .filter(|(n, witness)| !witness && *n != self.sites.me && !down.contains(n))
            .map(|(n, _)| n.clone())
            .collect();
        let mut targets: BTreeSet<String> = required.iter().cloned().collect();
        targets.extend(
            lock(&self.peers)
                .iter()
                .filter(|(_, p)| p.last_ok.is_some_and(|t| t.elapsed() < LIVE))
                .map(|(n, _)| n.clone()),
        );
        let mut ok = true;
        for p in &targets {
            let answer = tokio::time::timeout(
                Duration::from_secs(2),
                transport.replicate(p, frame.clone()),
            )
            .await;
            match answer {
                Ok(Ok(resp)) => {
                    self.answered(p, &resp);
                    ok &= !resp.taking_over;
                }
                _ => ok &= !required.contains(p),
            }
        }
        ok
    }

    /// A peer's events (and its shipping progress) arrive.
    pub(crate) async fn receive(
        self: &Arc<Self>,
        req: ReplicateReq,
    ) -> Result<ReplicateResp, RelayError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.receive_blocking(&req.as_frame()))
            .await
            .map_err(RelayError::stopped)?
    }

    /// [`Self::receive`] of a binary frame, read in place (see [`crate::wire`]).
    pub(crate) async fn receive_frame(
        self: &Arc<Self>,
        frame: bytes::Bytes,
    ) -> Result<ReplicateResp, RelayError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let f = FrameRef::decode(&frame).map_err(RelayError::BadFrame)?;
            me.receive_blocking(&f)
        })
        .await
        .map_err(RelayError::stopped)?
    }

    /// Takes a peer's frame, one at a time. A frame in order waits (up to [`ORDER_WAIT`])
    /// for the frames before it, which may come on other connections, and is refused as
    /// out of step when this site holds other than what it follows.
    fn receive_blocking(&self, req: &FrameRef<'_>) -> Result<ReplicateResp, RelayError> {
        let mut turn = lock(&self.receiving);
        if let Some(after) = req.after {
            let deadline = outlast_core::clock::now() + ORDER_WAIT;
            loop {
                let (high, shipped) = lock(&self.replicas)
                    .get(req.origin)
                    .map_or((0, 0), |l| (l.last_seq(), l.shipped()));
                if high == after {
                    break;
                }
                let left = deadline.saturating_duration_since(outlast_core::clock::now());
                if high > after || left.is_zero() {
                    return Ok(ReplicateResp {
                        high,
                        conflicts: Vec::new(),
                        taken_over: shipped,
                        taking_over: self.shipping.is_taking_over(req.origin),
                        in_order: true,
                        out_of_step: true,
                    });
                }
                turn = match self.received.wait_timeout(turn, left) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
            }
        }
        let answer = self.take_frame(req, &mut turn);
        drop(turn);
        self.received.notify_all();
        answer
    }

    /// [`Self::receive_blocking`] once it is the frame's turn; `seen` is the newest
    /// shipping progress taken from each origin.
    fn take_frame(
        &self,
        req: &FrameRef<'_>,
        seen: &mut BTreeMap<String, (u64, u64)>,
    ) -> Result<ReplicateResp, RelayError> {
        let origin = req.origin;
        let mut conflicts = Vec::new();
        // Each id hashed once, for every spool it is looked up in and the one it goes to.
        let keys: Vec<IdKey> = req.records.iter().map(|r| IdKey::of(r.id)).collect();
        // The origin's copy: skipped there (nothing to settle with), or in an object or about
        // to be (a record sent as shipped and not skipped was shipped: the frame leaves out
        // records whose skips may be forgotten).
        let skipped_there = |seq: u64| req.skipped.binary_search(&seq).is_ok();
        let shipped_there = |seq| crate::log::shipped_or_intended(seq, req.shipped, req.intent);
        // Which of two copies of an id is kept: one in an object (or about to be) over one
        // that is not, else the one of the site first in name order. Every site holding
        // both copies decides the same. (By name alone, a site that shipped its copy while
        // the other was declared down could lose to it afterwards: both in objects.)
        let first_wins = |first_shipped: bool, first: &str, seq: u64| {
            first_shipped || (!shipped_there(seq) && first < origin)
        };
        // Settle ids this site holds as its own.
        {
            let mut own = lock(&self.own);
            let mut lose = Vec::new();
            let mut ahead = TouchAhead::start(&keys, &own.spool);
            for (r, key) in req.records.iter().zip(&keys) {
                ahead.step(&own.spool);
                let Some(s) = own.spool.lookup_key(*key) else {
                    continue;
                };
                if own.is_skipped(s) || skipped_there(r.seq) {
                    continue;
                }
                let kept = first_wins(own.shipped_or_intended(s), &self.sites.me, r.seq);
                tracing::debug!(stream = %self.cfg.name, origin, id = r.id, theirs = r.seq, ours = s, kept_ours = kept, our_shipped = own.shipped(), our_intent = ?own.intent(), their_shipped = req.shipped, their_intent = ?req.intent, "relay: an id held twice settled");
                if kept {
                    conflicts.push(r.seq);
                } else {
                    lose.push(s);
                }
            }
            own.skip(&lose)?;
        }
        let mut reps = lock(&self.replicas);
        // Ids held as a third site's event: the same rule, between those two sites.
        for (other, log) in reps.iter_mut().filter(|(n, _)| n.as_str() != origin) {
            let mut lose = Vec::new();
            let mut ahead = TouchAhead::start(&keys, &log.spool);
            for (r, key) in req.records.iter().zip(&keys) {
                ahead.step(&log.spool);
                let Some(s) = log.spool.lookup_key(*key) else {
                    continue;
                };
                if log.is_skipped(s) || conflicts.contains(&r.seq) || skipped_there(r.seq) {
                    continue;
                }
                if first_wins(s <= log.shipped(), other, r.seq) {
                    conflicts.push(r.seq);
                } else {
                    lose.push(s);
                }
            }
            log.skip(&lose)?;
        }
        if !reps.contains_key(origin) {
            if req.records.is_empty() {
                // Nothing held for this origin yet (a witness never has events of its own).
                return Ok(ReplicateResp {
                    high: 0,
                    conflicts,
                    taken_over: 0,
                    taking_over: false,
                    in_order: true,
                    out_of_step: false,
                });
            }
            let log = Log::open(&self.dir.join("replica").join(origin))?;
            reps.insert(origin.to_string(), log);
        }
        let log = reps
            .get_mut(origin)
            .ok_or_else(|| RelayError::Stranger(origin.to_string()))?;
        let mut ahead = TouchAhead::start(&keys, &log.spool);
        for (r, key) in req.records.iter().zip(&keys) {
            ahead.step(&log.spool);
            let ts = event::stored_prefix(r.ts);
            log.spool
                .append_at_keyed(r.seq, r.id, *key, &[&ts, r.line])?;
        }
        drop(ahead);
        log.spool.sync()?;
        // Neither the copies this site told the origin to skip nor those it skipped itself
        // ship from here if this site takes the origin's events over.
        log.skip(&[conflicts.as_slice(), &req.skipped].concat())?;
        if req.shipped > log.shipped() {
            log.set_shipped(req.shipped)?;
            if log.intent().is_some_and(|(_, b)| b <= req.shipped) {
                log.set_intent(None)?;
            }
        }
        // The origin's intent binds a survivor that takes over: it writes that range first.
        // Progress older than some already taken (a frame framed before the intent was
        // announced, answered late) does not take the intent back: the origin's (shipped,
        // intent start) only grows, since an intent starts right after the shipped mark and
        // stays until its object is written.
        let stamp = (
            req.shipped,
            req.intent
                .filter(|(a, _)| *a > req.shipped)
                .map_or(0, |(a, _)| a),
        );
        let newest = seen.get(origin).is_none_or(|s| stamp >= *s);
        if newest {
            seen.insert(origin.to_string(), stamp);
        }
        let intent = req.intent.filter(|(a, _)| *a > log.shipped());
        if newest && intent != log.intent() && !self.shipping.is_taking_over(origin) {
            log.set_intent(intent)?;
        }
        log.trim(self.cfg.dedup_window, self.cfg.max_spool_bytes / 4)?;
        // What is shipped here for the origin beyond its own word was shipped by takeover.
        let taken_over = log.shipped();
        let high = log.last_seq();
        drop(reps);
        let taking_over = self.shipping.is_taking_over(origin);
        Ok(ReplicateResp {
            high,
            conflicts,
            taken_over,
            taking_over,
            in_order: true,
            out_of_step: false,
        })
    }

    /// Figures for status and metrics.
    pub fn stats(&self) -> StreamStats {
        let (own_events, own_bytes, quarantined) = {
            let own = lock(&self.own);
            let (e, b) = own.unshipped();
            (e, b, own.spool.stats().quarantined_segments)
        };
        let replicas: BTreeMap<String, u64> = lock(&self.replicas)
            .iter()
            .map(|(n, l)| (n.clone(), l.unshipped().0))
            .collect();
        let oldest = self.shipping.oldest_unshipped_ms.load(Ordering::Relaxed);
        StreamStats {
            name: self.cfg.name.clone(),
            spool_events: own_events,
            spool_bytes: own_bytes,
            // Refreshed as objects ship and once a second: with nothing unshipped there is
            // no oldest, whatever the last refresh saw.
            oldest_unshipped_ms: (oldest > 0 && own_events > 0)
                .then(|| now_ms().saturating_sub(oldest)),
            sink: self.shipping.sink_now(),
            objects_shipped: self.shipping.objects.load(Ordering::Relaxed),
            replays: self.shipping.replays.load(Ordering::Relaxed),
            quarantined_segments: quarantined,
            accepted: self.counters.accepted.load(Ordering::Relaxed),
            stored: self.counters.stored.load(Ordering::Relaxed),
            duplicates: self.counters.duplicates.load(Ordering::Relaxed),
            conflicts: self.counters.conflicts.load(Ordering::Relaxed),
            replicas,
            taking_over: self.shipping.taking_over(),
            replication: lock(&self.peers)
                .iter()
                .map(|(n, p)| {
                    let r = PeerReplication {
                        holds_through: p.high,
                        errors: p.errors,
                        last_error: p.last_error.clone(),
                    };
                    (n.clone(), r)
                })
                .collect(),
            disk_free_bytes: self.disk_free(),
            out_of_space: self.out_of_space(),
        }
    }

    /// Sets this stream's metrics that mirror its state (spool, replicas, current sink,
    /// takeovers) from [`Self::stats`]: called when the metrics are scraped, so they are as
    /// fresh as the status. Counts kept here (replays, duplicates, conflicts) are exported
    /// as counters; those counted where they happen (accepted, objects shipped, sink
    /// errors, quarantined segments) are not repeated.
    pub fn record_metrics(&self) {
        let st = self.stats();
        let stream = || ("stream", st.name.clone());
        metrics::gauge!("outlast_relay_spool_events", &[stream()]).set(st.spool_events as f64);
        metrics::gauge!("outlast_relay_spool_bytes", &[stream()]).set(st.spool_bytes as f64);
        metrics::gauge!("outlast_relay_oldest_unshipped_seconds", &[stream()])
            .set(st.oldest_unshipped_ms.unwrap_or(0) as f64 / 1000.0);
        if let Some(free) = st.disk_free_bytes {
            metrics::gauge!("outlast_relay_disk_free_bytes", &[stream()]).set(free as f64);
        }
        metrics::gauge!("outlast_relay_out_of_space", &[stream()])
            .set(f64::from(u8::from(st.out_of_space)));
        metrics::counter!("outlast_relay_replays_total", &[stream()]).absolute(st.replays);
        metrics::counter!("outlast_relay_duplicates_total", &[stream()]).absolute(st.duplicates);
        metrics::counter!("outlast_relay_conflicts_total", &[stream()]).absolute(st.conflicts);
        for (origin, events) in &st.replicas {
            let labels = [stream(), ("origin", origin.clone())];
            metrics::gauge!("outlast_relay_replica_events", &labels).set(*events as f64);
            let taking = st.taking_over.contains(origin);
            metrics::gauge!("outlast_relay_taking_over", &labels).set(f64::from(u8::from(taking)));
        }
        for sink in &self.cfg.sinks {
            let current = st.sink.as_deref() == Some(sink.url.as_str());
            metrics::gauge!(
                "outlast_relay_sink_current",
                &[stream(), ("sink", sink.url.clone())]
            )
            .set(f64::from(u8::from(current)));
        }
    }

    /// Own events from `from` on that are durable: the writer fsyncs without the stream's
    /// lock, so the spool may hold records a crash would still take back, which must not
    /// reach a peer (their numbers would be reused) or a reader.
    fn read_durable(&self, from: u64, max: usize) -> Result<Vec<Record>, SpoolError> {
        let durable = *self.durable.borrow();
        let mut recs = lock(&self.own).read(from, max)?;
        recs.retain(|r| r.seq <= durable);
        Ok(recs)
    }

    /// Own events still in the spool from `from` on (for `outlast events tail`).
    pub fn tail(&self, from: u64, max: usize) -> Result<Vec<(u64, String)>, SpoolError> {
        let recs = self.read_durable(from, max)?;
        Ok(recs
            .into_iter()
            .map(|r| {
                let (_, line) = event::unstored(&r.payload);
                (r.seq, event::line_text(line))
            })
            .collect())
    }
}

impl From<StreamStats> for outlast_core::status::StreamStatus {
    fn from(s: StreamStats) -> Self {
        Self {
            name: s.name,
            spool_events: s.spool_events,
            spool_bytes: s.spool_bytes,
            oldest_unshipped_ms: s.oldest_unshipped_ms,
            sink: s.sink,
            objects_shipped: s.objects_shipped,
            replays: s.replays,
            quarantined_segments: s.quarantined_segments,
            accepted: s.accepted,
            stored: s.stored,
            duplicates: s.duplicates,
            replicas: s.replicas,
            taking_over: s.taking_over,
            replication: s.replication,
            disk_free_bytes: s.disk_free_bytes,
            out_of_space: s.out_of_space,
        }
    }
}

impl Shippable for StreamRelay {
    fn stream(&self) -> &Stream {
        &self.cfg
    }
    fn sites(&self) -> &Sites {
        &self.sites
    }
    fn shipping(&self) -> &Shipping {
        &self.shipping
    }
    fn own_log(&self) -> &Mutex<Log> {
        &self.own
    }
    fn replica_logs(&self) -> &Mutex<BTreeMap<String, Log>> {
        &self.replicas
    }
    fn down(&self) -> BTreeSet<String> {
        self.down.borrow().clone()
    }
    fn shippable_through(&self) -> Option<u64> {
        self.own_shippable()
    }
    fn announce(&self, transport: &Arc<dyn Transport>) -> impl Future<Output = bool> + Send {
        self.tell_intent(transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WireRecord;

    fn relay(me: &str, dir: &Path) -> StreamRelay {
        let cfg = Stream {
            name: "clicks".into(),
            ack: Ack::Local,
            sinks: Vec::new(),
            max_spool_bytes: 1 << 30,
            max_body_bytes: 1 << 20,
            max_event_bytes: 1 << 20,
            min_free_bytes: 0,
            batch_events: 100,
            batch_age: Duration::from_millis(200),
            replay_rate: 1000,
            dedup_window: Duration::from_secs(3600),
        };
        let sites = Sites {
            me: me.into(),
            all: vec![
                ("east".into(), false),
                ("west".into(), false),
                ("witness".into(), true),
            ],
        };
        let (_, down) = watch::channel(BTreeSet::new());
        StreamRelay::open(
            cfg,
            sites,
            dir,
            down,
            &Arc::default(),
            Duration::from_secs(1),
        )
        .expect("open")
    }

    fn req(origin: &str, seq: u64, id: &str) -> ReplicateReq {
        ReplicateReq {
            stream: "clicks".into(),
            origin: origin.into(),
            shipped: 0,
            intent: None,
            records: vec![WireRecord {
                seq,
                id: id.into(),
                ts: 1,
                line: "{}".into(),
            }],
            skipped: Vec::new(),
            after: None,
        }
    }

    /// Stores an own event of id `id` at `r`, durably; its number.
    fn hold(r: &StreamRelay, id: &str) -> u64 {
        let mut own = lock(&r.own);
        let (seq, _) = own
            .spool
            .append_one(id, &event::stored(1, b"{}"))
            .expect("append");
        own.spool.sync().expect("sync");
        seq
    }

    /// A frame of east's events `first..=last`, in order after `after`.
    fn in_order(first: u64, last: u64, after: u64) -> ReplicateReq {
        ReplicateReq {
            records: (first..=last)
                .map(|seq| WireRecord {
                    seq,
                    id: format!("e-{seq}"),
                    ts: 1,
                    line: "{}".into(),
                })
                .collect(),
            after: Some(after),
            ..req("east", first, "unused")
        }
    }

    /// Frames in order may arrive in any order (they go on separate connections): each is
    /// taken after the frames before it. One that follows what this site does not hold is
    /// refused as out of step, at once when this site holds more, after [`ORDER_WAIT`]
    /// when it holds less, and takes nothing.
    #[test]
    #[allow(clippy::disallowed_methods)] // a plain thread of a test, no runtime to block
    fn frames_in_order_are_taken_in_turn() {
        let tmp = tempfile::tempdir().expect("tmp");
        let west = relay("west", tmp.path());
        let (first, second) = (in_order(1, 3, 0), in_order(4, 6, 3));
        let later = std::thread::scope(|s| {
            let later = s.spawn(|| west.receive_blocking(&second.as_frame()));
            // The second frame comes first and waits for its turn.
            std::thread::sleep(Duration::from_millis(200));
            let resp = west.receive_blocking(&first.as_frame()).expect("first");
            assert!(resp.in_order && !resp.out_of_step && resp.high >= 3);
            later.join()
        })
        .expect("no panic")
        .expect("second");
        assert!(!later.out_of_step);
        assert_eq!(later.high, 6);
        let held: Vec<u64> = lock(&west.replicas)["east"]
            .read(1, 100)
            .expect("read")
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(held, (1..=6).collect::<Vec<_>>(), "every event, in order");

        let t0 = outlast_core::clock::now();
        let again = west.receive_blocking(&second.as_frame()).expect("again");
        assert!(again.out_of_step && again.high == 6);
        assert!(
            t0.elapsed() < ORDER_WAIT,
            "no wait when this site holds more"
        );

        let t0 = outlast_core::clock::now();
        let ahead = west
            .receive_blocking(&in_order(11, 12, 10).as_frame())
            .expect("ahead");
        assert!(ahead.out_of_step && ahead.high == 6);
        assert!(
            t0.elapsed() >= ORDER_WAIT,
            "waited for the frames before it"
        );
        assert_eq!(lock(&west.replicas)["east"].last_seq(), 6, "took nothing");

        // A frame not in order (an agent from before them) is taken as it comes.
        let plain = ReplicateReq {
            after: None,
            ..in_order(7, 7, 0)
        };
        let resp = west.receive_blocking(&plain.as_frame()).expect("plain");
        assert!(!resp.out_of_step && resp.high == 7);
    }

    /// Carries east's frames to a real west in this process: each waits a different while
    /// first (so later frames often come before earlier ones), and some answers are lost
    /// after west took the frame. Frames to other sites fail.
    struct Shuffled {
        west: Arc<StreamRelay>,
        calls: AtomicU64,
    }

    impl Transport for Shuffled {
        fn replicate<'a>(
            &'a self,
            peer: &'a str,
            frame: Vec<u8>,
        ) -> crate::BoxFut<'a, Result<ReplicateResp, String>> {
            Box::pin(async move {
                if peer != "west" {
                    return Err(format!("{peer} is not in this test"));
                }
                let n = self.calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis((n * 7) % 20)).await;
                let resp = self
                    .west
                    .receive_frame(bytes::Bytes::from(frame))
                    .await
                    .map_err(|e| e.to_string())?;
                if n % 5 == 3 {
                    return Err("the answer was lost".into());
                }
                Ok(resp)
            })
        }
    }

    /// East's replicator with frames in flight, coming out of order, and answers lost (the
    /// frame after a lost one is out of step: west took more than east heard of): west
    /// ends up with every event once, in order, and east counts them as replicated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_in_flight_reach_a_peer_whole_and_in_order() {
        let tmp = tempfile::tempdir().expect("tmp");
        let east = Arc::new(relay("east", &tmp.path().join("east")));
        let transport = Arc::new(Shuffled {
            west: Arc::new(relay("west", &tmp.path().join("west"))),
            calls: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        east.start(transport.clone(), stop.clone());
        let (requests, per_request) = (30, 1000);
        for r in 0..requests {
            let events = (0..per_request)
                .map(|i| Event {
                    id: format!("r{r}-{i}"),
                    line: br#"{"k":1}"#.to_vec(),
                })
                .collect();
            east.ingest(events).await.expect("ingest");
        }
        let last = *east.durable.borrow();
        assert_eq!(last, requests * per_request);
        let mut replicated = east.replicated.subscribe();
        let caught_up =
            tokio::time::timeout(Duration::from_secs(20), replicated.wait_for(|r| *r >= last))
                .await;
        stop.cancel();
        assert!(caught_up.is_ok(), "west never held all of east's events");
        let held: Vec<u64> = lock(&transport.west.replicas)["east"]
            .read(1, last as usize + 10)
            .expect("read")
            .iter()
            .map(|r| r.seq)
            .collect();
        let misplaced = held.iter().zip(1..).find(|(s, want)| **s != *want);
        assert!(
            held.len() as u64 == last && misplaced.is_none(),
            "west holds {} of {last} events; the first out of place: {misplaced:?}",
            held.len()
        );
        let calls = transport.calls.load(Ordering::Relaxed);
        assert!(calls > 5, "answers were lost ({calls} frames)");
    }

    /// Progress framed before an intent was announced but taken after it (a frame answered
    /// late) does not take the intent back: a survivor taking over writes that range first,
    /// under the key of the origin's object.
    #[test]
    fn older_progress_does_not_take_an_intent_back() {
        let tmp = tempfile::tempdir().expect("tmp");
        let west = relay("west", tmp.path());
        let progress = |shipped, intent| ReplicateReq {
            shipped,
            intent,
            ..req("east", 5, "e-5")
        };
        let intent = |west: &StreamRelay| lock(&west.replicas)["east"].intent();
        let take = |r: ReplicateReq| west.receive_blocking(&r.as_frame()).expect("take");
        take(progress(0, Some((1, 5))));
        assert_eq!(intent(&west), Some((1, 5)));
        take(progress(0, None));
        assert_eq!(intent(&west), Some((1, 5)), "an older frame's progress");
        take(progress(5, None));
        assert_eq!(intent(&west), None, "the object is written");
        take(progress(0, Some((1, 5))));
        assert_eq!(intent(&west), None, "an older frame's intent");
        take(progress(5, Some((6, 9))));
        assert_eq!(intent(&west), Some((6, 9)), "the next object");
    }

    /// An id held at two sites after a client retried: west's copy lost the settlement and
    /// was skipped, then shipped past (in no object). When east's copy reaches west after
    /// that, west must not claim the id: east's copy is the only one left.
    #[test]
    fn a_skipped_copy_shipped_past_does_not_claim_the_id() {
        let tmp = tempfile::tempdir().expect("tmp");
        let west = relay("west", tmp.path());
        {
            let w = hold(&west, "r-1700");
            let mut own = lock(&west.own);
            own.skip(&[w]).expect("skip");
            own.set_intent(Some((w, w))).expect("intent");
            own.set_shipped(w).expect("shipped");
            own.set_intent(None).expect("intent");
            assert!(own.is_skipped(w), "the skip is forgotten once shipped past");
        }
        let resp = west
            .receive_blocking(&req("east", 1, "r-1700").as_frame())
            .expect("receive");
        assert!(
            resp.conflicts.is_empty(),
            "west claimed an id whose copy it skipped: east would skip its own too"
        );
        drop(west);
        // The same after a restart (the skips file is read back).
        let west = relay("west", tmp.path());
        let resp = west
            .receive_blocking(&req("east", 1, "r-1700").as_frame())
            .expect("receive");
        assert!(resp.conflicts.is_empty(), "after a restart: {resp:?}");
    }

    /// Own events ship only once every data site not declared down holds them: after a
    /// restart, before a peer has answered, nothing is shippable.
    #[test]
    fn own_events_wait_for_every_data_site() {
        let tmp = tempfile::tempdir().expect("tmp");
        let east = relay("east", tmp.path());
        for i in 0..3 {
            hold(&east, &format!("e-{i}"));
        }
        east.durable.send_replace(3);
        assert_eq!(east.own_shippable(), Some(0), "west not heard from yet");
        let resp = |high| ReplicateResp {
            high,
            conflicts: Vec::new(),
            taken_over: 0,
            taking_over: false,
            in_order: true,
            out_of_step: false,
        };
        east.answered("west", &resp(2));
        assert_eq!(east.own_shippable(), Some(2), "what west holds");
        east.answered("west", &resp(5));
        assert_eq!(east.own_shippable(), Some(3), "no further than durable");
    }

    /// Assigned ids: unique, fixed in shape, and what comes next cannot be read off what
    /// came before (the numbers go through a keyed permutation, a key per process).
    #[test]
    fn assigned_ids_cannot_be_foretold() {
        let tmp = tempfile::tempdir().expect("tmp");
        let east = relay("east", tmp.path());
        let ids: Vec<String> = (0..10_000).map(|_| east.assign_id()).collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "ids repeat");
        for id in &ids {
            let parts: Vec<&str> = id.split('-').collect();
            assert!(
                parts.len() == 3
                    && parts[0] == "east"
                    && parts[1..]
                        .iter()
                        .all(|p| p.len() == 11 && p.bytes().all(|b| b.is_ascii_alphanumeric())),
                "{id}"
            );
        }
        // Consecutive numbers do not give neighbouring ids.
        let tail = |id: &str| {
            id.rsplit_once('-')
                .map(|(_, t)| t.to_string())
                .expect("tail")
        };
        let near = ids
            .windows(2)
            .filter(|w| tail(&w[0])[..8] == tail(&w[1])[..8])
            .count();
        assert!(
            near < 5,
            "{near} of 9999 consecutive ids share their first 8 digits"
        );
        // Another process: another prefix, and its numbers permuted under another key.
        let other = relay("east", tempfile::tempdir().expect("tmp").path());
        let first = other.assign_id();
        assert_ne!(first.split('-').nth(1), ids[0].split('-').nth(1));
        assert_ne!(tail(&first), tail(&ids[0]));
        // The permutation is one: 2^16 numbers, 2^16 images.
        let key = std::hash::RandomState::new();
        let images: std::collections::HashSet<u64> =
            (0..1u64 << 16).map(|n| permute(&key, n)).collect();
        assert_eq!(images.len(), 1 << 16);
        let mut s = String::new();
        base62(u64::MAX, &mut s);
        assert_eq!(s, "LygHa16AHYF");
    }

    /// The steps of an id a client sent to east and again to west: the four deliveries of
    /// the two copies (each to the other data site and to the witness), then west shipping
    /// past its copy, then east shipping past its own.
    const DELIVERIES: [(&str, &str); 4] = [
        ("east", "witness"),
        ("west", "witness"),
        ("west", "east"),
        ("east", "west"),
    ];
    const WEST_SHIPS: usize = 4;
    const EAST_SHIPS: usize = 5;

    /// Every order of `steps` in which each step of `after` comes after the steps it names.
    fn orders(steps: &[usize], after: &[(usize, &[usize])]) -> Vec<Vec<usize>> {
        let mut orders: Vec<Vec<usize>> = vec![vec![]];
        for _ in steps {
            let mut longer = Vec::new();
            for o in &orders {
                for d in steps.iter().filter(|d| !o.contains(d)) {
                    longer.push([o.as_slice(), &[*d]].concat());
                }
            }
            orders = longer;
        }
        let at = |o: &[usize], step| o.iter().position(|d| *d == step);
        orders.retain(|o| {
            after
                .iter()
                .all(|(step, before)| before.iter().all(|b| at(o, *step) > at(o, *b)))
        });
        orders
    }

    /// Plays `order` with real frames (each from its origin's state at that moment, its
    /// shipping progress and skips included) and every answer applied. The copies of the
    /// id kept: those in an object plus those left to ship at east and west.
    fn copies_kept(order: &[usize]) -> usize {
        let tmp = tempfile::tempdir().expect("tmp");
        let sites: BTreeMap<&str, StreamRelay> = ["east", "west", "witness"]
            .into_iter()
            .map(|n| (n, relay(n, &tmp.path().join(n))))
            .collect();
        let mut seqs = BTreeMap::new();
        for n in ["east", "west"] {
            let seq = hold(&sites[n], "X");
            sites[n].durable.send_replace(seq);
            seqs.insert(n, seq);
        }
        let mut in_object = 0;
        for step in order {
            let origin = match *step {
                WEST_SHIPS => "west",
                EAST_SHIPS => "east",
                d => {
                    let (origin, to) = DELIVERIES[d];
                    let from = Some(seqs[origin]);
                    let o = &sites[origin];
                    let built = o
                        .own_frame(from, &o.progress(), 10, true, None)
                        .expect("frame")
                        .expect("a frame");
                    let resp = sites[to]
                        .receive_blocking(&FrameRef::decode(&built.frame).expect("decode"))
                        .expect("receive");
                    o.answered(to, &resp);
                    continue;
                }
            };
            let mut own = lock(&sites[origin].own);
            in_object += usize::from(!own.is_skipped(seqs[origin]));
            own.set_shipped(seqs[origin]).expect("shipped");
        }
        let left = ["east", "west"]
            .into_iter()
            .filter(|n| {
                let own = lock(&sites[n].own);
                !own.is_skipped(seqs[n]) && own.shipped() < seqs[n]
            })
            .count();
        in_object + left
    }

    /// The steps of [`copies_kept_late`]: a delivery received (0-3, as [`DELIVERIES`]), the
    /// answer of delivery 2 or 3 reaching its origin (late, after other steps), a site
    /// putting its copy in its intent, and writing its object.
    const ANSWER_2: usize = 10;
    const ANSWER_3: usize = 11;
    const WEST_INTENDS: usize = 12;
    const WEST_WRITES: usize = 13;
    const EAST_INTENDS: usize = 14;
    const EAST_WRITES: usize = 15;
    /// West's progress (shipped mark, intent, skips) reaching the witness in a frame
    /// without records, as an announced intent or a heartbeat does.
    const WEST_TELLS_WITNESS: usize = 16;

    /// [`copies_kept`] where the answers between east and west arrive late (a slow peer, a
    /// pipeline of frames), and west's shipping is its two real steps: the range into its
    /// intent (once east and the witness hold its copy, as it may learn from any later
    /// answer), then the object, written with what is not skipped by then.
    fn copies_kept_late(order: &[usize]) -> usize {
        let tmp = tempfile::tempdir().expect("tmp");
        let sites: BTreeMap<&str, StreamRelay> = ["east", "west", "witness"]
            .into_iter()
            .map(|n| (n, relay(n, &tmp.path().join(n))))
            .collect();
        let mut seqs = BTreeMap::new();
        for n in ["east", "west"] {
            let seq = hold(&sites[n], "X");
            sites[n].durable.send_replace(seq);
            seqs.insert(n, seq);
        }
        let mut answers: BTreeMap<usize, ReplicateResp> = BTreeMap::new();
        let mut in_object = 0;
        for step in order {
            match *step {
                WEST_INTENDS | EAST_INTENDS => {
                    let n = if *step == WEST_INTENDS {
                        "west"
                    } else {
                        "east"
                    };
                    let mut own = lock(&sites[n].own);
                    own.set_intent(Some((seqs[n], seqs[n]))).expect("intent");
                }
                WEST_WRITES | EAST_WRITES => {
                    let n = if *step == WEST_WRITES { "west" } else { "east" };
                    let mut own = lock(&sites[n].own);
                    in_object += usize::from(!own.is_skipped(seqs[n]));
                    own.set_shipped(seqs[n]).expect("shipped");
                    own.set_intent(None).expect("intent");
                }
                WEST_TELLS_WITNESS => {
                    let o = &sites["west"];
                    let built = o
                        .own_frame(None, &o.progress(), 10, true, None)
                        .expect("frame")
                        .expect("a frame");
                    let resp = sites["witness"]
                        .receive_blocking(&FrameRef::decode(&built.frame).expect("decode"))
                        .expect("receive");
                    o.answered("witness", &resp);
                }
                ANSWER_2 | ANSWER_3 => {
                    let d = step - ANSWER_2 + 2;
                    let (origin, to) = DELIVERIES[d];
                    if let Some(resp) = answers.remove(&d) {
                        sites[origin].answered(to, &resp);
                    }
                }
                d => {
                    let (origin, to) = DELIVERIES[d];
                    let from = Some(seqs[origin]);
                    let o = &sites[origin];
                    let built = o
                        .own_frame(from, &o.progress(), 10, true, None)
                        .expect("frame")
                        .expect("a frame");
                    let resp = sites[to]
                        .receive_blocking(&FrameRef::decode(&built.frame).expect("decode"))
                        .expect("receive");
                    if d >= 2 {
                        answers.insert(d, resp);
                    } else {
                        o.answered(to, &resp);
                    }
                }
            }
        }
        // East ships what it kept, last.
        let left = ["east", "west"]
            .into_iter()
            .filter(|n| {
                let own = lock(&sites[n].own);
                !own.is_skipped(seqs[n]) && own.shipped() < seqs[n]
            })
            .count();
        in_object + left
    }

    /// Found by a restart of every site mid-stream (1 run in about 100 lost 20 acknowledged
    /// ids): east's verdict on west's copy (east's own wins) reached west after west had put
    /// its copy in its intent, and west, its copy intended, had told east to skip its own.
    /// Whatever the order with answers late, an id held twice is never lost.
    #[test]
    fn an_id_held_twice_is_never_lost_when_answers_come_late() {
        let mut twice = 0;
        let mut all = 0;
        for witness_first in [[0, 1], [1, 0]] {
            let orders = orders(
                &[
                    2,
                    3,
                    ANSWER_2,
                    ANSWER_3,
                    WEST_INTENDS,
                    WEST_WRITES,
                    EAST_INTENDS,
                    EAST_WRITES,
                ],
                &[
                    (ANSWER_2, &[2]),
                    (ANSWER_3, &[3]),
                    (WEST_INTENDS, &[2]),
                    (WEST_WRITES, &[WEST_INTENDS]),
                    (EAST_INTENDS, &[3]),
                    (EAST_WRITES, &[EAST_INTENDS]),
                ],
            );
            for order in orders {
                let order = [witness_first.as_slice(), &order].concat();
                let kept = copies_kept_late(&order);
                assert!(kept >= 1, "order {order:?} lost the id");
                twice += usize::from(kept > 1);
                all += 1;
            }
        }
        // Both sites put their copy in an intent before either verdict arrived: each keeps
        // its own. Stored twice, never lost; the orders where it happens are counted here.
        println!("{twice} of {all} orders keep two copies");
        assert!(twice * 10 < all, "{twice} of {all} orders keep two copies");
    }

    /// Found by the same test after the fix above: west's copy lost to east's at west and
    /// west shipped past it; the witness, which held west's copy from before, learnt the
    /// shipped mark but not the skip, took west's copy for one in an object, and told east
    /// to skip its own when east's copy reached it. Skips now travel with every frame.
    #[test]
    fn a_third_site_learns_a_skip_with_the_shipped_mark_that_passes_it() {
        let order = [
            1,
            3,
            ANSWER_3,
            WEST_INTENDS,
            WEST_WRITES,
            WEST_TELLS_WITNESS,
            0,
            2,
            ANSWER_2,
        ];
        assert_eq!(copies_kept_late(&order), 1);
    }

    /// West's copy against east's with answers late, east shipping last: exactly one copy is
    /// kept, whenever west puts its copy in its intent.
    #[test]
    fn an_id_held_twice_keeps_one_copy_when_answers_come_late() {
        let all = orders(
            &[0, 1, 2, 3, ANSWER_2, ANSWER_3, WEST_INTENDS, WEST_WRITES],
            &[
                (ANSWER_2, &[2]),
                (ANSWER_3, &[3]),
                (WEST_INTENDS, &[1, 2]),
                (WEST_WRITES, &[WEST_INTENDS]),
            ],
        );
        let mut bad = Vec::new();
        for order in &all {
            let kept = copies_kept_late(order);
            if kept != 1 {
                bad.push((order.clone(), kept));
            }
        }
        assert!(
            bad.is_empty(),
            "{} of {} orders keep other than one copy, e.g. {:?}",
            bad.len(),
            all.len(),
            &bad[..bad.len().min(5)]
        );
    }

    /// A replicator's frames carry the skips of the records they frame, and earlier skips
    /// until the peer has answered a frame that carried them (it keeps them): a retry storm's
    /// skips are not sent with every frame for as long as their records stay in the spool.
    #[tokio::test]
    async fn a_skip_the_peer_acknowledged_goes_again_only_with_its_record() {
        let tmp = tempfile::tempdir().expect("tmp");
        let east = Arc::new(relay("east", tmp.path()));
        let a = hold(&east, "a");
        let b = hold(&east, "b");
        let c = hold(&east, "c");
        east.durable.send_replace(c);
        lock(&east.own).skip(&[a, c]).expect("skip");
        let mut told = BTreeSet::new();
        let first = east
            .replica_frame(Some(b), None, &mut told)
            .await
            .expect("frame");
        assert_eq!(
            first.skipped,
            vec![a, c],
            "an earlier skip, and a framed one"
        );
        told.extend(first.skipped);
        let next = east
            .replica_frame(Some(b), None, &mut told)
            .await
            .expect("frame");
        assert_eq!(next.skipped, vec![c], "the earlier one was acknowledged");
        let beat = east
            .replica_frame(None, None, &mut told)
            .await
            .expect("frame");
        assert!(beat.skipped.is_empty(), "{:?}", beat.skipped);
    }

    /// A copy its origin skipped is marked skipped in the replicas the frame reaches: a
    /// site that takes the origin's events over does not ship it.
    #[test]
    fn an_origins_skip_travels_with_its_frame() {
        let tmp = tempfile::tempdir().expect("tmp");
        let east = relay("east", &tmp.path().join("east"));
        let witness = relay("witness", &tmp.path().join("witness"));
        let kept = hold(&east, "kept");
        let lost = hold(&east, "lost");
        east.durable.send_replace(lost);
        lock(&east.own).skip(&[lost]).expect("skip");
        let from = Some(kept);
        let built = east
            .own_frame(from, &east.progress(), 10, true, None)
            .expect("frame")
            .expect("a frame");
        assert_eq!(
            (built.span, &built.frame[..4]),
            (Some((kept, lost)), &b"ORR2"[..])
        );
        witness
            .receive_blocking(&FrameRef::decode(&built.frame).expect("decode"))
            .expect("receive");
        let reps = lock(&witness.replicas);
        let copy = &reps["east"];
        assert!(copy.is_skipped(lost) && !copy.is_skipped(kept));
    }

    /// Both data sites up: west ships past its copy at any point its peers allow (once
    /// east and the witness hold it). Whatever the order, exactly one copy is in an object
    /// or left to ship. (Before skips outlived the shipped mark, some orders left none.)
    #[test]
    fn an_id_held_twice_keeps_one_copy_in_every_order() {
        let all = orders(&[0, 1, 2, 3, WEST_SHIPS], &[(WEST_SHIPS, &[1, 2])]);
        assert_eq!(all.len(), 40);
        for order in all {
            assert_eq!(copies_kept(&order), 1, "order {order:?}");
        }
    }

    /// East declared down: west ships once the witness holds its copy, before east has it.
    /// East ships once west holds east's copy. Whatever the order, exactly one copy is
    /// kept: a copy already in an object wins when the two meet. (By name order alone,
    /// east's copy won when west's reached it after west had shipped: both in objects.)
    #[test]
    fn a_copy_shipped_while_its_peer_was_down_is_the_one_kept() {
        let all = orders(
            &[0, 1, 2, 3, WEST_SHIPS, EAST_SHIPS],
            &[(WEST_SHIPS, &[1]), (EAST_SHIPS, &[0, 3])],
        );
        assert_eq!(all.len(), 120);
        for order in all {
            assert_eq!(copies_kept(&order), 1, "order {order:?}");
        }
    }
}
