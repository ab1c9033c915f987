//! `POST /v1/streams/{name}/events` (ingest) and `GET` of the same path (tail).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outlast_relay::{event, IngestError};
use serde::Deserialize;

use crate::{refuse, Source};

fn no_relay() -> Response {
    refuse(StatusCode::NOT_FOUND, "this agent has no event streams")
}

pub(crate) async fn ingest(
    State(src): State<Arc<dyn Source>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(want) = src.ingest_token() {
        if let Err((code, why)) = crate::bearer(&headers, want) {
            return refuse(code, why);
        }
    }
    let Some(relay) = src.relay() else {
        return no_relay();
    };
    let stream = match relay.stream(&name) {
        Ok(s) => s.clone(),
        Err(e) => return refuse(StatusCode::NOT_FOUND, e.to_string()),
    };
    if body.len() as u64 > stream.max_body_bytes() {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body of {} bytes is over the stream's {}-byte limit; send fewer events a request",
                body.len(),
                stream.max_body_bytes()
            ),
        );
    }
    let max_event = usize::try_from(stream.max_event_bytes()).unwrap_or(usize::MAX);
    let events = match event::parse_ndjson(&body, max_event, || stream.assign_id()) {
        Ok(e) if e.is_empty() => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "no events: send one JSON object a line",
            )
        }
        Ok(e) => e,
        Err(bad) => {
            let code = if bad.too_large {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return refuse(code, format!("{bad}; nothing was stored"));
        }
    };
    match stream.ingest(events).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => {
            let code = match &e {
                IngestError::Witness => StatusCode::MISDIRECTED_REQUEST,
                IngestError::Spool => StatusCode::INTERNAL_SERVER_ERROR,
                IngestError::Full { .. }
                | IngestError::LowDisk { .. }
                | IngestError::DiskFull { .. }
                | IngestError::NotReplicated(_)
                | IngestError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
            };
            let mut r = refuse(code, e.to_string());
            if code == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            r
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct TailQuery {
    from: Option<u64>,
    max: Option<usize>,
}

/// This site's own events still in its spool, from a sequence number on, as NDJSON:
/// `{"seq":N,"event":{...}}` a line.
pub(crate) async fn tail(
    State(src): State<Arc<dyn Source>>,
    Path(name): Path<String>,
    Query(q): Query<TailQuery>,
) -> Response {
    let Some(relay) = src.relay() else {
        return no_relay();
    };
    let stream = match relay.stream(&name) {
        Ok(s) => s.clone(),
        Err(e) => return refuse(StatusCode::NOT_FOUND, e.to_string()),
    };
    let from = q.from.unwrap_or(1);
    let max = q.max.unwrap_or(1000).min(100_000);
    match tokio::task::spawn_blocking(move || stream.tail(from, max)).await {
        Ok(Ok(recs)) => {
            let mut out = String::new();
            for (seq, line) in recs {
                out.push_str(&format!("{{\"seq\":{seq},\"event\":{line}}}\n"));
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response()
        }
        Ok(Err(e)) => {
            // The detail names files on this machine: the log gets it, the client does not.
            tracing::error!(stream = %name, error = %e, "reading the spool for a tail");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this site could not read its spool (the agent's log says why)",
            )
        }
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"),
    }
}
