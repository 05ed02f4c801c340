//! A kernel crash in a guest scenario, read from the console: the oops
//! (printed whatever the console log level) and the step the host runner
//! announced last (`=== step LINE`). The VM executor ends a crashed
//! scenario's trace with [`KernelCrash::summary`]; `known_crashes.rs`
//! reads it back.

/// A kernel crash seen on the guest's console (the oops is printed there
/// whatever the console log level, before the panic ends the boot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCrash {
    /// The step the runner announced last (`=== step LINE`).
    pub line: Option<usize>,
    /// The first line of the report (`BUG: ...`, `Oops: ...`).
    pub what: String,
    /// The faulting function (`RIP: 0010:FUNCTION+0x../0x..`).
    pub function: Option<String>,
}

/// The prefix of an aborted trace's reason when the kernel crashed.
pub const KERNEL_CRASH: &str = "the guest's kernel crashed";

impl KernelCrash {
    /// The aborted trace's reason: [`KERNEL_CRASH`], the line, the report.
    pub fn summary(&self) -> String {
        let line = self.line.map_or_else(|| "before its first step".into(), |l| format!("at line {l}"));
        let function = self.function.as_deref().map_or_else(String::new, |f| format!(" in {f}"));
        format!("{KERNEL_CRASH} {line}: {}{function}", self.what)
    }

    /// The crash of an aborted trace's reason, read back from
    /// [`Self::summary`]: the line and the function.
    pub fn parse_summary(reason: &str) -> Option<(Option<usize>, Option<String>)> {
        let rest = reason.strip_prefix(KERNEL_CRASH)?.trim_start();
        let line = rest.strip_prefix("at line ").and_then(|r| r.split(':').next()?.parse().ok());
        let function = rest.rsplit_once(" in ").map(|(_, f)| f.trim().to_string());
        Some((line, function))
    }
}

/// The first kernel crash on the console after the payload began, and the
/// step the runner had announced last before it.
pub fn kernel_crash(console: &str) -> Option<KernelCrash> {
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    let begin = lines.iter().position(|l| l.starts_with("=== guest release "))?;
    let is_crash =
        |l: &str| ["BUG: ", "Oops: ", "general protection fault", "Kernel panic"].iter().any(|k| l.contains(k));
    let at = begin + lines[begin..].iter().position(|l| is_crash(l))?;
    let line = lines[begin..at]
        .iter()
        .rev()
        .take_while(|l| !l.starts_with("=== reply "))
        .find_map(|l| l.strip_prefix("=== step ")?.trim().parse().ok());
    let what = lines[at].split_once("] ").map_or(lines[at], |(_, w)| w).trim().to_string();
    let function = lines[at..].iter().find_map(|l| {
        let rip = l.split_once("RIP: 0010:")?.1;
        Some(rip.split('+').next()?.trim().to_string())
    });
    Some(KernelCrash { line, what, function })
}
