"""The pages of a region: how many pages a region of some length has, and which range a step
over a region covers. One rule, used by the model, the worker, the manager and the spec.

The kernel maps whole pages. mm/mmap.c do_mmap() maps `len = PAGE_ALIGN(len)` bytes;
mm/mremap.c check_mremap_params() takes `new_len = PAGE_ALIGN(new_len)` (and old_len likewise);
ipc/shm.c newseg() charges `numpages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT` while the segment
keeps its size (shm_segsz, /proc/sysvipc/shm), and do_shmat() maps its i_size through do_mmap(),
rounded up there; munmap, mprotect, madvise, msync and mlock round their length up before they
act (do_vmi_munmap, do_mprotect_pkey, do_madvise, msync, do_mlock). So a region of 27 bytes is
one page the process may access in full, one of 5000 bytes two, and an access to its last page
is an access to a mapped page (for a file, SIGBUS only when that page lies wholly past EOF:
filemap_fault and shmem_fault compare the page index with DIV_ROUND_UP(i_size, PAGE_SIZE)).

Both sides use this rule, so validate cannot see a mistake in it: tests/test_whole_pages.py
checks the live side against what the kernel must do (a write to the only page of a 27-byte
read-only mapping is SIGSEGV, a 5000-byte region has two resident pages after a touch, ...),
without the model.
"""
from __future__ import annotations

from model.flags import PAGE_SIZE


ULONG_MASK = (1 << 64) - 1


def page_align(n: int, page_size: int = PAGE_SIZE) -> int:
    """include/linux/mm.h PAGE_ALIGN(): n rounded up to a whole page, in an unsigned long: a
    length within a page of 2^64 wraps to 0 (do_mmap refuses it with ENOMEM, mremap's
    check_mremap_params with EINVAL; measured: whole-pages-mremap.toml)."""
    return ((n + page_size - 1) & ~(page_size - 1)) & ULONG_MASK


def pages_of(length: int, page_size: int = PAGE_SIZE) -> int:
    """The pages the kernel maps for `length` bytes: PAGE_ALIGN(length) >> PAGE_SHIFT."""
    return page_align(length, page_size) // page_size


def span(addr: int, length: int, pages, page_size: int = PAGE_SIZE) -> tuple[int, int]:
    """(start, length) of a step over a region at `addr` of `length` bytes. `pages` None: the
    whole region, with its length as the program gave it (every call rounds it up as the
    kernel does; a touch or read covers pages_of(length) pages); (a, b): pages a..b-1."""
    if pages is None:
        return addr, length
    a, b = pages
    return addr + a * page_size, (b - a) * page_size
