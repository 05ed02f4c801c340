//! The invalidation vocabulary: what a CPU-side change announces before and
//! after it removes or downgrades mappings.
//!
//! Linux: `enum mmu_notifier_event`, `struct mmu_notifier_range`,
//! `struct mmu_notifier_ops` (`invalidate_range_start`/`_end`).

use crate::Errno;

/// Identity of an address space (`struct mm_struct *` in Linux).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct MmId(pub u64);

/// Opaque owner identity carried by MIGRATE and EXCLUSIVE invalidations
/// (`pgmap->owner`, `void *owner` in Linux).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Owner(pub u64);

/// Why mappings are being invalidated (`enum mmu_notifier_event`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Event {
    /// `MMU_NOTIFY_UNMAP`: munmap or mremap; the range will not come back.
    Unmap = 0,
    /// `MMU_NOTIFY_CLEAR`: entries cleared for another reason (madvise,
    /// reclaim, truncate, THP split, COW replacement).
    Clear = 1,
    /// `MMU_NOTIFY_PROTECTION_VMA`: mprotect of the whole VMA range.
    ProtectionVma = 2,
    /// `MMU_NOTIFY_PROTECTION_PAGE`: per-page write-protect (fork's COW).
    ProtectionPage = 3,
    /// `MMU_NOTIFY_SOFT_DIRTY`: soft-dirty clearing.
    SoftDirty = 4,
    /// `MMU_NOTIFY_RELEASE`: the address space is being torn down.
    Release = 5,
    /// `MMU_NOTIFY_MIGRATE`: device migration; carries the pgmap owner.
    Migrate = 6,
    /// `MMU_NOTIFY_EXCLUSIVE`: device-exclusive conversion; carries the owner.
    Exclusive = 7,
}

impl Event {
    /// Linux's name for the event.
    pub const fn kernel_name(self) -> &'static str {
        match self {
            Self::Unmap => "MMU_NOTIFY_UNMAP",
            Self::Clear => "MMU_NOTIFY_CLEAR",
            Self::ProtectionVma => "MMU_NOTIFY_PROTECTION_VMA",
            Self::ProtectionPage => "MMU_NOTIFY_PROTECTION_PAGE",
            Self::SoftDirty => "MMU_NOTIFY_SOFT_DIRTY",
            Self::Release => "MMU_NOTIFY_RELEASE",
            Self::Migrate => "MMU_NOTIFY_MIGRATE",
            Self::Exclusive => "MMU_NOTIFY_EXCLUSIVE",
        }
    }
}

/// What an invalidation callback receives (`struct mmu_notifier_range`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NotifierRange {
    /// The address space being changed.
    pub mm: MmId,
    /// First address, inclusive.
    pub start: u64,
    /// Last address, exclusive (`u64::MAX` for RELEASE).
    pub end: u64,
    /// Why.
    pub event: Event,
    /// Owner for MIGRATE and EXCLUSIVE, `None` otherwise.
    pub owner: Option<Owner>,
    /// `MMU_NOTIFIER_RANGE_BLOCKABLE`: the callback may sleep.
    pub blockable: bool,
}

impl NotifierRange {
    /// A blockable range with no owner, the common case.
    pub const fn new(mm: MmId, start: u64, end: u64, event: Event) -> Self {
        Self { mm, start, end, event, owner: None, blockable: true }
    }
    /// The same range with an owner.
    pub const fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }
}

/// A subscriber to an address space's invalidations (the classic
/// `struct mmu_notifier_ops`). The interval-notifier registry of the HMM core
/// is one such subscriber; tests use a recording one.
///
/// Callbacks run synchronously on the thread making the change, possibly with
/// the mmap lock held and possibly without it: they must not take the mmap
/// lock of the same address space.
pub trait MmuNotifier: Send + Sync {
    /// Called before mappings in the range are removed or downgraded. A
    /// non-blockable range may be refused with `EAGAIN`; a blockable one must
    /// succeed.
    fn invalidate_range_start(&self, range: &NotifierRange) -> Result<(), Errno>;
    /// Called after the change is complete, before any frame is freed.
    fn invalidate_range_end(&self, range: &NotifierRange);
    /// The address space is gone (after the RELEASE invalidation).
    fn release(&self, _mm: MmId) {}
}
