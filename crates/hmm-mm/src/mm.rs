//! An address space (`struct mm_struct`): VMA tree under the mmap lock, the
//! CPU page table, the invalidation subscribers and the user count.
//!
//! Owns the lock discipline. The VMA tree lives *inside* the mmap lock, so a
//! [`MmapReadGuard`] or [`MmapWriteGuard`] is the only way to see it, and
//! functions that need the lock held take a guard. Page-table entries are
//! atomics changed under the read lock by compare-and-swap (faults, zaps,
//! COW); page-table *pages* are freed only under the write lock, which is
//! what makes lock-free walks under the read lock safe.
//!
//! Linux: `struct mm_struct`, `mmap_read_lock`, `mmap_write_lock`,
//! `mmget_not_zero`, `mmput`.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hmm_notifier::{IntervalNotifier, IntervalNotifierOps};
use hmm_pagetable::PageTable;
use hmm_types::{MmId, MmuNotifier};

use crate::error::MmError;
use crate::kernel::Kernel;
use crate::notify::NotifierChain;
use crate::phys::PhysMem;
use crate::vma::{Vma, VmaTree};

/// The CPU page table of an address space: tables are frames of RAM.
pub type CpuPageTable = PageTable<Arc<PhysMem>>;

/// An address space.
pub struct Mm {
    id: MmId,
    this: Weak<Mm>,
    kernel: Arc<Kernel>,
    mmap_lock: RwLock<VmaTree>,
    pgtable: CpuPageTable,
    notifiers: NotifierChain,
    users: AtomicU32,
    exited: AtomicBool,
    /// Migrations of this address space's pages between unmap and restore
    /// (see `crate::migrate`): while zero, no migration entry exists.
    migrating: AtomicU32,
    /// Fatal signal and OOM-reaper state (`crate::signal`).
    signals: crate::signal::Signals,
    /// A pin was ever taken here (`MMF_HAS_PINNED`, never cleared): fork
    /// then copies maybe-pinned anonymous pages for the child.
    pub(crate) has_pinned: AtomicBool,
}

impl core::fmt::Debug for Mm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mm").field("id", &self.id).field("users", &self.users).finish_non_exhaustive()
    }
}

impl Mm {
    pub(crate) fn new(kernel: Arc<Kernel>) -> Result<Arc<Self>, MmError> {
        let pgtable = PageTable::new(kernel.phys().clone())?;
        let id = kernel.next_mm_id();
        let mm = Arc::new_cyclic(|this| Self {
            this: this.clone(),
            id,
            kernel,
            mmap_lock: RwLock::new(VmaTree::default()),
            pgtable,
            notifiers: NotifierChain::new(id),
            users: AtomicU32::new(1),
            exited: AtomicBool::new(false),
            migrating: AtomicU32::new(0),
            signals: crate::signal::Signals::default(),
            has_pinned: AtomicBool::new(false),
        });
        mm.kernel.register_mm(&mm);
        Ok(mm)
    }

    /// Identity of the address space.
    pub fn id(&self) -> MmId {
        self.id
    }
    /// A weak reference to this address space (for reverse maps).
    pub(crate) fn weak(&self) -> Weak<Mm> {
        self.this.clone()
    }
    /// The machine it lives on.
    pub fn kernel(&self) -> &Arc<Kernel> {
        &self.kernel
    }
    /// Physical memory.
    pub fn phys(&self) -> &Arc<PhysMem> {
        self.kernel.phys()
    }
    /// The CPU page table. Walking it needs the mmap lock (read is enough).
    pub fn pgtable(&self) -> &CpuPageTable {
        &self.pgtable
    }
    /// The level and entry of the CPU page-table slot that maps `va` now:
    /// the leaf (4K, 2M or 1G), or the empty slot where the walk stopped.
    /// Takes the mmap lock for reading; the answer may be stale as soon as
    /// it returns (what `/proc/<pid>/pagemap` and `follow_pte` show).
    pub fn leaf_at(&self, va: u64) -> (hmm_pagetable::Level, hmm_pagetable::Entry) {
        let _guard = self.mmap_read();
        let slot = self.pgtable.find(va);
        (slot.level(), slot.load())
    }
    /// The invalidation subscribers.
    pub fn notifiers(&self) -> &NotifierChain {
        &self.notifiers
    }
    /// Subscribes `ops` to invalidations of `[start, start + length)`
    /// (`mmu_interval_notifier_insert`): `EINVAL` once the address space is
    /// exiting, `EOVERFLOW` for an empty or wrapping interval.
    pub fn interval_notifier_insert(
        &self,
        start: u64,
        length: u64,
        ops: Arc<dyn IntervalNotifierOps>,
    ) -> Result<Arc<IntervalNotifier>, hmm_types::Errno> {
        if self.users() == 0 || self.has_exited() {
            return Err(hmm_types::Errno::Inval);
        }
        self.notifiers.intervals().insert(start, length, ops)
    }
    /// Subscribes to this address space's invalidations.
    pub fn register_notifier(&self, subscriber: Arc<dyn MmuNotifier>) {
        self.notifiers.register(subscriber);
    }
    /// Takes the mmap lock for reading.
    pub fn mmap_read(&self) -> MmapReadGuard<'_> {
        MmapReadGuard { mm: self, vmas: self.mmap_lock.read() }
    }
    /// `mmap_read_lock_killable`: takes the lock for reading, or gives up
    /// (`None`) if a fatal signal is pending while it has to wait. An
    /// uncontended lock is taken even with a signal pending, as Linux's
    /// fast path does. A signal cannot wake a parked waiter, so the
    /// contended path re-checks every millisecond.
    pub fn mmap_read_killable(&self) -> Option<MmapReadGuard<'_>> {
        loop {
            if let Some(vmas) = self.mmap_lock.try_read_for(std::time::Duration::from_millis(1)) {
                return Some(MmapReadGuard { mm: self, vmas });
            }
            if self.fatal_signal_pending() {
                return None;
            }
        }
    }
    /// Takes the mmap lock for reading even when a writer is queued, as
    /// long as another reader holds it (`RwLock::read_recursive`). Only the
    /// migrator uses it, to restore entries that readers are waiting on
    /// while a writer waits behind them (see `crate::migrate`).
    pub(crate) fn mmap_read_recursive(&self) -> MmapReadGuard<'_> {
        MmapReadGuard { mm: self, vmas: self.mmap_lock.read_recursive() }
    }
    /// Fatal signal and OOM-reaper state.
    pub(crate) fn signals(&self) -> &crate::signal::Signals {
        &self.signals
    }
    /// Migrations in flight in this address space.
    pub(crate) fn migrating(&self) -> &AtomicU32 {
        &self.migrating
    }
    /// Takes the mmap lock for writing.
    pub fn mmap_write(&self) -> MmapWriteGuard<'_> {
        MmapWriteGuard { mm: self, vmas: self.mmap_lock.write() }
    }
    /// Takes the mmap lock for writing if no one holds it
    /// (`mmap_write_trylock`).
    pub(crate) fn mmap_write_try(&self) -> Option<MmapWriteGuard<'_>> {
        self.mmap_lock.try_write().map(|vmas| MmapWriteGuard { mm: self, vmas })
    }
    /// True once the last user left and the address space was torn down.
    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }
    /// Current users (`mm_users`).
    pub fn users(&self) -> u32 {
        self.users.load(Ordering::Acquire)
    }
    /// Takes a user reference unless the address space is already exiting
    /// (`mmget_not_zero`). Devices do this before touching the mm.
    pub fn mmget_not_zero(self: &Arc<Self>) -> Option<MmUser> {
        let mut current = self.users.load(Ordering::Acquire);
        loop {
            if current == 0 {
                return None;
            }
            match self.users.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(MmUser { mm: self.clone() }),
                Err(now) => current = now,
            }
        }
    }
    /// The process exits: drops its own user reference (`mmput`); the last
    /// user tears the address space down.
    pub fn exit(self: &Arc<Self>) {
        self.mmput();
    }
    fn mmput(&self) {
        if self.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.exit_mmap();
        }
    }
    pub(crate) fn mark_exited(&self) {
        self.exited.store(true, Ordering::Release);
    }
    pub(crate) fn check_alive(&self) -> Result<(), MmError> {
        if self.has_exited() {
            Err(MmError::Exited)
        } else {
            Ok(())
        }
    }
}

impl Drop for Mm {
    fn drop(&mut self) {
        // An address space dropped without exit (a test, a failed fork)
        // still returns its frames.
        if !self.has_exited() {
            self.exit_mmap();
        }
    }
}

/// A user reference (`mmget`); dropping it is `mmput`.
#[derive(Debug)]
pub struct MmUser {
    mm: Arc<Mm>,
}

impl core::ops::Deref for MmUser {
    type Target = Arc<Mm>;
    fn deref(&self) -> &Arc<Mm> {
        &self.mm
    }
}

impl Drop for MmUser {
    fn drop(&mut self) {
        self.mm.mmput();
    }
}

/// Proof that the mmap lock of `mm` is held (for reading or writing): the
/// address space and its VMA tree, as the device-memory callbacks get it.
#[derive(Clone, Copy, Debug)]
pub struct MmapLocked<'a> {
    pub(crate) mm: &'a Mm,
    pub(crate) vmas: &'a VmaTree,
}

impl<'a> MmapLocked<'a> {
    /// The locked address space.
    pub fn mm(&self) -> &'a Mm {
        self.mm
    }
    /// Its VMAs.
    pub fn vmas(&self) -> &'a VmaTree {
        self.vmas
    }
}

/// The mmap lock held for reading; derefs to the VMA tree.
pub struct MmapReadGuard<'a> {
    mm: &'a Mm,
    vmas: RwLockReadGuard<'a, VmaTree>,
}

/// The mmap lock held for writing; derefs to the VMA tree.
pub struct MmapWriteGuard<'a> {
    mm: &'a Mm,
    vmas: RwLockWriteGuard<'a, VmaTree>,
}

impl<'a> MmapReadGuard<'a> {
    /// The locked address space.
    pub fn mm(&self) -> &'a Mm {
        self.mm
    }
    /// The proof of the lock, for APIs shared with fault context.
    pub fn locked(&self) -> MmapLocked<'_> {
        MmapLocked { mm: self.mm, vmas: &self.vmas }
    }
    /// The VMA containing `va` (`vma_lookup`); the borrow ends with the lock.
    pub fn vma(&self, va: u64) -> Option<&Vma> {
        self.vmas.lookup(va)
    }
    /// Runs `f` with the lock released, then takes it again: how a fault
    /// handler sleeps without the mmap lock (`VM_FAULT_RETRY`). The `&mut`
    /// borrow proves no VMA reference survives the gap.
    pub(crate) fn unlocked<U>(&mut self, f: impl FnOnce() -> U) -> U {
        RwLockReadGuard::unlocked(&mut self.vmas, f)
    }
}

impl<'a> MmapWriteGuard<'a> {
    /// The locked address space.
    pub fn mm(&self) -> &'a Mm {
        self.mm
    }
    /// The VMA tree, mutable.
    pub(crate) fn vmas_mut(&mut self) -> &mut VmaTree {
        &mut self.vmas
    }
}

impl core::ops::Deref for MmapReadGuard<'_> {
    type Target = VmaTree;
    fn deref(&self) -> &VmaTree {
        &self.vmas
    }
}

impl core::ops::Deref for MmapWriteGuard<'_> {
    type Target = VmaTree;
    fn deref(&self) -> &VmaTree {
        &self.vmas
    }
}

impl core::fmt::Debug for MmapReadGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MmapReadGuard").field("mm", &self.mm.id).finish()
    }
}

impl core::fmt::Debug for MmapWriteGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MmapWriteGuard").field("mm", &self.mm.id).finish()
    }
}
