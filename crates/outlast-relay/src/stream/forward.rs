//! Copies of a lost site's events, forwarded to the site that ships them now.
//!
//! An origin acknowledges an event (`ack = "replicated"`) once any one peer holds it, and
//! the peers it replicates to answer at their own pace: over a far link the witness may
//! hold a batch the other data site does not have yet. Once the origin is declared down,
//! the site that takes its events over ([`Sites::taker`]) ships what it holds; every other
//! site holding a copy of the origin's events sends it what it lacks, in frames under the
//! origin's name, from the taker's own highest number on. Without this, a batch the
//! witness alone held was lost with its origin (found with 240 ms round trips and jitter).
//!
//! The taker takes such a frame only while the origin is declared down and it is the
//! taker (see `Relay::addressed`); what it takes is shipped after what it held, as one
//! more object of the origin's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{push_all, StreamRelay, REPLICATE_MAX};
use crate::wire::FrameWriter;
use crate::{lock, Transport};

/// How often the down origins are looked at.
const EVERY: Duration = Duration::from_millis(250);
/// Frames sent to one taker in one round, at most.
const ROUND_FRAMES: usize = 64;

impl StreamRelay {
    /// Forwards, for ever, the copies held here of every down origin's events to its
    /// taker, when that is another site.
    pub(crate) async fn forwarder(
        self: Arc<Self>,
        transport: Arc<dyn Transport>,
        stop: CancellationToken,
    ) {
        // Per origin: the taker and the number it is known to hold through.
        let mut known: BTreeMap<String, (String, u64)> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
            let down = self.down.borrow().clone();
            known.retain(|o, _| down.contains(o));
            let origins: Vec<String> = lock(&self.replicas)
                .keys()
                .filter(|o| down.contains(*o))
                .cloned()
                .collect();
            for origin in origins {
                let Some(taker) = self.sites.taker(&origin, &down).map(str::to_string) else {
                    continue;
                };
                if taker == self.sites.me {
                    continue;
                }
                let high = lock(&self.replicas)
                    .get(&origin)
                    .map_or(0, |l| l.last_seq());
                if known
                    .get(&origin)
                    .is_some_and(|(t, through)| *t == taker && *through >= high)
                {
                    continue;
                }
                if let Some(through) = self.forward(&origin, &taker, high, &transport).await {
                    known.insert(origin, (taker, through));
                }
            }
        }
    }

    /// Sends `taker` this site's copies of `origin`'s events past what it holds, up to
    /// `high`; the number the taker holds through after, None when it could not be told.
    async fn forward(
        self: &Arc<Self>,
        origin: &str,
        taker: &str,
        high: u64,
        transport: &Arc<dyn Transport>,
    ) -> Option<u64> {
        let mut from = None;
        let mut through = 0;
        let mut sent = 0u64;
        for _ in 0..ROUND_FRAMES {
            let me = self.clone();
            let o = origin.to_string();
            // The first frame carries no records: it asks where the taker is.
            let frame = tokio::task::spawn_blocking(move || me.origin_frame(&o, from))
                .await
                .ok()?;
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(stream = %self.cfg.name, origin, error = %e, "relay: cannot frame a down site's events to forward");
                    return None;
                }
            };
            let resp = match transport.replicate(taker, frame).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(stream = %self.cfg.name, origin, taker, error = %e, "relay: forwarding a down site's events failed");
                    return None;
                }
            };
            if from.is_some_and(|f| resp.high < f) {
                // The taker did not take them (it no longer takes this origin over).
                return None;
            }
            sent += from.map_or(0, |f| resp.high.saturating_sub(f - 1));
            through = resp.high;
            if through >= high {
                break;
            }
            from = Some(through + 1);
        }
        if sent > 0 {
            tracing::info!(stream = %self.cfg.name, origin, taker, events = sent, through, "relay: forwarded copies of a down site's events its taker lacked");
            metrics::counter!("outlast_relay_forwarded_total", "stream" => self.cfg.name.clone())
                .increment(sent);
        }
        Some(through)
    }

    /// A frame of `origin`'s events held here from `from` on (none without `from`), with
    /// the origin's progress as this site last had it.
    fn origin_frame(&self, origin: &str, from: Option<u64>) -> Result<Vec<u8>, String> {
        let reps = lock(&self.replicas);
        let log = reps
            .get(origin)
            .ok_or("no copy of that site's events here")?;
        let mut w = FrameWriter::new(&self.cfg.name, origin, log.shipped(), log.intent(), None)?;
        if let Some(from) = from {
            let recs = log.read(from, REPLICATE_MAX).map_err(|e| e.to_string())?;
            push_all(
                &mut w,
                recs.iter()
                    .map(|r| (r.seq, r.id.as_bytes(), r.payload.as_slice())),
            )?;
            if let Some((a, b)) = w.span() {
                let skipped: Vec<u64> = log.skips_from(a).into_iter().filter(|s| *s <= b).collect();
                w.skipped(&skipped);
            }
        }
        Ok(w.finish())
    }
}
