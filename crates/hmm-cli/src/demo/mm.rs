//! `hmm demo mm`: the CPU side HMM mirrors, told step by step.

use hmm_mm::{Kernel, KernelConfig, ThpMode};
use hmm_pagetable::Level;
use hmm_types::{MadviseAdvice, MapFlags, Prot, PMD_SIZE};

use super::{expect, narrate, DemoError};
use crate::render::Out;

pub fn run(out: &Out) -> Result<(), DemoError> {
    out.heading("hmm demo mm: the CPU side that a device mirrors");
    let kernel = Kernel::new(KernelConfig { ram_bytes: 256 << 20, thp: ThpMode::Always, ..KernelConfig::default() })?;
    let free_at_boot = kernel.phys().free_frames();
    out.note(&format!("a machine with {} MiB of RAM, THP always", kernel.phys().ram_frames() >> 8));
    let mm = kernel.create_mm()?;
    let narrator = narrate(&mm);

    out.step(1, "mmap 4 MiB of private anonymous memory");
    let va = mm.mmap(0, 2 * PMD_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS)?;
    out.fact(&format!("mapped at {va:#x} (2 MiB aligned, so THPs can back it)"));

    out.step(2, "read the first page: a read fault maps the huge zero page");
    expect(mm.read_u64(va)? == 0, "untouched memory to read as zero")?;
    let (level, entry) = mm.leaf_at(va);
    expect(level == Level::Pmd && entry.pfn() == kernel.phys().huge_zero_pfn(), "a PMD leaf on the huge zero page")?;
    out.fact(&format!("PMD leaf -> huge zero page {}, read-only", entry.pfn()));

    out.step(3, "write the second 2 MiB: a write fault allocates a THP");
    mm.write_u64(va + PMD_SIZE + 64, 0xfeed)?;
    let (level, entry) = mm.leaf_at(va + PMD_SIZE);
    expect(level == Level::Pmd && entry.is_write(), "a writable PMD leaf")?;
    out.fact(&format!("PMD leaf -> THP at {}, writable, order 9", entry.pfn()));

    out.step(4, "write into the huge zero page: split it, then copy one 4K page");
    mm.write_u64(va + 8, 42)?;
    narrator.tell(out);
    expect(mm.leaf_at(va).0 == Level::Pte, "the huge zero PMD to be split into PTEs")?;
    out.fact("the first 2 MiB is now 512 PTEs; one maps a fresh page");

    out.step(5, "fork: private memory becomes copy-on-write in both processes");
    let child = mm.fork()?;
    narrator.tell(out);
    expect(!mm.leaf_at(va + PMD_SIZE).1.is_write(), "the parent's THP to be write-protected")?;
    out.fact("parent and child share the THP read-only");

    out.step(6, "the parent writes: the shared THP splits and one page is copied");
    mm.write_u64(va + PMD_SIZE + 64, 0xbeef)?;
    narrator.tell(out);
    expect(child.read_u64(va + PMD_SIZE + 64)? == 0xfeed, "the child to keep the old value")?;
    out.fact("child still reads 0xfeed, parent reads 0xbeef");

    out.step(7, "mprotect the first 2 MiB read-only");
    mm.mprotect(va, PMD_SIZE, Prot::READ)?;
    narrator.tell(out);
    let denied = mm.write_u64(va, 1).expect_err("a write to read-only memory must fault");
    out.fact(&format!("a CPU write now faults: {denied}"));

    out.step(8, "madvise(DONTNEED) the second 2 MiB, then munmap everything");
    mm.madvise(va + PMD_SIZE, PMD_SIZE, MadviseAdvice::DontNeed)?;
    expect(mm.read_u64(va + PMD_SIZE + 64)? == 0, "DONTNEED memory to read back as zero")?;
    mm.munmap(va, 2 * PMD_SIZE)?;
    narrator.tell(out);

    out.step(9, "both processes exit");
    child.exit();
    mm.exit();
    narrator.tell(out);
    drop((child, mm));
    expect(kernel.phys().free_frames() == free_at_boot, "every frame to be free again")?;
    out.fact("every frame and page-table page is back in the allocator");
    out.note("each notifier line above is what a device mirroring this process would be told,");
    out.note("before the change completed and before any frame was freed.");
    Ok(())
}
