//! An API fuzzer for the memory manager (`hmm-mm`), the driver API (`hmm`)
//! and the reference device (`hmm-dmirror`): random sequences of calls,
//! ordinary ones on a small window so that state builds up and extreme
//! ones (0, 1, page - 1, 2^63, 2^64 - page, unaligned, the kernel half,
//! 2^30..2^44 pages) so that every entry point's argument checks are hit,
//! with invariants checked after every call and proptest shrinking what
//! fails to a minimal sequence.
//!
//! * `ops.rs`: the operations as data;
//! * `strategies.rs`: their proptest strategies;
//! * `exec.rs`: the world a sequence runs in and the call each op makes;
//! * `invariants.rs`: what must hold after each call and at the end;
//! * `runner.rs`: watchdogs, replay, and the seeded, time-bounded loop.
//!
//! `cargo test -p hmm-fuzz --test api_fuzz -- --nocapture` runs it
//! (`HMM_FUZZ_SECONDS`, `HMM_FUZZ_SEED`, `HMM_FUZZ_CASE`);
//! `tests/regressions.rs` replays what it found.
//! No Linux counterpart (syzkaller plays this part for the kernel).

#![forbid(unsafe_code)]

pub mod exec;
pub mod invariants;
pub mod ops;
pub mod runner;
pub mod strategies;

pub use exec::{Outcome, World};
pub use ops::{to_rust, Addr, Count, DmCmd, Len, MapKind, Op, Placement};
pub use runner::{fuzz, replay, run_sequence, Finding, Report, Settings, Stats};
