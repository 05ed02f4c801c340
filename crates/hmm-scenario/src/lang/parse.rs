//! Text to [`Scenario`]: each line is tokenized (`lex.rs`) and matched on
//! its keyword; every error names its line and column.

use super::ast::*;
use super::lex::{self, Token};
use super::ParseError;

/// Parses a scenario; `file` is only used in error messages.
pub fn parse(file: &str, text: &str) -> Result<Scenario, ParseError> {
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let locate = |mut e: ParseError| {
            e.file = file.to_string();
            e.line = i + 1;
            e
        };
        if let Some(step) = parse_line(line).map_err(locate)? {
            steps.push(Step { line: i + 1, ..step });
        }
    }
    Ok(Scenario { steps })
}

fn parse_line(line: &str) -> Result<Option<Step>, ParseError> {
    if let Some(rest) = line.trim_start().strip_prefix("expect") {
        if rest.is_empty() || rest.starts_with(char::is_whitespace) {
            let text = rest.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.is_empty() {
                let col = line.len() - line.trim_start().len() + 1;
                return Err(ParseError::at(col, "`expect` needs the expected result".into()));
            }
            return Ok(Some(Step { line: 0, bind: None, op: Op::Expect { text } }));
        }
    }
    let toks = lex::tokens(line);
    let (bind, toks) = match toks.as_slice() {
        [] => return Ok(None),
        [name, eq, rest @ ..] if eq.text == "=" => {
            if !lex::is_name(name.text) {
                return Err(ParseError::at(name.col, format!("`{}` is not a name", name.text)));
            }
            if rest.is_empty() {
                return Err(ParseError::at(eq.col, "an operation must follow `=`".into()));
            }
            (Some(name.text.to_string()), rest)
        }
        _ => (None, toks.as_slice()),
    };
    let op = Args { toks, next: 1, end_col: line.len() + 1 }.op()?;
    if bind.is_some() && !op.has_result() {
        return Err(ParseError::at(toks[0].col, format!("`{}` has no result to name", toks[0].text)));
    }
    Ok(Some(Step { line: 0, bind, op }))
}

/// The arguments after the keyword, consumed left to right.
struct Args<'a, 'b> {
    toks: &'b [Token<'a>],
    next: usize,
    end_col: usize,
}

impl<'a> Args<'a, '_> {
    fn take(&mut self, what: &str) -> Result<Token<'a>, ParseError> {
        let tok = self.toks.get(self.next).copied();
        self.next += 1;
        tok.ok_or_else(|| ParseError::at(self.end_col, format!("`{}` needs {what}", self.toks[0].text)))
    }
    fn peek(&self) -> Option<Token<'a>> {
        self.toks.get(self.next).copied()
    }
    fn expr(&mut self, what: &str) -> Result<Expr, ParseError> {
        lex::expr(self.take(what)?)
    }
    fn number(&mut self, what: &str) -> Result<u64, ParseError> {
        lex::number(self.take(what)?)
    }
    fn name(&mut self, what: &str) -> Result<Name, ParseError> {
        let tok = self.take(what)?;
        if lex::is_name(tok.text) {
            Ok(tok.text.to_string())
        } else {
            Err(ParseError::at(tok.col, format!("expected {what}, found `{}`", tok.text)))
        }
    }
    fn done(&self, op: Op) -> Result<Op, ParseError> {
        match self.peek() {
            Some(tok) => Err(ParseError::at(tok.col, format!("unexpected `{}` after `{}`", tok.text, op.keyword()))),
            None => Ok(op),
        }
    }

    fn op(mut self) -> Result<Op, ParseError> {
        let keyword = self.toks[0];
        let op = match keyword.text {
            "window" => Op::Window { base: self.expr("a base address")?, len: self.expr("a length")? },
            "mmap" => {
                let addr = self.expr("an address")?;
                let len = self.expr("a length")?;
                let prot = lex::prot(self.take("a protection")?)?;
                let flags = lex::bits(self.take("flags")?, &MAP_BITS, "mmap flag")?;
                let file = match self.peek() {
                    Some(tok) if tok.text == "fd" => {
                        self.next += 1;
                        Some((self.name("a file")?, self.expr("a file offset")?))
                    }
                    _ => None,
                };
                Op::Mmap { addr, len, prot, flags, file }
            }
            "munmap" => Op::Munmap { addr: self.expr("an address")?, len: self.expr("a length")? },
            "mprotect" => Op::Mprotect {
                addr: self.expr("an address")?,
                len: self.expr("a length")?,
                prot: lex::prot(self.take("a protection")?)?,
            },
            "madvise" => Op::Madvise {
                addr: self.expr("an address")?,
                len: self.expr("a length")?,
                advice: lex::named(self.take("an advice")?, &ADVICE, "advice")?,
            },
            "mseal" => Op::Mseal { addr: self.expr("an address")?, len: self.expr("a length")? },
            "mremap" => {
                let old = self.expr("an old address")?;
                let old_len = self.expr("an old length")?;
                let new_len = self.expr("a new length")?;
                let flags = lex::bits(self.take("flags (or 0)")?, &MREMAP_BITS, "mremap flag")?;
                let new_addr = match self.peek() {
                    Some(_) => Some(self.expr("a new address")?),
                    None => None,
                };
                Op::Mremap { old, old_len, new_len, flags, new_addr }
            }
            "read" => Op::Read { addr: self.expr("an address")? },
            "write" => Op::Write { addr: self.expr("an address")?, value: self.number("a value")? },
            "atomic_add" => Op::AtomicAdd { addr: self.expr("an address")?, value: self.number("a value")? },
            "cmpxchg" => Op::Cmpxchg {
                addr: self.expr("an address")?,
                old: self.number("the expected value")?,
                new: self.number("the new value")?,
            },
            "fork" => Op::Fork,
            "proc" => Op::Proc { name: self.name("a process name")? },
            "exit" => Op::Exit,
            "memfd" => Op::Memfd { name: self.name("a file name")? },
            "fwrite" => Op::Fwrite {
                file: self.name("a file")?,
                offset: self.expr("an offset")?,
                value: self.number("a value")?,
            },
            "pread" => Op::Pread { file: self.name("a file")?, offset: self.expr("an offset")? },
            "ftruncate" => Op::Ftruncate { file: self.name("a file")?, size: self.expr("a size")? },
            "fallocate" => {
                let file = self.name("a file")?;
                let offset = self.expr("an offset")?;
                let len = self.expr("a length")?;
                let tok = self.take("a mode (punch_hole or keep_size)")?;
                let mode = match tok.text {
                    "punch_hole" => FallocMode::PunchHole,
                    "keep_size" => FallocMode::KeepSize,
                    other => return Err(ParseError::at(tok.col, format!("unknown fallocate mode `{other}`"))),
                };
                Op::Fallocate { file, offset, len, mode }
            }
            "close" => Op::Close { file: self.name("a file")? },
            "maps" => Op::Maps { addr: self.expr("an address")?, len: self.expr("a length")? },
            "pagemap" => Op::Pagemap { addr: self.expr("an address")?, len: self.expr("a length")? },
            "same" => Op::Same {
                addr: self.expr("an address")?,
                other: self.name("a process")?,
                other_addr: self.expr("an address in that process")?,
            },
            "userfaultfd" => Op::Userfaultfd {
                features: lex::bits(self.take("features (or 0)")?, &super::uffd::FEATURE_BITS, "feature")?,
            },
            "wait" => Op::Wait { access: self.name("an access")? },
            "smaps" => Op::Smaps { addr: self.expr("an address")? },
            kw if super::pin::KEYWORDS.contains(&kw) => {
                let (toks, next, end_col) = (self.toks, &mut self.next, self.end_col);
                let next = core::cell::Cell::new(*next);
                let mut take = |what: &str| {
                    let tok = toks.get(next.get()).copied();
                    next.set(next.get() + 1);
                    tok.ok_or_else(|| ParseError::at(end_col, format!("`{kw}` needs {what}")))
                };
                let more = || next.get() < toks.len();
                let op = super::pin::parse(kw, &mut take, &more).expect("a pin keyword")?;
                self.next = next.get();
                Op::Pin(op)
            }
            kw if super::uffd::KEYWORDS.contains(&kw) => {
                return Ok(Op::Uffd(super::uffd::parse(self.toks, self.end_col)?))
            }
            other => {
                let (toks, next, end_col) = (self.toks, &mut self.next, self.end_col);
                let mut take = |what: &str| {
                    let tok = toks.get(*next).copied();
                    *next += 1;
                    tok.ok_or_else(|| ParseError::at(end_col, format!("`{other}` needs {what}")))
                };
                match super::device::parse(other, &mut take) {
                    Some(op) => Op::Device(op?),
                    None => return Err(ParseError::at(keyword.col, format!("unknown operation `{other}`"))),
                }
            }
        };
        self.done(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_with_a_name_and_a_file() {
        let s = parse("t.hmm", "f = memfd data\na = mmap w+4p 2p rw- shared fd f 0x1000\n").unwrap();
        assert_eq!(s.steps[1].bind.as_deref(), Some("a"));
        assert_eq!(
            s.steps[1].op,
            Op::Mmap {
                addr: Expr::at("w", 0x4000),
                len: Expr::num(0x2000),
                prot: 3,
                flags: 1,
                file: Some(("f".into(), Expr::num(0x1000)))
            }
        );
        assert_eq!(s.steps[1].line, 2);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = parse("t.hmm", "# c\nmunmap w 4p\nmprotect w 4p rx-\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line, e.col), ("t.hmm", 3, 16));
        assert_eq!(e.to_string(), "t.hmm:3:16: expected `w` or `-`, found `x`");
        let e = parse("t.hmm", "mmap w\n").unwrap_err();
        assert_eq!((e.line, e.col), (1, 7));
        assert!(e.message.contains("needs a length"), "{e}");
        let e = parse("t.hmm", "x = munmap w 4p\n").unwrap_err();
        assert!(e.message.contains("no result"), "{e}");
        assert!(parse("t.hmm", "frobnicate 1\n").unwrap_err().message.contains("unknown operation"));
        assert!(parse("t.hmm", "read w 3\n").unwrap_err().message.contains("unexpected `3`"));
        assert!(parse("t.hmm", "expect\n").is_err());
        assert!(parse("t.hmm", "madvise w 1p dontneed|free\n").unwrap_err().message.contains("unknown advice"));
    }

    #[test]
    fn expect_keeps_its_text() {
        let s = parse("t", "read w\nexpect   0x0  \n").unwrap();
        assert_eq!(s.steps[1].op, Op::Expect { text: "0x0".into() });
    }
}
