//! How an agent carries out the faults a drill sends to `/v1/faults`.
//!
//! Network and sink faults are entries in the shared [`Faults`] set that the peer channel
//! and the relay consult. Process faults act on this process: `stop` leaves a small shell
//! behind that continues the agent when the fault ends (the agent cannot wake itself), and
//! `kill` is SIGKILL a moment after the answer is sent.

use std::collections::BTreeSet;
use std::time::Duration;

use outlast_core::faults::{FaultKind, FaultView, Faults};

/// Checks a fault against this cluster and carries it out.
pub fn inject(
    faults: &Faults,
    me: &str,
    sites: &BTreeSet<String>,
    kind: FaultKind,
    lasting: Duration,
) -> Result<FaultView, String> {
    let check = |names: &BTreeSet<String>, what: &str| -> Result<(), String> {
        let strangers: Vec<&String> = names
            .iter()
            .filter(|n| !sites.contains(*n) || *n == me)
            .collect();
        if strangers.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what} names {strangers:?}, which are not other sites of this cluster"
            ))
        }
    };
    match &kind {
        FaultKind::Partition { from } if from.is_empty() => {
            return Err("partition needs from: the sites to cut this one off from".into())
        }
        FaultKind::Partition { from } => check(from, "partition")?,
        FaultKind::Delay { to, .. } => check(to, "delay")?,
        FaultKind::SinkDown { site: Some(s) } if !sites.contains(s) => {
            return Err(format!("sink-down names site {s:?}, not in this cluster"))
        }
        FaultKind::SinkDown { .. } | FaultKind::DepDown { .. } => {}
        FaultKind::Stop {} => stop_self(lasting)?,
        FaultKind::Kill {} => kill_self(),
    }
    tracing::warn!(fault = %kind.describe(), for_ms = lasting.as_millis() as u64, "fault injected");
    metrics::counter!("outlast_faults_injected_total").increment(1);
    Ok(faults.add(kind, lasting))
}

/// SIGSTOP this process in a moment (so the answer goes out first) and SIGCONT it when the
/// fault ends, from a shell that outlives the pause.
fn stop_self(lasting: Duration) -> Result<(), String> {
    let pid = std::process::id();
    let script = format!(
        "sleep 0.05; kill -STOP {pid}; sleep {:.3}; kill -CONT {pid}",
        lasting.as_secs_f64()
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the shell that would continue this agent: {e}"))?;
    // Reaped once this agent runs again.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}

fn kill_self() {
    let pid = std::process::id().to_string();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tracing::warn!("killed by an injected fault");
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .await;
    });
}
