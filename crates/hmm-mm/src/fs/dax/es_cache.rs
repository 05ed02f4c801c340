//! ext4's extent status cache of holes, as far as fs-dax faults see it:
//! a punch caches exactly its hole, a lookup elsewhere caches the whole
//! hole around it (every allocation and every read of a hole looks up
//! first), an allocation or a truncation trims the entries. A PMD fault at a block's start inside a
//! short cached hole maps 4K entries, after a write allocated just that
//! hole (`DaxShared::pmd_entry`, `alloc_first_run`).
//!
//! Linux: `fs/ext4/extents_status.c` (`ext4_es_insert_extent`,
//! `ext4_es_remove_extent`), `fs/ext4/extents.c`
//! (`ext4_ext_determine_insert_hole`).

use crate::fs::inode::InodeState;

impl InodeState {
    /// The end of the cached hole holding `page`, if one does.
    pub(crate) fn es_hole_end(&self, page: u64) -> Option<u64> {
        self.dax_es_holes.range(..=page).next_back().map(|(_, &end)| end).filter(|&end| end > page)
    }

    /// Forgets `[first, end)` from the cached holes (the parts of an
    /// entry outside it stay cached).
    pub(crate) fn es_forget(&mut self, first: u64, end: u64) {
        let hit: Vec<(u64, u64)> =
            self.dax_es_holes.range(..end).filter(|(_, &e)| e > first).map(|(&k, &e)| (k, e)).collect();
        for (start, stop) in hit {
            self.dax_es_holes.remove(&start);
            if start < first {
                self.dax_es_holes.insert(start, first);
            }
            if end < stop {
                self.dax_es_holes.insert(end, stop);
            }
        }
    }

    /// Caches the hole `[first, end)`, merged with cached holes it
    /// touches (`ext4_es_insert_extent` merges neighbours of one status).
    fn es_insert(&mut self, mut first: u64, mut end: u64) {
        if first >= end {
            return;
        }
        self.es_forget(first, end);
        if let Some((&before, _)) = self.dax_es_holes.range(..first).next_back().filter(|(_, &e)| e == first) {
            self.dax_es_holes.remove(&before);
            first = before;
        }
        if let Some(after) = self.dax_es_holes.remove(&end) {
            end = after;
        }
        self.dax_es_holes.insert(first, end);
    }

    /// A punch of pages `[first, end)`: that hole is cached.
    pub(crate) fn es_punched(&mut self, first: u64, end: u64) {
        self.es_insert(first, end);
    }

    /// A block lookup at hole page `page` outside any cached hole caches
    /// the whole hole around it (`ext4_ext_determine_insert_hole`).
    pub(crate) fn es_lookup(&mut self, page: u64) {
        if self.es_hole_end(page).is_some() || self.pages.contains_key(&page) || self.dax_unwritten.contains(&page) {
            return;
        }
        let before = self.pages.range(..page).next_back().map(|(&k, _)| k);
        let before = before.max(self.dax_unwritten.range(..page).next_back().copied());
        let after = self.pages.range(page..).next().map(|(&k, _)| k);
        let after = match (after, self.dax_unwritten.range(page..).next().copied()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.es_insert(before.map_or(0, |b| b + 1), after.unwrap_or(u64::MAX));
    }

    /// A block allocated at `page` splits the cached hole holding it.
    pub(crate) fn es_allocated(&mut self, page: u64) {
        self.es_forget(page, page + 1);
    }
}
