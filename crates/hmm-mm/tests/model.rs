//! Model-based property test of the memory manager's system calls.
//!
//! Random sequences of mmap, munmap, mprotect, madvise, mremap, CPU reads and
//! writes, fork and exit run against up to three address spaces (a parent
//! and forked children) and, in parallel, against a reference model: per
//! address space a map from page number to the page's protection, VMA
//! attributes and backing (a private value, or a page of a shared object
//! whose values live in one table shared by every sharer). Only the u64 at
//! offset 0 of each page is modelled.
//!
//! After every step the test checks
//! - the call's result against the model (`Ok` value, or the errno);
//! - that a failed call changed nothing (VMA list before and after);
//! - that every VMA tree equals the model's maximal runs of pages with equal
//!   attributes (start, end, flags, shared object and offset);
//! - the page tables without faulting anything in: a private page with data
//!   has a present entry holding that data, no entry is writable or
//!   accessible beyond the page's protection, and every page ever mapped
//!   that is no longer mapped has no entry;
//! - and at the end, once every address space has exited, that every frame
//!   went back to the allocator.
//!
//! Semantics modelled are Linux's (x86-64), stated where subtle next to the
//! code that predicts them. Errnos must be Linux's exactly.
//!
//! Operations aim at three small address windows so they collide often: 64
//! pages at 0x1000_0000, two aligned PMDs at 0x2000_0000 (THP paths), and
//! 3 MiB straddling the 1 GiB boundary at 0x4000_0000 (one aligned PMD and a
//! PUD-table boundary), plus wherever mremap and hint-less mmap put things.
//! Bursts of steps on one 2 MiB block (protect, zap, collapse, populate,
//! partial unmap, move) exercise huge pages; the whole test runs with THP
//! `always`, `never` and `madvise`. `PROPTEST_CASES` raises the case count.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use hmm_mm::testing::{kernel, leaf};
use hmm_mm::vma::{VmaBacking, MMAP_MIN_ADDR};
use hmm_mm::{Kernel, Mm, MmError, ThpMode};
use hmm_types::{Errno, MadviseAdvice, MapFlags, MremapFlags, Pfn, Prot, VmFlags, PAGE_SIZE, PMD_SIZE, TASK_SIZE};

const PAGE: u64 = PAGE_SIZE;
const PMD_PAGES: u64 = PMD_SIZE / PAGE_SIZE;

/// `(base address, pages)` of the windows most operations aim at.
const WINDOWS: [(u64, u64); 3] = [(0x1000_0000, 64), (0x2000_0000, 1024), (0x3ff0_0000, 768)];
/// Page indices in each window worth hitting exactly (PMD and PUD edges).
const INTERESTING: [&[u64]; 3] =
    [&[0, 1, 31, 32, 62, 63], &[0, 1, 255, 511, 512, 513, 1022, 1023], &[0, 1, 255, 256, 257, 511, 767, 766]];
/// Address-space slots: 0 is the original process, 1 and 2 forked children.
const SLOTS: usize = 3;
/// Operations that would map more than this many pages in one address space
/// are skipped, so 64 MiB of RAM is never exhausted (ENOMEM is not modelled).
const MAX_PAGES_PER_MM: u64 = 2048;

// ---------------------------------------------------------------------------
// The reference model.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Thp {
    Default,
    Huge,
    NoHuge,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backing {
    /// Private anonymous memory and the value last written at offset 0.
    Private { value: u64 },
    /// Page `index` of shared object `obj`.
    Shared { obj: usize, index: u64 },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Page {
    prot: Prot,
    thp: Thp,
    dontfork: bool,
    wipeonfork: bool,
    backing: Backing,
    /// MADV_FREE marked this private page lazily freeable and it was not
    /// written since.
    freed: bool,
    /// VM_ACCOUNT: a private mapping charged for being writable, at mmap or
    /// by the first mprotect that made it writable; kept when it stops
    /// being writable unless it never got an anon_vma (mprotect_fixup).
    account: bool,
    /// The page offset of a private page (`vm_pgoff` of its VMA plus its
    /// place in it): the page number it was first mapped at, kept when a
    /// VMA with an anon_vma moves.
    pgoff: u64,
    /// The anon_vma of the page's VMA, as `(id, reusable)`: none until a
    /// write fault (or POPULATE_WRITE, or MAP_POPULATE of a writable
    /// mapping) creates a private page; `reusable` is false in a forked
    /// child.
    anon: Anon,
    /// A MADV_PAGEOUT came after MADV_FREE: Linux discards a clean lazily
    /// freed page (Linux 6.18 on the host: FREE, then PAGEOUT, reads 0;
    /// a page written in between keeps its value). Whether the crate
    /// discarded it depends on things not modelled (the page shared with
    /// a forked child is skipped), so both its value and 0 are accepted.
    may_be_zero: bool,
}

/// An anon_vma: `(id, reusable)`.
type Anon = Option<(u64, bool)>;

/// True when VMAs with these anon_vmas may merge: the same one, or one
/// side without and the other not a forked child's (is_mergeable_anon_vma).
fn anon_mergeable(a: Anon, b: Anon) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => x.0 == y.0,
        (Some(only), None) | (None, Some(only)) => only.1,
        (None, None) => true,
    }
}

impl Page {
    fn fresh(prot: Prot, backing: Backing, vpn: u64) -> Self {
        Self {
            prot,
            thp: Thp::Default,
            dontfork: false,
            wipeonfork: false,
            backing,
            pgoff: vpn,
            anon: None,
            freed: false,
            account: matches!(backing, Backing::Private { .. }) && prot.contains(Prot::WRITE),
            may_be_zero: false,
        }
    }
    /// As on x86, write and exec imply read; only PROT_NONE cannot be read.
    fn readable(&self) -> bool {
        !self.prot.is_empty()
    }
    fn writable(&self) -> bool {
        self.prot.contains(Prot::WRITE)
    }
    fn is_shared(&self) -> bool {
        matches!(self.backing, Backing::Shared { .. })
    }
    /// True when this page (at `prev`'s page number + 1) belongs to the same
    /// VMA as `prev`, whose run so far has the anon_vma `run_anon`. Linux
    /// merges adjacent private VMAs with equal flags, page offsets that line
    /// up and mergeable anon_vmas (Linux 6.18 on the host: a written VMA
    /// moved next to another stays apart; two VMAs written separately stay
    /// apart), and shared ones when they map consecutive pages of the same
    /// object.
    fn continues(&self, prev: &Page, run_anon: Anon) -> bool {
        self.same_but_protection(prev)
            && self.prot == prev.prot
            && match (prev.backing, self.backing) {
                (Backing::Private { .. }, Backing::Private { .. }) => anon_mergeable(run_anon, self.anon),
                _ => true,
            }
    }
    /// True when the pages could be in one VMA but for their protection
    /// (anon_vma_compatible, for private pages).
    fn same_but_protection(&self, prev: &Page) -> bool {
        self.thp == prev.thp
            && self.account == prev.account
            && self.dontfork == prev.dontfork
            && self.wipeonfork == prev.wipeonfork
            && match (prev.backing, self.backing) {
                (Backing::Private { .. }, Backing::Private { .. }) => self.pgoff == prev.pgoff + 1,
                (Backing::Shared { obj: a, index: i }, Backing::Shared { obj: b, index: j }) => a == b && j == i + 1,
                _ => false,
            }
    }
    /// The VMA flags the crate should show for this page.
    fn vm_flags(&self) -> VmFlags {
        let mut flags = VmFlags::from_prot(self.prot) | VmFlags::MAYREAD | VmFlags::MAYWRITE | VmFlags::MAYEXEC;
        if self.is_shared() {
            flags |= VmFlags::SHARED | VmFlags::MAYSHARE;
        }
        match self.thp {
            Thp::Default => {}
            Thp::Huge => flags |= VmFlags::HUGEPAGE,
            Thp::NoHuge => flags |= VmFlags::NOHUGEPAGE,
        }
        if self.dontfork {
            flags |= VmFlags::DONTCOPY;
        }
        if self.wipeonfork {
            flags |= VmFlags::WIPEONFORK;
        }
        if self.account {
            flags |= VmFlags::ACCOUNT;
        }
        flags
    }
}

/// A shared anonymous object (the shmem file behind MAP_SHARED|MAP_ANON).
#[derive(Debug)]
struct Obj {
    /// Its size in pages, fixed at mmap time (`shmem_zero_setup` sizes the
    /// file to the mapping); pages at or beyond it SIGBUS.
    size: u64,
    values: BTreeMap<u64, u64>,
    /// A MADV_COLLAPSE may have built a THP of a 2 MiB block reaching past
    /// `size`, which Linux maps by PMD across the end (shmem is exempt
    /// from the end-of-file check): pages past the end may then read zero
    /// instead of faulting, until the PMD goes. Not tracked in detail.
    thp_past_end: bool,
    /// `ShmemObject::id` of the crate's object.
    lib_id: u64,
}

#[derive(Clone, Debug, Default)]
struct Model {
    pages: BTreeMap<u64, Page>,
    /// Every page number ever mapped here: once unmapped it must have no
    /// page-table entry.
    seen: BTreeSet<u64>,
}

impl Model {
    fn insert(&mut self, vpn: u64, page: Page) {
        self.pages.insert(vpn, page);
        self.seen.insert(vpn);
    }
    fn remove(&mut self, start: u64, end: u64) {
        let keys: Vec<u64> = self.pages.range(start..end).map(|(&k, _)| k).collect();
        for k in keys {
            self.pages.remove(&k);
        }
    }
    /// Number of mapped pages in `[start, end)`.
    fn mapped_pages(&self, start: u64, end: u64) -> u64 {
        self.pages.range(start..end).count() as u64
    }
    /// The end of the mapped prefix of `[start, end)`: the first unmapped
    /// page, or `end`.
    fn mapped_prefix_end(&self, start: u64, end: u64) -> u64 {
        let mut expected = start;
        for (&vpn, _) in self.pages.range(start..end) {
            if vpn != expected {
                break;
            }
            expected += 1;
        }
        expected
    }
    fn any_mapped(&self, start: u64, end: u64) -> bool {
        self.pages.range(start..end).next().is_some()
    }
    fn range(&self, start: u64, end: u64) -> impl Iterator<Item = (&u64, &Page)> {
        self.pages.range(start..end)
    }
    /// Maximal runs of pages forming one VMA, as `[start, end)` page numbers.
    fn runs(&self) -> Vec<(u64, u64)> {
        self.runs_with_anon().into_iter().map(|(s, e, _)| (s, e)).collect()
    }
    /// The runs with the anon_vma of each (the first one seen in it).
    fn runs_with_anon(&self) -> Vec<(u64, u64, Anon)> {
        let mut out: Vec<(u64, u64, Anon)> = Vec::new();
        let mut prev: Option<(u64, Page)> = None;
        for (&vpn, page) in &self.pages {
            match prev {
                Some((pv, pp)) if pv + 1 == vpn && page.continues(&pp, out.last().expect("a run is open").2) => {
                    let run = out.last_mut().expect("a run is open");
                    run.1 = vpn + 1;
                    run.2 = run.2.or(page.anon);
                }
                _ => out.push((vpn, vpn + 1, page.anon)),
            }
            prev = Some((vpn, *page));
        }
        out
    }
    /// The runs lying wholly inside `[start, end)`.
    fn whole_runs(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.runs().into_iter().filter(|&(s, e)| start <= s && e <= end).collect()
    }
    /// A DONTUNMAP move emptied these runs whole: their VMAs drop their
    /// anon_vma (dontunmap_complete); the page offsets stay (Linux 6.18 on
    /// the host: a fresh mapping right after such a source stays apart).
    fn drop_anon(&mut self, runs: &[(u64, u64)]) {
        for &(s, e) in runs {
            for (_, page) in self.pages.range_mut(s..e) {
                page.anon = None;
            }
        }
    }
    /// True when emptying the runs wholly inside `[start, end)` by a
    /// DONTUNMAP move would make one mergeable with a neighbour.
    fn dontunmap_leaves_mergeable(&self, start: u64, end: u64) -> bool {
        let whole = self.whole_runs(start, end);
        let mut after = self.clone();
        after.drop_anon(&whole);
        let runs = after.runs();
        whole.iter().any(|run| !runs.contains(run))
    }
    /// Gives every page of a run the run's anon_vma (the VMAs merged).
    fn normalise(&mut self) {
        for (s, e, anon) in self.runs_with_anon() {
            for (_, page) in self.pages.range_mut(s..e) {
                page.anon = anon;
            }
        }
    }
    /// anon_vma_prepare for the private VMA holding `vpn`: the next or else
    /// the previous neighbour's reusable anon_vma if the two differ only in
    /// protection (Linux 6.18 on the host: [2,4) of [0,4) made RWX, both
    /// halves written, back to RW: one VMA), else a new one.
    fn prepare_anon(&mut self, vpn: u64, next_id: &mut u64) {
        let Some((s, e, None)) = self.runs_with_anon().into_iter().find(|&(s, e, _)| s <= vpn && vpn < e) else {
            return;
        };
        if !matches!(self.pages[&s].backing, Backing::Private { .. }) {
            return;
        }
        // The anon_vma of the page at `other` if the pages at `a` and
        // `a + 1` (one of them `other`) may share one.
        let shareable = |a: u64, other: u64| -> Anon {
            let (pa, pb) = (self.pages.get(&a)?, self.pages.get(&(a + 1))?);
            let ok = pb.same_but_protection(pa) && matches!(pa.backing, Backing::Private { .. });
            self.pages[&other].anon.filter(|anon| ok && anon.1)
        };
        let from_next = shareable(e - 1, e);
        let from_prev = || s.checked_sub(1).and_then(|p| shareable(p, p));
        let anon = from_next.or_else(from_prev).unwrap_or_else(|| {
            *next_id += 1;
            (*next_id, true)
        });
        for (_, page) in self.pages.range_mut(s..e) {
            page.anon = Some(anon);
        }
    }
    fn run_containing(&self, vpn: u64) -> Option<(u64, u64)> {
        self.runs().into_iter().find(|&(s, e)| s <= vpn && vpn < e)
    }
}

// ---------------------------------------------------------------------------
// Operations, as generated (abstract) and resolved against the model.

/// Where an operation aims, resolved at run time so that shrinking keeps
/// aiming at something sensible.
#[derive(Clone, Copy, Debug)]
struct Place {
    kind: u8,
    a: u32,
    b: u32,
}

#[derive(Clone, Copy, Debug)]
enum AddrMod {
    None,
    /// Deliberately not page aligned.
    Unaligned(u64),
    /// Just below the top of the user address space.
    NearTaskEnd,
}

#[derive(Clone, Copy, Debug)]
enum Size {
    Pages(u64),
    /// `n` pages minus a few bytes (rounds up to `n` pages).
    Unaligned(u64),
    /// From the address to the end of the VMA holding it.
    ToRunEnd,
    /// Some pages from the address, not beyond the end of its VMA.
    WithinRun(u64),
    Zero,
    /// Rounding up overflows.
    Overflow,
    /// Ends beyond TASK_SIZE.
    PastTask,
    /// (mremap new length) the old length plus `n` pages.
    Plus(u64),
    /// (mremap new length) the old length minus `n` pages, at least one.
    Minus(u64),
}

/// One step of an [`Op::Block`]: on the whole block, or (`part`) on `len`
/// pages at `offset` in it.
#[derive(Clone, Copy, Debug)]
struct BlockStep {
    /// 0-2: mprotect, 3-5: madvise, 6: munmap, 7: write, 8: read,
    /// 9: mremap to `offset` pages past the start of a window (FIXED),
    /// 10: mremap growing by `offset` pages (MAYMOVE).
    action: u8,
    part: bool,
    offset: u16,
    len: u16,
    prot: u32,
    advice: MadviseAdvice,
}

#[derive(Clone, Debug)]
enum Op {
    Mmap {
        mm: u8,
        place: Place,
        amod: AddrMod,
        size: Size,
        prot: u32,
        /// 0: no hint, 1: hint, 2: MAP_FIXED, 3: MAP_FIXED_NOREPLACE.
        mode: u8,
        shared: bool,
        populate: bool,
    },
    Munmap {
        mm: u8,
        place: Place,
        amod: AddrMod,
        size: Size,
    },
    Mprotect {
        mm: u8,
        place: Place,
        amod: AddrMod,
        size: Size,
        prot: u32,
    },
    Madvise {
        mm: u8,
        place: Place,
        amod: AddrMod,
        size: Size,
        advice: MadviseAdvice,
    },
    Mremap {
        mm: u8,
        place: Place,
        amod: AddrMod,
        size: Size,
        new_size: Size,
        /// See [`mremap_flags`].
        flags: u8,
        to: Place,
    },
    Write {
        mm: u8,
        place: Place,
        value: u64,
    },
    /// An operation on (part of) a PMD-aligned 2 MiB block inside a VMA, so
    /// huge pages meet protection changes, advice and partial unmaps.
    /// A burst of steps on the same block, so multi-step THP sequences
    /// (populate, protect, zap, collapse, split) happen often.
    Block {
        mm: u8,
        place: Place,
        steps: Vec<BlockStep>,
    },
    /// Writes `value + k` at `count` consecutive pages from `place`.
    WriteMany {
        mm: u8,
        place: Place,
        value: u64,
        count: u8,
    },
    Read {
        mm: u8,
        place: Place,
    },
    ReadAll {
        mm: u8,
    },
    Fork {
        src: u8,
        dst: u8,
    },
    Exit {
        slot: u8,
    },
}

/// Decodes the generated mremap flag choice.
fn mremap_flags(choice: u8) -> MremapFlags {
    match choice {
        0 => MremapFlags::empty(),
        1 => MremapFlags::MAYMOVE,
        2 => MremapFlags::MAYMOVE | MremapFlags::FIXED,
        3 => MremapFlags::MAYMOVE | MremapFlags::DONTUNMAP,
        4 => MremapFlags::MAYMOVE | MremapFlags::FIXED | MremapFlags::DONTUNMAP,
        5 => MremapFlags::FIXED,
        6 => MremapFlags::DONTUNMAP,
        // An unknown flag bit.
        _ => MremapFlags::MAYMOVE | MremapFlags::from_bits_retain(8),
    }
}

fn place() -> impl Strategy<Value = Place> {
    (0u8..12, any::<u32>(), any::<u32>()).prop_map(|(kind, a, b)| Place { kind, a, b })
}

/// A place for a CPU access: mostly inside existing VMAs.
fn access_place() -> impl Strategy<Value = Place> {
    (prop::sample::select(vec![0u8, 1, 3, 3, 3, 4, 4, 4, 5, 5, 6, 7, 8]), any::<u32>(), any::<u32>())
        .prop_map(|(kind, a, b)| Place { kind, a, b })
}

fn amod() -> impl Strategy<Value = AddrMod> {
    prop_oneof![
        40 => Just(AddrMod::None),
        1 => (1u64..PAGE).prop_map(AddrMod::Unaligned),
        1 => Just(AddrMod::NearTaskEnd),
    ]
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        12 => (1u64..=8).prop_map(Size::Pages),
        4 => (1u64..=64).prop_map(Size::Pages),
        2 => (1u64..=8).prop_map(Size::Unaligned),
        8 => prop::sample::select(vec![256u64, 511, 512, 512, 512, 513, 1024]).prop_map(Size::Pages),
        5 => Just(Size::ToRunEnd),
        10 => any::<u64>().prop_map(Size::WithinRun),
        6 => Just(Size::Pages(PMD_PAGES)),
        1 => Just(Size::Zero),
        1 => Just(Size::Overflow),
        1 => Just(Size::PastTask),
    ]
}

fn new_size() -> impl Strategy<Value = Size> {
    prop_oneof![
        5 => (1u64..=16).prop_map(Size::Plus),
        1 => Just(Size::Plus(PMD_PAGES)),
        // The same length: with FIXED, a move of every VMA in the range.
        3 => Just(Size::Plus(0)),
        3 => (1u64..=8).prop_map(Size::Minus),
        4 => size(),
    ]
}

fn prot() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![
        Prot::RW.bits(),
        Prot::RW.bits(),
        Prot::RW.bits(),
        Prot::RW.bits(),
        Prot::RW.bits(),
        Prot::READ.bits(),
        Prot::NONE.bits(),
        (Prot::READ | Prot::EXEC).bits(),
    ])
}

fn advice() -> impl Strategy<Value = MadviseAdvice> {
    prop::sample::select(vec![
        MadviseAdvice::DontNeed,
        MadviseAdvice::DontNeed,
        MadviseAdvice::Free,
        MadviseAdvice::HugePage,
        MadviseAdvice::NoHugePage,
        MadviseAdvice::PopulateWrite,
        MadviseAdvice::PopulateWrite,
        MadviseAdvice::PopulateRead,
        MadviseAdvice::Collapse,
        MadviseAdvice::Collapse,
        MadviseAdvice::DontFork,
        MadviseAdvice::DoFork,
        MadviseAdvice::WipeOnFork,
        MadviseAdvice::KeepOnFork,
        MadviseAdvice::PageOut,
    ])
}

fn block_step() -> impl Strategy<Value = BlockStep> {
    (
        0u8..11,
        prop::bool::weighted(0.35),
        0u16..512,
        1u16..600,
        prop::sample::select(vec![Prot::NONE.bits(), Prot::READ.bits(), Prot::RW.bits()]),
        prop::sample::select(vec![
            MadviseAdvice::DontNeed,
            MadviseAdvice::DontNeed,
            MadviseAdvice::DontNeed,
            MadviseAdvice::Collapse,
            MadviseAdvice::Collapse,
            MadviseAdvice::Collapse,
            MadviseAdvice::PopulateWrite,
            MadviseAdvice::PopulateRead,
            MadviseAdvice::Free,
            MadviseAdvice::HugePage,
            MadviseAdvice::NoHugePage,
            MadviseAdvice::WipeOnFork,
            MadviseAdvice::DontFork,
        ]),
    )
        .prop_map(|(action, part, offset, len, prot, advice)| BlockStep {
            action,
            part,
            offset,
            len,
            prot,
            advice,
        })
}

/// A first mapping over (part of) a window, so later operations find
/// something to work on.
fn setup_op() -> impl Strategy<Value = Op> {
    (
        0u32..3,
        any::<u32>(),
        prop::sample::select(vec![16u64, 64, 256, 512, 1024]),
        prot(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(w, b, pages, prot, shared, populate)| Op::Mmap {
            mm: 0,
            place: Place { kind: 0, a: w, b: b.wrapping_mul(2) },
            amod: AddrMod::None,
            size: Size::Pages(pages),
            prot,
            mode: 2,
            shared,
            populate,
        })
}

/// A few window mappings, often read in (huge zero pages), then anything.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    (prop::collection::vec(setup_op(), 1..4), any::<bool>(), prop::collection::vec(op(), 1..40)).prop_map(
        |(mut setup, touch, rest)| {
            if touch {
                setup.push(Op::ReadAll { mm: 0 });
            }
            setup.extend(rest);
            setup
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        14 => (
            any::<u8>(),
            place(),
            amod(),
            size(),
            prot(),
            prop::sample::select(vec![0u8, 1, 1, 2, 2, 2, 3]),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(mm, place, amod, size, prot, mode, shared, populate)| Op::Mmap {
                mm,
                place,
                amod,
                size,
                prot,
                mode,
                shared,
                populate,
            }),
        7 => (any::<u8>(), place(), amod(), size())
            .prop_map(|(mm, place, amod, size)| Op::Munmap { mm, place, amod, size }),
        14 => (
            any::<u8>(),
            place(),
            amod(),
            size(),
            prop_oneof![
                30 => prop::sample::select(vec![
                    Prot::NONE.bits(),
                    Prot::READ.bits(),
                    Prot::RW.bits(),
                    (Prot::READ | Prot::EXEC).bits(),
                ]),
                1 => Just(0x40 | Prot::READ.bits()),
                // PROT_SEM.
                1 => Just(0x8),
            ],
        )
            .prop_map(|(mm, place, amod, size, prot)| Op::Mprotect {
                mm,
                place,
                amod,
                size,
                prot,
            }),
        14 => (any::<u8>(), place(), amod(), size(), advice())
            .prop_map(|(mm, place, amod, size, advice)| Op::Madvise {
                mm,
                place,
                amod,
                size,
                advice,
            }),
        10 => (
            any::<u8>(),
            place(),
            amod(),
            size(),
            new_size(),
            prop::sample::select(vec![0u8, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 4, 4, 5, 6, 7]),
            place(),
        )
            .prop_map(|(mm, place, amod, size, new_size, flags, to)| Op::Mremap {
                mm,
                place,
                amod,
                size,
                new_size,
                flags,
                to,
            }),
        16 => (any::<u8>(), access_place(), 1u64..u64::MAX)
            .prop_map(|(mm, place, value)| Op::Write { mm, place, value }),
        10 => (any::<u8>(), any::<u32>(), any::<u32>(), prop::collection::vec(block_step(), 1..6))
            .prop_map(|(mm, a, b, steps)| Op::Block { mm, place: Place { kind: 8, a, b }, steps }),
        8 => (any::<u8>(), access_place(), 1u64..u64::MAX / 2, 2u8..24)
            .prop_map(|(mm, place, value, count)| Op::WriteMany { mm, place, value, count }),
        8 => (any::<u8>(), access_place()).prop_map(|(mm, place)| Op::Read { mm, place }),
        3 => any::<u8>().prop_map(|mm| Op::ReadAll { mm }),
        4 => (any::<u8>(), 1u8..SLOTS as u8).prop_map(|(src, dst)| Op::Fork { src, dst }),
        2 => (1u8..SLOTS as u8).prop_map(|slot| Op::Exit { slot }),
    ]
}

// ---------------------------------------------------------------------------
// The world: the machine, the address spaces, and their models.

struct Slot {
    mm: Arc<Mm>,
    model: Model,
}

struct World {
    kernel: Arc<Kernel>,
    slots: Vec<Option<Slot>>,
    objs: Vec<Obj>,
    log: String,
    /// The last anon_vma id handed out.
    last_anon: u64,
}

/// What a CPU access should do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Access {
    Ok(u64),
    /// The value, or 0 if the page was discarded after MADV_FREE.
    OkOrZero(u64),
    Fault,
    /// Past a shared object's end, where a collapsed THP may still map it
    /// (`Obj::thp_past_end`): a fault, or any value.
    PastEnd,
}

/// The errno a failing call must return: Linux's.
#[derive(Clone, Copy, Debug)]
struct Errs {
    linux: Errno,
}

fn linux(errno: Errno) -> Errs {
    Errs { linux: errno }
}

/// A VMA as compared: `(start, end, flags, shared object id and pgoff)`.
type VmaView = (u64, u64, VmFlags, Option<(u64, u64)>);

fn vma_list(mm: &Mm) -> Vec<VmaView> {
    mm.mmap_read()
        .iter()
        .map(|v| {
            let shared = match &v.backing {
                VmaBacking::Anon => None,
                VmaBacking::File(inode) => Some((inode.id(), v.pgoff)),
                // Never created here; shown as an impossible object id.
                #[allow(unreachable_patterns)]
                _ => Some((u64::MAX, v.pgoff)),
            };
            (v.start, v.end, v.flags, shared)
        })
        .collect()
}

fn errno_of<T>(r: &Result<T, MmError>) -> Option<Errno> {
    r.as_ref().err().map(MmError::errno)
}

fn page_align(len: u64) -> u64 {
    len.wrapping_add(PAGE - 1) & !(PAGE - 1)
}

impl World {
    fn new(thp: ThpMode) -> (Self, u64) {
        let kernel = kernel(64, thp);
        let baseline = kernel.phys().free_frames();
        let mm = kernel.create_mm().expect("create_mm");
        let mut slots: Vec<Option<Slot>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(Slot { mm, model: Model::default() });
        (Self { kernel, slots, objs: Vec::new(), log: String::new(), last_anon: 0 }, baseline)
    }

    /// The slot an operation addresses: its own if alive, else slot 0.
    fn slot_index(&self, mm: u8) -> usize {
        let i = mm as usize % SLOTS;
        if self.slots[i].is_some() {
            i
        } else {
            0
        }
    }

    fn slot(&self, i: usize) -> &Slot {
        self.slots[i].as_ref().expect("slot alive")
    }

    fn model_mut(&mut self, i: usize) -> &mut Model {
        &mut self.slots[i].as_mut().expect("slot alive").model
    }

    fn fail(&self, msg: impl std::fmt::Display) -> TestCaseError {
        TestCaseError::fail(format!("{msg}\n--- operations so far ---\n{}", self.log))
    }

    fn note(&mut self, line: impl std::fmt::Display) {
        let _ = writeln!(self.log, "{line}");
    }

    // --- resolution ------------------------------------------------------

    fn resolve_vpn(model: &Model, p: Place) -> u64 {
        let window = |a: u32, b: u32| {
            let w = a as usize % WINDOWS.len();
            let (base, len) = WINDOWS[w];
            let idx = if b % 2 == 0 {
                let pts = INTERESTING[w];
                pts[(b / 2) as usize % pts.len()]
            } else {
                u64::from(b / 2) % len
            };
            base / PAGE + idx
        };
        let runs = model.runs();
        // Kinds 0-2: a window page; 3-5: a page of an existing VMA; 6: the
        // start of one; 7: the page just past one; 8 and up: a PMD-aligned
        // page in one.
        match p.kind {
            0..=2 => window(p.a, p.b),
            _ if runs.is_empty() => window(p.a, p.b),
            3..=5 => {
                let (s, e) = runs[p.a as usize % runs.len()];
                s + u64::from(p.b) % (e - s)
            }
            6 => runs[p.a as usize % runs.len()].0,
            7 => runs[p.a as usize % runs.len()].1,
            _ => {
                // A PMD-aligned page inside a VMA, so THP paths are hit.
                let (s, e) = runs[p.a as usize % runs.len()];
                let first = s.div_ceil(PMD_PAGES) * PMD_PAGES;
                if first < e {
                    first + u64::from(p.b % 2) * PMD_PAGES
                } else {
                    window(p.a, p.b)
                }
            }
        }
    }

    /// The first page of a 2 MiB block wholly inside a VMA, if there is one;
    /// else of a block that a VMA reaches into; else of window 1.
    fn resolve_block(model: &Model, p: Place) -> u64 {
        let runs = model.runs();
        let blocks = |whole: bool| -> Vec<u64> {
            runs.iter()
                .flat_map(|&(s, e)| {
                    let first = if whole { s.div_ceil(PMD_PAGES) } else { s / PMD_PAGES };
                    let last = if whole { e / PMD_PAGES } else { e.div_ceil(PMD_PAGES) };
                    (first..last).map(|b| b * PMD_PAGES)
                })
                .collect()
        };
        let whole = blocks(true);
        let pick = if whole.is_empty() || p.b % 4 == 0 { blocks(false) } else { whole };
        if pick.is_empty() {
            WINDOWS[1].0 / PAGE
        } else {
            pick[p.a as usize % pick.len()]
        }
    }

    fn resolve_addr(model: &Model, p: Place, m: AddrMod) -> u64 {
        match m {
            AddrMod::None => Self::resolve_vpn(model, p) * PAGE,
            AddrMod::Unaligned(k) => Self::resolve_vpn(model, p) * PAGE + k,
            AddrMod::NearTaskEnd => TASK_SIZE - 2 * PAGE,
        }
    }

    fn resolve_len(model: &Model, addr: u64, s: Size, old: u64) -> u64 {
        match s {
            Size::Pages(n) => n * PAGE,
            Size::Unaligned(n) => n * PAGE - 123,
            Size::ToRunEnd => model.run_containing(addr / PAGE).map_or(PAGE, |(_, e)| (e - addr / PAGE) * PAGE),
            Size::WithinRun(n) => match model.run_containing(addr / PAGE) {
                Some((_, e)) => (1 + n % (e - addr / PAGE)) * PAGE,
                None => (1 + n % 8) * PAGE,
            },
            Size::Zero => 0,
            Size::Overflow => u64::MAX - 100,
            Size::PastTask => TASK_SIZE,
            Size::Plus(n) => page_align(old) + n * PAGE,
            Size::Minus(n) => page_align(old).saturating_sub(n * PAGE).max(PAGE),
        }
    }

    // --- model queries ---------------------------------------------------

    /// What a CPU access to the page at `vpn` of slot `i` should do.
    fn expect_access(&self, i: usize, vpn: u64, write: bool) -> Access {
        let Some(page) = self.slot(i).model.pages.get(&vpn) else {
            return Access::Fault;
        };
        let allowed = if write { page.writable() } else { page.readable() };
        if !allowed {
            return Access::Fault;
        }
        match page.backing {
            Backing::Private { value } if page.may_be_zero => Access::OkOrZero(value),
            Backing::Private { value } => Access::Ok(value),
            Backing::Shared { obj, index } => {
                let o = &self.objs[obj];
                if index >= o.size && o.thp_past_end {
                    Access::PastEnd
                } else if index >= o.size {
                    Access::Fault
                } else {
                    Access::Ok(o.values.get(&index).copied().unwrap_or(0))
                }
            }
        }
    }

    fn value_of(&self, page: &Page) -> u64 {
        match page.backing {
            Backing::Private { value } => value,
            Backing::Shared { obj, index } => self.objs[obj].values.get(&index).copied().unwrap_or(0),
        }
    }

    /// A huge leaf of slot `i` that crosses a VMA edge, if any.
    fn straddling_huge_leaf(&self, i: usize) -> Option<u64> {
        let slot = self.slot(i);
        slot.model.runs().into_iter().flat_map(|(s, e)| [s * PAGE, e * PAGE]).find(|&va| {
            let (level, entry) = leaf(&slot.mm, va);
            level != hmm_pagetable::Level::Pte && !entry.is_none() && va % level.entry_bytes() != 0
        })
    }

    fn would_exceed(&self, i: usize, extra_pages: u64) -> bool {
        self.slot(i).model.pages.len() as u64 + extra_pages > MAX_PAGES_PER_MM
    }

    // --- invariants ------------------------------------------------------

    /// Merged runs share one anon_vma (see [`Model::normalise`]).
    fn normalise_all(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            slot.model.normalise();
        }
    }

    /// A private page is about to be created at `vpn` of slot `i`.
    fn prepare_anon(&mut self, i: usize, vpn: u64) {
        let mut last = self.last_anon;
        self.model_mut(i).normalise();
        self.model_mut(i).prepare_anon(vpn, &mut last);
        self.last_anon = last;
    }

    fn check_all(&self) -> Result<(), TestCaseError> {
        for i in 0..SLOTS {
            if self.slots[i].is_some() {
                self.check_vmas(i)?;
                self.check_page_tables(i)?;
            }
        }
        Ok(())
    }

    /// The VMA tree is exactly the model's runs.
    fn check_vmas(&self, i: usize) -> Result<(), TestCaseError> {
        let slot = self.slot(i);
        let actual = vma_list(&slot.mm);
        let expected: Vec<VmaView> = slot
            .model
            .runs()
            .into_iter()
            .map(|(s, e)| {
                let page = slot.model.pages[&s];
                let shared = match page.backing {
                    Backing::Private { .. } => None,
                    Backing::Shared { obj, index } => Some((self.objs[obj].lib_id, index)),
                };
                (s * PAGE, e * PAGE, page.vm_flags(), shared)
            })
            .collect();
        if actual != expected {
            return Err(self.fail(format!(
                "mm{i}: VMA tree differs from the model\n  actual:   {}\n  expected: {}",
                fmt_vmas(&actual),
                fmt_vmas(&expected)
            )));
        }
        Ok(())
    }

    /// Looks at the page tables without faulting: data of present entries,
    /// their permissions, and that unmapped pages have no entries.
    fn check_page_tables(&self, i: usize) -> Result<(), TestCaseError> {
        let slot = self.slot(i);
        let phys = self.kernel.phys();
        for &vpn in &slot.model.seen {
            let va = vpn * PAGE;
            let (level, entry) = leaf(&slot.mm, va);
            let Some(page) = slot.model.pages.get(&vpn) else {
                if !entry.is_none() {
                    return Err(
                        self.fail(format!("mm{i}: unmapped page {va:#x} still has an entry {entry:?} at {level:?}"))
                    );
                }
                continue;
            };
            if entry.is_none() {
                if let Backing::Private { value } = page.backing {
                    if value != 0 && !page.may_be_zero {
                        return Err(
                            self.fail(format!("mm{i}: private page {va:#x} lost its data {value:#x} (no entry)"))
                        );
                    }
                }
                continue;
            }
            if !entry.is_present() {
                return Err(self.fail(format!("mm{i}: unexpected non-present entry {entry:?} at {va:#x}")));
            }
            if entry.is_write() && !page.writable() {
                return Err(self.fail(format!("mm{i}: {va:#x} has a writable entry but protection {:?}", page.prot)));
            }
            if entry.is_accessible() != page.readable() {
                return Err(self.fail(format!(
                    "mm{i}: {va:#x} entry accessible={} ({level:?}, {entry:?}) but protection {:?}",
                    entry.is_accessible(),
                    page.prot
                )));
            }
            if let Backing::Shared { obj, index } = page.backing {
                if index >= self.objs[obj].size && !self.objs[obj].thp_past_end {
                    return Err(self.fail(format!(
                        "mm{i}: {va:#x} maps page {index} of a {}-page shared object",
                        self.objs[obj].size
                    )));
                }
            }
            let size = level.entry_bytes();
            let pfn = Pfn(entry.pfn().as_u64() + (va & (size - 1)) / PAGE);
            let mut buf = [0u8; 8];
            phys.read(pfn, 0, &mut buf);
            let actual = u64::from_le_bytes(buf);
            let expected = self.value_of(page);
            if actual != expected && !(page.may_be_zero && actual == 0) {
                return Err(self.fail(format!(
                    "mm{i}: {va:#x} ({level:?} entry {entry:?}) holds {actual:#x}, model says {expected:#x}"
                )));
            }
        }
        Ok(())
    }

    /// A failed call left the VMA list as it was.
    fn check_unchanged(&self, i: usize, before: &[VmaView]) -> Result<(), TestCaseError> {
        let after = vma_list(&self.slot(i).mm);
        if after != before {
            return Err(self.fail(format!(
                "mm{i}: a failed call changed the VMAs\n  before: {}\n  after:  {}",
                fmt_vmas(before),
                fmt_vmas(&after)
            )));
        }
        Ok(())
    }

    /// Compares an errno outcome; `Ok(true)` when the call failed as expected.
    fn expect_err<T: std::fmt::Debug>(
        &self,
        what: &str,
        expected: Errs,
        actual: &Result<T, MmError>,
    ) -> Result<(), TestCaseError> {
        match actual {
            Err(e) if e.errno() == expected.linux => Ok(()),
            _ => Err(self.fail(format!("{what}: expected {expected:?}, got {actual:?}"))),
        }
    }

    // --- steps -----------------------------------------------------------

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Mmap { mm, place, amod, size, prot, mode, shared, populate } => {
                self.mmap(mm, place, amod, size, prot, mode, shared, populate)
            }
            Op::Munmap { mm, place, amod, size } => self.munmap(mm, place, amod, size),
            Op::Mprotect { mm, place, amod, size, prot } => self.mprotect(mm, place, amod, size, prot),
            Op::Madvise { mm, place, amod, size, advice } => self.madvise(mm, place, amod, size, advice),
            Op::Mremap { mm, place, amod, size, new_size, flags, to } => {
                self.mremap(mm, place, amod, size, new_size, flags, to)
            }
            Op::Write { mm, place, value } => self.write(mm, place, value),
            Op::Block { mm, place, ref steps } => {
                let i = self.slot_index(mm);
                let block = Self::resolve_block(&self.slot(i).model, place);
                for (k, step) in steps.iter().enumerate() {
                    let (s, n) = if step.part {
                        (block + u64::from(step.offset), u64::from(step.len))
                    } else {
                        (block, PMD_PAGES)
                    };
                    let (addr, len) = (s * PAGE, n * PAGE);
                    match step.action {
                        0..=2 => self.mprotect_at(i, addr, len, Prot::from_bits_retain(step.prot)),
                        3..=5 => self.madvise_at(i, addr, len, step.advice),
                        6 => self.munmap_at(i, addr, len),
                        7 => self.write_at(i, s, u64::from(step.len) << 32 | k as u64),
                        9 => {
                            let to = WINDOWS[usize::from(step.len) % WINDOWS.len()].0 + u64::from(step.offset) * PAGE;
                            self.mremap_at(i, addr, len, len, MremapFlags::MAYMOVE | MremapFlags::FIXED, to)
                        }
                        10 => {
                            self.mremap_at(i, addr, len, len + u64::from(step.offset) * PAGE, MremapFlags::MAYMOVE, 0)
                        }
                        _ => {
                            self.note(format!("mm{i}: read_u64 of {n} pages at {addr:#x}"));
                            (s..s + n).try_for_each(|vpn| self.check_read(i, vpn))
                        }
                    }?;
                    self.note_thp_faults();
                    self.normalise_all();
                    self.check_all()?;
                }
                Ok(())
            }
            Op::WriteMany { mm, place, value, count } => {
                let i = self.slot_index(mm);
                let vpn = Self::resolve_vpn(&self.slot(i).model, place);
                for k in 0..u64::from(count) {
                    self.write_at(i, vpn + k, value + k)?;
                }
                Ok(())
            }
            Op::Read { mm, place } => self.read(mm, place),
            Op::ReadAll { mm } => self.read_all(mm),
            Op::Fork { src, dst } => self.fork(src, dst),
            Op::Exit { slot } => self.exit(slot),
        }?;
        self.note_thp_faults();
        self.normalise_all();
        self.check_all()
    }

    /// A PMD leaf in a private VMA means a THP fault happened there, and
    /// Linux prepares the anon_vma before choosing between a THP and the
    /// huge zero page (`do_huge_pmd_anonymous_page`): a read that maps the
    /// huge zero page (host: fork then copies it) gives the VMA an
    /// anon_vma. Whether a THP fault is taken is the crate's choice (Linux
    /// may fall back), so it is read from the page table.
    fn note_thp_faults(&mut self) {
        for i in 0..SLOTS {
            let Some(slot) = self.slots[i].as_ref() else { continue };
            let huge: Vec<u64> = slot
                .model
                .pages
                .iter()
                .filter(|(_, p)| p.anon.is_none() && matches!(p.backing, Backing::Private { .. }))
                .map(|(&vpn, _)| vpn)
                .filter(|&vpn| {
                    let (level, entry) = leaf(&slot.mm, vpn * PAGE);
                    level == hmm_pagetable::Level::Pmd && entry.is_present()
                })
                .collect();
            for vpn in huge {
                if self.slot(i).model.pages[&vpn].anon.is_none() {
                    self.prepare_anon(i, vpn);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn mmap(
        &mut self,
        mm: u8,
        place: Place,
        amod: AddrMod,
        size: Size,
        prot: u32,
        mode: u8,
        shared: bool,
        populate: bool,
    ) -> Result<(), TestCaseError> {
        let i = self.slot_index(mm);
        let model = &self.slot(i).model;
        let addr = if mode == 0 { 0 } else { Self::resolve_addr(model, place, amod) };
        let len = Self::resolve_len(model, addr, size, 0);
        let prot = Prot::from_bits_retain(prot);
        let mut flags = MapFlags::ANONYMOUS | if shared { MapFlags::SHARED } else { MapFlags::PRIVATE };
        match mode {
            2 => flags |= MapFlags::FIXED,
            3 => flags |= MapFlags::FIXED_NOREPLACE,
            _ => {}
        }
        if populate {
            flags |= MapFlags::POPULATE;
        }
        let call = format!("mm{i}.mmap({addr:#x}, {len:#x}, {prot:?}, {flags:?})");
        let pages = page_align(len) / PAGE;
        let fixed = flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
        // do_mmap: zero length is EINVAL; a length that rounds up to zero or
        // exceeds TASK_SIZE is ENOMEM; with MAP_FIXED the range must fit
        // below TASK_SIZE (ENOMEM, checked before alignment: EINVAL);
        // MAP_FIXED_NOREPLACE over anything mapped is EEXIST.
        let expected: Result<(), Errs> = if len == 0 {
            Err(linux(Errno::Inval))
        } else if page_align(len) == 0 || page_align(len) > TASK_SIZE {
            Err(linux(Errno::NoMem))
        } else if fixed && addr > TASK_SIZE - page_align(len) {
            // The range is checked before the alignment.
            Err(linux(Errno::NoMem))
        } else if fixed && addr % PAGE != 0 {
            Err(linux(Errno::Inval))
        } else if mode == 3 && model.any_mapped(addr / PAGE, addr / PAGE + pages) {
            Err(linux(Errno::Exist))
        } else {
            Ok(())
        };
        if expected.is_ok() && self.would_exceed(i, pages) {
            self.note(format!("{call}: skipped (page budget)"));
            return Ok(());
        }
        let before = vma_list(&self.slot(i).mm);
        let actual = self.slot(i).mm.mmap(addr, len, prot, flags);
        self.note(format!("{call} = {actual:x?}"));
        match expected {
            Err(e) => {
                self.expect_err(&call, e, &actual)?;
                self.check_unchanged(i, &before)
            }
            Ok(()) => {
                let start = match actual {
                    Ok(start) => start,
                    Err(_) => return Err(self.fail(format!("{call}: expected success, got {actual:?}"))),
                };
                let model = &self.slot(i).model;
                let (s, e) = (start / PAGE, start / PAGE + pages);
                let placed_ok = start % PAGE == 0
                    && start.checked_add(pages * PAGE).is_some_and(|end| end <= TASK_SIZE)
                    && if fixed {
                        start == addr
                    } else {
                        // Anywhere free, at or above mmap_min_addr; a free,
                        // aligned hint is honoured.
                        let hint_free = addr != 0
                            && addr % PAGE == 0
                            && addr >= MMAP_MIN_ADDR
                            && addr + pages * PAGE <= TASK_SIZE
                            && !model.any_mapped(addr / PAGE, addr / PAGE + pages);
                        start >= MMAP_MIN_ADDR && !model.any_mapped(s, e) && (!hint_free || start == addr)
                    };
                if !placed_ok {
                    return Err(self.fail(format!("{call}: placed at {start:#x}, not allowed")));
                }
                let backing = if shared {
                    let lib_id = match self.slot(i).mm.mmap_read().vma(start).map(|v| &v.backing) {
                        Some(VmaBacking::File(inode)) => inode.id(),
                        other => return Err(self.fail(format!("{call}: no shmem VMA at {start:#x}: {other:?}"))),
                    };
                    self.objs.push(Obj { size: pages, values: BTreeMap::new(), thp_past_end: false, lib_id });
                    Some(self.objs.len() - 1)
                } else {
                    None
                };
                let model = self.model_mut(i);
                model.remove(s, e);
                for (k, vpn) in (s..e).enumerate() {
                    let b = match backing {
                        Some(obj) => Backing::Shared { obj, index: k as u64 },
                        None => Backing::Private { value: 0 },
                    };
                    model.insert(vpn, Page::fresh(prot, b, vpn));
                }
                // MAP_POPULATE of a writable private mapping write-faults it:
                // the (possibly merged) VMA gets an anon_vma.
                if populate && !shared && prot.contains(Prot::WRITE) {
                    self.prepare_anon(i, s);
                }
                Ok(())
            }
        }
    }

    fn munmap(&mut self, mm: u8, place: Place, amod: AddrMod, size: Size) -> Result<(), TestCaseError> {
        let i = self.slot_index(mm);
        let model = &self.slot(i).model;
        let addr = Self::resolve_addr(model, place, amod);
        let len = Self::resolve_len(model, addr, size, 0);
        self.munmap_at(i, addr, len)
    }

    fn munmap_at(&mut self, i: usize, addr: u64, len: u64) -> Result<(), TestCaseError> {
        let call = format!("mm{i}.munmap({addr:#x}, {len:#x})");
        // munmap: EINVAL unless aligned, non-empty and below TASK_SIZE.
        let rlen = page_align(len);
        let expected =
            if addr % PAGE != 0 || len == 0 || rlen == 0 || addr.checked_add(rlen).is_none_or(|end| end > TASK_SIZE) {
                Err(linux(Errno::Inval))
            } else {
                Ok(())
            };
        let before = vma_list(&self.slot(i).mm);
        let actual = self.slot(i).mm.munmap(addr, len);
        self.note(format!("{call} = {actual:?}"));
        match expected {
            Err(e) => {
                self.expect_err(&call, e, &actual)?;
                self.check_unchanged(i, &before)
            }
            Ok(()) => {
                if actual.is_err() {
                    return Err(self.fail(format!("{call}: expected success, got {actual:?}")));
                }
                self.model_mut(i).remove(addr / PAGE, (addr + rlen) / PAGE);
                Ok(())
            }
        }
    }

    fn mprotect(&mut self, mm: u8, place: Place, amod: AddrMod, size: Size, prot: u32) -> Result<(), TestCaseError> {
        let i = self.slot_index(mm);
        let model = &self.slot(i).model;
        let addr = Self::resolve_addr(model, place, amod);
        let len = Self::resolve_len(model, addr, size, 0);
        self.mprotect_at(i, addr, len, Prot::from_bits_retain(prot))
    }

    fn mprotect_at(&mut self, i: usize, addr: u64, len: u64, prot: Prot) -> Result<(), TestCaseError> {
        let model = &self.slot(i).model;
        let call = format!("mm{i}.mprotect({addr:#x}, {len:#x}, {prot:?})");
        // do_mprotect_pkey: unaligned start is EINVAL; a zero length
        // succeeds; an end that wraps (length rounding to zero included) is
        // ENOMEM; unknown PROT bits are EINVAL. Then the VMAs are changed in
        // order up to the first gap (ENOMEM; a range starting in a gap
        // changes nothing, one past TASK_SIZE meets a gap there). Linux 6.18
        // on the host: mprotect over [rw][gap][rw] makes the first part
        // read-only and returns ENOMEM. (EACCES needs a VMA without
        // VM_MAYWRITE, never generated here.)
        let rlen = page_align(len);
        let end = addr.wrapping_add(rlen);
        // PROT_SEM (0x8) is valid on x86 and grants nothing (Linux 6.18 on
        // the host: mprotect(PROT_SEM) = 0, the VMA becomes ---p).
        let bad_prot = prot.bits() & !(Prot::all().bits() | 0x8) != 0;
        let (s, e) = (addr / PAGE, end / PAGE);
        let (expected, changed_end): (Result<(), Errs>, u64) = if addr % PAGE != 0 {
            (Err(linux(Errno::Inval)), s)
        } else if len == 0 {
            (Ok(()), s)
        } else if end <= addr {
            (Err(linux(Errno::NoMem)), s)
        } else if bad_prot {
            (Err(linux(Errno::Inval)), s)
        } else {
            let mapped_end = model.mapped_prefix_end(s, e);
            (if mapped_end == e { Ok(()) } else { Err(linux(Errno::NoMem)) }, mapped_end)
        };
        let before = vma_list(&self.slot(i).mm);
        let actual = self.slot(i).mm.mprotect(addr, len, prot);
        self.note(format!("{call} = {actual:?}"));
        match expected {
            Err(e) => self.expect_err(&call, e, &actual)?,
            Ok(()) if actual.is_err() => {
                return Err(self.fail(format!("{call}: expected success, got {actual:?}")));
            }
            Ok(()) => {}
        }
        if changed_end == s {
            return self.check_unchanged(i, &before);
        }
        for (_, page) in self.model_mut(i).pages.range_mut(s..changed_end) {
            // PROT_SEM leaves no trace in the VMA.
            let new_prot = prot & (Prot::READ | Prot::WRITE | Prot::EXEC);
            if new_prot == page.prot {
                continue;
            }
            let private = matches!(page.backing, Backing::Private { .. });
            if new_prot.contains(Prot::WRITE) {
                page.account |= private && !page.writable();
            } else if page.account && page.anon.is_none() {
                page.account = false;
            }
            page.prot = new_prot;
        }
        Ok(())
    }

    fn madvise(
        &mut self,
        mm: u8,
        place: Place,
        amod: AddrMod,
        size: Size,
        advice: MadviseAdvice,
    ) -> Result<(), TestCaseError> {
        let i = self.slot_index(mm);
        let model = &self.slot(i).model;
        let addr = Self::resolve_addr(model, place, amod);
        let len = Self::resolve_len(model, addr, size, 0);
        self.madvise_at(i, addr, len, advice)
    }

    fn madvise_at(&mut self, i: usize, addr: u64, len: u64, advice: MadviseAdvice) -> Result<(), TestCaseError> {
        let model = &self.slot(i).model;
        let call = format!("mm{i}.madvise({addr:#x}, {len:#x}, {advice:?})");
        // do_madvise: unaligned start is EINVAL; a length that rounds to zero
        // from non-zero, or an end that wraps, is EINVAL; zero length
        // succeeds. Then (madvise_walk_vmas) each VMA of the range gets the
        // advice for its part, in order, gaps skipped: the first per-VMA
        // error is returned at once (earlier VMAs keep the advice), else
        // ENOMEM if there was a gap (a range past TASK_SIZE has one). Linux
        // 6.18 on the host: NOHUGEPAGE and DONTNEED over [vma][gap][vma]
        // change both VMAs and return ENOMEM; WIPEONFORK over [anon][shared]
        // marks the anon part and returns EINVAL.
        let rlen = page_align(len);
        let end = addr.wrapping_add(rlen);
        let (s, e) = (addr / PAGE, end / PAGE);
        // `[from, to)` pages get the advice.
        let mut populated_for_write = Vec::new();
        let mut collapse_undetermined = false;
        let past_end_undetermined = matches!(advice, MadviseAdvice::PopulateRead | MadviseAdvice::PopulateWrite)
            && self.slot(i).model.pages.range(s..e).any(|(_, page)| match page.backing {
                Backing::Shared { obj, index } => index >= self.objs[obj].size && self.objs[obj].thp_past_end,
                Backing::Private { .. } => false,
            });
        let (expected, pieces): (Result<(), Errs>, Vec<(u64, u64)>) =
            if addr % PAGE != 0 || (len != 0 && rlen == 0) || end < addr {
                (Err(linux(Errno::Inval)), Vec::new())
            } else if end == addr {
                (Ok(()), Vec::new())
            } else if matches!(advice, MadviseAdvice::PopulateRead | MadviseAdvice::PopulateWrite) {
                let (result, faulted) = self.expect_populate(i, s, e, advice == MadviseAdvice::PopulateWrite);
                if advice == MadviseAdvice::PopulateWrite {
                    populated_for_write = faulted;
                }
                (result, Vec::new())
            } else {
                let mut pieces = Vec::new();
                let mut result = Ok(());
                for (rs, re) in model.runs().into_iter().filter(|&(rs, re)| rs < e && s < re) {
                    let (from, to) = (rs.max(s), re.min(e));
                    if let Err(errno) = self.vma_advice_error(&model.pages[&from], (rs, re), from, advice) {
                        result = Err(linux(errno));
                        break;
                    }
                    if advice == MadviseAdvice::Collapse && Self::collapse_undetermined(from, to) {
                        collapse_undetermined = true;
                        break;
                    }
                    pieces.push((from, to));
                }
                if result.is_ok() && model.mapped_pages(s, e) != e - s {
                    result = Err(linux(Errno::NoMem));
                }
                (result, pieces)
            };
        let before = vma_list(&self.slot(i).mm);
        let actual = self.slot(i).mm.madvise(addr, len, advice);
        self.note(format!("{call} = {actual:?}"));
        if collapse_undetermined {
            let objs: Vec<usize> = self
                .slot(i)
                .model
                .pages
                .range(s..e)
                .filter_map(|(_, page)| match page.backing {
                    Backing::Shared { obj, .. } => Some(obj),
                    Backing::Private { .. } => None,
                })
                .collect();
            for obj in objs {
                self.objs[obj].thp_past_end = true;
            }
        }
        match expected {
            _ if past_end_undetermined => {
                if let Err(error) = &actual {
                    if !matches!(error.errno(), Errno::Fault | Errno::Inval | Errno::NoMem) {
                        return Err(self.fail(format!("{call}: past a collapsed object's end, got {actual:?}")));
                    }
                }
            }
            _ if collapse_undetermined => {
                if let Err(error) = &actual {
                    if !matches!(error.errno(), Errno::Inval | Errno::NoMem) {
                        return Err(self.fail(format!("{call}: expected success, EINVAL or ENOMEM, got {actual:?}")));
                    }
                }
            }
            Err(e) => self.expect_err(&call, e, &actual)?,
            Ok(()) if actual.is_err() => {
                return Err(self.fail(format!("{call}: expected success, got {actual:?}")));
            }
            Ok(()) => {}
        }
        for vpn in populated_for_write {
            self.prepare_anon(i, vpn);
        }
        if pieces.is_empty() {
            return self.check_unchanged(i, &before);
        }
        for (from, to) in pieces {
            for (_, page) in self.model_mut(i).pages.range_mut(from..to) {
                match advice {
                    // DONTNEED: private anonymous memory reads zero
                    // afterwards; shared memory refaults from its object.
                    MadviseAdvice::DontNeed => {
                        if let Backing::Private { value, .. } = &mut page.backing {
                            *value = 0;
                            page.freed = false;
                            page.may_be_zero = false;
                        }
                    }
                    MadviseAdvice::Free if !page.is_shared() => page.freed = true,
                    MadviseAdvice::PageOut if page.freed => page.may_be_zero = true,
                    MadviseAdvice::HugePage => page.thp = Thp::Huge,
                    MadviseAdvice::NoHugePage => page.thp = Thp::NoHuge,
                    MadviseAdvice::DontFork => page.dontfork = true,
                    MadviseAdvice::DoFork => page.dontfork = false,
                    MadviseAdvice::WipeOnFork => page.wipeonfork = true,
                    MadviseAdvice::KeepOnFork => page.wipeonfork = false,
                    // MADV_FREE keeps the data absent memory pressure
                    // (there is none here, and no swap) until a PAGEOUT;
                    // COLLAPSE and PAGEOUT of other pages change no data.
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The per-VMA error of `advice` on the VMA part starting at `from`,
    /// whose first page is `page`.
    fn vma_advice_error(&self, page: &Page, vma: (u64, u64), from: u64, advice: MadviseAdvice) -> Result<(), Errno> {
        match advice {
            // MADV_FREE and MADV_WIPEONFORK: private anonymous only.
            MadviseAdvice::Free | MadviseAdvice::WipeOnFork if page.is_shared() => Err(Errno::Inval),
            // MADV_COLLAPSE (Linux 7.3, the 7.3.4 guest): the VMA must be
            // able to hold a PMD THP (anonymous with an anon_vma, or shmem;
            // not NOHUGEPAGE; page offset congruent with the address modulo
            // 2 MiB; a whole aligned block inside it); else EINVAL. A part
            // covering no whole block (crossing no 2 MiB boundary, or
            // ending on the boundary its start rounds up to) is Ok (6.18
            // answered EINVAL for the first: docs/version-differences.md).
            // (Parts covering whole blocks: see `collapse_undetermined`.)
            MadviseAdvice::Collapse => {
                let (vma_start, vma_end) = vma;
                let pgoff = match page.backing {
                    Backing::Shared { index, .. } => index,
                    Backing::Private { .. } => page.pgoff,
                };
                let congruent = from.wrapping_sub(pgoff) % PMD_PAGES == 0;
                let vma_block = vma_end >= PMD_PAGES && (vma_end - PMD_PAGES) / PMD_PAGES * PMD_PAGES >= vma_start;
                let no_anon_vma = !page.is_shared() && page.anon.is_none();
                if page.thp == Thp::NoHuge || !congruent || !vma_block || no_anon_vma {
                    Err(Errno::Inval)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// True when MADV_COLLAPSE of the VMA part `[from, to)` covers whole
    /// 2 MiB blocks: whether Linux collapses them depends on page tables
    /// (a block without one is EINVAL) and, for shmem, on large
    /// page-cache folios, neither modelled here, so the call may succeed
    /// or be EINVAL. Collapsing changes no data and no VMA either way.
    fn collapse_undetermined(from: u64, to: u64) -> bool {
        from.div_ceil(PMD_PAGES) < to / PMD_PAGES
    }

    /// MADV_POPULATE_*: pages are faulted from `s` on, stopping at the
    /// first problem (madvise_populate). Linux 6.18 on the host: a hole is
    /// ENOMEM; a VMA without VM_READ (POPULATE_READ: PROT_NONE, and also
    /// PROT_WRITE-only and PROT_EXEC-only although x86 lets the CPU read
    /// those) or without VM_WRITE (POPULATE_WRITE) is EINVAL; a page past
    /// the end of its shmem object SIGBUSes: EFAULT.
    /// Also returns the pages where a fault was made (their VMAs get an
    /// anon_vma on POPULATE_WRITE).
    fn expect_populate(&self, i: usize, s: u64, e: u64, write: bool) -> (Result<(), Errs>, Vec<u64>) {
        let model = &self.slot(i).model;
        let mut faulted = Vec::new();
        let mut vpn = s;
        while vpn < e {
            let Some(page) = model.pages.get(&vpn) else {
                return (Err(linux(Errno::NoMem)), faulted);
            };
            let needed = if write { Prot::WRITE } else { Prot::READ };
            if !page.prot.contains(needed) {
                return (Err(linux(Errno::Inval)), faulted);
            }
            if let Backing::Shared { obj, index } = page.backing {
                if index >= self.objs[obj].size {
                    return (Err(linux(Errno::Fault)), faulted);
                }
            } else {
                faulted.push(vpn);
            }
            vpn += 1;
        }
        (Ok(()), faulted)
    }

    #[allow(clippy::too_many_arguments)]
    fn mremap(
        &mut self,
        mm: u8,
        place: Place,
        amod: AddrMod,
        size: Size,
        new_size: Size,
        flag_choice: u8,
        to: Place,
    ) -> Result<(), TestCaseError> {
        let i = self.slot_index(mm);
        let model = &self.slot(i).model;
        let addr = Self::resolve_addr(model, place, amod);
        let old_len = Self::resolve_len(model, addr, size, 0);
        let flags = mremap_flags(flag_choice);
        let new_len =
            if matches!(flag_choice, 3 | 4) { old_len } else { Self::resolve_len(model, addr, new_size, old_len) };
        let new_addr = if flags.contains(MremapFlags::FIXED) { Self::resolve_vpn(model, to) * PAGE } else { 0 };
        self.mremap_at(i, addr, old_len, new_len, flags, new_addr)
    }

    fn mremap_at(
        &mut self,
        i: usize,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: MremapFlags,
        new_addr: u64,
    ) -> Result<(), TestCaseError> {
        let model = &self.slot(i).model;
        let fixed = flags.contains(MremapFlags::FIXED);
        let dontunmap = flags.contains(MremapFlags::DONTUNMAP);
        let may_move = flags.contains(MremapFlags::MAYMOVE);
        let call = format!("mm{i}.mremap({addr:#x}, {old_len:#x}, {new_len:#x}, {flags:?}, {new_addr:#x})");
        let (rold, rnew) = (page_align(old_len), page_align(new_len));
        let (a, old_pages, new_pages) = (addr / PAGE, rold / PAGE, rnew / PAGE);
        if rnew > rold && self.would_exceed(i, new_pages - old_pages) {
            self.note(format!("{call}: skipped (page budget)"));
            return Ok(());
        }

        /// What the model predicts.
        enum Plan {
            /// Returns `addr`; unmaps `[from, to)` (page numbers), maybe empty.
            Shrink { from: u64, to: u64 },
            /// Returns `addr`; the VMA grows in place to `new_pages`.
            Grow,
            /// Moves `moved` pages to `new_addr` (or anywhere free when
            /// `None`) after unmapping the destination (FIXED) and the old
            /// tail beyond `moved`.
            Move { dest: Option<u64>, moved: u64 },
            /// Moves every mapped page of the old range to the same offset
            /// from `new_addr` (FIXED, equal lengths), replacing what is
            /// there; DONTUNMAP leaves the old pages mapped and empty.
            MoveEach,
            /// Fails with `errno` after unmapping `[from, to)` (page numbers).
            UnmapThenFail { from: u64, to: u64, errno: Errno },
            /// Not modelled; the call is not made.
            Skip(&'static str),
        }

        // mremap (mm/mremap.c): flag combinations, then alignment and a zero
        // new length are EINVAL; the old address must be in a VMA (EFAULT).
        let run = model.run_containing(a);
        let old_end = addr.checked_add(rold).filter(|&e| e <= TASK_SIZE);
        let shared_vma = run.is_some_and(|(s, _)| model.pages[&s].is_shared());
        let expected: Result<Plan, Errs> = 'plan: {
            // check_mremap_params (all EINVAL): unknown flag bits, then
            // alignment, a new length rounding to zero or past TASK_SIZE, an
            // old range ending past TASK_SIZE (Linux 6.18 on the host: a
            // length near 2^64 is EINVAL), then the destination and flag
            // combinations of FIXED/DONTUNMAP.
            if MremapFlags::from_bits(flags.bits()).is_none() {
                break 'plan Err(linux(Errno::Inval));
            }
            if addr % PAGE != 0 || rnew == 0 || rnew > TASK_SIZE {
                break 'plan Err(linux(Errno::Inval));
            }
            if fixed || dontunmap {
                if new_addr % PAGE != 0 || new_addr > TASK_SIZE - rnew {
                    break 'plan Err(linux(Errno::Inval));
                }
                if !may_move || (dontunmap && rold != rnew) {
                    break 'plan Err(linux(Errno::Inval));
                }
                if addr.wrapping_add(rold) > new_addr && new_addr + rnew > addr {
                    break 'plan Err(linux(Errno::Inval));
                }
            }
            // Linux 6.17+: FIXED with equal lengths moves every VMA of the
            // range, gaps kept (remap_move). Linux 6.18 on the host: a gap
            // at the start is EFAULT; destination pages facing source gaps
            // keep whatever is mapped there.
            if fixed && rold == rnew {
                if !model.pages.contains_key(&a) {
                    break 'plan Err(linux(Errno::Fault));
                }
                break 'plan Ok(Plan::MoveEach);
            }
            let Some((_, vma_end)) = run else {
                break 'plan Err(linux(Errno::Fault));
            };
            // Linux 6.18 on the host: the old range is not checked against
            // TASK_SIZE up front. Past it, a shrink fails unmapping the tail
            // (EINVAL); anything else spans more than the VMA (EFAULT).
            if old_end.is_none() {
                if fixed && rold > rnew {
                    // mremap_to (Linux 6.18 on the host, found by hmm fuzz):
                    // the kept part must lie in the VMA (EFAULT); then the
                    // destination is unmapped, the VMA looked up again
                    // (EFAULT if that unmapped it) and the tail cut fails.
                    if a + new_pages > vma_end {
                        break 'plan Err(linux(Errno::Fault));
                    }
                    let (from, to) = (new_addr / PAGE, new_addr / PAGE + new_pages);
                    let errno = if (from..to).contains(&a) { Errno::Fault } else { Errno::Inval };
                    break 'plan Ok(Plan::UnmapThenFail { from, to, errno });
                }
                break 'plan Err(linux(if rold > rnew { Errno::Inval } else { Errno::Fault }));
            }
            if rold == 0 && shared_vma {
                // Linux duplicates a shared mapping for old_len 0: not modelled.
                break 'plan Ok(Plan::Skip("old_len 0 on shared memory"));
            }
            // vma_to_resize for whatever must be moved or grown: a private
            // mapping with old_len 0 is EINVAL; the old range must lie
            // within the one VMA (EFAULT).
            let resize_check = |old_pages: u64| {
                if old_pages == 0 {
                    Err(linux(Errno::Inval))
                } else if a + old_pages > vma_end {
                    Err(linux(Errno::Fault))
                } else {
                    Ok(())
                }
            };
            if fixed || dontunmap {
                // mremap_to: the part kept must lie in the VMA; Linux 6.18 on
                // the host checks it before unmapping anything (a FIXED
                // shrink of [rw][gap][r] to 5 pages is EFAULT with the
                // destination and the old tail still mapped). Then the
                // destination and the old tail past new_len are unmapped.
                let moved = old_pages.min(new_pages);
                if let Err(e) = resize_check(moved) {
                    break 'plan Err(e);
                }
                break 'plan Ok(Plan::Move { dest: fixed.then_some(new_addr), moved });
            }
            // Shrinking (or keeping the size) needs only the first page in a
            // VMA: the tail is simply munmapped, holes and other VMAs alike.
            if rold >= rnew {
                break 'plan Ok(Plan::Shrink { from: a + new_pages, to: a + old_pages });
            }
            if let Err(e) = resize_check(old_pages) {
                break 'plan Err(e);
            }
            // Growing: in place if the old range ends the VMA and the pages
            // after it are free; else move if allowed; else ENOMEM.
            let grow_end = a + new_pages;
            if a + old_pages == vma_end && grow_end * PAGE <= TASK_SIZE && !model.any_mapped(vma_end, grow_end) {
                break 'plan Ok(Plan::Grow);
            }
            if may_move {
                Ok(Plan::Move { dest: None, moved: old_pages })
            } else {
                Err(linux(Errno::NoMem))
            }
        };

        // The source VMAs a DONTUNMAP move empties whole lose their
        // anon_vma, but Linux does not try to merge them then: where that
        // would make one mergeable with a neighbour, the model (maximal
        // runs) cannot follow.
        let expected = match expected {
            Ok(Plan::Move { moved, .. }) if dontunmap && model.dontunmap_leaves_mergeable(a, a + moved) => {
                Ok(Plan::Skip("DONTUNMAP leaves a mergeable neighbour unmerged"))
            }
            Ok(Plan::MoveEach) if dontunmap && model.dontunmap_leaves_mergeable(a, a + old_pages) => {
                Ok(Plan::Skip("DONTUNMAP leaves a mergeable neighbour unmerged"))
            }
            other => other,
        };
        if let Ok(Plan::Skip(why)) = expected {
            self.note(format!("{call}: skipped ({why})"));
            return Ok(());
        }
        let before = vma_list(&self.slot(i).mm);
        let actual = self.slot(i).mm.mremap(addr, old_len, new_len, flags, new_addr);
        self.note(format!("{call} = {actual:x?}"));
        let plan = match expected {
            Err(e) => {
                self.expect_err(&call, e, &actual)?;
                return self.check_unchanged(i, &before);
            }
            Ok(Plan::UnmapThenFail { from, to, errno }) => {
                self.expect_err(&call, linux(errno), &actual)?;
                self.model_mut(i).remove(from, to);
                return Ok(());
            }
            Ok(plan) => plan,
        };
        let Ok(result) = actual else {
            return Err(self.fail(format!("{call}: expected success, got {actual:?}")));
        };
        match plan {
            Plan::Skip(_) | Plan::UnmapThenFail { .. } => unreachable!("handled above"),
            Plan::MoveEach => {
                if result != new_addr {
                    return Err(self.fail(format!("{call}: expected {new_addr:#x}, got {result:#x}")));
                }
                let t = new_addr / PAGE;
                let model = self.model_mut(i);
                let whole_runs = model.whole_runs(a, a + old_pages);
                let src: Vec<(u64, Page)> = model.range(a, a + old_pages).map(|(&v, p)| (v, *p)).collect();
                for (v, page) in &src {
                    model.remove(t + (v - a), t + (v - a) + 1);
                    model.insert(t + (v - a), moved_page(page, t + (v - a)));
                }
                if dontunmap {
                    model.drop_anon(&whole_runs);
                }
                for (v, _) in &src {
                    if dontunmap {
                        if let Some(Page { backing: Backing::Private { value, .. }, .. }) = model.pages.get_mut(v) {
                            *value = 0;
                        }
                    } else {
                        model.remove(*v, v + 1);
                    }
                }
            }
            Plan::Shrink { from, to } => {
                if result != addr {
                    return Err(self.fail(format!("{call}: expected {addr:#x}, got {result:#x}")));
                }
                self.model_mut(i).remove(from, to);
            }
            Plan::Grow => {
                if result != addr {
                    return Err(self.fail(format!("{call}: expected {addr:#x}, got {result:#x}")));
                }
                let model = self.model_mut(i);
                let last = model.pages[&(a + old_pages - 1)];
                for k in old_pages..new_pages {
                    model.insert(a + k, extend(&last, k - (old_pages - 1)));
                }
            }
            Plan::Move { dest, moved } => {
                let model = &self.slot(i).model;
                let t = result / PAGE;
                let ok = result % PAGE == 0
                    && result.checked_add(rnew).is_some_and(|e| e <= TASK_SIZE)
                    && match dest {
                        Some(d) => result == d,
                        None => {
                            result >= MMAP_MIN_ADDR
                                && !model.any_mapped(t, t + new_pages)
                                && !(t < a + old_pages && a < t + new_pages)
                        }
                    };
                if !ok {
                    return Err(self.fail(format!("{call}: moved to {result:#x}, not allowed")));
                }
                let model = self.model_mut(i);
                model.remove(t, t + new_pages);
                model.remove(a + moved, a + old_pages);
                let whole_runs = model.whole_runs(a, a + moved);
                let src: Vec<(u64, Page)> = model.range(a, a + moved).map(|(&v, p)| (v, *p)).collect();
                for (v, page) in &src {
                    model.insert(t + (v - a), moved_page(page, t + (v - a)));
                }
                let first = model.pages[&t];
                for k in moved..new_pages {
                    model.insert(t + k, extend(&first, k));
                }
                if dontunmap {
                    // MREMAP_DONTUNMAP: the old VMA stays, its page tables
                    // went with the move: private memory reads zero there,
                    // shared memory refaults from its object.
                    for (_, page) in model.pages.range_mut(a..a + moved) {
                        if let Backing::Private { value } = &mut page.backing {
                            *value = 0;
                        }
                    }
                    model.drop_anon(&whole_runs);
                } else {
                    model.remove(a, a + moved);
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, mm: u8, place: Place, value: u64) -> Result<(), TestCaseError> {
        let i = self.slot_index(mm);
        let vpn = Self::resolve_vpn(&self.slot(i).model, place);
        self.write_at(i, vpn, value)
    }

    fn write_at(&mut self, i: usize, vpn: u64, value: u64) -> Result<(), TestCaseError> {
        let va = vpn * PAGE;
        let expected = self.expect_access(i, vpn, true);
        let actual = self.slot(i).mm.write_u64(va, value);
        self.note(format!("mm{i}.write_u64({va:#x}, {value:#x}) = {actual:?}"));
        match (expected, &actual) {
            (Access::Fault, Err(e)) if e.errno() == Errno::Fault => Ok(()),
            (Access::PastEnd, Err(e)) if e.errno() == Errno::Fault => Ok(()),
            (Access::PastEnd, Ok(())) => Ok(()),
            (Access::Ok(_) | Access::OkOrZero(_), Ok(())) => {
                let page = self.slot(i).model.pages[&vpn];
                match page.backing {
                    Backing::Private { .. } => {
                        let page = self.model_mut(i).pages.get_mut(&vpn).expect("mapped");
                        page.backing = Backing::Private { value };
                        page.freed = false;
                        page.may_be_zero = false;
                        self.prepare_anon(i, vpn);
                    }
                    Backing::Shared { obj, index } => {
                        self.objs[obj].values.insert(index, value);
                    }
                }
                Ok(())
            }
            _ => Err(self.fail(format!("mm{i}.write_u64({va:#x}): expected {expected:?}, got {actual:?}"))),
        }
    }

    fn check_read(&self, i: usize, vpn: u64) -> Result<(), TestCaseError> {
        let va = vpn * PAGE;
        let expected = self.expect_access(i, vpn, false);
        let actual = self.slot(i).mm.read_u64(va);
        let ok = match (expected, &actual) {
            (Access::Fault, Err(e)) => e.errno() == Errno::Fault,
            (Access::Ok(v), Ok(got)) => v == *got,
            (Access::OkOrZero(v), Ok(got)) => v == *got || *got == 0,
            (Access::PastEnd, Ok(_)) => true,
            (Access::PastEnd, Err(e)) => e.errno() == Errno::Fault,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(self.fail(format!("mm{i}.read_u64({va:#x}): expected {expected:x?}, got {actual:x?}")))
        }
    }

    fn read(&mut self, mm: u8, place: Place) -> Result<(), TestCaseError> {
        let i = self.slot_index(mm);
        let vpn = Self::resolve_vpn(&self.slot(i).model, place);
        self.note(format!("mm{i}.read_u64({:#x})", vpn * PAGE));
        self.check_read(i, vpn)
    }

    fn read_all(&mut self, mm: u8) -> Result<(), TestCaseError> {
        let i = self.slot_index(mm);
        self.note(format!("mm{i}: read_u64 of every mapped page"));
        let vpns: Vec<u64> = self.slot(i).model.pages.keys().copied().collect();
        for vpn in vpns {
            self.check_read(i, vpn)?;
        }
        Ok(())
    }

    fn fork(&mut self, src: u8, dst: u8) -> Result<(), TestCaseError> {
        let s = self.slot_index(src);
        let d = dst as usize % SLOTS;
        if d == s || d == 0 {
            self.note(format!("fork mm{s} -> mm{d}: skipped"));
            return Ok(());
        }
        if let Some(va) = self.straddling_huge_leaf(s) {
            // Every VMA split splits a huge leaf across its edge first
            // (`vma_adjust_trans_huge`); fork copies per VMA and relies on it.
            return Err(self.fail(format!("mm{s}: a huge leaf straddles a VMA edge at {va:#x}")));
        }
        // Each child VMA with an anon_vma gets a new one of its own, not
        // reusable by neighbours (anon_vma_fork; Linux 6.18 on the host: two
        // halves split by mprotect re-merge in the parent, not the child);
        // a WIPEONFORK one gets none.
        let mut model = Model { pages: BTreeMap::new(), seen: self.slot(s).model.seen.clone() };
        let mut last = self.last_anon;
        for (start, end, anon) in self.slot(s).model.runs_with_anon() {
            let child_anon = anon.map(|_| {
                last += 1;
                (last, false)
            });
            for (&vpn, page) in self.slot(s).model.pages.range(start..end) {
                if page.dontfork {
                    continue;
                }
                let mut page = *page;
                page.anon = child_anon;
                if page.wipeonfork {
                    page.anon = None;
                    if let Backing::Private { value } = &mut page.backing {
                        *value = 0;
                    }
                }
                model.insert(vpn, page);
            }
        }
        // dup_mmap never merges: if the child's VMAs would be mergeable
        // where the parent's were not (WIPEONFORK drops the anon_vmas that
        // kept them apart), the model's maximal runs cannot follow.
        let parent_runs: Vec<(u64, u64)> =
            self.slot(s).model.runs().into_iter().filter(|&(rs, _)| !self.slot(s).model.pages[&rs].dontfork).collect();
        if model.runs() != parent_runs {
            self.note(format!("fork mm{s} -> mm{d}: skipped (the child would have mergeable VMAs)"));
            return Ok(());
        }
        self.last_anon = last;
        if let Some(old) = self.slots[d].take() {
            old.mm.exit();
            self.note(format!("mm{d}.exit()"));
        }
        let child = self.slot(s).mm.fork();
        self.note(format!("mm{s}.fork() -> mm{d} = {:?}", child.as_ref().map(|_| ())));
        let child = child.map_err(|e| self.fail(format!("fork failed: {e}")))?;
        // dup_mmap: DONTFORK VMAs are not copied; WIPEONFORK ones start
        // empty in the child; private memory is copied (COW), shared memory
        // stays shared. The flags themselves are inherited.
        // Whatever the parent ever mapped must not show up in the child
        // unless the child maps it.
        self.slots[d] = Some(Slot { mm: child, model });
        Ok(())
    }

    fn exit(&mut self, slot: u8) -> Result<(), TestCaseError> {
        let d = slot as usize % SLOTS;
        let Some(old) = self.slots[d].take().filter(|_| d != 0) else {
            self.note(format!("mm{d}.exit(): skipped"));
            return Ok(());
        };
        old.mm.exit();
        self.note(format!("mm{d}.exit()"));
        if !old.mm.has_exited() {
            return Err(self.fail(format!("mm{d}: exit did not tear down")));
        }
        let r = old.mm.mmap(0, PAGE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS);
        if errno_of(&r) != Some(Errno::Srch) {
            return Err(self.fail(format!("mm{d}: mmap after exit = {r:?}, expected ESRCH")));
        }
        Ok(())
    }

    /// Reads every mapped page through the CPU, exits everything; every
    /// frame must be back.
    fn finish(mut self, baseline: u64) -> Result<(), TestCaseError> {
        for i in 0..SLOTS {
            if self.slots[i].is_some() {
                self.read_all(i as u8)?;
            }
        }
        for i in 0..SLOTS {
            if let Some(slot) = self.slots[i].take() {
                slot.mm.exit();
            }
        }
        let free = self.kernel.phys().free_frames();
        if free != baseline {
            return Err(self.fail(format!(
                "frames leaked: {free} free after every exit, {baseline} at boot ({} missing)",
                baseline as i64 - free as i64
            )));
        }
        Ok(())
    }
}

/// The page `k` pages after `first` in the same VMA, freshly added by a grow:
/// same attributes, private memory zero, shared memory the next page of the
/// object.
fn extend(first: &Page, k: u64) -> Page {
    let backing = match first.backing {
        Backing::Private { .. } => Backing::Private { value: 0 },
        Backing::Shared { obj, index } => Backing::Shared { obj, index: index + k },
    };
    Page { backing, pgoff: first.pgoff + k, freed: false, may_be_zero: false, ..*first }
}

/// `page` moved by mremap to page number `to`: a private page of a VMA
/// without anon_vma takes its new address as page offset, like a fresh
/// mapping; otherwise the offset stays (copy_vma). Linux 6.18 on the host:
/// a written VMA moved next to another stays apart, an unwritten one
/// merges.
fn moved_page(page: &Page, to: u64) -> Page {
    let mut moved = *page;
    if matches!(page.backing, Backing::Private { .. }) && page.anon.is_none() {
        moved.pgoff = to;
    }
    moved
}

fn fmt_vmas(vmas: &[VmaView]) -> String {
    let mut out = String::new();
    for (s, e, f, sh) in vmas {
        let _ = write!(out, "[{s:#x}..{e:#x} {:#x}", f.bits());
        if let Some((id, pgoff)) = sh {
            let _ = write!(out, " shm{id}@{pgoff}");
        }
        out.push_str("] ");
    }
    out
}

fn run(thp: ThpMode, ops: &[Op]) -> Result<(), TestCaseError> {
    let (mut world, baseline) = World::new(thp);
    for op in ops {
        world.step(op)?;
    }
    world.finish(baseline)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        max_shrink_iters: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn model_thp_always(ops in ops()) {
        run(ThpMode::Always, &ops)?;
    }

    #[test]
    fn model_thp_never(ops in ops()) {
        run(ThpMode::Never, &ops)?;
    }

    #[test]
    fn model_thp_madvise(ops in ops()) {
        run(ThpMode::Madvise, &ops)?;
    }
}
