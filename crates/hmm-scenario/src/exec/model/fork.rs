//! fork in the model: the child `Mm` gets its own recording notifier and
//! a copy of the parent's files and userfaultfds. With EVENT_FORK the
//! fork runs on a thread and waits for the monitor to read the FORK
//! message; the child process exists once the fork returned.
//!
//! Linux: `kernel/fork.c` (`dup_mm`), `fs/userfaultfd.c`
//! (`dup_userfaultfd`, `dup_userfaultfd_complete`).

use std::collections::HashMap;
use std::sync::Arc;

use hmm_mm::fs::File;
use hmm_mm::Mm;

use super::{errno, ModelBackend, Proc, Recorder};
use crate::exec::{FileId, ProcId};
use crate::observe::Outcome;

/// A fork on a thread, waiting for the monitor.
pub(super) struct PendingFork {
    parent: ProcId,
    child: ProcId,
    forked: std::sync::mpsc::Receiver<Arc<Mm>>,
    files: HashMap<FileId, File>,
    uffd: crate::exec::model_uffd::UffdState,
}

impl ModelBackend {
    /// `fork` of `proc` (which is live) into the process slot `child`.
    pub(super) fn fork(&mut self, proc: ProcId, child: ProcId) -> Outcome {
        let log = self.log.clone();
        let p = self.procs.get_mut(&proc).expect("the interpreter only names live processes");
        let mm = p.mm.clone();
        // With EVENT_FORK the fork waits for the monitor to read the
        // FORK message, on a thread; the child is there before that.
        if p.uffd.has_event_fork() {
            let (files, uffd) = (p.files.clone(), p.uffd.fork());
            let (tx, forked) = std::sync::mpsc::channel();
            let outcome = crate::exec::model_uffd::blocking_call(&mut p.uffd, move || match mm.fork() {
                Ok(child) => {
                    let _ = tx.send(child);
                    Outcome::Ok
                }
                Err(e) => errno(e),
            });
            self.pending_forks.push(PendingFork { parent: proc, child, forked, files, uffd });
            self.adopt_forks();
            outcome
        } else {
            match mm.fork() {
                Ok(child_mm) => {
                    child_mm.register_notifier(Arc::new(Recorder { proc: child, log }));
                    let files = p.files.clone();
                    let uffd = p.uffd.fork();
                    self.procs.insert(child, Proc { mm: child_mm, files, uffd });
                    self.devices.fork(proc, child);
                    self.pins.fork(proc, child);
                    Outcome::Ok
                }
                Err(e) => errno(e),
            }
        }
    }

    /// Makes the children of the forks that returned processes.
    pub(super) fn adopt_forks(&mut self) {
        let pending = std::mem::take(&mut self.pending_forks);
        for fork in pending {
            match fork.forked.try_recv() {
                Ok(mm) => {
                    mm.register_notifier(Arc::new(Recorder { proc: fork.child, log: self.log.clone() }));
                    self.procs.insert(fork.child, Proc { mm, files: fork.files, uffd: fork.uffd });
                    self.devices.fork(fork.parent, fork.child);
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => self.pending_forks.push(fork),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {}
            }
        }
    }
}
