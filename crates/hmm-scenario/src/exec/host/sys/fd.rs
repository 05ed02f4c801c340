//! Files and pipes: `memfd_create`, `pread`/`pwrite`, `ftruncate`,
//! `fallocate`, `close`, `pipe`, `read`, `write`.

#![allow(unsafe_code)]

use std::os::fd::RawFd;

use super::check;

/// `memfd_create(name, 0)`.
pub fn memfd_create(name: &str) -> Result<RawFd, i32> {
    let c = std::ffi::CString::new(name).map_err(|_| libc::EINVAL)?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    check(unsafe { libc::syscall(libc::SYS_memfd_create, c.as_ptr(), 0u64) }).map(|fd| fd as RawFd)
}

/// `pwrite(fd, &value, 8, offset)`: bytes written.
pub fn pwrite_u64(fd: RawFd, offset: u64, value: u64) -> Result<u64, i32> {
    let buf = value.to_le_bytes();
    // SAFETY: the buffer is 8 valid bytes for the duration of the call.
    check(unsafe { libc::pwrite(fd, buf.as_ptr().cast(), 8, offset as i64) } as libc::c_long)
}

/// `pread(fd, buf, 8, offset)`: the bytes read, zero-padded.
pub fn pread_u64(fd: RawFd, offset: u64) -> Result<u64, i32> {
    let mut buf = [0u8; 8];
    // SAFETY: the buffer is 8 writable bytes for the duration of the call.
    check(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), 8, offset as i64) } as libc::c_long)?;
    Ok(u64::from_le_bytes(buf))
}

/// `ftruncate(fd, size)`.
pub fn ftruncate(fd: RawFd, size: u64) -> Result<u64, i32> {
    // SAFETY: no memory is passed.
    check(unsafe { libc::syscall(libc::SYS_ftruncate, fd as i64, size) })
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> Result<u64, i32> {
    // SAFETY: no memory is passed.
    check(unsafe { libc::syscall(libc::SYS_fallocate, fd as i64, mode as i64, offset, len) })
}

/// `close(fd)`.
pub fn close(fd: RawFd) -> Result<u64, i32> {
    // SAFETY: the descriptor belongs to the scenario's file table, which
    // forgets it now; nothing else in the runner uses it.
    check(unsafe { libc::close(fd) } as libc::c_long)
}

/// `pipe()`: (read end, write end).
pub fn pipe() -> Result<(RawFd, RawFd), i32> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) } as libc::c_long)?;
    Ok((fds[0], fds[1]))
}

/// Reads up to `buf.len()` bytes from `fd`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: `buf` is writable for its length.
    check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } as libc::c_long).map(|n| n as usize)
}

/// Writes all of `data` to `fd`.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> Result<(), i32> {
    while !data.is_empty() {
        // SAFETY: `data` is readable for its length.
        let n = check(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) } as libc::c_long)?;
        data = &data[n as usize..];
    }
    Ok(())
}
