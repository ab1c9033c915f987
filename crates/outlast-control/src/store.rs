//! Raft log and state machine, persisted under a site's `data_dir/raft`.
//!
//! # On disk
//! - `log.jsonl`: one log entry a line, `{"crc": u32, "entry": ...}` where `crc` is the
//!   CRC32C of the entry's JSON (the same checksum as the relay spool). Appends are fsync'd
//!   before Raft is told they are flushed. On open, a line that does not parse or whose CRC
//!   does not match ends the log there (a torn tail from a crash) and the file is rewritten
//!   without it; Raft then fetches those entries again from the leader.
//! - `vote.json`, `purged.json`, `state.json`, `snapshot.json`: written whole to a temporary
//!   file, fsync'd, then renamed over the old one, so each is either old or new, never half.
//!   Each carries `"version": 1`.
//!
//! The state machine is persisted on every apply, so a restarted agent comes back with the
//! state it had and Raft re-applies only entries after `last_applied`.
//!
//! Besides what openraft needs, the log store tracks the *log epoch*: the highest epoch any
//! entry in the log would make, committed or not. The lease (see `lease.rs`) depends on it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::state::{ClusterState, Decision, Proposal};

openraft::declare_raft_types!(
    /// Raft types of the control plane: entries are proposals of decisions.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// What applying an entry did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The epoch after the entry; unchanged when the entry was stale.
    pub epoch: u64,
    /// The decisions that took effect (empty when stale).
    pub decisions: Vec<Decision>,
}

/// Sent to the agent each time a proposal takes effect.
#[derive(Debug, Clone)]
pub struct AppliedChange {
    pub epoch: u64,
    pub decisions: Vec<Decision>,
    pub state: ClusterState,
}

fn io_err(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

/// Writes a file whole: temp file, fsync, rename, fsync the folder.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    version: u32,
    value: T,
}

fn save_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&Versioned { version: 1, value })
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    write_atomic(path, &bytes)
}

fn load_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => {
            let v: Versioned<T> = serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
            if v.version != 1 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: version {} is newer than this outlast",
                        path.display(),
                        v.version
                    ),
                ));
            }
            Ok(Some(v.value))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Serialize, Deserialize)]
struct LogLine {
    crc: u32,
    entry: serde_json::Value,
}

fn entry_epoch(e: &Entry<TypeConfig>) -> Option<u64> {
    match &e.payload {
        EntryPayload::Normal(p) => Some(p.epoch()),
        _ => None,
    }
}

struct LogInner {
    dir: PathBuf,
    file: File,
    log: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

impl LogInner {
    fn log_epoch(&self) -> u64 {
        self.log.values().filter_map(entry_epoch).max().unwrap_or(0)
    }

    fn encode(entry: &Entry<TypeConfig>) -> std::io::Result<Vec<u8>> {
        let value = serde_json::to_value(entry)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let body = serde_json::to_vec(&value)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut line = serde_json::to_vec(&LogLine {
            crc: crc32c::crc32c(&body),
            entry: value,
        })
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        line.push(b'\n');
        Ok(line)
    }

    /// Rewrites the log file from memory (after truncate, purge or a torn tail).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for e in self.log.values() {
            bytes.extend(Self::encode(e)?);
        }
        let path = self.dir.join("log.jsonl");
        write_atomic(&path, &bytes)?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        Ok(())
    }
}

/// The Raft log, shared by the writer and its readers.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
    log_epoch: Arc<AtomicU64>,
}

/// Whether `dir` holds any of a site's Raft state (a log, a vote, a snapshot).
pub fn has_state(dir: &Path) -> bool {
    ["log.jsonl", "vote.json", "state.json", "snapshot.json"]
        .iter()
        .any(|f| fs::metadata(dir.join(f)).is_ok_and(|m| m.len() > 0))
}

/// Gives a site rebuilt from nothing the vote its peers hold: `leader`'s, committed, in
/// `term`. A site that lost its Raft dir has forgotten whom it voted for; starting from the
/// term the cluster is in now, it can never vote twice in a term it may have voted in
/// before, and it follows the leader it names at once. Refuses a dir that holds state.
pub fn seed_vote(dir: &Path, term: u64, leader: NodeId) -> std::io::Result<()> {
    if has_state(dir) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} already holds Raft state", dir.display()),
        ));
    }
    fs::create_dir_all(dir)?;
    save_json(&dir.join("vote.json"), &Vote::new_committed(term, leader))
}

impl LogStore {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join("log.jsonl");
        let mut log = BTreeMap::new();
        let mut torn = false;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else {
                    torn = true;
                    break;
                };
                let parsed: Option<Entry<TypeConfig>> = serde_json::from_str::<LogLine>(&line)
                    .ok()
                    .and_then(|l| {
                        let body = serde_json::to_vec(&l.entry).ok()?;
                        (crc32c::crc32c(&body) == l.crc).then_some(l.entry)
                    })
                    .and_then(|v| serde_json::from_value(v).ok());
                match parsed {
                    Some(e) => {
                        log.insert(e.log_id.index, e);
                    }
                    None => {
                        torn = true;
                        break;
                    }
                }
            }
        }
        let vote = load_json(&dir.join("vote.json"))?;
        let last_purged = load_json(&dir.join("purged.json"))?.flatten();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut inner = LogInner {
            dir: dir.to_path_buf(),
            file,
            log,
            vote,
            last_purged,
        };
        if torn {
            tracing::warn!(path = %path.display(), kept = inner.log.len(), "raft log had a torn tail; cut it");
            inner.rewrite()?;
        }
        let log_epoch = Arc::new(AtomicU64::new(inner.log_epoch()));
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            log_epoch,
        })
    }

    /// The highest epoch any entry in the log would make (see `lease.rs`).
    pub fn log_epoch_handle(&self) -> Arc<AtomicU64> {
        self.log_epoch.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        // A poisoned lock means a panic while writing; the data is still the last good one.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_epoch(&self, inner: &LogInner) {
        let e = inner.log_epoch();
        // Only the log's content decides; a truncated entry lowers it again.
        self.log_epoch.store(e, Ordering::SeqCst);
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let inner = self.lock();
        Ok(inner.log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let inner = self.lock();
        let last = inner
            .log
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        let mut inner = self.lock();
        save_json(&inner.dir.join("vote.json"), vote)
            .map_err(|e| StorageIOError::write_vote(io_err(e)))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut bytes = Vec::new();
        for e in entries {
            bytes.extend(LogInner::encode(&e).map_err(|e| StorageIOError::write_logs(io_err(e)))?);
            inner.log.insert(e.log_id.index, e);
        }
        self.publish_epoch(&inner);
        let res = inner
            .file
            .write_all(&bytes)
            .and_then(|_| inner.file.sync_data());
        let failed = res.as_ref().err().map(|e| e.to_string());
        callback.log_io_completed(res);
        match failed {
            Some(e) => Err(StorageIOError::write_logs(AnyError::error(e)).into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let mut inner = self.lock();
        inner.log.retain(|idx, _| *idx < log_id.index);
        self.publish_epoch(&inner);
        inner
            .rewrite()
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let mut inner = self.lock();
        save_json(&inner.dir.join("purged.json"), &Some(log_id))
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        inner.last_purged = Some(log_id);
        inner.log.retain(|idx, _| *idx > log_id.index);
        self.publish_epoch(&inner);
        inner
            .rewrite()
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SmData {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    state: ClusterState,
}

/// Local times at which this process applied changes, kept beside the state under one lock
/// so that nobody can see a new primary without the time it was promoted. Not replicated,
/// not persisted: a restarted process counts from when it opened the state.
#[derive(Debug, Clone, Default)]
pub struct LocalTimes {
    /// Per service: when its last primary move (or the state itself) was applied here.
    pub services: BTreeMap<String, std::time::Instant>,
    /// Per site: when its last up/down change was applied here.
    pub sites: BTreeMap<String, std::time::Instant>,
}

impl LocalTimes {
    fn all_now(state: &ClusterState) -> Self {
        let now = outlast_core::clock::now();
        LocalTimes {
            services: state.services.keys().map(|k| (k.clone(), now)).collect(),
            sites: state.sites.keys().map(|k| (k.clone(), now)).collect(),
        }
    }
}

struct SmInner {
    dir: PathBuf,
    data: SmData,
    times: LocalTimes,
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshot_seq: u64,
}

/// The state machine: the committed [`ClusterState`].
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<SmInner>>,
    changes: mpsc::UnboundedSender<AppliedChange>,
    applied_epoch: Arc<AtomicU64>,
}

impl StateMachineStore {
    /// Opens the state machine in `dir`; `initial` is used when there is none yet, and fills
    /// in services or sites added to the config since.
    pub fn open(
        dir: &Path,
        initial: ClusterState,
        changes: mpsc::UnboundedSender<AppliedChange>,
    ) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut data: SmData = load_json(&dir.join("state.json"))?.unwrap_or(SmData {
            last_applied: None,
            last_membership: StoredMembership::default(),
            state: initial.clone(),
        });
        for (name, svc) in initial.services {
            data.state.services.entry(name).or_insert(svc);
        }
        for (name, site) in initial.sites {
            data.state.sites.entry(name).or_insert(site);
        }
        let snapshot =
            load_json::<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>(&dir.join("snapshot.json"))?;
        let applied_epoch = Arc::new(AtomicU64::new(data.state.epoch));
        let times = LocalTimes::all_now(&data.state);
        Ok(Self {
            inner: Arc::new(Mutex::new(SmInner {
                dir: dir.to_path_buf(),
                data,
                times,
                snapshot,
                snapshot_seq: 0,
            })),
            changes,
            applied_epoch,
        })
    }

    pub fn state(&self) -> ClusterState {
        self.lock().data.state.clone()
    }

    /// The state and the local times of its changes, read together.
    pub fn view(&self) -> (ClusterState, LocalTimes) {
        let inner = self.lock();
        (inner.data.state.clone(), inner.times.clone())
    }

    pub fn applied_epoch_handle(&self) -> Arc<AtomicU64> {
        self.applied_epoch.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SmInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(&inner.data)
            .map_err(|e| StorageIOError::read_state_machine(io_err(e)))?;
        inner.snapshot_seq += 1;
        let meta = SnapshotMeta {
            last_log_id: inner.data.last_applied,
            last_membership: inner.data.last_membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                inner.data.last_applied.map(|l| l.index).unwrap_or(0),
                inner.snapshot_seq
            ),
        };
        save_json(
            &inner.dir.join("snapshot.json"),
            &(meta.clone(), bytes.clone()),
        )
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), io_err(e)))?;
        inner.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let inner = self.lock();
        Ok((inner.data.last_applied, inner.data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut results = Vec::new();
        let mut changes = Vec::new();
        for entry in entries {
            inner.data.last_applied = Some(entry.log_id);
            match &entry.payload {
                EntryPayload::Blank => results.push(Applied {
                    epoch: inner.data.state.epoch,
                    decisions: vec![],
                }),
                EntryPayload::Membership(m) => {
                    inner.data.last_membership =
                        StoredMembership::new(Some(entry.log_id), m.clone());
                    results.push(Applied {
                        epoch: inner.data.state.epoch,
                        decisions: vec![],
                    });
                }
                EntryPayload::Normal(p) => match inner.data.state.apply(p) {
                    Some(decisions) => {
                        let now = outlast_core::clock::now();
                        for d in &decisions {
                            match d {
                                Decision::PrimaryMove { service, .. } => {
                                    inner.times.services.insert(service.clone(), now);
                                }
                                Decision::SiteDown { site } | Decision::SiteUp { site } => {
                                    inner.times.sites.insert(site.clone(), now);
                                }
                                Decision::Active { .. }
                                | Decision::Maintenance { .. }
                                | Decision::SyncSet { .. }
                                | Decision::IncidentNote { .. }
                                | Decision::HistoryStart {}
                                | Decision::Dependency { .. } => {}
                            }
                        }
                        let epoch = inner.data.state.epoch;
                        changes.push(AppliedChange {
                            epoch,
                            decisions: decisions.clone(),
                            state: inner.data.state.clone(),
                        });
                        results.push(Applied { epoch, decisions });
                    }
                    None => results.push(Applied {
                        epoch: inner.data.state.epoch,
                        decisions: vec![],
                    }),
                },
            }
        }
        save_json(&inner.dir.join("state.json"), &inner.data)
            .map_err(|e| StorageIOError::write_state_machine(io_err(e)))?;
        self.applied_epoch
            .store(inner.data.state.epoch, Ordering::SeqCst);
        drop(inner);
        for c in changes {
            // The agent may be shutting down; the state is persisted either way.
            let _ = self.changes.send(c);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let bytes = snapshot.into_inner();
        let data: SmData = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), io_err(e)))?;
        let mut inner = self.lock();
        let changed = data.state != inner.data.state;
        // Whatever the snapshot changed, it changed now, here.
        inner.times = LocalTimes::all_now(&data.state);
        inner.data = data;
        save_json(&inner.dir.join("state.json"), &inner.data)
            .map_err(|e| StorageIOError::write_state_machine(io_err(e)))?;
        save_json(
            &inner.dir.join("snapshot.json"),
            &(meta.clone(), bytes.clone()),
        )
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), io_err(e)))?;
        inner.snapshot = Some((meta.clone(), bytes));
        let state = inner.data.state.clone();
        self.applied_epoch.store(state.epoch, Ordering::SeqCst);
        drop(inner);
        if changed {
            let _ = self.changes.send(AppliedChange {
                epoch: state.epoch,
                decisions: vec![],
                state,
            });
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

#[cfg(test)]
mod tests;
