//! End-to-end tests of device memory seen through the driver-facing API
//! (spec §4, §11.7–11.9): device-private pages and `range_fault`, the owner
//! carried by MIGRATE and EXCLUSIVE invalidations, migration racing with CPU
//! accesses, with another device and with munmap, device-exclusive access,
//! and fork.
//!
//! The test driver is the shape of `hmm-mm`'s `device/tests.rs` grown into
//! a mirroring device: a device-private region with a free list, pagemap
//! operations (`folio_free` returns a page to the free list,
//! `migrate_to_ram` migrates the faulting page back with `MigrateVma`), and
//! per address space a device page table (VA page → hmm pfn word) behind an
//! interval notifier. Its callback filters only its own MIGRATE and
//! EXCLUSIVE events (spec §3.6): its own EXCLUSIVE is ignored outright (no
//! `set_seq`, as nouveau does, or its own critical section would retry
//! forever); on its own MIGRATE it clears nothing but still records the
//! sequence, so that a device fault of its own that read a page the
//! migration is taking away retries (see `Mirror::invalidate`); every other
//! event clears the range. The driver updates its table itself in the
//! migration protocol: after `pages` (to the device) and after `setup` (back
//! to RAM, as dmirror erases in `dmirror_devmem_fault_alloc_and_copy`).
//!
//! A coherence checker (spec §11.6) runs in every callback that clears, and
//! at the end of each test: every device entry must name the frame the CPU
//! entry at that VA names (a present page, a device-private, device-exclusive
//! or migration entry), the frame must still be allocated, and a writable
//! device entry needs a writable CPU entry.
//!
//! Four tests were written as `#[ignore = "BUG"]` repros and pass since
//! e783c68: `a_cpu_fault_on_a_locked_device_page_proceeds_once_it_is_unlocked`,
//! `a_device_page_that_cannot_migrate_for_now_is_retried_not_sigbus`,
//! `a_cpu_access_waits_while_the_driver_holds_the_exclusive_page` and
//! `after_fork_a_migration_in_one_process_invalidates_the_others_mirror`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use hmm::pfn::{
    hmm_pfn_to_map_order, hmm_pfn_to_pfn, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID, HMM_PFN_WRITE,
};
use hmm::{range_fault, range_fault_loop, HmmError, IntervalNotifier, IntervalNotifierOps, Range};
use hmm_mm::device::{
    make_device_exclusive, migrate_pfn, migrate_pfn_to_pfn, DeviceFault, MigrateSelect, MigrateVma,
    MIGRATE_PFN_MIGRATE, MIGRATE_PFN_WRITE,
};
use hmm_mm::phys::{MemoryType, Pagemap, PagemapOps, PhysMem};
use hmm_mm::testing::{kernel, leaf, SetOnDrop, Watchdog};
use hmm_mm::{FaultError, Kernel, Mm, MmError, MmapLocked, MmapReadGuard, ThpMode};
use hmm_pagetable::SwapKind;
use hmm_types::{Errno, Event, MapFlags, MmId, NotifierRange, Owner, Pfn, Prot, PAGE_SHIFT, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE;
const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const OWNER_A: Owner = Owner(0xa);
const OWNER_B: Owner = Owner(0xb);
const REQ_R: u64 = HMM_PFN_REQ_FAULT;
const REQ_W: u64 = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
const VALID: u64 = HMM_PFN_VALID;
const WRITE: u64 = HMM_PFN_WRITE;
/// A race test (threads and checks) must end within this, or the binary
/// aborts: a deadlock or livelock.
const WATCHDOG: Duration = Duration::from_secs(60);
/// The most a race may take to reach its required progress.
const RACE_BUDGET: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Data patterns and small helpers
// ---------------------------------------------------------------------------

/// The u64 word `j` of the page at `va` in the initial pattern.
fn pattern_word(va: u64, j: u64) -> u64 {
    (va ^ 0x5eed_0000_0000_0001).wrapping_mul(j.wrapping_mul(2).wrapping_add(1)).rotate_left(j as u32 % 64)
}

/// The whole page at `va` in the initial pattern.
fn pattern_page(va: u64) -> Vec<u8> {
    (0..PAGE / 8).flat_map(|j| pattern_word(va, j).to_le_bytes()).collect()
}

/// Reads the u64 word `j` of frame `pfn` directly (what the device sees).
fn frame_word(phys: &PhysMem, pfn: Pfn, j: u64) -> u64 {
    let mut buf = [0u8; 8];
    phys.read(pfn, j * 8, &mut buf);
    u64::from_le_bytes(buf)
}

/// Reads frame `pfn` whole.
fn frame_bytes(phys: &PhysMem, pfn: Pfn) -> Vec<u8> {
    let mut buf = vec![0u8; PAGE as usize];
    phys.read(pfn, 0, &mut buf);
    buf
}

// ---------------------------------------------------------------------------
// The mirror: one device page table for one address space
// ---------------------------------------------------------------------------

/// One callback as the mirror saw it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Seen {
    event: Event,
    start: u64,
    end: u64,
    owner: Option<Owner>,
    /// Filtered as the mirror's own MIGRATE or EXCLUSIVE event.
    skipped: bool,
}

/// A device page table of one address space and its invalidation callback.
struct Mirror {
    /// The device's pgmap owner: its own events are filtered, and its
    /// device-private pages are reported by `range_fault`.
    owner: Option<Owner>,
    mm: Weak<Mm>,
    mm_id: MmId,
    phys: Arc<PhysMem>,
    /// The driver update lock and the table it protects: VA → hmm pfn word.
    table: Mutex<BTreeMap<u64, u64>>,
    log: Mutex<Vec<Seen>>,
    violations: Mutex<Vec<String>>,
}

impl Mirror {
    fn violation(&self, what: String) {
        let mut violations = self.violations.lock();
        if violations.len() < 32 {
            violations.push(what);
        }
    }

    /// What is wrong with the device entry `word` at `va` compared with the
    /// CPU page table of `mm` now; `None` if coherent. The caller keeps the
    /// tables alive (it holds the mmap lock, or runs in a callback whose
    /// caller does).
    fn mismatch(&self, mm: &Mm, va: u64, word: u64) -> Option<String> {
        let pfn = hmm_pfn_to_pfn(word);
        if !self.phys.is_valid_pfn(pfn) {
            return Some(format!("{va:#x}: device maps {pfn:?}, which is no frame"));
        }
        if self.phys.folio_counts(pfn).0 == 0 {
            return Some(format!("{va:#x}: device maps {pfn:?}, which is free (reference count 0)"));
        }
        let slot = mm.pgtable().find(va);
        let entry = slot.load();
        let (cpu, cpu_write) = if entry.is_present() && entry.is_leaf(slot.level()) {
            (entry.pfn().add((va - slot.va()) >> PAGE_SHIFT), entry.is_write())
        } else {
            match entry.swap_kind() {
                Some(kind) if kind.is_device_private() => (entry.pfn(), kind.is_write()),
                Some(SwapKind::DeviceExclusive) => (entry.pfn(), true),
                // A page under migration is locked and out of the CPU's
                // reach; its migrating driver maps the source until
                // `pages` and may map its new device page from then on.
                Some(kind) if kind.is_migration() => {
                    let own_device_page = self.phys.memory_type(pfn) == MemoryType::DevicePrivate
                        && self.phys.pagemap(pfn).and_then(|p| p.owner()) == self.owner;
                    if entry.pfn() == pfn || own_device_page {
                        return None;
                    }
                    return Some(format!("{va:#x}: device maps {pfn:?}, the CPU migrates {:?}", entry.pfn()));
                }
                _ => return Some(format!("{va:#x}: device maps {pfn:?}, the CPU has {entry:?}")),
            }
        };
        if cpu != pfn {
            return Some(format!("{va:#x}: device maps {pfn:?}, the CPU maps {cpu:?} ({entry:?})"));
        }
        if word & WRITE != 0 && !cpu_write {
            return Some(format!("{va:#x}: device may write {pfn:?}, the CPU entry is read-only: {entry:?}"));
        }
        None
    }

    fn check_all(&self, mm: &Mm, table: &BTreeMap<u64, u64>, when: &str) {
        for (&va, &word) in table {
            if let Some(problem) = self.mismatch(mm, va, word) {
                self.violation(format!("{when}: {problem}"));
            }
        }
    }

    fn take_log(&self) -> Vec<Seen> {
        core::mem::take(&mut *self.log.lock())
    }

    fn entry(&self, va: u64) -> Option<u64> {
        self.table.lock().get(&va).copied()
    }
}

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, subscription: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        let own = range.owner.is_some() && range.owner == self.owner;
        let own_migrate = own && range.event == Event::Migrate;
        let own_exclusive = own && range.event == Event::Exclusive;
        self.log.lock().push(Seen {
            event: range.event,
            start: range.start,
            end: range.end,
            owner: range.owner,
            skipped: own_migrate || own_exclusive,
        });
        if own_exclusive {
            // The exclusive path maps the page itself, inside its own
            // critical section: a set_seq here would make it retry forever.
            return true;
        }
        let mut table = if range.blockable {
            self.table.lock()
        } else {
            match self.table.try_lock() {
                Some(table) => table,
                None => return false,
            }
        };
        if own_migrate {
            // The migration path maintains the table, so nothing is
            // cleared. But a device fault of this driver may have read,
            // before this migration took it, a page of its own that the
            // migration is about to free: its commit must retry, so the
            // sequence is recorded anyway (dmirror skips this and has that
            // window; no selftest reaches it).
            subscription.set_seq(cur_seq);
            return true;
        }
        if let Some(mm) = self.mm.upgrade() {
            let when = format!("invalidate {:?} [{:#x}, {:#x})", range.event, range.start, range.end);
            self.check_all(&mm, &table, &when);
        }
        subscription.set_seq(cur_seq);
        let start = range.start.max(subscription.start());
        let end = range.end.min(subscription.last().saturating_add(1));
        if start < end {
            let mut tail = table.split_off(&(start & !(PAGE - 1)));
            let mut after = tail.split_off(&end);
            table.append(&mut after);
        }
        true
    }
}

/// A mirror bound to its subscription (an open file of the device).
struct Binding {
    mirror: Arc<Mirror>,
    notifier: Arc<IntervalNotifier>,
}

impl Binding {
    fn range<'a>(&'a self, start: u64, pfns: &'a mut [u64], default_flags: u64) -> Range<'a> {
        let end = start + pfns.len() as u64 * PAGE;
        Range {
            notifier: &self.notifier,
            notifier_seq: 0,
            start,
            end,
            hmm_pfns: pfns,
            default_flags,
            pfn_flags_mask: 0,
            dev_private_owner: self.mirror.owner,
        }
    }

    /// A device fault of `npages` from `start` with `default_flags`
    /// (`range_fault_loop`; the commit programs the VALID entries under the
    /// update lock after `read_retry`). Returns the pfn words.
    fn fault(&self, mm: &Arc<Mm>, start: u64, npages: u64, default_flags: u64) -> Result<Vec<u64>, HmmError> {
        let mut pfns = vec![0u64; npages as usize];
        let mut range = self.range(start, &mut pfns, default_flags);
        let mirror = &self.mirror;
        range_fault_loop(mm, &mut range, Duration::from_secs(5), |range| {
            let mut table = mirror.table.lock();
            if range.notifier.read_retry(range.notifier_seq) {
                return None;
            }
            for (i, &word) in range.hmm_pfns.iter().enumerate() {
                if word & VALID != 0 {
                    table.insert(range.start + i as u64 * PAGE, word & (VALID | WRITE | !hmm::pfn::HMM_PFN_FLAGS));
                }
            }
            Some(())
        })?;
        Ok(pfns)
    }

    /// A pure snapshot: one `range_fault` without any request (repeated only
    /// if an invalidation collided).
    fn snapshot(&self, mm: &Arc<Mm>, start: u64, npages: u64) -> Vec<u64> {
        let mut pfns = vec![0u64; npages as usize];
        loop {
            let mut range = self.range(start, &mut pfns, 0);
            range.notifier_seq = self.notifier.read_begin();
            let guard = mm.mmap_read();
            match range_fault(&guard, &mut range) {
                Ok(()) => return pfns,
                Err(HmmError::Busy) => continue,
                Err(error) => panic!("snapshot: {error}"),
            }
        }
    }

    /// Checks the whole table against the CPU now, and reports what the
    /// callbacks found.
    fn assert_coherent(&self, mm: &Mm, when: &str) {
        {
            let _guard = mm.mmap_read();
            let table = self.mirror.table.lock();
            self.mirror.check_all(mm, &table, when);
        }
        let violations = self.mirror.violations.lock().clone();
        assert!(violations.is_empty(), "mirror of {:?} not coherent:\n{}", self.mirror.owner, violations.join("\n"));
    }
}

// ---------------------------------------------------------------------------
// The device: private memory, a free list, a driver
// ---------------------------------------------------------------------------

/// A device with private memory and a mirroring driver.
struct Device {
    owner: Owner,
    phys: Arc<PhysMem>,
    base: OnceLock<Pfn>,
    nr: u64,
    free: Mutex<Vec<Pfn>>,
    /// `migrate_to_ram` calls.
    to_ram: AtomicU64,
    /// Its mirrors, one per address space it was attached to.
    mirrors: Mutex<Vec<Arc<Mirror>>>,
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
        device.to_ram.fetch_add(1, SeqCst);
        let mut migrate =
            MigrateVma::new(fault.address, fault.address + PAGE, device.owner, MigrateSelect::DEVICE_PRIVATE);
        migrate.fault_page = Some(fault.page);
        migrate.setup(fault.locked).map_err(|_| FaultError::Sigbus("setup failed"))?;
        device.forget(fault.locked.mm().id(), &migrate);
        let wanted = migrate.src.iter().filter(|&&w| w & MIGRATE_PFN_MIGRATE != 0).count();
        let copied = device.copy(&mut migrate, |phys| phys.alloc_folio(0, false).ok());
        migrate.pages(fault.locked);
        migrate.finalize(fault.locked);
        if copied < wanted {
            return Err(FaultError::Oom);
        }
        Ok(())
    }
}

impl Device {
    fn new(kernel: &Kernel, owner: Owner, nr: u64) -> Arc<Self> {
        let device = Arc::new(Device {
            owner,
            phys: kernel.phys().clone(),
            base: OnceLock::new(),
            nr,
            free: Mutex::new(Vec::new()),
            to_ram: AtomicU64::new(0),
            mirrors: Mutex::new(Vec::new()),
        });
        let pagemap =
            Pagemap::new(MemoryType::DevicePrivate, Some(owner)).with_ops(Arc::new(Ops(Arc::downgrade(&device))));
        let base = kernel.phys().add_device_region(Arc::new(pagemap), nr, None).expect("device region");
        device.base.set(base).expect("set once");
        *device.free.lock() = (0..nr).rev().map(|i| base.add(i)).collect();
        device
    }

    /// Mirrors `[start, start + len)` of `mm` for this device.
    fn attach(&self, mm: &Arc<Mm>, start: u64, len: u64) -> Binding {
        attach(mm, Some(self.owner), start, len, Some(self))
    }

    /// Stops mirroring (closes the file): removes the subscription and
    /// forgets the table.
    fn detach(&self, binding: Binding) {
        binding.notifier.remove();
        self.mirrors.lock().retain(|m| !Arc::ptr_eq(m, &binding.mirror));
    }

    fn mirror_of(&self, mm: MmId) -> Option<Arc<Mirror>> {
        self.mirrors.lock().iter().find(|m| m.mm_id == mm).cloned()
    }

    fn owns(&self, pfn: Pfn) -> bool {
        let base = *self.base.get().expect("set");
        (base.0..base.0 + self.nr).contains(&pfn.0)
    }

    fn alloc(&self) -> Option<Pfn> {
        let pfn = self.free.lock().pop()?;
        self.phys.zone_device_page_init(pfn);
        Some(pfn)
    }

    fn free_pages(&self) -> u64 {
        self.free.lock().len() as u64
    }

    /// The driver's copy step: a locked destination per migrating entry,
    /// the data copied (or zeroed for a hole). Returns the pages set up.
    fn copy(&self, migrate: &mut MigrateVma, alloc: impl Fn(&PhysMem) -> Option<Pfn>) -> usize {
        let mut done = 0;
        for i in 0..migrate.src.len() {
            if migrate.src[i] & MIGRATE_PFN_MIGRATE == 0 {
                continue;
            }
            let Some(dst) = alloc(&self.phys) else { continue };
            // Device pages come locked from zone_device_page_init; RAM
            // pages are locked here.
            self.phys.meta(dst).try_lock();
            match migrate_pfn_to_pfn(migrate.src[i]) {
                Some(src) => self.phys.copy_frames(dst, src, 1),
                None => self.phys.zero_frames(dst, 1),
            }
            migrate.dst[i] = migrate_pfn(dst);
            done += 1;
        }
        done
    }

    /// Erases this device's table entries of the pages `migrate` moves
    /// away from it (its own MIGRATE event was filtered).
    fn forget(&self, mm: MmId, migrate: &MigrateVma) {
        let Some(mirror) = self.mirror_of(mm) else { return };
        let mut table = mirror.table.lock();
        for (i, &word) in migrate.src.iter().enumerate() {
            if word & MIGRATE_PFN_MIGRATE != 0 {
                table.remove(&(migrate.start + i as u64 * PAGE));
            }
        }
    }

    /// Maps the pages that really moved to this device in its table
    /// (after `pages`, before `finalize`, as dmirror does).
    fn map_migrated(&self, mm: MmId, migrate: &MigrateVma) {
        let Some(mirror) = self.mirror_of(mm) else { return };
        let mut table = mirror.table.lock();
        for (i, (&src, &dst)) in migrate.src.iter().zip(&migrate.dst).enumerate() {
            let va = migrate.start + i as u64 * PAGE;
            match migrate_pfn_to_pfn(dst) {
                Some(page) if src & MIGRATE_PFN_MIGRATE != 0 => {
                    let write = if src & MIGRATE_PFN_WRITE != 0 { WRITE } else { 0 };
                    table.insert(va, VALID | write | page.0);
                }
                _ => {}
            }
        }
    }

    /// Migrates `[start, end)` to this device (setup → copy → pages →
    /// table update → finalize), under the caller's mmap read lock.
    fn migrate_to_device(&self, guard: &MmapReadGuard<'_>, start: u64, end: u64) -> Result<MigrateVma, MmError> {
        let locked = guard.locked();
        let mut migrate = MigrateVma::new(start, end, self.owner, MigrateSelect::SYSTEM);
        migrate.setup(locked)?;
        self.copy(&mut migrate, |_| self.alloc());
        self.finish_to_device(locked, &mut migrate);
        Ok(migrate)
    }

    fn finish_to_device(&self, locked: MmapLocked<'_>, migrate: &mut MigrateVma) {
        migrate.pages(locked);
        self.map_migrated(locked.mm().id(), migrate);
        migrate.finalize(locked);
    }

    /// Evicts this device's pages of `[start, end)` to RAM from the driver
    /// side (`SELECT_DEVICE_PRIVATE`), under the caller's mmap read lock.
    fn evict(&self, guard: &MmapReadGuard<'_>, start: u64, end: u64) -> Result<MigrateVma, MmError> {
        let locked = guard.locked();
        let mut migrate = MigrateVma::new(start, end, self.owner, MigrateSelect::DEVICE_PRIVATE);
        migrate.setup(locked)?;
        self.forget(locked.mm().id(), &migrate);
        self.copy(&mut migrate, |phys| phys.alloc_folio(0, false).ok());
        migrate.pages(locked);
        migrate.finalize(locked);
        Ok(migrate)
    }

    /// Takes the page at `va` for device atomics the way nouveau does
    /// (read_begin, make_device_exclusive, then under the update lock
    /// read_retry and map). Returns the number of tries.
    fn make_exclusive(&self, binding: &Binding, mm: &Arc<Mm>, va: u64) -> u32 {
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries < 100, "make_device_exclusive livelocked");
            let seq = binding.notifier.read_begin();
            let guard = mm.mmap_read();
            let page = make_device_exclusive(&guard, va, self.owner).expect("make_device_exclusive");
            let mut table = binding.mirror.table.lock();
            if binding.notifier.read_retry(seq) {
                continue;
            }
            table.insert(va, VALID | WRITE | page.pfn().0);
            return tries;
        }
    }
}

/// Mirrors `[start, start + len)` of `mm` as device `owner` (registering the
/// mirror with `device` so its migration path can find it).
fn attach(mm: &Arc<Mm>, owner: Option<Owner>, start: u64, len: u64, device: Option<&Device>) -> Binding {
    let mirror = Arc::new(Mirror {
        owner,
        mm: Arc::downgrade(mm),
        mm_id: mm.id(),
        phys: mm.phys().clone(),
        table: Mutex::new(BTreeMap::new()),
        log: Mutex::new(Vec::new()),
        violations: Mutex::new(Vec::new()),
    });
    let notifier = mm.interval_notifier_insert(start, len, mirror.clone()).expect("insert the notifier");
    if let Some(device) = device {
        device.mirrors.lock().push(mirror.clone());
    }
    Binding { mirror, notifier }
}

fn to_device(device: &Device, mm: &Mm, start: u64, end: u64) -> MigrateVma {
    let guard = mm.mmap_read();
    device.migrate_to_device(&guard, start, end).expect("migrate to the device")
}

/// An anonymous RW range of `npages`, every page filled with its pattern.
fn patterned(mm: &Mm, npages: u64) -> u64 {
    let va = mm.mmap(0, npages * PAGE, Prot::RW, ANON).expect("mmap");
    for i in 0..npages {
        mm.write_bytes(va + i * PAGE, &pattern_page(va + i * PAGE)).expect("fill");
    }
    va
}

fn assert_patterned(mm: &Mm, va: u64, npages: u64) {
    let mut buf = vec![0u8; PAGE as usize];
    for i in 0..npages {
        mm.read_bytes(va + i * PAGE, &mut buf).expect("read");
        assert!(buf == pattern_page(va + i * PAGE), "page {i} lost its data");
    }
}

/// The pfns of the destinations of the entries that moved.
fn moved(migrate: &MigrateVma) -> Vec<Pfn> {
    migrate
        .src
        .iter()
        .zip(&migrate.dst)
        .filter(|(s, _)| *s & MIGRATE_PFN_MIGRATE != 0)
        .map(|(_, d)| migrate_pfn_to_pfn(*d).expect("a moved entry has a destination"))
        .collect()
}

// ---------------------------------------------------------------------------
// range_fault and device-private pages (spec §2.5 PTE table, §11.8)
// ---------------------------------------------------------------------------

#[test]
fn range_fault_reports_device_private_pages_to_their_owner_only() {
    const N: u64 = 4;
    let k = kernel(64, ThpMode::Never);
    let a = Device::new(&k, OWNER_A, 16);
    let b = Device::new(&k, OWNER_B, 16);
    let mm = k.create_mm().unwrap();
    let va = patterned(&mm, N);
    let ma = a.attach(&mm, va, N * PAGE);
    let mb = b.attach(&mm, va, N * PAGE);
    let plain = attach(&mm, None, va, N * PAGE, None);

    let migrate = to_device(&a, &mm, va, va + N * PAGE);
    assert_eq!(migrate.cpages, N);
    let device_pfns = moved(&migrate);
    assert_eq!(device_pfns.len() as u64, N, "every page moved: {:x?}", migrate.src);
    for (i, &pfn) in device_pfns.iter().enumerate() {
        let (_, entry) = leaf(&mm, va + i as u64 * PAGE);
        assert_eq!((entry.swap_kind(), entry.pfn()), (Some(SwapKind::DevicePrivateWrite), pfn));
        assert_eq!(k.phys().memory_type(pfn), MemoryType::DevicePrivate);
        assert!(a.owns(pfn));
    }
    assert_eq!(a.free_pages(), 16 - N);

    // The owner gets the device pfn, VALID|WRITE, order 0, whatever it asks:
    // an owned device-private page is never faulted.
    for flags in [0, REQ_R, REQ_W] {
        let pfns = ma.fault(&mm, va, N, flags).unwrap();
        for (i, &word) in pfns.iter().enumerate() {
            assert_eq!(word, VALID | WRITE | device_pfns[i].0, "owner, flags {flags:#x}, page {i}");
            assert_eq!(hmm_pfn_to_map_order(word), 0);
        }
    }
    assert_eq!(a.to_ram.load(SeqCst), 0, "the owner's walk migrated nothing");
    assert_eq!(a.free_pages(), 16 - N);

    // Anyone else's snapshot sees "not present now, faultable": 0.
    assert_eq!(mb.snapshot(&mm, va, N), vec![0; N as usize]);
    assert_eq!(plain.snapshot(&mm, va, N), vec![0; N as usize]);
    assert_eq!(a.to_ram.load(SeqCst), 0, "snapshots migrate nothing");

    // Another owner's REQ_FAULT migrates the pages back to RAM through the
    // owner's migrate_to_ram first, then reports the RAM pages.
    let pfns = mb.fault(&mm, va, N, REQ_R).unwrap();
    assert_eq!(a.to_ram.load(SeqCst), N, "one migrate_to_ram per page (the segment is over-faulted)");
    for (i, &word) in pfns.iter().enumerate() {
        let (_, entry) = leaf(&mm, va + i as u64 * PAGE);
        assert!(entry.is_present() && entry.is_write(), "page {i} is back in RAM: {entry:?}");
        assert_eq!(k.phys().memory_type(entry.pfn()), MemoryType::System);
        assert_eq!(word, VALID | WRITE | entry.pfn().0, "page {i}: the RAM pfn, writable (the entry was)");
    }
    assert_eq!(a.free_pages(), 16, "the device pages went back to their driver");
    assert!(ma.mirror.table.lock().is_empty(), "the owner's migrate_to_ram erased its own entries");
    assert_patterned(&mm, va, N);
    ma.assert_coherent(&mm, "end");
    mb.assert_coherent(&mm, "end");
    plain.assert_coherent(&mm, "end");
    mm.exit();
    assert_eq!((a.free_pages(), b.free_pages()), (16, 16));
}

#[test]
fn the_migrate_invalidation_carries_the_owner() {
    const N: u64 = 6;
    const FILLED: u64 = 4;
    let k = kernel(64, ThpMode::Never);
    let a = Device::new(&k, OWNER_A, 16);
    let b = Device::new(&k, OWNER_B, 16);
    let mm = k.create_mm().unwrap();
    // Four populated pages, then two holes.
    let va = mm.mmap(0, N * PAGE, Prot::RW, ANON).unwrap();
    for i in 0..FILLED {
        mm.write_bytes(va + i * PAGE, &pattern_page(va + i * PAGE)).unwrap();
    }
    let ma = a.attach(&mm, va, N * PAGE);
    let mb = b.attach(&mm, va, N * PAGE);
    let ram: Vec<u64> = (0..FILLED).map(|i| leaf(&mm, va + i * PAGE).1.pfn().0).collect();
    for binding in [&ma, &mb] {
        let pfns = binding.fault(&mm, va, FILLED, REQ_W).unwrap();
        assert_eq!(pfns, ram.iter().map(|&p| VALID | WRITE | p).collect::<Vec<_>>());
        assert_eq!(binding.mirror.table.lock().len() as u64, FILLED);
    }
    ma.mirror.take_log();
    mb.mirror.take_log();
    let seq_a = ma.notifier.read_begin();
    let seq_b = mb.notifier.read_begin();

    let migrate = to_device(&a, &mm, va, va + N * PAGE);
    assert_eq!(moved(&migrate).len() as u64, N, "pages and holes all moved: {:x?}", migrate.src);

    // A's own events reach it with its owner, and it filters them all.
    let seen_a = ma.mirror.take_log();
    assert!(!seen_a.is_empty());
    for seen in &seen_a {
        assert_eq!((seen.event, seen.owner, seen.skipped), (Event::Migrate, Some(OWNER_A), true), "{seen_a:?}");
    }
    assert!(seen_a.iter().any(|s| (s.start, s.end) == (va, va + N * PAGE)), "setup announces the range: {seen_a:?}");
    assert!(
        seen_a.iter().any(|s| (s.start, s.end) == (va + FILLED * PAGE, va + N * PAGE)),
        "pages() announces the holes it fills: {seen_a:?}"
    );
    assert!(ma.notifier.read_retry(seq_a), "the owner's own faults still retry (see Mirror::invalidate)");
    // Its table now maps the device pages, as its migration path set them.
    let table_a = ma.mirror.table.lock().clone();
    let expected: BTreeMap<u64, u64> = moved(&migrate)
        .iter()
        .enumerate()
        .map(|(i, pfn)| {
            let write = if (i as u64) < FILLED { WRITE } else { 0 };
            (va + i as u64 * PAGE, VALID | write | pfn.0)
        })
        .collect();
    assert_eq!(table_a, expected);

    // B gets the same events, with A's owner, and is invalidated.
    let seen_b = mb.mirror.take_log();
    assert_eq!(
        seen_b.iter().map(|s| (s.event, s.start, s.end, s.owner, s.skipped)).collect::<Vec<_>>(),
        seen_a.iter().map(|s| (s.event, s.start, s.end, s.owner, false)).collect::<Vec<_>>()
    );
    assert!(mb.mirror.table.lock().is_empty(), "B's device table was cleared");
    assert!(mb.notifier.read_retry(seq_b), "B's critical section must retry");
    ma.assert_coherent(&mm, "after the migration");
    mb.assert_coherent(&mm, "after the migration");

    // B faults the range again: the pages come back through A's
    // migrate_to_ram, whose MIGRATE events A filters again (and B does not).
    let pfns = mb.fault(&mm, va, N, REQ_R).unwrap();
    assert!(pfns.iter().all(|&w| w & VALID != 0 && k.phys().memory_type(hmm_pfn_to_pfn(w)) == MemoryType::System));
    assert!(ma.mirror.take_log().iter().all(|s| s.skipped && s.owner == Some(OWNER_A)));
    assert!(ma.mirror.table.lock().is_empty(), "A's migrate_to_ram erased its entries");
    assert_patterned(&mm, va, FILLED);
    assert_eq!(mm.read_u64(va + FILLED * PAGE).unwrap(), 0, "a migrated hole reads as zeroes");
    ma.assert_coherent(&mm, "end");
    mb.assert_coherent(&mm, "end");
    mm.exit();
    assert_eq!(a.free_pages(), 16);
}

// ---------------------------------------------------------------------------
// Races (spec §11.7)
// ---------------------------------------------------------------------------

/// CPU threads write and read a range while a migrator moves it to the
/// device over and over (under the mmap read lock: setup → copy → pages →
/// table update → finalize), checks from the device side what it now maps,
/// and now and then evicts it from the driver side; CPU accesses bring
/// pages back. Every write is read back at once (no lost write), every
/// page keeps its pattern, slots only grow, and at the end every last
/// write is there and every device page is back with the driver.
///
/// With `shared`, every CPU thread touches every page (so two CPU faults
/// may meet on one device page); otherwise each page has one CPU thread.
fn cpu_race(shared: bool) {
    const N: u64 = 8;
    const CPUS: u64 = 2;
    const ITERS: u64 = 20_000;
    const MIN_MOVES: u64 = 1000;
    let _watchdog = Watchdog::new("cpu_race", WATCHDOG);
    let k = kernel(64, ThpMode::Never);
    let boot_free = k.phys().free_frames();
    let a = Device::new(&k, OWNER_A, 2 * N);
    let mm = k.create_mm().unwrap();
    let va = patterned(&mm, N);
    let end = va + N * PAGE;
    // Word t of each page is CPU thread t's slot; the rest keeps its pattern.
    for p in 0..N {
        for t in 0..CPUS {
            mm.write_u64(va + p * PAGE + t * 8, 0).unwrap();
        }
    }
    let ma = a.attach(&mm, va, N * PAGE);
    let to_device_pages = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + RACE_BUDGET;
    let progress = || to_device_pages.load(SeqCst) >= MIN_MOVES && a.to_ram.load(SeqCst) >= MIN_MOVES;
    // The pages CPU thread t writes, and those it reads whole.
    let writes = |t: u64| (0..N).filter(move |p| shared || p % CPUS == t);

    let last = thread::scope(|s| {
        let cpus: Vec<_> = (0..CPUS)
            .map(|t| {
                let (mm, progress) = (&mm, &progress);
                s.spawn(move || {
                    let pages: Vec<u64> = writes(t).collect();
                    let mut last = vec![0u64; N as usize];
                    let mut seen = vec![0u64; (N * CPUS) as usize];
                    let mut buf = vec![0u8; PAGE as usize];
                    let mut k = 0u64;
                    while k < ITERS || !progress() {
                        assert!(Instant::now() < deadline, "no progress: migrations too rare");
                        k += 1;
                        let p = pages[(k as usize * 7) % pages.len()];
                        let addr = va + p * PAGE + t * 8;
                        mm.write_u64(addr, k).unwrap();
                        assert_eq!(mm.read_u64(addr).unwrap(), k, "CPU {t}: write {k} to page {p} lost");
                        last[p as usize] = k;
                        // Now and then the whole page: the pattern stays,
                        // every slot only grows.
                        if k % 16 == 0 {
                            mm.read_bytes(va + p * PAGE, &mut buf).unwrap();
                            let word = |j: u64| u64::from_le_bytes(buf[j as usize * 8..][..8].try_into().unwrap());
                            for j in CPUS..PAGE / 8 {
                                assert_eq!(word(j), pattern_word(va + p * PAGE, j), "page {p} word {j} corrupted");
                            }
                            for u in 0..CPUS {
                                let i = (p * CPUS + u) as usize;
                                assert!(word(u) >= seen[i], "page {p} slot {u} went back: {} < {}", word(u), seen[i]);
                                seen[i] = word(u);
                            }
                        }
                    }
                    last
                })
            })
            .collect();
        // The migrator.
        s.spawn(|| {
            let mut round = 0u64;
            while !stop.load(SeqCst) {
                round += 1;
                let guard = mm.mmap_read();
                let migrate = a.migrate_to_device(&guard, va, end).unwrap();
                to_device_pages.fetch_add(moved(&migrate).len() as u64, SeqCst);
                {
                    let table = ma.mirror.table.lock();
                    for (&addr, &word) in table.iter() {
                        let pfn = hmm_pfn_to_pfn(word);
                        assert!(a.owns(pfn), "the table maps only device pages here");
                        for j in CPUS..PAGE / 8 {
                            assert_eq!(frame_word(k.phys(), pfn, j), pattern_word(addr, j), "device copy corrupted");
                        }
                    }
                }
                drop(guard);
                if shared && round % 4 == 0 {
                    for p in 0..N {
                        mm.read_u64(va + p * PAGE + CPUS * 8).unwrap();
                    }
                }
                if round % 8 == 0 {
                    a.evict(&mm.mmap_read(), va, end).unwrap();
                }
            }
        });
        // The migrator runs until every CPU thread is done.
        let _stop = SetOnDrop(&stop);
        cpus.into_iter().map(|c| c.join().unwrap()).collect::<Vec<_>>()
    });

    for p in 0..N {
        for t in 0..CPUS {
            let value = mm.read_u64(va + p * PAGE + t * 8).unwrap();
            assert_eq!(value, last[t as usize][p as usize], "page {p} slot {t}: the last write was lost");
        }
    }
    assert!(to_device_pages.load(SeqCst) >= MIN_MOVES && a.to_ram.load(SeqCst) >= MIN_MOVES);
    eprintln!(
        "pages migrated to the device: {}, migrate_to_ram calls: {}",
        to_device_pages.load(SeqCst),
        a.to_ram.load(SeqCst)
    );
    ma.assert_coherent(&mm, "end");
    mm.exit();
    assert_eq!(a.free_pages(), 2 * N, "every device page went back to the driver");
    drop(mm);
    assert_eq!(k.phys().free_frames(), boot_free, "RAM frames leaked");
}

#[test]
fn cpu_accesses_race_with_migrations_to_the_device_and_back() {
    cpu_race(false);
}

/// The same with every CPU thread on every page: two CPU faults meet on one
/// device page. (Before e783c68 about one run in seven failed with SIGBUS:
/// the loser's transient reference failed the winner's pin check; see
/// `a_device_page_that_cannot_migrate_for_now_is_retried_not_sigbus`.)
#[test]
fn cpu_threads_sharing_pages_race_with_migrations() {
    cpu_race(true);
}

#[test]
fn two_devices_migrate_the_same_range_concurrently() {
    const N: u64 = 8;
    const ROUNDS: u64 = 400;
    let _watchdog = Watchdog::new("two_devices_migrate_the_same_range", WATCHDOG);
    let k = kernel(64, ThpMode::Never);
    let boot_free = k.phys().free_frames();
    let devices = [Device::new(&k, OWNER_A, 2 * N), Device::new(&k, OWNER_B, 2 * N)];
    let mm = k.create_mm().unwrap();
    let va = patterned(&mm, N);
    let end = va + N * PAGE;
    for p in 0..N {
        mm.write_u64(va + p * PAGE, 0).unwrap();
        mm.write_u64(va + p * PAGE + 8, 0).unwrap();
    }
    let bindings = [devices[0].attach(&mm, va, N * PAGE), devices[1].attach(&mm, va, N * PAGE)];
    let moves = [AtomicU64::new(0), AtomicU64::new(0)];
    let start = std::sync::Barrier::new(3);
    let done = AtomicBool::new(false);

    // Thread t (device t) migrates the whole range to its device, writes
    // its slot of one page from the CPU (which brings that page back from
    // whichever device holds it), and every few rounds evicts its device's
    // pages from the driver side or faults the range on its device (which
    // migrates the other device's pages back). It ends on a migration.
    let last = thread::scope(|s| {
        let threads: Vec<_> = (0..2usize)
            .map(|t| {
                let (mm, device, binding, moves, start) = (&mm, &devices[t], &bindings[t], &moves[t], &start);
                s.spawn(move || {
                    let mut last = vec![0u64; N as usize];
                    start.wait();
                    for r in 1..=ROUNDS {
                        let guard = mm.mmap_read();
                        let migrate = device.migrate_to_device(&guard, va, end).unwrap();
                        moves.fetch_add(moved(&migrate).len() as u64, SeqCst);
                        drop(guard);
                        let p = (r * (t as u64 + 3)) % N;
                        mm.write_u64(va + p * PAGE + t as u64 * 8, r).unwrap();
                        last[p as usize] = r;
                        if r % 5 == 0 {
                            device.evict(&mm.mmap_read(), va, end).unwrap();
                        }
                        if r % 7 == 0 {
                            binding.fault(mm, va, N, REQ_R).unwrap();
                        }
                    }
                    device.migrate_to_device(&mm.mmap_read(), va, end).unwrap();
                    last
                })
            })
            .collect();
        // A third racer: driver-side eviction of both devices' pages, now
        // and then, until the others are done.
        s.spawn(|| {
            start.wait();
            while !done.load(SeqCst) {
                for device in &devices {
                    device.evict(&mm.mmap_read(), va, end).unwrap();
                }
                thread::sleep(Duration::from_micros(200));
            }
        });
        let _done = SetOnDrop(&done);
        threads.into_iter().map(|t| t.join().unwrap()).collect::<Vec<_>>()
    });
    assert!(moves.iter().all(|m| m.load(SeqCst) > 0), "both devices got pages");
    eprintln!(
        "pages migrated to A: {}, to B: {}; migrate_to_ram calls on A: {}, on B: {}",
        moves[0].load(SeqCst),
        moves[1].load(SeqCst),
        devices[0].to_ram.load(SeqCst),
        devices[1].to_ram.load(SeqCst)
    );

    // Every page is in exactly one place: RAM, A or B.
    let phys = k.phys();
    let mut on = [Vec::new(), Vec::new()];
    for p in 0..N {
        let addr = va + p * PAGE;
        let (_, entry) = leaf(&mm, addr);
        let pfn = entry.pfn();
        let home = if entry.is_present() {
            assert_eq!(phys.memory_type(pfn), MemoryType::System);
            None
        } else {
            assert_eq!(entry.swap_kind(), Some(SwapKind::DevicePrivateWrite), "page {p}: {entry:?}");
            let d = devices.iter().position(|d| d.owns(pfn)).expect("a device page of one of the devices");
            on[d].push(pfn);
            Some(d)
        };
        assert_eq!(phys.folio_counts(pfn), (1, 1), "page {p} ({home:?}): one mapping, one reference");
        // The data, read where it lives.
        let mut expected = pattern_page(addr);
        expected[..8].copy_from_slice(&last[0][p as usize].to_le_bytes());
        expected[8..16].copy_from_slice(&last[1][p as usize].to_le_bytes());
        assert!(frame_bytes(phys, pfn) == expected, "page {p} ({home:?}) holds the wrong data");
        // Each owner sees its own pages, nobody else's.
        for (d, binding) in bindings.iter().enumerate() {
            let word = binding.snapshot(&mm, addr, 1)[0];
            let wanted = match home {
                None => VALID | WRITE | pfn.0,
                Some(h) if h == d => VALID | WRITE | pfn.0,
                Some(_) => 0,
            };
            assert_eq!(word, wanted, "page {p} ({home:?}) seen by device {d}");
        }
    }
    eprintln!(
        "final homes: {} on A, {} on B, {} in RAM",
        on[0].len(),
        on[1].len(),
        N as usize - on[0].len() - on[1].len()
    );
    for (d, device) in devices.iter().enumerate() {
        let mut pages = on[d].clone();
        pages.sort();
        pages.dedup();
        assert_eq!(pages.len(), on[d].len(), "device {d} page mapped twice");
        assert_eq!(device.nr - device.free_pages(), on[d].len() as u64, "device {d}: pages in use vs. mapped");
        bindings[d].assert_coherent(&mm, "end");
    }
    mm.exit();
    for (d, device) in devices.iter().enumerate() {
        assert_eq!(device.free_pages(), device.nr, "device {d}: pages returned at exit");
    }
    drop(mm);
    assert_eq!(k.phys().free_frames(), boot_free, "RAM frames leaked");
}

#[test]
fn munmap_waits_for_a_migration_holding_the_mmap_read_lock() {
    const N: u64 = 8;
    let _watchdog = Watchdog::new("munmap_waits_for_a_migration", WATCHDOG);
    let k = kernel(64, ThpMode::Never);
    let a = Device::new(&k, OWNER_A, N);
    let mm = k.create_mm().unwrap();
    let va = patterned(&mm, N);
    let ma = a.attach(&mm, va, N * PAGE);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let unmapped = AtomicBool::new(false);
    let migrate = thread::scope(|s| {
        let (mm, a) = (&mm, &a);
        let migrator = s.spawn(move || {
            let guard = mm.mmap_read();
            let mut migrate = MigrateVma::new(va, va + N * PAGE, OWNER_A, MigrateSelect::SYSTEM);
            migrate.setup(guard.locked()).unwrap();
            a.copy(&mut migrate, |_| a.alloc());
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            a.finish_to_device(guard.locked(), &mut migrate);
            migrate
        });
        ready_rx.recv().unwrap();
        s.spawn(|| {
            mm.munmap(va, N * PAGE).unwrap();
            unmapped.store(true, SeqCst);
        });
        thread::sleep(Duration::from_millis(100));
        assert!(!unmapped.load(SeqCst), "munmap returned while a driver held the mmap read lock mid-migration");
        go_tx.send(()).unwrap();
        migrator.join().unwrap()
    });
    assert!(unmapped.load(SeqCst));
    assert_eq!(moved(&migrate).len() as u64, N, "the migration completed before the munmap");
    let log = ma.mirror.take_log();
    assert_eq!(log.last().map(|s| (s.event, s.skipped)), Some((Event::Unmap, false)), "{log:?}");
    assert!(ma.mirror.table.lock().is_empty(), "the UNMAP cleared the device table");
    assert_eq!(a.free_pages(), N, "munmap freed the device pages to the driver");
    assert_eq!(mm.read_u64(va).unwrap_err().errno(), Errno::Fault);
    ma.assert_coherent(&mm, "end");
}

/// munmap against a driver migrating the range over and over: every
/// migration either completes before the munmap or fails (`EINVAL`, no
/// VMA) after it; the UNMAP clears the device table and frees every device
/// page.
fn munmap_race(rounds: u64, cpu_writer: bool) {
    const N: u64 = 16;
    let _watchdog = Watchdog::new("munmap_race", WATCHDOG);
    let k = kernel(64, ThpMode::Never);
    let boot_free = k.phys().free_frames();
    let a = Device::new(&k, OWNER_A, 2 * N);
    let mm = k.create_mm().unwrap();
    for round in 0..rounds {
        let va = patterned(&mm, N);
        let end = va + N * PAGE;
        let ma = a.attach(&mm, va, N * PAGE);
        let migrations = AtomicU64::new(0);
        thread::scope(|s| {
            // The migrator: until the VMA is gone.
            s.spawn(|| {
                for _ in 0..100_000 {
                    let guard = mm.mmap_read();
                    match a.migrate_to_device(&guard, va, end) {
                        Ok(_) => migrations.fetch_add(1, SeqCst),
                        Err(error) => {
                            assert_eq!(error.errno(), Errno::Inval, "only the munmap stops it");
                            return;
                        }
                    };
                }
                panic!("the munmap never happened");
            });
            if cpu_writer {
                // A CPU writer bringing pages back, until the VMA is gone.
                s.spawn(|| {
                    for i in 0.. {
                        let addr = va + (i % N) * PAGE;
                        if let Err(error) = mm.write_u64(addr, pattern_word(addr, 0)) {
                            assert_eq!(error.errno(), Errno::Fault, "{error}");
                            return;
                        }
                    }
                });
            }
            // The munmap, after a few migrations (a different number each round).
            while migrations.load(SeqCst) < 1 + round % 4 {
                thread::yield_now();
            }
            mm.munmap(va, N * PAGE).unwrap();
        });
        assert!(ma.mirror.table.lock().is_empty(), "round {round}: the UNMAP cleared the table");
        assert_eq!(a.free_pages(), 2 * N, "round {round}: device pages freed after the munmap");
        ma.assert_coherent(&mm, "end");
        a.detach(ma);
    }
    mm.exit();
    drop(mm);
    assert_eq!(k.phys().free_frames(), boot_free, "RAM frames leaked");
}

#[test]
fn munmap_races_with_repeated_migrations() {
    munmap_race(50, false);
}

/// The same race with a CPU thread writing the range meanwhile. (This hung
/// before e783c68: a writer faulting on a device page its migrator still
/// held locked spun until the entry changed, under the mmap read lock, with
/// the munmap queued behind it; see
/// `a_cpu_fault_on_a_locked_device_page_proceeds_once_it_is_unlocked`.)
#[test]
fn munmap_races_with_migrations_and_cpu_faults() {
    munmap_race(50, true);
}

/// Spec §4.1: a CPU fault that cannot lock the device page returns and
/// faults again (newest kernels first wait for the page lock); either way
/// it proceeds once the page is unlocked. Here the page is a device page
/// that `pages()` put in a hole, locked by its driver until `finalize`,
/// which unlocks it without changing the entry.
#[test]
fn a_cpu_fault_on_a_locked_device_page_proceeds_once_it_is_unlocked() {
    let _watchdog = Watchdog::new("a_cpu_fault_on_a_locked_device_page", WATCHDOG);
    let k = kernel(64, ThpMode::Never);
    let a = Device::new(&k, OWNER_A, 4);
    let mm = k.create_mm().unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let guard = mm.mmap_read();
        let mut migrate = MigrateVma::new(va, va + PAGE, OWNER_A, MigrateSelect::SYSTEM);
        migrate.setup(guard.locked()).unwrap();
        a.copy(&mut migrate, |_| a.alloc());
        migrate.pages(guard.locked());
        let dst = migrate_pfn_to_pfn(migrate.dst[0]).unwrap();
        let entry = mm.pgtable().find(va).load();
        assert_eq!((entry.swap_kind(), entry.pfn()), (Some(SwapKind::DevicePrivateWrite), dst));
        let reader = s.spawn(|| {
            let value = mm.read_u64(va);
            done.store(true, SeqCst);
            value
        });
        // Let the fault meet the locked page, then finish the migration.
        thread::sleep(Duration::from_millis(50));
        a.map_migrated(mm.id(), &migrate);
        migrate.finalize(guard.locked());
        drop(guard);
        let until = Instant::now() + Duration::from_secs(1);
        while !done.load(SeqCst) && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
        let in_time = done.load(SeqCst);
        if !in_time {
            // Rescue the spinning fault: evicting the page changes the entry.
            a.evict(&mm.mmap_read(), va, va + PAGE).unwrap();
        }
        assert_eq!(reader.join().unwrap(), Ok(0));
        assert!(in_time, "the fault did not proceed within 1 s after the device page was unlocked");
    });
}

/// Spec §4.1: `migrate_to_ram` returns 0 "on success or if the fault
/// should simply be retried"; a device page that cannot migrate for now
/// (here an extra reference, as a concurrent fault on the same page takes
/// for a moment) is faulted again, not SIGBUS.
#[test]
fn a_device_page_that_cannot_migrate_for_now_is_retried_not_sigbus() {
    let _watchdog = Watchdog::new("a_device_page_that_cannot_migrate_for_now", WATCHDOG);
    let k = kernel(64, ThpMode::Never);
    let a = Device::new(&k, OWNER_A, 4);
    let mm = k.create_mm().unwrap();
    let va = patterned(&mm, 1);
    let device_page = moved(&to_device(&a, &mm, va, va + PAGE))[0];
    k.phys().get(device_page);
    thread::scope(|s| {
        let reader = s.spawn(|| mm.read_u64(va));
        thread::sleep(Duration::from_millis(50));
        k.phys().put(device_page);
        assert_eq!(reader.join().unwrap(), Ok(pattern_word(va, 0)));
    });
    assert!(leaf(&mm, va).1.is_present());
    assert_eq!(a.free_pages(), 4);
}

// ---------------------------------------------------------------------------
// Device-exclusive access (spec §4.9, §11.9)
// ---------------------------------------------------------------------------

#[test]
fn device_exclusive_and_range_fault() {
    let k = kernel(64, ThpMode::Never);
    let a = Device::new(&k, OWNER_A, 4);
    let b = Device::new(&k, OWNER_B, 4);
    let mm = k.create_mm().unwrap();
    let va = patterned(&mm, 2);
    let ma = a.attach(&mm, va, 2 * PAGE);
    let mb = b.attach(&mm, va, 2 * PAGE);
    let page = [leaf(&mm, va).1.pfn(), leaf(&mm, va + PAGE).1.pfn()];
    for binding in [&ma, &mb] {
        binding.fault(&mm, va, 2, REQ_W).unwrap();
        binding.mirror.take_log();
    }

    // A takes page 0 for atomics: its own EXCLUSIVE event (carrying its
    // owner) is filtered, so its critical section succeeds at once.
    assert_eq!(a.make_exclusive(&ma, &mm, va), 1, "the owner's own EXCLUSIVE event must not make it retry");
    let (_, entry) = leaf(&mm, va);
    assert_eq!((entry.swap_kind(), entry.pfn()), (Some(SwapKind::DeviceExclusive), page[0]));
    let exclusive = |owner, skipped| Seen { event: Event::Exclusive, start: va, end: va + PAGE, owner, skipped };
    assert_eq!(ma.mirror.take_log(), [exclusive(Some(OWNER_A), true)]);
    assert_eq!(mb.mirror.take_log(), [exclusive(Some(OWNER_A), false)], "other devices unmap");
    assert_eq!(mb.mirror.entry(va), None);
    assert_eq!(mb.mirror.entry(va + PAGE), Some(VALID | WRITE | page[1].0));
    assert_eq!(ma.mirror.entry(va), Some(VALID | WRITE | page[0].0), "A maps the page for atomics");

    // A snapshot, by anyone, sees 0 for the exclusive page.
    for binding in [&ma, &mb] {
        assert_eq!(binding.snapshot(&mm, va, 2), [0, VALID | WRITE | page[1].0]);
    }
    assert_eq!(leaf(&mm, va).1.swap_kind(), Some(SwapKind::DeviceExclusive), "a snapshot does not revoke");

    // B's REQ_FAULT restores the CPU entry: an EXCLUSIVE invalidation with no
    // owner, which reaches A too and revokes its atomic mapping.
    let pfns = mb.fault(&mm, va, 2, REQ_R).unwrap();
    assert_eq!(pfns, [VALID | WRITE | page[0].0, VALID | WRITE | page[1].0]);
    let (_, entry) = leaf(&mm, va);
    assert!(entry.is_present() && entry.is_write() && entry.pfn() == page[0], "restored: {entry:?}");
    assert!(ma.mirror.take_log().contains(&exclusive(None, false)), "A saw the owner-less EXCLUSIVE");
    assert_eq!(ma.mirror.entry(va), None, "A's atomic mapping was revoked");
    assert_patterned(&mm, va, 2);
    ma.assert_coherent(&mm, "end");
    mb.assert_coherent(&mm, "end");

    // Again with REQ_FAULT by the owner itself: the restore invalidates
    // its own subscription too (no owner on the event), so it retries and
    // then maps the restored page.
    assert_eq!(a.make_exclusive(&ma, &mm, va), 1);
    ma.mirror.take_log();
    let pfns = ma.fault(&mm, va, 1, REQ_R).unwrap();
    assert_eq!(pfns, [VALID | WRITE | page[0].0]);
    assert!(ma.mirror.take_log().contains(&exclusive(None, false)));
    assert!(leaf(&mm, va).1.is_present());
    ma.assert_coherent(&mm, "end");
}

/// Spec §4.9: exclusivity lasts while the driver holds the folio (it maps
/// the page for atomics meanwhile), and the CPU restores the entry "under
/// the folio lock": a CPU access in that window waits for the unlock.
#[test]
fn a_cpu_access_waits_while_the_driver_holds_the_exclusive_page() {
    let _watchdog = Watchdog::new("a_cpu_access_waits", WATCHDOG);
    let k = kernel(64, ThpMode::Never);
    let mm = k.create_mm().unwrap();
    let va = patterned(&mm, 1);
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let guard = mm.mmap_read();
        let page = make_device_exclusive(&guard, va, OWNER_A).unwrap();
        let reader = s.spawn(|| {
            let value = mm.read_u64(va).unwrap();
            done.store(true, SeqCst);
            value
        });
        let until = Instant::now() + Duration::from_millis(200);
        while !done.load(SeqCst) && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
        let early = done.load(SeqCst);
        let entry = mm.pgtable().find(va).load();
        drop(page);
        drop(guard);
        assert_eq!(reader.join().unwrap(), pattern_word(va, 0));
        assert!(!early, "the CPU access completed while the driver held the exclusive page locked");
        assert_eq!(entry.swap_kind(), Some(SwapKind::DeviceExclusive), "exclusivity revoked under the driver");
    });
}

// ---------------------------------------------------------------------------
// fork (spec §4.2, §11.8)
// ---------------------------------------------------------------------------

#[test]
fn fork_with_device_pages_isolates_parent_and_child() {
    const N: u64 = 4;
    let k = kernel(64, ThpMode::Never);
    let boot_free = k.phys().free_frames();
    let a = Device::new(&k, OWNER_A, 8);
    let parent = k.create_mm().unwrap();
    let va = patterned(&parent, N);
    let ma = a.attach(&parent, va, N * PAGE);
    let device_pfns = moved(&to_device(&a, &parent, va, va + N * PAGE));
    assert_eq!(device_pfns.len() as u64, N);
    assert_eq!(ma.mirror.table.lock().len() as u64, N);

    let child = parent.fork().unwrap();
    // Both processes map the same device pages, read-only.
    for (i, &pfn) in device_pfns.iter().enumerate() {
        for mm in [&parent, &child] {
            let (_, entry) = leaf(mm, va + i as u64 * PAGE);
            assert_eq!((entry.swap_kind(), entry.pfn()), (Some(SwapKind::DevicePrivateRead), pfn));
        }
        assert_eq!(k.phys().folio_counts(pfn), (2, 2));
    }
    assert!(ma.mirror.table.lock().is_empty(), "fork's write-protection cleared the writable device entries");
    // The owner is told the page is read-only, even when it asks for write:
    // an owned device-private page is never faulted.
    let pfns = ma.fault(&parent, va, N, REQ_W).unwrap();
    assert_eq!(pfns, device_pfns.iter().map(|p| VALID | p.0).collect::<Vec<_>>());
    assert_eq!(a.to_ram.load(SeqCst), 0);
    ma.assert_coherent(&parent, "after fork");
    // (The owner's mirrors stay out of what follows: see the next test.)
    a.detach(ma);
    let other = attach(&child, Some(OWNER_B), va, N * PAGE, None);
    assert_eq!(other.snapshot(&child, va, N), vec![0; N as usize], "another owner sees nothing");

    let word = |p: u64| va + p * PAGE + 16;
    let old = |p: u64| pattern_word(va + p * PAGE, 2);
    // Page 0: read from both (one migration back, shared read-only), then
    // the child writes.
    assert_eq!(parent.read_u64(word(0)).unwrap(), old(0));
    assert_eq!(a.to_ram.load(SeqCst), 1);
    let (_, in_parent) = leaf(&parent, va);
    let (_, in_child) = leaf(&child, va);
    assert!(in_parent.is_present() && !in_parent.is_write(), "{in_parent:?}");
    assert!(in_child.is_present() && !in_child.is_write(), "{in_child:?}");
    assert_eq!(in_child.pfn(), in_parent.pfn(), "the child's mapping moved with the parent's");
    assert_eq!(child.read_u64(word(0)).unwrap(), old(0));
    assert_eq!(a.to_ram.load(SeqCst), 1, "the child read the RAM copy");
    child.write_u64(word(0), 100).unwrap();
    // Page 1: the parent writes first.
    parent.write_u64(word(1), 201).unwrap();
    // Page 2: the child writes first.
    child.write_u64(word(2), 302).unwrap();
    // Page 3 stays on the device in both.
    assert_eq!(parent.read_u64(word(0)).unwrap(), old(0));
    assert_eq!(child.read_u64(word(0)).unwrap(), 100);
    assert_eq!(parent.read_u64(word(1)).unwrap(), 201);
    assert_eq!(child.read_u64(word(1)).unwrap(), old(1));
    assert_eq!(parent.read_u64(word(2)).unwrap(), old(2));
    assert_eq!(child.read_u64(word(2)).unwrap(), 302);
    assert_eq!(leaf(&parent, va + 3 * PAGE).1.pfn(), device_pfns[3]);
    assert_eq!(a.free_pages(), 8 - 1, "only page 3 is still on the device");
    other.assert_coherent(&child, "child");

    child.exit();
    assert_eq!(k.phys().folio_counts(device_pfns[3]), (1, 1), "the child's exit dropped its share");
    assert_eq!(parent.read_u64(word(3)).unwrap(), old(3));
    assert_eq!(a.free_pages(), 8);
    parent.exit();
    drop((parent, child));
    assert_eq!(k.phys().free_frames(), boot_free, "RAM frames leaked");
}

/// After fork, a migration started in one process also moves the other
/// process's mapping (`try_to_migrate`). Linux announces that to the other
/// address space as MMU_NOTIFY_CLEAR without an owner
/// (`try_to_migrate_one`), so the device's mirror of the other process is
/// invalidated; only the migrating address space's own MIGRATE event may be
/// filtered (spec §3.6, §11.6).
#[test]
fn after_fork_a_migration_in_one_process_invalidates_the_others_mirror() {
    let k = kernel(64, ThpMode::Never);
    let a = Device::new(&k, OWNER_A, 8);
    let parent = k.create_mm().unwrap();
    let va = patterned(&parent, 2);
    to_device(&a, &parent, va, va + PAGE);
    let child = parent.fork().unwrap();
    let device_page = leaf(&child, va).1.pfn();
    let ram_page = leaf(&child, va + PAGE).1.pfn();
    // A mirrors the child: page 0 is its own device page (read-only), page
    // 1 a RAM page shared copy-on-write.
    let mc = a.attach(&child, va, 2 * PAGE);
    assert_eq!(mc.fault(&child, va, 2, REQ_R).unwrap(), [VALID | device_page.0, VALID | ram_page.0]);

    // The parent touches page 0: migrate_to_ram in the parent moves the
    // child's entry too, and the device page is freed.
    assert_eq!(parent.read_u64(va).unwrap(), pattern_word(va, 0));
    assert!(leaf(&child, va).1.is_present());
    assert_eq!(k.phys().folio_counts(device_page).0, 0, "the device page is free");
    assert_eq!(mc.mirror.entry(va), None, "the child's mirror must not keep the freed device page");

    // The parent migrates page 1 to the device: the child's entry moves
    // too, and the RAM page is freed.
    to_device(&a, &parent, va + PAGE, va + 2 * PAGE);
    assert_eq!(leaf(&child, va + PAGE).1.swap_kind(), Some(SwapKind::DevicePrivateRead));
    assert_eq!(mc.mirror.entry(va + PAGE), None, "the child's mirror must not keep the freed RAM page");
    mc.assert_coherent(&child, "end");
    assert_eq!(child.read_u64(va + PAGE).unwrap(), pattern_word(va + PAGE, 0));
    child.exit();
    parent.exit();
    assert_eq!(a.free_pages(), 8);
}
