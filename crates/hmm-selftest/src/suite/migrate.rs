//! Migration to device memory and back (tests 12–18, 24, 28, 29 of
//! `hmm-tests.c`).

use hmm_dmirror::uapi::{prot, HMM_DMIRROR_READ, HMM_DMIRROR_RELEASE, HMM_DMIRROR_SNAPSHOT};
use hmm_mm::gup_test::{GupTestCmd, GupTestFile, FOLL_LONGTERM, FOLL_WRITE};
use hmm_types::{Errno, MapFlags, Prot};

use super::anon::check_counts;
use crate::harness::{
    check_ints, check_ok, hmm_dmirror_cmd, hmm_migrate_dev_to_sys, hmm_migrate_sys_to_dev, Ctx, ExitStatus, HmmBuffer,
    ANON, HMM_BUFFER_SIZE, NTIMES, SHARED_ANON, SIGKILL,
};
use crate::verdict::Verdict;
use crate::{check, check_eq, ok, skip};

fn npages(ctx: &Ctx) -> u64 {
    HMM_BUFFER_SIZE >> ctx.page_shift
}

/// Fills `buffer` with `ptr = i`, moves its `npages` to the device and
/// checks the read-back (`mirror == i`): the start of most tests here.
fn fill_and_migrate(ctx: &Ctx, buffer: &mut HmmBuffer, npages: u64) -> Verdict {
    let cpu = ctx.cpu();
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    check_ok(hmm_migrate_sys_to_dev(ctx.fd(), buffer, npages))?;
    check_eq!(buffer.cpages, npages);
    check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| i as i32)
}

/// Test 12: Anonymous memory moves to the device and reads back.
pub(crate) fn migrate(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let mut buffer = ctx.buffer(npages << ctx.page_shift, Prot::RW, ANON)?;
    fill_and_migrate(ctx, &mut buffer, npages)
}

/// Test 13: The COW copies of a private mapping of a file in `/tmp` are
/// anonymous: they move.
pub(crate) fn migrate_file_private(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let size = npages << ctx.page_shift;
    let cpu = ctx.cpu();
    let file = ctx.create_file(size)?;
    let ptr = ok!(cpu.mm.mmap_file(0, size, Prot::RW, MapFlags::PRIVATE, &file, 0));
    let mut buffer = ctx.buffer_at(ptr, size)?;
    fill_and_migrate(ctx, &mut buffer, npages)
}

/// Test 14: CPU reads fault half the pages back; migrating again handles the
/// mix of system and device pages.
pub(crate) fn migrate_fault(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(npages << ctx.page_shift, Prot::RW, ANON)?;
    fill_and_migrate(ctx, &mut buffer, npages)?;
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints() / 2)?, |i| i as i32)?;
    check_ok(hmm_migrate_sys_to_dev(ctx.fd(), &mut buffer, npages))?;
    check_eq!(buffer.cpages, npages);
    check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| i as i32)
}

/// Test 15: RELEASE evicts the device's memory; the data is still there.
pub(crate) fn migrate_release(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(npages << ctx.page_shift, Prot::RW, ANON)?;
    fill_and_migrate(ctx, &mut buffer, npages)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_RELEASE, &mut buffer, npages))?;
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints() / 2)?, |i| i as i32)
}

/// Test 16: Shared anonymous memory (shmem) does not migrate: the read-back
/// finds nothing.
pub(crate) fn migrate_shared(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let mut buffer = ctx.buffer(npages << ctx.page_shift, Prot::RW, SHARED_ANON)?;
    check_eq!(hmm_migrate_sys_to_dev(ctx.fd(), &mut buffer, npages), Err(Errno::NoEnt));
    Ok(())
}

/// Test 17: Migration over holes, PROT_NONE, the zero page, read-only and
/// writable pages, and another device's pages.
pub(crate) fn migrate_mixed(ctx: &Ctx) -> Verdict {
    let page = ctx.page_size;
    let npages = 6;
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(npages * page, Prot::NONE, ANON)?;
    let p = buffer.ptr;
    check_eq!(hmm_migrate_sys_to_dev(ctx.fd1(), &mut buffer, npages), Err(Errno::Inval));
    cpu.munmap(p + page, page)?;
    check_eq!(hmm_migrate_sys_to_dev(ctx.fd1(), &mut buffer, 3), Err(Errno::Inval));
    // Page 2: the zero page, read only.
    cpu.mprotect(p + 2 * page, page, Prot::READ)?;
    let val = cpu.read_int(p + 2 * page, 0)? + 3;
    check_eq!(val, 3);
    // Page 3: a read-only data page.
    cpu.mprotect(p + 3 * page, page, Prot::RW)?;
    cpu.write_ints(p + 3 * page, 1, |_| val)?;
    cpu.mprotect(p + 3 * page, page, Prot::READ)?;
    // Pages 4 and 5: writable data pages.
    cpu.mprotect(p + 4 * page, 2 * page, Prot::RW)?;
    cpu.write_ints(p + 4 * page, 1, |_| val)?;
    cpu.write_ints(p + 5 * page, 1, |_| val)?;
    buffer.ptr = p + 2 * page;
    check_ok(hmm_migrate_sys_to_dev(ctx.fd1(), &mut buffer, 4))?;
    check_eq!(buffer.cpages, 4);
    // Page 5 is on device 1 now: device 0 does not take it.
    buffer.ptr = p + 5 * page;
    check_eq!(hmm_migrate_sys_to_dev(ctx.fd(), &mut buffer, 1), Err(Errno::NoEnt));
    Ok(())
}

/// Test 18: Migrate ten times; the private variant comes back through CPU
/// faults, the coherent one through MIGRATE_TO_SYS.
pub(crate) fn migrate_multiple(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let cpu = ctx.cpu();
    for _ in 0..NTIMES {
        let mut buffer = ctx.buffer(npages << ctx.page_shift, Prot::RW, ANON)?;
        cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
        check_ok(hmm_migrate_sys_to_dev(ctx.fd(), &mut buffer, npages))?;
        check_eq!(buffer.cpages, npages);
        check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| i as i32)?;
        if !ctx.variant.is_private() {
            check_ok(hmm_migrate_dev_to_sys(ctx.fd(), &mut buffer, npages))?;
            check_eq!(buffer.cpages, npages);
        }
        check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)?;
        cpu.munmap(buffer.ptr, buffer.size)?;
        cpu.munmap(buffer.mirror, buffer.size)?;
    }
    Ok(())
}

/// Test 24: Two devices read the same pages; after one moves them to its
/// memory, the other faults them back.
pub(crate) fn double_map(ctx: &Ctx) -> Verdict {
    let npages = 6;
    let size = npages * ctx.page_size;
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(size, Prot::RW, ANON)?;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    cpu.mprotect(buffer.ptr, size, Prot::READ)?;
    for fd in [ctx.fd(), ctx.fd1()] {
        check_ok(hmm_dmirror_cmd(fd, HMM_DMIRROR_READ, &mut buffer, npages))?;
        check_counts(&buffer, npages, 1)?;
        check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| i as i32)?;
    }
    check_ok(hmm_migrate_sys_to_dev(ctx.fd1(), &mut buffer, npages))?;
    check_eq!(buffer.cpages, npages);
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| i as i32)
}

/// Test 28: GUP and pins of device pages: plain GUP migrates device-private
/// pages only; long-term pins migrate every device page. Skips without
/// the `gup_test` debugfs file, as Linux's does.
pub(crate) fn hmm_gup_test(ctx: &Ctx) -> Verdict {
    if !ctx.gup_test {
        skip!("Skipping test, could not find gup_test driver");
    }
    let npages = 4;
    let page = ctx.page_size;
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(npages * page, Prot::RW, ANON)?;
    fill_and_migrate(ctx, &mut buffer, npages)?;
    let mm = &cpu.mm;
    // Through the gup_test driver, one page each, FOLL_WRITE: GUP_BASIC_TEST
    // and GUP_FAST_BENCHMARK get and put a page; PIN_FAST_BENCHMARK with
    // FOLL_LONGTERM and PIN_LONGTERM_BENCHMARK pin and unpin one.
    let gup = GupTestFile::new();
    let calls = [
        (GupTestCmd::GupBasic, FOLL_WRITE),
        (GupTestCmd::GupFast, FOLL_WRITE),
        (GupTestCmd::PinFast, FOLL_WRITE | FOLL_LONGTERM),
        (GupTestCmd::PinLongterm, FOLL_WRITE),
    ];
    for (i, (cmd, flags)) in calls.into_iter().enumerate() {
        // The kernel's test asserts only that the ioctl succeeds.
        ok!(gup.run(mm, cmd, buffer.ptr + i as u64 * page, page, 1, flags));
    }
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_SNAPSHOT, &mut buffer, npages))?;
    check_eq!(buffer.cpages, npages);
    let mut m = [0u8; 4];
    ok!(mm.read_bytes(buffer.mirror, &mut m));
    let got_by_gup = if ctx.variant.is_private() { prot::WRITE } else { prot::DEV_COHERENT_LOCAL | prot::WRITE };
    check_eq!(m, [got_by_gup, got_by_gup, prot::WRITE, prot::WRITE], "snapshot after GUP and pins");
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)
}

/// Test 29: Copy-on-write of pages in device memory: the parent's write brings
/// its pages back and copies them while the child lives.
pub(crate) fn hmm_cow_in_device(ctx: &Ctx) -> Verdict {
    let npages = 4;
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(npages * ctx.page_size, Prot::RW, ANON)?;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    check_ok(hmm_migrate_sys_to_dev(ctx.fd(), &mut buffer, npages))?;
    check_eq!(buffer.cpages, npages);
    let child = ctx.fork(|child| {
        while !child.killed() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    })?;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    child.kill();
    check_eq!(child.wait(), ExitStatus::Signaled(SIGKILL));
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_SNAPSHOT, &mut buffer, npages))?;
    check_eq!(buffer.cpages, npages);
    let mut m = [0u8; 4];
    ok!(cpu.mm.read_bytes(buffer.mirror, &mut m));
    check!(m.iter().all(|&b| b == prot::WRITE), "snapshot {m:02x?}, expected every page WRITE");
    Ok(())
}
