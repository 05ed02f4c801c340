//! Category 4: migration of populated anonymous memory to device-private
//! memory and back (from the driver side, the eviction loop a driver runs),
//! in 4 KiB pages and in 2 MiB folios (`MIGRATE_VMA_SELECT_COMPOUND`),
//! against a memcpy of the same bytes; reported as a share of memcpy's
//! throughput. Driver: `private_device.rs` (until `hmm-dmirror` lands).

use std::sync::Arc;
use std::time::Duration;

use hmm_mm::{Mm, ThpMode};
use hmm_types::{MapFlags, Prot, PAGE_SIZE, PMD_SIZE};

use super::fixture::{check_leaves, machine, ANON_FIXED, REGION};
use super::limits::Memcpy;
use super::measure::{paired, time};
use super::private_device::Driver;
use super::report::{Figure, Limit, Row, Target};
use super::{BenchError, Case, Mode};

/// Bytes migrated: 8 MiB, as in `cargo bench -p hmm-mm --bench migrate`.
const LEN: u64 = 8 << 20;

/// Both shapes, both directions.
pub fn cases(mode: Mode) -> Vec<Case> {
    let mut cases = Vec::new();
    for (compound, id, name) in [(false, "4k", "4K pages"), (true, "2m", "2M folios")] {
        for to_device in [true, false] {
            let direction = if to_device { "to device" } else { "back to RAM" };
            cases.push(Case::new(format!("migration {direction}, {name}"), move || {
                let mut round = RoundTrip::new(compound)?;
                let mut memcpy = Memcpy::new(LEN);
                let pair = paired(mode.plan(), || Ok(memcpy.run()), || round.run(to_device))?;
                let gbps = |ns: f64| LEN as f64 / ns;
                let key = if to_device { "to_device" } else { "to_ram" };
                Ok(vec![Row::new(
                    4,
                    &format!("migrate/{key}/{id}"),
                    &format!("migrate {} MiB {direction}, {name}", LEN >> 20),
                    Figure::new(gbps(pair.subject_ns), "GB/s"),
                    Limit::measured("memcpy", Figure::new(gbps(pair.limit_ns), "GB/s")),
                    1.0 / pair.ratio,
                    Target::AtLeast(0.5),
                )
                .with_note("local device-private driver (hmm-dmirror not landed yet)")])
            }));
        }
    }
    cases
}

/// A populated range and a driver; one direction timed per run.
struct RoundTrip {
    mm: Arc<Mm>,
    driver: Arc<Driver>,
    compound: bool,
}

impl RoundTrip {
    fn new(compound: bool) -> Result<Self, BenchError> {
        let kernel = machine(2 * LEN, if compound { ThpMode::Always } else { ThpMode::Never }, 0)?;
        let mm = kernel.create_mm()?;
        let driver = Driver::new(&kernel, LEN / PAGE_SIZE)?;
        mm.mmap(REGION, LEN, Prot::RW, ANON_FIXED | MapFlags::POPULATE)?;
        let chunk: Vec<u8> = (0..PMD_SIZE).map(|i| (i * 7 + 1) as u8).collect();
        for offset in (0..LEN).step_by(PMD_SIZE as usize) {
            mm.write_bytes(REGION + offset, &chunk)?;
        }
        let level = if compound { hmm_pagetable::Level::Pmd } else { hmm_pagetable::Level::Pte };
        check_leaves(&mm, REGION, LEN, level)?;
        Ok(Self { mm, driver, compound })
    }

    fn move_all(&self, to_device: bool) -> Result<Duration, BenchError> {
        let guard = self.mm.mmap_read();
        let (start, end) = (REGION, REGION + LEN);
        let mut moved = Ok(0);
        let took = time(|| {
            moved = if to_device {
                self.driver.to_device(guard.locked(), start, end, self.compound)
            } else {
                self.driver.to_ram(guard.locked(), start, end, self.compound)
            }
        });
        if moved? != LEN / PAGE_SIZE {
            return Err(BenchError("not every page migrated".into()));
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
