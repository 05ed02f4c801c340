//! The kinds of non-present entries and what their offset field holds.
//!
//! Linux: `swp_type`, `is_migration_entry`, `is_device_private_entry`,
//! `is_device_exclusive_entry` (`include/linux/swapops.h`).

/// The kinds of non-present entries (`swp_type` in Linux).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SwapKind {
    /// A page written to swap; the offset is the swap slot.
    Swap = 1,
    /// Migration in progress, the page was mapped read-only.
    MigrationRead = 2,
    /// Migration in progress, read-only but exclusively owned (anon).
    MigrationReadExclusive = 3,
    /// Migration in progress, the page was mapped writable.
    MigrationWrite = 4,
    /// A device-private page, read-only.
    DevicePrivateRead = 5,
    /// A device-private page, writable.
    DevicePrivateWrite = 6,
    /// Taken away from the CPU for device atomics.
    DeviceExclusive = 7,
    /// A poisoned page.
    Hwpoison = 8,
    /// A marker (uffd-wp, guard), no page.
    Marker = 9,
}

impl SwapKind {
    pub(super) const fn from_bits(bits: u64) -> Option<Self> {
        Some(match bits {
            1 => Self::Swap,
            2 => Self::MigrationRead,
            3 => Self::MigrationReadExclusive,
            4 => Self::MigrationWrite,
            5 => Self::DevicePrivateRead,
            6 => Self::DevicePrivateWrite,
            7 => Self::DeviceExclusive,
            8 => Self::Hwpoison,
            9 => Self::Marker,
            _ => return None,
        })
    }
    /// A migration entry of either direction.
    #[inline]
    pub const fn is_migration(self) -> bool {
        matches!(self, Self::MigrationRead | Self::MigrationReadExclusive | Self::MigrationWrite)
    }
    /// A device-private entry of either direction.
    #[inline]
    pub const fn is_device_private(self) -> bool {
        matches!(self, Self::DevicePrivateRead | Self::DevicePrivateWrite)
    }
    /// The offset field is a page frame number (not a swap slot).
    #[inline]
    pub const fn has_pfn(self) -> bool {
        self.is_migration() || self.is_device_private() || matches!(self, Self::DeviceExclusive | Self::Hwpoison)
    }
    /// The entry records a writable mapping.
    #[inline]
    pub const fn is_write(self) -> bool {
        matches!(self, Self::MigrationWrite | Self::DevicePrivateWrite)
    }
}

#[cfg(test)]
mod tests {
    use super::SwapKind;
    use crate::entry::{Entry, EntryKind};
    use crate::level::Level;

    #[test]
    fn swap_kinds_round_trip() {
        for kind in [
            SwapKind::Swap,
            SwapKind::MigrationRead,
            SwapKind::MigrationReadExclusive,
            SwapKind::MigrationWrite,
            SwapKind::DevicePrivateRead,
            SwapKind::DevicePrivateWrite,
            SwapKind::DeviceExclusive,
            SwapKind::Hwpoison,
            SwapKind::Marker,
        ] {
            let e = Entry::swap(kind, 0x1234, false);
            assert!(!e.is_present() && !e.is_none());
            assert_eq!(e.kind(Level::Pte), EntryKind::NonPresent { kind, offset: 0x1234 });
        }
    }
}
