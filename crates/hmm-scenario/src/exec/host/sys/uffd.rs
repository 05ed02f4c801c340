//! userfaultfd: the system call, its ioctls (every `struct uffdio_*` as
//! 64-bit words) and reading one message.
//!
//! Linux: `fs/userfaultfd.c`.

#![allow(unsafe_code)]

use std::os::fd::RawFd;

use super::check;
use super::fd::read;

/// `userfaultfd(flags)`.
pub fn userfaultfd(flags: u64) -> Result<RawFd, i32> {
    // SAFETY: no memory is passed.
    check(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) }).map(|fd| fd as RawFd)
}

/// `_IOR` and `_IOWR` directions of an ioctl number.
#[derive(Clone, Copy, Debug)]
pub enum IoctlDir {
    /// `_IOR`: the kernel only reads the argument.
    Read,
    /// `_IOW` (direction bit 1; `UFFDIO_SET_MODE`).
    Write,
    /// `_IOWR`: the kernel reads it and writes results back.
    ReadWrite,
}

/// A userfaultfd ioctl (`type` 0xAA, number `nr`) whose argument is the
/// 64-bit words of `arg` (every `struct uffdio_*` is made of them); the
/// kernel's results are written back into `arg`.
pub fn uffd_ioctl(fd: RawFd, dir: IoctlDir, nr: u64, arg: &mut [u64]) -> Result<(), i32> {
    let dir_bits: u64 = match dir {
        IoctlDir::Write => 1,
        IoctlDir::Read => 2,
        IoctlDir::ReadWrite => 3,
    };
    let size = (arg.len() * 8) as u64;
    let request = (dir_bits << 30) | (size << 16) | (0xAA << 8) | nr;
    // SAFETY: `arg` is a writable buffer of exactly the size the request
    // encodes, laid out as the kernel's struct (64-bit fields only). The
    // addresses inside it are checked by calls.rs (the window) or by the
    // kernel (a COPY source is our own buffer, read by the kernel only).
    check(unsafe { libc::ioctl(fd, request as _, arg.as_mut_ptr()) } as libc::c_long).map(|_| ())
}

/// One non-blocking `read` of a 32-byte `struct uffd_msg`; `None` when
/// nothing is pending (`EAGAIN`) or on any error.
pub fn uffd_read_msg(fd: RawFd) -> Option<[u8; 32]> {
    let mut msg = [0u8; 32];
    match read(fd, &mut msg) {
        Ok(32) => Some(msg),
        _ => None,
    }
}
