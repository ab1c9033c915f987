//! The own events of the last commits, kept in memory for the replicators.
//!
//! One commit's events live back to back in one buffer (id, then stored payload), with an
//! index beside it: the writer, every ingest's critical path, makes two allocations per
//! commit rather than two per event, and frees whole commits as they age out.

use std::collections::VecDeque;

/// One record of a chunk: its number and where its id and payload are in the buffer.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    start: usize,
    id_len: usize,
    end: usize,
}

/// The events of one commit.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    bytes: Vec<u8>,
    index: Vec<Entry>,
    /// The id length of the record last staged.
    staged_id_len: usize,
}

impl Chunk {
    /// A chunk with room for `records` records of `bytes` id and payload bytes in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Chunk {
            bytes: Vec::with_capacity(bytes),
            index: Vec::with_capacity(records),
            staged_id_len: 0,
        }
    }

    /// Starts a record: writes its id and payload parts, returns the payload as written.
    /// It stays in the chunk only once [`Self::keep`] names its number.
    pub fn stage(&mut self, id: &str, payload: &[&[u8]]) -> &[u8] {
        self.bytes.truncate(self.index.last().map_or(0, |e| e.end));
        self.bytes.extend_from_slice(id.as_bytes());
        self.staged_id_len = id.len();
        let at = self.bytes.len();
        for p in payload {
            self.bytes.extend_from_slice(p);
        }
        &self.bytes[at..]
    }

    /// Keeps the record last staged, under `seq`.
    pub fn keep(&mut self, seq: u64) {
        let start = self.index.last().map_or(0, |e| e.end);
        self.index.push(Entry {
            seq,
            start,
            id_len: self.staged_id_len,
            end: self.bytes.len(),
        });
    }

    /// Drops a staged record that was not kept.
    pub fn settle(&mut self) {
        self.bytes.truncate(self.index.last().map_or(0, |e| e.end));
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// What the chunk holds in memory: its buffer and its index.
    fn held_bytes(&self) -> usize {
        self.bytes.capacity() + self.index.capacity() * std::mem::size_of::<Entry>()
    }

    fn get(&self, i: usize) -> Option<(u64, &[u8], &[u8])> {
        let e = self.index.get(i)?;
        let id = self.bytes.get(e.start..e.start + e.id_len)?;
        let payload = self.bytes.get(e.start + e.id_len..e.end)?;
        Some((e.seq, id, payload))
    }
}

/// The chunks of the last commits, oldest first, holding at least `max` records once
/// that many were kept, unless they pass `max_bytes`: whole chunks go, oldest first, while
/// the rest still holds `max` records or passes `max_bytes` (the newest chunk always
/// stays). Memory is then bounded by bytes whatever the events' size.
#[derive(Debug)]
pub(crate) struct Recent {
    chunks: VecDeque<Chunk>,
    len: usize,
    bytes: usize,
    max: usize,
    max_bytes: usize,
}

impl Recent {
    pub fn new(max: usize, max_bytes: usize) -> Self {
        Recent {
            chunks: VecDeque::new(),
            len: 0,
            bytes: 0,
            max,
            max_bytes,
        }
    }

    pub fn push(&mut self, chunk: Chunk) {
        if chunk.len() == 0 {
            return;
        }
        self.len += chunk.len();
        self.bytes += chunk.held_bytes();
        self.chunks.push_back(chunk);
        while self.chunks.len() > 1 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let enough = self.len - front.len() >= self.max;
            if !enough && self.bytes <= self.max_bytes {
                break;
            }
            self.len -= front.len();
            self.bytes -= front.held_bytes();
            self.chunks.pop_front();
        }
    }

    /// Bytes the held chunks take (their buffers and indexes).
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// The first number held, if any.
    pub fn first_seq(&self) -> Option<u64> {
        self.chunks
            .front()
            .and_then(|c| c.index.first())
            .map(|e| e.seq)
    }

    /// Records from number `from` on, in order: (seq, id, stored payload).
    pub fn from(&self, from: u64) -> impl Iterator<Item = (u64, &[u8], &[u8])> + Clone {
        let first = self
            .chunks
            .partition_point(|c| c.index.last().is_some_and(|e| e.seq < from));
        self.chunks
            .range(first..)
            .enumerate()
            .flat_map(move |(n, c)| {
                let skip = if n == 0 {
                    c.index.partition_point(|e| e.seq < from)
                } else {
                    0
                };
                (skip..c.len()).filter_map(move |i| c.get(i))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seqs: std::ops::Range<u64>) -> Chunk {
        let mut c = Chunk::with_capacity(0, 0);
        for s in seqs {
            let id = format!("id-{s}");
            c.stage(&id, &[b"ts", format!("line {s}").as_bytes()]);
            c.keep(s);
            // A duplicate staged and not kept leaves nothing behind.
            c.stage("dup", &[b"xx"]);
            c.settle();
        }
        c
    }

    #[test]
    fn records_come_back_in_order_from_any_number() {
        let mut r = Recent::new(10, usize::MAX);
        r.push(chunk(1..5));
        r.push(chunk(5..9));
        r.push(Chunk::default());
        let all: Vec<(u64, Vec<u8>, Vec<u8>)> = r
            .from(3)
            .map(|(s, i, p)| (s, i.to_vec(), p.to_vec()))
            .collect();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0], (3, b"id-3".to_vec(), b"tsline 3".to_vec()));
        assert_eq!(all[5].0, 8);
        assert_eq!(r.from(9).count(), 0);
        assert_eq!(r.from(0).count(), 8);
        // Past the limit, whole chunks go while the rest still holds `max` records.
        r.push(chunk(9..13));
        assert_eq!(
            r.first_seq(),
            Some(1),
            "without the first chunk, 8 < 10 would be left"
        );
        r.push(chunk(13..20));
        assert_eq!(r.first_seq(), Some(9), "11 records are left");
        assert_eq!(r.from(0).count(), 11);
    }

    /// Large events: the bytes bound lets chunks go before the count is reached, and
    /// the memory held stays under it however many events pass.
    #[test]
    fn memory_is_bounded_by_bytes_too() {
        let mut r = Recent::new(1_000_000, 64 * 1024);
        let big = vec![b'x'; 4096];
        for n in 0..1000u64 {
            let mut c = Chunk::with_capacity(4, 4 * 4200);
            for s in n * 4..n * 4 + 4 {
                c.stage(&format!("id-{s}"), &[&big]);
                c.keep(s);
            }
            r.push(c);
            assert!(r.held_bytes() <= 64 * 1024, "{} bytes held", r.held_bytes());
        }
        assert_eq!(r.from(0).next().map(|(s, _, _)| s), r.first_seq());
        assert!(r.first_seq() > Some(3900), "{:?}", r.first_seq());
        // The newest chunk stays even alone over the bound.
        let mut c = Chunk::with_capacity(1, 200_000);
        c.stage("huge", &[&vec![b'y'; 200_000]]);
        c.keep(9_999);
        r.push(c);
        assert_eq!(r.first_seq(), Some(9_999));
    }
}
