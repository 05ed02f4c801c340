//! The file system behind the file tests' `/tmp`: `hmm_create_file` makes
//! an unnamed file there (`O_TMPFILE`) of the test's size. On Linux `/tmp`
//! is whatever is mounted there: tmpfs, or (in the reference guest) a
//! directory of an fs-dax ext4 mount bind-mounted over it. The model's
//! counterparts are the machine's [`Tmpfs`](hmm_mm::fs::Tmpfs) and a
//! [`DaxFs`] on an emulated pmem device formatted on first use.
//!
//! Also owns the pmem backing files of the DAX tests (removed on drop).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use hmm_mm::fs::{DaxFs, File};
use hmm_mm::Kernel;

use crate::ok;
use crate::verdict::Fail;

/// Bytes of the pmem device behind `/tmp` on DAX: room for the largest
/// file a test makes (4 MiB) many times over.
const TMP_PMEM_BYTES: u64 = 64 << 20;

/// What `/tmp` is for the file tests.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum FileSystem {
    /// tmpfs (shmem page cache).
    #[default]
    Tmpfs,
    /// An fs-dax file system: file pages are pmem frames, no page cache.
    Dax,
}

impl FileSystem {
    /// Both, tmpfs first.
    pub const ALL: [Self; 2] = [Self::Tmpfs, Self::Dax];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tmpfs => "tmpfs",
            Self::Dax => "dax",
        }
    }
}

/// A pmem backing file, removed when dropped.
#[derive(Debug)]
pub(crate) struct Backing(pub(crate) PathBuf);

impl Backing {
    /// A path for a new backing file, unique to this process and call.
    pub(crate) fn scratch() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("hmm-selftest-{}-{n}.pmem", std::process::id())))
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One test's `/tmp`: nothing until a test asks for a file; on DAX the
/// file system is formatted then and lives until the test's teardown.
#[derive(Debug)]
pub(crate) struct Tmp {
    fs: FileSystem,
    // Field order is drop order: the file system before its backing file.
    dax: std::sync::Mutex<Option<(DaxFs, Backing)>>,
    created: AtomicU64,
}

impl Tmp {
    pub(crate) fn new(fs: FileSystem) -> Self {
        Self { fs, dax: std::sync::Mutex::new(None), created: AtomicU64::new(0) }
    }

    pub(crate) fn fs(&self) -> FileSystem {
        self.fs
    }

    /// `hmm_create_file(size)`: an unnamed read-write file of `size` bytes.
    pub(crate) fn create_file(&self, kernel: &Kernel, size: u64) -> Result<File, Fail> {
        let name = format!("hmm-tmpfile-{}", self.created.fetch_add(1, Ordering::Relaxed));
        let file = match self.fs {
            FileSystem::Tmpfs => {
                let tmpfs = kernel.tmpfs();
                let file = ok!(tmpfs.create(&name));
                ok!(tmpfs.unlink(&name));
                file
            }
            // The model's DAX namespace has no unlink; a name no one else
            // uses on a file system private to the test is as unreachable.
            FileSystem::Dax => {
                let mut dax = self.dax.lock().unwrap_or_else(|e| e.into_inner());
                if dax.is_none() {
                    let backing = Backing::scratch();
                    let fs = ok!(DaxFs::format(kernel, &backing.0, TMP_PMEM_BYTES));
                    *dax = Some((fs, backing));
                }
                let (fs, _) = dax.as_ref().expect("formatted above");
                ok!(fs.create(&name))
            }
        };
        ok!(file.ftruncate(size));
        Ok(file)
    }

    /// Unmounts (after the process exited, so nothing maps a file).
    pub(crate) fn unmount(&self) {
        drop(self.dax.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}
