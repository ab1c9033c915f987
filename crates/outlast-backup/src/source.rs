//! A directory read for a snapshot, with every entry it could not read written down.
//!
//! rustic's archiver logs an unreadable entry and goes on, then saves the snapshot: a backup
//! that silently lacks files. Here each such error is collected, so the caller can fail the
//! backup and delete the snapshot it saved.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustic_core::{
    Excludes, LocalSource, LocalSourceFilterOptions, LocalSourceSaveOptions, ReadSource,
    ReadSourceEntry, ReadSourceOpen, RusticResult,
};

/// What could not be read, one line each (at most [`MAX_SKIPS`] kept).
#[derive(Clone, Default)]
pub struct Skips(Arc<Mutex<(usize, Vec<String>)>>);

/// How many skipped entries are named in an error; the rest are counted.
pub const MAX_SKIPS: usize = 20;

impl Skips {
    fn add(&self, what: String) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        if g.1.len() < MAX_SKIPS {
            g.1.push(what);
        }
    }

    /// How many entries were skipped, and the first few of them.
    pub fn taken(&self) -> (usize, Vec<String>) {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1.clone())
    }
}

/// A local directory tree; its errors go to [`Skips`].
pub struct Watched {
    inner: LocalSource,
    skips: Skips,
}

impl Watched {
    pub fn new(dir: &Path, skips: Skips) -> RusticResult<Self> {
        let save = LocalSourceSaveOptions::default();
        let inner = LocalSource::new(
            save,
            &Excludes::default(),
            &LocalSourceFilterOptions::default(),
            &[dir],
        )?;
        Ok(Self { inner, skips })
    }
}

pub struct WatchedIter<I> {
    inner: I,
    skips: Skips,
}

pub struct WatchedOpen<O> {
    inner: O,
    path: String,
    skips: Skips,
}

pub struct WatchedReader<R> {
    inner: R,
    path: String,
    skips: Skips,
}

impl ReadSource for Watched {
    type Open = WatchedOpen<<LocalSource as ReadSource>::Open>;
    type Iter = WatchedIter<<LocalSource as ReadSource>::Iter>;

    fn size(&self) -> RusticResult<Option<u64>> {
        self.inner.size()
    }

    fn entries(&self) -> Self::Iter {
        WatchedIter {
            inner: self.inner.entries(),
            skips: self.skips.clone(),
        }
    }
}

impl<I, O> Iterator for WatchedIter<I>
where
    I: Iterator<Item = RusticResult<ReadSourceEntry<O>>>,
{
    type Item = RusticResult<ReadSourceEntry<WatchedOpen<O>>>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.next()?;
        Some(match item {
            Err(e) => {
                self.skips.add(crate::short(&e));
                Err(e)
            }
            Ok(ReadSourceEntry { path, node, open }) => {
                let path_text = path.display().to_string();
                Ok(ReadSourceEntry {
                    path,
                    node,
                    open: open.map(|inner| WatchedOpen {
                        inner,
                        path: path_text,
                        skips: self.skips.clone(),
                    }),
                })
            }
        })
    }
}

impl<O: ReadSourceOpen> ReadSourceOpen for WatchedOpen<O> {
    type Reader = WatchedReader<O::Reader>;

    fn open(self) -> RusticResult<Self::Reader> {
        match self.inner.open() {
            Ok(inner) => Ok(WatchedReader {
                inner,
                path: self.path,
                skips: self.skips,
            }),
            Err(e) => {
                self.skips
                    .add(format!("{}: {}", self.path, crate::short(&e)));
                Err(e)
            }
        }
    }
}

impl<R: Read> Read for WatchedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.skips.add(format!("{}: {e}", self.path));
        })
    }
}
