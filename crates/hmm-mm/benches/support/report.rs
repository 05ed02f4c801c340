//! Reading back what criterion measured in this run, so each benchmark can
//! print its figures as ratios to the baseline measured beside them. Shared
//! by the benchmarks of hmm-mm and hmm (included with `#[path]`).

// Each including benchmark uses only part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where criterion keeps its estimates: `$CRITERION_HOME`, else the
/// `criterion` folder of the target directory this binary was built in.
pub fn criterion_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().map(|dir| dir.join("criterion")).find(|dir| dir.is_dir())
}

/// The median (ns per iteration) criterion estimated for `id` in this run.
pub fn median_ns(home: &Path, id: &str, since: SystemTime) -> Option<f64> {
    let path = home.join(id).join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let json = std::fs::read_to_string(path).ok()?;
    let median = &json[json.find("\"median\"")?..];
    let value = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    value[..value.find([',', '}'])?].trim().parse().ok()
}

/// A duration in ns, in the unit that reads best.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}
