//! The dependencies (`[[dependencies]]`) as this data site sees them: a probe loop per
//! endpoint with rise/fall counting, the egress forwarders' steering, and the drill's
//! `dep-down` faults (a cut endpoint fails its probes and takes no forwarded connection).
//! A witness probes nothing: it hosts no application.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use outlast_core::config::{Config, Dependency};
use outlast_core::faults::{FaultKind, Faults};
use outlast_core::status::{DependencyEndpoint, DependencyStatus};
use outlast_core::{Health, Hysteresis};
use outlast_gateway::egress::{Egress, Steer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::status::health_word;

struct Endpoint {
    health: Health,
    since: Instant,
    last_error: Option<String>,
    last_probe_ms: f64,
}

/// One dependency at this site.
pub struct Dep {
    pub cfg: Dependency,
    endpoints: Mutex<Vec<Endpoint>>,
    faults: Arc<Faults>,
    pub egress: Option<Arc<Egress>>,
}

impl Dep {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Endpoint>> {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cut_at(&self, i: usize) -> bool {
        self.cfg
            .endpoints
            .get(i)
            .is_some_and(|e| self.faults.dep_cut(&self.cfg.name, e, i == 0))
    }

    /// `up` (every endpoint up), `degraded` (some), `down` (none), `unknown` (not probed
    /// enough yet).
    pub fn verdict(&self) -> &'static str {
        let eps = self.lock();
        let up = eps.iter().filter(|e| e.health == Health::Up).count();
        let down = eps.iter().filter(|e| e.health == Health::Down).count();
        if up == eps.len() {
            "up"
        } else if down == eps.len() {
            "down"
        } else if up > 0 {
            "degraded"
        } else if down > 0 {
            // Some down, the rest not known yet.
            "degraded"
        } else {
            "unknown"
        }
    }

    /// The endpoint a forwarded connection tries first now.
    fn in_use(&self) -> Option<usize> {
        self.order().into_iter().find(|i| !self.cut_at(*i))
    }
}

impl Steer for Dep {
    /// Healthy (or not yet judged) endpoints in preference order, then the ones judged
    /// down, as a last resort.
    fn order(&self) -> Vec<usize> {
        let eps = self.lock();
        let (mut good, bad): (Vec<usize>, Vec<usize>) =
            (0..eps.len()).partition(|i| eps[*i].health != Health::Down);
        good.extend(bad);
        good
    }

    fn cut(&self, endpoint: usize) -> bool {
        self.cut_at(endpoint)
    }
}

/// Every dependency at this site.
#[derive(Default)]
pub struct Deps {
    pub list: Vec<Arc<Dep>>,
}

impl Deps {
    /// Starts the probe loops (data sites only); loops end with `shutdown`.
    pub fn start(
        config: &Config,
        witness: bool,
        source: IpAddr,
        faults: Arc<Faults>,
        shutdown: CancellationToken,
    ) -> Self {
        if witness {
            return Deps::default();
        }
        let http = reqwest::Client::builder()
            .local_address(source)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default();
        let mut list = Vec::new();
        for d in &config.dependencies {
            let now = Instant::now();
            let dep = Arc::new(Dep {
                cfg: d.clone(),
                endpoints: Mutex::new(
                    d.endpoints
                        .iter()
                        .map(|_| Endpoint {
                            health: Health::Unknown,
                            since: now,
                            last_error: None,
                            last_probe_ms: 0.0,
                        })
                        .collect(),
                ),
                faults: faults.clone(),
                egress: d.egress_port.map(|_| Egress::new(&d.name, &d.endpoints)),
            });
            for (i, endpoint) in d.endpoints.iter().enumerate() {
                let dep = dep.clone();
                let endpoint = endpoint.clone();
                let http = http.clone();
                let token = shutdown.clone();
                let mut counter = Hysteresis::new(config.timing.fall, config.timing.rise);
                tokio::spawn(async move {
                    let check = dep.cfg.check.clone();
                    let mut tick = tokio::time::interval(check.interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = tick.tick() => {}
                        }
                        let started = Instant::now();
                        let r: Result<(), String> = if dep.cut_at(i) {
                            Err("cut by a drill (dep-down)".into())
                        } else {
                            match resolve(&endpoint).await {
                                Ok(addr) => {
                                    let p =
                                        outlast_health::probe(&check, addr, source, &http).await;
                                    p.error.map_or(Ok(()), Err)
                                }
                                Err(e) => Err(e),
                            }
                        };
                        let ms = started.elapsed().as_secs_f64() * 1000.0;
                        metrics::histogram!("outlast_probe_seconds", "kind" => "dependency", "service" => dep.cfg.name.clone())
                            .record(ms / 1000.0);
                        let changed = counter.record(r.is_ok());
                        if let Some(h) = changed {
                            tracing::info!(dependency = %dep.cfg.name, %endpoint, health = ?h, error = ?r.as_ref().err(), "dependency endpoint changed");
                        }
                        let mut eps = dep.lock();
                        if let Some(e) = eps.get_mut(i) {
                            if changed.is_some() {
                                e.since = Instant::now();
                            }
                            e.health = counter.state();
                            e.last_error = r.err();
                            e.last_probe_ms = ms;
                        }
                    }
                });
            }
            list.push(dep);
        }
        Deps { list }
    }

    /// This site's verdict per dependency, for its reports to the others.
    pub fn verdicts(&self) -> BTreeMap<String, String> {
        self.list
            .iter()
            .map(|d| (d.cfg.name.clone(), d.verdict().to_string()))
            .collect()
    }

    /// `dependencies[]` of the status, with the committed state and every site's verdict.
    pub fn status(
        &self,
        config: &Config,
        committed: &BTreeMap<String, outlast_control::DepState>,
        seen: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Vec<DependencyStatus> {
        config
            .dependencies
            .iter()
            .map(|d| {
                let here = self.list.iter().find(|x| x.cfg.name == d.name);
                let endpoints = d
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, addr)| {
                        let (health, since_ms, last_probe_ms, last_error) = here
                            .and_then(|h| {
                                h.lock().get(i).map(|e| {
                                    (
                                        health_word(e.health).to_string(),
                                        e.since.elapsed().as_millis() as u64,
                                        e.last_probe_ms,
                                        e.last_error.clone(),
                                    )
                                })
                            })
                            .unwrap_or(("unknown".into(), 0, 0.0, None));
                        let counts = here
                            .and_then(|h| h.egress.as_ref())
                            .and_then(|g| g.stats.get(i))
                            .map(|s| s.counts())
                            .unwrap_or_default();
                        DependencyEndpoint {
                            address: addr.clone(),
                            health,
                            since_ms,
                            last_probe_ms,
                            last_error,
                            cut: here.is_some_and(|h| h.cut_at(i)),
                            connections: counts.connections,
                            errors: counts.errors,
                            bytes_sent: counts.bytes_sent,
                            bytes_received: counts.bytes_received,
                            active: counts.active,
                            egress_error: counts.last_error,
                        }
                    })
                    .collect();
                let c = committed.get(&d.name);
                DependencyStatus {
                    name: d.name.clone(),
                    services: d.services.clone(),
                    check: match &d.check.kind {
                        outlast_core::config::CheckKind::Http { .. } => "http".into(),
                        outlast_core::config::CheckKind::Tcp => "tcp".into(),
                        outlast_core::config::CheckKind::Dns { .. } => "dns".into(),
                        outlast_core::config::CheckKind::Udp { .. } => "udp".into(),
                    },
                    egress_port: d.egress_port,
                    here: here.map(|h| h.verdict().to_string()),
                    in_use: here
                        .filter(|h| h.egress.is_some())
                        .and_then(|h| h.in_use())
                        .and_then(|i| d.endpoints.get(i).cloned()),
                    state: c.map_or("up".to_string(), |c| c.state.clone()),
                    seen_by: c.map(|c| c.seen_by.clone()).unwrap_or_default(),
                    sites: seen
                        .iter()
                        .filter_map(|(site, m)| m.get(&d.name).map(|v| (site.clone(), v.clone())))
                        .collect(),
                    endpoints,
                }
            })
            .collect()
    }
}

async fn resolve(endpoint: &str) -> Result<std::net::SocketAddr, String> {
    outlast_gateway::egress::resolve(endpoint)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{endpoint} resolves to no address"))
}

/// Checks a `dep-down` fault against the config: the dependency exists, and the endpoint
/// (when named) is one of its own or "all".
pub fn check_fault(config: &Config, kind: &FaultKind) -> Result<(), String> {
    let FaultKind::DepDown { dep, endpoint } = kind else {
        return Ok(());
    };
    let Some(d) = config.dependencies.iter().find(|d| &d.name == dep) else {
        let names: Vec<&str> = config
            .dependencies
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        return Err(format!(
            "dep-down names dependency {dep:?}, which is not in the config (known: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
    };
    match endpoint.as_deref() {
        None | Some("all") => Ok(()),
        Some(e) if d.endpoints.iter().any(|x| x == e) => Ok(()),
        Some(e) => Err(format!(
            "dep-down names endpoint {e:?}, which dependency {dep} does not list ({})",
            d.endpoints.join(", ")
        )),
    }
}
