//! `hmm fuzz`: random scenarios from proptest strategies, weighted toward
//! the edges (holes, unaligned and overflowing arguments, the 2 MiB
//! boundary, fork and copy-on-write, VMA splits and merges), run on both
//! executors; every divergence is shrunk by proptest to a minimal scenario.
//!
//! A generated scenario works in the first 4 MiB of the default window
//! (pages 0–63 and the 16 pages around the 2 MiB boundary), with one memfd
//! of 64 pages, processes `main`, `c1`, `c2`, and ends by observing the
//! whole area (`maps` and `pagemap`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use crate::compare::{diff_scenario, Comparison};
use crate::exec::Executor;
use crate::lang::ast::{Expr, FallocMode, Op, Scenario, Step, ADVICE};

const PAGE: u64 = 4096;
/// Processes a scenario may name.
const PROCS: [&str; 3] = ["main", "c1", "c2"];

pub(crate) fn w(offset: u64) -> Expr {
    Expr::at("w", offset as i128)
}

/// An address: a page of the work area, sometimes unaligned.
pub(crate) fn addr() -> impl Strategy<Value = Expr> {
    let page = prop_oneof![6 => 0u64..64, 3 => 504u64..520, 1 => 0u64..1024];
    (page, prop_oneof![9 => Just(0u64), 1 => 1u64..PAGE]).prop_map(|(p, off)| w(p * PAGE + off))
}

/// An 8-byte aligned address for atomics (a CPU's locked access may not
/// split across cache lines or pages).
fn aligned() -> impl Strategy<Value = Expr> {
    (0u64..64, 0u64..512).prop_map(|(p, word)| w(p * PAGE + word * 8))
}

/// A length: mostly a few pages; sometimes zero, unaligned, 2 MiB, or
/// near 2^64 (overflowing).
pub(crate) fn len() -> impl Strategy<Value = Expr> {
    prop_oneof![
        12 => (1u64..17).prop_map(|n| Expr::num(n * PAGE)),
        1 => Just(Expr::num(0)),
        2 => (1u64..3 * PAGE).prop_map(Expr::num),
        1 => Just(Expr::num(512 * PAGE)),
        1 => (0u64..2 * PAGE).prop_map(|d| Expr::num(u64::MAX - d)),
    ]
}

pub(crate) fn prot() -> impl Strategy<Value = u32> {
    prop_oneof![4 => Just(3u32), 2 => Just(1), 2 => Just(0), 1 => Just(7), 1 => Just(8)]
}

fn map_flags() -> impl Strategy<Value = u32> {
    let kind = prop_oneof![6 => Just(0x22u32), 2 => Just(0x21), 1 => Just(0x02), 1 => Just(0x03 | 0x20)];
    let place = prop_oneof![6 => Just(0x10u32), 2 => Just(0x100000), 1 => Just(0)];
    let extra =
        prop_oneof![8 => Just(0u32), 1 => Just(0x8000), 1 => Just(0x4000), 1 => Just(0x40000), 1 => Just(0x80000)];
    (kind, place, extra).prop_map(|(k, p, e)| k | p | e)
}

fn advice() -> impl Strategy<Value = u32> {
    let known: Vec<u32> = ADVICE.iter().map(|(n, _)| *n).collect();
    prop_oneof![9 => proptest::sample::select(known), 1 => Just(99u32)]
}

pub(crate) fn value() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..256, any::<u64>()]
}

fn file_op() -> impl Strategy<Value = Op> {
    let f = || "f".to_string();
    prop_oneof![
        ((0u64..80).prop_map(|p| Expr::num(p * PAGE)), value()).prop_map(move |(offset, value)| Op::Fwrite {
            file: f(),
            offset,
            value
        }),
        (0u64..80).prop_map(move |p| Op::Pread { file: f(), offset: Expr::num(p * PAGE) }),
        (0u64..80).prop_map(move |p| Op::Ftruncate { file: f(), size: Expr::num(p * PAGE) }),
        ((0u64..64), len(), prop_oneof![Just(FallocMode::PunchHole), Just(FallocMode::KeepSize)])
            .prop_map(move |(p, len, mode)| Op::Fallocate { file: f(), offset: Expr::num(p * PAGE), len, mode }),
    ]
}

/// One step of a generated scenario (with `bind` for fork).
pub(crate) fn step() -> impl Strategy<Value = Step> {
    let op = prop_oneof![
        5 => (addr(), len(), prot(), map_flags()).prop_map(|(addr, len, prot, flags)| Op::Mmap { addr, len, prot, flags, file: None }),
        2 => (addr(), len(), prot(), prop_oneof![Just(0x11u32), Just(0x12)], 0u64..64).prop_map(|(addr, len, prot, flags, p)| {
            Op::Mmap { addr, len, prot, flags, file: Some(("f".into(), Expr::num(p * PAGE))) }
        }),
        3 => (addr(), len()).prop_map(|(addr, len)| Op::Munmap { addr, len }),
        3 => (addr(), len(), prot()).prop_map(|(addr, len, prot)| Op::Mprotect { addr, len, prot }),
        3 => (addr(), len(), advice()).prop_map(|(addr, len, advice)| Op::Madvise { addr, len, advice }),
        1 => (addr(), len()).prop_map(|(addr, len)| Op::Mseal { addr, len }),
        2 => (addr(), len(), len(), prop_oneof![Just(0u32), Just(1), Just(3), Just(5), Just(7), Just(2)], proptest::option::of(addr()))
            .prop_map(|(old, old_len, new_len, flags, new_addr)| Op::Mremap { old, old_len, new_len, flags, new_addr }),
        3 => addr().prop_map(|addr| Op::Read { addr }),
        4 => (addr(), value()).prop_map(|(addr, value)| Op::Write { addr, value }),
        1 => (aligned(), value()).prop_map(|(addr, value)| Op::AtomicAdd { addr, value }),
        1 => (aligned(), value(), value()).prop_map(|(addr, old, new)| Op::Cmpxchg { addr, old, new }),
        2 => Just(Op::Fork),
        2 => proptest::sample::select(PROCS.to_vec()).prop_map(|p| Op::Proc { name: p.into() }),
        1 => Just(Op::Exit),
        2 => file_op(),
        2 => (addr(), len()).prop_map(|(addr, len)| Op::Maps { addr, len }),
        2 => (addr(), (1u64..17).prop_map(|n| Expr::num(n * PAGE))).prop_map(|(addr, len)| Op::Pagemap { addr, len }),
        1 => (addr(), proptest::sample::select(PROCS.to_vec())).prop_map(|(a, p)| Op::Same { addr: a.clone(), other: p.into(), other_addr: a }),
        1 => addr().prop_map(|addr| Op::Smaps { addr }),
    ];
    (op, proptest::sample::select(vec!["c1", "c2"])).prop_map(|(op, child)| Step {
        line: 0,
        bind: matches!(op, Op::Fork).then(|| child.to_string()),
        op,
    })
}

/// A generated scenario: 1–40 steps.
pub fn scenario() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 1..40)
}

/// The runnable scenario for generated steps: the memfd prelude, the
/// steps without switches to processes not forked yet (or `same` with
/// them), and the final observations.
pub fn complete(steps: &[Step]) -> Scenario {
    let mut out = vec![
        Step { line: 0, bind: Some("f".into()), op: Op::Memfd { name: "data".into() } },
        Step { line: 0, bind: None, op: Op::Ftruncate { file: "f".into(), size: Expr::num(64 * PAGE) } },
    ];
    let mut forked = vec!["main".to_string()];
    let mut exited: Vec<String> = Vec::new();
    let mut acting = "main".to_string();
    for step in steps {
        let known = |p: &String| forked.contains(p);
        match &step.op {
            Op::Proc { name } | Op::Same { other: name, .. } if !known(name) => continue,
            // A fork in an exited process fails, and binds nothing.
            Op::Fork if exited.contains(&acting) => continue,
            Op::Fork => forked.push(step.bind.clone().unwrap_or_default()),
            Op::Proc { name } => acting = name.clone(),
            Op::Exit => exited.push(acting.clone()),
            _ => {}
        }
        out.push(step.clone());
    }
    out.push(Step { line: 0, bind: None, op: Op::Proc { name: "main".into() } });
    out.push(Step { line: 0, bind: None, op: Op::Maps { addr: w(0), len: Expr::num(1024 * PAGE) } });
    out.push(Step { line: 0, bind: None, op: Op::Pagemap { addr: w(0), len: Expr::num(64 * PAGE) } });
    out.push(Step { line: 0, bind: None, op: Op::Pagemap { addr: w(504 * PAGE), len: Expr::num(16 * PAGE) } });
    for (i, s) in out.iter_mut().enumerate() {
        s.line = i + 1;
    }
    Scenario { steps: out }
}

/// A divergence found and shrunk.
#[derive(Debug, Clone)]
pub struct Found {
    /// What kind of difference: the operation and both outcomes' kinds.
    pub signature: String,
    /// The minimal scenario's text.
    pub text: String,
    /// The first difference, described.
    pub first: String,
    /// The guest's console of the boot that first showed it (`hmm fuzz
    /// --kernel vm`), kept because a shrinking boot overwrites it: the
    /// evidence when the case does not come back.
    pub console: Option<String>,
}

/// What a fuzzing session did.
#[derive(Debug, Default)]
pub struct FuzzReport {
    /// Scenarios run on both executors (shrinking included).
    pub scenarios: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Operations run, by keyword.
    pub op_mix: BTreeMap<&'static str, u64>,
    /// Distinct divergences, each shrunk.
    pub found: Vec<Found>,
    /// Scenarios the host could not run (crashes), by message.
    pub host_errors: Vec<String>,
    /// Scenarios that hit a known crash of the kernel (`known_crashes.rs`),
    /// not compared.
    pub kernel_defects: Vec<String>,
    /// Why the search ended before its time was up (the guest would not
    /// boot twice in a row): the run did not search as long as asked.
    pub aborted: Option<String>,
}

fn kind(o: &crate::observe::Outcome) -> String {
    use crate::observe::Outcome::*;
    match o {
        Errno(e) => crate::observe::errno_name(*e),
        Addr(_) => "addr".into(),
        Value(_) => "value".into(),
        Maps(_) => "maps".into(),
        Pages(_) => "pages".into(),
        other => format!("{other:?}").split('(').next().unwrap_or("").to_lowercase(),
    }
}

pub(crate) fn signature(s: &Scenario, c: &Comparison) -> Option<(String, String)> {
    let d = c.first_divergence()?;
    let step = &s.steps[d.step];
    let mut op_text = crate::lang::print_step(step);
    if let Op::Madvise { advice, .. } = step.op {
        op_text = crate::lang::print::named(advice, &ADVICE);
    }
    let keyword = op_text.split_whitespace().next().unwrap_or("").to_string();
    let keyword = if matches!(step.op, Op::Madvise { .. }) { format!("madvise-{keyword}") } else { keyword };
    let keyword = if step.bind.is_some() { step.op.keyword().to_string() } else { keyword };
    let sig = format!("{keyword}-{}-vs-{}", kind(&d.model), kind(&d.host));
    let show = |o| crate::observe::Shown { outcome: o, window: crate::lang::ast::DEFAULT_WINDOW.0 }.to_string();
    let first = format!(
        "line {}: `{}`: model {}, host {}",
        step.line,
        crate::lang::print_step(step),
        show(&d.model),
        show(&d.host)
    );
    Some((sig, first))
}

/// Fuzzes for `duration` from `seed`. Each distinct kind of divergence
/// (its [`Found::signature`]) is shrunk once per session; later cases of a
/// known kind pass, so the search goes on to new kinds.
pub fn fuzz(
    duration: Duration,
    seed: u64,
    model: &mut dyn Executor,
    host: &mut dyn Executor,
    host_version: (u32, u32),
) -> FuzzReport {
    let start = Instant::now();
    let deadline = start + duration;
    // Panics are caught and reported as findings; keep the default hook's
    // backtraces out of the report meanwhile.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let report = RefCell::new(FuzzReport::default());
    let executors = RefCell::new((model, host));
    let mut batch = 0u64;
    while Instant::now() < deadline {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..16].copy_from_slice(&batch.to_le_bytes());
        batch += 1;
        let config = Config { cases: 32, failure_persistence: None, max_shrink_iters: 400, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
        let known: Vec<String> = report.borrow().found.iter().map(|f| f.signature.clone()).collect();
        // A panic in the model is a finding like any divergence: caught,
        // shrunk and written out (and the session goes on).
        let run_one = |scenario: &Scenario| -> Result<Outcome3, String> {
            let mut ex = executors.borrow_mut();
            let (model, host) = &mut *ex;
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                diff_scenario(scenario, &mut **model, &mut **host, host_version)
            }));
            match result {
                Ok(Ok(x)) => Ok(Ok(x)),
                Ok(Err(e)) => Ok(Err(e.to_string())),
                Err(payload) => Err(panic_message(payload.as_ref())),
            }
        };
        let result = runner.run(&scenario(), |steps| {
            // Past the deadline cases pass untried, so the session ends.
            if Instant::now() > deadline + Duration::from_secs(30) {
                return Ok(());
            }
            let scenario = complete(&steps);
            {
                let mut r = report.borrow_mut();
                r.scenarios += 1;
                for s in &scenario.steps {
                    *r.op_mix.entry(s.op.keyword()).or_default() += 1;
                }
            }
            let (_, host_trace, cmp) = match run_one(&scenario) {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    report.borrow_mut().host_errors.push(e);
                    return Ok(());
                }
                Err(_) if known.iter().any(|k| k == MODEL_PANIC) => return Ok(()),
                Err(message) => return Err(TestCaseError::fail(format!("{MODEL_PANIC}: {message}"))),
            };
            if let Some(why) = host_trace.aborted {
                return Err(TestCaseError::fail(format!("host runner aborted: {why}")));
            }
            match signature(&scenario, &cmp) {
                Some((sig, _)) if !known.contains(&sig) => Err(TestCaseError::fail(sig)),
                _ => Ok(()),
            }
        });
        if let Err(TestError::Fail(reason, steps)) = result {
            let scenario = complete(&steps);
            let text = crate::lang::print(&scenario);
            let found = match run_one(&scenario) {
                Ok(Ok((_, host_trace, cmp))) => match (host_trace.aborted, signature(&scenario, &cmp)) {
                    (Some(why), _) => Some(Found { signature: "host-crash".into(), text, first: why, console: None }),
                    (None, Some((signature, first))) => Some(Found { signature, text, first, console: None }),
                    (None, None) => None,
                },
                Ok(Err(e)) => {
                    Some(Found { signature: "host-error".into(), text, first: format!("{reason}: {e}"), console: None })
                }
                Err(message) => Some(Found { signature: MODEL_PANIC.into(), text, first: message, console: None }),
            };
            let mut r = report.borrow_mut();
            if let Some(found) = found.filter(|f| !r.found.iter().any(|g| g.signature == f.signature)) {
                r.found.push(found);
            }
        }
    }
    std::panic::set_hook(hook);
    let mut report = report.into_inner();
    report.elapsed = start.elapsed();
    report
}

/// The signature of a panic in the model.
const MODEL_PANIC: &str = "model-panic";

/// One comparison, or why the host could not run it.
type Outcome3 = Result<(crate::observe::Trace, crate::observe::Trace, Comparison), String>;

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::model::ModelExecutor;
    use hmm_mm::{KernelConfig, ThpMode};

    proptest! {
        #![proptest_config(Config { cases: 24, failure_persistence: None, ..Config::default() })]
        /// Generated scenarios always run (every name they use is bound) and
        /// print to text that parses back to them.
        #[test]
        fn generated_scenarios_run_and_round_trip(steps in scenario()) {
            let s = complete(&steps);
            let text = crate::lang::print(&s);
            prop_assert_eq!(&crate::lang::parse("gen", &text).unwrap(), &s);
            let config = KernelConfig { ram_bytes: 64 << 20, thp: ThpMode::Madvise, ..KernelConfig::default() };
            let trace = ModelExecutor { config }.run(&s).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(trace.records.len(), s.steps.len());
        }
    }
}
