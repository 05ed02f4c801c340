//! Processes and threads: `fork` (glibc's, and the bare system call for
//! userfaultfd's EVENT_FORK), `_exit`, `prctl`, `waitpid`, `gettid`, and
//! whether a thread sleeps in userfaultfd (its wchan).

#![allow(unsafe_code)]

use super::fd::{close, read};
use super::{check, last_errno};

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

/// `prctl(option, arg)`.
pub fn prctl(option: i32, arg: u64) -> Result<u64, i32> {
    // SAFETY: PR_SET_PDEATHSIG and PR_SET_CHILD_SUBREAPER take an integer.
    check(unsafe { libc::prctl(option, arg) } as libc::c_long)
}

/// What [`reap_any`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaped {
    /// A child that had ended, now reaped.
    One,
    /// Children, none of them ended yet.
    NoneEnded,
    /// No children left.
    NoChildren,
}

/// Reaps one ended child without waiting (`waitpid(-1, WNOHANG)`).
pub fn reap_any() -> Reaped {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
        0 => Reaped::NoneEnded,
        pid if pid > 0 => Reaped::One,
        _ => Reaped::NoChildren,
    }
}

/// The calling thread's id (`gettid`).
pub fn gettid() -> i32 {
    // SAFETY: no arguments, no memory.
    unsafe { libc::gettid() }
}
