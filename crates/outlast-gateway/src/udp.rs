//! The UDP gateway: datagrams to a local backend, or one hop to another site's gateway.
//!
//! One socket per worker thread on the service's port (`SO_REUSEPORT`: the kernel keeps a
//! client address on one worker), read in batches with `recvmmsg` into 64 KB buffers, so
//! no datagram is cut. A client address and port is a session with its own upstream
//! socket, bound to this site's address and connected to the session's target, so the
//! backend's answers come back on it and go to that client alone. Answers of all a
//! worker's sessions queue for its listening socket and leave in batches with `sendmmsg`
//! (datagrams upstream go one per call: each session's socket is its own). `affinity` says which
//! datagrams share a target: a session (default), a client IP (rendezvous hash, the same on
//! every worker), or none (each datagram to the next backend; answers are taken from any
//! of the service's targets).
//!
//! A session whose target refuses (ICMP port unreachable, seen as `ECONNREFUSED`) or
//! leaves the routing moves to a usable target and sends its last datagram again there;
//! the refusing backend is ejected for the others too. With no usable local backend, or
//! when the service is not active here, the target is another site's gateway (one hop: a
//! datagram from another site's address never hops again).
//!
//! `responses = 0` (one-way) keeps no session at all: datagrams leave through the worker's
//! one shared upstream socket. `responses = N` ends a session once every datagram it sent
//! has had N answers; every session ends after `idle_timeout` without a datagram.
//!
//! It does not look inside datagrams: SIP and SDP carry addresses the gateway does not
//! rewrite, so a SIP deployment keeps its own dispatcher and media relay behind it.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use outlast_core::config::{Affinity, UdpOptions};
pub use outlast_core::status::UdpStatus;
use rustc_hash::{FxHashMap, FxHasher};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::limits::ConnLimit;
use crate::routes::{Balancer, LeaseClock, Routes, ServiceRoute, Stats, Target};

/// Largest datagram taken whole (the most a UDP payload can be over IPv4).
const MAX_DATAGRAM: usize = 64 * 1024;
/// Datagrams taken, or answers sent, per system call.
const BATCH: usize = 32;
/// Answers a worker holds for its clients before its sessions wait (a socket's worth).
const REPLY_QUEUE: usize = 1024;

/// Why a datagram was dropped (the label of `outlast_gateway_udp_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// No target at all: not served here, nothing healthy, fenced, or no site to hop to.
    NoBackend,
    /// The service's session cap (`max_connections`) is reached.
    Cap,
    /// The client address holds `max_sessions_per_source` sessions, none idle.
    SourceCap,
    /// Longer than the receive buffer (cannot happen over IPv4; counted all the same).
    Truncated,
    /// The upstream socket's send buffer was full, or sending failed twice.
    SendFailed,
}

impl Drop {
    const ALL: [Drop; 5] = [
        Drop::NoBackend,
        Drop::Cap,
        Drop::Truncated,
        Drop::SendFailed,
        Drop::SourceCap,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Drop::NoBackend => "no-backend",
            Drop::Cap => "cap",
            Drop::Truncated => "truncated",
            Drop::SendFailed => "send-failed",
            Drop::SourceCap => "source-cap",
        }
    }
}

#[derive(Default)]
struct Counts {
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    sessions_open: AtomicU64,
    sessions_opened: AtomicU64,
    sessions_moved: AtomicU64,
    sessions_evicted: AtomicU64,
    dropped: [AtomicU64; 5],
}

/// What [`UdpGateway::count`] counts (the index of its metric).
#[derive(Clone, Copy)]
enum Flow {
    In = 0,
    Out = 1,
    Opened = 2,
    Moved = 3,
    Evicted = 4,
}

/// One UDP service's gateway, shared by its workers.
pub struct UdpGateway {
    pub service: String,
    source: IpAddr,
    site_addresses: HashSet<IpAddr>,
    routes: watch::Receiver<Arc<Routes>>,
    stats: Arc<Stats>,
    lease: Arc<LeaseClock>,
    options: UdpOptions,
    limit: Arc<ConnLimit>,
    balancer: Balancer,
    counts: Counts,
    dropped_metrics: [metrics::Counter; 5],
    /// Datagrams in, out; sessions opened, moved, evicted.
    flow_metrics: [metrics::Counter; 5],
    born: Instant,
    /// Every open session by client address, across the workers: what
    /// `max_sessions_per_source` counts, and where room is made.
    sources: Mutex<FxHashMap<IpAddr, Vec<Arc<Session>>>>,
}

/// A session must have been idle this long to be ended to make room for another.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

impl UdpGateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        service: &str,
        source: IpAddr,
        site_addresses: HashSet<IpAddr>,
        routes: watch::Receiver<Arc<Routes>>,
        stats: Arc<Stats>,
        lease: Arc<LeaseClock>,
        options: UdpOptions,
        limit: Arc<ConnLimit>,
    ) -> Arc<Self> {
        let dropped_metrics = Drop::ALL.map(|d| {
            metrics::counter!("outlast_gateway_udp_dropped_total", "service" => service.to_string(), "reason" => d.label())
        });
        let flow = |label: &'static str, value: &'static str| metrics::counter!(if label == "direction" { "outlast_gateway_udp_datagrams_total" } else { "outlast_gateway_udp_sessions_total" }, "service" => service.to_string(), label => value);
        let flow_metrics = [
            flow("direction", "in"),
            flow("direction", "out"),
            flow("event", "opened"),
            flow("event", "moved"),
            flow("event", "evicted"),
        ];
        Arc::new(Self {
            service: service.to_string(),
            source,
            site_addresses,
            routes,
            stats,
            lease,
            options,
            limit,
            balancer: Balancer::default(),
            counts: Counts::default(),
            dropped_metrics,
            flow_metrics,
            born: outlast_core::clock::now(),
            sources: Mutex::default(),
        })
    }

    pub fn counters(&self) -> UdpStatus {
        let c = &self.counts;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UdpStatus {
            datagrams_in: l(&c.datagrams_in),
            datagrams_out: l(&c.datagrams_out),
            sessions_open: l(&c.sessions_open),
            sessions_opened: l(&c.sessions_opened),
            sessions_moved: l(&c.sessions_moved),
            dropped_no_backend: l(&c.dropped[0]),
            dropped_cap: l(&c.dropped[1]),
            dropped_truncated: l(&c.dropped[2]),
            dropped_send_failed: l(&c.dropped[3]),
            dropped_source_cap: l(&c.dropped[4]),
            sessions_evicted: l(&c.sessions_evicted),
        }
    }

    fn dropped(&self, why: Drop) {
        let i = Drop::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.counts.dropped[i].fetch_add(1, Ordering::Relaxed);
        self.dropped_metrics[i].increment(1);
    }

    fn count(&self, what: Flow, n: u64) {
        let c = &self.counts;
        let a = match what {
            Flow::In => &c.datagrams_in,
            Flow::Out => &c.datagrams_out,
            Flow::Opened => &c.sessions_opened,
            Flow::Moved => &c.sessions_moved,
            Flow::Evicted => &c.sessions_evicted,
        };
        a.fetch_add(n, Ordering::Relaxed);
        self.flow_metrics[what as usize].increment(n);
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// A place under the cap for a new session of `client`, making room when a limit is
    /// reached: a client address at `max_sessions_per_source` gives up its own session
    /// idle the longest; at the service's cap, the address holding the most sessions (more
    /// than this one) gives up its own. Only a session idle for [`EVICTABLE_AFTER`] gives
    /// way; otherwise the datagram is dropped, counted by reason. (Found by probing: two
    /// flooding addresses filled the cap in 0.7 s and kept everyone else out for 24 s.)
    fn make_room(&self, client: IpAddr) -> Result<OwnedSemaphorePermit, Drop> {
        let mut sources = lock(&self.sources);
        let now = self.now_ms();
        let mine = sources.get(&client).map_or(0, Vec::len) as u64;
        if mine >= self.options.max_per_source && !self.evict_idlest(&mut sources, client, now) {
            return Err(Drop::SourceCap);
        }
        if let Some(place) = self.limit.admit() {
            return Ok(place);
        }
        let biggest = sources
            .iter()
            .filter(|(ip, list)| **ip != client && list.len() as u64 > mine + 1)
            .max_by_key(|(_, list)| list.len())
            .map(|(ip, _)| *ip);
        if let Some(ip) = biggest {
            if self.evict_idlest(&mut sources, ip, now) {
                if let Some(place) = self.limit.admit() {
                    return Ok(place);
                }
            }
        }
        Err(Drop::Cap)
    }

    /// Ends the session of `ip` idle the longest, if one has been idle long enough; its
    /// place under the cap is free at once.
    fn evict_idlest(
        &self,
        sources: &mut FxHashMap<IpAddr, Vec<Arc<Session>>>,
        ip: IpAddr,
        now: u64,
    ) -> bool {
        let Some(list) = sources.get_mut(&ip) else {
            return false;
        };
        let idle_ms = EVICTABLE_AFTER.as_millis() as u64;
        let Some(i) = list
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.last_ms.load(Ordering::Relaxed)))
            .filter(|(_, last)| now.saturating_sub(*last) >= idle_ms)
            .min_by_key(|(_, last)| *last)
            .map(|(i, _)| i)
        else {
            return false;
        };
        let s = list.swap_remove(i);
        if list.is_empty() {
            sources.remove(&ip);
        }
        s.evicted.store(true, Ordering::Relaxed);
        drop(lock(&s.place).take());
        s.evict.notify_one();
        self.count(Flow::Evicted, 1);
        true
    }

    /// Forgets `session` in the per-address index (it ended).
    fn forget(&self, session: &Arc<Session>) {
        let ip = session.client.ip();
        let mut sources = lock(&self.sources);
        if let Some(list) = sources.get_mut(&ip) {
            list.retain(|s| !Arc::ptr_eq(s, session));
            if list.is_empty() {
                sources.remove(&ip);
            }
        }
    }

    /// The route to follow, or none when the service must not be served from here.
    fn route(&self, routes: &Routes) -> Option<ServiceRoute> {
        routes
            .services
            .get(&self.service)
            .filter(|r| !r.refuses(&self.lease))
            .cloned()
    }

    /// Where datagrams with `key` go: the first of the usable targets in round-robin order
    /// (session affinity, stateful), or the one `key` hashes to among the usable targets
    /// (ip affinity, and every affinity without sessions), so every worker agrees.
    fn pick(&self, route: &ServiceRoute, may_hop: bool, key: Option<u64>) -> Option<Target> {
        let targets = self.balancer.targets(route, may_hop);
        let Some(key) = key else {
            return targets.first().copied();
        };
        // The first tier only: usable local backends, else other sites, else the ejected.
        let first = targets.first()?;
        let tier: Vec<&Target> = targets
            .iter()
            .take_while(|t| t.remote == first.remote)
            .collect();
        tier.into_iter()
            .max_by_key(|t| {
                let mut h = FxHasher::default();
                key.hash(&mut h);
                t.addr.hash(&mut h);
                h.finish()
            })
            .copied()
    }

    /// Whether `target` is still one the route sends to.
    fn still_routed(route: &ServiceRoute, target: &Target) -> bool {
        if target.remote {
            route.remotes.contains(&target.addr)
        } else {
            route.local && route.backends.contains(&target.addr)
        }
    }

    fn key(&self, client: SocketAddr) -> Option<u64> {
        let mut h = FxHasher::default();
        match self.options.affinity {
            Affinity::Ip => client.ip().hash(&mut h),
            Affinity::Session if self.options.responses == Some(0) => client.hash(&mut h),
            Affinity::Session | Affinity::Packet => return None,
        }
        Some(h.finish())
    }
}

/// Opens `workers` sockets on `addr` sharing the port (`SO_REUSEPORT`), with large
/// receive buffers. Called at start, so a taken port fails the agent's start.
pub fn udp_sockets(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        // As much as the kernel allows (net.core.rmem_max caps it): bursts queue here.
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        out.push(s.into());
    }
    Ok(out)
}

/// How many workers a UDP gateway runs: one per core.
pub fn udp_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Serves the gateway on `sockets` (from [`udp_sockets`]), one worker thread each, until
/// `shutdown`. Sessions end with it (UDP has nothing to drain).
pub async fn serve_udp(
    sockets: Vec<std::net::UdpSocket>,
    gateway: Arc<UdpGateway>,
    shutdown: CancellationToken,
) {
    let cores = crate::server::worker_cores(sockets.len());
    let mut threads = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let gw = gateway.clone();
        let stop = shutdown.clone();
        let span = tracing::Span::current();
        let core = cores.get(i).copied();
        let spawned = std::thread::Builder::new()
            .name(format!("udp-{}-{i}", gateway.service))
            .spawn(move || {
                let _entered = span.enter();
                if let Some(core) = core {
                    crate::server::keep_to_core(core);
                }
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(worker(socket, gw, stop)),
                    Err(e) => tracing::error!(error = %e, "cannot start a UDP gateway worker"),
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!(error = %e, "cannot start a UDP gateway worker thread"),
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
}

/// One client's session on one worker.
struct Session {
    client: SocketAddr,
    upstream: UdpSocket,
    /// Packet affinity: the socket is not connected; answers are checked by source.
    connected: bool,
    state: Mutex<SessionState>,
    /// When a datagram last went either way (ms of the gateway's clock).
    last_ms: AtomicU64,
    /// Datagrams sent upstream, and answers sent back.
    sent: AtomicU64,
    answered: AtomicU64,
    /// Its place under the cap, given back when it ends or is evicted.
    place: Mutex<Option<OwnedSemaphorePermit>>,
    /// Set when it was ended to make room; its task is told through `evict`.
    evicted: std::sync::atomic::AtomicBool,
    evict: tokio::sync::Notify,
    /// Counted in `sessions_open` (uncounted exactly once, when it ends).
    counted: std::sync::atomic::AtomicBool,
}

impl Session {
    /// Takes the session out of `sessions_open`, once.
    fn uncount(&self, gw: &UdpGateway) {
        if self.counted.swap(false, Ordering::Relaxed) {
            gw.counts.sessions_open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct SessionState {
    target: Target,
    /// The routing version the target was checked against.
    version: u64,
    /// The last datagram sent, sent again when the target refuses it.
    last: Vec<u8>,
    /// Targets that refused the last datagram: after two it is dropped, not sent round
    /// dead backends whose ejection the health check has not confirmed yet.
    refusals: u8,
}

type Sessions = Arc<Mutex<FxHashMap<SocketAddr, Arc<Session>>>>;

/// What a worker knows of the routing: the route and a version that changes with it.
struct Current {
    routes: watch::Receiver<Arc<Routes>>,
    route: Option<ServiceRoute>,
    version: u64,
}

impl Current {
    fn new(gw: &UdpGateway) -> Self {
        let mut routes = gw.routes.clone();
        let route = gw.route(&routes.borrow_and_update().clone());
        Current {
            routes,
            route,
            version: 0,
        }
    }

    fn refresh(&mut self, gw: &UdpGateway) {
        if self.routes.has_changed().unwrap_or(false) {
            let r = self.routes.borrow_and_update().clone();
            self.route = gw.route(&r);
            self.version += 1;
        }
        // A primary-standby lease can end between routing updates.
        if self.route.as_ref().is_some_and(|r| r.refuses(&gw.lease)) {
            self.route = None;
            self.version += 1;
        }
    }
}

async fn worker(socket: std::net::UdpSocket, gw: Arc<UdpGateway>, stop: CancellationToken) {
    let socket = match UdpSocket::from_std(socket) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "UDP gateway worker cannot listen");
            return;
        }
    };
    // One-way traffic leaves through one shared socket, with no session.
    let oneway = if gw.options.responses == Some(0) {
        match bound_socket(gw.source, socket_family(&socket)) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "UDP gateway worker cannot open its upstream socket");
                return;
            }
        }
    } else {
        None
    };
    let sessions: Sessions = Arc::default();
    let (replies, queue) = mpsc::channel(REPLY_QUEUE);
    if oneway.is_none() {
        tokio::spawn(replier(socket.clone(), queue, gw.clone()));
    }
    let mut current = Current::new(&gw);
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut got: Vec<(usize, Option<SocketAddr>, bool)> = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = socket.readable() => if r.is_err() { continue },
        }
        got.clear();
        let fd = socket.as_raw_fd();
        let r = socket.try_io(Interest::READABLE, || {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                .collect();
            let msgs = recvmmsg(
                fd,
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(std::io::Error::from)?;
            got.extend(msgs.map(|m| {
                let from = m.address.and_then(|a| to_socket_addr(&a));
                (m.bytes, from, m.flags.contains(MsgFlags::MSG_TRUNC))
            }));
            Ok(())
        });
        if r.is_err() {
            continue; // WouldBlock (another wake-up took them), or a transient error
        }
        current.refresh(&gw);
        gw.count(Flow::In, got.len() as u64);
        for (buf, &(len, from, truncated)) in bufs.iter().zip(&got) {
            let Some(client) = from else { continue };
            if truncated {
                gw.dropped(Drop::Truncated);
                continue;
            }
            let data = &buf[..len];
            match &oneway {
                Some(up) => forward_oneway(&gw, &current, up, client, data),
                None => forward(&gw, &current, &replies, &sessions, client, data),
            }
        }
    }
    // Sessions end with the worker: their reply tasks stop with the runtime.
    let ended: Vec<Arc<Session>> = lock(&sessions).drain().map(|(_, s)| s).collect();
    for s in &ended {
        s.uncount(&gw);
        gw.forget(s);
    }
}

/// An answer on its way to a client.
type Reply = (SocketAddr, Vec<u8>);

/// Sends the answers a worker's sessions queue through its listening socket, up to
/// [`BATCH`] per `sendmmsg`, in the order they came.
async fn replier(listener: Arc<UdpSocket>, mut queue: mpsc::Receiver<Reply>, gw: Arc<UdpGateway>) {
    let mut batch: Vec<Reply> = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let mut done = 0;
        while done < batch.len() {
            match send_batch(&listener, &batch[done..]) {
                Ok(n) => {
                    gw.count(Flow::Out, n as u64);
                    done += n.max(1); // never 0 for a batch of one or more
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if listener.writable().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // The first of the rest could not go (the kernel says which only by
                    // failing the call): drop it, send the others.
                    tracing::debug!(error = %e, client = %batch[done].0, "UDP answer not sent");
                    gw.dropped(Drop::SendFailed);
                    done += 1;
                }
            }
        }
        batch.clear();
    }
}

/// One `sendmmsg` of up to [`BATCH`] of `batch` from the listening socket: how many
/// datagrams left. (Its headers are made per call, as many as it sends: they hold raw
/// pointers, so a task may not keep them across an await.)
fn send_batch(listener: &UdpSocket, batch: &[Reply]) -> std::io::Result<usize> {
    let batch = &batch[..batch.len().min(BATCH)];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
    let addrs: Vec<Option<SockaddrStorage>> = batch
        .iter()
        .map(|(to, _)| Some(SockaddrStorage::from(*to)))
        .collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|(_, d)| [IoSlice::new(d)]).collect();
    let fd = listener.as_raw_fd();
    listener.try_io(Interest::WRITABLE, || {
        let none: [ControlMessage<'_>; 0] = [];
        sendmmsg(
            fd,
            &mut headers,
            &iovs,
            &addrs,
            none,
            MsgFlags::MSG_DONTWAIT,
        )
        .map(|sent| sent.count())
        .map_err(std::io::Error::from)
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

fn socket_family(s: &UdpSocket) -> bool {
    s.local_addr().map(|a| a.is_ipv4()).unwrap_or(true)
}

/// A non-blocking UDP socket on this site's address (any port), for upstream traffic.
fn bound_socket(source: IpAddr, v4: bool) -> std::io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(outlast_core::net::local_for(source, v4))?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

fn forward_oneway(
    gw: &UdpGateway,
    current: &Current,
    up: &UdpSocket,
    client: SocketAddr,
    data: &[u8],
) {
    let may_hop = !gw.site_addresses.contains(&client.ip());
    let Some(t) = current
        .route
        .as_ref()
        .and_then(|r| gw.pick(r, may_hop, gw.key(client)))
    else {
        gw.dropped(Drop::NoBackend);
        return;
    };
    match socket2::SockRef::from(up).send_to(data, &t.addr.into()) {
        Ok(_) => {
            gw.count(Flow::Out, 1);
        }
        Err(e) => {
            if e.kind() == std::io::ErrorKind::ConnectionRefused && !t.remote {
                gw.balancer.eject(t.addr);
            }
            gw.stats.record(&gw.service, &t, false);
            gw.dropped(Drop::SendFailed);
        }
    }
}

fn forward(
    gw: &Arc<UdpGateway>,
    current: &Current,
    replies: &mpsc::Sender<Reply>,
    sessions: &Sessions,
    client: SocketAddr,
    data: &[u8],
) {
    let existing = lock(sessions)
        .get(&client)
        .filter(|s| !s.evicted.load(Ordering::Relaxed))
        .cloned();
    let session = match existing {
        Some(s) => s,
        None => match open(gw, current, replies, sessions, client) {
            Some(s) => s,
            None => return,
        },
    };
    session.last_ms.store(gw.now_ms(), Ordering::Relaxed);
    session.sent.fetch_add(1, Ordering::Relaxed);
    let mut st = lock(&session.state);
    if session.connected {
        if st.version != current.version {
            st.version = current.version;
            let gone = current
                .route
                .as_ref()
                .is_none_or(|r| !UdpGateway::still_routed(r, &st.target));
            if gone && !relocate(gw, current, &session, &mut st, None) {
                gw.dropped(Drop::NoBackend);
                return;
            }
        }
    } else {
        // Packet affinity: every datagram to the next target.
        let may_hop = !gw.site_addresses.contains(&client.ip());
        match current
            .route
            .as_ref()
            .and_then(|r| gw.pick(r, may_hop, None))
        {
            Some(t) => st.target = t,
            None => {
                gw.dropped(Drop::NoBackend);
                return;
            }
        }
    }
    st.last.clear();
    st.last.extend_from_slice(data);
    st.refusals = 0;
    send_upstream(gw, current, &session, &mut st);
}

/// Sends the session's last datagram to its target; a refusal moves the session and sends
/// once more.
fn send_upstream(gw: &UdpGateway, current: &Current, session: &Session, st: &mut SessionState) {
    for attempt in 0..2 {
        // Straight to the kernel: tokio's readiness for a socket it has not polled yet
        // would say WouldBlock.
        let sock = socket2::SockRef::from(&session.upstream);
        let r = if session.connected {
            sock.send(&st.last)
        } else {
            sock.send_to(&st.last, &st.target.addr.into())
        };
        match r {
            Ok(_) => {
                gw.count(Flow::Out, 1);
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && attempt == 0 => {
                let failed = st.target;
                if !relocate(gw, current, session, st, Some(failed)) {
                    gw.dropped(Drop::NoBackend);
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, target = %st.target.addr, "UDP send failed");
                gw.dropped(Drop::SendFailed);
                return;
            }
        }
    }
    gw.dropped(Drop::SendFailed);
}

/// Moves a session to another usable target (after `failed` refused, which is ejected and
/// counted). False when there is none.
fn relocate(
    gw: &UdpGateway,
    current: &Current,
    session: &Session,
    st: &mut SessionState,
    failed: Option<Target>,
) -> bool {
    if let Some(f) = failed {
        gw.stats.record(&gw.service, &f, false);
        if !f.remote {
            gw.balancer.eject(f.addr);
        }
    }
    let may_hop = !gw.site_addresses.contains(&session.client.ip());
    let Some(route) = current.route.as_ref() else {
        return false;
    };
    let next = gw
        .pick(route, may_hop, gw.key(session.client))
        .filter(|t| Some(*t) != failed)
        .or_else(|| {
            gw.balancer
                .targets(route, may_hop)
                .into_iter()
                .find(|t| Some(*t) != failed)
        });
    let Some(next) = next else { return false };
    if session.connected {
        // Connecting a UDP socket again points it at the new peer.
        let sock = socket2::SockRef::from(&session.upstream);
        if let Err(e) = sock.connect(&next.addr.into()) {
            tracing::debug!(error = %e, target = %next.addr, "UDP session cannot move");
            return false;
        }
    }
    tracing::debug!(client = %session.client, from = %st.target.addr, to = %next.addr, "UDP session moved");
    st.target = next;
    st.version = current.version;
    gw.count(Flow::Moved, 1);
    gw.stats.record(&gw.service, &next, true);
    true
}

/// Opens a session for `client`: a place under the cap, a target, a connected socket and
/// the task that carries its answers back.
fn open(
    gw: &Arc<UdpGateway>,
    current: &Current,
    replies: &mpsc::Sender<Reply>,
    sessions: &Sessions,
    client: SocketAddr,
) -> Option<Arc<Session>> {
    let may_hop = !gw.site_addresses.contains(&client.ip());
    let Some(target) = current
        .route
        .as_ref()
        .and_then(|r| gw.pick(r, may_hop, gw.key(client)))
    else {
        gw.dropped(Drop::NoBackend);
        return None;
    };
    let place = match gw.make_room(client.ip()) {
        Ok(p) => p,
        Err(why) => {
            gw.dropped(why);
            return None;
        }
    };
    let connected = gw.options.affinity != Affinity::Packet;
    let upstream = bound_socket(gw.source, target.addr.is_ipv4()).and_then(|s| {
        if connected {
            socket2::SockRef::from(&s).connect(&target.addr.into())?;
        }
        Ok(s)
    });
    let upstream = match upstream {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot open a UDP session's socket");
            gw.dropped(Drop::SendFailed);
            return None;
        }
    };
    gw.stats.request();
    gw.stats.record(&gw.service, &target, true);
    let session = Arc::new(Session {
        client,
        upstream,
        connected,
        state: Mutex::new(SessionState {
            target,
            version: current.version,
            last: Vec::new(),
            refusals: 0,
        }),
        last_ms: AtomicU64::new(gw.now_ms()),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        place: Mutex::new(Some(place)),
        evicted: std::sync::atomic::AtomicBool::new(false),
        evict: tokio::sync::Notify::new(),
        counted: std::sync::atomic::AtomicBool::new(true),
    });
    lock(&gw.sources)
        .entry(client.ip())
        .or_default()
        .push(session.clone());
    lock(sessions).insert(client, session.clone());
    gw.counts.sessions_open.fetch_add(1, Ordering::Relaxed);
    gw.count(Flow::Opened, 1);
    tokio::spawn(answers(
        gw.clone(),
        replies.clone(),
        sessions.clone(),
        session.clone(),
    ));
    Some(session)
}

/// Carries a session's answers back to its client until it has had all it expects, goes
/// idle, or its target refuses with nowhere else to go.
async fn answers(
    gw: Arc<UdpGateway>,
    replies: mpsc::Sender<Reply>,
    sessions: Sessions,
    session: Arc<Session>,
) {
    let idle = gw.options.idle_timeout;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // The routing is read only when a refusal needs it (most sessions never do).
    let mut current: Option<Current> = None;
    loop {
        let since = gw
            .now_ms()
            .saturating_sub(session.last_ms.load(Ordering::Relaxed));
        let left = idle.saturating_sub(Duration::from_millis(since));
        if left.is_zero() {
            break;
        }
        let got = tokio::select! {
            () = session.evict.notified() => break,
            r = tokio::time::timeout(left, session.upstream.recv_from(&mut buf)) => match r {
                Err(_) => continue, // the idle check above decides
                Ok(r) => r,
            },
        };
        match got {
            Ok((n, from)) => {
                if !session.connected && !from_a_target(&gw, from) {
                    continue;
                }
                session.last_ms.store(gw.now_ms(), Ordering::Relaxed);
                if replies
                    .send((session.client, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    break; // the worker stopped
                }
                let answered = session.answered.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(k) = gw.options.responses {
                    if answered >= session.sent.load(Ordering::Relaxed) * u64::from(k) {
                        break;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                // The target's port is closed: move, and send the last datagram again.
                let current = current.get_or_insert_with(|| Current::new(&gw));
                current.refresh(&gw);
                let mut st = lock(&session.state);
                let failed = st.target;
                st.refusals = st.refusals.saturating_add(1);
                if !relocate(&gw, current, &session, &mut st, Some(failed)) {
                    gw.dropped(Drop::NoBackend);
                    break;
                }
                if st.refusals > 2 {
                    gw.dropped(Drop::NoBackend);
                } else if !st.last.is_empty() {
                    send_upstream(&gw, current, &session, &mut st);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "UDP session's socket failed");
                break;
            }
        }
    }
    gw.forget(&session);
    drop(lock(&session.place).take());
    session.uncount(&gw);
    let mut all = lock(&sessions);
    if all
        .get(&session.client)
        .is_some_and(|s| Arc::ptr_eq(s, &session))
    {
        all.remove(&session.client);
    }
}

/// Whether an answer on an unconnected session socket came from one of the service's
/// targets (anything else is not the backend's to send).
fn from_a_target(gw: &UdpGateway, from: SocketAddr) -> bool {
    gw.routes
        .borrow()
        .services
        .get(&gw.service)
        .is_some_and(|r| r.backends.contains(&from) || r.remotes.contains(&from))
}

#[cfg(test)]
mod tests;
