//! Files: an in-memory filesystem (tmpfs-like) whose files can be read,
//! written, truncated, hole-punched and mapped, shared or private.
//!
//! Owns the namespace ([`Tmpfs`]) and open files ([`File`]); inodes and
//! their page caches live in `inode.rs`, truncation and hole punching (which
//! unmap from every process first) in `truncate.rs`.
//!
//! Linux: `mm/shmem.c` (tmpfs), `fs/open.c`, `mm/filemap.c`,
//! `mm/truncate.c`.

pub mod dax;
mod falloc;
mod inode;
mod partial;
pub(crate) mod truncate;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::MmError;
use crate::phys::PhysMem;

pub use dax::{Corruption, DaxFs, FormatMode, PmemError};
pub use inode::{Inode, InodeKind};

/// The largest file size and offset (`MAX_LFS_FILESIZE`, tmpfs's
/// `s_maxbytes` on 64-bit): `loff_t` is signed, so larger values are
/// negative offsets to Linux.
pub const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

/// A byte range of a read or write call: `EINVAL` if its start or end is
/// negative as Linux's `loff_t` (`rw_verify_area`; probed on 6.18 tmpfs:
/// `pwrite` of 8 KiB at 2^63 - 4 KiB is EINVAL, not a short write).
fn io_range_ok(offset: u64, len: usize, what: &'static str) -> Result<(), MmError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= MAX_LFS_FILESIZE => Ok(()),
        _ => Err(MmError::Invalid(what)),
    }
}

/// A byte offset of a file call: `EINVAL` if negative as Linux's `loff_t`.
fn offset_ok(offset: u64, what: &'static str) -> Result<u64, MmError> {
    if offset > MAX_LFS_FILESIZE {
        return Err(MmError::Invalid(what));
    }
    Ok(offset)
}

/// How a file was opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OpenMode {
    /// `O_RDONLY`.
    ReadOnly,
    /// `O_RDWR`.
    ReadWrite,
}

/// An open file description.
#[derive(Clone, Debug)]
pub struct File {
    inode: Arc<Inode>,
    mode: OpenMode,
}

impl File {
    pub(crate) fn new(inode: Arc<Inode>, mode: OpenMode) -> Self {
        Self { inode, mode }
    }
    /// The inode.
    pub fn inode(&self) -> &Arc<Inode> {
        &self.inode
    }
    /// The open mode.
    pub fn mode(&self) -> OpenMode {
        self.mode
    }
    /// True when opened for writing.
    pub fn is_writable(&self) -> bool {
        self.mode == OpenMode::ReadWrite
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.inode.size()
    }
    /// `pread`: bytes read, short at end of file.
    /// `EINVAL` if the range's start or end is past `MAX_LFS_FILESIZE`
    /// (negative as `loff_t`).
    pub fn pread(&self, offset: u64, buf: &mut [u8]) -> Result<usize, MmError> {
        io_range_ok(offset, buf.len(), "negative read offset")?;
        Ok(self.inode.read_at(offset, buf))
    }
    /// `pwrite`: `EBADF` unless opened for writing; `EINVAL` if the range's
    /// start or end is past `MAX_LFS_FILESIZE` (negative as `loff_t`; tmpfs's
    /// `s_maxbytes` is that same limit, so its `EFBIG` cannot be reached).
    pub fn pwrite(&self, offset: u64, data: &[u8]) -> Result<usize, MmError> {
        self.check_writable()?;
        io_range_ok(offset, data.len(), "negative write offset")?;
        self.inode.write_at(offset, data)
    }
    /// `ftruncate`: grows with zeros or shrinks, unmapping the cut pages
    /// from every process first. `EINVAL` for a negative size (as `loff_t`).
    pub fn ftruncate(&self, size: u64) -> Result<(), MmError> {
        offset_ok(size, "negative file size")?;
        self.check_writable()?;
        truncate::truncate(&self.inode, size)
    }
    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`: frees the
    /// whole pages inside `[offset, offset + len)` and zeroes the partial
    /// ones; the size is unchanged. `EINVAL` for a negative offset or an
    /// empty or negative length, `EFBIG` past `MAX_LFS_FILESIZE`
    /// (`vfs_fallocate`).
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<(), MmError> {
        offset_ok(offset, "negative hole offset")?;
        offset_ok(len, "negative hole length")?;
        if offset + len > MAX_LFS_FILESIZE {
            return Err(MmError::FileTooBig("hole past the largest file size"));
        }
        self.check_writable()?;
        truncate::punch_hole(&self.inode, offset, len)
    }
    /// `fallocate(FALLOC_FL_KEEP_SIZE)`: allocates the pages of
    /// `[offset, offset + len)`, past the end of the file too, without
    /// changing the size; new pages are not uptodate (`falloc.rs`).
    /// `vfs_fallocate`'s order: `EINVAL` for a negative offset or an empty
    /// or negative length, `EBADF` unless opened for writing, `EFBIG` past
    /// `MAX_LFS_FILESIZE`; `ENOMEM` when memory runs out.
    pub fn fallocate_keep_size(&self, offset: u64, len: u64) -> Result<(), MmError> {
        if len == 0 || offset > MAX_LFS_FILESIZE || len > MAX_LFS_FILESIZE {
            return Err(MmError::Invalid("fallocate with a negative offset or a non-positive length"));
        }
        self.check_writable()?;
        if offset + len > MAX_LFS_FILESIZE {
            return Err(MmError::FileTooBig("fallocate past the largest file size"));
        }
        self.inode.fallocate_keep_size(offset, len)
    }
    fn check_writable(&self) -> Result<(), MmError> {
        if self.is_writable() {
            Ok(())
        } else {
            Err(MmError::BadFile("file not open for writing"))
        }
    }
}

/// A tmpfs mount: named files in RAM.
pub struct Tmpfs {
    phys: Arc<PhysMem>,
    files: Mutex<HashMap<String, Arc<Inode>>>,
}

impl core::fmt::Debug for Tmpfs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tmpfs").field("files", &self.files.lock().len()).finish()
    }
}

impl Tmpfs {
    pub(crate) fn new(phys: Arc<PhysMem>) -> Self {
        Self { phys, files: Mutex::new(HashMap::new()) }
    }
    /// Creates (or truncates to zero) a file and opens it read-write.
    pub fn create(&self, name: &str) -> Result<File, MmError> {
        if name.is_empty() || name.contains('/') {
            return Err(MmError::Invalid("file names are non-empty and contain no '/'"));
        }
        let existing = self.files.lock().get(name).cloned();
        if let Some(inode) = existing {
            truncate::truncate(&inode, 0)?;
            return Ok(File::new(inode, OpenMode::ReadWrite));
        }
        let inode = Inode::new(self.phys.clone(), InodeKind::PageCache);
        self.files.lock().insert(name.to_string(), inode.clone());
        Ok(File::new(inode, OpenMode::ReadWrite))
    }
    /// Opens an existing file (`ENOENT` if there is none).
    pub fn open(&self, name: &str, mode: OpenMode) -> Result<File, MmError> {
        let inode = self.files.lock().get(name).cloned().ok_or(MmError::NoEntry("no such file"))?;
        Ok(File::new(inode, mode))
    }
    /// Removes a name; the data lives on while open or mapped.
    pub fn unlink(&self, name: &str) -> Result<(), MmError> {
        self.files.lock().remove(name).map(drop).ok_or(MmError::NoEntry("no such file"))
    }
    /// An unnamed file of `size` bytes, as `MAP_SHARED|MAP_ANONYMOUS` uses
    /// (`shmem_zero_setup`).
    pub(crate) fn anonymous(&self, size: u64) -> Arc<Inode> {
        let inode = Inode::new(self.phys.clone(), InodeKind::PageCache);
        inode.state.lock().size = size;
        inode
    }
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, MapFlags, Prot};

    use super::{OpenMode, MAX_LFS_FILESIZE};
    use crate::testing::kernel;
    use crate::{FaultError, MmError, ThpMode};

    #[test]
    fn pread_pwrite_and_holes() {
        let k = kernel(64, ThpMode::Never);
        let file = k.tmpfs().create("data").unwrap();
        assert_eq!(file.pwrite(10_000, b"abc").unwrap(), 3);
        assert_eq!(file.size(), 10_003);
        let mut buf = [9u8; 8];
        assert_eq!(file.pread(9_998, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"\0\0abc");
        assert_eq!(file.pread(20_000, &mut buf).unwrap(), 0);
        assert_eq!(file.inode().nr_cached_pages(), 1, "the hole before the data holds no page");
        assert!(file.inode().is_page_dirty(2));
    }

    /// Regression: sizes past `MAX_LFS_FILESIZE` were accepted, and a DAX
    /// image holding one could not be mounted again.
    #[test]
    fn sizes_stop_at_the_largest_file_size() {
        let k = kernel(64, ThpMode::Never);
        let file = k.tmpfs().create("big").unwrap();
        // Negative as `loff_t` (probed on 6.18: ftruncate(2^63 - 1) works on tmpfs).
        assert_eq!(file.ftruncate(MAX_LFS_FILESIZE + 1).unwrap_err().errno(), Errno::Inval);
        assert_eq!(file.ftruncate(u64::MAX).unwrap_err().errno(), Errno::Inval);
        assert_eq!(file.pwrite(1 << 63, b"x").unwrap_err().errno(), Errno::Inval, "a negative loff_t");
        assert_eq!(file.pwrite(MAX_LFS_FILESIZE, b"x").unwrap_err().errno(), Errno::Inval);
        assert_eq!(file.size(), 0, "nothing changed");
        file.ftruncate(MAX_LFS_FILESIZE).unwrap();
        assert_eq!(file.size(), MAX_LFS_FILESIZE);
    }

    #[test]
    fn shared_mappings_and_the_file_agree() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let file = k.tmpfs().create("shared").unwrap();
        file.ftruncate(2 * 4096).unwrap();
        let va = mm.mmap_file(0, 2 * 4096, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
        mm.write_bytes(va + 4096 + 5, b"from the cpu").unwrap();
        let mut buf = [0u8; 12];
        file.pread(4096 + 5, &mut buf).unwrap();
        assert_eq!(&buf, b"from the cpu");
        file.pwrite(100, b"from pwrite").unwrap();
        let mut buf = [0u8; 11];
        mm.read_bytes(va + 100, &mut buf).unwrap();
        assert_eq!(&buf, b"from pwrite");
        assert!(file.inode().is_page_dirty(1));
    }

    #[test]
    fn private_mappings_copy_on_write() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let file = k.tmpfs().create("private").unwrap();
        file.pwrite(0, &7u64.to_le_bytes()).unwrap();
        let va = mm.mmap_file(0, 4096, Prot::RW, MapFlags::PRIVATE, &file, 0).unwrap();
        assert_eq!(mm.read_u64(va).unwrap(), 7);
        mm.write_u64(va, 8).unwrap();
        let mut buf = [0u8; 8];
        file.pread(0, &mut buf).unwrap();
        assert_eq!(u64::from_le_bytes(buf), 7, "the file is untouched");
        assert_eq!(mm.read_u64(va).unwrap(), 8);
    }

    #[test]
    fn beyond_end_of_file_is_sigbus() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let file = k.tmpfs().create("short").unwrap();
        file.pwrite(0, b"x").unwrap();
        let va = mm.mmap_file(0, 3 * 4096, Prot::READ, MapFlags::SHARED, &file, 0).unwrap();
        assert_eq!(mm.read_bytes(va + 4095, &mut [0u8; 1]), Ok(()));
        match mm.read_u64(va + 4096) {
            Err(MmError::Fault { error: FaultError::Sigbus(_), .. }) => {}
            other => panic!("expected SIGBUS, got {other:?}"),
        }
    }

    #[test]
    fn open_modes_are_enforced() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        k.tmpfs().create("ro").unwrap().pwrite(0, b"data").unwrap();
        let ro = k.tmpfs().open("ro", OpenMode::ReadOnly).unwrap();
        assert_eq!(ro.pwrite(0, b"x").unwrap_err().errno(), Errno::BadF);
        assert_eq!(ro.ftruncate(0).unwrap_err().errno(), Errno::BadF);
        let err = mm.mmap_file(0, 4096, Prot::RW, MapFlags::SHARED, &ro, 0).unwrap_err();
        assert_eq!(err.errno(), Errno::Acces);
        assert!(mm.mmap_file(0, 4096, Prot::RW, MapFlags::PRIVATE, &ro, 0).is_ok());
        let shared_ro = mm.mmap_file(0, 4096, Prot::READ, MapFlags::SHARED, &ro, 0).unwrap();
        assert_eq!(mm.mprotect(shared_ro, 4096, Prot::RW).unwrap_err().errno(), Errno::Acces);
        assert_eq!(mm.mmap_file(0, 4096, Prot::READ, MapFlags::SHARED, &ro, 1).unwrap_err().errno(), Errno::Inval);
        assert_eq!(k.tmpfs().open("missing", OpenMode::ReadOnly).unwrap_err().errno(), Errno::NoEnt);
        let sync = MapFlags::SHARED_VALIDATE | MapFlags::SYNC;
        assert_eq!(mm.mmap_file(0, 4096, Prot::READ, sync, &ro, 0).unwrap_err().errno(), Errno::OpNotSupp);
    }

    #[test]
    fn fork_shares_file_mappings() {
        let k = kernel(64, ThpMode::Never);
        let parent = k.create_mm().unwrap();
        let file = k.tmpfs().create("forked").unwrap();
        file.ftruncate(4096).unwrap();
        let va = parent.mmap_file(0, 4096, Prot::RW, MapFlags::SHARED, &file, 0).unwrap();
        let child = parent.fork().unwrap();
        child.write_u64(va, 3).unwrap();
        assert_eq!(parent.read_u64(va).unwrap(), 3);
        child.exit();
    }
}
