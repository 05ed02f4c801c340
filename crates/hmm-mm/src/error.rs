//! Errors of the memory manager: one enum, each variant with Linux's errno.

use hmm_types::{Errno, VaRange};

/// Why an access faulted with SIGSEGV.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SegvReason {
    /// No mapping at the address (`SEGV_MAPERR`).
    NotMapped,
    /// The mapping does not allow the access (`SEGV_ACCERR`).
    Protection,
    /// The page is a guard page (MADV_GUARD_INSTALL): `VM_FAULT_SIGSEGV`
    /// from `handle_pte_marker`, which x86 reports as `SEGV_MAPERR`.
    GuardRegion,
}

impl core::fmt::Display for SegvReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NotMapped => "no mapping at this address",
            Self::Protection => "the mapping does not permit this access",
            Self::GuardRegion => "the page is a guard page",
        })
    }
}

/// Why a fault could not be handled (`VM_FAULT_ERROR` in Linux).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum FaultError {
    /// `VM_FAULT_SIGSEGV`.
    #[error("SIGSEGV: {0}")]
    Segv(SegvReason),
    /// `VM_FAULT_SIGBUS`: e.g. beyond end of file, or a pagemap gone.
    #[error("SIGBUS: {0}")]
    Sigbus(&'static str),
    /// `VM_FAULT_OOM`.
    #[error("out of memory while handling the fault")]
    Oom,
    /// `VM_FAULT_HWPOISON`: the page behind the address is poisoned.
    #[error("the page is hardware-poisoned")]
    Hwpoison,
}

/// Errors of the memory manager's public operations.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmError {
    /// Malformed argument (unaligned, zero length, overflow, bad flags).
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// No frame or page-table page could be allocated.
    #[error("out of memory")]
    NoMem,
    /// Part of the range is not mapped (mprotect, madvise, mremap).
    #[error("{0} is not fully mapped")]
    NotMapped(VaRange),
    /// The range reaches past the user address space or wraps (mprotect,
    /// madvise and mmap report these as `ENOMEM`).
    #[error("range outside the user address space: {0}")]
    OutOfRange(&'static str),
    /// No free range of the address space fits.
    #[error("no free address range of {0:#x} bytes")]
    NoSpace(u64),
    /// MAP_FIXED_NOREPLACE over an existing mapping.
    #[error("{0} overlaps an existing mapping")]
    Exists(VaRange),
    /// The protection asked for exceeds what the mapping may get.
    #[error("permission denied: {0}")]
    Access(&'static str),
    /// An access or fault failed.
    #[error("fault at {addr:#x}: {error}")]
    Fault {
        /// Faulting address.
        addr: u64,
        /// What went wrong.
        error: FaultError,
    },
    /// The operation is not supported for this kind of mapping.
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// A resource is busy (a pinned page, a pagemap going away).
    #[error("busy: {0}")]
    Busy(&'static str),
    /// A non-blocking invalidation was refused; retry later.
    #[error("try again: an invalidation subscriber refused a non-blocking request")]
    Again,
    /// The VMA is sealed (mseal) and the operation would change it.
    #[error("operation not permitted: {0}")]
    Sealed(&'static str),
    /// The address space has exited.
    #[error("the address space has exited")]
    Exited,
    /// The file descriptor does not allow the operation.
    #[error("bad file descriptor: {0}")]
    BadFile(&'static str),
    /// No such file.
    #[error("no such file or directory: {0}")]
    NoEntry(&'static str),
    /// An I/O error of a backing store.
    #[error("I/O error: {0}")]
    Io(&'static str),
    /// No space left on a device.
    #[error("no space left on device: {0}")]
    DeviceFull(&'static str),
    /// A file offset past the largest file size.
    #[error("file too large: {0}")]
    FileTooBig(&'static str),
    /// An offset or size does not fit.
    #[error("value too large: {0}")]
    Overflow(&'static str),
    /// The file is no regular file or block device (`vfs_fallocate` on a
    /// character device such as device-DAX).
    #[error("no such device: {0}")]
    NoDevice(&'static str),
    /// A fatal signal arrived while the call waited (a userfaultfd
    /// handler, for MADV_POPULATE_*).
    #[error("interrupted by a fatal signal")]
    Interrupted,
    /// A persistent-memory device or its DAX image: the backing file's own
    /// error (kept as the source), a lock held elsewhere, a corrupt image.
    #[error(transparent)]
    Pmem(#[from] crate::fs::PmemError),
}

impl MmError {
    /// Linux's errno for this error.
    pub fn errno(&self) -> Errno {
        match self {
            Self::Invalid(_) => Errno::Inval,
            Self::NoMem | Self::NotMapped(_) | Self::NoSpace(_) | Self::OutOfRange(_) => Errno::NoMem,
            Self::Exists(_) => Errno::Exist,
            Self::Access(_) => Errno::Acces,
            Self::Fault { .. } => Errno::Fault,
            Self::NotSupported(_) => Errno::OpNotSupp,
            Self::Busy(_) => Errno::Busy,
            Self::Again => Errno::Again,
            Self::Exited => Errno::Srch,
            Self::Sealed(_) => Errno::Perm,
            Self::BadFile(_) => Errno::BadF,
            Self::NoEntry(_) => Errno::NoEnt,
            Self::NoDevice(_) => Errno::NoDev,
            Self::Overflow(_) => Errno::Overflow,
            Self::Interrupted => Errno::Intr,
            Self::FileTooBig(_) => Errno::FBig,
            Self::Io(_) => Errno::Io,
            Self::DeviceFull(_) => Errno::NoSpc,
            Self::Pmem(error) => error.errno(),
        }
    }
    /// Wraps a range validation errno from [`VaRange`].
    pub(crate) fn from_range(errno: Errno) -> Self {
        match errno {
            Errno::NoMem => Self::Invalid("range beyond the user address space"),
            _ => Self::Invalid("address or length not page aligned, zero, or overflowing"),
        }
    }
}

impl From<crate::phys::OutOfMemory> for MmError {
    fn from(_: crate::phys::OutOfMemory) -> Self {
        Self::NoMem
    }
}

impl From<hmm_pagetable::TableStoreFull> for MmError {
    fn from(_: hmm_pagetable::TableStoreFull) -> Self {
        Self::NoMem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert_eq!(MmError::Invalid("x").errno(), Errno::Inval);
        assert_eq!(MmError::Fault { addr: 0, error: FaultError::Segv(SegvReason::NotMapped) }.errno(), Errno::Fault);
        assert_eq!(MmError::Exists(VaRange::new(0x1000, 0x1000).unwrap()).errno(), Errno::Exist);
        assert_eq!(MmError::Exited.errno(), Errno::Srch);
        assert_eq!(MmError::Sealed("x").errno(), Errno::Perm);
    }
}
