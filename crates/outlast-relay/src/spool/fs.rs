//! The file layer under the spool, swappable so that tests can tear writes and corrupt
//! bytes. `RealFs` is the disk; `MemFs` (tests) keeps, per file, what is durable and what
//! is only written, and a crash keeps a random prefix of the latter, possibly garbled.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub trait Fs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Files directly in `dir` (not recursive), any order.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Appends, creating the file when missing. Not durable until `sync`.
    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    fn sync(&self, path: &Path) -> io::Result<()>;
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The real disk. It keeps the file last appended to open, and makes a folder's entry
/// durable only for files created since their last sync.
#[derive(Debug, Default)]
pub struct RealFs {
    open: Mutex<Option<(PathBuf, File)>>,
    fresh: Mutex<Vec<PathBuf>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RealFs {
    fn forget(&self, path: &Path) {
        let mut open = lock(&self.open);
        if open.as_ref().is_some_and(|(p, _)| p == path) {
            *open = None;
        }
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
        std::fs::read(path)
    }

    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut open = lock(&self.open);
        if let Some((p, f)) = open.as_mut() {
            if p == path {
                return f.write_all(data);
            }
        }
        if !path.exists() {
            lock(&self.fresh).push(path.to_path_buf());
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        f.write_all(data)?;
        *open = Some((path.to_path_buf(), f));
        Ok(())
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        {
            let open = lock(&self.open);
            match open.as_ref() {
                Some((p, f)) if p == path => f.sync_data()?,
                _ => std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)?
                    .sync_data()?,
            }
        }
        // A new file's directory entry must be durable too.
        let mut fresh = lock(&self.fresh);
        if let Some(i) = fresh.iter().position(|p| p == path) {
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            fresh.swap_remove(i);
        }
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.forget(path);
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.forget(from);
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.forget(path);
        lock(&self.fresh).retain(|p| p != path);
        std::fs::remove_file(path)
    }
}
