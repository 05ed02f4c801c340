//! The reverse map: from a folio to every place that maps it.
//!
//! Anonymous folios record their *anon root* ([`AnonVma`]) and their linear
//! page index (`FrameMeta::mapping`, `FrameMeta::index`, on the folio's
//! head; a page's index is the head's plus its offset). A private VMA gets
//! its root on its first anonymous page (`anon_vma_prepare`); fork gives
//! the child's copies the same root and links the child's address space to
//! it; split, merge and mremap keep `pgoff`, so the address of a page in a
//! VMA is always `vm_start + ((index - vm_pgoff) << PAGE_SHIFT)`, wherever
//! the VMA has moved. A root lists the address spaces that may map its
//! folios (as weak references); the walk visits, in each, the VMAs that
//! carry the root and cover the index.
//!
//! File folios record their inode's identity and file index; the walk goes
//! through the inode's list of mapping address spaces and their VMAs of the
//! file (`i_mmap`).
//!
//! [`rmap_walk`] yields candidates `(address space, VMA, address)`; the
//! caller still checks that the entry there names the folio.
//!
//! Simplifications: links are per address space, not per VMA
//! (`anon_vma_chain`), so the walk also looks at VMAs that do not hold the
//! folio (the entry check filters them out). A fork child's VMA gets a root
//! of its own and carries its parent's roots as its chain, as
//! `anon_vma_fork` does; merging follows Linux's identity rules
//! (`crate::anon_vma`). Links are dropped when their address space dies.
//!
//! # Locking
//!
//! A root's link list, the root registry and the inode table are each a
//! mutex held only to add, remove or snapshot; nothing is taken under them
//! (the "rmap lock", innermost). The walk then takes each linked address
//! space's mmap lock for reading with `read_recursive` (ARCHITECTURE.md,
//! lock order item 5) so that page-table pages cannot be freed under it;
//! it is called with at most the caller's own mmap read lock held.
//!
//! Linux: `mm/rmap.c` (`anon_vma`, `anon_vma_chain`, `anon_vma_prepare`,
//! `anon_vma_fork`, `folio_add_new_anon_rmap`, `rmap_walk_anon`,
//! `rmap_walk_file`), `include/linux/mm_types.h` (`folio->mapping`,
//! `PAGE_MAPPING_ANON`, `folio->index`), `mm/interval_tree.c`
//! (`vma_interval_tree` over `address_space->i_mmap`).

#[cfg(test)]
mod tests;

use core::ops::ControlFlow;
use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use hmm_pagetable::SwapKind;
use hmm_types::{Pfn, PAGE_SHIFT};

use crate::fs::Inode;
use crate::kernel::Kernel;
use crate::mm::Mm;
use crate::phys::{PageFlags, PhysMem};
use crate::vma::{Vma, VmaBacking};

/// The anon roots of a machine by identity, so a folio's `mapping` word
/// finds its root (weak: a root lives as long as a VMA carries it).
#[derive(Debug, Default)]
pub(crate) struct AnonRegistry {
    next_id: AtomicU64,
    roots: Mutex<HashMap<u64, Weak<AnonVma>>>,
    /// Address spaces visited by rmap walks (a diagnostic: what eviction
    /// and migration cost).
    visits: AtomicU64,
}

impl AnonRegistry {
    fn lookup(&self, id: u64) -> Option<Arc<AnonVma>> {
        self.roots.lock().get(&id).and_then(Weak::upgrade)
    }
    /// Address spaces visited by rmap walks so far.
    pub(crate) fn visits(&self) -> u64 {
        self.visits.load(Ordering::Relaxed)
    }
}

/// An anon root (`struct anon_vma`): the address spaces whose private VMAs
/// may map its anonymous folios, and the identity VMA merging compares
/// (`crate::anon_vma`).
pub struct AnonVma {
    id: u64,
    /// False for a fork child's own root, whose VMA also carries its
    /// parent's (`anon_vma_chain` not singular): such a root is not handed
    /// to a neighbour, and its VMA does not merge with one that has none.
    reusable: bool,
    registry: Arc<AnonRegistry>,
    mms: Mutex<Vec<Weak<Mm>>>,
}

impl core::fmt::Debug for AnonVma {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AnonVma").field("id", &self.id).finish_non_exhaustive()
    }
}

impl AnonVma {
    fn new(registry: &Arc<AnonRegistry>, mm: Weak<Mm>, reusable: bool) -> Arc<Self> {
        // Identities start at 1: 0 is "no mapping".
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let root = Arc::new(Self { id, reusable, registry: registry.clone(), mms: Mutex::new(vec![mm]) });
        registry.roots.lock().insert(id, Arc::downgrade(&root));
        root
    }

    /// Links an address space (fork: `anon_vma_fork`).
    pub(crate) fn link(&self, mm: Weak<Mm>) {
        let mut mms = self.mms.lock();
        mms.retain(|m| m.strong_count() > 0);
        if !mms.iter().any(|m| m.ptr_eq(&mm)) {
            mms.push(mm);
        }
    }

    /// Its identity (unique in the machine).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Whether a neighbour may share it (not a fork child's own root).
    pub fn is_reusable(&self) -> bool {
        self.reusable
    }

    fn mms(&self) -> Vec<Arc<Mm>> {
        self.mms.lock().iter().filter_map(Weak::upgrade).collect()
    }
}

impl Drop for AnonVma {
    fn drop(&mut self) {
        self.registry.roots.lock().remove(&self.id);
    }
}

/// A VMA's anon roots: the one its new anonymous pages get (its
/// `anon_vma`), allocated or borrowed from a neighbour on its first one and
/// shared by the pieces of a split and a moved copy; plus the roots it
/// reaches through its chain: a fork child's VMA carries its parent's, and
/// a VMA that merged with one that had a chain carries that too.
#[derive(Clone, Default)]
pub struct AnonVmaSlot {
    primary: OnceLock<Arc<AnonVma>>,
    merged: Vec<Arc<AnonVma>>,
}

impl core::fmt::Debug for AnonVmaSlot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ids: Vec<u64> = self.roots().map(|r| r.id).collect();
        write!(f, "anon_vma{ids:?}")
    }
}

impl AnonVmaSlot {
    /// Its own root (`vma->anon_vma`), if it has anonymous pages.
    pub fn get(&self) -> Option<&Arc<AnonVma>> {
        self.primary.get()
    }
    /// Sets its own root if it has none; a concurrent fault may have set
    /// one first, and either is a valid choice.
    pub(crate) fn set_if_none(&self, root: Arc<AnonVma>) {
        let _ = self.primary.set(root);
    }
    /// The slot of a fork child's copy (`anon_vma_fork`): none if the
    /// parent's VMA has no root, else a new root of the child's own
    /// (not reusable) chained to every root the parent's VMA carries. The
    /// caller links `child` to those.
    pub(crate) fn forked(&self, child: &Mm) -> Self {
        if self.get().is_none() {
            return Self::default();
        }
        let own = AnonVma::new(child.kernel().anon_registry(), child.weak(), false);
        Self { primary: OnceLock::from(own), merged: self.roots().cloned().collect() }
    }
    /// Every root the VMA carries.
    pub(crate) fn roots(&self) -> impl Iterator<Item = &Arc<AnonVma>> {
        self.primary.get().into_iter().chain(&self.merged)
    }
    /// True when the VMA carries `root`.
    fn carries(&self, root: &Arc<AnonVma>) -> bool {
        self.roots().any(|r| Arc::ptr_eq(r, root))
    }
    /// Takes on `other`'s roots (a merge, under the mmap write lock). Only
    /// VMAs with the same root, or one side without, merge
    /// (`crate::anon_vma::mergeable`), so this adopts a root where there
    /// was none and unites the chains.
    pub(crate) fn adopt(&mut self, other: &Self) {
        for root in other.roots() {
            if self.carries(root) {
                continue;
            }
            if self.primary.get().is_none() {
                let _ = self.primary.set(root.clone());
            } else {
                self.merged.push(root.clone());
            }
        }
    }
    /// Forgets the roots (a WIPEONFORK child starts without one).
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }
    /// The root new pages get, allocated if needed (`anon_vma_prepare`).
    /// Called under the mmap read lock: concurrent faults agree on one.
    pub(crate) fn prepare(&self, mm: &Mm) -> &Arc<AnonVma> {
        self.primary.get_or_init(|| AnonVma::new(mm.kernel().anon_registry(), mm.weak(), true))
    }
}

/// Records a new anonymous folio (`folio_add_new_anon_rmap`): its root is
/// `vma`'s and its index the linear page index of `va`, the address of its
/// first page. The caller sets the page flags.
pub(crate) fn folio_add_new_anon_rmap(mm: &Mm, vma: &Vma, head: Pfn, va: u64) {
    let root = vma.anon_vma.prepare(mm);
    let meta = mm.phys().meta(head);
    meta.index.store(vma.page_index(va), Ordering::Release);
    meta.mapping.store(root.id, Ordering::Release);
}

/// Gives the folio at `dst` the reverse-map identity of the page `src` (a
/// migration's destination, `folio_migrate_mapping`).
pub(crate) fn folio_copy_rmap(phys: &PhysMem, dst: Pfn, src: Pfn) {
    let (mapping, index) = page_identity(phys, src);
    let meta = phys.meta(dst);
    meta.index.store(index, Ordering::Release);
    meta.mapping.store(mapping, Ordering::Release);
}

/// Counts a migration entry installed in `mm` by a migrator that does not
/// hold `mm`'s mmap lock (found through the reverse map), so that fork and
/// mremap there wait for it ([`Mm::mmap_write_settled`]) instead of
/// copying or moving it out of the migrator's sight. Undone by
/// [`migration_entry_restored`].
pub(crate) fn migration_entry_installed(mm: &Mm) {
    mm.migrating().fetch_add(1, Ordering::AcqRel);
}

/// The migration entry counted by [`migration_entry_installed`] is gone.
pub(crate) fn migration_entry_restored(mm: &Mm) {
    mm.migrating().fetch_sub(1, Ordering::AcqRel);
}

/// The (mapping, index) of one page: its folio head's, plus its offset.
fn page_identity(phys: &PhysMem, pfn: Pfn) -> (u64, u64) {
    let head = phys.folio_head(pfn);
    let meta = phys.meta(head);
    (meta.mapping.load(Ordering::Acquire), meta.index.load(Ordering::Acquire) + (pfn.0 - head.0))
}

/// Calls `f` with every (address space, VMA, address) that may map the
/// page `pfn`, in address spaces that have not exited, each under that
/// address space's mmap read lock (`rmap_walk`). Stops when `f` breaks.
/// The caller checks the entry; it may hold its own mmap read lock.
pub(crate) fn rmap_walk(
    kernel: &Kernel,
    pfn: Pfn,
    mut f: impl FnMut(&Arc<Mm>, &Vma, u64) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let phys = kernel.phys();
    let (mapping, index) = page_identity(phys, pfn);
    if mapping == 0 {
        return ControlFlow::Continue(());
    }
    let head = phys.folio_head(pfn);
    let registry = kernel.anon_registry();
    if phys.meta(head).flags().contains(PageFlags::ANON) {
        let Some(root) = registry.lookup(mapping) else { return ControlFlow::Continue(()) };
        for mm in root.mms() {
            registry.visits.fetch_add(1, Ordering::Relaxed);
            walk_mm(&mm, index, |vma| vma.anon_vma.carries(&root), &mut f)?;
        }
    } else if let Some(inode) = Inode::lookup(mapping) {
        rmap_walk_file(kernel, &inode, index, f)?;
    }
    ControlFlow::Continue(())
}

/// [`rmap_walk`] of page `index` of `inode`'s file, for frames that carry
/// no page-cache identity of their own (fs-dax blocks): `f` gets every
/// mapping of that file page (`i_mmap`).
pub(crate) fn rmap_walk_file(
    kernel: &Kernel,
    inode: &Arc<Inode>,
    index: u64,
    mut f: impl FnMut(&Arc<Mm>, &Vma, u64) -> ControlFlow<()>,
) -> ControlFlow<()> {
    for mm in inode.mappers() {
        kernel.anon_registry().visits.fetch_add(1, Ordering::Relaxed);
        let is_file = |vma: &Vma| matches!(&vma.backing, VmaBacking::File(i) if Arc::ptr_eq(i, inode));
        walk_mm(&mm, index, is_file, &mut f)?;
    }
    ControlFlow::Continue(())
}

/// Splits the large anonymous folio `head` into order-0 pages if every page
/// of it is mapped by the same number of PTEs and no PMD maps it anywhere,
/// as the reverse map shows: the split gives each page an equal share of
/// the folio's references and mappings, which is right only then. A folio
/// still PMD-mapped in another process (a THP shared after fork, split on
/// one side only) stays whole. The caller holds at most its own mmap read
/// lock. Returns whether the folio was split.
pub(crate) fn split_folio_if_uniform(kernel: &Kernel, head: Pfn) -> bool {
    let phys = kernel.phys();
    let nr = 1u64 << phys.folio_order(head);
    if nr == 1 || phys.folio_head(head) != head {
        return false;
    }
    let (mapping, index) = page_identity(phys, head);
    let root = phys.meta(head).flags().contains(PageFlags::ANON).then(|| kernel.anon_registry().lookup(mapping));
    let Some(Some(root)) = root else { return false };
    let mut counts = vec![0u32; nr as usize];
    for mm in root.mms() {
        let guard = mm.mmap_read_recursive();
        if mm.has_exited() {
            continue;
        }
        for vma in guard.iter().filter(|vma| vma.anon_vma.carries(&root)) {
            let pages = (vma.end - vma.start) >> PAGE_SHIFT;
            let (from, to) = (index.max(vma.pgoff), (index + nr).min(vma.pgoff + pages));
            if from >= to {
                continue;
            }
            let address = |i: u64| vma.start + ((i - vma.pgoff) << PAGE_SHIFT);
            let huge = mm.pgtable().walk(address(from), address(to), |visit| {
                let hmm_pagetable::Visit::Slot { slot, entry } = visit else { return ControlFlow::Continue(()) };
                // Swap (and marker) entries name a slot, not a frame.
                let frame_kind =
                    |k: SwapKind| k.is_migration() || k.is_device_private() || k == SwapKind::DeviceExclusive;
                let names = entry.is_present() || entry.swap_kind().is_some_and(frame_kind);
                let offset = entry.pfn().0.wrapping_sub(head.0);
                if !names || offset >= nr {
                    return ControlFlow::Continue(());
                }
                if slot.level() > hmm_pagetable::Level::Pte {
                    return ControlFlow::Break(());
                }
                counts[offset as usize] += 1;
                ControlFlow::Continue(())
            });
            if huge.is_break() {
                return false;
            }
        }
    }
    let uniform =
        counts.iter().all(|&c| c == counts[0]) && u64::from(counts[0]) * nr == phys.folio_counts(head).1 as u64;
    uniform && phys.split_folio(head, counts.iter().sum())
}

/// The VMAs of `mm` that `carries` and whose page range holds `index`.
fn walk_mm(
    mm: &Arc<Mm>,
    index: u64,
    carries: impl Fn(&Vma) -> bool,
    f: &mut impl FnMut(&Arc<Mm>, &Vma, u64) -> ControlFlow<()>,
) -> ControlFlow<()> {
    // Recursive: a reader of that address space may be waiting for the
    // very migration the caller runs.
    let guard = mm.mmap_read_recursive();
    if mm.has_exited() {
        return ControlFlow::Continue(());
    }
    for vma in guard.iter() {
        let pages = (vma.end - vma.start) >> PAGE_SHIFT;
        let inside = index.checked_sub(vma.pgoff).is_some_and(|offset| offset < pages);
        if inside && carries(vma) {
            f(mm, vma, vma.start + ((index - vma.pgoff) << PAGE_SHIFT))?;
        }
    }
    ControlFlow::Continue(())
}
