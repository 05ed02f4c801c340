//! Every raw system call of the host runner, and all of its `unsafe`.
//! The calls go through `syscall(2)` so the kernel sees exactly the
//! arguments a scenario gives (no libc wrapper checks or rewrites them);
//! memory is read and written with `process_vm_readv`/`process_vm_writev`
//! on our own pid, so a fault comes back as `EFAULT` instead of a signal;
//! atomics fault their page in with `MADV_POPULATE_WRITE` (a write fault,
//! as a locked instruction takes) and then run a real atomic instruction.
//!
//! libc rather than rustix/nix: those type their flags and lengths
//! (`NonZeroUsize`, closed bit sets), and a scenario must be able to pass
//! a zero length or unknown bits to see the kernel's errno.
//!
//! Linux: `mmap(2)`, `mremap(2)`, `mseal(2)`, `process_vm_readv(2)`,
//! `ioctl(PAGEMAP_SCAN)` (`fs/proc/task_mmu.c`).

#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::sync::atomic::AtomicU64;

/// `-errno` of the last failed call, as a positive number.
fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(ret: libc::c_long) -> Result<u64, i32> {
    if ret == -1 {
        Err(last_errno())
    } else {
        Ok(ret as u64)
    }
}

/// `mmap(addr, len, prot, flags, fd, offset)`.
pub fn mmap(addr: u64, len: u64, prot: u32, flags: u32, fd: RawFd, offset: u64) -> Result<u64, i32> {
    // SAFETY: the caller (calls.rs) only lets MAP_FIXED through inside the
    // scenario's window, which was checked free of this process's own
    // mappings, so no memory Rust knows of is replaced; a non-fixed call
    // only adds a mapping the kernel chooses.
    check(unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot as u64, flags as u64, fd as i64, offset) })
}

/// `munmap(addr, len)`.
pub fn munmap(addr: u64, len: u64) -> Result<u64, i32> {
    // SAFETY: calls.rs passes only ranges inside the window (which holds
    // only the scenario's mappings) or arguments the kernel rejects.
    check(unsafe { libc::syscall(libc::SYS_munmap, addr, len) })
}

/// `mprotect(addr, len, prot)`.
pub fn mprotect(addr: u64, len: u64, prot: u32) -> Result<u64, i32> {
    // SAFETY: as munmap: the window only, so no Rust-owned memory changes.
    check(unsafe { libc::syscall(libc::SYS_mprotect, addr, len, prot as u64) })
}

/// `madvise(addr, len, advice)`.
pub fn madvise(addr: u64, len: u64, advice: u32) -> Result<u64, i32> {
    // SAFETY: as munmap: the window only, so no Rust-owned memory changes.
    check(unsafe { libc::syscall(libc::SYS_madvise, addr, len, advice as u64) })
}

/// `mseal(addr, len, 0)` (x86-64 system call 462, Linux 6.10+).
pub fn mseal(addr: u64, len: u64) -> Result<u64, i32> {
    const SYS_MSEAL: libc::c_long = 462;
    // SAFETY: as munmap: the window only; sealing changes no memory, it
    // only forbids later changes to the scenario's own mappings.
    check(unsafe { libc::syscall(SYS_MSEAL, addr, len, 0u64) })
}

/// `mremap(old, old_len, new_len, flags, new_addr)`.
pub fn mremap(old: u64, old_len: u64, new_len: u64, flags: u32, new_addr: u64) -> Result<u64, i32> {
    // SAFETY: calls.rs checks the source (and a fixed destination) lie in
    // the window; a moving mremap otherwise lands where the kernel finds
    // free space.
    check(unsafe { libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags as u64, new_addr) })
}

fn iov(addr: u64, len: usize) -> libc::iovec {
    libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len }
}

/// Reads the 8 bytes at `addr` as a CPU load would: the read fault is
/// taken with `MADV_POPULATE_READ` (a failure is `EFAULT`, not a signal),
/// then a plain load runs on the mapped page. Not `process_vm_readv`
/// alone: it pins the page (FOLL_PIN), and pinning a COW-shared anonymous
/// page for reading unshares it, which a load never does. Where populate
/// refuses the VMA (`EINVAL`: no VM_READ, as a write-only mapping the CPU
/// can still read on x86; VM_PFNMAP) the kernel-checked copy is used.
pub fn load_u64(addr: u64) -> Result<u64, i32> {
    const MADV_POPULATE_READ: u64 = 22;
    let start = addr & !4095;
    let end = (addr + 8).next_multiple_of(4096);
    // SAFETY: populating only faults pages in (as a load would); it changes
    // no data and no mapping, and calls.rs keeps `addr` inside the window.
    match check(unsafe { libc::syscall(libc::SYS_madvise, start, end - start, MADV_POPULATE_READ) }) {
        Ok(_) => {}
        Err(libc::EINVAL) => return read_u64(addr),
        Err(libc::EHWPOISON) => return Err(libc::EHWPOISON),
        Err(_) => return Err(libc::EFAULT),
    }
    // SAFETY: `addr` is inside the window (calls.rs), a mapping no Rust
    // object lives in; the read is unaligned-safe and volatile. It cannot
    // fault: the populate above just made the pages present in this
    // single-threaded process, and no other scenario process runs meanwhile
    // (they wait for their next command); should reclaim take one back,
    // the refault is the read fault that just succeeded.
    let bytes = unsafe { core::ptr::read_volatile(addr as *const [u8; 8]) };
    Ok(u64::from_le_bytes(bytes))
}

/// Reads 8 bytes at `addr` of this process through the kernel's checked
/// copy (`process_vm_readv`); `EFAULT` where the copy faults.
pub fn read_u64(addr: u64) -> Result<u64, i32> {
    let mut buf = [0u8; 8];
    let local = iov(buf.as_mut_ptr() as u64, 8);
    let remote = iov(addr, 8);
    // SAFETY: the local iovec is our 8-byte buffer; the remote one is only
    // read by the kernel, which checks it (EFAULT), never dereferenced here.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    match n {
        8 => Ok(u64::from_le_bytes(buf)),
        -1 => Err(last_errno()),
        _ => Err(libc::EFAULT),
    }
}

/// Writes 8 bytes at `addr` of this process; `EFAULT` where a CPU store
/// would fault.
pub fn write_u64(addr: u64, value: u64) -> Result<(), i32> {
    let buf = value.to_le_bytes();
    let local = iov(buf.as_ptr() as u64, 8);
    let remote = iov(addr, 8);
    // SAFETY: the local iovec is our 8-byte buffer, only read; the remote
    // range is written by the kernel after its own checks, and lies in the
    // window (calls.rs), so no Rust-owned memory changes.
    let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    match n {
        8 => Ok(()),
        -1 => Err(last_errno()),
        _ => Err(libc::EFAULT),
    }
}

/// `madvise(MADV_POPULATE_WRITE)` over the pages of `[addr, addr + 8)`:
/// the write fault a CPU store there would take, with `EFAULT` instead of
/// a signal where it would fail (SIGSEGV or SIGBUS).
fn populate_write(addr: u64) -> Result<(), i32> {
    const MADV_POPULATE_WRITE: u64 = 23;
    let start = addr & !4095;
    let end = (addr + 8).next_multiple_of(4096);
    // SAFETY: populating only faults pages in (as a store would); it changes
    // no data and no mapping, and calls.rs keeps `addr` inside the window.
    match check(unsafe { libc::syscall(libc::SYS_madvise, start, end - start, MADV_POPULATE_WRITE) }) {
        Ok(_) => Ok(()),
        Err(libc::EHWPOISON) => Err(libc::EHWPOISON),
        Err(_) => Err(libc::EFAULT),
    }
}

/// A locked read-modify-write of the 8 bytes at `addr`, as one CPU atomic
/// instruction: `op` gets the atomic and returns the old value. The fault
/// is taken first as a write fault (no read fault beforehand, so no zero
/// page and no fault-around), then the instruction runs on the mapped page.
/// An unaligned address (a split lock, which Rust's atomics cannot express)
/// is read then written once the write fault made the page present.
pub fn atomic_rmw(addr: u64, op: impl FnOnce(&AtomicU64) -> u64, plain: impl FnOnce(u64) -> u64) -> Result<u64, i32> {
    populate_write(addr)?;
    if addr % 8 != 0 {
        let old = read_u64(addr)?;
        return write_u64(addr, plain(old)).map(|()| old);
    }
    // SAFETY: `addr` is 8-byte aligned and inside the window (calls.rs), a
    // mapping no Rust object lives in, so a shared reference to an atomic
    // there aliases nothing Rust-owned. It cannot fault: the populate above
    // just made the page present and writable in this single-threaded
    // process, and no other scenario process runs meanwhile (they wait for
    // their next command), so nothing can unmap, protect or truncate it
    // before the instruction; should reclaim take it back, the refault is
    // the write fault that just succeeded.
    let atomic = unsafe { &*(addr as *const AtomicU64) };
    Ok(op(atomic))
}

/// `fork()`: `Ok(0)` in the child, the child's pid in the parent.
pub fn fork() -> Result<i32, i32> {
    // SAFETY: the runner is single-threaded except in userfaultfd
    // scenarios, whose extra threads only run one call each (a populate
    // syscall, a volatile load, an atomic, munmap/madvise/mremap, or this
    // fork, on its own thread with EVENT_FORK) and return its outcome;
    // glibc's fork takes the allocator's locks around the fork, so the
    // child's allocator is consistent, and the child (a copy of the forking
    // thread only) never joins those threads (`HostUffd::forget_threads`).
    match unsafe { libc::fork() } {
        -1 => Err(last_errno()),
        pid => Ok(pid),
    }
}

/// `fork` as the bare system call, without glibc's atfork handlers. glibc's
/// `fork` holds the allocator's and stdio's locks across the call, and a
/// fork with `UFFD_FEATURE_EVENT_FORK` stays in the call until this very
/// process's monitor (the runner's main thread, which allocates) has read
/// the FORK event: through glibc that is a deadlock.
pub fn raw_fork() -> Result<i32, i32> {
    // SAFETY: `clone(SIGCHLD, 0, ...)` is fork: the child continues on a copy
    // of this thread's stack. The caller keeps every other thread of the
    // runner out of the allocator until the child's copy of memory is made
    // (it polls with `sleeps_in_userfaultfd`, which allocates nothing), so
    // the child's allocator is consistent; the child serves calls on this
    // thread only and never joins the others.
    check(unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as u64, 0u64, 0u64, 0u64, 0u64) }).map(|p| p as i32)
}

/// Whether thread `tid` of this process sleeps in userfaultfd: its wchan
/// (`/proc/self/task/<tid>/wchan`) names `handle_userfault` or
/// `userfaultfd_event_wait_completion`. Allocates nothing.
pub fn sleeps_in_userfaultfd(tid: i32) -> bool {
    let mut path = [0u8; 48];
    let prefix = b"/proc/self/task/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut at = prefix.len();
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (tid.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in digits[..len].iter().rev() {
        path[at] = *d;
        at += 1;
    }
    let suffix = b"/wchan";
    path[at..at + suffix.len()].copy_from_slice(suffix);
    // SAFETY: `path` is NUL-terminated (zero-filled past the suffix).
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 64];
    let got = read(fd, &mut buf).unwrap_or(0);
    let _ = close(fd);
    buf[..got].windows(9).any(|w| w == b"userfault")
}

/// Ends this process at once, without unwinding or flushing.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// `memfd_create(name, 0)`.
pub fn memfd_create(name: &str) -> Result<RawFd, i32> {
    let c = std::ffi::CString::new(name).map_err(|_| libc::EINVAL)?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    check(unsafe { libc::syscall(libc::SYS_memfd_create, c.as_ptr(), 0u64) }).map(|fd| fd as RawFd)
}

/// `pwrite(fd, &value, 8, offset)`: bytes written.
pub fn pwrite_u64(fd: RawFd, offset: u64, value: u64) -> Result<u64, i32> {
    let buf = value.to_le_bytes();
    // SAFETY: the buffer is 8 valid bytes for the duration of the call.
    check(unsafe { libc::pwrite(fd, buf.as_ptr().cast(), 8, offset as i64) } as libc::c_long)
}

/// `pread(fd, buf, 8, offset)`: the bytes read, zero-padded.
pub fn pread_u64(fd: RawFd, offset: u64) -> Result<u64, i32> {
    let mut buf = [0u8; 8];
    // SAFETY: the buffer is 8 writable bytes for the duration of the call.
    check(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), 8, offset as i64) } as libc::c_long)?;
    Ok(u64::from_le_bytes(buf))
}

/// `ftruncate(fd, size)`.
pub fn ftruncate(fd: RawFd, size: u64) -> Result<u64, i32> {
    // SAFETY: no memory is passed.
    check(unsafe { libc::syscall(libc::SYS_ftruncate, fd as i64, size) })
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> Result<u64, i32> {
    // SAFETY: no memory is passed.
    check(unsafe { libc::syscall(libc::SYS_fallocate, fd as i64, mode as i64, offset, len) })
}

/// `close(fd)`.
pub fn close(fd: RawFd) -> Result<u64, i32> {
    // SAFETY: the descriptor belongs to the scenario's file table, which
    // forgets it now; nothing else in the runner uses it.
    check(unsafe { libc::close(fd) } as libc::c_long)
}

/// `prctl(option, arg)`.
pub fn prctl(option: i32, arg: u64) -> Result<u64, i32> {
    // SAFETY: PR_SET_PDEATHSIG and PR_SET_CHILD_SUBREAPER take an integer.
    check(unsafe { libc::prctl(option, arg) } as libc::c_long)
}

/// `pipe()`: (read end, write end).
pub fn pipe() -> Result<(RawFd, RawFd), i32> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) } as libc::c_long)?;
    Ok((fds[0], fds[1]))
}

/// Reads up to `buf.len()` bytes from `fd`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: `buf` is writable for its length.
    check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } as libc::c_long).map(|n| n as usize)
}

/// Writes all of `data` to `fd`.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> Result<(), i32> {
    while !data.is_empty() {
        // SAFETY: `data` is readable for its length.
        let n = check(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) } as libc::c_long)?;
        data = &data[n as usize..];
    }
    Ok(())
}

/// Waits for any child; `None` when there are none left.
pub fn wait_any() -> Option<i32> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
    (pid > 0).then_some(pid)
}

/// One `struct page_region` of PAGEMAP_SCAN.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct PageRegion {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// `PAGE_IS_*` bits.
    pub categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = (3 << 30) | ((core::mem::size_of::<PmScanArg>() as u64) << 16) | (0x66 << 8) | 16;

/// `ioctl(pagemap_fd, PAGEMAP_SCAN)` over `[start, end)` returning the
/// categories in `return_mask` of every page inside a VMA.
pub fn pagemap_scan(fd: RawFd, start: u64, end: u64, return_mask: u64) -> Result<Vec<PageRegion>, i32> {
    let nr = ((end - start) / 4096) as usize;
    let mut regions = vec![PageRegion::default(); nr.max(1)];
    let mut arg = PmScanArg {
        size: core::mem::size_of::<PmScanArg>() as u64,
        start,
        end,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        return_mask,
        ..PmScanArg::default()
    };
    // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at
    // `regions`, writable for `vec_len` entries while the call runs.
    let n = check(unsafe { libc::ioctl(fd, PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) } as libc::c_long)?;
    regions.truncate(n as usize);
    Ok(regions)
}

// --- userfaultfd -----------------------------------------------------------

/// `userfaultfd(flags)`.
pub fn userfaultfd(flags: u64) -> Result<RawFd, i32> {
    // SAFETY: no memory is passed.
    check(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) }).map(|fd| fd as RawFd)
}

/// The calling thread's id (`gettid`).
pub fn gettid() -> i32 {
    // SAFETY: no arguments, no memory.
    unsafe { libc::gettid() }
}

/// `_IOR` and `_IOWR` directions of an ioctl number.
#[derive(Clone, Copy, Debug)]
pub enum IoctlDir {
    /// `_IOR`: the kernel only reads the argument.
    Read,
    /// `_IOW` (direction bit 1; `UFFDIO_SET_MODE`).
    Write,
    /// `_IOWR`: the kernel reads it and writes results back.
    ReadWrite,
}

/// A userfaultfd ioctl (`type` 0xAA, number `nr`) whose argument is the
/// 64-bit words of `arg` (every `struct uffdio_*` is made of them); the
/// kernel's results are written back into `arg`.
pub fn uffd_ioctl(fd: RawFd, dir: IoctlDir, nr: u64, arg: &mut [u64]) -> Result<(), i32> {
    let dir_bits: u64 = match dir {
        IoctlDir::Write => 1,
        IoctlDir::Read => 2,
        IoctlDir::ReadWrite => 3,
    };
    let size = (arg.len() * 8) as u64;
    let request = (dir_bits << 30) | (size << 16) | (0xAA << 8) | nr;
    // SAFETY: `arg` is a writable buffer of exactly the size the request
    // encodes, laid out as the kernel's struct (64-bit fields only). The
    // addresses inside it are checked by calls.rs (the window) or by the
    // kernel (a COPY source is our own buffer, read by the kernel only).
    check(unsafe { libc::ioctl(fd, request as _, arg.as_mut_ptr()) } as libc::c_long).map(|_| ())
}

/// One non-blocking `read` of a 32-byte `struct uffd_msg`; `None` when
/// nothing is pending (`EAGAIN`) or on any error.
pub fn uffd_read_msg(fd: RawFd) -> Option<[u8; 32]> {
    let mut msg = [0u8; 32];
    match read(fd, &mut msg) {
        Ok(32) => Some(msg),
        _ => None,
    }
}

/// `ioctl(fd, request, cmd)` on a test device (`/dev/hmm_dmirror*`), with
/// `cmd.ptr` pointing at `buf` (or 0 when `buf` is empty). The kernel reads
/// or writes at most `buf.len()` bytes there: the caller sizes `buf` for
/// the request (`npages` pages for READ, WRITE, MIGRATE_TO_DEV, EXCLUSIVE,
/// READ_UNLOCKED; `npages` bytes for SNAPSHOT; nothing for the others).
pub fn dmirror_ioctl(fd: RawFd, request: u64, cmd: &mut hmm_dmirror::HmmDmirrorCmd, buf: &mut [u8]) -> Result<(), i32> {
    cmd.ptr = if buf.is_empty() { 0 } else { buf.as_mut_ptr() as u64 };
    // SAFETY: `cmd` is a valid `struct hmm_dmirror_cmd` (repr(C), five
    // u64) the kernel reads and writes back; its `ptr` is `buf`, which the
    // caller sized for what the request copies (see above), and which
    // stays borrowed mutably for the whole call. A request that uses no
    // buffer gets `ptr` 0, so a stray access would be EFAULT, never a
    // write into Rust-owned memory.
    check(unsafe { libc::ioctl(fd, request as _, cmd as *mut hmm_dmirror::HmmDmirrorCmd) } as libc::c_long).map(|_| ())
}

// --- gup_test ----------------------------------------------------------------

/// `struct gup_test` (`mm/gup_test.h`): 76 bytes of fields, 80 with the
/// padding to its 8-byte alignment, as the kernel's `sizeof`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GupTestArg {
    /// `get_delta_usec` (written back).
    pub get_delta_usec: u64,
    /// `put_delta_usec` (written back).
    pub put_delta_usec: u64,
    /// `addr`.
    pub addr: u64,
    /// `size` (written back: the bytes the loop covered).
    pub size: u64,
    /// `nr_pages_per_call`.
    pub nr_pages_per_call: u32,
    /// `gup_flags`: `FOLL_*`.
    pub gup_flags: u32,
    /// `test_flags`.
    pub test_flags: u32,
    /// `which_pages` (DUMP_USER_PAGES_TEST only).
    pub which_pages: [u32; 8],
}

/// `struct pin_longterm_test`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PinLongtermArg {
    addr: u64,
    size: u64,
    flags: u32,
}

const GUP_TEST_MAGIC: u64 = b'g' as u64;

/// The request of one-shot command `nr`: `_IOWR('g', nr, struct gup_test)`.
pub const fn gup_test_request(nr: u8) -> u64 {
    (3 << 30) | ((core::mem::size_of::<GupTestArg>() as u64) << 16) | (GUP_TEST_MAGIC << 8) | nr as u64
}
/// `PIN_LONGTERM_TEST_START`: `_IOW('g', 7, struct pin_longterm_test)`.
pub const PIN_LONGTERM_TEST_START: u64 =
    (1 << 30) | ((core::mem::size_of::<PinLongtermArg>() as u64) << 16) | (GUP_TEST_MAGIC << 8) | 7;
/// `PIN_LONGTERM_TEST_STOP`: `_IO('g', 8)`.
pub const PIN_LONGTERM_TEST_STOP: u64 = (GUP_TEST_MAGIC << 8) | 8;
/// `PIN_LONGTERM_TEST_READ`: `_IOW('g', 9, __u64)`.
pub const PIN_LONGTERM_TEST_READ: u64 = (1 << 30) | (8 << 16) | (GUP_TEST_MAGIC << 8) | 9;

/// A one-shot `gup_test` command `nr` (`_IOWR('g', nr, struct gup_test)`).
pub fn gup_test_run(fd: RawFd, nr: u8, arg: &mut GupTestArg) -> Result<(), i32> {
    let request = gup_test_request(nr);
    // SAFETY: `arg` is a valid `struct gup_test` (repr(C), the kernel's
    // layout and size) that the kernel reads and writes back while it is
    // borrowed mutably; the pages it names are the caller's, checked to be
    // inside the scenario's window.
    check(unsafe { libc::ioctl(fd, request as _, arg as *mut GupTestArg) } as libc::c_long).map(|_| ())
}

/// `PIN_LONGTERM_TEST_START` (`_IOW('g', 7, struct pin_longterm_test)`).
pub fn gup_test_longterm_start(fd: RawFd, addr: u64, size: u64, flags: u32) -> Result<(), i32> {
    let mut arg = PinLongtermArg { addr, size, flags };
    let request = PIN_LONGTERM_TEST_START;
    // SAFETY: `arg` is a valid `struct pin_longterm_test` the kernel only
    // reads during the call.
    check(unsafe { libc::ioctl(fd, request as _, &mut arg as *mut PinLongtermArg) } as libc::c_long).map(|_| ())
}

/// `PIN_LONGTERM_TEST_STOP` (`_IO('g', 8)`).
pub fn gup_test_longterm_stop(fd: RawFd) -> Result<(), i32> {
    let request = PIN_LONGTERM_TEST_STOP;
    // SAFETY: the request takes no argument.
    check(unsafe { libc::ioctl(fd, request as _, 0usize) } as libc::c_long).map(|_| ())
}

/// `PIN_LONGTERM_TEST_READ` (`_IOW('g', 9, __u64)`) into a fresh buffer of
/// `npages` pages followed by an inaccessible page, so that pinned pages
/// that do not fit make the kernel fail with EFAULT instead of writing
/// past the buffer; returns the buffer's bytes.
pub fn gup_test_longterm_read(fd: RawFd, npages: u64) -> Result<Vec<u8>, i32> {
    const PAGE: u64 = 4096;
    let len = npages.checked_add(1).and_then(|n| n.checked_mul(PAGE)).ok_or(libc::EINVAL)?;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
    let buf = mmap(0, len, (libc::PROT_READ | libc::PROT_WRITE) as u32, flags, -1, 0)?;
    let result = mprotect(buf + npages * PAGE, PAGE, libc::PROT_NONE as u32).and_then(|_| {
        let mut user_addr: u64 = buf;
        let request = PIN_LONGTERM_TEST_READ;
        // SAFETY: the argument is a pointer to a u64 the kernel reads; the
        // address it holds is the mapping made above, owned by this
        // function, writable for `npages` pages and guarded after them.
        check(unsafe { libc::ioctl(fd, request as _, &mut user_addr as *mut u64) } as libc::c_long)
    });
    let bytes = result.map(|_| {
        // SAFETY: `buf` is the start of the mapping made above, readable
        // for `npages` pages, and nothing else refers to it.
        unsafe { core::slice::from_raw_parts(buf as *const u8, (npages * PAGE) as usize) }.to_vec()
    });
    let _ = munmap(buf, len);
    bytes
}
