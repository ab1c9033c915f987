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
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::headers::{hop_by_hop_index, list_items, names_another_header};
use crate::pool::{ConnPool, Outgoing, SendError, Wire};
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
/// Largest answer from another site's gateway read whole before it is passed on.
const HOP_WHOLE: u64 = 1 << 20;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// One service's HTTP gateway at one site.
pub struct HttpGateway {
    pub(crate) service: String,
    site: String,
    pub(crate) source: IpAddr,
    routes: watch::Receiver<Arc<Routes>>,
    balancer: Balancer,
    retries: AtomicU64,
    stats: Arc<Stats>,
    lease: Arc<LeaseClock>,
    /// This site's name as the hop header's value.
    hop_value: Option<HeaderValue>,
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
    /// Which hop-by-hop headers are present, a bit each (by [`hop_by_hop_index`]).
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

/// Indexes of [`hop_by_hop_index`].
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
            .flat_map(list_items)
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// The headers that a message's Connection header names besides the hop-by-hop ones: they
/// are hop-by-hop too (RFC 9110 section 7.6.1). Seldom any; when none, nothing is allocated.
fn connection_named(headers: &HeaderMap, scan: &Scan) -> Vec<HeaderName> {
    if !scan.has(CONNECTION) {
        return Vec::new();
    }
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(list_items)
        .filter(|o| names_another_header(o))
        .filter_map(|o| HeaderName::from_bytes(o).ok())
        .collect()
}

static HOP: HeaderName = HeaderName::from_static(HOP_HEADER);

/// The request-target sent to a backend: origin form, as HTTP/1.1 sends it to a server
/// (h2c requests arrive in absolute form).
fn request_target(uri: &hyper::Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

/// The header fields of a request as forwarded, each passed to `field` in turn: Host (from
/// an h2c request's authority when it has none), the client's fields without the hop-by-hop
/// ones and those its Connection header names, X-Forwarded-For with `client` added, the
/// hop header naming this site (`hop_from`) when the target is another site's gateway, and
/// the upgrade fields of an upgrade. `scan` is what [`scan`] found in `parts.headers`.
fn outgoing_fields(
    parts: &Parts,
    scan: &Scan,
    client: &HeaderValue,
    hop_from: Option<&HeaderValue>,
    mut field: impl FnMut(&HeaderName, &HeaderValue),
) {
    let headers = &parts.headers;
    if !scan.host {
        if let Some(a) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            field(&header::HOST, &a);
        }
    }
    let named = connection_named(headers, scan);
    for (name, value) in headers {
        let drop = (scan.hop_by_hop != 0 && hop_by_hop_index(name.as_str().as_bytes()).is_some())
            || *name == X_FORWARDED_FOR
            || (hop_from.is_some() && *name == HOP)
            || named.contains(name);
        if !drop {
            field(name, value);
        }
    }
    let mut came = headers.get_all(&X_FORWARDED_FOR).iter();
    match came.next() {
        None => field(&X_FORWARDED_FOR, client),
        Some(first) => {
            let mut all = first.as_bytes().to_vec();
            for v in came.chain([client]) {
                all.extend_from_slice(b", ");
                all.extend_from_slice(v.as_bytes());
            }
            if let Ok(v) = HeaderValue::from_bytes(&all) {
                field(&X_FORWARDED_FOR, &v);
            }
        }
    }
    if let Some(site) = hop_from {
        field(&HOP, site);
    }
    if is_upgrade(headers, scan) {
        if let Some(u) = headers.get(header::UPGRADE) {
            field(&header::CONNECTION, &HeaderValue::from_static("upgrade"));
            field(&header::UPGRADE, u);
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
            hop_value: HeaderValue::from_str(site).ok(),
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

    /// The hop header's value when `target` is another site's gateway.
    fn hop_from(&self, target: &Target) -> Option<&HeaderValue> {
        target.remote.then_some(self.hop_value.as_ref()).flatten()
    }

    /// The request as sent to `target` on the wire, `body` included. `client` is the
    /// client's address as a header value (made once per connection); `scan` is what
    /// [`scan`] found in `parts.headers`.
    fn outgoing(
        &self,
        parts: &Parts,
        scan: &Scan,
        body: &[u8],
        target: &Target,
        client: &HeaderValue,
    ) -> Outgoing {
        let mut wire = Wire::new(&parts.method, request_target(&parts.uri));
        outgoing_fields(parts, scan, client, self.hop_from(target), |n, v| {
            wire.field(n, v)
        });
        wire.finish(body)
    }

    /// An upgrade request as sent to `target` (through hyper's client, which hands over
    /// the connection once the backend switches protocols).
    fn upgrade_request(
        &self,
        parts: &Parts,
        scan: &Scan,
        target: &Target,
        client: &HeaderValue,
    ) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = parts.method.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.uri_mut() = hyper::Uri::try_from(request_target(&parts.uri))
            .unwrap_or_else(|_| hyper::Uri::from_static("/"));
        let headers = req.headers_mut();
        outgoing_fields(parts, scan, client, self.hop_from(target), |n, v| {
            headers.append(n.clone(), v.clone());
        });
        req
    }

    /// Whether the service is served only where this site cannot reach.
    fn cut_off(&self) -> bool {
        self.routes
            .borrow()
            .services
            .get(&self.service)
            .is_some_and(|r| r.unreachable && !r.local)
    }

    /// Where the routing sends a request now: `Err(())` when this site refuses the service
    /// or cannot reach where it is served, `Ok(None)` when there is nowhere to go yet.
    fn targets_now(&self, may_hop: bool) -> Result<Option<(u64, Vec<Target>)>, ()> {
        let routes = self.routes.borrow();
        let Some(route) = routes.services.get(&self.service) else {
            return Ok(None);
        };
        if route.refuses(&self.lease) || (route.unreachable && !route.local) {
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
            let left = until.checked_duration_since(outlast_core::clock::now())?;
            if tokio::time::timeout(left, rx.changed())
                .await
                .ok()?
                .is_err()
            {
                return None;
            }
        }
    }

    /// Resolves once `target`, another site's gateway, is no longer where the routing sends
    /// this service (its site no longer active for it); never for a local backend, whose
    /// answer to a request it took still counts.
    async fn left_the_route(&self, target: Target) {
        if !target.remote {
            return std::future::pending().await;
        }
        let mut rx = self.routes.clone();
        loop {
            let gone = rx
                .borrow_and_update()
                .services
                .get(&self.service)
                .is_none_or(|r| !r.remotes.contains(&target.addr));
            if gone {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// `resp` from another site's gateway with its body read whole when it announces at
    /// most [`HOP_WHOLE`] bytes (else passed on as it streams); `Err` when `target` left
    /// the routing before the body was in (true) or the body broke off (false).
    async fn whole_answer(
        &self,
        resp: Response<crate::pool::PooledBody>,
        target: Target,
    ) -> Result<Response<Body>, (String, bool)> {
        let small = crate::limits::content_length(resp.headers()).is_some_and(|n| n <= HOP_WHOLE);
        if !small {
            return Ok(resp.map(|b| b.boxed()));
        }
        let (parts, body) = resp.into_parts();
        let left = self.left_the_route(target);
        tokio::select! {
            biased;
            got = body.collect() => match got {
                Ok(c) => Ok(Response::from_parts(
                    parts,
                    Full::new(c.to_bytes()).map_err(|e| match e {}).boxed(),
                )),
                Err(e) => Err((format!("{}: the answer broke off: {e}", target.addr), false)),
            },
            () = left => Err((
                format!("{} left the routing while its answer was still coming", target.addr),
                true,
            )),
        }
    }

    pub(crate) async fn handle(
        self: Arc<Self>,
        pool: Arc<ConnPool>,
        req: Request<Incoming>,
        client: HeaderValue,
    ) -> Result<Response<Body>, Infallible> {
        let started = outlast_core::clock::now();
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
        if self.cut_off() {
            return unavailable(format!(
                "{}: the site serving it cannot be reached from {} (the others reach it); \
                 retry, or use another site's gateway",
                self.service, self.site
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
        // A body announced over the limit is refused before a byte of it is read, and one
        // that goes quiet ends the request (found by probing: both were held open).
        if crate::limits::content_length(&parts.headers).is_some_and(|n| n > MAX_BODY as u64) {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {MAX_BODY} bytes"),
            );
        }
        let body = if hyper::body::Body::is_end_stream(&body) {
            Bytes::new()
        } else {
            let body = crate::limits::IdleBody::new(body, crate::limits::BODY_IDLE_TIMEOUT);
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
                    let code = if e.is::<crate::limits::BodyStalled>() {
                        StatusCode::REQUEST_TIMEOUT
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    return text(code, format!("cannot read the request body: {e}"));
                }
            }
        };
        let idempotent = is_idempotent(&parts.method, &scan);
        let deadline = outlast_core::clock::now() + WAIT_FOR_ROUTE;
        let mut last_error = String::from("no site can serve it");
        let mut backoff = Duration::from_millis(50);
        // Rounds: each tries every target once (always a different one within a round).
        // When every attempt of a round failed (none sent, or the request is idempotent), a
        // new round starts after the routing changed (a failover) or a short back-off (a
        // backend busy accepting), until the deadline: a GET in flight when a primary's
        // backend dies is answered by the new primary. Retries within a round draw on the
        // retry budget; rounds do not.
        // The routing as of each round's start: a failed round waits for a change to this
        // service's route after it (or a back-off), never for one it has already seen. (A
        // clone of the gateway's receiver counted every change since the gateway started as
        // new: failed rounds did not wait at all, and a dead primary backend was retried in
        // a tight loop, thousands of connects a second, until its health check caught up.)
        let mut rx = self.routes.clone();
        loop {
            let seen = rx.borrow_and_update().services.get(&self.service).cloned();
            let Some((epoch, targets)) = self.wait_for_targets(may_hop, deadline).await else {
                return unavailable(format!("{}: {last_error}", self.service));
            };
            // What each attempt of this round met, for the answer if none succeeds.
            let mut round: Vec<String> = Vec::new();
            let mut moved_away = false;
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
                let out = self.outgoing(&parts, &scan, &body, t, client);
                let sent = {
                    let send = pool.send(epoch, t.addr, &out, idempotent, t.remote);
                    let left = self.left_the_route(*t);
                    tokio::select! {
                        biased;
                        r = send => Some(r),
                        () = left => None,
                    }
                };
                let Some(sent) = sent else {
                    // The route moved away from the target while the request waited there
                    // (a primary paused or cut off, a backend gone): what it would answer
                    // no longer counts. Sent again where the service is now when that is
                    // safe, else answered at once rather than left to hang.
                    self.stats.record(&self.service, t, false);
                    let why = format!(
                        "{} left the routing while the request waited for its answer",
                        t.addr
                    );
                    if !idempotent {
                        return text(
                            StatusCode::BAD_GATEWAY,
                            format!("{}: {why}; not sent again: {} is not idempotent (send an Idempotency-Key to allow it)", self.service, parts.method),
                        );
                    }
                    round.push(why);
                    moved_away = true;
                    break;
                };
                match sent {
                    Ok(resp) if t.remote && idempotent => {
                        // A hop's answer is read whole before it is passed on (up to
                        // HOP_WHOLE): a site paused between an answer's head and its body
                        // would otherwise hold the client on a body that never comes, where
                        // the request can still go where the service is now.
                        match self.whole_answer(resp, *t).await {
                            Ok(resp) => {
                                self.stats.record(&self.service, t, true);
                                return resp;
                            }
                            Err((why, left)) => {
                                self.stats.record(&self.service, t, false);
                                round.push(why);
                                if left {
                                    moved_away = true;
                                    break;
                                }
                            }
                        }
                    }
                    Ok(resp) => {
                        self.stats.record(&self.service, t, true);
                        return resp.map(|b| b.boxed());
                    }
                    Err(SendError::NotSent(e)) => {
                        self.stats.record(&self.service, t, false);
                        // Never reached the backend: safe to retry whatever the method.
                        if !t.remote {
                            self.balancer.eject(t.addr);
                        }
                        round.push(e);
                    }
                    Err(SendError::TimedOut(e)) => {
                        self.stats.record(&self.service, t, false);
                        // Not retried: another target would make the client wait as long
                        // again, and the request may be running there.
                        return text(
                            StatusCode::GATEWAY_TIMEOUT,
                            format!("{}: {e}", self.service),
                        );
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
            if moved_away {
                continue; // the route changed: a new round at once
            }
            let Some(left) = deadline.checked_duration_since(outlast_core::clock::now()) else {
                return unavailable(format!("{}: {last_error}", self.service));
            };
            let moved = async {
                while rx.changed().await.is_ok() {
                    if rx.borrow().services.get(&self.service) != seen.as_ref() {
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
        let deadline = outlast_core::clock::now() + WAIT_FOR_ROUTE;
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
            let out = self.upgrade_request(&parts, scan, &t, client);
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

    /// The fields `outgoing_fields` sends for a request with `pairs`, in order.
    fn sent(
        uri: &'static str,
        pairs: &[(&'static str, &'static str)],
        hop_from: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut req = Request::new(());
        *req.uri_mut() = hyper::Uri::from_static(uri);
        *req.headers_mut() = headers(pairs);
        let (parts, ()) = req.into_parts();
        let hop = hop_from.map(|s| HeaderValue::from_str(s).expect("site"));
        let mut out = Vec::new();
        outgoing_fields(
            &parts,
            &scan(&parts.headers),
            &HeaderValue::from_static("10.0.0.9"),
            hop.as_ref(),
            |n, v| out.push((n.to_string(), String::from_utf8_lossy(v.as_bytes()).into())),
        );
        out
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_not_sent() {
        let h = [
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
        ];
        let s = scan(&headers(&h));
        assert!(s.host && s.idempotency_key && !s.hopped);
        assert_eq!(
            sent("/", &h, None),
            pairs(&[
                ("host", "example.test"),
                ("x-kept", "3"),
                ("idempotency-key", "k"),
                ("x-forwarded-for", "10.0.0.9"),
            ])
        );
    }

    #[test]
    fn forwarding_fields_are_added_and_an_h2c_authority_becomes_host() {
        let h = [
            ("x-forwarded-for", "1.1.1.1"),
            ("accept", "*/*"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-outlast-hop", "forged"),
        ];
        assert_eq!(
            sent("http://svc.test/a?b", &h, Some("east")),
            pairs(&[
                ("host", "svc.test"),
                ("accept", "*/*"),
                ("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.9"),
                ("x-outlast-hop", "east"),
            ])
        );
        // To a local backend the hop header is the client's, passed on as it came.
        let local = sent("/", &[("host", "a"), ("x-outlast-hop", "west")], None);
        assert!(local.contains(&("x-outlast-hop".into(), "west".into())));
        let up = sent(
            "/ws",
            &[
                ("host", "a"),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
            ],
            None,
        );
        assert_eq!(
            up[up.len() - 2..],
            pairs(&[("connection", "upgrade"), ("upgrade", "websocket")])
        );
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_sent_whole() {
        let h = [("host", "a"), ("x-outlast-hop", "east"), ("accept", "*/*")];
        let s = scan(&headers(&h));
        assert_eq!(s.hop_by_hop, 0);
        assert!(s.hopped);
        assert_eq!(
            sent("/", &h, None),
            pairs(&[
                ("host", "a"),
                ("x-outlast-hop", "east"),
                ("accept", "*/*"),
                ("x-forwarded-for", "10.0.0.9"),
            ])
        );
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
    fn the_hop_by_hop_index_knows_each_name() {
        let names = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ];
        for (i, name) in names.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_bytes()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(b"connection"), Some(CONNECTION));
        assert_eq!(hop_by_hop_index(b"upgrade"), Some(UPGRADE));
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
