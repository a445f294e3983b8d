"""Where the model and the live kernel are known to differ, and why.

Each entry names the test that shows it (tests/test_model_known_differences.py, marked
xfail(strict=True): the day the model or the kernel stops differing, the test passes, strict
xfail fails it, and the entry must go). An entry whose condition is absent on the host (no
swap, overcommit not 2) has a test that skips with that reason instead of running."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownDifference:
    id: str
    what: str
    reason: str
    test: str
    # a difference seen only on other kernels (kept records, tests/test_kernel_records.py):
    # the releases ("6.1", "6.12") and the bundled experiments it shows in
    kernels: tuple[str, ...] = ()
    experiments: tuple[str, ...] = ()


KNOWN_DIFFERENCES = (
    KnownDifference(
        id="byte-in-page",
        what="A touch or read at a byte address (addr = \"REGION+N\"): the model keeps one byte "
             "per page, so a read at another offset of a page than the one written gives the "
             "written value where the kernel gives the byte that is there (0 in fresh anonymous "
             "memory).",
        reason="The model's page contents (model/objects.py, model/memory.py load/_store) are one "
               "value per page, enough for the first-byte-of-each-page reads of region steps; "
               "faults, residency and signals, which the kernel decides per page, are exact at any "
               "byte address (touch-byte-address.toml).",
        test="test_byte_in_page"),
    KnownDifference(
        id="readahead-io-in-flight",
        what="Touching a cold file in order right after the major fault: the live count of minor "
             "faults varies from run to run (seen 95 to 99 for 1,536 pages, 191 to 197 for 3,072) where the model says 95 and 191.",
        reason="The major fault returns once its own folio is read; the rest of the read-around "
               "window is still under I/O. filemap_map_pages() (next_uptodate_folio) skips folios "
               "that are locked or not uptodate, so a fault-around that meets one maps less and "
               "the next page faults again. Which folios are still in flight depends on the disk's "
               "timing, which no model of the kernel alone can know.",
        test="test_readahead_io_in_flight"),
    KnownDifference(
        id="overcommit-never",
        what="Under vm.overcommit_memory=2 the model accepts private writable mappings that the "
             "kernel refuses with ENOMEM.",
        reason="__vm_enough_memory() compares the commit charge of the whole system "
               "(vm_committed_as, /proc/meminfo Committed_AS) with CommitLimit; that charge moves "
               "with every process on the host, so the model does not keep it.",
        test="test_overcommit_never"),
    KnownDifference(
        id="swap",
        what="With swap configured, MADV_PAGEOUT swaps anonymous and shmem pages out; the model "
             "keeps them resident as on a host without swap.",
        reason="The model has no swap device: shrink_folio_list() on this host cannot add "
               "anonymous or shmem folios to swap, and that is the behaviour it follows.",
        test="test_pageout_with_swap"),
    KnownDifference(
        id="shmem-collapse",
        what="MADV_COLLAPSE on shared memory: the model refuses it with EINVAL; the kernel makes "
             "a 2 MiB block whose shmem object has pages into one PMD-mapped shmem THP (its holes "
             "filled with zeros; smaps Rss and ShmemPmdMapped 2048 kB) even under "
             "shmem_enabled=never, and fails (EINVAL) only for a block with no page in the object "
             "(measured on shared anonymous memory, a memfd and a SysV segment; /dev/shm objects "
             "not measured).",
        reason="mm/khugepaged.c madvise_collapse -> hpage_collapse_scan_file/collapse_file: the "
               "model has no large shmem folios and no PMD mapping of a file folio (nor the "
               "retract_page_tables() that follows in the other processes mapping the object); "
               "it collapses private anonymous memory only (madvise-collapse.toml).",
        test="test_shmem_collapse"),
    KnownDifference(
        id="file-thp",
        what="MADV_HUGEPAGE on a mapping of a disk file (ext4, large folios): a page cache miss "
             "reads PMD-sized folios and the fault maps a whole 2 MiB folio with one PMD (smaps "
             "Rss and FilePmdMapped 2048 kB, 512 pages present); the model reads and maps as "
             "without the advice (read-around, 16-page fault-around).",
        reason="mm/filemap.c do_sync_mmap_readahead() has a VM_HUGEPAGE branch (two PMD-order "
               "folios from the fault's 2 MiB-aligned index, async_size 512), and "
               "filemap_map_pages() -> filemap_map_pmd() / finish_fault() -> do_set_pmd() map a "
               "PMD-order folio with a PMD. The model has no PMD mapping of a file folio, nor "
               "what follows from one: a write or a partial mprotect/munmap/madvise splits it "
               "by unmapping the whole PMD (__split_huge_pmd_locked for a file VMA), and fork "
               "does not copy it (copy_huge_pmd skips non-anonymous VMAs).",
        test="test_file_thp"),
    KnownDifference(
        id="hugetlb-mapping",
        what="A MAP_HUGETLB mapping that gets its huge pages (MAP_NORESERVE, or a host whose huge "
             "page pool or vm.nr_overcommit_hugepages can supply them): the kernel maps it, the "
             "model skips the step. On such a host the bundled mmap-flags-hugetlb.toml, written "
             "for an empty pool, shows the difference too.",
        reason="The model has the checks of ksys_mmap_pgoff(), hugetlbfs_file_mmap() and "
               "hugetlb_reserve_pages() that refuse a mapping, but no hugetlbfs file, no huge "
               "page pool and no hugetlb_fault(), so it cannot say what a mapping that succeeds "
               "shows (its /anon_hugepage line, KernelPageSize 2048 kB, faults per huge page).",
        test="test_hugetlb_mapping"),
    KnownDifference(
        id="damon-accessed-bits",
        what="On a host where DAMON monitors physical memory (a kdamond with \"paddr\" "
             "operations, or the DAMON_RECLAIM/LRU_SORT/STAT modules), smaps Referenced of a "
             "page that a process maps with an old PTE or PMD varies from run to run: a forked "
             "child's copy of a written THP showed Referenced 2048 kB in 39 of 40 forks made "
             "1 s after the write (0 of 20 with the kdamond off), and thp-fork-split.toml's "
             "child 2048 or 4096 kB where the model says 0 or 2056, in 13 of 20 runs. "
             "shmkit validate, the 5-run test and the model tests leave smaps Referenced out "
             "of the comparison while such a context runs, and say so (\"not compared: host "
             "DAMON clears accessed bits\"); --pause-damon turns DAMON off for a run instead.",
        reason="DAMON's access check (mm/damon/paddr.c damon_pa_prepare_access_checks -> "
               "damon_pa_mkold -> rmap walk -> damon_ptep_mkold/damon_pmdp_mkold) clears the "
               "young bit of a randomly chosen folio in every page table mapping it and sets "
               "PG_young on the folio; smaps_account() counts a page as Referenced when its "
               "entry is young or its folio has PG_young or PG_referenced. A fork copies PTEs "
               "and PMDs old (__copy_present_ptes, copy_huge_pmd), so the child's page counts "
               "only if DAMON sampled that folio: which folio DAMON samples, and when, depends "
               "on the page's physical address and DAMON's random sampling, not on the kernel "
               "paths the model follows.",
        test="test_damon_accessed_bits"),
    KnownDifference(
        id="shm-open-directory",
        what="shm_open(\".\") or shm_open(\"..\") read-only without O_CREAT (hermetic mode: "
             "exact names) succeeds live and gives a descriptor on the /dev/shm directory (or "
             "/dev); the model says ENOENT. With O_CREAT or write access both say EINVAL.",
        reason="glibc's shm_open is open(\"/dev/shm/NAME\", O_NOFOLLOW|O_CLOEXEC|flags): "
               "\".\" and \"..\" walk to a directory (fs/namei.c handle_dots), which open() "
               "refuses only for writing or O_CREAT (EISDIR, which glibc turns into EINVAL). "
               "The model's /dev/shm holds objects, not directories, so it has nothing to open.",
        test="test_shm_open_directory"),
)


def by_id(ident: str) -> KnownDifference:
    return next(d for d in KNOWN_DIFFERENCES if d.id == ident)
