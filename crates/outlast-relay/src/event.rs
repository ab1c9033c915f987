//! Events as they come in: NDJSON, one JSON object a line, with an optional string `id`.
//!
//! A stored event is the line itself (with the id the site assigned, when it had none)
//! behind the time it was accepted: `accepted_ms: u64 LE | line`. The time decides the
//! object key's hour, so the same events always give the same key.

use serde_json::{Map, Value};

/// Longest id accepted, in bytes.
pub const MAX_ID: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct BadLine {
    pub line: usize,
    pub why: String,
}

/// One accepted event before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub line: Vec<u8>,
}

/// Parses a body. Every line must be valid or none is taken. `assign` gives an id to an
/// event that has none; the line is then stored with that id added.
pub fn parse_ndjson(
    body: &[u8],
    mut assign: impl FnMut() -> String,
) -> Result<Vec<Event>, BadLine> {
    let mut out = Vec::new();
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let bad = |why: String| BadLine { line: i + 1, why };
        let mut obj: Map<String, Value> = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(bad("expected a JSON object".into())),
            Err(e) => return Err(bad(format!("not JSON: {e}"))),
        };
        match obj.get("id") {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID => out.push(Event {
                id: id.clone(),
                line: line.to_vec(),
            }),
            Some(Value::String(_)) => {
                return Err(bad(format!("\"id\" must be 1 to {MAX_ID} bytes long")))
            }
            Some(_) => return Err(bad("\"id\" must be a string".into())),
            None => {
                let id = assign();
                obj.insert("id".into(), Value::String(id.clone()));
                let line = serde_json::to_vec(&obj).map_err(|e| bad(e.to_string()))?;
                out.push(Event { id, line });
            }
        }
    }
    Ok(out)
}

/// The stored form: acceptance time, then the line.
pub fn stored(accepted_ms: u64, line: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + line.len());
    v.extend_from_slice(&accepted_ms.to_le_bytes());
    v.extend_from_slice(line);
    v
}

/// Splits a stored payload into its acceptance time and line.
pub fn unstored(payload: &[u8]) -> (u64, &[u8]) {
    match payload.split_first_chunk::<8>() {
        Some((ts, line)) => (u64::from_le_bytes(*ts), line),
        None => (0, payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_and_without_ids() {
        let mut n = 0;
        let evs = parse_ndjson(b"{\"id\":\"a\",\"x\":1}\n\n{\"x\":2}\r\n", || {
            n += 1;
            format!("gen-{n}")
        })
        .expect("valid");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].id, "a");
        assert_eq!(evs[0].line, b"{\"id\":\"a\",\"x\":1}");
        assert_eq!(evs[1].id, "gen-1");
        let v: Value = serde_json::from_slice(&evs[1].line).expect("json");
        assert_eq!(v["id"], "gen-1");
        assert_eq!(v["x"], 2);
    }

    #[test]
    fn a_bad_line_is_named_and_refuses_the_body() {
        let e = parse_ndjson(b"{\"x\":1}\n[1]\n", || "g".into()).expect_err("array");
        assert_eq!(e.line, 2);
        let e = parse_ndjson(b"{\"x\":1}\n{\"x\":\n", || "g".into()).expect_err("cut");
        assert_eq!(e.line, 2);
        assert!(e.why.starts_with("not JSON"), "{e}");
        let e = parse_ndjson(b"{\"id\":7}", || "g".into()).expect_err("id type");
        assert_eq!(e.to_string(), "line 1: \"id\" must be a string");
        let long = format!("{{\"id\":\"{}\"}}", "x".repeat(MAX_ID + 1));
        assert!(parse_ndjson(long.as_bytes(), || "g".into()).is_err());
    }

    #[test]
    fn stored_round_trips() {
        let p = stored(1234, b"{}");
        assert_eq!(unstored(&p), (1234, &b"{}"[..]));
    }
}
