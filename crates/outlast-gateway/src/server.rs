//! The HTTP gateway's server: one worker thread per core, each with its own
//! single-threaded runtime and backend pool, all accepting from the same socket, each
//! serving its connections with hyper (HTTP/1.1 and h2c) and the gateway's handler. What a
//! request does (routing, retries, the hop) is `http.rs`; here is only how connections are
//! taken and shared out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::HttpGateway;
use crate::limits::ConnLimit;
use crate::pool::ConnPool;

/// Serves `gateway` on `listener` until `shutdown`; then stops accepting and lets requests
/// in flight finish for up to `drain`.
///
/// One worker thread per core, each with its own single-threaded runtime and backend pool,
/// all accepting from the same socket: a request is read, proxied and answered on one
/// thread, with no hand-off between threads (HAProxy's shape).
pub async fn serve_http(
    listener: TcpListener,
    gateway: Arc<HttpGateway>,
    limit: Arc<ConnLimit>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let std_listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot hand the gateway listener to its workers");
            return;
        }
    };
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cores = worker_cores(workers);
    let share = Arc::new(Share::new(workers));
    let mut threads = Vec::new();
    for i in 0..workers {
        let l = match std_listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot share the gateway listener");
                break;
            }
        };
        let gw = gateway.clone();
        let stop = shutdown.clone();
        let share = share.clone();
        let limit = limit.clone();
        let span = tracing::Span::current();
        let core = cores.get(i).copied();
        let spawned = std::thread::Builder::new()
            .name(format!("gw-{}-{i}", gateway.service))
            .spawn(move || {
                let _entered = span.enter();
                if let Some(core) = core {
                    keep_to_core(core);
                }
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(worker(l, gw, limit, stop, drain, share, i)),
                    Err(e) => tracing::error!(error = %e, "cannot start a gateway worker"),
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!(error = %e, "cannot start a gateway worker thread"),
        }
    }
    drop(std_listener);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
}

/// The core each of `workers` workers keeps to: the cores this process may run on, one
/// each, when there are exactly as many (otherwise none: a CPU quota smaller than the set
/// of cores leaves it to the kernel where the time is spent).
///
/// Left to the kernel, both workers of a 2-core machine were often queued on one core, as
/// wake-ups pulled them towards the threads that woke them: one ran a 4 ms burst while the
/// other's clients waited 4 ms. Kept apart, the gateway's p99.9 under wrk fell from
/// 5–6 ms to about 4 ms, HAProxy's, and its p99 from 2.0–4.2 ms to 1.7–1.95 ms.
pub(crate) fn worker_cores(workers: usize) -> Vec<usize> {
    let cores = allowed_cores();
    if cores.len() == workers && workers > 1 {
        cores
    } else {
        Vec::new()
    }
}

/// The cores the calling thread may run on (none when the kernel does not say).
fn allowed_cores() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    let Ok(allowed) = sched_getaffinity(Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect()
}

/// Keeps the calling thread to `core`; a refusal (a container that forbids it) leaves the
/// thread where the kernel puts it.
pub(crate) fn keep_to_core(core: usize) {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    let kept = set
        .set(core)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    if let Err(e) = kept {
        tracing::debug!(core, error = %e, "gateway worker left unpinned");
    }
}

/// Open client connections per worker. The kernel wakes every worker for a new connection
/// and the first to ask takes it: under a burst of keep-alive connections (wrk's 50) one
/// worker took two thirds of them, and its clients queued on one core while the other core
/// idled. A worker with more open connections than another, by more than one, leaves new
/// ones to the others until that changes (HAProxy balances its threads likewise).
struct Share {
    open: Vec<AtomicU64>,
    changed: tokio::sync::Notify,
}

/// How long a worker that is ahead waits for the others to take a connection before it
/// takes the next one itself (another worker may be stuck in a long piece of work).
const LEAVE_FOR: Duration = Duration::from_millis(50);

impl Share {
    fn new(workers: usize) -> Self {
        Self {
            open: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Whether worker `me` has more open connections than another worker, by more than one.
    fn ahead(&self, me: usize) -> bool {
        let mine = self.open.get(me).map_or(0, |n| n.load(Ordering::Relaxed));
        self.open
            .iter()
            .enumerate()
            .any(|(i, n)| i != me && n.load(Ordering::Relaxed) + 1 < mine)
    }

    fn count(self: &Arc<Self>, me: usize) -> OpenConn {
        if let Some(n) = self.open.get(me) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        self.changed.notify_waiters();
        OpenConn(self.clone(), me)
    }
}

/// A client connection counted in its worker's share, for as long as it is open.
struct OpenConn(Arc<Share>, usize);

impl Drop for OpenConn {
    fn drop(&mut self) {
        if let Some(n) = self.0.open.get(self.1) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
        self.0.changed.notify_waiters();
    }
}

async fn worker(
    listener: std::net::TcpListener,
    gateway: Arc<HttpGateway>,
    limit: Arc<ConnLimit>,
    shutdown: CancellationToken,
    drain: Duration,
    share: Arc<Share>,
    me: usize,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "gateway worker cannot listen");
            return;
        }
    };
    let pool = Arc::new(ConnPool::new(gateway.source));
    let sweeper = tokio::spawn(pool.clone().sweep_every(Duration::from_secs(10)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // One buffer per answer and a plain send: cheaper than writev for small messages. A
    // request head (or the next one on an idle keep-alive connection) must come within
    // HEADER_TIMEOUT: a slowloris or an idle crowd does not hold the door.
    builder
        .http1()
        .writev(false)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(crate::limits::HEADER_TIMEOUT);
    loop {
        if share.ahead(me) {
            // Made before the second look, so that a change in between is not missed.
            let changed = share.changed.notified();
            if share.ahead(me) {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = changed => continue, // look again
                    _ = tokio::time::sleep(LEAVE_FOR) => {} // take the next one after all
                }
            }
        }
        let Some((stream, peer)) = crate::tcp::accept(&listener, &shutdown, &limit).await else {
            break;
        };
        let Some(place) = limit.admit() else {
            tokio::spawn(crate::limits::refuse_http(
                stream,
                "this gateway is at its connection cap",
            ));
            continue;
        };
        let open = share.count(me);
        let _ = stream.set_nodelay(true);
        let gw = gateway.clone();
        let pool = pool.clone();
        let client = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let svc = service_fn(move |req| gw.clone().handle(pool.clone(), req, client.clone()));
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _open = (open, place);
            // The protocol sniff (HTTP/1.1 or h2c) waits for a first byte with no deadline
            // of its own: a connection that sends nothing is closed at the head deadline.
            let mut first = [0u8; 1];
            match tokio::time::timeout(crate::limits::HEADER_TIMEOUT, stream.peek(&mut first)).await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => tracing::warn!(service = %gateway.service, "requests still in flight at the drain deadline"),
    }
    sweeper.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_ahead_of_another_by_more_than_one_leaves_new_connections() {
        let share = Arc::new(Share::new(3));
        let mut held: Vec<OpenConn> = (0..2).map(|_| share.count(0)).collect();
        assert!(share.ahead(0), "2 against 0");
        assert!(!share.ahead(1) && !share.ahead(2));
        held.push(share.count(1));
        assert!(share.ahead(0), "2 against 1 and 0: worker 2 still has none");
        held.push(share.count(2));
        assert!(!share.ahead(0), "2 against 1 and 1");
        held.truncate(1); // worker 0's second, worker 1's and worker 2's close
        assert_eq!(
            share
                .open
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
            [1, 0, 0]
        );
        assert!(!share.ahead(0), "1 against 0 is within one");
        assert!(!Share::new(1).ahead(0), "a lone worker is never ahead");
    }

    #[test]
    fn workers_keep_to_the_allowed_cores_only_when_there_is_one_each() {
        let cores = allowed_cores();
        assert!(!cores.is_empty(), "the kernel tells a thread's cores");
        assert!(
            worker_cores(cores.len() + 1).is_empty(),
            "more workers than cores"
        );
        assert!(worker_cores(1).is_empty(), "a lone worker is not pinned");
        if cores.len() < 2 {
            return;
        }
        assert_eq!(worker_cores(cores.len()), cores);
        assert!(
            worker_cores(cores.len() - 1).is_empty(),
            "a quota below the cores"
        );
        // A thread told to keep to the last core runs there only.
        let last = cores[cores.len() - 1];
        let seen = std::thread::spawn(move || {
            keep_to_core(last);
            allowed_cores()
        })
        .join()
        .expect("thread");
        assert_eq!(seen, [last]);
    }
}
