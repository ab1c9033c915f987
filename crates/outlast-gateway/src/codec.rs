//! The HTTP/1.1 client's reading side, apart from any socket: a response head parsed off a
//! buffer and how its body is framed (RFC 9112 section 6.3: no body after HEAD, 1xx, 204
//! and 304; chunked, decoded here; Content-Length, several values must agree; otherwise
//! until the connection closes). The pool (`pool.rs`) reads bytes into a buffer and asks
//! this module what they are.

use std::io;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::StatusCode;

use crate::headers::{hop_by_hop_index, list_items, names_another_header};

/// Largest response head (status line and headers) taken from a backend.
pub(crate) const MAX_HEAD: usize = 64 << 10;
/// Most header fields in a response head.
pub(crate) const MAX_HEADERS: usize = 128;
/// Longest chunk-size line, and most trailer bytes, of a chunked body.
pub(crate) const MAX_CHUNK_LINE: usize = 4 << 10;
pub(crate) const MAX_TRAILERS: usize = 64 << 10;

pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A response head read off a connection, with how its body is framed.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// The connection may carry another request once this body is read.
    pub(crate) keep_alive: bool,
}

/// How a response body ends.
pub(crate) enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// Chunked, at this point of the decoding.
    Chunked(Chunked),
    /// When the connection closes.
    Close,
}

/// The next final response head at the front of `buf`, consumed from it; `None` while it
/// is incomplete. Interim (1xx) heads before it are consumed and dropped.
pub(crate) fn parse_head(buf: &mut BytesMut, head_only: bool) -> io::Result<Option<Answer>> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        let mut fields = [MaybeUninit::<httparse::Header>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(invalid(format!("bad response head: {e}"))),
        };
        let code = parsed.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| invalid(format!("bad status {code}")))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(invalid(
                "101 Switching Protocols to a request that asked for none",
            ));
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let http11 = parsed.version == Some(1);
        // Where each field's name and value sit in the head (kept on the stack), so that
        // values can share the head's bytes once it is split off the buffer.
        let base = buf.as_ptr() as usize;
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let count = parsed.headers.len();
        for (f, span) in parsed.headers.iter().zip(spans.iter_mut()) {
            let name = (f.name.as_ptr() as usize - base) as u32;
            let value = (f.value.as_ptr() as usize - base) as u32;
            *span = (
                name,
                name + f.name.len() as u32,
                value,
                value + f.value.len() as u32,
            );
        }
        let mut headers = HeaderMap::with_capacity(count);
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut close = !http11;
        // Headers that the Connection header names besides the hop-by-hop ones (seldom).
        let mut named: Vec<HeaderName> = Vec::new();
        let head = buf.split_to(len).freeze();
        for &(name_at, name_end, value_at, value_end) in &spans[..count] {
            let name = HeaderName::from_bytes(&head[name_at as usize..name_end as usize])
                .map_err(|_| invalid("bad header name"))?;
            let value =
                HeaderValue::from_maybe_shared(head.slice(value_at as usize..value_end as usize))
                    .map_err(|_| invalid(format!("bad value of {name}")))?;
            if name == header::CONTENT_LENGTH {
                let n = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| invalid("bad content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid("content-length values disagree"));
                }
                length = Some(n);
            } else if name == header::TRANSFER_ENCODING {
                // The last coding of the last field decides.
                if let Some(last) = list_items(&value).next_back() {
                    chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
                }
            } else if name == header::CONNECTION {
                for option in list_items(&value) {
                    if option.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                        close = false;
                    } else if names_another_header(option) {
                        named.extend(HeaderName::from_bytes(option).ok());
                    }
                }
            }
            // Hop-by-hop fields are this connection's: not passed on.
            if hop_by_hop_index(name.as_str().as_bytes()).is_none() {
                headers.append(name, value);
            }
        }
        for name in named {
            headers.remove(name);
        }
        let bodiless =
            head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let framing = match (bodiless, chunked, length) {
            (true, _, _) => Framing::Length(0),
            (false, Some(true), _) => Framing::Chunked(Chunked::Size),
            (false, Some(false), _) => Framing::Close,
            (false, None, Some(n)) => Framing::Length(n),
            (false, None, None) => Framing::Close,
        };
        if chunked.is_some() && !bodiless {
            // The body is passed on decoded, framed afresh for the client; a length sent
            // beside a transfer coding is not the body's (RFC 9112 section 6.3).
            headers.remove(header::CONTENT_LENGTH);
        }
        let keep_alive = !close && !matches!(framing, Framing::Close);
        return Ok(Some(Answer {
            status,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes of it left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields (dropped) up to a blank line; bytes seen.
    Trailers(usize),
}

/// What a step of decoding found.
pub(crate) enum Step {
    Data(Bytes),
    End,
    /// More bytes are needed.
    More,
}

/// The position of the first line end (`\n`) in `buf`, or an error when there is none
/// within `limit` bytes.
pub(crate) fn line_end(buf: &[u8], limit: usize, what: &str) -> io::Result<Option<usize>> {
    match buf.iter().take(limit).position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i)),
        None if buf.len() >= limit => Err(invalid(format!("{what} over {limit} bytes"))),
        None => Ok(None),
    }
}

impl Chunked {
    /// Decodes what it can of `buf`.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(end) = line_end(buf, MAX_CHUNK_LINE, "chunk-size line")? else {
                        return Ok(Step::More);
                    };
                    let line = &buf[..end];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    // Extensions after ';' are ignored; blanks may precede them.
                    let digits = line
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .filter(|d| !d.is_empty() && d.len() <= 16)
                        .and_then(|d| u64::from_str_radix(d, 16).ok())
                        .ok_or_else(|| invalid("bad chunk size"))?;
                    buf.advance(end + 1);
                    *self = if size == 0 {
                        Chunked::Trailers(0)
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    *self = if n == left {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - n)
                    };
                    return Ok(Step::Data(data));
                }
                Chunked::DataEnd => match buf.first() {
                    None => return Ok(Step::More),
                    Some(b'\n') => {
                        buf.advance(1);
                        *self = Chunked::Size;
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(Step::More),
                        Some(b'\n') => {
                            buf.advance(2);
                            *self = Chunked::Size;
                        }
                        Some(_) => return Err(invalid("no CRLF after a chunk")),
                    },
                    Some(_) => return Err(invalid("no CRLF after a chunk")),
                },
                Chunked::Trailers(seen) => {
                    let left = MAX_TRAILERS.saturating_sub(seen).max(1);
                    let Some(end) = line_end(buf, left, "trailer section")? else {
                        return Ok(Step::More);
                    };
                    let blank = end == 0 || (end == 1 && buf[0] == b'\r');
                    buf.advance(end + 1);
                    if blank {
                        return Ok(Step::End);
                    }
                    *self = Chunked::Trailers(seen + end + 1);
                }
            }
        }
    }
}

impl Framing {
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        match self {
            Framing::Length(0) => Ok(Step::End),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                Ok(Step::Data(buf.split_to(n as usize).freeze()))
            }
            Framing::Chunked(state) => state.step(buf),
            Framing::Close if buf.is_empty() => Ok(Step::More),
            Framing::Close => Ok(Step::Data(buf.split().freeze())),
        }
    }
}

#[cfg(test)]
mod hostile {
    use super::*;
    use proptest::prelude::*;

    const HEAD: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

    // Hostile response heads from a backend: random bytes, and a real head with bytes
    // changed, cut or added. A head is parsed, refused with an error, or waited for; never
    // a panic, and every Ok(Some) consumed what it parsed (PROPTEST_CASES sets the count).
    proptest! {
        #[test]
        fn hostile_response_heads_are_parsed_or_refused(
            random in proptest::collection::vec(any::<u8>(), 0..2048),
            at in any::<usize>(),
            byte in any::<u8>(),
            cut in any::<usize>(),
            head_only in any::<bool>(),
        ) {
            let mut real = HEAD.to_vec();
            let i = at % real.len();
            real[i] = byte;
            real.truncate(1 + cut % real.len());
            for input in [random.clone(), real] {
                let mut buf = BytesMut::from(&input[..]);
                let before = buf.len();
                if let Ok(Some(_)) = parse_head(&mut buf, head_only) {
                    prop_assert!(buf.len() < before, "a parsed head is consumed");
                }
            }
        }
    }
}
