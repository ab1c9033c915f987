//! A gateway worker's keep-alive connections to backends and to other sites' gateways.
//!
//! Each worker thread has its own pool (its runtime is single-threaded, so the lock is never
//! contended and no connection is shared between threads). A connection is checked out
//! for one request and comes back when the response body has been read to its end; one
//! whose response was abandoned part-way, or that the other side closed, is dropped. A
//! request written to a pooled connection that turns out to be closed (the backend's
//! keep-alive timer raced us) comes back unsent and goes to the next connection, so that
//! race never reaches the retry logic. A new routing epoch empties the pool: keep-alive
//! connections to a demoted backend close once their requests are done. A sweep every 10 s
//! closes connections idle for over 30 s.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

type Sender = http1::SendRequest<Full<Bytes>>;

/// Idle connections kept per target; more are closed when they come back.
const MAX_IDLE: usize = 512;
/// An idle connection older than this is closed instead of reused.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// Pooled connections tried for one request before a fresh one is opened.
const STALE_TRIES: usize = 4;

pub(crate) struct ConnPool {
    source: IpAddr,
    idle_for: Duration,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    epoch: u64,
    conns: rustc_hash::FxHashMap<SocketAddr, VecDeque<(Instant, Sender)>>,
}

/// Why a request got no response.
pub(crate) enum SendError {
    /// Nothing reached the target: it refused or timed out the connection, or closed it
    /// before the request was written. Safe to retry whatever the method.
    NotSent(String),
    /// The request may have reached the target.
    AfterSend(hyper::Error),
}

impl Idle {
    /// Forgets every idle connection when the routing epoch moves on; `false` when `epoch`
    /// is older than the pool's (a request that started before the change).
    fn at(&mut self, epoch: u64) -> bool {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.conns.clear();
        }
        epoch == self.epoch
    }
}

impl ConnPool {
    pub(crate) fn new(source: IpAddr) -> Self {
        Self::with_idle_for(source, IDLE_FOR)
    }

    fn with_idle_for(source: IpAddr, idle_for: Duration) -> Self {
        Self {
            source,
            idle_for,
            idle: Mutex::new(Idle::default()),
        }
    }

    /// Closes connections idle for longer than the idle time, and forgets closed ones.
    pub(crate) fn sweep(&self) {
        let mut idle = self.lock();
        for list in idle.conns.values_mut() {
            list.retain(|(since, s)| since.elapsed() <= self.idle_for && !s.is_closed());
        }
        idle.conns.retain(|_, list| !list.is_empty());
    }

    /// Sweeps every `every` for as long as the pool is in use elsewhere.
    pub(crate) async fn sweep_every(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if Arc::strong_count(&self) == 1 {
                return;
            }
            self.sweep();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection to `addr` that can take a request now. Busy ones (their last
    /// response was read but the connection has not yet gone back to idle) stay pooled.
    /// Not async: readiness is asked with a waker that nobody waits on, since a connection
    /// that is not ready now is passed over, not waited for (and the request's future
    /// stays small).
    fn checkout(&self, epoch: u64, addr: SocketAddr) -> Option<Sender> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut idle = self.lock();
        if !idle.at(epoch) {
            return None;
        }
        let list = idle.conns.get_mut(&addr)?;
        while list
            .front()
            .is_some_and(|(since, _)| since.elapsed() > self.idle_for)
        {
            list.pop_front();
        }
        // Newest first; busy ones are kept in their place, closed ones dropped.
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            match list[i].1.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => return list.remove(i).map(|(_, s)| s),
                Poll::Ready(Err(_)) => {
                    list.remove(i);
                }
                Poll::Pending => {}
            }
        }
        None
    }

    fn give_back(&self, epoch: u64, addr: SocketAddr, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if !idle.at(epoch) {
            return;
        }
        let list = idle.conns.entry(addr).or_default();
        if list.len() < MAX_IDLE {
            list.push_back((Instant::now(), sender));
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, SendError> {
        let stream = crate::tcp::connect_from(self.source, addr)
            .await
            .map_err(|e| SendError::NotSent(format!("cannot connect to {addr}: {e}")))?;
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::NotSent(format!("cannot talk HTTP/1.1 to {addr}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` to `addr` on a pooled connection, or a new one.
    pub(crate) async fn send(
        self: &Arc<Self>,
        epoch: u64,
        addr: SocketAddr,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut stale = 0;
        loop {
            let pooled = if stale < STALE_TRIES {
                self.checkout(epoch, addr)
            } else {
                None
            };
            let fresh = pooled.is_none();
            let mut sender = match pooled {
                Some(s) => s,
                // Boxed: the connecting future is large and seldom needed.
                None => Box::pin(self.connect(addr)).await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let back = Some((self.clone(), epoch, addr, sender));
                    let (parts, body) = resp.into_parts();
                    let mut body = PooledBody { body, back };
                    if body.body.is_end_stream() {
                        body.give_back();
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        stale += 1;
                        req = unsent;
                    }
                    Some(_) => {
                        return Err(SendError::NotSent(format!(
                            "{addr} closed a new connection: {}",
                            e.into_error()
                        )))
                    }
                    None => return Err(SendError::AfterSend(e.into_error())),
                },
            }
        }
    }
}

/// A backend's response body; its connection goes back to the pool once the body has been
/// read to the end.
pub(crate) struct PooledBody {
    body: Incoming,
    back: Option<(Arc<ConnPool>, u64, SocketAddr, Sender)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((pool, epoch, addr, sender)) = self.back.take() {
            pool.give_back(epoch, addr, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A keep-alive HTTP/1.1 server that counts connections opened and closed by the
    /// client; with `close_after_one` it hangs up after each answer without saying so.
    async fn backend(close_after_one: bool) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o, c) = (opened.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                o.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                c.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                            if close_after_one {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, opened, closed)
    }

    fn get() -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(Bytes::new()));
        r.headers_mut()
            .insert(hyper::header::HOST, "backend".parse().expect("host"));
        r
    }

    async fn fetch(pool: &Arc<ConnPool>, epoch: u64, addr: SocketAddr) -> Result<Bytes, String> {
        let resp = pool.send(epoch, addr, get()).await.map_err(|e| match e {
            SendError::NotSent(e) => format!("not sent: {e}"),
            SendError::AfterSend(e) => format!("after send: {e}"),
        })?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(body.to_bytes())
    }

    async fn settle(counter: &AtomicUsize, want: usize) -> usize {
        for _ in 0..100 {
            if counter.load(Ordering::SeqCst) >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        counter.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (addr, opened, _) = backend(false).await;
        let pool = Arc::new(ConnPool::new("127.0.0.1".parse().expect("ip")));
        for _ in 0..50 {
            assert_eq!(fetch(&pool, 1, addr).await.as_deref(), Ok(&b"ok"[..]));
        }
        assert_eq!(opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_new_epoch_closes_idle_connections() {
        let (addr, opened, closed) = backend(false).await;
        let pool = Arc::new(ConnPool::new("127.0.0.1".parse().expect("ip")));
        assert!(fetch(&pool, 1, addr).await.is_ok());
        assert!(fetch(&pool, 2, addr).await.is_ok());
        assert_eq!(opened.load(Ordering::SeqCst), 2, "epoch 2 opens its own");
        assert_eq!(settle(&closed, 1).await, 1, "epoch 1's idle one is closed");
        // A request of the old epoch does not put its connection back in the new pool.
        assert!(fetch(&pool, 1, addr).await.is_ok());
        assert!(fetch(&pool, 2, addr).await.is_ok());
        assert_eq!(opened.load(Ordering::SeqCst), 3);
        assert_eq!(settle(&closed, 2).await, 2);
    }

    #[tokio::test]
    async fn connections_the_backend_hung_up_are_never_an_error() {
        let (addr, opened, _) = backend(true).await;
        let pool = Arc::new(ConnPool::new("127.0.0.1".parse().expect("ip")));
        for i in 0..30 {
            assert_eq!(
                fetch(&pool, 1, addr).await.as_deref(),
                Ok(&b"ok"[..]),
                "request {i}"
            );
        }
        assert_eq!(opened.load(Ordering::SeqCst), 30);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_by_the_sweep() {
        let (addr, opened, closed) = backend(false).await;
        let pool = Arc::new(ConnPool::with_idle_for(
            "127.0.0.1".parse().expect("ip"),
            Duration::from_millis(100),
        ));
        assert!(fetch(&pool, 1, addr).await.is_ok());
        pool.sweep();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(closed.load(Ordering::SeqCst), 0, "not idle long enough yet");
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.sweep();
        assert_eq!(settle(&closed, 1).await, 1, "closed once idle too long");
        assert!(fetch(&pool, 1, addr).await.is_ok());
        assert_eq!(opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_sent() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let pool = Arc::new(ConnPool::new("127.0.0.1".parse().expect("ip")));
        match pool.send(1, addr, get()).await {
            Err(SendError::NotSent(e)) => assert!(e.contains("cannot connect"), "{e}"),
            Err(SendError::AfterSend(e)) => panic!("after send: {e}"),
            Ok(_) => panic!("answered by nobody"),
        }
    }
}
