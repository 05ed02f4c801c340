//! `dmirror`, the reference HMM device: Linux's test device
//! (`lib/test_hmm.c`) with the same commands, argument checks, counters and
//! errors, on the model. It is the in-tree user of every driver-facing API:
//! `range_fault` and the interval notifier (READ, WRITE, SNAPSHOT),
//! `MigrateVma` and `migrate_to_ram` (the migrations), `MigrateDevice`
//! (RELEASE and close), `make_device_exclusive` (EXCLUSIVE).
//!
//! * [`Dmirror::probe`] loads the "module": devices 0 and 1 with
//!   device-private memory, 2 and 3 with device-coherent memory.
//! * [`DmirrorDevice::open`] opens a device from a process: a
//!   [`DmirrorFile`] mirroring that process's whole address space.
//! * [`DmirrorFile::ioctl`] takes Linux's command block
//!   ([`HmmDmirrorCmd`], `ptr` an address in the process); the typed calls
//!   ([`DmirrorFile::read`], [`DmirrorFile::migrate_to_dev`]…) do the same
//!   with Rust buffers.
//! * [`DmirrorFile::dma_attach`] gives a file a DMA device: the system
//!   pages it mirrors in a window are then DMA-mapped with the `hmm::dma`
//!   helpers and unmapped on invalidation (no Linux counterpart in the
//!   test device; the pattern of RDMA ODP).
//!
//! Decisions on the quirks Linux's test device has (spec §5.7):
//! * kept: the invalidation callback clears one page past the event's
//!   range; `faults` counts fault rounds; on error the command block is not
//!   updated; MIGRATE_TO_DEV and EXCLUSIVE verify by reading back
//!   (`ENOENT`); closing any file evicts all of the device's memory;
//! * gone in 7.3 and followed: READ and WRITE on an exited address space
//!   fail with `EFAULT` instead of looping forever;
//! * changed: a file records the sequence on its own
//!   MIGRATE event and only the migrating file skips clearing (`file.rs`); device-private pages hold their data themselves, with no
//!   hidden system "backing page", so a fault that reports this device's
//!   page maps it correctly (`devmem.rs`); a page count whose byte size
//!   overflows is `EINVAL` rather than wrapping.
//!
//! Owns: device memory and its free lists, the device page tables, the
//! commands. Must not touch: CPU page tables (only through the `hmm` and
//! `hmm-mm` APIs).

pub mod uapi;

mod device;
mod devmem;
mod dma;
mod error;
mod exclusive;
mod file;
mod invalidate;
mod migrate;
mod rw;
mod snapshot;
mod table;
mod unlocked;

pub use device::{Dmirror, DmirrorConfig, DmirrorDevice, DEVMEM_CHUNK_PAGES, DMIRROR_NDEVICES};
pub use error::DmirrorError;
pub use file::{Counts, DmirrorFile};
pub use snapshot::mkentry;
pub use table::{Access, DeviceEntry};
pub use uapi::{HmmDmirrorCmd, MemoryKind, Request};
