//! Alerts on every committed change: webhook (JSON POST, retried with back-off), mail over
//! SMTP, a command, and presets for Slack, PagerDuty (Events API v2) and SMS (Twilio); a
//! heartbeat the leader pings. Each alert carries an idempotency key built from the cluster, the
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
/// slow or failing target delays only itself. In front of the queues, a dispatcher damps a
/// flapping site's down/up alerts, and tells the other targets when one could not deliver.
pub struct Alerter {
    input: tokio::sync::mpsc::UnboundedSender<Msg>,
    /// The latest deliveries this site tried, newest last (see [`Alerter::recent`]).
    log: std::sync::Arc<
        std::sync::Mutex<std::collections::VecDeque<outlast_core::status::AlertSent>>,
    >,
}

/// How many deliveries [`Alerter::recent`] keeps.
const KEEP_SENT: usize = 50;

enum Msg {
    Event(AlertEvent),
    /// Target `from` gave up on `event` with `why`.
    Undelivered {
        from: usize,
        channel: &'static str,
        event: AlertEvent,
        why: String,
    },
}

const WEBHOOK_TRIES: u32 = 6;
/// A site that went down this many times within [`FLAP_WINDOW`] is flapping: its down/up
/// alerts are held until it stays put for [`FLAP_CALM`], then its final state goes out.
const FLAP_DOWNS: usize = 3;
const FLAP_WINDOW: Duration = Duration::from_secs(600);
const FLAP_CALM: Duration = Duration::from_secs(60);

impl Alerter {
    /// Starts the dispatcher and one worker per event target (heartbeats are not event
    /// targets: see [`heartbeat`]); call inside the runtime.
    pub fn new(targets: Vec<Alert>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let (input, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
        let log: std::sync::Arc<
            std::sync::Mutex<std::collections::VecDeque<outlast_core::status::AlertSent>>,
        > = Default::default();
        let mut queues = Vec::new();
        for (i, target) in targets
            .into_iter()
            .filter(|t| !matches!(t, Alert::Heartbeat { .. }))
            .enumerate()
        {
            let (tx, mut q) = tokio::sync::mpsc::unbounded_channel::<AlertEvent>();
            queues.push(tx);
            let http = http.clone();
            let channel = target.channel();
            let back = input.clone();
            let span = tracing::info_span!("alerts", channel);
            let log = log.clone();
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    while let Some(event) = q.recv().await {
                        let r = deliver(&http, &target, &event).await;
                        {
                            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                            l.push_back(outlast_core::status::AlertSent {
                                unix_ms: outlast_core::clock::unix_ms(),
                                kind: event.kind.clone(),
                                message: event.message.clone(),
                                channel: channel.to_string(),
                                ok: r.is_ok(),
                                error: r.as_ref().err().cloned(),
                            });
                            while l.len() > KEEP_SENT {
                                l.pop_front();
                            }
                        }
                        match r {
                            Ok(()) => {
                                metrics::counter!("outlast_alerts_sent_total", "channel" => channel)
                                    .increment(1)
                            }
                            Err(why) => {
                                tracing::warn!(key = %event.idempotency_key, error = %why, "alert not delivered");
                                metrics::counter!("outlast_alerts_failed_total", "channel" => channel)
                                    .increment(1);
                                let _ = back.send(Msg::Undelivered {
                                    from: i,
                                    channel,
                                    event,
                                    why,
                                });
                            }
                        }
                    }
                },
                span,
            ));
        }
        tokio::spawn(async move {
            let mut flaps = Flaps::default();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let msg = tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => m,
                        None => return,
                    },
                    _ = tick.tick() => {
                        for e in flaps.calmed(tokio::time::Instant::now()) {
                            for q in &queues {
                                let _ = q.send(e.clone());
                            }
                        }
                        continue;
                    }
                };
                match msg {
                    Msg::Event(e) => {
                        for e in flaps.pass(e, tokio::time::Instant::now()) {
                            for q in &queues {
                                let _ = q.send(e.clone());
                            }
                        }
                    }
                    // A failed delivery is told through the other targets (a failure to
                    // tell it is not told again).
                    Msg::Undelivered {
                        from,
                        channel,
                        event,
                        why,
                    } => {
                        if event.kind == "alert-undelivered" {
                            continue;
                        }
                        let mut told = event.clone();
                        told.kind = "alert-undelivered".into();
                        told.idempotency_key =
                            format!("{}-undelivered-{channel}", event.idempotency_key);
                        told.message = format!(
                            "an alert could not be delivered through {channel} ({why}): {}",
                            event.message
                        );
                        for (i, q) in queues.iter().enumerate().filter(|(i, _)| *i != from) {
                            let _ = (i, q.send(told.clone()));
                        }
                    }
                }
            }
        });
        Self { input, log }
    }

    /// The latest deliveries this site tried (each target's own), newest first.
    pub fn recent(&self) -> Vec<outlast_core::status::AlertSent> {
        let l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        l.iter().rev().cloned().collect()
    }

    /// Queues `event` for every target.
    pub fn send(&self, event: AlertEvent) {
        tracing::info!(kind = %event.kind, epoch = event.epoch, key = %event.idempotency_key, "{}", event.message);
        // A closed queue means the agent is stopping.
        let _ = self.input.send(Msg::Event(event));
    }
}

/// Per site, its recent downs and, while it flaps, the down/up alert held back.
#[derive(Default)]
struct Flaps {
    sites: std::collections::BTreeMap<String, Flap>,
}

struct Flap {
    downs: std::collections::VecDeque<tokio::time::Instant>,
    flapping: bool,
    held: Option<AlertEvent>,
    last_change: tokio::time::Instant,
    /// The kind of the last down/up alert that went out.
    last_sent: Option<String>,
}

impl Flaps {
    /// What goes out for `e` now: itself, nothing (held while its site flaps), or a
    /// `site-flapping` alert the moment the site starts to.
    fn pass(&mut self, e: AlertEvent, now: tokio::time::Instant) -> Vec<AlertEvent> {
        let Some(site) = e
            .site
            .clone()
            .filter(|_| matches!(e.kind.as_str(), "site-down" | "site-up"))
        else {
            return vec![e];
        };
        let f = self.sites.entry(site.clone()).or_insert_with(|| Flap {
            downs: Default::default(),
            flapping: false,
            held: None,
            last_change: now,
            last_sent: None,
        });
        f.last_change = now;
        if e.kind == "site-down" {
            f.downs.push_back(now);
        }
        while f
            .downs
            .front()
            .is_some_and(|t| now.duration_since(*t) > FLAP_WINDOW)
        {
            f.downs.pop_front();
        }
        if f.flapping {
            f.held = Some(e);
            return Vec::new();
        }
        if f.downs.len() >= FLAP_DOWNS {
            f.flapping = true;
            let mut flapping = e.clone();
            flapping.kind = "site-flapping".into();
            flapping.idempotency_key = format!("{}-flapping", e.idempotency_key);
            flapping.message = format!(
                "site {site} went down {} times in {} min: its down/up alerts are held until it stays put for {} s, then its state is sent",
                f.downs.len(),
                FLAP_WINDOW.as_secs() / 60,
                FLAP_CALM.as_secs()
            );
            f.held = Some(e);
            return vec![flapping];
        }
        f.last_sent = Some(e.kind.clone());
        vec![e]
    }

    /// The held alerts of sites that stopped flapping: the last state, when it differs
    /// from the last one sent.
    fn calmed(&mut self, now: tokio::time::Instant) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        for f in self.sites.values_mut() {
            if f.flapping && now.duration_since(f.last_change) >= FLAP_CALM {
                f.flapping = false;
                f.downs.clear();
                if let Some(mut e) = f.held.take() {
                    if f.last_sent.as_deref() != Some(e.kind.as_str()) {
                        e.message = format!("{} (after flapping)", e.message);
                        f.last_sent = Some(e.kind.clone());
                        out.push(e);
                    }
                }
            }
        }
        out
    }
}

async fn deliver(http: &reqwest::Client, target: &Alert, event: &AlertEvent) -> Result<(), String> {
    match target {
        Alert::Webhook { url } => {
            post_retried(|| {
                http.post(url)
                    .header("Idempotency-Key", &event.idempotency_key)
                    .json(event)
            })
            .await
        }
        Alert::Smtp { server, from, to } => smtp(server, from, to, event).await,
        Alert::Command { argv } => command(argv, event).await,
        Alert::Slack { url } => {
            let body = serde_json::json!({
                "text": format!("[outlast {}] {}", event.cluster, event.message),
            });
            post_retried(|| http.post(url).json(&body)).await
        }
        Alert::PagerDuty { url, routing_key } => {
            let body = pagerduty_body(routing_key, event);
            post_retried(|| http.post(url).json(&body)).await
        }
        Alert::Twilio {
            url,
            account_sid,
            auth_token,
            from,
            to,
        } => {
            let endpoint = format!(
                "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                url.trim_end_matches('/')
            );
            let text: String = format!("[outlast {}] {}", event.cluster, event.message)
                .chars()
                .take(320)
                .collect();
            for number in to {
                let form = [
                    ("To", number.as_str()),
                    ("From", from.as_str()),
                    ("Body", text.as_str()),
                ];
                post_retried(|| {
                    http.post(&endpoint)
                        .basic_auth(account_sid, Some(auth_token))
                        .form(&form)
                })
                .await
                .map_err(|e| format!("to {number}: {e}"))?;
            }
            Ok(())
        }
        Alert::Heartbeat { .. } => Ok(()),
    }
}

/// An incident's stable key and whether this alert opens or closes it, for PagerDuty:
/// a site down and its coming back share one key, as do a dataset's degraded (or blocked)
/// writes and their restoration; other alerts each open their own.
pub fn incident(event: &AlertEvent) -> (String, &'static str, &'static str) {
    let site = event.site.as_deref().unwrap_or("");
    let service = event.service.as_deref().unwrap_or("");
    let c = &event.cluster;
    let (key, action, severity) = match event.kind.as_str() {
        "site-down" => (format!("{c}-site-{site}"), "trigger", "critical"),
        "site-up" => (format!("{c}-site-{site}"), "resolve", "info"),
        "site-flapping" => (format!("{c}-site-{site}"), "trigger", "error"),
        "fenced" => (format!("{c}-fenced-{site}"), "trigger", "critical"),
        "unfenced" => (format!("{c}-fenced-{site}"), "resolve", "info"),
        "link-cut" => (format!("{c}-link-{site}"), "trigger", "error"),
        "link-restored" => (format!("{c}-link-{site}"), "resolve", "info"),
        "maintenance-on" => (format!("{c}-maintenance-{site}"), "trigger", "info"),
        "maintenance-off" => (format!("{c}-maintenance-{site}"), "resolve", "info"),
        "db-blocked" => (format!("{c}-sync-{service}"), "trigger", "critical"),
        "db-degraded" => (format!("{c}-sync-{service}"), "trigger", "error"),
        "db-sync-restored" => (format!("{c}-sync-{service}"), "resolve", "info"),
        k if k.starts_with("backup-") => (format!("{c}-{k}-{site}"), "trigger", "error"),
        "primary-moved" | "db-promoted" | "failover-held" | "db-diverged" => {
            (event.idempotency_key.clone(), "trigger", "warning")
        }
        _ => (event.idempotency_key.clone(), "trigger", "warning"),
    };
    (key, action, severity)
}

/// The Events API v2 body of an alert.
pub fn pagerduty_body(routing_key: &str, event: &AlertEvent) -> serde_json::Value {
    let (dedup_key, action, severity) = incident(event);
    if action == "resolve" {
        return serde_json::json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }
    serde_json::json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": format!("[{}] {}", event.cluster, event.message).chars().take(1024).collect::<String>(),
            "source": event.site.clone().unwrap_or_else(|| event.sent_by.clone()),
            "severity": severity,
            "timestamp": outlast_core::clock::rfc3339(event.unix_ms as i64),
            "component": event.service.clone().or_else(|| event.site.clone()),
            "group": event.cluster,
            "class": event.kind,
            "custom_details": event,
        },
    })
}

/// Pings each heartbeat target every `every` while this site leads (`leads`), until `stop`:
/// a watcher outside the cluster notices when the pings stop.
pub async fn heartbeat(
    targets: Vec<Alert>,
    cluster: String,
    me: String,
    leads: impl Fn() -> bool + Send + 'static,
    stop: tokio_util::sync::CancellationToken,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let beats: Vec<(String, Duration)> = targets
        .into_iter()
        .filter_map(|t| match t {
            Alert::Heartbeat { url, every } => Some((url, every)),
            _ => None,
        })
        .collect();
    if beats.is_empty() {
        return;
    }
    let mut next: Vec<tokio::time::Instant> = vec![tokio::time::Instant::now(); beats.len()];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let now = tokio::time::Instant::now();
        for ((url, every), at) in beats.iter().zip(next.iter_mut()) {
            if now < *at {
                continue;
            }
            *at = now + *every;
            if !leads() {
                continue;
            }
            let body = serde_json::json!({
                "cluster": cluster,
                "sent_by": me,
                "unix_ms": outlast_core::clock::unix_ms(),
            });
            match http.post(url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    metrics::counter!("outlast_alerts_sent_total", "channel" => "heartbeat")
                        .increment(1)
                }
                Ok(r) => {
                    tracing::warn!(url, status = %r.status(), "heartbeat refused");
                    metrics::counter!("outlast_alerts_failed_total", "channel" => "heartbeat")
                        .increment(1);
                }
                Err(e) => {
                    tracing::warn!(url, error = %e, "heartbeat not delivered");
                    metrics::counter!("outlast_alerts_failed_total", "channel" => "heartbeat")
                        .increment(1);
                }
            }
        }
    }
}

/// POSTs what `request` builds, retried with back-off on a network error, a 5xx, 408 or
/// 429 (a 4xx other than those will not get better by retrying).
async fn post_retried(request: impl Fn() -> reqwest::RequestBuilder) -> Result<(), String> {
    let mut delay = Duration::from_millis(200);
    let mut last = String::new();
    for attempt in 1..=WEBHOOK_TRIES {
        match request().send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status().is_client_error() && ![408, 429].contains(&r.status().as_u16()) => {
                return Err(format!("refused with {}", r.status()));
            }
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tracing::debug!(attempt, error = %last, "alert attempt failed");
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
                Decision::SyncSet { .. } | Decision::HistoryStart {} => return None,
                Decision::Dependency {
                    name,
                    state,
                    seen_by,
                } => {
                    let kind = match state.as_str() {
                        "up" => "dep-up",
                        "down" => "dep-down",
                        _ => "dep-degraded",
                    };
                    let from = if seen_by.is_empty() {
                        String::new()
                    } else {
                        format!(" (seen from {})", seen_by.join(", "))
                    };
                    let message = format!("dependency {name} is {state}{from}");
                    event(by, kind, name, Fields::default(), message)
                }
                Decision::IncidentNote {
                    id, title, status, body, ..
                } => {
                    let what = match (id, title) {
                        (Some(id), _) => format!("incident {id}"),
                        (None, Some(t)) => format!("new incident \"{t}\""),
                        (None, None) => "new incident".to_string(),
                    };
                    let key = id.map_or("new".to_string(), |i| i.to_string());
                    let message = format!("{what} ({}): {body}", status.word());
                    event(by, "incident-update", &key, Fields::default(), message)
                }
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

    fn site_event(kind: &str, site: &str, epoch: u64) -> AlertEvent {
        let by = Sender {
            cluster: "shop",
            me: "witness",
            epoch,
            unix_ms: 1_796_454_001_999,
        };
        event(
            &by,
            kind,
            site,
            Fields {
                site: Some(site.into()),
                ..Default::default()
            },
            format!("site {site} is {}", kind.trim_start_matches("site-")),
        )
    }

    #[test]
    fn pagerduty_triggers_and_resolves_one_incident_per_site() {
        let down = pagerduty_body("key", &site_event("site-down", "east", 3));
        assert_eq!(down["event_action"], "trigger");
        assert_eq!(down["dedup_key"], "shop-site-east");
        assert_eq!(down["payload"]["severity"], "critical");
        assert_eq!(down["payload"]["timestamp"], "2026-12-05T07:00:01.999Z");
        let up = pagerduty_body("key", &site_event("site-up", "east", 4));
        assert_eq!(up["event_action"], "resolve");
        assert_eq!(up["dedup_key"], "shop-site-east");
        assert!(up.get("payload").is_none());
    }

    #[test]
    fn a_flapping_site_is_told_once_then_its_final_state_when_it_calms() {
        let mut f = Flaps::default();
        let t0 = tokio::time::Instant::now();
        let mut out = Vec::new();
        let mut epoch = 0;
        for i in 0..4u64 {
            for kind in ["site-down", "site-up"] {
                epoch += 1;
                let at = t0 + Duration::from_secs(i * 20 + epoch);
                out.extend(f.pass(site_event(kind, "east", epoch), at));
            }
        }
        let kinds: Vec<&str> = out.iter().map(|e| e.kind.as_str()).collect();
        // Two down/up pairs, then the third down makes it flap: told once, the rest held.
        assert_eq!(
            kinds,
            [
                "site-down",
                "site-up",
                "site-down",
                "site-up",
                "site-flapping"
            ]
        );
        // Another site is not held.
        assert_eq!(f.pass(site_event("site-down", "west", 99), t0).len(), 1);
        // Still flapping a moment later; calm after a minute: the last state was up, as
        // last told, so nothing more goes out. Had it ended down, that would.
        let last = t0 + Duration::from_secs(3 * 20 + 8);
        assert!(f.calmed(last + Duration::from_secs(10)).is_empty());
        assert!(f.calmed(last + FLAP_CALM).is_empty());
        for i in 0..3u64 {
            for kind in ["site-down", "site-up"] {
                f.pass(
                    site_event(kind, "east", 200 + i),
                    last + Duration::from_secs(100 + i),
                );
            }
        }
        f.pass(
            site_event("site-down", "east", 300),
            last + Duration::from_secs(110),
        );
        let calmed = f.calmed(last + Duration::from_secs(110) + FLAP_CALM);
        assert_eq!(calmed.len(), 1, "{calmed:?}");
        assert_eq!(calmed[0].kind, "site-down");
        assert!(calmed[0].message.ends_with("(after flapping)"));
    }
}
