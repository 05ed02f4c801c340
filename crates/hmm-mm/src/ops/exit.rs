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

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, Event, MapFlags, Prot, PMD_SIZE};

    use crate::testing::{kernel, record};
    use crate::ThpMode;

    #[test]
    fn release_then_unmap_then_everything_is_free() {
        let k = kernel(64, ThpMode::Always);
        let baseline = k.phys().free_frames();
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0, 3 * PMD_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
        mm.write_u64(va + 5, 1).unwrap();
        mm.write_u64(va + PMD_SIZE + 4096, 1).unwrap();
        let child = mm.fork().unwrap();
        let rec = record(&mm);
        mm.exit();
        assert_eq!(rec.take_events(), [(Event::Release, 0, u64::MAX), (Event::Unmap, 0, u64::MAX)]);
        assert_eq!(
            mm.mmap(0, 4096, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap_err().errno(),
            Errno::Srch
        );
        assert!(mm.mmget_not_zero().is_none());
        assert_eq!(child.read_u64(va + 5).unwrap(), 1);
        child.exit();
        drop((mm, child));
        assert_eq!(k.phys().free_frames(), baseline);
        assert_eq!(k.phys().page_table_frames(), 0);
    }

    #[test]
    fn a_user_reference_delays_the_teardown() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let user = mm.mmget_not_zero().unwrap();
        mm.exit();
        assert!(!mm.has_exited());
        drop(user);
        assert!(mm.has_exited());
    }
}
