//! The model machine configured like this host: THP policy, huge zero
//! page, hugetlb pool and swap, read from sysfs and procfs.
//!
//! Linux: `/sys/kernel/mm/transparent_hugepage/{enabled,use_zero_page}`,
//! `/proc/sys/vm/nr_hugepages`, `/proc/swaps`.

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
    }
}
