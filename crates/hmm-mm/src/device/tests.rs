//! Tests of device memory: a small device-private driver (its own free
//! list, `migrate_to_ram` through `MigrateVma`) moved data back and forth.

use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use hmm_pagetable::SwapKind;
use hmm_types::{Errno, Event, MapFlags, Owner, Pfn, Prot, PAGE_SIZE, PMD_SIZE};

use super::{make_device_exclusive, migrate_pfn, migrate_pfn_to_pfn, DeviceFault, MigrateSelect, MigrateVma};
use super::{MIGRATE_PFN_MIGRATE, MIGRATE_PFN_WRITE};
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
    free: Mutex<Vec<Pfn>>,
    owner: Owner,
    to_ram: Mutex<u32>,
}

struct Ops(Weak<Device>);

impl PagemapOps for Ops {
    fn folio_free(&self, head: Pfn) {
        if let Some(device) = self.0.upgrade() {
            device.free.lock().push(head);
        }
    }
    fn migrate_to_ram(&self, fault: &DeviceFault<'_>) -> Result<(), FaultError> {
        let device = self.0.upgrade().ok_or(FaultError::Sigbus("device gone"))?;
        *device.to_ram.lock() += 1;
        let mut migrate =
            MigrateVma::new(fault.address, fault.address + PAGE_SIZE, device.owner, MigrateSelect::DEVICE_PRIVATE);
        migrate.fault_page = Some(fault.page);
        migrate.setup(fault.locked).map_err(|_| FaultError::Sigbus("setup failed"))?;
        device.copy(&mut migrate, |phys| phys.alloc_folio(0, false).ok());
        migrate.pages(fault.locked);
        migrate.finalize(fault.locked);
        Ok(())
    }
}

impl Device {
    fn new(kernel: &Kernel, owner: Owner, nr: u64) -> Arc<Self> {
        let device = Arc::new(Device {
            phys: kernel.phys().clone(),
            base: OnceLock::new(),
            free: Mutex::new(Vec::new()),
            owner,
            to_ram: Mutex::new(0),
        });
        let pagemap =
            Pagemap::new(MemoryType::DevicePrivate, Some(owner)).with_ops(Arc::new(Ops(Arc::downgrade(&device))));
        let base = kernel.phys().add_device_region(Arc::new(pagemap), nr, None).unwrap();
        device.base.set(base).unwrap();
        *device.free.lock() = (0..nr).rev().map(|i| base.add(i)).collect();
        device
    }

    fn alloc(&self) -> Option<Pfn> {
        let pfn = self.free.lock().pop()?;
        self.phys.zone_device_page_init(pfn);
        Some(pfn)
    }

    fn free_pages(&self) -> usize {
        self.free.lock().len()
    }

    /// The driver's copy step: a locked destination per migrating entry,
    /// data copied (or zeroed for a hole).
    fn copy(&self, migrate: &mut MigrateVma, alloc: impl Fn(&PhysMem) -> Option<Pfn>) {
        for i in 0..migrate.src.len() {
            if migrate.src[i] & MIGRATE_PFN_MIGRATE == 0 {
                continue;
            }
            let Some(dst) = alloc(&self.phys) else { continue };
            self.phys.meta(dst).try_lock();
            match migrate_pfn_to_pfn(migrate.src[i]) {
                Some(src) => self.phys.copy_frames(dst, src, 1),
                None => self.phys.zero_frames(dst, 1),
            }
            migrate.dst[i] = migrate_pfn(dst);
        }
    }

    fn migrate_to_device(&self, locked: MmapLocked<'_>, start: u64, end: u64) -> MigrateVma {
        let mut migrate = MigrateVma::new(start, end, self.owner, MigrateSelect::SYSTEM);
        migrate.setup(locked).unwrap();
        self.copy(&mut migrate, |_| self.alloc());
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
    let mut short = MigrateVma::new(va, va + 2 * PAGE_SIZE, OWNER, MigrateSelect::SYSTEM);
    short.dst.pop();
    assert_eq!(errno(short), Errno::Inval);
    let mut bad_fault = MigrateVma::new(va, va + PAGE_SIZE, OWNER, MigrateSelect::SYSTEM);
    bad_fault.fault_page = Some(k.phys().zero_pfn());
    assert_eq!(errno(bad_fault), Errno::Inval);
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
