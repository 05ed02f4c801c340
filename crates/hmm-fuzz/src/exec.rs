//! Executing operations: the [`World`] a sequence runs in (one machine, the
//! dmirror module, processes, open device files, pins, tmpfs files) and the
//! call each [`Op`] makes. Indices in an op are taken modulo what exists;
//! an op whose target does not exist is skipped (harness bookkeeping, not
//! an API call).
//! Nothing is excluded: every shape the strategies generate is called.

use std::sync::Arc;

use hmm::IntervalNotifier;
use hmm_dmirror::uapi::{
    HMM_DMIRROR_CHECK_EXCLUSIVE, HMM_DMIRROR_EXCLUSIVE, HMM_DMIRROR_FLAGS, HMM_DMIRROR_FLAG_FAIL_ALLOC,
    HMM_DMIRROR_MIGRATE_TO_DEV, HMM_DMIRROR_MIGRATE_TO_SYS, HMM_DMIRROR_READ, HMM_DMIRROR_RELEASE,
    HMM_DMIRROR_SNAPSHOT, HMM_DMIRROR_WRITE,
};
use hmm_dmirror::{Dmirror, DmirrorConfig, DmirrorFile, HmmDmirrorCmd};
use hmm_mm::fs::File;
use hmm_mm::gup::{FollFlags, PinnedPages};
use hmm_mm::{Kernel, KernelConfig, Mm, ThpMode};
use hmm_types::{Errno, MapFlags, MremapFlags, PageSize, Pfn, Prot, PAGE_SHIFT, PAGE_SIZE};

mod range_fault;

use range_fault::PlainMirror;

use crate::ops::{Addr, Count, DmCmd, Len, MapKind, Op, Placement, BUFFER, BUFFER_PAGES, MAX_TARGETS};

/// What a call returned.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Success.
    Ok,
    /// A typed error: its errno and message.
    Err(Errno, String),
    /// Not called: the target does not exist.
    Skipped(&'static str),
    /// The call returned, but what it returned breaks an invariant.
    Violation(String),
}

impl Outcome {
    fn of<E: core::fmt::Display>(result: Result<(), E>, errno: impl Fn(&E) -> Errno) -> Self {
        match result {
            Ok(()) => Self::Ok,
            Err(error) => Self::Err(errno(&error), error.to_string()),
        }
    }
    fn mm(result: Result<(), hmm_mm::MmError>) -> Self {
        Self::of(result, hmm_mm::MmError::errno)
    }
    fn dm(result: Result<(), hmm_dmirror::DmirrorError>) -> Self {
        Self::of(result, hmm_dmirror::DmirrorError::errno)
    }
}

/// One process of the world.
#[derive(Debug)]
pub struct Proc {
    /// Its address space.
    pub mm: Arc<Mm>,
    /// False once it exited.
    pub alive: bool,
    notifier: Option<(Arc<PlainMirror>, Arc<IntervalNotifier>)>,
}

/// An open device file and the process that opened it.
#[derive(Debug)]
pub struct OpenFile {
    /// The file.
    pub file: DmirrorFile,
    /// Index of the opener in [`World::procs`].
    pub proc: usize,
}

/// Processes a world holds at most (forks beyond are skipped).
const MAX_PROCS: usize = 6;
/// Pages the fuzzer asks `range_fault` for at most with a matching array.
const MAX_RANGE_PAGES: u64 = 4096;

/// Everything a sequence runs against.
#[derive(Debug)]
pub struct World {
    /// The machine.
    pub kernel: Arc<Kernel>,
    /// The dmirror module (devices 0-1 private, 2-3 coherent).
    pub dmirror: Dmirror,
    /// Processes, in creation order.
    pub procs: Vec<Proc>,
    /// The process calls are made from.
    pub current: usize,
    /// Open device files.
    pub files: Vec<OpenFile>,
    /// Pinned page sets.
    pub pins: Vec<PinnedPages>,
    /// Open tmpfs files.
    pub tmpfs: Vec<File>,
    /// Free RAM frames right after boot.
    pub baseline_free: u64,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// Boots a machine (64 MiB, THP always, four 2 MiB hugetlb pages, swap),
    /// loads dmirror with small device memories, creates the first process
    /// with its user buffer and [`MAX_TARGETS`] tmpfs files.
    pub fn new() -> Self {
        let config = KernelConfig {
            ram_bytes: 64 << 20,
            thp: ThpMode::Always,
            hugetlb_2m_pages: 4,
            swap_pages: 2048,
            ..KernelConfig::default()
        };
        let kernel = Kernel::new(config).expect("a valid machine");
        let dmirror = Dmirror::probe(&kernel, DmirrorConfig { coherent: true, chunk_pages: 1024, max_chunks: 2 })
            .expect("the module loads");
        let baseline_free = kernel.phys().free_frames();
        let mm = kernel.create_mm().expect("a first process");
        let buffer_len = u64::from(BUFFER_PAGES) * PAGE_SIZE;
        let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
        mm.mmap(BUFFER, buffer_len, Prot::RW, flags).expect("the user buffer maps");
        let tmpfs = (0..MAX_TARGETS)
            .map(|i| kernel.tmpfs().create(&format!("f{i}")).expect("a tmpfs file"))
            .collect::<Vec<_>>();
        for file in &tmpfs {
            file.ftruncate(64 * PAGE_SIZE).expect("a tmpfs file grows");
        }
        Self {
            kernel,
            dmirror,
            procs: vec![Proc { mm, alive: true, notifier: None }],
            current: 0,
            files: Vec::new(),
            pins: Vec::new(),
            tmpfs,
            baseline_free,
        }
    }

    /// The current process's address space.
    pub fn mm(&self) -> &Arc<Mm> {
        &self.procs[self.current].mm
    }

    /// Makes the call `op` describes.
    pub fn execute(&mut self, op: &Op) -> Outcome {
        match *op {
            Op::Mmap { addr, len, prot, kind, place, populate } => self.mmap(addr, len, prot, kind, place, populate),
            Op::Munmap { addr, len } => Outcome::mm(self.mm().munmap(addr.resolve(), len.resolve())),
            Op::Mprotect { addr, len, prot } => {
                Outcome::mm(self.mm().mprotect(addr.resolve(), len.resolve(), Prot::from_bits_retain(prot)))
            }
            Op::Madvise { addr, len, advice } => Outcome::mm(self.mm().madvise(addr.resolve(), len.resolve(), advice)),
            Op::Mremap { addr, old_len, new_len, flags, new_addr } => {
                let flags = MremapFlags::from_bits_retain(flags);
                let moved =
                    self.mm().mremap(addr.resolve(), old_len.resolve(), new_len.resolve(), flags, new_addr.resolve());
                Outcome::mm(moved.map(drop))
            }
            Op::Fork => self.fork(),
            Op::Exit(n) => self.exit(usize::from(n) % self.procs.len()),
            Op::Switch(n) => {
                self.current = usize::from(n) % self.procs.len();
                Outcome::Skipped("switch")
            }
            Op::Read { addr, len } => {
                let mut buf = vec![0u8; usize::from(len)];
                Outcome::mm(self.mm().read_bytes(addr.resolve(), &mut buf))
            }
            Op::Write { addr, len, byte } => {
                Outcome::mm(self.mm().write_bytes(addr.resolve(), &vec![byte; usize::from(len)]))
            }
            Op::Atomic { addr, cas } => {
                let va = addr.resolve();
                let done = if cas {
                    self.mm().atomic_compare_exchange(va, 0, 0x5a5a).map(drop)
                } else {
                    self.mm().atomic_fetch_add(va, 1).map(drop)
                };
                Outcome::mm(done)
            }
            Op::Gup { addr, npages, write } => {
                let flags = if write { FollFlags::WRITE } else { FollFlags::empty() };
                let pages = self.mm().get_user_pages(addr.resolve(), npages.resolve(), flags);
                Outcome::mm(pages.map(|pfns| pfns.into_iter().for_each(|pfn| self.kernel.phys().put(pfn))))
            }
            Op::Pin { addr, npages, write, longterm } => {
                let mut flags = if write { FollFlags::WRITE } else { FollFlags::empty() };
                flags.set(FollFlags::LONGTERM, longterm);
                match self.mm().pin_user_pages(addr.resolve(), npages.resolve(), flags) {
                    Ok(pins) => {
                        self.pins.push(pins);
                        Outcome::Ok
                    }
                    Err(error) => Outcome::mm(Err(error)),
                }
            }
            Op::Unpin(n) => {
                if self.pins.is_empty() {
                    return Outcome::Skipped("no pins");
                }
                let index = usize::from(n) % self.pins.len();
                self.pins.remove(index).unpin();
                Outcome::Ok
            }
            Op::RangeFault { addr, npages, default_flags, mask, input, owner } => {
                self.range_fault(addr, npages, default_flags, mask, input, owner)
            }
            Op::DmOpen(minor) => {
                let device = match self.dmirror.device(usize::from(minor)) {
                    Ok(device) => device.clone(),
                    Err(errno) => return Outcome::Err(errno, "no such device".into()),
                };
                match device.open(self.mm()) {
                    Ok(file) => {
                        if self.files.len() >= usize::from(MAX_TARGETS) {
                            self.files.remove(0);
                        }
                        self.files.push(OpenFile { file, proc: self.current });
                        Outcome::Ok
                    }
                    Err(errno) => Outcome::Err(errno, "open failed".into()),
                }
            }
            Op::DmClose(n) => {
                if self.files.is_empty() {
                    return Outcome::Skipped("no open file");
                }
                let index = usize::from(n) % self.files.len();
                self.files.remove(index).file.close();
                Outcome::Ok
            }
            Op::Dm { file, cmd, addr, npages, ptr } => self.dm(file, cmd, addr, npages, ptr),
            Op::DmMmap { file, npages, shared } => {
                let Some(open) = self.file(file) else { return Outcome::Skipped("no open file") };
                let flags = if shared { MapFlags::SHARED } else { MapFlags::PRIVATE };
                Outcome::dm(open.file.mmap(npages.resolve(), Prot::RW, flags).map(drop))
            }
            Op::PfnMap { pfn, npages } => {
                let len = u64::from(npages.max(1)) * PAGE_SIZE;
                match self.mm().mmap_pfn_range(len, Prot::READ, Pfn(pfn)) {
                    Ok(va) => {
                        let mut byte = [0u8; 1];
                        Outcome::mm(self.mm().read_bytes(va, &mut byte))
                    }
                    Err(error) => Outcome::mm(Err(error)),
                }
            }
            Op::Truncate { file, size } => Outcome::mm(self.tmpfs_file(file).ftruncate(size.resolve())),
            Op::Punch { file, offset, len } => {
                Outcome::mm(self.tmpfs_file(file).punch_hole(offset.resolve(), len.resolve()))
            }
            Op::FileWrite { file, page, byte } => {
                let written = self.tmpfs_file(file).pwrite(u64::from(page) * PAGE_SIZE, &[byte; PAGE_SIZE as usize]);
                Outcome::mm(written.map(drop))
            }
        }
    }

    fn file(&self, n: u8) -> Option<&OpenFile> {
        (!self.files.is_empty()).then(|| &self.files[usize::from(n) % self.files.len()])
    }

    fn tmpfs_file(&self, n: u8) -> &File {
        &self.tmpfs[usize::from(n) % self.tmpfs.len()]
    }

    fn mmap(&self, addr: Addr, len: Len, prot: u32, kind: MapKind, place: Placement, populate: bool) -> Outcome {
        let (addr, len, prot) = (addr.resolve(), len.resolve(), Prot::from_bits_retain(prot));
        let mut extra = match place {
            Placement::Hint => MapFlags::empty(),
            Placement::Fixed => MapFlags::FIXED,
            Placement::NoReplace => MapFlags::FIXED_NOREPLACE,
        };
        extra.set(MapFlags::POPULATE, populate);
        let anon = MapFlags::ANONYMOUS | extra;
        let sharing = |shared: bool| if shared { MapFlags::SHARED } else { MapFlags::PRIVATE };
        let mm = self.mm();
        let mapped = match kind {
            MapKind::AnonPrivate => mm.mmap(addr, len, prot, anon | MapFlags::PRIVATE),
            MapKind::AnonShared => mm.mmap(addr, len, prot, anon | MapFlags::SHARED),
            MapKind::Hugetlb { shared } => mm.mmap(addr, len, prot, anon | MapFlags::HUGETLB | sharing(shared)),
            MapKind::Hugetlb1G => {
                mm.mmap(addr, len, prot, anon | MapFlags::HUGETLB | MapFlags::HUGE_1GB | MapFlags::PRIVATE)
            }
            MapKind::BadType { validate } => {
                let flags =
                    if validate { anon | MapFlags::SHARED_VALIDATE | MapFlags::from_bits_retain(0x400) } else { anon };
                mm.mmap(addr, len, prot, flags)
            }
            MapKind::File { file, shared, pgoff } => {
                let offset = pgoff.resolve().wrapping_shl(PAGE_SHIFT);
                mm.mmap_file(addr, len, prot, extra | sharing(shared), self.tmpfs_file(file), offset)
            }
        };
        Outcome::mm(mapped.map(drop))
    }

    fn fork(&mut self) -> Outcome {
        if self.procs.len() >= MAX_PROCS {
            return Outcome::Skipped("too many processes");
        }
        match self.mm().fork() {
            Ok(child) => {
                self.procs.push(Proc { mm: child, alive: true, notifier: None });
                self.current = self.procs.len() - 1;
                Outcome::Ok
            }
            Err(error) => Outcome::mm(Err(error)),
        }
    }

    /// Process `index` exits (its notifier, if any, goes first).
    pub fn exit(&mut self, index: usize) -> Outcome {
        let proc = &mut self.procs[index];
        if !proc.alive {
            return Outcome::Skipped("already exited");
        }
        if let Some((_, notifier)) = proc.notifier.take() {
            notifier.remove();
        }
        proc.alive = false;
        proc.mm.exit();
        Outcome::Ok
    }

    fn dm(&mut self, file: u8, cmd: DmCmd, addr: Addr, npages: Count, ptr: Addr) -> Outcome {
        let Some(open) = self.file(file) else { return Outcome::Skipped("no open file") };
        let request = match cmd {
            DmCmd::Read => HMM_DMIRROR_READ,
            DmCmd::Write => HMM_DMIRROR_WRITE,
            DmCmd::MigrateToDev => HMM_DMIRROR_MIGRATE_TO_DEV,
            DmCmd::MigrateToSys => HMM_DMIRROR_MIGRATE_TO_SYS,
            DmCmd::Snapshot => HMM_DMIRROR_SNAPSHOT,
            DmCmd::Exclusive => HMM_DMIRROR_EXCLUSIVE,
            DmCmd::CheckExclusive => HMM_DMIRROR_CHECK_EXCLUSIVE,
            DmCmd::Release => HMM_DMIRROR_RELEASE,
            DmCmd::FailAlloc => HMM_DMIRROR_FLAGS,
            DmCmd::Unknown => HMM_DMIRROR_FLAGS + 0x40,
        };
        let npages = if cmd == DmCmd::FailAlloc { HMM_DMIRROR_FLAG_FAIL_ALLOC } else { npages.resolve() };
        let mut block = HmmDmirrorCmd { addr: addr.resolve(), ptr: ptr.resolve(), npages, cpages: 0, faults: 0 };
        Outcome::dm(open.file.ioctl(request, &mut block))
    }

    /// Ends the world as the processes' deaths would, in Linux's order
    /// (`do_exit`: `exit_mm` before `exit_files`): pins dropped, every
    /// address space torn down, then device files closed, processes
    /// dropped, tmpfs files closed and unlinked. Only the accounting may be
    /// looked at afterwards.
    pub fn teardown(&mut self) {
        self.pins.clear();
        for index in 0..self.procs.len() {
            let _ = self.exit(index);
        }
        for open in self.files.drain(..) {
            open.file.close();
        }
        // The last reference to an address space frees its root table.
        self.procs.clear();
        self.current = 0;
        self.tmpfs.clear();
        for i in 0..MAX_TARGETS {
            let _ = self.kernel.tmpfs().unlink(&format!("f{i}"));
        }
    }

    /// Free 2 MiB hugetlb pages and the pool size.
    pub fn hugetlb_free(&self) -> (u64, u64) {
        let stats = self.kernel.phys().hugetlb_stats(PageSize::Size2M);
        (stats.free, stats.total)
    }
}
