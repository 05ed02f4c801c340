//! One call performed in the calling process (the runner itself for
//! `main`, a forked worker for the others), with the guard that keeps every
//! address-changing call inside the scenario's window. The observations
//! read from procfs are in `super::procfs`.
//!
//! Linux: the system calls of `super::sys`, one per scenario call.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::SeqCst;

use super::{procfs, sys};
use crate::exec::{Call, Falloc, FileId};
use crate::observe::Outcome;

const PAGE: u64 = 4096;
const MAP_FIXED: u32 = 0x10;
const MAP_FIXED_NOREPLACE: u32 = 0x100000;
const MREMAP_FIXED: u32 = 2;
const FALLOC_FL_KEEP_SIZE: i32 = 1;
const FALLOC_FL_PUNCH_HOLE: i32 = 2;

/// The pipes of one process slot: commands in, outcomes out.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub cmd_r: RawFd,
    pub cmd_w: RawFd,
    pub rep_r: RawFd,
    pub rep_w: RawFd,
}

/// What one process of the scenario keeps: its window, its files, the
/// pipes of every slot (a fork hands the next one to the child).
#[derive(Debug)]
pub struct Local {
    pub window: (u64, u64),
    pub files: HashMap<FileId, RawFd>,
    pub slots: Vec<Slot>,
    pub is_coordinator: bool,
    pub ksm_running: bool,
    /// userfaultfds and accesses on threads (`uffd.rs`).
    pub uffd: super::uffd::HostUffd,
}

fn page_round(len: u64) -> Option<u64> {
    len.checked_add(PAGE - 1).map(|l| l & !(PAGE - 1))
}

fn inside((base, size): (u64, u64), addr: u64, len: u64) -> bool {
    addr >= base && addr - base <= size && len <= size - (addr - base)
}

fn range_ok(window: (u64, u64), addr: u64, len: u64) -> bool {
    let rounded = page_round(len);
    addr % PAGE != 0
        || len == 0
        || rounded.is_none_or(|r| addr.checked_add(r).is_none())
        || inside(window, addr, rounded.unwrap_or(0))
}

/// munmap, madvise or mremap, kept inside `window`: the calls that may
/// send a userfaultfd event and wait until the monitor read it.
fn address_call(window: (u64, u64), call: &Call) -> Outcome {
    let refused = || Outcome::Refused("outside the window".into());
    let done = |r: Result<u64, i32>| r.map_or_else(Outcome::Errno, |_| Outcome::Ok);
    match *call {
        Call::Munmap { addr, len } if range_ok(window, addr, len) => done(sys::munmap(addr, len)),
        Call::Madvise { addr, len, advice } if range_ok(window, addr, len) => done(sys::madvise(addr, len, advice)),
        Call::Mremap { old, old_len, new_len, flags, new_addr } => {
            let fixed_ok = flags & MREMAP_FIXED == 0 || range_ok(window, new_addr, new_len);
            if !(fixed_ok && (old % PAGE != 0 || range_ok(window, old, old_len.max(1)))) {
                return refused();
            }
            sys::mremap(old, old_len, new_len, flags, new_addr).map_or_else(Outcome::Errno, Outcome::Addr)
        }
        _ => refused(),
    }
}

impl Local {
    fn inside(&self, addr: u64, len: u64) -> bool {
        inside(self.window, addr, len)
    }
    /// A range call may go to the kernel: inside the window, or arguments
    /// every kernel rejects before looking at memory (unaligned start,
    /// zero or wrapping length).
    pub(super) fn range_ok(&self, addr: u64, len: u64) -> bool {
        range_ok(self.window, addr, len)
    }

    /// Performs `call` here.
    pub fn execute(&mut self, call: &Call) -> Outcome {
        let refused = || Outcome::Refused("outside the window".into());
        let done = |r: Result<u64, i32>| r.map_or_else(Outcome::Errno, |_| Outcome::Ok);
        match *call {
            Call::Mmap { addr, len, prot, flags, file, offset } => {
                if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 && !self.range_ok(addr, len) {
                    return refused();
                }
                let fd = file.and_then(|id| self.files.get(&id).copied()).unwrap_or(-1);
                let mapped = sys::mmap(addr, len, prot, flags, fd, offset);
                if let (Ok(_), true) = (mapped, fd >= 0) {
                    super::device::note_devdax_mapping(fd, offset, len);
                }
                mapped.map_or_else(Outcome::Errno, Outcome::Addr)
            }
            // With a userfaultfd, a call that may wait for the monitor to
            // read an event runs on a thread (`HostUffd::blocking_call`).
            Call::Munmap { .. } | Call::Madvise { .. } | Call::Mremap { .. } if self.uffd.has_uffd() => {
                let (window, call) = (self.window, call.clone());
                let mut uffd = std::mem::take(&mut self.uffd);
                let outcome = uffd.blocking_call(&self.files, None, move || address_call(window, &call));
                self.uffd = uffd;
                outcome
            }
            Call::Munmap { .. } | Call::Madvise { .. } | Call::Mremap { .. } => address_call(self.window, call),
            // With EVENT_FORK the fork waits for the monitor to read the
            // FORK message: it runs on a thread, whose copy is the child.
            Call::Fork { child } if self.uffd.has_event_fork() => {
                let Some(&slot) = self.slots.get(child) else {
                    return Outcome::Refused(format!("at most {} processes", self.slots.len()));
                };
                let mut local = Local {
                    window: self.window,
                    files: self.files.clone(),
                    slots: self.slots.clone(),
                    is_coordinator: self.is_coordinator,
                    ksm_running: self.ksm_running,
                    uffd: self.uffd.for_child(),
                };
                let mut uffd = std::mem::take(&mut self.uffd);
                let outcome = uffd.blocking_call(&self.files, Some(child), move || match sys::raw_fork() {
                    Err(e) => Outcome::Errno(e),
                    Ok(0) => local.become_worker(slot),
                    Ok(_) => Outcome::Ok,
                });
                self.uffd = uffd;
                outcome
            }
            Call::Mprotect { addr, len, prot } if self.range_ok(addr, len) => done(sys::mprotect(addr, len, prot)),
            Call::Mseal { addr, len } if self.range_ok(addr, len) => done(sys::mseal(addr, len)),
            Call::Read { addr } if self.inside(addr, 8) && self.uffd.has_uffd() => {
                self.uffd.access(&self.files, None, addr, None)
            }
            Call::Write { addr, value } if self.inside(addr, 8) && self.uffd.has_uffd() => {
                self.uffd.access(&self.files, None, addr, Some(value))
            }
            Call::Access { id, addr, write } if self.inside(addr, 8) => {
                self.uffd.access(&self.files, Some(id), addr, write)
            }
            Call::Wait { id } => self.uffd.wait(id),
            Call::Userfaultfd { id, features } => self.uffd.create(&mut self.files, id, features),
            Call::Uffd { uffd, ref op } => {
                let mut state = std::mem::take(&mut self.uffd);
                let window = self.window;
                let outcome = state.call(&mut self.files, uffd, op, &|addr, len| range_ok(window, addr, len));
                self.uffd = state;
                outcome
            }
            Call::Read { addr } if self.inside(addr, 8) => access(sys::load_u64(addr)),
            Call::Write { addr, value } if self.inside(addr, 8) => {
                access(sys::write_u64(addr, value).map(|()| 0)).map_value(|_| Outcome::Ok)
            }
            // A locked read-modify-write is one write access: where the VMA
            // forbids writing, the CPU faults before reading anything (so
            // no zero page gets mapped by a read first, and a file mapping
            // takes no read fault with its fault-around).
            Call::AtomicAdd { addr, value } if self.inside(addr, 8) => {
                access(procfs::writable(addr).and_then(|()| {
                    sys::atomic_rmw(addr, |a| a.fetch_add(value, SeqCst), |old| old.wrapping_add(value))
                }))
            }
            // cmpxchg writes even when the comparison fails: the found value
            // is written back.
            Call::Cmpxchg { addr, old, new } if self.inside(addr, 8) => access(procfs::writable(addr).and_then(|()| {
                sys::atomic_rmw(
                    addr,
                    |a| a.compare_exchange(old, new, SeqCst, SeqCst).unwrap_or_else(|found| found),
                    |found| if found == old { new } else { found },
                )
            })),
            Call::Fork { child } => self.fork(child),
            Call::Exit => {
                // The runner itself cannot exit mid-scenario: `main` exits by
                // dropping its window and its files, which is what other
                // processes can observe.
                for (_, fd) in self.files.drain() {
                    let _ = sys::close(fd);
                }
                let (base, size) = self.window;
                match sys::munmap(base, size) {
                    // A sealed mapping outlives munmap, not a real exit.
                    Err(libc::EPERM) => Outcome::Refused("the runner's main cannot drop sealed memory".into()),
                    r => done(r),
                }
            }
            Call::Memfd { ref name, id } => match sys::memfd_create(name) {
                Ok(fd) => {
                    self.files.insert(id, fd);
                    Outcome::Ok
                }
                Err(e) => Outcome::Errno(e),
            },
            Call::Fwrite { file, offset, value } => {
                self.with_fd(file, |fd| sys::pwrite_u64(fd, offset, value).map_or_else(Outcome::Errno, Outcome::Value))
            }
            Call::Pread { file, offset } => {
                self.with_fd(file, |fd| sys::pread_u64(fd, offset).map_or_else(Outcome::Errno, Outcome::Value))
            }
            Call::Ftruncate { file, size } => self.with_fd(file, |fd| done(sys::ftruncate(fd, size))),
            Call::Fallocate { file, offset, len, mode } => {
                let mode = match mode {
                    Falloc::PunchHole => FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    Falloc::KeepSize => FALLOC_FL_KEEP_SIZE,
                };
                self.with_fd(file, |fd| done(sys::fallocate(fd, mode, offset, len)))
            }
            Call::Close { file } => match self.files.remove(&file) {
                Some(fd) => {
                    self.uffd.closed(file);
                    done(sys::close(fd))
                }
                None => Outcome::Errno(libc::EBADF),
            },
            Call::Maps { addr, len } if self.inside(addr, len) => procfs::maps(addr, len),
            Call::Pagemap { addr, len } if self.inside(addr, len) => procfs::pagemap(addr, len),
            Call::Frame { addr } if self.inside(addr, 1) => self.frame(addr),
            Call::Device(ref call) => super::device::execute(self, call),
            Call::Pin(ref call) => super::pin::execute(self, call),
            Call::Smaps { addr } if self.inside(addr, 1) => super::pin::smaps(self, addr),
            _ => refused(),
        }
    }

    fn with_fd(&self, file: FileId, f: impl FnOnce(RawFd) -> Outcome) -> Outcome {
        match self.files.get(&file) {
            Some(&fd) => f(fd),
            None => Outcome::Errno(libc::EBADF),
        }
    }

    fn fork(&mut self, child: usize) -> Outcome {
        let Some(&slot) = self.slots.get(child) else {
            return Outcome::Refused(format!("at most {} processes", self.slots.len()));
        };
        match sys::fork() {
            Err(e) => Outcome::Errno(e),
            Ok(0) => self.become_worker(slot),
            Ok(_) => Outcome::Ok,
        }
    }

    /// The child side of a fork: serve the scenario's calls from `slot`.
    fn become_worker(&mut self, slot: Slot) -> ! {
        self.uffd.forget_threads();
        if self.is_coordinator {
            // Only the runner writes commands and reads outcomes: a worker
            // holding those ends would keep its siblings' pipes open after
            // the runner is gone.
            for s in &self.slots {
                let _ = sys::close(s.cmd_w);
                let _ = sys::close(s.rep_r);
            }
            self.is_coordinator = false;
        }
        super::worker_loop(self, slot)
    }
}

trait MapValue {
    fn map_value(self, f: impl FnOnce(u64) -> Outcome) -> Outcome;
}

impl MapValue for Outcome {
    fn map_value(self, f: impl FnOnce(u64) -> Outcome) -> Outcome {
        match self {
            Outcome::Value(v) => f(v),
            other => other,
        }
    }
}

/// EFAULT from process_vm_readv/writev is where the CPU would fault;
/// EHWPOISON from populating is the SIGBUS of a poisoned page.
pub(super) fn access(r: Result<u64, i32>) -> Outcome {
    match r {
        Ok(v) => Outcome::Value(v),
        Err(libc::EFAULT | libc::EHWPOISON) => Outcome::Fault,
        Err(e) => Outcome::Inconclusive(format!("process_vm access failed with errno {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_window_ranges_or_rejected_arguments_pass() {
        let local = Local {
            window: (0x10_0000, 0x10_0000),
            files: HashMap::new(),
            slots: vec![],
            is_coordinator: true,
            ksm_running: false,
            uffd: Default::default(),
        };
        assert!(local.range_ok(0x10_0000, 0x10_0000));
        assert!(!local.range_ok(0x10_0000, 0x10_1000), "one page past the end");
        assert!(!local.range_ok(0x1000, 0x1000), "below the window");
        assert!(local.range_ok(0x1001, 0x1000), "unaligned: EINVAL before any work");
        assert!(local.range_ok(0x1000, u64::MAX), "wrapping: rejected by the kernel");
    }
}
