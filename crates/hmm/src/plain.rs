//! The fast path of the PTE walk: a run of plain pages of system RAM (a
//! present, accessible, non-special entry whose request is already
//! satisfied) converted to hmm pfn words many entries at a time, with one
//! check per chunk. Anything else stops it, and the walk takes the entry
//! one by one (`walk.rs`). The output is exactly what the per-entry path
//! writes; a property test below holds the two together.

use core::sync::atomic::{AtomicU64, Ordering};

use hmm_pagetable::Entry;

use crate::pfn::{HMM_PFN_INOUT_FLAGS, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID, HMM_PFN_WRITE};

/// Entries converted together.
const CHUNK: usize = 32;

/// What the fast path needs to know of the range and memory.
#[derive(Clone, Copy)]
pub(crate) struct Plain {
    ram_frames: u64,
    mask: u64,
    default: u64,
}

impl Plain {
    /// The fast path for RAM of `ram_frames` frames and a range with these
    /// request mask and defaults.
    pub(crate) fn new(ram_frames: u64, mask: u64, default: u64) -> Self {
        Self { ram_frames, mask, default }
    }

    /// Converts the leading entries of `cells` into `out` (as long) while
    /// they are plain pages of system RAM whose request (if `REQUESTS`) is
    /// satisfied: `(input & INOUT) | VALID | WRITE? | pfn`, exactly what
    /// the walk's per-entry path writes for them. Returns how many it converted; the entry
    /// there (if any) is not such a page, or was not when loaded.
    ///
    /// A chunk of [`CHUNK`] entries is loaded once and checked with one
    /// word: each entry XORed with the first one's flags and ORed
    /// together, which leaves the flags that differ (the chunk must agree
    /// on PRESENT, WRITE, HUGE, PROTNONE and SPECIAL, so its output flags
    /// are the first entry's) above the OR of all frames (below
    /// `ram_frames` if the OR is). The outputs are stored only when the
    /// check passes; otherwise the chunk is redone one entry at a time, up
    /// to its first exception. (The atomic loads stay scalar; the
    /// conversion after them is vectorized. Keep branches that need the
    /// loaded values out of the chunk loop: they make the compiler spill
    /// them and give up the vectors.)
    #[inline(never)]
    pub(crate) fn convert<const REQUESTS: bool>(self, cells: &[AtomicU64], out: &mut [u64]) -> usize {
        let mut done = 0;
        for (c, o) in cells.chunks_exact(CHUNK).zip(out.chunks_exact_mut(CHUNK)) {
            let (Ok(c), Ok(o)) = (<&[AtomicU64; CHUNK]>::try_from(c), <&mut [u64; CHUNK]>::try_from(o)) else {
                unreachable!("chunks_exact")
            };
            let flags = Entry::raw_flags(c[0].load(Ordering::Relaxed));
            let x: [u64; CHUNK] = core::array::from_fn(|i| c[i].load(Ordering::Relaxed) ^ flags);
            let mut lanes = [0u64; 4];
            for quad in x.chunks_exact(4) {
                for (lane, &v) in lanes.iter_mut().zip(quad) {
                    *lane |= v;
                }
            }
            let differ = (lanes[0] | lanes[1]) | (lanes[2] | lanes[3]);
            let write = Entry::raw_write(flags, HMM_PFN_WRITE.trailing_zeros());
            let cpu = HMM_PFN_VALID | write;
            // The XOR left the frame field alone: `x >> 12` is the frame.
            let words: [u64; CHUNK] =
                core::array::from_fn(|i| (o[i] & HMM_PFN_INOUT_FLAGS) | Entry::raw_plain_pfn(x[i]) | cpu);
            // The OR of the frames is only a bound when RAM is not a power
            // of two: a chunk it rejects is checked again one by one.
            let mut odd = Entry::raw_plain_anomaly(flags)
                | Entry::raw_shape(differ)
                | u64::from(Entry::raw_plain_pfn(differ) >= self.ram_frames);
            if REQUESTS {
                // Conservative too: the union of the requests may ask for
                // more than any one did.
                let inputs = o.iter().fold(0, |acc, &w| acc | w);
                odd |= self.unmet(inputs, write);
            }
            if odd == 0 {
                o.copy_from_slice(&words);
            } else {
                let n = self.convert_one_by_one::<REQUESTS>(c, o);
                if n < CHUNK {
                    return done + n;
                }
            }
            done += CHUNK;
        }
        let tail = cells.len() / CHUNK * CHUNK;
        done + self.convert_one_by_one::<REQUESTS>(&cells[tail..], &mut out[tail..])
    }

    /// Nonzero when the request in `input` asks for a write fault a page
    /// whose WRITE output bit is `write` cannot satisfy
    /// (`hmm_pte_need_fault` with a VALID cpu).
    #[inline]
    fn unmet(self, input: u64, write: u64) -> u64 {
        let request = (input & self.mask) | self.default;
        // REQ_FAULT is bit 63, REQ_WRITE (and the output WRITE) bit 62.
        const _: () = assert!(HMM_PFN_REQ_FAULT == 1 << 63 && HMM_PFN_REQ_WRITE == 1 << 62);
        request & (request << 1) & !(write << 1) & HMM_PFN_REQ_FAULT
    }

    /// [`Self::convert`], one entry at a time.
    #[inline]
    fn convert_one_by_one<const REQUESTS: bool>(self, cells: &[AtomicU64], out: &mut [u64]) -> usize {
        for (k, (cell, word)) in cells.iter().zip(out.iter_mut()).enumerate() {
            let raw = cell.load(Ordering::Relaxed);
            let pfn = Entry::raw_plain_pfn(raw);
            let write = Entry::raw_write(raw, HMM_PFN_WRITE.trailing_zeros());
            if Entry::raw_plain_anomaly(raw) != 0
                || pfn >= self.ram_frames
                || (REQUESTS && self.unmet(*word, write) != 0)
            {
                return k;
            }
            *word = (*word & HMM_PFN_INOUT_FLAGS) | HMM_PFN_VALID | write | pfn;
        }
        cells.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked fast path agrees with the one-by-one conversion on
    /// where it stops and on every word it writes, whatever mix of
    /// entries, frames (RAM not a power of two) and requests it meets.
    #[test]
    fn the_chunked_conversion_matches_the_entry_by_entry_one() {
        use crate::pfn::{HMM_PFN_DMA_MAPPED, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE};
        use core::sync::atomic::AtomicU64;
        use hmm_pagetable::{Entry, LeafFlags, SwapKind};
        use hmm_types::Pfn;
        use proptest::prelude::*;

        let ram_frames = 24_576;
        let entry = (0u8..12, 0u64..30_000, any::<bool>(), any::<bool>()).prop_map(|(kind, pfn, write, dirty)| {
            let flags = LeafFlags { write, dirty, accessed: true, special: false };
            match kind {
                0 => Entry::NONE,
                1 => Entry::present(Pfn(pfn), LeafFlags { special: true, ..flags }, false),
                2 => Entry::present(Pfn(pfn), flags, false).mkprotnone(),
                3 => Entry::swap(SwapKind::DevicePrivateWrite, pfn, false),
                4 => Entry::present(Pfn(pfn % ram_frames), flags, false),
                _ => Entry::present(Pfn(pfn % ram_frames), LeafFlags { write: true, ..flags }, false),
            }
        });
        let input = (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(sticky, fault, write)| {
            (if sticky { HMM_PFN_DMA_MAPPED } else { 0 })
                | if fault { HMM_PFN_REQ_FAULT } else { 0 }
                | if write { HMM_PFN_REQ_WRITE } else { 0 }
        });
        let case = (
            proptest::collection::vec((entry, input), 1..4 * CHUNK),
            any::<bool>(),
            prop_oneof![Just(0), Just(HMM_PFN_REQ_FAULT), Just(HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)],
            // Mostly runs of plain writable pages, which reach the fast path.
            any::<bool>(),
        );
        proptest!(ProptestConfig::with_cases(2000), |((slots, masked, default, plain) in case)| {
            let cells: Vec<AtomicU64> = slots
                .iter()
                .enumerate()
                .map(|(i, (e, _))| {
                    let e = if plain && i % 37 != 5 {
                        Entry::present(Pfn(i as u64 * 13 % ram_frames), LeafFlags { write: true, ..Default::default() }, false)
                    } else {
                        *e
                    };
                    AtomicU64::new(e.raw())
                })
                .collect();
            let inputs: Vec<u64> = slots.iter().map(|&(_, w)| w).collect();
            let mask = if masked { u64::MAX } else { 0 };
            let p = Plain::new(ram_frames, mask, default);
            let (mut fast, mut slow) = (inputs.clone(), inputs.clone());
            let snapshot = (mask | default) & HMM_PFN_REQ_FAULT == 0;
            let n = if snapshot { p.convert::<false>(&cells, &mut fast) } else { p.convert::<true>(&cells, &mut fast) };
            let m = p.convert_one_by_one::<true>(&cells, &mut slow);
            prop_assert_eq!(n, m);
            prop_assert_eq!(fast, slow);
        });
    }
}
