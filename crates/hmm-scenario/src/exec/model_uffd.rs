//! The model's side of the userfaultfd operations and of accesses that may
//! wait for a handler. Each access in a process holding a userfaultfd runs
//! on its own thread; the executor waits until it completed or queued a
//! message (it then sleeps in the model's `handle_userfault`), so the
//! outcome is the same on every run. Messages read while waiting are kept
//! for the next `uffd_read`. munmap, madvise, mremap and fork, which may
//! wait for the monitor to read a non-cooperative event, run on a thread
//! too (`blocking_call`), settled when they complete or sleep in
//! userfaultfd (`hmm_mm::uffd::probe`); `uffd_read` settles the callers its
//! reading released, and `v = uffd_read u` names the child's userfaultfd
//! a FORK message hands over.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmm_mm::uffd::probe::SleepProbe;
use hmm_mm::uffd::{UffdError, UffdMsg, Userfaultfd, O_CLOEXEC, O_NONBLOCK, UFFD_API};
use hmm_mm::Mm;

use super::{AccessId, FileId, UffdCall};
use crate::observe::{Outcome, UffdMsgView};

/// How long an access may take to either finish or queue a message.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// One open userfaultfd of a process, with the messages read ahead.
pub struct ModelUffd {
    file: Arc<Userfaultfd>,
    features: u64,
    /// Messages read ahead, each FORK with the child's userfaultfd.
    read_ahead: Arc<parking_lot::Mutex<VecDeque<ReadAhead>>>,
}

/// A message read ahead, a FORK with the child's userfaultfd.
type ReadAhead = (UffdMsgView, Option<Userfaultfd>);

impl Clone for ModelUffd {
    fn clone(&self) -> Self {
        Self { file: self.file.clone(), features: self.features, read_ahead: self.read_ahead.clone() }
    }
}

enum Access {
    Running(JoinHandle<Outcome>),
    Done(Outcome),
}

/// The userfaultfds and the running accesses of one process.
#[derive(Default)]
pub struct UffdState {
    /// Open userfaultfds by file id.
    pub uffds: HashMap<FileId, ModelUffd>,
    /// Bound accesses: running, or their outcome.
    accesses: HashMap<AccessId, Access>,
    /// Ids for accesses the scenario did not bind.
    anonymous: usize,
    /// munmap/madvise/mremap/fork calls waiting for their events to be read.
    calls: Vec<(SleepProbe, JoinHandle<Outcome>)>,
    /// Children's userfaultfds from FORK messages the scenario did not
    /// name: kept open, as a program's descriptors stay open.
    unnamed: Vec<Userfaultfd>,
}

impl UffdState {
    /// A forked child's copy: the same open files, no running accesses.
    pub fn fork(&self) -> Self {
        Self {
            uffds: self.uffds.clone(),
            accesses: HashMap::new(),
            anonymous: 0,
            calls: Vec::new(),
            unnamed: Vec::new(),
        }
    }

    /// Whether a userfaultfd of this process negotiated EVENT_FORK: a fork
    /// may wait for the monitor, so it runs on a thread.
    pub fn has_event_fork(&self) -> bool {
        self.uffds.values().any(|u| u.features & hmm_mm::uffd::UFFD_FEATURE_EVENT_FORK != 0)
    }

    /// Whether accesses must run on their own thread.
    pub fn has_uffd(&self) -> bool {
        !self.uffds.is_empty()
    }

    /// Closes every userfaultfd (waking the faults that wait on them), then
    /// joins every access.
    pub fn close_all(&mut self) {
        self.close_files();
        self.join_all();
    }

    /// Closes every userfaultfd of the process (a context shared with
    /// another process is released once that one closes it too).
    pub fn close_files(&mut self) {
        self.uffds.clear();
        self.unnamed.clear();
    }

    /// Joins every access and call (their userfaultfds closed first).
    pub fn join_all(&mut self) {
        for (_, access) in self.accesses.drain() {
            if let Access::Running(handle) = access {
                let _ = handle.join();
            }
        }
        for (_, handle) in self.calls.drain(..) {
            let _ = handle.join();
        }
    }

    /// `close` of a userfaultfd; `false` if `id` is not one.
    pub fn close(&mut self, id: FileId) -> bool {
        self.uffds.remove(&id).is_some()
    }
}

fn errno(e: UffdError) -> Outcome {
    Outcome::Errno(e.errno() as i32)
}

/// `userfaultfd(O_CLOEXEC|O_NONBLOCK)` then `UFFDIO_API`: the ioctls, or
/// the errno (the descriptor is then closed again).
pub fn create(state: &mut UffdState, mm: &Arc<Mm>, id: FileId, features: u64) -> Outcome {
    let file = match Userfaultfd::new(mm, O_CLOEXEC | O_NONBLOCK) {
        Ok(file) => file,
        Err(e) => return errno(e),
    };
    match file.api(UFFD_API, features) {
        Ok((_features, ioctls)) => {
            let uffd = ModelUffd { file: Arc::new(file), features, read_ahead: Default::default() };
            state.uffds.insert(id, uffd);
            Outcome::Value(ioctls)
        }
        Err(e) => errno(e),
    }
}

fn view(msg: UffdMsg) -> UffdMsgView {
    UffdMsgView::from_bytes(&msg.to_bytes())
}

/// Reads every pending message of `uffd` into its read-ahead queue;
/// `true` if one is a page fault on the page of `page`.
fn drain(uffd: &ModelUffd, page: Option<u64>) -> bool {
    let mut got = false;
    while let Ok((msg, file)) = uffd.file.read_event() {
        let msg = view(msg);
        got |= super::uffd::faults_on(&msg, page);
        uffd.read_ahead.lock().push_back((msg, file));
    }
    got
}

/// One userfaultfd call.
pub fn call(state: &mut UffdState, id: FileId, op: &UffdCall) -> Outcome {
    let outcome = call_once(state, id, op);
    if op.wakes_waiters() {
        settle_calls(&mut state.calls);
    }
    outcome
}

fn call_once(state: &mut UffdState, id: FileId, op: &UffdCall) -> Outcome {
    let Some(uffd) = state.uffds.get(&id).cloned() else { return Outcome::Errno(hmm_types::Errno::BadF as i32) };
    let uffd = &uffd;
    let f = &uffd.file;
    let ok = |r: Result<u64, UffdError>| r.map_or_else(errno, |_| Outcome::Ok);
    match *op {
        UffdCall::Register { start, len, mode } => f.register(start, len, mode).map_or_else(errno, Outcome::Value),
        UffdCall::Unregister { start, len } => ok(f.unregister(start, len).map(|()| 0)),
        UffdCall::Copy { dst, len, value, mode } => match super::uffd::copy_source(len, value) {
            Some(src) => ok(f.copy(dst, &src, mode)),
            None => Outcome::Refused("a copy source larger than 64 MiB".into()),
        },
        UffdCall::Zeropage { start, len, mode } => ok(f.zeropage(start, len, mode)),
        UffdCall::Writeprotect { start, len, mode } => ok(f.writeprotect(start, len, mode).map(|()| 0)),
        UffdCall::Continue { start, len, mode } => ok(f.continue_range(start, len, mode)),
        UffdCall::Move { dst, src, len, mode } => ok(f.move_pages(dst, src, len, mode)),
        UffdCall::Poison { start, len, mode } => ok(f.poison(start, len, mode)),
        UffdCall::Wake { start, len } => ok(f.wake(start, len).map(|()| 0)),
        UffdCall::Rwprotect { start, len, mode } => ok(f.rwprotect(start, len, mode).map(|()| 0)),
        UffdCall::SetMode { enable, disable } => ok(f.set_mode(enable, disable).map(|()| 0)),
        UffdCall::Read { fork_file } => {
            // Reading an event lets its sender go on, which may send the
            // next one (mremap: REMAP, then UNMAP): settle them all.
            let mut seen = uffd.read_ahead.lock().len();
            loop {
                drain(uffd, None);
                let now = uffd.read_ahead.lock().len();
                if now == seen {
                    break;
                }
                seen = now;
                settle_calls(&mut state.calls);
            }
            let mut msgs = Vec::new();
            let mut named = fork_file;
            for (msg, file) in uffd.read_ahead.lock().drain(..) {
                msgs.push(msg);
                let Some(file) = file else { continue };
                match named.take() {
                    Some(id) => {
                        let child =
                            ModelUffd { file: Arc::new(file), features: uffd.features, read_ahead: Default::default() };
                        state.uffds.insert(id, child);
                    }
                    None => state.unnamed.push(file),
                }
            }
            // Linux: reading before UFFDIO_API is EINVAL; here the API
            // always happened at creation.
            Outcome::Messages(msgs)
        }
    }
}

/// Waits until every running call finished or sleeps in userfaultfd
/// again; the finished ones are joined.
fn settle_calls(calls: &mut Vec<(SleepProbe, JoinHandle<Outcome>)>) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while Instant::now() < deadline && calls.iter().any(|(probe, h)| !h.is_finished() && !probe.is_sleeping()) {
        std::thread::sleep(Duration::from_micros(200));
    }
    calls.retain(|(_, h)| !h.is_finished());
}

/// Runs a call that may wait for a userfaultfd monitor (munmap, madvise,
/// mremap with the event features) on its own thread: its outcome, or
/// `Blocked` once it sleeps waiting for its event to be read. Messages
/// already queued are read ahead first, so they stay older than its events.
pub fn blocking_call(state: &mut UffdState, run: impl FnOnce() -> Outcome + Send + 'static) -> Outcome {
    for uffd in state.uffds.values() {
        drain(uffd, None);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(hmm_mm::uffd::probe::current());
        run()
    });
    let Ok(probe) = rx.recv() else {
        return Outcome::Inconclusive("the call panicked".into());
    };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        if handle.is_finished() {
            return handle.join().unwrap_or_else(|_| Outcome::Inconclusive("the call panicked".into()));
        }
        if probe.is_sleeping() {
            state.calls.push((probe, handle));
            return Outcome::Blocked;
        }
        if Instant::now() > deadline {
            state.calls.push((probe, handle));
            return Outcome::Inconclusive("the call neither completed nor waited for the monitor".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Starts an access to `addr` on its own thread and waits until it
/// completed (its outcome) or a page fault message for its page came (`Blocked`, kept under `id`, or an
/// anonymous id when `id` is `None`).
pub fn access(
    state: &mut UffdState,
    id: Option<AccessId>,
    addr: u64,
    run: impl FnOnce() -> Outcome + Send + 'static,
) -> Outcome {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(hmm_mm::uffd::probe::current());
        run()
    });
    let probe = rx.recv().unwrap_or_default();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        if handle.is_finished() {
            let outcome = handle.join().unwrap_or_else(|_| Outcome::Inconclusive("the access panicked".into()));
            if let Some(id) = id {
                state.accesses.insert(id, Access::Done(outcome.clone()));
            }
            return outcome;
        }
        let queued = state.uffds.values().fold(false, |any, u| drain(u, Some(addr)) | any);
        // A fault whose message went to a userfaultfd this process does
        // not hold (a fork child's, read by its parent) is seen asleep.
        if queued || probe.is_sleeping() {
            let id = id.unwrap_or_else(|| {
                state.anonymous += 1;
                usize::MAX - state.anonymous
            });
            state.accesses.insert(id, Access::Running(handle));
            return Outcome::Blocked;
        }
        if Instant::now() > deadline {
            state.accesses.insert(id.unwrap_or(usize::MAX), Access::Running(handle));
            return Outcome::Inconclusive("the access neither completed nor queued a message".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// `wait`: the outcome of a blocked access once it completed.
pub fn wait(state: &mut UffdState, id: AccessId) -> Outcome {
    let handle = match state.accesses.remove(&id) {
        Some(Access::Running(handle)) => handle,
        Some(Access::Done(outcome)) => {
            state.accesses.insert(id, Access::Done(outcome.clone()));
            return outcome;
        }
        None => return Outcome::Refused("the access belongs to another process".into()),
    };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !handle.is_finished() {
        if Instant::now() > deadline {
            state.accesses.insert(id, Access::Running(handle));
            return Outcome::Blocked;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let outcome = handle.join().unwrap_or_else(|_| Outcome::Inconclusive("the access panicked".into()));
    state_done(&mut state.accesses, id, &outcome);
    outcome
}

/// Keeps a joined access's outcome, so a later `wait` shows it again.
fn state_done(accesses: &mut HashMap<AccessId, Access>, id: AccessId, outcome: &Outcome) {
    accesses.insert(id, Access::Done(outcome.clone()));
}

#[cfg(test)]
mod tests {
    use crate::exec::model::ModelExecutor;
    use crate::exec::Executor;
    use crate::lang::parse;
    use hmm_mm::{KernelConfig, ThpMode};

    #[test]
    fn a_blocked_access_is_woken_by_the_copy_and_joined_by_wait() {
        let scenario = parse(
            "t.hmm",
            "u = userfaultfd 0\n\
             a = mmap w 2p rw- private|anon|fixed\n\
             uffd_register u a 2p missing\n\
             t = read a+8\n\
             expect blocked\n\
             read a+1p\n\
             expect blocked\n\
             uffd_read u\n\
             expect pagefault w, pagefault w+0x1000\n\
             uffd_copy u a 2p 0x9\n\
             wait t\n\
             expect 0x9\n\
             wait t\n\
             expect 0x9\n",
        )
        .unwrap();
        let config = KernelConfig { ram_bytes: 64 << 20, thp: ThpMode::Never, ..KernelConfig::default() };
        let trace = ModelExecutor { config }.run(&scenario).unwrap();
        assert_eq!(trace.failed_expectations().count(), 0, "{trace:#?}");
    }
}
