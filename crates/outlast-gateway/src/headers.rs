//! Header rules shared by the server side and the upstream client codec: which headers are
//! hop-by-hop (RFC 9110 section 7.6.1) and how list-valued headers split.

use hyper::header::HeaderValue;

/// Which of the hop-by-hop headers of RFC 9110 section 7.6.1 and their older kin `name` is
/// (lower case, as header names are kept), if any. A match on the bytes, not a search of a
/// list: that tripled the cost of the request scan in `http.rs`.
pub(crate) fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"connection" => 0,
        b"keep-alive" => 1,
        b"proxy-connection" => 2,
        b"proxy-authenticate" => 3,
        b"proxy-authorization" => 4,
        b"te" => 5,
        b"trailer" => 6,
        b"transfer-encoding" => 7,
        b"upgrade" => 8,
        _ => return None,
    })
}

/// The items of a header value that is a list (Connection options, transfer codings): comma
/// separated, blanks trimmed, empty ones skipped.
pub(crate) fn list_items(value: &HeaderValue) -> impl DoubleEndedIterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a Connection option names a header that is not hop-by-hop already ("close" names
/// none). Options are case-insensitive; hop-by-hop names are at most 19 bytes.
pub(crate) fn names_another_header(option: &[u8]) -> bool {
    if option.eq_ignore_ascii_case(b"close") {
        return false;
    }
    let mut lower = [0u8; 19];
    match lower.get_mut(..option.len()) {
        Some(buf) => {
            buf.copy_from_slice(option);
            buf.make_ascii_lowercase();
            hop_by_hop_index(buf).is_none()
        }
        None => true,
    }
}
