//! The scenario language: one operation per line, `name = op args`,
//! `#` comments, `expect TEXT` after an operation to make it a test.
//! `parse` and `print` are inverses on the typed form ([`ast::Scenario`]).

pub mod ast;
pub mod device;
pub mod lex;
mod parse;
pub mod pin;
pub mod print;
pub mod uffd;

pub use parse::parse;
pub use print::{print, print_step};

/// A scenario that does not parse: where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct ParseError {
    /// The file name given to [`parse`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

impl ParseError {
    pub(crate) fn at(col: usize, message: String) -> Self {
        Self { file: String::new(), line: 0, col, message }
    }
}
