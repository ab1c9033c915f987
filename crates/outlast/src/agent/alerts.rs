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
    /// site-down | site-up | primary-moved | failback | active-changed | fenced | unfenced
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
