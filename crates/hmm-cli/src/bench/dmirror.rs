//! Category 3: READ and WRITE of the reference device (`hmm-dmirror`,
//! device 0) over populated 4 KiB anonymous memory, through the typed calls
//! (no ioctl bounce buffer), in bytes per second against a memcpy of the
//! same bytes; reported as a share of memcpy's throughput.
//!
//! Each direction is measured twice:
//! * cold: the first access of a freshly opened file, whose device table
//!   is empty: a miss, one fault round (`range_fault` in 32-page chunks,
//!   mapping every page in the device table), then the copy;
//! * warm: the device table already filled: the copy through the table.
//!
//! The file is reopened (untimed) before each cold run. The host buffer is
//! page aligned (see [`AlignedBuf`]).

use std::time::Duration;

use hmm_dmirror::{Counts, DmirrorFile};

use super::fixture::{AlignedBuf, DmirrorRange, REGION};
use super::limits::Memcpy;
use super::measure::{paired, time};
use super::report::{Figure, Limit, Row, Target};
use super::{BenchError, Case, Mode};

/// Bytes each command moves: 8 MiB, as category 4 migrates.
const LEN: u64 = 8 << 20;

/// The device: 0, device-private memory (READ and WRITE do not use it).
const MINOR: usize = 0;

/// READ and WRITE, each cold and warm.
pub fn cases(mode: Mode) -> Vec<Case> {
    [(false, "read", "READ"), (true, "write", "WRITE")]
        .into_iter()
        .map(|(write, id, name)| {
            Case::new(format!("dmirror {name}, cold and warm"), move || {
                let mut bench = Bench::new(write)?;
                let mut rows = Vec::new();
                for cold in [true, false] {
                    let mut memcpy = Memcpy::new(LEN);
                    let pair = paired(mode.plan(), || Ok(memcpy.run()), || bench.run(cold))?;
                    let gbps = |ns: f64| LEN as f64 / ns;
                    let (key, temperature) = if cold {
                        ("cold", "cold (empty device table: one fault round, then the copy)")
                    } else {
                        ("warm", "warm (device table filled)")
                    };
                    rows.push(Row::new(
                        3,
                        &format!("dmirror/{id}_{key}"),
                        &format!("dmirror {name} of {} MiB, 4K pages, {temperature}", LEN >> 20),
                        Figure::new(gbps(pair.subject_ns), "GB/s"),
                        Limit::measured("memcpy", Figure::new(gbps(pair.limit_ns), "GB/s")),
                        1.0 / pair.ratio,
                        Target::AtLeast(0.5),
                    ));
                }
                bench.check()?;
                Ok(rows)
            })
        })
        .collect()
}

/// A populated range, an open file of device 0 and a buffer.
struct Bench {
    file: Option<DmirrorFile>,
    range: DmirrorRange,
    write: bool,
    buf: AlignedBuf,
}

impl Bench {
    /// For WRITE the buffer holds bytes other than the range's, so that
    /// [`Bench::check`] can see they arrived.
    fn new(write: bool) -> Result<Self, BenchError> {
        let range = DmirrorRange::new(LEN, false)?;
        let mut buf = AlignedBuf::new(LEN);
        if write {
            buf.bytes_mut().iter_mut().zip(&range.data).for_each(|(b, d)| *b = !d);
        }
        let file = Some(range.open(MINOR)?);
        let mut bench = Self { file, range, write, buf };
        // One untimed command, checked: READ must return the range's bytes.
        bench.run(true)?;
        if !write && bench.buf.bytes() != bench.range.data {
            return Err(BenchError("dmirror READ returned other bytes than the range holds".into()));
        }
        Ok(bench)
    }

    /// One command over the whole range, timed; a cold one on a file
    /// opened just before (untimed).
    fn run(&mut self, cold: bool) -> Result<Duration, BenchError> {
        if cold {
            // Closing evicts the device's memory (none here) and empties
            // the table; the new file starts empty.
            self.file = None;
            self.file = Some(self.range.open(MINOR)?);
        }
        let file = self.file.as_ref().expect("opened in new");
        let npages = self.range.npages();
        let mut result = Ok(Counts::default());
        let took = if self.write {
            let data = self.buf.bytes();
            time(|| result = file.write(REGION, npages, data))
        } else {
            let out = self.buf.bytes_mut();
            time(|| result = file.read(REGION, npages, out))
        };
        let counts = result?;
        let faults_expected = if cold { 1 } else { 0 };
        if counts.cpages != npages || counts.faults != faults_expected {
            return Err(BenchError(format!(
                "dmirror {}: {counts:?}, expected {npages} pages and {faults_expected} fault rounds",
                if self.write { "WRITE" } else { "READ" }
            )));
        }
        Ok(took)
    }

    /// After WRITE, the range holds the written bytes.
    fn check(&self) -> Result<(), BenchError> {
        if self.write {
            let mut now = vec![0; LEN as usize];
            self.range.mm.read_bytes(REGION, &mut now)?;
            if now != self.buf.bytes() {
                return Err(BenchError("dmirror WRITE: the range does not hold the bytes written".into()));
            }
        }
        Ok(())
    }
}
