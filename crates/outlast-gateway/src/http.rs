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

type Body = BoxBody<Bytes, hyper::Error>;

/// Attempts per request at most (the first try and two retries).
const MAX_ATTEMPTS: usize = 3;
/// How long a request that found nowhere to go waits for the routing to change (a failover
/// in progress) before it is answered 503. Only requests that reached no backend wait.
const WAIT_FOR_ROUTE: Duration = Duration::from_secs(5);
/// Largest request body the gateway buffers (it must, to retry).
const MAX_BODY: usize = 16 << 20;

const HOP_BY_HOP: [HeaderName; 9] = [
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

fn is_idempotent(parts: &Parts) -> bool {
    matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || parts.headers.contains_key("idempotency-key")
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
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
    /// value (made once per connection).
    fn outgoing<B>(
        &self,
        parts: &Parts,
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
        let upgrade = is_upgrade(&headers);
        let upgrade_value = headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut headers);
        if !headers.contains_key(header::HOST) {
            if let Some(a) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(header::HOST, a);
            }
        }
        let xff = match headers.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()) {
            Some(prev) => HeaderValue::from_bytes(&[prev, b", ", client.as_bytes()].concat()).ok(),
            None => Some(client.clone()),
        };
        if let Some(v) = xff {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        if target.remote {
            if let Ok(v) = HeaderValue::from_str(&self.site) {
                headers.insert(HOP_HEADER, v);
            }
        }
        if let (true, Some(u)) = (upgrade, upgrade_value) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u);
        }
        *req.headers_mut() = headers;
        req
    }

    /// Waits until the routing offers somewhere to go, up to `until`.
    async fn wait_for_targets(&self, may_hop: bool, until: Instant) -> Option<(u64, Vec<Target>)> {
        let mut rx = self.routes.clone();
        loop {
            let routes = self.routes.borrow().clone();
            if let Some(route) = routes.services.get(&self.service) {
                if route.refuses(&self.lease) {
                    return None;
                }
                let targets = self.balancer.targets(route, may_hop);
                if !targets.is_empty() {
                    return Some((route.epoch, targets));
                }
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
        let may_hop = !req.headers().contains_key(HOP_HEADER);
        if is_upgrade(req.headers()) {
            let on_upgrade = hyper::upgrade::on(&mut req);
            let (parts, _) = req.into_parts();
            return self.upgrade(parts, on_upgrade, client, may_hop).await;
        }
        let (parts, body) = req.into_parts();
        // Most GETs have no body: no collecting future to drive for them.
        let body = if hyper::body::Body::is_end_stream(&body) {
            Bytes::new()
        } else {
            match Limited::new(body, MAX_BODY).collect().await {
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
        let idempotent = is_idempotent(&parts);
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
                let out = self.outgoing(&parts, Full::new(body.clone()), t, client);
                match pool.send(epoch, t.addr, out).await {
                    Ok(resp) => {
                        self.stats.record(&self.service, t, true);
                        let (mut rparts, rbody) = resp.into_parts();
                        strip_hop_by_hop(&mut rparts.headers);
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
            let _ = tokio::time::timeout(left.min(backoff), moved).await;
            backoff = (backoff * 2).min(Duration::from_millis(800));
        }
    }

    async fn upgrade(
        &self,
        parts: Parts,
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
            let out = self.outgoing(&parts, Empty::<Bytes>::new(), &t, client);
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
                return resp.map(|b| b.boxed());
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
