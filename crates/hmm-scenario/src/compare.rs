//! Comparing the model's trace with the host's, step by step. A step
//! matches, differs (a divergence), is an expected version difference
//! (`versions.rs`), or is inconclusive: the host refused it (outside the
//! window), could not observe it (no frame numbers without root), or the
//! difference is one the host may legitimately make (an anonymous or shmem
//! THP it could not allocate, and anything later observed on that 2 MiB
//! block: `compare_thp.rs`; DAX leaves are deterministic).

use serde::Serialize;

const PAGE: u64 = 4096;

use crate::compare_thp::Scope;
use crate::exec::{ExecError, Executor};
use crate::lang::ast::{Op, Scenario};
use crate::lang::device::DeviceOp;
use crate::observe::{Outcome, PageView, Trace};
use crate::versions::{self, VersionDifference};

/// The verdict on one step.
#[derive(Debug, Clone, Serialize)]
pub enum Verdict {
    /// Same outcome.
    Match,
    /// Different outcomes: a divergence.
    Differ,
    /// A difference the version table explains.
    Version(&'static str),
    /// Cannot be decided on this host.
    Inconclusive(String),
}

/// One compared step.
#[derive(Debug, Clone, Serialize)]
pub struct StepDiff {
    /// Index in the scenario.
    pub step: usize,
    /// The verdict.
    pub verdict: Verdict,
    /// The model's outcome.
    pub model: Outcome,
    /// The host's outcome.
    pub host: Outcome,
}

/// The comparison of a whole scenario.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Comparison {
    /// One entry per step both executors ran (expect steps left out).
    pub steps: Vec<StepDiff>,
    /// Set when the host runner crashed or hung.
    pub host_aborted: Option<String>,
    /// Set instead when the kernel crashed in a known defect of its own
    /// (`known_crashes.rs`): its id, version and the step.
    pub kernel_defect: Option<String>,
}

impl Comparison {
    /// The first divergence.
    pub fn first_divergence(&self) -> Option<&StepDiff> {
        self.steps.iter().find(|s| matches!(s.verdict, Verdict::Differ))
    }
    /// Counts: (match, differ, version, inconclusive).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for s in &self.steps {
            match s.verdict {
                Verdict::Match => c.0 += 1,
                Verdict::Differ => c.1 += 1,
                Verdict::Version(_) => c.2 += 1,
                Verdict::Inconclusive(_) => c.3 += 1,
            }
        }
        c
    }
}

/// Runs `scenario` on both executors and compares the traces.
pub fn diff_scenario(
    scenario: &Scenario,
    model: &mut dyn Executor,
    host: &mut dyn Executor,
    host_version: (u32, u32),
) -> Result<(Trace, Trace, Comparison), ExecError> {
    let model_trace = model.run(scenario)?;
    let host_trace = host.run(scenario)?;
    let comparison = compare(scenario, &model_trace, &host_trace, host_version);
    Ok((model_trace, host_trace, comparison))
}

/// Compares two traces of `scenario`; `host_version` selects the
/// version-table entries that apply.
pub fn compare(scenario: &Scenario, model: &Trace, host: &Trace, host_version: (u32, u32)) -> Comparison {
    let mut out = Comparison { steps: Vec::new(), host_aborted: host.aborted.clone(), kernel_defect: None };
    if let Some(known) = host.aborted.as_deref().and_then(|why| crate::known_crashes::classify(scenario, why)) {
        let why = out.host_aborted.take().unwrap_or_default();
        out.kernel_defect = Some(format!("known kernel defect {} (Linux {}): {why}", known.id, known.kernel));
    }
    let window = (host.window, model.window);
    let mut scope = Scope::new(model.window);
    // A call the host refused but the model ran (an mremap to an address
    // outside the window, say) may have changed the model's memory only:
    // from there on the two no longer start from the same state.
    let mut refused_change = false;
    for (m, h) in model.records.iter().zip(&host.records) {
        let op = &scenario.steps[m.step].op;
        scope.step(scenario, m.step, &m.outcome);
        if matches!(op, Op::Expect { .. } | Op::Proc { .. } | Op::Window { .. }) {
            continue;
        }
        let verdict = if refused_change {
            Verdict::Inconclusive("follows a call the host refused, which the model ran".into())
        } else {
            judge(op, &m.outcome, &h.outcome, window.0, &mut scope, host_version)
        };
        let changes_state =
            !matches!(op, Op::Read { .. } | Op::Pagemap { .. } | Op::Maps { .. } | Op::Same { .. } | Op::Smaps { .. });
        if changes_state && matches!(h.outcome, Outcome::Refused(_)) && !matches!(m.outcome, Outcome::Refused(_)) {
            refused_change = true;
        }
        out.steps.push(StepDiff { step: m.step, verdict, model: m.outcome.clone(), host: h.outcome.clone() });
    }
    out
}

const WINDOW_BYTES: u64 = 1 << 40;
/// A device-DAX folio stays dirty for the rest of the boot once a mapping
/// wrote it (nothing writes it back), and scenarios share a boot: the
/// guest's clean/dirty split there depends on the scenarios before.
const DEVDAX_DIRTY: &str = "device-DAX pages keep the dirty bit of earlier scenarios of the boot";

/// Whether two smaps views differ only in how resident memory splits
/// into clean and dirty.
fn same_but_dirtiness(m: &crate::observe_smaps::SmapsView, h: &crate::observe_smaps::SmapsView) -> bool {
    const SPLIT: [&str; 5] = ["Pss_Dirty", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty"];
    let sum = |v: &crate::observe_smaps::SmapsView, a: &str, b: &str| v.get(a) + v.get(b);
    m.fields.iter().all(|(f, kb)| SPLIT.contains(&f.as_str()) || h.get(f) == *kb)
        && m.thp_eligible == h.thp_eligible
        && sum(m, "Shared_Clean", "Shared_Dirty") == sum(h, "Shared_Clean", "Shared_Dirty")
        && sum(m, "Private_Clean", "Private_Dirty") == sum(h, "Private_Clean", "Private_Dirty")
}
const NO_THP: &str = "the kernel may not get a THP (THP is not guaranteed)";

fn judge(op: &Op, model: &Outcome, host: &Outcome, window: u64, scope: &mut Scope, version: (u32, u32)) -> Verdict {
    let outside = |o: &Outcome| matches!(o, Outcome::Addr(va) if va.wrapping_sub(window) >= WINDOW_BYTES);
    match (model, host) {
        (_, Outcome::Refused(why)) | (Outcome::Refused(why), _) => return Verdict::Inconclusive(why.clone()),
        (_, Outcome::Inconclusive(why)) | (Outcome::Inconclusive(why), _) => return Verdict::Inconclusive(why.clone()),
        _ if model == host => return Verdict::Match,
        _ if outside(model) || outside(host) => {
            return Verdict::Inconclusive("the kernel placed the mapping outside the window".into())
        }
        (Outcome::Pages(mp), Outcome::Pages(hp)) if mp.len() == hp.len() && pages_fell_back(op, mp, hp, scope) => {
            return Verdict::Inconclusive(NO_THP.into());
        }
        (Outcome::Device(m), Outcome::Device(h)) if crate::observe_device::DeviceResult::thp_fallback(m, h) => {
            if let Op::Device(DeviceOp::Cmd { addr, npages, .. }) = op {
                let len = npages.saturating_mul(PAGE);
                match scope.addr(addr) {
                    Some(va) if (0..*npages).all(|i| scope.thp_optional(Scope::page(va, i as usize))) => {
                        scope.fall_back(va, len);
                        return Verdict::Inconclusive(NO_THP.into());
                    }
                    None => return Verdict::Inconclusive(NO_THP.into()),
                    Some(_) => {}
                }
            }
        }
        // smaps counts the THP the host may not have got, and after one
        // such step the rest of that memory's sharing too.
        (Outcome::Smaps(Some(m)), Outcome::Smaps(Some(h))) => {
            let len = m.end.saturating_sub(m.start);
            let fewer = |f: &str| m.get(f) > h.get(f);
            if scope.fell_back(m.start, len) || fewer("AnonHugePages") || fewer("ShmemPmdMapped") {
                scope.fall_back(m.start, len);
                return Verdict::Inconclusive(NO_THP.into());
            }
            if scope.is_devdax(m.start) && same_but_dirtiness(m, h) {
                return Verdict::Inconclusive(DEVDAX_DIRTY.into());
            }
        }
        (Outcome::Same(_), Outcome::Same(_)) if same_on_fallen(op, scope) => {
            return Verdict::Inconclusive("follows a THP the host may not have allocated".into());
        }
        _ => {}
    }
    match versions::explain(version, op, model, host) {
        Some(VersionDifference { behaviour, .. }) => Verdict::Version(behaviour),
        None => Verdict::Differ,
    }
}

/// Whether a `same` step looks at a page of a block the kernel got no THP
/// for.
fn same_on_fallen(op: &Op, scope: &Scope) -> bool {
    let Op::Same { addr, other_addr, .. } = op else { return false };
    let on_fallen = |e| scope.addr(e).is_none_or(|va| scope.fell_back(va, PAGE));
    on_fallen(addr) || on_fallen(other_addr)
}

/// Whether every page where a pagemap differs is one the kernel may have
/// left without a THP: a page outside DAX that the model maps huge and the
/// kernel not, or any page of a block where that was already seen. Records
/// the blocks newly seen so.
fn pages_fell_back(op: &Op, model: &[PageView], host: &[PageView], scope: &mut Scope) -> bool {
    let start = match op {
        Op::Pagemap { addr, .. } => scope.addr(addr),
        _ => None,
    };
    let Some(start) = start else {
        return model.iter().zip(host).all(|(a, b)| a == b || thp_fallback(a, b));
    };
    let mut newly = Vec::new();
    for (i, (a, b)) in model.iter().zip(host).enumerate() {
        let va = Scope::page(start, i);
        if a == b {
            continue;
        }
        if !scope.thp_optional(va) {
            return false;
        }
        if !scope.fell_back(va, PAGE) {
            if !thp_fallback(a, b) {
                return false;
            }
            newly.push(va);
        }
    }
    for va in newly {
        scope.fall_back(va, PAGE);
    }
    true
}

/// The model mapped a huge page where the host has small pages (or none
/// yet): the host could not allocate a THP, which Linux allows.
fn thp_fallback(model: &PageView, host: &PageView) -> bool {
    model.huge && !host.huge
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_devdax_view_may_differ_only_in_its_clean_dirty_split() {
        use crate::observe_smaps::SmapsView;
        let view = |clean: u64, dirty: u64, rss: u64| SmapsView {
            start: 0,
            end: 2 << 20,
            fields: vec![
                ("Rss".into(), rss),
                ("Pss_Dirty".into(), dirty),
                ("Private_Clean".into(), clean),
                ("Private_Dirty".into(), dirty),
            ],
            thp_eligible: false,
        };
        assert!(same_but_dirtiness(&view(2048, 0, 2048), &view(0, 2048, 2048)));
        assert!(!same_but_dirtiness(&view(2048, 0, 2048), &view(0, 1024, 1024)), "less resident memory");
        assert!(!same_but_dirtiness(&view(2048, 0, 2048), &view(0, 2048, 4096)));
    }
    use crate::lang::parse;
    use crate::observe::Record;

    fn trace(outcomes: Vec<Outcome>) -> Trace {
        let records = outcomes
            .into_iter()
            .enumerate()
            .map(|(step, outcome)| Record {
                step,
                line: step + 1,
                proc: "main".into(),
                text: String::new(),
                outcome,
                invalidations: vec![],
                expect_ok: None,
                got: None,
            })
            .collect();
        Trace { window: 0x1000_0000_0000, records, aborted: None }
    }

    #[test]
    fn verdicts() {
        let s = parse("t", "read w\nread w\nread w\npagemap w 1p\n").unwrap();
        let huge = PageView { present: true, huge: true, exclusive: true, ..PageView::default() };
        let small = PageView { present: true, exclusive: true, ..PageView::default() };
        let m = trace(vec![Outcome::Value(1), Outcome::Value(1), Outcome::Fault, Outcome::Pages(vec![huge])]);
        let h = trace(vec![
            Outcome::Value(1),
            Outcome::Value(2),
            Outcome::Refused("outside".into()),
            Outcome::Pages(vec![small]),
        ]);
        let c = compare(&s, &m, &h, (6, 18));
        assert!(matches!(c.steps[0].verdict, Verdict::Match));
        assert!(matches!(c.steps[1].verdict, Verdict::Differ));
        assert!(matches!(c.steps[2].verdict, Verdict::Inconclusive(_)));
        assert!(matches!(c.steps[3].verdict, Verdict::Inconclusive(_)), "THP fallback on the host");
        assert_eq!(c.first_divergence().unwrap().step, 1);
        let h2 = trace(vec![Outcome::Value(1), Outcome::Value(1), Outcome::Fault, Outcome::Pages(vec![huge])]);
        let m2 = trace(vec![Outcome::Value(1), Outcome::Value(1), Outcome::Fault, Outcome::Pages(vec![small])]);
        assert!(matches!(compare(&s, &m2, &h2, (6, 18)).steps[3].verdict, Verdict::Differ), "host huge, model not");
    }

    #[test]
    fn steps_after_a_change_the_host_refused_are_inconclusive() {
        // scenarios/found/read-fault-vs-value: the model ran an mremap the
        // host refused (its new address outside the window).
        let s = parse("t", "munmap w 1p\nread w\n").unwrap();
        let m = trace(vec![Outcome::Ok, Outcome::Fault]);
        let h = trace(vec![Outcome::Refused("outside".into()), Outcome::Value(0)]);
        let c = compare(&s, &m, &h, (6, 18));
        assert!(matches!(c.steps[1].verdict, Verdict::Inconclusive(_)));
        assert!(c.first_divergence().is_none());
    }

    #[test]
    fn smaps_with_a_thp_the_host_lacks_is_inconclusive() {
        use crate::observe_smaps::{SmapsView, FIELDS};
        let view = |huge: u64, rss: u64| SmapsView {
            start: 0,
            end: 4 << 20,
            fields: FIELDS
                .iter()
                .map(|f| {
                    let kb = match *f {
                        "AnonHugePages" => huge,
                        "ShmemPmdMapped" => 0,
                        _ => rss,
                    };
                    (f.to_string(), kb)
                })
                .collect(),
            thp_eligible: true,
        };
        let s = parse("t", "smaps w\nsmaps w\n").unwrap();
        let m = trace(vec![Outcome::Smaps(Some(view(0, 4))), Outcome::Smaps(Some(view(2048, 2048)))]);
        let h = trace(vec![Outcome::Smaps(Some(view(0, 8))), Outcome::Smaps(Some(view(0, 4)))]);
        let c = compare(&s, &m, &h, (6, 18));
        assert!(matches!(c.steps[0].verdict, Verdict::Differ), "no THP involved: a divergence");
        assert!(matches!(c.steps[1].verdict, Verdict::Inconclusive(_)), "the host got no THP");
        let c = compare(&s, &h, &m, (6, 18));
        assert!(matches!(c.steps[1].verdict, Verdict::Differ), "the kernel huge, the model not");
    }

    #[test]
    fn a_missing_thp_is_allowed_only_outside_dax_and_only_on_its_block() {
        let huge = PageView { present: true, huge: true, exclusive: true, ..PageView::default() };
        let small = PageView { present: true, exclusive: true, ..PageView::default() };
        let gone = PageView::default();
        let s = parse(
            "t",
            "f = daxfile x\nb = mmap w+4M 4M rw- shared|fixed fd f 0\na = mmap w+8M 4M rw- private|anon|fixed\n\
             pagemap b 1p\npagemap a 1p\npagemap a+1p 1p\npagemap a+2M 1p\n",
        )
        .unwrap();
        let w = 0x1000_0000_0000;
        let common = [Outcome::Ok, Outcome::Addr(w + (4 << 20)), Outcome::Addr(w + (8 << 20))];
        let m = trace([&common[..], &vec![Outcome::Pages(vec![huge]); 4]].concat());
        let h = trace(
            [
                &common[..],
                &[
                    Outcome::Pages(vec![small]),
                    Outcome::Pages(vec![small]),
                    Outcome::Pages(vec![gone]),
                    Outcome::Pages(vec![PageView { exclusive: false, ..huge }]),
                ],
            ]
            .concat(),
        );
        let c = compare(&s, &m, &h, (7, 3));
        let v: Vec<_> = c.steps.iter().map(|s| &s.verdict).collect();
        assert!(matches!(v[3], Verdict::Differ), "an fs-dax PMD is deterministic");
        assert!(matches!(v[4], Verdict::Inconclusive(_)), "an anonymous THP may fail");
        assert!(matches!(v[5], Verdict::Inconclusive(_)), "the same block after the fallback");
        assert!(matches!(v[6], Verdict::Differ), "another block is compared in full");
    }
}
