//! The known kernel defects: tests on which the reference kernel's verdict
//! differs from the model's because the kernel is wrong, each shown by
//! evidence from the guest's log (an oops, a WARN, a leak, a later test
//! broken by an earlier one), with the kernel fix if one is known. The
//! comparison reports such a difference as a known kernel defect instead
//! of a mismatch; the model keeps Linux's correct behaviour.
//!
//! The table is `kernel-lab/known-defects.json` (built in; another file can
//! be given). Each entry:
//!
//! ```json
//! { "test": "migrate", "variant": "hmm_device_coherent",
//!   "thp": ["always", "never"], "fs": ["tmpfs", "dax"],
//!   "kernel": "7.3.4", "kernel_verdict": "fail",
//!   "evidence": "WARNING at mm/memremap.c:... in the guest log of ...",
//!   "fix": "commit ... (or null when none is known)" }
//! ```
//!
//! `thp` and `fs` limit the entry to those configurations (absent: all);
//! `kernel_verdict` is what the defective kernel reports (`pass`, `fail`,
//! `skip`, or `missing` when the test never reported).

use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

use super::Verdict;
use crate::{cases, Fixture, Variant};

/// The table in the repository, built in.
const BUILTIN: &str = include_str!("../../../../kernel-lab/known-defects.json");

/// One known defect.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownDefect {
    /// The test's own name (`migrate`).
    pub test: String,
    /// The fixture variant (`hmm_device_coherent`, `hmm2_device_private`).
    pub variant: String,
    /// THP modes it shows under (`always`, `madvise`, `never`); absent: all.
    #[serde(default)]
    pub thp: Option<Vec<String>>,
    /// What `/tmp` was when it showed (`tmpfs`, `dax`); absent: both.
    #[serde(default)]
    pub fs: Option<Vec<String>>,
    /// The kernel version the evidence comes from.
    pub kernel: String,
    /// What the defective kernel reports: `pass`, `fail`, `skip` or
    /// `missing`.
    pub kernel_verdict: String,
    /// What shows it is the kernel's defect.
    pub evidence: String,
    /// The kernel fix, if one is known.
    #[serde(default)]
    pub fix: Option<String>,
}

impl KnownDefect {
    /// The test's full name, `fixture.variant.test`.
    pub fn full_name(&self) -> String {
        let fixture = self.variant.split('_').next().unwrap_or_default();
        format!("{fixture}.{}.{}", self.variant, self.test)
    }

    /// True if it covers a run with THP mode `thp` and `/tmp` on `fs`.
    pub fn applies_to(&self, thp: &str, fs: &str) -> bool {
        let within =
            |scope: &Option<Vec<String>>, value: &str| scope.as_ref().is_none_or(|s| s.iter().any(|v| v == value));
        within(&self.thp, thp) && within(&self.fs, fs)
    }

    /// True if the kernel's verdict (none: never reported) is the recorded
    /// one.
    pub fn matches_kernel(&self, verdict: Option<Verdict>) -> bool {
        let word = verdict.map_or("missing", |v| v.class().word());
        self.kernel_verdict == word
    }
}

/// The table.
#[derive(Clone, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownDefects {
    /// The entries.
    pub defects: Vec<KnownDefect>,
}

/// Why a defects table is refused.
#[derive(Debug, Error)]
pub enum DefectError {
    /// The file cannot be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// Not the table's JSON.
    #[error("the known-defects table is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// An entry names no test of the kernel's suite.
    #[error("entry {index}: no kernel test {test:?} on variant {variant:?}")]
    UnknownTest {
        /// The entry (0-based).
        index: usize,
        /// Its test.
        test: String,
        /// Its variant.
        variant: String,
    },
    /// A field has a value outside its set.
    #[error("entry {index}: {field} {value:?} is not one of {allowed}")]
    BadValue {
        /// The entry (0-based).
        index: usize,
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
        /// The values allowed.
        allowed: &'static str,
    },
    /// An entry without evidence.
    #[error("entry {0}: a known defect needs its evidence")]
    NoEvidence(usize),
    /// Two entries for the same test and configuration.
    #[error("entries {0} and {1} cover the same test in the same configuration")]
    Overlap(usize, usize),
}

impl KnownDefects {
    /// The table in the repository (`kernel-lab/known-defects.json`).
    pub fn builtin() -> Result<Self, DefectError> {
        Self::from_json(BUILTIN)
    }

    /// Reads and checks a table file.
    pub fn load(path: &Path) -> Result<Self, DefectError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| DefectError::Io { path: path.display().to_string(), error })?;
        Self::from_json(&text)
    }

    /// Parses and checks a table.
    pub fn from_json(text: &str) -> Result<Self, DefectError> {
        let table: Self = serde_json::from_str(text)?;
        table.check()?;
        Ok(table)
    }

    /// The entry covering test `name` in a run with THP `thp` and `/tmp` on
    /// `fs`, with its index.
    pub fn find(&self, name: &str, thp: &str, fs: &str) -> Option<(usize, &KnownDefect)> {
        self.defects.iter().enumerate().find(|(_, d)| d.full_name() == name && d.applies_to(thp, fs))
    }

    fn check(&self) -> Result<(), DefectError> {
        let kernel_tests: Vec<String> = cases()
            .into_iter()
            .filter(|c| c.fixture != Fixture::Dax)
            .flat_map(|c| Variant::ALL.map(|v| format!("{0}.{0}_{1}.{2}", c.fixture.name(), v.name(), c.name)))
            .collect();
        for (index, defect) in self.defects.iter().enumerate() {
            if !kernel_tests.contains(&defect.full_name()) {
                let (test, variant) = (defect.test.clone(), defect.variant.clone());
                return Err(DefectError::UnknownTest { index, test, variant });
            }
            let bad =
                |field, value: &str, allowed| DefectError::BadValue { index, field, value: value.into(), allowed };
            for thp in defect.thp.iter().flatten() {
                if !["always", "madvise", "never"].contains(&thp.as_str()) {
                    return Err(bad("thp", thp, "always, madvise, never"));
                }
            }
            for fs in defect.fs.iter().flatten() {
                if !["tmpfs", "dax"].contains(&fs.as_str()) {
                    return Err(bad("fs", fs, "tmpfs, dax"));
                }
            }
            if !["pass", "fail", "skip", "missing"].contains(&defect.kernel_verdict.as_str()) {
                return Err(bad("kernel_verdict", &defect.kernel_verdict, "pass, fail, skip, missing"));
            }
            if defect.evidence.trim().is_empty() {
                return Err(DefectError::NoEvidence(index));
            }
            for (earlier, other) in self.defects[..index].iter().enumerate() {
                let overlaps = |a: &Option<Vec<String>>, b: &Option<Vec<String>>| match (a, b) {
                    (Some(a), Some(b)) => a.iter().any(|v| b.contains(v)),
                    _ => true,
                };
                if other.full_name() == defect.full_name()
                    && overlaps(&other.thp, &defect.thp)
                    && overlaps(&other.fs, &defect.fs)
                {
                    return Err(DefectError::Overlap(earlier, index));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"{ "defects": [ {
        "test": "migrate", "variant": "hmm_device_coherent", "thp": ["never"],
        "kernel": "7.3.4", "kernel_verdict": "fail",
        "evidence": "WARNING: CPU: 0 PID: 1 at mm/memremap.c in the guest log", "fix": null } ] }"#;

    #[test]
    fn the_repository_table_is_valid() {
        KnownDefects::builtin().unwrap();
    }

    #[test]
    fn an_entry_covers_its_test_in_its_configurations_only() {
        let table = KnownDefects::from_json(ONE).unwrap();
        let (index, defect) = table.find("hmm.hmm_device_coherent.migrate", "never", "dax").unwrap();
        assert_eq!(index, 0);
        assert!(defect.matches_kernel(Some(Verdict::Fail)));
        assert!(!defect.matches_kernel(None));
        assert!(table.find("hmm.hmm_device_coherent.migrate", "always", "dax").is_none());
        assert!(table.find("hmm.hmm_device_private.migrate", "never", "dax").is_none());
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        let unknown = ONE.replace("\"migrate\"", "\"migrat\"");
        assert!(matches!(KnownDefects::from_json(&unknown), Err(DefectError::UnknownTest { index: 0, .. })));
        let hmm2 = ONE.replace("hmm_device_coherent", "hmm2_device_coherent");
        assert!(
            matches!(KnownDefects::from_json(&hmm2), Err(DefectError::UnknownTest { .. })),
            "migrate is an hmm test"
        );
        let thp = ONE.replace("[\"never\"]", "[\"sometimes\"]");
        assert!(matches!(KnownDefects::from_json(&thp), Err(DefectError::BadValue { field: "thp", .. })));
        let verdict = ONE.replace("\"fail\"", "\"crash\"");
        assert!(matches!(
            KnownDefects::from_json(&verdict),
            Err(DefectError::BadValue { field: "kernel_verdict", .. })
        ));
        let evidence = ONE.replace("WARNING: CPU: 0 PID: 1 at mm/memremap.c in the guest log", " ");
        assert!(matches!(KnownDefects::from_json(&evidence), Err(DefectError::NoEvidence(0))));
        let typo = ONE.replace("\"fix\"", "\"fixed\"");
        assert!(matches!(KnownDefects::from_json(&typo), Err(DefectError::Json(_))));
        let mut two: serde_json::Value = serde_json::from_str(ONE).unwrap();
        let entry = two["defects"][0].clone();
        two["defects"].as_array_mut().unwrap().push(entry);
        assert!(matches!(KnownDefects::from_json(&two.to_string()), Err(DefectError::Overlap(0, 1))));
    }
}
