"""Backing objects: inodes with their page cache (regular files on disk, tmpfs/shmem objects
for /dev/shm, memfd, shared anonymous memory and SysV segments) and anonymous pages.

Page state is held in arrays, one byte or int per page, never one object per page:
- Inode.cached   bytearray: 0 absent, 1 cached clean, 2 cached dirty (folio_test_dirty)
- Inode.data     bytearray: the first byte of each page's contents (what `read` observes)
- Inode.mapcount array('i'): PTEs mapping the page cache page (folio_precise_page_mapcount)
- Inode.folio    array('i'): first index of the folio holding the page (-1: absent)
- AnonPages: one slot per anonymous page ever allocated: mapcount, data, exclusive
  (PageAnonExclusive), freed when its mapcount drops to 0.
"""
from __future__ import annotations

from array import array

from model.pages import pages_of

DISK, TMPFS, SHMEM = "disk", "tmpfs", "shmem"   # shmem: the kernel-internal shm mount (00:01)


class Inode:
    """struct inode + struct address_space, as far as mappings see them."""

    def __init__(self, kind: str, ino, dev: str, size: int = 0, name: str = "", large_folios=False):
        self.kind = kind            # DISK | TMPFS | SHMEM
        self.ino = ino              # a symbol: the kernel picks inode numbers
        self.dev = dev
        self.name = name            # path as /proc/PID/maps prints it (without " (deleted)")
        self.deleted = False        # unlinked while mapped: maps prints " (deleted)"
        self.size = 0
        self.large_folios = large_folios   # mapping_large_folio_support() (ext4 on this kernel)
        self.write_notify = kind == DISK    # the filesystem has ->page_mkwrite (Kernel sets it)
        self.cached = bytearray()
        self.data = bytearray()
        self.mapcount = array("i")
        self.folio = array("i")
        self.ra_flag = bytearray()  # PG_readahead: the async readahead marker
        self.lru = bytearray()      # mark_page_accessed state per page (see mark_accessed)
        self.mode = 0o600
        self.uid = 0
        self.readahead_pages = 32   # file_ra_state.ra_pages (the kernel sets it from the bdi)
        # memfd seals (mm/memfd.c memfd_file_seals_ptr): shmem inodes start with F_SEAL_SEAL
        # (shmem_get_inode; memfd_create with MFD_ALLOW_SEALING clears it); None: the file
        # system has no seals (F_ADD_SEALS is EINVAL)
        self.seals = 0x1 if kind in (TMPFS, SHMEM) else None
        self.resize(size)

    @property
    def is_shmem(self) -> bool:
        return self.kind in (TMPFS, SHMEM)

    @property
    def npages(self) -> int:
        """Pages the file's size covers (a partial last page counts)."""
        return pages_of(self.size)

    def _grow(self, n: int) -> None:
        if n > len(self.cached):
            extra = n - len(self.cached)
            self.cached.extend(bytes(extra))
            self.data.extend(bytes(extra))
            self.mapcount.extend(array("i", bytes(4 * extra)))
            self.folio.extend(array("i", [-1]) * extra)
            self.ra_flag.extend(bytes(extra))
            self.lru.extend(bytes(extra))

    def resize(self, size: int) -> None:
        """ftruncate: pages past the new end leave the cache (mm/truncate.c
        truncate_inode_pages_range); the caller zaps their PTEs first."""
        old = self.npages
        self.size = size
        new = self.npages
        self._grow(new)
        for i in range(new, min(old, len(self.cached))):
            self.cached[i] = 0
            self.data[i] = 0
            self.folio[i] = -1

    def add_folio(self, start: int, n: int, dirty: bool = False) -> None:
        """filemap_add_folio(): pages [start, start+n) enter the cache as one folio."""
        n = min(n, self.npages - start)
        if n <= 0:
            return
        state = 2 if dirty else 1
        self.cached[start:start + n] = bytes([state]) * n
        self.folio[start:start + n] = array("i", [start]) * n

    def folio_range(self, index: int) -> tuple[int, int]:
        """[first, end) page indexes of the folio holding index."""
        head = self.folio[index]
        if head < 0:
            return index, index + 1
        end = index + 1
        while end < self.npages and self.folio[end] == head:
            end += 1
        return head, end

    def is_cached(self, index: int) -> bool:
        return index < len(self.cached) and self.cached[index] != 0

    def mark_dirty(self, index: int) -> None:
        """folio_mark_dirty(): the whole folio is dirty."""
        a, b = self.folio_range(index)
        self.cached[a:b] = b"\x02" * (b - a)

    def cached_pages(self) -> int:
        return self.npages - self.cached[:self.npages].count(0)


def invalidate_unmapped(ino: Inode, lo: int, hi: int) -> int:
    """mm/truncate.c mapping_try_invalidate(mapping, lo, hi - 1) (invalidate_mapping_pages()
    without its failure count): drop the folios of [lo, hi) that can be evicted; returns the
    pages dropped. find_lock_entries() returns only folios wholly inside the range (a large
    folio starting before lo or ending past hi is omitted) and skips locked folios and those
    under writeback; mapping_evict_folio() keeps dirty, writeback and mapped ones
    (folio_mapped). The model has no locked or writeback state (its writeback is done at once),
    so what stays is what is dirty or mapped by a PTE. Used by posix_fadvise(DONTNEED)
    (model.fileio) and the harness's evict (model.files)."""
    dropped = 0
    i = lo
    while i < min(hi, ino.npages):
        if not ino.is_cached(i):
            i += 1
            continue
        a, b = ino.folio_range(i)
        if a >= lo and b <= hi and ino.cached[a] == 1 \
                and all(ino.mapcount[j] == 0 for j in range(a, b)):
            for j in range(a, b):
                ino.cached[j] = 0
                ino.folio[j] = -1
                ino.ra_flag[j] = 0
            dropped += b - a
        i = b
    return dropped


def mark_accessed(state: int, mglru: bool = False) -> int:
    """mm/swap.c folio_mark_accessed() on the state 0 (inactive), 1 (inactive, PG_referenced),
    2 (active) or 3 (active, PG_referenced): a folio without PG_referenced gets it (0 -> 1,
    2 -> 3: an active folio too); an inactive one with it is activated and loses it (1 -> 2);
    3 stays. PG_referenced is the low bit (smaps Referenced). With the multi-gen LRU on
    (lru_gen_enabled(): folio_inc_refs) PG_referenced is set and never cleared here, and
    nothing is activated: the next calls set PG_workingset and count refs in the flags."""
    if mglru:
        return state | 1
    return (1, 2, 3, 3)[state]


def lru_gen_enabled(profile: dict) -> bool:
    """include/linux/mm_inline.h lru_gen_enabled(): the LRU_GEN_CORE static key, on at boot
    with CONFIG_LRU_GEN_ENABLED (CONFIG_LRU_GEN needed). Measured: Debian 6.12 (=y) keeps
    smaps Referenced after a second MADV_POPULATE_READ of mapped pages, Debian 6.1 (LRU_GEN
    without LRU_GEN_ENABLED) and this host (no LRU_GEN) clear it. The runtime switch
    /sys/kernel/mm/lru_gen/enabled (mm/vmscan.c enabled_store; bit 0 is LRU_GEN_CORE) wins when
    the profile read it (`lru_gen_enabled`); else the boot default from the config."""
    switch = profile.get("lru_gen_enabled")
    if isinstance(switch, int):
        return bool(switch & 1)
    config = profile.get("config") or {}
    return config.get("LRU_GEN") is True and config.get("LRU_GEN_ENABLED") is True


class AnonPages:
    """Every anonymous page (struct folio of order 0, anon): mapcount, contents and
    PageAnonExclusive, indexed by a page id (>= 1)."""

    def __init__(self, mglru: bool = False):
        self.mglru = mglru   # lru_gen_enabled(): folio_mark_accessed takes the MGLRU path
        self.mapcount = array("i", [0])
        self.data = bytearray(1)
        self.exclusive = bytearray(1)
        self.lru = bytearray(1)   # mark_page_accessed state 0..3 (see mark_accessed)
        self.live = 0
        self.shared = 0      # pages with mapcount >= 2 (lets /proc views skip per-page lookups)
        self.referenced = 0  # pages with PG_referenced (lru state 1 or 3), for the same reason
        self.lazyfree: set[int] = set()   # MADV_FREE made them lazy-free (!PG_swapbacked)

    def new(self, value: int) -> int:
        """A new exclusive page mapped once (folio_add_new_anon_rmap)."""
        self.mapcount.append(1)
        self.data.append(value & 0xFF)
        self.exclusive.append(1)
        self.lru.append(0)
        self.live += 1
        return len(self.mapcount) - 1

    def new_run(self, n: int, value: int) -> int:
        """n new pages at once (a bulk fault of fresh memory); returns the first id."""
        first = len(self.mapcount)
        self.mapcount.extend(array("i", [1]) * n)
        self.data.extend(bytes([value & 0xFF]) * n)
        self.exclusive.extend(b"\x01" * n)
        self.lru.extend(bytes(n))
        self.live += n
        return first

    def mark_accessed(self, pid: int) -> None:
        """mm/swap.c folio_mark_accessed() (see mark_accessed)."""
        self.set_lru(pid, mark_accessed(self.lru[pid], self.mglru))

    def set_lru(self, pid: int, state: int) -> None:
        self.referenced += (state & 1) - (self.lru[pid] & 1)
        self.lru[pid] = state

    def get(self, pid: int) -> None:
        """One more mapping of the page (fork: folio_try_dup_anon_rmap_pte)."""
        self.mapcount[pid] += 1
        if self.mapcount[pid] == 2:
            self.shared += 1

    def put(self, pid: int) -> None:
        """One mapping of the page went away (folio_remove_rmap_pte)."""
        self.mapcount[pid] -= 1
        if self.mapcount[pid] == 1:
            self.shared -= 1
        elif self.mapcount[pid] == 0:
            self.live -= 1
