//! Reading and writing the bytes of frames.

use core::sync::atomic::AtomicU64;

use hmm_types::{Pfn, PAGE_SIZE};

use super::bytes::FrameBytes;
use super::PhysMem;

impl PhysMem {
    #[inline]
    pub(super) fn bytes_of(&self, pfn: Pfn) -> (&FrameBytes, u64) {
        (&self.region(pfn).bytes, Self::local(pfn) * PAGE_SIZE)
    }

    /// Reads bytes at `offset` inside frame `pfn` (may run into the next
    /// frames of the same region).
    ///
    /// # Panics
    ///
    /// If `pfn` is in no region (RAM or a plugged-in device), or the bytes
    /// run past the end of its region: a frame number is the caller's to
    /// get right, as in the kernel (use the frames the page table or
    /// `range_fault` gave you).
    #[inline]
    pub fn read(&self, pfn: Pfn, offset: u64, buf: &mut [u8]) {
        let (bytes, base) = self.bytes_of(pfn);
        bytes.read(base + offset, buf);
    }

    /// Writes bytes at `offset` inside frame `pfn` (may run into the next
    /// frames of the same region).
    ///
    /// # Panics
    ///
    /// If `pfn` is in no region (RAM or a plugged-in device), or the bytes
    /// run past the end of its region: a frame number is the caller's to
    /// get right, as in the kernel (use the frames the page table or
    /// `range_fault` gave you).
    #[inline]
    pub fn write(&self, pfn: Pfn, offset: u64, data: &[u8]) {
        let (bytes, base) = self.bytes_of(pfn);
        bytes.write(base + offset, data);
    }

    /// Zeroes `nr` frames starting at `pfn`.
    ///
    /// # Panics
    ///
    /// If `pfn` is in no region (RAM or a plugged-in device), or the bytes
    /// run past the end of its region: a frame number is the caller's to
    /// get right, as in the kernel (use the frames the page table or
    /// `range_fault` gave you).
    pub fn zero_frames(&self, pfn: Pfn, nr: u64) {
        let (bytes, base) = self.bytes_of(pfn);
        bytes.zero(base, (nr * PAGE_SIZE) as usize);
    }

    /// Copies `nr` frames from `src` to `dst` (`copy_highpage`).
    ///
    /// # Panics
    ///
    /// If `src` or `dst` is in no region (RAM or a plugged-in device), or the bytes
    /// run past the end of its region: a frame number is the caller's to
    /// get right, as in the kernel (use the frames the page table or
    /// `range_fault` gave you).
    pub fn copy_frames(&self, dst: Pfn, src: Pfn, nr: u64) {
        let (dst_bytes, dst_base) = self.bytes_of(dst);
        let (src_bytes, src_base) = self.bytes_of(src);
        dst_bytes.copy_from(dst_base, src_bytes, src_base, (nr * PAGE_SIZE) as usize);
    }

    /// Writes a file-backed region (persistent memory) to its file.
    ///
    /// # Panics
    ///
    /// If `pfn` is in no region (RAM or a plugged-in device): a frame number is the caller's to
    /// get right, as in the kernel (use the frames the page table or
    /// `range_fault` gave you).
    pub fn flush_region(&self, pfn: Pfn) -> std::io::Result<()> {
        self.region(pfn).bytes.flush()
    }

    /// The aligned u64 at `offset` in frame `pfn`, for atomic operations.
    ///
    /// # Panics
    ///
    /// If `offset` is not 8-byte aligned, if `pfn` is in no region (RAM or a plugged-in device), or the bytes
    /// run past the end of its region: a frame number is the caller's to
    /// get right, as in the kernel (use the frames the page table or
    /// `range_fault` gave you).
    pub fn atomic_u64(&self, pfn: Pfn, offset: u64) -> &AtomicU64 {
        let (bytes, base) = self.bytes_of(pfn);
        bytes.atomic_u64(base + offset)
    }
}
