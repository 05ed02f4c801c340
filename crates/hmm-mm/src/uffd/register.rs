//! Registering ranges (`UFFDIO_REGISTER`, `UFFDIO_UNREGISTER`) and closing
//! the file (`userfaultfd_release`). All three change VMAs, so they hold
//! the mmap write lock; they split VMAs at the range ends and merge what
//! became alike.
//!
//! Which memory takes which mode (`vma_can_userfault`): MISSING, WP and
//! RWP on private anonymous memory and shmem, MINOR on shmem only; hugetlb
//! takes MISSING and MINOR (`hugetlb.rs`: huge-aligned ranges, fewer range
//! ioctls), its WP and RWP are not modelled (`EOPNOTSUPP`); anything else
//! (fs-dax, device-DAX, PFN maps) is `EINVAL`.
//!
//! Linux 7.3: `mm/userfaultfd.c` (`userfaultfd_register`,
//! `userfaultfd_unregister`, `userfaultfd_release`, `vma_can_userfault`).

use hmm_types::VmFlags;

use super::{
    check_range, nr, UffdBinding, UffdError, Userfaultfd, UFFDIO_REGISTER_MODE_MINOR, UFFDIO_REGISTER_MODE_MISSING,
    UFFDIO_REGISTER_MODE_RWP, UFFDIO_REGISTER_MODE_WP, UFFD_VM_FLAGS,
};
use crate::fs::InodeKind;
use crate::vma::{Vma, VmaBacking};

/// The range ioctls of a registration (`UFFD_API_RANGE_IOCTLS`), before
/// CONTINUE, WRITEPROTECT and RWPROTECT are taken out for ranges without
/// MINOR, WP or RWP.
const RANGE_IOCTLS: u64 = (1 << nr::WAKE)
    | (1 << nr::COPY)
    | (1 << nr::ZEROPAGE)
    | (1 << nr::MOVE)
    | (1 << nr::WRITEPROTECT)
    | (1 << nr::CONTINUE)
    | (1 << nr::POISON)
    | (1 << nr::RWPROTECT);

/// The memory kinds registration distinguishes.
enum Kind {
    Anon,
    Shmem,
    Hugetlb,
    Other,
}

fn kind(vma: &Vma) -> Kind {
    match &vma.backing {
        VmaBacking::Anon => Kind::Anon,
        VmaBacking::File(inode) if matches!(inode.kind(), InodeKind::PageCache) => Kind::Shmem,
        VmaBacking::Hugetlb(_) => Kind::Hugetlb,
        _ => Kind::Other,
    }
}

impl Userfaultfd {
    /// `UFFDIO_REGISTER`: arms `[start, start + len)` for `mode` (a
    /// non-empty set of MISSING, WP, MINOR, RWP; WP and RWP exclude each
    /// other); returns the range ioctls.
    /// A range holding no VMA is `EINVAL`, as is a VMA of a kind that cannot
    /// take the mode is `EINVAL`; one that may never be written `EPERM`;
    /// one registered with another userfaultfd `EBUSY`. A VMA registered
    /// here already with every mode asked for is left as it is.
    pub fn register(&self, start: u64, len: u64, mode: u64) -> Result<u64, UffdError> {
        let features = self.features()?;
        let all = UFFDIO_REGISTER_MODE_MISSING
            | UFFDIO_REGISTER_MODE_WP
            | UFFDIO_REGISTER_MODE_MINOR
            | UFFDIO_REGISTER_MODE_RWP;
        if mode == 0 || mode & !all != 0 {
            return Err(UffdError::Invalid("mode must be a non-empty subset of MISSING|WP|MINOR|RWP"));
        }
        super::rwp::check_register(mode, features, None)?;
        let mut vm_flags = VmFlags::empty();
        for (bit, flag) in [
            (UFFDIO_REGISTER_MODE_MISSING, VmFlags::UFFD_MISSING),
            (UFFDIO_REGISTER_MODE_WP, VmFlags::UFFD_WP),
            (UFFDIO_REGISTER_MODE_MINOR, VmFlags::UFFD_MINOR),
            (UFFDIO_REGISTER_MODE_RWP, VmFlags::UFFD_RWP),
        ] {
            if mode & bit != 0 {
                vm_flags |= flag;
            }
        }
        let end = check_range(start, len)?;
        let mm = self.mm()?;
        let mut guard = mm.mmap_write();
        let mut any = false;
        let mut hugetlb = false;
        for vma in guard.overlapping(start, end) {
            any = true;
            hugetlb |= matches!(kind(vma), Kind::Hugetlb);
            self.check_vma(vma, vm_flags)?;
            super::rwp::check_register(mode, features, Some(vma))?;
            super::rwp::check_reregister(vma, vm_flags)?;
        }
        if !any {
            return Err(UffdError::Invalid("no mapping in the range"));
        }
        super::hugetlb::check_range_alignment(guard.overlapping(start, end), start, end)?;
        let binding = UffdBinding(self.ctx.clone());
        for vma in guard.vmas_mut().split_range_mut(start, end) {
            // "Nothing to do": registered here with these modes and maybe
            // more, which stay (`userfaultfd_register_range`).
            if super::is_mine(&self.ctx, vma) && vma.flags.contains(vm_flags) {
                continue;
            }
            vma.flags.remove(UFFD_VM_FLAGS);
            vma.flags.insert(vm_flags);
            vma.uffd = Some(binding.clone());
        }
        guard.vmas_mut().merge_range(start, end);
        let mut ioctls = RANGE_IOCTLS;
        if hugetlb {
            ioctls &= super::hugetlb::BASIC_RANGE_IOCTLS;
        }
        if mode & UFFDIO_REGISTER_MODE_MINOR == 0 {
            ioctls &= !(1 << nr::CONTINUE);
        }
        if mode & UFFDIO_REGISTER_MODE_WP == 0 {
            ioctls &= !(1 << nr::WRITEPROTECT);
        }
        if mode & UFFDIO_REGISTER_MODE_RWP == 0 {
            ioctls &= !(1 << nr::RWPROTECT);
        }
        Ok(ioctls)
    }

    /// `vma_can_userfault`, then the VM_MAYWRITE and ownership checks.
    fn check_vma(&self, vma: &Vma, vm_flags: VmFlags) -> Result<(), UffdError> {
        match kind(vma) {
            Kind::Other => return Err(UffdError::Invalid("userfaultfd cannot register this kind of memory")),
            Kind::Anon if vm_flags.contains(VmFlags::UFFD_MINOR) => {
                return Err(UffdError::Invalid("MINOR mode needs shmem or hugetlb"))
            }
            Kind::Anon | Kind::Shmem | Kind::Hugetlb => {}
        }
        if !vma.flags.contains(VmFlags::MAYWRITE) {
            return Err(UffdError::Perm("the mapping can never be written"));
        }
        match &vma.uffd {
            Some(other) if !std::sync::Arc::ptr_eq(&other.0, &self.ctx) => Err(UffdError::Busy),
            _ => Ok(()),
        }
    }

    /// `UFFDIO_UNREGISTER`: disarms `[start, start + len)`, drops the
    /// uffd-wp bits of WP ranges and wakes the faults waiting in MISSING
    /// ranges (they retry and fault normally; WP and MINOR faults wait on
    /// for a WAKE). A range with no VMA is `EINVAL`, as are VMAs of
    /// another context are `EINVAL`, as Linux refuses them.
    pub fn unregister(&self, start: u64, len: u64) -> Result<(), UffdError> {
        self.features()?;
        let end = check_range(start, len)?;
        let mm = self.mm()?;
        let missing = {
            let mut guard = mm.mmap_write();
            let mut any = false;
            for vma in guard.overlapping(start, end) {
                any = true;
                if matches!(kind(vma), Kind::Other) {
                    return Err(UffdError::Invalid("userfaultfd cannot register this kind of memory"));
                }
                if vma.uffd.as_ref().is_some_and(|b| !std::sync::Arc::ptr_eq(&b.0, &self.ctx)) {
                    return Err(UffdError::Invalid("the range is registered with another userfaultfd"));
                }
            }
            if !any {
                return Err(UffdError::Invalid("no mapping in the range"));
            }
            super::hugetlb::check_range_alignment(guard.overlapping(start, end), start, end)?;
            // Only MISSING ranges wake their waiting faults: a WP or MINOR
            // fault keeps waiting for a WAKE (`userfaultfd_unregister`).
            let missing: Vec<(u64, u64)> = guard
                .overlapping(start, end)
                .filter(|v| v.flags.contains(VmFlags::UFFD_MISSING))
                .map(|v| (v.start.max(start), v.end.min(end)))
                .collect();
            let wp: Vec<(u64, u64)> = guard
                .overlapping(start, end)
                .filter(|v| v.flags.contains(VmFlags::UFFD_WP))
                .map(|v| (v.start.max(start), v.end.min(end)))
                .collect();
            for (s, e) in wp {
                super::wp::clear_range(&mm, s, e);
            }
            let rwp: Vec<(u64, u64, VmFlags)> = guard
                .overlapping(start, end)
                .filter(|v| v.flags.contains(VmFlags::UFFD_RWP))
                .map(|v| (v.start.max(start), v.end.min(end), v.flags))
                .collect();
            for (s, e, flags) in rwp {
                super::rwp::resolve_range(&mm, flags, s, e);
            }
            for vma in guard.vmas_mut().split_range_mut(start, end) {
                vma.flags.remove(UFFD_VM_FLAGS);
                vma.uffd = None;
            }
            guard.vmas_mut().merge_range(start, end);
            missing
        };
        for (s, e) in missing {
            self.ctx.wake_range(s, e);
        }
        Ok(())
    }
}

impl Drop for Userfaultfd {
    /// `close`: every VMA registered here is disarmed (its uffd-wp bits
    /// dropped), then every waiting fault is woken to retry.
    fn drop(&mut self) {
        if let Some(mm) = self.ctx.mm.upgrade().and_then(|mm| mm.mmget_not_zero()) {
            let mut guard = mm.mmap_write();
            let mine: Vec<(u64, u64, VmFlags)> = guard
                .iter()
                .filter(|v| v.uffd.as_ref().is_some_and(|b| std::sync::Arc::ptr_eq(&b.0, &self.ctx)))
                .map(|v| (v.start, v.end, v.flags))
                .collect();
            for (start, end, flags) in mine {
                if flags.contains(VmFlags::UFFD_WP) {
                    super::wp::clear_range(&mm, start, end);
                }
                if flags.contains(VmFlags::UFFD_RWP) {
                    super::rwp::resolve_range(&mm, flags, start, end);
                }
                for vma in guard.vmas_mut().split_range_mut(start, end) {
                    vma.flags.remove(UFFD_VM_FLAGS);
                    vma.uffd = None;
                }
                guard.vmas_mut().merge_range(start, end);
            }
        }
        let mut state = self.ctx.lock();
        state.released = true;
        for waiter in state.waiting.drain(..) {
            waiter.probe.set(false);
        }
        self.ctx.faults.notify_all();
    }
}
