//! The shared vocabulary of hmm.
//!
//! Owns the small value types every other crate speaks: virtual addresses and
//! page frame numbers ([`VirtAddr`], [`Pfn`]), page sizes ([`PageSize`]),
//! validated address ranges ([`VaRange`]), protection and mapping flags as
//! Linux numbers them ([`Prot`], [`MapFlags`], [`VmFlags`]), Linux error
//! numbers ([`Errno`]) and the invalidation vocabulary ([`Event`],
//! [`NotifierRange`], [`MmuNotifier`]).
//!
//! It holds no state and no logic beyond validation; it must not depend on any
//! other hmm crate.

#![forbid(unsafe_code)]

mod addr;
mod errno;
mod event;
mod flags;
mod range;

pub use addr::{PageSize, Pfn, VirtAddr, PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT, PMD_SIZE, PUD_SHIFT, PUD_SIZE, TASK_SIZE};
pub use errno::Errno;
pub use event::{Event, MmId, MmuNotifier, NotifierRange, Owner};
pub use flags::{MadviseAdvice, MapFlags, MremapFlags, Prot, VmFlags};
pub use range::VaRange;
