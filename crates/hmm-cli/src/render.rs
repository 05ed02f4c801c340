//! Terminal output: headings, steps, facts and invalidation events, in
//! colour when standard output is a terminal (and `NO_COLOR` is unset).

use std::io::IsTerminal;

/// Where demo text goes.
#[derive(Debug)]
pub struct Out {
    color: bool,
}

const BOLD: &str = "\x1b[1m";
const CYAN: &str = "\x1b[36m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// The three kinds of test result line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TestLine {
    /// Passed.
    Ok,
    /// Failed.
    NotOk,
    /// Skipped.
    Skip,
}

impl Out {
    /// Colour only on a terminal, unless disabled.
    pub fn new(no_color: bool) -> Self {
        let color = !no_color && std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal();
        Self { color }
    }

    /// True when output is coloured (a terminal, colour not disabled):
    /// the cue for drawing progress bars too.
    pub fn is_color(&self) -> bool {
        self.color
    }

    fn paint(&self, style: &str, text: &str) -> String {
        if self.color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    /// A chapter title.
    pub fn heading(&self, text: &str) {
        println!("\n{}", self.paint(BOLD, &format!("== {text} ==")));
    }

    /// Something the story does now.
    pub fn step(&self, number: usize, text: &str) {
        println!("{} {text}", self.paint(CYAN, &format!("[{number}]")));
    }

    /// What was observed.
    pub fn fact(&self, text: &str) {
        println!("    {} {text}", self.paint(GREEN, "ok"));
    }

    /// An invalidation as a subscriber saw it.
    pub fn event(&self, text: &str) {
        println!("    {} {text}", self.paint(YELLOW, "notifier"));
    }

    /// Commentary.
    pub fn note(&self, text: &str) {
        println!("    {}", self.paint(DIM, text));
    }

    /// One test's result line: `ok`, `not ok` or `skip`, then the text.
    pub fn test_line(&self, result: TestLine, text: &str) {
        let (tag, style) = match result {
            TestLine::Ok => ("ok", GREEN),
            TestLine::NotOk => ("not ok", RED),
            TestLine::Skip => ("skip", YELLOW),
        };
        println!("{} {text}", self.paint(style, tag));
    }

    /// A plain line.
    pub fn line(&self, text: &str) {
        println!("{text}");
    }

    /// A failure of the command itself.
    pub fn error(&self, text: &str) {
        eprintln!("{} {text}", self.paint(RED, "error:"));
    }
}
