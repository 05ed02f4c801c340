//! `gup_test` calls: the resolved form of [`PinOp`] and the interpreter's
//! part (names to file ids, the one-call default of `gup`). Both executors
//! need [`Capability::GupTest`]: the model's `hmm_mm::gup_test`, or a
//! kernel with `/sys/kernel/debug/gup_test`.

use serde::{Deserialize, Serialize};

use super::{Capability, FileId};
use crate::lang::pin::{GupCmd, PinOp};
use crate::observe::Outcome;

/// Most pages one `gup` call or `pin_start` may name, and the largest
/// `pin_read` buffer (both executors allocate page arrays or buffers of
/// that size): 16 MiB.
pub const MAX_PIN_PAGES: u64 = 4096;

const PAGE: u64 = 4096;

/// One `gup_test` call with every name resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum PinCall {
    /// Open `/sys/kernel/debug/gup_test`; it becomes file `id`.
    Open {
        id: FileId,
    },
    /// A one-shot command: `size` bytes from `addr`, `per_call` pages per call.
    Run {
        file: FileId,
        cmd: GupCmd,
        addr: u64,
        size: u64,
        foll: u32,
        per_call: u32,
    },
    Start {
        file: FileId,
        addr: u64,
        size: u64,
        flags: u32,
    },
    Stop {
        file: FileId,
    },
    /// Read into a buffer of `npages` pages.
    Read {
        file: FileId,
        npages: u64,
    },
}

impl PinCall {
    /// The gup_test file the call acts on (`None` for the open).
    pub fn file(&self) -> Option<FileId> {
        match self {
            Self::Run { file, .. } | Self::Start { file, .. } | Self::Stop { file } | Self::Read { file, .. } => {
                Some(*file)
            }
            Self::Open { .. } => None,
        }
    }

    /// The file id the call creates, if it creates one.
    pub fn creates(&self) -> Option<FileId> {
        match self {
            Self::Open { id } => Some(*id),
            _ => None,
        }
    }

    /// Whether the call faults pages in: a one-shot command or a
    /// long-term pin, which may wait for a userfaultfd handler.
    pub fn may_fault(&self) -> bool {
        matches!(self, Self::Run { .. } | Self::Start { .. })
    }

    /// What the executor must offer.
    pub fn needs(&self) -> Capability {
        Capability::GupTest
    }

    /// A size no executor should allocate for: refused the same way by both.
    pub fn too_large(&self) -> bool {
        match *self {
            Self::Run { size, .. } | Self::Start { size, .. } => size / PAGE > MAX_PIN_PAGES,
            Self::Read { npages, .. } => npages > MAX_PIN_PAGES,
            _ => false,
        }
    }
}

/// A file name resolved: its id, or directly the outcome of using it.
type Resolved = Result<FileId, Outcome>;

/// The call for `op` with `addr` resolving expressions and `file` names,
/// or directly its outcome (a file that failed to open).
pub(super) fn resolve<E>(
    op: &PinOp,
    next_file: FileId,
    addr: &dyn Fn(&crate::lang::ast::Expr) -> Result<u64, E>,
    file: &dyn Fn(&str) -> Result<Resolved, E>,
) -> Result<Result<PinCall, Outcome>, E> {
    let id = match op.file() {
        None => return Ok(Ok(PinCall::Open { id: next_file })),
        Some(name) => match file(name)? {
            Ok(id) => id,
            Err(outcome) => return Ok(Err(outcome)),
        },
    };
    Ok(Ok(match op {
        PinOp::Open => unreachable!("handled above"),
        PinOp::Run { cmd, addr: a, len, foll, per_call, .. } => {
            let size = addr(len)?;
            // Without a count, one call covers the range (`gup_test -n`
            // defaults differ; a scenario states what it means).
            let per_call = per_call.unwrap_or_else(|| u32::try_from(size / PAGE).unwrap_or(u32::MAX));
            PinCall::Run { file: id, cmd: *cmd, addr: addr(a)?, size, foll: *foll, per_call }
        }
        PinOp::Start { addr: a, len, flags, .. } => {
            PinCall::Start { file: id, addr: addr(a)?, size: addr(len)?, flags: *flags }
        }
        PinOp::Stop { .. } => PinCall::Stop { file: id },
        PinOp::Read { npages, .. } => PinCall::Read { file: id, npages: *npages },
    }))
}
