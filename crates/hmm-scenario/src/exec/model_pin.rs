//! The model's side of `gup_test` calls and of `smaps`: each open
//! `gup_test` file is an [`hmm_mm::gup_test::GupTestFile`] acting on the
//! calling process's address space (as Linux's driver pins `current->mm`),
//! shared by a fork and closed (its long-term pin dropped) when the last
//! process holding it closes it or exits.

use std::collections::HashMap;
use std::sync::Arc;

use hmm_mm::gup_test::{GupTestCmd, GupTestError, GupTestFile};
use hmm_mm::Mm;

use super::pin::PinCall;
use super::{FileId, ProcId};
use crate::lang::pin::GupCmd;
use crate::observe::Outcome;
use crate::observe_smaps::SmapsView;

/// The open `gup_test` files of one run.
#[derive(Debug, Default)]
pub(super) struct ModelPins {
    files: HashMap<(ProcId, FileId), Arc<GupTestFile>>,
}

fn errno(e: hmm_mm::MmError) -> Outcome {
    Outcome::Errno(e.errno() as i32)
}

impl ModelPins {
    /// Performs `call` in process `proc` (address space `mm`).
    pub(super) fn call(&mut self, mm: &Mm, proc: ProcId, call: &PinCall) -> Outcome {
        match self.file_for(proc, call) {
            Ok(Some(f)) => perform(&f, mm, call),
            Ok(None) => Outcome::Ok,
            Err(outcome) => outcome,
        }
    }

    /// The open file `call` acts on; `Ok(None)` for an open, done here.
    pub(super) fn file_for(&mut self, proc: ProcId, call: &PinCall) -> Result<Option<Arc<GupTestFile>>, Outcome> {
        if let PinCall::Open { id } = *call {
            self.files.insert((proc, id), Arc::new(GupTestFile::new()));
            return Ok(None);
        }
        let file = call.file().ok_or(Outcome::Errno(libc_ebadf()))?;
        self.files.get(&(proc, file)).cloned().map(Some).ok_or(Outcome::Errno(libc_ebadf()))
    }

    /// `close FILE`: true if it was a `gup_test` file of `proc`.
    pub(super) fn close(&mut self, proc: ProcId, file: FileId) -> bool {
        self.files.remove(&(proc, file)).is_some()
    }

    /// A fork: the child shares the parent's open files.
    pub(super) fn fork(&mut self, parent: ProcId, child: ProcId) {
        let shared: Vec<_> =
            self.files.iter().filter(|((p, _), _)| *p == parent).map(|((_, id), f)| (*id, f.clone())).collect();
        for (id, file) in shared {
            self.files.insert((child, id), file);
        }
    }

    /// An exit: `proc`'s files close.
    pub(super) fn exit(&mut self, proc: ProcId) {
        self.files.retain(|(p, _), _| *p != proc);
    }

    /// The end of a run: every file closes, every long-term pin drops.
    pub(super) fn close_all(&mut self) {
        self.files.clear();
    }
}

/// `call` on the open file `f` of the process whose address space is `mm`.
pub(super) fn perform(f: &GupTestFile, mm: &Mm, call: &PinCall) -> Outcome {
    match *call {
        PinCall::Run { cmd, addr, size, foll, per_call, .. } => {
            match f.run(mm, gup_cmd(cmd), addr, size, per_call, foll) {
                Ok(covered) => Outcome::Value(covered),
                Err(GupTestError::Mm(e)) => errno(e),
                Err(e @ GupTestError::NotModelled(_)) => Outcome::Refused(format!("the model: {e}")),
            }
        }
        PinCall::Start { addr, size, flags, .. } => {
            f.pin_longterm_start(mm, addr, size, flags).map_or_else(errno, |()| Outcome::Ok)
        }
        PinCall::Stop { .. } => {
            f.pin_longterm_stop();
            Outcome::Ok
        }
        PinCall::Read { npages, .. } => f
            .pin_longterm_read(mm, npages)
            .map_or_else(errno, |bytes| Outcome::Words(crate::observe_device::word_runs(&bytes))),
        PinCall::Open { .. } => Outcome::Ok,
    }
}

fn libc_ebadf() -> i32 {
    hmm_types::Errno::BadF as i32
}

fn gup_cmd(cmd: GupCmd) -> GupTestCmd {
    match cmd {
        GupCmd::GupFast => GupTestCmd::GupFast,
        GupCmd::PinFast => GupTestCmd::PinFast,
        GupCmd::PinLongterm => GupTestCmd::PinLongterm,
        GupCmd::GupBasic => GupTestCmd::GupBasic,
        GupCmd::PinBasic => GupTestCmd::PinBasic,
    }
}

/// `smaps ADDR` on the model.
pub(super) fn smaps(mm: &Mm, addr: u64) -> Outcome {
    match mm.smaps(addr) {
        Ok(None) => Outcome::Smaps(None),
        Ok(Some(Ok(stats))) => Outcome::Smaps(Some(SmapsView::from_model(&stats))),
        Ok(Some(Err(gap))) => Outcome::Inconclusive(format!("the model cannot tell smaps here: {gap:?}")),
        Err(e) => errno(e),
    }
}
