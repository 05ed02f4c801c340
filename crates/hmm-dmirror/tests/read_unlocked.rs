//! `HMM_DMIRROR_READ_UNLOCKED` (Linux 7.3, delta §4.5): READ whose faults
//! let HMM drop the mmap lock, against READ on the same memory.

use std::sync::Arc;
use std::thread;

use hmm_dmirror::uapi::{HMM_DMIRROR_READ, HMM_DMIRROR_READ_UNLOCKED};
use hmm_dmirror::{Dmirror, DmirrorConfig, HmmDmirrorCmd};
use hmm_mm::uffd::{Userfaultfd, O_CLOEXEC, O_NONBLOCK, UFFDIO_REGISTER_MODE_MISSING, UFFD_API};
use hmm_mm::{Kernel, KernelConfig, Mm, ThpMode};
use hmm_types::{Errno, MapFlags, Prot, PAGE_SIZE};

const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const PAGE: u64 = PAGE_SIZE;

fn machine() -> (Arc<Kernel>, Dmirror, Arc<Mm>) {
    let kernel = Kernel::new(KernelConfig { ram_bytes: 64 << 20, thp: ThpMode::Never, ..KernelConfig::default() })
        .expect("boot");
    let dmirror = Dmirror::probe(&kernel, DmirrorConfig::default()).expect("probe");
    let mm = kernel.create_mm().expect("process");
    (kernel, dmirror, mm)
}

/// Uncontended, over a range that starts empty: like READ, one fault round.
#[test]
fn read_unlocked_reads_like_read_with_one_fault_round() {
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let va = mm.mmap(0, 40 * PAGE, Prot::RW, ANON).unwrap();
    for i in 0..40 {
        mm.write_u64(va + i * PAGE, i).unwrap();
    }
    let out = mm.mmap(0, 40 * PAGE, Prot::RW, ANON).unwrap();
    let mut cmd = HmmDmirrorCmd { addr: va, ptr: out, npages: 40, cpages: 0, faults: 0 };
    fd.ioctl(HMM_DMIRROR_READ_UNLOCKED, &mut cmd).unwrap();
    assert_eq!((cmd.cpages, cmd.faults), (40, 1), "two 32-page chunks, one round");
    for i in 0..40 {
        assert_eq!(mm.read_u64(out + i * PAGE), Ok(i));
    }
}

/// Delta §5.3: READ (locked `hmm_range_fault`) of a userfaultfd range is
/// EFAULT and the handler never hears of it.
#[test]
fn read_of_a_userfaultfd_range_is_efault_without_a_message() {
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let uffd = Userfaultfd::new(&mm, O_CLOEXEC | O_NONBLOCK).unwrap();
    uffd.api(UFFD_API, 0).unwrap();
    let va = mm.mmap(0, 4 * PAGE, Prot::RW, ANON).unwrap();
    uffd.register(va, 4 * PAGE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let out = mm.mmap(0, 4 * PAGE, Prot::RW, ANON).unwrap();
    let mut cmd = HmmDmirrorCmd { addr: va, ptr: out, npages: 4, cpages: 0, faults: 0 };
    let error = fd.ioctl(HMM_DMIRROR_READ, &mut cmd).unwrap_err();
    assert_eq!(error.errno(), Errno::Fault);
    assert!(!uffd.poll().readable);
}

/// Delta §4.5: READ_UNLOCKED of a userfaultfd range that a handler serves
/// returns the handler's bytes and still counts one fault round.
#[test]
fn read_unlocked_is_served_by_the_handler() {
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let uffd = Arc::new(Userfaultfd::new(&mm, O_CLOEXEC).unwrap());
    uffd.api(UFFD_API, 0).unwrap();
    let va = mm.mmap(0, 4 * PAGE, Prot::RW, ANON).unwrap();
    uffd.register(va, 4 * PAGE, UFFDIO_REGISTER_MODE_MISSING).unwrap();
    let handler = {
        let uffd = uffd.clone();
        thread::spawn(move || {
            for i in 0..4u8 {
                let msg = uffd.read().unwrap();
                assert_eq!(msg.address(), va + u64::from(i) * PAGE, "pages in order, one per lock drop");
                uffd.copy(msg.address(), &[i + 1; PAGE as usize], 0).unwrap();
            }
        })
    };
    let out = mm.mmap(0, 4 * PAGE, Prot::RW, ANON).unwrap();
    let mut cmd = HmmDmirrorCmd { addr: va, ptr: out, npages: 4, cpages: 0, faults: 0 };
    fd.ioctl(HMM_DMIRROR_READ_UNLOCKED, &mut cmd).unwrap();
    handler.join().unwrap();
    assert_eq!((cmd.cpages, cmd.faults), (4, 1));
    for i in 0..4u8 {
        assert_eq!(mm.read_u64(out + u64::from(i) * PAGE), Ok(u64::from_ne_bytes([i + 1; 8])));
    }
}

/// Delta §4.5: `mmget_not_zero` failing in `dmirror_fault_unlocked` is EFAULT.
#[test]
fn read_unlocked_after_the_process_exited_is_efault() {
    let (_k, dmirror, mm) = machine();
    let fd = dmirror.device(0).unwrap().open(&mm).unwrap();
    let va = mm.mmap(0, PAGE, Prot::RW, ANON).unwrap();
    mm.exit();
    let error = fd.read_unlocked(va, 1, &mut vec![0u8; PAGE as usize]).unwrap_err();
    assert_eq!(error.errno(), Errno::Fault);
}
