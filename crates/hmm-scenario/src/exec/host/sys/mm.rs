//! The memory-management system calls, raw (`mmap`, `munmap`,
//! `mprotect`, `madvise`, `mseal`, `mremap`), and `PAGEMAP_SCAN` on
//! `/proc/self/pagemap`.
//!
//! Linux: `mm/mmap.c`, `mm/mprotect.c`, `mm/madvise.c`, `mm/mseal.c`,
//! `mm/mremap.c`, `fs/proc/task_mmu.c` (`do_pagemap_scan`).

#![allow(unsafe_code)]

use std::os::fd::RawFd;

use super::check;

/// `mmap(addr, len, prot, flags, fd, offset)`.
pub fn mmap(addr: u64, len: u64, prot: u32, flags: u32, fd: RawFd, offset: u64) -> Result<u64, i32> {
    // SAFETY: the caller (calls.rs) only lets MAP_FIXED through inside the
    // scenario's window, which was checked free of this process's own
    // mappings, so no memory Rust knows of is replaced; a non-fixed call
    // only adds a mapping the kernel chooses.
    check(unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot as u64, flags as u64, fd as i64, offset) })
}

/// `munmap(addr, len)`.
pub fn munmap(addr: u64, len: u64) -> Result<u64, i32> {
    // SAFETY: calls.rs passes only ranges inside the window (which holds
    // only the scenario's mappings) or arguments the kernel rejects.
    check(unsafe { libc::syscall(libc::SYS_munmap, addr, len) })
}

/// `mprotect(addr, len, prot)`.
pub fn mprotect(addr: u64, len: u64, prot: u32) -> Result<u64, i32> {
    // SAFETY: as munmap: the window only, so no Rust-owned memory changes.
    check(unsafe { libc::syscall(libc::SYS_mprotect, addr, len, prot as u64) })
}

/// `madvise(addr, len, advice)`.
pub fn madvise(addr: u64, len: u64, advice: u32) -> Result<u64, i32> {
    // SAFETY: as munmap: the window only, so no Rust-owned memory changes.
    check(unsafe { libc::syscall(libc::SYS_madvise, addr, len, advice as u64) })
}

/// `mseal(addr, len, 0)` (x86-64 system call 462, Linux 6.10+).
pub fn mseal(addr: u64, len: u64) -> Result<u64, i32> {
    const SYS_MSEAL: libc::c_long = 462;
    // SAFETY: as munmap: the window only; sealing changes no memory, it
    // only forbids later changes to the scenario's own mappings.
    check(unsafe { libc::syscall(SYS_MSEAL, addr, len, 0u64) })
}

/// `mremap(old, old_len, new_len, flags, new_addr)`.
pub fn mremap(old: u64, old_len: u64, new_len: u64, flags: u32, new_addr: u64) -> Result<u64, i32> {
    // SAFETY: calls.rs checks the source (and a fixed destination) lie in
    // the window; a moving mremap otherwise lands where the kernel finds
    // free space.
    check(unsafe { libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags as u64, new_addr) })
}

/// One `struct page_region` of PAGEMAP_SCAN.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct PageRegion {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// `PAGE_IS_*` bits.
    pub categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = (3 << 30) | ((core::mem::size_of::<PmScanArg>() as u64) << 16) | (0x66 << 8) | 16;

/// `ioctl(pagemap_fd, PAGEMAP_SCAN)` over `[start, end)` returning the
/// categories in `return_mask` of every page inside a VMA.
pub fn pagemap_scan(fd: RawFd, start: u64, end: u64, return_mask: u64) -> Result<Vec<PageRegion>, i32> {
    let nr = ((end - start) / 4096) as usize;
    let mut regions = vec![PageRegion::default(); nr.max(1)];
    let mut arg = PmScanArg {
        size: core::mem::size_of::<PmScanArg>() as u64,
        start,
        end,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        return_mask,
        ..PmScanArg::default()
    };
    // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at
    // `regions`, writable for `vec_len` entries while the call runs.
    let n = check(unsafe { libc::ioctl(fd, PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) } as libc::c_long)?;
    regions.truncate(n as usize);
    Ok(regions)
}
