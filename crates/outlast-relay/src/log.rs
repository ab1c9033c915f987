//! A spool with what the shipper needs beside it, in the same folder:
//! - `skips`: sequence numbers never to ship (the losing copy of an id held twice), as
//!   u64 LE, appended and fsync'd; kept as long as their records are in the spool (a skip
//!   is what tells a peer's later copy of the id that it is the one to keep);
//! - `shipped`: every event up to this number is in a sink (or skipped), written atomically;
//! - `intent`: the range of the object being written, written before the upload, so that
//!   after a crash the same range (the same key, the same bytes) is written again.
//!
//! Shipped segments are kept for the dedup window (bounded in bytes too), so a retry of an
//! id that was already shipped is still recognised.

use std::collections::{BTreeSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::spool::{RealFs, Record, RecordRef, Spool, SpoolError};

const MAX_SEGMENT_BYTES: u64 = 8 << 20;

/// Whether event `seq` is in an object or in the range of the one being written, for a
/// log shipped through `shipped` with `intent` (skipped events aside).
pub fn shipped_or_intended(seq: u64, shipped: u64, intent: Option<(u64, u64)>) -> bool {
    seq <= shipped || intent.is_some_and(|(a, b)| (a..=b).contains(&seq))
}

pub struct Log {
    pub spool: Spool<RealFs>,
    dir: PathBuf,
    skips: BTreeSet<u64>,
    shipped: u64,
    intent: Option<(u64, u64)>,
    /// (when, shipped-through) marks; segments through a mark are deleted once it is old.
    retained: VecDeque<(Instant, u64)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_u64s(path: &Path) -> Result<Vec<u64>, SpoolError> {
    match std::fs::read(path) {
        Ok(b) => Ok(b
            .chunks_exact(8)
            .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Replaces a small file atomically and durably.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_data().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

impl Log {
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let spool = Spool::open(RealFs::default(), dir, MAX_SEGMENT_BYTES)?;
        let skips = read_u64s(&dir.join("skips"))?.into_iter().collect();
        let shipped = read_u64s(&dir.join("shipped"))?
            .first()
            .copied()
            .unwrap_or(0);
        // An intent the shipped mark covers is done: clearing one is not written (see
        // `set_intent`).
        let intent = match read_u64s(&dir.join("intent"))?.as_slice() {
            [a, b] if a <= b && *b > shipped => Some((*a, *b)),
            _ => None,
        };
        Ok(Self {
            spool,
            dir: dir.to_path_buf(),
            skips,
            shipped,
            intent,
            retained: VecDeque::new(),
        })
    }

    /// Every event up to this number is in a sink or skipped.
    pub fn shipped(&self) -> u64 {
        self.shipped
    }

    pub fn last_seq(&self) -> u64 {
        self.spool.next_seq().saturating_sub(1)
    }

    pub fn is_skipped(&self, seq: u64) -> bool {
        self.skips.contains(&seq)
    }

    /// The skipped numbers from `from` on, ascending. Complete for the records still in
    /// the spool: a skip is forgotten only with its record.
    pub fn skips_from(&self, from: u64) -> Vec<u64> {
        self.skips.range(from..).copied().collect()
    }

    /// Marks events never to ship, durably.
    pub fn skip(&mut self, seqs: &[u64]) -> Result<(), SpoolError> {
        let new: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| !self.skips.contains(s))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let path = self.dir.join("skips");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let bytes: Vec<u8> = new.iter().flat_map(|s| s.to_le_bytes()).collect();
        f.write_all(&bytes).map_err(io(&path))?;
        f.sync_data().map_err(io(&path))?;
        self.skips.extend(new);
        Ok(())
    }

    /// [`shipped_or_intended`] for this log.
    pub fn shipped_or_intended(&self, seq: u64) -> bool {
        shipped_or_intended(seq, self.shipped, self.intent)
    }

    pub fn intent(&self) -> Option<(u64, u64)> {
        self.intent
    }

    /// Records the range of the object about to be written, durably, or that none is.
    /// Clearing an intent the shipped mark covers writes nothing: the file's intent reads
    /// as done once `shipped` passes it, so the marks of an object cost one sync, not two
    /// (the shipper and a replica's receiver hold the log while they write them).
    pub fn set_intent(&mut self, range: Option<(u64, u64)>) -> Result<(), SpoolError> {
        if range.is_none() && self.intent.is_none_or(|(_, b)| b <= self.shipped) {
            self.intent = None;
            return Ok(());
        }
        let bytes: Vec<u8> = match range {
            Some((a, b)) => [a.to_le_bytes(), b.to_le_bytes()].concat(),
            None => Vec::new(),
        };
        write_atomic(&self.dir.join("intent"), &bytes)?;
        self.intent = range;
        Ok(())
    }

    /// Records that every event through `through` is in a sink.
    pub fn set_shipped(&mut self, through: u64) -> Result<(), SpoolError> {
        if through <= self.shipped {
            return Ok(());
        }
        write_atomic(&self.dir.join("shipped"), &through.to_le_bytes())?;
        self.shipped = through;
        self.retained.push_back((Instant::now(), through));
        // The skips stay while their records are in the spool: a peer's copy of a skipped
        // id that arrives later is looked up here, and a shipped past skip must not read as
        // "ours is shipped" (both copies would be skipped). `trim` lets them go.
        Ok(())
    }

    /// Deletes shipped segments older than `window`, or sooner when what is kept passes
    /// `max_bytes`.
    pub fn trim(&mut self, window: Duration, max_bytes: u64) -> Result<(), SpoolError> {
        let mut through = None;
        while let Some(&(at, t)) = self.retained.front() {
            let kept = self.spool.stats().bytes - self.spool.usage_after(self.shipped).1;
            if at.elapsed() >= window || kept > max_bytes {
                through = Some(t);
                self.retained.pop_front();
            } else {
                break;
            }
        }
        if let Some(t) = through {
            self.spool.remove_through(t)?;
            self.forget_skips()?;
        }
        Ok(())
    }

    /// Drops the skips of records no longer in the spool, in memory and in the file.
    fn forget_skips(&mut self) -> Result<(), SpoolError> {
        let first = self
            .spool
            .first_seq()
            .unwrap_or_else(|| self.spool.next_seq());
        if self.skips.first().is_none_or(|s| *s >= first) {
            return Ok(());
        }
        self.skips = self.skips.split_off(&first);
        let bytes: Vec<u8> = self.skips.iter().flat_map(|s| s.to_le_bytes()).collect();
        write_atomic(&self.dir.join("skips"), &bytes)
    }

    /// Unshipped events: count and bytes.
    pub fn unshipped(&self) -> (u64, u64) {
        self.spool.usage_after(self.shipped)
    }

    /// Events from `from` on (at most `max`), whether skipped or not.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<Record>, SpoolError> {
        self.spool.read(from, max)
    }

    /// [`Self::read`] in place (see [`Spool::read_each`]).
    pub fn read_each(
        &self,
        from: u64,
        max: usize,
        f: impl FnMut(RecordRef<'_>),
    ) -> Result<usize, SpoolError> {
        self.spool.read_each(from, max, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Skips live as long as their records: past the shipped mark they are still answered,
    /// and once a trim removed their segment they leave memory and the file.
    #[test]
    fn skips_last_as_long_as_their_records() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut log = Log::open(tmp.path()).expect("open");
        let payload = vec![b'x'; 64 << 10];
        let mut seqs = Vec::new();
        // Enough for a second segment.
        for i in 0..(MAX_SEGMENT_BYTES / (64 << 10) + 4) {
            let (s, _) = log
                .spool
                .append_one(&format!("id-{i}"), &payload)
                .expect("append");
            seqs.push(s);
        }
        log.spool.sync().expect("sync");
        let (early, late) = (seqs[1], seqs[seqs.len() - 1]);
        log.skip(&[early, late]).expect("skip");
        log.set_shipped(late).expect("shipped");
        assert!(log.is_skipped(early) && log.is_skipped(late));
        drop(log);
        let mut log = Log::open(tmp.path()).expect("reopen");
        assert!(log.is_skipped(early) && log.is_skipped(late), "read back");
        // set_shipped again to queue the mark for trimming, then trim it all at once.
        log.set_shipped(late + 1).expect("shipped");
        log.trim(Duration::ZERO, 0).expect("trim");
        assert!(log.spool.lookup("id-1").is_none(), "first segment gone");
        assert!(
            !log.is_skipped(early),
            "the skip of a removed record is dropped"
        );
        assert!(
            log.is_skipped(late),
            "the last segment (and its skip) stays"
        );
        drop(log);
        let log = Log::open(tmp.path()).expect("reopen");
        assert!(
            !log.is_skipped(early) && log.is_skipped(late),
            "the file agrees"
        );
    }

    /// An intent is cleared by the shipped mark passing it (one sync for an object's
    /// marks), or by a write when the mark does not cover it; either way it stays cleared
    /// when the log is opened again.
    #[test]
    fn a_cleared_intent_stays_cleared() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut log = Log::open(tmp.path()).expect("open");
        log.set_intent(Some((1, 10))).expect("intent");
        drop(log);
        let mut log = Log::open(tmp.path()).expect("reopen");
        assert_eq!(log.intent(), Some((1, 10)), "an open intent is read back");
        log.set_shipped(10).expect("shipped");
        log.set_intent(None).expect("clear");
        assert_eq!(log.intent(), None);
        assert_eq!(
            read_u64s(&tmp.path().join("intent")).expect("read"),
            [1, 10],
            "a covered intent is not written again"
        );
        drop(log);
        let mut log = Log::open(tmp.path()).expect("reopen");
        assert_eq!(log.intent(), None, "the shipped mark covers it");
        // Cleared before the mark covers it (a peer shipped part of it): written.
        log.set_intent(Some((11, 20))).expect("intent");
        log.set_shipped(15).expect("shipped");
        log.set_intent(None).expect("clear");
        drop(log);
        let log = Log::open(tmp.path()).expect("reopen");
        assert_eq!((log.intent(), log.shipped()), (None, 15));
    }
}
