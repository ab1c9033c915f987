//! A spool with what the shipper needs beside it, in the same folder:
//! - `skips`: sequence numbers never to ship (the losing copy of an id held twice), as
//!   u64 LE, appended and fsync'd; kept as long as their records are in the spool (a skip
//!   is what tells a peer's later copy of the id that it is the one to keep);
//! - `marks`: the shipped mark (every event up to this number is in a sink, or skipped) and
//!   the intent (the range of the object being written, written before the upload, so that
//!   after a crash the same range, the same key and the same bytes, is written again).
//!
//! # `marks` (version 1)
//! Two slots of 64 bytes, written in place and never grown, so that recording progress
//! needs no new block on the disk: on a full disk the shipper can still record what it
//! shipped and delete segments to free space. (Before, each mark was a new file renamed over
//! the old one: on a full disk nothing could be recorded, nothing was trimmed, and shipping
//! stopped for good.) A slot is:
//!
//! ```text
//! "OMK1" | generation: u64 LE | shipped: u64 LE | intent: u8 (0|1) | from: u64 LE |
//! through: u64 LE | zeros | crc32c of bytes 0..60: u32 LE at 60
//! ```
//!
//! A write goes to the slot the newest does not use, then `fdatasync`; a torn write leaves
//! the other slot, one step older, which the shipper re-does (an object's key and bytes
//! follow from its range). On open the valid slot with the higher generation counts. The
//! marks of logs from before this format (`shipped`, `intent` files) are read once and
//! carried over.
//!
//! Shipped segments are kept for the dedup window (bounded in bytes too), so a retry of an
//! id that was already shipped is still recognised.

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::spool::{RealFs, Record, RecordRef, Spool, SpoolError};

const MAX_SEGMENT_BYTES: u64 = 8 << 20;
const MARKS_MAGIC: &[u8; 4] = b"OMK1";
const SLOT: usize = 64;

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
    marks: Marks,
    /// (when, shipped-through) marks; segments through a mark are deleted once it is old.
    retained: VecDeque<(Instant, u64)>,
}

/// The `marks` file, open for writes in place.
struct Marks {
    file: File,
    path: PathBuf,
    generation: u64,
}

fn encode_slot(generation: u64, shipped: u64, intent: Option<(u64, u64)>) -> [u8; SLOT] {
    let mut b = [0u8; SLOT];
    b[0..4].copy_from_slice(MARKS_MAGIC);
    b[4..12].copy_from_slice(&generation.to_le_bytes());
    b[12..20].copy_from_slice(&shipped.to_le_bytes());
    if let Some((from, through)) = intent {
        b[20] = 1;
        b[21..29].copy_from_slice(&from.to_le_bytes());
        b[29..37].copy_from_slice(&through.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// What a slot holds.
#[derive(Debug, Clone, Copy)]
struct Slot {
    generation: u64,
    shipped: u64,
    intent: Option<(u64, u64)>,
}

/// A slot, when it is whole.
fn decode_slot(b: &[u8]) -> Option<Slot> {
    if b.len() < SLOT || &b[0..4] != MARKS_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[60..64].try_into().ok()?);
    if crc32c::crc32c(&b[..60]) != crc {
        return None;
    }
    let u = |r: std::ops::Range<usize>| b[r].try_into().ok().map(u64::from_le_bytes);
    let intent = match b[20] {
        1 => Some((u(21..29)?, u(29..37)?)),
        _ => None,
    };
    Some(Slot {
        generation: u(4..12)?,
        shipped: u(12..20)?,
        intent,
    })
}

impl Marks {
    /// Opens the marks in `dir` (carrying over the files of the format before): the marks
    /// and what they hold.
    fn open(dir: &Path) -> Result<(Self, Slot), SpoolError> {
        let path = dir.join("marks");
        let found = match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&path)(e)),
        };
        let newest = found.as_deref().and_then(|b| {
            let slots = [
                decode_slot(b.get(..SLOT)?),
                b.get(SLOT..).and_then(decode_slot),
            ];
            slots.into_iter().flatten().max_by_key(|s| s.generation)
        });
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let mut marks = Marks {
            file,
            path,
            generation: 0,
        };
        let held = match newest {
            Some(slot) => {
                marks.generation = slot.generation;
                slot
            }
            None => {
                // New, or from before this format: both slots written once, whole.
                let shipped = read_u64s(&dir.join("shipped"))?
                    .first()
                    .copied()
                    .unwrap_or(0);
                let intent = match read_u64s(&dir.join("intent"))?.as_slice() {
                    [a, b] if a <= b => Some((*a, *b)),
                    _ => None,
                };
                let both = [
                    encode_slot(0, shipped, intent),
                    encode_slot(0, shipped, intent),
                ];
                marks
                    .file
                    .write_all_at(&both.concat(), 0)
                    .and_then(|_| marks.file.sync_all())
                    .map_err(io(&marks.path))?;
                if let Some(d) = marks.path.parent() {
                    File::open(d).and_then(|d| d.sync_all()).map_err(io(d))?;
                }
                for old in ["shipped", "intent", "shipped.tmp", "intent.tmp"] {
                    let _ = std::fs::remove_file(dir.join(old));
                }
                Slot {
                    generation: 0,
                    shipped,
                    intent,
                }
            }
        };
        Ok((marks, held))
    }

    /// Records (shipped, intent) in the older slot, durably, without growing the file.
    fn write(&mut self, shipped: u64, intent: Option<(u64, u64)>) -> Result<(), SpoolError> {
        let generation = self.generation + 1;
        let slot = encode_slot(generation, shipped, intent);
        let at = (generation % 2) * SLOT as u64;
        self.file
            .write_all_at(&slot, at)
            .and_then(|_| self.file.sync_data())
            .map_err(io(&self.path))?;
        self.generation = generation;
        Ok(())
    }
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
        let (marks, held) = Marks::open(dir)?;
        let shipped = held.shipped;
        // An intent the shipped mark covers is done: clearing one is not written (see
        // `set_intent`).
        let intent = held.intent.filter(|(_, b)| *b > shipped);
        Ok(Self {
            spool,
            dir: dir.to_path_buf(),
            skips,
            shipped,
            intent,
            marks,
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
        self.marks.write(self.shipped, range)?;
        self.intent = range;
        Ok(())
    }

    /// Records that every event through `through` is in a sink.
    pub fn set_shipped(&mut self, through: u64) -> Result<(), SpoolError> {
        if through <= self.shipped {
            return Ok(());
        }
        // The intent stays written beside the mark; one the mark covers reads as done.
        self.marks.write(through, self.intent)?;
        self.shipped = through;
        self.retained
            .push_back((outlast_core::clock::now(), through));
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
        let generation = log.marks.generation;
        log.set_intent(None).expect("clear again");
        assert_eq!(
            log.marks.generation, generation,
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

    /// The marks are written in place in two slots: a torn write of one leaves the other,
    /// and marks of the format before (separate files) are carried over once.
    #[test]
    fn marks_survive_a_torn_slot_and_carry_over_the_old_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("shipped"), 41u64.to_le_bytes()).expect("old mark");
        std::fs::write(
            tmp.path().join("intent"),
            [42u64.to_le_bytes(), 50u64.to_le_bytes()].concat(),
        )
        .expect("old intent");
        let mut log = Log::open(tmp.path()).expect("open");
        assert_eq!((log.shipped(), log.intent()), (41, Some((42, 50))));
        assert!(!tmp.path().join("shipped").exists(), "carried over");
        log.set_shipped(50).expect("shipped");
        log.set_intent(Some((51, 60))).expect("intent");
        let size = std::fs::metadata(tmp.path().join("marks"))
            .expect("marks")
            .len();
        assert_eq!(size, 2 * SLOT as u64, "never grows");
        // Tear the newest slot: the one before it counts.
        let newest = (log.marks.generation % 2) as usize * SLOT;
        drop(log);
        let path = tmp.path().join("marks");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[newest + 13] ^= 0xff;
        std::fs::write(&path, &bytes).expect("tear");
        let log = Log::open(tmp.path()).expect("reopen");
        assert_eq!((log.shipped(), log.intent()), (50, None));
    }
}
