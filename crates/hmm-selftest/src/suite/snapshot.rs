//! SNAPSHOT: the byte encoding over every kind of mapping (tests 21–23 of
//! `hmm-tests.c`).

use hmm_dmirror::uapi::{prot, HMM_DMIRROR_SNAPSHOT};
use hmm_types::{MapFlags, PageSize, Prot, PMD_SIZE};

use crate::harness::{check_ok, hmm_dmirror_cmd, hmm_migrate_sys_to_dev, Ctx, ANON, TWOMEG};
use crate::verdict::Verdict;
use crate::{check, check_eq, ok, skip};

/// Test 21: A private mapping of the device file (`vm_insert_page`, a
/// VM_MIXEDMAP of normal pages) reads as READ.
pub(crate) fn mixedmap(ctx: &Ctx) -> Verdict {
    let cpu = ctx.cpu();
    let ptr = ok!(ctx.fd().mmap(1, Prot::RW, MapFlags::PRIVATE));
    let mut buffer = ctx.buffer_at(ptr, ctx.page_size)?;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_SNAPSHOT, &mut buffer, 1))?;
    check_eq!(buffer.cpages, 1);
    let mut m = [0u8; 1];
    ok!(cpu.mm.read_bytes(buffer.mirror, &mut m));
    check_eq!(m[0], prot::READ);
    Ok(())
}

/// Test 22: Seven pages, seven kinds: no read right, no VMA, the zero page, a
/// read-only page, a writable page, this device's page, another device's.
pub(crate) fn snapshot(ctx: &Ctx) -> Verdict {
    let page = ctx.page_size;
    let npages = 7;
    let cpu = ctx.cpu();
    let mut buffer = ctx.buffer(npages * page, Prot::NONE, ANON)?;
    let p = buffer.ptr;
    cpu.munmap(p + page, page)?;
    cpu.mprotect(p + 2 * page, page, Prot::READ)?;
    check_eq!(cpu.read_int(p + 2 * page, 0)?, 0);
    cpu.mprotect(p + 3 * page, page, Prot::RW)?;
    cpu.write_ints(p + 3 * page, 1, |_| 3)?;
    cpu.mprotect(p + 3 * page, page, Prot::READ)?;
    cpu.mprotect(p + 4 * page, 3 * page, Prot::RW)?;
    cpu.write_ints(p + 4 * page, 1, |_| 4)?;
    buffer.ptr = p + 5 * page;
    check_ok(hmm_migrate_sys_to_dev(ctx.fd(), &mut buffer, 1))?;
    check_eq!(buffer.cpages, 1);
    buffer.ptr = p + 6 * page;
    check_ok(hmm_migrate_sys_to_dev(ctx.fd1(), &mut buffer, 1))?;
    check_eq!(buffer.cpages, 1);
    buffer.ptr = p;
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_SNAPSHOT, &mut buffer, npages))?;
    check_eq!(buffer.cpages, npages);
    let mut m = [0u8; 7];
    ok!(cpu.mm.read_bytes(buffer.mirror, &mut m));
    let (local, remote) = if ctx.variant.is_private() {
        (prot::DEV_PRIVATE_LOCAL | prot::WRITE, prot::NONE)
    } else {
        (prot::DEV_COHERENT_LOCAL | prot::WRITE, prot::DEV_COHERENT_REMOTE | prot::WRITE)
    };
    let expected = [prot::ERROR, prot::ERROR, prot::ZERO | prot::READ, prot::READ, prot::WRITE, local, remote];
    check_eq!(m, expected, "snapshot bytes");
    Ok(())
}

/// Test 23: A hugetlbfs page is reported at its map order (PMD or PUD).
pub(crate) fn compound(ctx: &Ctx) -> Verdict {
    let stats = ctx.kernel.phys().hugetlb_stats(PageSize::Size2M);
    if stats.free <= stats.reserved {
        skip!("Not enough huge pages");
    }
    let size = TWOMEG.next_multiple_of(PMD_SIZE);
    let cpu = ctx.cpu();
    let Ok(ptr) = cpu.mmap(size, Prot::RW, ANON | MapFlags::HUGETLB) else {
        skip!("Huge page could not be allocated");
    };
    let npages = size >> ctx.page_shift;
    let mut buffer = ctx.buffer_at(ptr, size)?;
    cpu.write_ints(buffer.ptr, buffer.ints(), |i| i as i32)?;
    let mut m = vec![0u8; npages as usize];
    for (rights, prot_bits) in [(prot::WRITE, Prot::RW), (prot::READ, Prot::READ)] {
        cpu.mprotect(buffer.ptr, size, prot_bits)?;
        check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_SNAPSHOT, &mut buffer, npages))?;
        check_eq!(buffer.cpages, npages);
        ok!(cpu.mm.read_bytes(buffer.mirror, &mut m));
        let level = if m[0] & prot::PUD != 0 { prot::PUD } else { prot::PMD };
        check!(m.iter().all(|&b| b == rights | level), "snapshot {:02x?}…, expected {:#04x}", &m[..4], rights | level);
    }
    Ok(())
}
