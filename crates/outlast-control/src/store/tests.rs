use std::io::Write;

use openraft::{CommittedLeaderId, EntryPayload, LogId};

use super::*;
use crate::state::{ClusterState, Proposal};

fn entry(index: u64, base_epoch: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(Proposal {
            at_ms: 0,
            silent_ms: Default::default(),
            base_epoch,
            decisions: vec![],
        }),
    }
}

fn empty_state() -> ClusterState {
    ClusterState {
        epoch: 0,
        sites: Default::default(),
        services: Default::default(),
        maintenance: Default::default(),
        history: Default::default(),
        deps: Default::default(),
    }
}

#[tokio::test]
async fn log_survives_reopen_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = LogStore::open(dir.path()).expect("open");
        let mut inner = store.lock();
        let mut bytes = Vec::new();
        for i in 1..=3 {
            let e = entry(i, i - 1);
            bytes.extend(LogInner::encode(&e).expect("encode"));
            inner.log.insert(i, e);
        }
        inner.file.write_all(&bytes).expect("write");
        // A crash in the middle of the next line.
        inner
            .file
            .write_all(b"{\"crc\":12,\"entry\":{\"log_id")
            .expect("write");
    }
    let mut store = LogStore::open(dir.path()).expect("reopen");
    let entries = store.try_get_log_entries(0..).await.expect("read");
    assert_eq!(entries.len(), 3);
    assert_eq!(store.log_epoch_handle().load(Ordering::SeqCst), 3);
    let text = std::fs::read_to_string(dir.path().join("log.jsonl")).expect("read");
    assert_eq!(
        text.lines().count(),
        3,
        "the torn line is gone from disk too"
    );
}

#[tokio::test]
async fn a_flipped_byte_ends_the_log_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = LogStore::open(dir.path()).expect("open");
        let mut inner = store.lock();
        for i in 1..=3 {
            let e = entry(i, i - 1);
            let line = LogInner::encode(&e).expect("encode");
            inner.file.write_all(&line).expect("write");
        }
    }
    let path = dir.path().join("log.jsonl");
    let text = std::fs::read_to_string(&path).expect("read");
    let corrupted = text.replacen("\"base_epoch\":1", "\"base_epoch\":7", 1);
    assert_ne!(text, corrupted);
    std::fs::write(&path, corrupted).expect("write");
    let mut store = LogStore::open(dir.path()).expect("reopen");
    let entries = store.try_get_log_entries(0..).await.expect("read");
    assert_eq!(
        entries.len(),
        1,
        "entry 2 fails its CRC; it and what follows are dropped"
    );
}

#[tokio::test]
async fn state_machine_persists_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mut sm = StateMachineStore::open(dir.path(), empty_state(), tx.clone()).expect("open");
        let res = sm
            .apply(vec![entry(1, 0), entry(2, 0), entry(3, 1)])
            .await
            .expect("apply");
        assert_eq!(
            res.iter().map(|r| r.epoch).collect::<Vec<_>>(),
            vec![1, 1, 2],
            "entry 2 is stale"
        );
        assert_eq!(rx.try_recv().expect("change").epoch, 1);
        assert_eq!(rx.try_recv().expect("change").epoch, 2);
    }
    let mut sm = StateMachineStore::open(dir.path(), empty_state(), tx).expect("reopen");
    assert_eq!(sm.state().epoch, 2);
    let (last, _) = sm.applied_state().await.expect("applied");
    assert_eq!(last.map(|l| l.index), Some(3));
    let snap = sm.build_snapshot().await.expect("snapshot");
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(3));
}

#[tokio::test]
async fn a_seeded_vote_is_the_leaders_and_only_an_empty_dir_takes_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raft = dir.path().join("raft");
    assert!(!has_state(&raft));
    seed_vote(&raft, 7, 1).expect("seed");
    assert!(has_state(&raft));
    let mut store = LogStore::open(&raft).expect("open");
    let vote = store.read_vote().await.expect("read").expect("a vote");
    assert_eq!(vote, Vote::new_committed(7, 1));
    assert!(vote.is_committed());
    // A dir with state keeps it.
    assert!(seed_vote(&raft, 9, 0).is_err());
    let vote = store.read_vote().await.expect("read").expect("a vote");
    assert_eq!(vote.leader_id().term, 7);
}
