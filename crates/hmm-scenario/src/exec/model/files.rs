//! The model's file calls: memfd (a tmpfs file), pread/pwrite,
//! ftruncate, fallocate and close, with the refusals of a device-DAX
//! node, which has no file operations for them.
//!
//! Linux: `mm/memfd.c`, `fs/read_write.c`, `fs/open.c` (`vfs_fallocate`),
//! `mm/shmem.c`.

use hmm_mm::fs::File;
use hmm_mm::MmError;
use hmm_types::Errno;

use super::{errno, ModelBackend, Proc};
use crate::exec::{Call, Falloc, FileId, ProcId};
use crate::observe::Outcome;

impl ModelBackend {
    /// A file call of `proc`, which is live.
    pub(super) fn file_call(&mut self, proc: ProcId, call: &Call) -> Outcome {
        let p = self.procs.get_mut(&proc).expect("the interpreter only names live processes");
        match *call {
            Call::Memfd { ref name, id } => {
                // memfds are unnamed files: unique tmpfs names keep two with
                // the same name apart.
                match self.kernel.tmpfs().create(&format!("memfd-{id}")) {
                    Ok(file) => {
                        self.names.insert(file.inode().id(), name.clone());
                        self.proc(proc).files.insert(id, file);
                        Outcome::Ok
                    }
                    Err(e) => errno(e),
                }
            }
            // The device-DAX node has no read/write file operations
            // (vfs_read/vfs_write: EINVAL), is no regular file for
            // ftruncate (EINVAL) and fallocate (ENODEV).
            Call::Fwrite { file, .. } | Call::Pread { file, .. } | Call::Ftruncate { file, .. }
                if self.devices.devdax(proc, file).is_some() =>
            {
                Outcome::Errno(Errno::Inval as i32)
            }
            Call::Fallocate { file, .. } if self.devices.devdax(proc, file).is_some() => {
                Outcome::Errno(Errno::NoDev as i32)
            }
            Call::Fwrite { file, offset, value } => {
                with_file(p, file, |f| f.pwrite(offset, &value.to_le_bytes()).map(|n| Outcome::Value(n as u64)))
            }
            Call::Pread { file, offset } => with_file(p, file, |f| {
                let mut buf = [0u8; 8];
                f.pread(offset, &mut buf).map(|_| Outcome::Value(u64::from_le_bytes(buf)))
            }),
            Call::Ftruncate { file, size } => with_file(p, file, |f| f.ftruncate(size).map(|()| Outcome::Ok)),
            Call::Fallocate { file, offset, len, mode } => with_file(p, file, |f| fallocate(f, offset, len, mode)),
            Call::Close { file } => match p.files.remove(&file) {
                Some(_) => Outcome::Ok,
                None if p.uffd.close(file) => Outcome::Ok,
                None if self.devices.close(proc, file) => Outcome::Ok,
                None if self.pins.close(proc, file) => Outcome::Ok,
                None => Outcome::Errno(Errno::BadF as i32),
            },
            _ => unreachable!("only file calls come here"),
        }
    }
}

fn with_file(p: &Proc, id: FileId, f: impl FnOnce(&File) -> Result<Outcome, MmError>) -> Outcome {
    match p.files.get(&id) {
        Some(file) => f(file).unwrap_or_else(errno),
        None => Outcome::Errno(Errno::BadF as i32),
    }
}

/// `fallocate` on tmpfs: `vfs_fallocate`'s argument checks (EINVAL, then
/// EFBIG past the largest offset), then a hole punch or an allocation.
fn fallocate(f: &File, offset: u64, len: u64, mode: Falloc) -> Result<Outcome, MmError> {
    if len == 0 || (offset as i64) < 0 || (len as i64) < 0 {
        return Err(MmError::Invalid("fallocate offset or length"));
    }
    if offset.checked_add(len).is_none_or(|end| end > i64::MAX as u64) {
        return Err(MmError::FileTooBig("fallocate beyond the largest file"));
    }
    match mode {
        Falloc::PunchHole => f.punch_hole(offset, len)?,
        Falloc::KeepSize => f.fallocate_keep_size(offset, len)?,
    }
    Ok(Outcome::Ok)
}
