//! What an executor reports for each operation: its [`Outcome`] (a value,
//! an errno, a fault, a VMA list, per-page facts), plus, from the model,
//! the invalidations it caused. The printed form of an outcome is what
//! `expect` lines compare against.
//!
//! Linux: `fs/proc/task_mmu.c` (`show_map_vma`, `pagemap_read`,
//! `do_pagemap_scan`).

use core::fmt;

use serde::{Deserialize, Serialize};

/// What backs a VMA, as the last column of /proc/PID/maps tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backing {
    /// Private anonymous memory (no path).
    Anon,
    /// `MAP_SHARED|MAP_ANONYMOUS` (`/dev/zero (deleted)`).
    SharedAnon,
    /// A memfd/tmpfs file created by the scenario, by its name.
    File(String),
    /// hugetlbfs memory (`/anon_hugepage (deleted)`).
    Hugetlb,
    /// Anything else, as the host printed it.
    Other(String),
}

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmaView {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// `rwxp`/`rwxs` column.
    pub perms: String,
    /// Offset column, in bytes (0 for anonymous memory, as Linux prints).
    pub offset: u64,
    /// Path column.
    pub backing: Backing,
}

/// Facts about one page from pagemap and PAGEMAP_SCAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PageView {
    /// `PM_PRESENT`.
    pub present: bool,
    /// `PM_SWAP` (any non-present entry).
    pub swapped: bool,
    /// `PM_MMAP_EXCLUSIVE`.
    pub exclusive: bool,
    /// `PM_FILE` (file page or shared anonymous).
    pub file: bool,
    /// `PAGE_IS_HUGE`: mapped by a PMD (THP) or hugetlb.
    pub huge: bool,
    /// `PAGE_IS_PFNZERO`: the zero page or the huge zero page.
    pub zero: bool,
    /// `PM_GUARD_REGION` (bit 58): a guard page (MADV_GUARD_INSTALL),
    /// reported with `PM_SWAP`.
    #[serde(default)]
    pub guard: bool,
    /// `PM_UFFD_WP`: write-protected by userfaultfd.
    #[serde(default)]
    pub uffd_wp: bool,
}

/// The result of one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Success with no value.
    Ok,
    /// An address (mmap, mremap).
    Addr(u64),
    /// A value read, or returned by an atomic or pread.
    Value(u64),
    /// The call failed with this errno (positive number).
    Errno(i32),
    /// The access faulted (SIGSEGV or SIGBUS; the host runner observes
    /// accesses through process_vm_readv/writev, which tells only EFAULT).
    Fault,
    /// `maps`: the VMAs overlapping the range.
    Maps(Vec<VmaView>),
    /// `pagemap`: one entry per page of the range.
    Pages(Vec<PageView>),
    /// `same`: whether both pages map one frame (`None`: one is not present).
    Same(Option<bool>),
    /// The executor cannot tell reliably; never counts as a match.
    Inconclusive(String),
    /// The host runner refused the call (outside the window, or unsupported).
    Refused(String),
    /// An access that sleeps waiting for a userfaultfd handler.
    Blocked,
    /// `uffd_read`: the messages that were queued, oldest first.
    Messages(Vec<UffdMsgView>),
    /// A test-device command's counters and data (`observe_device.rs`).
    Device(crate::observe_device::DeviceResult),
    /// Bytes a call copied out (`pin_read`), as runs of 32-bit words.
    Words(Vec<crate::observe_device::Run>),
    /// `smaps`: the VMA's statistics (`None`: no VMA there).
    Smaps(Option<crate::observe_smaps::SmapsView>),
}

/// One `struct uffd_msg` as a scenario sees it (thread ids and the new
/// descriptor of a FORK event are left out: they differ between runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UffdMsgView {
    /// `UFFD_EVENT_PAGEFAULT` with `UFFD_PAGEFAULT_FLAG_*`.
    Pagefault {
        /// `WRITE` 1, `WP` 2, `MINOR` 4, `RWP` 8 (7.3).
        flags: u64,
        /// The fault address.
        address: u64,
    },
    /// `UFFD_EVENT_FORK`.
    Fork,
    /// `UFFD_EVENT_REMAP`.
    Remap {
        /// Old address.
        from: u64,
        /// New address.
        to: u64,
        /// Length.
        len: u64,
    },
    /// `UFFD_EVENT_REMOVE`.
    Remove {
        /// First address.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// `UFFD_EVENT_UNMAP`.
    Unmap {
        /// First address.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// An event this version does not name.
    Other(u8),
}

impl UffdMsgView {
    /// Decodes the 32 bytes `read(2)` returns.
    pub fn from_bytes(b: &[u8; 32]) -> Self {
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        match b[0] {
            0x12 => Self::Pagefault { flags: word(8), address: word(16) },
            0x13 => Self::Fork,
            0x14 => Self::Remap { from: word(8), to: word(16), len: word(24) },
            0x15 => Self::Remove { start: word(8), end: word(16) },
            0x16 => Self::Unmap { start: word(8), end: word(16) },
            other => Self::Other(other),
        }
    }
}

/// Linux errno names for the numbers a scenario meets.
const ERRNO_NAMES: [(i32, &str); 17] = [
    (1, "EPERM"),
    (2, "ENOENT"),
    (3, "ESRCH"),
    (5, "EIO"),
    (9, "EBADF"),
    (11, "EAGAIN"),
    (12, "ENOMEM"),
    (13, "EACCES"),
    (14, "EFAULT"),
    (16, "EBUSY"),
    (17, "EEXIST"),
    (19, "ENODEV"),
    (22, "EINVAL"),
    (27, "EFBIG"),
    (28, "ENOSPC"),
    (75, "EOVERFLOW"),
    (95, "EOPNOTSUPP"),
];

/// `ENOMEM` for 12, or `E123` for an unnamed number.
pub fn errno_name(errno: i32) -> String {
    ERRNO_NAMES.iter().find(|(n, _)| *n == errno).map_or_else(|| format!("E{errno}"), |(_, name)| name.to_string())
}

/// Prints an outcome with addresses relative to the window base `w`.
#[derive(Debug)]
pub struct Shown<'a> {
    /// The outcome.
    pub outcome: &'a Outcome,
    /// The window base addresses are shown against.
    pub window: u64,
}

fn addr(f: &mut fmt::Formatter<'_>, window: u64, va: u64) -> fmt::Result {
    match va.checked_sub(window) {
        Some(0) => write!(f, "w"),
        Some(off) if off < 1 << 40 => write!(f, "w+{off:#x}"),
        _ => write!(f, "{va:#x}"),
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.outcome {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Addr(va) => addr(f, self.window, *va),
            Outcome::Value(v) => write!(f, "{v:#x}"),
            Outcome::Errno(e) => write!(f, "{}", errno_name(*e)),
            Outcome::Fault => write!(f, "fault"),
            Outcome::Maps(vmas) if vmas.is_empty() => write!(f, "no vma"),
            Outcome::Maps(vmas) => {
                for (i, vma) in vmas.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    addr(f, self.window, vma.start)?;
                    write!(f, "..")?;
                    addr(f, self.window, vma.end)?;
                    write!(f, " {} {:#x} ", vma.perms, vma.offset)?;
                    match &vma.backing {
                        Backing::Anon => write!(f, "anon")?,
                        Backing::SharedAnon => write!(f, "shmem")?,
                        Backing::File(name) => write!(f, "file:{name}")?,
                        Backing::Hugetlb => write!(f, "hugetlb")?,
                        Backing::Other(path) => write!(f, "other:{path}")?,
                    }
                }
                Ok(())
            }
            Outcome::Pages(pages) => {
                // Runs of equal pages: `2*PX 1*-`.
                let mut i = 0;
                while i < pages.len() {
                    let run = pages[i..].iter().take_while(|p| **p == pages[i]).count();
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    write!(f, "{run}*{}", page_letters(&pages[i]))?;
                    i += run;
                }
                Ok(())
            }
            Outcome::Same(Some(same)) => write!(f, "{}", if *same { "same" } else { "different" }),
            Outcome::Same(None) => write!(f, "not present"),
            Outcome::Inconclusive(why) => write!(f, "inconclusive ({why})"),
            Outcome::Refused(why) => write!(f, "refused ({why})"),
            Outcome::Blocked => write!(f, "blocked"),
            Outcome::Messages(msgs) if msgs.is_empty() => write!(f, "no message"),
            Outcome::Messages(msgs) => {
                for (i, msg) in msgs.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    self.msg(f, msg)?;
                }
                Ok(())
            }
            Outcome::Device(result) => write!(f, "{result}"),
            Outcome::Words(runs) => {
                write!(f, "words")?;
                crate::observe_device::show_run_list(f, runs)
            }
            Outcome::Smaps(None) => write!(f, "no vma"),
            Outcome::Smaps(Some(view)) => write!(f, "{view}"),
        }
    }
}

impl Shown<'_> {
    fn msg(&self, f: &mut fmt::Formatter<'_>, msg: &UffdMsgView) -> fmt::Result {
        let w = self.window;
        match *msg {
            UffdMsgView::Pagefault { flags, address } => {
                write!(f, "pagefault ")?;
                addr(f, w, address)?;
                for (bit, name) in [(1, "write"), (2, "wp"), (4, "minor"), (8, "rwp")] {
                    if flags & bit != 0 {
                        write!(f, " {name}")?;
                    }
                }
                if flags & !0xf != 0 {
                    write!(f, " {:#x}", flags & !0xf)?;
                }
                Ok(())
            }
            UffdMsgView::Fork => write!(f, "fork"),
            UffdMsgView::Remap { from, to, len } => {
                write!(f, "remap ")?;
                addr(f, w, from)?;
                write!(f, " ")?;
                addr(f, w, to)?;
                write!(f, " {len:#x}")
            }
            UffdMsgView::Remove { start, end } | UffdMsgView::Unmap { start, end } => {
                write!(f, "{} ", if matches!(msg, UffdMsgView::Remove { .. }) { "remove" } else { "unmap" })?;
                addr(f, w, start)?;
                write!(f, "..")?;
                addr(f, w, end)
            }
            UffdMsgView::Other(event) => write!(f, "event {event:#x}"),
        }
    }
}

/// `P` present, `S` swapped, `X` exclusive, `F` file, `H` huge, `Z` zero
/// page, `G` guard page, `W` userfaultfd write-protected; `-` for none.
pub fn page_letters(page: &PageView) -> String {
    let letters: String = [
        (page.present, 'P'),
        (page.swapped, 'S'),
        (page.exclusive, 'X'),
        (page.file, 'F'),
        (page.huge, 'H'),
        (page.zero, 'Z'),
        (page.guard, 'G'),
        (page.uffd_wp, 'W'),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .map(|(_, c)| *c)
    .collect();
    if letters.is_empty() {
        "-".into()
    } else {
        letters
    }
}

/// One invalidation the model announced during an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidationView {
    /// The process (scenario name) whose address space changed.
    pub proc: String,
    /// Linux's event name (`MMU_NOTIFY_UNMAP`...).
    pub event: String,
    /// First address.
    pub start: u64,
    /// One past the last (`u64::MAX` for RELEASE).
    pub end: u64,
    /// The subscribers called (the scenario's recorder of that process).
    pub subscribers: Vec<String>,
}

/// One executed step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Index of the step in the scenario.
    pub step: usize,
    /// Source line.
    pub line: usize,
    /// The acting process.
    pub proc: String,
    /// The operation as text.
    pub text: String,
    /// Its result.
    pub outcome: Outcome,
    /// Invalidations (model only; empty from the host).
    pub invalidations: Vec<InvalidationView>,
    /// For `expect` steps: whether the expectation held.
    pub expect_ok: Option<bool>,
    /// For failed `expect` steps: what the previous operation printed.
    pub got: Option<String>,
}

/// Everything an executor reports for a scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Trace {
    /// The window base (addresses print relative to it).
    pub window: u64,
    /// One record per step.
    pub records: Vec<Record>,
    /// Set when the executor stopped early (a crashed host child...).
    pub aborted: Option<String>,
}

impl Trace {
    /// Expectations that failed.
    pub fn failed_expectations(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| r.expect_ok == Some(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_print_relative_to_the_window() {
        let w = 0x1000_0000_0000;
        let show = |o: &Outcome| Shown { outcome: o, window: w }.to_string();
        assert_eq!(show(&Outcome::Addr(w + 0x2000)), "w+0x2000");
        assert_eq!(show(&Outcome::Errno(12)), "ENOMEM");
        let vma = VmaView { start: w, end: w + 0x1000, perms: "rw-p".into(), offset: 0, backing: Backing::Anon };
        assert_eq!(show(&Outcome::Maps(vec![vma])), "w..w+0x1000 rw-p 0x0 anon");
        let p = PageView { present: true, exclusive: true, ..PageView::default() };
        assert_eq!(show(&Outcome::Pages(vec![p, p, PageView::default()])), "2*PX 1*-");
        let g = PageView { swapped: true, guard: true, ..PageView::default() };
        assert_eq!(show(&Outcome::Pages(vec![g])), "1*SG");
    }
}
