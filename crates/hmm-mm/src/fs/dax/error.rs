//! Errors of a persistent-memory device and of the DAX filesystem image on
//! it: one variant per cause, the operating system's own error kept as the
//! source, and what exactly is wrong with a corrupt image.
//!
//! Linux: what `mount(2)` says of a bad superblock (`EINVAL`), what
//! filesystems return for corrupt metadata (`EFSCORRUPTED`, i.e.
//! `EUCLEAN`), and what `memremap_pages` says of a range beyond the
//! addressable physical space (`EINVAL`).

use std::path::PathBuf;
use std::sync::Arc;

use hmm_types::Errno;

/// An error of the operating system (open, lock, read, resize, map of the
/// backing file), kept whole: its kind, its errno and its message.
#[derive(Clone, Debug)]
pub struct IoCause(Arc<std::io::Error>);

impl IoCause {
    /// The operating system's error.
    pub fn io(&self) -> &std::io::Error {
        &self.0
    }
    /// Its kind.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.0.kind()
    }
    /// Its errno, `EIO` when it has none this crate knows.
    pub fn errno(&self) -> Errno {
        self.0.raw_os_error().and_then(Errno::from_code).unwrap_or(Errno::Io)
    }
}

impl From<std::io::Error> for IoCause {
    fn from(error: std::io::Error) -> Self {
        Self(Arc::new(error))
    }
}

impl PartialEq for IoCause {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.0.raw_os_error() == other.0.raw_os_error()
    }
}

impl Eq for IoCause {}

impl core::fmt::Display for IoCause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoCause {
    // Transparent: the io::Error's own source, if any, comes next.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// What a non-empty file that `format` refused holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Found {
    /// Bytes that are not an hmm DAX image: someone's data.
    Data,
    /// An hmm DAX filesystem of this version (mount it instead).
    Image,
    /// An hmm DAX filesystem of another format version.
    OtherVersion(u32),
}

impl core::fmt::Display for Found {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Data => f.write_str("data that is not an hmm DAX image"),
            Self::Image => f.write_str("an hmm DAX filesystem (mount it to keep its files)"),
            Self::OtherVersion(v) => write!(f, "an hmm DAX filesystem of format version {v}"),
        }
    }
}

/// What is wrong with a DAX image's metadata.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// The header's checksum does not match its bytes.
    #[error("header checksum mismatch")]
    HeaderChecksum,
    /// Reserved header bytes are not zero.
    #[error("reserved header bytes are not zero")]
    HeaderReserved,
    /// The device size recorded in the header is not a valid pmem size.
    #[error("recorded device size of {pages} pages is not a valid pmem size")]
    DeviceSize {
        /// Recorded 4 KiB pages.
        pages: u64,
    },
    /// The file is shorter than the device it records.
    #[error("the image is truncated: {file_bytes} bytes of a {device_bytes}-byte device")]
    Truncated {
        /// Length of the backing file.
        file_bytes: u64,
        /// Size of the device the header records.
        device_bytes: u64,
    },
    /// The metadata table is larger than the metadata area.
    #[error("metadata table of {len} bytes does not fit the {max}-byte metadata area")]
    TableTooLarge {
        /// Recorded length.
        len: u64,
        /// Room in the metadata area.
        max: u64,
    },
    /// The table's checksum does not match its bytes.
    #[error("metadata checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// The table ends in the middle of a record.
    #[error("metadata table ends in the middle of a record")]
    TableTruncated,
    /// Bytes after the last record.
    #[error("{extra} stray bytes after the metadata table")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// More files than the table could hold.
    #[error("file count {count} cannot fit in a {table_bytes}-byte table")]
    FileCount {
        /// Recorded count.
        count: u32,
        /// Table length.
        table_bytes: usize,
    },
    /// More extents than the rest of the table could hold.
    #[error("file #{index}: extent count {count} cannot fit in the table")]
    ExtentCount {
        /// Position of the file in the table.
        index: u32,
        /// Recorded count.
        count: u32,
    },
    /// A name that is empty, too long, not UTF-8, or has a NUL or '/'.
    #[error("file #{index}: invalid name: {why}")]
    Name {
        /// Position of the file in the table.
        index: u32,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Two files with one name.
    #[error("two files are named {name:?}")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A file size past the largest file size.
    #[error("file {name:?}: size {size} exceeds the largest file size")]
    FileSize {
        /// The file.
        name: String,
        /// Recorded size.
        size: u64,
    },
    /// An extent that is empty, overflows, leaves the device's data area or
    /// the file, or overlaps the file's previous extent.
    #[error("file {name:?}: extent (file page {file_page}, device page {dev_page}, {pages} pages) {why}")]
    Extent {
        /// The file.
        name: String,
        /// First file page.
        file_page: u64,
        /// First device page.
        dev_page: u64,
        /// Length in pages.
        pages: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A device page that two extents claim.
    #[error("device page {page} belongs to two extents (files {first:?} and {second:?})")]
    SharedBlock {
        /// The page.
        page: u64,
        /// One owner.
        first: String,
        /// The other.
        second: String,
    },
}

/// Errors of a persistent-memory device (fs-dax or device-DAX) and of the
/// DAX filesystem image in its backing file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PmemError {
    /// The backing file could not be opened (no such file, a directory,
    /// no permission...).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The backing file.
        path: PathBuf,
        /// Why.
        #[source]
        source: IoCause,
    },
    /// The path is not a regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Another device (this process or another) holds the file's lock.
    #[error("{} is in use by another pmem device (it is locked)", path.display())]
    InUse {
        /// The backing file.
        path: PathBuf,
    },
    /// Reading, locking or resizing the backing file failed.
    #[error("cannot {what} {}: {source}", path.display())]
    File {
        /// The backing file.
        path: PathBuf,
        /// What was being done: "lock", "read", "resize", "write back".
        what: &'static str,
        /// Why.
        #[source]
        source: IoCause,
    },
    /// Mapping the device's memory failed.
    #[error("cannot map {bytes} bytes of device memory: {source}")]
    Map {
        /// Size of the device.
        bytes: u64,
        /// Why.
        #[source]
        source: IoCause,
    },
    /// A pmem device too small for the metadata plus one 2 MiB data block.
    #[error("a pmem device of {bytes} bytes is too small: it needs at least {min} bytes")]
    TooSmall {
        /// Asked size.
        bytes: u64,
        /// Smallest size.
        min: u64,
    },
    /// A device larger than a device region can be.
    #[error("a device of {bytes:#x} bytes exceeds the largest device memory range ({max:#x} bytes)")]
    TooLarge {
        /// Asked size.
        bytes: u64,
        /// Largest size.
        max: u64,
    },
    /// `format` was asked to format a file that is not new or empty.
    #[error(
        "refusing to format {}: it is not empty ({len} bytes) and holds {found}; \
         format only a new or empty file, or ask for overwriting explicitly (--format)",
        path.display()
    )]
    NotEmpty {
        /// The backing file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// What it holds.
        found: Found,
    },
    /// `mount` found no hmm DAX image.
    #[error("{} holds no hmm DAX filesystem (bad magic)", path.display())]
    NotAnImage {
        /// The backing file.
        path: PathBuf,
    },
    /// `mount` found an image of another format version.
    #[error("{} holds an hmm DAX filesystem of format version {found}; this build reads version {expected}", path.display())]
    Version {
        /// The backing file.
        path: PathBuf,
        /// Version in the image.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// The image records a device of another size than asked for.
    #[error("{} holds a {image_bytes}-byte device, not {requested_bytes} bytes", path.display())]
    SizeMismatch {
        /// The backing file.
        path: PathBuf,
        /// Recorded size.
        image_bytes: u64,
        /// Asked size.
        requested_bytes: u64,
    },
    /// The image's metadata is corrupt.
    #[error("{}: corrupt DAX image: {what}", path.display())]
    Corrupt {
        /// The backing file.
        path: PathBuf,
        /// What is wrong.
        what: Corruption,
    },
}

impl PmemError {
    /// Linux's errno for this error: the operating system's own for its
    /// errors, `EINVAL` for what `mount` would call a bad superblock,
    /// `EUCLEAN` (`EFSCORRUPTED`) for corrupt metadata.
    pub fn errno(&self) -> Errno {
        match self {
            Self::Open { source, .. } | Self::File { source, .. } | Self::Map { source, .. } => source.errno(),
            Self::InUse { .. } => Errno::Busy,
            Self::NotAFile { .. }
            | Self::TooSmall { .. }
            | Self::TooLarge { .. }
            | Self::NotAnImage { .. }
            | Self::Version { .. }
            | Self::SizeMismatch { .. } => Errno::Inval,
            Self::NotEmpty { .. } => Errno::Exist,
            Self::Corrupt { .. } => Errno::Uclean,
        }
    }
}
