//! The ioctl entry point of a device file (`dmirror_fops_unlocked_ioctl`):
//! Linux's argument checks, the kernel bounce buffer each copying command
//! uses, the copies to and from the opener's memory, and the `cpages` /
//! `faults` written back. The typed calls it dispatches to live in
//! [`super`].

use hmm_types::PAGE_SIZE;

use super::{checked_npages, Counts, DmirrorFile};
use crate::error::DmirrorError;
use crate::uapi::{HmmDmirrorCmd, Request};

impl DmirrorFile {
    /// The ioctl: Linux's prologue (alignment and range checks), then the
    /// command. `cmd.ptr` is an address in the opener's address space; on
    /// error `cmd` is left as it was, as Linux does not copy it back.
    pub fn ioctl(&self, request: u64, cmd: &mut HmmDmirrorCmd) -> Result<(), DmirrorError> {
        let request = Request::try_from(request)?;
        let npages = checked_npages(cmd.addr, cmd.npages)?;
        let mut done = HmmDmirrorCmd { cpages: 0, faults: 0, ..*cmd };
        let counts = match request {
            Request::Read => {
                let mut bounce = self.bounce(npages)?;
                let counts = self.read(cmd.addr, npages, &mut bounce)?;
                self.copy_to_user(cmd.ptr, &bounce)?;
                counts
            }
            Request::Write => {
                let mut bounce = self.bounce(npages)?;
                self.copy_from_user(cmd.ptr, &mut bounce)?;
                self.write(cmd.addr, npages, &bounce)?
            }
            Request::MigrateToDev => {
                let mut bounce = self.bounce(npages)?;
                let counts = self.migrate_to_dev(cmd.addr, npages, &mut bounce)?;
                self.copy_to_user(cmd.ptr, &bounce)?;
                counts
            }
            Request::MigrateToSys => self.migrate_to_sys(cmd.addr, npages)?,
            Request::Snapshot => self.snapshot_to_user(cmd.addr, npages, cmd.ptr)?,
            Request::Exclusive => {
                let mut bounce = self.bounce(npages)?;
                let counts = self.exclusive(cmd.addr, npages, &mut bounce)?;
                self.copy_to_user(cmd.ptr, &bounce)?;
                counts
            }
            Request::CheckExclusive => self.check_exclusive(cmd.addr, npages).map(|()| Counts::default())?,
            Request::Release => {
                self.release();
                Counts::default()
            }
            Request::Flags => {
                self.set_flags(cmd.npages);
                Counts::default()
            }
            Request::ReadUnlocked => {
                let mut bounce = self.bounce(npages)?;
                let counts = self.read_unlocked(cmd.addr, npages, &mut bounce)?;
                self.copy_to_user(cmd.ptr, &bounce)?;
                counts
            }
        };
        done.cpages = counts.cpages;
        done.faults = counts.faults;
        *cmd = done;
        Ok(())
    }

    /// The kernel buffer of a copying command (`dmirror_bounce_init`):
    /// `ENOMEM` when it would exceed RAM, as `vmalloc` refuses, or when the
    /// host cannot give it; never an abort.
    fn bounce(&self, npages: u64) -> Result<Vec<u8>, DmirrorError> {
        if npages > self.mirror.mm.phys().ram_frames() {
            return Err(DmirrorError::NoMem("a bounce buffer larger than RAM"));
        }
        let bytes = (npages * PAGE_SIZE) as usize;
        let mut bounce = Vec::new();
        bounce.try_reserve_exact(bytes).map_err(|_| DmirrorError::NoMem("the bounce buffer"))?;
        bounce.resize(bytes, 0);
        Ok(bounce)
    }

    /// SNAPSHOT for the ioctl: chunk by chunk, each copied out before the
    /// next, as Linux does with its on-stack chunk buffer; no buffer is
    /// sized by `npages`.
    fn snapshot_to_user(&self, addr: u64, npages: u64, ptr: u64) -> Result<Counts, DmirrorError> {
        const CHUNK: u64 = 64;
        let mut bytes = [0u8; CHUNK as usize];
        let mut done = 0;
        while done < npages {
            let n = (npages - done).min(CHUNK);
            let chunk = &mut bytes[..n as usize];
            crate::snapshot::snapshot(&self.mirror, addr + done * PAGE_SIZE, n, chunk)?;
            // `done` pages copied out already lie in the user's buffer.
            let at = ptr.checked_add(done).ok_or(DmirrorError::UserCopy(ptr))?;
            self.copy_to_user(at, chunk)?;
            done += n;
        }
        Ok(Counts { cpages: npages, faults: 0 })
    }

    fn copy_to_user(&self, ptr: u64, data: &[u8]) -> Result<(), DmirrorError> {
        self.mirror.mm.write_bytes(ptr, data).map_err(|_| DmirrorError::UserCopy(ptr))
    }

    fn copy_from_user(&self, ptr: u64, data: &mut [u8]) -> Result<(), DmirrorError> {
        self.mirror.mm.read_bytes(ptr, data).map_err(|_| DmirrorError::UserCopy(ptr))
    }
}
