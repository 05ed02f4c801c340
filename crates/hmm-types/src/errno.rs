//! Linux error numbers, the currency of every public `Result` in hmm.
//!
//! Each crate has its own typed error enum; every variant maps to exactly one
//! of these through an exhaustive `errno()` match.

use thiserror::Error;

/// A Linux errno value (x86-64 numbering).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Error)]
#[repr(i32)]
pub enum Errno {
    /// Operation not permitted.
    #[error("EPERM: operation not permitted")]
    Perm = 1,
    /// No such file or directory.
    #[error("ENOENT: no such file or directory")]
    NoEnt = 2,
    /// No such process.
    #[error("ESRCH: no such process")]
    Srch = 3,
    /// Interrupted.
    #[error("EINTR: interrupted")]
    Intr = 4,
    /// I/O error.
    #[error("EIO: input/output error")]
    Io = 5,
    /// No such device or address.
    #[error("ENXIO: no such device or address")]
    Nxio = 6,
    /// Bad file descriptor.
    #[error("EBADF: bad file descriptor")]
    BadF = 9,
    /// Try again.
    #[error("EAGAIN: resource temporarily unavailable")]
    Again = 11,
    /// Out of memory.
    #[error("ENOMEM: cannot allocate memory")]
    NoMem = 12,
    /// Permission denied.
    #[error("EACCES: permission denied")]
    Acces = 13,
    /// Bad address.
    #[error("EFAULT: bad address")]
    Fault = 14,
    /// Device or resource busy.
    #[error("EBUSY: device or resource busy")]
    Busy = 16,
    /// File exists.
    #[error("EEXIST: file exists")]
    Exist = 17,
    /// No such device.
    #[error("ENODEV: no such device")]
    NoDev = 19,
    /// A path component is not a directory.
    #[error("ENOTDIR: not a directory")]
    NotDir = 20,
    /// Is a directory.
    #[error("EISDIR: is a directory")]
    IsDir = 21,
    /// Invalid argument.
    #[error("EINVAL: invalid argument")]
    Inval = 22,
    /// File too large.
    #[error("EFBIG: file too large")]
    FBig = 27,
    /// No space left on device.
    #[error("ENOSPC: no space left on device")]
    NoSpc = 28,
    /// Read-only file system.
    #[error("EROFS: read-only file system")]
    Rofs = 30,
    /// Value too large for defined data type.
    #[error("EOVERFLOW: value too large")]
    Overflow = 75,
    /// Operation not supported.
    #[error("EOPNOTSUPP: operation not supported")]
    OpNotSupp = 95,
    /// Timed out.
    #[error("ETIMEDOUT: timed out")]
    TimedOut = 110,
    /// Structure needs cleaning: what filesystems return for corrupt
    /// metadata (`EFSCORRUPTED` is defined as this).
    #[error("EUCLEAN: structure needs cleaning (corrupt filesystem metadata)")]
    Uclean = 117,
}

impl Errno {
    /// The positive errno number.
    pub const fn code(self) -> i32 {
        self as i32
    }
    /// The kernel's symbolic name, e.g. `"EFAULT"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Perm => "EPERM",
            Self::NoEnt => "ENOENT",
            Self::Srch => "ESRCH",
            Self::Intr => "EINTR",
            Self::Io => "EIO",
            Self::Nxio => "ENXIO",
            Self::BadF => "EBADF",
            Self::Again => "EAGAIN",
            Self::NoMem => "ENOMEM",
            Self::Acces => "EACCES",
            Self::Fault => "EFAULT",
            Self::Busy => "EBUSY",
            Self::Exist => "EEXIST",
            Self::NoDev => "ENODEV",
            Self::NotDir => "ENOTDIR",
            Self::IsDir => "EISDIR",
            Self::Inval => "EINVAL",
            Self::FBig => "EFBIG",
            Self::NoSpc => "ENOSPC",
            Self::Rofs => "EROFS",
            Self::Overflow => "EOVERFLOW",
            Self::OpNotSupp => "EOPNOTSUPP",
            Self::TimedOut => "ETIMEDOUT",
            Self::Uclean => "EUCLEAN",
        }
    }
    /// The errno with number `code`, if it is one of these; e.g. the
    /// `raw_os_error` of an `std::io::Error`.
    pub const fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Self::Perm,
            2 => Self::NoEnt,
            3 => Self::Srch,
            4 => Self::Intr,
            5 => Self::Io,
            6 => Self::Nxio,
            9 => Self::BadF,
            11 => Self::Again,
            12 => Self::NoMem,
            13 => Self::Acces,
            14 => Self::Fault,
            16 => Self::Busy,
            17 => Self::Exist,
            19 => Self::NoDev,
            20 => Self::NotDir,
            21 => Self::IsDir,
            22 => Self::Inval,
            27 => Self::FBig,
            28 => Self::NoSpc,
            30 => Self::Rofs,
            75 => Self::Overflow,
            95 => Self::OpNotSupp,
            110 => Self::TimedOut,
            117 => Self::Uclean,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_linux_x86_64() {
        assert_eq!(Errno::Fault.code(), 14);
        assert_eq!(Errno::Busy.code(), 16);
        assert_eq!(Errno::Overflow.code(), 75);
        assert_eq!(Errno::OpNotSupp.name(), "EOPNOTSUPP");
        assert!(Errno::Inval.to_string().starts_with("EINVAL"));
        assert_eq!(Errno::Uclean.code(), 117);
        assert_eq!(Errno::IsDir.code(), 21);
    }

    #[test]
    fn from_code_inverts_code() {
        for errno in [Errno::Perm, Errno::NoEnt, Errno::Acces, Errno::IsDir, Errno::NotDir, Errno::Rofs, Errno::Uclean]
        {
            assert_eq!(Errno::from_code(errno.code()), Some(errno));
        }
        assert_eq!(Errno::from_code(0), None);
        assert_eq!(Errno::from_code(4095), None);
    }
}
