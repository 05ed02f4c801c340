//! The software memory manager: the CPU side that HMM mirrors.
//!
//! A [`Kernel`] owns simulated physical memory ([`phys::PhysMem`]) and
//! creates address spaces ([`Mm`]). Each `Mm` has a VMA tree under its mmap
//! lock, a 4-level CPU page table whose tables are frames, and a chain of
//! invalidation subscribers. Operations (`ops/`: mmap, munmap, mprotect,
//! madvise, mremap, fork, exit), faults (`fault/`) and page migration
//! (`migrate.rs`) change the page table and announce every removal or
//! downgrade with Linux's event kinds before freeing anything. [`Mm::read_bytes`] and friends are the CPU.
//!
//! Linux: `mm/` (memory.c, mmap.c, mprotect.c, madvise.c, mremap.c,
//! huge_memory.c, shmem.c, migrate.c), `kernel/fork.c`.

mod anon_vma;
pub mod cpu;
pub mod devdax;
pub mod device;
mod error;
pub mod fault;
pub mod fs;
pub mod gup;
pub mod gup_test;
mod huge;
pub mod hugetlb;
mod hugetlb_punch;
mod kernel;
mod migrate;
mod mm;
mod notify;
mod ops;
pub mod phys;
pub mod proc_pagemap;
pub mod proc_smaps;
mod rmap;
mod signal;
pub mod swap;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod uffd;
pub mod vma;
mod zap;

pub use error::{FaultError, MmError, SegvReason};
pub use fault::{FaultFlags, FaultOutcome};
pub use kernel::{Kernel, KernelConfig, ThpMode};
pub use migrate::{MigrateStats, MigrationHook, MigrationPoint};
pub use mm::{CpuPageTable, Mm, MmUser, MmapLocked, MmapReadGuard, MmapWriteGuard};
pub use notify::{Invalidation, NotifierChain};
pub use zap::Gather;
