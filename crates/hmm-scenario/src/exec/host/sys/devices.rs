//! The test devices' ioctls: `/dev/hmm_dmirror*` (`hmm_dmirror_cmd`)
//! and `/sys/kernel/debug/gup_test` (`struct gup_test`, the long-term pin
//! commands).
//!
//! Linux: `lib/test_hmm.c`, `mm/gup_test.c`.

#![allow(unsafe_code)]

use std::os::fd::RawFd;

use super::check;
use super::mm::{mmap, mprotect, munmap};

/// `ioctl(fd, request, cmd)` on a test device (`/dev/hmm_dmirror*`), with
/// `cmd.ptr` pointing at `buf` (or 0 when `buf` is empty). The kernel reads
/// or writes at most `buf.len()` bytes there: the caller sizes `buf` for
/// the request (`npages` pages for READ, WRITE, MIGRATE_TO_DEV, EXCLUSIVE,
/// READ_UNLOCKED; `npages` bytes for SNAPSHOT; nothing for the others).
pub fn dmirror_ioctl(fd: RawFd, request: u64, cmd: &mut hmm_dmirror::HmmDmirrorCmd, buf: &mut [u8]) -> Result<(), i32> {
    cmd.ptr = if buf.is_empty() { 0 } else { buf.as_mut_ptr() as u64 };
    // SAFETY: `cmd` is a valid `struct hmm_dmirror_cmd` (repr(C), five
    // u64) the kernel reads and writes back; its `ptr` is `buf`, which the
    // caller sized for what the request copies (see above), and which
    // stays borrowed mutably for the whole call. A request that uses no
    // buffer gets `ptr` 0, so a stray access would be EFAULT, never a
    // write into Rust-owned memory.
    check(unsafe { libc::ioctl(fd, request as _, cmd as *mut hmm_dmirror::HmmDmirrorCmd) } as libc::c_long).map(|_| ())
}

/// `struct gup_test` (`mm/gup_test.h`): 76 bytes of fields, 80 with the
/// padding to its 8-byte alignment, as the kernel's `sizeof`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GupTestArg {
    /// `get_delta_usec` (written back).
    pub get_delta_usec: u64,
    /// `put_delta_usec` (written back).
    pub put_delta_usec: u64,
    /// `addr`.
    pub addr: u64,
    /// `size` (written back: the bytes the loop covered).
    pub size: u64,
    /// `nr_pages_per_call`.
    pub nr_pages_per_call: u32,
    /// `gup_flags`: `FOLL_*`.
    pub gup_flags: u32,
    /// `test_flags`.
    pub test_flags: u32,
    /// `which_pages` (DUMP_USER_PAGES_TEST only).
    pub which_pages: [u32; 8],
}

/// `struct pin_longterm_test`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PinLongtermArg {
    addr: u64,
    size: u64,
    flags: u32,
}

const GUP_TEST_MAGIC: u64 = b'g' as u64;

/// The request of one-shot command `nr`: `_IOWR('g', nr, struct gup_test)`.
pub const fn gup_test_request(nr: u8) -> u64 {
    (3 << 30) | ((core::mem::size_of::<GupTestArg>() as u64) << 16) | (GUP_TEST_MAGIC << 8) | nr as u64
}

/// `PIN_LONGTERM_TEST_START`: `_IOW('g', 7, struct pin_longterm_test)`.
pub const PIN_LONGTERM_TEST_START: u64 =
    (1 << 30) | ((core::mem::size_of::<PinLongtermArg>() as u64) << 16) | (GUP_TEST_MAGIC << 8) | 7;

/// `PIN_LONGTERM_TEST_STOP`: `_IO('g', 8)`.
pub const PIN_LONGTERM_TEST_STOP: u64 = (GUP_TEST_MAGIC << 8) | 8;

/// `PIN_LONGTERM_TEST_READ`: `_IOW('g', 9, __u64)`.
pub const PIN_LONGTERM_TEST_READ: u64 = (1 << 30) | (8 << 16) | (GUP_TEST_MAGIC << 8) | 9;

/// A one-shot `gup_test` command `nr` (`_IOWR('g', nr, struct gup_test)`).
pub fn gup_test_run(fd: RawFd, nr: u8, arg: &mut GupTestArg) -> Result<(), i32> {
    let request = gup_test_request(nr);
    // SAFETY: `arg` is a valid `struct gup_test` (repr(C), the kernel's
    // layout and size) that the kernel reads and writes back while it is
    // borrowed mutably; the pages it names are the caller's, checked to be
    // inside the scenario's window.
    check(unsafe { libc::ioctl(fd, request as _, arg as *mut GupTestArg) } as libc::c_long).map(|_| ())
}

/// `PIN_LONGTERM_TEST_START` (`_IOW('g', 7, struct pin_longterm_test)`).
pub fn gup_test_longterm_start(fd: RawFd, addr: u64, size: u64, flags: u32) -> Result<(), i32> {
    let mut arg = PinLongtermArg { addr, size, flags };
    let request = PIN_LONGTERM_TEST_START;
    // SAFETY: `arg` is a valid `struct pin_longterm_test` the kernel only
    // reads during the call.
    check(unsafe { libc::ioctl(fd, request as _, &mut arg as *mut PinLongtermArg) } as libc::c_long).map(|_| ())
}

/// `PIN_LONGTERM_TEST_STOP` (`_IO('g', 8)`).
pub fn gup_test_longterm_stop(fd: RawFd) -> Result<(), i32> {
    let request = PIN_LONGTERM_TEST_STOP;
    // SAFETY: the request takes no argument.
    check(unsafe { libc::ioctl(fd, request as _, 0usize) } as libc::c_long).map(|_| ())
}

/// `PIN_LONGTERM_TEST_READ` (`_IOW('g', 9, __u64)`) into a fresh buffer of
/// `npages` pages followed by an inaccessible page, so that pinned pages
/// that do not fit make the kernel fail with EFAULT instead of writing
/// past the buffer; returns the buffer's bytes.
pub fn gup_test_longterm_read(fd: RawFd, npages: u64) -> Result<Vec<u8>, i32> {
    const PAGE: u64 = 4096;
    let len = npages.checked_add(1).and_then(|n| n.checked_mul(PAGE)).ok_or(libc::EINVAL)?;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
    let buf = mmap(0, len, (libc::PROT_READ | libc::PROT_WRITE) as u32, flags, -1, 0)?;
    let result = mprotect(buf + npages * PAGE, PAGE, libc::PROT_NONE as u32).and_then(|_| {
        let mut user_addr: u64 = buf;
        let request = PIN_LONGTERM_TEST_READ;
        // SAFETY: the argument is a pointer to a u64 the kernel reads; the
        // address it holds is the mapping made above, owned by this
        // function, writable for `npages` pages and guarded after them.
        check(unsafe { libc::ioctl(fd, request as _, &mut user_addr as *mut u64) } as libc::c_long)
    });
    let bytes = result.map(|_| {
        // SAFETY: `buf` is the start of the mapping made above, readable
        // for `npages` pages, and nothing else refers to it.
        unsafe { core::slice::from_raw_parts(buf as *const u8, (npages * PAGE) as usize) }.to_vec()
    });
    let _ = munmap(buf, len);
    bytes
}
