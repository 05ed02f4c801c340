//! What `smaps ADDR` reports: the fields of /proc/PID/smaps for the VMA
//! containing ADDR that are deterministic on a quiet machine, in kB as
//! Linux prints them. Left out: `KernelPageSize`/`MMUPageSize` (the
//! model's hugetlb is the only case they differ), `Referenced` (accessed
//! bits the kernel may clear or set behind the scenario's back),
//! `LazyFree` (MADV_FREE clears a folio's swap-backed flag through a
//! per-CPU batch, `folio_mark_lazyfree`, so Linux 6.18 shows 0 kB right
//! after MADV_FREE and the size only once the batch drained), `KSM`,
//! `ProtectionKey` and `VmFlags`.
//!
//! Printed as `Size=16k Rss=4k ... THPeligible=1`, fields that are 0
//! left out (but `Size` and `THPeligible`), so an `expect` line stays short.
//!
//! Linux: `fs/proc/task_mmu.c` (`show_smap`, `__show_smap`).

use core::fmt;

use serde::{Deserialize, Serialize};

/// The fields, in the order smaps prints them, with their kB values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmapsView {
    /// First address of the VMA.
    pub start: u64,
    /// One past its last.
    pub end: u64,
    /// `(name, kB)` for each of [`FIELDS`], in that order.
    pub fields: Vec<(String, u64)>,
    /// `THPeligible`.
    pub thp_eligible: bool,
}

/// The fields `smaps` reports, in Linux's order.
pub const FIELDS: [&str; 17] = [
    "Size",
    "Rss",
    "Pss",
    "Pss_Dirty",
    "Shared_Clean",
    "Shared_Dirty",
    "Private_Clean",
    "Private_Dirty",
    "Anonymous",
    "AnonHugePages",
    "ShmemPmdMapped",
    "FilePmdMapped",
    "Shared_Hugetlb",
    "Private_Hugetlb",
    "Swap",
    "SwapPss",
    "Locked",
];

impl SmapsView {
    /// The kB value of `name` (0 if absent).
    pub fn get(&self, name: &str) -> u64 {
        self.fields.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
    }

    /// The view of the model's statistics.
    pub fn from_model(s: &hmm_mm::proc_smaps::Smaps) -> Self {
        use hmm_mm::proc_smaps::PSS_SHIFT;
        let kb = |bytes: u64| bytes >> 10;
        let values = [
            kb(s.size()),
            kb(s.resident),
            kb(s.pss >> PSS_SHIFT),
            kb(s.pss_dirty >> PSS_SHIFT),
            kb(s.shared_clean),
            kb(s.shared_dirty),
            kb(s.private_clean),
            kb(s.private_dirty),
            kb(s.anonymous),
            kb(s.anonymous_thp),
            kb(s.shmem_thp),
            kb(s.file_thp),
            kb(s.shared_hugetlb),
            kb(s.private_hugetlb),
            kb(s.swap),
            kb(s.swap_pss >> PSS_SHIFT),
            0, // the model has no mlock
        ];
        let fields = FIELDS.iter().zip(values).map(|(n, v)| (n.to_string(), v)).collect();
        Self { start: s.start, end: s.end, fields, thp_eligible: s.thp_eligible }
    }

    /// The entry of /proc/PID/smaps `text` for the VMA containing `addr`:
    /// `Ok(None)` if no VMA contains it, `Err` if the text is not smaps.
    pub fn parse(text: &str, addr: u64) -> Result<Option<Self>, String> {
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some((range, _)) = line.split_once(' ') else { continue };
            let Some((start, end)) = range.split_once('-') else { continue };
            let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) else {
                continue;
            };
            if !(start <= addr && addr < end) {
                continue;
            }
            let mut found: Vec<(String, u64)> = Vec::new();
            let mut thp = None;
            for field in lines.by_ref() {
                let Some((name, value)) = field.split_once(':') else { break };
                if name == "VmFlags" {
                    break;
                }
                let number = value.split_whitespace().next().and_then(|v| v.parse::<u64>().ok());
                match (name, number) {
                    ("THPeligible", Some(v)) => thp = Some(v != 0),
                    (_, Some(v)) => found.push((name.to_string(), v)),
                    _ => {}
                }
            }
            let mut fields = Vec::new();
            for name in FIELDS {
                let value = found.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
                fields.push((name.to_string(), value.ok_or_else(|| format!("smaps has no {name} line"))?));
            }
            let thp_eligible = thp.ok_or("smaps has no THPeligible line")?;
            return Ok(Some(Self { start, end, fields, thp_eligible }));
        }
        Ok(None)
    }
}

impl fmt::Display for SmapsView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, kb)) in self.fields.iter().enumerate() {
            if i == 0 || *kb != 0 {
                write!(f, "{}{name}={kb}k", if i == 0 { "" } else { " " })?;
            }
        }
        write!(f, " THPeligible={}", u8::from(self.thp_eligible))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
100000000000-100000004000 rw-p 00000000 00:00 0 
Size:                 16 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   8 kB
Pss:                   6 kB
Pss_Dirty:             6 kB
Shared_Clean:          0 kB
Shared_Dirty:          4 kB
Private_Clean:         0 kB
Private_Dirty:         4 kB
Referenced:            8 kB
Anonymous:             8 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: rd wr mr mw me ac sd 
7f0000000000-7f0000001000 r--p 00000000 00:00 0 
Size:                  4 kB
";

    #[test]
    fn the_entry_of_the_vma_is_found_and_printed_short() {
        let v = SmapsView::parse(TEXT, 0x1000_0000_1000).unwrap().unwrap();
        assert_eq!((v.start, v.end, v.get("Pss"), v.thp_eligible), (0x1000_0000_0000, 0x1000_0000_4000, 6, false));
        assert_eq!(
            v.to_string(),
            "Size=16k Rss=8k Pss=6k Pss_Dirty=6k Shared_Dirty=4k Private_Dirty=4k Anonymous=8k THPeligible=0"
        );
        assert_eq!(SmapsView::parse(TEXT, 0x2000_0000_0000).unwrap(), None);
        assert!(SmapsView::parse(TEXT, 0x7f00_0000_0000).unwrap_err().contains("no Rss"));
    }
}
