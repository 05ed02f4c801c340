//! Executors: the model ([`model::ModelExecutor`]) and the running kernel
//! ([`host::HostExecutor`]) behind one [`Executor`] trait. Both run the same
//! interpreter (`interp.rs`), which resolves names and processes and hands
//! each operation to a [`Backend`] as a concrete [`Call`]; the host backend
//! runs inside the runner child process.
//!
//! Adding an operation: an [`crate::lang::ast::Op`] variant, a [`Call`]
//! variant, one arm in `interp.rs`, one arm in each backend
//! (`model.rs`, `host/calls.rs`). A capability an executor may lack (devices,
//! DAX) is a [`Capability`] the interpreter checks before calling.

pub mod device;
pub mod host;
mod interp;
pub mod model;
mod model_device;
mod model_pin;
mod model_uffd;
pub mod pin;
mod uffd;
pub mod vm;
mod vm_console;
mod vm_crash;

use serde::{Deserialize, Serialize};

pub use interp::run_scenario;

use crate::lang::ast::{FallocMode, Scenario};
use crate::observe::{InvalidationView, Outcome, Trace};

/// A file handle of the scenario (the order `memfd` created them in).
pub type FileId = usize;
/// A process of the scenario (0 is `main`, then in fork order).
pub type ProcId = usize;

/// One operation with every name resolved to a number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Call {
    Mmap {
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        file: Option<FileId>,
        offset: u64,
    },
    Munmap {
        addr: u64,
        len: u64,
    },
    Mprotect {
        addr: u64,
        len: u64,
        prot: u32,
    },
    Madvise {
        addr: u64,
        len: u64,
        advice: u32,
    },
    /// mseal(2) with flags 0.
    Mseal {
        addr: u64,
        len: u64,
    },
    Mremap {
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    },
    Read {
        addr: u64,
    },
    Write {
        addr: u64,
        value: u64,
    },
    AtomicAdd {
        addr: u64,
        value: u64,
    },
    Cmpxchg {
        addr: u64,
        old: u64,
        new: u64,
    },
    /// Fork the acting process; the child becomes process `child`.
    Fork {
        child: ProcId,
    },
    Exit,
    /// Create a memfd; it becomes file `id` in the acting process.
    Memfd {
        name: String,
        id: FileId,
    },
    Fwrite {
        file: FileId,
        offset: u64,
        value: u64,
    },
    Pread {
        file: FileId,
        offset: u64,
    },
    Ftruncate {
        file: FileId,
        size: u64,
    },
    Fallocate {
        file: FileId,
        offset: u64,
        len: u64,
        mode: Falloc,
    },
    Close {
        file: FileId,
    },
    Maps {
        addr: u64,
        len: u64,
    },
    Pagemap {
        addr: u64,
        len: u64,
    },
    /// The frame behind `addr`: `Value(pfn)`, or `Same(None)` if none.
    Frame {
        addr: u64,
    },
    // --- userfaultfd (exec/uffd.rs) ---
    /// `userfaultfd(O_CLOEXEC|O_NONBLOCK)` then `UFFDIO_API`; the
    /// descriptor becomes file `id` (closed again if the handshake fails).
    Userfaultfd {
        id: FileId,
        features: u64,
    },
    /// An ioctl or a read on userfaultfd `uffd`.
    Uffd {
        uffd: FileId,
        op: UffdCall,
    },
    /// A CPU access that may wait for a userfaultfd handler: it runs on
    /// its own thread; `Blocked` if it queued a message and sleeps.
    Access {
        id: AccessId,
        addr: u64,
        /// `Some(value)` for a store.
        write: Option<u64>,
    },
    /// The result of access `id`, once it completed.
    Wait {
        id: AccessId,
    },
    /// A test-device or DAX call (`device.rs`).
    Device(device::DeviceCall),
    /// A `gup_test` call (`pin.rs`).
    Pin(pin::PinCall),
    /// The smaps statistics of the VMA containing `addr`.
    Smaps {
        addr: u64,
    },
}

/// An access of the scenario (in the order they were bound).
pub type AccessId = usize;

/// A userfaultfd operation with its names resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum UffdCall {
    Register {
        start: u64,
        len: u64,
        mode: u64,
    },
    Unregister {
        start: u64,
        len: u64,
    },
    /// The source is `len` bytes, each 8 holding `value`.
    Copy {
        dst: u64,
        len: u64,
        value: u64,
        mode: u64,
    },
    Zeropage {
        start: u64,
        len: u64,
        mode: u64,
    },
    Writeprotect {
        start: u64,
        len: u64,
        mode: u64,
    },
    Continue {
        start: u64,
        len: u64,
        mode: u64,
    },
    Move {
        dst: u64,
        src: u64,
        len: u64,
        mode: u64,
    },
    Poison {
        start: u64,
        len: u64,
        mode: u64,
    },
    Wake {
        start: u64,
        len: u64,
    },
    /// Reads every pending message without blocking; the child's
    /// userfaultfd of the first FORK message becomes file `fork_file`.
    Read {
        fork_file: Option<FileId>,
    },
    /// `UFFDIO_RWPROTECT` (7.3).
    Rwprotect {
        start: u64,
        len: u64,
        mode: u64,
    },
    /// `UFFDIO_SET_MODE` (7.3): feature bits to turn on and off.
    SetMode {
        enable: u64,
        disable: u64,
    },
}

impl UffdCall {
    /// Whether the call may wake threads waiting in userfaultfd (it
    /// resolves, unregisters or wakes): the executors then let the woken
    /// calls run until they finish or wait again, so what the scenario
    /// observes next does not depend on timing.
    pub fn wakes_waiters(&self) -> bool {
        !matches!(self, Self::Register { .. } | Self::Read { .. })
    }
}

/// [`FallocMode`] in a serializable form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Falloc {
    PunchHole,
    KeepSize,
}

impl From<FallocMode> for Falloc {
    fn from(mode: FallocMode) -> Self {
        match mode {
            FallocMode::PunchHole => Self::PunchHole,
            FallocMode::KeepSize => Self::KeepSize,
        }
    }
}

/// What performs calls: the model, or real system calls.
pub trait Backend {
    /// Called once before the first call with the scenario's window.
    fn set_window(&mut self, base: u64, len: u64) -> Result<(), ExecError>;
    /// Performs one call in process `proc`.
    fn call(&mut self, proc: ProcId, call: &Call) -> Outcome;
    /// The invalidations since the last call (the model's recorders).
    fn take_invalidations(&mut self, _names: &[String]) -> Vec<InvalidationView> {
        Vec::new()
    }
    /// Whether calls needing `cap` can run (the interpreter refuses them
    /// otherwise, so they never count as a match).
    fn supports(&self, _cap: Capability) -> bool {
        true
    }
    /// Called before the step at `line` runs (the host runner says so on
    /// the guest's console, so a step that crashes the kernel is named).
    fn step_started(&mut self, _line: usize) {}
}

/// Something an executor may or may not offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Reports the invalidations each operation caused.
    Invalidations,
    /// Real frame numbers (host: root only).
    Frames,
    /// The test device (`/dev/hmm_dmirror*`) and its commands.
    Devices,
    /// fs-dax files (a filesystem mounted with `-o dax`).
    Dax,
    /// userfaultfd's RWP mode (Linux 7.3: `UFFD_FEATURE_RWP`).
    UffdRwp,
    /// The `gup_test` driver (`/sys/kernel/debug/gup_test`).
    GupTest,
    /// The device-DAX node (`devdax`).
    DevDax,
}

impl core::fmt::Display for Capability {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Invalidations => "invalidation reports",
            Self::Frames => "frame numbers",
            Self::Devices => "the test device /dev/hmm_dmirror*",
            Self::Dax => "an fs-dax mount",
            Self::UffdRwp => "userfaultfd's RWP mode (Linux 7.3)",
            Self::GupTest => "the gup_test driver /sys/kernel/debug/gup_test",
            Self::DevDax => "the device-DAX node /dev/hmm-devdax",
        })
    }
}

/// Runs whole scenarios.
pub trait Executor {
    /// `model` or `host`.
    fn name(&self) -> &'static str;
    /// Whether it offers `cap`.
    fn supports(&self, cap: Capability) -> bool;
    /// Runs the scenario from a fresh machine or process.
    fn run(&mut self, scenario: &Scenario) -> Result<Trace, ExecError>;
}

/// Why a scenario could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A name used before it was bound.
    #[error("line {line}: `{name}` is not bound (bind it with `{name} = ...` first)")]
    Unbound {
        /// Source line.
        line: usize,
        /// The name.
        name: String,
    },
    /// A `window` line that is malformed or not first.
    #[error("line {line}: {message}")]
    Window {
        /// Source line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The model could not be built.
    #[error("model: {0}")]
    Model(String),
    /// The host runner could not be started or talked to.
    #[error("host runner: {0}")]
    Host(String),
}
