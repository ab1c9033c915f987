//! The binary form of a [`ReplicateReq`], the relay's bulk traffic between sites.
//!
//! JSON would escape every quote of every event line (events are JSON themselves) and
//! unescape it again at the other end; this frame carries the lines as they are. All
//! integers are little-endian:
//!
//! ```text
//! "ORR1" | u16 len, stream | u16 len, origin | u64 shipped
//!        | u8 0, or u8 1 with u64 intent start and u64 intent end
//!        | u32 count | count × (u64 seq | u64 ts | u16 len, id | u32 len, line)
//! "ORR2" | the same | u32 count | count × u64 seq skipped at the origin
//! "ORR3" | u64 after | the same as "ORR2" after its magic
//! ```
//!
//! A frame is "ORR2" only when the origin keeps skipped numbers (the losing copies of ids
//! held twice, of its records in the frame or earlier ones still in its spool), which is
//! rare: agents from before the skip list still read every other frame.
//!
//! "ORR3" is a frame in order: `after` is the highest of the origin's numbers the receiver
//! holds before it, as the origin sent them. A receiver takes it only then (waiting a
//! moment for the frames before it), so an origin may have several frames in flight to a
//! peer on separate connections and none is taken out of turn. An origin sends these only
//! to a peer whose answers say it takes them (`ReplicateResp::in_order`).
//!
//! Strings are UTF-8 (checked on decode). The peer traffic's MAC covers the whole frame,
//! so decode only has to be safe against a peer's bugs, not a stranger's bytes; it still
//! checks every length and refuses trailing bytes.

use crate::{ReplicateReq, WireRecord};

const MAGIC: &[u8; 4] = b"ORR1";
/// The same with a list of skipped records after the records.
const MAGIC_SKIPS: &[u8; 4] = b"ORR2";
/// The same with `after` first: a frame in order.
const MAGIC_AFTER: &[u8; 4] = b"ORR3";

fn put_str16(out: &mut Vec<u8>, s: &[u8]) -> Result<(), String> {
    let n = u16::try_from(s.len()).map_err(|_| format!("{} bytes is too long", s.len()))?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(s);
    Ok(())
}

/// Builds a frame record by record, straight from where the events are held.
pub struct FrameWriter {
    buf: Vec<u8>,
    count_at: usize,
    count: u32,
    /// The first and last record numbers pushed.
    span: Option<(u64, u64)>,
    skipped: Vec<u64>,
    in_order: bool,
}

impl FrameWriter {
    /// `after`: the frame is in order, after this number (see the module's header).
    pub fn new(
        stream: &str,
        origin: &str,
        shipped: u64,
        intent: Option<(u64, u64)>,
        after: Option<u64>,
    ) -> Result<Self, String> {
        let mut buf = Vec::with_capacity(64 * 1024);
        match after {
            None => buf.extend_from_slice(MAGIC),
            Some(a) => {
                buf.extend_from_slice(MAGIC_AFTER);
                buf.extend_from_slice(&a.to_le_bytes());
            }
        }
        put_str16(&mut buf, stream.as_bytes())?;
        put_str16(&mut buf, origin.as_bytes())?;
        buf.extend_from_slice(&shipped.to_le_bytes());
        match intent {
            None => buf.push(0),
            Some((a, b)) => {
                buf.push(1);
                buf.extend_from_slice(&a.to_le_bytes());
                buf.extend_from_slice(&b.to_le_bytes());
            }
        }
        let count_at = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        Ok(FrameWriter {
            buf,
            count_at,
            count: 0,
            span: None,
            skipped: Vec::new(),
            in_order: after.is_some(),
        })
    }

    /// The first and last numbers of the records pushed so far.
    pub fn span(&self) -> Option<(u64, u64)> {
        self.span
    }

    /// `id` is UTF-8 (the receiver checks).
    pub fn push(&mut self, seq: u64, ts: u64, id: &[u8], line: &[u8]) -> Result<(), String> {
        let n = u32::try_from(line.len()).map_err(|_| "an event line over 4 GiB")?;
        let count = self.count.checked_add(1).ok_or("too many records")?;
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(&ts.to_le_bytes());
        put_str16(&mut self.buf, id)?;
        self.buf.extend_from_slice(&n.to_le_bytes());
        self.buf.extend_from_slice(line);
        self.count = count;
        self.span = Some(self.span.map_or((seq, seq), |(first, _)| (first, seq)));
        Ok(())
    }

    /// Says which of its numbers the origin has skipped (`seqs` ascending): those of the
    /// records in the frame and any earlier ones it still keeps (a receiver may hold such a
    /// record from an earlier frame).
    pub fn skipped(&mut self, seqs: &[u64]) {
        self.skipped.extend_from_slice(seqs);
    }

    /// Bytes a record of `id` and a `line_len`-byte line takes in a frame.
    pub fn record_bytes(id: &[u8], line_len: usize) -> usize {
        8 + 8 + 2 + id.len() + 4 + line_len
    }

    /// Makes room for `bytes` more bytes of records at once.
    pub fn reserve(&mut self, bytes: usize) {
        self.buf.reserve(bytes);
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        if !self.skipped.is_empty() || self.in_order {
            if !self.in_order {
                self.buf[..4].copy_from_slice(MAGIC_SKIPS);
            }
            self.buf
                .extend_from_slice(&(self.skipped.len() as u32).to_le_bytes());
            for s in &self.skipped {
                self.buf.extend_from_slice(&s.to_le_bytes());
            }
        }
        self.buf
    }
}

/// One record of a frame, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub ts: u64,
    pub id: &'a str,
    /// The event line as sent (checked to be JSON where it was accepted).
    pub line: &'a [u8],
}

/// A [`ReplicateReq`] read in place: nothing is copied out of the frame.
#[derive(Debug, Clone)]
pub struct FrameRef<'a> {
    pub stream: &'a str,
    pub origin: &'a str,
    pub shipped: u64,
    pub intent: Option<(u64, u64)>,
    pub records: Vec<RecordRef<'a>>,
    /// Numbers of the records the origin has skipped (ascending): no copy of theirs to
    /// settle with, none to ship.
    pub skipped: Vec<u64>,
    /// A frame in order: the receiver holds the origin's events through this number
    /// before it (see the module's header).
    pub after: Option<u64>,
}

impl<'a> FrameRef<'a> {
    /// The stream and origin a frame is for, without reading its records.
    pub fn peek(frame: &'a [u8]) -> Result<(&'a str, &'a str), String> {
        let mut r = Reader { buf: frame, at: 0 };
        r.head()?;
        Ok((r.str16()?, r.str16()?))
    }

    pub fn decode(frame: &'a [u8]) -> Result<Self, String> {
        let mut r = Reader { buf: frame, at: 0 };
        let (with_skips, after) = r.head()?;
        let stream = r.str16()?;
        let origin = r.str16()?;
        let shipped = r.u64()?;
        let intent = match r.take(1)?[0] {
            0 => None,
            1 => Some((r.u64()?, r.u64()?)),
            x => return Err(format!("bad intent flag {x}")),
        };
        let count = r.u32()? as usize;
        // Each record takes at least 22 bytes: a count beyond that is a lie.
        if count > (frame.len() - r.at) / 22 {
            return Err(format!("{count} records cannot fit in the frame"));
        }
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            let seq = r.u64()?;
            let ts = r.u64()?;
            let id = r.str16()?;
            let n = r.u32()? as usize;
            let line = r.take(n)?;
            records.push(RecordRef { seq, ts, id, line });
        }
        let mut skipped = Vec::new();
        if with_skips {
            let n = r.u32()? as usize;
            if n > (frame.len() - r.at) / 8 {
                return Err(format!("{n} skipped numbers cannot fit in the frame"));
            }
            for _ in 0..n {
                skipped.push(r.u64()?);
            }
            if !skipped.is_sorted() {
                return Err("skipped numbers out of order".into());
            }
        }
        if r.at != frame.len() {
            return Err(format!(
                "{} bytes after the last record",
                frame.len() - r.at
            ));
        }
        Ok(FrameRef {
            stream,
            origin,
            shipped,
            intent,
            records,
            skipped,
            after,
        })
    }
}

impl ReplicateReq {
    pub fn decode(frame: &[u8]) -> Result<ReplicateReq, String> {
        let f = FrameRef::decode(frame)?;
        let records = f
            .records
            .iter()
            .map(|r| {
                let line = std::str::from_utf8(r.line)
                    .map_err(|e| format!("the line of record {} is not UTF-8: {e}", r.seq))?;
                Ok(WireRecord {
                    seq: r.seq,
                    id: r.id.to_string(),
                    ts: r.ts,
                    line: line.to_string(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ReplicateReq {
            stream: f.stream.to_string(),
            origin: f.origin.to_string(),
            shipped: f.shipped,
            intent: f.intent,
            records,
            skipped: f.skipped,
            after: f.after,
        })
    }

    /// The request as a frame read in place would give it.
    pub fn as_frame(&self) -> FrameRef<'_> {
        FrameRef {
            stream: &self.stream,
            origin: &self.origin,
            shipped: self.shipped,
            intent: self.intent,
            records: self
                .records
                .iter()
                .map(|r| RecordRef {
                    seq: r.seq,
                    ts: r.ts,
                    id: &r.id,
                    line: r.line.as_bytes(),
                })
                .collect(),
            skipped: self.skipped.clone(),
            after: self.after,
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .buf
            .get(self.at..self.at.saturating_add(n))
            .ok_or_else(|| format!("frame cut at byte {} (wanted {n} more)", self.at))?;
        self.at += n;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "short u64")?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| "short u32")?))
    }
    /// Whether the frame ends with a list of skipped records, and the number it is in
    /// order after.
    fn head(&mut self) -> Result<(bool, Option<u64>), String> {
        match self.take(4)? {
            m if m == MAGIC => Ok((false, None)),
            m if m == MAGIC_SKIPS => Ok((true, None)),
            m if m == MAGIC_AFTER => Ok((true, Some(self.u64()?))),
            _ => Err("not a relay frame (bad magic)".into()),
        }
    }
    fn str16(&mut self) -> Result<&'a str, String> {
        let b = self.take(2)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        let at = self.at;
        std::str::from_utf8(self.take(n)?)
            .map_err(|e| format!("text at byte {at} is not UTF-8: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The frame of a whole request (agents write theirs record by record).
    fn encode(r: &ReplicateReq) -> Result<Vec<u8>, String> {
        let mut w = FrameWriter::new(&r.stream, &r.origin, r.shipped, r.intent, r.after)?;
        for rec in &r.records {
            w.push(rec.seq, rec.ts, rec.id.as_bytes(), rec.line.as_bytes())?;
        }
        w.skipped(&r.skipped);
        Ok(w.finish())
    }

    fn req() -> ReplicateReq {
        ReplicateReq {
            stream: "clicks".into(),
            origin: "east".into(),
            shipped: 41,
            intent: Some((42, 90)),
            records: vec![
                WireRecord {
                    seq: 42,
                    id: "a".into(),
                    ts: 1_700_000_000_000,
                    line: r#"{"id":"a","q":"\"quoted\" é"}"#.into(),
                },
                WireRecord {
                    seq: 43,
                    id: "east-43".into(),
                    ts: 1_700_000_000_001,
                    line: "{}".into(),
                },
            ],
            skipped: vec![43],
            after: None,
        }
    }

    fn same(a: &ReplicateReq, b: &ReplicateReq) -> bool {
        serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
    }

    /// Whether `r` comes back the same through its frame.
    fn round_trips(r: &ReplicateReq) -> bool {
        let back = ReplicateReq::decode(&encode(r).expect("encode")).expect("decode");
        same(r, &back)
    }

    #[test]
    fn a_frame_round_trips() {
        assert!(round_trips(&req()));
        assert!(round_trips(&ReplicateReq {
            intent: None,
            records: vec![],
            skipped: vec![],
            ..req()
        }));
    }

    /// A frame is "ORR2" only when the origin has skips to tell, so agents from before the
    /// skip list read every other frame; skips outside its records travel too (a receiver
    /// may hold those records from an earlier frame).
    #[test]
    fn only_a_frame_with_skips_carries_the_list() {
        let plain = ReplicateReq {
            skipped: vec![],
            ..req()
        };
        assert_eq!(&encode(&plain).expect("encode")[..4], b"ORR1");
        assert_eq!(&encode(&req()).expect("encode")[..4], b"ORR2");
        let outside = ReplicateReq {
            skipped: vec![7, 91],
            ..req()
        };
        let f = encode(&outside).expect("encode");
        assert_eq!(&f[..4], b"ORR2");
        assert_eq!(FrameRef::decode(&f).expect("decode").skipped, vec![7, 91]);
        let mut shuffled = encode(&ReplicateReq {
            skipped: vec![42, 43],
            ..req()
        })
        .expect("encode");
        let at = shuffled.len() - 16;
        shuffled[at..].rotate_left(8);
        assert!(FrameRef::decode(&shuffled).is_err(), "skips out of order");
    }

    /// A frame in order is "ORR3" whether or not it has skips, and keeps its `after`
    /// through the owned form and in place; its header still names the stream and origin.
    #[test]
    fn a_frame_in_order_says_what_it_follows() {
        for skipped in [vec![], vec![43]] {
            let r = ReplicateReq {
                after: Some(41),
                skipped,
                ..req()
            };
            let f = encode(&r).expect("encode");
            assert_eq!(&f[..4], b"ORR3");
            assert_eq!(FrameRef::decode(&f).expect("decode").after, Some(41));
            assert!(same(&r, &ReplicateReq::decode(&f).expect("decode")));
            assert_eq!(FrameRef::peek(&f).expect("peek"), ("clicks", "east"));
            for cut in 0..f.len() {
                assert!(FrameRef::decode(&f[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert!(round_trips(&ReplicateReq {
            after: Some(0),
            records: vec![],
            skipped: vec![],
            ..req()
        }));
    }

    /// Read in place, a frame gives what the owned form holds, and its header alone names
    /// the stream and origin.
    #[test]
    fn a_frame_reads_in_place() {
        let r = req();
        let f = encode(&r).expect("encode");
        let view = FrameRef::decode(&f).expect("decode");
        let again = r.as_frame();
        assert_eq!(format!("{view:?}"), format!("{again:?}"));
        assert_eq!(FrameRef::peek(&f).expect("peek"), ("clicks", "east"));
    }

    #[test]
    fn damaged_frames_are_refused() {
        let f = encode(&req()).expect("encode");
        for cut in 0..f.len() {
            assert!(ReplicateReq::decode(&f[..cut]).is_err(), "cut at {cut}");
            assert!(
                FrameRef::decode(&f[..cut]).is_err(),
                "in place, cut at {cut}"
            );
        }
        let mut longer = f.clone();
        longer.push(0);
        assert!(ReplicateReq::decode(&longer).is_err());
        let mut magic = f.clone();
        magic[0] = b'X';
        assert!(ReplicateReq::decode(&magic).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for magic in [MAGIC, MAGIC_SKIPS, MAGIC_AFTER] {
                let mut framed = magic.to_vec();
                framed.extend_from_slice(&bytes);
                let _ = ReplicateReq::decode(&framed);
                let _ = FrameRef::decode(&framed);
                let _ = FrameRef::peek(&framed);
            }
            let _ = ReplicateReq::decode(&bytes);
        }

        #[test]
        fn any_request_round_trips(
            ids in proptest::collection::vec(("[a-z0-9-]{1,20}", ".{0,60}", any::<u64>()), 0..20),
            intent in proptest::option::of((any::<u64>(), any::<u64>())),
            skip_every in 0usize..4,
            after in proptest::option::of(any::<u64>()),
        ) {
            let r = ReplicateReq {
                stream: "s".into(),
                origin: "west".into(),
                shipped: 7,
                intent,
                records: ids
                    .into_iter()
                    .enumerate()
                    .map(|(i, (id, line, ts))| WireRecord { seq: i as u64, id, ts, line })
                    .collect(),
                skipped: Vec::new(),
                after,
            };
            let r = ReplicateReq {
                skipped: (0..r.records.len() as u64)
                    .filter(|s| skip_every > 0 && (*s as usize).is_multiple_of(skip_every))
                    .collect(),
                ..r
            };
            prop_assert!(round_trips(&r));
        }
    }
}
