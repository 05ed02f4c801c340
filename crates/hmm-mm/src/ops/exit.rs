//! exit_mmap: tear an address space down once its last user is gone. The
//! subscribers see RELEASE over the whole space, then the mappings are
//! removed under UNMAP and every frame and table returns to the allocator.
//!
//! Linux: `mm/mmap.c` (`exit_mmap`), `mm/mmu_notifier.c`
//! (`__mmu_notifier_release`).

use hmm_types::{Event, TASK_SIZE};

use crate::mm::Mm;
use crate::zap::{zap_range, Gather};

impl Mm {
    pub(crate) fn exit_mmap(&self) {
        if self.has_exited() {
            return;
        }
        self.notifiers().release(self.id());
        let mut guard = self.mmap_write();
        self.mark_exited();
        let invalidation = self.notifiers().start(self.id(), 0, u64::MAX, Event::Unmap);
        let mut gather = Gather::new();
        // Zapping needs no table allocation when it covers whole leaves,
        // so it cannot fail here.
        zap_range(self, 0, TASK_SIZE, &mut gather).expect("zapping everything never splits");
        let removed = guard.vmas_mut().remove_range(0, TASK_SIZE);
        invalidation.end();
        self.pgtable().free_empty_tables(0, TASK_SIZE);
        gather.free_now(self.phys());
        drop(removed);
    }
}
