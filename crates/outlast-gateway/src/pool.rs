//! A gateway worker's keep-alive connections to backends and to other sites' gateways, and
//! the HTTP/1.1 client that speaks on them.
//!
//! Each worker thread has its own pool (its runtime is single-threaded, so the lock is never
//! contended and no connection is shared between threads). A connection is checked out
//! for one request and comes back when the response body has been read to its end; one
//! whose response was abandoned part-way, that said `Connection: close`, or whose body ends
//! only when it closes, is dropped.
//!
//! The client side is written here rather than taken from hyper's client: the request is
//! written and its answer read by the very task that serves the client's connection, with no
//! connection task and no channel between them (those were a third of the gateway's work
//! per request). The server side, facing clients, stays hyper's. What the bytes read are
//! (a response head, its body's framing, chunked decoding) is `codec.rs`'s; here are the
//! sockets, the pool and the body that reads on. Interim 1xx answers are skipped.
//!
//! Stale connections: a pooled connection that the runtime has seen become readable is
//! peeked before it is used; one the backend has closed, or that has bytes nobody asked
//! for, is dropped. A
//! request on a pooled connection that meets a close or reset before any byte of an answer
//! (the backend's keep-alive timer raced the peek) goes to the next connection when it may
//! be sent again: nothing of it was written, or `replay_safe` (idempotent) says so. Either
//! way that race never reaches the retry logic. A new routing epoch empties the pool:
//! keep-alive connections to a demoted backend close once their requests are done. A sweep
//! every 10 s closes connections idle for over 30 s.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Response, Version};

use crate::codec::{invalid, parse_head, Answer, Framing, Step, MAX_HEAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Idle connections kept per target; more are closed when they come back.
const MAX_IDLE: usize = 512;
/// An idle connection older than this is closed instead of reused.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// How long a target has, once a request is on its way, to answer with a head; then the
/// request is answered 504 and not retried (HAProxy's `timeout server`).
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// Pooled connections tried for one request before a fresh one is opened.
const STALE_TRIES: usize = 4;
/// Room made in a connection's buffer before each read.
const READ_SIZE: usize = 16 << 10;

/// One connection to a target, with what was read from it and not yet consumed.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The answer deadline of the request on it. One timer for the connection's life: moving
    /// a registered deadline later is an atomic store, where a timer per request cost the
    /// gateway 6% of its instructions.
    timer: Pin<Box<tokio::time::Sleep>>,
}

pub(crate) struct ConnPool {
    source: IpAddr,
    idle_for: Duration,
    answer_within: Duration,
    idle: Mutex<Idle>,
    /// Per target: how new connections to it are opened (see [`Dial`]).
    dials: Mutex<rustc_hash::FxHashMap<SocketAddr, Arc<Dial>>>,
}

/// Connection attempts to one backend at once, per gateway worker.
const DIALS_AT_ONCE: usize = 4;
/// The same to another site's gateway: ours listens with a deep queue, and a burst of hops
/// across a long round trip must not wait on each other's handshakes.
const HOP_DIALS_AT_ONCE: usize = 64;
/// What one connection may take to open, all attempts together.
const CONNECT_WITHIN: Duration = Duration::from_secs(1);
/// One attempt's limit when nothing is known of the target yet.
const FIRST_ATTEMPT: Duration = Duration::from_millis(100);
/// Bounds of one attempt's limit once the target's connect time is known.
const ATTEMPT_MIN: Duration = Duration::from_millis(10);

/// How new connections to one target are opened. A burst of requests released at once
/// (those held during a failover) must not open a burst of connections: a backend's listen
/// queue (5 for Python's http.server) drops the SYNs past it, and a dropped SYN is sent
/// again only after a second, long after a client with a 2 s patience gave up (found by
/// probing: 76 of 92 released requests waited 1 s for their connect). So: a few attempts
/// at once, the rest wait their turn, and an attempt that takes ten times the target's usual
/// connect time is given up for a fresh one (a new SYN at once) within [`CONNECT_WITHIN`].
struct Dial {
    gate: tokio::sync::Semaphore,
    /// Smoothed connect time (µs); 0 until one succeeded.
    usual_us: std::sync::atomic::AtomicU64,
}

impl Dial {
    fn attempt_limit(&self) -> Duration {
        match self.usual_us.load(std::sync::atomic::Ordering::Relaxed) {
            0 => FIRST_ATTEMPT,
            us => Duration::from_micros(us.saturating_mul(10)).clamp(ATTEMPT_MIN, CONNECT_WITHIN),
        }
    }

    fn record(&self, took: Duration) {
        let us = took.as_micros().max(1) as u64;
        let old = self.usual_us.load(std::sync::atomic::Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 7 + us) / 8 };
        self.usual_us
            .store(new.max(1), std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Idle {
    epoch: u64,
    conns: rustc_hash::FxHashMap<SocketAddr, VecDeque<(Instant, Conn)>>,
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing reached the target: it refused or timed out the connection, or closed it
    /// before the request was written. Safe to retry whatever the method.
    NotSent(String),
    /// The request may have reached the target.
    AfterSend(String),
    /// The target took the request and gave no answer in time.
    TimedOut(String),
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

/// Whether a connection at rest can take a request: the other side has not closed it and
/// sent nothing unasked. It is peeked only when the runtime has seen it become readable
/// since it was last drained: most are not, and cost no system call.
fn at_rest(stream: &TcpStream) -> bool {
    let mut probe = [MaybeUninit::<u8>::uninit(); 1];
    match stream.try_io(Interest::READABLE, || {
        socket2::SockRef::from(stream).peek(&mut probe)
    }) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

impl ConnPool {
    pub(crate) fn new(source: IpAddr) -> Self {
        Self::with_times(source, IDLE_FOR, ANSWER_WITHIN)
    }

    fn with_times(source: IpAddr, idle_for: Duration, answer_within: Duration) -> Self {
        Self {
            source,
            idle_for,
            answer_within,
            idle: Mutex::new(Idle::default()),
            dials: Mutex::default(),
        }
    }

    fn dial(&self, addr: SocketAddr, hop: bool) -> Arc<Dial> {
        self.dials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Dial {
                    gate: tokio::sync::Semaphore::new(if hop {
                        HOP_DIALS_AT_ONCE
                    } else {
                        DIALS_AT_ONCE
                    }),
                    usual_us: std::sync::atomic::AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Closes connections idle for longer than the idle time, and those closed by the
    /// other side.
    pub(crate) fn sweep(&self) {
        let mut idle = self.lock();
        for list in idle.conns.values_mut() {
            list.retain(|(since, c)| since.elapsed() <= self.idle_for && at_rest(&c.stream));
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

    /// The newest idle connection to `addr` that can take a request now; older ones past
    /// the idle time, and any found closed, are dropped on the way.
    fn checkout(&self, epoch: u64, addr: SocketAddr) -> Option<Conn> {
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
        while let Some((_, conn)) = list.pop_back() {
            if at_rest(&conn.stream) {
                return Some(conn);
            }
        }
        None
    }

    fn give_back(&self, epoch: u64, addr: SocketAddr, conn: Conn) {
        if !conn.buf.is_empty() {
            return; // bytes past the answer: the other side does not frame as we do
        }
        let mut idle = self.lock();
        if !idle.at(epoch) {
            return;
        }
        let list = idle.conns.entry(addr).or_default();
        if list.len() < MAX_IDLE {
            list.push_back((outlast_core::clock::now(), conn));
        }
    }

    async fn connect(&self, addr: SocketAddr, hop: bool) -> Result<Conn, SendError> {
        let dial = self.dial(addr, hop);
        let started = outlast_core::clock::now();
        let timed_out =
            || SendError::NotSent(format!("cannot connect to {addr}: connect timed out"));
        let _turn = tokio::time::timeout(CONNECT_WITHIN, dial.gate.acquire())
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| timed_out())?;
        let stream = loop {
            let left = CONNECT_WITHIN.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(timed_out());
            }
            let attempt = outlast_core::clock::now();
            match tokio::time::timeout(
                dial.attempt_limit().min(left),
                crate::tcp::connect_from(self.source, addr),
            )
            .await
            {
                Ok(Ok(s)) => {
                    dial.record(attempt.elapsed());
                    break s;
                }
                Ok(Err(e)) => {
                    return Err(SendError::NotSent(format!("cannot connect to {addr}: {e}")))
                }
                Err(_) => continue, // a fresh socket: its SYN goes at once
            }
        };
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            timer: Box::pin(tokio::time::sleep(self.answer_within)),
        })
    }

    /// Sends `req` (see [`Wire`]) to `addr` on a pooled connection, or a new one.
    /// `replay_safe` (the request is idempotent) lets a request written to a pooled
    /// connection that closed without a word go to another connection. `hop`: `addr` is
    /// another site's gateway, not a backend.
    pub(crate) async fn send(
        self: &Arc<Self>,
        epoch: u64,
        addr: SocketAddr,
        req: &Outgoing,
        replay_safe: bool,
        hop: bool,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut stale = 0;
        loop {
            let pooled = if stale < STALE_TRIES {
                self.checkout(epoch, addr)
            } else {
                None
            };
            let fresh = pooled.is_none();
            let mut conn = match pooled {
                Some(c) => c,
                // Boxed: the connecting future is large and seldom needed.
                None => Box::pin(self.connect(addr, hop)).await?,
            };
            conn.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + self.answer_within);
            let exchanged = {
                let Conn { stream, buf, timer } = &mut conn;
                let mut exchange = std::pin::pin!(exchange(stream, buf, &req.bytes, req.head_only));
                std::future::poll_fn(|cx| match exchange.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
                })
                .await
            };
            let Some(exchanged) = exchanged else {
                return Err(SendError::TimedOut(format!(
                    "{addr} gave no answer within {} s",
                    self.answer_within.as_secs_f64()
                )));
            };
            match exchanged {
                Ok(answer) => {
                    let back = (self.clone(), epoch, addr);
                    return Ok(answer.into_response(conn, back));
                }
                Err(Failure::Unsent(e)) if fresh => {
                    return Err(SendError::NotSent(format!("{addr}: {e}")))
                }
                Err(Failure::Unsent(_)) => stale += 1,
                Err(Failure::Unanswered(_)) if !fresh && replay_safe => stale += 1,
                Err(Failure::Unanswered(e) | Failure::Broken(e)) => {
                    return Err(SendError::AfterSend(format!("{addr}: {e}")))
                }
            }
        }
    }
}

/// A request as written on the wire, built field by field: the request line, the fields
/// (the caller decides which), and a Content-Length for its body in place of any it had.
pub(crate) struct Wire {
    out: Vec<u8>,
    /// The method sends a length even for an empty body (or the client's request had one).
    says_length: bool,
    head_only: bool,
}

/// A request ready to send: its bytes, and whether it is a HEAD request (whose answer has
/// no body whatever its head says).
pub(crate) struct Outgoing {
    bytes: Vec<u8>,
    head_only: bool,
}

impl Wire {
    pub(crate) fn new(method: &Method, target: &str) -> Self {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        Self {
            out,
            says_length: matches!(*method, Method::POST | Method::PUT | Method::PATCH),
            head_only: *method == Method::HEAD,
        }
    }

    pub(crate) fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == header::CONTENT_LENGTH {
            self.says_length = true;
            return;
        }
        self.out.extend_from_slice(name.as_str().as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub(crate) fn finish(mut self, body: &[u8]) -> Outgoing {
        if !body.is_empty() || self.says_length {
            self.out.extend_from_slice(b"content-length: ");
            self.out
                .extend_from_slice(body.len().to_string().as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        Outgoing {
            bytes: self.out,
            head_only: self.head_only,
        }
    }
}

/// How one exchange on a connection failed.
enum Failure {
    /// Not a byte of the request was written.
    Unsent(io::Error),
    /// The request was written and the connection closed or reset before any byte of an
    /// answer: on a pooled connection, most likely its keep-alive timer ran out.
    Unanswered(io::Error),
    /// Anything else after the request went out: a broken or garbled answer.
    Broken(io::Error),
}

/// Writes `wire` and reads the answer's head. A write that fails part-way still looks for
/// an answer (a backend may answer, say 413, before it has read the whole body), and so
/// does one the backend stops taking: an answer that comes before the whole request has
/// gone is taken as it is, and the connection is not used again.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    wire: &[u8],
    head_only: bool,
) -> Result<Answer, Failure> {
    let mut written = 0;
    let mut write_error = None;
    let mut received = false;
    // What the socket takes at once (all of it, but for large bodies): one system call.
    while written < wire.len() {
        match stream.try_write(&wire[written..]) {
            Ok(0) => {
                write_error = Some(io::Error::from(io::ErrorKind::WriteZero));
                break;
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match write_or_early_answer(stream, buf, wire, &mut written, head_only).await {
                    Ok(Some(answer)) => return Ok(answer),
                    Ok(None) => {}
                    Err(e) => write_error = Some(e),
                }
                received = !buf.is_empty();
                break;
            }
            Err(e) => {
                write_error = Some(e);
                break;
            }
        }
    }
    if let Some(e) = write_error.take() {
        if written == 0 {
            return Err(Failure::Unsent(e));
        }
        write_error = Some(e);
    }
    loop {
        match parse_head(buf, head_only) {
            Ok(Some(mut answer)) => {
                if write_error.is_some() {
                    answer.keep_alive = false;
                }
                return Ok(answer);
            }
            Ok(None) => {}
            Err(e) => return Err(Failure::Broken(e)),
        }
        if buf.len() > MAX_HEAD {
            return Err(Failure::Broken(invalid(format!(
                "response head over {MAX_HEAD} bytes"
            ))));
        }
        buf.reserve(READ_SIZE);
        let read = stream.read_buf(buf).await;
        let closed = match read {
            Ok(0) => io::Error::new(io::ErrorKind::UnexpectedEof, "closed before answering"),
            Ok(_) => {
                received = true;
                continue;
            }
            Err(e) => e,
        };
        let e = write_error.unwrap_or(closed);
        return Err(if received {
            Failure::Broken(e)
        } else {
            Failure::Unanswered(e)
        });
    }
}

/// Writes the rest of `wire` as the backend takes it, reading what it sends meanwhile:
/// a final answer's head that comes first is returned (not to be kept alive: the request
/// was cut short). `Ok(None)` once all is written; an error ends the writing (a backend
/// that hung up may still have answered, which the caller reads).
async fn write_or_early_answer(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    wire: &[u8],
    written: &mut usize,
    head_only: bool,
) -> io::Result<Option<Answer>> {
    let (mut rd, mut wr) = stream.split();
    while *written < wire.len() {
        buf.reserve(READ_SIZE);
        tokio::select! {
            w = wr.write(&wire[*written..]) => match w {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => *written += n,
                Err(e) => return Err(e),
            },
            r = rd.read_buf(buf) => {
                if r? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed while the request was sent",
                    ));
                }
                if let Some(mut answer) = parse_head(buf, head_only)? {
                    answer.keep_alive = false;
                    return Ok(Some(answer));
                }
            }
        }
    }
    Ok(None)
}

type Back = (Arc<ConnPool>, u64, SocketAddr);

impl Answer {
    /// The response to pass on. A body already read whole (the usual small answer) frees
    /// its connection at once; otherwise the body reads on and frees it at its end.
    fn into_response(self, mut conn: Conn, back: Back) -> Response<PooledBody> {
        // How long a streaming body may go without a byte before it is cut.
        let quiet_for = back.0.answer_within;
        let body = match self.framing {
            Framing::Length(n) if n <= conn.buf.len() as u64 => {
                let data = conn.buf.split_to(n as usize).freeze();
                if self.keep_alive {
                    let (pool, epoch, addr) = back;
                    pool.give_back(epoch, addr, conn);
                }
                PooledBody::Whole(Some(data))
            }
            framing => {
                conn.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + quiet_for);
                PooledBody::Streaming(Box::new(Streaming {
                    conn: Some(conn),
                    framing,
                    back: self.keep_alive.then_some(back),
                    quiet_for,
                }))
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        *resp.version_mut() = Version::HTTP_11;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// A body still being read from its connection.
pub(crate) struct Streaming {
    /// `None` once the body has ended (the connection went back, or was closed).
    conn: Option<Conn>,
    framing: Framing,
    /// Where the connection goes back once the body ends (`None`: it is closed instead).
    back: Option<Back>,
    /// The body is cut (an error to the client) after this long without a byte.
    quiet_for: Duration,
}

/// A backend's response body: read whole with the head, or still on its connection, which
/// goes back to the pool once the body has been read to its end.
pub(crate) enum PooledBody {
    Whole(Option<Bytes>),
    Streaming(Box<Streaming>),
}

impl Streaming {
    /// The body has been read to its end: its connection goes back to the pool, or closes.
    fn end(&mut self) {
        if let (Some(conn), Some((pool, epoch, addr))) = (self.conn.take(), self.back.take()) {
            pool.give_back(epoch, addr, conn);
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing.step(&mut conn.buf) {
                Err(e) => return self.fail(e),
                Ok(Step::Data(data)) => {
                    if matches!(self.framing, Framing::Length(0)) {
                        self.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    self.end();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
            }
            conn.buf.reserve(READ_SIZE);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf) {
                Poll::Pending => {
                    if conn.timer.as_mut().poll(cx).is_ready() {
                        let secs = self.quiet_for.as_secs_f64();
                        return self.fail(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the backend sent no byte of the body for {secs} s"),
                        ));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) if matches!(self.framing, Framing::Close) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    return self.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection inside a response body",
                    ))
                }
                Poll::Ready(Ok(_)) => {
                    conn.timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.quiet_for);
                }
                Poll::Ready(Err(e)) => return self.fail(e),
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        match self.get_mut() {
            PooledBody::Whole(data) => Poll::Ready(
                data.take()
                    .filter(|d| !d.is_empty())
                    .map(|d| Ok(Frame::data(d))),
            ),
            PooledBody::Streaming(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PooledBody::Whole(data) => data.as_ref().is_none_or(Bytes::is_empty),
            PooledBody::Streaming(s) => s.conn.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            PooledBody::Whole(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            PooledBody::Streaming(s) => match (&s.conn, &s.framing) {
                (None, _) => SizeHint::with_exact(0),
                (Some(_), Framing::Length(n)) => SizeHint::with_exact(*n),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::header::HeaderMap;
    use hyper::StatusCode;

    use crate::codec::{Chunked, MAX_CHUNK_LINE};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use hyper::Request;

    use super::*;

    /// What a test backend does with the `n`th request (from 0) on a connection, given its
    /// head: the bytes to answer (in pieces, each written on its own), and whether to hang
    /// up after them. No pieces and a hang-up: it closes without answering.
    type Script = fn(usize, &str) -> (Vec<Vec<u8>>, bool);

    /// A keep-alive HTTP/1.1 server run by `script`; counts connections opened and closed
    /// by the client.
    async fn backend(script: Script) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
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
                    let mut chunk = [0u8; 4096];
                    let mut n = 0;
                    loop {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                c.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            let body = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if buf.len() < end + 4 + body {
                                break;
                            }
                            buf.drain(..end + 4 + body);
                            let (pieces, hang_up) = script(n, &head);
                            n += 1;
                            for (i, p) in pieces.iter().enumerate() {
                                if i > 0 {
                                    tokio::time::sleep(Duration::from_millis(2)).await;
                                }
                                if s.write_all(p).await.is_err() {
                                    return;
                                }
                            }
                            if hang_up {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, opened, closed)
    }

    fn ok(_: usize, _: &str) -> (Vec<Vec<u8>>, bool) {
        (
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()],
            false,
        )
    }

    fn ok_then_hang_up(_: usize, _: &str) -> (Vec<Vec<u8>>, bool) {
        (
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()],
            true,
        )
    }

    fn request(method: Method, body: &'static [u8]) -> Request<Bytes> {
        let mut r = Request::new(Bytes::from_static(body));
        *r.method_mut() = method;
        r.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("backend"));
        r
    }

    /// The request on the wire, its fields as they are.
    fn encode(req: &Request<Bytes>) -> Outgoing {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut wire = Wire::new(req.method(), target);
        for (n, v) in req.headers() {
            wire.field(n, v);
        }
        wire.finish(req.body())
    }

    async fn send(
        pool: &Arc<ConnPool>,
        epoch: u64,
        addr: SocketAddr,
        req: Request<Bytes>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let idempotent = req.method() != Method::POST;
        let resp = pool
            .send(epoch, addr, &encode(&req), idempotent, false)
            .await
            .map_err(|e| match e {
                SendError::NotSent(e) => format!("not sent: {e}"),
                SendError::AfterSend(e) => format!("after send: {e}"),
                SendError::TimedOut(e) => format!("timed out: {e}"),
            })?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| format!("body: {e}"))?;
        Ok((parts.status, parts.headers, body.to_bytes()))
    }

    async fn fetch(pool: &Arc<ConnPool>, epoch: u64, addr: SocketAddr) -> Result<Bytes, String> {
        send(pool, epoch, addr, request(Method::GET, b""))
            .await
            .map(|(_, _, b)| b)
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

    fn pool() -> Arc<ConnPool> {
        Arc::new(ConnPool::new("127.0.0.1".parse().expect("ip")))
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (addr, opened, _) = backend(ok).await;
        let pool = pool();
        for _ in 0..50 {
            assert_eq!(fetch(&pool, 1, addr).await.as_deref(), Ok(&b"ok"[..]));
        }
        assert_eq!(opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_new_epoch_closes_idle_connections() {
        let (addr, opened, closed) = backend(ok).await;
        let pool = pool();
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
        let (addr, opened, _) = backend(ok_then_hang_up).await;
        let pool = pool();
        for i in 0..30 {
            // A POST too: the hang-up is seen before the request is written.
            let req = request(
                if i % 2 == 0 {
                    Method::GET
                } else {
                    Method::POST
                },
                b"x",
            );
            let got = send(&pool, 1, addr, req).await.map(|(_, _, b)| b);
            assert_eq!(got.as_deref(), Ok(&b"ok"[..]), "request {i}");
        }
        assert_eq!(opened.load(Ordering::SeqCst), 30);
    }

    /// Answers the first request on a connection; reads the second and closes without a
    /// word (its keep-alive timer ran out as the request arrived).
    fn closes_at_the_second(n: usize, _: &str) -> (Vec<Vec<u8>>, bool) {
        if n == 0 {
            ok(n, "")
        } else {
            (Vec::new(), true)
        }
    }

    #[tokio::test]
    async fn an_unanswered_pooled_request_goes_again_only_when_idempotent() {
        let (addr, opened, _) = backend(closes_at_the_second).await;
        let pool = pool();
        assert!(fetch(&pool, 1, addr).await.is_ok());
        assert_eq!(
            fetch(&pool, 1, addr).await.as_deref(),
            Ok(&b"ok"[..]),
            "a GET goes to a new connection"
        );
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        let got = send(&pool, 1, addr, request(Method::POST, b"pay")).await;
        match got {
            Err(e) => assert!(e.starts_with("after send:"), "{e}"),
            Ok(_) => panic!("a POST the backend may have seen was sent twice"),
        }
        assert_eq!(
            opened.load(Ordering::SeqCst),
            2,
            "and not on a new connection"
        );
    }

    #[tokio::test]
    async fn idle_connections_are_closed_by_the_sweep() {
        let (addr, opened, closed) = backend(ok).await;
        let pool = Arc::new(ConnPool::with_times(
            "127.0.0.1".parse().expect("ip"),
            Duration::from_millis(100),
            ANSWER_WITHIN,
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

    /// A backend with a listen queue of one that takes its connections slowly (as python's
    /// http.server with its queue of 5 does under a burst): SYNs past the queue are dropped,
    /// and the kernel would send each again only after a second. Forty requests at once
    /// must all be answered well before that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_new_connections_to_a_short_listen_queue_is_not_held_a_second() {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
            .expect("bind");
        socket.listen(1).expect("listen");
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().expect("addr");
        // A plain thread stands for the backend's own accept loop, slow on purpose.
        #[allow(clippy::disallowed_methods)]
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::sleep(Duration::from_millis(2));
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut s = stream;
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                });
            }
        });
        let pool = pool();
        let started = outlast_core::clock::now();
        let all: Vec<_> = (0..40)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { fetch(&pool, 1, addr).await })
            })
            .collect();
        for r in all {
            assert_eq!(r.await.expect("task"), Ok(Bytes::from_static(b"ok")));
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(900),
            "40 answers took {took:?}: dropped SYNs waited out the kernel's second"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_sent() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        match pool()
            .send(1, addr, &encode(&request(Method::GET, b"")), true, false)
            .await
        {
            Err(SendError::NotSent(e)) => assert!(e.contains("cannot connect"), "{e}"),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("answered by nobody"),
        }
    }

    fn never_answers(_: usize, _: &str) -> (Vec<Vec<u8>>, bool) {
        (Vec::new(), false)
    }

    /// A head and part of the body, then silence with the connection open.
    fn stalls_in_the_body(_: usize, _: &str) -> (Vec<Vec<u8>>, bool) {
        (
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec()],
            false,
        )
    }

    /// What one GET to a backend run by `script` comes to, through a pool whose targets
    /// have 200 ms to answer; the test fails if it takes over 5 s.
    async fn fetch_impatiently(script: Script) -> Result<Bytes, String> {
        let (addr, _, _) = backend(script).await;
        let pool = Arc::new(ConnPool::with_times(
            "127.0.0.1".parse().expect("ip"),
            IDLE_FOR,
            Duration::from_millis(200),
        ));
        tokio::time::timeout(Duration::from_secs(5), fetch(&pool, 1, addr))
            .await
            .expect("held past 5 s")
    }

    /// A backend that answers 413 to a large upload as soon as it has the head, reads no
    /// more of it and keeps the connection open: the client gets the 413 at once, not a
    /// 504 once the answer deadline passes, and the connection is not used again.
    #[tokio::test]
    async fn an_answer_before_the_whole_body_is_taken_as_it_comes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let opened = Arc::new(AtomicUsize::new(0));
        let o = opened.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                o.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if !matches!(s.read(&mut byte).await, Ok(1)) {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig";
                    let _ = s.write_all(answer).await;
                    tokio::time::sleep(Duration::from_secs(10)).await;
                });
            }
        });
        let pool = Arc::new(ConnPool::with_times(
            "127.0.0.1".parse().expect("ip"),
            IDLE_FOR,
            Duration::from_secs(2),
        ));
        // Far more than the socket buffers of both ends hold.
        let mut req = request(Method::POST, b"");
        *req.body_mut() = Bytes::from(vec![b'x'; 32 << 20]);
        let got = tokio::time::timeout(Duration::from_secs(5), send(&pool, 1, addr, req))
            .await
            .expect("held past 5 s");
        let (status, _, body) = got.expect("the early answer");
        assert_eq!(
            (status, &body[..]),
            (StatusCode::PAYLOAD_TOO_LARGE, &b"big"[..])
        );
        fetch(&pool, 1, addr).await.ok();
        assert_eq!(
            opened.load(Ordering::SeqCst),
            2,
            "the cut connection was reused"
        );
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_cut() {
        let got = fetch_impatiently(stalls_in_the_body).await;
        assert!(
            matches!(&got, Err(e) if e.starts_with("body:") && e.contains("no byte of the body")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_target_that_never_answers_times_out() {
        let got = fetch_impatiently(never_answers).await;
        assert!(
            matches!(&got, Err(e) if e.starts_with("timed out:")),
            "{got:?}"
        );
    }

    /// A 1 MiB body of a known pattern, and the same body chunked in uneven chunks with an
    /// extension and a trailer.
    fn big() -> Vec<u8> {
        (0..1 << 20).map(|i: u32| (i % 251) as u8).collect()
    }

    fn chunked(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut size = 1;
        while !rest.is_empty() {
            let n = size.min(rest.len());
            out.extend_from_slice(format!("{n:x};ext=1\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
            size = size * 3 + 7;
        }
        out.extend_from_slice(b"0\r\nx-sum: 1\r\n\r\n");
        out
    }

    /// By path: /chunked, /close (ends when the connection does), /short (fewer bytes
    /// than its Content-Length, then a hang-up), /continue (a 100 first), /empty (204).
    fn bodies(_: usize, head: &str) -> (Vec<Vec<u8>>, bool) {
        let path = head.split(' ').nth(1).unwrap_or("/");
        let body = big();
        match path {
            "/chunked" => {
                let mut all = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                all.extend(chunked(&body));
                (all.chunks(300_000).map(<[u8]>::to_vec).collect(), false)
            }
            "/close" => {
                let mut all = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
                all.extend(&body);
                (all.chunks(300_000).map(<[u8]>::to_vec).collect(), true)
            }
            "/short" => (
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec()],
                true,
            ),
            "/continue" => (
                vec![
                    b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                ],
                false,
            ),
            "/empty" => (
                vec![b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n".to_vec()],
                false,
            ),
            _ => ok(0, head),
        }
    }

    fn get(path: &'static str) -> Request<Bytes> {
        let mut r = request(Method::GET, b"");
        *r.uri_mut() = hyper::Uri::from_static(path);
        r
    }

    #[tokio::test]
    async fn bodies_are_framed_as_the_backend_frames_them() {
        let (addr, opened, _) = backend(bodies).await;
        let pool = pool();
        let (status, headers, body) = send(&pool, 1, addr, get("/chunked"))
            .await
            .expect("chunked");
        assert_eq!(status, StatusCode::OK);
        assert!(
            !headers.contains_key(header::TRANSFER_ENCODING),
            "the coding is this hop's; hyper frames the body again"
        );
        assert!(
            body == big(),
            "chunked body decoded whole ({} bytes)",
            body.len()
        );
        assert!(fetch(&pool, 1, addr).await.is_ok());
        assert_eq!(
            opened.load(Ordering::SeqCst),
            1,
            "a chunked answer keeps its connection"
        );

        let (_, _, body) = send(&pool, 1, addr, get("/close")).await.expect("close");
        assert!(body == big(), "close-delimited body read to the close");
        assert!(fetch(&pool, 1, addr).await.is_ok());
        assert_eq!(
            opened.load(Ordering::SeqCst),
            2,
            "and that one is not reused"
        );

        let (status, _, body) = send(&pool, 1, addr, get("/continue")).await.expect("100");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        let (status, headers, body) = send(&pool, 1, addr, get("/empty")).await.expect("204");
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(body.is_empty() && headers.contains_key("x-a"));
        let mut head = get("/");
        *head.method_mut() = Method::HEAD;
        let (_, headers, body) = send(&pool, 1, addr, head).await.expect("HEAD");
        assert!(body.is_empty(), "no body after HEAD");
        assert_eq!(
            headers.get(header::CONTENT_LENGTH).map(|v| v.as_bytes()),
            Some(&b"2"[..])
        );
        assert!(fetch(&pool, 1, addr).await.is_ok());
        assert_eq!(
            opened.load(Ordering::SeqCst),
            3,
            "100, 204 and HEAD answers keep theirs"
        );

        let cut = send(&pool, 1, addr, get("/short")).await;
        assert!(matches!(&cut, Err(e) if e.starts_with("body:")), "{cut:?}");
    }

    #[test]
    fn chunked_decoding_is_the_same_whatever_the_reads() {
        let body: Vec<u8> = big().into_iter().take(5000).collect();
        let mut wire = chunked(&body);
        wire.extend_from_slice(b"NEXT");
        for piece in [1, 2, 3, 7, 64, 1000, wire.len()] {
            let mut state = Chunked::Size;
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut fed = 0;
            let ended = loop {
                match state.step(&mut buf).expect("valid") {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::End => break true,
                    Step::More if fed < wire.len() => {
                        let n = piece.min(wire.len() - fed);
                        buf.extend_from_slice(&wire[fed..fed + n]);
                        fed += n;
                    }
                    Step::More => break false,
                }
            };
            assert!(ended, "pieces of {piece}: end found");
            assert!(out == body, "pieces of {piece}: body intact");
            let rest = [&buf[..], &wire[fed..]].concat();
            assert_eq!(
                rest, b"NEXT",
                "pieces of {piece}: nothing past the end taken"
            );
        }
    }

    #[test]
    fn bad_chunked_bodies_are_errors() {
        let long = format!("{}\r\n", "0".repeat(MAX_CHUNK_LINE));
        for bad in [
            "zz\r\n",
            "\r\n",
            "10000000000000000\r\n",
            "2\r\nabXY",
            long.as_str(),
        ] {
            let mut state = Chunked::Size;
            let mut buf = BytesMut::from(bad.as_bytes());
            let r = loop {
                match state.step(&mut buf) {
                    Ok(Step::Data(_)) => {}
                    other => break other,
                }
            };
            assert!(r.is_err(), "{bad:?} taken");
        }
    }

    fn head(text: &str, head_only: bool) -> io::Result<Option<Answer>> {
        parse_head(&mut BytesMut::from(text.as_bytes()), head_only)
    }

    #[test]
    fn response_heads_say_how_the_body_ends() {
        let framing = |text: &str| -> (String, bool) {
            match head(text, false) {
                Ok(Some(a)) => (
                    match a.framing {
                        Framing::Length(n) => format!("length {n}"),
                        Framing::Chunked(_) => "chunked".into(),
                        Framing::Close => "close".into(),
                    },
                    a.keep_alive,
                ),
                Ok(None) => ("partial".into(), false),
                Err(e) => (format!("error: {e}"), false),
            }
        };
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                "length 5",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
                "length 5",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
                "chunked",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                "close",
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", "close", false),
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                "length 1",
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                "length 1",
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                "length 1",
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                "length 0",
                true,
            ),
            (
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                "length 0",
                true,
            ),
            ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2", "partial", false),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                "error: content-length values disagree",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "error: bad content-length",
                false,
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\n\r\n",
                "error: 101 Switching Protocols to a request that asked for none",
                false,
            ),
        ];
        for (text, want, keep) in cases {
            assert_eq!(framing(text), (want.to_string(), keep), "{text:?}");
        }
        assert!(head("garbage\r\n\r\n", false).is_err());
        match head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true) {
            Ok(Some(a)) => assert!(matches!(a.framing, Framing::Length(0))),
            _ => panic!("HEAD answer not parsed"),
        }
    }

    #[test]
    fn hop_by_hop_fields_of_an_answer_are_not_passed_on() {
        let text = "HTTP/1.1 200 OK\r\nServer: n\r\nConnection: keep-alive, X-Private\r\n\
                    X-Private: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\
                    Content-Length: 7\r\nTrailer: x-sum\r\nX-Kept: 2\r\n\r\n";
        let Ok(Some(answer)) = head(text, false) else {
            panic!("not parsed");
        };
        let mut names: Vec<&str> = answer.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["server", "x-kept"],
            "a length beside a coding goes too"
        );
        assert!(matches!(answer.framing, Framing::Chunked(_)) && answer.keep_alive);
    }

    #[test]
    fn requests_are_written_with_their_length() {
        let text = |r: Request<Bytes>| String::from_utf8(encode(&r).bytes).expect("utf-8");
        assert_eq!(
            text(get("/a?b=1")),
            "GET /a?b=1 HTTP/1.1\r\nhost: backend\r\n\r\n"
        );
        assert_eq!(
            text(request(Method::POST, b"")),
            "POST / HTTP/1.1\r\nhost: backend\r\ncontent-length: 0\r\n\r\n"
        );
        let mut r = request(Method::PUT, b"abc");
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        assert_eq!(
            text(r),
            "PUT / HTTP/1.1\r\nhost: backend\r\ncontent-length: 3\r\n\r\nabc"
        );
    }
}
