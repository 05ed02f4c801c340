//! Device and DAX calls: the resolved form of [`DeviceOp`], what each
//! needs from an executor ([`Capability`]), and the interpreter's part
//! (names to file ids, the DAX directory setting).
//!
//! The data a command hands back (READ's buffer, SNAPSHOT's bytes) is not
//! kept whole: [`crate::observe_device`] turns it into runs.

use serde::{Deserialize, Serialize};

use super::{Capability, FileId};
use crate::lang::device::{DevCmd, Pattern};

/// Most pages a data-carrying device command may name in a scenario (the
/// buffer both executors allocate): 16 MiB.
pub const MAX_DEVICE_PAGES: u64 = 4096;

/// One device or DAX call with every name resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum DeviceCall {
    /// Open `/dev/hmm_dmirror<minor>`; it becomes file `id`.
    Open {
        minor: u64,
        id: FileId,
    },
    Cmd {
        file: FileId,
        cmd: DevCmd,
        addr: u64,
        npages: u64,
    },
    Write {
        file: FileId,
        addr: u64,
        npages: u64,
        pattern: Pattern,
    },
    Release {
        file: FileId,
    },
    Flags {
        file: FileId,
        flags: u64,
    },
    /// Create (empty) the file `name` in `dir` on the fs-dax mount; it
    /// becomes file `id`.
    DaxFile {
        name: String,
        dir: String,
        id: FileId,
    },
    /// Open the device-DAX node ([`crate::lang::device::DEFAULT_DEVDAX`]);
    /// it becomes file `id`.
    DevDax {
        id: FileId,
    },
}

impl DeviceCall {
    /// What the executor must offer to run the call.
    pub fn needs(&self) -> Capability {
        match self {
            Self::DaxFile { .. } => Capability::Dax,
            Self::DevDax { .. } => Capability::DevDax,
            _ => Capability::Devices,
        }
    }

    /// The file id the call creates, if it creates one.
    /// The test-device file the call acts on, if any.
    pub fn mirror_file(&self) -> Option<FileId> {
        match self {
            Self::Cmd { file, .. } | Self::Write { file, .. } | Self::Release { file } | Self::Flags { file, .. } => {
                Some(*file)
            }
            _ => None,
        }
    }

    /// The file the call creates, if any.
    pub fn creates(&self) -> Option<FileId> {
        match self {
            Self::Open { id, .. } | Self::DaxFile { id, .. } | Self::DevDax { id } => Some(*id),
            _ => None,
        }
    }

    /// A page count no executor should allocate a buffer for: refused the
    /// same way by both, before any argument check.
    pub fn too_large(&self) -> bool {
        match self {
            Self::Cmd { cmd, npages, .. } => {
                !matches!(cmd, DevCmd::MigrateToSys | DevCmd::CheckExclusive) && *npages > MAX_DEVICE_PAGES
            }
            Self::Write { npages, .. } => *npages > MAX_DEVICE_PAGES,
            _ => false,
        }
    }
}
