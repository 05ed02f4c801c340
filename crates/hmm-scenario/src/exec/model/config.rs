//! The model machine configured like this host: THP policy, huge zero
//! page, hugetlb pool and swap, read from sysfs and procfs, and the
//! `mmap_min_addr` in force, probed.
//!
//! Linux: `/sys/kernel/mm/transparent_hugepage/{enabled,use_zero_page}`,
//! `/proc/sys/vm/nr_hugepages`, `/proc/swaps`, `round_hint_to_min`.

use hmm_mm::{KernelConfig, ThpMode};

/// The model's configuration matching this host: THP policy and huge zero
/// page from sysfs, the hugetlb pool from /proc/sys/vm/nr_hugepages, no
/// swap unless /proc/swaps lists some. Defaults where a file is missing.
pub fn host_like_config() -> KernelConfig {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let thp = read("/sys/kernel/mm/transparent_hugepage/enabled");
    let thp = if thp.contains("[always]") {
        ThpMode::Always
    } else if thp.contains("[never]") {
        ThpMode::Never
    } else {
        ThpMode::Madvise
    };
    let use_huge_zero_page = read("/sys/kernel/mm/transparent_hugepage/use_zero_page").trim() != "0";
    let hugetlb_2m_pages = read("/proc/sys/vm/nr_hugepages").trim().parse().unwrap_or(0).min(64);
    let has_swap = read("/proc/swaps").lines().count() > 1;
    KernelConfig {
        ram_bytes: 1 << 30,
        thp,
        use_huge_zero_page,
        hugetlb_2m_pages,
        hugetlb_1g_pages: 0,
        swap_pages: if has_swap { 1 << 16 } else { 0 },
        mmap_min_addr: host_mmap_min_addr(),
    }
}

/// This kernel's `mmap_min_addr` as in force, which /proc/sys/vm/
/// mmap_min_addr does not show when an LSM floor is above it (Debian's
/// `CONFIG_LSM_MMAP_MIN_ADDR`, 65536, over the sysctl's 4096): the place
/// the kernel gives a one-page hint of 0x1000 (`round_hint_to_min` raises
/// it to the value, which is free in this process), unmapped again at
/// once. The model's default where the answer says nothing.
fn host_mmap_min_addr() -> u64 {
    const PROT_NONE: u32 = 0;
    const MAP_PRIVATE_ANON: u32 = 0x02 | 0x20;
    match crate::exec::host::sys::mmap(0x1000, 0x1000, PROT_NONE, MAP_PRIVATE_ANON, -1, 0) {
        Ok(addr) => {
            let _ = crate::exec::host::sys::munmap(addr, 0x1000);
            if addr < 0x10_0000 {
                addr
            } else {
                hmm_mm::vma::MMAP_MIN_ADDR
            }
        }
        Err(_) => hmm_mm::vma::MMAP_MIN_ADDR,
    }
}
