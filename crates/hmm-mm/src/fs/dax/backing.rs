//! The file that holds a device's bytes: opened, checked to be a regular
//! file, locked for exclusive use (an advisory `flock`, released when the
//! device is dropped, so two runs never share one image), sized, and read
//! before anything is mapped.
//!
//! Linux counterpart: a pmem namespace is claimed by one driver at a time
//! (`EBUSY` for the next); here the file lock plays that part.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use super::error::PmemError;

/// An open, locked backing file.
#[derive(Debug)]
pub(crate) struct Backing {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Backing {
    /// Opens `path` (creating it if `create`), checks it is a regular file
    /// and takes its exclusive lock; `InUse` if another holder has it.
    pub(crate) fn open(path: &Path, create: bool) -> Result<Self, PmemError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(|e| PmemError::Open { path: path.to_path_buf(), source: e.into() })?;
        let io = |what| move |e: std::io::Error| PmemError::File { path: path.to_path_buf(), what, source: e.into() };
        let metadata = file.metadata().map_err(io("stat"))?;
        if !metadata.is_file() {
            return Err(PmemError::NotAFile { path: path.to_path_buf() });
        }
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(PmemError::InUse { path: path.to_path_buf() }),
            Err(e) => return Err(io("lock")(e.into())),
        }
        Ok(Self { file, path: path.to_path_buf(), len: metadata.len() })
    }

    /// The file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }
    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
    /// Its length when opened (or last resized).
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Grows the file to `len` bytes (never shrinks it).
    pub(crate) fn grow_to(&mut self, len: u64) -> Result<(), PmemError> {
        if self.len < len {
            self.file.set_len(len).map_err(|e| self.error("resize", e))?;
            self.len = len;
        }
        Ok(())
    }

    /// Up to `buf.len()` bytes from `offset`; how many there were.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, PmemError> {
        let wanted = buf.len().min(self.len.saturating_sub(offset).try_into().unwrap_or(usize::MAX));
        self.file.read_exact_at(&mut buf[..wanted], offset).map_err(|e| self.error("read", e))?;
        Ok(wanted)
    }

    /// An I/O error of this file, doing `what`.
    pub(crate) fn error(&self, what: &'static str, source: std::io::Error) -> PmemError {
        PmemError::File { path: self.path.clone(), what, source: source.into() }
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // The device region's mapping holds the open file (and with it the
        // lock) for as long as the machine lives: unlock explicitly.
        let _ = flock(&self.file, FlockOperation::Unlock);
    }
}
