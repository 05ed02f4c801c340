//! Device-exclusive access (tests 25–27 of `hmm-tests.c`).

use hmm_dmirror::uapi::{HMM_DMIRROR_CHECK_EXCLUSIVE, HMM_DMIRROR_EXCLUSIVE, HMM_DMIRROR_WRITE};
use hmm_types::{Errno, Prot};

use crate::harness::{
    check_exited_ok, check_ints, check_ok, hmm_dmirror_cmd, Ctx, HmmBuffer, Process, ANON, HMM_BUFFER_SIZE,
};
use crate::verdict::Verdict;
use crate::{check_eq, Fail};

fn exclusive_buffer(ctx: &Ctx) -> Result<(HmmBuffer, u64), Fail> {
    let npages = HMM_BUFFER_SIZE >> ctx.page_shift;
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(npages << ctx.page_shift, Prot::RW, ANON)?;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_EXCLUSIVE, &mut buffer, npages))?;
    check_eq!(buffer.cpages, npages);
    check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| i as i32)?;
    Ok((buffer, npages))
}

/// Increments every int (each old value must be `i`), then checks `i + 1`.
fn increment_all(cpu: &Process, buffer: &HmmBuffer) -> Verdict {
    for i in 0..buffer.ints() {
        let old = cpu.increment_int(buffer.ptr, i)?;
        check_eq!(old, i as i32, "ptr[{i}] before the increment");
    }
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32 + 1)
}

/// Test 25: CPU accesses revoke exclusivity page by page.
pub(crate) fn exclusive(ctx: &Ctx) -> Verdict {
    let (mut buffer, npages) = exclusive_buffer(ctx)?;
    increment_all(ctx.cpu(), &buffer)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_CHECK_EXCLUSIVE, &mut buffer, npages))
}

/// Test 26: After mprotect(READ), a device write is refused.
pub(crate) fn exclusive_mprotect(ctx: &Ctx) -> Verdict {
    let (mut buffer, npages) = exclusive_buffer(ctx)?;
    ctx.cpu().mprotect(buffer.ptr, buffer.size, Prot::READ)?;
    check_eq!(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_WRITE, &mut buffer, npages), Err(Errno::Perm));
    Ok(())
}

/// Test 27: fork with exclusive pages: both processes write their own copy.
pub(crate) fn exclusive_cow(ctx: &Ctx) -> Verdict {
    let (buffer, _) = exclusive_buffer(ctx)?;
    let child = ctx.fork(move |child| increment_all(&child.process, &buffer))?;
    increment_all(ctx.cpu(), &buffer)?;
    check_exited_ok(&child.wait())
}
