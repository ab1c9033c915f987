//! Events as they come in: NDJSON, one JSON object a line, with an optional string `id`.
//!
//! A stored event is the line itself (with the id the site assigned, when it had none)
//! behind the time it was accepted: `accepted_ms: u64 LE | line`. The time decides the
//! object key's hour, so the same events always give the same key.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// Longest id accepted, in bytes.
pub const MAX_ID: usize = 200;

/// A line of a body that cannot be taken: its number in the body (1-based, blank lines
/// counted), the column within it where known, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {why}", column.map(|c| format!(", column {c}")).unwrap_or_default())]
pub struct BadLine {
    pub line: usize,
    pub column: Option<usize>,
    pub why: String,
    /// The line is well formed but larger than the stream takes (HTTP 413, not 400).
    pub too_large: bool,
}

/// One accepted event before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub line: Vec<u8>,
}

/// A line's top-level `id` member, found while the whole line is checked to be one JSON
/// object, without building it (an ingest's hottest step); and whether `id` came twice.
struct TopLevelId(Option<Value>, bool);

/// Whether an object key is `id`.
struct IsId(bool);

impl<'de> Deserialize<'de> for IsId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IsId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IsId, E> {
                Ok(IsId(v == "id"))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for TopLevelId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevelId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevelId, A::Error> {
                let mut id = None;
                let mut twice = false;
                while let Some(IsId(is_id)) = map.next_key()? {
                    if is_id {
                        // Readers disagree on which of two counts: refused, not guessed.
                        twice |= id.is_some();
                        id = Some(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(TopLevelId(id, twice))
            }
        }
        d.deserialize_map(V)
    }
}

/// `line` (a JSON object) with `"id":<id>` as its first member.
fn with_id(line: &[u8], id: &str) -> Vec<u8> {
    // Ids this site assigns need no escaping; any other goes through serde_json.
    let plain = id
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f);
    let escaped;
    let quoted: &str = if plain {
        id
    } else {
        escaped = serde_json::to_string(id).unwrap_or_else(|_| format!("\"{id}\""));
        &escaped[1..escaped.len() - 1]
    };
    let brace = line.iter().position(|b| *b == b'{').unwrap_or(0);
    let empty = line[brace + 1..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'}');
    let mut out = Vec::with_capacity(line.len() + quoted.len() + 8);
    out.extend_from_slice(&line[..=brace]);
    out.extend_from_slice(b"\"id\":\"");
    out.extend_from_slice(quoted.as_bytes());
    out.push(b'"');
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(&line[brace + 1..]);
    out
}

/// Parses a body. Every line must be valid or none is taken. `assign` gives an id to an
/// event that has none; the line is then stored with that id added as its first member.
/// Lines are otherwise stored byte for byte as sent. A line must be UTF-8 throughout (its
/// strings too: a JSON reader skipping a member does not look inside it), carry `id` at
/// most once, and be at most `max_event` bytes once its id is in it.
pub fn parse_ndjson(
    body: &[u8],
    max_event: usize,
    mut assign: impl FnMut() -> String,
) -> Result<Vec<Event>, BadLine> {
    // Line ends found with memchr (a vector scan): a body of 100 events is 20 kB.
    let ends = || memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    let mut out = Vec::with_capacity(ends().count());
    let mut start = 0;
    for (i, end) in ends().enumerate() {
        let raw = &body[start..end];
        start = end + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let bad = |why: String| BadLine {
            line: i + 1,
            column: None,
            why,
            too_large: false,
        };
        let text = match std::str::from_utf8(line) {
            Ok(t) => t,
            Err(e) => {
                let column = std::str::from_utf8(&line[..e.valid_up_to()])
                    .map_or(0, |t| t.chars().count())
                    + 1;
                return Err(BadLine {
                    column: Some(column),
                    ..bad("not UTF-8; send JSON as UTF-8 text".into())
                });
            }
        };
        let id = match serde_json::from_str::<TopLevelId>(text) {
            Ok(TopLevelId(_, true)) => {
                return Err(bad("\"id\" is given twice; give it once".into()))
            }
            Ok(TopLevelId(id, false)) => id,
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                return Err(bad("expected a JSON object".into()))
            }
            Err(e) => {
                return Err(BadLine {
                    column: Some(e.column()),
                    ..bad(format!("not JSON: {}", without_position(&e)))
                })
            }
        };
        let event = match id {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID => Event {
                id,
                line: line.to_vec(),
            },
            Some(Value::String(_)) => {
                return Err(bad(format!("\"id\" must be 1 to {MAX_ID} bytes long")))
            }
            Some(_) => return Err(bad("\"id\" must be a string".into())),
            None => {
                let id = assign();
                let line = with_id(line, &id);
                Event { id, line }
            }
        };
        if event.line.len() > max_event {
            return Err(BadLine {
                too_large: true,
                ..bad(format!(
                    "an event of {} bytes is over the stream's max_event_bytes ({max_event}); \
                     split it or raise the limit",
                    event.line.len()
                ))
            });
        }
        out.push(event);
    }
    Ok(out)
}

/// A serde_json error's message without its " at line L column C" (the body's numbering
/// is ours: the line in the body, not in the one line parsed).
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => message.to_string(),
        None => text,
    }
}

/// The stored form: acceptance time, then the line.
pub fn stored(accepted_ms: u64, line: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + line.len());
    v.extend_from_slice(&stored_prefix(accepted_ms));
    v.extend_from_slice(line);
    v
}

/// What [`stored`] puts before the line, for writers that store the two parts without
/// joining them.
pub fn stored_prefix(accepted_ms: u64) -> [u8; 8] {
    accepted_ms.to_le_bytes()
}

/// A stored line as text. Lines were checked to be JSON when accepted, so this is a copy
/// after a fast UTF-8 check; a damaged one is repaired with replacement characters.
pub fn line_text(line: &[u8]) -> String {
    match std::str::from_utf8(line) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(line).into_owned(),
    }
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
        let evs = parse_ndjson(b"{\"id\":\"a\",\"x\":1}\n\n{\"x\":2}\r\n", BIG, || {
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
        let e = parse_ndjson(b"{\"x\":1}\n[1]\n", BIG, || "g".into()).expect_err("array");
        assert_eq!(e.line, 2);
        let e = parse_ndjson(b"{\"x\":1}\n{\"x\":\n", BIG, || "g".into()).expect_err("cut");
        assert_eq!(e.line, 2);
        assert!(e.why.starts_with("not JSON"), "{e}");
        let e = parse_ndjson(b"{}\r\n\n \n[1]\n{}", BIG, || "g".into()).expect_err("after blanks");
        assert_eq!(e.line, 4, "blank lines count");
        let e = parse_ndjson(b"{\"id\":7}", BIG, || "g".into()).expect_err("id type");
        assert_eq!(e.to_string(), "line 1: \"id\" must be a string");
        let long = format!("{{\"id\":\"{}\"}}", "x".repeat(MAX_ID + 1));
        assert!(parse_ndjson(long.as_bytes(), BIG, || "g".into()).is_err());
    }

    #[test]
    fn an_assigned_id_is_spliced_into_the_line_as_sent() {
        let evs = parse_ndjson(
            b"  { \"b\" : [1, {\"id\": 5}], \"a\":\"\\u00e9\" }\n{}\n{ }",
            BIG,
            || "g-1".into(),
        )
        .expect("valid");
        assert_eq!(
            evs[0].line,
            b"  {\"id\":\"g-1\", \"b\" : [1, {\"id\": 5}], \"a\":\"\\u00e9\" }"
        );
        assert_eq!(evs[1].line, b"{\"id\":\"g-1\"}");
        assert_eq!(evs[2].line, b"{\"id\":\"g-1\" }");
        for e in &evs {
            let v: Value = serde_json::from_slice(&e.line).expect("still JSON");
            assert_eq!(v["id"], "g-1");
        }
        // An assigned id that JSON must escape (a site name with a quote) stays valid.
        for id in ["we\"st-1", "a\\b", "tab\there", "é-1"] {
            let evs = parse_ndjson(b"{\"x\":1}", BIG, || id.to_string()).expect("valid");
            let v: Value = serde_json::from_slice(&evs[0].line).expect("still JSON");
            assert_eq!(v["id"], id);
            assert_eq!(v["x"], 1);
        }
        // A nested "id" is not the event's.
        let evs = parse_ndjson(b"{\"x\":{\"id\":\"inner\"},\"id\":\"a\"}", BIG, || {
            "g".into()
        })
        .expect("valid");
        assert_eq!(evs[0].id, "a");
        for bad in [
            &b"{\"id\":\"a\"} x"[..],
            b"{\"a\":1,}",
            b"\"s\"",
            b"17",
            b"null",
            b"{\"a\" 1}",
        ] {
            assert!(
                parse_ndjson(bad, BIG, || "g".into()).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Found by probing: a line with invalid UTF-8 inside a string was accepted and
    /// shipped raw (the sink then held lines that are not JSON), and one with `id` twice was
    /// stored with both (readers disagree on which counts).
    #[test]
    fn hostile_lines_are_refused_with_their_place() {
        let e = parse_ndjson(b"{}\n{\"a\":\"x\xff\"}", BIG, || "g".into()).expect_err("utf-8");
        assert_eq!(
            e.to_string(),
            "line 2, column 8: not UTF-8; send JSON as UTF-8 text"
        );
        let e = parse_ndjson(b"{\"id\":\"a\",\"x\":1,\"id\":\"b\"}", BIG, || "g".into())
            .expect_err("twice");
        assert_eq!(e.to_string(), "line 1: \"id\" is given twice; give it once");
        // One numbering: the body's line, the column within it.
        let e = parse_ndjson(b"{}\n{\"ok\":1, 7:1}", BIG, || "g".into()).expect_err("key");
        assert_eq!(
            e.to_string(),
            "line 2, column 10: not JSON: key must be a string"
        );
        // An event over the limit, counted with the id it is stored with.
        let with = format!("{{\"id\":\"a\",\"p\":\"{}\"}}", "x".repeat(100));
        assert!(parse_ndjson(with.as_bytes(), with.len(), || "g".into()).is_ok());
        assert!(parse_ndjson(with.as_bytes(), with.len() - 1, || "g".into()).is_err());
        let line = format!("{{\"p\":\"{}\"}}", "x".repeat(100));
        let e = parse_ndjson(line.as_bytes(), line.len() + 5, || "g-1".into()).expect_err("big");
        assert!(e.too_large && e.why.contains("max_event_bytes"), "{e}");
    }

    const BIG: usize = 1 << 20;

    #[test]
    fn stored_round_trips() {
        let p = stored(1234, b"{}");
        assert_eq!(unstored(&p), (1234, &b"{}"[..]));
    }
}
