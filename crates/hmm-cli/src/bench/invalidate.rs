//! Category 5: munmap of a mirrored range, with its leaves (4K or 2M)
//! mirrored by 1 to 4 devices, each through 1, 8 or 64 interval
//! subscriptions: the CPU-side zap and free, one UNMAP invalidation, every
//! overlapping subscription's callback clearing its device entries. Cost
//! per 4 KiB page against the work that cannot be avoided, measured in the
//! same run: the same munmap without a mirror plus clearing the same device
//! entries (every device's) with a plain fill. So the ratio is what
//! mirroring adds on top of the CPU's own unmap and the devices' own
//! clearing. A row without a mirror shows what munmap costs by itself,
//! against the clearing alone.

use std::time::Duration;

use hmm_mm::{Kernel, Mm, ThpMode};
use hmm_types::{MapFlags, Prot, PAGE_SHIFT};

use super::device::Device;
use super::fixture::{check_leaves, machine, ANON_FIXED, REGION};
use super::limits::ClearEntries;
use super::measure::{paired, time};
use super::report::{Figure, Limit, Row, Target};
use super::{BenchError, Case, Mode};

/// (subscriptions per device, devices).
const SHAPES: [(u64, usize); 6] = [(1, 1), (8, 1), (64, 1), (1, 2), (1, 4), (64, 4)];

/// For both leaf sizes: munmap without a mirror, then each shape.
pub fn cases(mode: Mode) -> Vec<Case> {
    let len = mode.invalidation_len();
    let mut cases = Vec::new();
    for (thp, id, name) in [(false, "4k", "4K leaves"), (true, "2m", "2M leaves")] {
        for shape in std::iter::once((0, 0)).chain(SHAPES) {
            let label = match shape {
                (0, _) => format!("munmap of {} MiB, {name}, no mirror", len >> 20),
                (subs, devs) => format!("munmap of {} MiB, {name}, {subs} subscriptions x {devs} devices", len >> 20),
            };
            cases.push(Case::new(label, move || row(mode, len, thp, id, name, shape)));
        }
    }
    cases
}

fn row(mode: Mode, len: u64, thp: bool, id: &str, name: &str, shape: (u64, usize)) -> Result<Vec<Row>, BenchError> {
    let (subscriptions, devices) = shape;
    let kernel = machine(len, if thp { ThpMode::Always } else { ThpMode::Never }, 0)?;
    let mut mirrored = Mirrored::new(&kernel, len, thp, subscriptions, devices)?;
    let pages = len >> PAGE_SHIFT;
    let mut clear = ClearEntries::new(devices.max(1), pages);
    let mut plain = (devices > 0).then(|| Mirrored::new(&kernel, len, thp, 0, 0)).transpose()?;
    let limit = || -> Result<Duration, BenchError> {
        let unmap = match plain.as_mut() {
            Some(plain) => plain.munmap()?,
            None => Duration::ZERO,
        };
        Ok(unmap + clear.run())
    };
    let pair = paired(mode.heavy_plan(), limit, || mirrored.munmap())?;
    let per_page = |ns: f64| ns / pages as f64;
    let entries = if devices > 1 { format!("{devices}x device entries") } else { "device entries".into() };
    let limit_what =
        if devices > 0 { format!("munmap, no mirror + clear {entries}") } else { format!("clear {entries}") };
    let limit = Limit::measured(&limit_what, Figure::new(per_page(pair.limit_ns), "ns/4KiB"));
    let (id, what, target) = match shape {
        (0, _) => {
            (format!("invalidate/{id}/none"), format!("munmap {} MiB, {name}, no mirror", len >> 20), Target::None)
        }
        (s, d) => (
            format!("invalidate/{id}/{s}x{d}"),
            format!("munmap {} MiB, {name}, {s} subs x {d} dev", len >> 20),
            Target::AtMost(2.0),
        ),
    };
    let ratio = pair.ratio;
    Ok(vec![Row::new(5, &id, &what, Figure::new(per_page(pair.subject_ns), "ns/4KiB"), limit, ratio, target)])
}

/// An address space whose range is mapped, populated and mirrored afresh
/// (untimed) before each timed munmap.
struct Mirrored {
    mm: std::sync::Arc<Mm>,
    len: u64,
    thp: bool,
    devices: Vec<Device>,
}

impl Mirrored {
    fn new(
        kernel: &std::sync::Arc<Kernel>,
        len: u64,
        thp: bool,
        subs: u64,
        devices: usize,
    ) -> Result<Self, BenchError> {
        let mm = kernel.create_mm()?;
        let devices = (0..devices).map(|_| Device::bind(&mm, REGION, len, subs)).collect::<Result<_, _>>()?;
        Ok(Self { mm, len, thp, devices })
    }

    fn munmap(&mut self) -> Result<Duration, BenchError> {
        self.mm.mmap(REGION, self.len, Prot::RW, ANON_FIXED | MapFlags::POPULATE)?;
        let level = if self.thp { hmm_pagetable::Level::Pmd } else { hmm_pagetable::Level::Pte };
        check_leaves(&self.mm, REGION, level.entry_bytes(), level)?;
        for device in &self.devices {
            device.fill(&self.mm)?;
            if device.valid_entries() as u64 != self.len >> PAGE_SHIFT {
                return Err(BenchError("a device did not mirror the whole range".into()));
            }
        }
        let mut result = Ok(());
        let took = time(|| result = self.mm.munmap(REGION, self.len));
        result?;
        if self.devices.iter().any(|d| d.valid_entries() != 0) {
            return Err(BenchError("a device kept entries after munmap".into()));
        }
        Ok(took)
    }
}
