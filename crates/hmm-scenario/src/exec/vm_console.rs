//! Which console file a guest run writes: the first of
//! `target/vm-console.log`, `vm-console.2.log`, ... that no other live run
//! of the workspace holds, under an advisory `flock` released when its
//! holder exits. Two runs writing one console would each read the other's
//! replies as their own.

use std::path::{Path, PathBuf};

use super::ExecError;

/// Consoles one workspace's concurrent guest runs may use at once.
const CONSOLE_SLOTS: usize = 8;

/// Picks the first console in `dir` that no other live run holds
/// (`vm-console.log`, then `vm-console.2.log`, ...) and locks it: two runs
/// writing one console would each read the other's replies. The lock is
/// an advisory `flock` on `NAME.lock`, released when its holder exits,
/// however it exits.
pub(super) fn claim_console(dir: &Path) -> Result<(PathBuf, std::fs::File), ExecError> {
    use rustix::fs::{flock, FlockOperation};
    std::fs::create_dir_all(dir).map_err(|e| ExecError::Host(format!("{}: {e}", dir.display())))?;
    for slot in 1..=CONSOLE_SLOTS {
        let name = if slot == 1 { "vm-console.log".to_string() } else { format!("vm-console.{slot}.log") };
        let console = dir.join(name);
        let lock_path = console.with_extension("log.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| ExecError::Host(format!("{}: {e}", lock_path.display())))?;
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok((console, lock)),
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(ExecError::Host(format!("locking {}: {e}", lock_path.display()))),
        }
    }
    Err(ExecError::Host(format!("{CONSOLE_SLOTS} guest runs already use {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_runs_never_share_a_console() {
        let dir = std::env::temp_dir().join(format!("hmm-console-claim-{}", std::process::id()));
        let (first, held) = claim_console(&dir).unwrap();
        let (second, _also_held) = claim_console(&dir).unwrap();
        assert_eq!(first, dir.join("vm-console.log"));
        assert_eq!(second, dir.join("vm-console.2.log"));
        drop(held);
        assert_eq!(claim_console(&dir).unwrap().0, first, "a released console is free again");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
