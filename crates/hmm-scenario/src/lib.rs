//! Scenarios: a small text language of CPU-side operations (`lang/`),
//! run on the model and on the running Linux kernel (`exec/`), observed as
//! /proc/PID/maps, pagemap and PAGEMAP_SCAN show them (`observe.rs`),
//! compared (`compare.rs`), generated and shrunk (`fuzz.rs`), with the
//! intended differences between kernel versions as data (`versions.rs`).
//!
//! Flow: text → [`lang::parse`] → [`lang::ast::Scenario`] → an
//! [`exec::Executor`] (model, or host via the `hmm-host-runner` child) →
//! [`observe::Trace`] → [`compare::compare`].
//!
//! `unsafe` is denied everywhere except `exec/host/sys.rs` and its files
//! `sys/`, the one module that makes raw system calls.

#![deny(unsafe_code)]

pub mod compare;
mod compare_thp;
pub mod exec;
pub mod fuzz;
pub mod fuzz_vm;
pub mod known_crashes;
pub mod lang;
pub mod observe;
pub mod observe_device;
pub mod observe_smaps;
pub mod versions;
