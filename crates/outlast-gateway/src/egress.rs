//! Egress forwarders: a local port per dependency on each data site that the applications
//! use to reach it. Each connection goes to the first endpoint in the order the agent gives
//! (healthy ones in preference order, then the rest as a last resort), the next one on a
//! connect failure, and is counted per destination: connections, errors, bytes each way, so
//! the dashboard shows what the application actually calls.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::ConnLimit;
use crate::tcp::{accept, connect_from};

/// What one destination saw.
#[derive(Debug, Default)]
pub struct DestStats {
    pub connections: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub active: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`DestStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestCounts {
    pub connections: u64,
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub active: u64,
    pub last_error: Option<String>,
}

impl DestStats {
    pub fn counts(&self) -> DestCounts {
        DestCounts {
            connections: self.connections.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn failed(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
}

/// How the agent steers a forwarder: the endpoints (by index) to try, in order, and
/// whether a drill cut one (a `dep-down` fault: connecting to it fails as a real outage would).
pub trait Steer: Send + Sync + 'static {
    fn order(&self) -> Vec<usize>;
    fn cut(&self, endpoint: usize) -> bool;
}

/// One dependency's forwarder.
pub struct Egress {
    pub dependency: String,
    pub endpoints: Vec<String>,
    pub stats: Vec<Arc<DestStats>>,
}

impl Egress {
    pub fn new(dependency: &str, endpoints: &[String]) -> Arc<Self> {
        Arc::new(Egress {
            dependency: dependency.to_string(),
            endpoints: endpoints.to_vec(),
            stats: endpoints.iter().map(|_| Arc::default()).collect(),
        })
    }

    /// Forwards connections from `listener` until `shutdown`, dialing from `source`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        source: IpAddr,
        steer: Arc<dyn Steer>,
        limit: Arc<ConnLimit>,
        shutdown: CancellationToken,
    ) {
        let tracker = TaskTracker::new();
        loop {
            let Some((mut client, _)) = accept(&listener, &shutdown, &limit).await else {
                break;
            };
            let Some(place) = limit.admit() else {
                drop(client);
                continue;
            };
            let me = self.clone();
            let steer = steer.clone();
            tracker.spawn(async move {
                let _place = place;
                for i in steer.order() {
                    let (Some(endpoint), Some(stats)) = (me.endpoints.get(i), me.stats.get(i))
                    else {
                        continue;
                    };
                    if steer.cut(i) {
                        stats.failed("cut by a drill (dep-down)".into());
                        continue;
                    }
                    let mut upstream = match dial(endpoint, source).await {
                        Ok(u) => u,
                        Err(e) => {
                            tracing::debug!(dependency = %me.dependency, %endpoint, error = %e, "egress connect failed");
                            metrics::counter!("outlast_egress_errors_total", "dependency" => me.dependency.clone(), "endpoint" => endpoint.clone()).increment(1);
                            stats.failed(e);
                            continue;
                        }
                    };
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    stats.active.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("outlast_egress_connections_total", "dependency" => me.dependency.clone(), "endpoint" => endpoint.clone()).increment(1);
                    let r = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    stats.active.fetch_sub(1, Ordering::Relaxed);
                    if let Ok((up, down)) = r {
                        stats.bytes_sent.fetch_add(up, Ordering::Relaxed);
                        stats.bytes_received.fetch_add(down, Ordering::Relaxed);
                        metrics::counter!("outlast_egress_bytes_total", "dependency" => me.dependency.clone(), "endpoint" => endpoint.clone(), "direction" => "sent").increment(up);
                        metrics::counter!("outlast_egress_bytes_total", "dependency" => me.dependency.clone(), "endpoint" => endpoint.clone(), "direction" => "received").increment(down);
                    }
                    return;
                }
                tracing::warn!(dependency = %me.dependency, "egress: no endpoint could be reached");
            });
        }
        drop(listener);
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
}

/// Resolves `host:port` and connects from `source` (a second per address, three addresses
/// at most).
pub async fn dial(endpoint: &str, source: IpAddr) -> Result<tokio::net::TcpStream, String> {
    let addrs = resolve(endpoint).await?;
    let mut last = format!("{endpoint} resolves to no address");
    for a in addrs.into_iter().take(3) {
        match connect_from(source, a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(last)
}

/// The addresses `host:port` resolves to, within 2 s.
pub async fn resolve(endpoint: &str) -> Result<Vec<SocketAddr>, String> {
    Ok(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(endpoint))
            .await
            .map_err(|_| format!("resolving {endpoint} took over 2 s"))?
            .map_err(|e| format!("cannot resolve {endpoint}: {e}"))?
            .collect(),
    )
}
