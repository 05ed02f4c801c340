//! One call performed in the calling process (the runner itself for
//! `main`, a forked worker for the others), with the guard that keeps every
//! address-changing call inside the scenario's window, and the observations
//! read from /proc/self/maps, /proc/self/pagemap and PAGEMAP_SCAN.
//!
//! Linux: `fs/proc/task_mmu.c` (`show_map_vma`, `pagemap_read`,
//! `do_pagemap_scan`).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::SeqCst;

use super::sys;
use crate::exec::{Call, Falloc, FileId};
use crate::observe::{Backing, Outcome, PageView, VmaView};

const PAGE: u64 = 4096;
const MAP_FIXED: u32 = 0x10;
const MAP_FIXED_NOREPLACE: u32 = 0x100000;
const MREMAP_FIXED: u32 = 2;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_GUARD_REGION: u64 = 1 << 58;
const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
const PM_UFFD_WP: u64 = 1 << 57;
const PM_PFRAME_MASK: u64 = (1 << 55) - 1;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
const PAGE_IS_HUGE: u64 = 1 << 6;
const FALLOC_FL_KEEP_SIZE: i32 = 1;
const FALLOC_FL_PUNCH_HOLE: i32 = 2;
/// Most pages one `pagemap` observation reports (as the model).
const MAX_PAGES: u64 = crate::exec::model::MAX_PAGEMAP_PAGES;

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
                sys::mmap(addr, len, prot, flags, fd, offset).map_or_else(Outcome::Errno, Outcome::Addr)
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
                access(writable(addr).and_then(|()| {
                    sys::atomic_rmw(addr, |a| a.fetch_add(value, SeqCst), |old| old.wrapping_add(value))
                }))
            }
            // cmpxchg writes even when the comparison fails: the found value
            // is written back.
            Call::Cmpxchg { addr, old, new } if self.inside(addr, 8) => access(writable(addr).and_then(|()| {
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
            Call::Maps { addr, len } if self.inside(addr, len) => maps(addr, len),
            Call::Pagemap { addr, len } if self.inside(addr, len) => pagemap(addr, len),
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

    fn frame(&self, addr: u64) -> Outcome {
        if self.ksm_running {
            return Outcome::Inconclusive("KSM may merge frames at any time".into());
        }
        match pagemap_words(addr, 1) {
            Ok(words) if words[0] & PM_PRESENT == 0 => Outcome::Same(None),
            Ok(words) if words[0] & PM_PFRAME_MASK == 0 => {
                Outcome::Inconclusive("frame numbers need CAP_SYS_ADMIN".into())
            }
            Ok(words) => Outcome::Value(words[0] & PM_PFRAME_MASK),
            Err(e) => Outcome::Inconclusive(format!("pagemap: {e}")),
        }
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

/// `Err(EFAULT)` unless VMAs allowing writes cover `[addr, addr + 8)`.
pub(super) fn writable(addr: u64) -> Result<(), i32> {
    let text = std::fs::read_to_string("/proc/self/maps").map_err(|_| libc::EIO)?;
    let vmas: Vec<VmaView> = text.lines().filter_map(parse_maps_line).collect();
    let ok = |va: u64| vmas.iter().any(|v| v.start <= va && va < v.end && v.perms.as_bytes()[1] == b'w');
    if ok(addr) && ok(addr + 7) {
        Ok(())
    } else {
        Err(libc::EFAULT)
    }
}

/// The VMAs of /proc/self/maps overlapping `[addr, addr + len)`.
fn maps(addr: u64, len: u64) -> Outcome {
    let end = addr.saturating_add(len);
    let text = match std::fs::read_to_string("/proc/self/maps") {
        Ok(text) => text,
        Err(e) => return Outcome::Inconclusive(format!("/proc/self/maps: {e}")),
    };
    let mut vmas = Vec::new();
    for vma in text.lines().filter_map(parse_maps_line) {
        if vma.start < end && addr < vma.end {
            vmas.push(vma);
        }
    }
    Outcome::Maps(vmas)
}

/// One line of /proc/PID/maps: `start-end perms offset dev inode path`.
pub fn parse_maps_line(line: &str) -> Option<VmaView> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.to_string();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim();
    let backing = if path.is_empty() {
        Backing::Anon
    } else if path == "/dev/zero (deleted)" {
        Backing::SharedAnon
    } else if path == "/anon_hugepage (deleted)" {
        Backing::Hugetlb
    } else if let Some(name) = path.strip_prefix("/memfd:") {
        Backing::File(name.trim_end_matches(" (deleted)").to_string())
    } else if let Some(name) = super::device::dax_file_name(path) {
        Backing::File(name)
    } else if super::device::is_devdax_path(path) {
        Backing::File("devdax".into())
    } else {
        Backing::Other(path.to_string())
    };
    Some(VmaView {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        backing,
    })
}

fn open_pagemap() -> std::io::Result<std::fs::File> {
    std::fs::File::open("/proc/self/pagemap")
}

fn pagemap_words(addr: u64, nr: u64) -> std::io::Result<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let file = open_pagemap()?;
    let mut bytes = vec![0u8; nr as usize * 8];
    file.read_exact_at(&mut bytes, addr / PAGE * 8)?;
    Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
}

/// Per-page facts: pagemap for present/swapped/exclusive/file, PAGEMAP_SCAN
/// for huge and the zero page.
fn pagemap(addr: u64, len: u64) -> Outcome {
    let start = addr & !(PAGE - 1);
    let nr = len.div_ceil(PAGE).min(MAX_PAGES);
    let words = match pagemap_words(start, nr) {
        Ok(words) => words,
        Err(e) => return Outcome::Inconclusive(format!("/proc/self/pagemap: {e}")),
    };
    let regions = match open_pagemap()
        .map_err(|e| e.raw_os_error().unwrap_or(0))
        .and_then(|f| sys::pagemap_scan(f.as_raw_fd(), start, start + nr * PAGE, PAGE_IS_HUGE | PAGE_IS_PFNZERO))
    {
        Ok(regions) => regions,
        Err(e) => return Outcome::Inconclusive(format!("PAGEMAP_SCAN failed with errno {e}")),
    };
    let pages = words
        .iter()
        .enumerate()
        .map(|(i, &word)| {
            let va = start + i as u64 * PAGE;
            let cats = regions.iter().find(|r| r.start <= va && va < r.end).map_or(0, |r| r.categories);
            let present = word & PM_PRESENT != 0;
            PageView {
                present,
                swapped: word & PM_SWAP != 0,
                exclusive: word & PM_MMAP_EXCLUSIVE != 0,
                file: word & PM_FILE != 0,
                huge: present && cats & PAGE_IS_HUGE != 0,
                zero: present && cats & PAGE_IS_PFNZERO != 0,
                guard: word & PM_GUARD_REGION != 0,
                uffd_wp: word & PM_UFFD_WP != 0,
            }
        })
        .collect();
    Outcome::Pages(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_name_their_backing() {
        let v = parse_maps_line("100000000000-100000002000 rw-s 00001000 00:01 42    /memfd:data (deleted)").unwrap();
        assert_eq!((v.start, v.end, v.offset), (0x1000_0000_0000, 0x1000_0000_2000, 0x1000));
        assert_eq!(v.backing, Backing::File("data".into()));
        let v = parse_maps_line("7f0000000000-7f0000001000 ---p 00000000 00:00 0 ").unwrap();
        assert_eq!((v.perms.as_str(), v.backing), ("---p", Backing::Anon));
    }

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
