//! Every raw system call of the host runner, and all of its `unsafe`,
//! one file per subject: `mm` the memory-management calls and
//! PAGEMAP_SCAN, `access` loads, stores and atomics on the scenario's
//! memory, `fd` files and pipes, `process` fork, exit and threads, `uffd`
//! userfaultfd, `devices` the test devices' ioctls (dmirror, gup_test).
//! Each file allows `unsafe` for itself; every block has its `// SAFETY:`.
//!
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

mod access;
mod devices;
mod fd;
mod mm;
mod process;
mod uffd;

pub use access::{atomic_rmw, load_u64, write_bytes, write_u64};
pub use devices::{
    dmirror_ioctl, gup_test_longterm_read, gup_test_longterm_start, gup_test_longterm_stop, gup_test_run, GupTestArg,
};
#[cfg(test)]
pub use devices::{gup_test_request, PIN_LONGTERM_TEST_READ, PIN_LONGTERM_TEST_START, PIN_LONGTERM_TEST_STOP};
pub use fd::{close, fallocate, ftruncate, memfd_create, pipe, pread_u64, pwrite_u64, read, write_all};
pub use mm::{madvise, mmap, mprotect, mremap, mseal, munmap, pagemap_scan};
pub use process::{exit_now, fork, gettid, prctl, raw_fork, reap_any, sleeps_in_userfaultfd, Reaped};
pub use uffd::{uffd_ioctl, uffd_read_msg, userfaultfd, IoctlDir};

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
