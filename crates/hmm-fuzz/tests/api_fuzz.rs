//! The API fuzzer, bounded in time: `HMM_FUZZ_SECONDS` (default 4 under a
//! plain `cargo test`), `HMM_FUZZ_SEED` (default: a fixed seed; `random`:
//! the fixed seed, then a random one, both printed), `HMM_FUZZ_CASE` to replay one case.
//! Fails with every shrunk finding printed as a `replay(&[...])` call.

use hmm_fuzz::{fuzz, Settings};

#[test]
fn api_fuzz() {
    let settings = Settings::from_env(4.0);
    println!("api_fuzz: {:.0} s", settings.budget.as_secs_f64());
    let report = fuzz(&settings);
    println!("{}", report.summary());
    let findings: Vec<String> = report.findings.iter().map(|f| f.render()).collect();
    assert!(findings.is_empty(), "the fuzzer found {} failures:\n{}", findings.len(), findings.join("\n"));
}
