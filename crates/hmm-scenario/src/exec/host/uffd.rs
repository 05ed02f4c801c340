//! The host's side of the userfaultfd operations and of accesses that may
//! wait for a handler: each access of a process holding a userfaultfd runs
//! on a thread of its own (the scenario's process becomes multi-threaded);
//! the runner waits until the access completed or its userfaultfd has a
//! new message (the thread then sleeps in `handle_userfault`), exactly as
//! the model executor does (`exec/model_uffd.rs`).
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
/// How long an access may take to either finish or queue a message.
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
    /// munmap/madvise/mremap calls waiting for their events to be read:
    /// the thread id and the thread.
    calls: Vec<(i32, JoinHandle<Outcome>)>,
    read_ahead: HashMap<FileId, VecDeque<UffdMsgView>>,
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
        while let Some(msg) = sys::uffd_read_msg(fd) {
            let msg = UffdMsgView::from_bytes(&msg);
            got |= crate::exec::uffd::faults_on(&msg, page);
            self.read_ahead.entry(id).or_default().push_back(msg);
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
        files: &HashMap<FileId, RawFd>,
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
            UffdCall::Read => {
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
                Outcome::Messages(self.read_ahead.remove(&id).unwrap_or_default().into())
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
        run: impl FnOnce() -> Outcome + Send + 'static,
    ) -> Outcome {
        let ids: Vec<FileId> = self.ids.iter().copied().collect();
        for id in ids {
            if let Some(&fd) = files.get(&id) {
                self.drain(id, fd, None);
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let _ = tx.send(sys::gettid());
            run()
        });
        let Ok(tid) = rx.recv() else {
            return Outcome::Inconclusive("the call panicked".into());
        };
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if handle.is_finished() {
                return handle.join().unwrap_or_else(|_| Outcome::Inconclusive("the call panicked".into()));
            }
            if sleeps_in_userfaultfd(tid) {
                self.calls.push((tid, handle));
                return Outcome::Blocked;
            }
            if Instant::now() > deadline {
                self.calls.push((tid, handle));
                return Outcome::Inconclusive("the call neither completed nor waited for the monitor".into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Starts an access on a thread and waits until it completed or a
    /// userfaultfd of this process has a page fault message for its page
    /// (`Blocked`).
    pub fn access(
        &mut self,
        files: &HashMap<FileId, RawFd>,
        id: Option<AccessId>,
        addr: u64,
        write: Option<u64>,
    ) -> Outcome {
        let handle = std::thread::spawn(move || match write {
            None => super::calls::access(sys::load_u64(addr)),
            Some(value) => super::calls::access(
                super::calls::writable(addr).and_then(|()| sys::atomic_rmw(addr, |a| a.swap(value, SeqCst), |_| value)),
            )
            .map_ok(),
        });
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if handle.is_finished() {
                let outcome = handle.join().unwrap_or_else(|_| Outcome::Inconclusive("the access panicked".into()));
                if let Some(id) = id {
                    self.accesses.insert(id, Access::Done(outcome.clone()));
                }
                return outcome;
            }
            if self.drain_all(files, addr) {
                let id = id.unwrap_or_else(|| {
                    self.anonymous += 1;
                    usize::MAX - self.anonymous
                });
                self.accesses.insert(id, Access::Running(handle));
                return Outcome::Blocked;
            }
            if Instant::now() > deadline {
                self.accesses.insert(id.unwrap_or(usize::MAX), Access::Running(handle));
                return Outcome::Inconclusive("the access neither completed nor queued a message".into());
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

/// Whether thread `tid` of this process sleeps in userfaultfd
/// (`handle_userfault`, `userfaultfd_event_wait_completion`).
fn sleeps_in_userfaultfd(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan")).is_ok_and(|w| w.contains("userfault"))
}

/// Waits until every running call finished or sleeps in userfaultfd
/// again; the finished ones are joined.
fn settle_calls(calls: &mut Vec<(i32, JoinHandle<Outcome>)>) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while Instant::now() < deadline && calls.iter().any(|(tid, h)| !h.is_finished() && !sleeps_in_userfaultfd(*tid)) {
        std::thread::sleep(Duration::from_micros(200));
    }
    calls.retain(|(_, h)| !h.is_finished());
}

/// Keeps a joined access's outcome, so a later `wait` shows it again.
fn state_done(accesses: &mut HashMap<AccessId, Access>, id: AccessId, outcome: &Outcome) {
    accesses.insert(id, Access::Done(outcome.clone()));
}
