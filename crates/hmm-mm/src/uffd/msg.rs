//! The messages a userfaultfd hands out (`struct uffd_msg`, 32 bytes): a
//! page fault, or one of the non-cooperative events, with Linux's event
//! numbers and fault flags.
//!
//! Linux 7.3: `include/uapi/linux/userfaultfd.h`.

/// `UFFD_EVENT_PAGEFAULT`.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_FORK`: the message carries the child's new userfaultfd.
pub const UFFD_EVENT_FORK: u8 = 0x13;
/// `UFFD_EVENT_REMAP`: `from`, `to`, `len` of an mremap move.
pub const UFFD_EVENT_REMAP: u8 = 0x14;
/// `UFFD_EVENT_REMOVE`: `start`, `end` of MADV_DONTNEED/FREE.
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
/// `UFFD_EVENT_UNMAP`: `start`, `end` of an unmapped range.
pub const UFFD_EVENT_UNMAP: u8 = 0x16;
/// `UFFD_PAGEFAULT_FLAG_WRITE`.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
/// `UFFD_PAGEFAULT_FLAG_WP`: a write to a write-protected page.
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
/// `UFFD_PAGEFAULT_FLAG_MINOR`: the page is in the page cache, not mapped.
pub const UFFD_PAGEFAULT_FLAG_MINOR: u64 = 1 << 2;

/// One message (`struct uffd_msg`): the event and the three 64-bit words
/// of its argument union (`arg` at byte 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    /// The union's words: PAGEFAULT `flags`, `address`, `ptid` (low 32
    /// bits); FORK `ufd` (low 32 bits of the first); REMAP `from`, `to`,
    /// `len`; REMOVE and UNMAP `start`, `end`.
    pub arg: [u64; 3],
}

impl UffdMsg {
    /// A page fault (`ptid` is 0: the model has no thread ids).
    pub fn pagefault(flags: u64, address: u64) -> Self {
        Self { event: UFFD_EVENT_PAGEFAULT, arg: [flags, address, 0] }
    }
    pub(crate) fn fork(ufd: u32) -> Self {
        Self { event: UFFD_EVENT_FORK, arg: [u64::from(ufd), 0, 0] }
    }
    pub(crate) fn remap(from: u64, to: u64, len: u64) -> Self {
        Self { event: UFFD_EVENT_REMAP, arg: [from, to, len] }
    }
    pub(crate) fn remove(start: u64, end: u64) -> Self {
        Self { event: UFFD_EVENT_REMOVE, arg: [start, end, 0] }
    }
    pub(crate) fn unmap(start: u64, end: u64) -> Self {
        Self { event: UFFD_EVENT_UNMAP, arg: [start, end, 0] }
    }
    /// A page fault's `UFFD_PAGEFAULT_FLAG_*`.
    pub fn flags(&self) -> u64 {
        self.arg[0]
    }
    /// A page fault's address (page aligned unless EXACT_ADDRESS).
    pub fn address(&self) -> u64 {
        self.arg[1]
    }

    /// The 32-byte packed layout `read(2)` returns.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[0] = self.event;
        for (i, word) in self.arg.iter().enumerate() {
            out[8 + 8 * i..16 + 8 * i].copy_from_slice(&word.to_le_bytes());
        }
        out
    }
}
