//! [`Scenario`] back to text, in the canonical spelling (hex numbers, named
//! bits), which `parse` reads back to the same value.

use core::fmt::Write;

use super::ast::*;

/// The whole scenario, one line per step.
pub fn print(scenario: &Scenario) -> String {
    let mut out = String::new();
    for step in &scenario.steps {
        out.push_str(&print_step(step));
        out.push('\n');
    }
    out
}

/// One step as a line (no newline).
pub fn print_step(step: &Step) -> String {
    let mut out = String::new();
    if let Some(name) = &step.bind {
        let _ = write!(out, "{name} = ");
    }
    out.push_str(step.op.keyword());
    let mut arg = |text: String| {
        out.push(' ');
        out.push_str(&text);
    };
    match &step.op {
        Op::Window { base, len } | Op::Munmap { addr: base, len } => {
            arg(expr(base));
            arg(expr(len));
        }
        Op::Maps { addr, len } | Op::Pagemap { addr, len } | Op::Mseal { addr, len } => {
            arg(expr(addr));
            arg(expr(len));
        }
        Op::Mmap { addr, len, prot: p, flags, file } => {
            arg(expr(addr));
            arg(expr(len));
            arg(prot(*p));
            arg(bits(*flags, &MAP_BITS));
            if let Some((name, offset)) = file {
                arg(format!("fd {name} {}", expr(offset)));
            }
        }
        Op::Mprotect { addr, len, prot: p } => {
            arg(expr(addr));
            arg(expr(len));
            arg(prot(*p));
        }
        Op::Madvise { addr, len, advice } => {
            arg(expr(addr));
            arg(expr(len));
            arg(named(*advice, &ADVICE));
        }
        Op::Mremap { old, old_len, new_len, flags, new_addr } => {
            arg(expr(old));
            arg(expr(old_len));
            arg(expr(new_len));
            arg(bits(*flags, &MREMAP_BITS));
            if let Some(new) = new_addr {
                arg(expr(new));
            }
        }
        Op::Read { addr } => arg(expr(addr)),
        Op::Write { addr, value } | Op::AtomicAdd { addr, value } => {
            arg(expr(addr));
            arg(format!("{value:#x}"));
        }
        Op::Cmpxchg { addr, old, new } => {
            arg(expr(addr));
            arg(format!("{old:#x}"));
            arg(format!("{new:#x}"));
        }
        Op::Fork | Op::Exit => {}
        Op::Proc { name } | Op::Memfd { name } | Op::Close { file: name } => arg(name.clone()),
        Op::Fwrite { file, offset, value } => {
            arg(file.clone());
            arg(expr(offset));
            arg(format!("{value:#x}"));
        }
        Op::Pread { file, offset } | Op::Ftruncate { file, size: offset } => {
            arg(file.clone());
            arg(expr(offset));
        }
        Op::Fallocate { file, offset, len, mode } => {
            arg(file.clone());
            arg(expr(offset));
            arg(expr(len));
            arg(match mode {
                FallocMode::PunchHole => "punch_hole".into(),
                FallocMode::KeepSize => "keep_size".into(),
            });
        }
        Op::Same { addr, other, other_addr } => {
            arg(expr(addr));
            arg(other.clone());
            arg(expr(other_addr));
        }
        Op::Expect { text } => arg(text.clone()),
        Op::Userfaultfd { features } => arg(bits(*features, &super::uffd::FEATURE_BITS)),
        Op::Uffd(op) => super::uffd::print_args(op, &mut arg, expr),
        Op::Wait { access } => arg(access.clone()),
        Op::Device(d) => d.print_args().into_iter().for_each(arg),
        Op::Pin(p) => p.print_args().into_iter().for_each(arg),
        Op::Smaps { addr } => arg(expr(addr)),
    }
    out
}

pub(crate) fn expr(e: &Expr) -> String {
    let magnitude = e.offset.unsigned_abs();
    match (&e.base, e.offset) {
        (None, _) => format!("{magnitude:#x}"),
        (Some(name), 0) => name.clone(),
        (Some(name), o) if o < 0 => format!("{name}-{magnitude:#x}"),
        (Some(name), _) => format!("{name}+{magnitude:#x}"),
    }
}

/// `rw-` letters, or a number when unknown bits are set.
pub fn prot(bits: u32) -> String {
    if bits & !7 != 0 {
        return format!("{bits:#x}");
    }
    PROT_BITS.iter().map(|&(bit, letter)| if bits & bit != 0 { letter } else { '-' }).collect()
}

/// The name of a value from `table`, or the number.
pub fn named(value: u32, table: &[(u32, &str)]) -> String {
    table.iter().find(|(v, _)| *v == value).map_or_else(|| format!("{value:#x}"), |(_, name)| name.to_string())
}

/// Known bits by name, the rest as one hex number, joined by `|`; `0` if none.
pub fn bits(value: u32, table: &[(u32, &str)]) -> String {
    let mut rest = value;
    let mut parts: Vec<String> = Vec::new();
    for &(bit, name) in table {
        if rest & bit == bit && bit != 0 {
            parts.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 || parts.is_empty() {
        parts.push(format!("{rest:#x}"));
    }
    parts.join("|")
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_]{0,3}".prop_filter("not a keyword-like clash", |n| n != "fd")
    }
    fn expr_s() -> impl Strategy<Value = Expr> {
        prop_oneof![
            any::<u64>().prop_map(Expr::num),
            (name(), -(u64::MAX as i128)..=u64::MAX as i128).prop_map(|(n, o)| Expr { base: Some(n), offset: o }),
        ]
    }
    fn op_s() -> impl Strategy<Value = Op> {
        let e = expr_s;
        prop_oneof![
            (e(), e()).prop_map(|(base, len)| Op::Window { base, len }),
            (e(), e(), any::<u32>(), any::<u32>(), proptest::option::of((name(), e())))
                .prop_map(|(addr, len, prot, flags, file)| Op::Mmap { addr, len, prot, flags, file }),
            (e(), e()).prop_map(|(addr, len)| Op::Munmap { addr, len }),
            (e(), e()).prop_map(|(addr, len)| Op::Mseal { addr, len }),
            (e(), e(), any::<u32>()).prop_map(|(addr, len, prot)| Op::Mprotect { addr, len, prot }),
            (e(), e(), any::<u32>()).prop_map(|(addr, len, advice)| Op::Madvise { addr, len, advice }),
            (e(), e(), e(), any::<u32>(), proptest::option::of(e())).prop_map(
                |(old, old_len, new_len, flags, new_addr)| Op::Mremap { old, old_len, new_len, flags, new_addr }
            ),
            e().prop_map(|addr| Op::Read { addr }),
            (e(), any::<u64>()).prop_map(|(addr, value)| Op::Write { addr, value }),
            (e(), any::<u64>()).prop_map(|(addr, value)| Op::AtomicAdd { addr, value }),
            (e(), any::<u64>(), any::<u64>()).prop_map(|(addr, old, new)| Op::Cmpxchg { addr, old, new }),
            Just(Op::Fork),
            Just(Op::Exit),
            name().prop_map(|name| Op::Proc { name }),
            name().prop_map(|name| Op::Memfd { name }),
            (name(), e(), any::<u64>()).prop_map(|(file, offset, value)| Op::Fwrite { file, offset, value }),
            (name(), e()).prop_map(|(file, offset)| Op::Pread { file, offset }),
            (name(), e()).prop_map(|(file, size)| Op::Ftruncate { file, size }),
            (name(), e(), e(), prop_oneof![Just(FallocMode::PunchHole), Just(FallocMode::KeepSize)])
                .prop_map(|(file, offset, len, mode)| Op::Fallocate { file, offset, len, mode }),
            name().prop_map(|file| Op::Close { file }),
            (e(), e()).prop_map(|(addr, len)| Op::Maps { addr, len }),
            (e(), e()).prop_map(|(addr, len)| Op::Pagemap { addr, len }),
            (e(), name(), e()).prop_map(|(addr, other, other_addr)| Op::Same { addr, other, other_addr }),
            "[a-z0-9]{1,4}( [a-z0-9+]{1,6}){0,3}".prop_map(|text| Op::Expect { text }),
            any::<u32>().prop_map(|features| Op::Userfaultfd { features }),
            name().prop_map(|access| Op::Wait { access }),
            e().prop_map(|addr| Op::Smaps { addr }),
            uffd_op_s(),
            pin_op_s(),
        ]
    }
    fn pin_op_s() -> impl Strategy<Value = Op> {
        use super::super::pin::{GupCmd, PinOp as P};
        let e = expr_s;
        let cmd = proptest::sample::select(GupCmd::ALL.map(|(c, _)| c).to_vec());
        prop_oneof![
            Just(P::Open),
            (name(), cmd, e(), e(), any::<u32>(), proptest::option::of(any::<u32>()))
                .prop_map(|(file, cmd, addr, len, foll, per_call)| P::Run { file, cmd, addr, len, foll, per_call }),
            (name(), e(), e(), any::<u32>()).prop_map(|(file, addr, len, flags)| P::Start { file, addr, len, flags }),
            name().prop_map(|file| P::Stop { file }),
            (name(), any::<u64>()).prop_map(|(file, npages)| P::Read { file, npages }),
        ]
        .prop_map(Op::Pin)
    }
    fn uffd_op_s() -> impl Strategy<Value = Op> {
        use super::super::uffd::UffdOp as U;
        let e = expr_s;
        prop_oneof![
            (name(), e(), e(), any::<u32>()).prop_map(|(uffd, addr, len, mode)| U::Register { uffd, addr, len, mode }),
            (name(), e(), e()).prop_map(|(uffd, addr, len)| U::Unregister { uffd, addr, len }),
            (name(), e(), e(), any::<u64>(), any::<u32>()).prop_map(|(uffd, dst, len, value, mode)| U::Copy {
                uffd,
                dst,
                len,
                value,
                mode
            }),
            (name(), e(), e(), any::<u32>()).prop_map(|(uffd, addr, len, mode)| U::Zeropage { uffd, addr, len, mode }),
            (name(), e(), e(), any::<u32>()).prop_map(|(uffd, addr, len, mode)| U::Writeprotect {
                uffd,
                addr,
                len,
                mode
            }),
            (name(), e(), e(), any::<u32>()).prop_map(|(uffd, addr, len, mode)| U::Continue { uffd, addr, len, mode }),
            (name(), e(), e(), e(), any::<u32>()).prop_map(|(uffd, dst, src, len, mode)| U::Move {
                uffd,
                dst,
                src,
                len,
                mode
            }),
            (name(), e(), e(), any::<u32>()).prop_map(|(uffd, addr, len, mode)| U::Poison { uffd, addr, len, mode }),
            (name(), e(), e()).prop_map(|(uffd, addr, len)| U::Wake { uffd, addr, len }),
            name().prop_map(|uffd| U::Read { uffd }),
            (name(), e(), e(), any::<u32>()).prop_map(|(uffd, addr, len, mode)| U::Rwprotect { uffd, addr, len, mode }),
            (name(), any::<u32>(), any::<u32>()).prop_map(|(uffd, enable, disable)| U::SetMode {
                uffd,
                enable,
                disable
            }),
        ]
        .prop_map(Op::Uffd)
    }

    proptest! {
        #[test]
        fn print_then_parse_is_identity(ops in proptest::collection::vec((proptest::option::of(name()), op_s()), 0..12)) {
            let steps: Vec<Step> = ops
                .into_iter()
                .enumerate()
                .map(|(i, (bind, op))| {
                    let bindable = op.has_result();
                    Step { line: i + 1, bind: if bindable { bind } else { None }, op }
                })
                .collect();
            let scenario = Scenario { steps };
            let text = print(&scenario);
            let back = parse("gen", &text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(back, scenario);
        }
    }

    #[test]
    fn canonical_spelling() {
        let s = parse("t", "a = mmap w+4p 2p rw- private|anon|0x8\nmadvise a 1p 0x63\nmadvise a 1p 25\n").unwrap();
        assert_eq!(
            print(&s),
            "a = mmap w+0x4000 0x2000 rw- private|anon|0x8\nmadvise a 0x1000 0x63\nmadvise a 0x1000 collapse\n"
        );
        let s = parse("t", "madvise w 1p 102\nmadvise w 1p guard_remove\nmseal w+1p 1\n").unwrap();
        assert_eq!(print(&s), "madvise w 0x1000 guard_install\nmadvise w 0x1000 guard_remove\nmseal w+0x1000 0x1\n");
    }
}
