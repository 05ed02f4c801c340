//! The host runner's side of `gup_test` calls (real ioctls on
//! `/sys/kernel/debug/gup_test`, which needs `CONFIG_GUP_TEST`, debugfs
//! mounted and root) and of `smaps` (/proc/self/smaps).
//!
//! Linux: `mm/gup_test.c` (`gup_test_ioctl`), `fs/proc/task_mmu.c`
//! (`show_smap`).

use std::os::fd::IntoRawFd;

use super::calls::Local;
use super::sys;
use crate::exec::pin::PinCall;
use crate::observe::Outcome;
use crate::observe_smaps::SmapsView;

/// Where the driver lives.
pub const GUP_TEST_PATH: &str = "/sys/kernel/debug/gup_test";

/// Whether this kernel has the driver where the runner can open it.
pub fn supported() -> bool {
    std::path::Path::new(GUP_TEST_PATH).exists()
}

/// Performs `call` in this process.
pub fn execute(local: &mut Local, call: &PinCall) -> Outcome {
    if let PinCall::Open { id } = *call {
        return match std::fs::OpenOptions::new().read(true).write(true).open(GUP_TEST_PATH) {
            Ok(file) => {
                local.files.insert(id, file.into_raw_fd());
                Outcome::Ok
            }
            Err(e) => Outcome::Errno(e.raw_os_error().unwrap_or(libc::EIO)),
        };
    }
    let Some(file) = call.file() else { return Outcome::Errno(libc::EBADF) };
    let Some(&fd) = local.files.get(&file) else { return Outcome::Errno(libc::EBADF) };
    let in_window = match *call {
        // The pages pinned are this process's: only the window's.
        PinCall::Run { addr, size, .. } => local.range_ok(addr, size) && addr % 4096 == 0,
        PinCall::Start { addr, size, .. } => local.range_ok(addr, size),
        _ => true,
    };
    if !in_window {
        return Outcome::Refused("outside the window".into());
    }
    if call.may_fault() && local.uffd.has_uffd() {
        // The fast commands may wait for a userfaultfd handler: on a
        // thread, settled as the model's (`HostUffd::blocking_call`).
        let call = call.clone();
        let mut uffd = std::mem::take(&mut local.uffd);
        let outcome = uffd.blocking_call(&local.files, None, move || perform(fd, &call));
        local.uffd = uffd;
        return outcome;
    }
    perform(fd, call)
}

/// `call` on the open `gup_test` descriptor `fd` (its range checked).
fn perform(fd: std::os::fd::RawFd, call: &PinCall) -> Outcome {
    let done = |r: Result<(), i32>| r.map_or_else(Outcome::Errno, |()| Outcome::Ok);
    match *call {
        PinCall::Run { cmd, addr, size, foll, per_call, .. } => {
            let mut arg =
                sys::GupTestArg { addr, size, nr_pages_per_call: per_call, gup_flags: foll, ..Default::default() };
            match sys::gup_test_run(fd, cmd.nr(), &mut arg) {
                Ok(()) => Outcome::Value(arg.size),
                Err(e) => Outcome::Errno(e),
            }
        }
        PinCall::Start { addr, size, flags, .. } => done(sys::gup_test_longterm_start(fd, addr, size, flags)),
        PinCall::Stop { .. } => done(sys::gup_test_longterm_stop(fd)),
        PinCall::Read { npages, .. } => match sys::gup_test_longterm_read(fd, npages) {
            Ok(bytes) => Outcome::Words(crate::observe_device::word_runs(&bytes)),
            Err(e) => Outcome::Errno(e),
        },
        PinCall::Open { .. } => Outcome::Errno(libc::EBADF),
    }
}

/// Anonymous mTHP sizes other than 2 MiB that are not `never`: then
/// `THPeligible` may say 1 where the model (PMD-sized THP only) cannot.
fn mthp_enabled() -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/kernel/mm/transparent_hugepage") else { return false };
    dir.filter_map(Result::ok).any(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        name.starts_with("hugepages-")
            && name != "hugepages-2048kB"
            && std::fs::read_to_string(entry.path().join("enabled")).is_ok_and(|s| !s.contains("[never]"))
    })
}

/// `smaps ADDR`: the entry of /proc/self/smaps for the VMA containing it.
pub fn smaps(local: &Local, addr: u64) -> Outcome {
    if local.ksm_running {
        return Outcome::Inconclusive("KSM may merge pages at any time".into());
    }
    if mthp_enabled() {
        return Outcome::Inconclusive("anonymous mTHP sizes are enabled (THPeligible)".into());
    }
    match std::fs::read_to_string("/proc/self/smaps") {
        Ok(text) => match SmapsView::parse(&text, addr) {
            Ok(view) => Outcome::Smaps(view),
            Err(why) => Outcome::Inconclusive(format!("/proc/self/smaps: {why}")),
        },
        Err(e) => Outcome::Inconclusive(format!("/proc/self/smaps: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::sys;
    use crate::lang::pin::GupCmd;

    #[test]
    fn requests_have_the_kernels_numbers() {
        // mm/gup_test.h: struct gup_test is 80 bytes, pin_longterm_test 24.
        assert_eq!(core::mem::size_of::<sys::GupTestArg>(), 80);
        assert_eq!(sys::gup_test_request(GupCmd::GupBasic.nr()), 0xc050_6704);
        assert_eq!(sys::gup_test_request(GupCmd::PinBasic.nr()), 0xc050_6705);
        assert_eq!(sys::PIN_LONGTERM_TEST_START, 0x4018_6707);
        assert_eq!(sys::PIN_LONGTERM_TEST_STOP, 0x6708);
        assert_eq!(sys::PIN_LONGTERM_TEST_READ, 0x4008_6709);
    }
}
