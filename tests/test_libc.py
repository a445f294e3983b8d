"""shmkit.libc's wrappers of libc functions (libc._function): a failed call raises CallError
with the errno the kernel (or glibc) gave and "NAME: strerror"; a successful one returns what
the C function returned. Each failure below is one the kernel or glibc must give."""
from __future__ import annotations

import errno
import os

import pytest

from shmkit import libc


@pytest.mark.parametrize("call, code, words", [
    (lambda: libc.shm_unlink("/shmkit-test-no-such-name-\udcff"), errno.ENOENT, "shm_unlink: "),
    (lambda: libc.shm_open("/shmkit-test-no-such-name", os.O_RDWR, 0o600), errno.ENOENT, "shm_open: "),
    (lambda: libc.shmdt(1), errno.EINVAL, "shmdt: "),                  # ipc/shm.c ksys_shmdt: addr & ~PAGE_MASK
    (lambda: libc.shmget(0x5A5A0001, 1, 0), errno.ENOENT, "shmget: "),  # ipc/util.c ipcget_public: no IPC_CREAT
    (lambda: libc.mlockall(0), errno.EINVAL, "mlockall: "),            # mm/mlock.c: no MCL_* flag
    (lambda: libc.setns(-1, 0), errno.EBADF, "setns: "),
    (lambda: libc.prctl(-1, 0), errno.EINVAL, "prctl: "),
    (lambda: libc.mount(None, "/nonexistent-shmkit-test", "tmpfs", 0, None), None, "mount /nonexistent-shmkit-test: "),
])
def test_a_failed_call_raises_call_error_with_its_errno(call, code, words):
    with pytest.raises(libc.CallError) as e:
        call()
    if code is not None:
        assert e.value.errno == code, e.value
    assert e.value.errno and libc.errno_name(e.value.errno).startswith("E")
    if words is not None:
        assert str(e.value).endswith(words + os.strerror(e.value.errno)), str(e.value)


def test_a_successful_call_returns_what_the_function_returned():
    name = f"/shmkit-test-libc-{os.getpid()}"
    fd = libc.shm_open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        assert fd >= 0 and os.fstat(fd).st_size == 0
    finally:
        os.close(fd)
        libc.shm_unlink(name)
    assert not os.path.exists(f"/dev/shm{name}")
    assert libc.mallopt(libc.M_MMAP_MAX, 65536) is True
    assert libc.personality(0xFFFFFFFF) >= 0
