//! Races between the device's commands and the CPU: two devices migrate the
//! same pages back and forth while a third reads them through its mirror
//! and CPU threads read them and write to their neighbours. Every page
//! holds a value that never changes, so whatever interleaving happens,
//! every successful read must see it, and nothing may panic, deadlock or
//! leak device pages. Iteration counts, not time, bound the test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use hmm_dmirror::{Dmirror, DmirrorConfig};
use hmm_mm::{Kernel, KernelConfig, ThpMode};
use hmm_types::{Errno, MapFlags, Prot, PAGE_SIZE};

const PAGES: u64 = 64;
const ROUNDS: usize = 300;
const PAGE: usize = PAGE_SIZE as usize;

fn tag(page: u64) -> u64 {
    0x7a9_0000 + page
}

#[test]
fn migrations_reads_and_cpu_accesses_race_without_losing_data() {
    let kernel =
        Kernel::new(KernelConfig { ram_bytes: 256 << 20, thp: ThpMode::Never, ..KernelConfig::default() }).unwrap();
    let dmirror =
        Arc::new(Dmirror::probe(&kernel, DmirrorConfig { chunk_pages: 1024, ..DmirrorConfig::default() }).unwrap());
    let mm = kernel.create_mm().unwrap();
    // Even pages hold fixed tags; odd pages are scratch the CPU writes.
    let va = mm.mmap(0, PAGES * PAGE_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
    for page in 0..PAGES {
        mm.write_u64(va + page * PAGE_SIZE, tag(page)).unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for minor in [0, 1] {
        let (dmirror, mm) = (dmirror.clone(), mm.clone());
        threads.push(thread::spawn(move || {
            let fd = dmirror.device(minor).unwrap().open(&mm).unwrap();
            let mut buf = vec![0u8; PAGES as usize * PAGE];
            for round in 0..ROUNDS {
                // The read-back may miss pages another device or the CPU
                // took meanwhile: ENOENT. What it did read must be right.
                match fd.migrate_to_dev(va, PAGES, &mut buf) {
                    Ok(_) => check_tags(&buf, "migrate read-back"),
                    Err(e) => assert_eq!(e.errno(), Errno::NoEnt, "round {round}: {e}"),
                }
                fd.migrate_to_sys(va, PAGES).unwrap();
            }
        }));
    }
    {
        let (dmirror, mm, done) = (dmirror.clone(), mm.clone(), done.clone());
        threads.push(thread::spawn(move || {
            let fd = dmirror.device(2).unwrap().open(&mm).unwrap();
            let mut buf = vec![0u8; PAGES as usize * PAGE];
            while !done.load(Ordering::Acquire) {
                fd.read(va, PAGES, &mut buf).unwrap();
                check_tags(&buf, "coherent device READ");
            }
        }));
    }
    for offset in [0, 1] {
        let (mm, done) = (mm.clone(), done.clone());
        threads.push(thread::spawn(move || {
            let mut n = 0u64;
            while !done.load(Ordering::Acquire) {
                for page in (offset..PAGES).step_by(2) {
                    let at = va + page * PAGE_SIZE;
                    assert_eq!(mm.read_u64(at).unwrap(), tag(page), "CPU read of page {page}");
                    // A write beside the tag: dirties the page (and, for a
                    // page on a device, brings it back first).
                    mm.write_u64(at + 8, n).unwrap();
                }
                n += 1;
            }
        }));
    }
    let migrators: Vec<_> = threads.drain(..2).collect();
    for t in migrators {
        t.join().expect("a migrating device panicked");
    }
    done.store(true, Ordering::Release);
    for t in threads {
        t.join().expect("a reader panicked");
    }
    // Every file is closed, so all device memory was evicted: each page is
    // back in RAM with its tag.
    for page in 0..PAGES {
        let word = mm.pagemap_entry(va + page * PAGE_SIZE).unwrap();
        assert_ne!(word & hmm_mm::proc_pagemap::PM_PRESENT, 0, "page {page} is in RAM: {word:#x}");
        assert_eq!(mm.read_u64(va + page * PAGE_SIZE).unwrap(), tag(page));
    }
    mm.exit();
}

fn check_tags(buf: &[u8], what: &str) {
    for page in 0..PAGES as usize {
        let word = u64::from_le_bytes(buf[page * PAGE..page * PAGE + 8].try_into().unwrap());
        assert_eq!(word, tag(page as u64), "{what}: page {page}");
    }
}
