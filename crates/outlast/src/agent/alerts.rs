//! Alerts on every committed change: webhook (JSON POST, retried with back-off), mail over
//! SMTP, and a command. Each alert carries an idempotency key built from the cluster, the
//! epoch and what happened, so a receiver that gets it twice can tell. A delivery that
//! fails for good is logged and counted, never retried forever.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use outlast_core::config::Alert;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

/// One alert, as the webhook receives it and the command reads it on stdin.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    pub cluster: String,
    pub epoch: u64,
    pub idempotency_key: String,
    /// One of the kinds in docs/config.md ("[[alerts]]"): site-down, primary-moved, db-promoted, ...
    pub kind: String,
    pub site: Option<String>,
    pub service: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub message: String,
    /// The site that sent it (a survivor, for a lost site).
    pub sent_by: String,
    pub unix_ms: u64,
}

/// Delivers alerts: one queue and one worker per target, so each target gets its alerts in
/// the order they were committed (a site down before the primary move it caused), and a
/// slow or failing target delays only itself.
pub struct Alerter {
    queues: Vec<tokio::sync::mpsc::UnboundedSender<AlertEvent>>,
}

const WEBHOOK_TRIES: u32 = 6;

impl Alerter {
    /// Starts one worker per target; call inside the runtime.
    pub fn new(targets: Vec<Alert>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let mut queues = Vec::new();
        for target in targets {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<AlertEvent>();
            queues.push(tx);
            let http = http.clone();
            let channel = match &target {
                Alert::Webhook { .. } => "webhook",
                Alert::Smtp { .. } => "smtp",
                Alert::Command { .. } => "command",
            };
            let span = tracing::info_span!("alerts", channel);
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    while let Some(event) = rx.recv().await {
                        let res = match &target {
                            Alert::Webhook { url } => webhook(&http, url, &event).await,
                            Alert::Smtp { server, from, to } => {
                                smtp(server, from, to, &event).await
                            }
                            Alert::Command { argv } => command(argv, &event).await,
                        };
                        match res {
                            Ok(()) => {
                                metrics::counter!("outlast_alerts_sent_total", "channel" => channel)
                                    .increment(1)
                            }
                            Err(e) => {
                                tracing::warn!(key = %event.idempotency_key, error = %e, "alert not delivered");
                                metrics::counter!("outlast_alerts_failed_total", "channel" => channel)
                                    .increment(1);
                            }
                        }
                    }
                },
                span,
            ));
        }
        Self { queues }
    }

    /// Queues `event` for every target.
    pub fn send(&self, event: AlertEvent) {
        tracing::info!(kind = %event.kind, epoch = event.epoch, key = %event.idempotency_key, "{}", event.message);
        for q in &self.queues {
            // A closed queue means the agent is stopping.
            let _ = q.send(event.clone());
        }
    }
}

async fn webhook(http: &reqwest::Client, url: &str, event: &AlertEvent) -> Result<(), String> {
    let mut delay = Duration::from_millis(200);
    let mut last = String::new();
    for attempt in 1..=WEBHOOK_TRIES {
        let res = http
            .post(url)
            .header("Idempotency-Key", &event.idempotency_key)
            .json(event)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => return Ok(()),
            // A 4xx other than 408/429 will not get better by retrying.
            Ok(r) if r.status().is_client_error() && ![408, 429].contains(&r.status().as_u16()) => {
                return Err(format!("webhook refused it with {}", r.status()));
            }
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tracing::debug!(attempt, error = %last, "webhook attempt failed");
        if attempt < WEBHOOK_TRIES {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
    Err(format!("gave up after {WEBHOOK_TRIES} attempts: {last}"))
}

async fn smtp(server: &str, from: &str, to: &[String], event: &AlertEvent) -> Result<(), String> {
    let (host, port) = server.rsplit_once(':').ok_or("smtp server has no port")?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("bad smtp port in {server}"))?;
    let mut builder = Message::builder()
        .from(from.parse().map_err(|e| format!("from {from}: {e}"))?)
        .subject(format!("[outlast {}] {}", event.cluster, event.message))
        // The idempotency key as Message-ID: mail systems drop a second copy with the same id.
        .message_id(Some(format!("<{}@outlast>", event.idempotency_key)))
        .header(ContentType::TEXT_PLAIN);
    for t in to {
        builder = builder.to(t.parse().map_err(|e| format!("to {t}: {e}"))?);
    }
    let body = serde_json::to_string_pretty(event).map_err(|e| e.to_string())?;
    let msg = builder
        .body(format!("{}\n\n{body}\n", event.message))
        .map_err(|e| e.to_string())?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build();
    transport
        .send(msg)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn command(argv: &[String], event: &AlertEvent) -> Result<(), String> {
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .env("OUTLAST_ALERT_KIND", &event.kind)
        .env("OUTLAST_EPOCH", event.epoch.to_string())
        .env("OUTLAST_IDEMPOTENCY_KEY", &event.idempotency_key)
        .env("OUTLAST_MESSAGE", &event.message)
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {prog}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        // A command that does not read its stdin is fine.
        let _ = stdin.write_all(&body).await;
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{prog} exited with {status}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{prog} still running after 30s; killed")),
    }
}

/// What an alert is about, beside its kind and message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pub site: Option<String>,
    pub service: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Who sends an alert, and about which epoch.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub cluster: &'a str,
    /// The sending site.
    pub me: &'a str,
    pub epoch: u64,
    pub unix_ms: u64,
}

/// An alert of `kind`, keyed by the epoch and `key_tail` so that a receiver that gets it
/// twice (from two leaders, or a retry) can tell.
pub fn event(
    by: &Sender<'_>,
    kind: &str,
    key_tail: &str,
    fields: Fields,
    message: String,
) -> AlertEvent {
    AlertEvent {
        cluster: by.cluster.to_string(),
        epoch: by.epoch,
        idempotency_key: format!("{}-{}-{kind}-{key_tail}", by.cluster, by.epoch),
        kind: kind.to_string(),
        site: fields.site,
        service: fields.service,
        from: fields.from,
        to: fields.to,
        message,
        sent_by: by.me.to_string(),
        unix_ms: by.unix_ms,
    }
}

/// The alerts a committed change sends (from the leader, so that each goes out once). A
/// recorded synchronous set sends none: what it means for writes (`db-degraded`,
/// `db-sync-restored`) is alerted by the primary's site once its server does it.
/// `wal_behind`: for a service that failed over in this change, the bytes of WAL its new
/// primary was behind (an `async` dataset; see `FailoverLog::wal_behind_bytes`).
pub fn for_change(
    by: &Sender<'_>,
    decisions: &[outlast_control::Decision],
    wal_behind: &dyn Fn(&str) -> Option<u64>,
) -> Vec<AlertEvent> {
    use outlast_control::{Decision, MoveReason};
    decisions
        .iter()
        .filter_map(|d| {
            Some(match d {
                Decision::SiteDown { site } | Decision::SiteUp { site } => {
                    let down = matches!(d, Decision::SiteDown { .. });
                    let (kind, word) = if down {
                        ("site-down", "down")
                    } else {
                        ("site-up", "up")
                    };
                    let fields = Fields {
                        site: Some(site.clone()),
                        ..Default::default()
                    };
                    event(by, kind, site, fields, format!("site {site} is {word}"))
                }
                Decision::Active { service, sites } => {
                    let fields = Fields {
                        service: Some(service.clone()),
                        ..Default::default()
                    };
                    let message = format!("service {service} now active at [{}]", sites.join(", "));
                    event(by, "active-changed", service, fields, message)
                }
                Decision::PrimaryMove {
                    service,
                    from,
                    to,
                    reason,
                    ..
                } => {
                    let kind = if *reason == MoveReason::Failback {
                        "failback"
                    } else {
                        "primary-moved"
                    };
                    let fields = Fields {
                        service: Some(service.clone()),
                        from: from.clone(),
                        to: Some(to.clone()),
                        ..Default::default()
                    };
                    let mut message = format!(
                        "service {service}: primary {} -> {to} ({reason:?})",
                        from.as_deref().unwrap_or("none")
                    );
                    if let Some(bytes) = wal_behind(service).filter(|b| *b > 0) {
                        message.push_str(&format!(
                            "; {to} was {bytes} bytes of WAL behind, by the last positions reported: at least that much of what the old primary wrote is not on it (async)"
                        ));
                    }
                    event(by, kind, service, fields, message)
                }
                Decision::Maintenance { site, on } => {
                    let (kind, word) = if *on {
                        ("maintenance-on", "in maintenance: primaries move away")
                    } else {
                        ("maintenance-off", "out of maintenance")
                    };
                    let fields = Fields {
                        site: Some(site.clone()),
                        ..Default::default()
                    };
                    event(by, kind, site, fields, format!("site {site} is {word}"))
                }
                Decision::SyncSet { .. } => return None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use outlast_control::{Decision, MoveReason};

    #[test]
    fn a_change_alerts_each_decision_with_a_key_per_epoch() {
        let decisions = vec![
            Decision::SiteDown {
                site: "east".into(),
            },
            Decision::PrimaryMove {
                service: "db".into(),
                from: Some("east".into()),
                to: "west".into(),
                reason: MoveReason::Failover,
                hold_ms: 1225,
            },
            Decision::PrimaryMove {
                service: "web".into(),
                from: Some("west".into()),
                to: "east".into(),
                reason: MoveReason::Failback,
                hold_ms: 1225,
            },
        ];
        let by = Sender {
            cluster: "shop",
            me: "witness",
            epoch: 7,
            unix_ms: 42,
        };
        let a = for_change(&by, &decisions, &|_| None);
        let kinds: Vec<&str> = a.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["site-down", "primary-moved", "failback"]);
        assert_eq!(a[0].idempotency_key, "shop-7-site-down-east");
        assert_eq!(a[0].site.as_deref(), Some("east"));
        assert_eq!(a[1].message, "service db: primary east -> west (Failover)");
        assert_eq!(
            (a[1].from.as_deref(), a[1].to.as_deref()),
            (Some("east"), Some("west"))
        );
        assert!(a
            .iter()
            .all(|e| e.sent_by == "witness" && e.epoch == 7 && e.unix_ms == 42));
        // An async dataset's failover says how far behind the new primary was.
        let a = for_change(&by, &decisions, &|s| (s == "db").then_some(4096));
        assert!(
            a[1].message.ends_with(
                "; west was 4096 bytes of WAL behind, by the last positions reported: at least that much of what the old primary wrote is not on it (async)"
            ),
            "{}",
            a[1].message
        );
    }
}
