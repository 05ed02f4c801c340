//! The host runner's side of device and DAX calls: `/dev/hmm_dmirrorN`
//! opened for real, each command a real ioctl (`sys::dmirror_ioctl`) with
//! the runner's own buffer, and `daxfile` a real file on an fs-dax mount
//! (created, then unlinked at once so nothing outlives the scenario; its
//! maps line still names it).
//!
//! Where the kernel has no test device or no fs-dax mount, the interpreter
//! refuses these calls ([`supports`]): such steps are never a match.
//!
//! The device-DAX node keeps its bytes for the whole boot, while every
//! scenario of a batch expects the zeroes of a fresh boot (the model's
//! device starts zeroed): the runner notes each range a scenario maps
//! ([`note_devdax_mapping`]) and the next runner of the boot clears them
//! before its scenario starts ([`clear_devdax_left_over`]).
//!
//! Linux: `lib/test_hmm.c` (`dmirror_fops_unlocked_ioctl`).

use std::os::fd::IntoRawFd;

use hmm_dmirror::{uapi, HmmDmirrorCmd};

use super::calls::Local;
use super::sys;
use crate::exec::device::DeviceCall;
use crate::exec::Capability;
use crate::lang::device::{DevCmd, DEFAULT_DEVDAX};
use crate::observe::Outcome;
use crate::observe_device::DeviceResult;

const PAGE: u64 = 4096;
/// The basename prefix of the runner's DAX files (`maps` shows them by the
/// scenario's name).
const DAX_PREFIX: &str = "hmm-scenario.";

/// Where runners note the device-DAX ranges their scenarios mapped (the
/// guest's `/tmp`, gone with the boot).
const DEVDAX_MAPPED: &str = "/tmp/hmm-devdax-mapped";

/// Notes `len` bytes at `offset` of `fd`, just mapped, if `fd` is the
/// device-DAX node.
pub(super) fn note_devdax_mapping(fd: std::os::fd::RawFd, offset: u64, len: u64) {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let rdev = |path: &str| std::fs::metadata(path).ok().filter(|m| m.rdev() != 0).map(|m| m.rdev());
    let Some(devdax) = rdev(DEFAULT_DEVDAX) else { return };
    if rdev(&format!("/proc/self/fd/{fd}")) != Some(devdax) {
        return;
    }
    let noted = std::fs::OpenOptions::new().create(true).append(true).open(DEVDAX_MAPPED);
    if let Ok(mut file) = noted {
        let _ = writeln!(file, "{offset} {len}");
    }
}

/// Zeroes the device-DAX ranges earlier scenarios of this boot mapped,
/// up to the device's end (a mapping may reach past it: Linux checks no
/// offset), and forgets them.
pub fn clear_devdax_left_over() -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    const PROT_RW: u32 = 3;
    const MAP_SHARED: u32 = 1;
    let Ok(noted) = std::fs::read_to_string(DEVDAX_MAPPED) else { return Ok(()) };
    // Forgotten first, so a range that cannot be cleared fails one
    // scenario, not every later one of the boot.
    std::fs::remove_file(DEVDAX_MAPPED).map_err(|e| format!("{DEVDAX_MAPPED}: {e}"))?;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(DEFAULT_DEVDAX);
    let file = file.map_err(|e| format!("{DEFAULT_DEVDAX}: {e}"))?;
    let rdev = file.metadata().map_err(|e| format!("{DEFAULT_DEVDAX}: {e}"))?.rdev();
    let sysfs = format!("/sys/dev/char/{}:{}/size", libc::major(rdev), libc::minor(rdev));
    let size = std::fs::read_to_string(&sysfs).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let size = size.ok_or_else(|| format!("{sysfs}: no device size"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let zeroes = vec![0u8; 2 << 20];
    for line in noted.lines() {
        let mut words = line.split(' ').map(str::parse::<u64>);
        let (Some(Ok(offset)), Some(Ok(len))) = (words.next(), words.next()) else { continue };
        // Whole 2 MiB pieces: Linux places a mapping of the node so that
        // address and offset agree modulo its alignment, so an offset off
        // the alignment cannot be mapped at a free address of its own.
        const ALIGN: u64 = 2 << 20;
        let first = offset & !(ALIGN - 1);
        let end = offset.saturating_add(len).min(size).next_multiple_of(ALIGN).min(size);
        let (offset, len) = (first, end.saturating_sub(first));
        if len == 0 {
            continue;
        }
        let at =
            sys::mmap(0, len, PROT_RW, MAP_SHARED, fd, offset).map_err(|e| format!("mapping {line}: errno {e}"))?;
        let cleared = (0..len)
            .step_by(zeroes.len())
            .try_for_each(|o| sys::write_bytes(at + o, &zeroes[..zeroes.len().min((len - o) as usize)]));
        let _ = sys::munmap(at, len);
        cleared.map_err(|e| format!("clearing {line}: errno {e}"))?;
    }
    Ok(())
}

/// Whether this kernel offers `cap`: the test device's first node, or any
/// filesystem mounted with `dax`.
pub fn supports(cap: Capability) -> bool {
    match cap {
        Capability::Devices => std::path::Path::new("/dev/hmm_dmirror0").exists(),
        Capability::Dax => dax_mounts().next().is_some(),
        Capability::DevDax => std::path::Path::new(DEFAULT_DEVDAX).exists(),
        Capability::Frames => true,
        Capability::GupTest => super::pin::supported(),
        Capability::Invalidations => false,
        Capability::UffdRwp => super::uffd::offers_rwp(),
    }
}

/// Mount points of filesystems mounted with `-o dax` (`dax` or
/// `dax=always` in /proc/mounts).
fn dax_mounts() -> impl Iterator<Item = String> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let points: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let dax = fields.get(3)?.split(',').any(|o| o == "dax" || o == "dax=always");
            dax.then(|| fields[1].to_string())
        })
        .collect();
    points.into_iter()
}

/// Whether a maps path is a device-DAX node (`/dev/daxN.M`): `maps` calls
/// it `devdax`, as the scenario opened it.
pub fn is_devdax_path(path: &str) -> bool {
    path.strip_prefix("/dev/dax").is_some_and(|rest| rest.split('.').all(|n| n.parse::<u32>().is_ok()))
}

/// The scenario's name of a DAX file from its maps path.
pub fn dax_file_name(path: &str) -> Option<String> {
    let path = path.trim_end_matches(" (deleted)");
    let base = path.rsplit('/').next()?;
    base.strip_prefix(DAX_PREFIX).map(str::to_string)
}

fn errno(e: &std::io::Error) -> Outcome {
    Outcome::Errno(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Performs `call` in this process.
pub fn execute(local: &mut Local, call: &DeviceCall) -> Outcome {
    match *call {
        DeviceCall::Open { minor, id } => {
            match std::fs::OpenOptions::new().read(true).write(true).open(format!("/dev/hmm_dmirror{minor}")) {
                Ok(file) => {
                    local.files.insert(id, file.into_raw_fd());
                    Outcome::Ok
                }
                Err(e) => errno(&e),
            }
        }
        DeviceCall::DevDax { id } => match std::fs::OpenOptions::new().read(true).write(true).open(DEFAULT_DEVDAX) {
            Ok(file) => {
                local.files.insert(id, file.into_raw_fd());
                Outcome::Ok
            }
            Err(e) => errno(&e),
        },
        DeviceCall::DaxFile { ref name, ref dir, id } => {
            let on_dax = dax_mounts().any(|m| dir == &m || dir.starts_with(&format!("{}/", m.trim_end_matches('/'))));
            if !on_dax {
                return Outcome::Refused(format!("{dir} is not on an fs-dax mount"));
            }
            let path = std::path::Path::new(dir).join(format!("{DAX_PREFIX}{name}"));
            let opened = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path);
            match opened {
                Ok(file) => {
                    let _ = std::fs::remove_file(&path);
                    local.files.insert(id, file.into_raw_fd());
                    Outcome::Ok
                }
                Err(e) => errno(&e),
            }
        }
        DeviceCall::Cmd { file, cmd, addr, npages } => {
            let Some(len) = npages.checked_mul(PAGE) else {
                return Outcome::Refused("a page count whose byte size overflows".into());
            };
            if !local.range_ok(addr, len) {
                return Outcome::Refused("outside the window".into());
            }
            let (request, size) = match cmd {
                DevCmd::Read => (uapi::HMM_DMIRROR_READ, len),
                DevCmd::ReadUnlocked => (uapi::HMM_DMIRROR_READ_UNLOCKED, len),
                DevCmd::MigrateToDev => (uapi::HMM_DMIRROR_MIGRATE_TO_DEV, len),
                DevCmd::Exclusive => (uapi::HMM_DMIRROR_EXCLUSIVE, len),
                DevCmd::Snapshot => (uapi::HMM_DMIRROR_SNAPSHOT, npages),
                DevCmd::MigrateToSys => (uapi::HMM_DMIRROR_MIGRATE_TO_SYS, 0),
                DevCmd::CheckExclusive => (uapi::HMM_DMIRROR_CHECK_EXCLUSIVE, 0),
            };
            let mut buf = vec![0u8; size as usize];
            let result = ioctl(local, file, request, addr, npages, &mut buf);
            match result {
                Ok(c) if cmd == DevCmd::Snapshot => {
                    Outcome::Device(DeviceResult::new(c.cpages, c.faults, None, Some(&buf)))
                }
                Ok(c) if cmd.returns_data() => Outcome::Device(DeviceResult::new(c.cpages, c.faults, Some(&buf), None)),
                Ok(c) => Outcome::Device(DeviceResult::new(c.cpages, c.faults, None, None)),
                Err(o) => o,
            }
        }
        DeviceCall::Write { file, addr, npages, pattern } => {
            let Some(len) = npages.checked_mul(PAGE) else {
                return Outcome::Refused("a page count whose byte size overflows".into());
            };
            if !local.range_ok(addr, len) {
                return Outcome::Refused("outside the window".into());
            }
            let mut buf = pattern.bytes(len as usize);
            counters(ioctl(local, file, uapi::HMM_DMIRROR_WRITE, addr, npages, &mut buf))
        }
        // The command block's range check applies to these too: they pass
        // address 0 and, for FLAGS, the flags as the page count (as the
        // kernel's selftests do with their buffer's address).
        DeviceCall::Release { file } => counters(ioctl(local, file, uapi::HMM_DMIRROR_RELEASE, 0, 1, &mut [])),
        DeviceCall::Flags { file, flags } => counters(ioctl(local, file, uapi::HMM_DMIRROR_FLAGS, 0, flags, &mut [])),
    }
}

fn counters(result: Result<HmmDmirrorCmd, Outcome>) -> Outcome {
    match result {
        Ok(c) => Outcome::Device(DeviceResult::new(c.cpages, c.faults, None, None)),
        Err(o) => o,
    }
}

fn ioctl(
    local: &Local,
    file: usize,
    request: u64,
    addr: u64,
    npages: u64,
    buf: &mut [u8],
) -> Result<HmmDmirrorCmd, Outcome> {
    let fd = *local.files.get(&file).ok_or(Outcome::Errno(libc::EBADF))?;
    let mut cmd = HmmDmirrorCmd { addr, npages, ..HmmDmirrorCmd::default() };
    sys::dmirror_ioctl(fd, request, &mut cmd, buf).map_err(Outcome::Errno)?;
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dax_files_show_by_their_scenario_name() {
        assert_eq!(dax_file_name("/mnt/dax/hmm-scenario.seed (deleted)").as_deref(), Some("seed"));
        assert_eq!(dax_file_name("/mnt/dax/other"), None);
        assert!(is_devdax_path("/dev/dax1.0") && !is_devdax_path("/dev/dax") && !is_devdax_path("/dev/daxctl"));
    }
}
