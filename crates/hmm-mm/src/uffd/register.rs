//! Registering ranges (`UFFDIO_REGISTER`, `UFFDIO_UNREGISTER`) and closing
//! the file (`userfaultfd_release`). All three change VMAs, so they hold
//! the mmap write lock; they split VMAs at the range ends and merge what
//! became alike.
//!
//! Linux 7.3: `mm/userfaultfd.c` (`userfaultfd_register`,
//! `userfaultfd_unregister`, `userfaultfd_release`, `vma_can_userfault`).

use hmm_types::VmFlags;

use super::{
    check_range, nr, UffdBinding, UffdError, Userfaultfd, UFFDIO_REGISTER_MODE_MINOR, UFFDIO_REGISTER_MODE_MISSING,
    UFFDIO_REGISTER_MODE_RWP, UFFDIO_REGISTER_MODE_WP,
};
use crate::vma::Vma;

/// The range ioctls a MISSING registration of anonymous memory offers in
/// the model (Linux adds MOVE and POISON, not modelled).
const RANGE_IOCTLS: u64 = (1 << nr::WAKE) | (1 << nr::COPY) | (1 << nr::ZEROPAGE);

impl Userfaultfd {
    /// `UFFDIO_REGISTER`: arms `[start, start + len)` for `mode`; returns
    /// the range ioctls. Every VMA in the range must be private anonymous
    /// memory (`EINVAL` otherwise; shmem and hugetlb are not modelled),
    /// have `VM_MAYWRITE` (`EPERM`) and not belong to another userfaultfd
    /// (`EBUSY`). Holes between VMAs are allowed, a range with no VMA is
    /// `EINVAL`.
    pub fn register(&self, start: u64, len: u64, mode: u64) -> Result<u64, UffdError> {
        self.features()?;
        let all = UFFDIO_REGISTER_MODE_MISSING
            | UFFDIO_REGISTER_MODE_WP
            | UFFDIO_REGISTER_MODE_MINOR
            | UFFDIO_REGISTER_MODE_RWP;
        if mode == 0 || mode & !all != 0 {
            return Err(UffdError::Invalid("mode must be a non-empty subset of MISSING|WP|MINOR|RWP"));
        }
        if mode != UFFDIO_REGISTER_MODE_MISSING {
            return Err(UffdError::NotModelled("only MISSING registration is modelled"));
        }
        let end = check_range(start, len)?;
        let mm = self.mm()?;
        let mut guard = mm.mmap_write();
        let mut any = false;
        for vma in guard.overlapping(start, end) {
            any = true;
            self.check_vma(vma)?;
        }
        if !any {
            return Err(UffdError::Invalid("no mapping in the range"));
        }
        let binding = UffdBinding(self.ctx.clone());
        for vma in guard.vmas_mut().split_range_mut(start, end) {
            vma.flags.insert(VmFlags::UFFD_MISSING);
            vma.uffd = Some(binding.clone());
        }
        guard.vmas_mut().merge_range(start, end);
        Ok(RANGE_IOCTLS)
    }

    fn check_vma(&self, vma: &Vma) -> Result<(), UffdError> {
        if !vma.is_anonymous() || vma.flags.contains(VmFlags::SHARED) {
            return Err(UffdError::NotModelled("registration of other than private anonymous memory"));
        }
        if !vma.flags.contains(VmFlags::MAYWRITE) {
            return Err(UffdError::Perm("the mapping can never be written"));
        }
        match &vma.uffd {
            Some(other) if !std::sync::Arc::ptr_eq(&other.0, &self.ctx) => Err(UffdError::Busy),
            _ => Ok(()),
        }
    }

    /// `UFFDIO_UNREGISTER`: disarms `[start, start + len)` and wakes the
    /// faults waiting there (they retry and fault normally). VMAs of
    /// another context are `EINVAL`, as Linux refuses them.
    pub fn unregister(&self, start: u64, len: u64) -> Result<(), UffdError> {
        self.features()?;
        let end = check_range(start, len)?;
        let mm = self.mm()?;
        {
            let mut guard = mm.mmap_write();
            for vma in guard.overlapping(start, end) {
                if vma.uffd.as_ref().is_some_and(|b| !std::sync::Arc::ptr_eq(&b.0, &self.ctx)) {
                    return Err(UffdError::Invalid("the range is registered with another userfaultfd"));
                }
            }
            for vma in guard.vmas_mut().split_range_mut(start, end) {
                vma.flags.remove(VmFlags::UFFD_MISSING);
                vma.uffd = None;
            }
            guard.vmas_mut().merge_range(start, end);
        }
        self.ctx.wake_range(start, end);
        Ok(())
    }
}

impl Drop for Userfaultfd {
    /// `close`: every VMA registered here is disarmed, then every waiting
    /// fault is woken to retry.
    fn drop(&mut self) {
        if let Some(mm) = self.ctx.mm.upgrade().and_then(|mm| mm.mmget_not_zero()) {
            let mut guard = mm.mmap_write();
            let mine: Vec<(u64, u64)> = guard
                .iter()
                .filter(|v| v.uffd.as_ref().is_some_and(|b| std::sync::Arc::ptr_eq(&b.0, &self.ctx)))
                .map(|v| (v.start, v.end))
                .collect();
            for (start, end) in mine {
                for vma in guard.vmas_mut().split_range_mut(start, end) {
                    vma.flags.remove(VmFlags::UFFD_MISSING);
                    vma.uffd = None;
                }
                guard.vmas_mut().merge_range(start, end);
            }
        }
        let mut state = self.ctx.lock();
        state.released = true;
        state.waiting.clear();
        self.ctx.faults.notify_all();
    }
}
