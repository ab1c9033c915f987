//! Agent-to-agent traffic on `address:peer_port`: Raft RPCs and heartbeats.
//!
//! Every request and every answer is authenticated with the cluster secret: a header
//! `x-outlast-auth: site=<name>;ts=<unix ms>;mac=<hex>` where the MAC is a keyed BLAKE3 hash
//! (key derived from the secret) over the site name, the timestamp, the path and the body.
//! A request from an unknown site, with a MAC that does not match, or a timestamp more than
//! a minute away is refused with 401 and counts for nothing: no heartbeat, no vote, no
//! lease. Answers are signed the same way (path + "#answer"), so a stranger answering on a
//! peer's port cannot grant a lease either. Peers dial from their own site address, so a cut
//! of one address cuts exactly that site.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Signs and checks peer traffic with the cluster secret.
pub struct PeerAuth {
    key: [u8; 32],
    me: String,
    members: HashSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no {AUTH_HEADER} header")]
    Missing,
    #[error("malformed {AUTH_HEADER} header")]
    Malformed,
    #[error("site {0:?} is not a member of this cluster")]
    Stranger(String),
    #[error("timestamp is {0} ms away from this site's clock")]
    Skew(u64),
    #[error("signature does not match (another cluster secret?)")]
    BadMac,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl PeerAuth {
    pub fn new(secret: &str, me: &str, members: impl IntoIterator<Item = String>) -> Self {
        Self {
            key: blake3::derive_key("outlast 2026 peer authentication v1", secret.as_bytes()),
            me: me.to_string(),
            members: members.into_iter().collect(),
        }
    }

    fn mac(&self, site: &str, ts: u64, path: &str, body: &[u8]) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(site.as_bytes());
        h.update(&[0]);
        h.update(ts.to_string().as_bytes());
        h.update(&[0]);
        h.update(path.as_bytes());
        h.update(&[0]);
        h.update(body);
        hex::encode(h.finalize().as_bytes())
    }

    pub fn sign(&self, path: &str, body: &[u8]) -> String {
        let ts = unix_ms();
        format!(
            "site={};ts={ts};mac={}",
            self.me,
            self.mac(&self.me, ts, path, body)
        )
    }

    /// Checks a signature; returns the signing site.
    pub fn verify(
        &self,
        header: Option<&HeaderValue>,
        path: &str,
        body: &[u8],
    ) -> Result<String, AuthError> {
        let text = header
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Malformed)?;
        let mut site = None;
        let mut ts = None;
        let mut mac = None;
        for part in text.split(';') {
            match part.split_once('=') {
                Some(("site", v)) => site = Some(v),
                Some(("ts", v)) => ts = v.parse::<u64>().ok(),
                Some(("mac", v)) => mac = Some(v),
                _ => return Err(AuthError::Malformed),
            }
        }
        let (site, ts, mac) = match (site, ts, mac) {
            (Some(s), Some(t), Some(m)) => (s, t, m),
            _ => return Err(AuthError::Malformed),
        };
        if !self.members.contains(site) {
            return Err(AuthError::Stranger(site.to_string()));
        }
        let skew = unix_ms().abs_diff(ts);
        if skew > MAX_SKEW_MS {
            return Err(AuthError::Skew(skew));
        }
        let expected = self.mac(site, ts, path, body);
        // Compare in constant time: the MAC is a secret-derived value.
        if blake3::Hash::from_hex(&expected).ok() != blake3::Hash::from_hex(mac).ok()
            || mac.len() != 64
        {
            return Err(AuthError::BadMac);
        }
        Ok(site.to_string())
    }
}

/// A heartbeat's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub site: String,
    /// The highest epoch in the answering site's Raft log (see the lease design).
    pub log_epoch: u64,
    pub applied_epoch: u64,
}

/// What the peer server needs from the agent.
pub trait PeerHandler: Send + Sync + 'static {
    fn raft(&self) -> &outlast_control::store::Raft;
    fn relay(&self) -> &outlast_relay::Relay;
    fn heartbeat(&self, from: &str, report: outlast_control::Report) -> HeartbeatAck;
    fn step_down_requested(&self, from: &str, req: super::StepDown);
}

pub struct PeerServer {
    pub auth: Arc<PeerAuth>,
    pub handler: Arc<dyn PeerHandler>,
    /// Injected faults: a partition refuses the cut-off sites' requests here too.
    pub faults: Arc<Faults>,
    /// When each kind of refusal was last logged: a stranger knocking ten times a second
    /// is counted every time but logged once every ten seconds.
    pub refusals_logged: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl PeerServer {
    pub fn new(auth: Arc<PeerAuth>, handler: Arc<dyn PeerHandler>, faults: Arc<Faults>) -> Self {
        Self {
            auth,
            handler,
            faults,
            refusals_logged: Default::default(),
        }
    }

    fn should_log(&self, key: String) -> bool {
        let mut seen = self
            .refusals_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match seen.get(&key) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(10) => false,
            _ => {
                seen.insert(key, now);
                true
            }
        }
    }
}

fn signed(auth: &PeerAuth, path: &str, code: StatusCode, body: Vec<u8>) -> Response {
    let sig = auth.sign(&format!("{path}#answer"), &body);
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

fn encode<T: Serialize>(auth: &PeerAuth, path: &str, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => signed(auth, path, StatusCode::OK, body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode answer: {e}"),
        )
            .into_response(),
    }
}

async fn handle(
    State(srv): State<Arc<PeerServer>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let from = match srv.auth.verify(headers.get(AUTH_HEADER), &path, &body) {
        Ok(site) => site,
        Err(e) => {
            if srv.should_log(e.to_string()) {
                tracing::warn!(path, error = %e, "refused peer request (logged once per 10 s)");
            }
            metrics::counter!("outlast_peer_auth_failures_total").increment(1);
            return (
                StatusCode::UNAUTHORIZED,
                format!("peer authentication failed: {e}"),
            )
                .into_response();
        }
    };
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
            Ok(req) => encode(&srv.auth, &path, &raft.append_entries(req).await),
            Err(r) => r.into_response(),
        },
        "/raft/vote" => match decode::<VoteRequest<NodeId>>(&body) {
            Ok(req) => encode(&srv.auth, &path, &raft.vote(req).await),
            Err(r) => r.into_response(),
        },
        "/raft/snapshot" => match decode::<InstallSnapshotRequest<TypeConfig>>(&body) {
            Ok(req) => encode(&srv.auth, &path, &raft.install_snapshot(req).await),
            Err(r) => r.into_response(),
        },
        "/peer/heartbeat" => match decode::<outlast_control::Report>(&body) {
            Ok(report) if report.site == from => {
                let ack = srv.handler.heartbeat(&from, report);
                encode(&srv.auth, &path, &ack)
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
                Ok(resp) => encode(&srv.auth, &path, &resp),
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
        "/peer/step-down" => match decode::<super::StepDown>(&body) {
            Ok(req) => {
                srv.handler.step_down_requested(&from, req);
                encode(&srv.auth, &path, &true)
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
    /// Site name → peer socket address.
    peers: BTreeMap<String, SocketAddr>,
    faults: Arc<Faults>,
}

impl PeerClient {
    pub fn new(
        auth: Arc<PeerAuth>,
        source: IpAddr,
        peers: BTreeMap<String, SocketAddr>,
        faults: Arc<Faults>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .local_address(source)
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            http,
            auth,
            peers,
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
        let addr = self
            .peers
            .get(site)
            .copied()
            .ok_or_else(|| CallError::Status {
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
        let resp = self
            .http
            .post(format!("http://{addr}{path}"))
            .header(AUTH_HEADER, self.auth.sign(path, &body))
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
        let signer = self
            .auth
            .verify(sig.as_ref(), &format!("{path}#answer"), &bytes)
            .map_err(|source| CallError::Auth {
                site: site.into(),
                source,
            })?;
        if signer != site {
            return Err(CallError::Auth {
                site: site.into(),
                source: AuthError::Stranger(signer),
            });
        }
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
        PeerAuth::new(secret, me, ["east".to_string(), "west".to_string()])
    }

    #[test]
    fn a_signature_checks_out_with_the_same_secret_only() {
        let east = auth("s3cret", "east");
        let west = auth("s3cret", "west");
        let sig = HeaderValue::from_str(&east.sign("/peer/heartbeat", b"{}")).expect("header");
        assert_eq!(
            west.verify(Some(&sig), "/peer/heartbeat", b"{}")
                .expect("valid"),
            "east"
        );
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
        let sig = HeaderValue::from_str(&mallory.sign("/p", b"")).expect("header");
        assert!(matches!(
            west.verify(Some(&sig), "/p", b""),
            Err(AuthError::Stranger(_))
        ));
        assert!(matches!(
            west.verify(None, "/p", b""),
            Err(AuthError::Missing)
        ));
        let junk = HeaderValue::from_static("site=east;ts=nope;mac=00");
        assert!(matches!(
            west.verify(Some(&junk), "/p", b""),
            Err(AuthError::Malformed)
        ));
        let old = HeaderValue::from_static("site=east;ts=1;mac=00");
        assert!(matches!(
            west.verify(Some(&old), "/p", b""),
            Err(AuthError::Skew(_))
        ));
    }
}
