//! The test process and its CPU: mmap and friends, and reading and writing
//! arrays of `int`s as the C tests do through pointers.

use std::sync::Arc;

use hmm_mm::{Mm, MmError};
use hmm_types::{MadviseAdvice, MapFlags, Prot};

use crate::verdict::{Fail, Verdict};

/// A process of the test: an address space and the CPU acting on it.
#[derive(Clone, Debug)]
pub struct Process {
    /// Its address space.
    pub mm: Arc<Mm>,
}

pub(super) fn mm_fail(what: &str, error: MmError) -> Fail {
    Fail::failed(format!("{what}: {error}"), file!(), line!())
}

impl Process {
    /// `mmap(NULL, len, prot, flags, -1, 0)`.
    pub fn mmap(&self, len: u64, prot: Prot, flags: MapFlags) -> Result<u64, Fail> {
        self.mm.mmap(0, len, prot, flags).map_err(|e| mm_fail("mmap", e))
    }
    /// `munmap`.
    pub fn munmap(&self, addr: u64, len: u64) -> Verdict {
        self.mm.munmap(addr, len).map_err(|e| mm_fail("munmap", e))
    }
    /// `mprotect`.
    pub fn mprotect(&self, addr: u64, len: u64, prot: Prot) -> Verdict {
        self.mm.mprotect(addr, len, prot).map_err(|e| mm_fail("mprotect", e))
    }
    /// `madvise`.
    pub fn madvise(&self, addr: u64, len: u64, advice: MadviseAdvice) -> Verdict {
        self.mm.madvise(addr, len, advice).map_err(|e| mm_fail("madvise", e))
    }
    /// Writes `n` ints from `va`, element `i` = `value(i)` (one CPU copy).
    pub fn write_ints(&self, va: u64, n: usize, value: impl Fn(usize) -> i32) -> Verdict {
        let bytes: Vec<u8> = (0..n).flat_map(|i| value(i).to_le_bytes()).collect();
        self.mm.write_bytes(va, &bytes).map_err(|e| mm_fail("CPU write", e))
    }
    /// Reads `n` ints from `va`.
    pub fn read_ints(&self, va: u64, n: usize) -> Result<Vec<i32>, Fail> {
        let mut bytes = vec![0u8; n * 4];
        self.mm.read_bytes(va, &mut bytes).map_err(|e| mm_fail("CPU read", e))?;
        Ok(bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }
    /// Reads one int, element `index` of the array at `va`.
    pub fn read_int(&self, va: u64, index: usize) -> Result<i32, Fail> {
        Ok(self.read_ints(va + index as u64 * 4, 1)?[0])
    }
    /// Adds one to element `index` atomically; returns the old value.
    pub fn increment_int(&self, va: u64, index: usize) -> Result<i32, Fail> {
        // The CPU's atomics work on u64: add to the right half.
        let at = va + index as u64 * 4;
        let word = at & !7;
        let shift = (at - word) * 8;
        let old = self.mm.atomic_fetch_add(word, 1 << shift).map_err(|e| mm_fail("CPU atomic add", e))?;
        Ok((old >> shift) as u32 as i32)
    }
}

/// Checks that `values[i] == expected(i)` for every `i`, naming the first
/// element that differs.
pub fn check_ints(what: &str, values: &[i32], expected: impl Fn(usize) -> i32) -> Verdict {
    if let Some((i, &v)) = values.iter().enumerate().find(|&(i, &v)| v != expected(i)) {
        return Err(Fail::failed(format!("{what}[{i}] = {v}, expected {}", expected(i)), file!(), line!()));
    }
    Ok(())
}
