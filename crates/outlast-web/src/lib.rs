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

pub mod backups;
mod events;
mod faults;
mod moves;
pub mod serve;
pub mod statuspage;
pub mod tls;

pub use outlast_core::faults::{FaultKind, FaultView};

/// Checks `Authorization: Bearer <want>`: why not, when it does not hold. The token is
/// compared through a hash, so the time taken says nothing about it.
pub(crate) fn bearer(
    headers: &axum::http::HeaderMap,
    want: &str,
) -> Result<(), (StatusCode, &'static str)> {
    match presented(headers) {
        None => Err((
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <the [api] token>",
        )),
        Some(got) if same(want, &got) => Ok(()),
        Some(_) => Err((StatusCode::UNAUTHORIZED, "wrong token")),
    }
}

/// The token a request presents: `Authorization: Bearer T`, or HTTP Basic with T as the
/// password (what a browser sends after asking, for the dashboard).
fn presented(headers: &axum::http::HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.to_string());
    }
    let b64 = v.strip_prefix("Basic ")?;
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    Some(
        text.split_once(':')
            .map(|(_, p)| p)
            .unwrap_or(&text)
            .to_string(),
    )
}

/// Equal in constant time: both sides are hashed and the hashes compared (blake3's
/// comparison does not stop at the first difference), so a wrong token of any length
/// takes the time a right one does.
fn same(want: &str, got: &str) -> bool {
    blake3::hash(want.as_bytes()) == blake3::hash(got.as_bytes())
}

/// Paths anyone may read even with a `read_token`: the public status page.
const PUBLIC: [&str; 3] = ["/status", "/status.json", "/status/feed.atom"];

/// With `[api] read_token`, every request but the public status page, event ingest (its
/// own `ingest` setting) and the mutations (their own token check) must present the read
/// token or the mutation token. Both comparisons always run.
async fn reads(
    State(src): State<Arc<dyn Source>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(read) = src.read_token() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let is_read = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if !is_read || PUBLIC.contains(&path) {
        return next.run(req).await;
    }
    let ok = match presented(req.headers()) {
        Some(got) => {
            let as_read = same(read, &got);
            let as_admin = src.admin_token().map(|w| same(w, &got)).unwrap_or(false);
            as_read | as_admin
        }
        None => false,
    };
    if ok {
        return next.run(req).await;
    }
    let mut r = refuse(
        StatusCode::UNAUTHORIZED,
        "this agent's reads want a token: send Authorization: Bearer <the [api] read_token>",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"outlast\", charset=\"UTF-8\""),
    );
    r
}

/// A refusal with its reason as JSON (`{"error": ...}`).
pub(crate) fn refuse(code: StatusCode, reason: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": reason.into() }))).into_response()
}

pub use outlast_core::status::{
    BackendStatus, FailoverStatus, MaintenanceAnswer, MaintenanceRequest, MoveAnswer, PhaseStatus,
    ServiceStatus, SiteStatus, Status, StreamStatus, SwitchoverRequest,
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
    /// The token switchover and maintenance want (`[api] token`); None turns them off.
    fn admin_token(&self) -> Option<&str> {
        None
    }
    /// The token reads want (`[api] read_token`); None: reads are open.
    fn read_token(&self) -> Option<&str> {
        None
    }
    /// Carries out a planned switchover; once done, what moved, else (HTTP status, why).
    fn switchover(
        &self,
        req: SwitchoverRequest,
    ) -> BoxFuture<'_, Result<MoveAnswer, (u16, String)>> {
        let _ = req;
        Box::pin(async { Err((403, "this agent takes no switchover".to_string())) })
    }
    /// Puts a site in maintenance or takes it out; once its primaries moved, what moved.
    fn maintenance(
        &self,
        req: MaintenanceRequest,
    ) -> BoxFuture<'_, Result<MaintenanceAnswer, (u16, String)>> {
        let _ = req;
        Box::pin(async { Err((403, "this agent takes no maintenance".to_string())) })
    }
    /// Opens an incident (`id` none) or updates one, committed through the cluster; the
    /// incident as it stands after, else (HTTP status, why).
    fn incident(
        &self,
        id: Option<u64>,
        req: outlast_core::status::IncidentRequest,
    ) -> BoxFuture<'_, Result<outlast_core::incident::Incident, (u16, String)>> {
        let _ = (id, req);
        Box::pin(async { Err((403, "this agent takes no incident updates".to_string())) })
    }
    /// Runs, verifies or lists backup `name` (see [`backups::BackupAction`]); the answer's
    /// JSON, else (HTTP status, why).
    fn backup(
        &self,
        name: &str,
        action: backups::BackupAction,
    ) -> BoxFuture<'_, Result<serde_json::Value, (u16, String)>> {
        let _ = (name, action);
        Box::pin(async { Err((404, "this agent runs no backups".to_string())) })
    }
    /// What this site's DNS answers `name` (A) for a client at `client` (with a prefix
    /// length: an ECS subnet) and why, as JSON; else (HTTP status, why).
    fn dns_explain(&self, name: &str, client: &str) -> Result<serde_json::Value, (u16, String)> {
        let _ = (name, client);
        Err((404, "this agent serves no DNS".to_string()))
    }
}

#[derive(serde::Deserialize)]
struct ExplainQuery {
    name: Option<String>,
    client: Option<String>,
}

async fn dns_explain(
    State(s): State<Arc<dyn Source>>,
    axum::extract::Query(q): axum::extract::Query<ExplainQuery>,
) -> Response {
    let (Some(name), Some(client)) = (q.name, q.client) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "give name=NAME and client=ADDRESS (or ADDRESS/PREFIX for a client subnet)",
        );
    };
    match s.dns_explain(&name, &client) {
        Ok(v) => Json(v).into_response(),
        Err((code, why)) => refuse(
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
            why,
        ),
    }
}

/// A boxed future an agent's answer comes back in.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
        .route("/v1/switchover", post(moves::switchover))
        .route("/v1/maintenance", post(moves::maintenance))
        .route(
            "/v1/incidents",
            get(moves::incidents).post(moves::incident_open),
        )
        .route("/v1/incidents/:id", post(moves::incident_update))
        .route("/v1/incidents/:id/updates", post(moves::incident_update))
        .route("/v1/backups", get(backups::list))
        .route("/v1/backups/:name/run", post(backups::run))
        .route("/v1/backups/:name/verify", post(backups::verify))
        .route("/v1/backups/:name/snapshots", get(backups::snapshots))
        .route("/v1/status", get(status))
        .route("/v1/dns/explain", get(dns_explain))
        .route("/metrics", get(metrics))
        .route("/status", get(status_page))
        .route("/status.json", get(status_json))
        .route("/status/feed.atom", get(status_feed))
        .route("/", get(dashboard))
        .fallback(|| async { ApiError::NotFound("no such endpoint; see /v1/status".into()) })
        .layer(axum::middleware::from_fn_with_state(source.clone(), reads))
        .with_state(source)
}

async fn status(State(s): State<Arc<dyn Source>>) -> Response {
    (
        [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        Json(s.status()),
    )
        .into_response()
}

async fn metrics(State(s): State<Arc<dyn Source>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics(),
    )
}

/// The backups as the answering site takes them: last snapshot, last verified restore (the
/// RTO and RPO of restoring from backup), and what is wrong.
fn render_backups(st: &Status) -> String {
    if st.backups.is_empty() {
        return String::new();
    }
    let ago = |at: u64| human_ms(st.at_ms.saturating_sub(at));
    let rows: String = st
        .backups
        .iter()
        .map(|b| {
            let last = b.last_ok.as_ref().map_or("never".to_string(), |r| {
                format!(
                    "{} ago, {:.1} MB in {}",
                    ago(r.at_ms),
                    r.bytes as f64 / 1e6,
                    human_ms(r.duration_ms)
                )
            });
            let verified = b.verify_ok.as_ref().map_or("never".to_string(), |v| {
                format!(
                    "{} ago: restored in {}, {} old",
                    ago(v.at_ms),
                    human_ms(v.restore_ms),
                    human_ms(v.age_ms)
                )
            });
            let (colour, problem) = match &b.problem {
                Some(p) => (state_colour("down"), esc(p)),
                None => (state_colour("up"), "ok".to_string()),
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style=\"color:{colour};font-weight:bold\">{problem}</td></tr>",
                esc(&b.name),
                esc(&b.source),
                if b.takes { "yes" } else { "no" },
                esc(b.running.as_deref().unwrap_or("")),
                esc(&last),
                esc(&verified),
            )
        })
        .collect();
    format!(
        "<h2>Backups</h2><table><tr><th>backup</th><th>source</th><th>taken here</th><th>running</th>\
         <th>last snapshot</th><th>last verified restore</th><th>state</th></tr>{rows}</table>"
    )
}

/// The public status page (no token: it is for everyone).
async fn status_page(State(s): State<Arc<dyn Source>>) -> Response {
    Html(statuspage::summary(&s.status()).html()).into_response()
}

async fn status_json(State(s): State<Arc<dyn Source>>) -> Response {
    (
        [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        Json(statuspage::summary(&s.status()).json()),
    )
        .into_response()
}

async fn status_feed(State(s): State<Arc<dyn Source>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")],
        statuspage::summary(&s.status()).atom(),
    )
        .into_response()
}

async fn dashboard(State(s): State<Arc<dyn Source>>) -> Response {
    // Any page of the cluster may read this one (the dashboard moves to a live site).
    (
        [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        Html(render_dashboard(&s.status())),
    )
        .into_response()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub use outlast_core::duration::human_ms;

fn state_colour(state: &str) -> &'static str {
    match state {
        "up" | "yes" => "#1a7f37",
        "fenced" | "unknown" | "no" => "#9a6700",
        _ => "#cf222e",
    }
}

/// The open incidents and the latest resolved ones, from the committed history.
fn render_incidents(st: &Status) -> String {
    let all = &st.history.incidents;
    if all.is_empty() {
        return "<h2>Incidents</h2><p>None recorded (<a href=\"/status\">status page</a>).</p>"
            .into();
    }
    let mut shown: Vec<&outlast_core::incident::Incident> =
        all.iter().rev().filter(|i| i.is_open()).collect();
    shown.extend(all.iter().rev().filter(|i| !i.is_open()).take(5));
    let mut rows = String::new();
    for i in shown {
        let last = i.updates.last();
        rows.push_str(&format!(
            "<tr id=\"incident-{}\"><td>#{}</td><td>{}</td><td style=\"color:{};font-weight:bold\">{}</td><td>{}</td><td>{} ago</td><td>{}</td></tr>",
            i.id,
            i.id,
            esc(&i.title),
            if i.is_open() { "#cf222e" } else { "#1a7f37" },
            i.status.word(),
            i.impact.word(),
            human_ms(st.at_ms.saturating_sub(i.started_ms)),
            esc(last.map_or("", |u| u.body.as_str()))
        ));
    }
    format!(
        "<h2>Incidents</h2><table><tr><th>id</th><th>incident</th><th>status</th><th>impact</th><th>started</th><th>last update</th></tr>{rows}</table>"
    )
}

/// Each dependency: its committed state, each site's verdict, and this site's endpoints
/// with what its egress forwarder sent them.
fn render_dependencies(st: &Status) -> String {
    if st.dependencies.is_empty() {
        return String::new();
    }
    let mut s = String::from("<h2>Dependencies</h2>");
    for d in &st.dependencies {
        let sites: Vec<String> = d
            .sites
            .iter()
            .map(|(site, v)| format!("{}: {}", esc(site), esc(v)))
            .collect();
        s.push_str(&format!(
            "<p id=\"dependency-{}\"><b>{}</b> <span style=\"color:{};font-weight:bold\">{}</span>{} · {}{}</p>",
            esc(&d.name),
            esc(&d.name),
            state_colour(if d.state == "degraded" { "unknown" } else { &d.state }),
            esc(&d.state),
            if d.services.is_empty() {
                String::new()
            } else {
                format!(" · used by {}", esc(&d.services.join(", ")))
            },
            sites.join(", "),
            d.in_use
                .as_ref()
                .map(|e| format!(" · egress here goes to <b>{}</b>", esc(e)))
                .unwrap_or_default()
        ));
        s.push_str("<table><tr><th>endpoint</th><th>health here</th><th>since</th><th>last check</th><th>connections</th><th>errors</th><th>sent</th><th>received</th><th>open</th><th>last error</th></tr>");
        for e in &d.endpoints {
            s.push_str(&format!(
                "<tr><td>{}</td><td style=\"color:{};font-weight:bold\">{}{}</td><td>{}</td><td>{:.1} ms</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&e.address),
                state_colour(&e.health),
                esc(&e.health),
                if e.cut { " (cut by a drill)" } else { "" },
                human_ms(e.since_ms),
                e.last_probe_ms,
                e.connections,
                e.errors,
                human_bytes(e.bytes_sent),
                human_bytes(e.bytes_received),
                e.active,
                esc(e.last_error.as_deref().or(e.egress_error.as_deref()).unwrap_or(""))
            ));
        }
        s.push_str("</table>");
    }
    s
}

fn human_bytes(b: u64) -> String {
    match b {
        0..=9_999 => format!("{b} B"),
        10_000..=9_999_999 => format!("{} kB", b / 1000),
        _ => format!("{} MB", b / 1_000_000),
    }
}

/// The answering site's links, as its heartbeats measure them: round trip, loss, the
/// heartbeat's wait, and the peer's clock (its rate against this site's; a wall clock the
/// peer's requests are refused for).
fn render_links(st: &Status) -> String {
    if st.links.is_empty() {
        return String::new();
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    let mut rows = String::new();
    for l in &st.links {
        let refused = st
            .sites
            .iter()
            .find(|s| s.name == l.peer)
            .and_then(|s| s.clock_offset_ms);
        let clock = match (l.clock_ppm, refused) {
            (_, Some(off)) => format!(
                "<b style=\"color:#cf222e\">wall clock {:+.0} s off: its requests are refused</b>",
                off as f64 / 1000.0
            ),
            (Some(ppm), None) if l.clock_odd => format!(
                "<b style=\"color:#cf222e\">{:+.1}% rate: past the 5% bound, no lease for it</b>",
                ppm as f64 / 10_000.0
            ),
            (Some(ppm), None) => format!("{ppm:+} ppm"),
            (None, None) => "measuring".into(),
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{} ms</td><td>{clock}</td></tr>",
            esc(&l.peer),
            ms(l.rtt_ms),
            ms(l.rtt_p99_ms),
            l.loss * 100.0,
            l.probe_timeout_ms,
        ));
    }
    let own = st.clock_odd_ppm.map_or(String::new(), |ppm| {
        format!(
            "<p style=\"color:#cf222e;font-weight:bold\">This site's clock runs off every other site's ({:+.1}% as measured against them): it holds no primary role and renews no lease until it agrees again.</p>",
            ppm as f64 / 10_000.0
        )
    });
    format!(
        "<h2>Links from {}</h2>{own}<table><tr><th>to</th><th>round trip</th><th>p99</th><th>loss</th><th>heartbeat waits</th><th>clock</th></tr>{rows}</table>",
        esc(&st.site)
    )
}

/// The alerts this site tried to deliver.
fn render_alerts_sent(st: &Status) -> String {
    if st.alerts_sent.is_empty() {
        return String::new();
    }
    let mut rows = String::new();
    for a in st.alerts_sent.iter().take(15) {
        rows.push_str(&format!(
            "<tr><td>{} ago</td><td>{}</td><td>{}</td><td style=\"color:{};font-weight:bold\">{}</td><td>{}</td></tr>",
            human_ms(st.at_ms.saturating_sub(a.unix_ms)),
            esc(&a.kind),
            esc(&a.channel),
            state_colour(if a.ok { "up" } else { "down" }),
            if a.ok { "delivered" } else { "failed" },
            esc(&match &a.error {
                Some(e) => format!("{} ({e})", a.message),
                None => a.message.clone(),
            })
        ));
    }
    format!(
        "<h2>Alerts sent from here</h2><table><tr><th>when</th><th>kind</th><th>target</th><th>delivery</th><th>message</th></tr>{rows}</table>"
    )
}

/// A page a person reads at a glance. It refreshes itself every two seconds from the site
/// that served it and, when that site stops answering, from the next site that does, and
/// says so; with no site answering it says how old what it shows is.
pub fn render_dashboard(st: &Status) -> String {
    let coloured = |v: &str| {
        format!(
            "<td style=\"color:{};font-weight:bold\">{}</td>",
            state_colour(v),
            esc(v)
        )
    };
    let mut rows = String::new();
    for s in &st.sites {
        rows.push_str(&format!(
            "<tr><td>{}{}</td>{}<td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            if s.witness { " (witness)" } else { "" },
            coloured(&s.state),
            match s.last_seen_ms {
                Some(0) if s.name == st.site => "this site".to_string(),
                Some(m) => format!("{} ago", human_ms(m)),
                None => "never".into(),
            },
            if s.cannot_reach.is_empty() {
                String::new()
            } else {
                format!("cannot reach {}", esc(&s.cannot_reach.join(", ")))
            }
        ));
    }
    let mut svcs = String::new();
    let mut backends = String::new();
    for s in &st.services {
        let acting = match (&s.primary, s.primary_acting) {
            (None, _) => "-",
            (Some(_), true) => "yes",
            (Some(_), false) => "no",
        };
        svcs.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td>{}<td>{}</td><td>{} ({} forwarded)</td><td>{}</td></tr>",
            esc(&s.name),
            esc(&s.mode),
            esc(s.primary.as_deref().unwrap_or("-")),
            if acting == "-" { "<td>-</td>".to_string() } else { coloured(acting) },
            esc(&s.active_sites.join(", ")),
            s.requests,
            s.forwarded,
            s.epoch
        ));
        for b in &s.backends {
            backends.push_str(&format!(
                "<tr><td>{}</td><td>{}</td>{}<td>for {}</td><td>{:.1} ms</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.name),
                esc(&b.address),
                coloured(&b.health),
                human_ms(b.since_ms),
                b.last_probe_ms,
                b.served,
                b.failed,
                esc(b.last_error.as_deref().unwrap_or(""))
            ));
        }
    }
    let backends = if backends.is_empty() {
        String::new()
    } else {
        format!(
            "<h2>Backends at {}</h2><table><tr><th>service</th><th>backend</th><th>health</th><th>since</th><th>last check</th><th>served</th><th>failed</th><th>last error</th></tr>{backends}</table>",
            esc(&st.site)
        )
    };
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
    let failovers = if st.failovers.is_empty() {
        String::new()
    } else {
        let items: String = st
            .failovers
            .iter()
            .map(|f| {
                let start = f.phases.first().map_or(0, |p| p.at_ms);
                let phases: Vec<String> = f
                    .phases
                    .iter()
                    .map(|p| {
                        format!(
                            "{} +{}",
                            esc(&p.name),
                            human_ms(p.at_ms.saturating_sub(start))
                        )
                    })
                    .collect();
                format!(
                    "<li><b>{}</b> {} → {} ({}, epoch {}), {} ago: {}</li>",
                    esc(&f.what),
                    esc(f.from.as_deref().unwrap_or("none")),
                    esc(&f.to),
                    esc(&f.reason),
                    f.epoch,
                    human_ms(st.at_ms.saturating_sub(start)),
                    phases.join(", ")
                )
            })
            .collect();
        format!("<h2>Last failovers</h2><ul>{items}</ul>")
    };
    let datasets: String = st
        .datasets
        .iter()
        .map(|d| {
            let members: String = d
                .members
                .iter()
                .map(|m| {
                    let role = match m.role.as_str() {
                        "primary" | "standby" => "up",
                        "fenced" | "cloning" | "rewinding" | "unknown" => "fenced",
                        _ => "down",
                    };
                    format!(
                        "<tr><td>{}</td><td style=\"color:{};font-weight:bold\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&m.site),
                        state_colour(role),
                        esc(&m.role),
                        esc(m.lsn.as_deref().unwrap_or("-")),
                        m.lag_bytes.map_or("-".to_string(), |b| format!("{b} B")),
                        m.lag_ms.map_or("-".to_string(), human_ms),
                        esc(m.sync.as_deref().unwrap_or("-")),
                        esc(m.error.as_deref().unwrap_or(""))
                    )
                })
                .collect();
            let sync_set = match &d.sync_set {
                None => "not recorded".to_string(),
                Some(s) if s.is_empty() => "none (going on alone)".to_string(),
                Some(s) => s.join(", "),
            };
            let alone = d.standby_lost.as_deref().map_or(String::new(), |a| {
                format!(
                    " · <b style=\"color:{}\">{}</b>",
                    state_colour("down"),
                    esc(&format!("every standby lost: {a}"))
                )
            });
            let diverged: String = d
                .diverged
                .iter()
                .map(|v| {
                    format!(
                        "<li>{} (epoch {}, to {}): <code>{}</code></li>",
                        esc(&v.site),
                        v.epoch,
                        esc(v.to_lsn.as_deref().unwrap_or("?")),
                        esc(&v.path)
                    )
                })
                .collect();
            let diverged = if diverged.is_empty() {
                String::new()
            } else {
                format!("<p>Diverged history kept here:</p><ul>{diverged}</ul>")
            };
            let position = if d.kind == "redis" { "offset" } else { "LSN" };
            format!(
                "<h3>{} ({}, {})</h3><p>primary <b>{}</b> · epoch {} · synchronous set {}{alone}</p>\
                 <table><tr><th>site</th><th>role</th><th>{position}</th><th>lag</th><th>lag time</th><th>sync state</th><th>error</th></tr>{members}</table>{diverged}",
                esc(&d.name),
                esc(&d.kind),
                esc(&d.replication),
                esc(d.primary.as_deref().unwrap_or("none")),
                d.epoch,
                esc(&sync_set),
            )
        })
        .collect();
    let datasets = if datasets.is_empty() {
        String::new()
    } else {
        format!("<h2>Datasets</h2>{datasets}")
    };
    let backups = render_backups(st);
    let incidents = render_incidents(st);
    let dependencies = render_dependencies(st);
    let alerts_sent = render_alerts_sent(st);
    let links = render_links(st);
    let faults = if st.faults.is_empty() {
        String::new()
    } else {
        let items: String = st
            .faults
            .iter()
            .map(|f| {
                format!(
                    "<li>{} (ends in {})</li>",
                    esc(&f.kind.describe()),
                    human_ms(f.remaining_ms)
                )
            })
            .collect();
        format!("<h2 style=\"color:#cf222e\">Injected faults</h2><ul>{items}</ul>")
    };
    let apis: Vec<String> = st
        .sites
        .iter()
        .filter_map(|s| s.api.as_ref())
        .map(|a| format!("\"{}\"", esc(a)))
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><noscript><meta http-equiv=\"refresh\" content=\"2\"></noscript>\
         <title>outlast · {cluster}</title><style>body{{font-family:system-ui,sans-serif;margin:2em}}\
         table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:left}}\
         #stale{{display:none;background:#fff8c5;border:1px solid #d4a72c;padding:.6em 1em;margin-bottom:1em;font-weight:bold}}</style>\
         </head><body><div id=\"stale\"></div><div id=\"live\"><h1>{cluster}</h1><p>answered by <b>{site}</b> · leader <b>{leader}</b> · term {term} · epoch {epoch}</p>\
         <h2>Sites</h2><table><tr><th>site</th><th>state</th><th>last heard</th><th>cut links</th></tr>{rows}</table>{links}\
         <h2>Services</h2><table><tr><th>service</th><th>mode</th><th>primary</th><th>acting</th><th>active at</th><th>requests here</th><th>epoch</th></tr>{svcs}</table>\
         {incidents}{backends}{dependencies}{datasets}{backups}{failovers}{streams}{alerts_sent}{faults}</div>\
         <script>const sites=[{apis}];let current=location.origin,lastOk=Date.now();\
         async function refresh(){{const order=[current,...sites.filter(s=>s!==current)];\
         for(const base of order){{try{{const r=await fetch(base+'/',{{cache:'no-store',signal:AbortSignal.timeout(1500)}});if(!r.ok)continue;\
         const doc=new DOMParser().parseFromString(await r.text(),'text/html');const live=doc.getElementById('live');if(!live)continue;\
         document.getElementById('live').innerHTML=live.innerHTML;const b=document.getElementById('stale');\
         if(base!==location.origin){{b.textContent='The site that served this page ('+location.host+') stopped answering: showing '+base+' instead.';b.style.display='block';}}else{{b.style.display='none';}}\
         current=base;lastOk=Date.now();return;}}catch(e){{}}}}\
         const b=document.getElementById('stale');b.textContent='No site of the cluster answers: what you see is '+Math.round((Date.now()-lastOk)/1000)+' s old.';b.style.display='block';}}\
         setInterval(refresh,2000);</script></body></html>",
        cluster = esc(&st.cluster),
        site = esc(&st.site),
        leader = esc(st.leader.as_deref().unwrap_or("none")),
        term = st.term,
        epoch = st.epoch,
        apis = apis.join(","),
    )
}

/// Serves the API until `shutdown` resolves (mini-redis's `run(listener, shutdown)` shape).
/// Serves the API within `conns` (see [`serve`]).
pub async fn run(
    listener: tokio::net::TcpListener,
    source: Arc<dyn Source>,
    conns: Arc<outlast_gateway::limits::ConnLimit>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = serve::Limits {
        conns,
        max_body: body_limit(source.as_ref()),
        drain: std::time::Duration::from_secs(3),
        tls,
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
    fn the_dashboard_shows_backends_failovers_and_times_in_human_units() {
        let mut st: Status = serde_json::from_value(serde_json::json!({
            "cluster": "shop", "site": "west", "leader": "west", "term": 3, "epoch": 7,
            "at_ms": 1_000_000,
            "sites": [
                {"name": "east", "state": "down", "witness": false, "last_seen_ms": 24_500,
                 "api": "http://127.0.0.11:7401"},
                {"name": "west", "state": "up", "witness": false, "last_seen_ms": 0,
                 "api": "http://127.0.0.12:7401"}
            ],
            "services": [{"name": "web", "mode": "primary-standby", "primary": "west",
                "active_sites": ["west"], "epoch": 7, "primary_acting": true,
                "local_health": "up", "requests": 120, "forwarded": 3,
                "backends": [{"address": "127.0.0.1:9002", "health": "up", "since_ms": 180_000,
                    "last_probe_ms": 0.4, "last_error": null, "served": 117, "failed": 0}]}],
            "streams": [],
            "failovers": [{"what": "web", "epoch": 7, "from": "east", "to": "west",
                "reason": "failover", "phases": [
                    {"name": "last-heard", "at_ms": 880_000},
                    {"name": "acting", "at_ms": 881_300}]}]
        }))
        .expect("a status");
        let page = render_dashboard(&st);
        for want in [
            "24 s ago",
            "127.0.0.1:9002",
            "for 3 min",
            "120 (3 forwarded)",
            "<b>web</b> east → west (failover, epoch 7), 2 min ago: last-heard +0 ms, acting +1.3 s",
            r#"const sites=["http://127.0.0.11:7401","http://127.0.0.12:7401"]"#,
            "stopped answering",
        ] {
            assert!(page.contains(want), "{want} missing in\n{page}");
        }
        st.failovers.clear();
        assert!(!render_dashboard(&st).contains("Last failovers"));
        assert_eq!(human_ms(999), "999 ms");
        assert_eq!(human_ms(7_200_000), "2 h");
    }

    /// Issue 39: the links' round trips, loss and clocks on the page, odd clocks in red.
    #[test]
    fn the_dashboard_shows_each_link_and_an_odd_clock_in_words() {
        let st: Status = serde_json::from_value(serde_json::json!({
            "cluster": "shop", "site": "east", "leader": "east", "term": 3, "epoch": 7,
            "sites": [
                {"name": "west", "state": "down", "witness": false, "last_seen_ms": null,
                 "clock_refused": 40, "clock_offset_ms": -90_004},
                {"name": "witness", "state": "up", "witness": true, "last_seen_ms": 3}
            ],
            "services": [], "streams": [],
            "links": [
                {"peer": "west", "rtt_ms": null, "rtt_p99_ms": null, "loss": 1.0,
                 "probe_timeout_ms": 275, "clock_ppm": null},
                {"peer": "witness", "rtt_ms": 80.4, "rtt_p99_ms": 97.0, "loss": 0.01,
                 "probe_timeout_ms": 155, "clock_ppm": 250_000, "clock_odd": true}
            ]
        }))
        .expect("a status");
        let page = render_dashboard(&st);
        for want in [
            "<h2>Links from east</h2>",
            "<td>witness</td><td>80.4 ms</td><td>97.0 ms</td><td>1.0%</td><td>155 ms</td>",
            "+25.0% rate: past the 5% bound, no lease for it",
            "wall clock -90 s off: its requests are refused",
        ] {
            assert!(page.contains(want), "{want} missing in\n{page}");
        }
    }

    #[test]
    fn a_dataset_shows_its_members_sync_set_and_diverged_history() {
        use outlast_core::status::{DatasetMemberStatus, DatasetStatus, DivergedStatus};
        let mut st = with_stream();
        let member = |site: &str, role: &str, lsn: &str| DatasetMemberStatus {
            site: site.into(),
            role: role.into(),
            lsn: Some(lsn.into()),
            lag_bytes: (role == "standby").then_some(4096),
            lag_ms: (role == "standby").then_some(1500),
            sync: (role == "standby").then(|| "quorum".into()),
            error: None,
        };
        st.datasets = vec![DatasetStatus {
            name: "orders".into(),
            service: "pg".into(),
            kind: "postgres".into(),
            primary: Some("west".into()),
            epoch: 4,
            replication: "sync".into(),
            members: vec![
                member("east", "standby", "0/3000060"),
                member("west", "primary", "0/3001060"),
            ],
            standby_lost: Some("degraded".into()),
            sync_set: Some(vec![]),
            diverged: vec![DivergedStatus {
                site: "east".into(),
                epoch: 3,
                to_lsn: Some("0/2FFF000".into()),
                path: "/var/lib/outlast/east/pg.diverged/3".into(),
            }],
        }];
        let page = render_dashboard(&st);
        for want in [
            "<h2>Datasets</h2>",
            "orders (postgres, sync)",
            "primary <b>west</b> · epoch 4 · synchronous set none (going on alone)",
            "every standby lost: degraded",
            "<td>0/3000060</td><td>4096 B</td><td>1.5 s</td><td>quorum</td>",
            "<code>/var/lib/outlast/east/pg.diverged/3</code>",
        ] {
            assert!(page.contains(want), "missing {want:?} in {page}");
        }
    }

    #[test]
    fn a_backup_shows_its_last_snapshot_and_verified_restore() {
        use outlast_core::status::{BackupRun, BackupStatus, VerifyRun};
        let mut st = with_stream();
        st.at_ms = 1_000_000;
        st.backups = vec![BackupStatus {
            name: "orders".into(),
            source: "dataset:orders".into(),
            takes: true,
            last_ok: Some(BackupRun {
                at_ms: 940_000,
                ok: true,
                duration_ms: 3_700,
                bytes: 65_100_000,
                ..Default::default()
            }),
            verify_ok: Some(VerifyRun {
                at_ms: 970_000,
                ok: true,
                restore_ms: 2_000,
                age_ms: 23_000,
                ..Default::default()
            }),
            problem: Some("verify failed: MAC check failed".into()),
            ..Default::default()
        }];
        let page = render_dashboard(&st);
        for want in [
            "<h2>Backups</h2>",
            "<td>orders</td><td>dataset:orders</td><td>yes</td>",
            "1 min ago, 65.1 MB in 3.7 s",
            "30 s ago: restored in 2.0 s, 23 s old",
            "verify failed: MAC check failed",
        ] {
            assert!(page.contains(want), "missing {want:?} in {page}");
        }
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
