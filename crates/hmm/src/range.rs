//! The range a driver asks about (`struct hmm_range`) and how requests are
//! evaluated (`hmm_pte_need_fault`, `hmm_range_need_fault`).

use hmm_notifier::IntervalNotifier;
use hmm_types::{Owner, PAGE_SHIFT, PAGE_SIZE};

use crate::error::HmmError;
use crate::pfn::{HMM_PFN_INOUT_FLAGS, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID, HMM_PFN_WRITE};

/// A request to mirror `[start, end)` (`struct hmm_range`).
#[derive(Debug)]
pub struct Range<'a> {
    /// The subscription covering the range; its address space is walked.
    pub notifier: &'a IntervalNotifier,
    /// From [`IntervalNotifier::read_begin`], taken before the call.
    pub notifier_seq: u64,
    /// First address (page aligned).
    pub start: u64,
    /// One past the last address (page aligned, > start).
    pub end: u64,
    /// One word per page: requests and sticky bits in, pfns and flags out.
    pub hmm_pfns: &'a mut [u64],
    /// Requests ORed into every entry's.
    pub default_flags: u64,
    /// Mask applied to each entry's input before `default_flags`.
    pub pfn_flags_mask: u64,
    /// Device-private pages of this owner are reported, not faulted.
    pub dev_private_owner: Option<Owner>,
}

/// What a request needs of one page, or of a run of pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct Need {
    pub(crate) fault: bool,
    pub(crate) write: bool,
}

impl Need {
    pub(crate) const NONE: Self = Self { fault: false, write: false };

    pub(crate) fn any(self) -> bool {
        self.fault
    }
}

impl Range<'_> {
    /// Checks the shape of the range: page-aligned, non-empty, the pfn
    /// array one word per page, and only request bits in `default_flags`.
    pub(crate) fn validate(&self) -> Result<(), HmmError> {
        if self.start >= self.end {
            return Err(HmmError::Invalid("range start must be below its end"));
        }
        if (self.start | self.end) % PAGE_SIZE != 0 {
            return Err(HmmError::Invalid("range not page aligned"));
        }
        if self.hmm_pfns.len() as u64 != (self.end - self.start) >> PAGE_SHIFT {
            return Err(HmmError::Invalid("hmm_pfns needs one word per page of the range"));
        }
        if self.default_flags & !(HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE) != 0 {
            return Err(HmmError::Invalid("default_flags holds bits other than REQ_FAULT and REQ_WRITE"));
        }
        Ok(())
    }

    /// Index in `hmm_pfns` of address `va`.
    pub(crate) fn index(&self, va: u64) -> usize {
        ((va - self.start) >> PAGE_SHIFT) as usize
    }

    /// True when no entry can request a fault: the cheap snapshot path.
    pub(crate) fn is_snapshot(&self) -> bool {
        (self.default_flags | self.pfn_flags_mask) & HMM_PFN_REQ_FAULT == 0
    }

    /// `hmm_pte_need_fault`: what the request in `input` needs given the
    /// CPU state `cpu` (VALID and WRITE bits).
    pub(crate) fn need_fault(&self, input: u64, cpu: u64) -> Need {
        let request = (input & self.pfn_flags_mask) | self.default_flags;
        if request & HMM_PFN_REQ_FAULT == 0 {
            return Need::NONE;
        }
        if request & HMM_PFN_REQ_WRITE != 0 && cpu & HMM_PFN_WRITE == 0 {
            return Need { fault: true, write: true };
        }
        if cpu & HMM_PFN_VALID == 0 {
            return Need { fault: true, write: false };
        }
        Need::NONE
    }

    /// `hmm_range_need_fault`: the union over `[first, last)` of indices,
    /// stopping once both a fault and a write are needed.
    pub(crate) fn range_need_fault(&self, first: usize, last: usize, cpu: u64) -> Need {
        if self.is_snapshot() {
            return Need::NONE;
        }
        let mut need = Need::NONE;
        for &input in &self.hmm_pfns[first..last] {
            let one = self.need_fault(input, cpu);
            need.fault |= one.fault;
            need.write |= one.write;
            if need.fault && need.write {
                break;
            }
        }
        need
    }

    /// Writes `value` to entries `[first, last)`, keeping sticky bits.
    pub(crate) fn fill(&mut self, first: usize, last: usize, value: u64) {
        for word in &mut self.hmm_pfns[first..last] {
            *word = (*word & HMM_PFN_INOUT_FLAGS) | value;
        }
    }

    /// Writes consecutive frames `base_pfn, base_pfn + 1, …` with `flags`
    /// to entries `[first, last)`, keeping sticky bits.
    pub(crate) fn fill_pfns(&mut self, first: usize, last: usize, base_pfn: u64, flags: u64) {
        let base = flags | base_pfn;
        for (i, word) in self.hmm_pfns[first..last].iter_mut().enumerate() {
            *word = (*word & HMM_PFN_INOUT_FLAGS) | (base + i as u64);
        }
    }
}
