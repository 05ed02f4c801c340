//! userfaultfd: a user-space handler resolves page faults of registered
//! ranges. The file object ([`Userfaultfd`]) negotiates the API, registers
//! ranges, and hands out fault messages ([`UffdMsg`]) through `read` and
//! `poll`; the handler answers with `COPY`, `ZEROPAGE`, `CONTINUE`,
//! `WRITEPROTECT`, `MOVE`, `POISON`, `RWPROTECT` or `WAKE`.
//!
//! Files: `mod.rs` the context, the file object and the message queue;
//! `msg.rs` the messages (`struct uffd_msg`);
//! `register.rs` REGISTER/UNREGISTER and close; `ioctl.rs` COPY, ZEROPAGE,
//! WAKE; `wp.rs` WP mode (WRITEPROTECT, the uffd-wp PTE bit); `minor.rs`
//! MINOR mode and CONTINUE; `mover.rs` MOVE; `poison.rs` POISON;
//! `hugetlb.rs` the huge-page rules of all of these on hugetlb memory;
//! `wait.rs` the fault side (queue a message, sleep with the mmap lock
//! released, or SIGBUS); `events.rs` the non-cooperative events (FORK,
//! REMAP, REMOVE, UNMAP); `probe.rs` whether a thread sleeps in here;
//! `rwp.rs` Linux 7.3's RWP mode (RWPROTECT, SET_MODE, resolving
//! protected pages).
//!
//! Modelled: MISSING mode on private anonymous memory and shmem (shared
//! anonymous memory, memfd, tmpfs); WP mode on the same and on hugetlb
//! (present pages are protected, none entries get uffd-wp markers, see
//! wp.rs; a protected page keeps its bit through swap); MINOR mode on
//! shmem; RWP mode on the same as WP; MOVE of anonymous pages; POISON
//! markers (huge ones on hugetlb); features `PAGEFAULT_FLAG_WP`, `SIGBUS`,
//! `THREAD_ID`, `EXACT_ADDRESS`, `MISSING_SHMEM`, `MINOR_SHMEM`,
//! `WP_HUGETLBFS_SHMEM`, `POISON`, `WP_ASYNC`, `WP_UNPOPULATED`, `MOVE`,
//! `RWP`, `RWP_ASYNC`, the events `EVENT_FORK`, `EVENT_REMAP`,
//! `EVENT_REMOVE`, `EVENT_UNMAP` (without them fork and mremap drop the
//! registration, as Linux does); the open flag `UFFD_USER_MODE_ONLY`;
//! GUP and the kernel's copies meeting a registered page (`gup_tests.rs`:
//! the unlocked calls wait, the locked ones fail with `EFAULT`); MISSING,
//! MINOR, WP and RWP mode on hugetlb with COPY, CONTINUE, WRITEPROTECT,
//! RWPROTECT and POISON in huge pages (`hugetlb.rs`, features
//! `MISSING_HUGETLBFS`, `MINOR_HUGETLBFS`; `hugetlb_wp_tests.rs`). Known
//! gaps: `THREAD_ID`'s `ptid` is 0 (the model has no threads).
//!
//! Lock order: the mmap lock, then a context's `state` mutex (taken to
//! queue a message while the faulting thread still holds the mmap read
//! lock); a fault sleeps on the context with **no** mmap lock held.
//!
//! Linux 7.3: `mm/userfaultfd.c` (`handle_userfault`,
//! `userfaultfd_register`, `mfill_atomic_copy`, `userfaultfd_read`),
//! `include/uapi/linux/userfaultfd.h`.

mod events;
mod hugetlb;
mod ioctl;
mod mfill;
mod minor;
mod mover;
mod msg;
mod poison;
pub mod probe;
mod register;
pub mod rwp;
mod wait;
mod wp;

#[cfg(test)]
mod events_tests;
#[cfg(test)]
mod gup_tests;
#[cfg(test)]
mod hugetlb_wp_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod wp_tests;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use hmm_types::Errno;

use crate::mm::Mm;
use crate::vma::Vma;

pub(crate) use events::{complete as complete_events, defer_unmap, discard as discard_events, dup_userfaultfd};
pub(crate) use events::{prepare_remap, remove_before_zap, ForkContexts};
pub use msg::*;
pub(crate) use poison::is_poison_marker;
pub(crate) use wait::{verdict, wait_for_handler, Verdict};
pub(crate) use wp::{arm_after_marker_fault, is_wp_marker, markers_to_keep, restore_markers, take_wp_marker};

/// `UFFD_API`.
pub const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY`: only faults from user mode are reported.
pub const UFFD_USER_MODE_ONLY: u32 = 1;
/// `O_NONBLOCK` (x86-64): `read` with nothing pending is `EAGAIN`.
pub const O_NONBLOCK: u32 = 0o4000;
/// `O_CLOEXEC` (x86-64); accepted, no effect in the model.
pub const O_CLOEXEC: u32 = 0o2000000;

/// `UFFD_FEATURE_PAGEFAULT_FLAG_WP`: WP faults say so in the message.
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
/// `UFFD_FEATURE_EVENT_FORK`: fork keeps the registration with a new context (`events.rs`).
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
/// `UFFD_FEATURE_EVENT_REMAP`: mremap keeps the registration and says so (`events.rs`).
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// `UFFD_FEATURE_EVENT_REMOVE`: MADV_DONTNEED/FREE say so first (`events.rs`).
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// `UFFD_FEATURE_MISSING_HUGETLBFS`: MISSING mode on hugetlb (`hugetlb.rs`).
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
/// `UFFD_FEATURE_MISSING_SHMEM`: MISSING mode on shmem.
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// `UFFD_FEATURE_EVENT_UNMAP`: munmap says so (`events.rs`).
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// `UFFD_FEATURE_SIGBUS`: faults get SIGBUS instead of a message.
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
/// `UFFD_FEATURE_THREAD_ID`: messages carry the faulting thread.
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// `UFFD_FEATURE_MINOR_HUGETLBFS`: MINOR mode on hugetlb (`hugetlb.rs`).
pub const UFFD_FEATURE_MINOR_HUGETLBFS: u64 = 1 << 9;
/// `UFFD_FEATURE_MINOR_SHMEM`: MINOR mode on shmem.
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
/// `UFFD_FEATURE_EXACT_ADDRESS`: messages carry the exact fault address.
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: WP mode on hugetlb and shmem (an
/// announcement: asking for it changes nothing).
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// `UFFD_FEATURE_WP_UNPOPULATED`: WRITEPROTECT puts uffd-wp markers in
/// the none entries of anonymous memory too (`wp.rs`).
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_POISON`: UFFDIO_POISON.
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
/// `UFFD_FEATURE_WP_ASYNC`: WP faults are resolved by the kernel.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `UFFD_FEATURE_MOVE`: UFFDIO_MOVE.
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;
/// The features this model offers: Linux 7.3's whole set.
pub const UFFD_API_FEATURES: u64 = UFFD_FEATURE_PAGEFAULT_FLAG_WP
    | UFFD_FEATURE_EVENT_FORK
    | UFFD_FEATURE_EVENT_REMAP
    | UFFD_FEATURE_EVENT_REMOVE
    | UFFD_FEATURE_EVENT_UNMAP
    | UFFD_FEATURE_MISSING_HUGETLBFS
    | UFFD_FEATURE_MISSING_SHMEM
    | UFFD_FEATURE_SIGBUS
    | UFFD_FEATURE_THREAD_ID
    | UFFD_FEATURE_MINOR_HUGETLBFS
    | UFFD_FEATURE_MINOR_SHMEM
    | UFFD_FEATURE_EXACT_ADDRESS
    | UFFD_FEATURE_WP_HUGETLBFS_SHMEM
    | UFFD_FEATURE_POISON
    | UFFD_FEATURE_WP_ASYNC
    | UFFD_FEATURE_WP_UNPOPULATED
    | UFFD_FEATURE_MOVE
    | rwp::UFFD_FEATURE_RWP
    | rwp::UFFD_FEATURE_RWP_ASYNC;

/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 2;
/// `UFFDIO_REGISTER_MODE_MINOR`.
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 4;
/// `UFFDIO_REGISTER_MODE_RWP` (7.3).
pub const UFFDIO_REGISTER_MODE_RWP: u64 = 8;

/// `UFFDIO_COPY_MODE_DONTWAKE` (also ZEROPAGE's).
pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;
/// `UFFDIO_COPY_MODE_WP`.
pub const UFFDIO_COPY_MODE_WP: u64 = 2;
/// `UFFDIO_WRITEPROTECT_MODE_WP`: protect (clear: resolve).
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
/// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`.
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 2;
/// `UFFDIO_CONTINUE_MODE_DONTWAKE`.
pub const UFFDIO_CONTINUE_MODE_DONTWAKE: u64 = 1;
/// `UFFDIO_CONTINUE_MODE_WP`.
pub const UFFDIO_CONTINUE_MODE_WP: u64 = 2;
/// `UFFDIO_MOVE_MODE_DONTWAKE`.
pub const UFFDIO_MOVE_MODE_DONTWAKE: u64 = 1;
/// `UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES`.
pub const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES: u64 = 2;
/// `UFFDIO_POISON_MODE_DONTWAKE`.
pub const UFFDIO_POISON_MODE_DONTWAKE: u64 = 1;

/// ioctl numbers (`_UFFDIO_*`), as bits of the `ioctls` masks.
pub mod nr {
    /// `_UFFDIO_REGISTER`.
    pub const REGISTER: u32 = 0x00;
    /// `_UFFDIO_UNREGISTER`.
    pub const UNREGISTER: u32 = 0x01;
    /// `_UFFDIO_WAKE`.
    pub const WAKE: u32 = 0x02;
    /// `_UFFDIO_COPY`.
    pub const COPY: u32 = 0x03;
    /// `_UFFDIO_ZEROPAGE`.
    pub const ZEROPAGE: u32 = 0x04;
    /// `_UFFDIO_MOVE`.
    pub const MOVE: u32 = 0x05;
    /// `_UFFDIO_WRITEPROTECT`.
    pub const WRITEPROTECT: u32 = 0x06;
    /// `_UFFDIO_CONTINUE`.
    pub const CONTINUE: u32 = 0x07;
    /// `_UFFDIO_POISON`.
    pub const POISON: u32 = 0x08;
    /// `_UFFDIO_RWPROTECT` (7.3).
    pub const RWPROTECT: u32 = 0x09;
    /// `_UFFDIO_SET_MODE` (7.3).
    pub const SET_MODE: u32 = 0x0A;
    /// `_UFFDIO_API`.
    pub const API: u32 = 0x3F;
}

/// Errors of the userfaultfd calls, each with Linux's errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UffdError {
    /// `EINVAL`: a malformed argument or a call out of order.
    #[error("EINVAL: {0}")]
    Invalid(&'static str),
    /// `EPERM`: the mapping may never be written (`VM_MAYWRITE` clear).
    #[error("EPERM: {0}")]
    Perm(&'static str),
    /// `EBUSY`: the range is registered with another userfaultfd.
    #[error("EBUSY: the range is registered with another userfaultfd")]
    Busy,
    /// `EEXIST`: the page is already mapped.
    #[error("EEXIST: a page is already mapped at {0:#x}")]
    Exists(u64),
    /// `EAGAIN`: nothing to read on a non-blocking file.
    #[error("EAGAIN: no message pending")]
    Again,
    /// `EAGAIN` from a resolving ioctl: a non-cooperative event of this
    /// context has not been read yet (`mmap_changing`).
    #[error("EAGAIN: the address space is changing (an event is not read yet)")]
    Changing,
    /// `EAGAIN` from COPY or ZEROPAGE: only the first `copied` bytes were
    /// filled (and woken) before a page failed; Linux stores `copied` in
    /// the `copy`/`zeropage` field.
    #[error("EAGAIN: only {copied:#x} bytes were filled")]
    Partial {
        /// Bytes filled from the start of the range.
        copied: u64,
    },
    /// `ENOENT`: the destination is not a range registered here.
    #[error("ENOENT: {0:#x} is not in a range registered with this userfaultfd")]
    NotRegistered(u64),
    /// `ENOENT`: a page to act on is missing (a MOVE source hole).
    #[error("ENOENT: {0}")]
    NoEntry(&'static str),
    /// `EFAULT`: CONTINUE found no page in the page cache.
    #[error("EFAULT: no page in the page cache at {0:#x}")]
    NoCachedPage(u64),
    /// `EBUSY` from MOVE: the source page is shared or pinned.
    #[error("EBUSY: {0}")]
    PageBusy(&'static str),
    /// `ENOMEM`: no frame for the page.
    #[error("ENOMEM: out of memory")]
    NoMem,
    /// `ESRCH`: the address space has exited.
    #[error("ESRCH: the address space has exited")]
    Exited,
    /// `EOPNOTSUPP`: a mode or memory kind Linux supports but this model
    /// does not.
    #[error("not supported by the model: {0}")]
    NotModelled(&'static str),
}

impl UffdError {
    /// Linux's errno.
    pub fn errno(&self) -> Errno {
        match self {
            Self::Invalid(_) => Errno::Inval,
            Self::Perm(_) => Errno::Perm,
            Self::Busy | Self::PageBusy(_) => Errno::Busy,
            Self::Exists(_) => Errno::Exist,
            Self::Again | Self::Changing | Self::Partial { .. } => Errno::Again,
            Self::NotRegistered(_) | Self::NoEntry(_) => Errno::NoEnt,
            Self::NoCachedPage(_) => Errno::Fault,
            Self::NoMem => Errno::NoMem,
            Self::Exited => Errno::Srch,
            Self::NotModelled(_) => Errno::OpNotSupp,
        }
    }
}

/// What `poll` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PollEvents {
    /// `POLLIN`: a fault message is pending.
    pub readable: bool,
    /// `POLLERR`: the API handshake has not happened.
    pub error: bool,
    /// The [`PollInterrupt`] fired (the test port's stop eventfd).
    pub interrupted: bool,
}

/// A fault waiting for the handler.
struct Waiter {
    id: u64,
    /// Page-aligned fault address.
    page: u64,
    /// The sleeping thread's probe: a wake clears it at once, as Linux's
    /// wake-up makes the task runnable (its wchan reads 0) before it runs.
    probe: probe::SleepProbe,
}

#[derive(Default)]
struct State {
    /// Negotiated features once `UFFDIO_API` succeeded.
    features: Option<u64>,
    /// Queued page faults, not yet read, by waiter id.
    pending: VecDeque<(u64, UffdMsg)>,
    /// Queued non-cooperative events, not yet read (`event_wqh`).
    events: VecDeque<(u64, events::Event, probe::SleepProbe)>,
    /// Events prepared or queued and not yet read: the resolving ioctls
    /// are `EAGAIN` meanwhile.
    mmap_changing: u32,
    /// Faults sleeping until a wake covers their page.
    waiting: Vec<Waiter>,
    next_id: u64,
    /// The file was closed: every fault retries and finds no registration.
    released: bool,
    /// A [`PollInterrupt`] fired and was not yet consumed.
    interrupted: bool,
}

/// The context behind a userfaultfd file (`struct userfaultfd_ctx`).
pub(crate) struct UffdCtx {
    mm: Weak<Mm>,
    user_mode_only: bool,
    nonblocking: bool,
    state: Mutex<State>,
    /// Faults sleep here (`fault_wqh`).
    faults: Condvar,
    /// Blocking readers and pollers sleep here (`fd_wqh`).
    readers: Condvar,
}

impl UffdCtx {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the faults sleeping on a page of `[start, end)`.
    fn wake_range(&self, start: u64, end: u64) {
        let mut state = self.lock();
        let before = state.waiting.len();
        state.waiting.retain(|w| {
            let keep = w.page < start || w.page >= end;
            if !keep {
                w.probe.set(false);
            }
            keep
        });
        if state.waiting.len() != before {
            self.faults.notify_all();
        }
    }
}

impl crate::signal::SignalWake for UffdCtx {
    fn wake_for_signal(&self) {
        let _state = self.lock();
        self.faults.notify_all();
    }
}

/// A VMA's registration (`vm_userfaultfd_ctx`): equal when it names the
/// same context, so only VMAs of one context merge.
#[derive(Clone)]
pub struct UffdBinding(pub(crate) Arc<UffdCtx>);

impl PartialEq for UffdBinding {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl core::fmt::Debug for UffdBinding {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "UffdBinding({:p})", Arc::as_ptr(&self.0))
    }
}

/// Clears a VMA's registration in a fork child (`dup_userfaultfd` without
/// `UFFD_FEATURE_EVENT_FORK`).
pub(crate) fn forget_on_fork(vma: &mut Vma) {
    vma.uffd = None;
    vma.flags.remove(UFFD_VM_FLAGS);
}

/// Every `VM_UFFD_*` flag (`__VM_UFFD_FLAGS`).
pub(crate) const UFFD_VM_FLAGS: hmm_types::VmFlags = hmm_types::VmFlags::UFFD_MISSING
    .union(hmm_types::VmFlags::UFFD_WP)
    .union(hmm_types::VmFlags::UFFD_MINOR)
    .union(hmm_types::VmFlags::UFFD_RWP);

/// An open userfaultfd (`userfaultfd(2)`); dropping it is `close`, which
/// unregisters every range and lets waiting faults proceed.
pub struct Userfaultfd {
    ctx: Arc<UffdCtx>,
}

impl core::fmt::Debug for Userfaultfd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Userfaultfd").field("ctx", &Arc::as_ptr(&self.ctx)).finish()
    }
}

/// Ends a [`Userfaultfd::poll_wait`] from another thread, as a write to an
/// eventfd polled alongside the userfaultfd does.
#[derive(Clone)]
pub struct PollInterrupt(Weak<UffdCtx>);

impl core::fmt::Debug for PollInterrupt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PollInterrupt")
    }
}

impl PollInterrupt {
    /// Wakes the poller (it sees `interrupted`).
    pub fn interrupt(&self) {
        if let Some(ctx) = self.0.upgrade() {
            ctx.lock().interrupted = true;
            ctx.readers.notify_all();
        }
    }
}

impl Userfaultfd {
    /// `userfaultfd(flags)` for the process owning `mm`. `flags` ⊆
    /// {`O_CLOEXEC`, `O_NONBLOCK`, `UFFD_USER_MODE_ONLY`}, else `EINVAL`.
    /// The model's caller is privileged (`CAP_SYS_PTRACE`), so `EPERM`
    /// never happens.
    pub fn new(mm: &Arc<Mm>, flags: u32) -> Result<Self, UffdError> {
        if flags & !(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY) != 0 {
            return Err(UffdError::Invalid("unknown userfaultfd flags"));
        }
        if mm.has_exited() {
            return Err(UffdError::Exited);
        }
        let ctx = Arc::new(UffdCtx {
            mm: Arc::downgrade(mm),
            user_mode_only: flags & UFFD_USER_MODE_ONLY != 0,
            nonblocking: flags & O_NONBLOCK != 0,
            state: Mutex::new(State::default()),
            faults: Condvar::new(),
            readers: Condvar::new(),
        });
        let waker: Weak<dyn crate::signal::SignalWake> = Arc::downgrade(&ctx) as Weak<UffdCtx>;
        mm.signals().add_waker(waker);
        Ok(Self { ctx })
    }

    /// `UFFDIO_API`: `api` must be [`UFFD_API`] and `features` a subset of
    /// [`UFFD_API_FEATURES`] (`RWP_ASYNC` only with `RWP`); once per file.
    /// Returns (features, ioctls): the available features and the bits of
    /// the file-level ioctls (7.3 adds `SET_MODE`).
    pub fn api(&self, api: u64, features: u64) -> Result<(u64, u64), UffdError> {
        let mut state = self.ctx.lock();
        if state.features.is_some() {
            return Err(UffdError::Invalid("UFFDIO_API was already called on this file"));
        }
        if api != UFFD_API {
            return Err(UffdError::Invalid("api must be UFFD_API (0xAA)"));
        }
        if features & !UFFD_API_FEATURES != 0 {
            return Err(UffdError::Invalid("a requested feature is unknown"));
        }
        if features & rwp::UFFD_FEATURE_RWP_ASYNC != 0 && features & rwp::UFFD_FEATURE_RWP == 0 {
            return Err(UffdError::Invalid("UFFD_FEATURE_RWP_ASYNC needs UFFD_FEATURE_RWP"));
        }
        state.features = Some(features);
        let ioctls = (1 << nr::REGISTER) | (1 << nr::UNREGISTER) | (1 << nr::SET_MODE) | (1u64 << nr::API);
        Ok((UFFD_API_FEATURES, ioctls))
    }

    /// `read(2)`: the oldest pending message. `EAGAIN` when nothing is
    /// pending on a non-blocking file; a blocking file sleeps until a
    /// fault queues one. `EINVAL` before `UFFDIO_API`.
    pub fn read(&self) -> Result<UffdMsg, UffdError> {
        // A FORK's new file is closed at once (see `read_event`).
        self.read_event().map(|(msg, _)| msg)
    }

    /// `poll(2)` without sleeping.
    pub fn poll(&self) -> PollEvents {
        let state = self.ctx.lock();
        Self::events(&state)
    }

    /// `poll(2)` with no timeout over this file and its [`PollInterrupt`]:
    /// sleeps until a message is pending or the interrupt fires (consumed).
    pub fn poll_wait(&self) -> PollEvents {
        let mut state = self.ctx.lock();
        loop {
            let events = Self::events(&state);
            if events != PollEvents::default() {
                state.interrupted = false;
                return events;
            }
            state = self.ctx.readers.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The handle that ends [`Self::poll_wait`].
    pub fn poll_interrupt(&self) -> PollInterrupt {
        PollInterrupt(Arc::downgrade(&self.ctx))
    }

    fn events(state: &State) -> PollEvents {
        PollEvents {
            readable: state.features.is_some() && !(state.pending.is_empty() && state.events.is_empty()),
            error: state.features.is_none(),
            interrupted: state.interrupted,
        }
    }

    /// The negotiated features, or `EINVAL` before `UFFDIO_API`.
    pub(crate) fn features(&self) -> Result<u64, UffdError> {
        self.ctx.lock().features.ok_or(UffdError::Invalid("UFFDIO_API has not been called"))
    }

    /// `EAGAIN` while an event of this context is not read yet (the
    /// resolving ioctls check `mmap_changing` first).
    pub(crate) fn check_changing(&self) -> Result<(), UffdError> {
        if self.ctx.lock().mmap_changing > 0 {
            return Err(UffdError::Changing);
        }
        Ok(())
    }

    /// The address space, with a user reference for the call.
    pub(crate) fn mm(&self) -> Result<crate::mm::MmUser, UffdError> {
        self.ctx.mm.upgrade().and_then(|mm| mm.mmget_not_zero()).ok_or(UffdError::Exited)
    }
}

/// Whether `vma` is registered with this context.
fn is_mine(ctx: &Arc<UffdCtx>, vma: &Vma) -> bool {
    vma.uffd.as_ref().is_some_and(|b| Arc::ptr_eq(&b.0, ctx))
}

/// Page-aligned, non-empty, inside the user address space.
fn check_range(start: u64, len: u64) -> Result<u64, UffdError> {
    let page = hmm_types::PAGE_SIZE;
    if start % page != 0 || len % page != 0 || len == 0 {
        return Err(UffdError::Invalid("start and len must be page aligned and len non-zero"));
    }
    let end = start.checked_add(len).ok_or(UffdError::Invalid("range wraps"))?;
    if end > hmm_types::TASK_SIZE {
        return Err(UffdError::Invalid("range beyond the user address space"));
    }
    Ok(end)
}
