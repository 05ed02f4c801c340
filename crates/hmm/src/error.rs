//! Errors of the driver-facing API, each with Linux's errno.

use hmm_types::Errno;

/// Why `range_fault` (or the retry loop) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HmmError {
    /// An invalidation collided with the walk: take a new `read_begin` and
    /// retry (`-EBUSY`). The retry loop also returns it when its time
    /// budget runs out.
    #[error("EBUSY: the range was invalidated during the walk; retry")]
    Busy,
    /// A fault was required and cannot be satisfied (`-EFAULT`).
    #[error("EFAULT: {0}")]
    Fault(&'static str),
    /// A write fault was required on a mapping without write permission
    /// (`-EPERM`).
    #[error("EPERM: write requested on a mapping without PROT_WRITE")]
    Perm,
    /// Malformed range (`-EINVAL`).
    #[error("EINVAL: {0}")]
    Invalid(&'static str),
    /// The fault handler ran out of memory (`-ENOMEM`; `-EFAULT` before
    /// Linux 7.3).
    #[error("ENOMEM: out of memory while faulting")]
    NoMem,
    /// A fatal signal is pending (`-EINTR`, unlocked variant).
    #[error("EINTR: a fatal signal is pending")]
    Intr,
}

impl HmmError {
    /// Linux's errno.
    pub fn errno(&self) -> Errno {
        match self {
            Self::Busy => Errno::Busy,
            Self::Fault(_) => Errno::Fault,
            Self::Perm => Errno::Perm,
            Self::Invalid(_) => Errno::Inval,
            Self::NoMem => Errno::NoMem,
            Self::Intr => Errno::Intr,
        }
    }
}
