//! `hmm fuzz --kernel vm`: generated scenarios in batches, one guest boot
//! per batch, compared with the model configured like the guest. The
//! scenarios are `fuzz.rs`'s with test-device commands (device 0, opened
//! first) and an fs-dax file (`x`, 4 MiB of holes on the guest's DAX
//! mount: mapped shared, private or MAP_SYNC, written, truncated and
//! punched under the mirror), mappings of the device-DAX node (`y`) and
//! pins through `gup_test` (`g`) mixed in. A divergence of a new kind is shrunk by deleting steps:
//! every candidate of a round (blocks of half, a quarter... down to single
//! steps) runs in one more boot, the shortest that still shows the same
//! kind of divergence starts the next round, until none does.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::compare::compare;
use crate::exec::model::ModelExecutor;
use crate::exec::vm::{VmBatch, VmExecutor};
use crate::exec::Executor;
use crate::fuzz::{complete, signature, Found, FuzzReport};
use crate::fuzz::{len, prot, value, w};
use crate::lang::ast::{Expr, FallocMode, Op, Scenario, Step};
use crate::lang::device::{DevCmd, DeviceOp, Pattern};
use crate::lang::pin::{GupCmd, PinOp};

/// Most shrinking rounds (boots) per divergence.
const SHRINK_ROUNDS: usize = 6;

fn device_step() -> impl Strategy<Value = Step> {
    let file = || "d".to_string();
    let cmd = proptest::sample::select(DevCmd::ALL.iter().map(|(c, _)| *c).collect::<Vec<_>>());
    let op = prop_oneof![
        6 => (cmd, crate::fuzz::addr(), 1u64..17).prop_map(move |(cmd, addr, npages)| DeviceOp::Cmd { cmd, file: file(), addr, npages }),
        3 => (crate::fuzz::addr(), 1u64..17, prop_oneof![Just(Pattern::Index), any::<u8>().prop_map(Pattern::Fill)])
            .prop_map(move |(addr, npages, pattern)| DeviceOp::Write { file: file(), addr, npages, pattern }),
        1 => Just(DeviceOp::Release { file: file() }),
        1 => (0u64..2).prop_map(move |flags| DeviceOp::Flags { file: file(), flags }),
    ];
    op.prop_map(|op| Step { line: 0, bind: None, op: Op::Device(op) })
}

const PAGE: u64 = 4096;
/// Pages of the fs-dax file: two PMD-sized blocks, so faults can map a
/// block, the huge zero page of a hole, or 4 KiB pieces.
const DAX_PAGES: u64 = 1024;

/// A step on the fs-dax file `x`: a mapping of it (often a whole aligned
/// 2 MiB block at a block's offset, where Linux maps PMD leaves), or a
/// file operation (pwrite, pread, ftruncate, fallocate).
fn dax_step() -> impl Strategy<Value = Step> {
    let x = || "x".to_string();
    let page = || prop_oneof![3 => Just(0u64), 2 => Just(512u64), 5 => 0..DAX_PAGES];
    let at = prop_oneof![2 => Just(w(0)), 1 => Just(w(512 * PAGE)), 3 => crate::fuzz::addr()];
    let length = prop_oneof![2 => Just(Expr::num(512 * PAGE)), 3 => len()];
    // shared|fixed, private|fixed, shared_validate|sync|fixed.
    let flags = prop_oneof![3 => Just(0x11u32), 2 => Just(0x12), 1 => Just(0x03 | 0x10 | 0x80000)];
    let op = prop_oneof![
        4 => (at, length, prot(), flags, page()).prop_map(move |(addr, len, prot, flags, p)| Op::Mmap {
            addr,
            len,
            prot,
            flags,
            file: Some((x(), Expr::num(p * PAGE)))
        }),
        1 => (page(), value()).prop_map(move |(p, value)| Op::Fwrite { file: x(), offset: Expr::num(p * PAGE), value }),
        1 => page().prop_map(move |p| Op::Pread { file: x(), offset: Expr::num(p * PAGE) }),
        1 => (0..=DAX_PAGES).prop_map(move |p| Op::Ftruncate { file: x(), size: Expr::num(p * PAGE) }),
        1 => (page(), len(), prop_oneof![Just(FallocMode::PunchHole), Just(FallocMode::KeepSize)])
            .prop_map(move |(p, len, mode)| Op::Fallocate { file: x(), offset: Expr::num(p * PAGE), len, mode }),
    ];
    op.prop_map(|op| Step { line: 0, bind: None, op })
}

/// A mapping of the device-DAX node `y`: most often a whole aligned 2 MiB
/// block of the window (Linux refuses a start or length off the device's
/// 2 MiB alignment), sometimes anywhere; the offset mostly aligned.
fn devdax_step() -> impl Strategy<Value = Step> {
    let at = prop_oneof![3 => Just(w(0)), 3 => Just(w(512 * PAGE)), 1 => crate::fuzz::addr()];
    let length = prop_oneof![3 => Just(Expr::num(512 * PAGE)), 1 => Just(Expr::num(1024 * PAGE)), 1 => len()];
    let offset = prop_oneof![3 => Just(0u64), 2 => Just(512 * PAGE), 1 => (0..DAX_PAGES).prop_map(|p| p * PAGE)];
    // shared|fixed, private|fixed, shared_validate|sync|fixed.
    let flags = prop_oneof![4 => Just(0x11u32), 1 => Just(0x12), 1 => Just(0x03 | 0x10 | 0x80000)];
    (at, length, prot(), flags, offset).prop_map(|(addr, len, prot, flags, offset)| Step {
        line: 0,
        bind: None,
        op: Op::Mmap { addr, len, prot, flags, file: Some(("y".into(), Expr::num(offset))) },
    })
}

/// A step with the `gup_test` file `g`: a one-shot command over a few
/// pages (a read or write reference or pin, sometimes FOLL_LONGTERM, in
/// one call or page by page), or the long-term pin it holds.
fn pin_step() -> impl Strategy<Value = Step> {
    let g = || "g".to_string();
    let cmd = proptest::sample::select(GupCmd::ALL.iter().map(|(c, _)| *c).collect::<Vec<_>>());
    // 0, FOLL_WRITE, FOLL_LONGTERM, both.
    let foll = prop_oneof![Just(0u32), Just(1), Just(1 << 8), Just(1 | 1 << 8)];
    let pages = || (1u64..9).prop_map(|n| Expr::num(n * PAGE));
    let op = prop_oneof![
        3 => (cmd, crate::fuzz::addr(), pages(), foll, proptest::option::of(1u32..3)).prop_map(
            move |(cmd, addr, len, foll, per_call)| PinOp::Run { file: g(), cmd, addr, len, foll, per_call }
        ),
        // Flags: write, fast (pin_user_pages_fast).
        2 => (crate::fuzz::addr(), pages(), 0u32..4).prop_map(move |(addr, len, flags)| PinOp::Start { file: g(), addr, len, flags }),
        1 => Just(PinOp::Stop { file: g() }),
        1 => (1u64..3).prop_map(move |npages| PinOp::Read { file: g(), npages }),
    ];
    op.prop_map(|op| Step { line: 0, bind: None, op: Op::Pin(op) })
}

/// Generated steps: `fuzz.rs`'s, about one in five a device command,
/// one in five a step on the fs-dax file, and a few mappings of the
/// device-DAX node and pins.
fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        15 => crate::fuzz::step(),
        5 => device_step(),
        5 => dax_step(),
        2 => devdax_step(),
        2 => pin_step(),
    ];
    proptest::collection::vec(step, 1..40)
}

/// The runnable scenario: `fuzz.rs`'s completion with `d = dmirror 0`
/// opened, the fs-dax file `x` made, the device-DAX node `y` and
/// `gup_test` (`g`) opened, right after the file prelude.
pub fn complete_with_device(steps: &[Step]) -> Scenario {
    let mut s = complete(steps);
    let step = |bind: Option<&str>, op| Step { line: 0, bind: bind.map(str::to_string), op };
    let prelude = [
        step(Some("d"), Op::Device(DeviceOp::Open { minor: 0 })),
        step(None, Op::Device(DeviceOp::DaxDir { path: "/mnt/dax".into() })),
        step(Some("x"), Op::Device(DeviceOp::DaxFile { name: "fuzz".into() })),
        step(None, Op::Ftruncate { file: "x".into(), size: Expr::num(DAX_PAGES * PAGE) }),
        step(Some("y"), Op::Device(DeviceOp::DevDax)),
        step(Some("g"), Op::Pin(PinOp::Open)),
    ];
    s.steps.splice(2..2, prelude);
    for (i, step) in s.steps.iter_mut().enumerate() {
        step.line = i + 1;
    }
    s
}

/// The kind of the first divergence of each scenario of a batch (`None`:
/// none, or the guest could not run it).
fn judge(batch: &VmBatch, scenarios: &[Scenario], report: &mut FuzzReport) -> Vec<Option<(String, String)>> {
    let version = batch.guest.version().unwrap_or((0, 0));
    let mut model = ModelExecutor { config: batch.guest.model_config() };
    scenarios
        .iter()
        .zip(&batch.traces)
        .map(|(scenario, guest)| {
            let guest = match guest {
                Ok(t) => t,
                Err(e) => {
                    report.host_errors.push(e.to_string());
                    return None;
                }
            };
            if let Some(why) = &guest.aborted {
                if crate::known_crashes::classify(scenario, why).is_some() {
                    report.kernel_defects.push(why.clone());
                    return None;
                }
                let kind = if why.starts_with(crate::exec::vm::KERNEL_CRASH) {
                    "guest-kernel-crash"
                } else {
                    "guest-runner-aborted"
                };
                return Some((kind.into(), why.clone()));
            }
            let model_trace = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.run(scenario))) {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    report.host_errors.push(format!("model: {e}"));
                    return None;
                }
                Err(_) => return Some(("model-panic".into(), "the model panicked".into())),
            };
            signature(scenario, &compare(scenario, &model_trace, guest, version))
        })
        .collect()
}

/// Candidates of one shrinking round: `steps` without a block of each size
/// from half its length down to one step.
fn candidates(steps: &[Step]) -> Vec<Vec<Step>> {
    let mut out = Vec::new();
    let mut size = steps.len() / 2;
    while size >= 1 {
        for start in (0..steps.len()).step_by(size) {
            let mut c = steps.to_vec();
            c.drain(start..(start + size).min(steps.len()));
            if !c.is_empty() {
                out.push(c);
            }
        }
        size /= 2;
    }
    out
}

/// Fuzzes for `duration` from `seed` in batches of `batch` scenarios.
pub fn fuzz_vm(
    vm: &mut VmExecutor,
    duration: Duration,
    seed: u64,
    batch: usize,
    mut on_found: impl FnMut(&Found),
) -> Result<FuzzReport, String> {
    // The runner's build is not fuzzing time.
    vm.runner().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut report = FuzzReport::default();
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config { failure_persistence: None, ..Config::default() },
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let strategy = steps();
    while start.elapsed() < duration {
        let generated: Vec<Vec<Step>> = (0..batch)
            .map(|_| strategy.new_tree(&mut runner).map(|t| t.current()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let scenarios: Vec<Scenario> = generated.iter().map(|s| complete_with_device(s)).collect();
        for s in &scenarios {
            for step in &s.steps {
                *report.op_mix.entry(step.op.keyword()).or_default() += 1;
            }
        }
        // A boot can fail for the host's sake (TCG starved of CPU); the
        // same batch gets a second boot, and a second failure ends the
        // session with what it found so far.
        let result = match vm.run_batch(&scenarios).or_else(|first| {
            report.host_errors.push(format!("the guest failed, retrying the batch once: {first}"));
            vm.run_batch(&scenarios)
        }) {
            Ok(r) => r,
            Err(e) => {
                report.aborted = Some(format!("the guest failed twice, fuzzing stopped: {e}"));
                break;
            }
        };
        report.scenarios += scenarios.len() as u64;
        let kinds = judge(&result, &scenarios, &mut report);
        // Read before any shrinking boot overwrites it.
        let console = std::fs::read_to_string(&vm.console).ok();
        for (index, (steps, kind)) in generated.iter().zip(kinds).enumerate() {
            let Some((sig, first)) = kind else { continue };
            if report.found.iter().any(|f| f.signature == sig) {
                continue;
            }
            let console = console
                .as_ref()
                .map(|c| format!("# the boot that found it; the scenario is s{index} (`=== reply {index}`)\n{c}"));
            // Said at once: a long session reports only at its end.
            eprintln!("hmm fuzz: divergence {sig} (scenario s{index} of the boot): {first}; shrinking");
            let (text, first) = shrink(vm, steps, &sig, first.clone(), &mut report).unwrap_or_else(|e| {
                (crate::lang::print(&complete_with_device(steps)), format!("{first} (not shrunk: {e})"))
            });
            eprintln!("hmm fuzz: {sig} shrunk to {} lines: {first}", text.lines().count());
            let found = Found { signature: sig, text, first, console };
            // Kept at once: a long session may be stopped before its end.
            on_found(&found);
            report.found.push(found);
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Shrinks `steps` while the divergence keeps its kind `sig`; the text and
/// first difference of the smallest case seen in the guest.
fn shrink(
    vm: &mut VmExecutor,
    steps: &[Step],
    sig: &str,
    first: String,
    report: &mut FuzzReport,
) -> Result<(String, String), String> {
    let mut best = (steps.to_vec(), first);
    for _ in 0..SHRINK_ROUNDS {
        let cands = candidates(&best.0);
        if cands.is_empty() {
            break;
        }
        let scenarios: Vec<Scenario> = cands.iter().map(|c| complete_with_device(c)).collect();
        let result = vm.run_batch(&scenarios).map_err(|e| e.to_string())?;
        report.scenarios += scenarios.len() as u64;
        let kinds = judge(&result, &scenarios, report);
        let smallest = cands
            .into_iter()
            .zip(kinds)
            .filter_map(|(c, k)| k.filter(|(s, _)| s == sig).map(|(_, first)| (c, first)))
            .min_by_key(|(c, _)| c.len());
        match smallest {
            Some(next) if next.0.len() < best.0.len() => best = next,
            _ => break,
        }
    }
    Ok((crate::lang::print(&complete_with_device(&best.0)), best.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_delete_blocks_down_to_single_steps() {
        let steps: Vec<Step> =
            (0..4).map(|i| Step { line: 0, bind: None, op: Op::Read { addr: Expr::num(i) } }).collect();
        let c = candidates(&steps);
        // Two halves, then four single steps.
        assert_eq!(c.len(), 6);
        assert!(c.iter().all(|c| c.len() == 2 || c.len() == 3));
    }

    proptest! {
        #![proptest_config(Config { cases: 16, failure_persistence: None, ..Config::default() })]
        /// Generated device scenarios run on the model and print to text
        /// that parses back to them.
        #[test]
        fn generated_device_scenarios_run_and_round_trip(steps in steps()) {
            let scenario = complete_with_device(&steps);
            let config = hmm_mm::KernelConfig { ram_bytes: 64 << 20, thp: hmm_mm::ThpMode::Never, ..Default::default() };
            let trace = ModelExecutor { config }.run(&scenario).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(trace.records.len(), scenario.steps.len());
            let text = crate::lang::print(&scenario);
            prop_assert_eq!(crate::lang::parse("gen", &text).unwrap(), scenario);
        }
    }
}
