//! Moving memory between system RAM and the device: MIGRATE_TO_DEV,
//! MIGRATE_TO_SYS and the CPU fault on a device page (`migrate_to_ram`);
//! eviction goes by frame number (`devmem.rs`). Each is `MigrateVma` setup → the
//! driver's allocation and copy → pages → (table update) → finalize, in
//! chunks of at most 512 pages that never cross a VMA (spec §5.5).
//!
//! Linux: `dmirror_migrate_to_device`, `dmirror_migrate_alloc_and_copy`,
//! `dmirror_migrate_finalize_and_map`, `dmirror_migrate_to_system`,
//! `dmirror_devmem_fault_alloc_and_copy`, `dmirror_devmem_fault`
//! (`lib/test_hmm.c`).

use std::sync::Arc;

use hmm::{migrate_pfn, migrate_pfn_to_pfn, DeviceFault, MigrateSelect, MigrateVma};
use hmm_mm::device::{MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE, MIGRATE_PFN_VALID, MIGRATE_PFN_WRITE};
use hmm_mm::{FaultError, MmapLocked, MmapReadGuard};
use hmm_pagetable::Level;
use hmm_types::{Pfn, VmFlags, PAGE_SIZE, TASK_SIZE};

use crate::device::DmirrorDevice;
use crate::devmem::FOLIO_PAGES;
use crate::error::DmirrorError;
use crate::file::{Counts, Mirror};
use crate::table::{Access, DeviceEntry};
use crate::uapi::MemoryKind;

/// Pages per migration chunk (`PTRS_PER_PTE`).
const CHUNK_PAGES: u64 = 512;

/// MIGRATE_TO_DEV.
pub(crate) fn to_device(mirror: &Mirror, addr: u64, npages: u64, out: &mut [u8]) -> Result<Counts, DmirrorError> {
    let end = addr + npages * PAGE_SIZE;
    let user = mirror.mm_user()?;
    {
        let guard = user.mmap_read();
        for_each_chunk(&guard, addr, end, true, |locked, start, next| {
            let select = MigrateSelect::SYSTEM | MigrateSelect::COMPOUND;
            let mut migrate = MigrateVma::new(start, next, mirror.device.owner(), select);
            mirror.migrating(|| migrate.setup(locked))?;
            alloc_and_copy(mirror, &mut migrate);
            migrate.pages(locked);
            finalize_and_map(mirror, &migrate)?;
            migrate.finalize(locked);
            Ok(())
        })?;
    }
    // Read back through the device table, without faulting.
    let table = mirror.lock_table();
    crate::rw::do_read(mirror, &table, addr, addr, end, out).map_err(DmirrorError::NotMapped)?;
    Ok(Counts { cpages: npages, faults: 0 })
}

/// MIGRATE_TO_SYS.
pub(crate) fn to_system(mirror: &Mirror, addr: u64, npages: u64) -> Result<Counts, DmirrorError> {
    let end = addr + npages * PAGE_SIZE;
    let user = mirror.mm_user()?;
    let guard = user.mmap_read();
    let mut cpages = 0;
    let mut out_of_memory = false;
    for_each_chunk(&guard, addr, end, true, |locked, start, next| {
        let mut migrate = MigrateVma::new(start, next, mirror.device.owner(), select_device(&mirror.device));
        mirror.migrating(|| migrate.setup(locked))?;
        out_of_memory |= fault_alloc_and_copy(&mirror.device, &mut migrate, Some(mirror)).is_err();
        migrate.pages(locked);
        cpages += migrated_pages(&migrate);
        migrate.finalize(locked);
        Ok(())
    })?;
    if out_of_memory {
        return Err(DmirrorError::NoMem("system pages for the migration back"));
    }
    Ok(Counts { cpages, faults: 0 })
}

/// The CPU touched a page of this device (`dmirror_devmem_fault`): the
/// page, or the whole 2 MiB folio when a PMD maps it, moves back.
pub(crate) fn devmem_fault(device: &Arc<DmirrorDevice>, fault: &DeviceFault<'_>) -> Result<(), FaultError> {
    let mm = fault.locked.mm();
    let phys = mm.phys();
    let pmd_mapped = mm.pgtable().find(fault.address).level() == Level::Pmd;
    let order = if pmd_mapped { phys.folio_order(fault.page) } else { 0 };
    let size = PAGE_SIZE << order;
    let start = fault.address & !(size - 1);
    let mut select = select_device(device);
    if order == 0 {
        select -= MigrateSelect::COMPOUND;
    }
    let mut migrate = MigrateVma::new(start, start + size, device.owner(), select);
    migrate.fault_page = Some(fault.page);
    migrate.setup(fault.locked).map_err(|_| FaultError::Sigbus("migrate_vma_setup failed"))?;
    let copied = fault_alloc_and_copy(device, &mut migrate, None);
    migrate.pages(fault.locked);
    migrate.finalize(fault.locked);
    copied.map_err(|_| FaultError::Oom)
}

fn select_device(device: &DmirrorDevice) -> MigrateSelect {
    MigrateSelect::COMPOUND
        | match device.kind() {
            MemoryKind::DevicePrivate => MigrateSelect::DEVICE_PRIVATE,
            MemoryKind::DeviceCoherent => MigrateSelect::DEVICE_COHERENT,
        }
}

/// Splits `[start, end)` into migration chunks (at most 512 pages, never
/// across a VMA), each starting in a VMA, readable if `readable` (else
/// `EINVAL`).
fn for_each_chunk(
    guard: &MmapReadGuard<'_>,
    start: u64,
    end: u64,
    readable: bool,
    mut chunk: impl FnMut(MmapLocked<'_>, u64, u64) -> Result<(), DmirrorError>,
) -> Result<(), DmirrorError> {
    let mut addr = start;
    while addr < end {
        let vma = guard.vma(addr).filter(|vma| !readable || vma.flags.contains(VmFlags::READ));
        let vma = vma.ok_or(DmirrorError::NoReadableVma(addr))?;
        let next = end.min(addr + CHUNK_PAGES * PAGE_SIZE).min(vma.end).min(TASK_SIZE);
        chunk(guard.locked(), addr, next)?;
        addr = next;
    }
    Ok(())
}

fn migrated_pages(migrate: &MigrateVma) -> u64 {
    let both = MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE;
    migrate.src.iter().filter(|&&w| w & both == both).map(|&w| entry_pages(w)).sum()
}

fn entry_pages(word: u64) -> u64 {
    if word & MIGRATE_PFN_COMPOUND != 0 {
        FOLIO_PAGES
    } else {
        1
    }
}

/// The driver's step toward the device (`dmirror_migrate_alloc_and_copy`):
/// a device page (or folio) per migrating source, with the data copied or,
/// for a hole or the zero page, cleared. A failed large allocation falls
/// back to 4K device pages; a failed small one leaves the page behind.
fn alloc_and_copy(mirror: &Mirror, migrate: &mut MigrateVma) {
    let device = &mirror.device;
    let phys = mirror.mm.phys();
    let mut copies = Copies::new();
    let mut i = 0;
    while i < migrate.src.len() {
        let src = migrate.src[i];
        let nr = entry_pages(src) as usize;
        let spage = migrate_pfn_to_pfn(src);
        let skip = src & MIGRATE_PFN_MIGRATE == 0 || spage.is_some_and(|p| phys.memory_type(p).is_zone_device());
        if skip {
            i += nr;
            continue;
        }
        let write = src & MIGRATE_PFN_WRITE;
        let order = if nr > 1 { 9 } else { 0 };
        let dpage = if mirror.take_fail_alloc() { None } else { device.memory().alloc(device.weak(), order) };
        match dpage {
            Some(dpage) => {
                copies.push(phys, dpage, spage, nr as u64);
                let compound = if nr > 1 { MIGRATE_PFN_COMPOUND } else { 0 };
                migrate.dst[i] = migrate_pfn(dpage) | write | compound;
            }
            None if nr > 1 => {
                // The large allocation failed: 4K device pages instead.
                for j in 0..nr {
                    let Some(dpage) = device.memory().alloc(device.weak(), 0) else { continue };
                    copies.push(phys, dpage, spage.map(|p| p.add(j as u64)), 1);
                    migrate.dst[i + j] = migrate_pfn(dpage) | write;
                }
            }
            None => {}
        }
        i += nr;
    }
}

/// The driver's copies, joined while both sides stay contiguous (one call
/// per run, as a copy engine takes a scatter list), done when dropped or
/// when a run ends.
struct Copies<'a> {
    phys: Option<&'a hmm_mm::phys::PhysMem>,
    /// (destination, source or `None` to clear, pages).
    run: Option<(Pfn, Option<Pfn>, u64)>,
}

impl<'a> Copies<'a> {
    fn new() -> Self {
        Self { phys: None, run: None }
    }

    fn push(&mut self, phys: &'a hmm_mm::phys::PhysMem, dst: Pfn, src: Option<Pfn>, nr: u64) {
        self.phys = Some(phys);
        if let Some((d, s, n)) = &mut self.run {
            let same_region = |a: Pfn, b: Pfn| a.0 >> 28 == b.0 >> 28;
            let dst_follows = d.0 + *n == dst.0 && same_region(*d, dst);
            let src_follows = match (*s, src) {
                (Some(s), Some(src)) => s.0 + *n == src.0 && same_region(s, src),
                (None, None) => true,
                _ => false,
            };
            if dst_follows && src_follows {
                *n += nr;
                return;
            }
        }
        self.flush();
        self.run = Some((dst, src, nr));
    }

    fn flush(&mut self) {
        let (Some(phys), Some((dst, src, nr))) = (self.phys, self.run.take()) else { return };
        match src {
            Some(src) => phys.copy_frames(dst, src, nr),
            None => phys.zero_frames(dst, nr),
        }
    }
}

impl Drop for Copies<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Maps the pages that moved in this file's table, writable iff the
/// destination is (`dmirror_migrate_finalize_and_map`).
fn finalize_and_map(mirror: &Mirror, migrate: &MigrateVma) -> Result<(), DmirrorError> {
    let mut table = mirror.lock_table();
    for (i, (&src, &dst)) in migrate.src.iter().zip(&migrate.dst).enumerate() {
        let Some(dpage) = migrate_pfn_to_pfn(dst) else { continue };
        if src & MIGRATE_PFN_MIGRATE == 0 {
            continue;
        }
        let access = if dst & MIGRATE_PFN_WRITE != 0 { Access::Write } else { Access::Read };
        let va = migrate.start + i as u64 * PAGE_SIZE;
        for j in 0..entry_pages(dst) {
            table.set(va + j * PAGE_SIZE, DeviceEntry { pfn: dpage.add(j), access })?;
        }
    }
    Ok(())
}

/// The driver's step back to system RAM
/// (`dmirror_devmem_fault_alloc_and_copy`): a system page (or 2 MiB folio,
/// unless `file` has FAIL_ALLOC set, which it consumes) per migrating device
/// page, every device mapping of the page erased, the data copied. `Err` if
/// a 4K page could not be had.
fn fault_alloc_and_copy(device: &DmirrorDevice, migrate: &mut MigrateVma, file: Option<&Mirror>) -> Result<(), ()> {
    let phys = device.memory().phys().clone();
    let mut result = Ok(());
    // (address, device page, system page, pages): the mappings are erased
    // for the whole chunk at once, then the data copied, so no device
    // write can land in a page after its copy.
    let mut moves: Vec<(u64, Pfn, Pfn, u64)> = Vec::new();
    let mut i = 0;
    while i < migrate.src.len() && result.is_ok() {
        let src = migrate.src[i];
        let nr = entry_pages(src) as usize;
        let Some(spage) = migrate_pfn_to_pfn(src).filter(|_| src & MIGRATE_PFN_MIGRATE != 0) else {
            i += nr;
            continue;
        };
        let write = src & MIGRATE_PFN_WRITE;
        let va = migrate.start + i as u64 * PAGE_SIZE;
        let fail_large = nr > 1 && file.is_some_and(Mirror::take_fail_alloc);
        let large = if nr > 1 && !fail_large { phys.alloc_folio(9, false).ok() } else { None };
        if let Some(dpage) = large {
            phys.meta(dpage).try_lock();
            moves.push((va, spage, dpage, nr as u64));
            migrate.dst[i] = migrate_pfn(dpage) | write | MIGRATE_PFN_COMPOUND;
        } else {
            for j in 0..nr {
                let Ok(dpage) = phys.alloc_folio(0, false) else {
                    result = Err(());
                    break;
                };
                phys.meta(dpage).try_lock();
                moves.push((va + j as u64 * PAGE_SIZE, spage.add(j as u64), dpage, 1));
                migrate.dst[i + j] = migrate_pfn(dpage) | write;
            }
        }
        i += nr;
    }
    device.erase_mappings(moves.iter().map(|&(va, spage, _, nr)| (va, spage, nr)));
    for (_, spage, dpage, nr) in moves {
        phys.copy_frames(dpage, spage, nr);
    }
    result
}
