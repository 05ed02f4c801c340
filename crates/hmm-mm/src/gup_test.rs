//! The `gup_test` driver (`/sys/kernel/debug/gup_test`, `CONFIG_GUP_TEST`):
//! a test file through which a program pins its own pages. One-shot
//! commands take and at once drop references or pins on a range, a chunk
//! of `nr_pages_per_call` pages per call, and report how far they got; the
//! long-term test keeps a `FOLL_LONGTERM` pin per open file until STOP (or
//! the file's release) and can copy the pinned pages' bytes out (READ),
//! whatever the process has mapped there since.
//!
//! The caller's `gup_flags` are Linux's `FOLL_*` numbers: the model knows
//! `FOLL_WRITE`, `FOLL_ANON` and `FOLL_LONGTERM`, rejects what Linux's
//! `is_valid_gup_args` rejects, and reports any other bit as not modelled.
//!
//! Linux: `mm/gup_test.c`, `mm/gup_test.h`, `mm/gup.c` (`is_valid_gup_args`).

use parking_lot::Mutex;

use hmm_types::PAGE_SIZE;

use crate::error::MmError;
use crate::gup::{FollFlags, PinnedPages};
use crate::mm::Mm;

/// `FOLL_WRITE`.
pub const FOLL_WRITE: u32 = 1 << 0;
/// `FOLL_GET`.
pub const FOLL_GET: u32 = 1 << 1;
/// `FOLL_ANON`.
pub const FOLL_ANON: u32 = 1 << 7;
/// `FOLL_LONGTERM`.
pub const FOLL_LONGTERM: u32 = 1 << 8;
/// `FOLL_PCI_P2PDMA`.
pub const FOLL_PCI_P2PDMA: u32 = 1 << 10;
/// `INTERNAL_GUP_FLAGS`: `FOLL_TOUCH` .. `FOLL_MADV_POPULATE` (bits 16–22),
/// never accepted from a caller.
pub const FOLL_INTERNAL: u32 = 0x7f << 16;
/// `PIN_LONGTERM_TEST_FLAG_USE_WRITE`.
pub const PIN_LONGTERM_WRITE: u32 = 1;
/// `PIN_LONGTERM_TEST_FLAG_USE_FAST`.
pub const PIN_LONGTERM_FAST: u32 = 2;

/// A one-shot command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GupTestCmd {
    /// `GUP_FAST_BENCHMARK`: `get_user_pages_fast`.
    GupFast,
    /// `PIN_FAST_BENCHMARK`: `pin_user_pages_fast`.
    PinFast,
    /// `PIN_LONGTERM_BENCHMARK`: `pin_user_pages` with `FOLL_LONGTERM`.
    PinLongterm,
    /// `GUP_BASIC_TEST`: `get_user_pages`.
    GupBasic,
    /// `PIN_BASIC_TEST`: `pin_user_pages`.
    PinBasic,
}

impl GupTestCmd {
    fn pins(self) -> bool {
        !matches!(self, Self::GupFast | Self::GupBasic)
    }
}

/// Why a `gup_test` call failed.
#[derive(Debug, thiserror::Error)]
pub enum GupTestError {
    /// The kernel's errno for the call.
    #[error(transparent)]
    Mm(#[from] MmError),
    /// `FOLL_*` bits whose behaviour the model does not have.
    #[error("FOLL_* bits {0:#x} are not modelled")]
    NotModelled(u32),
}

/// `FOLL_*` bits the model has a meaning for.
const MODELLED: u32 = FOLL_WRITE | FOLL_ANON | FOLL_LONGTERM;

/// The model's flags for Linux's `gup_flags` as a pinning (`pin`) or
/// reference-taking call receives them: `Ok(None)` where Linux's
/// `is_valid_gup_args` refuses them (the call then fails with `EINVAL`).
fn foll_flags(bits: u32, pin: bool) -> Result<Option<FollFlags>, GupTestError> {
    let invalid = bits & FOLL_INTERNAL != 0
        || (pin && bits & FOLL_GET != 0)
        || (!pin && bits & FOLL_LONGTERM != 0)
        || bits & (FOLL_LONGTERM | FOLL_PCI_P2PDMA) == FOLL_LONGTERM | FOLL_PCI_P2PDMA;
    if invalid {
        return Ok(None);
    }
    // FOLL_GET is what get_user_pages sets itself; bits 13-15 and 23-31
    // name nothing and are ignored.
    let unknown = bits & !(MODELLED | FOLL_GET | 0xe000 | 0xff80_0000);
    if unknown != 0 {
        return Err(GupTestError::NotModelled(unknown));
    }
    let mut flags = FollFlags::empty();
    flags.set(FollFlags::WRITE, bits & FOLL_WRITE != 0);
    flags.set(FollFlags::ANON, bits & FOLL_ANON != 0);
    flags.set(FollFlags::LONGTERM, bits & FOLL_LONGTERM != 0);
    Ok(Some(flags))
}

/// One open `gup_test` file: the long-term pin it holds, if any.
#[derive(Debug, Default)]
pub struct GupTestFile {
    longterm: Mutex<Option<PinnedPages>>,
}

impl GupTestFile {
    /// A freshly opened file.
    pub fn new() -> Self {
        Self::default()
    }

    /// A one-shot command on `[addr, addr + size)` of `mm`, in calls of
    /// `nr_pages_per_call` pages; returns the `size` Linux writes back: the
    /// bytes from `addr` to where the loop stopped (a call that took fewer
    /// pages than asked ends the loop after its chunk; one that took none,
    /// or failed, before it).
    pub fn run(
        &self,
        mm: &Mm,
        cmd: GupTestCmd,
        addr: u64,
        size: u64,
        nr_pages_per_call: u32,
        gup_flags: u32,
    ) -> Result<u64, GupTestError> {
        let end = addr.checked_add(size).ok_or(MmError::Invalid("gup_test range wraps"))?;
        let mut bits = gup_flags;
        if cmd == GupTestCmd::PinLongterm {
            bits |= FOLL_LONGTERM;
        }
        let flags = foll_flags(bits, cmd.pins())?;
        let per_call = u64::from(nr_pages_per_call);
        let mut nr = per_call;
        let mut at = addr;
        while at < end && nr == per_call {
            let mut next = at.wrapping_add(nr.wrapping_mul(PAGE_SIZE));
            if next > end {
                next = end;
                nr = (next - at) / PAGE_SIZE;
            }
            nr = match flags {
                Some(flags) => pages_taken(mm, cmd, at, nr, flags),
                None => 0,
            };
            if nr == 0 {
                break;
            }
            at = next;
        }
        Ok(at - addr)
    }

    /// `PIN_LONGTERM_TEST_START`: pins `[addr, addr + size)` long-term
    /// (writable with [`PIN_LONGTERM_WRITE`]), all or nothing.
    pub fn pin_longterm_start(&self, mm: &Mm, addr: u64, size: u64, flags: u32) -> Result<(), MmError> {
        let mut held = self.longterm.lock();
        if held.is_some() {
            return Err(MmError::Invalid("a long-term pin is already held"));
        }
        if flags & !(PIN_LONGTERM_WRITE | PIN_LONGTERM_FAST) != 0 {
            return Err(MmError::Invalid("unknown PIN_LONGTERM_TEST_FLAG_*"));
        }
        if (addr | size) % PAGE_SIZE != 0 || size > i64::MAX as u64 || size == 0 {
            return Err(MmError::Invalid("long-term pin range"));
        }
        let mut foll = FollFlags::LONGTERM;
        foll.set(FollFlags::WRITE, flags & PIN_LONGTERM_WRITE != 0);
        // Without USE_FAST the driver holds the mmap lock around
        // `pin_user_pages`; `pin_user_pages_fast` may release it.
        let nr = size / PAGE_SIZE;
        let pinned = if flags & PIN_LONGTERM_FAST != 0 {
            // `pin_user_pages_fast` may stop short (its slow path failed
            // after the walk took pages); the driver asks again from there,
            // and that call's error ends the test with nothing held.
            let mut pinned = mm.pin_user_pages_fast(addr, nr, foll)?;
            while (pinned.pfns().len() as u64) < nr {
                let done = pinned.pfns().len() as u64;
                pinned.extend(mm.pin_user_pages_fast(addr + done * PAGE_SIZE, nr - done, foll)?);
            }
            pinned
        } else {
            mm.pin_user_pages(addr, nr, foll)?
        };
        *held = Some(pinned);
        Ok(())
    }

    /// `PIN_LONGTERM_TEST_STOP`: unpins (nothing held is no error).
    pub fn pin_longterm_stop(&self) {
        self.longterm.lock().take();
    }

    /// `PIN_LONGTERM_TEST_READ` into a zeroed buffer of `buf_pages` pages:
    /// the buffer with the pinned pages' bytes at its start, in order;
    /// `EFAULT` when they do not fit.
    pub fn pin_longterm_read(&self, mm: &Mm, buf_pages: u64) -> Result<Vec<u8>, MmError> {
        let held = self.longterm.lock();
        let pins = held.as_ref().ok_or(MmError::Invalid("no long-term pin is held"))?;
        if pins.pfns().len() as u64 > buf_pages {
            return Err(MmError::Fault {
                addr: 0,
                error: crate::error::FaultError::Segv(crate::error::SegvReason::NotMapped),
            });
        }
        let mut out = vec![0u8; (buf_pages * PAGE_SIZE) as usize];
        for (page, &pfn) in out.chunks_mut(PAGE_SIZE as usize).zip(pins.pfns()) {
            mm.phys().read(pfn, 0, page);
        }
        Ok(out)
    }

    /// Pages of the long-term pin held (0 when none).
    pub fn longterm_pages(&self) -> usize {
        self.longterm.lock().as_ref().map_or(0, |p| p.pfns().len())
    }
}

/// One call of the loop: how many of `nr` pages from `at` were taken (and
/// at once dropped); 0 when the first one failed, as Linux's call returns
/// its error or the count taken before a failure. The fast commands run
/// without the mmap lock, so their slow path may release it and wait for
/// a userfaultfd handler (`FOLL_UNLOCKABLE`); the others run under the
/// lock the driver holds, where such a page fails (`EFAULT`).
fn pages_taken(mm: &Mm, cmd: GupTestCmd, at: u64, nr: u64, flags: FollFlags) -> u64 {
    let page = at & !(PAGE_SIZE - 1);
    let fast = matches!(cmd, GupTestCmd::GupFast | GupTestCmd::PinFast);
    for i in 0..nr {
        let va = page + i * PAGE_SIZE;
        let put = |pfns: Vec<hmm_types::Pfn>| pfns.into_iter().for_each(|pfn| mm.phys().put(pfn));
        let ok = match (cmd.pins(), fast) {
            (true, true) => mm.pin_user_pages_fast(va, 1, flags).is_ok_and(|p| !p.pfns().is_empty()),
            (true, false) => mm.pin_user_pages(va, 1, flags).is_ok(),
            (false, true) => mm.get_user_pages_fast(va, 1, flags).map(put).is_ok(),
            (false, false) => mm.get_user_pages(va, 1, flags).map(put).is_ok(),
        };
        if !ok {
            return i;
        }
    }
    nr
}

#[cfg(test)]
mod tests {
    use hmm_types::{Errno, MapFlags, Prot};

    use super::*;
    use crate::testing::kernel;
    use crate::ThpMode;

    const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

    #[test]
    fn one_shot_calls_report_how_far_they_got() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x1000_0000, 4 * PAGE_SIZE, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        let file = GupTestFile::new();
        let run = |size, per_call, flags| file.run(&mm, GupTestCmd::PinBasic, va, size, per_call, flags).unwrap();
        assert_eq!(run(4 * PAGE_SIZE, 1, FOLL_WRITE), 4 * PAGE_SIZE);
        // Two pages past the mapping: one page per call stops at the hole;
        // a chunk that took part of its pages still counts whole.
        assert_eq!(run(6 * PAGE_SIZE, 1, 0), 4 * PAGE_SIZE);
        assert_eq!(run(6 * PAGE_SIZE, 3, 0), 6 * PAGE_SIZE);
        assert_eq!(run(6 * PAGE_SIZE, 8, 0), 6 * PAGE_SIZE);
        assert_eq!(run(4 * PAGE_SIZE, 1, FOLL_GET), 0, "FOLL_GET with a pin: EINVAL at once");
        assert_eq!(file.run(&mm, GupTestCmd::GupBasic, va, PAGE_SIZE, 1, FOLL_LONGTERM).unwrap(), 0);
        assert!(matches!(
            file.run(&mm, GupTestCmd::PinBasic, va, PAGE_SIZE, 1, 1 << 3),
            Err(GupTestError::NotModelled(8))
        ));
        assert!(file.run(&mm, GupTestCmd::PinBasic, u64::MAX, 2, 1, 0).is_err(), "a wrapping range is EINVAL");
        assert_eq!(mm.phys().folio_counts(mm.pgtable().find(va).load().pfn()), (1, 1), "nothing stays pinned");
    }

    #[test]
    fn a_long_term_pin_keeps_the_old_page_after_dontneed() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x1000_0000, 2 * PAGE_SIZE, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        mm.write_u64(va, 7).unwrap();
        let file = GupTestFile::new();
        assert_eq!(file.pin_longterm_read(&mm, 1).unwrap_err().errno(), Errno::Inval, "nothing pinned");
        file.pin_longterm_start(&mm, va, PAGE_SIZE, PIN_LONGTERM_WRITE).unwrap();
        assert_eq!(file.pin_longterm_start(&mm, va, PAGE_SIZE, 0).unwrap_err().errno(), Errno::Inval);
        mm.madvise(va, PAGE_SIZE, hmm_types::MadviseAdvice::DontNeed).unwrap();
        assert_eq!(mm.read_u64(va).unwrap(), 0, "a fresh page");
        let bytes = file.pin_longterm_read(&mm, 1).unwrap();
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()), 7, "the pinned page kept its data");
        assert_eq!(file.pin_longterm_read(&mm, 0).unwrap_err().errno(), Errno::Fault, "a buffer too small");
        file.pin_longterm_stop();
        assert_eq!(file.longterm_pages(), 0);
        for bad in [(va + 1, PAGE_SIZE, 0), (va, 0, 0), (va, PAGE_SIZE, 4)] {
            assert_eq!(file.pin_longterm_start(&mm, bad.0, bad.1, bad.2).unwrap_err().errno(), Errno::Inval);
        }
    }

    #[test]
    fn a_pinned_page_is_copied_for_the_child_at_fork() {
        let k = kernel(64, ThpMode::Never);
        let mm = k.create_mm().unwrap();
        let va = mm.mmap(0x1000_0000, 2 * PAGE_SIZE, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        mm.write_u64(va, 1).unwrap();
        mm.write_u64(va + PAGE_SIZE, 2).unwrap();
        let file = GupTestFile::new();
        file.pin_longterm_start(&mm, va, PAGE_SIZE, 0).unwrap();
        let child = mm.fork().unwrap();
        let frame = |m: &Mm, a| m.pgtable().find(a).load().pfn();
        assert_ne!(frame(&mm, va), frame(&child, va), "the pinned page is copied");
        assert_eq!(frame(&mm, va + PAGE_SIZE), frame(&child, va + PAGE_SIZE), "the other is shared");
        assert!(mm.pgtable().find(va).load().is_write(), "the parent keeps its page writable");
        assert_eq!(child.read_u64(va).unwrap(), 1);
        child.exit();
        file.pin_longterm_stop();
    }

    #[test]
    fn a_read_only_long_term_pin_unshares_the_zero_page() {
        let mm = kernel(64, ThpMode::Never).create_mm().unwrap();
        let va = mm.mmap(0x1000_0000, PAGE_SIZE, Prot::RW, ANON | MapFlags::FIXED).unwrap();
        let file = GupTestFile::new();
        file.pin_longterm_start(&mm, va, PAGE_SIZE, 0).unwrap();
        assert!(!mm.phys().is_zero_pfn(mm.pgtable().find(va).load().pfn()));
        file.pin_longterm_stop();
    }
}
