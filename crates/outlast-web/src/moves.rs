//! `/v1/switchover` and `/v1/maintenance`: an operator's planned moves. Both need
//! `Authorization: Bearer <token>` (`[api] token`) and answer once the move is done (or
//! why not); the agent checks the request against the committed state and commits it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::{refuse, Source};

/// Why a mutation is refused before it reaches the agent.
fn authorize(src: &dyn Source, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    match src.admin_token() {
        None => Err((
            StatusCode::FORBIDDEN,
            "switchover, maintenance and incident updates are off at this agent: set [api] token in the config",
        )),
        Some(want) => crate::bearer(headers, want),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("{e}; send {shape}"))
}

fn answer<T: serde::Serialize>(r: Result<T, (u16, String)>) -> Response {
    match r {
        Ok(a) => Json(a).into_response(),
        Err((code, why)) => refuse(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            why,
        ),
    }
}

pub(crate) async fn switchover(
    State(src): State<Arc<dyn Source>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((code, why)) = authorize(src.as_ref(), &headers) {
        return refuse(code, why);
    }
    let req = match parse::<outlast_core::status::SwitchoverRequest>(
        &body,
        r#"{"service": "NAME", "to": "SITE"} or {"dataset": "NAME", "to": "SITE"}"#,
    ) {
        Ok(r) => r,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    if req.service.is_some() == req.dataset.is_some() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "name exactly one of \"service\" and \"dataset\"",
        );
    }
    answer(src.switchover(req).await)
}

pub(crate) async fn maintenance(
    State(src): State<Arc<dyn Source>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((code, why)) = authorize(src.as_ref(), &headers) {
        return refuse(code, why);
    }
    let req = match parse::<outlast_core::status::MaintenanceRequest>(
        &body,
        r#"{"site": "SITE", "on": true|false}"#,
    ) {
        Ok(r) => r,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    answer(src.maintenance(req).await)
}

/// `GET /v1/incidents`: the committed history (public, as the status page is).
pub(crate) async fn incidents(State(src): State<Arc<dyn Source>>) -> Response {
    let st = src.status();
    let mut all = st.history.incidents;
    all.reverse();
    Json(serde_json::json!({ "incidents": all })).into_response()
}

async fn incident(
    src: Arc<dyn Source>,
    headers: HeaderMap,
    id: Option<u64>,
    body: Bytes,
) -> Response {
    if let Err((code, why)) = authorize(src.as_ref(), &headers) {
        return refuse(code, why);
    }
    let req = match parse::<outlast_core::status::IncidentRequest>(
        &body,
        r#"{"title": "...", "status": "investigating|identified|monitoring|resolved", "message": "...", "impact": "minor", "by": "NAME", "components": ["service-NAME"]}"#,
    ) {
        Ok(r) => r,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    if let Err(why) = req.check(id.is_none()) {
        return refuse(StatusCode::BAD_REQUEST, why);
    }
    answer(src.incident(id, req).await)
}

/// `POST /v1/incidents`: a new incident.
pub(crate) async fn incident_open(
    State(src): State<Arc<dyn Source>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    incident(src, headers, None, body).await
}

/// `POST /v1/incidents/ID`: an update.
pub(crate) async fn incident_update(
    State(src): State<Arc<dyn Source>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an incident id (a number, as /v1/incidents lists them)"),
        );
    };
    incident(src, headers, Some(id), body).await
}
