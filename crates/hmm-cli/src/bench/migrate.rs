//! Category 4: migration of populated anonymous memory to the reference
//! device's device-private memory (`hmm-dmirror`, device 0) and back, with
//! its MIGRATE_TO_DEV and MIGRATE_TO_SYS commands (typed calls), in 4 KiB
//! pages (`MADV_NOHUGEPAGE`) and in 2 MiB THPs (`MADV_HUGEPAGE`, aligned;
//! dmirror selects `MIGRATE_VMA_SELECT_COMPOUND` and keeps them whole),
//! against a memcpy of the same bytes; reported as a share of memcpy's
//! throughput.
//!
//! MIGRATE_TO_DEV includes what Linux's test device does after the move:
//! it reads the range back through the device table into the caller's
//! buffer (page aligned, see [`AlignedBuf`]), a second copy of every
//! byte. The rows say so; the limit stays one memcpy, and the target asks
//! the same of each copy as MIGRATE_TO_SYS asks of its one (half of
//! memcpy's throughput), so a quarter of one memcpy for the pair.

use std::time::Duration;

use hmm_dmirror::{Counts, DmirrorFile};
use hmm_pagetable::Level;

use super::fixture::{check_leaves, AlignedBuf, DmirrorRange, REGION};
use super::limits::Memcpy;
use super::measure::{paired, time};
use super::report::{Figure, Limit, Row, Target};
use super::{BenchError, Case, Mode};

/// Bytes migrated: 8 MiB, as in `cargo bench -p hmm-mm --bench migrate`.
const LEN: u64 = 8 << 20;

/// The device: 0, device-private memory.
const MINOR: usize = 0;

/// Both shapes, both directions.
pub fn cases(mode: Mode) -> Vec<Case> {
    let mut cases = Vec::new();
    for (huge, id, name) in [(false, "4k", "4K pages"), (true, "2m", "2M THPs")] {
        for to_device in [true, false] {
            let direction = if to_device { "to device" } else { "back to RAM" };
            cases.push(Case::new(format!("dmirror migration {direction}, {name}"), move || {
                let mut round = RoundTrip::new(huge)?;
                let mut memcpy = Memcpy::new(LEN);
                let pair = paired(mode.plan(), || Ok(memcpy.run()), || round.run(to_device))?;
                let gbps = |ns: f64| LEN as f64 / ns;
                let (key, what) = if to_device {
                    ("to_device", format!("dmirror MIGRATE_TO_DEV of {} MiB + its read-back, {name}", LEN >> 20))
                } else {
                    ("to_ram", format!("dmirror MIGRATE_TO_SYS of {} MiB, {name}", LEN >> 20))
                };
                let row = Row::new(
                    4,
                    &format!("migrate/{key}/{id}"),
                    &what,
                    Figure::new(gbps(pair.subject_ns), "GB/s"),
                    Limit::measured("memcpy", Figure::new(gbps(pair.limit_ns), "GB/s")),
                    1.0 / pair.ratio,
                    // Half of memcpy per byte copied either way: MIGRATE_TO_DEV
                    // copies every byte twice (the move, then the read-back),
                    // so half per copy is a quarter of one memcpy.
                    Target::AtLeast(if to_device { 0.25 } else { 0.5 }),
                );
                Ok(vec![if to_device {
                    let per_copy = super::report::fmt_number(200.0 / pair.ratio);
                    row.with_note(format!(
                        "includes the read-back into the caller's buffer (Linux's semantics): two copies of each \
                         byte against one memcpy; {per_copy}% of memcpy per byte copied"
                    ))
                } else {
                    row
                }])
            }));
        }
    }
    cases
}

/// A populated range, an open file of device 0 and the read-back buffer;
/// one direction timed per run.
struct RoundTrip {
    file: DmirrorFile,
    range: DmirrorRange,
    huge: bool,
    out: AlignedBuf,
}

impl RoundTrip {
    /// Builds the range and checks one untimed round trip: the read-back
    /// holds the range's bytes, the device maps every page, and the range
    /// comes back with its bytes and its leaf size.
    fn new(huge: bool) -> Result<Self, BenchError> {
        let range = DmirrorRange::new(LEN, huge)?;
        let file = range.open(MINOR)?;
        let mut round = Self { file, range, huge, out: AlignedBuf::new(LEN) };
        round.move_all(true)?;
        if round.out.bytes() != round.range.data {
            return Err(BenchError("MIGRATE_TO_DEV read back other bytes than the range holds".into()));
        }
        if round.file.mapped_pages() != round.range.npages() {
            return Err(BenchError("MIGRATE_TO_DEV: the device does not map every page".into()));
        }
        round.move_all(false)?;
        let mut back = vec![0; LEN as usize];
        round.range.mm.read_bytes(REGION, &mut back)?;
        if back != round.range.data {
            return Err(BenchError("MIGRATE_TO_SYS: the range came back with other bytes".into()));
        }
        check_leaves(&round.range.mm, REGION, LEN, if huge { Level::Pmd } else { Level::Pte })?;
        Ok(round)
    }

    fn move_all(&mut self, to_device: bool) -> Result<Duration, BenchError> {
        let (file, out, npages) = (&self.file, self.out.bytes_mut(), self.range.npages());
        let mut moved = Ok(Counts::default());
        let took = if to_device {
            time(|| moved = file.migrate_to_dev(REGION, npages, out))
        } else {
            time(|| moved = file.migrate_to_sys(REGION, npages))
        };
        let moved = moved?;
        if moved.cpages != npages {
            let shape = if self.huge { "2M" } else { "4K" };
            return Err(BenchError(format!("{shape}: {} of {npages} pages migrated", moved.cpages)));
        }
        Ok(took)
    }

    /// There and back; only `to_device`'s direction timed.
    fn run(&mut self, to_device: bool) -> Result<Duration, BenchError> {
        let there = self.move_all(true)?;
        let back = self.move_all(false)?;
        Ok(if to_device { there } else { back })
    }
}
