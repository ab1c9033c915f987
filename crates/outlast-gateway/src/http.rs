//! The HTTP gateway: HTTP/1.1 and h2c from clients, HTTP/1.1 to backends, WebSocket
//! upgrades passed through byte for byte.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::pool::{ConnPool, SendError};
use crate::routes::{Balancer, LeaseClock, Routes, Stats, Target};
use crate::HOP_HEADER;

type Body = BoxBody<Bytes, std::io::Error>;

/// Attempts per request at most (the first try and two retries).
const MAX_ATTEMPTS: usize = 3;
/// How long a request that found nowhere to go waits for the routing to change (a failover
/// in progress) before it is answered 503. Only requests that reached no backend wait.
const WAIT_FOR_ROUTE: Duration = Duration::from_secs(5);
/// Largest request body the gateway buffers (it must, to retry).
const MAX_BODY: usize = 16 << 20;

/// The hop-by-hop headers of RFC 9110 section 7.6.1 and their older kin. A static, so the
/// custom names are not built and dropped at every use as a constant's would be.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where `name` (lower case, as header names are kept) is in [`HOP_BY_HOP`]. A match on the
/// bytes, not a search of the list: that tripled the cost of [`scan`] (a unit test keeps
/// the two in step).
fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"connection" => 0,
        b"keep-alive" => 1,
        b"proxy-connection" => 2,
        b"proxy-authenticate" => 3,
        b"proxy-authorization" => 4,
        b"te" => 5,
        b"trailer" => 6,
        b"transfer-encoding" => 7,
        b"upgrade" => 8,
        _ => return None,
    })
}

/// The options a Connection header value lists (comma separated, blanks trimmed).
fn connection_options(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a Connection option names a header that is not hop-by-hop already ("close" names
/// none). Options are case-insensitive; hop-by-hop names are at most 19 bytes.
fn names_another_header(option: &[u8]) -> bool {
    if option.eq_ignore_ascii_case(b"close") {
        return false;
    }
    let mut lower = [0u8; 19];
    match lower.get_mut(..option.len()) {
        Some(buf) => {
            buf.copy_from_slice(option);
            buf.make_ascii_lowercase();
            hop_by_hop_index(buf).is_none()
        }
        None => true,
    }
}
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// One service's HTTP gateway at one site.
pub struct HttpGateway {
    service: String,
    site: String,
    source: IpAddr,
    routes: watch::Receiver<Arc<Routes>>,
    balancer: Balancer,
    retries: AtomicU64,
    stats: Arc<Stats>,
    lease: Arc<LeaseClock>,
    /// Metric handles registered once: answers by status class, and request time.
    answered: [metrics::Counter; 5],
    seconds: metrics::Histogram,
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into() + "\n"))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn unavailable(msg: impl Into<String>) -> Response<Body> {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// What the gateway needs to know of a message's headers, found in one pass over their
/// names. (Asking the map for each of the nine hop-by-hop names hashes every one of them on
/// every message: a tenth of the gateway's own work per request in a profile.)
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    /// Which of [`HOP_BY_HOP`] are present, a bit each.
    hop_by_hop: u16,
    host: bool,
    idempotency_key: bool,
    /// The request already crossed one gateway (our hop header).
    hopped: bool,
}

impl Scan {
    fn has(&self, hop_by_hop: usize) -> bool {
        self.hop_by_hop & (1 << hop_by_hop) != 0
    }
}

/// Positions in [`HOP_BY_HOP`].
const CONNECTION: usize = 0;
const UPGRADE: usize = 8;

fn scan(headers: &HeaderMap) -> Scan {
    let mut s = Scan::default();
    for name in headers.keys() {
        let text = name.as_str();
        if let Some(i) = hop_by_hop_index(text.as_bytes()) {
            s.hop_by_hop |= 1 << i;
        } else if *name == header::HOST {
            s.host = true;
        } else if text == IDEMPOTENCY_KEY {
            s.idempotency_key = true;
        } else if text == HOP_HEADER {
            s.hopped = true;
        }
    }
    s
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn is_idempotent(method: &Method, scan: &Scan) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || scan.idempotency_key
}

fn is_upgrade(headers: &HeaderMap, scan: &Scan) -> bool {
    scan.has(UPGRADE)
        && scan.has(CONNECTION)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(connection_options)
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// Removes the hop-by-hop headers, and those the Connection header names, from a message;
/// `scan` says which are there, so nothing is looked up that is not.
fn strip_hop_by_hop(headers: &mut HeaderMap, scan: &Scan) {
    if scan.hop_by_hop == 0 {
        return;
    }
    if scan.has(CONNECTION) {
        let options = headers.get_all(header::CONNECTION);
        if options
            .iter()
            .flat_map(connection_options)
            .any(names_another_header)
        {
            let named: Vec<HeaderName> = headers
                .keys()
                .filter(|name| {
                    options
                        .iter()
                        .flat_map(connection_options)
                        .any(|t| t.eq_ignore_ascii_case(name.as_str().as_bytes()))
                })
                .cloned()
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if scan.has(i) {
            headers.remove(name);
        }
    }
}

impl HttpGateway {
    pub fn new(
        service: &str,
        site: &str,
        source: IpAddr,
        routes: watch::Receiver<Arc<Routes>>,
        stats: Arc<Stats>,
        lease: Arc<LeaseClock>,
    ) -> Self {
        Self {
            service: service.to_string(),
            site: site.to_string(),
            source,
            routes,
            balancer: Balancer::default(),
            retries: AtomicU64::new(0),
            stats,
            lease,
            answered: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                metrics::counter!("outlast_gateway_requests_total", "service" => service.to_string(), "class" => class)
            }),
            seconds: metrics::histogram!("outlast_gateway_request_seconds", "service" => service.to_string()),
        }
    }

    fn refused(&self) -> bool {
        self.routes
            .borrow()
            .services
            .get(&self.service)
            .is_some_and(|r| r.refuses(&self.lease))
    }

    /// Retry budget: retries may add at most 20% to the requests, plus a small allowance.
    fn take_retry(&self) -> bool {
        let requests = self.stats.requests();
        let retries = self.retries.load(Ordering::Relaxed);
        if retries < requests / 5 + 10 {
            self.retries.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("outlast_gateway_retries_total", "service" => self.service.clone())
                .increment(1);
            true
        } else {
            false
        }
    }

    /// The request as sent to `target`. `client` is the client's address as a header
    /// value (made once per connection); `scan` is what [`scan`] found in `parts.headers`.
    fn outgoing<B>(
        &self,
        parts: &Parts,
        scan: &Scan,
        body: B,
        target: &Target,
        client: &HeaderValue,
    ) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.version_mut() = Version::HTTP_11;
        // Origin form, as HTTP/1.1 sends it to a server (h2c requests arrive absolute).
        *req.uri_mut() = match parts.uri.path_and_query() {
            Some(_) if parts.uri.scheme().is_none() && parts.uri.authority().is_none() => {
                parts.uri.clone()
            }
            Some(p) => hyper::Uri::from(p.clone()),
            None => hyper::Uri::from_static("/"),
        };
        let mut headers = parts.headers.clone();
        let upgrade_value = is_upgrade(&headers, scan)
            .then(|| headers.get(header::UPGRADE).cloned())
            .flatten();
        strip_hop_by_hop(&mut headers, scan);
        if !scan.host {
            if let Some(a) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(header::HOST, a);
            }
        }
        match headers.entry(X_FORWARDED_FOR.clone()) {
            header::Entry::Occupied(mut prev) => {
                if let Ok(v) = HeaderValue::from_bytes(
                    &[prev.get().as_bytes(), b", ", client.as_bytes()].concat(),
                ) {
                    prev.insert(v);
                }
            }
            header::Entry::Vacant(e) => {
                e.insert(client.clone());
            }
        }
        if target.remote {
            if let Ok(v) = HeaderValue::from_str(&self.site) {
                headers.insert(HOP_HEADER, v);
            }
        }
        if let Some(u) = upgrade_value {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u);
        }
        *req.headers_mut() = headers;
        req
    }

    /// Where the routing sends a request now: `Err(())` when this site refuses the service,
    /// `Ok(None)` when there is nowhere to go yet.
    fn targets_now(&self, may_hop: bool) -> Result<Option<(u64, Vec<Target>)>, ()> {
        let routes = self.routes.borrow();
        let Some(route) = routes.services.get(&self.service) else {
            return Ok(None);
        };
        if route.refuses(&self.lease) {
            return Err(());
        }
        let targets = self.balancer.targets(route, may_hop);
        Ok((!targets.is_empty()).then_some((route.epoch, targets)))
    }

    /// Waits until the routing offers somewhere to go, up to `until`. The usual case (it
    /// does now) is answered without building the waiting future, which would make every
    /// request's future larger.
    async fn wait_for_targets(&self, may_hop: bool, until: Instant) -> Option<(u64, Vec<Target>)> {
        match self.targets_now(may_hop) {
            Err(()) => None,
            Ok(Some(found)) => Some(found),
            Ok(None) => Box::pin(self.wait_for_route_change(may_hop, until)).await,
        }
    }

    async fn wait_for_route_change(
        &self,
        may_hop: bool,
        until: Instant,
    ) -> Option<(u64, Vec<Target>)> {
        let mut rx = self.routes.clone();
        loop {
            match self.targets_now(may_hop) {
                Err(()) => return None,
                Ok(Some(found)) => return Some(found),
                Ok(None) => {}
            }
            let left = until.checked_duration_since(Instant::now())?;
            if tokio::time::timeout(left, rx.changed())
                .await
                .ok()?
                .is_err()
            {
                return None;
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        pool: Arc<ConnPool>,
        req: Request<Incoming>,
        client: HeaderValue,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        self.stats.request();
        let resp = self.route_request(&pool, req, &client).await;
        let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
        self.answered[class].increment(1);
        self.seconds.record(started.elapsed().as_secs_f64());
        Ok(resp)
    }

    async fn route_request(
        &self,
        pool: &Arc<ConnPool>,
        mut req: Request<Incoming>,
        client: &HeaderValue,
    ) -> Response<Body> {
        if self.refused() {
            return unavailable(format!(
                "site {} is fenced; {} is served elsewhere",
                self.site, self.service
            ));
        }
        let scan = scan(req.headers());
        let may_hop = !scan.hopped;
        if is_upgrade(req.headers(), &scan) {
            let on_upgrade = hyper::upgrade::on(&mut req);
            let (parts, _) = req.into_parts();
            return Box::pin(self.upgrade(parts, &scan, on_upgrade, client, may_hop)).await;
        }
        let (parts, body) = req.into_parts();
        // Most GETs have no body: no collecting future to drive for them.
        let body = if hyper::body::Body::is_end_stream(&body) {
            Bytes::new()
        } else {
            match Box::pin(Limited::new(body, MAX_BODY).collect()).await {
                Ok(c) => c.to_bytes(),
                Err(e)
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body over {MAX_BODY} bytes"),
                    );
                }
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the request body: {e}"),
                    )
                }
            }
        };
        let idempotent = is_idempotent(&parts.method, &scan);
        let deadline = Instant::now() + WAIT_FOR_ROUTE;
        let mut last_error = String::from("no site can serve it");
        let mut backoff = Duration::from_millis(50);
        // Rounds: each tries every target once (always a different one within a round).
        // When every attempt of a round failed (none sent, or the request is idempotent), a
        // new round starts after the routing changed (a failover) or a short back-off (a
        // backend busy accepting), until the deadline: a GET in flight when a primary's
        // backend dies is answered by the new primary. Retries within a round draw on the
        // retry budget; rounds do not.
        loop {
            let Some((epoch, targets)) = self.wait_for_targets(may_hop, deadline).await else {
                return unavailable(format!("{}: {last_error}", self.service));
            };
            // What each attempt of this round met, for the answer if none succeeds.
            let mut round: Vec<String> = Vec::new();
            for (i, t) in targets.iter().take(MAX_ATTEMPTS).enumerate() {
                if i > 0 && !self.take_retry() {
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "{}: retry budget spent after: {}",
                            self.service,
                            round.join("; ")
                        ),
                    );
                }
                let out = self.outgoing(&parts, &scan, body.clone(), t, client);
                match pool.send(epoch, t.addr, &out, idempotent).await {
                    Ok(resp) => {
                        self.stats.record(&self.service, t, true);
                        let (mut rparts, rbody) = resp.into_parts();
                        let found = self::scan(&rparts.headers);
                        strip_hop_by_hop(&mut rparts.headers, &found);
                        return Response::from_parts(rparts, rbody.boxed());
                    }
                    Err(SendError::NotSent(e)) => {
                        self.stats.record(&self.service, t, false);
                        // Never reached the backend: safe to retry whatever the method.
                        if !t.remote {
                            self.balancer.eject(t.addr);
                        }
                        round.push(e);
                    }
                    Err(SendError::AfterSend(e)) => {
                        self.stats.record(&self.service, t, false);
                        round.push(format!("{} failed after the request was sent: {e}", t.addr));
                        if !idempotent {
                            return text(
                                StatusCode::BAD_GATEWAY,
                                format!("{}: {}; not retried: {} is not idempotent (send an Idempotency-Key to allow it)", self.service, round.join("; "), parts.method),
                            );
                        }
                    }
                }
            }
            if !round.is_empty() {
                last_error = round.join("; ");
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return unavailable(format!("{}: {last_error}", self.service));
            };
            let mut rx = self.routes.clone();
            let moved = async {
                while rx.changed().await.is_ok() {
                    if rx
                        .borrow()
                        .services
                        .get(&self.service)
                        .is_some_and(|r| r.epoch != epoch || r.local)
                    {
                        return;
                    }
                }
            };
            let _ = Box::pin(tokio::time::timeout(left.min(backoff), moved)).await;
            backoff = (backoff * 2).min(Duration::from_millis(800));
        }
    }

    async fn upgrade(
        &self,
        parts: Parts,
        scan: &Scan,
        on_upgrade: hyper::upgrade::OnUpgrade,
        client: &HeaderValue,
        may_hop: bool,
    ) -> Response<Body> {
        let deadline = Instant::now() + WAIT_FOR_ROUTE;
        let Some((_, targets)) = self.wait_for_targets(may_hop, deadline).await else {
            return unavailable(format!("{}: no site can serve it", self.service));
        };
        let mut last_error = String::new();
        for t in targets.into_iter().take(MAX_ATTEMPTS) {
            let stream = match crate::tcp::connect_from(self.source, t.addr).await {
                Ok(s) => s,
                Err(e) => {
                    if !t.remote {
                        self.balancer.eject(t.addr);
                    }
                    last_error = format!("cannot connect to {}: {e}", t.addr);
                    continue;
                }
            };
            let (mut sender, conn) =
                match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                    Ok(x) => x,
                    Err(e) => {
                        last_error = e.to_string();
                        continue;
                    }
                };
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            let out = self.outgoing(&parts, scan, Empty::<Bytes>::new(), &t, client);
            let mut resp = match sender.send_request(out).await {
                Ok(r) => r,
                Err(e) => {
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!("upgrade failed at {}: {e}", t.addr),
                    )
                }
            };
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                return resp.map(|b| b.map_err(std::io::Error::other).boxed());
            }
            let backend = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match (on_upgrade.await, backend.await) {
                    (Ok(client), Ok(backend)) => {
                        let mut client = TokioIo::new(client);
                        let mut backend = TokioIo::new(backend);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                    }
                    (c, b) => tracing::debug!(
                        client = c.is_ok(),
                        backend = b.is_ok(),
                        "upgrade not completed"
                    ),
                }
            });
            let (rparts, _) = resp.into_parts();
            return Response::from_parts(
                rparts,
                Empty::<Bytes>::new().map_err(|e| match e {}).boxed(),
            );
        }
        text(
            StatusCode::BAD_GATEWAY,
            format!("{}: {last_error}", self.service),
        )
    }
}

/// Serves `gateway` on `listener` until `shutdown`; then stops accepting and lets requests
/// in flight finish for up to `drain`.
///
/// One worker thread per core, each with its own single-threaded runtime and backend pool,
/// all accepting from the same socket: a request is read, proxied and answered on one
/// thread, with no hand-off between threads (HAProxy's shape).
pub async fn serve_http(
    listener: TcpListener,
    gateway: Arc<HttpGateway>,
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
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name(format!("gw-{}-{i}", gateway.service))
            .spawn(move || {
                let _entered = span.enter();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(worker(l, gw, stop, drain)),
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

async fn worker(
    listener: std::net::TcpListener,
    gateway: Arc<HttpGateway>,
    shutdown: CancellationToken,
    drain: Duration,
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
    // One buffer per answer and a plain send: cheaper than writev for small messages.
    builder.http1().writev(false);
    loop {
        let Some((stream, peer)) = crate::tcp::accept(&listener, &shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let gw = gateway.clone();
        let pool = pool.clone();
        let client = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let svc = service_fn(move |req| gw.clone().handle(pool.clone(), req, client.clone()));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
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

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h = headers(&[
            ("host", "example.test"),
            ("connection", "Keep-Alive, X-Trace , close"),
            ("connection", "x-second"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("x-trace", "1"),
            ("x-second", "2"),
            ("x-kept", "3"),
            ("idempotency-key", "k"),
        ]);
        let s = scan(&h);
        assert!(s.host && s.idempotency_key && !s.hopped);
        strip_hop_by_hop(&mut h, &s);
        assert_eq!(names(&h), ["host", "idempotency-key", "x-kept"]);
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_alone() {
        let mut h = headers(&[("host", "a"), ("x-outlast-hop", "east"), ("accept", "*/*")]);
        let s = scan(&h);
        assert_eq!(s.hop_by_hop, 0);
        assert!(s.hopped);
        strip_hop_by_hop(&mut h, &s);
        assert_eq!(names(&h), ["accept", "host", "x-outlast-hop"]);
    }

    #[test]
    fn upgrade_needs_both_headers_and_the_connection_option() {
        let up = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade(&up, &scan(&up)));
        let no_option = headers(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        assert!(!is_upgrade(&no_option, &scan(&no_option)));
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert!(!is_upgrade(&no_connection, &scan(&no_connection)));
    }

    #[test]
    fn the_hop_by_hop_index_matches_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(
                hop_by_hop_index(name.as_str().as_bytes()),
                Some(i),
                "{name}"
            );
        }
        assert_eq!(HOP_BY_HOP[CONNECTION], header::CONNECTION);
        assert_eq!(HOP_BY_HOP[UPGRADE], header::UPGRADE);
        assert_eq!(hop_by_hop_index(b"host"), None);
    }

    #[test]
    fn connection_options_are_matched_without_regard_to_case_or_length() {
        assert!(!names_another_header(b"Keep-Alive"));
        assert!(!names_another_header(b"CLOSE"));
        assert!(!names_another_header(b"Proxy-Authorization"));
        assert!(names_another_header(b"x-trace"));
        assert!(names_another_header(b"a-header-name-longer-than-nineteen"));
    }
}
