//! Loads, stores and atomics on the scenario's memory as a CPU makes
//! them: the fault is taken first with `MADV_POPULATE_READ`/`_WRITE`
//! (a failure is `EFAULT`, not a signal), or the kernel's checked copy
//! (`process_vm_readv`/`process_vm_writev`) does the access.
//!
//! Linux: `madvise(MADV_POPULATE_*)`, `process_vm_readv(2)`.

#![allow(unsafe_code)]

use std::sync::atomic::AtomicU64;

use super::{check, last_errno};

fn iov(addr: u64, len: usize) -> libc::iovec {
    libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len }
}

/// Reads the 8 bytes at `addr` as a CPU load would: the read fault is
/// taken with `MADV_POPULATE_READ` (a failure is `EFAULT`, not a signal),
/// then a plain load runs on the mapped page. Not `process_vm_readv`
/// alone: it pins the page (FOLL_PIN), and pinning a COW-shared anonymous
/// page for reading unshares it, which a load never does. Where populate
/// refuses the VMA (`EINVAL`: no VM_READ, as a write-only mapping the CPU
/// can still read on x86; VM_PFNMAP) the kernel-checked copy is used.
pub fn load_u64(addr: u64) -> Result<u64, i32> {
    const MADV_POPULATE_READ: u64 = 22;
    let start = addr & !4095;
    let end = (addr + 8).next_multiple_of(4096);
    // SAFETY: populating only faults pages in (as a load would); it changes
    // no data and no mapping, and calls.rs keeps `addr` inside the window.
    match check(unsafe { libc::syscall(libc::SYS_madvise, start, end - start, MADV_POPULATE_READ) }) {
        Ok(_) => {}
        Err(libc::EINVAL) => return read_u64(addr),
        Err(libc::EHWPOISON) => return Err(libc::EHWPOISON),
        Err(_) => return Err(libc::EFAULT),
    }
    // SAFETY: `addr` is inside the window (calls.rs), a mapping no Rust
    // object lives in; the read is unaligned-safe and volatile. It cannot
    // fault: the populate above just made the pages present in this
    // single-threaded process, and no other scenario process runs meanwhile
    // (they wait for their next command); should reclaim take one back,
    // the refault is the read fault that just succeeded.
    let bytes = unsafe { core::ptr::read_volatile(addr as *const [u8; 8]) };
    Ok(u64::from_le_bytes(bytes))
}

/// Reads 8 bytes at `addr` of this process through the kernel's checked
/// copy (`process_vm_readv`); `EFAULT` where the copy faults.
pub fn read_u64(addr: u64) -> Result<u64, i32> {
    let mut buf = [0u8; 8];
    let local = iov(buf.as_mut_ptr() as u64, 8);
    let remote = iov(addr, 8);
    // SAFETY: the local iovec is our 8-byte buffer; the remote one is only
    // read by the kernel, which checks it (EFAULT), never dereferenced here.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    match n {
        8 => Ok(u64::from_le_bytes(buf)),
        -1 => Err(last_errno()),
        _ => Err(libc::EFAULT),
    }
}

/// Writes 8 bytes at `addr` of this process; `EFAULT` where a CPU store
/// would fault.
pub fn write_u64(addr: u64, value: u64) -> Result<(), i32> {
    write_bytes(addr, &value.to_le_bytes())
}

/// Writes `data` at `addr` of this process through the kernel's checked
/// copy (`process_vm_writev`); `EFAULT` where the copy stops short.
pub fn write_bytes(addr: u64, data: &[u8]) -> Result<(), i32> {
    let local = iov(data.as_ptr() as u64, data.len());
    let remote = iov(addr, data.len());
    // SAFETY: the local iovec is `data`, only read; the remote range is
    // written by the kernel after its own checks, and is a mapping the
    // runner made for the scenario or for itself (no Rust-owned memory).
    let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    match n {
        -1 => Err(last_errno()),
        n if n as usize == data.len() => Ok(()),
        _ => Err(libc::EFAULT),
    }
}

/// `madvise(MADV_POPULATE_WRITE)` over the pages of `[addr, addr + 8)`:
/// the write fault a CPU store there would take, with `EFAULT` instead of
/// a signal where it would fail (SIGSEGV or SIGBUS).
fn populate_write(addr: u64) -> Result<(), i32> {
    const MADV_POPULATE_WRITE: u64 = 23;
    let start = addr & !4095;
    let end = (addr + 8).next_multiple_of(4096);
    // SAFETY: populating only faults pages in (as a store would); it changes
    // no data and no mapping, and calls.rs keeps `addr` inside the window.
    match check(unsafe { libc::syscall(libc::SYS_madvise, start, end - start, MADV_POPULATE_WRITE) }) {
        Ok(_) => Ok(()),
        Err(libc::EHWPOISON) => Err(libc::EHWPOISON),
        Err(_) => Err(libc::EFAULT),
    }
}

/// A locked read-modify-write of the 8 bytes at `addr`, as one CPU atomic
/// instruction: `op` gets the atomic and returns the old value. The fault
/// is taken first as a write fault (no read fault beforehand, so no zero
/// page and no fault-around), then the instruction runs on the mapped page.
/// An unaligned address (a split lock, which Rust's atomics cannot express)
/// is read then written once the write fault made the page present.
pub fn atomic_rmw(addr: u64, op: impl FnOnce(&AtomicU64) -> u64, plain: impl FnOnce(u64) -> u64) -> Result<u64, i32> {
    populate_write(addr)?;
    if addr % 8 != 0 {
        let old = read_u64(addr)?;
        return write_u64(addr, plain(old)).map(|()| old);
    }
    // SAFETY: `addr` is 8-byte aligned and inside the window (calls.rs), a
    // mapping no Rust object lives in, so a shared reference to an atomic
    // there aliases nothing Rust-owned. It cannot fault: the populate above
    // just made the page present and writable in this single-threaded
    // process, and no other scenario process runs meanwhile (they wait for
    // their next command), so nothing can unmap, protect or truncate it
    // before the instruction; should reclaim take it back, the refault is
    // the write fault that just succeeded.
    let atomic = unsafe { &*(addr as *const AtomicU64) };
    Ok(op(atomic))
}
