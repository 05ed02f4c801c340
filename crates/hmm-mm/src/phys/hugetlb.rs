//! The hugetlbfs pools: huge pages (2 MiB and 1 GiB) set aside from RAM at
//! boot, handed out whole, and returned to the pool (not to the buddy
//! allocator) when their last reference goes. Mappings reserve pages at
//! mmap time so a later fault cannot fail for lack of them.
//!
//! Linux: `mm/hugetlb.c` (`hstate`, `alloc_hugetlb_folio`,
//! `hugetlb_reserve_pages`, `free_huge_folio`).

use parking_lot::Mutex;

use hmm_types::{PageSize, Pfn};

use super::{OutOfMemory, PageFlags, PhysMem};

/// One size's pool (`struct hstate`).
#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: Vec<Pfn>,
    total: u64,
    reserved: u64,
}

/// Counters of one pool.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct HugetlbStats {
    /// Pages in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages not in use (`free_hugepages`).
    pub free: u64,
    /// Free pages promised to mappings (`resv_hugepages`).
    pub reserved: u64,
}

pub(crate) fn index(size: PageSize) -> usize {
    match size {
        PageSize::Size1G => 1,
        _ => 0,
    }
}

impl PhysMem {
    fn pool(&self, size: PageSize) -> &Mutex<Pool> {
        &self.hugetlb[index(size)]
    }

    /// Moves `count` huge pages of `size` from the allocator into the pool
    /// (`echo N > nr_hugepages`); fails with nothing moved.
    pub fn hugetlb_grow(&self, size: PageSize, count: u64) -> Result<(), OutOfMemory> {
        let mut taken = Vec::new();
        for _ in 0..count {
            match self.alloc_folio(size.order(), false) {
                Ok(head) => taken.push(head),
                Err(error) => {
                    taken.into_iter().for_each(|head| self.put(head));
                    return Err(error);
                }
            }
        }
        let mut pool = self.pool(size).lock();
        for head in taken {
            self.meta(head).set_flags(PageFlags::HUGETLB);
            self.meta(head).refcount.store(0, core::sync::atomic::Ordering::Release);
            pool.free.push(head);
        }
        pool.total += count;
        Ok(())
    }

    /// Promises `count` free pages to a mapping; `ENOMEM`-kind failure if
    /// the pool cannot keep the promise.
    pub fn hugetlb_reserve(&self, size: PageSize, count: u64) -> Result<(), OutOfMemory> {
        let mut pool = self.pool(size).lock();
        if (pool.free.len() as u64) < pool.reserved + count {
            return Err(OutOfMemory { order: size.order() });
        }
        pool.reserved += count;
        Ok(())
    }

    /// Returns an unused promise.
    pub fn hugetlb_unreserve(&self, size: PageSize, count: u64) {
        let mut pool = self.pool(size).lock();
        pool.reserved -= count.min(pool.reserved);
    }

    /// A zeroed huge page with one reference, from a reservation or from the
    /// unreserved surplus.
    pub fn hugetlb_alloc(&self, size: PageSize, reserved: bool) -> Result<Pfn, OutOfMemory> {
        let head = {
            let mut pool = self.pool(size).lock();
            if !reserved && pool.free.len() as u64 <= pool.reserved {
                return Err(OutOfMemory { order: size.order() });
            }
            let head = pool.free.pop().ok_or(OutOfMemory { order: size.order() })?;
            if reserved {
                pool.reserved -= 1;
            }
            head
        };
        self.zero_frames(head, size.nr_pages());
        let meta = self.meta(head);
        meta.mapcount.store(0, core::sync::atomic::Ordering::Relaxed);
        meta.refcount.store(1, core::sync::atomic::Ordering::Release);
        Ok(head)
    }

    /// The pool's counters.
    pub fn hugetlb_stats(&self, size: PageSize) -> HugetlbStats {
        let pool = self.pool(size).lock();
        HugetlbStats { total: pool.total, free: pool.free.len() as u64, reserved: pool.reserved }
    }

    pub(crate) fn hugetlb_free(&self, head: Pfn) {
        let size = PageSize::from_order(self.meta(head).order()).unwrap_or(PageSize::Size2M);
        self.pool(size).lock().free.push(head);
    }
}
