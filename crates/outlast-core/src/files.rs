//! Reading the small files a config names (the config itself, secrets, tokens, keys) without
//! trusting what is at the path: only a regular file is read, and only up to a cap. A path
//! pointing at `/dev/zero` or `/dev/urandom` would otherwise fill memory, and a FIFO would
//! block `outlast check` for ever.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The largest secret, token or key file read.
pub const MAX_SECRET_BYTES: u64 = 64 << 10;

/// Why a small file could not be read, as a sentence.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("it is not a regular file (a device, a folder or a pipe)")]
    NotAFile,
    #[error("it is larger than {0} bytes")]
    TooLarge(u64),
    #[error("it is not UTF-8 text")]
    NotText,
}

impl ReadError {
    /// The underlying I/O error's kind, when there is one.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            ReadError::Io(e) => Some(e.kind()),
            _ => None,
        }
    }
}

/// Reads the regular file at `path` as text, refusing anything else and anything over `cap`
/// bytes. Opened without blocking, so a FIFO cannot hold the caller; the type is checked on
/// the opened file, so a path swapped in between cannot fool the check.
pub fn read_text(path: &Path, cap: u64) -> Result<String, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotAFile);
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge(cap));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge(cap));
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let ok = dir.path().join("secret");
        std::fs::write(&ok, "s3cret\n").expect("write");
        assert_eq!(read_text(&ok, 100).expect("read"), "s3cret\n");
        assert!(matches!(read_text(&ok, 3), Err(ReadError::TooLarge(3))));
        for dev in ["/dev/zero", "/dev/urandom", "/dev/null"] {
            assert!(
                matches!(read_text(Path::new(dev), 100), Err(ReadError::NotAFile)),
                "{dev}"
            );
        }
        assert!(matches!(
            read_text(dir.path(), 100),
            Err(ReadError::NotAFile)
        ));
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let t = crate::clock::now();
        assert!(matches!(read_text(&fifo, 100), Err(ReadError::NotAFile)));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "no wait on a FIFO"
        );
        let bin = dir.path().join("bin");
        std::fs::write(&bin, [0xff, 0xfe]).expect("write");
        assert!(matches!(read_text(&bin, 100), Err(ReadError::NotText)));
    }
}
