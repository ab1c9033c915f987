use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use proptest::prelude::*;

use super::*;

#[derive(Default)]
struct MemFile {
    durable: Vec<u8>,
    pending: Vec<u8>,
}

/// Files in memory; what is not synced may be torn or garbled by a crash.
#[derive(Clone, Default)]
struct MemFs(Rc<RefCell<BTreeMap<PathBuf, MemFile>>>);

impl Fs for MemFs {
    fn create_dir_all(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(self
            .0
            .borrow()
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let files = self.0.borrow();
        let f = files
            .get(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok([f.durable.as_slice(), f.pending.as_slice()].concat())
    }
    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.0
            .borrow_mut()
            .entry(path.to_path_buf())
            .or_default()
            .pending
            .extend_from_slice(data);
        Ok(())
    }
    fn start_sync(&self, path: &Path) -> io::Result<SyncStep> {
        let mut files = self.0.borrow_mut();
        let f = files
            .get_mut(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let pending = std::mem::take(&mut f.pending);
        f.durable.extend(pending);
        Ok(SyncStep::default())
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut files = self.0.borrow_mut();
        let f = files
            .get_mut(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut all = [f.durable.as_slice(), f.pending.as_slice()].concat();
        all.truncate(len as usize);
        *f = MemFile {
            durable: all,
            pending: Vec::new(),
        };
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut files = self.0.borrow_mut();
        let f = files
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        files.insert(to.to_path_buf(), f);
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.0.borrow_mut().remove(path);
        Ok(())
    }
}

impl MemFs {
    /// A crash: each file keeps a prefix of its unsynced bytes (`keep` per mille of them),
    /// the last kept byte flipped when `garble`.
    fn crash(&self, keep: u16, garble: bool) {
        for f in self.0.borrow_mut().values_mut() {
            let n = f.pending.len() * usize::from(keep.min(1000)) / 1000;
            let mut kept: Vec<u8> = f.pending[..n].to_vec();
            if garble {
                if let Some(b) = kept.last_mut() {
                    *b ^= 0x5a;
                }
            }
            f.pending.clear();
            f.durable.extend(kept);
        }
    }

    /// Flips one durable byte somewhere (disk damage after the fact).
    fn damage(&self, pick: usize) -> bool {
        let mut files = self.0.borrow_mut();
        let total: usize = files.values().map(|f| f.durable.len()).sum();
        if total == 0 {
            return false;
        }
        let mut at = pick % total;
        for f in files.values_mut() {
            if at < f.durable.len() {
                f.durable[at] ^= 0xff;
                return true;
            }
            at -= f.durable.len();
        }
        false
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/spool/clicks")
}

fn ev(id: &str) -> (String, Vec<u8>) {
    (
        id.to_string(),
        format!("{{\"id\":\"{id}\",\"url\":\"/x\"}}").into_bytes(),
    )
}

#[test]
fn appends_survive_reopen_and_duplicates_are_not_stored_twice() {
    let fs = MemFs::default();
    let mut s = Spool::open(fs.clone(), &dir(), 200).expect("open");
    let r = s.append(&[ev("a"), ev("b"), ev("a")]).expect("append");
    assert_eq!(r, vec![(1, false), (2, false), (1, true)]);
    s.sync().expect("sync");
    for i in 0..20 {
        s.append(&[ev(&format!("e{i}"))]).expect("append");
    }
    s.sync().expect("sync");
    assert!(s.stats().segments > 1, "rolled over at 200 bytes");
    let s2 = Spool::open(fs, &dir(), 200).expect("reopen");
    let all = s2.read(0, usize::MAX).expect("read");
    assert_eq!(all.len(), 22);
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=22).collect::<Vec<_>>()
    );
    assert_eq!(s2.next_seq(), 23);
}

/// A read from any position, of any length, returns exactly those records, on the real
/// disk, across segments, with records still held in the write buffer, and after a reopen.
#[test]
fn reads_of_any_range_return_exactly_those_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(RealFs::default(), tmp.path(), 300).expect("open");
    for i in 0..40 {
        s.append(&[ev(&format!("e{i}"))]).expect("append");
    }
    assert!(s.stats().segments > 3, "several segments");
    let check = |s: &Spool<RealFs>| {
        for from in 0..=42u64 {
            for max in [0, 1, 2, 3, 7, 40, usize::MAX] {
                let got: Vec<u64> = s
                    .read(from, max)
                    .expect("read")
                    .iter()
                    .map(|r| r.seq)
                    .collect();
                let want: Vec<u64> = (from.max(1)..=40).take(max).collect();
                assert_eq!(got, want, "read({from}, {max})");
            }
        }
    };
    check(&s);
    s.sync().expect("sync");
    drop(s);
    let s = Spool::open(RealFs::default(), tmp.path(), 300).expect("reopen");
    check(&s);
    let r = s.read(5, 1).expect("read");
    assert_eq!(
        (r[0].id.as_str(), r[0].payload.as_slice()),
        ("e4", ev("e4").1.as_slice())
    );
}

#[test]
fn a_torn_tail_is_cut_and_counted() {
    let fs = MemFs::default();
    let mut s = Spool::open(fs.clone(), &dir(), 1 << 20).expect("open");
    s.append(&[ev("a"), ev("b")]).expect("append");
    s.sync().expect("sync");
    s.append(&[ev("c")]).expect("append");
    fs.crash(500, false);
    let s2 = Spool::open(fs, &dir(), 1 << 20).expect("reopen");
    assert_eq!(s2.read(0, 10).expect("read").len(), 2);
    assert_eq!(s2.stats().torn_tails_cut, 1);
}

#[test]
fn a_damaged_segment_is_quarantined_not_a_crash_loop() {
    let fs = MemFs::default();
    let mut s = Spool::open(fs.clone(), &dir(), 150).expect("open");
    for i in 0..12 {
        s.append(&[ev(&format!("e{i}"))]).expect("append");
    }
    s.sync().expect("sync");
    // Flip a byte in the first segment's first record.
    let first = fs.0.borrow().keys().next().cloned().expect("a segment");
    fs.0.borrow_mut().get_mut(&first).expect("seg").durable[12] ^= 0xff;
    let s2 = Spool::open(fs.clone(), &dir(), 150).expect("reopen survives");
    assert_eq!(s2.stats().quarantined_segments, 1);
    assert!(fs
        .0
        .borrow()
        .keys()
        .any(|p| p.starts_with(dir().join("quarantine"))));
    // Opening again is quiet: the damage is out of the way.
    let s3 = Spool::open(fs, &dir(), 150).expect("reopen");
    assert_eq!(s3.stats().quarantined_segments, 0);
    assert!(s3.next_seq() >= 13, "sequence numbers are never reused");
}

#[test]
fn remove_through_drops_whole_shipped_segments_only() {
    let fs = MemFs::default();
    let mut s = Spool::open(fs, &dir(), 150).expect("open");
    for i in 0..10 {
        s.append(&[ev(&format!("e{i}"))]).expect("append");
    }
    s.sync().expect("sync");
    let before = s.stats().segments;
    s.remove_through(4).expect("remove");
    let left = s.read(0, 100).expect("read");
    assert!(left
        .iter()
        .all(|r| r.seq <= 4 || left.iter().any(|x| x.seq == r.seq)));
    assert!(left.iter().any(|r| r.seq == 5) && left.last().map(|r| r.seq) == Some(10));
    assert!(s.stats().segments < before);
}

#[test]
fn the_real_disk_works_the_same() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("clicks");
    let mut s = Spool::open(RealFs::default(), &d, 4096).expect("open");
    s.append(&[ev("a"), ev("b")]).expect("append");
    s.sync().expect("sync");
    drop(s);
    let s = Spool::open(RealFs::default(), &d, 4096).expect("reopen");
    assert_eq!(s.read(0, 10).expect("read").len(), 2);
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Sync,
    Crash { keep: u16, garble: bool },
    Remove(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0u8..40, 1..6).prop_map(Op::Append),
        3 => Just(Op::Sync),
        1 => (0u16..=1000, any::<bool>()).prop_map(|(keep, garble)| Op::Crash { keep, garble }),
        1 => any::<u8>().prop_map(Op::Remove),
    ]
}

proptest! {
    // 400 cases per run; PROPTEST_CASES raises it for a longer search.
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400), ..ProptestConfig::default() })]

    /// Torn and garbled writes at crashes: nothing fsync'd is ever lost, nothing returned
    /// is corrupt or stored twice, sequence numbers only grow.
    #[test]
    fn crashes_never_lose_what_was_synced(ops in proptest::collection::vec(op(), 1..60), seg in 120u64..600) {
        let fs = MemFs::default();
        let mut spool = Spool::open(fs.clone(), &dir(), seg).expect("open");
        let mut written: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut acked: BTreeMap<String, u64> = BTreeMap::new();
        let mut pending: Vec<(String, u64)> = Vec::new();
        let mut removed_through = 0u64;
        for op in ops {
            match op {
                Op::Append(ids) => {
                    let batch: Vec<(String, Vec<u8>)> = ids.iter().map(|i| ev(&format!("id{i}"))).collect();
                    let res = spool.append(&batch).expect("append");
                    for ((id, payload), (seq, dup)) in batch.into_iter().zip(res) {
                        if dup {
                            if let Some(&s) = acked.get(&id) {
                                if s > removed_through {
                                    prop_assert_eq!(s, seq, "a duplicate is answered with its first sequence number");
                                }
                            }
                        } else {
                            written.insert(id.clone(), payload);
                            pending.push((id, seq));
                        }
                    }
                }
                Op::Sync => {
                    spool.sync().expect("sync");
                    for (id, seq) in pending.drain(..) {
                        acked.insert(id, seq);
                    }
                }
                Op::Crash { keep, garble } => {
                    let next = spool.next_seq();
                    drop(spool);
                    fs.crash(keep, garble);
                    pending.clear();
                    spool = Spool::open(fs.clone(), &dir(), seg).expect("reopen after a crash");
                    prop_assert!(spool.next_seq() <= next || spool.next_seq() > 0);
                }
                Op::Remove(frac) => {
                    let through = spool.next_seq() * u64::from(frac) / 255;
                    spool.remove_through(through).expect("remove");
                    removed_through = removed_through.max(through);
                }
            }
            let all = spool.read(0, usize::MAX).expect("read");
            let mut last = 0;
            let mut seen = std::collections::HashSet::new();
            for r in &all {
                prop_assert!(r.seq > last, "sequence numbers grow");
                last = r.seq;
                prop_assert!(seen.insert(r.id.clone()), "stored twice: {}", r.id);
                prop_assert_eq!(Some(&r.payload), written.get(&r.id), "returned bytes never written");
            }
            for (id, seq) in &acked {
                if *seq > removed_through {
                    prop_assert!(all.iter().any(|r| &r.id == id && r.seq == *seq), "lost synced {} (seq {})", id, seq);
                }
            }
        }
    }

    /// Damage to durable bytes: the spool never returns a corrupt record and never fails
    /// to open; the damage is quarantined or cut, and counted.
    #[test]
    fn damage_is_never_returned(n in 1usize..40, pick in any::<usize>(), seg in 120u64..600) {
        let fs = MemFs::default();
        let mut spool = Spool::open(fs.clone(), &dir(), seg).expect("open");
        let mut written = BTreeMap::new();
        for i in 0..n {
            let (id, payload) = ev(&format!("id{i}"));
            spool.append(&[(id.clone(), payload.clone())]).expect("append");
            written.insert(id, payload);
        }
        spool.sync().expect("sync");
        drop(spool);
        prop_assume!(fs.damage(pick));
        let spool = Spool::open(fs.clone(), &dir(), seg).expect("opens despite damage");
        let all = spool.read(0, usize::MAX).expect("read");
        for r in &all {
            prop_assert_eq!(Some(&r.payload), written.get(&r.id));
        }
        let st = spool.stats();
        prop_assert!(all.len() == n || st.quarantined_segments + st.torn_tails_cut > 0, "a loss must be counted");
    }
}

#[test]
fn usage_after_counts_the_records_above_a_mark_in_every_segment() {
    let fs = MemFs::default();
    let mut s = Spool::open(fs.clone(), &dir(), 150).expect("open");
    for i in 0..25 {
        s.append(&[ev(&format!("e{i}"))]).expect("append");
    }
    s.sync().expect("sync");
    assert!(s.stats().segments > 3);
    let reopened = Spool::open(fs, &dir(), 150).expect("reopen");
    for spool in [&s, &reopened] {
        let all = spool.read(0, usize::MAX).expect("read");
        assert_eq!(spool.usage_after(0).1, spool.stats().bytes);
        for mark in 0..=26 {
            let above: Vec<_> = all.iter().filter(|r| r.seq > mark).collect();
            let bytes: u64 = above
                .iter()
                .map(|r| (HEADER + BODY_MIN + r.id.len() + r.payload.len()) as u64)
                .sum();
            assert_eq!(
                spool.usage_after(mark),
                (above.len() as u64, bytes),
                "mark {mark}"
            );
        }
    }
}

/// Touching ahead of a loop that appends (and so grows the index under it) changes
/// nothing: every key is appended once, a repeat is found, and stepping past the end of
/// the keys (or over none) is harmless.
#[test]
fn touching_ahead_of_appends_changes_nothing() {
    let mut s = Spool::open(MemFs::default(), &dir(), 1 << 20).expect("open");
    let ids: Vec<String> = (0..3000).map(|i| format!("t-{i}")).collect();
    let keys: Vec<IdKey> = ids.iter().map(|i| IdKey::of(i)).collect();
    let mut ahead = TouchAhead::start(&keys, &s);
    for (id, key) in ids.iter().zip(&keys) {
        ahead.step(&s);
        let (_, dup) = s.append_keyed(id, *key, b"x").expect("append");
        assert!(!dup, "{id}");
    }
    for _ in 0..10 {
        ahead.step(&s);
    }
    drop(ahead);
    drop(TouchAhead::start(&[], &s));
    assert_eq!(s.append_one("t-17", b"x").expect("append"), (18, true));
    assert_eq!(s.lookup("t-2999"), Some(3000));
}

/// A commit that failed is taken back whole, on the real disk and in memory, whether its
/// records were still held in the write buffer or had rolled into new segments: none is
/// read, none is found by id, their numbers are not reused, and a reopen agrees.
#[test]
fn a_rolled_back_commit_leaves_no_trace() {
    let tmp = tempfile::tempdir().expect("tempdir");
    rollback_case(RealFs::default, &tmp.path().join("real"));
    let mem = MemFs::default();
    rollback_case(|| mem.clone(), &dir());
}

fn rollback_case<F: Fs>(make: impl Fn() -> F, d: &Path) {
    let seqs = |s: &Spool<F>| -> Vec<u64> {
        s.read(0, usize::MAX)
            .expect("read")
            .iter()
            .map(|r| r.seq)
            .collect()
    };
    let mut s = Spool::open(make(), d, 300).expect("open");
    s.append(&[ev("a"), ev("b")]).expect("append");
    s.sync().expect("sync");
    let mark = s.mark();
    for i in 0..12 {
        s.append(&[ev(&format!("lost-{i}"))]).expect("append");
    }
    assert!(
        s.stats().segments > 1,
        "the failed commit rolled into new segments"
    );
    s.rollback(mark).expect("rollback");
    assert_eq!(seqs(&s), vec![1, 2]);
    assert_eq!(s.usage_after(0).0, 2);
    assert!(s.lookup("lost-0").is_none() && s.lookup("a") == Some(1));
    let (next, dup) = s.append_one("c", b"{}").expect("append");
    assert!(!dup && next > 14, "numbers are not reused: {next}");
    // An id taken back can come again, as new.
    let (again, dup) = s.append_one("lost-3", b"{}").expect("append");
    assert!(!dup && again == next + 1);
    s.sync().expect("sync");
    assert_eq!(seqs(&s), vec![1, 2, next, next + 1]);
    drop(s);
    let s = Spool::open(make(), d, 300).expect("reopen");
    assert_eq!(seqs(&s), vec![1, 2, next, next + 1], "a reopen agrees");
    assert_eq!(s.stats().quarantined_segments, 0);
}
