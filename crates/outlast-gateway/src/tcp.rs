//! The TCP gateway: byte streams to a local backend, or one hop to another site's gateway.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::ConnLimit;
use crate::routes::{Balancer, LeaseClock, Routes, Stats};

/// Accepts the next connection, or `None` once `shutdown` is cancelled. A failed accept
/// (out of descriptors, say) is noted on `limit` (the site then reports the listener's
/// service unhealthy), logged once a second at most, and retried after a pause instead of
/// spinning.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    limit: &ConnLimit,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    if !limit.failing_within(Duration::from_secs(1)) {
                        tracing::warn!(error = %e, open = limit.open(), "accept failed");
                    }
                    limit.accept_failed();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Connects to `addr` from `source` (this site's address), within a second.
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if source.is_ipv4() == addr.is_ipv4() {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(1), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Serves one TCP service until `shutdown`, then lets open streams run for up to `drain`.
/// A connection from another site's address is a hop already and never hops again.
#[allow(clippy::too_many_arguments)]
pub async fn serve_tcp(
    listener: TcpListener,
    service: String,
    source: IpAddr,
    site_addresses: HashSet<IpAddr>,
    routes: watch::Receiver<Arc<Routes>>,
    stats: Arc<Stats>,
    lease: Arc<LeaseClock>,
    limit: Arc<ConnLimit>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let balancer = Arc::new(Balancer::default());
    let tracker = TaskTracker::new();
    loop {
        let Some((mut client, peer)) = accept(&listener, &shutdown, &limit).await else {
            break;
        };
        // Over the cap: closed at once (a TCP client sees the connection end).
        let Some(place) = limit.admit() else {
            drop(client);
            continue;
        };
        stats.request();
        let route = routes.borrow().services.get(&service).cloned();
        let balancer = balancer.clone();
        let stats = stats.clone();
        let lease = lease.clone();
        let service = service.clone();
        let may_hop = !site_addresses.contains(&peer.ip());
        tracker.spawn(async move {
            let _place = place;
            let Some(route) = route.filter(|r| !r.refuses(&lease)) else {
                metrics::counter!("outlast_gateway_connections_total", "service" => service, "outcome" => "refused").increment(1);
                return;
            };
            for t in balancer.targets(&route, may_hop).into_iter().take(3) {
                match connect_from(source, t.addr).await {
                    Ok(mut upstream) => {
                        stats.record(&service, &t, true);
                        metrics::counter!("outlast_gateway_connections_total", "service" => service.clone(), "outcome" => "proxied").increment(1);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        return;
                    }
                    Err(e) => {
                        stats.record(&service, &t, false);
                        tracing::debug!(target = %t.addr, error = %e, "connect failed");
                        if !t.remote {
                            balancer.eject(t.addr);
                        }
                    }
                }
            }
            metrics::counter!("outlast_gateway_connections_total", "service" => service, "outcome" => "no-target").increment(1);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "TCP streams still open at the drain deadline"
        );
    }
}
