//! Pins through the `gup_test` driver: opening `/sys/kernel/debug/gup_test`
//! (`g = gup_test`), its one-shot commands (`gup g pin_basic ADDR LEN
//! FOLL_FLAGS [PAGES_PER_CALL]`, showing how many bytes the loop covered),
//! and the long-term pin a file holds (`pin_start g ADDR LEN FLAGS`,
//! `pin_stop g`, `pin_read g NPAGES`, showing the pinned pages' words).
//!
//! Linux: `mm/gup_test.h` (the commands, `struct gup_test`, `struct
//! pin_longterm_test`), `include/linux/mm_types.h` (the `FOLL_*` bits).

use serde::{Deserialize, Serialize};

use super::ast::{Expr, Name};
use super::lex::{self, Token};
use super::ParseError;

/// A one-shot `gup_test` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GupCmd {
    /// `GUP_FAST_BENCHMARK`.
    GupFast,
    /// `PIN_FAST_BENCHMARK`.
    PinFast,
    /// `PIN_LONGTERM_BENCHMARK`.
    PinLongterm,
    /// `GUP_BASIC_TEST`.
    GupBasic,
    /// `PIN_BASIC_TEST`.
    PinBasic,
}

impl GupCmd {
    /// Every command with its name in the language.
    pub const ALL: [(Self, &'static str); 5] = [
        (Self::GupFast, "gup_fast"),
        (Self::PinFast, "pin_fast"),
        (Self::PinLongterm, "pin_longterm"),
        (Self::GupBasic, "gup_basic"),
        (Self::PinBasic, "pin_basic"),
    ];

    /// The command's name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(c, _)| *c == self).map_or("pin_basic", |(_, n)| n)
    }

    /// The ioctl's number within `'g'` (`_IOWR('g', N, struct gup_test)`).
    pub fn nr(self) -> u8 {
        match self {
            Self::GupFast => 1,
            Self::PinFast => 2,
            Self::PinLongterm => 3,
            Self::GupBasic => 4,
            Self::PinBasic => 5,
        }
    }
}

/// Linux's `FOLL_*` bits by name (what a caller may pass, and the
/// internal `get`, which pinning calls refuse).
pub const FOLL_BITS: [(u32, &str); 13] = [
    (1 << 0, "write"),
    (1 << 1, "get"),
    (1 << 2, "dump"),
    (1 << 3, "force"),
    (1 << 4, "nowait"),
    (1 << 5, "nofault"),
    (1 << 6, "hwpoison"),
    (1 << 7, "anon"),
    (1 << 8, "longterm"),
    (1 << 9, "split_pmd"),
    (1 << 10, "pci_p2pdma"),
    (1 << 11, "interruptible"),
    (1 << 12, "honor_numa_fault"),
];

/// `PIN_LONGTERM_TEST_FLAG_*` by name.
pub const LONGTERM_BITS: [(u32, &str); 2] = [(1, "write"), (2, "fast")];

/// A `gup_test` operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinOp {
    /// `gup_test`: opens `/sys/kernel/debug/gup_test`.
    Open,
    /// `gup FILE CMD ADDR LEN FOLL [PER_CALL]`: a one-shot command; without
    /// `PER_CALL` the whole range in one call.
    Run { file: Name, cmd: GupCmd, addr: Expr, len: Expr, foll: u32, per_call: Option<u32> },
    /// `pin_start FILE ADDR LEN FLAGS`: `PIN_LONGTERM_TEST_START`.
    Start { file: Name, addr: Expr, len: Expr, flags: u32 },
    /// `pin_stop FILE`: `PIN_LONGTERM_TEST_STOP`.
    Stop { file: Name },
    /// `pin_read FILE NPAGES`: `PIN_LONGTERM_TEST_READ` into a buffer of
    /// NPAGES pages.
    Read { file: Name, npages: u64 },
}

/// The keywords this file parses.
pub const KEYWORDS: [&str; 5] = ["gup_test", "gup", "pin_start", "pin_stop", "pin_read"];

impl PinOp {
    /// The keyword that starts the line.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Open => "gup_test",
            Self::Run { .. } => "gup",
            Self::Start { .. } => "pin_start",
            Self::Stop { .. } => "pin_stop",
            Self::Read { .. } => "pin_read",
        }
    }

    /// Whether `name = ...` may bind its result (the opened file).
    pub fn binds(&self) -> bool {
        matches!(self, Self::Open)
    }

    /// The file the operation acts on (none for `gup_test` itself).
    pub fn file(&self) -> Option<&Name> {
        match self {
            Self::Open => None,
            Self::Run { file, .. } | Self::Start { file, .. } | Self::Stop { file } | Self::Read { file, .. } => {
                Some(file)
            }
        }
    }

    /// The arguments after the keyword, in canonical spelling.
    pub fn print_args(&self) -> Vec<String> {
        use super::print::{bits, expr};
        match self {
            Self::Open => vec![],
            Self::Run { file, cmd, addr, len, foll, per_call } => {
                let mut args = vec![file.clone(), cmd.name().into(), expr(addr), expr(len), bits(*foll, &FOLL_BITS)];
                args.extend(per_call.map(|n| format!("{n:#x}")));
                args
            }
            Self::Start { file, addr, len, flags } => {
                vec![file.clone(), expr(addr), expr(len), bits(*flags, &LONGTERM_BITS)]
            }
            Self::Stop { file } => vec![file.clone()],
            Self::Read { file, npages } => vec![file.clone(), format!("{npages:#x}")],
        }
    }
}

fn name(tok: Token<'_>) -> Result<Name, ParseError> {
    if lex::is_name(tok.text) {
        Ok(tok.text.to_string())
    } else {
        Err(ParseError::at(tok.col, format!("expected a gup_test file, found `{}`", tok.text)))
    }
}

/// Parses the `gup_test` operation `keyword` from `take` (the next
/// argument, or a "needs WHAT" error) and `peek` (whether one is left);
/// `None` if the keyword is not one.
pub(super) fn parse<'a>(
    keyword: &str,
    take: &mut dyn FnMut(&str) -> Result<Token<'a>, ParseError>,
    more: &dyn Fn() -> bool,
) -> Option<Result<PinOp, ParseError>> {
    if !KEYWORDS.contains(&keyword) {
        return None;
    }
    let mut op = || -> Result<PinOp, ParseError> {
        Ok(match keyword {
            "gup_test" => PinOp::Open,
            "gup" => {
                let file = name(take("a gup_test file")?)?;
                let tok = take("a command")?;
                let cmd = GupCmd::ALL.iter().find(|(_, n)| *n == tok.text).map(|(c, _)| *c).ok_or_else(|| {
                    ParseError::at(
                        tok.col,
                        format!(
                            "unknown gup_test command `{}` (gup_fast, pin_fast, pin_longterm, gup_basic, pin_basic)",
                            tok.text
                        ),
                    )
                })?;
                let addr = lex::expr(take("an address")?)?;
                let len = lex::expr(take("a length")?)?;
                let foll = lex::bits(take("FOLL_* flags (or 0)")?, &FOLL_BITS, "FOLL_* flag")?;
                let per_call = if more() {
                    let tok = take("pages per call")?;
                    Some(
                        u32::try_from(lex::number(tok)?)
                            .map_err(|_| ParseError::at(tok.col, "pages per call do not fit in 32 bits".into()))?,
                    )
                } else {
                    None
                };
                PinOp::Run { file, cmd, addr, len, foll, per_call }
            }
            "pin_start" => PinOp::Start {
                file: name(take("a gup_test file")?)?,
                addr: lex::expr(take("an address")?)?,
                len: lex::expr(take("a length")?)?,
                flags: lex::bits(take("flags (or 0)")?, &LONGTERM_BITS, "long-term pin flag")?,
            },
            "pin_stop" => PinOp::Stop { file: name(take("a gup_test file")?)? },
            _ => PinOp::Read { file: name(take("a gup_test file")?)?, npages: lex::number(take("a page count")?)? },
        })
    };
    Some(op())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::ast::Op;
    use crate::lang::{parse, print};

    #[test]
    fn pin_lines_parse_and_print_back() {
        let text = "g = gup_test\n\
                    gup g pin_basic w 0x4000 write\n\
                    gup g gup_fast w+0x1000 0x1000 0x0 0x1\n\
                    gup g pin_longterm w 0x2000 write|anon|0x4000\n\
                    pin_start g w 0x1000 write|fast\n\
                    pin_read g 0x2\n\
                    pin_stop g\n";
        let s = parse("t", text).unwrap();
        assert_eq!(s.steps[0].bind.as_deref(), Some("g"));
        assert_eq!(s.steps[0].op, Op::Pin(PinOp::Open));
        assert!(matches!(&s.steps[2].op, Op::Pin(PinOp::Run { per_call: Some(1), foll: 0, .. })));
        assert_eq!(print(&s), text);
    }

    #[test]
    fn bad_pin_lines_say_why() {
        assert!(parse("t", "gup g pin_twice w 1p 0\n").unwrap_err().message.contains("unknown gup_test command"));
        assert!(parse("t", "gup g pin_basic w 1p sticky\n").unwrap_err().message.contains("unknown FOLL_* flag"));
        assert!(parse("t", "pin_start g w 1p slow\n").unwrap_err().message.contains("long-term pin flag"));
        assert!(parse("t", "x = pin_stop g\n").unwrap_err().message.contains("no result"));
        assert!(parse("t", "pin_read g\n").unwrap_err().message.contains("needs a page count"));
        assert!(parse("t", "gup g pin_basic w 1p 0 0x100000000\n").unwrap_err().message.contains("32 bits"));
    }
}
