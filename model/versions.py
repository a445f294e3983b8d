"""Where a kernel rule changed between releases: one table, read by the model's rules.

Each entry is the first release (major, minor) with the newer behaviour, the commit or series
that brought it, and what was measured. The model keys every such rule on the release the
profile read (`uname -r` as `release_tuple`), never on a host name; an unknown release counts
as the newest (`release_of`). docs/kernels.md lists what each kernel shows.
"""
from __future__ import annotations

NEWEST = (6, 18)

# fs/proc/task_mmu.c show_smap_vma_flags(): VM_LOCKONFAULT has the VmFlags mnemonic "lf"; before,
# the table had no entry for it and the bit printed as "??" ("mm: do not show ?? for
# VM_LOCKONFAULT pages", Jason A. Donenfeld, posted 2022-12-05 before the 6.2 merge window; the
# release is bracketed by what was measured: 6.1 without it, 6.12 with it). Measured: 6.1
# prints "??" (mlock-onfault.toml, mlockall-future.toml), 6.12 and 6.18 print "lf".
LOCKONFAULT_MNEMONIC_SINCE = (6, 2)

# mm/filemap.c generic_perform_write(): the chunk handed to ->write_begin is the mapping's
# largest folio (mapping_max_folio_size), not a page ("filemap: Convert generic_perform_write()
# to support large folios", 9aac777aaf94, series posted 2024-05-27, 6.11); every tmpfs/shmem
# inode had large folios (__shmem_get_inode: mapping_set_large_folios) until "tmpfs: don't
# enable large folios if not supported" (Kefeng Wang, v4 posted 2024-10-17, in linux-next
# 2024-11-24, 6.13) set them only when the mount's huge= is not never (shm_mnt: shmem_enabled;
# the model assumes never, as everywhere for shmem). A revert of that commit was in the mm tree
# in 2026-05 (after 6.18): re-measure on a newer kernel. So shmem_write_begin's
# F_SEAL_GROW check (pos + len > i_size) sees the whole rest of the write up to the next 2 MiB
# boundary on 6.11-6.12, one page before and after (with huge=never). Measured:
# memfd-seal-future-write.toml step 5 (a 2-page pwrite at page 1 of a 2-page memfd sealed
# F_SEAL_GROW) writes 4096 bytes on 6.1 and 6.18, is EPERM (nothing written) on 6.12.
SHMEM_WRITE_LARGE_CHUNK_SINCE = (6, 11)
SHMEM_WRITE_LARGE_CHUNK_UNTIL = (6, 13)

# mm/madvise.c madvise_cold_or_pageout_pte_range(): MADV_PAGEOUT leaves the PTE young and
# reclaim_pages() -> reclaim_folio_list() -> shrink_folio_list(ignore_references = true) skips
# folio_referenced() ("mm: madvise: pageout: ignore references rather than clearing young",
# Barry Song, 2864f3d0f583, merged 2024-03-15 for 6.9); before, the walk cleared the young bit
# of every PTE (and PMD) it isolated, as MADV_COLD does. A page reclaim keeps (anonymous
# without swap, a lazy-free page written again) so shows smaps Referenced 0 before 6.9.
# Measured: madvise-pageout.toml step 3 and madvise-free-lazy.toml step 6 show Referenced 0
# on 6.1, the pages' size on 6.12 and 6.18.
PAGEOUT_KEEPS_YOUNG_SINCE = (6, 9)

# mm/huge_memory.c do_huge_zero_wp_pmd(): a write fault on the huge zero page gets a THP
# instead of splitting the PMD ("mm: huge_memory: add do_huge_zero_wp_pmd()", 6.13)
HUGE_ZERO_WP_SINCE = (6, 13)

# mm/madvise.c MADV_GUARD_INSTALL/REMOVE (102/103): EINVAL before ("mm: madvise: implement
# lightweight guard page mechanism", 6.13); file-backed and read-only mappings from 6.15
# ("mm: allow guard regions in file-backed and read-only mappings"); VM_MAYBE_GUARD and the
# smaps "gu" flag measured on 6.18
GUARD_SINCE = (6, 13)
FILE_GUARD_SINCE = (6, 15)
MAYBE_GUARD_SINCE = (6, 18)

# mm/huge_memory.c __thp_get_unmapped_area(): in a top-down layout, a padded area whose bottom
# is already aligned returns the aligned address one PMD up (the top of the padding) instead of
# the bottom ("mm: thp_get_unmapped_area must honour topdown preference", Ryan Roberts, 6.8;
# 6.7.y stable too). Measured: 6.1 places file-readahead-random-mark.toml's 16 MiB ext4 mapping
# 2 MiB lower than 6.12 and 6.18 do.
THP_PAD_TOPDOWN_SINCE = (6, 8)

# arch/x86/mm/fault.c + mm/memory.c mm_account_fault(): a file fault that drops its lock to
# start I/O (filemap_fault -> do_async_mmap_readahead -> maybe_unlock_mmap_for_io, on a
# PG_readahead folio that is already cached) returns VM_FAULT_RETRY. Under the mmap lock the
# retry carries FAULT_FLAG_TRIED and mm_account_fault() counts it major; since read faults on
# file VMAs are handled under the per-VMA lock ("mm: handle read faults under the VMA lock",
# Matthew Wilcox, 6.7; CONFIG_PER_VMA_LOCK) the retry after a VMA-lock attempt gets
# FAULT_FLAG_TRIED only when that attempt was VM_FAULT_MAJOR, so it counts minor.
# Measured: file-fault-cold.toml, the fault on the read-around window's PG_readahead page is
# major on 6.1, minor on 6.12 and 6.18.
FILE_FAULT_VMA_LOCK_SINCE = (6, 7)

# mm/filemap.c do_sync_mmap_readahead(): a VM_EXEC mapping reads from the fault (rounded down
# to exec_folio_order()) to ra_pages, cut at the VMA, async_size 0, also under MADV_RANDOM
# ("mm/filemap: allow arch to request folio size for exec memory", Ryan Roberts, 6.17).
# Before, VM_EXEC was read around like any mapping, and VM_RAND_READ meant no readahead.
# Measured: file-readahead-exec.toml, a fault at page 20 maps 15 pages on 6.1 and 6.12
# (read-around 4..35, the PG_readahead page 28 skipped), 12 on 6.18 (20..47).
EXEC_READAHEAD_SINCE = (6, 17)

# include/linux/mman.h calc_vm_flag_bits(): MAP_STACK sets VM_NOHUGEPAGE ("mm: mmap: map MAP_STACK
# to VM_NOHUGEPAGE", Yang Shi, c4608d1bf7c6, a fix for 6.7's THP-aligned anonymous mappings;
# release bracketed by what was measured). Before, MAP_STACK changed no VMA flag, so a stack
# mapping merges with a plain neighbour. Measured: mmap-flags-growsdown.toml step 7 merges on
# 6.1, stays apart ("nh") on 6.12 and 6.18.
MAP_STACK_NOHUGEPAGE_SINCE = (6, 7)

# mm/madvise.c madvise_populate(): MADV_POPULATE_READ/WRITE fault through faultin_page_range() ->
# __get_user_pages_locked(), whose retry after VM_FAULT_RETRY carries FAULT_FLAG_TRIED: a fault
# that dropped the lock for I/O counts major ("mm/madvise: make MADV_POPULATE_(READ|WRITE)
# handle VM_FAULT_RETRY properly", David Hildenbrand, 631426ba1d45, 6.9). Before, it called
# faultin_vma_page_range() -> __get_user_pages() and, the lock dropped, started again at the
# address without FAULT_FLAG_TRIED: no major fault at all, as mlock and MAP_POPULATE
# (__mm_populate) still do. Measured: populate-cold-file.toml step 8 (a cold 64-page file,
# 128 KiB read_ahead_kb) is 7 minor on 6.1, 4 minor + 3 major on 6.12.
POPULATE_TRIED_SINCE = (6, 9)

# mm/mprotect.c mprotect_fixup(): an unfaulted private anonymous VMA (no anon_vma) made
# read-only loses VM_ACCOUNT and its commit charge ("mm/mprotect: allow unfaulted VMAs to be
# unaccounted on mprotect()", Lorenzo Stoakes, posted 2023-06-26, 6.5). Before, it kept both.
# Measured: raw-values.toml step 7 (mprotect rw -> r of a never-touched mapping) keeps "ac" on
# 6.1, drops it on 6.12 and 6.18.
UNACCOUNT_UNFAULTED_SINCE = (6, 5)

# fs/proc/task_mmu.c pagemap_pmd_range(): PM_MMAP_EXCLUSIVE of a PMD-mapped THP. Until 6.10 it
# was decided once for the PMD from page_mapcount(pmd_page()), the head page; "fs/proc/task_mmu:
# properly detect PM_MMAP_EXCLUSIVE per page of PMD-mapped THPs" (David Hildenbrand,
# 2c1f057e5be6, 2024, 6.10) asked folio_precise_page_mapcount() of each page; "fs/proc/task_mmu:
# remove per-page mapcount dependency for PM_MMAP_EXCLUSIVE (CONFIG_NO_PAGE_MAPCOUNT)" (6.15)
# decides it once again, from the first page read. Releases bracketed by what was measured:
# thp-fork-split.toml step 6 (the child's write split its PMD and copied pages 0-1; the
# parent's THP is still PMD-mapped) reads 512 exclusive pages on 6.1 (head page mapped once),
# 2 on 6.12 (the two the child copied), 512 on 6.18 (first page read mapped once).
PAGEMAP_PMD_EXCLUSIVE_PER_PAGE_SINCE = (6, 10)
PAGEMAP_PMD_EXCLUSIVE_ONCE_SINCE = (6, 15)

# mm/vma.c is_mergeable_anon_vma(): a faulted range joins an unfaulted neighbour
# ("mm/vma: fix incorrectly disallowed anonymous VMA merges", Lorenzo Stoakes, 6.16; before,
# list_is_singular(&tgt->anon_vma_chain) refused it). Measured: 6.1 and 6.12 refuse, 6.18 merges.
ANON_MERGE_UNFAULTED_SINCE = (6, 16)

# mm/mremap.c: the 6.17 series ("mm/mremap: refactor initial parameter sanity checks",
# "mm/mremap: move remap_is_valid() into check_prep_vma()"): MREMAP_FIXED/DONTUNMAP targets
# are checked before the source VMA is looked up; a source range not inside one VMA is EFAULT
# before anything is unmapped; a move may span several VMAs (measured on 6.18)
MREMAP_CHECKS_FIRST_SINCE = (6, 17)


def release_of(profile: dict) -> tuple:
    """The profile's release as a tuple; unknown counts as the newest this table knows."""
    return tuple(profile.get("release_tuple") or NEWEST)
