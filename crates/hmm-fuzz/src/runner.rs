//! Running sequences: one sequence with every call under a watchdog and
//! the invariants checked after it ([`run_sequence`], [`replay`]), and the
//! time-bounded, seeded fuzzing loop on proptest's runner ([`fuzz`]).
//!
//! Replaying: every case is generated from the seed's random stream in
//! order, whether or not it runs, so `HMM_FUZZ_SEED=<seed>
//! HMM_FUZZ_CASE=<n>` runs exactly the case a report names (and shrinks it
//! again); the shrunk sequence is printed as Rust, ready for a regression
//! test that calls [`replay`].

use std::cell::RefCell;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use hmm_mm::testing::{Rng, Watchdog};

use crate::exec::{Outcome, World};
use crate::invariants;
use crate::ops::{to_rust, Op};
use crate::strategies::sequence;

/// How long one call may take before the run is declared hung.
pub const CALL_LIMIT: Duration = Duration::from_secs(60);
/// The seed every default run starts with.
pub const FIXED_SEED: u64 = 0x686d_6d5f_6675_7a7a;
/// Longest generated sequence.
pub const MAX_SEQUENCE: usize = 48;

/// What a run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Sequences run (shrinking runs included).
    pub sequences: u64,
    /// Calls made (skipped operations not counted).
    pub calls: u64,
    /// Operations skipped (no target).
    pub skipped: u64,
}

thread_local! {
    static STATS: RefCell<Stats> = RefCell::new(Stats::default());
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs a panic hook that records the message and place for the
/// failure report instead of printing it (shrinking panics hundreds of
/// times); returns the hook it replaced.
fn quiet_panics() -> Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        LAST_PANIC.with(|last| *last.borrow_mut() = Some(format!("{message}{place}")));
    }));
    previous
}

fn take_panic_message() -> String {
    LAST_PANIC.with(|last| last.borrow_mut().take()).unwrap_or_else(|| "a panic".into())
}

/// Runs `ops` in a fresh world: each call under a watchdog (a hang aborts
/// the process naming `label`, the call and the sequence), the invariants
/// after each call, the end-of-world accounting after teardown.
pub fn run_sequence(ops: &[Op], label: &str) -> Result<(), String> {
    let listing = to_rust(ops);
    let watch = |what: &str| Watchdog::new(&format!("{label}: {what} hung\nsequence: {listing}"), CALL_LIMIT);
    let mut world = {
        let _dog = watch("boot");
        World::new()
    };
    STATS.with(|s| s.borrow_mut().sequences += 1);
    // An abort (an impossible allocation) cannot be caught: with
    // HMM_FUZZ_TRACE set, each call is printed before it is made.
    let trace = std::env::var_os("HMM_FUZZ_TRACE").is_some();
    for (step, op) in ops.iter().enumerate() {
        if trace {
            eprintln!("{label} step {step}: {op:?}");
        }
        let checked = catch_unwind(AssertUnwindSafe(|| {
            let _dog = watch(&format!("step {step} ({op:?})"));
            let outcome = world.execute(op);
            STATS.with(|s| {
                let mut s = s.borrow_mut();
                if matches!(outcome, Outcome::Skipped(_)) {
                    s.skipped += 1;
                } else {
                    s.calls += 1;
                }
            });
            invariants::after_call(&world, op, &outcome)
        }));
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(violation)) => return Err(format!("step {step} ({op:?}): {violation}")),
            Err(_) => {
                // The world may be half-changed: leak it rather than run
                // its destructors into a second panic.
                std::mem::forget(world);
                return Err(format!("step {step} ({op:?}) panicked: {}", take_panic_message()));
            }
        }
    }
    let ended = catch_unwind(AssertUnwindSafe(|| {
        let _dog = watch("teardown");
        world.teardown();
        invariants::at_end(&world)
    }));
    match ended {
        Ok(result) => result.map_err(|violation| format!("at the end: {violation}")),
        Err(_) => {
            std::mem::forget(world);
            Err(format!("teardown panicked: {}", take_panic_message()))
        }
    }
}

/// Replays a sequence; panics with the violation.
/// Regression tests call this with a shrunk sequence.
pub fn replay(ops: &[Op]) {
    if let Err(failure) = run_sequence(ops, "replay") {
        panic!("{failure}");
    }
}

/// How a fuzzing run is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Wall-clock budget, split evenly between the seeds.
    pub budget: Duration,
    /// Seeds to run.
    pub seeds: Vec<u64>,
    /// Run only this case of each seed (replay).
    pub only_case: Option<u64>,
    /// Stop after this many findings.
    pub max_findings: usize,
}

fn parse_u64(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

impl Settings {
    /// From the environment: `HMM_FUZZ_SECONDS` (default `default_seconds`),
    /// `HMM_FUZZ_SEED` (a number; `random` for [`FIXED_SEED`] then a
    /// random seed, which is printed; default [`FIXED_SEED`] alone, so a
    /// plain `cargo test` is deterministic), `HMM_FUZZ_CASE`.
    pub fn from_env(default_seconds: f64) -> Self {
        let var = |name: &str| std::env::var(name).ok();
        let seconds = var("HMM_FUZZ_SECONDS").and_then(|s| s.trim().parse::<f64>().ok()).unwrap_or(default_seconds);
        let seeds = match var("HMM_FUZZ_SEED").as_deref().map(str::trim) {
            Some("random") => vec![FIXED_SEED, random_seed()],
            Some(text) => vec![parse_u64(text).unwrap_or(FIXED_SEED)],
            None => vec![FIXED_SEED],
        };
        Self {
            budget: Duration::from_secs_f64(seconds.max(0.0)),
            seeds,
            only_case: var("HMM_FUZZ_CASE").and_then(|s| parse_u64(&s)),
            max_findings: 8,
        }
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

/// proptest's generator for a seed: ChaCha keyed by the seed's splitmix
/// expansion.
fn rng_for(seed: u64) -> TestRng {
    let mut expand = Rng::new(seed);
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&expand.next_u64().to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &key)
}

/// One failure found, shrunk.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The seed.
    pub seed: u64,
    /// The case number within the seed.
    pub case: u64,
    /// Why the shrunk sequence fails.
    pub reason: String,
    /// The shrunk sequence.
    pub ops: Vec<Op>,
}

impl Finding {
    /// The report: how to replay, why, and the sequence as Rust.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "finding: HMM_FUZZ_SEED={:#x} HMM_FUZZ_CASE={}", self.seed, self.case);
        let _ = writeln!(text, "  reason: {}", self.reason);
        let _ = writeln!(text, "  shrunk to {} calls: replay(&{});", self.ops.len(), to_rust(&self.ops));
        text
    }
}

/// What a fuzzing run found and did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Shrunk failures.
    pub findings: Vec<Finding>,
    /// Counts.
    pub stats: Stats,
    /// Wall-clock time.
    pub elapsed: Duration,
}

/// Fuzzes for the budget; prints each seed as it starts and each finding.
pub fn fuzz(settings: &Settings) -> Report {
    let started = Instant::now();
    STATS.with(|s| *s.borrow_mut() = Stats::default());
    let previous_hook = quiet_panics();
    let mut findings: Vec<Finding> = Vec::new();
    let share = settings.budget / settings.seeds.len().max(1) as u32;
    let strategy = sequence(MAX_SEQUENCE);
    for &seed in &settings.seeds {
        println!("api_fuzz: seed {seed:#x} (replay with HMM_FUZZ_SEED={seed:#x})");
        let deadline = Instant::now() + share;
        let config = Config { failure_persistence: None, max_shrink_time: 120_000, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, rng_for(seed));
        let mut case = 0u64;
        while findings.len() < settings.max_findings {
            let over = match settings.only_case {
                Some(only) => case > only,
                None => Instant::now() >= deadline,
            };
            if over {
                break;
            }
            let wanted = settings.only_case.is_none_or(|only| only == case);
            let tree = match strategy.new_tree(&mut runner) {
                Ok(tree) => tree,
                Err(reason) => panic!("the strategy cannot generate: {reason}"),
            };
            if wanted {
                let label = format!("api_fuzz seed {seed:#x} case {case}");
                let result = runner.run_one(tree, |ops| run_sequence(&ops, &label).map_err(TestCaseError::fail));
                if let Err(TestError::Fail(reason, ops)) = result {
                    if findings.iter().any(|known| known.ops == ops) {
                        case += 1;
                        continue;
                    }
                    let finding = Finding { seed, case, reason: reason.to_string(), ops };
                    println!("{}", finding.render());
                    findings.push(finding);
                }
            }
            case += 1;
        }
    }
    std::panic::set_hook(previous_hook);
    Report { findings, stats: STATS.with(|s| *s.borrow()), elapsed: started.elapsed() }
}

impl Report {
    /// The closing lines: sequences, calls, calls per second.
    pub fn summary(&self) -> String {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "api_fuzz: {} sequences, {} calls ({} skipped) in {:.1} s: {:.0} calls/s; {} findings",
            self.stats.sequences,
            self.stats.calls,
            self.stats.skipped,
            seconds,
            self.stats.calls as f64 / seconds,
            self.findings.len()
        )
    }
}
