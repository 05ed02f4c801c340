//! The DMA helpers against the model's device: each test states what
//! Linux 7.3's `mm/hmm.c` does (delta §2.2–§2.5).

use std::sync::Arc;

use parking_lot::Mutex;

use hmm_mm::testing::kernel;
use hmm_notifier::{IntervalNotifier, IntervalNotifierOps};
use hmm_types::{Errno, MadviseAdvice, MapFlags, NotifierRange, Pfn, Prot, PAGE_SHIFT, PAGE_SIZE};

use super::*;
use crate::pfn::{HMM_PFN_ERROR, HMM_PFN_REQ_FAULT, HMM_PFN_WRITE};
use crate::{range_fault, Range};

const IOVA_BASE: u64 = 0x1_0000_0000;

fn iommu(pages: u64) -> SoftDmaDevice {
    SoftDmaDevice::new(SoftDmaConfig { iommu: Some((IOVA_BASE, pages * PAGE_SIZE)), ..SoftDmaConfig::default() })
}

/// A VALID, writable word for frame `pfn`, as `range_fault` writes it.
fn valid(pfn: u64) -> u64 {
    HMM_PFN_VALID | HMM_PFN_WRITE | pfn
}

#[test]
fn alloc_refuses_devices_needing_syncs_or_bounces_and_a_zero_entry_size() {
    for config in [
        SoftDmaConfig { needs_sync: true, ..SoftDmaConfig::default() },
        SoftDmaConfig { addressing_limited: true, ..SoftDmaConfig::default() },
    ] {
        let error = hmm_dma_map_alloc(&SoftDmaDevice::new(config), 4, PAGE_SIZE).unwrap_err();
        assert_eq!(error.errno(), Errno::OpNotSupp);
    }
    let dev = iommu(16);
    assert_eq!(hmm_dma_map_alloc(&dev, 4, 0).unwrap_err().errno(), Errno::Inval);
    assert_eq!(dev.stats().reservations, 0, "nothing reserved on failure");
}

#[test]
fn alloc_reserves_nr_entries_pages_of_iova_or_keeps_a_dma_list_when_unmaps_are_needed() {
    // An IOMMU with room: one reservation of nr_entries pages, even with
    // 2 MiB entries, and no DMA list.
    let dev = iommu(64);
    let map = hmm_dma_map_alloc(&dev, 8, 512 * PAGE_SIZE).unwrap();
    assert_eq!(map.iova().map(|r| r.len), Some(8 * PAGE_SIZE));
    assert!(!map.has_dma_list());
    assert_eq!(map.pfn_list(), &[0; 8]);
    hmm_dma_map_free(&dev, map).unwrap();
    assert_eq!(dev.stats().reservations, 0);
    // The IOVA space is too small: per-page mode with a DMA list (an
    // IOMMU needs unmaps).
    let small = iommu(4);
    let map = hmm_dma_map_alloc(&small, 8, PAGE_SIZE).unwrap();
    assert!(map.iova().is_none() && map.has_dma_list());
    // Plain dma-direct: neither; with unmaps required (DMA-API debug): a list.
    let direct = SoftDmaDevice::new(SoftDmaConfig::default());
    let map = hmm_dma_map_alloc(&direct, 8, PAGE_SIZE).unwrap();
    assert!(map.iova().is_none() && !map.has_dma_list());
    let debug = SoftDmaDevice::new(SoftDmaConfig { direct_needs_unmap: true, ..SoftDmaConfig::default() });
    assert!(hmm_dma_map_alloc(&debug, 8, PAGE_SIZE).unwrap().has_dma_list());
}

#[test]
fn iova_mode_links_entry_idx_at_its_offset_and_a_second_map_only_returns_the_address() {
    let dev = iommu(16);
    let mut map = hmm_dma_map_alloc(&dev, 4, PAGE_SIZE).unwrap();
    let base = map.iova().unwrap().base;
    map.pfn_list_mut()[2] = valid(0x1234);
    let dma = hmm_dma_map_pfn(&dev, &mut map, 2).unwrap();
    assert_eq!(dma, base + 2 * PAGE_SIZE);
    assert_eq!(dev.translate(dma), Some(0x1234 << PAGE_SHIFT));
    assert_eq!(map.pfn_list()[2], valid(0x1234) | HMM_PFN_DMA_MAPPED);
    assert_eq!(dev.stats().links, 1);
    // The "re-sync flags" path: same address, no new link.
    assert_eq!(hmm_dma_map_pfn(&dev, &mut map, 2).unwrap(), dma);
    assert_eq!(dev.stats().links, 1);
    assert_eq!(map.stale_returns(), 0);
    assert_eq!(hmm_dma_unmap_pfn(&dev, &mut map, 2), Ok(true));
    assert_eq!(map.pfn_list()[2], valid(0x1234), "DMA_MAPPED, P2PDMA and P2PDMA_BUS cleared");
    assert_eq!(dev.stats().links, 0);
    assert_eq!(hmm_dma_unmap_pfn(&dev, &mut map, 2), Ok(false), "nothing left to unmap");
    hmm_dma_map_free(&dev, map).unwrap();
    assert_eq!(dev.stats(), SoftDmaStats::default());
}

#[test]
fn bad_indexes_and_entries_that_are_not_valid_are_einval_never_a_panic() {
    let dev = iommu(16);
    let mut map = hmm_dma_map_alloc(&dev, 4, PAGE_SIZE).unwrap();
    assert_eq!(hmm_dma_map_pfn(&dev, &mut map, 4).unwrap_err().errno(), Errno::Inval);
    assert_eq!(hmm_dma_unmap_pfn(&dev, &mut map, usize::MAX).unwrap_err().errno(), Errno::Inval);
    map.pfn_list_mut()[0] = HMM_PFN_ERROR;
    assert_eq!(hmm_dma_map_pfn(&dev, &mut map, 0).unwrap_err().errno(), Errno::Inval);
    assert_eq!(map.pfn_list()[0], HMM_PFN_ERROR, "untouched");
    // Entries larger than a page run past the nr_entries-page reservation.
    let mut big = hmm_dma_map_alloc(&dev, 4, 4 * PAGE_SIZE).unwrap();
    big.pfn_list_mut()[1] = valid(7);
    assert_eq!(hmm_dma_map_pfn(&dev, &mut big, 1).unwrap_err().errno(), Errno::Inval);
    assert_eq!(big.pfn_list()[1], valid(7), "no flag set by a failed map");
    assert_eq!(dev.stats().links, 0);
}

#[test]
fn per_page_mode_stores_the_address_and_returns_it_while_mapped() {
    let dev = iommu(2);
    let mut map = hmm_dma_map_alloc(&dev, 4, PAGE_SIZE).unwrap();
    assert!(map.iova().is_none());
    map.pfn_list_mut()[1] = valid(0x55);
    let dma = hmm_dma_map_pfn(&dev, &mut map, 1).unwrap();
    assert_eq!(dev.translate(dma), Some(0x55 << PAGE_SHIFT));
    assert_eq!(dev.stats().direct, 1);
    assert_eq!(hmm_dma_map_pfn(&dev, &mut map, 1).unwrap(), dma, "the stored address, no second mapping");
    assert_eq!(dev.stats().direct, 1);
    // Exhaustion of the per-page IOVAs fails the map and sets nothing.
    map.pfn_list_mut()[2] = valid(0x56);
    map.pfn_list_mut()[3] = valid(0x57);
    hmm_dma_map_pfn(&dev, &mut map, 2).unwrap();
    let error = hmm_dma_map_pfn(&dev, &mut map, 3).unwrap_err();
    assert_eq!(error.errno(), Errno::NoMem);
    assert_eq!(map.pfn_list()[3], valid(0x57));
    for idx in [1, 2, 3] {
        hmm_dma_unmap_pfn(&dev, &mut map, idx).unwrap();
    }
    assert_eq!(dev.stats(), SoftDmaStats::default());
}

#[test]
fn plain_dma_direct_maps_again_instead_of_remembering() {
    let dev = SoftDmaDevice::new(SoftDmaConfig { dma_offset: 0x8000_0000, ..SoftDmaConfig::default() });
    let mut map = hmm_dma_map_alloc(&dev, 2, PAGE_SIZE).unwrap();
    map.pfn_list_mut()[0] = valid(3);
    let dma = hmm_dma_map_pfn(&dev, &mut map, 0).unwrap();
    assert_eq!(dma, (3 << PAGE_SHIFT) + 0x8000_0000);
    dev.fail_next_map();
    // Stateless: the second call maps again, so it can fail again.
    assert_eq!(hmm_dma_map_pfn(&dev, &mut map, 0).unwrap_err().errno(), Errno::NoMem);
    assert_eq!(map.pfn_list()[0] & HMM_PFN_DMA_MAPPED, HMM_PFN_DMA_MAPPED, "a failure clears only P2PDMA");
    assert_eq!(hmm_dma_map_pfn(&dev, &mut map, 0).unwrap(), dma);
    assert_eq!(hmm_dma_unmap_pfn(&dev, &mut map, 0), Ok(true));
    assert_eq!(dev.stats(), SoftDmaStats::default());
}

fn p2p_device() -> SoftDmaDevice {
    let window = |first, map| P2pWindow { first: Pfn(first), npages: 16, map };
    SoftDmaDevice::new(SoftDmaConfig {
        iommu: Some((IOVA_BASE, 64 * PAGE_SIZE)),
        p2p: vec![
            window(0x1000, P2pMapType::BusAddr { bus_offset: 0x40_0000_0000 }),
            window(0x2000, P2pMapType::ThruHostBridge),
            window(0x3000, P2pMapType::NotSupported),
        ],
        ..SoftDmaConfig::default()
    })
}

#[test]
fn p2p_bus_address_needs_no_mapping_and_host_bridge_maps_as_mmio() {
    let dev = p2p_device();
    let mut map = hmm_dma_map_alloc(&dev, 4, PAGE_SIZE).unwrap();
    map.pfn_list_mut()[0] = valid(0x1003);
    let bus = hmm_dma_map_pfn(&dev, &mut map, 0).unwrap();
    assert_eq!(bus, (0x1003 << PAGE_SHIFT) + 0x40_0000_0000);
    assert_eq!(map.pfn_list()[0], valid(0x1003) | HMM_PFN_P2PDMA_BUS | HMM_PFN_DMA_MAPPED);
    assert_eq!(dev.stats().links, 0, "no IOMMU work for a bus address");
    assert_eq!(dev.translate(bus), Some(0x1003 << PAGE_SHIFT));
    // P2PDMA_BUS is not "already mapped": classified and returned again.
    assert_eq!(hmm_dma_map_pfn(&dev, &mut map, 0).unwrap(), bus);

    map.pfn_list_mut()[1] = valid(0x2001);
    let dma = hmm_dma_map_pfn(&dev, &mut map, 1).unwrap();
    assert_eq!(dma, map.iova().unwrap().base + PAGE_SIZE);
    assert_eq!(map.pfn_list()[1], valid(0x2001) | HMM_PFN_P2PDMA | HMM_PFN_DMA_MAPPED);
    assert_eq!(dev.stats().links, 1);

    for idx in [0, 1] {
        assert_eq!(hmm_dma_unmap_pfn(&dev, &mut map, idx), Ok(true));
    }
    assert_eq!(map.pfn_list()[..2], [valid(0x1003), valid(0x2001)]);
    assert_eq!(dev.stats().links, 0);
    hmm_dma_map_free(&dev, map).unwrap();
}

#[test]
fn unreachable_p2p_memory_fails_without_touching_any_flag() {
    let dev = p2p_device();
    let mut map = hmm_dma_map_alloc(&dev, 2, PAGE_SIZE).unwrap();
    map.pfn_list_mut()[0] = valid(0x3000) | HMM_PFN_P2PDMA;
    let error = hmm_dma_map_pfn(&dev, &mut map, 0).unwrap_err();
    assert_eq!(error, DmaError::P2pNotSupported);
    assert_eq!(error.errno(), Errno::Fault);
    assert_eq!(map.pfn_list()[0], valid(0x3000) | HMM_PFN_P2PDMA, "even P2PDMA stays");
}

#[test]
fn a_failed_iotlb_sync_unlinks_and_clears_p2pdma() {
    let dev = p2p_device();
    let mut map = hmm_dma_map_alloc(&dev, 2, PAGE_SIZE).unwrap();
    map.pfn_list_mut()[0] = valid(0x2000);
    dev.fail_next_sync();
    assert_eq!(hmm_dma_map_pfn(&dev, &mut map, 0).unwrap_err().errno(), Errno::Io);
    assert_eq!(map.pfn_list()[0], valid(0x2000), "neither P2PDMA nor DMA_MAPPED");
    assert_eq!(dev.stats().links, 0);
    assert_eq!(dev.stats().bad_releases, 0);
}

#[test]
fn linking_twice_is_refused_and_a_changed_page_returns_a_flagged_stale_address() {
    let dev = iommu(16);
    let mut map = hmm_dma_map_alloc(&dev, 2, PAGE_SIZE).unwrap();
    map.pfn_list_mut()[0] = valid(10);
    let dma = hmm_dma_map_pfn(&dev, &mut map, 0).unwrap();
    // A driver that drops DMA_MAPPED without unmapping: the IOVA is still linked.
    map.pfn_list_mut()[0] &= !HMM_PFN_DMA_MAPPED;
    assert_eq!(hmm_dma_map_pfn(&dev, &mut map, 0), Err(DmaError::AlreadyLinked(dma)));
    assert_eq!(map.pfn_list()[0], valid(10));
    // The page changed under a mapped entry: Linux returns the old address.
    map.pfn_list_mut()[0] = valid(11) | HMM_PFN_DMA_MAPPED;
    assert_eq!(hmm_dma_map_pfn(&dev, &mut map, 0), Ok(dma));
    assert_eq!(dev.translate(dma), Some(10 << PAGE_SHIFT), "still the old page");
    assert_eq!(map.stale_returns(), 1);
    assert_eq!(hmm_dma_map_free(&dev, map), Err(DmaError::StillMapped(1)));
    assert_eq!(dev.stats().reservations, 0, "freed anyway, as Linux does");
    assert_eq!(dev.stats().links, 1, "the live link leaked, visibly");
}

/// A driver that mirrors through a DMA map; `unmap_in_invalidate` says
/// whether its callback unmaps (the rule) or only clears the device.
struct Driver {
    dev: Arc<SoftDmaDevice>,
    map: Mutex<HmmDmaMap>,
    start: u64,
    unmap_in_invalidate: bool,
}

impl IntervalNotifierOps for Driver {
    fn invalidate(&self, sub: &IntervalNotifier, range: &NotifierRange, seq: u64) -> bool {
        let mut map = self.map.lock();
        sub.set_seq(seq);
        if self.unmap_in_invalidate {
            let first = ((range.start.max(self.start) - self.start) >> PAGE_SHIFT) as usize;
            let last = (((range.end - self.start) >> PAGE_SHIFT) as usize).min(map.nr_entries());
            for idx in first..last {
                // ODP's order: unmap, then clear every flag of the entry.
                if hmm_dma_unmap_pfn(&*self.dev, &mut map, idx) == Ok(true) {
                    map.pfn_list_mut()[idx] &= !crate::pfn::HMM_PFN_FLAGS;
                }
            }
        }
        true
    }
}

/// Faults `npages` from `driver.start` into the map's pfn list (the map is
/// taken out of the driver lock for the walk and put back).
fn fault_into_map(mm: &hmm_mm::Mm, notifier: &IntervalNotifier, driver: &Driver, flags: u64) {
    let mut pfns = driver.map.lock().pfn_list().to_vec();
    let mut range = Range {
        notifier,
        notifier_seq: notifier.read_begin(),
        start: driver.start,
        end: driver.start + pfns.len() as u64 * PAGE_SIZE,
        hmm_pfns: &mut pfns,
        default_flags: flags,
        pfn_flags_mask: 0,
        dev_private_owner: None,
    };
    range_fault(&mm.mmap_read(), &mut range).unwrap();
    let mut map = driver.map.lock();
    assert!(!notifier.read_retry(range.notifier_seq));
    map.pfn_list_mut().copy_from_slice(&pfns);
}

fn mirrored(unmap_in_invalidate: bool) -> (Arc<hmm_mm::Kernel>, Arc<hmm_mm::Mm>, Arc<Driver>, Arc<IntervalNotifier>) {
    let kernel = kernel(16, hmm_mm::ThpMode::Never);
    let mm = kernel.create_mm().unwrap();
    let npages = 4;
    let va = mm.mmap(0, npages * PAGE_SIZE, Prot::RW, MapFlags::PRIVATE | MapFlags::ANONYMOUS).unwrap();
    let dev = Arc::new(iommu(64));
    let map = hmm_dma_map_alloc(&*dev, npages as usize, PAGE_SIZE).unwrap();
    let driver = Arc::new(Driver { dev, map: Mutex::new(map), start: va, unmap_in_invalidate });
    let notifier = mm.interval_notifier_insert(va, npages * PAGE_SIZE, driver.clone()).unwrap();
    (kernel, mm, driver, notifier)
}

#[test]
fn sticky_dma_bits_survive_range_fault_and_invalidate_unmaps_before_the_next_fault() {
    let (_kernel, mm, driver, notifier) = mirrored(true);
    fault_into_map(&mm, &notifier, &driver, HMM_PFN_REQ_FAULT | crate::pfn::HMM_PFN_REQ_WRITE);
    {
        let mut map = driver.map.lock();
        for idx in 0..4 {
            let dma = hmm_dma_map_pfn(&*driver.dev, &mut map, idx).unwrap();
            assert_eq!(driver.dev.translate(dma), Some(hmm_pfn_to_phys(map.pfn_list()[idx])));
        }
    }
    // A second fault keeps DMA_MAPPED (HMM_PFN_INOUT_FLAGS) on every entry.
    fault_into_map(&mm, &notifier, &driver, HMM_PFN_REQ_FAULT);
    assert!(driver.map.lock().pfn_list().iter().all(|&w| w & (HMM_PFN_VALID | HMM_PFN_DMA_MAPPED) != 0));
    assert_eq!(driver.dev.stats().links, 4);
    // Discarding two pages invalidates them: the driver unmaps in its callback.
    mm.madvise(driver.start, 2 * PAGE_SIZE, MadviseAdvice::DontNeed).unwrap();
    assert_eq!(driver.dev.stats().links, 2);
    let flags = crate::pfn::HMM_PFN_FLAGS;
    assert!(driver.map.lock().pfn_list()[..2].iter().all(|&w| w & flags == 0), "every flag cleared, ODP-style");
    fault_into_map(&mm, &notifier, &driver, 0);
    assert_eq!(driver.map.lock().pfn_list()[0] & HMM_PFN_DMA_MAPPED, 0);
    notifier.remove();
}

#[test]
fn a_fault_before_unmapping_leaves_a_sticky_dma_mapped_on_an_invalid_entry_that_cannot_be_unmapped() {
    let (_kernel, mm, driver, notifier) = mirrored(false);
    fault_into_map(&mm, &notifier, &driver, HMM_PFN_REQ_FAULT);
    hmm_dma_map_pfn(&*driver.dev, &mut driver.map.lock(), 0).unwrap();
    mm.madvise(driver.start, PAGE_SIZE, MadviseAdvice::DontNeed).unwrap();
    // A snapshot walk rewrites entry 0 as "nothing there", DMA_MAPPED kept.
    fault_into_map(&mm, &notifier, &driver, 0);
    let mut map = driver.map.lock();
    assert_eq!(map.pfn_list()[0], HMM_PFN_DMA_MAPPED);
    assert_eq!(hmm_dma_unmap_pfn(&*driver.dev, &mut map, 0), Ok(false), "not VALID: nothing done");
    assert_eq!(driver.dev.stats().links, 1, "the mapping leaked");
    notifier.remove();
}
