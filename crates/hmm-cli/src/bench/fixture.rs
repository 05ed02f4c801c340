//! The machines and mappings the categories measure: a populated mapping
//! of each leaf kind with one subscription over it ([`Populated`]), and an
//! untouched anonymous range to fault ([`Untouched`]), a populated
//! anonymous range with the reference device loaded beside it
//! ([`DmirrorRange`]). Each fixture boots
//! its own machine, sized to what it maps, so nothing else shares it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hmm::pfn::{hmm_pfn_to_map_order, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID, HMM_PFN_WRITE};
use hmm::IntervalNotifier;
use hmm_dmirror::{Dmirror, DmirrorConfig, DmirrorFile};
use hmm_mm::devdax::DevDax;
use hmm_mm::fs::DaxFs;
use hmm_mm::gup::FollFlags;
use hmm_mm::{Kernel, KernelConfig, Mm, ThpMode};
use hmm_pagetable::Level;
use hmm_types::{MadviseAdvice, MapFlags, PageSize, Prot, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PUD_SIZE};

use super::device::{walk, NoDevice};
use super::measure::time;
use super::BenchError;

/// Where every fixture maps (1 GiB aligned, so every leaf size fits).
pub const REGION: u64 = 0x1000_0000_0000;
/// Private anonymous, at `REGION` exactly.
pub const ANON_FIXED: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS).union(MapFlags::FIXED);
/// RAM beyond what a fixture maps: page tables, the zero pages, slack.
const RAM_SLACK: u64 = 64 << 20;

/// The leaf kinds a populated mapping can have.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Leaves {
    /// Anonymous memory in 4 KiB pages (THP off).
    Anon4k,
    /// Anonymous memory in 2 MiB THPs.
    Thp,
    /// A file on a DAX filesystem, 2 MiB PMD leaves.
    FsDax,
    /// A device-DAX region with 1 GiB alignment, one PUD leaf.
    DevDax,
    /// hugetlbfs, 2 MiB pages.
    Hugetlb,
}

impl Leaves {
    /// The level of the leaves and the map order `range_fault` reports.
    fn level(self) -> Level {
        match self {
            Self::Anon4k => Level::Pte,
            Self::Thp | Self::FsDax | Self::Hugetlb => Level::Pmd,
            Self::DevDax => Level::Pud,
        }
    }
}

/// A machine with `ram_bytes` of RAM plus slack.
pub fn machine(ram_bytes: u64, thp: ThpMode, hugetlb_2m_pages: u64) -> Result<Arc<Kernel>, BenchError> {
    let config = KernelConfig {
        ram_bytes: ram_bytes + RAM_SLACK + hugetlb_2m_pages * PMD_SIZE,
        thp,
        hugetlb_2m_pages,
        ..KernelConfig::default()
    };
    Ok(Kernel::new(config)?)
}

/// Checks that `[va, va + len)` is mapped writable by leaves at `level`.
pub fn check_leaves(mm: &Mm, va: u64, len: u64, level: Level) -> Result<(), BenchError> {
    for at in (va..va + len).step_by(level.entry_bytes().min(len) as usize) {
        let (found, entry) = mm.leaf_at(at);
        if found != level || !entry.is_write() {
            return Err(BenchError(format!("{at:#x}: expected a writable {level:?} leaf, found {found:?}")));
        }
    }
    Ok(())
}

/// A throw-away pmem backing file, removed on drop.
#[derive(Debug)]
struct TempFile(PathBuf);

impl TempFile {
    /// A new path in the temporary directory, unique to this process and call.
    fn new() -> Self {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("hmm-bench-{}-{n}.pmem", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A populated, writable mapping of `len` bytes with one subscription over
/// it and a pfn array to snapshot into.
pub struct Populated {
    pub mm: Arc<Mm>,
    pub va: u64,
    pub len: u64,
    notifier: Arc<IntervalNotifier>,
    pfns: Vec<u64>,
    // Kept alive for the mapping; dropped after it.
    _devdax: Option<Arc<DevDax>>,
    _fs: Option<(DaxFs, TempFile)>,
}

impl std::fmt::Debug for Populated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Populated").field("va", &self.va).field("len", &self.len).finish_non_exhaustive()
    }
}

impl Populated {
    /// Maps and writes every leaf of `len` bytes of `leaves`, subscribes,
    /// and checks one snapshot: every slot valid, writable, of the leaf's
    /// order.
    pub fn new(leaves: Leaves, len: u64) -> Result<Self, BenchError> {
        let (thp, hugetlb) = match leaves {
            Leaves::Thp => (ThpMode::Always, 0),
            Leaves::Hugetlb => (ThpMode::Never, len / PMD_SIZE),
            _ => (ThpMode::Never, 0),
        };
        let ram = if matches!(leaves, Leaves::Anon4k | Leaves::Thp) { len } else { 0 };
        let kernel = machine(ram, thp, hugetlb)?;
        let mm = kernel.create_mm()?;
        let (mut devdax, mut fs) = (None, None);
        let va = match leaves {
            Leaves::Anon4k | Leaves::Thp => mm.mmap(REGION, len, Prot::RW, ANON_FIXED)?,
            Leaves::Hugetlb => mm.mmap(REGION, len, Prot::RW, ANON_FIXED | MapFlags::HUGETLB)?,
            Leaves::DevDax => {
                let size = len.next_multiple_of(PUD_SIZE);
                let dev = DevDax::create(&kernel, size, PageSize::Size1G, None)?;
                let va = mm.mmap_devdax(REGION, size, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &dev, 0)?;
                devdax = Some(dev);
                va
            }
            Leaves::FsDax => {
                let path = TempFile::new();
                let dax = DaxFs::format(&kernel, &path.0, 2 * len + (16 << 20))?;
                let file = dax.create("bench")?;
                file.ftruncate(len)?;
                let va = mm.mmap_file(REGION, len, Prot::RW, MapFlags::SHARED | MapFlags::FIXED, &file, 0)?;
                fs = Some((dax, path));
                va
            }
        };
        let step = leaves.level().entry_bytes().min(len);
        for at in (va..va + len).step_by(step as usize) {
            mm.write_u64(at, 1)?;
        }
        check_leaves(&mm, va, len, leaves.level())?;
        let notifier = mm.interval_notifier_insert(va, len, Arc::new(NoDevice))?;
        let mut populated =
            Self { mm, va, len, notifier, pfns: vec![0; (len >> PAGE_SHIFT) as usize], _devdax: devdax, _fs: fs };
        populated.snapshot()?;
        let order = leaves.level().shift() - PAGE_SHIFT;
        let expected = HMM_PFN_VALID | HMM_PFN_WRITE;
        if !populated.pfns.iter().all(|&w| w & expected == expected && hmm_pfn_to_map_order(w) == order) {
            return Err(BenchError(format!("{leaves:?}: a snapshot slot is not valid, writable, order {order}")));
        }
        Ok(populated)
    }

    /// 4 KiB slots.
    pub fn slots(&self) -> u64 {
        self.len >> PAGE_SHIFT
    }

    /// One snapshot (no fault requested), timed.
    pub fn snapshot(&mut self) -> Result<Duration, BenchError> {
        let (mm, notifier, va, pfns) = (&self.mm, &self.notifier, self.va, &mut self.pfns);
        let mut result = Ok(0);
        let took = time(|| result = walk(mm, notifier, va, pfns, 0));
        result?;
        Ok(took)
    }

    /// `pin_user_pages` of the whole mapping, then the unpin, timed.
    pub fn pin_unpin(&self) -> Result<Duration, BenchError> {
        let mut result = Ok(());
        let took = time(|| {
            result = self.mm.pin_user_pages(self.va, self.slots(), FollFlags::WRITE).map(|pins| pins.unpin());
        });
        result?;
        Ok(took)
    }
}

impl Drop for Populated {
    fn drop(&mut self) {
        self.notifier.remove();
    }
}

/// An anonymous range that is mapped afresh, untouched, before each
/// timed `range_fault` with `HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE`.
pub struct Untouched {
    mm: Arc<Mm>,
    len: u64,
    thp: bool,
    notifier: Arc<IntervalNotifier>,
    pfns: Vec<u64>,
}

impl std::fmt::Debug for Untouched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Untouched").field("len", &self.len).field("thp", &self.thp).finish_non_exhaustive()
    }
}

impl Untouched {
    /// A machine for `len` bytes, THP on or off, and a subscription.
    pub fn new(len: u64, thp: bool) -> Result<Self, BenchError> {
        let kernel = machine(len, if thp { ThpMode::Always } else { ThpMode::Never }, 0)?;
        let mm = kernel.create_mm()?;
        let notifier = mm.interval_notifier_insert(REGION, len, Arc::new(NoDevice))?;
        Ok(Self { mm, len, thp, notifier, pfns: vec![0; (len >> PAGE_SHIFT) as usize] })
    }

    /// 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.len >> PAGE_SHIFT
    }

    /// Maps the range (untimed), faults it all in for writing through
    /// `range_fault` (timed), checks the leaves and unmaps (untimed).
    pub fn fault(&mut self) -> Result<Duration, BenchError> {
        self.mm.mmap(REGION, self.len, Prot::RW, ANON_FIXED)?;
        let (mm, notifier, pfns) = (&self.mm, &self.notifier, &mut self.pfns);
        let mut result = Ok(0);
        let took = time(|| result = walk(mm, notifier, REGION, pfns, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE));
        result?;
        let level = if self.thp { Level::Pmd } else { Level::Pte };
        let step = if self.thp { PMD_SIZE } else { PAGE_SIZE };
        let sample = (self.len / step / 7).max(1) * step;
        check_leaves(&self.mm, REGION, sample.min(self.len), level)?;
        self.mm.munmap(REGION, self.len)?;
        Ok(took)
    }
}

impl Drop for Untouched {
    fn drop(&mut self) {
        self.notifier.remove();
    }
}

/// A populated private anonymous range at `REGION`, in 4 KiB pages
/// (`MADV_NOHUGEPAGE`) or 2 MiB THPs (`MADV_HUGEPAGE`, aligned; the machine's
/// THP mode is `madvise`), and `hmm-dmirror` loaded on the same machine
/// (devices 0 and 1 device-private, 2 and 3 device-coherent).
pub struct DmirrorRange {
    pub mm: Arc<Mm>,
    pub dmirror: Dmirror,
    pub len: u64,
    /// What the range holds (not a constant, so a misplaced page shows).
    pub data: Vec<u8>,
}

impl std::fmt::Debug for DmirrorRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmirrorRange").field("len", &self.len).finish_non_exhaustive()
    }
}

impl DmirrorRange {
    /// Maps, advises, writes every byte and checks the leaves; then probes
    /// the devices.
    pub fn new(len: u64, huge: bool) -> Result<Self, BenchError> {
        // Room for the range twice over: migration back allocates before
        // the device pages are freed.
        let kernel = machine(2 * len, ThpMode::Madvise, 0)?;
        let mm = kernel.create_mm()?;
        mm.mmap(REGION, len, Prot::RW, ANON_FIXED)?;
        mm.madvise(REGION, len, if huge { MadviseAdvice::HugePage } else { MadviseAdvice::NoHugePage })?;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / PAGE_SIZE + 1) as u8).collect();
        mm.write_bytes(REGION, &data)?;
        check_leaves(&mm, REGION, len, if huge { Level::Pmd } else { Level::Pte })?;
        let dmirror = Dmirror::probe(&kernel, DmirrorConfig::default())?;
        Ok(Self { mm, dmirror, len, data })
    }

    /// 4 KiB pages.
    pub fn npages(&self) -> u64 {
        self.len >> PAGE_SHIFT
    }

    /// Opens `/dev/hmm_dmirror<minor>` from the range's process.
    pub fn open(&self, minor: usize) -> Result<DmirrorFile, BenchError> {
        Ok(self.dmirror.device(minor)?.open(&self.mm)?)
    }
}

/// A zeroed host buffer whose first byte is page aligned, as a driver's
/// DMA buffer is. (A large `Vec` starts 16 bytes into a page; copying
/// whole pages from page-aligned frames to such a buffer runs at about half
/// of memcpy's speed on AVX-512 hosts, stores then splitting cache lines,
/// which is the host's cost, not the model's.)
#[derive(Debug)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` bytes, each written once (no host fault in a timed run).
    pub fn new(len: u64) -> Self {
        let len = len as usize;
        let page = PAGE_SIZE as usize;
        let storage = vec![1u8; len + page];
        let offset = storage.as_ptr().align_offset(page);
        Self { storage, offset, len }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.storage[self.offset..self.offset + self.len]
    }

    /// The bytes, to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aligned_buffer_starts_on_a_page_and_has_its_length() {
        for len in [0, 1, PAGE_SIZE, 3 * PAGE_SIZE + 5] {
            let mut buf = AlignedBuf::new(len);
            assert_eq!(buf.bytes().len() as u64, len);
            assert_eq!(buf.bytes_mut().as_ptr() as u64 % PAGE_SIZE, 0);
        }
    }
}
