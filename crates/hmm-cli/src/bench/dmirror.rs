//! Category 3: dmirror READ and WRITE throughput against memcpy. The
//! reference device (`hmm-dmirror`) has not landed yet: the rows say so.

use super::report::{Row, Target};
use super::{Case, Mode};

/// Both directions, reported as not available.
pub fn cases(_mode: Mode) -> Vec<Case> {
    vec![Case::new("dmirror READ/WRITE (not available yet)".to_string(), || {
        let why = "the reference device hmm-dmirror has not landed yet";
        Ok(["read", "write"]
            .into_iter()
            .map(|op| {
                let what = format!("dmirror {} throughput", op.to_uppercase());
                Row::unavailable(3, &format!("dmirror/{op}"), &what, Target::AtLeast(0.5), why)
            })
            .collect())
    })]
}
