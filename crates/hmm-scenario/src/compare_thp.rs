//! Where the kernel may legitimately answer "small" where the model says
//! "huge", for [`crate::compare`]: the address space as the model's trace
//! laid it out (which ranges map DAX), and the 2 MiB blocks where the kernel
//! has already been seen without the THP the model got.
//!
//! Linux allocates an anonymous or shmem THP only if a free 2 MiB folio is
//! at hand (`vma_alloc_folio` may fail and the fault falls back to 4 KiB
//! pages), so a missing THP there is allowed, and so is everything later
//! observed on that folio's block (its sharing, its split). DAX leaves are
//! not allocated: an fs-dax PMD depends on the file's blocks
//! (`dax_iomap_pmd_fault`), a device-DAX PMD on the device's alignment
//! (`__dev_dax_pmd_fault`), both deterministic; a difference there is a
//! divergence.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::lang::ast::{Expr, Op, Scenario, WINDOW_NAME};
use crate::lang::device::DeviceOp;
use crate::observe::Outcome;

const PAGE: u64 = 4096;
const BLOCK: u64 = 2 << 20;

/// The address space as the model's trace shows it, step by step.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    /// Addresses bound by name (mmap and mremap results).
    names: HashMap<String, u64>,
    /// Files that are DAX (`daxfile`, `devdax`).
    dax_files: HashSet<String>,
    /// Mapped ranges, latest last: `(start, end, dax)`.
    ranges: Vec<(u64, u64, bool)>,
    /// The device-DAX node's names (`devdax`).
    devdax_files: HashSet<String>,
    /// Ranges mapped from the device-DAX node, latest last.
    devdax_ranges: Vec<(u64, u64)>,
    /// 2 MiB blocks (their first address) where the kernel was seen
    /// without a THP the model has.
    fallen: BTreeSet<u64>,
}

impl Scope {
    /// A scope whose `window` name is `window`.
    pub(crate) fn new(window: u64) -> Self {
        Self { names: HashMap::from([(WINDOW_NAME.to_string(), window)]), ..Self::default() }
    }

    /// The address `e` names, if its base is bound.
    pub(crate) fn addr(&self, e: &Expr) -> Option<u64> {
        let base = match &e.base {
            None => 0,
            Some(n) => *self.names.get(n)?,
        };
        Some(base.wrapping_add(e.offset as u64))
    }

    /// Takes in one step of `scenario` with the model's outcome.
    pub(crate) fn step(&mut self, scenario: &Scenario, index: usize, model: &Outcome) {
        let step = &scenario.steps[index];
        if let Op::Device(op @ (DeviceOp::DaxFile { .. } | DeviceOp::DevDax)) = &step.op {
            if let Some(n) = &step.bind {
                self.dax_files.insert(n.clone());
                if matches!(op, DeviceOp::DevDax) {
                    self.devdax_files.insert(n.clone());
                }
            }
        }
        let Outcome::Addr(at) = *model else { return };
        if let Some(n) = &step.bind {
            self.names.insert(n.clone(), at);
        }
        match &step.op {
            Op::Mmap { len, file, .. } => {
                let dax = file.as_ref().is_some_and(|(f, _)| self.dax_files.contains(f));
                if let Some(len) = self.addr(len) {
                    self.ranges.push((at, at.saturating_add(len), dax));
                    if file.as_ref().is_some_and(|(f, _)| self.devdax_files.contains(f)) {
                        self.devdax_ranges.push((at, at.saturating_add(len)));
                    }
                }
            }
            Op::Mremap { old, old_len, new_len, .. } => {
                let (Some(old), Some(old_len), Some(new_len)) =
                    (self.addr(old), self.addr(old_len), self.addr(new_len))
                else {
                    return;
                };
                self.ranges.push((at, at.saturating_add(new_len), self.is_dax(old)));
                // The blocks that fell back move with the mapping.
                let moved: Vec<u64> = self
                    .fallen
                    .range(old & !(BLOCK - 1)..old.saturating_add(old_len))
                    .map(|b| b.wrapping_sub(old).wrapping_add(at) & !(BLOCK - 1))
                    .collect();
                self.fallen.extend(moved);
            }
            _ => {}
        }
    }

    /// Whether the page at `va` was ever mapped from the device-DAX node
    /// in this scenario.
    pub(crate) fn is_devdax(&self, va: u64) -> bool {
        self.devdax_ranges.iter().any(|(s, e)| (*s..*e).contains(&va))
    }

    /// Whether the page at `va` was last mapped from a DAX file.
    pub(crate) fn is_dax(&self, va: u64) -> bool {
        self.ranges.iter().rev().find(|(s, e, _)| (*s..*e).contains(&va)).is_some_and(|r| r.2)
    }

    /// Whether the kernel may have allocated no THP for the page at `va`
    /// (any page that is not DAX).
    pub(crate) fn thp_optional(&self, va: u64) -> bool {
        !self.is_dax(va)
    }

    /// Whether `[va, va + len)` overlaps a block the kernel got no THP for.
    pub(crate) fn fell_back(&self, va: u64, len: u64) -> bool {
        let first = va & !(BLOCK - 1);
        self.fallen.range(first..va.saturating_add(len.max(1))).next().is_some()
    }

    /// Records that the kernel got no THP for `[va, va + len)`.
    pub(crate) fn fall_back(&mut self, va: u64, len: u64) {
        let mut b = va & !(BLOCK - 1);
        while b < va.saturating_add(len.max(1)) {
            self.fallen.insert(b);
            b += BLOCK;
        }
    }

    /// The address of the `i`th page of a pagemap at `va`.
    pub(crate) fn page(va: u64, i: usize) -> u64 {
        va.wrapping_add(i as u64 * PAGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::parse;

    #[test]
    fn dax_ranges_and_fallen_blocks() {
        let s = parse(
            "t",
            "f = daxfile x\nb = mmap w+4M 4M rw- shared|fixed fd f 0\na = mmap w+8M 4M rw- private|anon|fixed\nc = mremap a 4M 4M maymove|fixed w+16M\n",
        )
        .unwrap();
        let w = 0x1000_0000_0000;
        let mut scope = Scope::new(w);
        let outs = [Outcome::Ok, Outcome::Addr(w + (4 << 20)), Outcome::Addr(w + (8 << 20))];
        for (i, o) in outs.iter().enumerate() {
            scope.step(&s, i, o);
        }
        assert!(scope.is_dax(w + (4 << 20) + PAGE));
        assert!(!scope.thp_optional(w + (6 << 20)));
        assert!(scope.thp_optional(w + (8 << 20)));
        scope.fall_back(w + (10 << 20) + PAGE, PAGE);
        assert!(scope.fell_back(w + (10 << 20), BLOCK));
        assert!(!scope.fell_back(w + (8 << 20), BLOCK));
        scope.step(&s, 3, &Outcome::Addr(w + (16 << 20)));
        assert!(scope.fell_back(w + (18 << 20) + PAGE, PAGE), "the block moved with mremap");
        assert!(!scope.is_dax(w + (16 << 20)));
    }
}
