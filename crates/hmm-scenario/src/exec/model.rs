//! The model executor: each scenario on a fresh [`Kernel`] configured like
//! the host (THP policy, huge zero page, hugetlb pool, no swap), each
//! process an [`Mm`] with a recording [`MmuNotifier`] subscribed through
//! the public API, so `hmm run` can show every invalidation.
//!
//! The processes and the call dispatch are here; beside them `config`
//! the machine matching this host, `fork` fork (on a thread with
//! EVENT_FORK), `files` the file calls (memfd,
//! pread/pwrite, ftruncate, fallocate, close), `observe` what `maps` and
//! `pagemap` report.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use hmm_mm::fs::File;
use hmm_mm::{Kernel, KernelConfig, Mm, MmError};
use hmm_types::{Errno, MadviseAdvice, MapFlags, MmuNotifier, MremapFlags, NotifierRange, Prot};

use super::model_device::ModelDevices;
use fork::PendingFork;

mod config;
mod files;
mod fork;
mod observe;

use super::{Backend, Call, Capability, ExecError, Executor, FileId, ProcId};
use crate::lang::ast::Scenario;
use crate::observe::{InvalidationView, Outcome, Trace};
pub use config::host_like_config;

/// Most pages one `pagemap` observation reports.
pub const MAX_PAGEMAP_PAGES: u64 = 1 << 16;

/// Records the invalidations of one process's address space.
struct Recorder {
    proc: ProcId,
    log: Arc<Mutex<Vec<(ProcId, NotifierRange)>>>,
}

impl MmuNotifier for Recorder {
    fn invalidate_range_start(&self, range: &NotifierRange) -> Result<(), Errno> {
        self.log.lock().push((self.proc, *range));
        Ok(())
    }
    fn invalidate_range_end(&self, _range: &NotifierRange) {}
}

struct Proc {
    mm: Arc<Mm>,
    files: HashMap<FileId, File>,
    /// userfaultfds and accesses on threads (`model_uffd.rs`).
    uffd: super::model_uffd::UffdState,
}

/// The model behind the [`Backend`] trait.
pub struct ModelBackend {
    kernel: Arc<Kernel>,
    procs: HashMap<ProcId, Proc>,
    /// Inode id → the scenario's file name, for `maps`.
    names: HashMap<u64, String>,
    log: Arc<Mutex<Vec<(ProcId, NotifierRange)>>>,
    /// The test devices and fs-dax files (`model_device.rs`).
    devices: ModelDevices,
    /// The open `gup_test` files (`model_pin.rs`).
    pins: super::model_pin::ModelPins,
    /// Forks waiting for their FORK event to be read: the child process
    /// exists once the fork returns.
    pending_forks: Vec<PendingFork>,
}

impl core::fmt::Debug for ModelBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ModelBackend").field("procs", &self.procs.len()).finish_non_exhaustive()
    }
}

impl ModelBackend {
    /// A fresh machine with one process.
    pub fn new(config: KernelConfig) -> Result<Self, ExecError> {
        let kernel = Kernel::new(config).map_err(|e| ExecError::Model(e.to_string()))?;
        let mm = kernel.create_mm().map_err(|e| ExecError::Model(e.to_string()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        mm.register_notifier(Arc::new(Recorder { proc: 0, log: log.clone() }));
        let procs = HashMap::from([(0, Proc { mm, files: HashMap::new(), uffd: Default::default() })]);
        Ok(Self {
            kernel,
            procs,
            names: HashMap::new(),
            log,
            devices: ModelDevices::default(),
            pending_forks: Vec::new(),
            pins: Default::default(),
        })
    }

    fn proc(&mut self, proc: ProcId) -> &mut Proc {
        self.procs.get_mut(&proc).expect("the interpreter only names live processes")
    }
}

/// A system call's error: its errno.
fn errno(e: MmError) -> Outcome {
    Outcome::Errno(e.errno() as i32)
}

/// A CPU access's error: a fault is a signal, not an errno.
fn access(e: MmError) -> Outcome {
    match e {
        MmError::Fault { .. } => Outcome::Fault,
        other => errno(other),
    }
}

fn done(r: Result<(), MmError>) -> Outcome {
    r.map_or_else(errno, |()| Outcome::Ok)
}

/// munmap, madvise or mremap: the calls that may send a userfaultfd
/// event and wait until the monitor read it.
fn address_call(mm: &Arc<Mm>, call: &Call) -> Outcome {
    let done = |r: Result<(), hmm_mm::MmError>| r.map_or_else(errno, |()| Outcome::Ok);
    match *call {
        Call::Munmap { addr, len } => done(mm.munmap(addr, len)),
        Call::Madvise { addr, len, advice } => match MadviseAdvice::from_raw(advice) {
            Ok(advice) => done(mm.madvise(addr, len, advice)),
            Err(e) => Outcome::Errno(e as i32),
        },
        Call::Mremap { old, old_len, new_len, flags, new_addr } => match MremapFlags::from_bits(flags) {
            Some(flags) => mm.mremap(old, old_len, new_len, flags, new_addr).map_or_else(errno, Outcome::Addr),
            None => Outcome::Errno(Errno::Inval as i32),
        },
        _ => unreachable!("only address calls come here"),
    }
}

impl Backend for ModelBackend {
    fn set_window(&mut self, _base: u64, _len: u64) -> Result<(), ExecError> {
        Ok(())
    }

    fn call(&mut self, proc: ProcId, call: &Call) -> Outcome {
        self.adopt_forks();
        let Some(p) = self.procs.get_mut(&proc) else {
            return Outcome::Inconclusive("the fork child exists once its FORK event is read".into());
        };
        let mm = p.mm.clone();
        match *call {
            Call::Mmap { addr, len, prot, flags, file, offset } => {
                // Linux looks the descriptor up before anything else
                // (`ksys_mmap_pgoff`): without MAP_ANONYMOUS, fd -1 is EBADF.
                let devdax = file.and_then(|id| self.devices.devdax(proc, id));
                let file = file.and_then(|id| p.files.get(&id));
                if flags & MapFlags::ANONYMOUS.bits() == 0 && file.is_none() && devdax.is_none() {
                    return Outcome::Errno(Errno::BadF as i32);
                }
                // mmap validates no PROT_* bits, and judges unknown MAP_*
                // bits itself, in do_mmap's order.
                let (prot, flags) = (Prot::from_mmap_raw(prot), MapFlags::from_raw(flags));
                let result = if flags.contains(MapFlags::ANONYMOUS) {
                    // Linux ignores the descriptor of an anonymous mapping.
                    mm.mmap(addr, len, prot, flags)
                } else {
                    match (file, devdax) {
                        (Some(f), _) => mm.mmap_file(addr, len, prot, flags, f, offset),
                        (None, Some(dev)) => mm.mmap_devdax(addr, len, prot, flags, dev, offset),
                        (None, None) => return Outcome::Errno(Errno::BadF as i32),
                    }
                };
                result.map_or_else(errno, Outcome::Addr)
            }
            // With a userfaultfd, a call that may wait for the monitor to
            // read an event runs on a thread (`model_uffd::blocking_call`).
            Call::Munmap { .. } | Call::Madvise { .. } | Call::Mremap { .. } if p.uffd.has_uffd() => {
                let call = call.clone();
                super::model_uffd::blocking_call(&mut p.uffd, move || address_call(&mm, &call))
            }
            Call::Munmap { .. } | Call::Madvise { .. } | Call::Mremap { .. } => address_call(&mm, call),
            Call::Mprotect { addr, len, prot } => match Prot::from_raw(prot) {
                Ok(prot) => done(mm.mprotect(addr, len, prot)),
                Err(e) => Outcome::Errno(e as i32),
            },
            Call::Mseal { addr, len } => done(mm.mseal(addr, len, 0)),
            Call::Read { addr } if p.uffd.has_uffd() => super::model_uffd::access(&mut p.uffd, None, addr, move || {
                mm.read_u64(addr).map_or_else(access, Outcome::Value)
            }),
            Call::Write { addr, value } if p.uffd.has_uffd() => {
                super::model_uffd::access(&mut p.uffd, None, addr, move || {
                    mm.write_u64(addr, value).map_or_else(access, |()| Outcome::Ok)
                })
            }
            Call::Read { addr } => mm.read_u64(addr).map_or_else(access, Outcome::Value),
            // The host runner's plain store is process_vm_writev (the folio
            // ends dirty too); a store in a process with a userfaultfd is a
            // CPU store on both.
            Call::Write { addr, value } => mm.write_u64_remote(addr, value).map_or_else(access, |()| Outcome::Ok),
            Call::Access { id, addr, write } => {
                super::model_uffd::access(&mut p.uffd, Some(id), addr, move || match write {
                    None => mm.read_u64(addr).map_or_else(access, Outcome::Value),
                    Some(value) => mm.write_u64(addr, value).map_or_else(access, |()| Outcome::Ok),
                })
            }
            Call::Wait { id } => super::model_uffd::wait(&mut p.uffd, id),
            Call::Userfaultfd { id, features } => super::model_uffd::create(&mut p.uffd, &mm, id, features),
            Call::Uffd { uffd, ref op } => super::model_uffd::call(&mut p.uffd, uffd, op),
            Call::AtomicAdd { addr, value } => mm.atomic_fetch_add(addr, value).map_or_else(access, Outcome::Value),
            Call::Cmpxchg { addr, old, new } => match mm.atomic_compare_exchange(addr, old, new) {
                Ok(Ok(found) | Err(found)) => Outcome::Value(found),
                Err(e) => access(e),
            },
            Call::Fork { child } => self.fork(proc, child),
            Call::Exit => {
                p.files.clear();
                p.uffd.close_all();
                self.devices.exit(proc);
                self.pins.exit(proc);
                mm.exit();
                Outcome::Ok
            }
            Call::Memfd { .. }
            | Call::Fwrite { .. }
            | Call::Pread { .. }
            | Call::Ftruncate { .. }
            | Call::Fallocate { .. }
            | Call::Close { .. } => self.file_call(proc, call),
            Call::Device(ref call) => self.devices.call(&self.kernel, &mm, proc, call, &mut p.files, &mut self.names),
            Call::Pin(ref call) => self.pins.call(&mm, proc, call),
            Call::Smaps { addr } => super::model_pin::smaps(&mm, addr),
            Call::Maps { addr, len } => self.maps(&mm, addr, len),
            Call::Pagemap { addr, len } => observe::pagemap(&mm, addr, len),
            Call::Frame { addr } => match mm.pagemap_entry(addr) {
                Ok(word) if word & hmm_mm::proc_pagemap::PM_PRESENT != 0 => {
                    Outcome::Value(word & hmm_mm::proc_pagemap::PM_PFRAME_MASK)
                }
                Ok(_) => Outcome::Same(None),
                Err(e) => errno(e),
            },
        }
    }

    fn take_invalidations(&mut self, names: &[String]) -> Vec<InvalidationView> {
        self.log
            .lock()
            .drain(..)
            .map(|(proc, range)| {
                let name = names.get(proc).cloned().unwrap_or_else(|| format!("proc{proc}"));
                InvalidationView {
                    subscribers: vec![format!("recorder@{name}")],
                    proc: name,
                    event: range.event.kernel_name().to_string(),
                    start: range.start,
                    end: range.end,
                }
            })
            .collect()
    }
}

/// Runs scenarios on a fresh model machine each time.
#[derive(Debug, Clone)]
pub struct ModelExecutor {
    /// The machine each run boots.
    pub config: KernelConfig,
}

impl Default for ModelExecutor {
    fn default() -> Self {
        Self { config: host_like_config() }
    }
}

impl Executor for ModelExecutor {
    fn name(&self) -> &'static str {
        "model"
    }
    fn supports(&self, cap: Capability) -> bool {
        matches!(
            cap,
            Capability::Invalidations
                | Capability::Frames
                | Capability::Devices
                | Capability::Dax
                | Capability::UffdRwp
                | Capability::GupTest
                | Capability::DevDax
        )
    }
    fn run(&mut self, scenario: &Scenario) -> Result<Trace, ExecError> {
        let mut backend = ModelBackend::new(self.config.clone())?;
        let trace = super::run_scenario(scenario, &mut backend);
        // Tear the processes down so frames return before the next run
        // (device files first: closing one migrates device memory back).
        backend.devices.close_all();
        backend.pins.close_all();
        // Every process's userfaultfds first: a fork or access still waiting
        // on a context that several processes hold ends once all closed it.
        backend.pending_forks.clear();
        for proc in backend.procs.values_mut() {
            proc.uffd.close_files();
        }
        for proc in backend.procs.values_mut() {
            proc.uffd.join_all();
        }
        for proc in backend.procs.values() {
            proc.mm.exit();
        }
        trace
    }
}

#[cfg(test)]
mod tests {
    use hmm_mm::ThpMode;

    use super::*;
    use crate::lang::parse;

    fn run(text: &str) -> Trace {
        let scenario = parse("t.hmm", text).unwrap();
        let config = KernelConfig { ram_bytes: 64 << 20, thp: ThpMode::Never, ..KernelConfig::default() };
        ModelExecutor { config }.run(&scenario).unwrap()
    }

    #[test]
    fn cow_after_fork_shows_in_frames_and_invalidations() {
        let trace = run("a = mmap w 2p rw- private|anon|fixed\n\
             write a 7\n\
             c = fork\n\
             same a c a\n\
             expect same\n\
             proc c\n\
             write a 9\n\
             same a main a\n\
             expect different\n\
             proc main\n\
             read a\n\
             expect 0x7\n");
        assert_eq!(trace.failed_expectations().count(), 0, "{trace:#?}");
        let fork = &trace.records[2];
        assert!(fork.invalidations.iter().any(|i| i.event == "MMU_NOTIFY_PROTECTION_PAGE" && i.proc == "main"));
        let cow = &trace.records[6];
        assert!(cow.invalidations.iter().any(|i| i.event == "MMU_NOTIFY_CLEAR" && i.proc == "c"), "{cow:?}");
    }

    #[test]
    fn errors_faults_and_maps() {
        let trace = run("a = mmap w 4p r-- private|anon|fixed\n\
             write a 1\n\
             expect fault\n\
             munmap a+1 1p\n\
             expect EINVAL\n\
             mprotect a+1p 1p rw-\n\
             maps a 4p\n\
             expect w..w+0x1000 r--p 0x0 anon, w+0x1000..w+0x2000 rw-p 0x0 anon, w+0x2000..w+0x4000 r--p 0x0 anon\n\
             read a+1p\n\
             pagemap a 3p\n\
             expect 1*- 1*PZ 1*-\n\
             f = memfd data\n\
             ftruncate f 2p\n\
             b = mmap w+8p 2p rw- shared fd f 0x1000\n\
             maps b 1\n\
             expect w+0x8000..w+0xa000 rw-s 0x1000 file:data\n\
             close f\n\
             pread f 0\n\
             expect EBADF\n");
        assert_eq!(trace.failed_expectations().count(), 0, "{trace:#?}");
    }

    #[test]
    fn unbound_names_are_typed_errors() {
        let scenario = parse("t", "munmap nowhere 1p\n").unwrap();
        let err = ModelExecutor::default().run(&scenario).unwrap_err();
        assert!(matches!(err, ExecError::Unbound { line: 1, .. }), "{err}");
    }
}
