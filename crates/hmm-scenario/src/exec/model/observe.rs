//! What the model reports for `maps` (the VMAs as /proc/PID/maps shows
//! them) and `pagemap` (per-page bits, as /proc/PID/pagemap and
//! PAGEMAP_SCAN show them on the host).
//!
//! Linux: `fs/proc/task_mmu.c` (`show_map_vma`, `pagemap_read`).

use hmm_mm::vma::VmaBacking;
use hmm_mm::Mm;
use hmm_types::{VmFlags, PAGE_SIZE};

use super::{errno, ModelBackend, MAX_PAGEMAP_PAGES};
use crate::observe::{Backing, Outcome, PageView, VmaView};

impl ModelBackend {
    pub(super) fn maps(&self, mm: &Mm, addr: u64, len: u64) -> Outcome {
        let end = addr.saturating_add(len);
        let guard = mm.mmap_read();
        let vmas = guard.locked().vmas().overlapping(addr, end).map(|vma| {
            let f = vma.flags;
            let perms: String = [
                if f.contains(VmFlags::READ) { 'r' } else { '-' },
                if f.contains(VmFlags::WRITE) { 'w' } else { '-' },
                if f.contains(VmFlags::EXEC) { 'x' } else { '-' },
                if f.contains(VmFlags::MAYSHARE) { 's' } else { 'p' },
            ]
            .iter()
            .collect();
            let backing = match &vma.backing {
                VmaBacking::Anon => Backing::Anon,
                VmaBacking::File(inode) => match self.names.get(&inode.id()) {
                    Some(name) => Backing::File(name.clone()),
                    None => Backing::SharedAnon,
                },
                VmaBacking::Hugetlb(_) => Backing::Hugetlb,
                VmaBacking::DevDax(_) => Backing::File("devdax".into()),
                other => Backing::Other(format!("{other:?}")),
            };
            let offset = if vma.is_anonymous() { 0 } else { vma.pgoff * PAGE_SIZE };
            VmaView { start: vma.start, end: vma.end, perms, offset, backing }
        });
        Outcome::Maps(vmas.collect())
    }
}

pub(super) fn pagemap(mm: &Mm, addr: u64, len: u64) -> Outcome {
    use hmm_mm::proc_pagemap::{PM_FILE, PM_GUARD_REGION, PM_MMAP_EXCLUSIVE, PM_PFRAME_MASK, PM_PRESENT, PM_SWAP};
    let start = addr & !(PAGE_SIZE - 1);
    let nr = len.div_ceil(PAGE_SIZE).min(MAX_PAGEMAP_PAGES);
    let mut pages = Vec::new();
    for i in 0..nr {
        let Some(va) = start.checked_add(i * PAGE_SIZE) else { break };
        let word = match mm.pagemap_entry(va) {
            Ok(word) => word,
            Err(e) => return errno(e),
        };
        let present = word & PM_PRESENT != 0;
        let slot = mm.pgtable().find(va);
        pages.push(PageView {
            present,
            swapped: word & PM_SWAP != 0,
            exclusive: word & PM_MMAP_EXCLUSIVE != 0,
            file: word & PM_FILE != 0,
            huge: present && slot.level() != hmm_pagetable::Level::Pte,
            zero: present && mm.phys().is_zero_pfn(hmm_types::Pfn(word & PM_PFRAME_MASK)),
            guard: word & PM_GUARD_REGION != 0,
            uffd_wp: word & hmm_mm::proc_pagemap::PM_UFFD_WP != 0,
        });
    }
    Outcome::Pages(pages)
}
