//! Protection, mapping and VMA flags with Linux's bit values, so numbers seen
//! in a kernel trace read the same here.
//!
//! Linux: `include/uapi/asm-generic/mman*.h`, `include/linux/mm.h` (`VM_*`).

use bitflags::bitflags;

use crate::Errno;

bitflags! {
    /// `PROT_*` for mmap and mprotect.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct Prot: u32 {
        /// Pages may be read.
        const READ = 0x1;
        /// Pages may be written.
        const WRITE = 0x2;
        /// Pages may be executed.
        const EXEC = 0x4;
        /// `PROT_SEM`: the memory may hold atomics. Accepted on x86 (and
        /// every architecture using the generic `arch_validate_prot`), with
        /// no effect on the mapping.
        const SEM = 0x8;
    }
}

impl Prot {
    /// `PROT_NONE`.
    pub const NONE: Self = Self::empty();
    /// `PROT_READ | PROT_WRITE`.
    pub const RW: Self = Self::READ.union(Self::WRITE);

    /// Parses raw `PROT_*` bits for mprotect: unknown bits are `EINVAL`
    /// (`arch_validate_prot`; `PROT_SEM` is valid).
    pub fn from_raw(bits: u32) -> Result<Self, Errno> {
        Self::from_bits(bits).ok_or(Errno::Inval)
    }
    /// Parses raw `PROT_*` bits for mmap, which validates none: unknown bits
    /// are ignored (`calc_vm_prot_bits` keeps only what it knows).
    pub fn from_mmap_raw(bits: u32) -> Self {
        Self::from_bits_truncate(bits)
    }
}

bitflags! {
    /// `MAP_*` for mmap.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct MapFlags: u32 {
        /// Share the mapping.
        const SHARED = 0x01;
        /// Private copy-on-write mapping.
        const PRIVATE = 0x02;
        /// Place exactly at the address, replacing what is there.
        const FIXED = 0x10;
        /// Not backed by a file.
        const ANONYMOUS = 0x20;
        /// Do not reserve swap.
        const NORESERVE = 0x4000;
        /// Prefault the mapping.
        const POPULATE = 0x8000;
        /// Back with hugetlbfs pages.
        const HUGETLB = 0x40000;
        /// Synchronous page faults (DAX); needs `SHARED_VALIDATE`.
        const SYNC = 0x80000;
        /// Like FIXED but fail with EEXIST instead of replacing.
        const FIXED_NOREPLACE = 0x100000;
        /// hugetlb page size 2 MiB (`21 << MAP_HUGE_SHIFT`).
        const HUGE_2MB = 21 << 26;
        /// hugetlb page size 1 GiB (`30 << MAP_HUGE_SHIFT`).
        const HUGE_1GB = 30 << 26;
    }
}

impl MapFlags {
    /// `MAP_SHARED_VALIDATE`: shared, and unknown flags are an error.
    pub const SHARED_VALIDATE: Self = Self::SHARED.union(Self::PRIVATE);

    /// The sharing type, the part of the flags Linux masks with `MAP_TYPE`
    /// (0xf: a stray 0x4 makes an invalid type, not a private mapping).
    pub fn map_type(self) -> u32 {
        self.bits() & 0xf
    }
    /// The flags `MAP_SHARED_VALIDATE` accepts on any file
    /// (`LEGACY_MAP_MASK`: the model's known ones plus `MAP_DENYWRITE`,
    /// `MAP_EXECUTABLE`, `MAP_UNINITIALIZED`, `MAP_GROWSDOWN`, `MAP_LOCKED`,
    /// `MAP_NONBLOCK`, `MAP_STACK`). `MAP_SYNC`, `MAP_FIXED_NOREPLACE` and
    /// the `MAP_HUGE_*` size bits are not in it.
    pub const LEGACY_MASK: Self = Self::from_bits_retain(
        0x01 | 0x02
            | 0x10
            | 0x20
            | 0x800
            | 0x1000
            | 0x400_0000
            | 0x100
            | 0x2000
            | 0x4000
            | 0x8000
            | 0x1_0000
            | 0x2_0000
            | 0x4_0000,
    );

    /// Takes raw `MAP_*` bits as they are, unknown ones kept: Linux ignores
    /// them, except that a file mapped `MAP_SHARED_VALIDATE` refuses them
    /// (`EOPNOTSUPP`), which `mmap` checks in its own order.
    pub fn from_raw(bits: u32) -> Self {
        Self::from_bits_retain(bits)
    }
}

bitflags! {
    /// `MREMAP_*`.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct MremapFlags: u32 {
        /// The mapping may move.
        const MAYMOVE = 1;
        /// Move to the given new address (needs MAYMOVE).
        const FIXED = 2;
        /// Leave the old range mapped but empty (needs MAYMOVE).
        const DONTUNMAP = 4;
    }
}

bitflags! {
    /// `VM_*` flags of a VMA, with Linux's values.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct VmFlags: u64 {
        /// Readable now.
        const READ = 0x1;
        /// Writable now.
        const WRITE = 0x2;
        /// Executable now.
        const EXEC = 0x4;
        /// Shared mapping.
        const SHARED = 0x8;
        /// May become readable.
        const MAYREAD = 0x10;
        /// May become writable.
        const MAYWRITE = 0x20;
        /// May become executable.
        const MAYEXEC = 0x40;
        /// May be shared.
        const MAYSHARE = 0x80;
        /// Stack-like, grows down.
        const GROWSDOWN = 0x100;
        /// userfaultfd missing-page tracking.
        const UFFD_MISSING = 0x200;
        /// Pure pfn mapping, no `struct page` semantics.
        const PFNMAP = 0x400;
        /// May hold guard markers (`VM_MAYBE_GUARD`, Linux 6.19+): set by
        /// MADV_GUARD_INSTALL and never cleared. Sticky: merging ignores it
        /// and the merged VMA keeps it; fork copies the page tables of a
        /// VMA carrying it.
        const MAYBE_GUARD = 0x800;
        /// Pages locked in memory (`VM_LOCKED`, mlock).
        const LOCKED = 0x2000;
        /// userfaultfd write-protect tracking.
        const UFFD_WP = 0x1000;
        /// Memory-mapped I/O.
        const IO = 0x4000;
        /// Not copied on fork.
        const DONTCOPY = 0x20000;
        /// Cannot be expanded by mremap.
        const DONTEXPAND = 0x40000;
        /// Accounted memory.
        const ACCOUNT = 0x100000;
        /// No swap reservation.
        const NORESERVE = 0x200000;
        /// hugetlbfs mapping.
        const HUGETLB = 0x400000;
        /// Synchronous page faults (MAP_SYNC on DAX).
        const SYNC = 0x800000;
        /// Zeroed in the child on fork.
        const WIPEONFORK = 0x2000000;
        /// Mixed pfn and page mapping.
        const MIXEDMAP = 0x10000000;
        /// madvise(MADV_HUGEPAGE).
        const HUGEPAGE = 0x20000000;
        /// madvise(MADV_NOHUGEPAGE).
        const NOHUGEPAGE = 0x40000000;
        /// Sealed by mseal(2) (`VM_SEALED`, bit 63 on 64-bit): the VMA may
        /// not be unmapped, moved, resized or reprotected, nor (anonymous
        /// and read-only) discarded by madvise.
        const SEALED = 1 << 63;
        /// userfaultfd minor-fault tracking (bit 41).
        const UFFD_MINOR = 1 << 41;
        /// userfaultfd read-write-protect tracking (`VM_UFFD_RWP`, Linux
        /// 7.3; the model's bit, Linux's number is not relied on).
        const UFFD_RWP = 1 << 42;
    }
}

impl VmFlags {
    /// The flags Linux groups as `VM_SPECIAL`.
    pub const SPECIAL: Self = Self::IO.union(Self::DONTEXPAND).union(Self::PFNMAP).union(Self::MIXEDMAP);
    /// Flags that do not stop two VMAs from merging and that the merged
    /// VMA keeps if either had them (`VM_STICKY`, within `VM_IGNORE_MERGE`).
    pub const STICKY: Self = Self::MAYBE_GUARD;

    /// The current-access bits for a protection.
    pub fn from_prot(prot: Prot) -> Self {
        let mut flags = Self::empty();
        flags.set(Self::READ, prot.contains(Prot::READ));
        flags.set(Self::WRITE, prot.contains(Prot::WRITE));
        flags.set(Self::EXEC, prot.contains(Prot::EXEC));
        flags
    }
    /// The protection these flags grant now.
    pub fn prot(self) -> Prot {
        let mut prot = Prot::empty();
        prot.set(Prot::READ, self.contains(Self::READ));
        prot.set(Prot::WRITE, self.contains(Self::WRITE));
        prot.set(Prot::EXEC, self.contains(Self::EXEC));
        prot
    }
    /// True for a `MAP_SHARED` mapping.
    pub fn is_shared(self) -> bool {
        self.contains(Self::SHARED)
    }
}

/// `MADV_*` advice values, with Linux's numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MadviseAdvice {
    /// `MADV_DONTNEED` (4): zap; anonymous memory reads back as zero.
    DontNeed,
    /// `MADV_FREE` (8): lazily free clean anonymous pages.
    Free,
    /// `MADV_REMOVE` (9): punch a hole in the file behind a shared
    /// writable mapping (`vfs_fallocate` with `FALLOC_FL_PUNCH_HOLE`).
    Remove,
    /// `MADV_DONTFORK` (10).
    DontFork,
    /// `MADV_DOFORK` (11).
    DoFork,
    /// `MADV_WIPEONFORK` (18): the child gets this range empty.
    WipeOnFork,
    /// `MADV_KEEPONFORK` (19): undo WIPEONFORK.
    KeepOnFork,
    /// `MADV_HUGEPAGE` (14).
    HugePage,
    /// `MADV_NOHUGEPAGE` (15).
    NoHugePage,
    /// `MADV_PAGEOUT` (21): reclaim now.
    PageOut,
    /// `MADV_POPULATE_READ` (22).
    PopulateRead,
    /// `MADV_POPULATE_WRITE` (23).
    PopulateWrite,
    /// `MADV_COLLAPSE` (25): synchronous THP collapse.
    Collapse,
    /// `MADV_GUARD_INSTALL` (102): make every page of the range a guard
    /// page (any access faults), discarding what was mapped there.
    GuardInstall,
    /// `MADV_GUARD_REMOVE` (103): remove guard markers; the pages are empty.
    GuardRemove,
}

impl MadviseAdvice {
    /// Every advice the model knows.
    pub const ALL: [Self; 15] = [
        Self::DontNeed,
        Self::Free,
        Self::Remove,
        Self::DontFork,
        Self::DoFork,
        Self::WipeOnFork,
        Self::KeepOnFork,
        Self::HugePage,
        Self::NoHugePage,
        Self::PageOut,
        Self::PopulateRead,
        Self::PopulateWrite,
        Self::Collapse,
        Self::GuardInstall,
        Self::GuardRemove,
    ];

    /// Parses a raw `MADV_*` number; unknown values are `EINVAL`.
    pub fn from_raw(value: u32) -> Result<Self, Errno> {
        Ok(match value {
            4 => Self::DontNeed,
            8 => Self::Free,
            9 => Self::Remove,
            10 => Self::DontFork,
            11 => Self::DoFork,
            14 => Self::HugePage,
            18 => Self::WipeOnFork,
            19 => Self::KeepOnFork,
            15 => Self::NoHugePage,
            21 => Self::PageOut,
            22 => Self::PopulateRead,
            23 => Self::PopulateWrite,
            25 => Self::Collapse,
            102 => Self::GuardInstall,
            103 => Self::GuardRemove,
            _ => return Err(Errno::Inval),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_flags_validate_only_with_shared_validate() {
        // Unknown bits are kept for mmap to judge; the legacy mask holds
        // neither MAP_SYNC nor MAP_FIXED_NOREPLACE.
        assert_eq!(MapFlags::from_raw(0x3 | 0x400).bits(), 0x403);
        assert_eq!(MapFlags::from_raw(0x3 | 0x80000).map_type(), 3);
        assert!(!MapFlags::LEGACY_MASK.intersects(MapFlags::SYNC | MapFlags::FIXED_NOREPLACE));
        // MAP_UNINITIALIZED (1 << 26) shares a bit with the size field.
        assert!(!MapFlags::LEGACY_MASK.contains(MapFlags::HUGE_2MB));
        assert!(MapFlags::LEGACY_MASK.contains(MapFlags::HUGETLB | MapFlags::POPULATE | MapFlags::NORESERVE));
    }

    #[test]
    fn prot_round_trips_through_vm_flags() {
        let prot = Prot::READ | Prot::WRITE;
        assert_eq!(VmFlags::from_prot(prot).prot(), prot);
        // PROT_SEM is valid on x86 (mprotect(p, n, PROT_SEM) succeeds);
        // 0x10 is not.
        assert_eq!(Prot::from_raw(8), Ok(Prot::SEM));
        assert_eq!(Prot::from_raw(0x10), Err(Errno::Inval));
        assert_eq!(VmFlags::from_prot(Prot::SEM | Prot::READ).prot(), Prot::READ);
        assert_eq!(Prot::from_mmap_raw(0x13), Prot::READ | Prot::WRITE);
    }

    #[test]
    fn madvise_numbers() {
        assert_eq!(MadviseAdvice::from_raw(4), Ok(MadviseAdvice::DontNeed));
        assert_eq!(MadviseAdvice::from_raw(25), Ok(MadviseAdvice::Collapse));
        assert_eq!(MadviseAdvice::from_raw(99), Err(Errno::Inval));
        assert_eq!(MadviseAdvice::from_raw(102), Ok(MadviseAdvice::GuardInstall));
        assert_eq!(MadviseAdvice::from_raw(103), Ok(MadviseAdvice::GuardRemove));
        // Every advice round-trips through its number, and ALL lists each once.
        let numbers: Vec<u32> = (0..200).filter(|&n| MadviseAdvice::from_raw(n).is_ok()).collect();
        assert_eq!(numbers.len(), MadviseAdvice::ALL.len());
        for n in numbers {
            assert!(MadviseAdvice::ALL.contains(&MadviseAdvice::from_raw(n).unwrap()));
        }
    }
}
