//! The bytes of simulated physical memory: one anonymous (or, for persistent
//! memory, file-backed) memory mapping per region.
//!
//! This is the only module of the CPU side that touches raw memory. Frames are
//! shared by every thread that maps them, exactly as RAM is shared by CPUs, so
//! accesses go through raw pointers (plain copies, as `vm-memory` treats guest
//! memory) or through atomics for page-table pages and atomic operations. The
//! mapping lives as long as its region, so no pointer handed out here can
//! outlive it.

use core::sync::atomic::AtomicU64;

use memmap2::{MmapMut, MmapOptions, MmapRaw};

use hmm_types::PAGE_SIZE;

/// Frame storage of one region.
#[derive(Debug)]
pub(crate) struct FrameBytes {
    map: MmapRaw,
    len: usize,
}

impl FrameBytes {
    /// `nr_frames` zeroed frames of anonymous memory, committed lazily by the
    /// host as they are touched.
    pub(crate) fn anonymous(nr_frames: u64) -> std::io::Result<Self> {
        let len = usize::try_from(nr_frames * PAGE_SIZE).map_err(std::io::Error::other)?;
        let map: MmapMut = MmapOptions::new().len(len.max(1)).map_anon()?;
        Ok(Self { map: MmapRaw::from(map), len })
    }

    /// Frames backed by a file (persistent memory), mapped shared so writes
    /// reach the file.
    pub(crate) fn file(file: &std::fs::File, nr_frames: u64) -> std::io::Result<Self> {
        let len = usize::try_from(nr_frames * PAGE_SIZE).map_err(std::io::Error::other)?;
        let map = MmapOptions::new().len(len).map_raw(file)?;
        Ok(Self { map, len })
    }

    fn check(&self, offset: u64, len: usize) -> usize {
        let offset = usize::try_from(offset).expect("offset fits in usize");
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "physical access out of the region");
        offset
    }

    /// Copies `buf.len()` bytes at byte `offset` into `buf`.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) {
        let offset = self.check(offset, buf.len());
        // SAFETY: `check` proved `offset..offset+len` lies inside the live
        // mapping, and `buf` is a distinct Rust allocation, so the ranges do
        // not overlap. Concurrent writers to the same simulated RAM are
        // other simulated CPUs; as with guest memory, their interleaving is
        // the simulated program's business.
        unsafe { core::ptr::copy_nonoverlapping(self.map.as_ptr().add(offset), buf.as_mut_ptr(), buf.len()) }
    }

    /// Copies `data` to byte `offset`.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) {
        let offset = self.check(offset, data.len());
        // SAFETY: in bounds by `check`; `data` is a distinct allocation.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(offset), data.len()) }
    }

    /// Sets `len` bytes at `offset` to zero.
    pub(crate) fn zero(&self, offset: u64, len: usize) {
        let offset = self.check(offset, len);
        // SAFETY: in bounds by `check`.
        unsafe { core::ptr::write_bytes(self.map.as_mut_ptr().add(offset), 0, len) }
    }

    /// Copies `len` bytes from `src` at `src_offset` to `self` at
    /// `dst_offset`; the two may be the same region (then the ranges must be
    /// different frames, which the callers guarantee).
    pub(crate) fn copy_from(&self, dst_offset: u64, src: &FrameBytes, src_offset: u64, len: usize) {
        let dst_offset = self.check(dst_offset, len);
        let src_offset = src.check(src_offset, len);
        // SAFETY: both ranges are in bounds; `copy` tolerates overlap.
        unsafe { core::ptr::copy(src.map.as_ptr().add(src_offset), self.map.as_mut_ptr().add(dst_offset), len) }
    }

    /// The 8 bytes at an 8-aligned `offset` as an atomic.
    pub(crate) fn atomic_u64(&self, offset: u64) -> &AtomicU64 {
        assert_eq!(offset % 8, 0, "atomic access must be 8-byte aligned");
        let offset = self.check(offset, 8);
        // SAFETY: in bounds and 8-aligned (the mapping is page aligned); the
        // memory lives as long as `self`, which bounds the returned borrow;
        // any bit pattern is a valid AtomicU64.
        unsafe { &*self.map.as_mut_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// The frame at `offset` viewed as a page table of 512 atomic entries.
    pub(crate) fn table(&self, offset: u64) -> &[AtomicU64; 512] {
        assert_eq!(offset % PAGE_SIZE, 0, "a table is a whole frame");
        let offset = self.check(offset, PAGE_SIZE as usize);
        // SAFETY: a whole in-bounds, page-aligned frame; lifetime bounded by
        // `self`; any bit pattern is a valid array of AtomicU64.
        unsafe { &*self.map.as_mut_ptr().add(offset).cast::<[AtomicU64; 512]>() }
    }

    /// Flushes a file-backed region to its file.
    pub(crate) fn flush(&self) -> std::io::Result<()> {
        self.map.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::Ordering;

    #[test]
    fn bytes_round_trip_and_zero() {
        let mem = FrameBytes::anonymous(2).unwrap();
        mem.write(4090, b"crossing");
        let mut buf = [0u8; 8];
        mem.read(4090, &mut buf);
        assert_eq!(&buf, b"crossing");
        mem.zero(4096, 4096);
        mem.read(4090, &mut buf);
        assert_eq!(&buf, b"crossi\0\0");
    }

    #[test]
    fn atomics_and_tables_alias_the_bytes() {
        let mem = FrameBytes::anonymous(1).unwrap();
        mem.atomic_u64(16).store(0x0102_0304_0506_0708, Ordering::Relaxed);
        assert_eq!(mem.table(0)[2].load(Ordering::Relaxed), 0x0102_0304_0506_0708);
    }

    #[test]
    #[should_panic(expected = "out of the region")]
    fn out_of_bounds_is_caught() {
        let mem = FrameBytes::anonymous(1).unwrap();
        mem.write(4095, b"xy");
    }
}
