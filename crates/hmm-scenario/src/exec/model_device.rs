//! The model's side of device and DAX calls: the test device is
//! `hmm-dmirror` loaded on the scenario's machine (on first use, all four
//! devices as the reference guest has them), its commands go through the
//! typed calls of [`DmirrorFile`] (the ioctl's argument checks included);
//! a `daxfile` is a file of an `hmm-mm` [`DaxFs`] formatted on a temporary
//! pmem image, removed when the run ends; `devdax` opens an `hmm-mm`
//! [`DevDax`] sized and aligned as the reference guest's device-DAX.
//!
//! Open device files belong to processes as descriptors do: a fork shares
//! them (the child's commands still act on the opener's address space, as
//! Linux's file keeps the opener's `mm`), and the device file closes when
//! the last process holding it closes it or exits.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hmm_dmirror::{uapi, Counts, Dmirror, DmirrorConfig, DmirrorError, DmirrorFile, HmmDmirrorCmd};
use hmm_mm::devdax::DevDax;
use hmm_mm::fs::{DaxFs, File};
use hmm_mm::{Kernel, Mm};
use hmm_types::{Errno, PageSize, PAGE_SIZE};

use super::device::DeviceCall;
use super::{FileId, ProcId};
use crate::lang::device::DevCmd;
use crate::observe::Outcome;
use crate::observe_device::DeviceResult;

/// Size of the model's pmem image for fs-dax files.
const DAX_IMAGE_BYTES: u64 = 64 << 20;

/// The reference guest's device-DAX (`kernel-lab/guest-init`): a 256 MiB
/// NVDIMM in mode devdax with 2 MiB alignment and its memmap on the
/// device, which leaves this much (`/sys/bus/dax/devices/dax1.0/size`).
pub(super) const DEVDAX_BYTES: u64 = 250 << 20;
/// Its alignment, the size of its leaves.
const DEVDAX_ALIGN: PageSize = PageSize::Size2M;

/// Images made by this process, to keep their names apart.
static IMAGES: AtomicU64 = AtomicU64::new(0);

/// The devices, the DAX filesystem and the open device files of one run.
#[derive(Default)]
pub(super) struct ModelDevices {
    dmirror: Option<Dmirror>,
    dax: Option<(DaxFs, PathBuf)>,
    files: HashMap<(ProcId, FileId), Arc<DmirrorFile>>,
    devdax: Option<Arc<DevDax>>,
    /// Open descriptors of the device-DAX node.
    devdax_files: HashSet<(ProcId, FileId)>,
}

impl core::fmt::Debug for ModelDevices {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ModelDevices").field("files", &self.files.len()).finish_non_exhaustive()
    }
}

fn failed(e: DmirrorError) -> Outcome {
    Outcome::Errno(e.errno() as i32)
}

fn result(r: Result<Counts, DmirrorError>, data: Option<&[u8]>, snap: Option<&[u8]>) -> Outcome {
    match r {
        Ok(c) => Outcome::Device(DeviceResult::new(c.cpages, c.faults, data, snap)),
        Err(e) => failed(e),
    }
}

/// A command through the ioctl entry point with no user buffer (`ptr`
/// unused): its counters as Linux copies the block back.
fn ioctl(file: &DmirrorFile, request: u64, addr: u64, npages: u64) -> Outcome {
    let mut cmd = HmmDmirrorCmd { addr, npages, ..HmmDmirrorCmd::default() };
    match file.ioctl(request, &mut cmd) {
        Ok(()) => Outcome::Device(DeviceResult::new(cmd.cpages, cmd.faults, None, None)),
        Err(e) => failed(e),
    }
}

impl ModelDevices {
    /// Performs `call` in process `proc` (its address space `mm`, its
    /// plain files `files`); `names` gets a DAX file's inode name for `maps`.
    pub(super) fn call(
        &mut self,
        kernel: &Arc<Kernel>,
        mm: &Arc<Mm>,
        proc: ProcId,
        call: &DeviceCall,
        files: &mut HashMap<FileId, File>,
        names: &mut HashMap<u64, String>,
    ) -> Outcome {
        match *call {
            DeviceCall::Open { minor, id } => {
                if self.dmirror.is_none() {
                    match Dmirror::probe(kernel, DmirrorConfig::default()) {
                        Ok(d) => self.dmirror = Some(d),
                        Err(e) => return Outcome::Inconclusive(format!("the model's dmirror did not load: {e:?}")),
                    }
                }
                let dmirror = self.dmirror.as_ref().expect("loaded above");
                // The reference guest has nodes for devices 0-3 only.
                let Some(device) = usize::try_from(minor).ok().and_then(|m| dmirror.device(m).ok()) else {
                    return Outcome::Errno(Errno::NoEnt as i32);
                };
                match device.open(mm) {
                    Ok(file) => {
                        self.files.insert((proc, id), Arc::new(file));
                        Outcome::Ok
                    }
                    Err(e) => Outcome::Errno(e as i32),
                }
            }
            DeviceCall::DaxFile { ref name, id, .. } => match self.dax_fs(kernel) {
                Ok(fs) => match fs.create(name) {
                    Ok(file) => {
                        names.insert(file.inode().id(), name.clone());
                        files.insert(id, file);
                        Outcome::Ok
                    }
                    Err(e) => Outcome::Errno(e.errno() as i32),
                },
                Err(why) => Outcome::Inconclusive(why),
            },
            DeviceCall::DevDax { id } => {
                if self.devdax.is_none() {
                    match DevDax::create(kernel, DEVDAX_BYTES, DEVDAX_ALIGN, None) {
                        Ok(dev) => self.devdax = Some(dev),
                        Err(e) => return Outcome::Inconclusive(format!("the model's device-DAX: {e}")),
                    }
                }
                self.devdax_files.insert((proc, id));
                Outcome::Ok
            }
            DeviceCall::Cmd { file, cmd, addr, npages } => {
                let Some(f) = self.files.get(&(proc, file)) else { return Outcome::Errno(Errno::BadF as i32) };
                let mut buf = vec![0u8; (npages * PAGE_SIZE) as usize * usize::from(cmd.returns_data())];
                match cmd {
                    DevCmd::Read => result(f.read(addr, npages, &mut buf), Some(&buf), None),
                    DevCmd::ReadUnlocked => result(f.read_unlocked(addr, npages, &mut buf), Some(&buf), None),
                    DevCmd::MigrateToDev => result(f.migrate_to_dev(addr, npages, &mut buf), Some(&buf), None),
                    DevCmd::Exclusive => result(f.exclusive(addr, npages, &mut buf), Some(&buf), None),
                    DevCmd::Snapshot => {
                        let mut snap = vec![0u8; npages as usize];
                        result(f.snapshot(addr, npages, &mut snap), None, Some(&snap))
                    }
                    DevCmd::MigrateToSys => ioctl(f, uapi::HMM_DMIRROR_MIGRATE_TO_SYS, addr, npages),
                    DevCmd::CheckExclusive => ioctl(f, uapi::HMM_DMIRROR_CHECK_EXCLUSIVE, addr, npages),
                }
            }
            DeviceCall::Write { file, addr, npages, pattern } => {
                let Some(f) = self.files.get(&(proc, file)) else { return Outcome::Errno(Errno::BadF as i32) };
                let data = pattern.bytes((npages * PAGE_SIZE) as usize);
                result(f.write(addr, npages, &data), None, None)
            }
            // Both go through the ioctl's range check on (0, npages), as
            // the host passes them.
            DeviceCall::Release { file } => match self.files.get(&(proc, file)) {
                Some(f) => ioctl(f, uapi::HMM_DMIRROR_RELEASE, 0, 1),
                None => Outcome::Errno(Errno::BadF as i32),
            },
            DeviceCall::Flags { file, flags } => match self.files.get(&(proc, file)) {
                Some(f) => ioctl(f, uapi::HMM_DMIRROR_FLAGS, 0, flags),
                None => Outcome::Errno(Errno::BadF as i32),
            },
        }
    }

    fn dax_fs(&mut self, kernel: &Kernel) -> Result<&DaxFs, String> {
        if self.dax.is_none() {
            let n = IMAGES.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("hmm-scenario-{}-{n}.pmem", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let fs = DaxFs::format(kernel, &path, DAX_IMAGE_BYTES)
                .map_err(|e| format!("the model's fs-dax image {}: {e}", path.display()))?;
            self.dax = Some((fs, path));
        }
        Ok(&self.dax.as_ref().expect("made above").0)
    }

    /// The device-DAX instance if `file` of `proc` is its node.
    pub(super) fn devdax(&self, proc: ProcId, file: FileId) -> Option<&Arc<DevDax>> {
        self.devdax.as_ref().filter(|_| self.devdax_files.contains(&(proc, file)))
    }

    /// `close FILE`: true if it was a device file of `proc`.
    pub(super) fn close(&mut self, proc: ProcId, file: FileId) -> bool {
        self.files.remove(&(proc, file)).is_some() || self.devdax_files.remove(&(proc, file))
    }

    /// A fork: the child shares the parent's open device files.
    pub(super) fn fork(&mut self, parent: ProcId, child: ProcId) {
        let shared: Vec<_> =
            self.files.iter().filter(|((p, _), _)| *p == parent).map(|((_, id), f)| (*id, f.clone())).collect();
        for (id, file) in shared {
            self.files.insert((child, id), file);
        }
        let devdax: Vec<_> = self.devdax_files.iter().filter(|(p, _)| *p == parent).map(|&(_, id)| id).collect();
        self.devdax_files.extend(devdax.into_iter().map(|id| (child, id)));
    }

    /// An exit (or the end of the run): `proc`'s device files close.
    pub(super) fn exit(&mut self, proc: ProcId) {
        self.files.retain(|(p, _), _| *p != proc);
        self.devdax_files.retain(|(p, _)| *p != proc);
    }

    /// Every device file closes (at the end of a run, before the address
    /// spaces go).
    pub(super) fn close_all(&mut self) {
        self.files.clear();
        self.devdax_files.clear();
    }

    /// The end of the run: every device file closes, then the DAX image is
    /// removed.
    fn teardown(&mut self) {
        self.files.clear();
        if let Some((fs, path)) = self.dax.take() {
            drop(fs);
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for ModelDevices {
    fn drop(&mut self) {
        self.teardown();
    }
}
