//! The spool's id index: every held id's key and sequence number.
//!
//! Open addressing with linear probing, in shards that grow one at a time (a map of
//! millions of ids doubling in one piece stopped the writer, and every ingest waiting on
//! it, for tens of milliseconds; a shard holds 1/64 of them). A slot is the key's two
//! halves and the number plus one, zero marking a free slot, all in one place: a probe
//! that misses the cache costs one line, where a general map touched a control byte and
//! a bucket in two places. And a caller that knows the keys it will look up next can
//! [`IdMap::touch`] their slots first: loads that do not depend on each other overlap,
//! so a batch pays for its cache misses together rather than one after another.

use super::IdKey;

const SHARDS: usize = 64;
const MIN_SLOTS: usize = 16;

/// (key half 0, key half 1, seq + 1); all zero when free.
type Slot = [u64; 3];

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    len: usize,
    /// The table grows past `load / 64` of its slots taken. Each shard has its own, from
    /// 1/2 to 0.78: ids spread evenly over the shards, so with one limit they would all
    /// double at about the same moment and stall the writer in one piece after all.
    load: usize,
}

impl Table {
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn home(&self, key: IdKey) -> usize {
        // The half the shard was not chosen by: uniform (a keyed hash).
        (key.0[1] as usize) & self.mask()
    }

    /// The slot holding `key`, or the free slot where it would go.
    fn find(&self, key: IdKey) -> (usize, bool) {
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            let s = &self.slots[i];
            if s[2] == 0 {
                return (i, false);
            }
            if s[0] == key.0[0] && s[1] == key.0[1] {
                return (i, true);
            }
            i = (i + 1) & mask;
        }
    }

    fn get(&self, key: IdKey) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let (i, found) = self.find(key);
        found.then(|| self.slots[i][2] - 1)
    }

    /// Sets `key` to `seq` (or, with `keep`, leaves a present one alone); the number it
    /// had.
    fn put(&mut self, key: IdKey, seq: u64, keep: bool) -> Option<u64> {
        if (self.len + 1) * 64 > self.slots.len() * self.load {
            self.grow();
        }
        let (i, found) = self.find(key);
        if found {
            let old = self.slots[i][2] - 1;
            if !keep {
                self.slots[i][2] = seq.saturating_add(1);
            }
            return Some(old);
        }
        self.slots[i] = [key.0[0], key.0[1], seq.saturating_add(1)];
        self.len += 1;
        None
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![[0; 3]; size]);
        for s in old.into_iter().filter(|s| s[2] != 0) {
            let (i, _) = self.find(IdKey([s[0], s[1]]));
            self.slots[i] = s;
        }
    }

    /// Removes `key`, shifting back the slots after it that probed past it (no
    /// tombstones: a lookup still stops at the first free slot).
    fn remove(&mut self, key: IdKey) {
        if self.len == 0 {
            return;
        }
        let (mut hole, found) = self.find(key);
        if !found {
            return;
        }
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s[2] == 0 {
                break;
            }
            let home = self.home(IdKey([s[0], s[1]]));
            // The entry at j may stay if its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = [0; 3];
        self.len -= 1;
    }
}

/// Every held id's sequence number.
pub(super) struct IdMap(Vec<Table>);

impl Default for IdMap {
    fn default() -> Self {
        IdMap(
            (0..SHARDS)
                .map(|i| Table {
                    load: 32 + i * 18 / SHARDS,
                    ..Table::default()
                })
                .collect(),
        )
    }
}

impl IdMap {
    fn shard(&self, key: IdKey) -> &Table {
        &self.0[(key.0[0] % SHARDS as u64) as usize]
    }

    fn shard_mut(&mut self, key: IdKey) -> &mut Table {
        &mut self.0[(key.0[0] % SHARDS as u64) as usize]
    }

    pub fn get(&self, key: IdKey) -> Option<u64> {
        self.shard(key).get(key)
    }

    /// Sets `key` to `seq`.
    pub fn insert(&mut self, key: IdKey, seq: u64) {
        self.shard_mut(key).put(key, seq, false);
    }

    /// Sets `key` to `seq` unless it is held: then its number, unchanged.
    pub fn claim(&mut self, key: IdKey, seq: u64) -> Option<u64> {
        self.shard_mut(key).put(key, seq, true)
    }

    pub fn remove(&mut self, key: IdKey) {
        self.shard_mut(key).remove(key);
    }

    /// Reads the home slot of `key` and returns a word of it, for the caller to fold into
    /// something it keeps (`std::hint::black_box`): a load issued ahead of the probe that
    /// will need it.
    pub fn touch(&self, key: IdKey) -> u64 {
        let t = self.shard(key);
        t.slots.get(t.home(key)).map_or(0, |s| s[2])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u64),
        Claim(u8, u64),
        Remove(u8),
    }

    /// Keys from a small set, all in one shard and on a few home slots, half of them at
    /// the table's end: probing, wrapping round and backward shifts are all exercised.
    fn key(k: u8) -> IdKey {
        let near = u64::from(k / 3) % 5;
        IdKey([
            u64::from(k) * SHARDS as u64,
            if k.is_multiple_of(2) {
                near
            } else {
                u64::MAX - near
            },
        ])
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), 0..1000u64).prop_map(|(k, s)| Op::Insert(k, s)),
            (any::<u8>(), 0..1000u64).prop_map(|(k, s)| Op::Claim(k, s)),
            any::<u8>().prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// The index answers as a map does, whatever the order of inserts and removals.
        #[test]
        fn the_index_is_a_map(ops in proptest::collection::vec(op(), 0..400)) {
            let mut ids = IdMap::default();
            let mut model: HashMap<u8, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, s) => {
                        ids.insert(key(k), s);
                        model.insert(k, s);
                    }
                    Op::Claim(k, s) => {
                        let had = model.get(&k).copied();
                        prop_assert_eq!(ids.claim(key(k), s), had);
                        model.entry(k).or_insert(s);
                    }
                    Op::Remove(k) => {
                        ids.remove(key(k));
                        model.remove(&k);
                    }
                }
                let _ = ids.touch(key(0));
            }
            for k in 0..=255u8 {
                prop_assert_eq!(ids.get(key(k)), model.get(&k).copied(), "key {}", k);
            }
        }
    }

    #[test]
    fn a_million_ids() {
        let mut ids = IdMap::default();
        let k = |i: u64| IdKey::of(&format!("id-{i}"));
        for i in 0..1_000_000u64 {
            assert_eq!(ids.claim(k(i), i), None);
        }
        assert_eq!(ids.claim(k(7), 99), Some(7));
        for i in (0..1_000_000u64).step_by(2) {
            ids.remove(k(i));
        }
        for i in 0..1_000_000u64 {
            assert_eq!(ids.get(k(i)), (!i.is_multiple_of(2)).then_some(i), "id-{i}");
        }
    }
}
