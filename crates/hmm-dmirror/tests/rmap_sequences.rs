//! Random sequences of migration to the device, fork, mremap, CPU access,
//! pins and RELEASE over one small region: every access returns the value
//! the process last wrote (or inherited), and nothing hangs (a watchdog
//! aborts a livelock). Before the reverse map, a read after fork and
//! mremap of device pages spun forever, and pins and RELEASE hung too.

use std::sync::Arc;
use std::time::Duration;

use hmm_dmirror::{Dmirror, DmirrorConfig};
use hmm_mm::gup::FollFlags;
use hmm_mm::testing::{Rng, Watchdog};
use hmm_mm::{Kernel, KernelConfig, Mm, ThpMode};
use hmm_types::{MapFlags, MremapFlags, Prot, PAGE_SIZE};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

/// A process: its address space, where its region is, and what each page
/// of it must read.
struct Process {
    mm: Arc<Mm>,
    at: u64,
    values: Vec<u64>,
}

/// The region's length in bytes.
fn len_of(values: &[u64]) -> u64 {
    values.len() as u64 * PAGE_SIZE
}

impl Process {
    fn check(&self, page: u64) {
        let got = self.mm.read_u64(self.at + page * PAGE_SIZE).unwrap();
        assert_eq!(got, self.values[page as usize], "page {page} of the region at {:#x}", self.at);
    }
    /// Moves the region elsewhere with mremap(MAYMOVE|FIXED).
    fn relocate(&mut self) {
        let len = len_of(&self.values);
        let spot = self.mm.mmap(0, len, Prot::RW, ANON).unwrap();
        let flags = MremapFlags::MAYMOVE | MremapFlags::FIXED;
        self.at = self.mm.mremap(self.at, len, len, flags, spot).unwrap();
    }
}

/// `nr` pages; with THP, a 2 MiB region moves to the device as one folio.
fn run(seed: u64, steps: u32, nr: u64, thp: ThpMode) {
    let kernel = Kernel::new(KernelConfig { ram_bytes: 256 << 20, thp, ..KernelConfig::default() }).expect("boot");
    let dmirror = Dmirror::probe(&kernel, DmirrorConfig { chunk_pages: 4096, ..DmirrorConfig::default() }).unwrap();
    let mm = kernel.create_mm().unwrap();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let at = mm.mmap(0, nr * PAGE_SIZE, Prot::RW, ANON).unwrap();
    let mut parent = Process { mm, at, values: (0..nr).map(|i| 0x100 + i).collect() };
    for (i, &value) in parent.values.iter().enumerate() {
        parent.mm.write_u64(at + i as u64 * PAGE_SIZE, value).unwrap();
    }
    let mut children: Vec<Process> = Vec::new();
    let mut rng = Rng::new(seed);
    let mut bounce = vec![0u8; (nr * PAGE_SIZE) as usize];
    for step in 0..steps {
        let page = rng.below(nr);
        match rng.below(9) {
            0 | 1 => {
                let _ = fd.migrate_to_dev(parent.at, nr, &mut bounce);
            }
            2 if children.len() < 2 => {
                let mm = parent.mm.fork().unwrap();
                children.push(Process { mm, at: parent.at, values: parent.values.clone() });
            }
            3 => parent.relocate(),
            4 => {
                if let Some(child) = children.last_mut() {
                    child.relocate();
                }
            }
            5 => {
                let process = pick(&mut parent, &mut children, &mut rng);
                let value = u64::from(step) << 8 | page;
                process.mm.write_u64(process.at + page * PAGE_SIZE, value).unwrap();
                process.values[page as usize] = value;
            }
            6 => {
                let process = pick(&mut parent, &mut children, &mut rng);
                let pin = process.mm.pin_user_pages(process.at + page * PAGE_SIZE, 1, FollFlags::LONGTERM).unwrap();
                drop(pin);
                process.check(page);
            }
            7 => fd.release(),
            _ => {
                if rng.one_in(4) && !children.is_empty() {
                    let child = children.remove(0);
                    child.mm.exit();
                } else {
                    pick(&mut parent, &mut children, &mut rng).check(page);
                }
            }
        }
    }
    for process in children.iter().chain([&parent]) {
        for page in 0..nr {
            process.check(page);
        }
    }
}

fn pick<'a>(parent: &'a mut Process, children: &'a mut [Process], rng: &mut Rng) -> &'a mut Process {
    let k = rng.below(children.len() as u64 + 1) as usize;
    if k == children.len() {
        parent
    } else {
        &mut children[k]
    }
}

#[test]
fn fork_mremap_migrate_and_release_in_random_order() {
    let _watchdog = Watchdog::new("fork/mremap/migrate/release sequences", Duration::from_secs(120));
    for seed in 1..=40 {
        run(seed, 200, 8, ThpMode::Never);
    }
}

#[test]
fn the_same_with_2mib_device_folios() {
    let _watchdog = Watchdog::new("fork/mremap/migrate/release sequences, THP", Duration::from_secs(120));
    for seed in 1..=10 {
        run(seed, 100, 512, ThpMode::Always);
    }
}
