//! An open file of a device: the mirror of the opener's whole address
//! space (device page table, interval notifier, per-open flags) and the
//! typed calls behind the ioctl (spec §5.2, §5.4); the ioctl entry point
//! itself, with Linux's argument checks, is `file/ioctl.rs`.
//!
//! Lock order: the opener's mmap lock, then a mirror's table mutex; the
//! mutex is never held across `read_begin`, `range_fault` or a migration's
//! `setup` (both run invalidation callbacks, which take it).
//!
//! Linux: `struct dmirror`, `dmirror_fops_*`, `dmirror_interval_invalidate`
//! (`lib/test_hmm.c`).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, MutexGuard};

use hmm::IntervalNotifier;
use hmm_mm::{Mm, MmUser};
use hmm_types::{Errno, MapFlags, NotifierRange, Prot, PAGE_SIZE, TASK_SIZE};

use crate::device::DmirrorDevice;
use crate::error::DmirrorError;
use crate::table::DeviceTable;

mod ioctl;

/// What a command reports besides its data (`cpages`, `faults`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Counts {
    /// Pages copied or processed.
    pub cpages: u64,
    /// Device fault rounds.
    pub faults: u64,
}

/// The state of one open file (`struct dmirror`).
#[derive(Debug)]
pub(crate) struct Mirror {
    pub(crate) device: Arc<DmirrorDevice>,
    pub(crate) mm: Arc<Mm>,
    pub(crate) notifier: OnceLock<Arc<IntervalNotifier>>,
    /// The driver update lock and the device page table it protects.
    pub(crate) table: Mutex<DeviceTable>,
    /// `HMM_DMIRROR_FLAG_*`.
    pub(crate) flags: AtomicU64,
    /// Migrations this file is running: its own MIGRATE events then leave
    /// its table alone (see [`Mirror::invalidate`]).
    pub(crate) migrating: AtomicU32,
}

impl Mirror {
    pub(crate) fn new(device: Arc<DmirrorDevice>, mm: &Arc<Mm>) -> Result<Arc<Self>, Errno> {
        let table = DeviceTable::new().map_err(|error| error.errno())?;
        let mirror = Arc::new(Self {
            device,
            mm: mm.clone(),
            notifier: OnceLock::new(),
            table: Mutex::new(table),
            flags: AtomicU64::new(0),
            migrating: AtomicU32::new(0),
        });
        // The subscription holds the mirror weakly: the mirror holds the
        // subscription and the address space, so a strong reference back
        // would keep all three alive after close (Linux breaks the same
        // cycle with `mmu_interval_notifier_remove` in release).
        let ops = Arc::new(crate::invalidate::MirrorOps(Arc::downgrade(&mirror)));
        let notifier = mm.interval_notifier_insert(0, TASK_SIZE, ops)?;
        mirror.notifier.set(notifier).expect("set once, here");
        Ok(mirror)
    }

    pub(crate) fn notifier(&self) -> &Arc<IntervalNotifier> {
        self.notifier.get().expect("set when the file was opened")
    }

    /// A user reference on the mirrored address space (`mmget_not_zero`).
    pub(crate) fn mm_user(&self) -> Result<MmUser, DmirrorError> {
        self.mm.mmget_not_zero().ok_or(DmirrorError::MmGone)
    }

    pub(crate) fn lock_table(&self) -> MutexGuard<'_, DeviceTable> {
        self.table.lock()
    }

    /// The table lock for an invalidation callback: waited for when the
    /// event may block, only tried when not (`None`: refuse the event).
    pub(crate) fn lock_for(&self, range: &NotifierRange) -> Option<MutexGuard<'_, DeviceTable>> {
        if range.blockable {
            Some(self.table.lock())
        } else {
            self.table.try_lock()
        }
    }

    /// Consumes `HMM_DMIRROR_FLAG_FAIL_ALLOC` if set.
    pub(crate) fn take_fail_alloc(&self) -> bool {
        let flag = crate::uapi::HMM_DMIRROR_FLAG_FAIL_ALLOC;
        self.flags.fetch_and(!flag, Ordering::AcqRel) & flag != 0
    }

    /// Runs `f` as this file's own migration.
    pub(crate) fn migrating<T>(&self, f: impl FnOnce() -> T) -> T {
        self.migrating.fetch_add(1, Ordering::AcqRel);
        let result = f();
        self.migrating.fetch_sub(1, Ordering::AcqRel);
        result
    }
}

/// An open `/dev/hmm_dmirror<N>`. Dropping it closes it.
#[derive(Debug)]
pub struct DmirrorFile {
    mirror: Arc<Mirror>,
}

impl DmirrorFile {
    pub(crate) fn new(mirror: Arc<Mirror>) -> Self {
        Self { mirror }
    }

    /// The device this file was opened on.
    pub fn device(&self) -> &Arc<DmirrorDevice> {
        &self.mirror.device
    }

    /// Pages the device currently maps for this file.
    pub fn mapped_pages(&self) -> u64 {
        self.mirror.lock_table().len()
    }

    /// Every page the device maps for this file, as `(address, entry)` in
    /// address order: a diagnostic for tests and fuzzers that check the
    /// device table against the CPU's (no Linux counterpart).
    pub fn device_entries(&self) -> Vec<(u64, crate::table::DeviceEntry)> {
        self.mirror.lock_table().entries()
    }

    /// READ: the device reads `npages` from `addr` into `out`, faulting
    /// what it lacks (`dmirror_read`).
    pub fn read(&self, addr: u64, npages: u64, out: &mut [u8]) -> Result<Counts, DmirrorError> {
        check_buffer(addr, npages, out.len())?;
        crate::rw::read(&self.mirror, addr, npages, out)
    }

    /// READ_UNLOCKED: READ whose faults let HMM take and drop the mmap
    /// lock, so a userfaultfd handler can serve them
    /// (`dmirror_read_unlocked`).
    pub fn read_unlocked(&self, addr: u64, npages: u64, out: &mut [u8]) -> Result<Counts, DmirrorError> {
        check_buffer(addr, npages, out.len())?;
        crate::unlocked::read(&self.mirror, addr, npages, out)
    }

    /// WRITE: the device writes `data` to `npages` from `addr`, faulting
    /// for write what it lacks (`dmirror_write`).
    pub fn write(&self, addr: u64, npages: u64, data: &[u8]) -> Result<Counts, DmirrorError> {
        check_buffer(addr, npages, data.len())?;
        crate::rw::write(&self.mirror, addr, npages, data)
    }

    /// MIGRATE_TO_DEV: moves the range to device memory, then reads it back
    /// through the device table into `out` (`ENOENT` for a page the device
    /// does not map) (`dmirror_migrate_to_device`).
    pub fn migrate_to_dev(&self, addr: u64, npages: u64, out: &mut [u8]) -> Result<Counts, DmirrorError> {
        check_buffer(addr, npages, out.len())?;
        crate::migrate::to_device(&self.mirror, addr, npages, out)
    }

    /// MIGRATE_TO_SYS: moves this device's pages of the range back to
    /// system RAM; `cpages` counts them (`dmirror_migrate_to_system`).
    pub fn migrate_to_sys(&self, addr: u64, npages: u64) -> Result<Counts, DmirrorError> {
        checked_npages(addr, npages)?;
        crate::migrate::to_system(&self.mirror, addr, npages)
    }

    /// SNAPSHOT: one byte per page, what the device would see without
    /// faulting (`dmirror_snapshot`; bytes in [`crate::uapi::prot`]).
    pub fn snapshot(&self, addr: u64, npages: u64, out: &mut [u8]) -> Result<Counts, DmirrorError> {
        if out.len() as u64 != checked_npages(addr, npages)? {
            return Err(DmirrorError::BufferLength { expected: npages, got: out.len() as u64 });
        }
        crate::snapshot::snapshot(&self.mirror, addr, npages, out)
    }

    /// EXCLUSIVE: takes the pages for device atomics, then reads them back
    /// into `out` (`dmirror_exclusive`).
    pub fn exclusive(&self, addr: u64, npages: u64, out: &mut [u8]) -> Result<Counts, DmirrorError> {
        check_buffer(addr, npages, out.len())?;
        crate::exclusive::exclusive(&self.mirror, addr, npages, out)
    }

    /// CHECK_EXCLUSIVE: `EPERM` while a page of the range is still mapped
    /// for atomics (`dmirror_check_atomic`).
    pub fn check_exclusive(&self, addr: u64, npages: u64) -> Result<(), DmirrorError> {
        checked_npages(addr, npages)?;
        crate::exclusive::check(&self.mirror, addr, npages)
    }

    /// RELEASE: migrates all of the device's memory back to system RAM
    /// (`dmirror_device_remove_chunks`).
    pub fn release(&self) {
        self.mirror.device.remove_chunks();
    }

    /// FLAGS: sets this file's flag word.
    pub fn set_flags(&self, flags: u64) {
        self.mirror.flags.store(flags, Ordering::Release);
    }

    /// Gives this file a DMA device for `npages` from `addr`: from now on
    /// the system pages the device faults in there are DMA-mapped with the
    /// `hmm::dma` helpers and unmapped before any invalidation, migration
    /// or eviction replaces them. Pages the device already maps there are
    /// dropped, to be faulted (and mapped) again. `EBUSY` if a device is
    /// attached, `EINVAL` for a bad range, `EOPNOTSUPP` for a device that
    /// needs cache syncs, `ENOMEM` for a window larger than RAM.
    pub fn dma_attach(&self, dev: Arc<dyn hmm::dma::DmaDevice>, addr: u64, npages: u64) -> Result<(), DmirrorError> {
        let npages = checked_npages(addr, npages)?;
        if npages > self.mirror.mm.phys().ram_frames() {
            return Err(DmirrorError::NoMem("a DMA window larger than RAM"));
        }
        let mut table = self.mirror.lock_table();
        if table.dma.is_some() {
            return Err(DmirrorError::DmaAttached);
        }
        let window = crate::dma::DmaWindow::new(dev, addr, npages as usize)?;
        table.clear(addr, addr + npages * PAGE_SIZE);
        table.dma = Some(window);
        Ok(())
    }

    /// Unmaps every page of the DMA window and frees it
    /// (`hmm_dma_map_free`); nothing to do without one.
    pub fn dma_detach(&self) -> Result<(), DmirrorError> {
        let window = self.mirror.lock_table().dma.take();
        window.map_or(Ok(()), crate::dma::DmaWindow::free)
    }

    /// The DMA address the device uses for the page at `va`, if it is
    /// DMA-mapped (a diagnostic).
    pub fn dma_address(&self, va: u64) -> Option<u64> {
        self.mirror.lock_table().dma.as_ref()?.address(va & !(PAGE_SIZE - 1))
    }

    /// mmap of the device file (`dmirror_fops_mmap`): `npages` zeroed pages
    /// inserted with `vm_insert_page` into a new `VM_MIXEDMAP` mapping of
    /// the opener. A private writable mapping gets read-only entries.
    pub fn mmap(&self, npages: u64, prot: Prot, flags: MapFlags) -> Result<u64, DmirrorError> {
        if npages == 0 {
            return Err(DmirrorError::BadRange { addr: 0, npages });
        }
        let phys = self.mirror.mm.phys();
        // More pages than RAM holds cannot be allocated (and a length past
        // the user address space is ENOMEM from mmap itself): refuse before
        // reserving anything sized by the caller.
        if npages > phys.ram_frames() {
            return Err(DmirrorError::NoMem("more pages than RAM holds"));
        }
        let mut pages = Vec::new();
        pages.try_reserve_exact(npages as usize).map_err(|_| DmirrorError::NoMem("the page list"))?;
        let allocated = (0..npages).try_for_each(|_| {
            pages.push(phys.alloc_folio(0, true).map_err(|_| DmirrorError::NoMem("pages for the mapping"))?);
            Ok(())
        });
        let mapped = allocated.and_then(|()| Ok(self.mirror.mm.mmap_pages(prot, flags, &pages)?));
        // The mapping holds its own references (or failed): the driver's go.
        for &page in &pages {
            phys.put(page);
        }
        mapped
    }

    /// Closes the file (`dmirror_fops_release`): unsubscribes, then evicts
    /// all of the device's memory, as the newest Linux does on every close
    /// (the chunks stay registered; only RELEASE removes them).
    pub fn close(self) {}
}

impl Drop for DmirrorFile {
    fn drop(&mut self) {
        self.mirror.notifier().remove();
        self.mirror.device.evict_chunks();
        self.mirror.device.forget(&self.mirror);
        let mut table = self.mirror.lock_table();
        table.clear(0, TASK_SIZE);
        if let Some(window) = table.dma.take() {
            // Everything was unmapped by the clear: freeing cannot leak.
            let _ = window.free();
        }
    }
}

/// Linux's range check: `addr` page aligned, `npages` non-zero, and the
/// end not wrapping (`addr >= addr + (npages << PAGE_SHIFT)` is `EINVAL`;
/// the model also refuses a page count whose byte size overflows).
pub(crate) fn checked_npages(addr: u64, npages: u64) -> Result<u64, DmirrorError> {
    if addr % PAGE_SIZE != 0 {
        return Err(DmirrorError::Unaligned(addr));
    }
    let end = npages.checked_mul(PAGE_SIZE).and_then(|size| addr.checked_add(size));
    match end {
        Some(end) if end > addr => Ok(npages),
        _ => Err(DmirrorError::BadRange { addr, npages }),
    }
}

fn check_buffer(addr: u64, npages: u64, len: usize) -> Result<(), DmirrorError> {
    let npages = checked_npages(addr, npages)?;
    if len as u64 != npages * PAGE_SIZE {
        return Err(DmirrorError::BufferLength { expected: npages * PAGE_SIZE, got: len as u64 });
    }
    Ok(())
}
