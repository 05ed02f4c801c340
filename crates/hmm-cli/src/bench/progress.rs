//! Progress while the benchmark runs: an indicatif bar on a terminal, plain
//! numbered lines otherwise (standard output not a terminal, `--no-color`,
//! or `NO_COLOR` set), so a CI log reads as a list.

use indicatif::{ProgressBar, ProgressStyle};

/// Where progress goes.
#[derive(Debug)]
pub enum Progress {
    /// A bar redrawn in place.
    Bar(ProgressBar),
    /// One line per step: `[3/41] snapshot, 2M THP`.
    Lines {
        /// Steps announced so far.
        done: u64,
        /// Steps in all.
        total: u64,
    },
}

impl Progress {
    /// A bar when `fancy`, else plain lines; `total` steps.
    pub fn new(total: u64, fancy: bool) -> Self {
        if !fancy {
            return Self::Lines { done: 0, total };
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        Self::Bar(bar)
    }

    /// Announces the step about to run.
    pub fn step(&mut self, label: &str) {
        match self {
            Self::Bar(bar) => {
                bar.set_message(label.to_string());
            }
            Self::Lines { done, total } => {
                *done += 1;
                println!("{}", line(*done, *total, label));
            }
        }
    }

    /// Marks the announced step done.
    pub fn done(&mut self) {
        if let Self::Bar(bar) = self {
            bar.inc(1);
        }
    }

    /// Removes the bar (lines stay).
    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// A plain progress line.
pub fn line(done: u64, total: u64, label: &str) -> String {
    let width = total.to_string().len();
    format!("[{done:>width$}/{total}] {label}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_are_numbered_and_aligned() {
        assert_eq!(line(3, 41, "snapshot, 2M THP"), "[ 3/41] snapshot, 2M THP");
        assert_eq!(line(41, 41, "overhead"), "[41/41] overhead");
    }

    #[test]
    fn without_a_terminal_progress_counts_lines() {
        let mut progress = Progress::new(2, false);
        progress.step("a");
        progress.done();
        progress.step("b");
        assert!(matches!(progress, Progress::Lines { done: 2, total: 2 }));
    }
}
