//! `/v1/faults`: a drill's faults injected into a running agent (`outlast drill --attach`).
//!
//! Every call needs `Authorization: Bearer <token>` (`[api] token`); every fault ends by
//! itself after `for_ms` (default 60 s, at most an hour), so a drill that dies half-way
//! never leaves a site broken.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outlast_core::faults::FaultKind;
use serde::Deserialize;

use crate::{refuse, Source};

const DEFAULT_FOR_MS: u64 = 60_000;

#[derive(Deserialize)]
struct FaultRequest {
    #[serde(flatten)]
    kind: FaultKind,
    for_ms: Option<u64>,
}

/// Why a fault call is refused before it reaches the agent.
fn authorize(src: &dyn Source, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    match src.fault_token() {
        None => Err((
            StatusCode::FORBIDDEN,
            "fault injection is off at this agent: set [api] token in the config",
        )),
        Some(want) => crate::bearer(headers, want),
    }
}

pub(crate) async fn add(
    State(src): State<Arc<dyn Source>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((code, why)) = authorize(src.as_ref(), &headers) {
        return refuse(code, why);
    }
    let req: FaultRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "{e}; send {{\"kind\": \"partition\"|\"delay\"|\"sink-down\"|\"stop\"|\"kill\", ..., \"for_ms\": N}}"
                ),
            )
        }
    };
    let lasting = Duration::from_millis(req.for_ms.unwrap_or(DEFAULT_FOR_MS));
    if lasting.is_zero() {
        return refuse(StatusCode::BAD_REQUEST, "for_ms must be above 0");
    }
    match src.inject_fault(req.kind, lasting) {
        Ok(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Err(why) => refuse(StatusCode::BAD_REQUEST, why),
    }
}

pub(crate) async fn list(State(src): State<Arc<dyn Source>>, headers: HeaderMap) -> Response {
    if let Err((code, why)) = authorize(src.as_ref(), &headers) {
        return refuse(code, why);
    }
    Json(src.faults()).into_response()
}

pub(crate) async fn clear_all(State(src): State<Arc<dyn Source>>, headers: HeaderMap) -> Response {
    if let Err((code, why)) = authorize(src.as_ref(), &headers) {
        return refuse(code, why);
    }
    Json(serde_json::json!({ "ended": src.clear_faults(None) })).into_response()
}

pub(crate) async fn clear_one(
    State(src): State<Arc<dyn Source>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err((code, why)) = authorize(src.as_ref(), &headers) {
        return refuse(code, why);
    }
    let Ok(id) = id.parse::<u64>() else {
        return refuse(StatusCode::BAD_REQUEST, "a fault id is a number");
    };
    match src.clear_faults(Some(id)) {
        0 => refuse(
            StatusCode::NOT_FOUND,
            format!("no active fault {id} (it may have ended by itself)"),
        ),
        n => Json(serde_json::json!({ "ended": n })).into_response(),
    }
}
