# The one compiled piece: shmkit/_access.c, the page-access loop that must
# allocate nothing, bracket its own faults with getrusage, and survive a
# SIGBUS/SIGSEGV (sigsetjmp/siglongjmp), which Python code cannot do.
from setuptools import Extension, setup

# shmkit/_bench.c: the hot loops of `shmkit bench` (copies, hand-offs, spin-waits), GIL released.
setup(ext_modules=[Extension("shmkit._access", ["shmkit/_access.c"]),
                   Extension("shmkit._bench", ["shmkit/_bench.c"], extra_compile_args=["-O3"],
                             libraries=["rt"])])
