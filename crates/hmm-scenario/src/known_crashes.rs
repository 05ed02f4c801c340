//! Kernel crashes the reference kernel is known to have on a scenario's
//! step: a defect of the kernel (or its test module), shown by the oops
//! on the guest's console, that the model does not copy. The comparison
//! reports such a crash as a known kernel defect instead of a runner that
//! did not finish; the model keeps the correct behaviour.
//!
//! The table is `kernel-lab/known-crashes.json` (built in). Each entry
//! names the operations (keywords) whose step crashed, the functions the
//! oops may name (`RIP: 0010:FUNCTION`), the kernel version the evidence
//! comes from, the evidence, and the fix if one is known. The selftest
//! verdicts have their own table (`known-defects.json`).

use std::sync::OnceLock;

use serde::Deserialize;

use crate::exec::vm::KernelCrash;
use crate::lang::ast::Scenario;

const BUILTIN: &str = include_str!("../../../kernel-lab/known-crashes.json");

/// One known crash.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownCrash {
    /// A short name.
    pub id: String,
    /// The keywords of the steps that crash (`dm_read`).
    pub ops: Vec<String>,
    /// The functions the oops names.
    pub functions: Vec<String>,
    /// The kernel version the evidence comes from.
    pub kernel: String,
    /// What shows it is the kernel's defect.
    pub evidence: String,
    /// The kernel fix, if one is known.
    #[serde(default)]
    pub fix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    crashes: Vec<KnownCrash>,
}

/// The built-in table (empty if it does not parse; a test keeps it valid).
pub fn builtin() -> &'static [KnownCrash] {
    static TABLE: OnceLock<Vec<KnownCrash>> = OnceLock::new();
    TABLE.get_or_init(|| serde_json::from_str::<Table>(BUILTIN).map(|t| t.crashes).unwrap_or_default())
}

/// The known crash an aborted trace's reason shows, if any: a crash at a
/// step of one of its operations, in one of its functions.
pub fn classify(scenario: &Scenario, reason: &str) -> Option<&'static KnownCrash> {
    let (line, function) = KernelCrash::parse_summary(reason)?;
    let (line, function) = (line?, function?);
    let step = scenario.steps.iter().find(|s| s.line == line)?;
    let keyword = step.op.keyword();
    builtin().iter().find(|c| c.ops.iter().any(|o| o == keyword) && c.functions.contains(&function))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_table_parses_and_every_entry_has_evidence() {
        let table: Table = serde_json::from_str(BUILTIN).expect("kernel-lab/known-crashes.json parses");
        assert_eq!(builtin().len(), table.crashes.len());
        for c in builtin() {
            assert!(!c.ops.is_empty() && !c.functions.is_empty() && c.evidence.len() > 40, "{}", c.id);
        }
    }

    #[test]
    fn a_crash_is_known_only_at_a_step_and_function_of_an_entry() {
        let s =
            crate::lang::parse("t", "d = dmirror 0\na = mmap w 2p rw- private|anon|fixed\ndm_read d a 2\n").unwrap();
        let crash = |line, function: &str| {
            KernelCrash {
                line: Some(line),
                what: "BUG: unable to handle page fault".into(),
                function: Some(function.into()),
            }
            .summary()
        };
        assert_eq!(
            classify(&s, &crash(3, "dmirror_do_read")).map(|c| c.id.as_str()),
            Some("test_hmm-kmap-device-private")
        );
        assert_eq!(classify(&s, &crash(2, "dmirror_do_read")), None, "a crash in mmap is not that one");
        assert_eq!(classify(&s, &crash(3, "handle_mm_fault")), None, "nor one elsewhere in the kernel");
        assert_eq!(classify(&s, "the guest printed no reply"), None);
    }
}
