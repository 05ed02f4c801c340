//! The operations that change an address space, one file each. Every
//! operation validates all of its input before it changes anything, and
//! every removal or downgrade of mappings is bracketed by an invalidation
//! with Linux's event kind (see `crate::notify`).

mod collapse;
mod exit;
mod fork;
mod guard;
mod madvise;
mod madvise_remove;
mod mmap;
mod mprotect;
mod mremap;
mod mseal;
mod munmap;
mod populate;
mod vma_modify;

pub(crate) use collapse::cache_pmd_leaf;
pub(crate) use guard::is_guard_page;
pub(crate) use munmap::unmap_locked;
pub(crate) use populate::{madvise_populate, populate_locked};
