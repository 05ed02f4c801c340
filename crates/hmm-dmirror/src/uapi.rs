//! The test device's user interface, with Linux's values: the command
//! block, the request numbers, the FLAGS bits, the memory types and the
//! SNAPSHOT byte encoding (spec §5.4, §5.6).
//!
//! Linux: `lib/test_hmm_uapi.h`.

use crate::error::DmirrorError;

/// The command block every request takes (`struct hmm_dmirror_cmd`, 40
/// bytes of `u64`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(C)]
pub struct HmmDmirrorCmd {
    /// In: the user address the device accesses (page aligned).
    pub addr: u64,
    /// In: the user buffer data or results are copied to or from.
    pub ptr: u64,
    /// In: the number of pages (FLAGS: the flag word).
    pub npages: u64,
    /// Out: pages copied or processed.
    pub cpages: u64,
    /// Out: device fault rounds.
    pub faults: u64,
}

/// `_IOWR('H', nr, struct hmm_dmirror_cmd)`.
const fn iowr(nr: u64) -> u64 {
    const READ_WRITE: u64 = 3;
    (READ_WRITE << 30) | ((core::mem::size_of::<HmmDmirrorCmd>() as u64) << 16) | ((b'H' as u64) << 8) | nr
}

/// `HMM_DMIRROR_READ`: the device reads user memory into `ptr`.
pub const HMM_DMIRROR_READ: u64 = iowr(0x00);
/// `HMM_DMIRROR_WRITE`: the device writes `ptr`'s bytes into user memory.
pub const HMM_DMIRROR_WRITE: u64 = iowr(0x01);
/// `HMM_DMIRROR_MIGRATE_TO_DEV` (`HMM_DMIRROR_MIGRATE` before v6.0).
pub const HMM_DMIRROR_MIGRATE_TO_DEV: u64 = iowr(0x02);
/// `HMM_DMIRROR_MIGRATE_TO_SYS`.
pub const HMM_DMIRROR_MIGRATE_TO_SYS: u64 = iowr(0x03);
/// `HMM_DMIRROR_SNAPSHOT`: one byte per page, what the device would see.
pub const HMM_DMIRROR_SNAPSHOT: u64 = iowr(0x04);
/// `HMM_DMIRROR_EXCLUSIVE`: take the pages for device atomics.
pub const HMM_DMIRROR_EXCLUSIVE: u64 = iowr(0x05);
/// `HMM_DMIRROR_CHECK_EXCLUSIVE`: `EPERM` while any page is still atomic.
pub const HMM_DMIRROR_CHECK_EXCLUSIVE: u64 = iowr(0x06);
/// `HMM_DMIRROR_RELEASE`: evict all of the device's memory.
pub const HMM_DMIRROR_RELEASE: u64 = iowr(0x07);
/// `HMM_DMIRROR_FLAGS`: set the per-open flag word (`npages`).
pub const HMM_DMIRROR_FLAGS: u64 = iowr(0x08);
/// `HMM_DMIRROR_READ_UNLOCKED` (Linux 7.3): READ whose faults go through
/// `range_fault_unlocked_timeout`, so userfaultfd ranges can be served.
pub const HMM_DMIRROR_READ_UNLOCKED: u64 = iowr(0x09);

/// `HMM_DMIRROR_FLAG_FAIL_ALLOC`: the next device (or, migrating back,
/// large system) allocation fails once.
pub const HMM_DMIRROR_FLAG_FAIL_ALLOC: u64 = 1 << 0;

/// A decoded request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Request {
    /// `HMM_DMIRROR_READ`.
    Read,
    /// `HMM_DMIRROR_WRITE`.
    Write,
    /// `HMM_DMIRROR_MIGRATE_TO_DEV`.
    MigrateToDev,
    /// `HMM_DMIRROR_MIGRATE_TO_SYS`.
    MigrateToSys,
    /// `HMM_DMIRROR_SNAPSHOT`.
    Snapshot,
    /// `HMM_DMIRROR_EXCLUSIVE`.
    Exclusive,
    /// `HMM_DMIRROR_CHECK_EXCLUSIVE`.
    CheckExclusive,
    /// `HMM_DMIRROR_RELEASE`.
    Release,
    /// `HMM_DMIRROR_FLAGS`.
    Flags,
    /// `HMM_DMIRROR_READ_UNLOCKED` (7.3).
    ReadUnlocked,
}

impl Request {
    /// Every request, in number order.
    pub const ALL: [Self; 10] = [
        Self::Read,
        Self::Write,
        Self::MigrateToDev,
        Self::MigrateToSys,
        Self::Snapshot,
        Self::Exclusive,
        Self::CheckExclusive,
        Self::Release,
        Self::Flags,
        Self::ReadUnlocked,
    ];

    /// The ioctl number.
    pub const fn number(self) -> u64 {
        match self {
            Self::Read => HMM_DMIRROR_READ,
            Self::Write => HMM_DMIRROR_WRITE,
            Self::MigrateToDev => HMM_DMIRROR_MIGRATE_TO_DEV,
            Self::MigrateToSys => HMM_DMIRROR_MIGRATE_TO_SYS,
            Self::Snapshot => HMM_DMIRROR_SNAPSHOT,
            Self::Exclusive => HMM_DMIRROR_EXCLUSIVE,
            Self::CheckExclusive => HMM_DMIRROR_CHECK_EXCLUSIVE,
            Self::Release => HMM_DMIRROR_RELEASE,
            Self::Flags => HMM_DMIRROR_FLAGS,
            Self::ReadUnlocked => HMM_DMIRROR_READ_UNLOCKED,
        }
    }

    /// Linux's name, e.g. `"HMM_DMIRROR_READ"`.
    pub const fn kernel_name(self) -> &'static str {
        match self {
            Self::Read => "HMM_DMIRROR_READ",
            Self::Write => "HMM_DMIRROR_WRITE",
            Self::MigrateToDev => "HMM_DMIRROR_MIGRATE_TO_DEV",
            Self::MigrateToSys => "HMM_DMIRROR_MIGRATE_TO_SYS",
            Self::Snapshot => "HMM_DMIRROR_SNAPSHOT",
            Self::Exclusive => "HMM_DMIRROR_EXCLUSIVE",
            Self::CheckExclusive => "HMM_DMIRROR_CHECK_EXCLUSIVE",
            Self::Release => "HMM_DMIRROR_RELEASE",
            Self::Flags => "HMM_DMIRROR_FLAGS",
            Self::ReadUnlocked => "HMM_DMIRROR_READ_UNLOCKED",
        }
    }
}

impl TryFrom<u64> for Request {
    type Error = DmirrorError;
    fn try_from(number: u64) -> Result<Self, DmirrorError> {
        Self::ALL.into_iter().find(|r| r.number() == number).ok_or(DmirrorError::UnknownRequest(number))
    }
}

/// The memory a device has (`HMM_DMIRROR_MEMORY_DEVICE_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MemoryKind {
    /// `HMM_DMIRROR_MEMORY_DEVICE_PRIVATE` (1): the CPU cannot map it.
    DevicePrivate = 1,
    /// `HMM_DMIRROR_MEMORY_DEVICE_COHERENT` (2): the CPU maps it like RAM.
    DeviceCoherent = 2,
}

/// SNAPSHOT bytes (`HMM_DMIRROR_PROT_*`).
pub mod prot {
    /// The walk reported `HMM_PFN_ERROR`.
    pub const ERROR: u8 = 0xff;
    /// Nothing the device could use.
    pub const NONE: u8 = 0x00;
    /// Readable.
    pub const READ: u8 = 0x01;
    /// Writable.
    pub const WRITE: u8 = 0x02;
    /// Mapped by a PMD leaf on the CPU.
    pub const PMD: u8 = 0x04;
    /// Mapped by a PUD leaf on the CPU.
    pub const PUD: u8 = 0x08;
    /// The zero page.
    pub const ZERO: u8 = 0x10;
    /// A device-private page of this device.
    pub const DEV_PRIVATE_LOCAL: u8 = 0x20;
    /// A device-private page of another device.
    pub const DEV_PRIVATE_REMOTE: u8 = 0x30;
    /// A device-coherent page of this device.
    pub const DEV_COHERENT_LOCAL: u8 = 0x40;
    /// A device-coherent page of another device.
    pub const DEV_COHERENT_REMOTE: u8 = 0x50;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_linux_values() {
        assert_eq!(core::mem::size_of::<HmmDmirrorCmd>(), 40);
        let expected = [
            0xC028_4800u64,
            0xC028_4801,
            0xC028_4802,
            0xC028_4803,
            0xC028_4804,
            0xC028_4805,
            0xC028_4806,
            0xC028_4807,
            0xC028_4808,
            0xC028_4809,
        ];
        for (request, number) in Request::ALL.into_iter().zip(expected) {
            assert_eq!(request.number(), number, "{}", request.kernel_name());
            assert_eq!(Request::try_from(number).unwrap(), request);
        }
        // 7.3 gave 0x09 a handler (READ_UNLOCKED); 0x0A is still unknown.
        assert_eq!(Request::try_from(0xC028_480A), Err(DmirrorError::UnknownRequest(0xC028_480A)));
    }
}
