//! The synchronization primitives of this crate, from `std` normally and
//! from `loom` when built with `--cfg loom`, so the sequence protocol can be
//! model-checked exhaustively with the very code that runs in production.

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Condvar, Mutex, MutexGuard,
};

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Condvar, Mutex, MutexGuard,
};

// Reference counting is not what the protocol's correctness rests on, and
// `std`'s `Arc` allows `dyn` callbacks and `self: &Arc<Self>` receivers.
pub(crate) use std::sync::Arc;

/// Locks, treating poisoning (a panicked callback) as fatal to the test
/// that caused it rather than to every later user.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
