//! The limits every figure is measured against, in the same run: what the
//! host does with plain memory for the same count of words or bytes.
//!
//! * [`Stream`]: read one u64 array, write another, one word per 4 KiB
//!   slot: the least a walk that reads one entry and writes one pfn word
//!   per slot can do (snapshots, mirror versus pin);
//! * [`Memset`]: write the bytes a fault must zero (faulting);
//! * [`Memcpy`]: copy the bytes a migration or a device access moves;
//! * [`ClearEntries`]: zero the device entries an invalidation must remove.
//!
//! memset and memcpy run twice per measurement, in one call and in 2 MiB
//! pieces, and count the faster: the C library switches to non-temporal
//! stores for large calls, slower than cached stores while the bytes fit
//! in the last-level cache and faster once they do not; the limit is the
//! best the host can do either way. Each buffer is touched once when built, so no host page fault lands in
//! a timed run.

use std::hint::black_box;
use std::time::Duration;

use super::measure::time;

/// The piece size of the piecewise memset and memcpy: a huge page.
const PIECE: usize = 2 << 20;

/// A streaming read-plus-write of `slots` u64 words.
#[derive(Debug)]
pub struct Stream {
    src: Vec<u64>,
    dst: Vec<u64>,
}

impl Stream {
    /// Buffers for `slots` words.
    pub fn new(slots: u64) -> Self {
        Self { src: (0..slots).map(|i| i * 3 + 1).collect(), dst: vec![1; slots as usize] }
    }

    /// One pass.
    pub fn run(&mut self) -> Duration {
        let (src, dst) = (&self.src, &mut self.dst);
        time(|| {
            for (d, s) in dst.iter_mut().zip(black_box(src)) {
                *d = *s | 1 << 63;
            }
            black_box(dst);
        })
    }
}

/// A memset of `bytes`.
#[derive(Debug)]
pub struct Memset {
    buf: Vec<u8>,
    fill: u8,
}

impl Memset {
    /// A buffer of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Self { buf: vec![1; bytes as usize], fill: 0 }
    }

    /// One pass in one call, one in pieces (a different byte each time,
    /// so nothing can be skipped): the faster.
    pub fn run(&mut self) -> Duration {
        self.fill = self.fill.wrapping_add(1);
        let (buf, fill) = (&mut self.buf, self.fill);
        let whole = time(|| {
            buf.fill(black_box(fill));
            black_box(&mut *buf);
        });
        let pieces = time(|| {
            for piece in buf.chunks_mut(PIECE) {
                piece.fill(black_box(fill.wrapping_add(1)));
            }
            black_box(&mut *buf);
        });
        whole.min(pieces)
    }
}

/// A memcpy of `bytes` between two buffers.
#[derive(Debug)]
pub struct Memcpy {
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl Memcpy {
    /// Buffers of `bytes` each.
    pub fn new(bytes: u64) -> Self {
        Self { src: vec![0x5a; bytes as usize], dst: vec![1; bytes as usize] }
    }

    /// One copy in one call, one in pieces: the faster.
    pub fn run(&mut self) -> Duration {
        let (src, dst) = (&self.src, &mut self.dst);
        let whole = time(|| {
            dst.copy_from_slice(black_box(src));
            black_box(&mut *dst);
        });
        let pieces = time(|| {
            for (d, s) in dst.chunks_mut(PIECE).zip(black_box(src).chunks(PIECE)) {
                d.copy_from_slice(s);
            }
            black_box(&mut *dst);
        });
        whole.min(pieces)
    }
}

/// Zeroing `entries` u64 device entries in each of `tables` tables (each
/// device clears its own), refilled untimed between runs.
#[derive(Debug)]
pub struct ClearEntries {
    tables: Vec<Vec<u64>>,
}

impl ClearEntries {
    /// `tables` tables of `entries` words.
    pub fn new(tables: usize, entries: u64) -> Self {
        Self { tables: (0..tables).map(|_| vec![1; entries as usize]).collect() }
    }

    /// One clear of every table.
    pub fn run(&mut self) -> Duration {
        for table in &mut self.tables {
            table.fill(1);
        }
        let tables = &mut self.tables;
        time(|| {
            for table in tables.iter_mut() {
                table.fill(black_box(0));
            }
            black_box(tables);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_does_its_work() {
        let mut stream = Stream::new(4);
        stream.run();
        assert_eq!(stream.dst, [1 | 1 << 63, 4 | 1 << 63, 7 | 1 << 63, 10 | 1 << 63]);
        let mut memset = Memset::new(16);
        memset.run();
        memset.run();
        assert!(memset.buf.iter().all(|&b| b == 3));
        let mut memcpy = Memcpy::new(16);
        memcpy.run();
        assert_eq!(memcpy.dst, memcpy.src);
        let mut clear = ClearEntries::new(2, 8);
        clear.run();
        assert!(clear.tables.iter().flatten().all(|&e| e == 0));
    }
}
