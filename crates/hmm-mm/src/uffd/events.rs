//! The non-cooperative events: a context that negotiated
//! `UFFD_FEATURE_EVENT_FORK`, `_REMAP`, `_REMOVE` or `_UNMAP` is told when
//! its registered memory is forked, moved, discarded or unmapped, so a
//! monitor outside the process can follow the layout.
//!
//! The operation prepares each event while it holds the mmap lock
//! (`defer_*`: the event is kept on a per-thread list, as Linux keeps it
//! on the caller's stack, and the context's `mmap_changing` count makes
//! the resolving ioctls `EAGAIN` until the event is read), and sends it
//! after the lock is dropped ([`complete`]): the message goes on the
//! context's event queue and the caller sleeps (killable, with no lock)
//! until the monitor reads it or closes the file. MADV_DONTNEED/FREE
//! send REMOVE before zapping, with the read lock released
//! ([`remove_before_zap`]). A read returns pending page faults before any
//! event, events oldest first.
//!
//! What each event carries (the host's 6.18 kernel agrees): UNMAP the
//! whole munmap / MAP_FIXED / mremap-shrink range once per context (not
//! cut to the registered part); REMOVE the madvise range cut to each
//! registered VMA; REMAP `from`, `to` and the old length, then UNMAP of
//! the old range; FORK a new context for the child, whose VMAs stay
//! registered with it (and keep their uffd-wp bits).
//!
//! Linux 7.3: `mm/userfaultfd.c` (`dup_userfaultfd`,
//! `dup_userfaultfd_complete`, `mremap_userfaultfd_prep`,
//! `mremap_userfaultfd_complete`, `userfaultfd_remove`,
//! `userfaultfd_unmap_prep`, `userfaultfd_unmap_complete`,
//! `userfaultfd_event_wait_completion`, `userfaultfd_ctx_read`).

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex, Weak};

use super::{
    State, UffdCtx, UffdMsg, Userfaultfd, UFFD_FEATURE_EVENT_FORK, UFFD_FEATURE_EVENT_REMAP, UFFD_FEATURE_EVENT_REMOVE,
    UFFD_FEATURE_EVENT_UNMAP,
};
use crate::mm::{Mm, MmapReadGuard};
use crate::vma::Vma;

/// One prepared event, before the message exists.
pub(crate) enum Event {
    /// A child context to hand to the monitor.
    Fork(Arc<UffdCtx>),
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    Remove {
        start: u64,
        end: u64,
    },
    Unmap {
        start: u64,
        end: u64,
    },
}

impl Event {
    fn msg(&self) -> UffdMsg {
        match *self {
            // The model has no descriptor table: the new file is handed
            // out by `read_event`, the message's `ufd` is 0.
            Self::Fork(_) => UffdMsg::fork(0),
            Self::Remap { from, to, len } => UffdMsg::remap(from, to, len),
            Self::Remove { start, end } => UffdMsg::remove(start, end),
            Self::Unmap { start, end } => UffdMsg::unmap(start, end),
        }
    }
}

thread_local! {
    /// Events prepared under the mmap lock by this thread's current call.
    static DEFERRED: RefCell<Vec<(Arc<UffdCtx>, Event)>> = const { RefCell::new(Vec::new()) };
}

fn has(ctx: &UffdCtx, feature: u64) -> bool {
    ctx.lock().features.unwrap_or(0) & feature != 0
}

/// Keeps `event` for `ctx` until [`complete`]; resolving ioctls on `ctx`
/// are `EAGAIN` from now until the monitor has read it.
fn defer(ctx: &Arc<UffdCtx>, event: Event) {
    ctx.lock().mmap_changing += 1;
    DEFERRED.with(|d| d.borrow_mut().push((ctx.clone(), event)));
}

/// `userfaultfd_unmap_prep`: `vma` (overlapping `[start, end)`) is about
/// to be unmapped; one UNMAP of the whole range per context.
pub(crate) fn defer_unmap(vma: &Vma, start: u64, end: u64) {
    let Some(binding) = &vma.uffd else { return };
    if !has(&binding.0, UFFD_FEATURE_EVENT_UNMAP) {
        return;
    }
    let seen = DEFERRED.with(|d| {
        d.borrow().iter().any(|(ctx, e)| {
            Arc::ptr_eq(ctx, &binding.0) && matches!(*e, Event::Unmap { start: s, end: x } if s == start && x == end)
        })
    });
    if !seen {
        defer(&binding.0, Event::Unmap { start, end });
    }
}

/// `mremap_userfaultfd_prep`: whether the moved copy of `vma` stays
/// registered (EVENT_REMAP negotiated); if so a REMAP is prepared.
pub(crate) fn prepare_remap(vma: &Vma, from: u64, to: u64, len: u64) -> bool {
    let Some(binding) = &vma.uffd else { return false };
    if !has(&binding.0, UFFD_FEATURE_EVENT_REMAP) {
        return false;
    }
    defer(&binding.0, Event::Remap { from, to, len });
    true
}

/// The child contexts of one fork: parent context → child context.
#[derive(Default)]
pub(crate) struct ForkContexts(Vec<(Arc<UffdCtx>, Arc<UffdCtx>)>);

/// `dup_userfaultfd`: a child's copy of a registered VMA keeps a
/// registration only with EVENT_FORK, with a new context (one per parent
/// context) that the monitor gets through the FORK message. Returns
/// whether the copy stays registered.
pub(crate) fn dup_userfaultfd(copy: &mut Vma, child: &Arc<Mm>, forks: &mut ForkContexts) -> bool {
    let Some(binding) = copy.uffd.clone() else { return false };
    let parent = &binding.0;
    if !has(parent, UFFD_FEATURE_EVENT_FORK) {
        super::forget_on_fork(copy);
        return false;
    }
    let new = match forks.0.iter().find(|(p, _)| Arc::ptr_eq(p, parent)) {
        Some((_, new)) => new.clone(),
        None => {
            let features = parent.lock().features;
            let new = Arc::new(UffdCtx {
                mm: Arc::downgrade(child),
                user_mode_only: parent.user_mode_only,
                nonblocking: parent.nonblocking,
                state: Mutex::new(State { features, ..State::default() }),
                faults: Condvar::new(),
                readers: Condvar::new(),
            });
            let waker: Weak<dyn crate::signal::SignalWake> = Arc::downgrade(&new) as Weak<UffdCtx>;
            child.signals().add_waker(waker);
            defer(parent, Event::Fork(new.clone()));
            forks.0.push((parent.clone(), new.clone()));
            new
        }
    };
    copy.uffd = Some(super::UffdBinding(new));
    true
}

/// Sends every event this thread prepared, in order, each waiting until
/// the monitor read it (or closed the file, or a fatal signal came). Call
/// with no mmap lock held, at the end of the operation.
pub(crate) fn complete() {
    let deferred = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    for (ctx, event) in deferred {
        send_and_wait(&ctx, event);
    }
}

/// Drops what a failed operation prepared (`dup_userfaultfd_fail`): the
/// child contexts are closed, nothing is sent.
pub(crate) fn discard() {
    let deferred = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    for (ctx, event) in deferred {
        ctx.lock().mmap_changing -= 1;
        if let Event::Fork(new) = event {
            drop(Userfaultfd { ctx: new });
        }
    }
}

/// `userfaultfd_remove`: before MADV_DONTNEED/FREE zap `[start, end)` (a
/// piece of one VMA), a context with EVENT_REMOVE is told, the read lock
/// released while the caller waits. Returns whether the lock was dropped
/// (the caller must look its VMA up again).
pub(crate) fn remove_before_zap(guard: &mut MmapReadGuard<'_>, start: u64, end: u64) -> bool {
    let Some(binding) = guard.lookup(start).and_then(|v| v.uffd.clone()) else { return false };
    if !has(&binding.0, UFFD_FEATURE_EVENT_REMOVE) {
        return false;
    }
    binding.0.lock().mmap_changing += 1;
    guard.unlocked(|| send_and_wait(&binding.0, Event::Remove { start, end }));
    true
}

/// `userfaultfd_event_wait_completion`: queues the message and sleeps
/// until it was read. A closed context takes no message; a FORK that is
/// never delivered closes the child's context.
fn send_and_wait(ctx: &Arc<UffdCtx>, event: Event) {
    let mm = ctx.mm.upgrade();
    let mut state = ctx.lock();
    if state.released {
        state.mmap_changing -= 1;
        drop(state);
        if let Event::Fork(new) = event {
            drop(Userfaultfd { ctx: new });
        }
        return;
    }
    let id = state.next_id;
    state.next_id += 1;
    // The reader clears the probe as it takes the event (the sender is
    // then runnable, as a woken task's wchan is 0).
    let probe = super::probe::current();
    probe.set(true);
    state.events.push_back((id, event, probe.clone()));
    ctx.readers.notify_all();
    let mut undelivered = None;
    loop {
        if !state.events.iter().any(|(i, ..)| *i == id) {
            break;
        }
        if state.released || mm.as_ref().is_some_and(|mm| mm.fatal_signal_pending()) {
            if let Some(at) = state.events.iter().position(|(i, ..)| *i == id) {
                undelivered = state.events.remove(at).map(|(_, e, _)| e);
                state.mmap_changing -= 1;
            }
            break;
        }
        state = ctx.faults.wait(state).unwrap_or_else(|p| p.into_inner());
    }
    probe.set(false);
    drop(state);
    if let Some(Event::Fork(new)) = undelivered {
        drop(Userfaultfd { ctx: new });
    }
}

impl Userfaultfd {
    /// `read(2)` keeping what a FORK message hands over: the child's new
    /// userfaultfd (Linux installs it as a descriptor of the reader and
    /// puts its number in the message). Page faults come before events.
    pub fn read_event(&self) -> Result<(UffdMsg, Option<Userfaultfd>), super::UffdError> {
        let mut state = self.ctx.lock();
        if state.features.is_none() {
            return Err(super::UffdError::Invalid("read before UFFDIO_API"));
        }
        loop {
            if let Some((_, msg)) = state.pending.pop_front() {
                return Ok((msg, None));
            }
            if let Some((_, event, sender)) = state.events.pop_front() {
                sender.set(false);
                // The sender wakes and goes on; its event no longer holds
                // the resolving ioctls back.
                state.mmap_changing -= 1;
                self.ctx.faults.notify_all();
                let msg = event.msg();
                let file = match event {
                    Event::Fork(new) => Some(Userfaultfd { ctx: new }),
                    _ => None,
                };
                return Ok((msg, file));
            }
            if self.ctx.nonblocking {
                return Err(super::UffdError::Again);
            }
            state = self.ctx.readers.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}
