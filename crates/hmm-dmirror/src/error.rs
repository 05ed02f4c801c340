//! The device's errors: each names what went wrong and carries the errno
//! Linux's test device returns for it.

use hmm::HmmError;
use hmm_mm::MmError;
use hmm_types::Errno;

/// Why a dmirror command failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmirrorError {
    /// An ioctl number the device does not know (`EINVAL`).
    #[error("unknown request {0:#x}")]
    UnknownRequest(u64),
    /// A caller's buffer has the wrong size for the range (`EINVAL`).
    #[error("the buffer holds {got} bytes, the range needs {expected}")]
    BufferLength {
        /// Bytes the range needs.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// `addr` is not page aligned (`EINVAL`).
    #[error("address {0:#x} is not page aligned")]
    Unaligned(u64),
    /// `npages` is zero or the range wraps (`EINVAL`).
    #[error("{npages} pages from {addr:#x} is an empty or overflowing range")]
    BadRange {
        /// The address given.
        addr: u64,
        /// The page count given.
        npages: u64,
    },
    /// The mirrored address space has exited, seen by SNAPSHOT, MIGRATE or
    /// EXCLUSIVE (`EINVAL`).
    #[error("the mirrored address space has exited")]
    MmGone,
    /// The mirrored address space has exited, seen by the fault round of
    /// READ or WRITE (`EFAULT`, Linux 7.3's `dmirror_fault`).
    #[error("the mirrored address space has exited before the device fault")]
    MmGoneInFault,
    /// A migration chunk starts outside any VMA, or in one without
    /// `VM_READ` (`EINVAL`).
    #[error("no readable mapping at {0:#x}")]
    NoReadableVma(u64),
    /// After the command, the device has no mapping of this page: for
    /// MIGRATE_TO_DEV and EXCLUSIVE, which read the range back (`ENOENT`).
    #[error("the device has no mapping of {0:#x}")]
    NotMapped(u64),
    /// A page is still mapped for device atomics (CHECK_EXCLUSIVE, `EPERM`).
    #[error("{0:#x} is still device-exclusive")]
    StillExclusive(u64),
    /// A write was asked and the walk returned a read-only page without
    /// faulting (an owned read-only device-private page, `EFAULT`).
    #[error("{0:#x}: the walk reported a read-only page for a write")]
    ReadOnlyForWrite(u64),
    /// The user buffer at `ptr` could not be copied (`EFAULT`).
    #[error("cannot copy the user buffer at {0:#x}")]
    UserCopy(u64),
    /// The device or the system ran out of memory (`ENOMEM`).
    #[error("out of memory: {0}")]
    NoMem(&'static str),
    /// The file already has a DMA window (`EBUSY`).
    #[error("a DMA device is already attached to this file")]
    DmaAttached,
    /// A DMA helper failed (its errno).
    #[error(transparent)]
    Dma(#[from] hmm::dma::DmaError),
    /// The walk failed.
    #[error(transparent)]
    Hmm(#[from] HmmError),
    /// The memory manager refused.
    #[error(transparent)]
    Mm(#[from] MmError),
}

impl DmirrorError {
    /// The errno Linux's test device returns.
    pub fn errno(&self) -> Errno {
        match self {
            Self::UnknownRequest(_)
            | Self::BufferLength { .. }
            | Self::Unaligned(_)
            | Self::BadRange { .. }
            | Self::MmGone
            | Self::NoReadableVma(_) => Errno::Inval,
            Self::NotMapped(_) => Errno::NoEnt,
            Self::StillExclusive(_) => Errno::Perm,
            Self::ReadOnlyForWrite(_) | Self::UserCopy(_) | Self::MmGoneInFault => Errno::Fault,
            Self::NoMem(_) => Errno::NoMem,
            Self::DmaAttached => Errno::Busy,
            Self::Dma(error) => error.errno(),
            Self::Hmm(error) => error.errno(),
            Self::Mm(error) => error.errno(),
        }
    }
}
