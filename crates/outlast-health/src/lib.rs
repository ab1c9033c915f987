//! outlast-health: probes (http with an expected status, tcp connect) and the monitor that
//! turns them into a per-service verdict with rise/fall counting.
//!
//! It only observes: it never decides a failover and never changes routing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outlast_core::config::{Check, CheckKind, Service, Timing};
pub use outlast_core::{Health, Hysteresis};
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The outcome of one probe.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub ok: bool,
    pub latency: Duration,
    pub error: Option<String>,
}

/// Probes `target` once, dialing from `source` so that a cut of this site's address cuts
/// its probes too.
pub async fn probe(
    check: &Check,
    target: SocketAddr,
    source: IpAddr,
    http: &reqwest::Client,
) -> ProbeResult {
    let started = Instant::now();
    let outcome = tokio::time::timeout(check.timeout, async {
        match &check.kind {
            CheckKind::Tcp => {
                let socket = if target.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
                .map_err(|e| e.to_string())?;
                if source.is_ipv4() == target.is_ipv4() {
                    socket
                        .bind(SocketAddr::new(source, 0))
                        .map_err(|e| e.to_string())?;
                }
                socket
                    .connect(target)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            CheckKind::Dns { query } => dns_probe(query, target, source).await,
            CheckKind::Udp { send, expect } => {
                udp_probe(send, expect, target, source, check.timeout).await
            }
            CheckKind::Http { path, expect } => {
                let url = format!("http://{target}{path}");
                let resp = http.get(&url).send().await.map_err(|e| e.to_string())?;
                if resp.status().as_u16() == *expect {
                    Ok(())
                } else {
                    Err(format!(
                        "status {} (expected {expect})",
                        resp.status().as_u16()
                    ))
                }
            }
        }
    })
    .await;
    let latency = started.elapsed();
    let (ok, error) = match outcome {
        Ok(Ok(())) => (true, None),
        Ok(Err(e)) => (false, Some(e)),
        Err(_) => (false, Some(format!("no answer within {:?}", check.timeout))),
    };
    ProbeResult { ok, latency, error }
}

/// Asks `target` for `query`'s A records over UDP, from `source`: Ok when it answers
/// NOERROR to this very question.
async fn dns_probe(query: &str, target: SocketAddr, source: IpAddr) -> Result<(), String> {
    let sock = udp_socket(target, source)
        .await
        .map_err(|e| e.to_string())?;
    let id = (outlast_core::clock::unix_us() as u16) ^ 0x5a5a;
    let mut q = Vec::with_capacity(32 + query.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in query.split('.').filter(|l| !l.is_empty()) {
        let l = label.as_bytes();
        if l.len() > 63 {
            return Err(format!("label \"{label}\" is longer than 63 bytes"));
        }
        q.push(l.len() as u8);
        q.extend_from_slice(l);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send(&q).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    // Answers to other questions (a late one from an earlier probe) are skipped.
    for _ in 0..8 {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        if n < 12 || buf[..2] != id.to_be_bytes() || buf[2] & 0x80 == 0 {
            continue;
        }
        return match buf[3] & 0x0f {
            0 => Ok(()),
            rcode => Err(format!("answered rcode {rcode} for {query}")),
        };
    }
    Err("no answer to this question".into())
}

/// The socket a UDP probe sends from: this site's address when the families agree.
async fn udp_socket(target: SocketAddr, source: IpAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let sock =
        tokio::net::UdpSocket::bind(outlast_core::net::local_for(source, target.is_ipv4())).await?;
    sock.connect(target).await?;
    Ok(sock)
}

/// Sends `send` to a UDP backend. With `expect`, up is an answer that starts with it;
/// without, up is no "port unreachable" within the timeout (nothing else can be known of
/// a one-way service), so the caller's timeout ending this future counts as up.
async fn udp_probe(
    send: &[u8],
    expect: &[u8],
    target: SocketAddr,
    source: IpAddr,
    timeout: Duration,
) -> Result<(), String> {
    let sock = udp_socket(target, source)
        .await
        .map_err(|e| e.to_string())?;
    sock.send(send).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    let wait = if expect.is_empty() {
        // Leave a margin inside the check's timeout: silence is the healthy outcome here.
        timeout.mul_f32(0.8)
    } else {
        timeout
    };
    let got = tokio::time::timeout(wait, async {
        // Answers that do not match (a late one from an earlier probe) are skipped.
        for _ in 0..8 {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            if buf[..n].starts_with(expect) {
                return Ok(());
            }
        }
        Err("answers did not start with the expected bytes".to_string())
    })
    .await;
    match got {
        Ok(r) => r,
        Err(_) if expect.is_empty() => Ok(()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// One backend's counter and what it last said.
#[derive(Debug, Clone)]
pub struct BackendHealth {
    pub addr: SocketAddr,
    pub health: Health,
    pub since: Instant,
    pub last_error: Option<String>,
    pub last_latency: Duration,
}

/// The verdict on one service at this site.
#[derive(Debug, Clone)]
pub struct ServiceHealth {
    pub health: Health,
    pub since: Instant,
    pub backends: Vec<BackendHealth>,
}

/// Probes the local backends of services and keeps their verdicts.
#[derive(Clone, Default)]
pub struct Monitor {
    services: Arc<Mutex<BTreeMap<String, ServiceHealth>>>,
}

impl Monitor {
    /// Starts one probe loop per local backend of every service that has backends at
    /// `site`. Loops end when `shutdown` is cancelled.
    pub fn start(
        services: &[Service],
        site: &str,
        source: IpAddr,
        timing: &Timing,
        shutdown: CancellationToken,
    ) -> Self {
        let monitor = Monitor::default();
        let http = reqwest::Client::builder()
            .local_address(source)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default();
        for svc in services {
            let Some(backends) = svc.backends.get(site).filter(|b| !b.is_empty()) else {
                continue;
            };
            let now = Instant::now();
            monitor.lock().insert(
                svc.name.clone(),
                ServiceHealth {
                    health: Health::Unknown,
                    since: now,
                    backends: backends
                        .iter()
                        .map(|a| BackendHealth {
                            addr: *a,
                            health: Health::Unknown,
                            since: now,
                            last_error: None,
                            last_latency: Duration::ZERO,
                        })
                        .collect(),
                },
            );
            for (i, addr) in backends.iter().enumerate() {
                let m = monitor.clone();
                let check = svc.check.clone();
                let name = svc.name.clone();
                let http = http.clone();
                let token = shutdown.clone();
                let mut counter = Hysteresis::new(timing.fall, timing.rise);
                let addr = *addr;
                let span = tracing::info_span!("probe", service = %name, backend = %addr);
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        let mut tick = tokio::time::interval(check.interval);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tokio::select! {
                                _ = token.cancelled() => break,
                                _ = tick.tick() => {}
                            }
                            let r = probe(&check, addr, source, &http).await;
                            metrics::histogram!("outlast_probe_seconds", "kind" => "backend", "service" => name.clone())
                                .record(r.latency.as_secs_f64());
                            let changed = counter.record(r.ok);
                            if let Some(h) = changed {
                                tracing::info!(health = ?h, error = ?r.error, "backend changed");
                            }
                            m.update(&name, i, counter.state(), changed.is_some(), r);
                        }
                    },
                    span,
                ));
            }
        }
        monitor
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ServiceHealth>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, service: &str, i: usize, health: Health, changed: bool, r: ProbeResult) {
        let mut all = self.lock();
        let Some(svc) = all.get_mut(service) else {
            return;
        };
        let now = Instant::now();
        if let Some(b) = svc.backends.get_mut(i) {
            if changed {
                b.since = now;
            }
            b.health = health;
            b.last_error = r.error;
            b.last_latency = r.latency;
        }
        // A service is up at this site while any of its local backends is up.
        let verdict = if svc.backends.iter().any(|b| b.health == Health::Up) {
            Health::Up
        } else if svc.backends.iter().all(|b| b.health == Health::Down) {
            Health::Down
        } else {
            Health::Unknown
        };
        if verdict != svc.health {
            svc.health = verdict;
            svc.since = now;
        }
    }

    /// The current verdict per service.
    pub fn snapshot(&self) -> BTreeMap<String, ServiceHealth> {
        self.lock().clone()
    }
}
