//! What the host runner reads from procfs about its own memory:
//! /proc/self/maps (VMAs), /proc/self/pagemap (per-page bits, frame
//! numbers) and `PAGEMAP_SCAN` (huge pages, the zero page).
//!
//! Linux: `fs/proc/task_mmu.c` (`show_map_vma`, `pagemap_read`,
//! `do_pagemap_scan`).

use std::os::fd::AsRawFd;

use super::calls::Local;
use super::sys;
use crate::observe::{Backing, Outcome, PageView, VmaView};

const PAGE: u64 = 4096;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_GUARD_REGION: u64 = 1 << 58;
const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
const PM_UFFD_WP: u64 = 1 << 57;
const PM_PFRAME_MASK: u64 = (1 << 55) - 1;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
const PAGE_IS_HUGE: u64 = 1 << 6;
/// Most pages one `pagemap` observation reports (as the model).
const MAX_PAGES: u64 = crate::exec::model::MAX_PAGEMAP_PAGES;

impl Local {
    pub(super) fn frame(&self, addr: u64) -> Outcome {
        if self.ksm_running {
            return Outcome::Inconclusive("KSM may merge frames at any time".into());
        }
        match pagemap_words(addr, 1) {
            Ok(words) if words[0] & PM_PRESENT == 0 => Outcome::Same(None),
            Ok(words) if words[0] & PM_PFRAME_MASK == 0 => {
                Outcome::Inconclusive("frame numbers need CAP_SYS_ADMIN".into())
            }
            Ok(words) => Outcome::Value(words[0] & PM_PFRAME_MASK),
            Err(e) => Outcome::Inconclusive(format!("pagemap: {e}")),
        }
    }
}

/// `Err(EFAULT)` unless VMAs allowing writes cover `[addr, addr + 8)`.
pub(super) fn writable(addr: u64) -> Result<(), i32> {
    let text = std::fs::read_to_string("/proc/self/maps").map_err(|_| libc::EIO)?;
    let vmas: Vec<VmaView> = text.lines().filter_map(parse_maps_line).collect();
    let ok = |va: u64| vmas.iter().any(|v| v.start <= va && va < v.end && v.perms.as_bytes()[1] == b'w');
    if ok(addr) && ok(addr + 7) {
        Ok(())
    } else {
        Err(libc::EFAULT)
    }
}

/// The VMAs of /proc/self/maps overlapping `[addr, addr + len)`.
pub(super) fn maps(addr: u64, len: u64) -> Outcome {
    let end = addr.saturating_add(len);
    let text = match std::fs::read_to_string("/proc/self/maps") {
        Ok(text) => text,
        Err(e) => return Outcome::Inconclusive(format!("/proc/self/maps: {e}")),
    };
    let mut vmas = Vec::new();
    for vma in text.lines().filter_map(parse_maps_line) {
        if vma.start < end && addr < vma.end {
            vmas.push(vma);
        }
    }
    Outcome::Maps(vmas)
}

/// One line of /proc/PID/maps: `start-end perms offset dev inode path`.
pub fn parse_maps_line(line: &str) -> Option<VmaView> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.to_string();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim();
    let backing = if path.is_empty() {
        Backing::Anon
    } else if path == "/dev/zero (deleted)" {
        Backing::SharedAnon
    } else if path == "/anon_hugepage (deleted)" {
        Backing::Hugetlb
    } else if let Some(name) = path.strip_prefix("/memfd:") {
        Backing::File(name.trim_end_matches(" (deleted)").to_string())
    } else if let Some(name) = super::device::dax_file_name(path) {
        Backing::File(name)
    } else if super::device::is_devdax_path(path) {
        Backing::File("devdax".into())
    } else {
        Backing::Other(path.to_string())
    };
    Some(VmaView {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        backing,
    })
}

fn open_pagemap() -> std::io::Result<std::fs::File> {
    std::fs::File::open("/proc/self/pagemap")
}

fn pagemap_words(addr: u64, nr: u64) -> std::io::Result<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let file = open_pagemap()?;
    let mut bytes = vec![0u8; nr as usize * 8];
    file.read_exact_at(&mut bytes, addr / PAGE * 8)?;
    Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
}

/// Per-page facts: pagemap for present/swapped/exclusive/file, PAGEMAP_SCAN
/// for huge and the zero page.
pub(super) fn pagemap(addr: u64, len: u64) -> Outcome {
    let start = addr & !(PAGE - 1);
    let nr = len.div_ceil(PAGE).min(MAX_PAGES);
    let words = match pagemap_words(start, nr) {
        Ok(words) => words,
        Err(e) => return Outcome::Inconclusive(format!("/proc/self/pagemap: {e}")),
    };
    let regions = match open_pagemap()
        .map_err(|e| e.raw_os_error().unwrap_or(0))
        .and_then(|f| sys::pagemap_scan(f.as_raw_fd(), start, start + nr * PAGE, PAGE_IS_HUGE | PAGE_IS_PFNZERO))
    {
        Ok(regions) => regions,
        Err(e) => return Outcome::Inconclusive(format!("PAGEMAP_SCAN failed with errno {e}")),
    };
    let pages = words
        .iter()
        .enumerate()
        .map(|(i, &word)| {
            let va = start + i as u64 * PAGE;
            let cats = regions.iter().find(|r| r.start <= va && va < r.end).map_or(0, |r| r.categories);
            let present = word & PM_PRESENT != 0;
            PageView {
                present,
                swapped: word & PM_SWAP != 0,
                exclusive: word & PM_MMAP_EXCLUSIVE != 0,
                file: word & PM_FILE != 0,
                huge: present && cats & PAGE_IS_HUGE != 0,
                zero: present && cats & PAGE_IS_PFNZERO != 0,
                guard: word & PM_GUARD_REGION != 0,
                uffd_wp: word & PM_UFFD_WP != 0,
            }
        })
        .collect();
    Outcome::Pages(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_name_their_backing() {
        let v = parse_maps_line("100000000000-100000002000 rw-s 00001000 00:01 42    /memfd:data (deleted)").unwrap();
        assert_eq!((v.start, v.end, v.offset), (0x1000_0000_0000, 0x1000_0000_2000, 0x1000));
        assert_eq!(v.backing, Backing::File("data".into()));
        let v = parse_maps_line("7f0000000000-7f0000001000 ---p 00000000 00:00 0 ").unwrap();
        assert_eq!((v.perms.as_str(), v.backing), ("---p", Backing::Anon));
    }
}
