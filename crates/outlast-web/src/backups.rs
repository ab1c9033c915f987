//! `/v1/backups`: what each backup took and verified at this site, a snapshot or a verify
//! now, and what each repository holds. All want `Authorization: Bearer <token>`
//! (`[api] token`): a listing names hosts and paths, and a run costs the site real work.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::{refuse, Source};

/// What an operator asks of one backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupAction {
    /// A snapshot now, to every repository.
    Run,
    /// Restore the newest snapshot into a scratch dir and check it.
    Verify,
    /// What each repository holds.
    List,
}

fn authorize(src: &dyn Source, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    match src.admin_token() {
        None => Err((
            StatusCode::FORBIDDEN,
            "backup runs and listings are off at this agent: set [api] token in the config",
        )),
        Some(want) => crate::bearer(headers, want),
    }
}

pub(crate) async fn list(State(src): State<Arc<dyn Source>>, headers: HeaderMap) -> Response {
    if let Err((code, why)) = authorize(src.as_ref(), &headers) {
        return refuse(code, why);
    }
    Json(src.status().backups).into_response()
}

async fn act(
    src: Arc<dyn Source>,
    headers: HeaderMap,
    name: String,
    action: BackupAction,
) -> Response {
    if let Err((code, why)) = authorize(src.as_ref(), &headers) {
        return refuse(code, why);
    }
    match src.backup(&name, action).await {
        Ok(v) => Json(v).into_response(),
        Err((code, why)) => refuse(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            why,
        ),
    }
}

pub(crate) async fn run(
    State(src): State<Arc<dyn Source>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    act(src, headers, name, BackupAction::Run).await
}

pub(crate) async fn verify(
    State(src): State<Arc<dyn Source>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    act(src, headers, name, BackupAction::Verify).await
}

pub(crate) async fn snapshots(
    State(src): State<Arc<dyn Source>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    act(src, headers, name, BackupAction::List).await
}
