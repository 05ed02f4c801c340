//! Tests of device memory: a small device-private driver (its own free
//! list, `migrate_to_ram` through `MigrateVma`) moved data back and forth.

mod rmap;
mod rules;

use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use hmm_pagetable::SwapKind;
use hmm_types::{Errno, Event, MapFlags, Owner, Pfn, Prot, PAGE_SIZE, PMD_SIZE};

use super::{make_device_exclusive, migrate_pfn, migrate_pfn_to_pfn, DeviceFault, MigrateSelect, MigrateVma};
use super::{MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE, MIGRATE_PFN_WRITE};
use crate::gup::FollFlags;
use crate::mm::{Mm, MmapLocked};
use crate::phys::{MemoryType, Pagemap, PagemapOps, PhysMem};
use crate::testing::{kernel, leaf, record};
use crate::{FaultError, Kernel, ThpMode};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const OWNER: Owner = Owner(0xd0);

/// A device with private memory and the simplest driver.
struct Device {
    phys: Arc<PhysMem>,
    base: OnceLock<Pfn>,
    free: Mutex<std::collections::BTreeSet<u64>>,
    owner: Owner,
    to_ram: Mutex<u32>,
    /// Failure injection: large (2 MiB) allocations fail.
    fail_huge: std::sync::atomic::AtomicBool,
}

struct Ops(Weak<Device>);

impl PagemapOps for Ops {
    fn folio_free(&self, head: Pfn) {
        if let Some(device) = self.0.upgrade() {
            let order = device.phys.folio_order(head);
            device.free.lock().extend((0..1u64 << order).map(|i| head.0 + i));
        }
    }
    fn migrate_to_ram(&self, fault: &DeviceFault<'_>) -> Result<(), FaultError> {
        let device = self.0.upgrade().ok_or(FaultError::Sigbus("device gone"))?;
        *device.to_ram.lock() += 1;
        // Bring back the whole folio the page belongs to, as dmirror does.
        let huge = device.phys.folio_order(fault.page) == 9;
        let size = if huge { PMD_SIZE } else { PAGE_SIZE };
        let start = fault.address & !(size - 1);
        let select =
            MigrateSelect::DEVICE_PRIVATE | if huge { MigrateSelect::COMPOUND } else { MigrateSelect::empty() };
        let mut migrate = MigrateVma::new(start, start + size, device.owner, select);
        migrate.fault_page = Some(fault.page);
        migrate.setup(fault.locked).map_err(|_| FaultError::Sigbus("setup failed"))?;
        device.copy(&mut migrate, |phys, order| phys.alloc_folio(order, false).ok());
        migrate.pages(fault.locked);
        migrate.finalize(fault.locked);
        Ok(())
    }
}

impl Device {
    fn new(kernel: &Kernel, owner: Owner, nr: u64) -> Arc<Self> {
        Self::with_type(kernel, owner, nr, MemoryType::DevicePrivate)
    }

    fn with_type(kernel: &Kernel, owner: Owner, nr: u64, memory_type: MemoryType) -> Arc<Self> {
        let device = Arc::new(Device {
            phys: kernel.phys().clone(),
            base: OnceLock::new(),
            free: Mutex::new(Default::default()),
            owner,
            to_ram: Mutex::new(0),
            fail_huge: Default::default(),
        });
        let pagemap = Pagemap::new(memory_type, Some(owner)).with_ops(Arc::new(Ops(Arc::downgrade(&device))));
        let base = kernel.phys().add_device_region(Arc::new(pagemap), nr, None).unwrap();
        device.base.set(base).unwrap();
        *device.free.lock() = (0..nr).map(|i| base.0 + i).collect();
        device
    }

    fn alloc(&self, order: u32) -> Option<Pfn> {
        let mut free = self.free.lock();
        let n = 1u64 << order;
        if order > 0 && self.fail_huge.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let head = free.iter().copied().find(|&p| p % n == 0 && (p..p + n).all(|q| free.contains(&q)))?;
        for q in head..head + n {
            free.remove(&q);
        }
        drop(free);
        self.phys.zone_device_folio_init(Pfn(head), order);
        Some(Pfn(head))
    }

    fn free_pages(&self) -> usize {
        self.free.lock().len()
    }

    /// The driver's copy step: a locked destination per migrating entry,
    /// data copied (or zeroed for a hole).
    fn copy(&self, migrate: &mut MigrateVma, alloc: impl Fn(&PhysMem, u32) -> Option<Pfn>) {
        let mut i = 0;
        while i < migrate.src.len() {
            let word = migrate.src[i];
            if word & MIGRATE_PFN_MIGRATE == 0 {
                i += 1;
                continue;
            }
            let compound = word & MIGRATE_PFN_COMPOUND != 0;
            if compound {
                if let Some(dst) = alloc(&self.phys, 9) {
                    self.phys.meta(dst).try_lock();
                    match migrate_pfn_to_pfn(word) {
                        Some(src) => self.phys.copy_frames(dst, src, 512),
                        None => self.phys.zero_frames(dst, 512),
                    }
                    migrate.dst[i] = migrate_pfn(dst) | MIGRATE_PFN_COMPOUND;
                    i += 512;
                    continue;
                }
            }
            // 4K pages (also the fallback for a compound source: the
            // source is split in `pages`, one destination per page).
            let pages = if compound { 512 } else { 1 };
            for k in 0..pages {
                let Some(dst) = alloc(&self.phys, 0) else { break };
                self.phys.meta(dst).try_lock();
                match migrate_pfn_to_pfn(word) {
                    Some(src) => self.phys.copy_frames(dst, src.add(k as u64), 1),
                    None => self.phys.zero_frames(dst, 1),
                }
                migrate.dst[i + k] = migrate_pfn(dst);
            }
            i += pages;
        }
    }

    fn migrate_to_device(&self, locked: MmapLocked<'_>, start: u64, end: u64) -> MigrateVma {
        self.migrate_to_device_with(locked, start, end, MigrateSelect::SYSTEM)
    }

    fn migrate_to_device_with(
        &self,
        locked: MmapLocked<'_>,
        start: u64,
        end: u64,
        select: MigrateSelect,
    ) -> MigrateVma {
        let mut migrate = MigrateVma::new(start, end, self.owner, select);
        migrate.setup(locked).unwrap();
        self.copy(&mut migrate, |_, order| self.alloc(order));
        migrate.pages(locked);
        migrate.finalize(locked);
        migrate
    }
}

fn to_device(device: &Device, mm: &Mm, start: u64, end: u64) -> MigrateVma {
    let guard = mm.mmap_read();
    device.migrate_to_device(guard.locked(), start, end)
}

#[test]
fn pages_go_to_the_device_and_come_back_on_cpu_access() {
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 64);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 4 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    for i in 0..4 {
        mm.write_u64(va + i * PAGE_SIZE, 100 + i).unwrap();
    }
    let rec = record(&mm);
    let migrate = to_device(&device, &mm, va, va + 4 * PAGE_SIZE);
    let events = rec.take();
    assert!(
        matches!(events[0], crate::testing::Recorded::Start(r) if r.event == Event::Migrate && r.owner == Some(OWNER))
    );
    assert_eq!(migrate.cpages, 4);
    assert!(migrate.src.iter().all(|w| w & MIGRATE_PFN_MIGRATE != 0 && w & MIGRATE_PFN_WRITE != 0));
    assert_eq!(device.free_pages(), 60);
    let (_, entry) = leaf(&mm, va);
    assert_eq!(entry.swap_kind(), Some(SwapKind::DevicePrivateWrite));
    assert_eq!(k.phys().memory_type(entry.pfn()), MemoryType::DevicePrivate);
    // The CPU touches page 2: the driver migrates it back.
    assert_eq!(mm.read_u64(va + 2 * PAGE_SIZE).unwrap(), 102);
    assert_eq!(*device.to_ram.lock(), 1);
    assert!(leaf(&mm, va + 2 * PAGE_SIZE).1.is_present());
    assert_eq!(device.free_pages(), 61, "the device page went back to its driver");
    // GUP migrates too: device memory can never be pinned.
    let pin = mm.pin_user_pages(va, 1, FollFlags::WRITE).unwrap();
    assert_eq!(k.phys().memory_type(pin.pfns()[0]), MemoryType::System);
    drop(pin);
    mm.munmap(va, 4 * PAGE_SIZE).unwrap();
    assert_eq!(device.free_pages(), 64, "munmap frees device pages to the driver");
}

#[test]
fn holes_and_the_zero_page_get_fresh_device_pages() {
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 8);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    mm.read_u64(va).unwrap();
    let migrate = to_device(&device, &mm, va, va + 2 * PAGE_SIZE);
    assert_eq!(migrate.cpages, 2);
    assert!(migrate.src.iter().all(|&w| w == MIGRATE_PFN_MIGRATE), "no source page: {:x?}", migrate.src);
    for i in 0..2 {
        assert!(leaf(&mm, va + i * PAGE_SIZE).1.swap_kind().is_some_and(|k| k.is_device_private()));
    }
    assert_eq!(mm.read_u64(va + PAGE_SIZE).unwrap(), 0);
}

#[test]
fn pinned_shared_and_file_pages_stay() {
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 8);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.write_u64(va + PAGE_SIZE, 2).unwrap();
    let pin = mm.pin_user_pages(va, 1, FollFlags::empty()).unwrap();
    let migrate = to_device(&device, &mm, va, va + 2 * PAGE_SIZE);
    assert_eq!(migrate.src[0], 0, "the pinned page is reported as not migrating");
    assert!(migrate.src[1] & MIGRATE_PFN_MIGRATE != 0);
    assert!(leaf(&mm, va).1.is_present());
    assert_eq!(mm.read_u64(va).unwrap(), 1);
    drop(pin);
    let shared = mm.mmap(0, PAGE_SIZE, Prot::RW, MapFlags::SHARED | MapFlags::ANONYMOUS).unwrap();
    mm.write_u64(shared, 3).unwrap();
    let migrate = to_device(&device, &mm, shared, shared + PAGE_SIZE);
    assert_eq!(migrate.src[0] & MIGRATE_PFN_MIGRATE, 0, "file-backed pages do not go to device memory");
    assert_eq!(mm.read_u64(shared).unwrap(), 3);
}

#[test]
fn range_fault_owner_rules_end_to_end() {
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 8);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 9).unwrap();
    to_device(&device, &mm, va, va + PAGE_SIZE);
    // A foreign owner's REQ_FAULT-style access (a remote write fault) brings it back.
    let guard = mm.mmap_read();
    guard.handle_mm_fault(va, crate::FaultFlags::REMOTE).unwrap();
    drop(guard);
    assert!(leaf(&mm, va).1.is_present());
    assert_eq!(mm.read_u64(va).unwrap(), 9);
}

#[test]
fn bad_arguments_are_einval() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    let guard = mm.mmap_read();
    let errno = |mut m: MigrateVma| m.setup(guard.locked()).unwrap_err().errno();
    assert_eq!(errno(MigrateVma::new(va, va, OWNER, MigrateSelect::SYSTEM)), Errno::Inval);
    assert_eq!(errno(MigrateVma::new(va + 1, va + PAGE_SIZE, OWNER, MigrateSelect::SYSTEM)), Errno::Inval);
    assert_eq!(errno(MigrateVma::new(va, va + 3 * PAGE_SIZE, OWNER, MigrateSelect::SYSTEM)), Errno::Inval);
    assert_eq!(errno(MigrateVma::new(0x1000, 0x2000, OWNER, MigrateSelect::SYSTEM)), Errno::Inval);
    let mut bad_fault = MigrateVma::new(va, va + PAGE_SIZE, OWNER, MigrateSelect::SYSTEM);
    bad_fault.fault_page = Some(k.phys().zero_pfn());
    assert_eq!(errno(bad_fault), Errno::Inval);
}

/// Regression (issue 11): the arrays were allocated from the range at
/// `new`, so a range over a huge mapping aborted the process. They are
/// sized at setup, and arrays larger than RAM are ENOMEM.
#[test]
fn a_range_whose_arrays_exceed_ram_is_enomem() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let len = 1 << 40;
    let va = mm.mmap(0, len, Prot::RW, ANON | MapFlags::NORESERVE).unwrap();
    let guard = mm.mmap_read();
    let mut huge = MigrateVma::new(va, va + len, OWNER, MigrateSelect::SYSTEM);
    assert_eq!(huge.setup(guard.locked()).unwrap_err().errno(), Errno::NoMem);
    let mut small = MigrateVma::new(va, va + 4 * PAGE_SIZE, OWNER, MigrateSelect::SYSTEM);
    small.setup(guard.locked()).unwrap();
    assert_eq!((small.src.len(), small.dst.len()), (4, 4));
    small.finalize(guard.locked());
}

#[test]
fn fork_shares_device_pages_read_only_and_writes_copy() {
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 8);
    let parent = k.create_mm().unwrap();
    let va = parent.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    parent.write_u64(va, 5).unwrap();
    to_device(&device, &parent, va, va + PAGE_SIZE);
    let child = parent.fork().unwrap();
    assert_eq!(leaf(&parent, va).1.swap_kind(), Some(SwapKind::DevicePrivateRead));
    assert_eq!(leaf(&child, va).1.swap_kind(), Some(SwapKind::DevicePrivateRead));
    assert_eq!(child.read_u64(va).unwrap(), 5, "the child sees the parent's data");
    child.write_u64(va, 6).unwrap();
    assert_eq!(parent.read_u64(va).unwrap(), 5);
    parent.write_u64(va, 7).unwrap();
    assert_eq!(child.read_u64(va).unwrap(), 6);
    child.exit();
    parent.exit();
    drop((parent, child));
    assert_eq!(device.free_pages(), 8);
}

#[test]
fn concurrent_cpu_faults_on_one_device_page_agree() {
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 8);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE_SIZE, Prot::RW, ANON).unwrap();
    for round in 0..50u64 {
        mm.write_u64(va, round).unwrap();
        to_device(&device, &mm, va, va + PAGE_SIZE);
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let mm = mm.clone();
                std::thread::spawn(move || mm.read_u64(va).unwrap())
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.join().unwrap(), round);
        }
    }
    assert_eq!(device.free_pages(), 8);
}

#[test]
fn device_exclusive_entries_and_their_restore() {
    let k = kernel(64, ThpMode::Always);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va + 8, 11).unwrap();
    let rec = record(&mm);
    {
        let guard = mm.mmap_read();
        let page = make_device_exclusive(&guard, va + 4, OWNER).unwrap();
        assert_eq!(leaf(&mm, va).1.swap_kind(), Some(SwapKind::DeviceExclusive));
        assert_eq!(page.pfn(), leaf(&mm, va).1.pfn());
    }
    let events: Vec<_> = rec.take_events();
    assert!(events.contains(&(Event::Exclusive, va, va + PAGE_SIZE)), "{events:?}");
    assert_eq!(mm.read_u64(va + 8).unwrap(), 11, "a CPU access restores the page");
    assert!(leaf(&mm, va).1.is_present());
    assert_eq!(rec.take_events(), [(Event::Exclusive, va, va + PAGE_SIZE)]);
    let shared = mm.mmap(0, PAGE_SIZE, Prot::RW, MapFlags::SHARED | MapFlags::ANONYMOUS).unwrap();
    let guard = mm.mmap_read();
    assert_eq!(make_device_exclusive(&guard, shared, OWNER).unwrap_err().errno(), Errno::OpNotSupp);
}

#[test]
fn exclusive_then_mprotect_and_fork() {
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap();
    mm.write_u64(va + PAGE_SIZE, 2).unwrap();
    {
        let guard = mm.mmap_read();
        drop(make_device_exclusive(&guard, va, OWNER).unwrap());
        drop(make_device_exclusive(&guard, va + PAGE_SIZE, OWNER).unwrap());
    }
    mm.mprotect(va, PAGE_SIZE, Prot::READ).unwrap();
    // Linux 7.3 leaves the entry to the CPU's next access, which restores
    // it with the VMA's new protection (scenarios/device/exclusive_mprotect.hmm).
    assert_eq!(leaf(&mm, va).1.swap_kind(), Some(SwapKind::DeviceExclusive));
    assert_eq!(mm.read_u64(va).unwrap(), 1);
    assert!(leaf(&mm, va).1.is_present() && !leaf(&mm, va).1.is_write());
    let child = mm.fork().unwrap();
    assert!(leaf(&mm, va + PAGE_SIZE).1.is_present(), "fork restored the exclusive entry");
    assert_eq!(child.read_u64(va + PAGE_SIZE).unwrap(), 2);
    child.write_u64(va + PAGE_SIZE, 3).unwrap();
    assert_eq!(mm.read_u64(va + PAGE_SIZE).unwrap(), 2);
    child.exit();
}

#[test]
fn evicting_device_memory_brings_every_mapping_back() {
    use super::MigrateDevice;
    let k = kernel(64, ThpMode::Never);
    let device = Device::new(&k, OWNER, 8);
    let parent = k.create_mm().unwrap();
    let va = parent.mmap(0, 3 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    for i in 0..3 {
        parent.write_u64(va + i * PAGE_SIZE, 40 + i).unwrap();
    }
    to_device(&device, &parent, va, va + 3 * PAGE_SIZE);
    let child = parent.fork().unwrap();
    assert_eq!(device.free_pages(), 5);
    let rec = record(&parent);
    let base = *device.base.get().unwrap();
    let mut evict = MigrateDevice::setup(&k, base, 8).unwrap();
    assert_eq!(evict.src.iter().filter(|w| *w & MIGRATE_PFN_MIGRATE != 0).count(), 3);
    for i in 0..8 {
        if let Some(src) = migrate_pfn_to_pfn(evict.src[i]) {
            let dst = k.phys().alloc_folio(0, false).unwrap();
            k.phys().meta(dst).try_lock();
            k.phys().copy_frames(dst, src, 1);
            evict.dst[i] = migrate_pfn(dst);
        }
    }
    evict.pages();
    evict.finalize();
    assert_eq!(rec.take_events().len(), 3, "one invalidation per unmapped page");
    assert_eq!(device.free_pages(), 8, "every device page went back to the driver");
    for i in 0..3 {
        assert!(leaf(&parent, va + i * PAGE_SIZE).1.is_present());
        assert_eq!(parent.read_u64(va + i * PAGE_SIZE).unwrap(), 40 + i);
        assert_eq!(child.read_u64(va + i * PAGE_SIZE).unwrap(), 40 + i);
    }
    child.write_u64(va, 1).unwrap();
    assert_eq!(parent.read_u64(va).unwrap(), 40, "still copy-on-write after eviction");
    assert_eq!(MigrateDevice::setup(&k, k.phys().zero_pfn(), 1).unwrap_err().errno(), Errno::Inval);
    child.exit();
}

#[test]
fn a_thp_moves_whole_to_the_device_and_back() {
    let k = kernel(64, ThpMode::Always);
    let device = Device::new(&k, OWNER, 1024);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap();
    for i in 0..512 {
        mm.write_u64(va + i * PAGE_SIZE, i).unwrap();
    }
    assert_eq!(leaf(&mm, va).0, hmm_pagetable::Level::Pmd);
    let free = k.phys().free_frames();
    let migrate = {
        let guard = mm.mmap_read();
        device.migrate_to_device_with(
            guard.locked(),
            va,
            va + 2 * PMD_SIZE,
            MigrateSelect::SYSTEM | MigrateSelect::COMPOUND,
        )
    };
    assert_eq!(migrate.cpages, 2, "one THP and one empty block, each collected whole");
    assert!(migrate.src[0] & MIGRATE_PFN_COMPOUND != 0 && migrate.src[1] == 0);
    assert!(migrate.src[512] & MIGRATE_PFN_COMPOUND != 0 && migrate_pfn_to_pfn(migrate.src[512]).is_none());
    let (level, entry) = leaf(&mm, va);
    assert_eq!((level, entry.swap_kind()), (hmm_pagetable::Level::Pmd, Some(SwapKind::DevicePrivateWrite)));
    assert_eq!(k.phys().folio_order(entry.pfn()), 9);
    assert_eq!(k.phys().free_frames(), free + 512, "the THP went back to the allocator");
    assert_eq!(device.free_pages(), 0);
    // The CPU brings the whole folio back with one fault.
    assert_eq!(mm.read_u64(va + 77 * PAGE_SIZE).unwrap(), 77);
    assert_eq!(*device.to_ram.lock(), 1);
    let (level, entry) = leaf(&mm, va);
    assert!(level == hmm_pagetable::Level::Pmd && entry.is_present());
    assert_eq!(mm.read_u64(va + 511 * PAGE_SIZE).unwrap(), 511);
    assert_eq!(device.free_pages(), 512);
    mm.munmap(va, 2 * PMD_SIZE).unwrap();
    assert_eq!(device.free_pages(), 1024);
}

#[test]
fn a_failed_large_allocation_falls_back_to_4k_pages() {
    let k = kernel(64, ThpMode::Always);
    let device = Device::new(&k, OWNER, 1024);
    device.fail_huge.store(true, std::sync::atomic::Ordering::Relaxed);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PMD_SIZE, Prot::RW, ANON).unwrap();
    for i in 0..512 {
        mm.write_u64(va + i * PAGE_SIZE, 1000 + i).unwrap();
    }
    let migrate = {
        let guard = mm.mmap_read();
        device.migrate_to_device_with(
            guard.locked(),
            va,
            va + PMD_SIZE,
            MigrateSelect::SYSTEM | MigrateSelect::COMPOUND,
        )
    };
    assert!(migrate.src.iter().all(|w| w & MIGRATE_PFN_MIGRATE != 0), "the THP was split and moved page by page");
    let (level, entry) = leaf(&mm, va + 5 * PAGE_SIZE);
    assert_eq!((level, entry.swap_kind()), (hmm_pagetable::Level::Pte, Some(SwapKind::DevicePrivateWrite)));
    assert_eq!(device.free_pages(), 512);
    for i in (0..512).step_by(37) {
        assert_eq!(mm.read_u64(va + i * PAGE_SIZE).unwrap(), 1000 + i);
    }
    mm.munmap(va, PMD_SIZE).unwrap();
    assert_eq!(device.free_pages(), 1024);
}

#[test]
fn device_coherent_pages_are_mapped_by_the_cpu() {
    let k = kernel(64, ThpMode::Never);
    let device = Device::with_type(&k, OWNER, 8, MemoryType::DeviceCoherent);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PAGE_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 21).unwrap();
    to_device(&device, &mm, va, va + 2 * PAGE_SIZE);
    let (_, entry) = leaf(&mm, va);
    assert!(entry.is_present() && entry.is_write());
    assert_eq!(k.phys().memory_type(entry.pfn()), MemoryType::DeviceCoherent);
    assert_eq!(mm.read_u64(va).unwrap(), 21, "the CPU reads coherent device memory directly");
    assert_eq!(*device.to_ram.lock(), 0);
    mm.write_u64(va + PAGE_SIZE, 22).unwrap();
    // Back to RAM, selected as device-coherent memory of this owner.
    let guard = mm.mmap_read();
    let mut back = MigrateVma::new(va, va + 2 * PAGE_SIZE, OWNER, MigrateSelect::DEVICE_COHERENT);
    back.setup(guard.locked()).unwrap();
    assert_eq!(back.cpages, 2);
    device.copy(&mut back, |phys, order| phys.alloc_folio(order, false).ok());
    back.pages(guard.locked());
    back.finalize(guard.locked());
    drop(guard);
    assert_eq!(k.phys().memory_type(leaf(&mm, va).1.pfn()), MemoryType::System);
    assert_eq!(mm.read_u64(va + PAGE_SIZE).unwrap(), 22);
    assert_eq!(device.free_pages(), 8);
}

/// Regression: after fork a THP is PMD-mapped by the child and, once the
/// parent wrote one page (COW splits its PMD), PTE-mapped 511 times by the
/// parent: 512 mappings, which looked like "every page mapped once". A
/// device-private migration over the parent's range (dmirror's eviction on
/// close) split the folio under the child's PMD, and the exits underflowed
/// the mapcount. The folio must stay whole and every count balance.
#[test]
fn a_thp_pmd_mapped_in_a_fork_child_is_not_split_by_the_parent_migration() {
    let k = kernel(64, ThpMode::Always);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, ANON).unwrap();
    mm.write_u64(va, 1).unwrap();
    let thp = leaf(&mm, va).1.pfn();
    let child = mm.fork().unwrap();
    mm.write_u64(va + 300 * PAGE_SIZE, 2).unwrap();
    assert_eq!(k.phys().folio_counts(thp), (512, 512));
    {
        let guard = mm.mmap_read();
        let select = MigrateSelect::DEVICE_PRIVATE | MigrateSelect::COMPOUND;
        let mut migrate = MigrateVma::new(va, va + 2 * PMD_SIZE, OWNER, select);
        migrate.setup(guard.locked()).unwrap();
        // No device page to collect; the empty second PMD is a compound
        // hole, which Linux collects whatever the selection (delta §3.2).
        assert!(migrate.src[..512].iter().all(|&w| w == 0));
        assert_eq!(migrate.src[512], MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND);
        assert_eq!(migrate.cpages, 1);
        migrate.pages(guard.locked());
        migrate.finalize(guard.locked());
    }
    assert_eq!(k.phys().folio_order(thp), 9, "the child's PMD still maps the whole folio");
    assert_eq!(child.read_u64(va).unwrap(), 1);
    assert_eq!(mm.read_u64(va + 300 * PAGE_SIZE).unwrap(), 2);
    mm.exit();
    child.exit();
    drop((mm, child));
    assert_eq!(k.phys().check_frames().unwrap().in_use, 0);
}
