//! Shipping: batches of events become zstd-compressed NDJSON objects in a sink.
//!
//! Key: `{prefix}/{stream}/{yyyy}/{mm}/{dd}/{hh}/{origin}-{first:020}-{last:020}.ndjson.zst`,
//! the hour (UTC) being the acceptance time of the event numbered `first`. The range is
//! written down before the upload (the log's intent), so the same events always give the
//! same key and the same bytes.
//!
//! Sinks are tried in order: the site's own (by `site`), then the others in list order.
//! Each has its own back-off; a sink that failed is tried again once its back-off has run,
//! and being first in the order, takes the traffic back when it recovers.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use outlast_core::config::Stream;
use tokio_util::sync::CancellationToken;

use crate::event;
use crate::log::Log;
use crate::{lock, RelayError, Sites, Transport};
use outlast_core::clock::unix_ms as now_ms;
use outlast_core::faults::Faults;

const PUT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(crate) struct Sink {
    pub url: String,
    /// The site whose region the sink is in (a `sink-down` fault names it).
    site: Option<String>,
    faults: Arc<Faults>,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    state: Mutex<SinkState>,
}

#[derive(Default)]
struct SinkState {
    down_until: Option<Instant>,
    backoff: Duration,
}

fn sink_error(stream: &Stream, url: &str, why: impl ToString) -> RelayError {
    RelayError::Sink {
        stream: stream.name.clone(),
        url: url.to_string(),
        why: why.to_string(),
    }
}

/// Opens a stream's sinks in the order this site uses them.
pub(crate) fn open_sinks(
    stream: &Stream,
    me: &str,
    faults: &Arc<Faults>,
) -> Result<Vec<Sink>, RelayError> {
    let own = stream
        .sinks
        .iter()
        .filter(|s| s.site.as_deref() == Some(me));
    let others = stream
        .sinks
        .iter()
        .filter(|s| s.site.as_deref() != Some(me));
    let mut out = Vec::new();
    for s in own.chain(others) {
        let url = url::Url::parse(&s.url).map_err(|e| sink_error(stream, &s.url, e))?;
        let retry = object_store::RetryConfig {
            backoff: Default::default(),
            max_retries: 1,
            retry_timeout: PUT_TIMEOUT,
        };
        let opts = |o: &std::collections::BTreeMap<String, String>| -> Vec<(String, String)> {
            o.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match url.scheme() {
            "file" => {
                let dir = url
                    .to_file_path()
                    .map_err(|_| sink_error(stream, &s.url, "not a local path"))?;
                std::fs::create_dir_all(&dir).map_err(|e| sink_error(stream, &s.url, e))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| sink_error(stream, &s.url, e))?;
                (Arc::new(fs), ObjectPath::default())
            }
            "s3" | "gs" | "az" => {
                let path = ObjectPath::parse(url.path().trim_start_matches('/'))
                    .map_err(|e| sink_error(stream, &s.url, e))?;
                let store: Arc<dyn ObjectStore> = match url.scheme() {
                    "s3" => {
                        let mut b = object_store::aws::AmazonS3Builder::from_env()
                            .with_url(s.url.clone())
                            .with_retry(retry);
                        for (k, v) in opts(&s.options) {
                            let key = k.parse().map_err(|e| sink_error(stream, &s.url, e))?;
                            b = b.with_config(key, v);
                        }
                        Arc::new(b.build().map_err(|e| sink_error(stream, &s.url, e))?)
                    }
                    "gs" => {
                        let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                            .with_url(s.url.clone())
                            .with_retry(retry);
                        for (k, v) in opts(&s.options) {
                            let key = k.parse().map_err(|e| sink_error(stream, &s.url, e))?;
                            b = b.with_config(key, v);
                        }
                        Arc::new(b.build().map_err(|e| sink_error(stream, &s.url, e))?)
                    }
                    _ => {
                        let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                            .with_url(s.url.clone())
                            .with_retry(retry);
                        for (k, v) in opts(&s.options) {
                            let key = k.parse().map_err(|e| sink_error(stream, &s.url, e))?;
                            b = b.with_config(key, v);
                        }
                        Arc::new(b.build().map_err(|e| sink_error(stream, &s.url, e))?)
                    }
                };
                (store, path)
            }
            other => {
                return Err(sink_error(
                    stream,
                    &s.url,
                    format!("unknown scheme {other}"),
                ))
            }
        };
        out.push(Sink {
            url: s.url.clone(),
            site: s.site.clone(),
            faults: faults.clone(),
            store,
            prefix,
            state: Mutex::new(SinkState::default()),
        });
    }
    Ok(out)
}

/// Every object of a stream in every sink, by key (relative to the sink's prefix): what a
/// checker reads back. A key held by two sinks counts once; keys whose bytes differ between
/// sinks are returned apart (that would break the exactly-once rule).
pub async fn read_sinks(
    stream: &Stream,
) -> Result<(BTreeMap<String, Vec<u8>>, Vec<String>), RelayError> {
    use futures::TryStreamExt;
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut differ = Vec::new();
    for sink in open_sinks(stream, "", &Arc::default())? {
        let base = if sink.prefix.as_ref().is_empty() {
            ObjectPath::from(stream.name.as_str())
        } else {
            ObjectPath::from(format!("{}/{}", sink.prefix, stream.name))
        };
        let metas: Vec<object_store::ObjectMeta> = sink
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| sink_error(stream, &sink.url, e))?;
        for m in metas {
            let full = m.location.to_string();
            if !full.ends_with(".ndjson.zst") {
                continue;
            }
            let key = full
                .strip_prefix(&format!("{}/", sink.prefix))
                .unwrap_or(&full)
                .to_string();
            let bytes = sink
                .store
                .get(&m.location)
                .await
                .map_err(|e| sink_error(stream, &sink.url, e))?
                .bytes()
                .await
                .map_err(|e| sink_error(stream, &sink.url, e))?
                .to_vec();
            match out.get(&key) {
                Some(prev) if *prev != bytes => differ.push(key),
                Some(_) => {}
                None => {
                    out.insert(key, bytes);
                }
            }
        }
    }
    Ok((out, differ))
}

/// `yyyy-mm-ddThh:mm:ssZ` of a Unix time in milliseconds.
pub fn utc_timestamp(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = outlast_core::clock::civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The object key of a batch (without the sink's prefix).
pub fn object_key(stream: &str, origin: &str, first: u64, last: u64, accepted_ms: u64) -> String {
    let secs = (accepted_ms / 1000) as i64;
    let (y, m, d) = outlast_core::clock::civil(secs.div_euclid(86_400));
    let h = secs.rem_euclid(86_400) / 3600;
    format!("{stream}/{y:04}/{m:02}/{d:02}/{h:02}/{origin}-{first:020}-{last:020}.ndjson.zst")
}

/// Writes an object to the first sink that takes it; the sink's url.
async fn put(sinks: &[Sink], key: &str, body: bytes::Bytes) -> Option<String> {
    for sink in sinks {
        if lock(&sink.state)
            .down_until
            .is_some_and(|t| outlast_core::clock::now() < t)
        {
            continue;
        }
        let path = if sink.prefix.as_ref().is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", sink.prefix))
        };
        let started = outlast_core::clock::now();
        let res = if sink.faults.sink_down(sink.site.as_deref()) {
            Ok(Err(object_store::Error::Generic {
                store: "fault",
                source: "the sink is down (injected fault)".into(),
            }))
        } else {
            tokio::time::timeout(
                PUT_TIMEOUT,
                sink.store.put(&path, PutPayload::from(body.clone())),
            )
            .await
        };
        let mut st = lock(&sink.state);
        match res {
            Ok(Ok(_)) => {
                if st.down_until.is_some() {
                    tracing::info!(sink = %sink.url, "relay: sink is back");
                }
                st.down_until = None;
                st.backoff = Duration::ZERO;
                metrics::histogram!("outlast_relay_put_seconds", "sink" => sink.url.clone())
                    .record(started.elapsed().as_secs_f64());
                return Some(sink.url.clone());
            }
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {PUT_TIMEOUT:?}"),
                };
                st.backoff = (st.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                st.down_until = Some(outlast_core::clock::now() + st.backoff);
                tracing::warn!(sink = %sink.url, key, error = %why, backoff_ms = st.backoff.as_millis() as u64, "relay: sink refused an object");
                metrics::counter!("outlast_relay_sink_errors_total", "sink" => sink.url.clone())
                    .increment(1);
            }
        }
    }
    None
}

/// One planned object.
struct Plan {
    first: u64,
    last: u64,
    accepted_ms: u64,
    lines: Vec<u8>,
    events: usize,
}

/// Decides the next object of a log (its intent if it has one), or nothing yet.
fn plan(log: &mut Log, limit: u64, cfg: &Stream, force: bool) -> Result<Option<Plan>, RelayError> {
    let (first, last) = match log.intent() {
        Some((a, b)) => (a, b),
        None => {
            let first = log.shipped() + 1;
            let avail = limit.min(log.last_seq());
            if avail < first {
                return Ok(None);
            }
            let n = avail - first + 1;
            if n < cfg.batch_events && !force {
                let head = log.read(first, 1)?;
                let Some(r) = head.first() else {
                    return Ok(None);
                };
                let (ts, _) = event::unstored(&r.payload);
                if now_ms().saturating_sub(ts) < cfg.batch_age.as_millis() as u64 {
                    return Ok(None);
                }
            }
            let last = first + n.min(cfg.batch_events) - 1;
            log.set_intent(Some((first, last)))?;
            (first, last)
        }
    };
    let want = (last - first + 1) as usize;
    let mut lines = Vec::new();
    let mut events = 0;
    let mut accepted_ms = None;
    log.read_each(first, want, |r| {
        let (ts, line) = event::unstored(r.payload);
        accepted_ms.get_or_insert(ts);
        if r.seq > last || log.is_skipped(r.seq) {
            return;
        }
        lines.extend_from_slice(line);
        lines.push(b'\n');
        events += 1;
    })?;
    Ok(Some(Plan {
        first,
        last,
        accepted_ms: accepted_ms.unwrap_or(0),
        lines,
        events,
    }))
}

/// When the oldest unshipped event of a log was accepted (ms since the epoch), 0 when none
/// is.
fn oldest_unshipped(log: &Log) -> u64 {
    log.read(log.shipped() + 1, 1)
        .ok()
        .and_then(|r| r.first().map(|r| event::unstored(&r.payload).0))
        .unwrap_or(0)
}

/// What the shipper needs of a stream: its logs, its sites, who is down, how far its own
/// events may ship, and a way to tell the peers the next object's range. The stream's
/// replication lives behind this; the shipper's own state is [`Shipping`].
pub(crate) trait Shippable: Send + Sync + 'static {
    fn stream(&self) -> &Stream;
    fn sites(&self) -> &Sites;
    fn shipping(&self) -> &Shipping;
    fn own_log(&self) -> &Mutex<Log>;
    fn replica_logs(&self) -> &Mutex<BTreeMap<String, Log>>;
    /// The sites declared down, as this site last learnt.
    fn down(&self) -> BTreeSet<String>;
    /// How far the own log may ship (what every peer that could take over holds), or
    /// nothing while a peer is taking this site's events over.
    fn shippable_through(&self) -> Option<u64>;
    /// Tells the peers the own range about to be written; whether it may be written.
    fn announce(&self, transport: &Arc<dyn Transport>) -> impl Future<Output = bool> + Send;
}

/// The shipper's state: the sink it last wrote to, the origins it is taking over and since
/// when each was down, the range its peers acknowledged, and its figures.
pub(crate) struct Shipping {
    sink_now: Mutex<Option<String>>,
    taking_over: Mutex<BTreeSet<String>>,
    /// Since when each site has been declared down, as this site learnt it: a takeover
    /// waits `lease + margin` from then, so a cut-off origin has fenced itself first.
    down_since: Mutex<BTreeMap<String, Instant>>,
    takeover_hold: Duration,
    /// The own range the peers acknowledged (see [`Shippable::announce`]).
    announced: Mutex<Option<(u64, u64)>>,
    pub objects: AtomicU64,
    pub replays: AtomicU64,
    /// Objects no sink took (each starts or continues a replay).
    pub unshipped_tries: AtomicU64,
    pub oldest_unshipped_ms: AtomicU64,
}

impl Shipping {
    pub fn new(takeover_hold: Duration) -> Self {
        Shipping {
            sink_now: Mutex::new(None),
            taking_over: Mutex::new(BTreeSet::new()),
            down_since: Mutex::new(BTreeMap::new()),
            takeover_hold,
            announced: Mutex::new(None),
            objects: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            unshipped_tries: AtomicU64::new(0),
            oldest_unshipped_ms: AtomicU64::new(0),
        }
    }

    /// The sink the last object went to.
    pub fn sink_now(&self) -> Option<String> {
        lock(&self.sink_now).clone()
    }

    /// Whether this site ships `origin`'s events now.
    pub fn is_taking_over(&self, origin: &str) -> bool {
        lock(&self.taking_over).contains(origin)
    }

    /// The origins this site ships for.
    pub fn taking_over(&self) -> Vec<String> {
        lock(&self.taking_over).iter().cloned().collect()
    }
}

/// Which log a shipping step works on.
#[derive(Clone)]
enum Whose {
    Own,
    Replica(String),
}

fn with_log<S: Shippable, T>(
    s: &S,
    whose: &Whose,
    f: impl FnOnce(&mut Log) -> Result<T, RelayError>,
) -> Result<Option<T>, RelayError> {
    match whose {
        Whose::Own => f(&mut lock(s.own_log())).map(Some),
        Whose::Replica(o) => match lock(s.replica_logs()).get_mut(o) {
            Some(l) => f(l).map(Some),
            None => Ok(None),
        },
    }
}

/// [`with_log`] on a blocking thread: the log's work syncs files (marks, spool segments
/// removed), which must not hold up an async worker and the requests queued on it.
async fn with_log_blocking<S: Shippable, T: Send + 'static>(
    s: &Arc<S>,
    whose: &Whose,
    f: impl FnOnce(&mut Log, &Stream) -> Result<T, RelayError> + Send + 'static,
) -> Result<Option<T>, RelayError> {
    let (s, whose) = (s.clone(), whose.clone());
    tokio::task::spawn_blocking(move || with_log(&*s, &whose, |l| f(l, s.stream())))
        .await
        .map_err(RelayError::stopped)?
}

/// Ships at most one object of a log; whether it made progress.
///
/// `replaying` says whether this log is replaying a backlog after an outage: then each
/// object is followed by a pause that keeps the log to the stream's `replay_rate`, until
/// the log has caught up (less than one batch left). An object no sink takes starts a
/// replay: what waits meanwhile is the backlog. Events that only came in faster than one
/// object at a time are live traffic, shipped without a pause.
async fn ship_once<S: Shippable>(
    s: &Arc<S>,
    sinks: &[Sink],
    whose: Whose,
    limit: u64,
    transport: &Arc<dyn Transport>,
    replaying: &mut bool,
) -> bool {
    let planned = with_log_blocking(s, &whose, move |l, cfg| plan(l, limit, cfg, false)).await;
    let mut plan = match planned.map(Option::flatten) {
        Ok(Some(p)) => p,
        Ok(None) => return false,
        Err(e) => {
            tracing::error!(stream = %s.stream().name, error = %e, "relay: planning a batch");
            return false;
        }
    };
    let origin = match &whose {
        Whose::Own => s.sites().me.clone(),
        Whose::Replica(o) => o.clone(),
    };
    if matches!(whose, Whose::Own)
        && *lock(&s.shipping().announced) != Some((plan.first, plan.last))
    {
        if !s.announce(transport).await {
            return false;
        }
        *lock(&s.shipping().announced) = Some((plan.first, plan.last));
    }
    let mut url = None;
    if plan.events > 0 {
        let key = object_key(
            &s.stream().name,
            &origin,
            plan.first,
            plan.last,
            plan.accepted_ms,
        );
        // Megabytes at a time: not on an async worker.
        let lines = std::mem::take(&mut plan.lines);
        let body = match tokio::task::spawn_blocking(move || zstd::encode_all(lines.as_slice(), 3))
            .await
        {
            Ok(Ok(b)) => bytes::Bytes::from(b),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "relay: zstd");
                return false;
            }
            Err(_) => return false,
        };
        url = put(sinks, &key, body).await;
        if url.is_none() {
            *replaying = true;
            s.shipping().unshipped_tries.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    }
    let last = plan.last;
    // Status and metrics give the age of the oldest own event not shipped.
    let own = matches!(whose, Whose::Own);
    let done = with_log_blocking(s, &whose, move |l, cfg| {
        l.set_shipped(last)?;
        l.set_intent(None)?;
        l.trim(cfg.dedup_window, cfg.max_spool_bytes / 4)?;
        let backlog = l.last_seq().min(limit).saturating_sub(last);
        Ok((backlog, own.then(|| oldest_unshipped(l))))
    })
    .await;
    let backlog = match done {
        Ok(Some((backlog, oldest))) => {
            if let Some(oldest) = oldest {
                s.shipping()
                    .oldest_unshipped_ms
                    .store(oldest, Ordering::Relaxed);
            }
            backlog
        }
        Ok(None) => 0,
        Err(e) => {
            tracing::error!(stream = %s.stream().name, error = %e, "relay: recording a shipped batch");
            return false;
        }
    };
    if let Some(url) = url {
        s.shipping().objects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("outlast_relay_objects_shipped_total", "stream" => s.stream().name.clone(), "sink" => url.clone())
            .increment(1);
        *lock(&s.shipping().sink_now) = Some(url);
    }
    let paced = *replaying;
    if backlog < s.stream().batch_events {
        *replaying = false;
    }
    if paced {
        s.shipping().replays.fetch_add(1, Ordering::Relaxed);
        let pause = Duration::from_secs_f64(plan.events as f64 / s.stream().replay_rate as f64);
        tokio::time::sleep(pause).await;
    }
    true
}

/// The shipping loop of a stream: own events, then the events of sites this one takes over.
/// `own_replaying`: the own log starts as a replay (see [`ship_once`]).
pub(crate) async fn shipper<S: Shippable>(
    s: Arc<S>,
    sinks: Vec<Sink>,
    transport: Arc<dyn Transport>,
    stop: CancellationToken,
    mut own_replaying: bool,
) {
    let mut last_oldest = outlast_core::clock::now() - Duration::from_secs(10);
    // Per origin taken over: whether its events are still replaying.
    let mut replaying: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let mut progress = false;
        if !s.sites().is_witness() {
            if let Some(limit) = s.shippable_through() {
                progress |= ship_once(
                    &s,
                    &sinks,
                    Whose::Own,
                    limit,
                    &transport,
                    &mut own_replaying,
                )
                .await;
            }
        }
        let down = s.down();
        let held = {
            let mut since = lock(&s.shipping().down_since);
            since.retain(|o, _| down.contains(o));
            for o in &down {
                since
                    .entry(o.clone())
                    .or_insert_with(outlast_core::clock::now);
            }
            since
                .iter()
                .filter(|(_, t)| t.elapsed() >= s.shipping().takeover_hold)
                .map(|(o, _)| o.clone())
                .collect::<BTreeSet<String>>()
        };
        let origins: Vec<String> = lock(s.replica_logs()).keys().cloned().collect();
        for origin in origins {
            let mine =
                held.contains(&origin) && s.sites().taker(&origin, &down) == Some(&s.sites().me);
            let changed = {
                let mut t = lock(&s.shipping().taking_over);
                if mine {
                    t.insert(origin.clone())
                } else {
                    t.remove(&origin)
                }
            };
            if changed {
                tracing::info!(stream = %s.stream().name, origin, taking_over = mine, "relay: takeover of a down site's events");
                // All a down site left unshipped is a backlog.
                replaying.insert(origin.clone(), mine);
            }
            if mine {
                let paced = replaying.entry(origin.clone()).or_insert(true);
                let whose = Whose::Replica(origin);
                progress |= ship_once(&s, &sinks, whose, u64::MAX, &transport, paced).await;
            }
        }
        if last_oldest.elapsed() >= Duration::from_secs(1) {
            last_oldest = outlast_core::clock::now();
            let oldest = oldest_unshipped(&lock(s.own_log()));
            s.shipping()
                .oldest_unshipped_ms
                .store(oldest, Ordering::Relaxed);
        }
        if !progress {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::StreamRelay;
    use crate::{ReplicateResp, Sites};
    use outlast_core::config::{Ack, Sink as SinkConfig};
    use outlast_core::faults::FaultKind;

    /// No peers answer: a site alone never calls one.
    struct Nobody;

    impl Transport for Nobody {
        fn replicate<'a>(
            &'a self,
            peer: &'a str,
            _frame: Vec<u8>,
        ) -> crate::BoxFut<'a, Result<ReplicateResp, String>> {
            Box::pin(async move { Err(format!("{peer} is not in this test")) })
        }
    }

    /// A site alone (no peer holds its events back) shipping to one file:// sink, in
    /// objects of 100 events.
    fn lone(dir: &std::path::Path, faults: &Arc<Faults>, replay_rate: u64) -> Arc<StreamRelay> {
        let cfg = Stream {
            name: "clicks".into(),
            ack: Ack::Local,
            sinks: vec![SinkConfig {
                url: format!("file://{}", dir.join("sink").display()),
                site: Some("east".into()),
                options: BTreeMap::new(),
            }],
            max_spool_bytes: 1 << 30,
            max_body_bytes: 1 << 20,
            max_event_bytes: 1 << 20,
            min_free_bytes: 0,
            batch_events: 100,
            batch_age: Duration::from_millis(50),
            replay_rate,
            dedup_window: Duration::from_secs(3600),
        };
        let sites = Sites {
            me: "east".into(),
            all: vec![("east".into(), false)],
        };
        let (_, down) = tokio::sync::watch::channel(Default::default());
        let relay = StreamRelay::open(cfg, sites, &dir.join("spool"), down, faults, Duration::ZERO);
        Arc::new(relay.expect("open"))
    }

    /// Ingests `n` events (ids from `tag`) in requests of 100, all at once.
    async fn send(s: &Arc<StreamRelay>, tag: &str, n: usize) {
        let requests = (0..n / 100).map(|r| {
            let events = (0..100)
                .map(|i| Event {
                    id: format!("{tag}-{r}-{i}"),
                    line: format!("{{\"n\":{i}}}").into_bytes(),
                })
                .collect();
            s.ingest(events)
        });
        for answer in futures::future::join_all(requests).await {
            answer.expect("ingest");
        }
    }

    /// Polls `done` every 10 ms until it holds, for up to 20 s (then fails naming `what`);
    /// how long that took.
    async fn until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
        let t = outlast_core::clock::now();
        while !done() {
            assert!(t.elapsed() < Duration::from_secs(20), "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t.elapsed()
    }

    /// Waits until nothing own is unshipped; how long that took.
    async fn drained(s: &StreamRelay) -> Duration {
        until("drained", || s.stats().spool_events == 0).await
    }

    /// Live traffic that comes faster than one object at a time ships without a pause;
    /// the backlog that waited while no sink took objects replays at `replay_rate`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_after_an_outage_is_paced_and_live_traffic_is_not() {
        let tmp = tempfile::tempdir().expect("tmp");
        let faults = Arc::new(Faults::default());
        let s = lone(tmp.path(), &faults, 2000);
        let stop = CancellationToken::new();
        s.start(Arc::new(Nobody), stop.clone());

        send(&s, "live", 1000).await;
        let live = drained(&s).await;
        assert_eq!(s.stats().replays, 0, "live traffic was paced");

        faults.add(FaultKind::SinkDown { site: None }, Duration::from_secs(60));
        send(&s, "held", 1000).await;
        until("an object tried", || {
            s.shipping().unshipped_tries.load(Ordering::Relaxed) > 0
        })
        .await;
        assert_eq!(
            s.stats().spool_events,
            1000,
            "nothing ships while the sink is down"
        );
        faults.clear(None);
        let replay = drained(&s).await;
        // 10 objects of 100 at 2,000 events/s: a 50 ms pause after each. The counts follow
        // the shipped mark that `drained` saw by a moment.
        let counts = || {
            let st = s.stats();
            (st.replays, st.objects_shipped)
        };
        until("10 replays of 20 objects", || counts() == (10, 20)).await;
        assert_eq!(counts(), (10, 20), "{:?}", s.stats());
        assert!(
            replay >= Duration::from_millis(450),
            "replayed in {replay:?}"
        );
        stop.cancel();
        println!("1000 live events shipped in {live:?}; 1000 held ones replayed in {replay:?}");
    }

    #[test]
    fn keys_follow_the_contract() {
        // 2026-11-22 13:05:00 UTC
        let ms = 1_795_352_700_000;
        assert_eq!(
            object_key("clicks", "east", 1, 1000, ms),
            "clicks/2026/11/22/13/east-00000000000000000001-00000000000000001000.ndjson.zst"
        );
        assert_eq!(outlast_core::clock::civil(0), (1970, 1, 1));
        assert_eq!(outlast_core::clock::civil(-1), (1969, 12, 31));
        assert_eq!(outlast_core::clock::civil(11_016), (2000, 2, 29));
    }
}
