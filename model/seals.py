"""memfd seals (mm/memfd.c memfd_add_seals, memfd_check_seals_mmap; mm/shmem.c
shmem_setattr and shmem_write_begin apply them).

A mixin of model.kernel.Kernel."""
from __future__ import annotations

from model.errors import errno
from model.flags import (F_SEAL_FUTURE_WRITE, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK,
                         F_SEAL_WRITE, VM_MAYWRITE, VM_SHARED, VM_WRITE, seal_names)


class Seals:
    def sys_seal(self, proc, args: dict):
        """fcntl(F_ADD_SEALS) -> memfd_fcntl -> memfd_add_seals(): EPERM unless the file is
        open for writing; EINVAL where the file system has no seals (a disk file); EPERM
        once F_SEAL_SEAL is set (every shmem inode but a memfd made with MFD_ALLOW_SEALING
        starts with it); adding F_SEAL_WRITE needs mapping_deny_writable(): EBUSY while a
        shared mapping that may write (VM_SHARED with VM_MAYWRITE) exists in any process.
        The step's value is F_GET_SEALS after the call."""
        f = self.fd(proc, args["source"][1])    # model.resolve: [fd|shm|memfd, handle]
        seals = args["seals"]                   # F_SEAL_* bits
        if not f.writable:
            raise errno("EPERM")
        ino = f.inode
        if ino.seals is None:
            raise errno("EINVAL")
        if ino.seals & F_SEAL_SEAL:
            raise errno("EPERM")
        if seals & F_SEAL_WRITE and not ino.seals & F_SEAL_WRITE:
            for p in self.procs.values():
                if p.alive and any(v.file is not None and v.file.inode is ino
                                   and v.flags & (VM_SHARED | VM_MAYWRITE) == VM_SHARED | VM_MAYWRITE
                                   for v in p.mm.vmas):
                    raise errno("EBUSY")
        ino.seals |= seals
        self.note("memfd_add_seals: " + ", ".join("F_SEAL_" + n.upper() for n in seal_names(seals)))
        return None, {"seals": seal_names(ino.seals)}

    @staticmethod
    def memfd_check_seals_mmap(file, vm_flags: int) -> int:
        """mm/memfd.c memfd_check_seals_mmap() (from do_mmap, 6.7+): on a write-sealed file
        (F_SEAL_WRITE or F_SEAL_FUTURE_WRITE) a shared writable mapping is EPERM, and a shared
        read-only one loses VM_MAYWRITE (mprotect cannot make it writable later)."""
        seals = file.inode.seals or 0
        if not seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE) or not vm_flags & VM_SHARED:
            return vm_flags
        if vm_flags & VM_WRITE:
            raise errno("EPERM")
        return vm_flags & ~VM_MAYWRITE

    @staticmethod
    def seals_allow_resize(ino, size: int) -> None:
        """mm/shmem.c shmem_setattr(): shrinking under F_SEAL_SHRINK or growing under
        F_SEAL_GROW is EPERM (after setattr_prepare's inode_newsize_ok)."""
        seals = ino.seals or 0
        if (size < ino.size and seals & F_SEAL_SHRINK) or (size > ino.size and seals & F_SEAL_GROW):
            raise errno("EPERM")
