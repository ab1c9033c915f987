//! outlast-web: the HTTP face of an agent on `address:api_port`: API v1, metrics and pages.
//!
//! It renders what the agent hands it and never decides anything; every mutation it will
//! accept goes through the control plane.

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

mod events;
mod faults;
pub mod serve;

pub use outlast_core::faults::{FaultKind, FaultView};

/// Checks `Authorization: Bearer <want>`: why not, when it does not hold. The token is
/// compared through a hash, so the time taken says nothing about it.
pub(crate) fn bearer(
    headers: &axum::http::HeaderMap,
    want: &str,
) -> Result<(), (StatusCode, &'static str)> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => Err((
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <the [api] token>",
        )),
        Some(got) if blake3::hash(want.as_bytes()) == blake3::hash(got.as_bytes()) => Ok(()),
        Some(_) => Err((StatusCode::UNAUTHORIZED, "wrong token")),
    }
}

/// A refusal with its reason as JSON (`{"error": ...}`).
pub(crate) fn refuse(code: StatusCode, reason: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": reason.into() }))).into_response()
}

pub use outlast_core::status::{
    BackendStatus, FailoverStatus, PhaseStatus, ServiceStatus, SiteStatus, Status, StreamStatus,
};

/// What the agent gives the web room.
pub trait Source: Send + Sync + 'static {
    fn status(&self) -> Status;
    fn metrics(&self) -> String;
    /// The event relay, when this agent has one.
    fn relay(&self) -> Option<&outlast_relay::Relay> {
        None
    }
    /// The token `/v1/faults` wants; None turns fault injection off.
    fn fault_token(&self) -> Option<&str> {
        None
    }
    /// The token event ingest wants (`[api] ingest = "token"`); None: ingest is open.
    fn ingest_token(&self) -> Option<&str> {
        None
    }
    /// Injects a fault that ends by itself after `lasting`; why not, when it cannot.
    fn inject_fault(
        &self,
        kind: FaultKind,
        lasting: std::time::Duration,
    ) -> Result<FaultView, String> {
        let _ = (kind, lasting);
        Err("this agent takes no faults".into())
    }
    fn faults(&self) -> Vec<FaultView> {
        Vec::new()
    }
    /// Ends one fault or all of them; how many ended.
    fn clear_faults(&self, id: Option<u64>) -> usize {
        let _ = id;
        0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, reason) = match &self {
            ApiError::NotFound(r) => (StatusCode::NOT_FOUND, r.clone()),
        };
        (code, Json(serde_json::json!({ "error": reason }))).into_response()
    }
}

/// The largest body the API reads: each stream checks its own limit (413); this bounds the
/// read, and a larger `Content-Length` is answered 413 before any of it is read.
pub fn body_limit(source: &dyn Source) -> u64 {
    source
        .relay()
        .map(|r| r.streams().map(|s| s.max_body_bytes()).max().unwrap_or(0))
        .unwrap_or(0)
        .max(1 << 20)
        + 1
}

pub fn router(source: Arc<dyn Source>) -> Router {
    let body_limit = usize::try_from(body_limit(source.as_ref())).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/v1/streams/:name/events",
            post(events::ingest)
                .get(events::tail)
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .route(
            "/v1/faults",
            get(faults::list)
                .post(faults::add)
                .delete(faults::clear_all),
        )
        .route("/v1/faults/:id", axum::routing::delete(faults::clear_one))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .fallback(|| async { ApiError::NotFound("no such endpoint; see /v1/status".into()) })
        .with_state(source)
}

async fn status(State(s): State<Arc<dyn Source>>) -> Json<Status> {
    Json(s.status())
}

async fn metrics(State(s): State<Arc<dyn Source>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics(),
    )
}

async fn dashboard(State(s): State<Arc<dyn Source>>) -> Html<String> {
    Html(render_dashboard(&s.status()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A plain page that a person can read at a glance; refreshes itself every two seconds.
pub fn render_dashboard(st: &Status) -> String {
    let mut rows = String::new();
    for s in &st.sites {
        let color = match s.state.as_str() {
            "up" => "#1a7f37",
            "fenced" => "#9a6700",
            _ => "#cf222e",
        };
        rows.push_str(&format!(
            "<tr><td>{}{}</td><td style=\"color:{color};font-weight:bold\">{}</td><td>{}</td></tr>",
            esc(&s.name),
            if s.witness { " (witness)" } else { "" },
            esc(&s.state),
            s.last_seen_ms
                .map(|m| format!("{m} ms ago"))
                .unwrap_or_else(|| "never".into())
        ));
    }
    let mut svcs = String::new();
    for s in &st.services {
        svcs.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            esc(&s.mode),
            esc(s.primary.as_deref().unwrap_or("-")),
            esc(&s.active_sites.join(", ")),
            s.epoch
        ));
    }
    let streams = if st.streams.is_empty() {
        String::new()
    } else {
        let cell = |tag: &str, c: &str| format!("<{tag}>{}</{tag}>", esc(c));
        let head: String = StreamStatus::HEADINGS
            .iter()
            .map(|h| cell("th", &h.to_lowercase()))
            .collect();
        let body: String = st
            .streams
            .iter()
            .map(|s| {
                let cells: String = s.cells().iter().map(|c| cell("td", c)).collect();
                format!("<tr>{cells}</tr>")
            })
            .collect();
        format!("<h2>Event streams</h2><table><tr>{head}</tr>{body}</table>")
    };
    let faults = if st.faults.is_empty() {
        String::new()
    } else {
        let items: String = st
            .faults
            .iter()
            .map(|f| {
                format!(
                    "<li>{} (ends in {:.1} s)</li>",
                    esc(&f.kind.describe()),
                    f.remaining_ms as f64 / 1000.0
                )
            })
            .collect();
        format!("<h2 style=\"color:#cf222e\">Injected faults</h2><ul>{items}</ul>")
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>outlast · {cluster}</title><style>body{{font-family:system-ui,sans-serif;margin:2em}}\
         table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:left}}</style>\
         </head><body><h1>{cluster}</h1><p>answered by <b>{site}</b> · leader <b>{leader}</b> · term {term} · epoch {epoch}</p>\
         <h2>Sites</h2><table><tr><th>site</th><th>state</th><th>last heard</th></tr>{rows}</table>\
         <h2>Services</h2><table><tr><th>service</th><th>mode</th><th>primary</th><th>active at</th><th>epoch</th></tr>{svcs}</table>\
         {streams}{faults}</body></html>",
        cluster = esc(&st.cluster),
        site = esc(&st.site),
        leader = esc(st.leader.as_deref().unwrap_or("none")),
        term = st.term,
        epoch = st.epoch,
    )
}

/// Serves the API until `shutdown` resolves (mini-redis's `run(listener, shutdown)` shape).
/// Serves the API within `conns` (see [`serve`]).
pub async fn run(
    listener: tokio::net::TcpListener,
    source: Arc<dyn Source>,
    conns: Arc<outlast_gateway::limits::ConnLimit>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = serve::Limits {
        conns,
        max_body: body_limit(source.as_ref()),
        drain: std::time::Duration::from_secs(3),
    };
    serve::serve(listener, router(source), limits, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status with one stream that holds a backlog and ships for a down site.
    fn with_stream() -> Status {
        serde_json::from_value(serde_json::json!({
            "cluster": "shop", "site": "west", "leader": "west", "term": 3, "epoch": 7,
            "sites": [], "services": [],
            "streams": [{
                "name": "clicks", "spool_events": 1200, "spool_bytes": 3_500_000,
                "oldest_unshipped_ms": 2500, "sink": "s3://west-bucket/raw",
                "objects_shipped": 42, "replays": 3, "quarantined_segments": 1,
                "replicas": {"east": 800, "witness": 0}, "taking_over": ["east"]
            }]
        }))
        .expect("a status")
    }

    #[test]
    fn a_stream_reads_at_a_glance() {
        let st = with_stream();
        assert_eq!(
            st.streams[0].cells(),
            [
                "clicks",
                "1200 (3.3 MiB)",
                "2.5 s",
                "s3://west-bucket/raw",
                "42",
                "3",
                "1",
                "east: 800, witness: 0",
                "east"
            ]
        );
        let page = render_dashboard(&st);
        assert!(page.contains("<h2>Event streams</h2>"), "{page}");
        assert!(
            page.contains("<td>clicks</td><td>1200 (3.3 MiB)</td><td>2.5 s</td>"),
            "{page}"
        );
    }
}
