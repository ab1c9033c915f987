//! Snapshots in restic's repository format (through rustic_core), retention, and verify by
//! restoring.
//!
//! Everything here is blocking (rustic is): the agent runs it on a blocking thread. A
//! snapshot that could not read everything in its source is deleted and the backup fails:
//! a repository never holds a snapshot that quietly lacks files.

pub mod repo;
pub mod source;

use std::io::BufReader;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use outlast_core::config::Keep;
use rustic_core::repofile::Node;
use rustic_core::{
    BackupOptions, IndexedFull, KeepOptions, LocalDestination, LsOptions, PruneOptions, Repository,
    RestoreOptions, RusticError, SnapshotOptions,
};
use serde::{Deserialize, Serialize};

pub use repo::{open, open_or_init, open_when_created, Open};
pub use rustic_core::{NoProgressBars, ProgressBars};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("repository url \"{url}\": {why}")]
    Url { url: String, why: String },
    #[error("repository {url}: {}", short(source))]
    Repo {
        url: String,
        source: Box<RusticError>,
    },
    #[error("repository {url} holds nothing yet (no snapshot was ever written to it)")]
    Empty { url: String },
    #[error("{count} entries of {dir} could not be read (first: {}); the snapshot was deleted", first.join("; "))]
    Skipped {
        dir: String,
        count: usize,
        first: Vec<String>,
    },
    #[error("no snapshot {what} in the repository")]
    NoSnapshot { what: String },
    #[error("restore failed: {0}")]
    Restore(String),
    #[error("verify found {count} problems (first: {})", first.join("; "))]
    Mismatch { count: usize, first: Vec<String> },
    #[error("{0}")]
    Io(String),
}

/// A rustic error in a few lines: its message and context, without the backtrace it
/// carries when `RUST_BACKTRACE` is set.
pub fn short(e: &RusticError) -> String {
    let text = e.to_string();
    let text = text.split("Backtrace:").next().unwrap_or("");
    let mut out = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > 600 {
        let cut = (0..=600)
            .rev()
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(0);
        out.truncate(cut);
        out.push_str(" ...");
    }
    out
}

impl Error {
    pub(crate) fn repo(url: &str, source: Box<RusticError>) -> Self {
        Error::Repo {
            url: url.to_string(),
            source,
        }
    }
}

/// A snapshot as outlast shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// The full id (restic and rustic accept any unique prefix).
    pub id: String,
    /// When it was taken, milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub host: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub files: u64,
    pub bytes: u64,
    /// New data this snapshot added to the repository (after deduplication).
    pub added_bytes: u64,
    pub duration_ms: u64,
}

impl Snapshot {
    fn from_file(s: &rustic_core::repofile::SnapshotFile) -> Self {
        let summary = s.summary.as_ref();
        Snapshot {
            id: s.id.to_hex().as_str().to_string(),
            time_ms: s.time.timestamp().as_millisecond(),
            host: s.hostname.clone(),
            paths: s.paths.iter().cloned().collect(),
            tags: s.tags.iter().cloned().collect(),
            files: summary.map_or(0, |m| m.total_files_processed),
            bytes: summary.map_or(0, |m| m.total_bytes_processed),
            added_bytes: summary.map_or(0, |m| m.data_added),
            duration_ms: summary.map_or(0, |m| (m.backup_duration * 1000.0) as u64),
        }
    }
}

/// The tag every snapshot of backup `name` carries.
pub fn backup_tag(name: &str) -> String {
    format!("outlast-backup:{name}")
}

/// What a snapshot is of, as written into its tags.
#[derive(Debug, Clone)]
pub struct Label<'a> {
    /// The `[[backups]]` name.
    pub backup: &'a str,
    /// `path`, `postgres`, `redis`.
    pub kind: &'a str,
    /// The site whose data it is (the snapshot's host).
    pub host: &'a str,
    /// The path the snapshot records (restic shows it; a restore of a `path:` source goes
    /// back there by default).
    pub as_path: &'a Path,
    /// More tags (where a base backup's or a WAL batch's WAL lies, see [`WAL_FROM`]).
    pub tags: &'a [String],
}

/// The `kind:` tag of a batch of archived WAL segments (not a snapshot of its own).
pub const KIND_WAL: &str = "kind:wal";
/// Tag prefixes: where in the WAL a base backup starts (`wal-from:` + log and segment, 16
/// hex digits) and the last segment a WAL batch holds (`wal-upto:`); a restore fetches
/// the batches that reach its base backup's start.
pub const WAL_FROM: &str = "wal-from:";
pub const WAL_UPTO: &str = "wal-upto:";

/// The value of the tag starting with `prefix`.
pub fn tag_value<'a>(tags: &'a [String], prefix: &str) -> Option<&'a str> {
    tags.iter().find_map(|t| t.strip_prefix(prefix))
}

/// Takes a snapshot of `dir` (incremental against the newest snapshot of the same host and
/// path). Fails, deleting the snapshot, when any entry of `dir` could not be read. Gives
/// the repository back (for its retention).
pub fn backup_dir(
    open: Open,
    url: &str,
    dir: &Path,
    label: &Label<'_>,
) -> Result<(Snapshot, Open), Error> {
    let e = |source| Error::repo(url, source);
    let repo = open.to_indexed_ids().map_err(e)?;
    let mut tags = format!("outlast,{},kind:{}", backup_tag(label.backup), label.kind);
    for t in label.tags {
        tags.push(',');
        tags.push_str(t);
    }
    let snap = SnapshotOptions::default()
        .host(Some(label.host.to_string()))
        .add_tags(&tags)
        .and_then(|o| o.to_snapshot())
        .map_err(e)?;
    let opts = BackupOptions::default().as_path(Some(label.as_path.to_path_buf()));
    let skips = source::Skips::default();
    let src = source::Watched::new(dir, skips.clone()).map_err(e)?;
    let snap = repo
        .archive(&opts, &src, snap, &[dir.to_path_buf()])
        .map_err(e)?;
    let (count, first) = skips.taken();
    if count > 0 {
        if let Err(err) = repo.delete_snapshots(&[snap.id]) {
            tracing::error!(url, id = %snap.id, error = %short(&err),
                "could not delete the snapshot of a failed backup");
        }
        return Err(Error::Skipped {
            dir: dir.display().to_string(),
            count,
            first,
        });
    }
    Ok((Snapshot::from_file(&snap), repo.drop_index()))
}

/// The snapshots of backup `name`, oldest first (its WAL batches are not snapshots: see
/// [`wal_batches`]).
pub fn snapshots(open: &Open, url: &str, name: &str) -> Result<Vec<Snapshot>, Error> {
    tagged(open, url, name, false)
}

/// The batches of archived WAL of backup `name`, every site's, oldest first.
pub fn wal_batches(open: &Open, url: &str, name: &str) -> Result<Vec<Snapshot>, Error> {
    tagged(open, url, name, true)
}

fn tagged(open: &Open, url: &str, name: &str, wal: bool) -> Result<Vec<Snapshot>, Error> {
    let tag = backup_tag(name);
    let mut all = open
        .get_all_snapshots()
        .map_err(|e| Error::repo(url, e))?
        .into_iter()
        .filter(|s| s.tags.contains(&tag) && s.tags.contains(KIND_WAL) == wal)
        .collect::<Vec<_>>();
    all.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(all.iter().map(Snapshot::from_file).collect())
}

/// What [`restore_wal`] fetched.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalRestored {
    pub batches: usize,
    pub files: u64,
    pub bytes: u64,
    /// The newest batch's time (Unix ms): no restore from this repository can reach past
    /// what it archived before then.
    pub newest_ms: Option<i64>,
    pub restore_ms: u64,
}

/// Fetches into `into` (made when missing) every archived WAL segment of backup `name`
/// that a base backup starting at WAL position `from` (see [`WAL_FROM`]) may need: each
/// batch, of every site, whose last segment is at or after it (all of them without `from`).
/// A segment that two sites archived is fetched once.
pub fn restore_wal(
    open: Open,
    url: &str,
    name: &str,
    from: Option<&str>,
    into: &Path,
) -> Result<WalRestored, Error> {
    let started = outlast_core::clock::now();
    let batches: Vec<Snapshot> = wal_batches(&open, url, name)?
        .into_iter()
        .filter(|b| match (from, tag_value(&b.tags, WAL_UPTO)) {
            (Some(from), Some(upto)) => upto >= from,
            _ => true,
        })
        .collect();
    let io = |what: &Path, x: std::io::Error| Error::Io(format!("{}: {x}", what.display()));
    std::fs::create_dir_all(into).map_err(|x| io(into, x))?;
    let mut out = WalRestored {
        batches: batches.len(),
        newest_ms: batches.iter().map(|b| b.time_ms).max(),
        ..Default::default()
    };
    if batches.is_empty() {
        return Ok(out);
    }
    let repo = indexed(open, url)?;
    for (i, b) in batches.iter().enumerate() {
        let scratch = into.join(format!(".batch-{i}"));
        restore_indexed(&repo, url, b, &scratch)?;
        for f in std::fs::read_dir(&scratch).map_err(|x| io(&scratch, x))? {
            let f = f.map_err(|x| io(&scratch, x))?;
            let to = into.join(f.file_name());
            if to.exists() {
                continue;
            }
            out.bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            out.files += 1;
            std::fs::rename(f.path(), &to).map_err(|x| io(&to, x))?;
        }
        std::fs::remove_dir_all(&scratch).map_err(|x| io(&scratch, x))?;
    }
    out.restore_ms = started.elapsed().as_millis() as u64;
    Ok(out)
}

/// Which snapshot: an id (or unique prefix), else the newest, optionally the newest
/// taken at or before a time and of one host.
#[derive(Debug, Clone, Default)]
pub struct Pick {
    pub id: Option<String>,
    pub at_or_before_ms: Option<i64>,
    pub host: Option<String>,
}

pub fn pick(all: &[Snapshot], pick: &Pick) -> Result<Snapshot, Error> {
    let found = all.iter().rev().find(|s| {
        pick.id
            .as_ref()
            .is_none_or(|id| s.id.starts_with(id.as_str()))
            && pick.at_or_before_ms.is_none_or(|t| s.time_ms <= t)
            && pick.host.as_ref().is_none_or(|h| &s.host == h)
    });
    found.cloned().ok_or_else(|| Error::NoSnapshot {
        what: match (&pick.id, pick.at_or_before_ms, &pick.host) {
            (Some(id), _, _) => format!("with id {id}"),
            (None, Some(t), _) => format!("taken at or before {t} ms"),
            (None, None, Some(h)) => format!("of host {h}"),
            (None, None, None) => "at all".to_string(),
        },
    })
}

/// What a restore wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub snapshot: Snapshot,
    pub files: u64,
    pub bytes: u64,
    pub restore_ms: u64,
}

fn indexed(open: Open, url: &str) -> Result<Repository<impl IndexedFull>, Error> {
    open.to_indexed().map_err(|e| Error::repo(url, e))
}

/// rustic's restorer panics (`unwrap`) when a pack cannot be read or decrypted; that is a
/// failed restore here, not a dead process.
fn no_panic<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the restorer stopped".to_string());
            Err(Error::Restore(panic_text(&why)))
        }
    }
}

/// What rustic's panic said, in a line: its guidance and error code when it is a
/// `RusticError`'s debug text, without the backtrace.
fn panic_text(why: &str) -> String {
    let field = |name: &str| {
        let start = why.find(&format!("{name}: "))? + name.len() + 2;
        let rest = &why[start..];
        if let Some(quoted) = rest.strip_prefix('"') {
            return quoted.find('"').map(|end| quoted[..end].to_string());
        }
        let end = rest.find(", ").unwrap_or(rest.len());
        Some(rest[..end].to_string())
    };
    match (field("guidance"), field("error_code")) {
        (Some(g), Some(c)) => format!(
            "{g} ({}: a pack or blob could not be read or decrypted)",
            c.trim_start_matches("Some(")
                .trim_end_matches(')')
                .trim_matches('"')
        ),
        (Some(g), None) => g,
        _ => why
            .split("backtrace")
            .next()
            .unwrap_or(why)
            .chars()
            .take(400)
            .collect(),
    }
}

/// Restores snapshot `snap` (its recorded path's contents) into `to`, which must be empty
/// or missing.
pub fn restore(open: Open, url: &str, snap: &Snapshot, to: &Path) -> Result<Restored, Error> {
    let repo = indexed(open, url)?;
    restore_indexed(&repo, url, snap, to)
}

fn root_node(
    repo: &Repository<impl IndexedFull>,
    url: &str,
    snap: &Snapshot,
) -> Result<Node, Error> {
    let e = |source| Error::repo(url, source);
    let file = repo
        .get_snapshots(&[snap.id.as_str()])
        .map_err(e)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::NoSnapshot {
            what: format!("with id {}", snap.id),
        })?;
    let path = file.paths.iter().next().cloned().unwrap_or_default();
    repo.node_from_snapshot_and_path(&file, &path).map_err(e)
}

fn restore_indexed(
    repo: &Repository<impl IndexedFull>,
    url: &str,
    snap: &Snapshot,
    to: &Path,
) -> Result<Restored, Error> {
    let e = |source| Error::repo(url, source);
    if to.exists()
        && std::fs::read_dir(to)
            .map_err(|x| Error::Io(format!("{}: {x}", to.display())))?
            .next()
            .is_some()
    {
        return Err(Error::Restore(format!(
            "{} is not empty: restore into an empty or new directory",
            to.display()
        )));
    }
    let started = outlast_core::clock::now();
    let node = root_node(repo, url, snap)?;
    let ls_opts = LsOptions::default().recursive(true);
    let to_text = format!("{}/", to.display());
    let dest = LocalDestination::new(&to_text, true, !node.is_dir()).map_err(e)?;
    let opts = RestoreOptions::default();
    let plan = no_panic(|| {
        let ls = repo.ls(&node, &ls_opts).map_err(e)?;
        repo.prepare_restore(&opts, ls, &dest, false).map_err(e)
    })?;
    let bytes = plan.restore_size;
    no_panic(|| {
        let ls = repo.ls(&node, &ls_opts).map_err(e)?;
        repo.restore(plan, &opts, ls, &dest).map_err(e)
    })?;
    Ok(Restored {
        snapshot: snap.clone(),
        files: snap.files,
        bytes,
        restore_ms: started.elapsed().as_millis() as u64,
    })
}

/// A verify: the snapshot restored into a scratch dir and every restored file read back
/// against the checksums the snapshot holds.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub restored: Restored,
    /// Files whose every chunk matched its id in the snapshot.
    pub files_checked: u64,
    /// The age of what was restored when the restore ended: the RPO of restoring now.
    pub age_ms: i64,
}

/// Restores `snap` into `scratch` (empty or missing) and checks every file against the
/// snapshot: its size and the SHA-256 of each of its chunks.
pub fn verify(open: Open, url: &str, snap: &Snapshot, scratch: &Path) -> Result<Verified, Error> {
    let repo = indexed(open, url)?;
    let restored = restore_indexed(&repo, url, snap, scratch)?;
    let node = root_node(&repo, url, snap)?;
    let mut problems = Vec::new();
    let mut count = 0usize;
    let mut checked = 0u64;
    let ls = repo
        .ls(&node, &LsOptions::default().recursive(true))
        .map_err(|e| Error::repo(url, e))?;
    for item in ls {
        let (path, node) = item.map_err(|e| Error::repo(url, e))?;
        if !node.is_file() {
            continue;
        }
        let on_disk = if node.is_dir() {
            scratch.to_path_buf()
        } else {
            scratch.join(&path)
        };
        match check_file(&repo, &node, &on_disk) {
            Ok(()) => checked += 1,
            Err(why) => {
                count += 1;
                if problems.len() < source::MAX_SKIPS {
                    problems.push(format!("{}: {why}", path.display()));
                }
            }
        }
    }
    if count > 0 {
        return Err(Error::Mismatch {
            count,
            first: problems,
        });
    }
    let now_ms = outlast_core::clock::unix_ms() as i64;
    Ok(Verified {
        age_ms: now_ms - restored.snapshot.time_ms,
        restored,
        files_checked: checked,
    })
}

fn check_file(
    repo: &Repository<impl IndexedFull>,
    node: &Node,
    path: &PathBuf,
) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("not restored ({e})"))?;
    if meta.len() != node.meta.size {
        return Err(format!(
            "{} bytes restored, the snapshot holds {}",
            meta.len(),
            node.meta.size
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    for id in node.content.iter().flatten() {
        let entry = repo.get_index_entry(id).map_err(|e| short(&e))?;
        if !id.blob_matches_reader(u64::from(entry.data_length()), &mut r) {
            return Err(format!(
                "chunk {} differs from the snapshot",
                id.to_hex().as_str()
            ));
        }
    }
    Ok(())
}

/// What a prune did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub kept: usize,
    pub forgotten: Vec<String>,
}

/// Forgets the snapshots of backup `name` that `keep` does not keep (per host and path),
/// then prunes: unreferenced packs are first marked and removed only by a later prune
/// (restic's and rustic's two phases), so a backup running meanwhile never loses data.
pub fn forget_and_prune(open: &Open, url: &str, name: &str, keep: &Keep) -> Result<Pruned, Error> {
    let e = |source| Error::repo(url, source);
    let tag = backup_tag(name);
    let (wal, all): (Vec<_>, Vec<_>) = open
        .get_all_snapshots()
        .map_err(e)?
        .into_iter()
        .filter(|s| s.tags.contains(&tag))
        .partition(|s| s.tags.contains(KIND_WAL));
    let n = |v: u32| (v > 0).then_some(i32::try_from(v).unwrap_or(i32::MAX));
    let opts = KeepOptions::default()
        .keep_last(n(keep.last))
        .keep_daily(n(keep.daily))
        .keep_weekly(n(keep.weekly))
        .keep_monthly(n(keep.monthly));
    let now = rustic_core::jiff::Zoned::now();
    let mut groups: std::collections::BTreeMap<(String, String), Vec<_>> = Default::default();
    for s in all {
        groups
            .entry((s.hostname.clone(), s.paths.to_string()))
            .or_default()
            .push(s);
    }
    let mut out = Pruned::default();
    let mut ids = Vec::new();
    // Where the oldest base backup kept starts in the WAL: batches that end before it
    // serve no restore any more.
    let mut oldest_from: Option<String> = None;
    for (_, snaps) in groups {
        for f in opts.apply(snaps, &now).map_err(e)? {
            if f.keep {
                out.kept += 1;
                let tags: Vec<String> = f.snapshot.tags.iter().cloned().collect();
                if let Some(from) = tag_value(&tags, WAL_FROM) {
                    if oldest_from.as_deref().is_none_or(|o| from < o) {
                        oldest_from = Some(from.to_string());
                    }
                }
            } else {
                out.forgotten
                    .push(f.snapshot.id.to_hex().as_str().to_string());
                ids.push(f.snapshot.id);
            }
        }
    }
    if let Some(from) = &oldest_from {
        for w in wal {
            let tags: Vec<String> = w.tags.iter().cloned().collect();
            if tag_value(&tags, WAL_UPTO).is_some_and(|upto| upto < from.as_str()) {
                out.forgotten.push(w.id.to_hex().as_str().to_string());
                ids.push(w.id);
            }
        }
    }
    if !ids.is_empty() {
        open.delete_snapshots(&ids).map_err(e)?;
    }
    // Packs younger than an hour are never touched (another site may be writing the index
    // that uses them); unused ones are marked, and removed 23 h later by a later prune.
    let popts = PruneOptions::default().keep_pack(rustic_core::jiff::Span::new().hours(1));
    let plan = open.prune_plan(&popts).map_err(e)?;
    open.prune(&popts, plan).map_err(e)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_panic_is_told_in_a_line() {
        let why = r#"called `Result::unwrap()` on an `Err` value: RusticError { kind: Cryptography, guidance: "Data decryption failed, MAC check failed.", docs_url: None, error_code: Some("C001"), backtrace: Some(Backtrace [{ fn: "x" }]) }"#;
        assert_eq!(
            panic_text(why),
            "Data decryption failed, MAC check failed. (C001: a pack or blob could not be read or decrypted)"
        );
        assert_eq!(panic_text("boom backtrace here"), "boom ");
    }
}
