//! `fork`, `waitpid` and `kill` for the tests: a child is a forked address
//! space whose code runs in a thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hmm_dmirror::Dmirror;

use super::Process;
use crate::verdict::{Fail, Verdict};

/// A child process after `fork`, as the child sees it.
#[derive(Debug)]
pub struct Child {
    /// The child's process.
    pub process: Process,
    /// The module, to open devices from the child.
    pub dmirror: Arc<Dmirror>,
    killed: Arc<AtomicBool>,
}

impl Child {
    /// True once the parent sent SIGKILL.
    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

/// How a child ended (`waitpid`'s status).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ExitStatus {
    /// `WIFEXITED`, with `WEXITSTATUS` and the failure that caused a
    /// non-zero status.
    Exited(i32, Option<String>),
    /// `WIFSIGNALED`, with `WTERMSIG`.
    Signaled(i32),
}

/// `SIGKILL`.
pub const SIGKILL: i32 = 9;

/// A forked child running in its own thread.
#[derive(Debug)]
pub struct ChildHandle {
    thread: std::thread::JoinHandle<ExitStatus>,
    killed: Arc<AtomicBool>,
}

impl ChildHandle {
    /// `kill(pid, SIGKILL)`.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
    }
    /// `waitpid(pid, &status, 0)`.
    pub fn wait(self) -> ExitStatus {
        self.thread.join().unwrap_or_else(|_| ExitStatus::Exited(134, Some("the child panicked".into())))
    }
}

/// Checks that a child exited with status 0.
pub fn check_exited_ok(status: &ExitStatus) -> Verdict {
    match status {
        ExitStatus::Exited(0, _) => Ok(()),
        ExitStatus::Exited(code, why) => {
            Err(Fail::failed(format!("child exited {code}: {}", why.as_deref().unwrap_or("?")), file!(), line!()))
        }
        ExitStatus::Signaled(sig) => Err(Fail::failed(format!("child killed by signal {sig}"), file!(), line!())),
    }
}

/// Runs `child` as the forked process `process` in its own thread.
pub(super) fn spawn(
    process: Process,
    dmirror: Arc<Dmirror>,
    child: impl FnOnce(&Child) -> Verdict + Send + 'static,
) -> Result<ChildHandle, Fail> {
    let killed = Arc::new(AtomicBool::new(false));
    let me = Child { process, dmirror, killed: killed.clone() };
    let thread = std::thread::Builder::new()
        .name("hmm-selftest child".into())
        .spawn(move || {
            let verdict = child(&me);
            let status = if me.killed() {
                ExitStatus::Signaled(SIGKILL)
            } else {
                match verdict {
                    Ok(()) => ExitStatus::Exited(0, None),
                    Err(fail) => ExitStatus::Exited(1, Some(fail.to_string())),
                }
            };
            me.process.mm.exit();
            status
        })
        .map_err(|e| Fail::failed(format!("fork: {e}"), file!(), line!()))?;
    Ok(ChildHandle { thread, killed })
}
