//! Serving a router on a listener within limits (see `outlast_gateway::limits`): the API
//! and the peer port both go through here. A connection over the cap is answered 503 at
//! once; a request head must come within its deadline (and the next one on an idle
//! keep-alive connection); a body announced larger than the listener takes is answered 413
//! before a byte of it is read; a body that goes quiet for [`BODY_IDLE_TIMEOUT`] ends the
//! request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use outlast_gateway::limits::{ConnLimit, IdleBody, BODY_IDLE_TIMEOUT, HEADER_TIMEOUT};
use tower::ServiceExt;

use crate::tls::PeerCert;

/// What one listener allows.
#[derive(Debug, Clone)]
pub struct Limits {
    pub conns: Arc<ConnLimit>,
    /// The largest body a request may announce or send.
    pub max_body: u64,
    /// How long in-flight requests may finish once shutdown begins.
    pub drain: Duration,
    /// TLS on this listener: each connection's handshake must end within
    /// [`crate::tls::HANDSHAKE_TIMEOUT`]; a client certificate it verified reaches the
    /// handlers as a [`crate::tls::PeerCert`] extension.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish for up to `limits.drain`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // HTTP/1.1 only (the API and the peer port speak nothing else): the head deadline
    // then runs from the connection's first moment, where a protocol sniff would wait for
    // a first byte without one.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let Some((stream, _peer)) =
            outlast_gateway::tcp_accept(&listener, &stop, &limits.conns).await
        else {
            break;
        };
        let Some(place) = limits.conns.admit() else {
            tokio::spawn(outlast_gateway::limits::refuse_http(
                stream,
                "this listener is at its connection cap",
            ));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let max_body = limits.max_body;
        let service = move |cert: Option<PeerCert>| {
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let router = router.clone();
                let cert = cert.clone();
                async move {
                    if let Some(refusal) = too_large(&req, max_body) {
                        return Ok::<_, std::convert::Infallible>(refusal);
                    }
                    let mut req = req.map(|b| Body::new(IdleBody::new(b, BODY_IDLE_TIMEOUT)));
                    if let Some(c) = cert {
                        req.extensions_mut().insert(c);
                    }
                    router.oneshot(req).await
                }
            })
        };
        match &limits.tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service(None));
                let watched = graceful.watch(conn);
                tokio::spawn(async move {
                    let _place = place;
                    let _ = watched.await;
                });
            }
            Some(config) => {
                // The handshake runs in the connection's own task, so a slow or silent
                // client never holds up the accept loop.
                let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _place = place;
                    let tls = match tokio::time::timeout(
                        crate::tls::HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake refused");
                            metrics::counter!("outlast_tls_handshake_failures_total").increment(1);
                            return;
                        }
                        Err(_) => {
                            metrics::counter!("outlast_tls_handshake_failures_total").increment(1);
                            return;
                        }
                    };
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| PeerCert(Arc::new(c.clone().into_owned())));
                    let conn = builder.serve_connection(TokioIo::new(tls), service(cert));
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight at the drain deadline");
    }
    Ok(())
}

/// A 413 for a request whose `Content-Length` is over `max`, answered before reading it
/// (found by probing: a `Content-Length` of 10 GB with a short body was held open).
fn too_large<B>(req: &Request<B>, max: u64) -> Option<Response> {
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    if len <= max {
        return None;
    }
    let mut r = crate::refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("a body of {len} bytes is over this listener's {max}-byte limit"),
    );
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    Some(r.into_response())
}
