//! userfaultfd operations: from [`UffdOp`] to [`UffdCall`] (names
//! resolved), shared by both executors.

use super::{ExecError, UffdCall};
use crate::lang::ast::Expr;
use crate::lang::uffd::UffdOp;

/// The call for `op`, its addresses resolved by `a`.
pub fn resolve(op: &UffdOp, a: &dyn Fn(&Expr) -> Result<u64, ExecError>) -> Result<UffdCall, ExecError> {
    let m = |mode: &u32| u64::from(*mode);
    Ok(match op {
        UffdOp::Register { addr, len, mode, .. } => UffdCall::Register { start: a(addr)?, len: a(len)?, mode: m(mode) },
        UffdOp::Unregister { addr, len, .. } => UffdCall::Unregister { start: a(addr)?, len: a(len)? },
        UffdOp::Copy { dst, len, value, mode, .. } => {
            UffdCall::Copy { dst: a(dst)?, len: a(len)?, value: *value, mode: m(mode) }
        }
        UffdOp::Zeropage { addr, len, mode, .. } => UffdCall::Zeropage { start: a(addr)?, len: a(len)?, mode: m(mode) },
        UffdOp::Writeprotect { addr, len, mode, .. } => {
            UffdCall::Writeprotect { start: a(addr)?, len: a(len)?, mode: m(mode) }
        }
        UffdOp::Continue { addr, len, mode, .. } => UffdCall::Continue { start: a(addr)?, len: a(len)?, mode: m(mode) },
        UffdOp::Move { dst, src, len, mode, .. } => {
            UffdCall::Move { dst: a(dst)?, src: a(src)?, len: a(len)?, mode: m(mode) }
        }
        UffdOp::Poison { addr, len, mode, .. } => UffdCall::Poison { start: a(addr)?, len: a(len)?, mode: m(mode) },
        UffdOp::Wake { addr, len, .. } => UffdCall::Wake { start: a(addr)?, len: a(len)? },
        UffdOp::Read { .. } => UffdCall::Read { fork_file: None },
        UffdOp::Rwprotect { addr, len, mode, .. } => {
            UffdCall::Rwprotect { start: a(addr)?, len: a(len)?, mode: m(mode) }
        }
        UffdOp::SetMode { enable, disable, .. } => UffdCall::SetMode { enable: m(enable), disable: m(disable) },
    })
}

/// The bytes of a COPY source: `len` bytes, each 8 holding `value`
/// (a length that is not a multiple of 8 ends with part of it). `None`
/// when `len` is too large for the source buffer a scenario may ask for.
pub fn copy_source(len: u64, value: u64) -> Option<Vec<u8>> {
    const MAX: u64 = 64 << 20;
    if len > MAX {
        return None;
    }
    Some(value.to_le_bytes().iter().copied().cycle().take(len as usize).collect())
}

/// Whether `msg` is a page fault on the page holding `addr` (any message
/// when `addr` is `None`).
pub fn faults_on(msg: &crate::observe::UffdMsgView, addr: Option<u64>) -> bool {
    match (msg, addr) {
        (_, None) => true,
        (crate::observe::UffdMsgView::Pagefault { address, .. }, Some(addr)) => address & !0xfff == addr & !0xfff,
        _ => false,
    }
}
