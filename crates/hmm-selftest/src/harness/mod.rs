//! The selftest harness, as `hmm-tests.c` sets it up: a machine (one
//! default-size hugetlb page reserved, the run's THP mode), the dmirror
//! module, a process, one or two open devices, buffers of `int`s, the
//! `hmm_dmirror_cmd` wrapper, `hmm_create_file` on the run's `/tmp` and
//! `fork` (spec §6.1).

use std::sync::Arc;

use hmm_dmirror::{Dmirror, DmirrorConfig, DmirrorFile, HmmDmirrorCmd};
use hmm_mm::{Kernel, KernelConfig, ThpMode};
use hmm_types::{Errno, MapFlags, Prot, PAGE_SIZE};

use crate::ok;
use crate::verdict::{Fail, Verdict};

mod fork;
mod process;
mod tmpfile;

pub use fork::{check_exited_ok, Child, ChildHandle, ExitStatus, SIGKILL};
use process::mm_fail;
pub use process::{check_ints, Process};
pub(crate) use tmpfile::Backing;
pub use tmpfile::FileSystem;
use tmpfile::Tmp;

/// `HMM_BUFFER_SIZE`.
pub const HMM_BUFFER_SIZE: u64 = 1024 << 12;
/// `TWOMEG`.
pub const TWOMEG: u64 = 1 << 21;
/// `NTIMES`.
pub const NTIMES: usize = 10;
/// `MAP_PRIVATE | MAP_ANONYMOUS`.
pub const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
/// `MAP_SHARED | MAP_ANONYMOUS`.
pub const SHARED_ANON: MapFlags = MapFlags::SHARED.union(MapFlags::ANONYMOUS);

/// The fixture variant: which memory the devices under test have.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Variant {
    /// `hmm_device_private` / `hmm2_device_private`: devices 0 and 1.
    DevicePrivate,
    /// `hmm_device_coherent` / `hmm2_device_coherent`: devices 2 and 3.
    DeviceCoherent,
}

impl Variant {
    /// Both, in Linux's order.
    pub const ALL: [Self; 2] = [Self::DevicePrivate, Self::DeviceCoherent];

    /// The variant's name as Linux prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::DevicePrivate => "device_private",
            Self::DeviceCoherent => "device_coherent",
        }
    }

    /// The first device number.
    pub fn first_device(self) -> usize {
        match self {
            Self::DevicePrivate => 0,
            Self::DeviceCoherent => 2,
        }
    }

    /// True for the private variant.
    pub fn is_private(self) -> bool {
        self == Self::DevicePrivate
    }
}

/// How the machine and module are set up for a run, as the reference
/// guest is configured before it runs `hmm-tests`.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Load the coherent devices (2 and 3).
    pub coherent: bool,
    /// System RAM.
    pub ram_bytes: u64,
    /// `/sys/kernel/mm/transparent_hugepage/enabled`. No test of
    /// `hmm-tests.c` reads it (`read_pmd_pagesize` reads `hpage_pmd_size`,
    /// there under every mode), so every test runs the same steps under
    /// every mode; what changes is what the kernel does with them.
    pub thp: ThpMode,
    /// What `/tmp` is, where the file tests make their file.
    pub fs: FileSystem,
    /// `/sys/kernel/debug/gup_test` exists (`CONFIG_GUP_TEST`, debugfs
    /// mounted); without it `hmm_gup_test` skips.
    pub gup_test: bool,
    /// One machine and one loaded module for every test of the run, as a
    /// guest runs `hmm-tests` (each test a new process): what a test leaves
    /// in the module (the layout of a coherent device's chunk after a
    /// RELEASE, its free lists) is what the next test finds. `None`: each
    /// test boots its own machine and loads its own module.
    pub shared: Option<Shared>,
}

/// The machine and module a run's tests share (`Setup::shared`).
#[derive(Clone, Debug)]
pub struct Shared {
    kernel: Arc<Kernel>,
    dmirror: Arc<Dmirror>,
}

impl Setup {
    /// This setup with one machine booted and the module loaded for all
    /// the tests run with it.
    pub fn with_shared_module(self) -> Result<Self, Fail> {
        let (kernel, dmirror) = self.boot()?;
        Ok(Self { shared: Some(Shared { kernel, dmirror }), ..self })
    }

    /// Boots a machine as configured and loads the module.
    fn boot(&self) -> Result<(Arc<Kernel>, Arc<Dmirror>), Fail> {
        let config = KernelConfig {
            ram_bytes: self.ram_bytes,
            thp: self.thp,
            use_huge_zero_page: true,
            hugetlb_2m_pages: 1,
            hugetlb_1g_pages: 0,
            swap_pages: 0,
            ..KernelConfig::default()
        };
        let kernel = Kernel::new(config).map_err(|e| mm_fail("boot", e))?;
        let module = DmirrorConfig { coherent: self.coherent, ..DmirrorConfig::default() };
        let dmirror = Arc::new(
            Dmirror::probe(&kernel, module).map_err(|e| Fail::failed(format!("probe: {e}"), file!(), line!()))?,
        );
        Ok((kernel, dmirror))
    }
}

impl Default for Setup {
    /// Linux's defaults for the selftest's machine: THP `madvise` (as this
    /// host and Debian ship), `/tmp` on tmpfs.
    fn default() -> Self {
        Self {
            coherent: true,
            ram_bytes: 2 << 30,
            thp: ThpMode::Madvise,
            fs: FileSystem::Tmpfs,
            gup_test: true,
            shared: None,
        }
    }
}

/// A test buffer (`struct hmm_buffer`): `ptr` is the memory under test,
/// `mirror` the device-side user buffer, both in the process.
#[derive(Clone, Copy, Debug)]
pub struct HmmBuffer {
    /// The memory the device accesses.
    pub ptr: u64,
    /// Where data and results are copied to and from.
    pub mirror: u64,
    /// Bytes.
    pub size: u64,
    /// `cpages` of the last successful command.
    pub cpages: u64,
    /// `faults` of the last successful command.
    pub faults: u64,
}

impl HmmBuffer {
    /// Ints in the buffer.
    pub fn ints(&self) -> usize {
        (self.size / 4) as usize
    }
}

/// One test's world: the machine, the module, the process and its open
/// devices (fixture `hmm` has `fd`, `hmm2` also `fd1`).
#[derive(Debug)]
pub struct Ctx {
    /// The machine.
    pub kernel: Arc<Kernel>,
    /// The loaded module.
    pub dmirror: Arc<Dmirror>,
    /// The test process.
    pub process: Process,
    /// The variant under test.
    pub variant: Variant,
    /// The first open device.
    pub fd: Option<DmirrorFile>,
    /// The second open device (fixture `hmm2`).
    pub fd1: Option<DmirrorFile>,
    /// `sysconf(_SC_PAGE_SIZE)`.
    pub page_size: u64,
    /// `ffs(page_size) - 1`.
    pub page_shift: u32,
    /// The `gup_test` driver can be opened.
    pub gup_test: bool,
    /// Lines the test prints (kselftest's `# ...` output).
    notes: std::sync::Mutex<Vec<String>>,
    /// `/tmp`.
    tmp: Tmp,
}

impl Ctx {
    /// Sets up the fixture: boots a machine, loads the module, opens
    /// `devices` devices of the variant. Skips when the variant's devices
    /// do not exist.
    pub fn new(setup: &Setup, variant: Variant, devices: usize) -> Result<Self, Fail> {
        let (kernel, dmirror) = match &setup.shared {
            Some(shared) => (shared.kernel.clone(), shared.dmirror.clone()),
            None => setup.boot()?,
        };
        let mm = kernel.create_mm().map_err(|e| mm_fail("create the process", e))?;
        let process = Process { mm };
        let mut files = Vec::new();
        for i in 0..devices {
            let device = match dmirror.device(variant.first_device() + i) {
                Ok(device) => device,
                Err(_) if variant == Variant::DeviceCoherent => {
                    process.mm.exit();
                    return Err(Fail::Skip("DEVICE_COHERENT not available".into()));
                }
                Err(e) => return Err(Fail::failed(format!("open: {e}"), file!(), line!())),
            };
            files.push(device.open(&process.mm).map_err(|e| Fail::failed(format!("open: {e}"), file!(), line!()))?);
        }
        let mut files = files.into_iter();
        Ok(Self {
            kernel,
            dmirror,
            process,
            variant,
            fd: files.next(),
            fd1: files.next(),
            page_size: PAGE_SIZE,
            page_shift: PAGE_SIZE.trailing_zeros(),
            gup_test: setup.gup_test,
            notes: std::sync::Mutex::new(Vec::new()),
            tmp: Tmp::new(setup.fs),
        })
    }

    /// Prints a line with the test's result.
    pub fn note(&self, line: String) {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    /// The lines printed so far.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The first device.
    pub fn fd(&self) -> &DmirrorFile {
        self.fd.as_ref().expect("the fixture opens at least one device")
    }

    /// The second device (fixture `hmm2`).
    pub fn fd1(&self) -> &DmirrorFile {
        self.fd1.as_ref().expect("fixture hmm2 opens two devices")
    }

    /// The CPU of the test process.
    pub fn cpu(&self) -> &Process {
        &self.process
    }

    /// `hmm_buffer` with `ptr` from `mmap(size, prot, flags)` and a mirror
    /// of `size` bytes.
    pub fn buffer(&self, size: u64, prot: Prot, flags: MapFlags) -> Result<HmmBuffer, Fail> {
        let ptr = self.process.mmap(size, prot, flags)?;
        self.buffer_at(ptr, size)
    }

    /// `hmm_buffer` over memory already mapped at `ptr`.
    pub fn buffer_at(&self, ptr: u64, size: u64) -> Result<HmmBuffer, Fail> {
        let mirror = self.process.mmap(size, Prot::RW, ANON)?;
        Ok(HmmBuffer { ptr, mirror, size, cpages: 0, faults: 0 })
    }

    /// `hmm_create_file(size)`: an unnamed file of `size` bytes in the
    /// run's `/tmp` (tmpfs or fs-dax).
    pub fn create_file(&self, size: u64) -> Result<hmm_mm::fs::File, Fail> {
        self.tmp.create_file(&self.kernel, size)
    }

    /// What `/tmp` is in this run.
    pub fn tmp_fs(&self) -> FileSystem {
        self.tmp.fs()
    }

    /// The test's teardown: every file closed (`close() == 0`), then the
    /// process exits, then `/tmp`'s DAX file system (if any) goes.
    pub fn teardown(mut self) {
        drop(self.fd1.take());
        drop(self.fd.take());
        self.process.mm.exit();
        self.tmp.unmount();
    }

    /// `fork()`: the child runs `child` in its own thread; the parent gets a
    /// handle to wait for (or kill) it.
    pub fn fork(&self, child: impl FnOnce(&Child) -> Verdict + Send + 'static) -> Result<ChildHandle, Fail> {
        let mm = ok!(self.process.mm.fork());
        fork::spawn(Process { mm }, self.dmirror.clone(), child)
    }
}

/// `hmm_dmirror_cmd(fd, request, buffer, npages)`: the command on
/// `buffer->ptr` with `buffer->mirror` as the user buffer; on success
/// `cpages` and `faults` are copied into the buffer; on failure the errno.
pub fn hmm_dmirror_cmd(fd: &DmirrorFile, request: u64, buffer: &mut HmmBuffer, npages: u64) -> Result<(), Errno> {
    let mut cmd = HmmDmirrorCmd { addr: buffer.ptr, ptr: buffer.mirror, npages, cpages: 0, faults: 0 };
    fd.ioctl(request, &mut cmd).map_err(|e| e.errno())?;
    buffer.cpages = cmd.cpages;
    buffer.faults = cmd.faults;
    Ok(())
}

/// `hmm_migrate_sys_to_dev`.
pub fn hmm_migrate_sys_to_dev(fd: &DmirrorFile, buffer: &mut HmmBuffer, npages: u64) -> Result<(), Errno> {
    hmm_dmirror_cmd(fd, hmm_dmirror::uapi::HMM_DMIRROR_MIGRATE_TO_DEV, buffer, npages)
}

/// `hmm_migrate_dev_to_sys`.
pub fn hmm_migrate_dev_to_sys(fd: &DmirrorFile, buffer: &mut HmmBuffer, npages: u64) -> Result<(), Errno> {
    hmm_dmirror_cmd(fd, hmm_dmirror::uapi::HMM_DMIRROR_MIGRATE_TO_SYS, buffer, npages)
}

/// The PMD-aligned window of `size` bytes inside `[start, start + 2 *
/// size)` (how the THP tests align their buffers).
pub fn align_window(start: u64, size: u64) -> u64 {
    start.next_multiple_of(size)
}

/// `read_pmd_pagesize()`.
pub fn pmd_pagesize() -> u64 {
    TWOMEG
}

/// Checks a command returned 0 (failures name the caller's line).
#[track_caller]
pub fn check_ok(result: Result<(), Errno>) -> Verdict {
    match result {
        Ok(()) => Ok(()),
        Err(errno) => {
            let at = std::panic::Location::caller();
            Err(Fail::failed(format!("the command failed: {errno}"), at.file(), at.line()))
        }
    }
}
