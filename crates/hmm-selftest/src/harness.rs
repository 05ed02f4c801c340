//! The selftest harness, as `hmm-tests.c` sets it up: a machine (one
//! default-size hugetlb page reserved, THP on request), the dmirror module,
//! a process, one or two open devices, buffers of `int`s, the
//! `hmm_dmirror_cmd` wrapper and `fork` (spec §6.1).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hmm_dmirror::{Dmirror, DmirrorConfig, DmirrorFile, HmmDmirrorCmd};
use hmm_mm::{Kernel, KernelConfig, Mm, MmError, ThpMode};
use hmm_types::{Errno, MadviseAdvice, MapFlags, Prot, PAGE_SIZE};

use crate::ok;
use crate::verdict::{Fail, Verdict};

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

/// How the machine and module are set up for a run.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Load the coherent devices (2 and 3).
    pub coherent: bool,
    /// System RAM.
    pub ram_bytes: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Self { coherent: true, ram_bytes: 2 << 30 }
    }
}

/// A process of the test: an address space and the CPU acting on it.
#[derive(Clone, Debug)]
pub struct Process {
    /// Its address space.
    pub mm: Arc<Mm>,
}

fn mm_fail(what: &str, error: MmError) -> Fail {
    Fail::failed(format!("{what}: {error}"), file!(), line!())
}

impl Process {
    /// `mmap(NULL, len, prot, flags, -1, 0)`.
    pub fn mmap(&self, len: u64, prot: Prot, flags: MapFlags) -> Result<u64, Fail> {
        self.mm.mmap(0, len, prot, flags).map_err(|e| mm_fail("mmap", e))
    }
    /// `munmap`.
    pub fn munmap(&self, addr: u64, len: u64) -> Verdict {
        self.mm.munmap(addr, len).map_err(|e| mm_fail("munmap", e))
    }
    /// `mprotect`.
    pub fn mprotect(&self, addr: u64, len: u64, prot: Prot) -> Verdict {
        self.mm.mprotect(addr, len, prot).map_err(|e| mm_fail("mprotect", e))
    }
    /// `madvise`.
    pub fn madvise(&self, addr: u64, len: u64, advice: MadviseAdvice) -> Verdict {
        self.mm.madvise(addr, len, advice).map_err(|e| mm_fail("madvise", e))
    }
    /// Writes `n` ints from `va`, element `i` = `value(i)` (one CPU copy).
    pub fn write_ints(&self, va: u64, n: usize, value: impl Fn(usize) -> i32) -> Verdict {
        let bytes: Vec<u8> = (0..n).flat_map(|i| value(i).to_le_bytes()).collect();
        self.mm.write_bytes(va, &bytes).map_err(|e| mm_fail("CPU write", e))
    }
    /// Reads `n` ints from `va`.
    pub fn read_ints(&self, va: u64, n: usize) -> Result<Vec<i32>, Fail> {
        let mut bytes = vec![0u8; n * 4];
        self.mm.read_bytes(va, &mut bytes).map_err(|e| mm_fail("CPU read", e))?;
        Ok(bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }
    /// Reads one int, element `index` of the array at `va`.
    pub fn read_int(&self, va: u64, index: usize) -> Result<i32, Fail> {
        Ok(self.read_ints(va + index as u64 * 4, 1)?[0])
    }
    /// Adds one to element `index` atomically; returns the old value.
    pub fn increment_int(&self, va: u64, index: usize) -> Result<i32, Fail> {
        // The CPU's atomics work on u64: add to the right half.
        let at = va + index as u64 * 4;
        let word = at & !7;
        let shift = (at - word) * 8;
        let old = self.mm.atomic_fetch_add(word, 1 << shift).map_err(|e| mm_fail("CPU atomic add", e))?;
        Ok((old >> shift) as u32 as i32)
    }
}

/// Checks that `values[i] == expected(i)` for every `i`, naming the first
/// element that differs.
pub fn check_ints(what: &str, values: &[i32], expected: impl Fn(usize) -> i32) -> Verdict {
    if let Some((i, &v)) = values.iter().enumerate().find(|&(i, &v)| v != expected(i)) {
        return Err(Fail::failed(format!("{what}[{i}] = {v}, expected {}", expected(i)), file!(), line!()));
    }
    Ok(())
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

/// A child process after `fork`, as the child sees it.
#[derive(Debug)]
pub struct Child {
    /// The child's process.
    pub process: Process,
    /// The module, to open devices from the child.
    pub dmirror: Arc<Dmirror>,
    killed: Arc<AtomicBool>,
}

impl Child {
    /// True once the parent sent SIGKILL.
    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

/// How a child ended (`waitpid`'s status).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ExitStatus {
    /// `WIFEXITED`, with `WEXITSTATUS` and the failure that caused a
    /// non-zero status.
    Exited(i32, Option<String>),
    /// `WIFSIGNALED`, with `WTERMSIG`.
    Signaled(i32),
}

/// `SIGKILL`.
pub const SIGKILL: i32 = 9;

/// A forked child running in its own thread.
#[derive(Debug)]
pub struct ChildHandle {
    thread: std::thread::JoinHandle<ExitStatus>,
    killed: Arc<AtomicBool>,
}

impl ChildHandle {
    /// `kill(pid, SIGKILL)`.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
    }
    /// `waitpid(pid, &status, 0)`.
    pub fn wait(self) -> ExitStatus {
        self.thread.join().unwrap_or_else(|_| ExitStatus::Exited(134, Some("the child panicked".into())))
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
    /// Lines the test prints (kselftest's `# ...` output).
    notes: std::sync::Mutex<Vec<String>>,
}

impl Ctx {
    /// Sets up the fixture: boots a machine, loads the module, opens
    /// `devices` devices of the variant. Skips when the variant's devices
    /// do not exist.
    pub fn new(setup: &Setup, variant: Variant, devices: usize) -> Result<Self, Fail> {
        let config = KernelConfig {
            ram_bytes: setup.ram_bytes,
            thp: ThpMode::Madvise,
            use_huge_zero_page: true,
            hugetlb_2m_pages: 1,
            hugetlb_1g_pages: 0,
            swap_pages: 0,
        };
        let kernel = Kernel::new(config).map_err(|e| mm_fail("boot", e))?;
        let module = DmirrorConfig { coherent: setup.coherent, ..DmirrorConfig::default() };
        let dmirror = Arc::new(
            Dmirror::probe(&kernel, module).map_err(|e| Fail::failed(format!("probe: {e}"), file!(), line!()))?,
        );
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
            notes: std::sync::Mutex::new(Vec::new()),
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

    /// The test's teardown: every file closed (`close() == 0`), then the
    /// process exits.
    pub fn teardown(mut self) {
        drop(self.fd1.take());
        drop(self.fd.take());
        self.process.mm.exit();
    }

    /// `fork()`: the child runs `child` in its own thread; the parent gets a
    /// handle to wait for (or kill) it.
    pub fn fork(&self, child: impl FnOnce(&Child) -> Verdict + Send + 'static) -> Result<ChildHandle, Fail> {
        let mm = ok!(self.process.mm.fork());
        let killed = Arc::new(AtomicBool::new(false));
        let me = Child { process: Process { mm }, dmirror: self.dmirror.clone(), killed: killed.clone() };
        let thread = std::thread::Builder::new()
            .name("hmm-selftest child".into())
            .spawn(move || {
                let verdict = child(&me);
                let status = if me.killed() {
                    ExitStatus::Signaled(SIGKILL)
                } else {
                    match verdict {
                        Ok(()) => ExitStatus::Exited(0, None),
                        Err(fail) => ExitStatus::Exited(1, Some(fail.to_string())),
                    }
                };
                me.process.mm.exit();
                status
            })
            .map_err(|e| Fail::failed(format!("fork: {e}"), file!(), line!()))?;
        Ok(ChildHandle { thread, killed })
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

/// Checks that a child exited with status 0.
pub fn check_exited_ok(status: &ExitStatus) -> Verdict {
    match status {
        ExitStatus::Exited(0, _) => Ok(()),
        ExitStatus::Exited(code, why) => {
            Err(Fail::failed(format!("child exited {code}: {}", why.as_deref().unwrap_or("?")), file!(), line!()))
        }
        ExitStatus::Signaled(sig) => Err(Fail::failed(format!("child killed by signal {sig}"), file!(), line!())),
    }
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
