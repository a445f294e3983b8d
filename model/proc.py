"""What /proc shows of the model's state: maps lines (fs/proc/task_mmu.c show_map_vma), smaps
counters (smaps_pte_entry -> smaps_account -> smaps_page_accumulate), pagemap residency
(pagemap_pmd_range: PM_PRESENT, PM_MMAP_EXCLUSIVE), /proc/sysvipc/shm rows (ipc/shm.c
sysvipc_shm_proc_show) and the /dev/shm listing."""
from __future__ import annotations

from model.flags import (PAGE_SHIFT, PAGE_SIZE, PTE_ANON, PTE_DIRTY, PTE_FILE, PTE_KIND,
                         PTE_NONE, PTE_YOUNG, PTE_ZERO, VM_LOCKED, VM_LOCKONFAULT, VMFLAG_NAMES)
from model.vma import Vma, render_maps_line

PSS_SHIFT = 12
# byte -> 1 for a present PTE that is not young
_OLD_PRESENT = bytes(1 if b & PTE_KIND and not b & PTE_YOUNG else 0 for b in range(256))
SMAPS_KEYS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty",
              "Referenced", "Anonymous", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped",
              "Swap", "Locked")


def smaps(vma: Vma, anon) -> dict:
    """The smaps counters of one VMA, in kB, as show_smap() prints them.

    Per present PTE (the zero page is not a "normal" page: vm_normal_page() returns NULL,
    so it counts nowhere): Rss; Pss += PAGE_SIZE / mapcount; Shared_* when the page is
    mapped more than once (folio_maybe_mapped_shared), else Private_*; *_Dirty when the
    PTE or the folio is dirty; Referenced when the PTE is young; Anonymous for anonymous
    pages; Locked = Pss of a VM_LOCKED VMA."""
    rss = pss = sc = sd = pc = pd = ref = an = 0
    if vma.opaque is None and vma.file is None and anon.shared == 0 and not (
            anon.referenced and vma.anon is not None and any(anon.lru[p] & 1 for p in set(vma.anon) if p)
            and bytes(vma.pte).translate(_OLD_PRESENT).count(1)):
        # every anonymous page is mapped once: count entries by value, no per-page lookups
        for e in set(vma.pte):
            if e & PTE_KIND != PTE_ANON:
                continue
            n = vma.pte.count(e)
            rss += n
            an += n
            if e & PTE_YOUNG:
                ref += n
            if e & PTE_DIRTY:
                pd += n
            else:
                pc += n
        pss = rss * (PAGE_SIZE << PSS_SHIFT)
    elif vma.opaque is None:
        pte = vma.pte
        ino = vma.file.inode if vma.file is not None else None
        for i, e in enumerate(pte):
            kind = e & PTE_KIND
            if kind == PTE_NONE or kind == PTE_ZERO:
                continue
            if kind == PTE_ANON:
                pid = vma.anon[i]
                mc = anon.mapcount[pid]
                dirty = bool(e & PTE_DIRTY)
                an += 1
            else:
                idx = vma.pgoff + i
                mc = ino.mapcount[idx]
                dirty = bool(e & PTE_DIRTY) or ino.cached[idx] == 2
            rss += 1
            pss += (PAGE_SIZE << PSS_SHIFT) // max(mc, 1)
            # young PTE, or PG_referenced on the folio (smaps_account)
            if e & PTE_YOUNG or (anon.lru[vma.anon[i]] if kind == PTE_ANON else ino.lru[idx]) & 1:
                ref += 1
            if mc >= 2:
                if dirty:
                    sd += 1
                else:
                    sc += 1
            elif dirty:
                pd += 1
            else:
                pc += 1
    kb = PAGE_SIZE >> 10
    out = dict.fromkeys(SMAPS_KEYS, 0)
    out.update(Rss=rss * kb, Pss=pss >> (PSS_SHIFT + 10), Shared_Clean=sc * kb, Shared_Dirty=sd * kb,
               Private_Clean=pc * kb, Private_Dirty=pd * kb, Referenced=ref * kb, Anonymous=an * kb)
    if vma.flags & VM_LOCKED and vma.opaque is None:
        out["Locked"] = out["Pss"]
    if vma.opaque is None:
        # smaps_pmd_entry: AnonHugePages counts PMD-mapped anonymous THPs (not the huge zero page)
        out["AnonHugePages"] = sum(1 for k in vma.huge.values() if k == "anon") * 2048
    return out


_VMFLAG_ORDER = sorted(VMFLAG_NAMES.items())
# before 6.2 the mnemonics table has no VM_LOCKONFAULT entry: the bit prints as its default
# "??" (model.versions.LOCKONFAULT_MNEMONIC_SINCE)
_VMFLAG_ORDER_NO_LF = sorted({**VMFLAG_NAMES, VM_LOCKONFAULT: "??"}.items())


def vmflags(vma: Vma, lockonfault_named: bool = True) -> list[str]:
    """The smaps "VmFlags:" line as fs/proc/task_mmu.c show_smap_vma_flags() prints it: the
    two-letter mnemonic of every set vm_flags bit, lowest bit first ("??" for VM_LOCKONFAULT
    when the kernel's table does not name it). A VMA of the snapshot the model does not model
    keeps what the live side read."""
    if vma.opaque is not None:
        return list(vma.opaque.get("vmflags") or [])
    order = _VMFLAG_ORDER if lockonfault_named else _VMFLAG_ORDER_NO_LF
    return [name for bit, name in order if vma.flags & bit]


def vma_record(vma: Vma, anon, smaps_of_opaque: dict | None = None, lockonfault_named: bool = True) -> dict:
    f = vma.fields()
    return {"start": vma.start, "end": vma.end, **f,
            "smaps_kb": smaps(vma, anon) if vma.opaque is None else (smaps_of_opaque or {}),
            "vmflags": vmflags(vma, lockonfault_named)}


def maps_line(vma: Vma) -> str:
    return render_maps_line(vma.start, vma.end, vma.fields())


def residency(mm, start: int, npages: int, anon, pmd_exclusive: str = "first") -> dict:
    """pagemap over [start, start + npages pages): present entries, how many map the zero
    page, and how many map a page mapped exactly once (PM_MMAP_EXCLUSIVE). A PMD-mapped THP's
    bit (model.versions PAGEMAP_PMD_EXCLUSIVE_*): "first", decided once from its first page
    read; "page", page by page; "head", once from its head page."""
    present = zero = exclusive = 0
    end = start + (npages << PAGE_SHIFT)
    for vma in mm.overlapping(start, end):
        if vma.opaque is not None:
            continue
        a, b = vma.index(max(start, vma.start)), vma.index(min(end, vma.end))
        hz = sum(min(b, h + 512) - max(a, h) for h, k in vma.huge.items()
                 if k == "zero" and h < b and a < h + 512)
        # the huge zero page is not the 4 KiB zero page: pagemap shows its own frames
        zero -= hz
        if vma.file is None and anon.shared == 0:
            seg = vma.pte[a:b]
            for e in set(seg):
                kind = e & PTE_KIND
                if kind == PTE_NONE:
                    continue
                n = seg.count(e)
                present += n
                zero += n if kind == PTE_ZERO else 0
                exclusive += n if kind == PTE_ANON else 0
            continue
        # pagemap_pmd_range() decides PM_MMAP_EXCLUSIVE once per PMD, from the mapcount of
        # the first page read (measured: a THP whose other pages a child still maps through
        # PTEs reads as exclusive when its first page is mapped only here)
        pmd_excl = {}
        for h, k in vma.huge.items():
            if k == "anon" and h < b and a < h + 512 and pmd_exclusive != "page":
                first = max(a, h) if pmd_exclusive == "first" else h
                pmd_excl[h] = anon.mapcount[vma.anon[first]] == 1
        for i in range(a, b):
            e = vma.pte[i]
            kind = e & PTE_KIND
            if kind == PTE_NONE:
                continue
            present += 1
            if pmd_excl:
                h = (((vma.start >> PAGE_SHIFT) + i) & ~511) - (vma.start >> PAGE_SHIFT)
                if h in pmd_excl:
                    exclusive += pmd_excl[h]
                    continue
            if kind == PTE_ZERO:
                zero += 1
            elif kind == PTE_ANON:
                exclusive += anon.mapcount[vma.anon[i]] == 1
            else:
                exclusive += vma.file.inode.mapcount[vma.pgoff + i] == 1
    return {"present": present, "zero": zero, "exclusive": exclusive, "rss": present - zero}
