//! The device and DAX corpus (`scenarios/device/*.hmm`). Every `expect`
//! line states what the reference kernel (Linux 7.3 with test_hmm and an
//! fs-dax mount, `hmm diff --kernel vm`) does:
//! - on the model they must all hold, unless the file starts with
//!   `# known-divergence: WHERE: WHAT` (then each failure is printed as a
//!   known divergence pending a fix, never counted as a pass);
//! - on this machine's kernel (no test device, no fs-dax mount here, and
//!   before 7.3 no userfaultfd RWP mode) the device, DAX and RWP steps are
//!   refused, so nothing after them may count as a match or a divergence:
//!   every such step must be inconclusive.

mod common;

use common::{failed_expectations, judge, load, scenario_files};
use hmm_scenario::compare::{compare, Verdict};
use hmm_scenario::exec::host::HostExecutor;
use hmm_scenario::exec::model::ModelExecutor;
use hmm_scenario::exec::Executor;
use hmm_scenario::lang::{self, ast::Op};
use hmm_scenario::observe::Outcome;
use hmm_scenario::versions;

fn corpus() -> Vec<std::path::PathBuf> {
    scenario_files("device")
}

/// The reference guest's configuration (THP `madvise`, 64 huge pages, as `lab boot`
/// sets it up) is what the expectations were written against.
fn guest_like_model() -> ModelExecutor {
    let guest = hmm_scenario::exec::vm::GuestInfo {
        release: "7.3".into(),
        thp: "always [madvise] never".into(),
        use_zero_page: "1".into(),
        nr_hugepages: "64".into(),
        mmap_min_addr: "4096".into(),
    };
    ModelExecutor { config: guest.model_config() }
}

#[test]
fn the_device_corpus_holds_on_the_model() {
    let mut failures = Vec::new();
    let files = corpus();
    assert!(files.len() >= 8, "the device corpus is missing files");
    for path in files {
        let file = load(&path);
        let name = &file.name;
        let trace = guest_like_model().run(&file.scenario).unwrap_or_else(|e| panic!("{name}: {e}"));
        judge(&file, failed_expectations(&trace), &mut failures);
    }
    assert!(failures.is_empty(), "the model diverges from Linux 7.3:\n{}", failures.join("\n"));
}

#[test]
fn without_the_device_the_host_never_counts_a_device_step() {
    if let Some(why) = HostExecutor::unavailable() {
        println!("skipped: {why}");
        return;
    }
    if std::path::Path::new("/dev/hmm_dmirror0").exists() {
        println!("skipped: this kernel has the test device");
        return;
    }
    let mut host = HostExecutor { program: env!("CARGO_BIN_EXE_hmm-host-runner").into(), args: vec![] };
    let version = versions::host_version().unwrap_or((0, 0));
    for path in corpus() {
        let file = load(&path);
        let (name, scenario) = (&file.name, &file.scenario);
        let model = guest_like_model().run(scenario).unwrap();
        let trace = host.run(scenario).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The first step this kernel cannot run: a device, DAX or gup_test
        // one, or one of userfaultfd's RWP mode where the kernel lacks it (7.3).
        let Some(first_device) = scenario.steps.iter().position(|s| {
            matches!(s.op, Op::Device(_) | Op::Pin(_))
                || (lang::uffd::needs_rwp(&s.op) && !HostExecutor::offers_uffd_rwp())
        }) else {
            // It needs what else the guest has (its hugetlb pool): only the
            // guest can judge it, and nothing here is refused.
            println!("{name}: no device, DAX, gup_test or RWP step");
            continue;
        };
        let refused = &trace.records[first_device].outcome;
        let is_setting = matches!(&scenario.steps[first_device].op, Op::Device(d) if d.keyword() == "daxdir");
        assert!(is_setting || matches!(refused, Outcome::Refused(_)), "{name}: {refused:?}");
        for s in compare(scenario, &model, &trace, version).steps {
            if s.step > first_device
                && !matches!(scenario.steps[s.step].op, Op::Device(ref d) if d.keyword() == "daxdir")
            {
                assert!(matches!(s.verdict, Verdict::Inconclusive(_)), "{name}: step {}: {:?}", s.step, s.verdict);
            }
        }
    }
}
