//! Agent-to-agent traffic on `address:peer_port`: Raft RPCs and heartbeats.
//!
//! Every request and every answer is authenticated with the cluster secret: a header
//! `x-outlast-auth: site=<from>;to=<recipient>;n=<nonce>;mac=<hex>` where the MAC is a keyed
//! BLAKE3 hash (key derived from the secret) over the sender, the recipient, the nonce, the
//! path and the body. Refused with 401 (one answer for every reason, so a stranger learns
//! nothing, not even which site names are members) and counting for nothing (no heartbeat,
//! no vote, no lease): a request from a site that is not a member, with a MAC that does not
//! match, addressed to another site, with a nonce more than a minute from this site's
//! clock, or one seen before. One reason is told: a member's authentic request whose nonce
//! is more than a minute off is answered "clock: ..." in words, counted
//! (`outlast_peer_clock_refused_total`, status `sites[].clock_refused`) and, while that
//! member gets nothing through, alerted as a clock problem.
//!
//! # Replays
//! A nonce is the sender's clock in microseconds, bumped so that it grows strictly within a
//! process. The recipient keeps, per sender, every nonce of the last [`REPLAY_WINDOW_US`]
//! below the highest it has seen, and refuses a nonce it holds or one older than that
//! window: a captured request replayed later, to this site or another, is refused and
//! counted (`outlast_peer_replays_refused_total`, status `sites[].replays_refused`).
//! Requests of one sender may arrive out of order (several connections), within the window.
//! A sender whose clock steps back by more than the window is refused until it catches up
//! (set clocks with NTP slewing, as for leases).
//!
//! Answers are signed the same way with the path + "#answer" and the request's nonce, so an
//! answer belongs to one request: a stranger answering on a peer's port, or replaying an
//! old answer, cannot grant a lease either. Peers dial from their own site address, so a
//! cut of one address cuts exactly that site.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use outlast_control::store::{NodeId, TypeConfig};
use outlast_core::faults::Faults;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const AUTH_HEADER: &str = "x-outlast-auth";
const MAX_SKEW_MS: u64 = 60_000;
/// How far behind a sender's newest nonce one of its requests may be (microseconds): above
/// any peer call's timeout, so that requests overtaken on another connection still count.
pub const REPLAY_WINDOW_US: u64 = 10_000_000;
/// At most this many nonces are held per sender (the window's floor rises past the oldest).
const REPLAY_HELD_MAX: usize = 100_000;

/// Signs and checks peer traffic with the cluster secret.
pub struct PeerAuth {
    key: [u8; 32],
    me: String,
    members: HashSet<String>,
    /// The last nonce this site used.
    nonce: AtomicU64,
    /// Per sender: the nonces seen in the window.
    seen: Mutex<HashMap<String, Window>>,
    /// Per member: its authentic requests refused because its clock was more than
    /// [`MAX_SKEW_MS`] off this site's.
    skewed: Mutex<BTreeMap<String, Skewed>>,
}

/// A member's requests refused for its clock: how many, and by how much it was off the last
/// time (ms; + when its clock is ahead of this site's), and when (this site's Unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skewed {
    pub refused: u64,
    pub offset_ms: i64,
    pub last_unix_ms: u64,
}

/// One sender's recent nonces: everything at or below `floor` is refused, and so is every
/// nonce held.
#[derive(Debug, Default)]
struct Window {
    floor: u64,
    held: BTreeSet<u64>,
    refused: u64,
    /// When a request of this sender was last accepted (this site's Unix ms).
    last_ok_ms: u64,
}

impl Window {
    /// Takes `n` once; false when it was seen before or is older than the window.
    fn take(&mut self, n: u64) -> bool {
        if n <= self.floor || !self.held.insert(n) {
            self.refused += 1;
            return false;
        }
        let top = self.held.last().copied().unwrap_or(n);
        let floor = top.saturating_sub(REPLAY_WINDOW_US);
        while let Some(first) = self.held.first().copied() {
            if first > floor && self.held.len() <= REPLAY_HELD_MAX {
                break;
            }
            self.held.pop_first();
            self.floor = self.floor.max(first);
        }
        self.floor = self.floor.max(floor);
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no {AUTH_HEADER} header")]
    Missing,
    #[error("malformed {AUTH_HEADER} header")]
    Malformed,
    #[error("site {0:?} is not a member of this cluster")]
    Stranger(String),
    #[error("addressed to {0:?}, not to this site")]
    NotForMe(String),
    #[error("the clock of site {site} is {} s {} this site's (signed peer requests may differ by {} s at most): its requests are refused until the clocks agree; set the wrong one right (NTP, a VM's clock)", .offset_ms.unsigned_abs() / 1000, if *.offset_ms > 0 { "ahead of" } else { "behind" }, MAX_SKEW_MS / 1000)]
    Skew { site: String, offset_ms: i64 },
    #[error("signature does not match (another cluster secret?)")]
    BadMac,
    #[error("a request from {0} seen before (a replay)")]
    Replay(String),
    #[error("the answer is not to this request")]
    NotMyAnswer,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub use outlast_core::clock::unix_ms;

fn unix_us() -> u64 {
    outlast_core::clock::unix_us() as u64
}

/// A checked header's fields.
struct Signed<'a> {
    site: &'a str,
    to: &'a str,
    nonce: u64,
    mac: &'a str,
}

impl PeerAuth {
    pub fn new(secret: &str, me: &str, members: impl IntoIterator<Item = String>) -> Self {
        Self {
            key: blake3::derive_key("outlast 2026 peer authentication v2", secret.as_bytes()),
            me: me.to_string(),
            members: members.into_iter().collect(),
            nonce: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
            skewed: Mutex::new(BTreeMap::new()),
        }
    }

    fn mac(&self, site: &str, to: &str, nonce: u64, path: &str, body: &[u8]) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        for part in [
            site.as_bytes(),
            to.as_bytes(),
            nonce.to_string().as_bytes(),
            path.as_bytes(),
        ] {
            h.update(part);
            h.update(&[0]);
        }
        h.update(body);
        hex::encode(h.finalize().as_bytes())
    }

    /// A fresh nonce: the clock in microseconds, above every nonce this process used.
    fn next_nonce(&self) -> u64 {
        let now = unix_us();
        let prev = self
            .nonce
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        now.max(prev + 1)
    }

    fn header(&self, to: &str, nonce: u64, path: &str, body: &[u8]) -> String {
        format!(
            "site={};to={to};n={nonce};mac={}",
            self.me,
            self.mac(&self.me, to, nonce, path, body)
        )
    }

    /// Signs a request to `to`; the header and its nonce (which the answer must carry).
    pub fn sign(&self, to: &str, path: &str, body: &[u8]) -> (String, u64) {
        let nonce = self.next_nonce();
        (self.header(to, nonce, path, body), nonce)
    }

    /// Signs the answer to a request from `to` that carried `nonce`.
    pub fn sign_answer(&self, to: &str, nonce: u64, path: &str, body: &[u8]) -> String {
        self.header(to, nonce, &format!("{path}#answer"), body)
    }

    fn parse<'a>(&self, header: Option<&'a HeaderValue>) -> Result<Signed<'a>, AuthError> {
        let text = header
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Malformed)?;
        let (mut site, mut to, mut nonce, mut mac) = (None, None, None, None);
        for part in text.split(';') {
            match part.split_once('=') {
                Some(("site", v)) => site = Some(v),
                Some(("to", v)) => to = Some(v),
                Some(("n", v)) => nonce = v.parse::<u64>().ok(),
                Some(("mac", v)) => mac = Some(v),
                _ => return Err(AuthError::Malformed),
            }
        }
        let (Some(site), Some(to), Some(nonce), Some(mac)) = (site, to, nonce, mac) else {
            return Err(AuthError::Malformed);
        };
        if !self.members.contains(site) {
            return Err(AuthError::Stranger(site.to_string()));
        }
        if to != self.me {
            return Err(AuthError::NotForMe(to.to_string()));
        }
        Ok(Signed {
            site,
            to,
            nonce,
            mac,
        })
    }

    fn check_mac(&self, s: &Signed<'_>, path: &str, body: &[u8]) -> Result<(), AuthError> {
        let expected = self.mac(s.site, s.to, s.nonce, path, body);
        // Compared as hashes (constant time): the MAC is a secret-derived value.
        if s.mac.len() != 64
            || blake3::Hash::from_hex(&expected).ok() != blake3::Hash::from_hex(s.mac).ok()
        {
            return Err(AuthError::BadMac);
        }
        Ok(())
    }

    /// Checks a request's signature and that it is new; returns the sending site and the
    /// nonce its answer must carry.
    pub fn verify(
        &self,
        header: Option<&HeaderValue>,
        path: &str,
        body: &[u8],
    ) -> Result<(String, u64), AuthError> {
        let s = self.parse(header)?;
        // The signature first: only a member's authentic request can be reported as a
        // clock problem of that member.
        self.check_mac(&s, path, body)?;
        let now = unix_ms();
        let offset_ms = (s.nonce / 1000) as i64 - now as i64;
        if offset_ms.unsigned_abs() > MAX_SKEW_MS {
            metrics::counter!("outlast_peer_clock_refused_total", "peer" => s.site.to_string())
                .increment(1);
            let mut skewed = self.skewed.lock().unwrap_or_else(|p| p.into_inner());
            let k = skewed.entry(s.site.to_string()).or_default();
            k.refused += 1;
            k.offset_ms = offset_ms;
            k.last_unix_ms = now;
            return Err(AuthError::Skew {
                site: s.site.to_string(),
                offset_ms,
            });
        }
        // Only an authentic request reaches the window: strangers cannot fill it.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let window = seen.entry(s.site.to_string()).or_default();
        if !window.take(s.nonce) {
            metrics::counter!("outlast_peer_replays_refused_total", "peer" => s.site.to_string())
                .increment(1);
            return Err(AuthError::Replay(s.site.to_string()));
        }
        window.last_ok_ms = now;
        Ok((s.site.to_string(), s.nonce))
    }

    /// Checks that an answer is `site`'s answer to the request of `nonce`.
    pub fn verify_answer(
        &self,
        header: Option<&HeaderValue>,
        site: &str,
        nonce: u64,
        path: &str,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let s = self.parse(header)?;
        if s.site != site {
            return Err(AuthError::Stranger(s.site.to_string()));
        }
        if s.nonce != nonce {
            return Err(AuthError::NotMyAnswer);
        }
        self.check_mac(&s, &format!("{path}#answer"), body)
    }

    /// Per member: its requests refused for its clock since this agent started.
    pub fn clock_refused(&self) -> BTreeMap<String, Skewed> {
        self.skewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Members cut off from this site by their clock now: their requests were refused for
    /// it within `within_ms` of `now` and none was accepted since. (A captured request
    /// replayed later is refused the same way, but its sender's own requests still pass:
    /// that is no clock problem.) Each with how far its clock was off (ms).
    pub fn cut_by_clock(&self, now: u64, within_ms: u64) -> BTreeMap<String, i64> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let skewed = self.skewed.lock().unwrap_or_else(|p| p.into_inner());
        skewed
            .iter()
            .filter(|(site, k)| {
                let ok = seen.get(*site).map_or(0, |w| w.last_ok_ms);
                now.saturating_sub(k.last_unix_ms) <= within_ms
                    && ok < k.last_unix_ms.saturating_sub(within_ms)
            })
            .map(|(site, k)| (site.clone(), k.offset_ms))
            .collect()
    }

    /// Per peer: requests refused as replays since this agent started.
    pub fn replays_refused(&self) -> BTreeMap<String, u64> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, w)| (k.clone(), w.refused))
            .collect()
    }
}

/// A heartbeat's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub site: String,
    /// The highest epoch in the answering site's Raft log (see the lease design).
    pub log_epoch: u64,
    pub applied_epoch: u64,
    /// The answering site's clock when it answered (ms since its agent started), for the
    /// asking site's estimate of its rate.
    #[serde(default)]
    pub clock_ms: Option<u64>,
}

/// What the peer server needs from the agent.
pub trait PeerHandler: Send + Sync + 'static {
    fn raft(&self) -> &outlast_control::store::Raft;
    fn relay(&self) -> &outlast_relay::Relay;
    fn heartbeat(&self, from: &str, report: outlast_control::Report) -> HeartbeatAck;
    fn step_down_requested(&self, from: &str, req: super::StepDown);
    /// `from` sent entries (or a heartbeat) this site took as from its leader.
    fn heard_leader(&self, from: &str);
    /// A site that does not lead passes on an operator's request: check and commit it.
    fn request(
        &self,
        req: outlast_control::Request,
    ) -> outlast_web::BoxFuture<'_, Result<super::moves::Committed, super::moves::Failed>>;
}

pub struct PeerServer {
    pub auth: Arc<PeerAuth>,
    /// With TLS on the peer port: a request must come from a site its certificate names.
    pub tls: Option<Arc<outlast_web::tls::PeerTls>>,
    pub handler: Arc<dyn PeerHandler>,
    /// Injected faults: a partition refuses the cut-off sites' requests here too.
    pub faults: Arc<Faults>,
    /// A stranger knocking ten times a second is counted every time but logged once
    /// every ten seconds per kind of refusal.
    pub refusals_logged: outlast_core::throttle::LogThrottle,
}

impl PeerServer {
    pub fn new(
        auth: Arc<PeerAuth>,
        tls: Option<Arc<outlast_web::tls::PeerTls>>,
        handler: Arc<dyn PeerHandler>,
        faults: Arc<Faults>,
    ) -> Self {
        Self {
            auth,
            tls,
            handler,
            faults,
            refusals_logged: outlast_core::throttle::LogThrottle::new(Duration::from_secs(10)),
        }
    }
}

/// Who an answer goes to and the nonce of the request it answers.
struct Asker<'a> {
    site: &'a str,
    nonce: u64,
}

fn signed(
    auth: &PeerAuth,
    to: &Asker<'_>,
    path: &str,
    code: StatusCode,
    body: Vec<u8>,
) -> Response {
    let sig = auth.sign_answer(to.site, to.nonce, path, &body);
    let mut resp = (code, body).into_response();
    if let Ok(v) = HeaderValue::from_str(&sig) {
        resp.headers_mut().insert(AUTH_HEADER, v);
    }
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, (StatusCode, String)> {
    serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("cannot decode request body: {e}"),
        )
    })
}

fn encode<T: Serialize>(auth: &PeerAuth, to: &Asker<'_>, path: &str, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => signed(auth, to, path, StatusCode::OK, body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode answer: {e}"),
        )
            .into_response(),
    }
}

async fn handle(
    State(srv): State<Arc<PeerServer>>,
    cert: Option<axum::Extension<outlast_web::tls::PeerCert>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let refused = |e: &dyn std::fmt::Display| {
        if srv.refusals_logged.allow(&e.to_string()) {
            tracing::warn!(path, error = %e, "refused peer request (logged once per 10 s)");
        }
        metrics::counter!("outlast_peer_auth_failures_total").increment(1);
        // The same answer for every reason: the reason is in this site's log only.
        (StatusCode::UNAUTHORIZED, "peer authentication failed").into_response()
    };
    let (from, nonce) = match srv.auth.verify(headers.get(AUTH_HEADER), &path, &body) {
        Ok(v) => v,
        Err(e @ AuthError::Skew { .. }) => {
            // An authentic member (its signature checked): it may know why, in words.
            let _ = refused(&e);
            return (StatusCode::UNAUTHORIZED, format!("clock: {e}")).into_response();
        }
        Err(e) => return refused(&e),
    };
    // The certificate the connection showed must name the site the request is from: a
    // member's certificate cannot speak for another member.
    if let Some(tls) = &srv.tls {
        let named = cert
            .as_ref()
            .is_some_and(|c| outlast_web::tls::names_site(&c.0 .0, &from));
        if !named {
            tls.count_refusal("claims-other-site");
            return refused(&format!(
                "a request from {from} over a connection whose certificate does not name it"
            ));
        }
    }
    let asker = Asker { site: &from, nonce };
    if srv.faults.cut(&from) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{from} is cut off from this site by an injected partition"),
        )
            .into_response();
    }
    let raft = srv.handler.raft();
    match path.as_str() {
        "/raft/append" => match decode::<AppendEntriesRequest<TypeConfig>>(&body) {
            Ok(req) => {
                let answer = raft.append_entries(req).await;
                if matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
                    srv.handler.heard_leader(&from);
                }
                encode(&srv.auth, &asker, &path, &answer)
            }
            Err(r) => r.into_response(),
        },
        "/raft/vote" => match decode::<VoteRequest<NodeId>>(&body) {
            Ok(req) => encode(&srv.auth, &asker, &path, &raft.vote(req).await),
            Err(r) => r.into_response(),
        },
        "/raft/snapshot" => match decode::<InstallSnapshotRequest<TypeConfig>>(&body) {
            Ok(req) => encode(&srv.auth, &asker, &path, &raft.install_snapshot(req).await),
            Err(r) => r.into_response(),
        },
        "/peer/heartbeat" => match decode::<outlast_control::Report>(&body) {
            Ok(report) if report.site == from => {
                let ack = srv.handler.heartbeat(&from, report);
                encode(&srv.auth, &asker, &path, &ack)
            }
            Ok(_) => (StatusCode::BAD_REQUEST, "a site may only report for itself").into_response(),
            Err(r) => r.into_response(),
        },
        // The JSON form is still taken from agents that predate the binary frame.
        "/peer/relay" | "/peer/relay-frame" => {
            let relay = srv.handler.relay();
            let answer = if path == "/peer/relay" {
                match decode::<outlast_relay::ReplicateReq>(&body) {
                    Ok(req) => relay.receive(&from, req).await,
                    Err(r) => return r.into_response(),
                }
            } else {
                relay.receive_frame(&from, body).await
            };
            match answer {
                Ok(resp) => encode(&srv.auth, &asker, &path, &resp),
                Err(e @ outlast_relay::RelayError::UnknownStream(_)) => {
                    (StatusCode::NOT_FOUND, e.to_string()).into_response()
                }
                Err(
                    e @ (outlast_relay::RelayError::Stranger(_)
                    | outlast_relay::RelayError::BadFrame(_)),
                ) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
        "/peer/request" => match decode::<outlast_control::Request>(&body) {
            Ok(req) => {
                tracing::info!(from, ?req, "an operator's request passed on by a peer");
                let answer = srv.handler.request(req).await;
                encode(&srv.auth, &asker, &path, &answer)
            }
            Err(r) => r.into_response(),
        },
        "/peer/step-down" => match decode::<super::StepDown>(&body) {
            Ok(req) => {
                srv.handler.step_down_requested(&from, req);
                encode(&srv.auth, &asker, &path, &true)
            }
            Err(r) => r.into_response(),
        },
        _ => (StatusCode::NOT_FOUND, "no such peer endpoint").into_response(),
    }
}

pub fn router(server: Arc<PeerServer>) -> axum::Router {
    // Stated, not left to axum's default (2 MB, below what a relay frame may hold: a
    // frame refused for its size was retried for ever and wedged the stream).
    axum::Router::new()
        .fallback(axum::routing::post(handle))
        .layer(axum::extract::DefaultBodyLimit::max(
            outlast_relay::PEER_MAX_BODY,
        ))
        .with_state(server)
}

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("peer {site} cut off by an injected partition")]
    Cut { site: String },
    #[error("peer {site} unreachable: {source}")]
    Transport {
        site: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("peer {site} answered {code}: {reason}")]
    Status {
        site: String,
        code: u16,
        reason: String,
    },
    #[error("peer {site} answer not authentic: {source}")]
    Auth {
        site: String,
        #[source]
        source: AuthError,
    },
    #[error("peer {site} answer not understood: {source}")]
    Decode {
        site: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Calls peers, from this site's own address.
pub struct PeerClient {
    http: reqwest::Client,
    auth: Arc<PeerAuth>,
    /// Site name → the peer port's base URL.
    peers: BTreeMap<String, String>,
    faults: Arc<Faults>,
}

impl PeerClient {
    /// With `tls`, every call is TLS 1.3 to `https://<site>.outlast:<port>` (the name
    /// resolved here to the peer's address), showing this site's certificate and expecting
    /// one that names the site dialled; without, plain HTTP.
    pub fn new(
        auth: Arc<PeerAuth>,
        source: IpAddr,
        peers: BTreeMap<String, SocketAddr>,
        faults: Arc<Faults>,
        tls: Option<&outlast_web::tls::PeerTls>,
    ) -> anyhow::Result<Self> {
        let mut b = reqwest::Client::builder()
            .local_address(source)
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true);
        let urls = peers
            .iter()
            .map(|(site, addr)| {
                let url = match tls {
                    Some(_) => {
                        let host = outlast_web::tls::peer_name(site);
                        b = std::mem::take(&mut b).resolve(&host, *addr);
                        format!("https://{host}:{}", addr.port())
                    }
                    None => format!("http://{addr}"),
                };
                (site.clone(), url)
            })
            .collect();
        if let Some(t) = tls {
            b = b.use_preconfigured_tls(t.client_config()).https_only(true);
        }
        Ok(Self {
            http: b.build()?,
            auth,
            peers: urls,
            faults,
        })
    }

    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        site: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = serde_json::to_vec(req).map_err(|source| CallError::Decode {
            site: site.into(),
            source,
        })?;
        self.call_with(site, path, body, "application/json", timeout)
            .await
    }

    /// [`call`](Self::call) with a body already encoded (the relay's binary frames).
    pub async fn call_with<Resp: DeserializeOwned>(
        &self,
        site: &str,
        path: &str,
        body: Vec<u8>,
        content_type: &'static str,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let base = self.peers.get(site).ok_or_else(|| CallError::Status {
            site: site.to_string(),
            code: 0,
            reason: "not a peer".into(),
        })?;
        if self.faults.cut(site) {
            return Err(CallError::Cut { site: site.into() });
        }
        let delay = self.faults.delay(site);
        if !delay.is_zero() {
            tokio::time::sleep(delay.min(timeout)).await;
        }
        let (auth, nonce) = self.auth.sign(site, path, &body);
        let resp = self
            .http
            .post(format!("{base}{path}"))
            .header(AUTH_HEADER, auth)
            .header("content-type", content_type)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|source| CallError::Transport {
                site: site.into(),
                source,
            })?;
        let code = resp.status();
        let sig = resp.headers().get(AUTH_HEADER).cloned();
        let bytes = resp.bytes().await.map_err(|source| CallError::Transport {
            site: site.into(),
            source,
        })?;
        if !code.is_success() {
            return Err(CallError::Status {
                site: site.into(),
                code: code.as_u16(),
                reason: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            });
        }
        self.auth
            .verify_answer(sig.as_ref(), site, nonce, path, &bytes)
            .map_err(|source| CallError::Auth {
                site: site.into(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|source| CallError::Decode {
            site: site.into(),
            source,
        })
    }
}

/// openraft's view of the peers.
#[derive(Clone)]
pub struct NetworkFactory {
    pub client: Arc<PeerClient>,
    /// Node id → site name.
    pub names: Arc<BTreeMap<NodeId, String>>,
}

pub struct Network {
    client: Arc<PeerClient>,
    target: NodeId,
    site: String,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Network {
        let site = self
            .names
            .get(&target)
            .cloned()
            .unwrap_or_else(|| format!("node-{target}"));
        Network {
            client: self.client.clone(),
            target,
            site,
        }
    }
}

impl Network {
    async fn rpc<
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    >(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let res: Result<Result<Resp, RaftError<NodeId, E>>, CallError> = self
            .client
            .call(&self.site, path, req, option.hard_ttl())
            .await;
        match res {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(e @ (CallError::Transport { .. } | CallError::Cut { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("/raft/vote", &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str, me: &str) -> PeerAuth {
        PeerAuth::new(
            secret,
            me,
            [
                "east".to_string(),
                "west".to_string(),
                "witness".to_string(),
            ],
        )
    }

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).expect("header")
    }

    #[test]
    fn a_signature_checks_out_with_the_same_secret_only() {
        let east = auth("s3cret", "east");
        let west = auth("s3cret", "west");
        let (sig, n) = east.sign("west", "/peer/heartbeat", b"{}");
        let sig = header(&sig);
        assert_eq!(
            west.verify(Some(&sig), "/peer/heartbeat", b"{}")
                .expect("valid"),
            ("east".to_string(), n)
        );
        let (sig, _) = east.sign("west", "/peer/heartbeat", b"{}");
        let sig = header(&sig);
        assert!(matches!(
            west.verify(Some(&sig), "/peer/heartbeat", b"{ }"),
            Err(AuthError::BadMac)
        ));
        assert!(matches!(
            west.verify(Some(&sig), "/raft/vote", b"{}"),
            Err(AuthError::BadMac)
        ));
        let other = auth("another", "west");
        assert!(matches!(
            other.verify(Some(&sig), "/peer/heartbeat", b"{}"),
            Err(AuthError::BadMac)
        ));
    }

    #[test]
    fn strangers_and_garbage_are_refused() {
        let west = auth("s3cret", "west");
        let mallory = PeerAuth::new("s3cret", "mallory", ["mallory".to_string()]);
        let (sig, _) = mallory.sign("west", "/p", b"");
        assert!(matches!(
            west.verify(Some(&header(&sig)), "/p", b""),
            Err(AuthError::Stranger(_))
        ));
        assert!(matches!(
            west.verify(None, "/p", b""),
            Err(AuthError::Missing)
        ));
        let junk = HeaderValue::from_static("site=east;to=west;n=nope;mac=00");
        assert!(matches!(
            west.verify(Some(&junk), "/p", b""),
            Err(AuthError::Malformed)
        ));
        // An old nonce with a forged MAC: refused for the MAC, not blamed on east's clock.
        let old = HeaderValue::from_static("site=east;to=west;n=1;mac=00");
        assert!(matches!(
            west.verify(Some(&old), "/p", b""),
            Err(AuthError::BadMac)
        ));
        assert!(west.clock_refused().is_empty());
    }

    /// Issue 39: a member whose clock ran more than a minute off was refused in silence.
    #[test]
    fn a_member_whose_clock_is_a_minute_off_is_refused_and_named() {
        let east = auth("s3cret", "east");
        let west = auth("s3cret", "west");
        let now = unix_ms();
        let behind = (now - 90_000) * 1000;
        let sig = header(&east.header("west", behind, "/p", b""));
        match west.verify(Some(&sig), "/p", b"") {
            Err(e @ AuthError::Skew { .. }) => {
                let words = e.to_string();
                assert!(
                    words.contains("clock of site east is 90 s behind"),
                    "{words}"
                );
            }
            other => panic!("{other:?}"),
        }
        let k = west.clock_refused()["east"];
        assert_eq!(k.refused, 1);
        assert!((-90_100..=-89_900).contains(&k.offset_ms), "{k:?}");
        assert_eq!(
            west.cut_by_clock(now + 1000, 10_000)
                .get("east")
                .map(|o| o / 1000),
            Some(-90)
        );
        // East's own, fresh requests pass: the old one was a replay, not east's clock.
        let (fresh, _) = east.sign("west", "/p", b"");
        assert!(west.verify(Some(&header(&fresh)), "/p", b"").is_ok());
        assert!(west.cut_by_clock(now + 1000, 10_000).is_empty());
        // Long after the last refusal, no longer cut either.
        assert!(west.cut_by_clock(now + 60_000, 10_000).is_empty());
    }

    /// Found by probing: a captured request (a step-down replayed once a second forced an
    /// election each time) was taken again for a minute, from any address, uncounted.
    #[test]
    fn a_request_counts_once_and_only_where_it_was_sent() {
        let east = auth("s3cret", "east");
        let west = auth("s3cret", "west");
        let witness = auth("s3cret", "witness");
        let (sig, _) = east.sign("west", "/peer/step-down", b"{}");
        let sig = header(&sig);
        assert!(west.verify(Some(&sig), "/peer/step-down", b"{}").is_ok());
        assert!(matches!(
            west.verify(Some(&sig), "/peer/step-down", b"{}"),
            Err(AuthError::Replay(_))
        ));
        assert!(matches!(
            witness.verify(Some(&sig), "/peer/step-down", b"{}"),
            Err(AuthError::NotForMe(_))
        ));
        assert_eq!(west.replays_refused()["east"], 1);
        // Requests overtaken by later ones (other connections) still count once each.
        let sigs: Vec<HeaderValue> = (0..50)
            .map(|_| header(&east.sign("west", "/p", b"").0))
            .collect();
        for s in sigs.iter().rev() {
            assert!(west.verify(Some(s), "/p", b"").is_ok());
        }
        for s in &sigs {
            assert!(west.verify(Some(s), "/p", b"").is_err());
        }
        assert_eq!(west.replays_refused()["east"], 51);
    }

    #[test]
    fn the_window_forgets_in_time_and_in_count() {
        let mut w = Window::default();
        let base = 1_000_000_000_000u64;
        assert!(w.take(base));
        assert!(w.take(base + REPLAY_WINDOW_US + 1));
        assert!(!w.take(base), "below the floor now");
        assert!(!w.take(base + 1), "older than the window");
        assert!(
            w.take(base + REPLAY_WINDOW_US),
            "inside the window, not seen"
        );
        assert!(w.held.len() <= 2);
        for i in 0..(REPLAY_HELD_MAX as u64 + 10) {
            assert!(w.take(base + REPLAY_WINDOW_US + 2 + i));
        }
        assert!(w.held.len() <= REPLAY_HELD_MAX, "bounded");
    }

    #[test]
    fn an_answer_belongs_to_its_request() {
        let east = auth("s3cret", "east");
        let west = auth("s3cret", "west");
        let (_, n) = east.sign("west", "/peer/heartbeat", b"{}");
        let answer = header(&west.sign_answer("east", n, "/peer/heartbeat", b"ok"));
        assert!(east
            .verify_answer(Some(&answer), "west", n, "/peer/heartbeat", b"ok")
            .is_ok());
        let (_, later) = east.sign("west", "/peer/heartbeat", b"{}");
        assert!(matches!(
            east.verify_answer(Some(&answer), "west", later, "/peer/heartbeat", b"ok"),
            Err(AuthError::NotMyAnswer)
        ));
        assert!(matches!(
            east.verify_answer(Some(&answer), "witness", n, "/peer/heartbeat", b"ok"),
            Err(AuthError::Stranger(_))
        ));
    }
}
