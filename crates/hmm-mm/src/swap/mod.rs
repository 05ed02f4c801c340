//! The swap area: where private anonymous pages go under memory pressure.
//!
//! Owns the slots of the one swap device of a [`crate::Kernel`]: each slot
//! holds a 4 KiB copy of a page and a use count, one per page-table entry
//! that names it (`swap_map`), so a fork shares a slot and the slot is freed
//! when its last entry goes. Slots are allocated lazily: memory grows with
//! the number of slots in use, never beyond `KernelConfig::swap_pages`.
//! There is no swap cache: a page is copied into its slot before its entry
//! becomes a swap entry, and swap-in copies the slot into a fresh frame.
//!
//! Swap-out lives in `reclaim.rs` (MADV_PAGEOUT, [`crate::Kernel::reclaim`]),
//! swap-in in `fault/swap.rs`; zap, fork and MADV_FREE drop or duplicate
//! counts through this module.
//!
//! Lock order: the swap area lock is taken after the mmap lock (of any
//! address space) and is innermost: nothing else is locked, no frame is
//! allocated and no notifier is called while it is held. Page-table entries
//! are compare-and-swapped under it (swap-in), which is what makes the
//! slot's data and the entry naming it agree: a slot can only be freed and
//! reused under this lock.
//!
//! Linux: `mm/swapfile.c` (`swap_info_struct`, `swap_map`,
//! `folio_alloc_swap`, `swap_duplicate`, `swap_free`,
//! `free_swap_and_cache`), `mm/page_io.c` (`swap_writepage`,
//! `swap_read_folio`).

mod reclaim;
#[cfg(test)]
mod tests;

use core::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use hmm_types::PAGE_SIZE;

pub(crate) use reclaim::{pageout_range, Scope};

/// The largest number of slots an entry's offset field can name.
pub const MAX_SWAP_PAGES: u64 = 1 << 40;

/// One slot: its use count and, once written, its data.
#[derive(Debug, Default)]
struct SwapSlot {
    count: u32,
    data: Option<Box<[u8]>>,
}

/// The slots, guarded by the swap area lock.
#[derive(Debug, Default)]
pub(crate) struct SwapSlots {
    slots: Vec<SwapSlot>,
    free: Vec<u64>,
    capacity: u64,
    used: u64,
}

/// A swap device of a fixed number of 4 KiB slots.
#[derive(Debug)]
pub struct SwapArea {
    inner: Mutex<SwapSlots>,
    swapped_out: AtomicU64,
    swapped_in: AtomicU64,
}

impl SwapArea {
    /// A swap area of `nr_slots` slots; 0 is a machine without swap.
    pub(crate) fn new(nr_slots: u64) -> Self {
        Self {
            inner: Mutex::new(SwapSlots { capacity: nr_slots, ..SwapSlots::default() }),
            swapped_out: AtomicU64::new(0),
            swapped_in: AtomicU64::new(0),
        }
    }

    /// Pages written to swap so far (`pswpout`).
    pub fn swapped_out(&self) -> u64 {
        self.swapped_out.load(Ordering::Relaxed)
    }

    /// Pages read back from swap so far (`pswpin`).
    pub fn swapped_in(&self) -> u64 {
        self.swapped_in.load(Ordering::Relaxed)
    }

    pub(crate) fn count_out(&self) {
        self.swapped_out.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_in(&self) {
        self.swapped_in.fetch_add(1, Ordering::Relaxed);
    }

    /// Slots in total (`SwapTotal` in pages).
    pub fn total_slots(&self) -> u64 {
        self.inner.lock().capacity
    }

    /// Slots in use.
    pub fn used_slots(&self) -> u64 {
        self.inner.lock().used
    }

    /// Free slots (`SwapFree` in pages).
    pub fn free_slots(&self) -> u64 {
        let slots = self.inner.lock();
        slots.capacity - slots.used
    }

    /// Use count of `slot` (`swap_count`): 0 for a free slot.
    pub fn slot_count(&self, slot: u64) -> u32 {
        self.inner.lock().count(slot)
    }

    /// Takes the swap area lock (see the module documentation for the order).
    pub(crate) fn lock(&self) -> MutexGuard<'_, SwapSlots> {
        self.inner.lock()
    }

    /// Reserves a free slot with a count of one and no data yet
    /// (`folio_alloc_swap`); `None` when the area is full or absent.
    pub(crate) fn reserve(&self) -> Option<u64> {
        self.inner.lock().reserve()
    }

    /// Writes a page's copy into a reserved slot (`swap_writepage`),
    /// replacing what an earlier attempt wrote.
    pub(crate) fn write(&self, slot: u64, data: Box<[u8]>) {
        debug_assert_eq!(data.len() as u64, PAGE_SIZE);
        let mut slots = self.inner.lock();
        let entry = &mut slots.slots[slot as usize];
        debug_assert!(entry.count > 0, "writing slot {slot} that is not reserved");
        entry.data = Some(data);
    }

    /// One more entry names `slot` (`swap_duplicate`, for fork).
    pub(crate) fn dup(&self, slot: u64) {
        let mut slots = self.inner.lock();
        let entry = &mut slots.slots[slot as usize];
        assert!(entry.count > 0, "duplicating free swap slot {slot}");
        entry.count += 1;
    }

    /// One entry naming `slot` is gone (`swap_free`); the last frees it.
    pub(crate) fn put(&self, slot: u64) {
        self.inner.lock().put(slot);
    }
}

impl SwapSlots {
    fn reserve(&mut self) -> Option<u64> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if (self.slots.len() as u64) < self.capacity => {
                self.slots.push(SwapSlot::default());
                self.slots.len() as u64 - 1
            }
            None => return None,
        };
        self.slots[slot as usize].count = 1;
        self.used += 1;
        Some(slot)
    }

    /// Use count of `slot`.
    pub(crate) fn count(&self, slot: u64) -> u32 {
        self.slots.get(slot as usize).map_or(0, |s| s.count)
    }

    /// The page copy held by `slot`, if it was written.
    pub(crate) fn data(&self, slot: u64) -> Option<&[u8]> {
        self.slots.get(slot as usize).and_then(|s| s.data.as_deref())
    }

    /// Drops one use of `slot`, freeing it at zero.
    pub(crate) fn put(&mut self, slot: u64) {
        let entry = &mut self.slots[slot as usize];
        assert!(entry.count > 0, "swap slot {slot} count underflow");
        entry.count -= 1;
        if entry.count == 0 {
            entry.data = None;
            self.free.push(slot);
            self.used -= 1;
        }
    }
}
