//! The file layer under the spool, swappable so that tests can tear writes and corrupt
//! bytes. `RealFs` is the disk; `MemFs` (tests) keeps, per file, what is durable and what
//! is only written, and a crash keeps a random prefix of the latter, possibly garbled.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub trait Fs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Files directly in `dir` (not recursive), any order.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Up to `len` bytes from `offset` on (fewer where the file ends).
    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let all = self.read(path)?;
        let from = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
        Ok(all[from..all.len().min(from.saturating_add(len))].to_vec())
    }
    /// Appends, creating the file when missing. Not durable until `sync`.
    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Starts making what was appended to `path` so far durable; the returned step
    /// finishes it and may run outside any lock the caller holds (appends made meanwhile
    /// are not covered). A layer may do all of it here and return an empty step.
    fn start_sync(&self, path: &Path) -> io::Result<SyncStep>;
    fn sync(&self, path: &Path) -> io::Result<()> {
        self.start_sync(path)?.finish()
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Cuts `path` back to `len` bytes, dropping what was appended beyond it without
    /// writing it first (the records of a commit that failed; on a full disk a write would
    /// fail again). A layer that holds nothing back may simply truncate.
    fn discard_to(&self, path: &Path, len: u64) -> io::Result<()> {
        self.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The rest of a sync: the files to fsync (data only) and the folders whose entries must
/// become durable.
#[derive(Debug, Default)]
pub struct SyncStep {
    files: Vec<File>,
    dirs: Vec<File>,
    /// New files whose folder entry this step makes durable, and the list to put them
    /// back on if it fails, so that the next sync tries their folder again.
    fresh: Option<(FreshList, Vec<PathBuf>)>,
}

/// Files created since their folder entry was last made durable.
type FreshList = Arc<Mutex<Vec<PathBuf>>>;

impl SyncStep {
    pub fn finish(mut self) -> io::Result<()> {
        let r = self.run();
        if r.is_err() {
            if let Some((list, paths)) = self.fresh.take() {
                lock(&list).extend(paths);
            }
        }
        r
    }

    fn run(&self) -> io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        for d in &self.dirs {
            d.sync_all()?;
        }
        Ok(())
    }
}

/// The real disk. It keeps the file last appended to open, gathers appends to it in memory
/// until a sync, a read of it or [`WRITE_BUFFER`] bytes (one write for a group commit's
/// records instead of one each), and makes a folder's entry durable only for files created
/// since their last sync.
#[derive(Debug, Default)]
pub struct RealFs {
    open: Mutex<Option<OpenFile>>,
    fresh: FreshList,
}

/// Appended bytes held before they are written.
pub const WRITE_BUFFER: usize = 256 * 1024;

#[derive(Debug)]
struct OpenFile {
    path: PathBuf,
    file: File,
    pending: Vec<u8>,
}

impl OpenFile {
    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let r = self.file.write_all(&self.pending);
            self.pending.clear();
            r?;
        }
        Ok(())
    }
}

impl Drop for RealFs {
    fn drop(&mut self) {
        if let Some(f) = lock(&self.open).as_mut() {
            let _ = f.flush();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Up to `len` bytes of `file` from `offset` on: fewer only where the file ends.
fn read_fully_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

impl RealFs {
    /// Writes what is held for `path` and closes it.
    fn forget(&self, path: &Path) -> io::Result<()> {
        let mut open = lock(&self.open);
        if open.as_ref().is_some_and(|f| f.path == path) {
            if let Some(mut f) = open.take() {
                f.flush()?;
            }
        }
        Ok(())
    }
}

impl Fs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                out.push(e.path());
            }
        }
        Ok(out)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        if let Some(f) = lock(&self.open).as_mut().filter(|f| f.path == path) {
            f.flush()?;
        }
        std::fs::read(path)
    }

    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        // The file being appended to: its held bytes are written first, and the read goes
        // through a second handle so that appends need not wait for it.
        let open_file = {
            let mut open = lock(&self.open);
            match open.as_mut().filter(|f| f.path == path) {
                Some(f) => {
                    f.flush()?;
                    Some(f.file.try_clone()?)
                }
                None => None,
            }
        };
        let file = match open_file {
            Some(f) => f,
            None => File::open(path)?,
        };
        read_fully_at(&file, offset, len)
    }

    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut open = lock(&self.open);
        let f = match open.as_mut() {
            Some(f) if f.path == path => f,
            _ => {
                if let Some(mut old) = open.take() {
                    old.flush()?;
                }
                if !path.exists() {
                    lock(&self.fresh).push(path.to_path_buf());
                }
                // Readable too: range reads of it go through a clone of this handle.
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(path)?;
                open.insert(OpenFile {
                    path: path.to_path_buf(),
                    file,
                    pending: Vec::with_capacity(WRITE_BUFFER),
                })
            }
        };
        f.pending.extend_from_slice(data);
        if f.pending.len() >= WRITE_BUFFER {
            f.flush()?;
        }
        Ok(())
    }

    fn start_sync(&self, path: &Path) -> io::Result<SyncStep> {
        let mut step = SyncStep::default();
        // Held bytes are written now; the fsync itself goes through a second handle, so
        // that appends and reads need not wait for the disk.
        let file = {
            let mut open = lock(&self.open);
            match open.as_mut() {
                Some(f) if f.path == path => {
                    f.flush()?;
                    f.file.try_clone()?
                }
                _ => std::fs::OpenOptions::new().append(true).open(path)?,
            }
        };
        step.files.push(file);
        // A new file's directory entry must be durable too.
        let mut fresh = lock(&self.fresh);
        if let Some(i) = fresh.iter().position(|p| p == path) {
            if let Some(dir) = path.parent() {
                step.dirs.push(File::open(dir)?);
            }
            let new = fresh.swap_remove(i);
            step.fresh = Some((self.fresh.clone(), vec![new]));
        }
        Ok(step)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.forget(path)?;
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn discard_to(&self, path: &Path, len: u64) -> io::Result<()> {
        {
            let mut open = lock(&self.open);
            if open.as_ref().is_some_and(|f| f.path == path) {
                if let Some(mut f) = open.take() {
                    // Held bytes before `len` belong to what is kept.
                    let on_disk = f.file.metadata()?.len();
                    let keep = usize::try_from(len.saturating_sub(on_disk)).unwrap_or(0);
                    f.pending.truncate(keep);
                    f.flush()?;
                }
            }
        }
        match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(f) => {
                f.set_len(len)?;
                f.sync_all()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && len == 0 => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.forget(from)?;
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.forget(path)?;
        lock(&self.fresh).retain(|p| p != path);
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held appends are never lost or reordered: not by a read, a switch of file, a
    /// truncation, a rename or the end of the process's handle.
    #[test]
    fn held_appends_reach_the_file_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let fs = RealFs::default();
        fs.append(&a, b"one ").expect("append");
        fs.append(&a, b"two ").expect("append");
        assert_eq!(
            fs.read(&a).expect("read"),
            b"one two ",
            "a read sees held bytes"
        );
        assert_eq!(fs.read_range(&a, 4, 3).expect("range"), b"two");
        fs.append(&a, b"three").expect("append");
        assert_eq!(
            fs.read_range(&a, 8, 100).expect("range"),
            b"three",
            "a range read sees held bytes; it ends where the file does"
        );
        fs.append(&b, b"x").expect("append"); // switches file: a's bytes are written
        assert_eq!(std::fs::read(&a).expect("read a"), b"one two three");
        let big = vec![7u8; WRITE_BUFFER + 1];
        fs.append(&b, &big).expect("append");
        assert_eq!(
            std::fs::read(&b).expect("read b").len(),
            WRITE_BUFFER + 2,
            "over the limit: written"
        );
        fs.append(&a, b" four").expect("append");
        fs.sync(&a).expect("sync");
        assert_eq!(std::fs::read(&a).expect("read a"), b"one two three four");
        fs.append(&a, b" five").expect("append");
        fs.truncate(&a, 3).expect("truncate");
        assert_eq!(std::fs::read(&a).expect("read a"), b"one");
        fs.append(&b, b"tail").expect("append");
        let c = dir.path().join("c");
        fs.rename(&b, &c).expect("rename");
        assert!(std::fs::read(&c).expect("read c").ends_with(b"tail"));
        fs.append(&a, b"!").expect("append");
        drop(fs);
        assert_eq!(
            std::fs::read(&a).expect("read a"),
            b"one!",
            "written when dropped"
        );
    }

    /// A sync that fails leaves a new file's folder entry to the next sync, which tries it
    /// again (before, the file was forgotten as new and a later sync skipped its folder).
    #[test]
    fn a_failed_sync_keeps_the_folder_entry_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let fs = RealFs::default();
        fs.append(&a, b"x").expect("append");
        let mut step = fs.start_sync(&a).expect("start");
        assert!(lock(&fs.fresh).is_empty(), "taken by the step");
        // A file that cannot be fsync'd (a character device) makes the step fail.
        step.files
            .push(File::open("/dev/null").expect("open /dev/null"));
        assert!(step.finish().is_err());
        assert_eq!(*lock(&fs.fresh), vec![a.clone()], "put back");
        let step = fs.start_sync(&a).expect("start");
        assert_eq!(step.dirs.len(), 1, "the folder is synced this time");
        step.finish().expect("sync");
        assert!(lock(&fs.fresh).is_empty());
    }
}
