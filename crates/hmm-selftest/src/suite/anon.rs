//! Device READ and WRITE of anonymous, shared, hugetlb and file memory
//! (tests 1–11, 19, 20 of `hmm-tests.c`).

use std::sync::Arc;
use std::time::Duration;

use hmm_dmirror::uapi::{HMM_DMIRROR_READ, HMM_DMIRROR_WRITE};
use hmm_types::{Errno, MadviseAdvice, MapFlags, Prot};

use crate::harness::{
    align_window, check_exited_ok, check_ints, check_ok, hmm_dmirror_cmd, hmm_migrate_sys_to_dev, pmd_pagesize, Ctx,
    HmmBuffer, ANON, HMM_BUFFER_SIZE, NTIMES, SHARED_ANON, TWOMEG,
};
use crate::verdict::Verdict;
use crate::{check, check_eq, ok, skip};

/// The device a forked child opens: Linux's tests open
/// `/dev/hmm_dmirror0` (device-private) in the child on both variants.
const CHILD_DEVICE: usize = 0;

fn npages(ctx: &Ctx) -> u64 {
    HMM_BUFFER_SIZE >> ctx.page_shift
}

/// Checks a successful command's counters.
pub(super) fn check_counts(buffer: &HmmBuffer, cpages: u64, faults: u64) -> Verdict {
    check_eq!((buffer.cpages, buffer.faults), (cpages, faults), "(cpages, faults)");
    Ok(())
}

/// Test 1: Fixture setup and teardown only.
pub(crate) fn open_close(_ctx: &Ctx) -> Verdict {
    Ok(())
}

/// Test 2: The device reads anonymous memory: two untouched pages (one
/// `pte_none`, one the zero page) read as zeros.
pub(crate) fn anon_read(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let size = npages << ctx.page_shift;
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(size, Prot::RW, ANON)?;
    let skip_ints = (2 * ctx.page_size / 4) as usize;
    cpu.write_ints(buffer.ptr + 2 * ctx.page_size, buffer.ints() - skip_ints, |i| (i + skip_ints) as i32)?;
    cpu.mprotect(buffer.ptr, size, Prot::READ)?;
    // Page 1 now maps the zero page; page 0 stays empty.
    check_eq!(cpu.read_int(buffer.ptr, (ctx.page_size / 4) as usize)?, 0);
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    let mirror = cpu.read_ints(buffer.mirror, buffer.ints())?;
    check_ints("mirror", &mirror, |i| if i < skip_ints { 0 } else { i as i32 })
}

/// Test 3: READ of a PROT_NONE mapping fails with EFAULT and changes nothing.
pub(crate) fn anon_read_prot(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let size = npages << ctx.page_shift;
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(size, Prot::RW, ANON)?;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    cpu.write_ints(buffer.mirror, buffer.ints(), |i| -(i as i32))?;
    cpu.mprotect(buffer.ptr, size, Prot::NONE)?;
    check_eq!(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages), Err(Errno::Fault));
    cpu.mprotect(buffer.ptr, size, Prot::READ)?;
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)?;
    check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| -(i as i32))
}

/// Test 4: The device writes anonymous memory.
pub(crate) fn anon_write(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(npages << ctx.page_shift, Prot::RW, ANON)?;
    cpu.write_ints(buffer.mirror, buffer.ints(), |i| i as i32)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_WRITE, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)
}

/// Test 5: WRITE to a read-only mapping fails with EPERM and writes nothing;
/// after mprotect(RW) it replaces the zero page.
pub(crate) fn anon_write_prot(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let size = npages << ctx.page_shift;
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(size, Prot::READ, ANON)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, 1))?;
    check_counts(&buffer, 1, 1)?;
    check_eq!(cpu.read_int(buffer.mirror, 0)?, 0);
    cpu.write_ints(buffer.mirror, buffer.ints(), |i| i as i32)?;
    check_eq!(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_WRITE, &mut buffer, npages), Err(Errno::Perm));
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |_| 0)?;
    cpu.mprotect(buffer.ptr, size, Prot::RW)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_WRITE, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)
}

/// Test 6: After fork, a device write in the child (its own file) goes to the
/// child's copy only; with and without THP, with the pages first moved to
/// the device or not.
pub(crate) fn anon_write_child(ctx: &Ctx) -> Verdict {
    for migrate in [false, true] {
        for use_thp in [false, true] {
            let npages = if use_thp { pmd_pagesize() >> ctx.page_shift } else { npages(ctx) };
            let size = npages << ctx.page_shift;
            let cpu = ctx.cpu();
            let map = cpu.mmap(2 * size, Prot::RW, ANON)?;
            let ptr = if use_thp { align_window(map, size) } else { map };
            if use_thp {
                cpu.madvise(ptr, size, MadviseAdvice::HugePage)?;
            }
            let mut buffer = ctx.buffer_at(ptr, size)?;
            cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
            cpu.write_ints(buffer.mirror, buffer.ints(), |i| -(i as i32))?;
            if migrate {
                check_ok(hmm_migrate_sys_to_dev(ctx.fd(), &mut buffer, npages))?;
                check_eq!(buffer.cpages, npages);
            }
            // The child opens device 0 whatever the variant (`hmm_open(0)`).
            let device = CHILD_DEVICE;
            let child = ctx.fork(move |child| {
                let cpu = &child.process;
                check_ints("child ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)?;
                if !migrate {
                    check_ints("child mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| -(i as i32))?;
                }
                let fd = ok!(ok!(child.dmirror.device(device)).open(&cpu.mm));
                let mut buffer = buffer;
                check_ok(hmm_dmirror_cmd(&fd, HMM_DMIRROR_WRITE, &mut buffer, npages))?;
                check_counts(&buffer, npages, 1)?;
                if !migrate {
                    check_ints("child ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| -(i as i32))?;
                }
                Ok(())
            })?;
            check_exited_ok(&child.wait())?;
            check_ints("parent ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)?;
            cpu.munmap(map, 2 * size)?;
            cpu.munmap(buffer.mirror, size)?;
        }
    }
    Ok(())
}

/// Test 7: A shared anonymous mapping: the child's device write is seen by the
/// parent.
pub(crate) fn anon_write_child_shared(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let cpu = ctx.cpu();
    let buffer = ctx.buffer(npages << ctx.page_shift, Prot::RW, SHARED_ANON)?;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    cpu.write_ints(buffer.mirror, buffer.ints(), |i| -(i as i32))?;
    // The child opens device 0 whatever the variant (`hmm_open(0)`).
    let device = CHILD_DEVICE;
    let child = ctx.fork(move |child| {
        let cpu = &child.process;
        check_ints("child ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)?;
        check_ints("child mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| -(i as i32))?;
        let fd = ok!(ok!(child.dmirror.device(device)).open(&cpu.mm));
        let mut buffer = buffer;
        check_ok(hmm_dmirror_cmd(&fd, HMM_DMIRROR_WRITE, &mut buffer, npages))?;
        check_counts(&buffer, npages, 1)?;
        check_ints("child ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| -(i as i32))
    })?;
    check_exited_ok(&child.wait())?;
    check_ints("parent ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| -(i as i32))
}

/// Test 8: WRITE to a THP: one fault round although the device faults in
/// 32-page chunks.
pub(crate) fn anon_write_huge(ctx: &Ctx) -> Verdict {
    let size = 2 * TWOMEG;
    let cpu = ctx.cpu();
    let map = cpu.mmap(size, Prot::RW, ANON)?;
    let ptr = align_window(map, TWOMEG);
    cpu.madvise(ptr, TWOMEG, MadviseAdvice::HugePage)?;
    let npages = TWOMEG >> ctx.page_shift;
    let mut buffer = ctx.buffer_at(ptr, TWOMEG)?;
    cpu.write_ints(buffer.mirror, buffer.ints(), |i| i as i32)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_WRITE, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)
}

/// Test 9: WRITE to a hugetlbfs page.
pub(crate) fn anon_write_hugetlbfs(ctx: &Ctx) -> Verdict {
    let default_hugepage = hmm_types::PMD_SIZE;
    let stats = ctx.kernel.phys().hugetlb_stats(hmm_types::PageSize::Size2M);
    if stats.free <= stats.reserved {
        skip!("Not enough huge pages");
    }
    let size = TWOMEG.next_multiple_of(default_hugepage);
    let cpu = ctx.cpu();
    let Ok(ptr) = cpu.mmap(size, Prot::RW, ANON | MapFlags::HUGETLB) else {
        skip!("Huge page could not be allocated");
    };
    let npages = size >> ctx.page_shift;
    let mut buffer = ctx.buffer_at(ptr, size)?;
    cpu.write_ints(buffer.mirror, buffer.ints(), |i| i as i32)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_WRITE, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)
}

/// Test 10: The device reads a shared mapping of a file in `/tmp` (tmpfs or
/// fs-dax, as the run is set up).
pub(crate) fn file_read(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let size = npages << ctx.page_shift;
    let cpu = ctx.cpu();
    let file = ctx.create_file(size)?;
    let pattern: Vec<u8> = (0..size / 4).flat_map(|i| (i as i32).to_le_bytes()).collect();
    check_eq!(ok!(file.pwrite(0, &pattern)), size as usize);
    let ptr = ok!(cpu.mm.mmap_file(0, size, Prot::READ, MapFlags::SHARED, &file, 0));
    let mut buffer = ctx.buffer_at(ptr, size)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| i as i32)
}

/// Test 11: The device writes a shared mapping of a file in `/tmp`; the file
/// has the data.
pub(crate) fn file_write(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let size = npages << ctx.page_shift;
    let cpu = ctx.cpu();
    let file = ctx.create_file(size)?;
    let ptr = ok!(cpu.mm.mmap_file(0, size, Prot::RW, MapFlags::SHARED, &file, 0));
    let mut buffer = ctx.buffer_at(ptr, size)?;
    cpu.write_ints(buffer.mirror, buffer.ints(), |i| i as i32)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_WRITE, &mut buffer, npages))?;
    check_counts(&buffer, npages, 1)?;
    check_ints("ptr", &cpu.read_ints(buffer.ptr, buffer.ints())?, |i| i as i32)?;
    let mut bytes = vec![0u8; size as usize];
    check_eq!(ok!(file.pread(0, &mut bytes)), size as usize);
    let read: Vec<i32> = bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4"))).collect();
    check_ints("file", &read, |i| i as i32)
}

/// Test 19: READ ten times over fresh buffers.
pub(crate) fn anon_read_multiple(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let cpu = ctx.cpu();
    for c in 0..NTIMES {
        let mut buffer = ctx.buffer(npages << ctx.page_shift, Prot::RW, ANON)?;
        cpu.write_ints(buffer.ptr, buffer.ints(), |i| (i + c) as i32)?;
        check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages))?;
        check_counts(&buffer, npages, 1)?;
        check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| (i + c) as i32)?;
        cpu.munmap(buffer.ptr, buffer.size)?;
        cpu.munmap(buffer.mirror, buffer.size)?;
    }
    Ok(())
}

/// Test 20: READ racing with munmap of half the buffer: either it fails, or it
/// saw everything.
pub(crate) fn anon_teardown(ctx: &Ctx) -> Verdict {
    let npages = npages(ctx);
    let size = npages << ctx.page_shift;
    let cpu = ctx.cpu();
    // A fixed pseudo-random delay per round (splitmix64 of the round), so
    // a failing round can be replayed.
    let jitter = |round: u64| {
        let mut z = round.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for c in 0..NTIMES {
        let mut buffer = ctx.buffer(size, Prot::RW, ANON)?;
        cpu.write_ints(buffer.ptr, buffer.ints(), |i| (i + c) as i32)?;
        let delay = Duration::from_nanos(jitter(c as u64) % 32_000);
        let mm = Arc::clone(&cpu.mm);
        let half = buffer.ptr + size / 2;
        let unmapper = std::thread::spawn(move || {
            std::thread::sleep(delay);
            mm.munmap(half, size / 2)
        });
        let read = hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ, &mut buffer, npages);
        if read.is_ok() {
            check_counts(&buffer, npages, 1)?;
            check_ints("mirror", &cpu.read_ints(buffer.mirror, buffer.ints())?, |i| (i + c) as i32)?;
        }
        check!(unmapper.join().is_ok_and(|r| r.is_ok()), "the munmap thread failed");
        cpu.munmap(buffer.ptr, size / 2)?;
        cpu.munmap(buffer.mirror, size)?;
    }
    Ok(())
}
