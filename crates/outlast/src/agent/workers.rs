//! Named workers: every task an agent runs is spawned through a [`Workers`] group, with a
//! tracing span of its name, and stopped with the group: its token is cancelled, then each
//! task is awaited up to a deadline, and whatever is still running then is named in the log
//! and aborted.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub struct Workers {
    group: &'static str,
    stop: CancellationToken,
    tasks: Vec<(String, JoinHandle<()>)>,
}

impl Workers {
    pub fn new(group: &'static str) -> Self {
        Self {
            group,
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        }
    }

    /// The token that tells this group's workers to stop.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn spawn(
        &mut self,
        name: impl Into<String>,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        let name = name.into();
        let span = tracing::info_span!("worker", name = %name);
        self.tasks.push((name, tokio::spawn(work.instrument(span))));
    }

    /// Stops the group: cancels its token and waits for every worker, up to `deadline` in
    /// all; those still running then are logged by name and aborted.
    pub async fn stop(self, deadline: Duration) {
        self.stop.cancel();
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut task) in self.tasks {
            match tokio::time::timeout_at(until, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(group = self.group, worker = %name, error = %e, "worker ended abnormally")
                }
                Err(_) => {
                    tracing::warn!(group = self.group, worker = %name, ?deadline, "worker still running at the deadline; aborted");
                    task.abort();
                }
            }
        }
    }
}
