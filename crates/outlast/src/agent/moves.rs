//! An operator's planned moves (`/v1/switchover`, `/v1/maintenance`): the leader checks
//! each against the committed state and commits it (a site that does not lead asks the
//! leader over the peer link), then the answering site follows the move until the new
//! primary takes writes, and says how long writes were held.

use std::time::Duration;

use outlast_control::{Decision, Refusal, Request};
use outlast_web::{MaintenanceAnswer, MaintenanceRequest, MoveAnswer, SwitchoverRequest};
use serde::{Deserialize, Serialize};

use super::Agent;

/// A request the leader committed: the epoch it made and what it decided.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Committed {
    pub epoch: u64,
    pub decision: Decision,
}

/// (HTTP status, why): how a request fails.
pub type Failed = (u16, String);

/// How long a planned move may take past its hold before the answer gives up on it (the
/// new primary may replay the old one's WAL, bounded in `outlast_db::member`).
const MOVE_WAIT: Duration = Duration::from_secs(45);

/// How often the answering site looks whether the move is done.
const POLL: Duration = Duration::from_millis(20);

fn refused(r: Refusal) -> Failed {
    match r {
        Refusal::Unknown(why) => (404, why),
        Refusal::Conflict(why) => (409, why),
    }
}

impl Agent {
    /// Commits `req` at the leader, here when this site leads.
    async fn commit_request(&self, req: Request) -> Result<Committed, Failed> {
        if self.is_leader() {
            return self.commit_here(req).await;
        }
        let now = self.now_ms();
        let Some(leader) = self.node().leader(now) else {
            return Err((
                503,
                "no leader now (an election is on, or this site is cut off from the majority); ask again".into(),
            ));
        };
        let Some(client) = self.peer_client.get() else {
            return Err((503, "this agent is still starting; ask again".into()));
        };
        let timeout = self.config.timing.lease * 4;
        client
            .call::<Request, Result<Committed, Failed>>(&leader, "/peer/request", &req, timeout)
            .await
            .map_err(|e| (503, format!("cannot reach the leader ({leader}): {e}")))?
    }

    /// Checks and commits `req` (this site leads). A proposal that lost a race with the
    /// policy's own (both decided on the same epoch) is decided again, up to three times.
    pub(super) async fn commit_here(&self, req: Request) -> Result<Committed, Failed> {
        for _ in 0..3 {
            if !self.is_leader() {
                return Err((503, "this site stopped leading; ask again".into()));
            }
            let mut proposal = {
                let now = self.now_ms();
                self.node().request(&req, now).map_err(refused)?
            };
            proposal.at_ms = super::peer::unix_ms();
            let Some(decision) = proposal.decisions.first().cloned() else {
                return Err((500, "nothing to commit".into()));
            };
            tracing::info!(
                ?req,
                epoch = proposal.base_epoch,
                "committing an operator's request"
            );
            let timeout = self.config.timing.lease * 2;
            match tokio::time::timeout(timeout, self.raft().client_write(proposal)).await {
                Ok(Ok(r)) if r.data.decisions.is_empty() => continue,
                Ok(Ok(r)) => {
                    return Ok(Committed {
                        epoch: r.data.epoch,
                        decision,
                    })
                }
                Ok(Err(e)) => return Err((503, format!("not committed: {e}"))),
                Err(_) => return Err((503, format!("not committed within {timeout:?}"))),
            }
        }
        Err((
            409,
            "the cluster's state kept changing while this was decided; ask again".into(),
        ))
    }

    /// The dataset a service carries, if any.
    fn dataset_of(&self, service: &str) -> Option<String> {
        self.config
            .datasets
            .iter()
            .find(|d| d.service == service)
            .map(|d| d.name.clone())
    }

    /// Waits until `to` acts as `service`'s primary at `epoch` or later (and, for a dataset,
    /// its server takes writes): how long that took from `since`, or why not.
    async fn until_acting(
        &self,
        service: &str,
        to: &str,
        epoch: u64,
        since: std::time::Instant,
    ) -> Result<u64, Failed> {
        let db = self.dataset_of(service).is_some();
        let deadline = since + self.config.timing.lease * 2 + MOVE_WAIT;
        loop {
            let now = self.now_ms();
            if self.node().acts(to, service, epoch, db, now) {
                return Ok(since.elapsed().as_millis() as u64);
            }
            if outlast_core::clock::now() > deadline {
                return Err((
                    504,
                    format!(
                        "the move is committed (epoch {epoch}) but {to} did not take {service}'s writes within {:?}; see /v1/status",
                        deadline - since
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `POST /v1/switchover`.
pub async fn switchover(agent: &Agent, req: SwitchoverRequest) -> Result<MoveAnswer, Failed> {
    let service = match (&req.service, &req.dataset) {
        (Some(s), None) => s.clone(),
        (None, Some(d)) => agent
            .config
            .datasets
            .iter()
            .find(|x| x.name == *d)
            .map(|x| x.service.clone())
            .ok_or_else(|| (404, format!("no dataset named {d:?}")))?,
        _ => {
            return Err((
                400,
                "name exactly one of \"service\" and \"dataset\"".into(),
            ))
        }
    };
    let c = agent
        .commit_request(Request::Switchover {
            service: service.clone(),
            to: req.to.clone(),
        })
        .await?;
    let since = outlast_core::clock::now();
    let from = match &c.decision {
        Decision::PrimaryMove { from, .. } => from.clone(),
        _ => None,
    };
    let held_ms = agent
        .until_acting(&service, &req.to, c.epoch, since)
        .await?;
    tracing::info!(service, to = %req.to, epoch = c.epoch, held_ms, "switchover done");
    Ok(MoveAnswer {
        dataset: agent.dataset_of(&service),
        service,
        from,
        to: req.to,
        epoch: c.epoch,
        held_ms,
    })
}

/// `POST /v1/maintenance`: going in, answered once every primary there has moved away.
pub async fn maintenance(
    agent: &Agent,
    req: MaintenanceRequest,
) -> Result<MaintenanceAnswer, Failed> {
    let here: Vec<String> = agent
        .node()
        .state()
        .services
        .iter()
        .filter(|(_, s)| s.primary.as_deref() == Some(req.site.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    let c = agent
        .commit_request(Request::Maintenance {
            site: req.site.clone(),
            on: req.on,
        })
        .await?;
    let mut moved = Vec::new();
    if req.on {
        let deadline = outlast_core::clock::now() + agent.config.timing.lease * 2 + MOVE_WAIT;
        for service in here {
            // The policy moves it on a following tick: wait for that commit first.
            let since = outlast_core::clock::now();
            let (to, from, epoch) = loop {
                let s = agent.node().state().services.get(&service).cloned();
                if let Some(s) = s.filter(|s| {
                    s.epoch > c.epoch || s.primary.as_deref() != Some(req.site.as_str())
                }) {
                    if let Some(to) = s.primary.clone().filter(|p| *p != req.site) {
                        break (to, s.from.clone(), s.epoch);
                    }
                }
                if outlast_core::clock::now() > deadline {
                    return Err((
                        504,
                        format!("{} is in maintenance (epoch {}) but {service} has not moved away; see /v1/status", req.site, c.epoch),
                    ));
                }
                tokio::time::sleep(POLL).await;
            };
            let held_ms = agent.until_acting(&service, &to, epoch, since).await?;
            moved.push(MoveAnswer {
                dataset: agent.dataset_of(&service),
                service,
                from,
                to,
                epoch,
                held_ms,
            });
        }
    }
    Ok(MaintenanceAnswer {
        site: req.site,
        on: req.on,
        epoch: c.epoch,
        moved,
    })
}

/// `POST /v1/incidents[/ID]`: commits the operator's words, then answers with the incident
/// as this site applied it.
pub async fn incident(
    agent: &Agent,
    id: Option<u64>,
    req: outlast_core::status::IncidentRequest,
) -> Result<outlast_core::incident::Incident, Failed> {
    use outlast_core::incident::{Impact, Step};
    let status = match (&req.status, id) {
        (Some(s), _) => Step::parse(s).map_err(|e| (400, e))?,
        (None, None) => Step::Investigating,
        (None, Some(id)) => agent
            .node()
            .state()
            .history
            .incidents
            .iter()
            .find(|i| i.id == id)
            .map_or(Step::Investigating, |i| i.status),
    };
    let impact = req
        .impact
        .as_deref()
        .map(Impact::parse)
        .transpose()
        .map_err(|e| (400, e))?;
    let title = req.title.as_ref().map(|t| t.trim().to_string());
    let c = agent
        .commit_request(Request::IncidentNote {
            id,
            title: title.clone(),
            status,
            impact,
            body: req.message.trim().to_string(),
            by: req.by.clone(),
            components: req.components.clone(),
        })
        .await?;
    // A site that does not lead applies the entry a moment after the leader committed it.
    let deadline = outlast_core::clock::now() + agent.config.timing.lease * 2;
    loop {
        {
            let node = agent.node();
            let st = node.state();
            if st.epoch >= c.epoch {
                let found = st.history.incidents.iter().rev().find(|i| match id {
                    Some(id) => i.id == id,
                    None => i.key.is_none() && Some(&i.title) == title.as_ref(),
                });
                return found.cloned().ok_or_else(|| {
                    (
                        500,
                        format!("committed at epoch {} but not in the history", c.epoch),
                    )
                });
            }
        }
        if outlast_core::clock::now() > deadline {
            return Err((
                504,
                format!(
                    "committed (epoch {}) but this site has not applied it yet; see /v1/incidents",
                    c.epoch
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
