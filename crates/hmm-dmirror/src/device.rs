//! The devices: what loading Linux's test module creates (four character
//! devices, 0 and 1 with device-private memory, 2 and 3 with
//! device-coherent memory when special-purpose memory is configured),
//! opening one (a mirror of the opener's address space), and releasing a
//! device's memory (spec §5.1, §5.2).
//!
//! Linux: `hmm_dmirror_init`, `dmirror_device_init`, `dmirror_fops_open`,
//! `dmirror_fops_release` (`lib/test_hmm.c`).

use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use hmm_mm::{Kernel, Mm};
use hmm_types::{Errno, Owner};

use crate::devmem::DeviceMemory;
use crate::file::{DmirrorFile, Mirror};
use crate::uapi::MemoryKind;

/// Devices the module creates (`DMIRROR_NDEVICES`).
pub const DMIRROR_NDEVICES: usize = 4;
/// Pages of one chunk of device memory (`DEVMEM_CHUNK_SIZE` = 256 MiB).
pub const DEVMEM_CHUNK_PAGES: u64 = (256 << 20) / hmm_types::PAGE_SIZE;

/// How the module is loaded.
#[derive(Clone, Debug)]
pub struct DmirrorConfig {
    /// Create devices 2 and 3 with device-coherent memory (Linux needs the
    /// `spm_addr_dev0`/`spm_addr_dev1` module parameters for them).
    pub coherent: bool,
    /// Pages per chunk of device memory.
    pub chunk_pages: u64,
    /// Chunks a device-private device may register (a coherent device has
    /// one at a time, at a fixed address, as in Linux).
    pub max_chunks: usize,
}

impl Default for DmirrorConfig {
    fn default() -> Self {
        Self { coherent: true, chunk_pages: DEVMEM_CHUNK_PAGES, max_chunks: 8 }
    }
}

/// The loaded module: its devices.
#[derive(Debug)]
pub struct Dmirror {
    devices: Vec<Arc<DmirrorDevice>>,
}

impl Dmirror {
    /// Creates the devices on `kernel`, each with one chunk of memory
    /// (`hmm_dmirror_init`).
    pub fn probe(kernel: &Arc<Kernel>, config: DmirrorConfig) -> Result<Self, Errno> {
        if config.chunk_pages == 0 || config.chunk_pages % crate::devmem::FOLIO_PAGES != 0 || config.max_chunks == 0 {
            return Err(Errno::Inval);
        }
        let count = if config.coherent { DMIRROR_NDEVICES } else { 2 };
        let devices = (0..count)
            .map(|minor| {
                let kind = if minor < 2 { MemoryKind::DevicePrivate } else { MemoryKind::DeviceCoherent };
                DmirrorDevice::new(kernel, minor, kind, &config)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { devices })
    }

    /// `/dev/hmm_dmirror<minor>`: `ENODEV` if the module did not create it
    /// (the selftests skip the coherent variants then).
    pub fn device(&self, minor: usize) -> Result<&Arc<DmirrorDevice>, Errno> {
        self.devices.get(minor).ok_or(Errno::NoDev)
    }

    /// The devices created.
    pub fn devices(&self) -> &[Arc<DmirrorDevice>] {
        &self.devices
    }
}

/// One device (`struct dmirror_device`).
#[derive(Debug)]
pub struct DmirrorDevice {
    minor: usize,
    kind: MemoryKind,
    owner: Owner,
    memory: DeviceMemory,
    /// The open files, for eviction through the address spaces they mirror.
    mirrors: Mutex<Vec<Weak<Mirror>>>,
    this: Weak<DmirrorDevice>,
}

/// Device owners are unique across every machine in the process, as the
/// `mdevice` pointers Linux uses are.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(0xd31c_e000);

impl DmirrorDevice {
    fn new(kernel: &Arc<Kernel>, minor: usize, kind: MemoryKind, config: &DmirrorConfig) -> Result<Arc<Self>, Errno> {
        let owner = Owner(NEXT_OWNER.fetch_add(1, Ordering::Relaxed));
        let device = Arc::new_cyclic(|this| Self {
            minor,
            kind,
            owner,
            memory: DeviceMemory::new(kind, owner, kernel.clone(), config.chunk_pages, config.max_chunks),
            mirrors: Mutex::new(Vec::new()),
            this: this.clone(),
        });
        if !device.memory.add_chunk(&device.this, false) {
            return Err(Errno::NoMem);
        }
        Ok(device)
    }

    /// Its minor number.
    pub fn minor(&self) -> usize {
        self.minor
    }
    /// Its memory type.
    pub fn kind(&self) -> MemoryKind {
        self.kind
    }
    /// Its pgmap owner (`mdevice`): its events carry it, and `range_fault`
    /// reports its device-private pages to it.
    pub fn owner(&self) -> Owner {
        self.owner
    }
    /// (pages allocated, pages freed) since the device came up (`calloc`,
    /// `cfree`).
    pub fn counters(&self) -> (u64, u64) {
        self.memory.counters()
    }
    /// Device pages still referenced by anyone (a diagnostic for leak
    /// checks; no Linux counterpart: after a RELEASE Linux's counters no
    /// longer count the pages of the removed chunks).
    pub fn pages_in_use(&self) -> u64 {
        self.memory.pages_in_use()
    }
    /// Free device pages.
    pub fn free_pages(&self) -> u64 {
        self.memory.free_pages()
    }

    pub(crate) fn memory(&self) -> &DeviceMemory {
        &self.memory
    }
    pub(crate) fn weak(&self) -> &Weak<DmirrorDevice> {
        &self.this
    }

    /// Opens the device from the process owning `mm`: a mirror of its whole
    /// address space (`dmirror_fops_open`).
    pub fn open(&self, mm: &Arc<Mm>) -> Result<DmirrorFile, Errno> {
        let device = self.this.upgrade().ok_or(Errno::NoDev)?;
        let mirror = Mirror::new(device, mm)?;
        let mut mirrors = self.mirrors.lock();
        mirrors.retain(|m| m.strong_count() > 0);
        mirrors.push(Arc::downgrade(&mirror));
        Ok(DmirrorFile::new(mirror))
    }

    pub(crate) fn forget(&self, mirror: &Arc<Mirror>) {
        self.mirrors.lock().retain(|m| m.strong_count() > 0 && !core::ptr::eq(m.as_ptr(), Arc::as_ptr(mirror)));
    }

    /// Erases every file's device mapping of the pages given as `(address,
    /// first frame, pages)` runs: they are leaving the device. Linux erases
    /// the entry of the file that migrated the page in; the model does not
    /// record which, and erasing more is always safe.
    pub(crate) fn erase_mappings(&self, runs: impl Iterator<Item = (u64, hmm_types::Pfn, u64)> + Clone) {
        let mirrors: Vec<Arc<Mirror>> = self.mirrors.lock().iter().filter_map(Weak::upgrade).collect();
        for mirror in mirrors {
            let mut table = mirror.lock_table();
            for (va, first, nr) in runs.clone() {
                for j in 0..nr {
                    let at = va + j * hmm_types::PAGE_SIZE;
                    if table.get(at).is_some_and(|e| e.pfn == first.add(j)) {
                        table.remove(at);
                    }
                }
            }
        }
    }

    /// Migrates all of this device's memory back to system RAM and retires
    /// its chunks (`dmirror_device_remove_chunks`: RELEASE).
    /// Pages (and whole 2 MiB folios) move by frame number, wherever they
    /// are mapped: the cost follows the device memory in use, not the size
    /// of the address spaces the files mirror.
    pub(crate) fn remove_chunks(&self) {
        for base in self.memory.retire_chunks() {
            self.memory.evict_chunk(base);
        }
    }

    /// Migrates all of this device's memory back to system RAM and keeps
    /// its chunks: the pages come back to the free lists as the folios they
    /// were (`dmirror_fops_release`, on every close, evicts each chunk but
    /// removes none).
    pub(crate) fn evict_chunks(&self) {
        for base in self.memory.live_chunks() {
            self.memory.evict_chunk(base);
        }
    }
}
