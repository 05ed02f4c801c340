//! The reference device over guard pages (Linux 7.3 delta §7.4): READ,
//! WRITE, READ_UNLOCKED and EXCLUSIVE of a range holding a guard page are
//! EFAULT (their faults fail); SNAPSHOT, which requests no fault, reports
//! the page as NONE; the pages around are untouched.

use std::sync::Arc;

use hmm_dmirror::uapi::prot;
use hmm_dmirror::{Dmirror, DmirrorConfig};
use hmm_mm::{Kernel, KernelConfig, Mm, ThpMode};
use hmm_types::{Errno, MadviseAdvice, MapFlags, Prot, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE;

fn machine() -> (Arc<Kernel>, Dmirror, Arc<Mm>) {
    let kernel = Kernel::new(KernelConfig { ram_bytes: 128 << 20, thp: ThpMode::Never, ..KernelConfig::default() })
        .expect("boot");
    let dmirror =
        Dmirror::probe(&kernel, DmirrorConfig { chunk_pages: 1024, ..DmirrorConfig::default() }).expect("probe");
    let mm = kernel.create_mm().expect("process");
    (kernel, dmirror, mm)
}

#[test]
fn device_access_to_a_guard_page_is_efault() {
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let va = mm.mmap(0, 3 * PAGE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
    for i in 0..3 {
        mm.write_u64(va + i * PAGE, 0x100 + i).unwrap();
    }
    mm.madvise(va + PAGE, PAGE, MadviseAdvice::GuardInstall).unwrap();
    let mut buf = vec![0u8; 3 * PAGE as usize];
    assert_eq!(fd.read(va, 3, &mut buf).map(|_| ()).map_err(|e| e.errno()), Err(Errno::Fault));
    assert_eq!(fd.read_unlocked(va, 3, &mut buf).map(|_| ()).map_err(|e| e.errno()), Err(Errno::Fault));
    assert_eq!(fd.write(va, 3, &buf).map(|_| ()).map_err(|e| e.errno()), Err(Errno::Fault));
    assert_eq!(
        fd.exclusive(va + PAGE, 1, &mut buf[..PAGE as usize]).map(|_| ()).map_err(|e| e.errno()),
        Err(Errno::Fault)
    );
    let mut snap = [0xaau8; 3];
    fd.snapshot(va, 3, &mut snap).unwrap();
    assert_eq!(snap, [prot::WRITE, prot::NONE, prot::WRITE]);
    assert_eq!(mm.read_u64(va), Ok(0x100));
    assert_eq!(mm.read_u64(va + 2 * PAGE), Ok(0x102));
    // Without the guard the same READ succeeds.
    mm.madvise(va + PAGE, PAGE, MadviseAdvice::GuardRemove).unwrap();
    fd.read(va, 3, &mut buf).unwrap();
    assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), 0x100);
}
