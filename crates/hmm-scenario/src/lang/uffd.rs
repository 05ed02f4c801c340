//! The userfaultfd operations of the language: their typed form
//! ([`UffdOp`]), how each line parses and prints, and the bit tables
//! (features, register modes, per-ioctl modes) with Linux's values.
//!
//! ```text
//! u = userfaultfd FEATURES            # userfaultfd(O_CLOEXEC|O_NONBLOCK) + UFFDIO_API
//! uffd_register u ADDR LEN MODES      # missing|wp|minor; shows the range ioctls
//! uffd_unregister u ADDR LEN
//! uffd_copy u DST LEN VALUE [MODE]    # every 8 bytes of the source hold VALUE; wp|dontwake
//! uffd_zeropage u ADDR LEN [MODE]     # dontwake
//! uffd_writeprotect u ADDR LEN MODE   # wp (protect) or 0 (resolve), dontwake
//! uffd_continue u ADDR LEN [MODE]     # dontwake|wp
//! uffd_move u DST SRC LEN [MODE]      # dontwake|allow_src_holes
//! uffd_poison u ADDR LEN [MODE]       # dontwake
//! uffd_wake u ADDR LEN
//! uffd_read u                         # every queued message, without blocking
//! uffd_rwprotect u ADDR LEN MODE      # rwp (protect) or 0 (resolve), dontwake (7.3)
//! uffd_set_mode u ENABLE DISABLE      # feature bits (rwp_async) or 0 (7.3)
//! v = uffd_read u                     # ... and v is the child's userfaultfd of the first FORK
//! ```
//!
//! The RWP lines, and `userfaultfd` or `uffd_register` naming `rwp`, need
//! Linux 7.3's RWP mode ([`needs_rwp`]); an executor without it refuses
//! them.
//!
//! Linux: `include/uapi/linux/userfaultfd.h`.

use super::ast::{Expr, Name};
use super::lex::{self, Token};
use super::ParseError;

/// `UFFD_FEATURE_*` with their bits.
pub const FEATURE_BITS: [(u32, &str); 19] = [
    (1 << 0, "pagefault_flag_wp"),
    (1 << 1, "event_fork"),
    (1 << 2, "event_remap"),
    (1 << 3, "event_remove"),
    (1 << 4, "missing_hugetlbfs"),
    (1 << 5, "missing_shmem"),
    (1 << 6, "event_unmap"),
    (1 << 7, "sigbus"),
    (1 << 8, "thread_id"),
    (1 << 9, "minor_hugetlbfs"),
    (1 << 10, "minor_shmem"),
    (1 << 11, "exact_address"),
    (1 << 12, "wp_hugetlbfs_shmem"),
    (1 << 13, "wp_unpopulated"),
    (1 << 14, "poison"),
    (1 << 15, "wp_async"),
    (1 << 16, "move"),
    (1 << 17, "rwp"),
    (1 << 18, "rwp_async"),
];

/// The feature bits of Linux 7.3's RWP mode.
pub const RWP_FEATURES: u32 = (1 << 17) | (1 << 18);

/// `UFFDIO_REGISTER_MODE_*`.
pub const REGISTER_BITS: [(u32, &str); 4] = [(1, "missing"), (2, "wp"), (4, "minor"), (8, "rwp")];
/// `UFFDIO_COPY_MODE_*`.
pub const COPY_BITS: [(u32, &str); 2] = [(1, "dontwake"), (2, "wp")];
/// `UFFDIO_ZEROPAGE_MODE_*` and `UFFDIO_POISON_MODE_*`.
pub const DONTWAKE_BITS: [(u32, &str); 1] = [(1, "dontwake")];
/// `UFFDIO_WRITEPROTECT_MODE_*`.
pub const WRITEPROTECT_BITS: [(u32, &str); 2] = [(1, "wp"), (2, "dontwake")];
/// `UFFDIO_CONTINUE_MODE_*`.
pub const CONTINUE_BITS: [(u32, &str); 2] = [(1, "dontwake"), (2, "wp")];
/// `UFFDIO_MOVE_MODE_*`.
pub const MOVE_BITS: [(u32, &str); 2] = [(1, "dontwake"), (2, "allow_src_holes")];
/// `UFFDIO_RWPROTECT_MODE_*` (7.3).
pub const RWPROTECT_BITS: [(u32, &str); 2] = [(1, "rwp"), (2, "dontwake")];

/// One userfaultfd operation on the descriptor `uffd` (a name bound by
/// `userfaultfd`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum UffdOp {
    Register {
        uffd: Name,
        addr: Expr,
        len: Expr,
        mode: u32,
    },
    Unregister {
        uffd: Name,
        addr: Expr,
        len: Expr,
    },
    Copy {
        uffd: Name,
        dst: Expr,
        len: Expr,
        value: u64,
        mode: u32,
    },
    Zeropage {
        uffd: Name,
        addr: Expr,
        len: Expr,
        mode: u32,
    },
    Writeprotect {
        uffd: Name,
        addr: Expr,
        len: Expr,
        mode: u32,
    },
    Continue {
        uffd: Name,
        addr: Expr,
        len: Expr,
        mode: u32,
    },
    Move {
        uffd: Name,
        dst: Expr,
        src: Expr,
        len: Expr,
        mode: u32,
    },
    Poison {
        uffd: Name,
        addr: Expr,
        len: Expr,
        mode: u32,
    },
    Wake {
        uffd: Name,
        addr: Expr,
        len: Expr,
    },
    Read {
        uffd: Name,
    },
    Rwprotect {
        uffd: Name,
        addr: Expr,
        len: Expr,
        mode: u32,
    },
    /// `enable` and `disable` are `UFFD_FEATURE_*` bits.
    SetMode {
        uffd: Name,
        enable: u32,
        disable: u32,
    },
}

/// The keywords, for the parser's dispatch.
pub const KEYWORDS: [&str; 12] = [
    "uffd_register",
    "uffd_unregister",
    "uffd_copy",
    "uffd_zeropage",
    "uffd_writeprotect",
    "uffd_continue",
    "uffd_move",
    "uffd_poison",
    "uffd_wake",
    "uffd_read",
    "uffd_rwprotect",
    "uffd_set_mode",
];

impl UffdOp {
    /// The keyword of the line.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Register { .. } => "uffd_register",
            Self::Unregister { .. } => "uffd_unregister",
            Self::Copy { .. } => "uffd_copy",
            Self::Zeropage { .. } => "uffd_zeropage",
            Self::Writeprotect { .. } => "uffd_writeprotect",
            Self::Continue { .. } => "uffd_continue",
            Self::Move { .. } => "uffd_move",
            Self::Poison { .. } => "uffd_poison",
            Self::Wake { .. } => "uffd_wake",
            Self::Read { .. } => "uffd_read",
            Self::Rwprotect { .. } => "uffd_rwprotect",
            Self::SetMode { .. } => "uffd_set_mode",
        }
    }

    /// The descriptor it acts on.
    pub fn uffd(&self) -> &Name {
        match self {
            Self::Register { uffd, .. }
            | Self::Unregister { uffd, .. }
            | Self::Copy { uffd, .. }
            | Self::Zeropage { uffd, .. }
            | Self::Writeprotect { uffd, .. }
            | Self::Continue { uffd, .. }
            | Self::Move { uffd, .. }
            | Self::Poison { uffd, .. }
            | Self::Wake { uffd, .. }
            | Self::Rwprotect { uffd, .. }
            | Self::SetMode { uffd, .. }
            | Self::Read { uffd } => uffd,
        }
    }
}

/// Reads the arguments after the keyword `toks[0]`; `end_col` is where a
/// missing argument is reported.
pub fn parse(toks: &[Token<'_>], end_col: usize) -> Result<UffdOp, ParseError> {
    let keyword = toks[0].text;
    let mut next = 1;
    let mut take = |what: &str| -> Result<Token<'_>, ParseError> {
        let tok = toks.get(next).copied();
        next += 1;
        tok.ok_or_else(|| ParseError::at(end_col, format!("`{keyword}` needs {what}")))
    };
    let uffd_tok = take("a userfaultfd")?;
    if !lex::is_name(uffd_tok.text) {
        return Err(ParseError::at(uffd_tok.col, format!("expected a userfaultfd, found `{}`", uffd_tok.text)));
    }
    let uffd = uffd_tok.text.to_string();
    let mut expr = |what: &str| lex::expr(take(what)?);
    let op = match keyword {
        "uffd_read" => UffdOp::Read { uffd },
        "uffd_set_mode" => {
            let enable = lex::bits(take("the features to enable (or 0)")?, &FEATURE_BITS, "feature")?;
            let disable = lex::bits(take("the features to disable (or 0)")?, &FEATURE_BITS, "feature")?;
            UffdOp::SetMode { uffd, enable, disable }
        }
        "uffd_wake" => UffdOp::Wake { uffd, addr: expr("an address")?, len: expr("a length")? },
        "uffd_unregister" => UffdOp::Unregister { uffd, addr: expr("an address")?, len: expr("a length")? },
        "uffd_move" => {
            let (dst, src, len) = (expr("a destination")?, expr("a source")?, expr("a length")?);
            UffdOp::Move { uffd, dst, src, len, mode: 0 }
        }
        "uffd_copy" => {
            let (dst, len) = (expr("a destination")?, expr("a length")?);
            let value = lex::number(take("a value")?)?;
            UffdOp::Copy { uffd, dst, len, value, mode: 0 }
        }
        _ => {
            let (addr, len) = (expr("an address")?, expr("a length")?);
            match keyword {
                "uffd_register" => UffdOp::Register { uffd, addr, len, mode: 0 },
                "uffd_zeropage" => UffdOp::Zeropage { uffd, addr, len, mode: 0 },
                "uffd_writeprotect" => UffdOp::Writeprotect { uffd, addr, len, mode: 0 },
                "uffd_continue" => UffdOp::Continue { uffd, addr, len, mode: 0 },
                "uffd_poison" => UffdOp::Poison { uffd, addr, len, mode: 0 },
                "uffd_rwprotect" => UffdOp::Rwprotect { uffd, addr, len, mode: 0 },
                other => unreachable!("not a userfaultfd keyword: {other}"),
            }
        }
    };
    // The mode: required for register and writeprotect, optional (0) for
    // the others that have one.
    let (table, required): (&[(u32, &str)], bool) = match &op {
        UffdOp::Register { .. } => (&REGISTER_BITS, true),
        UffdOp::Writeprotect { .. } => (&WRITEPROTECT_BITS, true),
        UffdOp::Rwprotect { .. } => (&RWPROTECT_BITS, true),
        UffdOp::Copy { .. } => (&COPY_BITS, false),
        UffdOp::Zeropage { .. } | UffdOp::Poison { .. } => (&DONTWAKE_BITS, false),
        UffdOp::Continue { .. } => (&CONTINUE_BITS, false),
        UffdOp::Move { .. } => (&MOVE_BITS, false),
        UffdOp::Unregister { .. } | UffdOp::Wake { .. } | UffdOp::Read { .. } | UffdOp::SetMode { .. } => (&[], false),
    };
    let mut op = op;
    let has_mode = !table.is_empty() || required;
    let mode = match toks.get(next) {
        Some(tok) if has_mode => {
            next += 1;
            lex::bits(*tok, table, "mode")?
        }
        None if required => return Err(ParseError::at(end_col, format!("`{keyword}` needs a mode"))),
        _ => 0,
    };
    match &mut op {
        UffdOp::Register { mode: m, .. }
        | UffdOp::Writeprotect { mode: m, .. }
        | UffdOp::Copy { mode: m, .. }
        | UffdOp::Zeropage { mode: m, .. }
        | UffdOp::Poison { mode: m, .. }
        | UffdOp::Continue { mode: m, .. }
        | UffdOp::Move { mode: m, .. }
        | UffdOp::Rwprotect { mode: m, .. } => *m = mode,
        UffdOp::Unregister { .. } | UffdOp::Wake { .. } | UffdOp::Read { .. } | UffdOp::SetMode { .. } => {}
    }
    if let Some(tok) = toks.get(next) {
        return Err(ParseError::at(tok.col, format!("unexpected `{}` after `{keyword}`", tok.text)));
    }
    Ok(op)
}

/// The arguments after the keyword, each pushed through `arg`.
pub fn print_args(op: &UffdOp, arg: &mut dyn FnMut(String), expr: fn(&Expr) -> String) {
    let bits = super::print::bits;
    arg(op.uffd().clone());
    match op {
        UffdOp::Read { .. } => {}
        UffdOp::Wake { addr, len, .. } | UffdOp::Unregister { addr, len, .. } => {
            arg(expr(addr));
            arg(expr(len));
        }
        UffdOp::Register { addr, len, mode, .. } => {
            arg(expr(addr));
            arg(expr(len));
            arg(bits(*mode, &REGISTER_BITS));
        }
        UffdOp::Writeprotect { addr, len, mode, .. } => {
            arg(expr(addr));
            arg(expr(len));
            arg(bits(*mode, &WRITEPROTECT_BITS));
        }
        UffdOp::Rwprotect { addr, len, mode, .. } => {
            arg(expr(addr));
            arg(expr(len));
            arg(bits(*mode, &RWPROTECT_BITS));
        }
        UffdOp::SetMode { enable, disable, .. } => {
            arg(bits(*enable, &FEATURE_BITS));
            arg(bits(*disable, &FEATURE_BITS));
        }
        UffdOp::Copy { dst, len, value, mode, .. } => {
            arg(expr(dst));
            arg(expr(len));
            arg(format!("{value:#x}"));
            if *mode != 0 {
                arg(bits(*mode, &COPY_BITS));
            }
        }
        UffdOp::Move { dst, src, len, mode, .. } => {
            arg(expr(dst));
            arg(expr(src));
            arg(expr(len));
            if *mode != 0 {
                arg(bits(*mode, &MOVE_BITS));
            }
        }
        UffdOp::Zeropage { addr, len, mode, .. }
        | UffdOp::Poison { addr, len, mode, .. }
        | UffdOp::Continue { addr, len, mode, .. } => {
            arg(expr(addr));
            arg(expr(len));
            let table: &[(u32, &str)] =
                if matches!(op, UffdOp::Continue { .. }) { &CONTINUE_BITS } else { &DONTWAKE_BITS };
            if *mode != 0 {
                arg(bits(*mode, table));
            }
        }
    }
}

/// Whether `op` needs Linux 7.3's RWP mode: asking for its features,
/// registering in RWP mode, or its two ioctls. Older kernels reject them
/// (`EINVAL`), so an executor without the mode refuses these steps.
pub fn needs_rwp(op: &super::ast::Op) -> bool {
    match op {
        super::ast::Op::Userfaultfd { features } => features & RWP_FEATURES != 0,
        super::ast::Op::Uffd(UffdOp::Register { mode, .. }) => mode & 8 != 0,
        super::ast::Op::Uffd(UffdOp::Rwprotect { .. } | UffdOp::SetMode { .. }) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::ast::{Expr, Op};
    use super::super::{parse, print};
    use super::UffdOp;

    #[test]
    fn userfaultfd_lines_parse_and_print_canonically() {
        let text = "u = userfaultfd sigbus|move\n\
                    uffd_register u w 4p missing|wp\n\
                    uffd_copy u w 1p 7 wp|dontwake\n\
                    uffd_move u w+1p w+8p 1p\n\
                    t = read w\n\
                    wait t\n\
                    uffd_read u\n\
                    v = uffd_read u\n";
        let s = parse("t.hmm", text).unwrap();
        assert_eq!(s.steps[0].op, Op::Userfaultfd { features: (1 << 7) | (1 << 16) });
        assert_eq!(
            s.steps[2].op,
            Op::Uffd(UffdOp::Copy { uffd: "u".into(), dst: Expr::at("w", 0), len: Expr::num(4096), value: 7, mode: 3 })
        );
        assert_eq!(s.steps[4].bind.as_deref(), Some("t"));
        assert_eq!(
            print(&s),
            "u = userfaultfd sigbus|move\n\
             uffd_register u w 0x4000 missing|wp\n\
             uffd_copy u w 0x1000 0x7 dontwake|wp\n\
             uffd_move u w+0x1000 w+0x8000 0x1000\n\
             t = read w\n\
             wait t\n\
             uffd_read u\n\
             v = uffd_read u\n"
        );
    }

    #[test]
    fn rwp_lines_parse_print_and_need_the_rwp_mode() {
        let text = "u = userfaultfd rwp|rwp_async\n\
                    uffd_register u w 4p rwp\n\
                    uffd_rwprotect u w 4p rwp\n\
                    uffd_rwprotect u w 1p dontwake\n\
                    uffd_set_mode u 0 rwp_async\n\
                    uffd_register u w 4p missing\n";
        let s = parse("t.hmm", text).unwrap();
        assert_eq!(s.steps[0].op, Op::Userfaultfd { features: (1 << 17) | (1 << 18) });
        assert_eq!(s.steps[4].op, Op::Uffd(UffdOp::SetMode { uffd: "u".into(), enable: 0, disable: 1 << 18 }));
        let needs: Vec<bool> = s.steps.iter().map(|step| super::needs_rwp(&step.op)).collect();
        assert_eq!(needs, [true, true, true, true, true, false]);
        assert_eq!(
            print(&s),
            "u = userfaultfd rwp|rwp_async\n\
             uffd_register u w 0x4000 rwp\n\
             uffd_rwprotect u w 0x4000 rwp\n\
             uffd_rwprotect u w 0x1000 dontwake\n\
             uffd_set_mode u 0x0 rwp_async\n\
             uffd_register u w 0x4000 missing\n"
        );
        let e = parse("t", "uffd_rwprotect u w 1p\n").unwrap_err();
        assert!(e.message.contains("needs a mode"), "{e}");
        let e = parse("t", "uffd_set_mode u rwp_async\n").unwrap_err();
        assert!(e.message.contains("features to disable"), "{e}");
    }

    #[test]
    fn userfaultfd_errors_name_the_column() {
        let e = parse("t", "uffd_register u w 1p\n").unwrap_err();
        assert!(e.message.contains("needs a mode"), "{e}");
        let e = parse("t", "uffd_wake u w 1p wp\n").unwrap_err();
        assert_eq!((e.col, e.message.as_str()), (18, "unexpected `wp` after `uffd_wake`"));
        let e = parse("t", "uffd_copy u w 1p 7 missing\n").unwrap_err();
        assert!(e.message.contains("unknown mode `missing`"), "{e}");
        assert!(parse("t", "x = uffd_wake u w 1p\n").unwrap_err().message.contains("no result"));
        assert!(parse("t", "u = userfaultfd frob\n").unwrap_err().message.contains("unknown feature"));
    }
}
