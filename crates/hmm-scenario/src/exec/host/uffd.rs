//! The host's side of the userfaultfd operations and of accesses that may
//! wait for a handler: each access of a process holding a userfaultfd runs
//! on a thread of its own (the scenario's process becomes multi-threaded);
//! the runner waits until the access completed or sleeps in
//! `handle_userfault` (its wchan; its message is queued before that), as
//! the model executor settles it (`exec/model_uffd.rs`). munmap, madvise, mremap
//! and fork (with EVENT_FORK, by the bare system call: `sys::raw_fork`)
//! may wait for the monitor to read their event: they run on a thread
//! too, settled when they complete or their thread sleeps in userfaultfd
//! (its wchan); a FORK message carries the child's new descriptor, which
//! `v = uffd_read u` names.
//!
//! Linux: `mm/userfaultfd.c`, `include/uapi/linux/userfaultfd.h`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::SeqCst;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sys::{self, IoctlDir};
use crate::exec::{AccessId, FileId, UffdCall};
use crate::observe::{Outcome, UffdMsgView};

const O_NONBLOCK: u64 = 0o4000;
const O_CLOEXEC: u64 = 0o2000000;
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
/// How long an access may take to either finish or sleep for the handler
/// (which a kernel without symbol names in wchan never shows).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Access {
    Running(JoinHandle<Outcome>),
    Done(Outcome),
}

/// The userfaultfds (their ids in the file table) and accesses of one
/// process.
#[derive(Debug, Default)]
pub struct HostUffd {
    ids: HashSet<FileId>,
    /// Features negotiated, by id.
    features: HashMap<FileId, u64>,
    /// munmap/madvise/mremap/fork calls waiting for their events to be
    /// read: the thread id, the child a fork makes, and the thread.
    calls: Vec<(i32, Option<usize>, JoinHandle<Outcome>)>,
    /// Messages read ahead, each FORK with the child's new descriptor.
    read_ahead: HashMap<FileId, VecDeque<(UffdMsgView, Option<RawFd>)>>,
    accesses: HashMap<AccessId, Access>,
    anonymous: usize,
}

impl HostUffd {
    /// Whether accesses must run on their own thread.
    pub fn has_uffd(&self) -> bool {
        !self.ids.is_empty()
    }
    /// A forked child: the threads stayed in the parent.
    pub fn forget_threads(&mut self) {
        self.accesses.clear();
        self.calls.clear();
    }
    /// A forked child's copy: the same descriptors and messages read
    /// ahead, none of the parent's threads.
    pub fn for_child(&self) -> Self {
        Self {
            ids: self.ids.clone(),
            features: self.features.clone(),
            read_ahead: self.read_ahead.clone(),
            ..Self::default()
        }
    }
    /// Whether process `child` is still being forked here (its FORK event
    /// unread: Linux creates it only once the monitor read it).
    pub fn fork_pending(&self, child: usize) -> bool {
        self.calls.iter().any(|(_, c, h)| *c == Some(child) && !h.is_finished())
    }
    /// Whether a userfaultfd here negotiated EVENT_FORK (see the model's).
    pub fn has_event_fork(&self) -> bool {
        self.ids.iter().any(|id| self.features.get(id).is_some_and(|f| f & UFFD_FEATURE_EVENT_FORK != 0))
    }
    /// The descriptor `id` was closed.
    pub fn closed(&mut self, id: FileId) {
        self.ids.remove(&id);
        self.read_ahead.remove(&id);
    }

    /// `userfaultfd(O_CLOEXEC|O_NONBLOCK)` then `UFFDIO_API`.
    pub fn create(&mut self, files: &mut HashMap<FileId, RawFd>, id: FileId, features: u64) -> Outcome {
        let fd = match sys::userfaultfd(O_CLOEXEC | O_NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => return Outcome::Errno(e),
        };
        let mut api = [UFFD_API, features, 0];
        match sys::uffd_ioctl(fd, IoctlDir::ReadWrite, 0x3F, &mut api) {
            Ok(()) => {
                files.insert(id, fd);
                self.ids.insert(id);
                self.features.insert(id, features);
                Outcome::Value(api[2])
            }
            Err(e) => {
                let _ = sys::close(fd);
                Outcome::Errno(e)
            }
        }
    }

    /// Reads every pending message into the read-ahead queue; `true` if
    /// one is a page fault on the page of `page`.
    fn drain(&mut self, id: FileId, fd: RawFd, page: Option<u64>) -> bool {
        let mut got = false;
        while let Some(bytes) = sys::uffd_read_msg(fd) {
            let msg = UffdMsgView::from_bytes(&bytes);
            got |= crate::exec::uffd::faults_on(&msg, page);
            // FORK: the kernel installed the child's userfaultfd here.
            let child = (msg == UffdMsgView::Fork)
                .then(|| u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as RawFd);
            self.read_ahead.entry(id).or_default().push_back((msg, child));
        }
        got
    }

    fn drain_all(&mut self, files: &HashMap<FileId, RawFd>, page: u64) -> bool {
        let ids: Vec<FileId> = self.ids.iter().copied().collect();
        ids.into_iter().fold(false, |any, id| files.get(&id).is_some_and(|&fd| self.drain(id, fd, Some(page))) | any)
    }

    /// One userfaultfd call; `inside` says whether a range may be touched.
    pub fn call(
        &mut self,
        files: &mut HashMap<FileId, RawFd>,
        id: FileId,
        op: &UffdCall,
        inside: &dyn Fn(u64, u64) -> bool,
    ) -> Outcome {
        let outcome = self.call_once(files, id, op, inside);
        if op.wakes_waiters() {
            settle_calls(&mut self.calls);
        }
        outcome
    }

    fn call_once(
        &mut self,
        files: &mut HashMap<FileId, RawFd>,
        id: FileId,
        op: &UffdCall,
        inside: &dyn Fn(u64, u64) -> bool,
    ) -> Outcome {
        let Some(&fd) = files.get(&id).filter(|_| self.ids.contains(&id)) else {
            return Outcome::Errno(libc::EBADF);
        };
        let refused = || Outcome::Refused("outside the window".into());
        let ioctl =
            |dir, nr, arg: &mut [u64]| sys::uffd_ioctl(fd, dir, nr, arg).map_or_else(Outcome::Errno, |()| Outcome::Ok);
        use IoctlDir::{Read as R, ReadWrite as RW};
        match *op {
            UffdCall::Register { start, len, mode } if inside(start, len) => {
                let mut arg = [start, len, mode, 0];
                sys::uffd_ioctl(fd, RW, 0x00, &mut arg).map_or_else(Outcome::Errno, |()| Outcome::Value(arg[3]))
            }
            UffdCall::Unregister { start, len } if inside(start, len) => ioctl(R, 0x01, &mut [start, len]),
            UffdCall::Wake { start, len } => ioctl(R, 0x02, &mut [start, len]),
            UffdCall::Copy { dst, len, value, mode } if inside(dst, len) => {
                let Some(src) = crate::exec::uffd::copy_source(len, value) else {
                    return Outcome::Refused("a copy source larger than 64 MiB".into());
                };
                ioctl(RW, 0x03, &mut [dst, src.as_ptr() as u64, len, mode, 0])
            }
            UffdCall::Zeropage { start, len, mode } if inside(start, len) => {
                ioctl(RW, 0x04, &mut [start, len, mode, 0])
            }
            UffdCall::Move { dst, src, len, mode } if inside(dst, len) && inside(src, len) => {
                ioctl(RW, 0x05, &mut [dst, src, len, mode, 0])
            }
            UffdCall::Writeprotect { start, len, mode } if inside(start, len) => {
                ioctl(RW, 0x06, &mut [start, len, mode])
            }
            UffdCall::Continue { start, len, mode } if inside(start, len) => {
                ioctl(RW, 0x07, &mut [start, len, mode, 0])
            }
            UffdCall::Poison { start, len, mode } if inside(start, len) => ioctl(RW, 0x08, &mut [start, len, mode, 0]),
            UffdCall::Rwprotect { start, len, mode } if inside(start, len) => ioctl(RW, 0x09, &mut [start, len, mode]),
            UffdCall::SetMode { enable, disable } => ioctl(IoctlDir::Write, 0x0A, &mut [enable, disable]),
            UffdCall::Read { fork_file } => {
                // Reading an event lets its sender go on, which may send
                // the next one (mremap: REMAP, then UNMAP): settle them all.
                let mut seen = self.read_ahead.get(&id).map_or(0, VecDeque::len);
                loop {
                    self.drain(id, fd, None);
                    let now = self.read_ahead.get(&id).map_or(0, VecDeque::len);
                    if now == seen {
                        break;
                    }
                    seen = now;
                    settle_calls(&mut self.calls);
                }
                let mut msgs = Vec::new();
                let mut named = fork_file;
                for (msg, child) in self.read_ahead.remove(&id).unwrap_or_default() {
                    msgs.push(msg);
                    // An unnamed child's descriptor stays open, unused.
                    if let (Some(child), Some(name)) = (child, named.take()) {
                        files.insert(name, child);
                        self.ids.insert(name);
                        let features = self.features.get(&id).copied().unwrap_or(0);
                        self.features.insert(name, features);
                    }
                }
                Outcome::Messages(msgs)
            }
            _ => refused(),
        }
    }

    /// Runs a call that may wait for a userfaultfd monitor (munmap,
    /// madvise, mremap with the event features) on its own thread: its
    /// outcome, or `Blocked` once the thread sleeps in userfaultfd (its
    /// wchan). Messages already queued are read ahead first, so they stay
    /// older than its events (as the model does).
    pub fn blocking_call(
        &mut self,
        files: &HashMap<FileId, RawFd>,
        child: Option<usize>,
        run: impl FnOnce() -> Outcome + Send + 'static,
    ) -> Outcome {
        let ids: Vec<FileId> = self.ids.iter().copied().collect();
        for id in ids {
            if let Some(&fd) = files.get(&id) {
                self.drain(id, fd, None);
            }
        }
        // Nothing below allocates until the call completed or sleeps: a
        // fork on the thread must find the allocator unlocked (`raw_fork`).
        let shared_tid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
        let handle = std::thread::spawn({
            let shared_tid = shared_tid.clone();
            move || {
                shared_tid.store(sys::gettid(), SeqCst);
                run()
            }
        });
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let tid = loop {
            match shared_tid.load(SeqCst) {
                0 if !handle.is_finished() => std::thread::sleep(Duration::from_micros(50)),
                tid => break tid,
            }
        };
        loop {
            if handle.is_finished() {
                return handle.join().unwrap_or_else(|_| Outcome::Inconclusive("the call panicked".into()));
            }
            if sleeps_in_userfaultfd(tid) {
                self.calls.push((tid, child, handle));
                return Outcome::Blocked;
            }
            if Instant::now() > deadline {
                self.calls.push((tid, child, handle));
                return Outcome::Inconclusive("the call neither completed nor waited for the monitor".into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Starts an access on a thread and waits until it completed or sleeps
    /// in userfaultfd (`Blocked`); the page fault messages it queued are
    /// read ahead.
    pub fn access(
        &mut self,
        files: &HashMap<FileId, RawFd>,
        id: Option<AccessId>,
        addr: u64,
        write: Option<u64>,
    ) -> Outcome {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let _ = tx.send(sys::gettid());
            match write {
                None => super::calls::access(sys::load_u64(addr)),
                Some(value) => super::calls::access(
                    super::procfs::writable(addr)
                        .and_then(|()| sys::atomic_rmw(addr, |a| a.swap(value, SeqCst), |_| value)),
                )
                .map_ok(),
            }
        });
        let tid = rx.recv().unwrap_or(0);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut queued = false;
        loop {
            if handle.is_finished() {
                let outcome = handle.join().unwrap_or_else(|_| Outcome::Inconclusive("the access panicked".into()));
                if let Some(id) = id {
                    self.accesses.insert(id, Access::Done(outcome.clone()));
                }
                return outcome;
            }
            // The message is queued before the faulting thread decides
            // whether it must sleep (`userfaultfd_must_wait`, which reads
            // the PTE): a step that resolves the fault in that window would
            // let it go on without a wake-up, so it counts as blocked only
            // once it sleeps. A fault whose message went to a userfaultfd
            // this process does not hold (a fork child's, read by its
            // parent) is seen asleep only.
            queued |= self.drain_all(files, addr);
            if sleeps_in_userfaultfd(tid) {
                let id = id.unwrap_or_else(|| {
                    self.anonymous += 1;
                    usize::MAX - self.anonymous
                });
                self.accesses.insert(id, Access::Running(handle));
                return Outcome::Blocked;
            }
            if Instant::now() > deadline {
                self.accesses.insert(id.unwrap_or(usize::MAX), Access::Running(handle));
                let what =
                    if queued { "queued a message but never slept" } else { "neither completed nor queued a message" };
                return Outcome::Inconclusive(format!("the access {what}"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// `wait`: the outcome of the access once it completed.
    pub fn wait(&mut self, id: AccessId) -> Outcome {
        let handle = match self.accesses.remove(&id) {
            Some(Access::Running(handle)) => handle,
            Some(Access::Done(outcome)) => {
                self.accesses.insert(id, Access::Done(outcome.clone()));
                return outcome;
            }
            None => return Outcome::Refused("the access belongs to another process".into()),
        };
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !handle.is_finished() {
            if Instant::now() > deadline {
                self.accesses.insert(id, Access::Running(handle));
                return Outcome::Blocked;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let outcome = handle.join().unwrap_or_else(|_| Outcome::Inconclusive("the access panicked".into()));
        state_done(&mut self.accesses, id, &outcome);
        outcome
    }
}

trait MapOk {
    fn map_ok(self) -> Outcome;
}

impl MapOk for Outcome {
    /// A store's success is `Ok`, not the old value.
    fn map_ok(self) -> Outcome {
        match self {
            Outcome::Value(_) => Outcome::Ok,
            other => other,
        }
    }
}

/// Whether this kernel offers userfaultfd's RWP mode (Linux 7.3): a
/// userfaultfd's `UFFDIO_API` handshake lists `UFFD_FEATURE_RWP`.
pub fn offers_rwp() -> bool {
    const UFFD_FEATURE_RWP: u64 = 1 << 17;
    static OFFERS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFFERS.get_or_init(|| {
        let Ok(fd) = sys::userfaultfd(O_CLOEXEC | O_NONBLOCK) else { return false };
        let mut api = [UFFD_API, 0, 0];
        let offered =
            sys::uffd_ioctl(fd, IoctlDir::ReadWrite, 0x3F, &mut api).is_ok() && api[1] & UFFD_FEATURE_RWP != 0;
        let _ = sys::close(fd);
        offered
    })
}

use sys::sleeps_in_userfaultfd;

/// Waits until every running call finished or sleeps in userfaultfd
/// again; the finished ones are joined.
fn settle_calls(calls: &mut Vec<(i32, Option<usize>, JoinHandle<Outcome>)>) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while Instant::now() < deadline && calls.iter().any(|(tid, _, h)| !h.is_finished() && !sleeps_in_userfaultfd(*tid))
    {
        std::thread::sleep(Duration::from_micros(200));
    }
    calls.retain(|(.., h)| !h.is_finished());
}

/// Keeps a joined access's outcome, so a later `wait` shows it again.
fn state_done(accesses: &mut HashMap<AccessId, Access>, id: AccessId, outcome: &Outcome) {
    accesses.insert(id, Access::Done(outcome.clone()));
}
